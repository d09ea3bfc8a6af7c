//! `admit`: may this request run now? Between `authorize` and `route`: fair sharing and rate
//! limits (API Priority and Fairness, simplified), and overload shedding. The state and the
//! algorithms are in [`crate::admission`]; this phase classifies the request and turns a
//! refusal into the answer.
//!
//! * **Exempt**: operators (hub.toml `limits.fairness.exempt_users`, or a user in one of
//!   `exempt_groups`) and requests that came over a peer link. The hub the user connected to
//!   admits a request **once**: a peer-forwarded request was admitted by the hub that relayed
//!   it (the user's tenant and user limits apply where the user's connections land), and the
//!   hub holding the tunnel applies only the per-cluster forward limits.
//! * **Weight** (hub.toml `weights`): `list` and `deletecollection` weigh `list`; `watch`
//!   `watch`; writes `write`; `pods/exec|attach|portforward` `exec`; the rest `get`.
//! * **Long-running** requests (watches, logs, proxies, exec / attach / port-forward; as
//!   kube-apiserver's long-running check) hold their seats only
//!   until they are handed to their backend (the cache, or the tunnel stream opened), not
//!   for their whole life; a watch's weight is the cost of its start.
//! * Refusals: an empty bucket, a full queue or a wait beyond `queue_timeout_ms` → **429**
//!   `TooManyRequests` with `Retry-After` (and `details.retryAfterSeconds`), the message naming
//!   the limit (`tenant "acme" is over its rate limit of 50 requests/s (burst 100) …`); above
//!   the memory ceiling → **503** `ServiceUnavailable` "this hub is over its memory ceiling".
//!   Both before anything left the hub, so a client's retry is safe.
//! * **Per cluster** ([`forward`]): just before a request is opened on the cluster's tunnel,
//!   the cluster's bucket and in-flight limit; over → 429 too.

use kubehub_access::Identity;
use kubehub_kapi::request_info::{RequestInfo, Verb};

use super::error::ProxyError;
use super::ProxyCtx;
use crate::admission::{Admit, ClusterSlot, Seat};
use crate::config::Weights;

/// What a request weighs, and whether it is long-running (see the module documentation).
pub fn weight(w: &Weights, info: &RequestInfo<'_>, upgrade: bool) -> (u32, bool) {
    if upgrade
        || matches!(info.subresource, "exec" | "attach" | "portforward") && info.resource == "pods"
    {
        return (w.exec, true);
    }
    // kube-apiserver's long-running requests besides watches: logs (`-f` streams for as long
    // as the container runs) and proxies.
    if matches!(info.subresource, "log" | "proxy") || info.verb == Verb::Proxy {
        return (w.get, true);
    }
    match info.verb {
        Verb::List | Verb::DeleteCollection => (w.list, false),
        Verb::Watch => (w.watch, true),
        Verb::Create | Verb::Update | Verb::Patch | Verb::Delete => (w.write, false),
        _ => (w.get, false),
    }
}

/// The admit phase: `Ok(None)` for an exempt request (or with fairness off), `Ok(Some)` with
/// the seats it holds until dropped.
pub async fn admit(
    ctx: &ProxyCtx,
    id: &Identity,
    weight: u32,
    via_peer: bool,
) -> Result<Option<Seat>, ProxyError> {
    let a = &ctx.admission;
    if via_peer {
        return Ok(None);
    }
    if a.exempt(&id.user, &id.groups) {
        ctx.metrics.admission.exempt.inc();
        return Ok(None);
    }
    if let Some(d) = a.memory.over() {
        return Err(ProxyError::Admission(d));
    }
    if !a.config().enabled {
        return Ok(None);
    }
    let index = &ctx.access.index;
    let generation = index.limits_generation();
    let limits = index.limits(&id.tenant);
    match a.admit(&id.tenant, &id.user, weight, limits.as_deref(), generation) {
        Ok(Admit::Now(seat)) => Ok(Some(seat)),
        Ok(Admit::Queued(waiting)) => {
            let timeout = std::time::Duration::from_millis(a.config().queue_timeout_ms);
            match waiting.wait(timeout).await {
                Ok(seat) => Ok(Some(seat)),
                Err(d) => Err(ProxyError::Admission(d)),
            }
        }
        Err(d) => Err(ProxyError::Admission(d)),
    }
}

/// The cluster's forward limits, on the hub whose tunnel the request goes through (exempt
/// users pass). The slot counts the request in flight until dropped (released at once for
/// long-running requests).
pub fn forward(
    ctx: &ProxyCtx,
    id: &Identity,
    cluster: &str,
    weight: u32,
    long_running: bool,
) -> Result<ClusterSlot, ProxyError> {
    let a = &ctx.admission;
    if !a.config().enabled || a.exempt(&id.user, &id.groups) {
        return Ok(ClusterSlot::none());
    }
    let index = &ctx.access.index;
    let limits = index.limits(&id.tenant);
    let mut slot = a
        .forward(
            &id.tenant,
            cluster,
            weight,
            limits.as_deref(),
            index.limits_generation(),
        )
        .map_err(ProxyError::Admission)?;
    if long_running {
        slot.release();
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_verb() {
        let w = Weights::default();
        let of = |path: &str, method: &str| {
            let (path, query) = path.split_once('?').unwrap_or((path, ""));
            let info = kubehub_kapi::request_info::request_info(method, path, query).unwrap();
            weight(&w, &info, false)
        };
        assert_eq!(of("/api/v1/pods", "GET"), (4, false));
        assert_eq!(of("/api/v1/namespaces/a/pods/x", "GET"), (1, false));
        assert_eq!(of("/api/v1/namespaces/a/pods", "POST"), (1, false));
        assert_eq!(of("/api/v1/namespaces/a/pods/x/exec", "POST"), (4, true));
        assert_eq!(of("/version", "GET"), (1, false));
        assert_eq!(of("/api/v1/namespaces/a/pods/x/log", "GET"), (1, true));
        assert_eq!(of("/api/v1/namespaces/a/pods?watch=1", "GET"), (2, true));
    }
}
