//! What a Kubernetes API path addresses.
//!
//! ```text
//! /api/v1/pods                                   all pods (list, watch)
//! /api/v1/namespaces/ns/pods                     pods in ns (list, watch, create, deletecollection)
//! /api/v1/namespaces/ns/pods/name                one pod (get, update, patch, delete)
//! /api/v1/namespaces/ns/pods/name/log            a subresource
//! /api/v1/namespaces/ns                          the namespace object itself
//! /apis/apps/v1/namespaces/ns/deployments/web    a named group's resource
//! ```

/// The endpoint a request path addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint<'a> {
    /// `/version`
    Version,
    /// `/healthz`, `/livez`, `/readyz` (and their `/...` sub-checks).
    Health,
    /// `/api`: the core group's versions.
    CoreVersions,
    /// `/apis`: the named groups.
    Groups,
    /// `/apis/{group}`
    Group(&'a str),
    /// `/api/v1` or `/apis/{group}/{version}`: a group version's resource list.
    Resources {
        /// The group ("" for core).
        group: &'a str,
        /// The version.
        version: &'a str,
    },
    /// A resource collection, object or subresource.
    Resource(ResourcePath<'a>),
    /// `/openapi/v2`
    OpenApiV2,
    /// `/openapi/v3`
    OpenApiV3Index,
    /// `/openapi/v3/{api/v1 | apis/group/version}`
    OpenApiV3(&'a str),
    /// Anything else.
    Unknown,
}

/// The parts of a resource path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePath<'a> {
    /// The API group ("" for core).
    pub group: &'a str,
    /// The API version.
    pub version: &'a str,
    /// The namespace, for namespaced paths.
    pub namespace: Option<&'a str>,
    /// The plural resource name.
    pub resource: &'a str,
    /// The object's name, if the path names one.
    pub name: Option<&'a str>,
    /// The subresource, e.g. `log`, `status`, `scale`.
    pub subresource: Option<&'a str>,
}

impl ResourcePath<'_> {
    /// Whether the path addresses a collection (no name).
    pub fn is_collection(&self) -> bool {
        self.name.is_none()
    }
}

/// Classifies `path` (without the query string).
pub fn parse(path: &str) -> Endpoint<'_> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Endpoint::Unknown;
    }
    match segs.as_slice() {
        ["version"] => Endpoint::Version,
        [h, ..] if matches!(*h, "healthz" | "livez" | "readyz") => Endpoint::Health,
        ["api"] => Endpoint::CoreVersions,
        ["apis"] => Endpoint::Groups,
        ["apis", group] => Endpoint::Group(group),
        ["openapi", "v2"] => Endpoint::OpenApiV2,
        ["openapi", "v3"] => Endpoint::OpenApiV3Index,
        ["openapi", "v3", ..] => Endpoint::OpenApiV3(&path["/openapi/v3/".len()..]),
        ["api", version, rest @ ..] => resource(path, "", version, rest),
        ["apis", group, version, rest @ ..] => resource(path, group, version, rest),
        _ => Endpoint::Unknown,
    }
}

fn resource<'a>(
    _path: &'a str,
    group: &'a str,
    version: &'a str,
    rest: &[&'a str],
) -> Endpoint<'a> {
    let rp = |namespace, resource, name, subresource| {
        Endpoint::Resource(ResourcePath {
            group,
            version,
            namespace,
            resource,
            name,
            subresource,
        })
    };
    match rest {
        [] => Endpoint::Resources { group, version },
        // The namespace object itself, and its subresources (status, finalize).
        ["namespaces", name] if group.is_empty() => rp(None, "namespaces", Some(*name), None),
        ["namespaces", name, sub @ ("status" | "finalize")] if group.is_empty() => {
            rp(None, "namespaces", Some(*name), Some(*sub))
        }
        ["namespaces", ns, resource] => rp(Some(*ns), resource, None, None),
        ["namespaces", ns, resource, name] => rp(Some(*ns), resource, Some(*name), None),
        ["namespaces", ns, resource, name, sub] => rp(Some(*ns), resource, Some(*name), Some(*sub)),
        [resource] => rp(None, resource, None, None),
        [resource, name] => rp(None, resource, Some(*name), None),
        [resource, name, sub] => rp(None, resource, Some(*name), Some(*sub)),
        _ => Endpoint::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp<'a>(
        group: &'a str,
        namespace: Option<&'a str>,
        resource: &'a str,
        name: Option<&'a str>,
        subresource: Option<&'a str>,
    ) -> Endpoint<'a> {
        Endpoint::Resource(ResourcePath {
            group,
            version: "v1",
            namespace,
            resource,
            name,
            subresource,
        })
    }

    #[test]
    fn paths() {
        assert_eq!(parse("/version"), Endpoint::Version);
        assert_eq!(parse("/readyz/ping"), Endpoint::Health);
        assert_eq!(parse("/api"), Endpoint::CoreVersions);
        assert_eq!(parse("/apis/"), Endpoint::Groups);
        assert_eq!(parse("/apis/apps"), Endpoint::Group("apps"));
        assert_eq!(
            parse("/api/v1"),
            Endpoint::Resources {
                group: "",
                version: "v1"
            }
        );
        assert_eq!(
            parse("/apis/apps/v1"),
            Endpoint::Resources {
                group: "apps",
                version: "v1"
            }
        );
        assert_eq!(parse("/api/v1/pods"), rp("", None, "pods", None, None));
        assert_eq!(
            parse("/api/v1/nodes/n1"),
            rp("", None, "nodes", Some("n1"), None)
        );
        assert_eq!(
            parse("/api/v1/namespaces"),
            rp("", None, "namespaces", None, None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/kube-system"),
            rp("", None, "namespaces", Some("kube-system"), None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/x/status"),
            rp("", None, "namespaces", Some("x"), Some("status"))
        );
        assert_eq!(
            parse("/api/v1/namespaces/x/pods"),
            rp("", Some("x"), "pods", None, None)
        );
        assert_eq!(
            parse("/api/v1/namespaces/x/pods/p/log"),
            rp("", Some("x"), "pods", Some("p"), Some("log"))
        );
        assert_eq!(
            parse("/apis/apps/v1/namespaces/x/deployments/d/scale"),
            rp("apps", Some("x"), "deployments", Some("d"), Some("scale"))
        );
        assert_eq!(parse("/openapi/v3"), Endpoint::OpenApiV3Index);
        assert_eq!(
            parse("/openapi/v3/apis/apps/v1"),
            Endpoint::OpenApiV3("apis/apps/v1")
        );
        assert_eq!(parse("/api//v1"), Endpoint::Unknown);
        assert_eq!(parse("/metrics"), Endpoint::Unknown);
        assert_eq!(
            parse("/api/v1/namespaces/x/pods/p/log/extra"),
            Endpoint::Unknown
        );
    }
}
