//! `bans`: the hub's side of bans ([`kubehub_access::ban`]) and of revocations, for requests
//! that are already running.
//!
//! New requests are checked in the proxy's phases ([`check_client`] before authentication,
//! [`check_identity`] after it, [`check_cluster`] after authorization): a banned request
//! gets 403, `Status` reason `Forbidden`, message `banned: <reason> (ban <id>…)`.
//!
//! Requests that run long — watches (from the cache or the edge), `logs -f`, exec, attach
//! and port-forward sessions — are entered for their lifetime into [`Streams`], a per-core
//! table (`Rc<RefCell<_>>`, never shared between cores, never held across an await) with
//! who is asking: token, identity, cluster, user agent, source address. Every change of the
//! access data (a line from meta's feed other than a heartbeat) wakes each core's
//! [`sweeper`], which checks its table against the index: an entry now banned, or whose
//! token no longer authenticates anyone (revoked, deleted, its user or tenant deleted), is
//! stopped. Stopping is the same clean end the user sees when the hub drains: a watch or
//! `logs -f` ends with its terminating chunk (kubectl sees the server end the watch), an
//! exec/attach/port-forward session is closed and the agent's stream reset. The check on
//! the request path stays a handful of hash lookups; the sweep runs only when access data
//! changed, on each core over that core's own long-running requests.
//!
//! Requests relayed to another hub (the holder of the cluster's tunnel) are not entered on
//! the hub that relays them: the holder enters and stops them, and its clean end reaches the
//! user through the relay. The client's address travels to the holder in the peer request's
//! [`CLIENT_FIELD`] field, so source bans hold there too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use kubehub_access::ban::ActiveBan;
use kubehub_access::{AuthnError, Identity, Index};
use kubehub_kapi::Status;
use tracing::info;

use crate::access::Access;
use crate::metrics::{Metrics, ReasonLabel};
use crate::proxy::error::ProxyError;

/// The field in which a hub relaying a request to the cluster's holder names the client's
/// address (set by the relaying hub; a user's own is dropped).
pub const CLIENT_FIELD: &str = crate::proxy::peer::SOURCE_FIELD;

/// Unix milliseconds now (what ban expiry is compared with).
pub fn now_ms() -> u64 {
    crate::access::unix_ms()
}

fn refused(metrics: &Metrics, ban: &ActiveBan) -> ProxyError {
    metrics
        .denied
        .get_or_create(&ReasonLabel { reason: "banned" })
        .inc();
    ProxyError::Banned(Box::new(Status::new(403, "Forbidden", ban.message())))
}

/// A client ban on this user agent and source address: 403.
pub fn check_client(
    index: &Index,
    metrics: &Metrics,
    user_agent: &[u8],
    source: Option<IpAddr>,
) -> Result<(), ProxyError> {
    if !index.has_bans() {
        return Ok(());
    }
    match index.client_ban(user_agent, source, now_ms()) {
        Some(b) => Err(refused(metrics, &b)),
        None => Ok(()),
    }
}

/// A ban on the identity's token, user or tenant: 403.
pub fn check_identity(index: &Index, metrics: &Metrics, id: &Identity) -> Result<(), ProxyError> {
    if !index.has_bans() {
        return Ok(());
    }
    match index.identity_ban(id, now_ms()) {
        Some(b) => Err(refused(metrics, &b)),
        None => Ok(()),
    }
}

/// A ban on the cluster: 403, whoever asks.
pub fn check_cluster(index: &Index, metrics: &Metrics, cluster: &str) -> Result<(), ProxyError> {
    if !index.has_bans() {
        return Ok(());
    }
    match index.cluster_ban(cluster, now_ms()) {
        Some(b) => Err(refused(metrics, &b)),
        None => Ok(()),
    }
}

/// The signal that ends one running request: set once, seen by every wait after.
#[derive(Debug, Default)]
pub struct Stop {
    set: Cell<bool>,
    notify: tokio::sync::Notify,
}

impl Stop {
    /// Whether the request was told to end.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    fn fire(&self) {
        self.set.set(true);
        self.notify.notify_one();
    }

    /// Resolves once the request is told to end.
    pub async fn wait(&self) {
        if self.set.get() {
            return;
        }
        self.notify.notified().await;
        // A permit from a fire whose waiter was dropped is consumed here: stays set.
        self.set.set(true);
    }
}

/// Who a running request is from.
#[derive(Debug)]
pub struct Party {
    /// The request's `Authorization` field (re-checked against the index: revocation).
    pub authorization: Option<Bytes>,
    /// The identity it authenticated as.
    pub identity: Arc<Identity>,
    /// The cluster it is for.
    pub cluster: String,
    /// Its `User-Agent`.
    pub user_agent: Bytes,
    /// The client's address (None: unknown).
    pub source: Option<IpAddr>,
}

impl Party {
    /// Why it must end now (a ban's message, or the revocation), if it must.
    fn verdict(&self, index: &Index, now_ms: u64) -> Option<(&'static str, String)> {
        let ban = index
            .identity_ban(&self.identity, now_ms)
            .or_else(|| index.cluster_ban(&self.cluster, now_ms))
            .or_else(|| index.client_ban(&self.user_agent, self.source, now_ms));
        if let Some(b) = ban {
            return Some(("banned", b.message()));
        }
        match index.authenticate(self.authorization.as_deref(), now_ms / 1000) {
            Err(AuthnError::Unknown) => Some(("revoked", "the token was revoked".into())),
            _ => None,
        }
    }
}

