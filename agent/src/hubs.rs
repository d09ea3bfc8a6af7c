//! Which hubs the agent keeps tunnels to, and its own entry in the metaserver's registry.
//!
//! **A static list** (`hubs` in agent.toml, or no `[meta]`): one tunnel per hub listed, kept
//! forever, each reconnecting after any failure with `[reconnect]`'s full-jitter backoff.
//!
//! **The registry** (`[meta]` and no `hubs` in agent.toml):
//! * The poller reads the hubs the agent may use (`GET /v1/registry/hubs`, mutual TLS with the
//!   agent's certificate: `{"items": [...], "ineligible": ["hub-id", ...]}`, meta leaving out
//!   hubs that drain, serve another environment, or that the canary rule keeps from this
//!   cluster) every `hub_refresh_ms` (±10%, so that agents do not poll in step). Until its
//!   first answer the agent dials the hubs the metaserver named at enrollment; when the
//!   metaserver cannot be reached, or lists no hub at all, it keeps the last list it had
//!   (warned once per outage).
//! * [`Chooser`] decides which of them to hold tunnels to: `hubs_per_agent` hubs (0: all),
//!   the first in the cluster's rendezvous order ([`rank`]: highest random weight of
//!   (cluster id, hub `agentEndpoint`)), but never two in the same zone (the hubs' failure
//!   domain; an empty zone is unknown and never conflicts) while a hub of another zone is
//!   available; only when there are fewer zones than hubs wanted does it fill up from zones
//!   already used, in rendezvous order. The order is deterministic, so every agent of a
//!   cluster picks the same hubs, clusters spread evenly over the hubs, and a hub added or
//!   removed changes the choice of only the clusters that rank it first.
//! * A tunnel that fails is redialled with the backoff. Once it has been failing for
//!   `failover_after_ms`, or as soon as its hub is gone from the registry, the chooser gives
//!   the hub up and dials the next one in rendezvous order, passing over hubs given up in the last
//!   6 × `failover_after_ms` unless nothing else is left (then the one given up longest ago),
//!   after a random delay of up to `[reconnect] initial_ms` (the agents of a dead hub fail over
//!   at about the same time; their dials are spread like reconnects).
//! * A hub that sends GOAWAY `NO_ERROR` on an established tunnel (it drains, for a restart) is
//!   given up at once and the next hub dialled without delay; the draining tunnel is not cut:
//!   its streams in flight finish and it closes when the hub closes it (unless nothing else is
//!   left: then it reconnects with the backoff, as any tunnel).
//! * A healthy tunnel to a hub the registry lists as ineligible is moved: after a random delay
//!   of up to `[reconnect] initial_ms`, the next hub is dialled, and the ineligible one closed
//!   once the others held are up (the agent is never left with fewer tunnels than before). At
//!   most `max_moves_per_minute` such voluntary moves a minute; none while the registry offers
//!   nowhere to go.
//! * Otherwise a healthy tunnel is not moved: not back to a hub that returns, and not away
//!   from a hub merely missing from the registry (the registry may lag); such a hub is dialled
//!   again, once its tunnel fails, only if it is still chosen. So a hub that joins takes
//!   agents only as they (re)connect, or by the rebalancing below.
//! * Rebalancing ([`Chooser::rebalance`], once per registry answer): when a hub the agent
//!   holds has more than 1.25 × the mean number of agents of the hubs it may use, the agent
//!   moves with probability `p = min(0.1, (a − m) / (10 a))` (`a`: its hub's agents, `m`: the
//!   mean) to the first hub in rendezvous order with fewer than `m` agents and at least two
//!   fewer than its hub (so that the move evens things out: one agent alone on one of three
//!   hubs stays), and in a zone its other tunnels do not use. The agents of one
//!   hub so move about a tenth of its excess `a − m` per `hub_refresh_ms`: the fleet's moves
//!   per second are at most (Σ excess) / (10 × hub_refresh_s) ≤ agents / (10 × hub_refresh_s)
//!   (and each agent's at most `max_moves_per_minute`); hub counts lag (hub heartbeats, then a
//!   refresh), and moving a tenth of the excess per refresh keeps the overshoot small.
//!
//! **Registration** (whenever `[meta]` is configured): every
//! `register_interval_ms`, and soon after the set changes, `PUT /v1/registry/agents/{cluster}`
//! with the hubs the agent has a tunnel up to (their registry ids, else their addresses; a
//! draining one no longer counts). Failures are warned about once per outage.
//!
//! Metrics: `kubehub_agent_hubs_known` (hubs the registry's last answer offers),
//! `kubehub_agent_hub_switches_total` (hubs given up on or left),
//! `kubehub_agent_hub_moves_total` (voluntary moves started).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kubehub_wire::ErrorCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
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
/// The window of `max_moves_per_minute`.
const MOVE_WINDOW: Duration = Duration::from_secs(60);
/// A hub with more agents than this times the mean is overloaded ([`Chooser::rebalance`]).
const OVERLOAD: f64 = 1.25;
/// Rebalancing moves about this share of a hub's excess agents per registry refresh.
const REBALANCE_SHARE: f64 = 0.1;

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
    /// Its failure domain (empty: unknown).
    pub zone: String,
    /// Agents connected to it.
    pub agents: u64,
    /// Its last heartbeat, unix seconds.
    pub updated: u64,
}

