//! `plan`: whether the cache can answer a request exactly as the edge API server would, and
//! how. Anything it cannot honour exactly is forwarded, with the reason (a metric label).
//!
//! Pure: request info, query and `Accept` in, a [`Plan`] or a [`Forward`] reason out.

use kubehub_kapi::accept::{negotiate, Wants};
use kubehub_kapi::query::{ListOptions, Query, Version, VersionMatch};
use kubehub_kapi::request_info::{RequestInfo, Verb};

/// The read the cache serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// One object.
    Get {
        /// Its name.
        name: String,
    },
    /// A list (possibly one page of it).
    List,
    /// A watch.
    Watch,
}

/// How current the answer must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Whatever the cache holds (`resourceVersion=0`).
    Any,
    /// Current as of the request's arrival (`resourceVersion` unset): confirmed with the
    /// agent first.
    Current,
    /// At least this version (`resourceVersion=N`, `NotOlderThan` or a get).
    NotOlderThan(u64),
    /// A `continue` page: the version its token names, read from the history.
    History,
}

/// A request the cache will answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// What is read.
    pub read: Read,
    /// The namespace ("" for all namespaces or a cluster-scoped type).
    pub namespace: String,
    /// The options (selectors, paging, watch flags).
    pub opts: ListOptions,
    /// The representation asked for.
    pub wants: Wants,
    /// How current the answer must be.
    pub freshness: Freshness,
}

/// Why a read is forwarded instead (the `reason` label of the forward metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Not a get, list or watch.
    NotARead,
    /// A subresource (logs, status, scale...).
    Subresource,
    /// The client accepts no representation the cache produces (protobuf only).
    Representation,
    /// Options the cache does not interpret exactly (it lets the edge answer, errors included).
    Options,
    /// `resourceVersionMatch=Exact` (or a legacy exact list): the edge has that version.
    ExactVersion,
    /// A cluster-scoped type asked for inside a namespace.
    Scope,
    /// A `continue` token the edge minted (the first page was forwarded): the edge continues.
    EdgeContinue,
    /// A watch of one object by name (the legacy `/watch/…/{name}` path).
    WatchByName,
}

/// What starts the `continue` tokens the hub mints, so that a token always goes back to
/// whoever minted it (the edge's tokens name its storage keys; ours, our snapshots).
pub const HUB_TOKEN: &str = "kubehub.";

impl Forward {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::NotARead => "not_a_read",
            Forward::Subresource => "subresource",
            Forward::Representation => "representation",
            Forward::Options => "options",
            Forward::ExactVersion => "exact_version",
            Forward::Scope => "scope",
            Forward::EdgeContinue => "edge_continue",
            Forward::WatchByName => "watch_by_name",
        }
    }
}

/// Query parameters the cache interprets (others make it forward, except the harmless ones
/// below).
const UNDERSTOOD: &[&str] = &[
    "watch",
    "labelSelector",
    "fieldSelector",
    "limit",
    "continue",
    "resourceVersion",
    "resourceVersionMatch",
    "allowWatchBookmarks",
    "timeoutSeconds",
    "sendInitialEvents",
    "includeObject",
    // Formatting and tracing only.
    "pretty",
];

