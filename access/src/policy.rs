//! The decision for one request: what it asks ([`Attributes`]), whether a [`Rule`] allows it
//! (see [`Rule`] for the semantics), the discovery rule, and the verdict ([`Decision`]).
//! Nothing here allocates.

use std::fmt;

use kubehub_kapi::request_info::RequestInfo;

use crate::model::Rule;

/// What a request asks, as authorization reads it (kube-apiserver's authorizer attributes),
/// borrowed from the request's [`RequestInfo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attributes<'a> {
    /// The Kubernetes verb (`get`, `list`, …); for non-resource requests the lower-cased HTTP
    /// method.
    pub verb: &'a str,
    /// The API group (`""`: core).
    pub api_group: &'a str,
    /// The resource (`pods`).
    pub resource: &'a str,
    /// The subresource (`log`, `exec`, …) or `""`.
    pub subresource: &'a str,
    /// The namespace, `""` for cluster-scoped requests and those across all namespaces.
    pub namespace: &'a str,
    /// The object's name (from the path, or a list's or watch's `metadata.name` field
    /// selector), or `""`.
    pub name: &'a str,
    /// The request path (what non-resource rules match).
    pub path: &'a str,
    /// A resource request (`/api/v1/…`, `/apis/{group}/{version}/…`) or not.
    pub is_resource_request: bool,
}

impl<'a, 'b: 'a> From<&'a RequestInfo<'b>> for Attributes<'a> {
    fn from(info: &'a RequestInfo<'b>) -> Self {
        Attributes {
            verb: info.verb.as_str(),
            api_group: info.api_group,
            resource: info.resource,
            subresource: info.subresource,
            namespace: info.namespace,
            name: &info.name,
            path: info.path,
            is_resource_request: info.is_resource_request,
        }
    }
}

/// The verdict. `Allow` carries nothing, so allowing never allocates; a denial's reason is a
/// fixed [`DenyReason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// No.
    Deny(DenyReason),
}

impl Decision {
    /// Whether it is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// Why a request is denied (told to the user, appended to kube-apiserver's 403 wording).
/// Worded so as not to tell another tenant's cluster from one that does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The token is bound to other clusters.
    TokenNotForCluster,
    /// No such cluster in the user's tenant (it does not exist, or is another tenant's).
    NoSuchCluster,
    /// None of the user's grants covers the cluster.
    NoGrant,
    /// Grants cover the cluster, but none of their rules allows this request.
    NoRule,
}

