//! `authorize`: may this identity do this to this cluster?
//!
//! One call to the access index ([`kubehub_access::Index::authorize`]: token bound to the
//! cluster × cluster of the user's tenant × a grant of the tenant for the user whose rules
//! allow the request; discovery paths for anyone with a grant there). It runs before the
//! request is routed, so reads answered from the hub's cache (get, list, watch) are decided
//! exactly as forwarded ones. Decisions do not allocate.
//!
//! Two refusals:
//! * A cluster that is not the user's (it does not exist, or is another tenant's) is **404**
//!   `clusters "x" not found`, the same for both: nobody learns which ids other tenants use.
//! * Otherwise kube-apiserver's **403**, worded by [`Status::forbidden`] with the reason
//!   appended, so kubectl prints `Error from server (Forbidden): …` exactly as against a real
//!   cluster.
//!
//! Upgraded connections are authorized as their subresources, never implied by access to
//! pods: `exec`, `attach` and `portforward` need `create` on the subresource (the SPDY `POST`
//! form), and the WebSocket `GET` form needs `get` **and** `create` — kube-apiserver 1.35's
//! rule (kubernetes#134577: a role granting only `get` on `pods/exec` no longer lets anyone
//! run commands). The refusal names the verb that was missing.
//!
//! `SelfSubjectAccessReview` and `SelfSubjectRulesReview` (what `kubectl auth can-i` creates)
//! are allowed to anyone with a grant covering the cluster, as Kubernetes'
//! `system:basic-user` allows them to every authenticated user; the hub answers them itself
//! or checks them first ([`super::review`]).

use kubehub_access::{Attributes, Decision, DenyReason, Identity, Index};
use kubehub_kapi::request_info::RequestInfo;
use kubehub_kapi::Status;

use super::error::ProxyError;
use super::review::Review;
use crate::metrics::{Metrics, ReasonLabel};

/// What "has any grant covering the cluster" is asked as: a discovery `get`, which the index
/// allows exactly then.
const ANY_GRANT: Attributes<'static> = Attributes {
    verb: "get",
    api_group: "",
    resource: "",
    subresource: "",
    namespace: "",
    name: "",
    path: "/api",
    is_resource_request: false,
};

/// Environments never mix: a request for a cluster whose record puts it in another
/// environment than this hub's is refused (403 naming both), whoever asks, after the grants
/// were checked (so a cluster that is not the user's stays a 404).
pub fn environment(index: &Index, hub_env: &str, cluster: &str) -> Result<(), ProxyError> {
    match index.cluster(cluster) {
        Some(c) if c.environment != hub_env => {
            Err(ProxyError::Forbidden(Box::new(Status::new(
                403,
                "Forbidden",
                format!(
                    "cluster {cluster:?} is in environment {:?}; this hub serves environment {hub_env:?}",
                    c.environment
                ),
            ))))
        }
        _ => Ok(()),
    }
}

/// The authorize phase.
pub fn authorize(
    index: &Index,
    metrics: &Metrics,
    id: &Identity,
    cluster: &str,
    info: &RequestInfo<'_>,
) -> Result<(), ProxyError> {
    let attrs = Attributes::from(info);
    let decision = if Review::of(info).is_some() {
        index.authorize(id, cluster, &ANY_GRANT)
    } else {
        index.authorize(id, cluster, &attrs)
    };
    // The WebSocket form of a command stream is a GET that runs something: `create` too.
    let (decision, verb) = match decision {
        Decision::Allow if creates_by_get(info) => {
            let create = Attributes {
                verb: "create",
                ..attrs
            };
            (index.authorize(id, cluster, &create), "create")
        }
        d => (d, info.verb.as_str()),
    };
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => {
            let e = refusal(index, id, cluster, info, verb, reason);
            let reason = match e {
                ProxyError::UnknownCluster(_) => "not_found",
                _ => "forbidden",
            };
            metrics.denied.get_or_create(&ReasonLabel { reason }).inc();
            Err(e)
        }
    }
}

/// Subresources that start a process or a connection at the edge: their WebSocket `GET` is
/// authorized as `create` as well.
pub const COMMAND_SUBRESOURCES: [&str; 3] = ["exec", "attach", "portforward"];

