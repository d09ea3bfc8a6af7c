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
///
/// Stricter than kube-apiserver's [`request_info`](crate::request_info::request_info): one
/// trailing slash at most, no empty segments, no deprecated `watch/` or `proxy/` prefixes, and at
/// most `{resource}/{name}/{subresource}`; anything else is [`Endpoint::Unknown`]. What a resource
/// path addresses is read as kube-apiserver reads it, by the same code.
pub fn parse(path: &str) -> Endpoint<'_> {
    let path = path.strip_suffix('/').unwrap_or(path);
    // Whatever precedes the first '/' is ignored; every segment after it must be non-empty.
    let Some((_, rel)) = path.split_once('/') else {
        return Endpoint::Unknown;
    };
    if rel.split('/').any(str::is_empty) {
        return Endpoint::Unknown;
    }
    let segs: Vec<&str> = rel.split('/').collect();
    match segs.as_slice() {
        ["version"] => Endpoint::Version,
        [h, ..] if matches!(*h, "healthz" | "livez" | "readyz") => Endpoint::Health,
        ["api"] => Endpoint::CoreVersions,
        ["apis"] => Endpoint::Groups,
        ["apis", group] => Endpoint::Group(group),
        ["openapi", "v2"] => Endpoint::OpenApiV2,
        ["openapi", "v3"] => Endpoint::OpenApiV3Index,
        ["openapi", "v3", ..] => Endpoint::OpenApiV3(&rel["openapi/v3/".len()..]),
        _ => match Segments(rel).api_root() {
            Some(ApiRoot {
                group,
                version,
                rest: None,
                ..
            }) => Endpoint::Resources { group, version },
            Some(ApiRoot {
                group,
                version,
                rest: Some(rest),
                ..
            }) => resource(group, version, rest.scope()),
            None => Endpoint::Unknown,
        },
    }
}

fn resource<'a>(group: &'a str, version: &'a str, scope: Scope<'a>) -> Endpoint<'a> {
    let parts = scope.parts;
    if parts.len() > 3 {
        return Endpoint::Unknown;
    }
    Endpoint::Resource(ResourcePath {
        group,
        version,
        // `namespaces/{name}` is the (cluster-scoped) namespace object itself.
        namespace: scope.in_namespace.then_some(scope.namespace),
        resource: parts.first(),
        name: parts.get(1),
        subresource: parts.get(2),
    })
}

/// Path segments, kube-apiserver style: a slice of the path holding one or more `/`-separated
/// segments, any of which may be empty (`a//b` is `a`, ``, `b`).
///
/// This is the one place that splits API paths; [`parse`] and
/// [`request_info`](crate::request_info::request_info) both read paths through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments<'a>(&'a str);

/// `api/{version}/...` or `apis/{group}/{version}/...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ApiRoot<'a> {
    /// `api` or `apis`.
    pub prefix: &'a str,
    /// `""` for `api`.
    pub group: &'a str,
    pub version: &'a str,
    /// The segments after the version, if any.
    pub rest: Option<Segments<'a>>,
}

/// The segments after `{prefix}/[{group}/]{version}/`, with the namespace taken off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scope<'a> {
    /// The segment after a leading `namespaces`, or `""`. For the namespace object itself
    /// (`namespaces/{name}`, `namespaces/{name}/status`, `namespaces/{name}/finalize`) this is
    /// the object's own name, as kube-apiserver has it.
    pub namespace: &'a str,
    /// Whether `namespaces/{namespace}/` was taken off: the parts address something inside it.
    pub in_namespace: bool,
    /// `{resource}[/{name}[/{subresource}[/...]]]`.
    pub parts: Segments<'a>,
}

impl<'a> Segments<'a> {
    /// kube-apiserver's split of a whole path: leading and trailing slashes trimmed, then split
    /// at every `/`. `None` when nothing is left (`""`, `/`, `//`).
    pub(crate) fn of(path: &'a str) -> Option<Segments<'a>> {
        let trimmed = path.trim_matches('/');
        (!trimmed.is_empty()).then_some(Segments(trimmed))
    }

    /// The segments as the slice of the path they came from.
    pub(crate) fn as_str(self) -> &'a str {
        self.0
    }

    /// The first segment, and the rest if there are more.
    pub(crate) fn split_first(self) -> (&'a str, Option<Segments<'a>>) {
        match self.0.split_once('/') {
            Some((first, rest)) => (first, Some(Segments(rest))),
            None => (self.0, None),
        }
    }

