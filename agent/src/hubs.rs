//! Which hubs the agent keeps tunnels to, and its own entry in the metaserver's registry.
//!
//! **A static list** (`hubs` in agent.toml, or no `[meta]`): one tunnel per hub listed, kept
//! forever, each reconnecting after any failure with `[reconnect]`'s full-jitter backoff.
//!
//! **The registry** (`[meta]` and no `hubs` in agent.toml):
//! * The poller reads the live hubs (`GET /v1/registry/hubs`, mutual TLS with the
//!   agent's certificate) every `hub_refresh_ms` (±10%, so that agents do not poll in step).
//!   Until its first answer the agent dials the hubs the metaserver named at enrollment; when
//!   the metaserver cannot be reached, or lists no hub at all, it keeps the last list it had
//!   (warned once per outage).
//! * [`Chooser`] decides which of them to hold tunnels to: `hubs_per_agent` hubs (0: all),
//!   the first in the cluster's rendezvous order ([`rank`]: highest random weight of
//!   (cluster id, hub `agentEndpoint`)). The order is deterministic, so every agent of a
//!   cluster picks the same hubs, clusters spread evenly over the hubs, and a hub added or
//!   removed changes the choice of only the clusters that rank it first.
//! * A tunnel that fails is redialled with the backoff. Once it has been failing for
//!   `failover_after_ms`, or as soon as its hub is gone from the registry, the chooser gives
//!   the hub up and dials the next one in rendezvous order, passing over hubs given up in the last
//!   6 × `failover_after_ms` unless nothing else is left (then the one given up longest ago),
//!   after a random delay of up to `[reconnect] initial_ms` (the agents of a dead hub fail over
//!   at about the same time; their dials are spread like reconnects). A healthy tunnel is
//!   never moved: not back to a hub that returns, and not away from a hub that left the
//!   registry (the registry may lag); such a hub is dialled again, once its tunnel fails, only
//!   if it is still chosen. So a hub that joins takes agents only as they (re)connect.
//!
//! **Registration** (whenever `[meta]` is configured): every
//! `register_interval_ms`, and soon after the set changes, `PUT /v1/registry/agents/{cluster}`
//! with the hubs the agent has a tunnel up to (their registry ids, else their addresses).
//! Failures are warned about once per outage.
//!
//! Metrics: `kubehub_agent_hubs_known` (live hubs in the registry's last answer),
//! `kubehub_agent_hub_switches_total` (hubs given up on).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use crate::config::AgentConfig;
use crate::upstream::UpstreamClient;
use crate::{tunnel, Metrics};
use kubehub_enroll::MetaClient;

/// A hub skipped after it was given up on, for this many times `failover_after_ms`.
const AVOID_FACTOR: u32 = 6;
/// Registrations triggered by a change of the tunnels up are at least this far apart.
const MIN_REGISTER_GAP: Duration = Duration::from_secs(1);

/// A live hub as `GET /v1/registry/hubs` lists it (fields the agent does not know are ignored).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegistryHub {
    /// The hub's id.
    pub id: String,
    /// Its user-facing URL.
    pub endpoint: String,
    /// Where agents dial it, `host:port`.
    pub agent_endpoint: String,
    /// Its version.
    pub version: String,
    /// Its environment tag.
    pub environment: String,
    /// Agents connected to it.
    pub agents: u64,
    /// Its last heartbeat, unix seconds.
    pub updated: u64,
}

/// The answer of `GET /v1/registry/hubs`.
#[derive(Debug, Deserialize)]
struct HubList {
    items: Vec<RegistryHub>,
}

/// The live hubs as the agent uses them: agent endpoint → the name it reports the hub by
/// (its registry id; its address when the id is not known).
pub type LiveHubs = BTreeMap<String, String>;

/// The live hubs of a registry answer (entries without an agent endpoint are skipped).
pub fn live_hubs(items: &[RegistryHub]) -> LiveHubs {
    items
        .iter()
        .filter(|h| !h.agent_endpoint.is_empty())
        .map(|h| {
            let name = if h.id.is_empty() {
                h.agent_endpoint.clone()
            } else {
                h.id.clone()
            };
            (h.agent_endpoint.clone(), name)
        })
        .collect()
}