/// The answer of `GET /v1/registry/hubs`.
#[derive(Debug, Deserialize)]
struct HubList {
    items: Vec<RegistryHub>,
    /// Ids of live hubs this agent may not use (absent from older metaservers).
    #[serde(default)]
    ineligible: Vec<String>,
    /// Their agent endpoints (absent from older metaservers).
    #[serde(default, rename = "ineligibleEndpoints")]
    ineligible_endpoints: Vec<String>,
}

/// A hub the agent may use, as it knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveHub {
    /// The name the agent reports the hub by: its registry id; its address when the id is not
    /// known.
    pub name: String,
    /// Its zone (empty: unknown).
    pub zone: String,
    /// Agents connected to it.
    pub agents: u64,
}

/// The hubs as the agent uses them: agent endpoint → what it knows of the hub.
pub type LiveHubs = BTreeMap<String, LiveHub>;

/// What the registry's last answer says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    /// The hubs the agent may use.
    pub hubs: LiveHubs,
    /// The ids of the live hubs it may not use.
    pub ineligible: BTreeSet<String>,
    /// Their agent endpoints (a hub dialled by address before an answer named it is known
    /// by this).
    pub ineligible_endpoints: BTreeSet<String>,
    /// Answers read so far (rebalancing is considered once per answer).
    pub answers: u64,
}

impl Directory {
    /// Hubs known by address only (agent.toml's or enrollment's list).
    pub fn from_endpoints(endpoints: &[String]) -> Directory {
        Directory {
            hubs: endpoints
                .iter()
                .map(|h| {
                    let hub = LiveHub {
                        name: h.clone(),
                        ..LiveHub::default()
                    };
                    (h.clone(), hub)
                })
                .collect(),
            ineligible: BTreeSet::new(),
            ineligible_endpoints: BTreeSet::new(),
            answers: 0,
        }
    }

    /// The hubs as the chooser takes them.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.hubs
            .iter()
            .map(|(endpoint, h)| Candidate {
                endpoint: endpoint.clone(),
                zone: h.zone.clone(),
                agents: h.agents,
            })
            .collect()
    }
}

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
            let hub = LiveHub {
                name,
                zone: h.zone.clone(),
                agents: h.agents,
            };
            (h.agent_endpoint.clone(), hub)
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
    /// Up, but the hub sent GOAWAY `NO_ERROR`: it drains (a restart); the streams in flight
    /// finish, no new ones come.
    Draining,
}