    /// The first segment.
    pub(crate) fn first(self) -> &'a str {
        self.split_first().0
    }

    /// The segment at `index`.
    pub(crate) fn get(self, index: usize) -> Option<&'a str> {
        self.0.split('/').nth(index)
    }

    /// The number of segments (at least 1).
    pub(crate) fn len(self) -> usize {
        self.0.bytes().filter(|&b| b == b'/').count() + 1
    }

    /// Reads `api/{version}/...` or `apis/{group}/{version}/...`; `None` for any other prefix,
    /// or when the group or version is missing.
    pub(crate) fn api_root(self) -> Option<ApiRoot<'a>> {
        let (prefix, rest) = self.split_first();
        let (group, rest) = match prefix {
            "api" => ("", rest?),
            "apis" => {
                let (group, rest) = rest?.split_first();
                (group, rest?)
            }
            _ => return None,
        };
        let (version, rest) = rest.split_first();
        Some(ApiRoot {
            prefix,
            group,
            version,
            rest,
        })
    }

    /// Takes off a leading `namespaces/{namespace}/`, unless what follows the namespace is one
    /// of the namespace object's own subresources (`status`, `finalize`).
    pub(crate) fn scope(self) -> Scope<'a> {
        let unscoped = Scope {
            namespace: "",
            in_namespace: false,
            parts: self,
        };
        let ("namespaces", Some(after)) = self.split_first() else {
            return unscoped;
        };
        let (namespace, inner) = after.split_first();
        match inner {
            Some(inner) if !matches!(inner.first(), "status" | "finalize") => Scope {
                namespace,
                in_namespace: true,
                parts: inner,
            },
            _ => Scope {
                namespace,
                ..unscoped
            },
        }
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
        // kube-apiserver's namespace rule holds in every group (there is no `namespaces` outside
        // the core group, so this is a 404 either way), and nothing is read past a namespace's
        // subresource.
        assert_eq!(
            parse("/apis/apps/v1/namespaces/x/status"),
            rp("apps", None, "namespaces", Some("x"), Some("status"))
        );
        assert_eq!(
            parse("/api/v1/namespaces/x/status/extra"),
            Endpoint::Unknown
        );
        // The deprecated verb prefixes are not served: `watch` reads as a resource name.
        assert_eq!(
            parse("/api/v1/watch/pods"),
            rp("", None, "watch", Some("pods"), None)
        );
    }

    #[test]
    fn segments() {
        let s = |p| Segments::of(p).map(Segments::as_str);
        assert_eq!(s(""), None);
        assert_eq!(s("//"), None);
        assert_eq!(s("//api//v1/"), Some("api//v1"));
        let segs = Segments::of("/a//b/").unwrap();
        assert_eq!(segs.len(), 3);
        assert_eq!(
            (segs.first(), segs.get(1), segs.get(2), segs.get(3)),
            ("a", Some(""), Some("b"), None)
        );
        assert_eq!(segs.split_first(), ("a", Some(Segments("/b"))));

        let root = |p| Segments::of(p).and_then(Segments::api_root);
        let r = root("/apis/apps/v1/namespaces/x/pods").unwrap();
        assert_eq!((r.prefix, r.group, r.version), ("apis", "apps", "v1"));
        assert_eq!(r.rest, Some(Segments("namespaces/x/pods")));
        assert_eq!(root("/api/v1").unwrap().rest, None);
        assert_eq!(root("/apis/apps"), None);
        assert_eq!(root("/api"), None);
        assert_eq!(root("/openapi/v2"), None);

        let scope = |p| Segments::of(p).map(Segments::scope);
        let sc = |namespace, in_namespace, parts| {
            Some(Scope {
                namespace,
                in_namespace,
                parts: Segments(parts),
            })
        };
        assert_eq!(scope("namespaces"), sc("", false, "namespaces"));
        assert_eq!(scope("namespaces/x"), sc("x", false, "namespaces/x"));
        assert_eq!(
            scope("namespaces/x/finalize"),
            sc("x", false, "namespaces/x/finalize")
        );
        assert_eq!(scope("namespaces/x/pods/p"), sc("x", true, "pods/p"));
        assert_eq!(scope("namespaces//pods"), sc("", true, "pods"));
        assert_eq!(scope("pods/p"), sc("", false, "pods/p"));
    }
}
