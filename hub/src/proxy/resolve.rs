//! `resolve`: which cluster a request is for, and what it asks of that cluster.
//!
//! Users address a cluster with a path prefix, as Rancher does: the kubeconfig's server URL is
//! `https://HUB/clusters/{cluster}` and every Kubernetes path follows it. A token bound to
//! exactly one cluster may leave the prefix out (server URL `https://HUB`, so that
//! `kubectl get --raw /version` works): the cluster is the token's. What remains is parsed the
//! way kube-apiserver parses it ([`kubehub_kapi::request_info`]): verb, group, resource,
//! subresource, namespace, name. Authorization and routing work from that.
//!
//! One exception: `/plugins/<name>[/<object>]` is not a Kubernetes path but one of the agent's
//! plugins (`native` commands, `host` facts), which the agent runs instead of forwarding to the
//! edge API server. It reads as a cluster-scoped resource request of API group
//! `plugins.kubehub.io` ([`kubehub_kapi::plugin`]: resource `<name>`, name `<object>`, verb
//! from the method, a GET of the collection a `list`), so grants name plugins as they name any
//! resource, and such a request is never answered from the cache.

use kubehub_access::Identity;
use kubehub_kapi::request_info::{decode_path, request_info, RequestInfo};

use super::error::ProxyError;
use crate::http::RequestHead;

/// A request's cluster and its path on that cluster's API server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The cluster id.
    pub cluster: String,
    /// Path and query on the edge API server (starts with `/`).
    pub path: String,
    /// The method, as sent.
    pub method: String,
    /// The path part, percent-decoded (what authorization reads).
    decoded: String,
}

impl Target {
    /// What the request asks, as kube-apiserver would see it (borrows from the target).
    pub fn info(&self) -> Result<RequestInfo<'_>, ProxyError> {
        if let Some(info) = kubehub_kapi::plugin::request_info(&self.method, &self.decoded) {
            return Ok(info);
        }
        let query = self.path.split_once('?').map_or("", |(_, q)| q);
        request_info(&self.method, &self.decoded, query)
            .map_err(|e| ProxyError::BadPath(Box::new(e.to_status())))
    }
}

impl Target {
    /// Whether the request is for one of the agent's plugins (`/plugins/<name>…`).
    pub fn is_plugin(&self) -> bool {
        kubehub_kapi::plugin::split(&self.decoded).is_some()
    }
}

/// Splits `/clusters/{cluster}/rest…` into the cluster and the Kubernetes path (`""` when
/// nothing follows the cluster).
pub fn split_cluster_path(path_and_query: &str) -> Option<(&str, &str)> {
    let rest = path_and_query.strip_prefix("/clusters/")?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (cluster, tail) = rest.split_at(end);
    if cluster.is_empty() {
        return None;
    }
    Some((cluster, tail))
}

/// The resolve phase: the cluster from the path's prefix, or the token's only cluster.
pub fn resolve(head: &RequestHead, id: &Identity) -> Result<Target, ProxyError> {
    let target = String::from_utf8_lossy(&head.target);
    let (cluster, rest) = match split_cluster_path(&target) {
        Some(prefixed) => prefixed,
        None => match &*id.clusters {
            [only] => (only.as_str(), &*target),
            several => return Err(ProxyError::NoCluster(hint(several))),
        },
    };
    let path = if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    let raw_path = path.split_once('?').map_or(path.as_str(), |(p, _)| p);
    let decoded = decode_path(raw_path)
        .map_err(|e| ProxyError::BadPath(Box::new(e.to_status())))?
        .into_owned();
    Ok(Target {
        cluster: cluster.to_owned(),
        method: String::from_utf8_lossy(&head.method).into_owned(),
        decoded,
        path,
    })
}