/// The rendezvous weight of hub `endpoint` for `cluster`: FNV-1a over the cluster id, a
/// separator byte that UTF-8 never contains, and the endpoint, then MurmurHash3's 64-bit
/// finalizer (so that similar names get unrelated weights). Stable across builds and
/// platforms: every agent of a cluster computes the same order.
pub fn weight(cluster: &str, endpoint: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster
        .bytes()
        .chain(std::iter::once(0xff))
        .chain(endpoint.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// The hubs in `cluster`'s rendezvous order: highest [`weight`] first (ties by name),
/// duplicates removed.
pub fn rank<'a>(cluster: &str, endpoints: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut v: Vec<(u64, &str)> = endpoints
        .into_iter()
        .map(|e| (weight(cluster, e), e))
        .collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    v.dedup_by(|a, b| a.1 == b.1);
    v.into_iter().map(|(_, e)| e).collect()
}

/// A held tunnel's state, as the chooser sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelState {
    /// The handshake succeeded and the connection is up.
    Up,
    /// Not up: dialling, backing off, or refused, since `since` (the first dial, or when the
    /// connection was lost).
    Failing {
        /// When it stopped being up (or was first dialled).
        since: Instant,
    },
}

/// What to change: hubs to dial (new tunnels) and hubs to give up (their tunnels stopped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New tunnels, in rendezvous order.
    pub dial: Vec<String>,
    /// Tunnels to stop: failing too long, or failing and gone from the registry.
    pub drop: Vec<String>,
}

impl Plan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.dial.is_empty() && self.drop.is_empty()
    }
}

/// Chooses the hubs to hold tunnels to (module documentation). Pure: the caller passes the
/// live hubs, the tunnels it holds and the time, and carries out the [`Plan`].
#[derive(Debug, Clone)]
pub struct Chooser {
    cluster: String,
    /// Tunnels wanted; 0: one per live hub.
    want: usize,
    failover_after: Duration,
    avoid_for: Duration,
    /// Hubs given up on, and when.
    given_up: HashMap<String, Instant>,
}

impl Chooser {
    /// For `cluster`, holding `hubs_per_agent` tunnels (0: all live hubs), giving a hub up
    /// after `failover_after` of failing.
    pub fn new(cluster: &str, hubs_per_agent: u32, failover_after: Duration) -> Chooser {
        Chooser {
            cluster: cluster.to_owned(),
            want: usize::try_from(hubs_per_agent).unwrap_or(usize::MAX),
            failover_after,
            avoid_for: failover_after.saturating_mul(AVOID_FACTOR),
            given_up: HashMap::new(),
        }
    }

    /// What to change, given the live hubs (agent endpoints) and the tunnels held.
    pub fn plan(&mut self, live: &[String], held: &[(String, TunnelState)], now: Instant) -> Plan {
        let avoid_for = self.avoid_for;
        self.given_up
            .retain(|_, at| now.saturating_duration_since(*at) < avoid_for);
        let live_set: HashSet<&str> = live.iter().map(String::as_str).collect();
        let mut keep: HashSet<&str> = HashSet::new();
        let mut giving_up: Vec<&str> = Vec::new();
        for (hub, state) in held {
            match *state {
                TunnelState::Failing { since }
                    if !live_set.contains(hub.as_str())
                        || now.saturating_duration_since(since) >= self.failover_after =>
                {
                    giving_up.push(hub)
                }
                _ => {
                    keep.insert(hub);
                }
            }
        }
        let need = if self.want == 0 {
            usize::MAX
        } else {
            self.want.saturating_sub(keep.len())
        };
        // Candidates: hubs not given up lately in rendezvous order, then the others, given up
        // longest ago first (those being given up now last, in rendezvous order).
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        for hub in rank(&self.cluster, live.iter().map(String::as_str)) {
            if keep.contains(hub) {
                continue;
            }
            if giving_up.contains(&hub) {
                stale.push((now, hub));
            } else if let Some(at) = self.given_up.get(hub) {
                stale.push((*at, hub));
            } else {
                fresh.push(hub);
            }
        }
        stale.sort_by_key(|(at, _)| *at);
        let chosen: Vec<&str> = fresh
            .into_iter()
            .chain(stale.into_iter().map(|(_, h)| h))
            .take(need)
            .collect();
        let plan = Plan {
            dial: chosen
                .iter()
                .filter(|h| !giving_up.contains(h))
                .map(|h| (*h).to_owned())
                .collect(),
            drop: giving_up
                .iter()
                .filter(|h| !chosen.contains(h))
                .map(|h| (*h).to_owned())
                .collect(),
        };
        for hub in &plan.drop {
            self.given_up.insert(hub.clone(), now);
        }
        plan
    }

    /// When a held tunnel will have been failing for `failover_after` (the next time
    /// [`Chooser::plan`] may decide otherwise without anything else changing).
    pub fn next_deadline(&self, held: &[(String, TunnelState)], now: Instant) -> Option<Instant> {
        held.iter()
            .filter_map(|(_, s)| match s {
                TunnelState::Failing { since } => since.checked_add(self.failover_after),
                TunnelState::Up => None,
            })
            .filter(|d| *d > now)
            .min()
    }
}