/// What to change: hubs to dial (new tunnels) and hubs to give up (their tunnels stopped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New tunnels, in the order chosen.
    pub dial: Vec<String>,
    /// Tunnels to stop: failing too long, failing and gone from the registry, draining, or
    /// left for another hub (a voluntary move whose new tunnel is up).
    pub drop: Vec<String>,
    /// The dials replace hubs that failed: spread them like reconnects (the agents of a dead
    /// hub all fail over at about the same time). Otherwise dial at once.
    pub spread: bool,
    /// Voluntary moves started: these hubs are left once the new tunnels are up.
    pub moving: Vec<String>,
}

impl Plan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.dial.is_empty() && self.drop.is_empty() && self.moving.is_empty()
    }
}

/// A hub the chooser may pick ([`Chooser::plan_registry`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidate {
    /// Its agent endpoint.
    pub endpoint: String,
    /// Its zone (empty: unknown; never conflicts).
    pub zone: String,
    /// Agents connected to it (for [`Chooser::rebalance`]).
    pub agents: u64,
}

/// Chooses the hubs to hold tunnels to (module documentation). Pure but for its random draws
/// (delays, rebalancing): the caller passes the live hubs, the tunnels it holds and the time,
/// and carries out the [`Plan`].
#[derive(Debug, Clone)]
pub struct Chooser {
    cluster: String,
    /// Tunnels wanted; 0: one per live hub.
    want: usize,
    failover_after: Duration,
    avoid_for: Duration,
    /// Hubs given up on, and when.
    given_up: HashMap<String, Instant>,
    /// Voluntary moves allowed per [`MOVE_WINDOW`].
    max_moves: usize,
    /// Longest random delay before a move away from an ineligible hub starts.
    move_delay: Duration,
    /// Held hubs found ineligible, and when the move away may start.
    pending: HashMap<String, Instant>,
    /// Held hubs being left: stopped once the others held are up.
    leaving: HashSet<String>,
    /// Hub to dial first for a rebalancing move.
    prefer: Option<String>,
    /// When the voluntary moves of the last [`MOVE_WINDOW`] started.
    moves: VecDeque<Instant>,
    rng: StdRng,
}

impl Chooser {
    /// For `cluster`, holding `hubs_per_agent` tunnels (0: all live hubs), giving a hub up
    /// after `failover_after` of failing; 6 voluntary moves a minute, started at once (see
    /// [`Chooser::with_moves`]).
    pub fn new(cluster: &str, hubs_per_agent: u32, failover_after: Duration) -> Chooser {
        Chooser {
            cluster: cluster.to_owned(),
            want: usize::try_from(hubs_per_agent).unwrap_or(usize::MAX),
            failover_after,
            avoid_for: failover_after.saturating_mul(AVOID_FACTOR),
            given_up: HashMap::new(),
            max_moves: 6,
            move_delay: Duration::ZERO,
            pending: HashMap::new(),
            leaving: HashSet::new(),
            prefer: None,
            moves: VecDeque::new(),
            rng: StdRng::from_rng(&mut rand::rng()),
        }
    }

    /// At most `per_minute` voluntary moves a minute, each started after a random delay of
    /// up to `max_delay`.
    pub fn with_moves(mut self, per_minute: u32, max_delay: Duration) -> Chooser {
        self.max_moves = usize::try_from(per_minute).unwrap_or(usize::MAX);
        self.move_delay = max_delay;
        self
    }

    /// Random draws from `seed` (tests).
    pub fn with_seed(mut self, seed: u64) -> Chooser {
        self.rng = StdRng::seed_from_u64(seed);
        self
    }

    /// What to change, given the live hubs (agent endpoints, no zones known, none ineligible)
    /// and the tunnels held.
    pub fn plan(&mut self, live: &[String], held: &[(String, TunnelState)], now: Instant) -> Plan {
        let live: Vec<Candidate> = live
            .iter()
            .map(|e| Candidate {
                endpoint: e.clone(),
                ..Candidate::default()
            })
            .collect();
        self.plan_registry(&live, &[], held, now)
    }

