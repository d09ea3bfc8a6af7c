//! `authorize`: may this user do this to this cluster?
//!
//! One call, (who, cluster, what the request asks) → allow or deny, behind the [`Authorizer`]
//! trait so the source of the decision can change without touching the request path. Today's
//! implementation, [`AllowAuthenticated`], allows every authenticated user (the edge API
//! server still applies its own RBAC to the impersonated user); the metaserver's grants
//! (tenant × cluster × resource × verb × namespace) replace it. A denial is answered as
//! kube-apiserver answers one: 403 with a `Status` worded by [`Status::forbidden`], so
//! kubectl prints `Error from server (Forbidden): …` exactly as against a real cluster.

use kubehub_kapi::request_info::RequestInfo;
use kubehub_kapi::Status;

use super::authenticate::User;
use super::error::ProxyError;

/// An authorizer's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// No; the reason is appended to the 403 message (empty: none).
    Deny(String),
}

/// Decides whether a request may proceed. Called once per request on any core: it must not
/// block (decisions come from memory).
pub trait Authorizer: std::fmt::Debug + Send + Sync {
    /// The decision for `user` doing `info` on `cluster`.
    fn authorize(&self, user: &User, cluster: &str, info: &RequestInfo<'_>) -> Decision;
}

/// Every authenticated user may do everything (until the metaserver's grants).
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAuthenticated;

impl Authorizer for AllowAuthenticated {
    fn authorize(&self, _: &User, _: &str, _: &RequestInfo<'_>) -> Decision {
        Decision::Allow
    }
}

/// The authorize phase.
pub fn authorize(
    authz: &dyn Authorizer,
    user: &User,
    cluster: &str,
    info: &RequestInfo<'_>,
) -> Result<(), ProxyError> {
    match authz.authorize(user, cluster, info) {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(ProxyError::Forbidden(Box::new(forbidden(
            user, info, &reason,
        )))),
    }
}

/// The 403 kube-apiserver would send for this request.
pub fn forbidden(user: &User, info: &RequestInfo<'_>, reason: &str) -> Status {
    let verb = info.verb.as_str();
    if !info.is_resource_request {
        return Status::forbidden_path(&user.name, verb, info.path, reason);
    }
    let resource = if info.subresource.is_empty() {
        info.resource.to_owned()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    Status::forbidden(
        &user.name,
        verb,
        info.api_group,
        &resource,
        &info.name,
        info.namespace,
        reason,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::request_info::request_info;

    /// Denies one verb on one resource, to show the phase's effect.
    #[derive(Debug)]
    struct DenyExec;

    impl Authorizer for DenyExec {
        fn authorize(&self, _: &User, _: &str, info: &RequestInfo<'_>) -> Decision {
            if info.subresource == "exec" {
                Decision::Deny("exec is not granted".into())
            } else {
                Decision::Allow
            }
        }
    }

    fn alice() -> User {
        User {
            name: "alice".into(),
            uid: "1".into(),
            groups: vec![],
        }
    }

    #[test]
    fn a_denial_is_a_kube_apiserver_403() {
        let info = request_info(
            "POST",
            "/api/v1/namespaces/default/pods/web/exec",
            "command=ls",
        )
        .unwrap();
        let e = authorize(&DenyExec, &alice(), "edge-1", &info).unwrap_err();
        let s = e.status(super::super::error::Reached::Hub).unwrap();
        assert_eq!(s.code, 403);
        assert_eq!(
            s.message,
            "pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\": exec is not granted"
        );
        let info = request_info("GET", "/api/v1/namespaces/default/pods/web", "").unwrap();
        assert!(authorize(&DenyExec, &alice(), "edge-1", &info).is_ok());
        assert!(authorize(&AllowAuthenticated, &alice(), "edge-1", &info).is_ok());
    }

    #[test]
    fn non_resource_paths_are_denied_by_path() {
        let info = request_info("GET", "/version", "").unwrap();
        let s = forbidden(&alice(), &info, "");
        assert_eq!(
            s.message,
            "forbidden: User \"alice\" cannot get path \"/version\""
        );
    }
}
