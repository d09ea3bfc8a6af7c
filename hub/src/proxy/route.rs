//! `route`: which backend answers a request. Today every request goes to the cluster's tunnel;
//! the cache (planned) will take get / list / watch of the types it holds, decided here from
//! the request info, and the rest will still go through the tunnel.

use kubehub_kapi::request_info::RequestInfo;

use super::backend::Backend;
use super::error::ProxyError;
use crate::registry::{Lookup, Registry};

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
        assert!(matches!(route(&r, "a", &info), Ok(Backend::Tunnel(h)) if h.agent_id == "agent-1"));
    }
}