/// What a request without a cluster prefix is told (the token's clusters, a few of them).
fn hint(clusters: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut list = clusters
        .iter()
        .take(SHOWN)
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    if clusters.len() > SHOWN {
        list.push_str(", …");
    }
    format!(
        "the path does not name a cluster, and the token is valid on {} ({list}): \
         address one as /clusters/<id>/… (kubeconfig server: https://<hub>/clusters/<id>)",
        if clusters.len() == 1 {
            "1 cluster".to_owned()
        } else {
            format!("{} clusters", clusters.len())
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn identity(clusters: &[&str]) -> Identity {
        Identity {
            token_id: "abcdefghij01".into(),
            user: "alice".into(),
            tenant: "acme".into(),
            groups: vec![],
            clusters: clusters.iter().map(|c| c.to_string()).collect(),
            expires: 0,
        }
    }

    #[test]
    fn cluster_paths() {
        assert_eq!(
            split_cluster_path("/clusters/edge-1/api/v1/pods?watch=1"),
            Some(("edge-1", "/api/v1/pods?watch=1"))
        );
        assert_eq!(split_cluster_path("/clusters/edge-1"), Some(("edge-1", "")));
        assert_eq!(
            split_cluster_path("/clusters/edge-1?x=1"),
            Some(("edge-1", "?x=1"))
        );
        assert_eq!(split_cluster_path("/clusters//api"), None);
        assert_eq!(split_cluster_path("/api/v1"), None);
    }

    #[test]
    fn a_request_resolves_to_its_cluster_and_what_it_asks() {
        let mut buf = BytesMut::from(
            &b"POST /clusters/edge-1/api/v1/namespaces/default/pods/web/exec?command=ls HTTP/1.1\r\nHost: hub\r\n\r\n"[..],
        );
        let head = crate::http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let two = identity(&["edge-1", "edge-2"]);
        let t = resolve(&head, &two).unwrap();
        assert_eq!(t.cluster, "edge-1");
        assert_eq!(
            t.path,
            "/api/v1/namespaces/default/pods/web/exec?command=ls"
        );
        let info = t.info().unwrap();
        assert_eq!(info.verb.as_str(), "create");
        assert_eq!(
            (info.resource, info.subresource, &*info.name, info.namespace),
            ("pods", "exec", "web", "default")
        );
        let mut buf =
            BytesMut::from(&b"GET /clusters/edge-1?x=1 HTTP/1.1\r\nHost: hub\r\n\r\n"[..]);
        let head = crate::http::parse_head(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(resolve(&head, &two).unwrap().path, "/?x=1");
        let mut buf = BytesMut::from(&b"GET /api/v1/pods HTTP/1.1\r\nHost: hub\r\n\r\n"[..]);
        let head = crate::http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let e = resolve(&head, &two).unwrap_err();
        let s = e.status(crate::proxy::error::Reached::Hub).unwrap();
        assert_eq!(s.code, 404);
        assert!(
            s.message.contains("valid on 2 clusters (edge-1, edge-2)")
                && s.message.contains("/clusters/<id>/"),
            "{}",
            s.message
        );
        // A token for one cluster needs no prefix.
        let t = resolve(&head, &identity(&["edge-9"])).unwrap();
        assert_eq!(
            (t.cluster.as_str(), t.path.as_str()),
            ("edge-9", "/api/v1/pods")
        );
        let mut buf = BytesMut::from(
            &b"GET /clusters/e/api/v1/namespaces/a%zz/pods HTTP/1.1\r\nHost: hub\r\n\r\n"[..],
        );
        let head = crate::http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let e = resolve(&head, &two).unwrap_err();
        assert_eq!(
            e.status(crate::proxy::error::Reached::Hub).unwrap().code,
            400
        );
    }

    #[test]
    fn plugin_paths_are_resources_of_the_plugins_group() {
        let target = |raw: &str, id: &Identity| {
            let mut buf = BytesMut::from(format!("{raw} HTTP/1.1\r\nHost: hub\r\n\r\n").as_bytes());
            let head = crate::http::parse_head(&mut buf, 4096).unwrap().unwrap();
            resolve(&head, id).unwrap()
        };
        let two = identity(&["edge-1", "edge-2"]);
        let t = target("POST /clusters/edge-1/plugins/native/uptime", &two);
        assert!(t.is_plugin());
        assert_eq!(
            (t.cluster.as_str(), t.path.as_str()),
            ("edge-1", "/plugins/native/uptime")
        );
        let info = t.info().unwrap();
        assert!(info.is_resource_request);
        assert_eq!(
            (
                info.verb.as_str(),
                info.api_group,
                info.resource,
                &*info.name,
                info.namespace
            ),
            ("create", "plugins.kubehub.io", "native", "uptime", "")
        );
        // Without the prefix for a token bound to one cluster; percent-encoding decoded.
        let t = target("GET /%70lugins/native?x=1", &identity(&["edge-9"]));
        assert!(t.is_plugin());
        let info = t.info().unwrap();
        assert_eq!(
            (info.verb.as_str(), info.resource, &*info.name),
            ("list", "native", "")
        );
        let t = target("GET /clusters/edge-1/plugins/host", &two);
        let info = t.info().unwrap();
        assert_eq!((info.verb.as_str(), info.resource), ("get", "host"));
        // Kubernetes paths read as before.
        let t = target("GET /clusters/edge-1/api/v1/namespaces/plugins/pods", &two);
        assert!(!t.is_plugin());
        assert_eq!(t.info().unwrap().api_group, "");
        let t = target("GET /clusters/edge-1/plugins", &two);
        assert!(!t.is_plugin());
        assert!(!t.info().unwrap().is_resource_request);
    }
}
