//! `route`: which backend answers a request. Reads of a type the cluster's cache holds go to
//! the cache ([`cached`], with the [`crate::cache::plan`] saying how); everything else, and
//! reads the cache declines, goes to the cluster's tunnel ([`route`]). Requests for the
//! agent's plugins (`/plugins/…`) always go to the tunnel.

use std::sync::Arc;

use kubehub_kapi::request_info::RequestInfo;

use super::backend::Backend;
use super::error::ProxyError;
use super::resolve::Target;
use crate::cache::plan::{self, Plan};
use crate::cache::{Caches, ClusterCache, TypeSlot};
use crate::http::RequestHead;
use crate::registry::{Lookup, Registry};

/// The other hubs to forward a request for `cluster` to: `Some` only when no tunnel of it is
/// here and the directory names hubs that hold one.
pub fn peer(
    registry: &Registry,
    peers: &crate::peers::Peers,
    cluster: &str,
) -> Option<Vec<crate::peers::Holder>> {
    if registry.has_tunnel(cluster) {
        return None;
    }
    let holders = peers.holders(cluster);
    (!holders.is_empty()).then_some(holders)
}

/// What the cache has to do with a request.
#[derive(Debug)]
pub enum Cached {
    /// A read it may answer.
    Read(Arc<ClusterCache>, Arc<TypeSlot>, Box<Plan>),
    /// A write to a cached type (reads after it must see it).
    Write(Arc<TypeSlot>),
    /// Nothing.
    No,
}

/// The cache's part in a request.
pub fn cached(
    caches: &Caches,
    target: &Target,
    info: &RequestInfo<'_>,
    head: &RequestHead,
) -> Cached {
    // Plugins run at the agent, every time.
    if !info.is_resource_request || !caches.cfg.enabled || target.is_plugin() {
        return Cached::No;
    }
    let Some(cc) = caches.cluster(&target.cluster) else {
        return Cached::No;
    };
    let Some(slot) = cc.slot_of(info.api_group, info.api_version, info.resource) else {
        return Cached::No;
    };
    if !info.is_read() {
        return Cached::Write(slot);
    }
    let query = target.path.split_once('?').map_or("", |(_, q)| q);
    let accept = head
        .fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"accept"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok());
    // A cluster-scoped type under a namespace (`/namespaces/x/nodes`) is the edge's to refuse
    // (the namespaces type carries its own name as the namespace).
    let misplaced =
        !slot.info.namespaced && !info.namespace.is_empty() && info.resource != "namespaces";
    let planned = if misplaced {
        Err(plan::Forward::Scope)
    } else {
        plan::plan(info, query, accept)
    };
    match planned {
        Ok(p) => Cached::Read(cc, slot, Box::new(p)),
        Err(reason) => {
            caches
                .metrics
                .cache_reads
                .get_or_create(&crate::metrics::CacheLabel {
                    verb: match info.verb {
                        kubehub_kapi::request_info::Verb::List => "list",
                        kubehub_kapi::request_info::Verb::Watch => "watch",
                        _ => "get",
                    },
                    outcome: "forward",
                    reason: reason.as_str(),
                })
                .inc();
            Cached::No
        }
    }
}

/// The route phase.
pub fn route(
    registry: &Registry,
    cluster: &str,
    _info: &RequestInfo<'_>,
) -> Result<Backend, ProxyError> {
    match registry.lookup(cluster) {
        Lookup::Online(agent) => Ok(Backend::Tunnel(agent)),
        Lookup::Offline => Err(ProxyError::Offline {
            cluster: cluster.to_owned(),
            why: "its agent is not connected to this hub",
        }),
        Lookup::Unknown => Err(ProxyError::UnknownCluster(cluster.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::request_info::request_info;

    #[test]
    fn clusters_route_to_their_tunnel_or_say_why_not() {
        let r = Registry::new(&["a".into()]);
        let info = request_info("GET", "/api/v1/pods", "").unwrap();
        assert!(matches!(
            route(&r, "a", &info),
            Err(ProxyError::Offline { .. })
        ));
        assert!(matches!(route(&r, "b", &info), Err(ProxyError::UnknownCluster(c)) if c == "b"));
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        r.register("a", "agent-1", tx);
        assert!(
            matches!(route(&r, "a", &info), Ok(Backend::Tunnel(h)) if &*h.agent_id == "agent-1")
        );
    }
}