/// Decides how `info` is answered. `query` is the raw query string; `accept` the `Accept`
/// field.
pub fn plan(info: &RequestInfo<'_>, query: &str, accept: Option<&str>) -> Result<Plan, Forward> {
    let read = match info.verb {
        Verb::Get => Read::Get {
            name: info.name.to_string(),
        },
        Verb::List => Read::List,
        Verb::Watch if info.name.is_empty() => Read::Watch,
        Verb::Watch => return Err(Forward::WatchByName),
        _ => return Err(Forward::NotARead),
    };
    if !info.subresource.is_empty() {
        return Err(Forward::Subresource);
    }
    let q = Query::parse(query);
    if q.keys().any(|k| !UNDERSTOOD.contains(&k)) {
        return Err(Forward::Options);
    }
    // Invalid options: the edge words the error.
    let opts = ListOptions::from_query(&q).map_err(|_| Forward::Options)?;
    let wants = negotiate(accept).map_err(|_| Forward::Representation)?;
    if opts
        .continue_token
        .as_deref()
        .is_some_and(|t| !t.starts_with(HUB_TOKEN))
    {
        return Err(Forward::EdgeContinue);
    }
    let freshness = match (&read, opts.version) {
        // A get reads the object as of "not older than" its resourceVersion parameter.
        (Read::Get { .. }, Version::At(n, _)) => Freshness::NotOlderThan(n),
        (Read::List, _) if opts.continue_token.is_some() => Freshness::History,
        (Read::List, Version::At(_, VersionMatch::Exact)) => return Err(Forward::ExactVersion),
        // A legacy paginated list at a version reads exactly that version.
        (Read::List, Version::At(_, VersionMatch::NotOlderThan))
            if opts.limit.is_some_and(|l| l > 0) && q.get("resourceVersionMatch").is_none() =>
        {
            return Err(Forward::ExactVersion)
        }
        // A watch from N is served once the cache has reached N (it must not replay changes
        // at or below N); then from the history.
        (_, Version::At(n, _)) => Freshness::NotOlderThan(n),
        (_, Version::Any) => Freshness::Any,
        (_, Version::MostRecent) => Freshness::Current,
    };
    Ok(Plan {
        read,
        namespace: info.namespace.to_string(),
        opts,
        wants,
        freshness,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::request_info::request_info;

    fn p(method: &str, path: &str, query: &str, accept: Option<&str>) -> Result<Plan, Forward> {
        let info = request_info(method, path, query).expect("request info");
        plan(&info, query, accept)
    }

    #[test]
    fn reads_and_their_freshness() {
        let get = p("GET", "/api/v1/namespaces/ns/pods/a", "", None).unwrap();
        assert_eq!(get.read, Read::Get { name: "a".into() });
        assert_eq!(get.namespace, "ns");
        assert_eq!(get.freshness, Freshness::Current);
        let list = p("GET", "/api/v1/pods", "resourceVersion=0", None).unwrap();
        assert_eq!((list.read, list.freshness), (Read::List, Freshness::Any));
        let at = p("GET", "/api/v1/pods", "resourceVersion=7", None).unwrap();
        assert_eq!(at.freshness, Freshness::NotOlderThan(7));
        let page = p("GET", "/api/v1/pods", "limit=5&continue=kubehub.abc", None).unwrap();
        assert_eq!(page.freshness, Freshness::History);
        let resume = p("GET", "/api/v1/pods", "watch=1&resourceVersion=9", None).unwrap();
        assert_eq!(
            (resume.read, resume.freshness),
            (Read::Watch, Freshness::NotOlderThan(9))
        );
        let stream = p(
            "GET",
            "/api/v1/pods",
            "watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true",
            None,
        )
        .unwrap();
        assert_eq!(stream.freshness, Freshness::Current);
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
        let table = p("GET", "/api/v1/pods", "", Some(kubectl)).unwrap();
        assert_eq!(table.wants, Wants::Table("v1"));
    }

    #[test]
    fn what_is_forwarded_and_why() {
        let f = |m, path, q, a| p(m, path, q, a).unwrap_err();
        assert_eq!(
            f("POST", "/api/v1/namespaces/ns/pods", "", None),
            Forward::NotARead
        );
        assert_eq!(
            f(
                "GET",
                "/api/v1/pods",
                "limit=5&continue=eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ",
                None
            ),
            Forward::EdgeContinue
        );
        assert_eq!(
            f("GET", "/api/v1/watch/namespaces/ns/pods/p", "", None),
            Forward::WatchByName
        );
        assert_eq!(
            f("GET", "/api/v1/namespaces/ns/pods/a/log", "", None),
            Forward::Subresource
        );
        assert_eq!(
            f(
                "GET",
                "/api/v1/pods",
                "",
                Some("application/vnd.kubernetes.protobuf")
            ),
            Forward::Representation
        );
        assert_eq!(f("GET", "/api/v1/pods", "limit=x", None), Forward::Options);
        assert_eq!(
            f("GET", "/api/v1/pods", "shardSelector=a", None),
            Forward::Options
        );
        assert_eq!(
            f(
                "GET",
                "/api/v1/pods",
                "resourceVersion=5&resourceVersionMatch=Exact",
                None
            ),
            Forward::ExactVersion
        );
        assert_eq!(
            f("GET", "/api/v1/pods", "resourceVersion=5&limit=2", None),
            Forward::ExactVersion
        );
    }
}