/// One core's long-running requests. See the [module](self) documentation.
#[derive(Debug, Default)]
pub struct Streams {
    next: Cell<u64>,
    open: RefCell<HashMap<u64, (Party, Rc<Stop>)>>,
}

/// A request's place in [`Streams`]; leaving it (drop) takes the request out.
#[derive(Debug)]
pub struct Entered {
    streams: Rc<Streams>,
    id: u64,
    metrics: Arc<Metrics>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.streams.open.borrow_mut().remove(&self.id);
        self.metrics.streams_running.dec();
    }
}

impl Streams {
    /// Enters a long-running request: its stop signal, and the entry that takes it out.
    pub fn enter(self: &Rc<Self>, party: Party, metrics: &Arc<Metrics>) -> (Entered, Rc<Stop>) {
        let id = self.next.get();
        self.next.set(id + 1);
        let stop = Rc::new(Stop::default());
        self.open.borrow_mut().insert(id, (party, stop.clone()));
        metrics.streams_running.inc();
        (
            Entered {
                streams: self.clone(),
                id,
                metrics: metrics.clone(),
            },
            stop,
        )
    }

    /// How many requests are entered.
    pub fn len(&self) -> usize {
        self.open.borrow().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops every entered request that is now banned or whose token was revoked; returns
    /// how many.
    pub fn sweep(&self, index: &Index, metrics: &Metrics) -> usize {
        let now = now_ms();
        let open = self.open.borrow();
        let mut ended = 0;
        for (party, stop) in open.values() {
            if stop.is_set() {
                continue;
            }
            if let Some((reason, why)) = party.verdict(index, now) {
                info!(
                    target: "kubehub::audit",
                    user = %party.identity.user,
                    tenant = %party.identity.tenant,
                    token = %party.identity.token_id,
                    cluster = %party.cluster,
                    source = ?party.source,
                    "ending a running request: {why}"
                );
                metrics
                    .streams_ended
                    .get_or_create(&ReasonLabel { reason })
                    .inc();
                stop.fire();
                ended += 1;
            }
        }
        ended
    }
}

/// The admin listener's `GET /bans`: the bans this hub holds (whether each is in force by
/// its clock), the access revision, and how many running requests a ban would end now.
pub fn admin_json(access: &Access, metrics: &Metrics) -> String {
    let now = now_ms();
    let bans: Vec<serde_json::Value> = access
        .index
        .bans()
        .into_iter()
        .map(|b| {
            let in_force = b.in_force(now);
            let mut v = serde_json::to_value(b).unwrap_or_default();
            v["inForce"] = serde_json::Value::Bool(in_force);
            v
        })
        .collect();
    let body = serde_json::json!({
        "revision": access.index.revision(),
        "bans": bans,
        "streamsRunning": metrics.streams_running.get(),
    });
    body.to_string()
}

/// One core's sweeper: after every change of the access data, [`Streams::sweep`]. Ends with
/// the hub (when the access data's change channel closes).
pub async fn sweeper(streams: Rc<Streams>, access: Arc<Access>, metrics: Arc<Metrics>) {
    let mut changes = access.subscribe();
    while changes.changed().await.is_ok() {
        if !streams.is_empty() {
            streams.sweep(&access.index, &metrics);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_access::ban::{Ban, BanTarget};
    use kubehub_access::build;
    use kubehub_access::{Line, Record};

    #[test]
    fn a_sweep_stops_banned_and_revoked_parties_only() {
        let (tok_a, rec_a) = build::mint("ann", "acme", &["edge"], 0);
        let (tok_b, rec_b) = build::mint("bob", "acme", &["edge"], 0);
        let records = vec![
            build::tenant("acme"),
            build::user("ann", "acme", &[]),
            build::user("bob", "acme", &[]),
            build::cluster("edge", "acme"),
            rec_a.clone(),
            rec_b,
        ];
        let index = Index::new();
        index.apply(&build::snapshot(1, records)).unwrap();
        let metrics = Arc::new(Metrics::new());
        let streams = Rc::new(Streams::default());
        let party = |tok: &str| {
            let auth = Bytes::from(format!("Bearer {tok}"));
            let identity = index.authenticate(Some(&auth), 0).unwrap();
            Party {
                authorization: Some(auth),
                identity,
                cluster: "edge".into(),
                user_agent: Bytes::from_static(b"kubectl/v1.32.4"),
                source: Some("127.0.0.1".parse().unwrap()),
            }
        };
        let (_a, stop_a) = streams.enter(party(&tok_a), &metrics);
        let (_b, stop_b) = streams.enter(party(&tok_b), &metrics);
        assert_eq!(metrics.streams_running.get(), 2);
        assert_eq!(streams.sweep(&index, &metrics), 0);
        let ban = Ban {
            id: "ban000000001".into(),
            target: BanTarget::User("ann".into()),
            reason: "abuse".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            created_by: "admin".into(),
        };
        index
            .apply(&Line::Put {
                revision: 2,
                record: Record::Ban(ban),
            })
            .unwrap();
        assert_eq!(streams.sweep(&index, &metrics), 1);
        assert!(stop_a.is_set() && !stop_b.is_set());
        // Bob's token revoked: his stream ends too.
        let bob_id = kubehub_access::Token::parse(&tok_b)
            .unwrap()
            .id()
            .to_owned();
        index
            .apply(&Line::Delete {
                revision: 3,
                key: format!("tokens/{bob_id}"),
            })
            .unwrap();
        assert_eq!(streams.sweep(&index, &metrics), 1);
        assert!(stop_b.is_set());
        drop(_a);
        assert_eq!(streams.len(), 1);
        assert_eq!(metrics.streams_running.get(), 1);
    }
}