    /// Whether a voluntary move may start now (rate limit).
    fn may_move(&mut self, now: Instant) -> bool {
        while self
            .moves
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= MOVE_WINDOW)
        {
            self.moves.pop_front();
        }
        self.moves.len() < self.max_moves
    }

    /// What to change, given the hubs the agent may use (`live`), the agent endpoints of the
    /// hubs the registry says it may not use (`ineligible`), and the tunnels held.
    pub fn plan_registry(
        &mut self,
        live: &[Candidate],
        ineligible: &[String],
        held: &[(String, TunnelState)],
        now: Instant,
    ) -> Plan {
        let avoid_for = self.avoid_for;
        self.given_up
            .retain(|_, at| now.saturating_duration_since(*at) < avoid_for);
        let live_set: HashSet<&str> = live.iter().map(|c| c.endpoint.as_str()).collect();
        let zone_of: HashMap<&str, &str> = live
            .iter()
            .map(|c| (c.endpoint.as_str(), c.zone.as_str()))
            .collect();
        let is_held = |h: &str| held.iter().any(|(x, _)| x == h);
        let up = |h: &str| held.iter().any(|(x, s)| x == h && *s == TunnelState::Up);

        // Moves away from ineligible hubs: scheduled when first seen (after a random delay),
        // cancelled if the hub becomes eligible again first; started when due, within the rate
        // limit, and only with somewhere to go.
        self.leaving.retain(|h| is_held(h));
        self.pending
            .retain(|h, _| up(h) && ineligible.contains(h) && !live_set.contains(h.as_str()));
        for hub in ineligible {
            if up(hub) && !self.leaving.contains(hub) && !self.pending.contains_key(hub) {
                let ms = u64::try_from(self.move_delay.as_millis()).unwrap_or(u64::MAX);
                let delay = Duration::from_millis(self.rng.random_range(0..=ms));
                self.pending.insert(hub.clone(), now + delay);
            }
        }
        let mut due: Vec<(Instant, String)> = self
            .pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(h, at)| (*at, h.clone()))
            .collect();
        due.sort();
        let mut moving = Vec::new();
        for (_, hub) in due {
            if live.is_empty() || !self.may_move(now) {
                break;
            }
            self.pending.remove(&hub);
            self.leaving.insert(hub.clone());
            self.moves.push_back(now);
            moving.push(hub);
        }

        let mut keep: Vec<&str> = Vec::new();
        let mut leaving_held: Vec<&str> = Vec::new();
        let mut failed: Vec<&str> = Vec::new();
        let mut draining: Vec<&str> = Vec::new();
        for (hub, state) in held {
            match *state {
                TunnelState::Draining => draining.push(hub),
                TunnelState::Failing { since }
                    if !live_set.contains(hub.as_str())
                        || now.saturating_duration_since(since) >= self.failover_after =>
                {
                    failed.push(hub)
                }
                _ if self.leaving.contains(hub) => leaving_held.push(hub),
                _ => keep.push(hub),
            }
        }
        let giving_up: Vec<&str> = failed.iter().chain(&draining).copied().collect();
        let need = if self.want == 0 {
            usize::MAX
        } else {
            self.want.saturating_sub(keep.len())
        };
        // Candidates: the hub a rebalancing move goes to, then hubs not given up lately in
        // rendezvous order, then the others, given up longest ago first (those being given up
        // now last, in rendezvous order).
        let mut fresh = Vec::new();
        let mut stale = Vec::new();
        for hub in rank(&self.cluster, live_set.iter().copied()) {
            if keep.contains(&hub) || leaving_held.contains(&hub) {
                continue;
            }
            if giving_up.contains(&hub) {
                stale.push((now, hub));
            } else if let Some(at) = self.given_up.get(hub) {
                stale.push((*at, hub));
            } else if self.prefer.as_deref() == Some(hub) {
                fresh.insert(0, hub);
            } else {
                fresh.push(hub);
            }
        }
        stale.sort_by_key(|(at, _)| *at);
        let ordered: Vec<&str> = fresh
            .into_iter()
            .chain(stale.into_iter().map(|(_, h)| h))
            .collect();
        // Zones: first one hub per zone not used yet (an empty zone is unknown: never a
        // conflict), then, when there are fewer zones than hubs wanted, the rest in order.
        let zone = |h: &str| zone_of.get(h).copied().unwrap_or("");
        let mut used: HashSet<&str> = keep.iter().map(|h| zone(h)).collect();
        let mut chosen: Vec<&str> = Vec::new();
        for hub in &ordered {
            if chosen.len() >= need {
                break;
            }
            let z = zone(hub);
            if z.is_empty() || !used.contains(z) {
                chosen.push(hub);
                used.insert(z);
            }
        }
        for hub in &ordered {
            if chosen.len() >= need {
                break;
            }
            if !chosen.contains(hub) {
                chosen.push(hub);
            }
        }
        let dial: Vec<String> = chosen
            .iter()
            .filter(|h| !giving_up.contains(h))
            .map(|h| (*h).to_owned())
            .collect();
        let mut drop: Vec<String> = giving_up
            .iter()
            .filter(|h| !chosen.contains(h))
            .map(|h| (*h).to_owned())
            .collect();
        // A hub being left goes once every other tunnel kept is up and nothing is dialled.
        let settled = dial.is_empty()
            && !giving_up.iter().any(|h| chosen.contains(h))
            && keep.iter().all(|h| up(h));
        if settled {
            drop.extend(leaving_held.iter().map(|h| (*h).to_owned()));
        }
        let spread = failed.iter().any(|h| drop.iter().any(|d| d == h));
        for hub in &drop {
            self.given_up.insert(hub.clone(), now);
            self.leaving.remove(hub);
        }
        // A rebalancing move's hub is preferred for its first dial only.
        if !dial.is_empty() || self.leaving.is_empty() {
            self.prefer = None;
        }
        Plan {
            dial,
            drop,
            spread,
            moving,
        }
    }

    /// Rebalancing (module documentation), once per registry answer: may start a voluntary
    /// move away from a held hub with more than 1.25 × the mean agents of `live`, towards the
    /// first hub in rendezvous order with fewer than the mean. `true`: a move started (the
    /// next [`Chooser::plan_registry`] dials its hub).
    pub fn rebalance(
        &mut self,
        live: &[Candidate],
        held: &[(String, TunnelState)],
        now: Instant,
    ) -> bool {
        if live.len() < 2 || self.prefer.is_some() || !self.leaving.is_empty() {
            return false;
        }
        let total: u64 = live.iter().map(|c| c.agents).sum();
        let mean = total as f64 / live.len() as f64;
        let agents = |h: &str| live.iter().find(|c| c.endpoint == h).map(|c| c.agents);
        let Some((hub, a)) = held
            .iter()
            .filter(|(_, s)| *s == TunnelState::Up)
            .filter_map(|(h, _)| agents(h).map(|a| (h, a)))
            .filter(|(h, _)| !self.pending.contains_key(*h))
            .max_by_key(|(_, a)| *a)
        else {
            return false;
        };
        let a = a as f64;
        if a <= OVERLOAD * mean {
            return false;
        }
        // Zones of the other tunnels: the move keeps them apart.
        let zone = |h: &str| {
            live.iter()
                .find(|c| c.endpoint == h)
                .map(|c| c.zone.as_str())
        };
        let used: HashSet<&str> = held
            .iter()
            .filter(|(h, _)| h != hub)
            .filter_map(|(h, _)| zone(h))
            .filter(|z| !z.is_empty())
            .collect();
        let lighter: Vec<&str> = live
            .iter()
            .filter(|c| (c.agents as f64) < mean && !used.contains(c.zone.as_str()))
            // Only a move that evens things out: afterwards the hub left keeps at least as
            // many as the hub joined (else a small fleet's agents hop back and forth).
            .filter(|c| (c.agents as f64) + 2.0 <= a)
            .filter(|c| !held.iter().any(|(h, _)| *h == c.endpoint))
            .map(|c| c.endpoint.as_str())
            .collect();
        let Some(target) = rank(&self.cluster, lighter)
            .first()
            .map(|t| (*t).to_owned())
        else {
            return false;
        };
        let p = ((a - mean) / a * REBALANCE_SHARE).min(REBALANCE_SHARE);
        if !self.rng.random_bool(p) || !self.may_move(now) {
            return false;
        }
        self.moves.push_back(now);
        self.leaving.insert(hub.clone());
        self.prefer = Some(target);
        true
    }

    /// When [`Chooser::plan_registry`] may next decide otherwise without anything else
    /// changing: a held tunnel will have been failing for `failover_after`, a move away from
    /// an ineligible hub is due, or the rate limit lets a due one start.
    pub fn next_deadline(&self, held: &[(String, TunnelState)], now: Instant) -> Option<Instant> {
        let failing = held.iter().filter_map(|(_, s)| match s {
            TunnelState::Failing { since } => since.checked_add(self.failover_after),
            TunnelState::Up | TunnelState::Draining => None,
        });
        let moves = self.pending.values().map(|at| {
            let allowed = match self.moves.front() {
                Some(first) if self.moves.len() >= self.max_moves => *first + MOVE_WINDOW,
                _ => now,
            };
            (*at).max(allowed)
        });
        failing.chain(moves).filter(|d| *d > now).min()
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
                    (TunnelState::Up | TunnelState::Draining, false) => {
                        slot.state = TunnelState::Failing { since: now };
                        true
                    }
                    (TunnelState::Failing { .. } | TunnelState::Draining, true) => {
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

    /// The hub of the tunnel of generation `generation` sent GOAWAY `NO_ERROR` on it.
    fn set_draining(&self, hub: &str, generation: u64) {
        let changed = {
            let mut s = self.lock();
            match s.by_hub.get_mut(hub) {
                Some(slot) if slot.generation == generation && slot.state == TunnelState::Up => {
                    slot.state = TunnelState::Draining;
                    true
                }
                _ => false,
            }
        };
        if changed {
            self.bump();
        }
    }

    /// The endpoints of the held tunnels whose hubs have one of these names.
    fn named(&self, names: &BTreeSet<String>) -> Vec<String> {
        self.lock()
            .by_hub
            .iter()
            .filter(|(_, s)| names.contains(&s.name))
            .map(|(h, _)| h.clone())
            .collect()
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

/// Resolves when the chooser lets the tunnel go (its sender sends or is dropped); never
/// without one (a static list's tunnels are kept forever).
async fn released(release: &mut Option<watch::Receiver<bool>>) {
    match release {
        Some(rx) => {
            let _ = rx.changed().await;
        }
        None => std::future::pending().await,
    }
}

/// One hub's tunnel, first dialled after `first_delay`, reconnecting with full-jitter
/// exponential backoff after any failure, until `stop` (or the task is aborted), or until
/// `release`: a tunnel that is up is left gracefully — the agent says GOAWAY (the hub sends
/// it no new request), its streams in flight finish (within [`tunnel::LEAVE_GRACE`]), then
/// it closes; one the hub is draining is left to finish the same way; one that is down ends
/// at once. Reports its state in `book` under `generation`.
pub(crate) async fn dial_loop(
    hub: String,
    generation: u64,
    d: Dialer,
    book: Arc<Book>,
    mut stop: watch::Receiver<bool>,
    mut release: Option<watch::Receiver<bool>>,
    first_delay: Duration,
) {
    if !first_delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(first_delay) => {}
            _ = stop.changed() => return,
            _ = released(&mut release) => return,
        }
    }
    let mut attempt = 0u32;
    loop {
        let up = AtomicBool::new(false);
        let drained = Arc::new(AtomicBool::new(false));
        let on_goaway = {
            let (book, hub, drained) = (book.clone(), hub.clone(), drained.clone());
            move |code: ErrorCode| {
                if code == ErrorCode::NO_ERROR {
                    drained.store(true, Ordering::Relaxed);
                    book.set_draining(&hub, generation);
                }
            }
        };
        let (leave, leave_rx) = watch::channel(false);
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
            on_goaway,
            leave_rx,
        );
        tokio::pin!(run);
        let mut letting_go = false;
        let res = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = stop.changed() => return,
                _ = released(&mut release), if !letting_go => {
                    if !drained.load(Ordering::Relaxed) {
                        if !up.load(Ordering::Relaxed) {
                            return;
                        }
                        // Up: the agent says GOAWAY; its streams finish, then it closes.
                        let _ = leave.send(true);
                    }
                    // Draining: its streams finish, then it closes (the hub closes it).
                    letting_go = true;
                }
            }
        };
        if letting_go {
            info!(
                "drained tunnel closed: {}",
                res.err().map(|e| e.to_string()).unwrap_or_default()
            );
            return;
        }
        // A tunnel its hub drained stays `Draining` until it is up again: the chooser gives it
        // up at once when there is another hub to go to, however the two race.
        if !drained.load(Ordering::Relaxed) {
            book.set(&hub, generation, false, Instant::now());
        }
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
            _ = released(&mut release) => return,
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
    live: watch::Sender<Directory>,
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
                        warn!(
                            ineligible = ?list.ineligible,
                            "the registry lists no hub this agent may use: keeping the hubs \
                             known before"
                        );
                        empty = true;
                    }
                } else {
                    empty = false;
                    let ineligible: BTreeSet<String> = list.ineligible.into_iter().collect();
                    let ineligible_endpoints: BTreeSet<String> =
                        list.ineligible_endpoints.into_iter().collect();
                    live.send_modify(|cur| {
                        if cur.hubs.keys().ne(hubs.keys()) || cur.ineligible != ineligible {
                            info!(
                                hubs = ?hubs.keys().collect::<Vec<_>>(),
                                ?ineligible,
                                "hubs the registry offers"
                            );
                        }
                        cur.hubs = hubs;
                        cur.ineligible = ineligible;
                        cur.ineligible_endpoints = ineligible_endpoints;
                        cur.answers = cur.answers.wrapping_add(1);
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

/// A tunnel task the chooser holds: abort it, or let it go ([`dial_loop`]'s `release`).
struct Task {
    handle: tokio::task::JoinHandle<()>,
    release: watch::Sender<bool>,
}

/// Holds tunnels to the hubs the [`Chooser`] picks among `live`, until `stop`.
pub(crate) async fn choose(
    mut chooser: Chooser,
    d: Dialer,
    book: Arc<Book>,
    mut live: watch::Receiver<Directory>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks: HashMap<String, Task> = HashMap::new();
    // Tunnels let go while draining: they end by themselves (aborted at stop).
    let mut going: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    let mut changes = book.subscribe();
    let mut live_open = true;
    let mut answers = None;
    let cluster = d.cfg.cluster_id.clone();
    loop {
        // Marked seen before reading, so that no change is missed.
        changes.borrow_and_update();
        let known = live.borrow_and_update().clone();
        let now = Instant::now();
        for (hub, h) in &known.hubs {
            book.rename(hub, &h.name);
        }
        let candidates = known.candidates();
        if answers
            .replace(known.answers)
            .is_some_and(|a| a != known.answers)
            && chooser.rebalance(&candidates, &book.held(), now)
        {
            info!("rebalancing: moving a tunnel to a less loaded hub");
            d.metrics.hub_moves.inc();
        }
        let mut ineligible = book.named(&known.ineligible);
        for e in &known.ineligible_endpoints {
            if !ineligible.contains(e) {
                ineligible.push(e.clone());
            }
        }
        let held = book.held();
        let plan = chooser.plan_registry(&candidates, &ineligible, &held, now);
        for hub in &plan.drop {
            if let Some(t) = tasks.remove(hub) {
                // A tunnel that is up or draining is let go gracefully (its streams in flight
                // finish; one the agent leaves says GOAWAY first, so the hub sends it nothing
                // new); one that is failing has nothing to finish.
                let graceful = held.iter().any(|(h, s)| {
                    h == hub && matches!(*s, TunnelState::Draining | TunnelState::Up)
                });
                if graceful {
                    let _ = t.release.send(true);
                    going.push(t.handle);
                } else {
                    t.handle.abort();
                }
            }
            book.remove(hub);
            d.metrics.hub_switches.inc();
        }
        going.retain(|t| !t.is_finished());
        for hub in &plan.moving {
            d.metrics.hub_moves.inc();
            info!(%hub, "the registry says this agent may not use the hub: moving");
        }
        for hub in &plan.dial {
            let name = known
                .hubs
                .get(hub)
                .map_or_else(|| hub.clone(), |h| h.name.clone());
            let generation = book.insert(hub, name, now);
            // The agents of a hub that died fail over together (their deadlines start when
            // it died): their first dials of the next hubs are spread like reconnects.
            let first_delay = if plan.spread {
                crate::backoff(
                    0,
                    Duration::from_millis(d.cfg.reconnect.initial_ms),
                    Duration::from_millis(d.cfg.reconnect.max_ms),
                    &mut rand::rng(),
                )
            } else {
                Duration::ZERO
            };
            let (release, release_rx) = watch::channel(false);
            let task = dial_loop(
                hub.clone(),
                generation,
                d.clone(),
                book.clone(),
                stop.clone(),
                Some(release_rx),
                first_delay,
            )
            .instrument(tunnel_span(&cluster, hub));
            let handle = tokio::spawn(task);
            tasks.insert(hub.clone(), Task { handle, release });
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
    let handles: Vec<_> = tasks.into_values().map(|t| t.handle).chain(going).collect();
    for t in &handles {
        t.abort();
    }
    for t in handles {
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
        let list: HubList = serde_json::from_str(
            r#"{"items": [{"id": "h1", "endpoint": "https://h1", "agentEndpoint": "h1:8444",
                           "zone": "z1", "agents": 7, "new": 1},
                          {"id": "", "agentEndpoint": "h2:8444"},
                          {"id": "h3", "endpoint": "https://h3"}],
                "ineligible": ["h4"], "ineligibleEndpoints": ["h4:8444"]}"#,
        )
        .unwrap();
        assert_eq!(list.ineligible, ["h4"]);
        assert_eq!(list.ineligible_endpoints, ["h4:8444"]);
        let live = live_hubs(&list.items);
        let hub = |name: &str, zone: &str, agents| LiveHub {
            name: name.into(),
            zone: zone.into(),
            agents,
        };
        assert_eq!(
            live.into_iter().collect::<Vec<_>>(),
            vec![
                ("h1:8444".to_owned(), hub("h1", "z1", 7)),
                ("h2:8444".to_owned(), hub("h2:8444", "", 0))
            ]
        );
        // An older metaserver's answer has no `ineligible`.
        let old: HubList = serde_json::from_str(r#"{"items": []}"#).unwrap();
        assert!(old.ineligible.is_empty() && old.ineligible_endpoints.is_empty());
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
        assert_eq!(
            book.named(&["hub-a".to_owned(), "x".to_owned()].into()),
            ["a:1"]
        );
        // GOAWAY NO_ERROR: draining, no longer registered as held; a stale generation's
        // report changes nothing.
        book.set_draining("a:1", old);
        assert_eq!(book.up_names(), vec!["hub-a".to_owned()]);
        book.set_draining("a:1", new);
        assert_eq!(book.held()[0].1, TunnelState::Draining);
        assert_eq!(book.up_names(), Vec::<String>::new());
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