/// A `get` of `pods/exec`, `pods/attach` or `pods/portforward` (the WebSocket form).
fn creates_by_get(info: &RequestInfo<'_>) -> bool {
    info.is_resource_request
        && info.verb.as_str() == "get"
        && info.api_group.is_empty()
        && info.resource == "pods"
        && COMMAND_SUBRESOURCES.contains(&info.subresource)
}

/// The answer to a denial of `verb`: 404 for a cluster that is not the user's tenant's, else
/// 403.
fn refusal(
    index: &Index,
    id: &Identity,
    cluster: &str,
    info: &RequestInfo<'_>,
    verb: &str,
    reason: DenyReason,
) -> ProxyError {
    let hidden = match reason {
        DenyReason::NoSuchCluster => true,
        // A token bound elsewhere: say so only about the user's own tenant's clusters.
        DenyReason::TokenNotForCluster => {
            index.cluster(cluster).is_none_or(|c| c.tenant != id.tenant)
        }
        DenyReason::NoGrant | DenyReason::NoRule => false,
    };
    if hidden {
        ProxyError::UnknownCluster(cluster.to_owned())
    } else {
        ProxyError::Forbidden(Box::new(forbidden_verb(
            &id.user,
            info,
            verb,
            reason.as_str(),
        )))
    }
}

/// The 403 kube-apiserver would send for this request.
pub fn forbidden(user: &str, info: &RequestInfo<'_>, reason: &str) -> Status {
    forbidden_verb(user, info, info.verb.as_str(), reason)
}