impl DenyReason {
    /// The reason as text.
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::TokenNotForCluster => "the token is not valid for this cluster",
            DenyReason::NoSuchCluster => "no such cluster in your tenant",
            DenyReason::NoGrant => "no grant gives you access to this cluster",
            DenyReason::NoRule => "no rule of your grants on this cluster allows this request",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The non-resource paths every user with at least one grant covering a cluster may `get`
/// there (Kubernetes' `system:discovery` and `system:public-info-viewer`): what `kubectl`
/// reads before anything else.
pub const DISCOVERY_URLS: [&str; 9] = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/openapi/*",
    "/healthz",
    "/livez",
    "/readyz",
];

/// The discovery rule as a [`Rule`]: `get` on [`DISCOVERY_URLS`].
pub fn discovery_rule() -> Rule {
    Rule {
        verbs: vec!["get".into()],
        non_resource_urls: DISCOVERY_URLS.iter().map(|&u| u.to_owned()).collect(),
        ..Rule::default()
    }
}

/// Whether the discovery rule allows the request (a non-resource `get` of a discovery path).
pub fn is_discovery(attrs: &Attributes<'_>) -> bool {
    !attrs.is_resource_request
        && attrs.verb == "get"
        && DISCOVERY_URLS.iter().any(|u| url_matches(u, attrs.path))
}

fn any_or(list: &[String], value: &str) -> bool {
    list.iter().any(|e| e == "*" || e == value)
}

fn url_matches(entry: &str, path: &str) -> bool {
    entry == "*"
        || entry == path
        || entry
            .strip_suffix('*')
            .is_some_and(|prefix| path.starts_with(prefix))
}

fn resource_matches(entry: &str, resource: &str, subresource: &str) -> bool {
    if entry == "*" {
        return true;
    }
    match entry.split_once('/') {
        None => subresource.is_empty() && entry == resource,
        Some((res, sub)) => {
            !subresource.is_empty()
                && (res == "*" || res == resource)
                && (sub == "*" || sub == subresource)
        }
    }
}

impl Rule {
    /// Whether the rule is a non-resource rule (has `nonResourceURLs`).
    pub fn is_non_resource(&self) -> bool {
        !self.non_resource_urls.is_empty()
    }

    /// Whether this rule allows the request (see [`Rule`] for the semantics). Never allocates.
    pub fn allows(&self, attrs: &Attributes<'_>) -> bool {
        if !any_or(&self.verbs, attrs.verb) {
            return false;
        }
        if !attrs.is_resource_request {
            return self
                .non_resource_urls
                .iter()
                .any(|u| url_matches(u, attrs.path));
        }
        !self.resources.is_empty()
            && any_or(&self.api_groups, attrs.api_group)
            && self
                .resources
                .iter()
                .any(|r| resource_matches(r, attrs.resource, attrs.subresource))
            && self.applies_in_namespace(attrs.namespace)
            && (self.resource_names.is_empty()
                || (!attrs.name.is_empty() && self.resource_names.iter().any(|n| n == attrs.name)))
    }

    /// Whether the rule can allow anything in `namespace` (`""`: cluster scope and all
    /// namespaces): a non-resource rule always, a resource rule when its `namespaces` is empty,
    /// has `*`, or (for a non-empty `namespace`) lists it.
    pub fn applies_in_namespace(&self, namespace: &str) -> bool {
        self.is_non_resource()
            || self.namespaces.is_empty()
            || self
                .namespaces
                .iter()
                .any(|n| n == "*" || (!namespace.is_empty() && n == namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::request_info::request_info;

    #[test]
    fn attributes_come_from_request_info() {
        let info = request_info("GET", "/api/v1/pods", "fieldSelector=metadata.name%3Dweb")
            .expect("a request");
        let a = Attributes::from(&info);
        assert_eq!(
            a,
            Attributes {
                verb: "list",
                api_group: "",
                resource: "pods",
                subresource: "",
                namespace: "",
                name: "web",
                path: "/api/v1/pods",
                is_resource_request: true,
            }
        );
        let info = request_info(
            "POST",
            "/apis/apps/v1/namespaces/ns/deployments/d/scale",
            "",
        )
        .expect("a request");
        let a = Attributes::from(&info);
        assert_eq!(
            (
                a.verb,
                a.api_group,
                a.resource,
                a.subresource,
                a.namespace,
                a.name
            ),
            ("create", "apps", "deployments", "scale", "ns", "d")
        );
        let info = request_info("HEAD", "/healthz", "").expect("a request");
        let a = Attributes::from(&info);
        assert_eq!(
            (a.verb, a.path, a.is_resource_request),
            ("head", "/healthz", false)
        );
    }

    #[test]
    fn discovery_paths() {
        let get = |path| Attributes {
            verb: "get",
            path,
            ..Attributes::default()
        };
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/openapi/v3",
            "/livez",
        ] {
            assert!(is_discovery(&get(p)), "{p}");
        }
        for p in [
            "/metrics",
            "/openapi",
            "/logs/x",
            "/healthz/etcd",
            "/",
            "/apisx",
        ] {
            assert!(!is_discovery(&get(p)), "{p}");
        }
        assert!(!is_discovery(&Attributes {
            verb: "post",
            ..get("/api")
        }));
        assert!(discovery_rule().allows(&get("/apis/apps")));
        assert_eq!(discovery_rule().validate(), Ok(()));
    }
    /// A grant of one native command allows running it, and nothing else of the plugins.
    #[test]
    fn plugin_rules_name_plugins_as_resources() {
        let one = crate::build::rule(
            &["plugins.kubehub.io"],
            &["native"],
            &["create"],
            &[],
            &["uptime"],
        );
        let allows = |r: &Rule, method: &str, path: &str| {
            let info = kubehub_kapi::plugin::request_info(method, path).unwrap();
            r.allows(&Attributes::from(&info))
        };
        assert!(allows(&one, "POST", "/plugins/native/uptime"));
        assert!(!allows(&one, "POST", "/plugins/native/reboot"));
        assert!(!allows(&one, "GET", "/plugins/native"));
        assert!(!allows(&one, "GET", "/plugins/native/uptime"));
        assert!(!allows(&one, "GET", "/plugins/host"));
        assert!(!allows(&one, "POST", "/plugins/native/uptime/x"));
        let host = crate::build::rule(&["plugins.kubehub.io"], &["host"], &["get"], &[], &[]);
        assert!(allows(&host, "GET", "/plugins/host"));
        assert!(!allows(&host, "POST", "/plugins/native/uptime"));
        // Namespaced rules never reach them (cluster-scoped); `*` does.
        let ns = crate::build::rule(&["*"], &["*"], &["*"], &["default"], &[]);
        assert!(!allows(&ns, "POST", "/plugins/native/uptime"));
        let all = crate::build::rule(&["*"], &["*"], &["*"], &[], &[]);
        assert!(allows(&all, "POST", "/plugins/native/uptime"));
        // A Kubernetes rule does not.
        let pods = crate::build::rule(&[""], &["pods"], &["*"], &[], &[]);
        assert!(!allows(&pods, "POST", "/plugins/native/uptime"));
    }
}