/// One held tunnel.
#[derive(Debug)]
struct Slot {
    /// Which task owns it: a task told to stop may still report once; it is not this one.
    generation: u64,
    /// The name the agent reports the hub by.
    name: String,
    state: TunnelState,
}

#[derive(Debug, Default)]
struct Slots {
    next_generation: u64,
    by_hub: BTreeMap<String, Slot>,
}

/// The tunnels the agent holds and their states: the tunnel tasks write, the chooser and the
/// registration read. A `std` mutex, never held across an await; every change bumps a watch.
#[derive(Debug)]
pub(crate) struct Book {
    slots: Mutex<Slots>,
    changed: watch::Sender<u64>,
}

impl Book {
    pub(crate) fn new() -> Book {
        Book {
            slots: Mutex::new(Slots::default()),
            changed: watch::Sender::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// A change of any tunnel.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A new tunnel to `hub`, failing (not up yet) from `now`; returns its generation.
    pub(crate) fn insert(&self, hub: &str, name: String, now: Instant) -> u64 {
        let generation = {
            let mut s = self.lock();
            s.next_generation += 1;
            let generation = s.next_generation;
            s.by_hub.insert(
                hub.to_owned(),
                Slot {
                    generation,
                    name,
                    state: TunnelState::Failing { since: now },
                },
            );
            generation
        };
        self.bump();
        generation
    }

    pub(crate) fn remove(&self, hub: &str) {
        let removed = self.lock().by_hub.remove(hub).is_some();
        if removed {
            self.bump();
        }
    }

    /// The tunnel of generation `generation` to `hub` is up, or is not (any more).
    fn set(&self, hub: &str, generation: u64, up: bool, now: Instant) {
        let changed = {
            let mut s = self.lock();
            match s.by_hub.get_mut(hub) {
                Some(slot) if slot.generation == generation => match (slot.state, up) {
                    (TunnelState::Up, false) => {
                        slot.state = TunnelState::Failing { since: now };
                        true
                    }
                    (TunnelState::Failing { .. }, true) => {
                        slot.state = TunnelState::Up;
                        true
                    }
                    _ => false,
                },
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// The registry names `hub` `name` now.
    fn rename(&self, hub: &str, name: &str) {
        if let Some(slot) = self.lock().by_hub.get_mut(hub) {
            if slot.name != name {
                name.clone_into(&mut slot.name);
            }
        }
    }

    /// The tunnels held and their states.
    pub(crate) fn held(&self) -> Vec<(String, TunnelState)> {
        self.lock()
            .by_hub
            .iter()
            .map(|(h, s)| (h.clone(), s.state))
            .collect()
    }

    /// The names of the hubs with a tunnel up, sorted.
    pub(crate) fn up_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .by_hub
            .values()
            .filter(|s| s.state == TunnelState::Up)
            .map(|s| s.name.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What a tunnel needs to dial.
#[derive(Clone)]
pub(crate) struct Dialer {
    pub(crate) cfg: Arc<AgentConfig>,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) upstream: UpstreamClient,
    pub(crate) plugins: crate::plugin::Plugins,
    pub(crate) metrics: Arc<Metrics>,
}

/// The span of a tunnel's task.
pub(crate) fn tunnel_span(cluster: &str, hub: &str) -> tracing::Span {
    tracing::info_span!("tunnel", cluster = %cluster, hub = %hub)
}

/// One hub's tunnel, first dialled after `first_delay`, reconnecting with full-jitter
/// exponential backoff after any failure, until `stop` (or the task is aborted). Reports its
/// state in `book` under `generation`.
pub(crate) async fn dial_loop(
    hub: String,
    generation: u64,
    d: Dialer,
    book: Arc<Book>,
    mut stop: watch::Receiver<bool>,
    first_delay: Duration,
) {
    if !first_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(first_delay) => {}
            _ = stop.changed() => return,
        }
    }
    let mut attempt = 0u32;
    loop {
        let up = AtomicBool::new(false);
        let run = tunnel::run_once(
            &hub,
            &d.cfg,
            d.tls.clone(),
            d.upstream.clone(),
            d.plugins.clone(),
            d.metrics.clone(),
            || {
                up.store(true, Ordering::Relaxed);
                book.set(&hub, generation, true, Instant::now());
            },
        );
        let res = tokio::select! {
            r = run => r,
            _ = stop.changed() => return,
        };
        book.set(&hub, generation, false, Instant::now());
        if up.load(Ordering::Relaxed) {
            attempt = 0;
        }
        let delay = crate::backoff(
            attempt,
            Duration::from_millis(d.cfg.reconnect.initial_ms),
            Duration::from_millis(d.cfg.reconnect.max_ms),
            &mut rand::rng(),
        );
        attempt = attempt.saturating_add(1);
        match res {
            Ok(()) => info!("tunnel closed; reconnecting in {delay:?}"),
            Err(e) => warn!("tunnel: {e}; reconnecting in {delay:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

/// The metaserver as the agent calls it after enrollment: mutual TLS with its certificate.
#[derive(Clone)]
pub(crate) struct MetaAccess {
    pub(crate) client: MetaClient,
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

/// `every`, ±10%.
fn jittered(every: Duration) -> Duration {
    let ms = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
    let spread = ms / 10;
    Duration::from_millis(rand::rng().random_range(ms - spread..=ms.saturating_add(spread)))
}

/// Reads the registry's live hubs every `every` into `live` (module documentation), until
/// `stop`.
pub(crate) async fn poll_registry(
    meta: MetaAccess,
    every: Duration,
    live: watch::Sender<LiveHubs>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut empty = false;
    loop {
        let answer = tokio::select! {
            a = meta.client.get::<HubList>(meta.tls.clone(), "/v1/registry/hubs") => a,
            _ = stop.changed() => return,
        };
        match answer {
            Ok(list) => {
                if failing {
                    info!("the registry of hubs answers again");
                    failing = false;
                }
                let hubs = live_hubs(&list.items);
                metrics
                    .hubs_known
                    .set(i64::try_from(hubs.len()).unwrap_or(i64::MAX));
                if hubs.is_empty() {
                    if !empty {
                        warn!("the registry lists no live hub: keeping the hubs known before");
                        empty = true;
                    }
                } else {
                    empty = false;
                    live.send_if_modified(|cur| {
                        if *cur == hubs {
                            return false;
                        }
                        info!(hubs = ?hubs.keys().collect::<Vec<_>>(), "live hubs");
                        *cur = hubs;
                        true
                    });
                }
            }
            Err(e) if !failing => {
                warn!(
                    "reading the registry of hubs: {e}; keeping the hubs known before and \
                     retrying every {every:?} (warned once until it answers)"
                );
                failing = true;
            }
            Err(e) => debug!("reading the registry of hubs: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(every)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Holds tunnels to the hubs the [`Chooser`] picks among `live`, until `stop`.
pub(crate) async fn choose(
    mut chooser: Chooser,
    d: Dialer,
    book: Arc<Book>,
    mut live: watch::Receiver<LiveHubs>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    let mut changes = book.subscribe();
    let mut live_open = true;
    let cluster = d.cfg.cluster_id.clone();
    loop {
        // Marked seen before reading, so that no change is missed.
        changes.borrow_and_update();
        let known = live.borrow_and_update().clone();
        let now = Instant::now();
        for (hub, name) in &known {
            book.rename(hub, name);
        }
        let endpoints: Vec<String> = known.keys().cloned().collect();
        let plan = chooser.plan(&endpoints, &book.held(), now);
        for hub in &plan.drop {
            if let Some(t) = tasks.remove(hub) {
                t.abort();
            }
            book.remove(hub);
            d.metrics.hub_switches.inc();
        }
        // The agents of a hub that died fail over together (their deadlines start when it
        // died): their first dials of the next hubs are spread like reconnects.
        let failover = !plan.drop.is_empty();
        for hub in &plan.dial {
            let name = known.get(hub).cloned().unwrap_or_else(|| hub.clone());
            let generation = book.insert(hub, name, now);
            let first_delay = if failover {
                crate::backoff(
                    0,
                    Duration::from_millis(d.cfg.reconnect.initial_ms),
                    Duration::from_millis(d.cfg.reconnect.max_ms),
                    &mut rand::rng(),
                )
            } else {
                Duration::ZERO
            };
            let task = dial_loop(
                hub.clone(),
                generation,
                d.clone(),
                book.clone(),
                stop.clone(),
                first_delay,
            )
            .instrument(tunnel_span(&cluster, hub));
            tasks.insert(hub.clone(), tokio::spawn(task));
        }
        if !plan.drop.is_empty() {
            warn!(given_up = ?plan.drop, dialling = ?plan.dial, "hub failover");
        } else if !plan.dial.is_empty() {
            info!(dialling = ?plan.dial, "hubs chosen");
        }
        let deadline = chooser.next_deadline(&book.held(), now);
        tokio::select! {
            _ = changes.changed() => {}
            r = live.changed(), if live_open => live_open = r.is_ok(),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = stop.changed() => break,
        }
    }
    for t in tasks.values() {
        t.abort();
    }
    for (_, t) in tasks {
        let _ = t.await;
    }
}

/// `PUT /v1/registry/agents/{cluster}`: exactly these fields (meta refuses others).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Registration<'a> {
    agent_id: &'a str,
    hubs: &'a [String],
    version: &'a str,
}

/// Its answer.
#[derive(Debug, Deserialize)]
struct Registered {
    #[serde(default)]
    ttl: u64,
}

/// `s` as one URL path segment (percent-encoding all but unreserved characters).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Registers the agent every `every`, and soon after the hubs with a tunnel up change,
/// until `stop` (module documentation).
pub(crate) async fn register(
    meta: MetaAccess,
    cluster: String,
    agent_id: String,
    every: Duration,
    book: Arc<Book>,
    mut stop: watch::Receiver<bool>,
) {
    let path = format!("/v1/registry/agents/{}", path_segment(&cluster));
    let mut changes = book.subscribe();
    let mut failing = false;
    let mut ttl_warned = false;
    loop {
        changes.borrow_and_update();
        let hubs = book.up_names();
        let body = Registration {
            agent_id: &agent_id,
            hubs: &hubs,
            version: env!("CARGO_PKG_VERSION"),
        };
        let answer = tokio::select! {
            a = meta.client.put::<_, Registered>(meta.tls.clone(), &path, &body) => a,
            _ = stop.changed() => return,
        };
        let sent = match answer {
            Ok(r) => {
                if failing {
                    info!(?hubs, "registered with the metaserver again");
                    failing = false;
                } else {
                    debug!(?hubs, "registered");
                }
                if !ttl_warned && r.ttl > 0 && Duration::from_secs(r.ttl) <= every {
                    warn!(
                        ttl_s = r.ttl,
                        "register_interval_ms ({every:?}) is not shorter than the registry's \
                         ttl: the registration lapses between heartbeats"
                    );
                    ttl_warned = true;
                }
                Some(hubs)
            }
            Err(e) => {
                if !failing {
                    warn!(
                        "registering with the metaserver: {e}; retrying every {every:?} \
                         (warned once until it works)"
                    );
                    failing = true;
                } else {
                    debug!("registering with the metaserver: {e}");
                }
                None
            }
        };
        // The next registration: after `every`, or sooner (but not within a second of this
        // one) when the hubs with a tunnel up are no longer those just registered.
        let next = tokio::time::Instant::now() + every;
        tokio::select! {
            _ = tokio::time::sleep(MIN_REGISTER_GAP.min(every)) => {}
            _ = stop.changed() => return,
        }
        let mut book_open = true;
        loop {
            if sent.is_some() && sent.as_deref() != Some(&book.up_names()[..]) {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                r = changes.changed(), if book_open => book_open = r.is_ok(),
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("edge-1.a_b~"), "edge-1.a_b~");
        assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn registry_answers_become_live_hubs() {
        let items: Vec<RegistryHub> = serde_json::from_str(
            r#"[{"id": "h1", "endpoint": "https://h1", "agentEndpoint": "h1:8444", "new": 1},
                {"id": "", "agentEndpoint": "h2:8444"},
                {"id": "h3", "endpoint": "https://h3"}]"#,
        )
        .unwrap();
        let live = live_hubs(&items);
        assert_eq!(
            live.into_iter().collect::<Vec<_>>(),
            vec![
                ("h1:8444".to_owned(), "h1".to_owned()),
                ("h2:8444".to_owned(), "h2:8444".to_owned())
            ]
        );
    }

    #[test]
    fn the_book_ignores_a_stopped_tunnel_and_lists_the_hubs_up() {
        let book = Book::new();
        let now = Instant::now();
        let old = book.insert("a:1", "a".into(), now);
        book.remove("a:1");
        let new = book.insert("a:1", "a".into(), now);
        book.set("a:1", old, true, now);
        assert_eq!(book.up_names(), Vec::<String>::new());
        book.set("a:1", new, true, now);
        book.insert("b:1", "b:1".into(), now);
        assert_eq!(book.up_names(), vec!["a".to_owned()]);
        book.rename("a:1", "hub-a");
        assert_eq!(book.up_names(), vec!["hub-a".to_owned()]);
        let later = now + Duration::from_secs(1);
        book.set("a:1", new, false, later);
        assert_eq!(
            book.held(),
            vec![
                ("a:1".to_owned(), TunnelState::Failing { since: later }),
                ("b:1".to_owned(), TunnelState::Failing { since: now })
            ]
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_millis(1000));
            assert!((900..=1100).contains(&d.as_millis()), "{d:?}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