/// The 403 kube-apiserver would send for `verb` on what this request addresses.
fn forbidden_verb(user: &str, info: &RequestInfo<'_>, verb: &str, reason: &str) -> Status {
    if !info.is_resource_request {
        return Status::forbidden_path(user, verb, info.path, reason);
    }
    let resource = if info.subresource.is_empty() {
        info.resource.to_owned()
    } else {
        format!("{}/{}", info.resource, info.subresource)
    };
    Status::forbidden(
        user,
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

    /// alice (acme) may do anything to pods on edge-1 and edge-2 but exec; edge-2 is
    /// acme's but her token is for edge-1 only; edge-b is another tenant's.
    fn index() -> (Index, std::sync::Arc<Identity>) {
        use kubehub_access::build::{cluster, grant, mint, rule, snapshot, tenant, user};
        let (token, token_record) = mint("alice", "acme", &["edge-1", "edge-b"], 0);
        let index = Index::new();
        let records = vec![
            tenant("acme"),
            tenant("other"),
            user("alice", "acme", &[]),
            cluster("edge-1", "acme"),
            cluster("edge-2", "acme"),
            cluster("edge-b", "other"),
            grant(
                "pods",
                "acme",
                "alice",
                &["edge-1", "edge-2", "edge-b"],
                vec![rule(&[""], &["pods", "pods/log"], &["*"], &[], &[])],
            ),
            token_record,
        ];
        index.apply(&snapshot(1, records)).unwrap();
        let who = index
            .authenticate(Some(format!("Bearer {token}").as_bytes()), 2)
            .unwrap();
        (index, who)
    }

    #[test]
    fn a_denial_is_a_kube_apiserver_403() {
        let (index, alice) = index();
        let m = Metrics::new();
        let info = request_info(
            "POST",
            "/api/v1/namespaces/default/pods/web/exec",
            "command=ls",
        )
        .unwrap();
        let e = authorize(&index, &m, &alice, "edge-1", &info).unwrap_err();
        let s = e.status(super::super::error::Reached::Hub).unwrap();
        assert_eq!(s.code, 403);
        assert_eq!(
            s.message,
            "pods \"web\" is forbidden: User \"alice\" cannot create resource \"pods/exec\" in API group \"\" in the namespace \"default\": no rule of your grants on this cluster allows this request"
        );
        let info = request_info("GET", "/api/v1/namespaces/default/pods/web", "").unwrap();
        assert!(authorize(&index, &m, &alice, "edge-1", &info).is_ok());
        // Reviews need a grant on the cluster, nothing more.
        let review = request_info(
            "POST",
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            "",
        )
        .unwrap();
        assert!(authorize(&index, &m, &alice, "edge-1", &review).is_ok());
    }

    #[test]
    fn clusters_not_the_users_are_not_found() {
        let (index, alice) = index();
        let m = Metrics::new();
        let info = request_info("GET", "/api/v1/pods", "").unwrap();
        for cluster in ["edge-b", "nowhere"] {
            let e = authorize(&index, &m, &alice, cluster, &info).unwrap_err();
            let s = e.status(super::super::error::Reached::Hub).unwrap();
            assert_eq!(
                (s.code, s.message),
                (404, format!("clusters \"{cluster}\" not found")),
                "the token names {cluster} or not: the same answer"
            );
        }
        // Her own tenant's cluster, with a token for another one: she is told why.
        let e = authorize(&index, &m, &alice, "edge-2", &info).unwrap_err();
        let s = e.status(super::super::error::Reached::Hub).unwrap();
        assert_eq!(s.code, 403);
        assert!(
            s.message
                .ends_with("the token is not valid for this cluster"),
            "{}",
            s.message
        );
    }

    /// A grant of `get` on `pods/exec` (what roles written before kube-apiserver 1.35 often
    /// hold) does not run commands over WebSocket; `get` and `create` do; `create` alone runs
    /// them over SPDY only. The same for attach and port-forward.
    #[test]
    fn command_streams_need_create_in_both_forms() {
        use kubehub_access::build::{cluster, grant, mint, rule, snapshot, tenant, user};
        let index = Index::new();
        let mut records = vec![tenant("acme"), cluster("edge-1", "acme")];
        let mut who = std::collections::HashMap::new();
        for (name, verbs) in [
            ("getter", &["get"][..]),
            ("creator", &["create"][..]),
            ("both", &["get", "create"][..]),
        ] {
            let (token, record) = mint(name, "acme", &["edge-1"], 0);
            records.push(user(name, "acme", &[]));
            let subs = ["pods/exec", "pods/attach", "pods/portforward"];
            records.push(grant(
                &format!("g-{name}"),
                "acme",
                name,
                &["edge-1"],
                vec![rule(&[""], &subs, verbs, &[], &[])],
            ));
            records.push(record);
            who.insert(name, token);
        }
        index.apply(&snapshot(1, records)).unwrap();
        let m = Metrics::new();
        let decide = |name: &str, method: &str, sub: &str| {
            let id = index
                .authenticate(Some(format!("Bearer {}", who[name]).as_bytes()), 2)
                .unwrap();
            let path = format!("/api/v1/namespaces/default/pods/web/{sub}");
            let info = request_info(method, &path, "command=ls").unwrap();
            authorize(&index, &m, &id, "edge-1", &info).map_err(|e| {
                e.status(super::super::error::Reached::Hub)
                    .map(|s| s.message)
                    .unwrap_or_default()
            })
        };
        for sub in ["exec", "attach", "portforward"] {
            let e = decide("getter", "GET", sub).unwrap_err();
            assert!(
                e.contains(&format!("cannot create resource \"pods/{sub}\"")),
                "{e}"
            );
            assert!(decide("getter", "POST", sub).is_err());
            let e = decide("creator", "GET", sub).unwrap_err();
            assert!(
                e.contains(&format!("cannot get resource \"pods/{sub}\"")),
                "{e}"
            );
            assert!(decide("creator", "POST", sub).is_ok());
            assert!(decide("both", "GET", sub).is_ok());
            assert!(decide("both", "POST", sub).is_ok());
        }
        // Other subresources keep their verbs: `get pods/log` is not a command.
        assert!(!creates_by_get(
            &request_info("GET", "/api/v1/namespaces/default/pods/web/log", "").unwrap()
        ));
    }

    #[test]
    fn non_resource_paths_are_denied_by_path() {
        let info = request_info("GET", "/version", "").unwrap();
        let s = forbidden("alice", &info, "");
        assert_eq!(
            s.message,
            "forbidden: User \"alice\" cannot get path \"/version\""
        );
    }
}
