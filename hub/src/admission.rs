//! `admission`: the state behind the `admit` phase (`proxy/admit.rs`), shared by every core:
//! API Priority and Fairness, simplified, plus token buckets, per-cluster forward limits and
//! the memory ceiling.
//!
//! # The model
//!
//! * A request belongs to a **class**, its tenant, and within it to a **flow**, its user.
//!   Exempt (never limited): operators (`exempt_users`, `exempt_groups`) and requests that came
//!   over a peer link (the hub the user connected to admitted them; see `proxy/admit.rs`).
//! * Every request has a **weight** (hub.toml `weights`: a GET 1, a LIST 4, …), what it costs
//!   in tokens and in seats.
//! * **Token buckets** (GCRA: one `AtomicU64`, the bucket's "theoretical arrival time", moved
//!   by compare-and-swap): the user's own (its limit record, else `user_share` of the
//!   tenant's), then the tenant's. Empty → 429 at once with `Retry-After` = when the weight
//!   will be there. A request refused by the tenant's bucket gives the user's tokens back.
//! * **Seats** (concurrency): the tenant's weight in flight on this hub. A free seat is taken
//!   with one compare-and-swap (when nobody waits). Otherwise the request waits in one of the
//!   tenant's `queues`: the shortest of the `hand_size` queues dealt from its user's name
//!   (shuffle sharding, as kube-apiserver's `Dealer`), so a noisy user fills its own hand, and
//!   another user's hand almost surely holds a queue it does not. A released seat goes to the
//!   queues **in turn** (round robin over non-empty queues): each queue, hence each user,
//!   gets its share of dispatches whatever others have queued. A full queue, or a wait beyond
//!   `queue_timeout_ms`: 429.
//! * Watches and upgraded sessions hold their seats for their start only (the caller drops
//!   the [`Seat`] once the watch streams or the session is up).
//! * **Per cluster** (on the hub holding the tunnel, for requests forwarded to the edge): a
//!   bucket (`cluster_requests_per_second`, or the tenant's record's override) and an
//!   in-flight limit (`cluster_concurrency`).
//! * **Memory**: a sampler thread reads the resident set every 100 ms into an atomic; above
//!   `memory_limit_bytes` new connections are closed at accept and new requests answered 503.
//!
//! # Across cores
//!
//! Limits are **per hub**: buckets, seat counters and queues are shared by every core
//! (`DashMap`s of `Arc`ed classes; atomics on the admit path). The queues are behind a
//! `std::sync::Mutex` held for a push, a pop or a removal, never across an await; it is taken
//! only when seats run out. A waiter is woken through a `tokio::sync::oneshot` (runtime-free,
//! works across cores); the seat is handed over with it, so it cannot be stolen between the
//! wake-up and the request running.
//!
//! Class state is created on a tenant's or user's first request and kept (its size is
//! bounded by meta's tenants and users); limit records are re-read when the access index's
//! limits generation moves (a change in meta reaches the hub through the sync feed).

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use kubehub_access::index::TenantLimits;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

use crate::config::Fairness;

/// Labels of per-tenant admission counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant.
    pub tenant: String,
}

/// The admission metrics (part of the hub's [`crate::metrics::Metrics`]).
#[derive(Debug, Default)]
pub struct AdmissionMetrics {
    /// Requests admitted, by tenant (exempt ones included).
    pub admitted: Family<TenantLabel, Counter>,
    /// Requests that waited in a queue before they were admitted, by tenant.
    pub waited: Family<TenantLabel, Counter>,
    /// Seats in use, by tenant.
    pub seats_in_use: Family<TenantLabel, Gauge>,
    /// Requests waiting in the queues, by tenant.
    pub queued: Family<TenantLabel, Gauge>,
    /// Requests admitted without limits because their user is exempt.
    pub exempt: Counter,
    /// User connections closed at accept above the memory ceiling.
    pub connections_shed: Counter,
    /// Resident memory, bytes (sampled every 100 ms).
    pub resident_memory: Gauge,
    /// The memory ceiling, bytes (0: off).
    pub memory_limit: Gauge,
}

impl AdmissionMetrics {
    /// Registers them (names under the hub's `kubehub_hub_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "admitted",
            "Requests admitted by the admit phase, by tenant",
            self.admitted.clone(),
        );
        registry.register(
            "admission_waits",
            "Requests that waited in a tenant's queue before being admitted, by tenant",
            self.waited.clone(),
        );
        registry.register(
            "admission_seats_in_use",
            "Seats (request weight in flight) a tenant holds on this hub",
            self.seats_in_use.clone(),
        );
        registry.register(
            "admission_queued",
            "Requests waiting in a tenant's queues on this hub",
            self.queued.clone(),
        );
        registry.register(
            "admission_exempt",
            "Requests of exempt users (operators), admitted without limits",
            self.exempt.clone(),
        );
        registry.register(
            "connections_shed",
            "User connections closed at accept above the memory ceiling",
            self.connections_shed.clone(),
        );
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the hub process (sampled every 100 ms)",
            self.resident_memory.clone(),
        );
        registry.register(
            "memory_limit_bytes",
            "The hub's memory ceiling (limits.memory_limit_bytes; 0: off)",
            self.memory_limit.clone(),
        );
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// A token bucket is empty.
    #[error("{whose} is over its rate limit of {rate} requests/s (burst {burst}): retry in {retry_after:?}")]
    Rate {
        /// `tenant "acme"`, `user "bob"`, `cluster "edge-1"`.
        whose: String,
        /// `tenant_rate`, `user_rate`, `cluster_rate`.
        reason: &'static str,
        /// The rate.
        rate: u32,
        /// The burst.
        burst: u32,
        /// When the weight will be there.
        retry_after: Duration,
    },
    /// All the user's queues are full.
    #[error("tenant {tenant:?} is over its concurrency limit of {seats} and the request queues of user {user:?} are full")]
    QueueFull {
        /// The tenant.
        tenant: String,
        /// The user.
        user: String,
        /// The seats.
        seats: u32,
    },
    /// Waited in a queue for too long.
    #[error("tenant {tenant:?} is over its concurrency limit of {seats}: the request waited {waited:?} in its queue")]
    QueueTimeout {
        /// The tenant.
        tenant: String,
        /// The seats.
        seats: u32,
        /// How long.
        waited: Duration,
    },
    /// The cluster has its most forwarded requests in flight.
    #[error("cluster {cluster:?} is over its limit of {max} forwarded requests in flight")]
    ClusterBusy {
        /// The cluster.
        cluster: String,
        /// The limit.
        max: u32,
    },
    /// The hub is above its memory ceiling.
    #[error("this hub is over its memory ceiling ({rss} bytes resident, limit {limit}): retry, another hub may serve you")]
    Memory {
        /// Resident bytes.
        rss: u64,
        /// The ceiling.
        limit: u64,
    },
}

impl Denied {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Denied::Rate { reason, .. } => reason,
            Denied::QueueFull { .. } => "queue_full",
            Denied::QueueTimeout { .. } => "queue_timeout",
            Denied::ClusterBusy { .. } => "cluster_concurrency",
            Denied::Memory { .. } => "memory",
        }
    }

    /// Seconds a client should wait before it retries (at least 1).
    pub fn retry_after_secs(&self) -> u32 {
        match self {
            Denied::Rate { retry_after, .. } => {
                u32::try_from(retry_after.as_millis().div_ceil(1000))
                    .unwrap_or(u32::MAX)
                    .max(1)
            }
            _ => 1,
        }
    }
}

/// A token bucket as GCRA over one atomic: `tat`, the time (ns since the admission epoch) at
/// which the bucket would be full again; a request of weight w fits when `max(tat, now) + w·T`
/// is at most `burst·T` ahead of now (T: ns per unit of weight). Interval 0: unlimited.
#[derive(Debug, Default)]
struct Bucket {
    tat: AtomicU64,
    interval: AtomicU64,
    burst: AtomicU32,
    rate: AtomicU32,
}

impl Bucket {
    fn set(&self, rate: u32, burst: u32) {
        let burst = if burst == 0 {
            rate.saturating_mul(2).max(1)
        } else {
            burst
        };
        let interval = if rate == 0 {
            0
        } else {
            1_000_000_000 / u64::from(rate)
        };
        self.rate.store(rate, Ordering::Relaxed);
        self.burst.store(burst, Ordering::Relaxed);
        self.interval
            .store(interval.max(u64::from(rate != 0)), Ordering::Relaxed);
    }

    /// Takes `weight`, or says how long until it will be there.
    fn take(&self, now: u64, weight: u32) -> Result<u64, Duration> {
        let t = self.interval.load(Ordering::Relaxed);
        if t == 0 {
            return Ok(0);
        }
        let burst = u64::from(self.burst.load(Ordering::Relaxed).max(1));
        let cost = u64::from(weight).min(burst) * t;
        let tolerance = burst * t;
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let new = tat.max(now) + cost;
            if new - now > tolerance {
                return Err(Duration::from_nanos(new - now - tolerance));
            }
            match self
                .tat
                .compare_exchange_weak(tat, new, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(cost),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Gives back what [`Bucket::take`] took.
    fn refund(&self, cost: u64) {
        if cost > 0 {
            let _ = self
                .tat
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |t| {
                    Some(t.saturating_sub(cost))
                });
        }
    }

    fn denied(&self, whose: String, reason: &'static str, retry_after: Duration) -> Denied {
        Denied::Rate {
            whose,
            reason,
            rate: self.rate.load(Ordering::Relaxed),
            burst: self.burst.load(Ordering::Relaxed),
            retry_after,
        }
    }
}

/// A user's bucket, with the limits generation it was configured at.
#[derive(Debug)]
struct UserClass {
    bucket: Bucket,
    generation: AtomicU64,
}

/// One waiting request.
#[derive(Debug)]
struct Waiter {
    id: u64,
    weight: u32,
    tx: oneshot::Sender<()>,
}

#[derive(Debug, Default)]
struct Queues {
    queues: Vec<VecDeque<Waiter>>,
    /// The queue whose turn is next.
    next: usize,
    /// Ids of waiters.
    seq: u64,
}

/// A tenant: its bucket, seats and queues.
#[derive(Debug)]
pub struct TenantClass {
    name: String,
    generation: AtomicU64,
    bucket: Bucket,
    seats: AtomicU32,
    /// Seats in use (`kubehub_hub_admission_seats_in_use{tenant}`: the gauge is the counter).
    in_use: Gauge,
    /// Requests in the queues (`kubehub_hub_admission_queued{tenant}`).
    waiting: Gauge,
    queues: Mutex<Queues>,
    /// The tenant's record's per-cluster bucket (rate, burst), `u32::MAX`: the default.
    cluster_rate: AtomicU32,
    cluster_burst: AtomicU32,
    admitted: Counter,
    waited: Counter,
}

impl TenantClass {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `weight` seats without queueing, if free and nobody waits.
    fn try_seat(&self, weight: u32) -> bool {
        if self.waiting.inner().load(Ordering::SeqCst) > 0 {
            return false;
        }
        let (limit, weight) = (
            i64::from(self.seats.load(Ordering::Relaxed)),
            i64::from(weight),
        );
        self.in_use
            .inner()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (used + weight <= limit || used == 0).then_some(used + weight)
            })
            .is_ok()
    }

    /// Hands free seats to waiting requests, queue after queue in turn. Called with the
    /// queues locked.
    fn dispatch(&self, q: &mut Queues) {
        let n = q.queues.len();
        let mut empty_in_a_row = 0;
        while self.waiting.inner().load(Ordering::SeqCst) > 0 && empty_in_a_row < n {
            let i = q.next % n;
            let Some(head) = q.queues[i].front() else {
                q.next = (i + 1) % n;
                empty_in_a_row += 1;
                continue;
            };
            let w = i64::from(head.weight);
            let limit = i64::from(self.seats.load(Ordering::Relaxed));
            let took = self
                .in_use
                .inner()
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                    (used + w <= limit || used == 0).then_some(used + w)
                })
                .is_ok();
            if !took {
                // The head of the queue whose turn it is waits for more seats.
                return;
            }
            empty_in_a_row = 0;
            q.next = (i + 1) % n;
            if let Some(waiter) = q.queues[i].pop_front() {
                self.waiting.inner().fetch_sub(1, Ordering::SeqCst);
                if waiter.tx.send(()).is_err() {
                    // It gave up (timed out or went away) just now.
                    self.in_use.inner().fetch_sub(w, Ordering::SeqCst);
                }
            }
        }
    }

    fn release(&self, weight: u32) {
        self.in_use
            .inner()
            .fetch_sub(i64::from(weight), Ordering::SeqCst);
        if self.waiting.inner().load(Ordering::SeqCst) > 0 {
            let mut q = self.lock();
            self.dispatch(&mut q);
        }
    }

    /// Seats in use now.
    pub fn in_use(&self) -> u32 {
        u32::try_from(self.in_use.get()).unwrap_or(0)
    }
}

/// Seats held by an admitted request; given back when dropped.
#[derive(Debug)]
pub struct Seat {
    class: Arc<TenantClass>,
    weight: u32,
}

impl Drop for Seat {
    fn drop(&mut self) {
        self.class.release(self.weight);
    }
}

/// A request that waits for seats: [`Waiting::wait`]. Dropped without waiting (its request
/// went away), it leaves its queue, or gives back the seats handed to it meanwhile.
#[derive(Debug)]
pub struct Waiting {
    class: Arc<TenantClass>,
    queue: usize,
    id: u64,
    weight: u32,
    rx: oneshot::Receiver<()>,
    /// It got its seats (now a [`Seat`]'s) or was refused: nothing left to undo.
    settled: bool,
}

impl Waiting {
    /// Waits for the seats, at most `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Result<Seat, Denied> {
        let started = Instant::now();
        let got = matches!(
            monoio::time::timeout(timeout, &mut self.rx).await,
            Ok(Ok(()))
        );
        // Timed out: leave the queue, unless the seats were handed over meanwhile.
        if got || self.leave() {
            self.settled = true;
            self.class.waited.inc();
            return Ok(Seat {
                class: self.class.clone(),
                weight: self.weight,
            });
        }
        self.settled = true;
        Err(Denied::QueueTimeout {
            tenant: self.class.name.clone(),
            seats: self.class.seats.load(Ordering::Relaxed),
            waited: started.elapsed(),
        })
    }

    /// Takes the request out of its queue; `true` when it was no longer there because its
    /// seats had been handed over (dispatching pops and sends under the lock taken here).
    fn leave(&mut self) -> bool {
        let removed = {
            let mut q = self.class.lock();
            let queue = &mut q.queues[self.queue];
            match queue.iter().position(|w| w.id == self.id) {
                Some(at) => {
                    queue.remove(at);
                    self.class.waiting.inner().fetch_sub(1, Ordering::SeqCst);
                    true
                }
                None => false,
            }
        };
        !removed && self.rx.try_recv().is_ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if !self.settled && self.leave() {
            self.class.release(self.weight);
        }
    }
}

/// What [`Admission::admit`] decided.
#[derive(Debug)]
pub enum Admit {
    /// Admitted at once, with its seats.
    Now(Seat),
    /// Queued: wait for the seats.
    Queued(Waiting),
}

/// A forwarded request counted in its cluster's in-flight limit; dropped when done.
#[derive(Debug)]
pub struct ClusterSlot(Option<Arc<ClusterGate>>);

impl ClusterSlot {
    /// No limit applies.
    pub fn none() -> ClusterSlot {
        ClusterSlot(None)
    }

    /// Ends the count early (a watch or a session once it streams).
    pub fn release(&mut self) {
        if let Some(g) = self.0.take() {
            g.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for ClusterSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// One cluster's forward limits.
#[derive(Debug)]
pub struct ClusterGate {
    bucket: Bucket,
    in_flight: AtomicU32,
    /// (limits generation, tenant) it was configured for.
    generation: AtomicU64,
}

/// The resident memory and the ceiling.
#[derive(Debug, Default)]
pub struct Memory {
    rss: AtomicU64,
    limit: AtomicU64,
}

impl Memory {
    /// Resident bytes at the last sample.
    pub fn rss(&self) -> u64 {
        self.rss.load(Ordering::Relaxed)
    }

    /// The ceiling (0: off).
    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the ceiling (0: off), e.g. for a test or an operator's reload.
    pub fn set_limit(&self, limit: u64) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Above the ceiling?
    pub fn over(&self) -> Option<Denied> {
        let (rss, limit) = (self.rss(), self.limit());
        (limit > 0 && rss > limit).then_some(Denied::Memory { rss, limit })
    }

    /// Records a sample.
    pub fn set(&self, rss: u64) {
        self.rss.store(rss, Ordering::Relaxed);
    }
}

/// The process's resident set, bytes: `VmRSS` of `/proc/self/status` (in kB there, whatever
/// the page size).
pub fn sample_rss() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reads the resident set over and over cheaply: `/proc/self/statm` (resident pages, its
/// second field) kept open and re-read into a stack buffer — a fraction of what generating
/// `/proc/self/status` costs the kernel, and no allocation.
#[derive(Debug)]
struct RssReader {
    statm: std::fs::File,
    page: u64,
}

impl RssReader {
    fn open() -> Option<RssReader> {
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| u64::try_from(p).ok())?;
        let statm = std::fs::File::open("/proc/self/statm").ok()?;
        Some(RssReader { statm, page })
    }

    fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 128];
        let n = self.statm.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(&buf[..n]).ok()?;
        let pages: u64 = text.split_ascii_whitespace().nth(1)?.parse().ok()?;
        Some(pages * self.page)
    }
}

/// The admission state of the hub. See the [module](self) documentation.
#[derive(Debug)]
pub struct Admission {
    cfg: Fairness,
    epoch: Instant,
    tenants: DashMap<String, Arc<TenantClass>>,
    users: DashMap<String, Arc<UserClass>>,
    clusters: DashMap<String, Arc<ClusterGate>>,
    /// Resident memory and the ceiling.
    pub memory: Memory,
    metrics: Arc<crate::metrics::Metrics>,
}

const UNSET: u64 = u64::MAX;

impl Admission {
    /// With the hub.toml parameters and ceiling.
    pub fn new(
        cfg: Fairness,
        memory_limit_bytes: u64,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Admission {
        metrics
            .admission
            .memory_limit
            .set(memory_limit_bytes as i64);
        Admission {
            cfg,
            epoch: Instant::now(),
            tenants: DashMap::new(),
            users: DashMap::new(),
            clusters: DashMap::new(),
            memory: Memory {
                rss: AtomicU64::new(0),
                limit: AtomicU64::new(memory_limit_bytes),
            },
            metrics,
        }
    }

    /// The parameters.
    pub fn config(&self) -> &Fairness {
        &self.cfg
    }

    /// Starts the thread that samples the resident memory every 100 ms (a file read, kept
    /// off the monoio cores).
    pub fn start_sampler(self: &Arc<Self>) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        if let Some(rss) = sample_rss() {
            self.memory.set(rss);
        }
        std::thread::Builder::new()
            .name("kubehub-memory".into())
            .spawn(move || {
                let reader = RssReader::open();
                let sample = || match &reader {
                    Some(r) => r.read(),
                    None => sample_rss(),
                };
                while let Some(a) = weak.upgrade() {
                    if let Some(rss) = sample() {
                        a.memory.set(rss);
                        a.metrics.admission.resident_memory.set(rss as i64);
                    }
                    a.metrics
                        .admission
                        .memory_limit
                        .set(a.memory.limit() as i64);
                    drop(a);
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
            .map(|_| ())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether this user is exempt (an operator).
    pub fn exempt(&self, user: &str, groups: &[String]) -> bool {
        self.cfg.exempt_users.iter().any(|u| u == user)
            || groups.iter().any(|g| self.cfg.exempt_groups.contains(g))
    }

    fn tenant_class(&self, tenant: &str) -> Arc<TenantClass> {
        if let Some(c) = self.tenants.get(tenant) {
            return c.clone();
        }
        let label = TenantLabel {
            tenant: tenant.to_owned(),
        };
        let class = Arc::new(TenantClass {
            name: tenant.to_owned(),
            generation: AtomicU64::new(UNSET),
            bucket: Bucket::default(),
            seats: AtomicU32::new(self.cfg.concurrency),
            in_use: self
                .metrics
                .admission
                .seats_in_use
                .get_or_create(&label)
                .clone(),
            waiting: self.metrics.admission.queued.get_or_create(&label).clone(),
            queues: Mutex::new(Queues {
                queues: (0..self.cfg.queues).map(|_| VecDeque::new()).collect(),
                next: 0,
                seq: 0,
            }),
            cluster_rate: AtomicU32::new(u32::MAX),
            cluster_burst: AtomicU32::new(u32::MAX),
            admitted: self
                .metrics
                .admission
                .admitted
                .get_or_create(&label)
                .clone(),
            waited: self.metrics.admission.waited.get_or_create(&label).clone(),
        });
        self.tenants
            .entry(tenant.to_owned())
            .or_insert(class)
            .clone()
    }

    /// (Re)reads the tenant's record when the limits changed since.
    fn configure_tenant(
        &self,
        class: &TenantClass,
        limits: Option<&TenantLimits>,
        generation: u64,
    ) {
        if class.generation.load(Ordering::Acquire) == generation {
            return;
        }
        let rec = limits.and_then(|l| l.tenant.as_ref());
        let rate = rec
            .and_then(|r| r.requests_per_second)
            .unwrap_or(self.cfg.requests_per_second);
        let burst = rec.and_then(|r| r.burst).unwrap_or(self.cfg.burst);
        class.bucket.set(rate, burst);
        class.seats.store(
            rec.and_then(|r| r.concurrency)
                .unwrap_or(self.cfg.concurrency),
            Ordering::Relaxed,
        );
        class.cluster_rate.store(
            rec.and_then(|r| r.cluster_requests_per_second)
                .unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        class.cluster_burst.store(
            rec.and_then(|r| r.cluster_burst).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        class.generation.store(generation, Ordering::Release);
        // More seats may have been given: let waiters in.
        if class.waiting.inner().load(Ordering::SeqCst) > 0 {
            let mut q = class.lock();
            class.dispatch(&mut q);
        }
    }

    fn user_class(
        &self,
        tenant: &TenantClass,
        user: &str,
        limits: Option<&TenantLimits>,
        generation: u64,
    ) -> Arc<UserClass> {
        let class = match self.users.get(user) {
            Some(c) => c.clone(),
            None => self
                .users
                .entry(user.to_owned())
                .or_insert_with(|| {
                    Arc::new(UserClass {
                        bucket: Bucket::default(),
                        generation: AtomicU64::new(UNSET),
                    })
                })
                .clone(),
        };
        if class.generation.load(Ordering::Acquire) != generation {
            match limits.and_then(|l| l.users.get(user)) {
                Some(rec) => {
                    let rate = rec
                        .requests_per_second
                        .unwrap_or(tenant.bucket.rate.load(Ordering::Relaxed));
                    class.bucket.set(rate, rec.burst.unwrap_or(0));
                }
                None if self.cfg.user_share >= 1.0 => class.bucket.set(0, 0),
                None => {
                    let share =
                        |v: u32| ((f64::from(v) * self.cfg.user_share).ceil() as u32).max(1);
                    let rate = tenant.bucket.rate.load(Ordering::Relaxed);
                    if rate == 0 {
                        class.bucket.set(0, 0);
                    } else {
                        class.bucket.set(
                            share(rate),
                            share(tenant.bucket.burst.load(Ordering::Relaxed)),
                        );
                    }
                }
            }
            class.generation.store(generation, Ordering::Release);
        }
        class
    }

    /// Admits a request of `weight` from `user` of `tenant` (not exempt): the buckets, then
    /// seats at once or a place in a queue. `limits` and `generation`: the access index's.
    pub fn admit(
        &self,
        tenant: &str,
        user: &str,
        weight: u32,
        limits: Option<&TenantLimits>,
        generation: u64,
    ) -> Result<Admit, Denied> {
        let class = self.tenant_class(tenant);
        self.configure_tenant(&class, limits, generation);
        // A user's own bucket matters only when the tenant has a rate or the user a record:
        // without either (the default), no lookup.
        let user_class = (class.bucket.rate.load(Ordering::Relaxed) != 0
            || limits.is_some_and(|l| l.users.contains_key(user)))
        .then(|| self.user_class(&class, user, limits, generation));
        let now = self.now();
        // Counted by the request's record when it ends (`proxy::observe`).
        let refused = |d: Denied| d;
        let user_cost = match &user_class {
            Some(u) => u.bucket.take(now, weight).map_err(|retry| {
                refused(
                    u.bucket
                        .denied(format!("user {user:?}"), "user_rate", retry),
                )
            })?,
            None => 0,
        };
        if let Err(retry) = class.bucket.take(now, weight) {
            if let Some(u) = &user_class {
                u.bucket.refund(user_cost);
            }
            return Err(refused(class.bucket.denied(
                format!("tenant {tenant:?}"),
                "tenant_rate",
                retry,
            )));
        }
        let seats = class.seats.load(Ordering::Relaxed);
        let weight = weight.min(seats).max(1);
        class.admitted.inc();
        if class.try_seat(weight) {
            return Ok(Admit::Now(Seat { class, weight }));
        }
        // Queue: the shortest queue of the user's hand.
        let (tx, rx) = oneshot::channel();
        let mut q = class.lock();
        let n = q.queues.len();
        let queue = hand(user, n, self.cfg.hand_size as usize)
            .min_by_key(|&i| q.queues[i].len())
            .unwrap_or(0);
        if q.queues[queue].len() >= self.cfg.queue_length as usize {
            drop(q);
            return Err(refused(Denied::QueueFull {
                tenant: tenant.to_owned(),
                user: user.to_owned(),
                seats,
            }));
        }
        q.seq += 1;
        let id = q.seq;
        q.queues[queue].push_back(Waiter { id, weight, tx });
        class.waiting.inner().fetch_add(1, Ordering::SeqCst);
        // Seats released between the failed try and now are handed out here.
        class.dispatch(&mut q);
        drop(q);
        Ok(Admit::Queued(Waiting {
            class,
            queue,
            id,
            weight,
            rx,
            settled: false,
        }))
    }

    /// Counts a refusal outside a request (a connection closed at accept) in
    /// `kubehub_hub_rejected_total{tenant,reason}`; a request's refusal is counted by its
    /// record ([`crate::proxy::observe`]), with `/traffic`'s.
    pub fn count_refusal(&self, tenant: &str, d: &Denied) {
        self.metrics.rejected(tenant, d.reason());
    }

    /// The per-cluster forward limits for a request of `tenant` to `cluster` (on the hub
    /// holding its tunnel). `count`: take an in-flight slot (not for requests that stream for
    /// long: their slot is released by the caller once they do).
    pub fn forward(
        &self,
        tenant: &str,
        cluster: &str,
        weight: u32,
        limits: Option<&TenantLimits>,
        generation: u64,
    ) -> Result<ClusterSlot, Denied> {
        let rec = limits.and_then(|l| l.tenant.as_ref());
        let rate = rec
            .and_then(|r| r.cluster_requests_per_second)
            .unwrap_or(self.cfg.cluster_requests_per_second);
        let max = self.cfg.cluster_concurrency;
        if rate == 0 && max == 0 {
            return Ok(ClusterSlot(None));
        }
        let gate = match self.clusters.get(cluster) {
            Some(g) => g.clone(),
            None => self
                .clusters
                .entry(cluster.to_owned())
                .or_insert_with(|| {
                    Arc::new(ClusterGate {
                        bucket: Bucket::default(),
                        in_flight: AtomicU32::new(0),
                        generation: AtomicU64::new(UNSET),
                    })
                })
                .clone(),
        };
        // The configuration depends on the cluster's tenant's record.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (generation, tenant).hash(&mut h);
        let key = h.finish() & !(1 << 63);
        if gate.generation.load(Ordering::Acquire) != key {
            let burst = rec
                .and_then(|r| r.cluster_burst)
                .unwrap_or(self.cfg.cluster_burst);
            gate.bucket.set(rate, burst);
            gate.generation.store(key, Ordering::Release);
        }
        // Counted by the request's record when it ends (`proxy::observe`).
        let refused = |d: Denied| d;
        gate.bucket.take(self.now(), weight).map_err(|retry| {
            refused(
                gate.bucket
                    .denied(format!("cluster {cluster:?}"), "cluster_rate", retry),
            )
        })?;
        if max == 0 {
            return Ok(ClusterSlot(None));
        }
        let ok = gate
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !ok {
            return Err(refused(Denied::ClusterBusy {
                cluster: cluster.to_owned(),
                max,
            }));
        }
        Ok(ClusterSlot(Some(gate)))
    }

    /// Counts a user connection closed at accept (the memory ceiling).
    pub fn metrics_shed(&self) {
        self.metrics.admission.connections_shed.inc();
    }

    /// A tenant's class, if it has had traffic (tests and `/metrics`).
    pub fn tenant(&self, tenant: &str) -> Option<Arc<TenantClass>> {
        self.tenants.get(tenant).map(|c| c.clone())
    }
}

/// The `hand_size` distinct queues (of `n`) dealt to `flow`: kube-apiserver's shuffle-sharding
/// dealer, from a 64-bit hash of the flow's name (mixed radix: n, n-1, …, each draw skipping
/// the queues already dealt).
pub fn hand(flow: &str, n: usize, hand_size: usize) -> impl Iterator<Item = usize> {
    let mut h = fnv1a(flow.as_bytes());
    let size = hand_size.min(n);
    let mut dealt: Vec<usize> = Vec::with_capacity(size);
    for i in 0..size {
        let remaining = (n - i) as u64;
        let mut card = (h % remaining) as usize;
        h /= remaining;
        // The card-th queue not dealt yet.
        let mut sorted = dealt.clone();
        sorted.sort_unstable();
        for d in sorted {
            if card >= d {
                card += 1;
            }
        }
        dealt.push(card);
    }
    dealt.into_iter()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Spread the low bits (the first draws read them).
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^ (h >> 32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_access::model::Limit;

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
    }

    fn admission(cfg: Fairness) -> Admission {
        Admission::new(cfg, 0, Arc::new(crate::metrics::Metrics::new()))
    }

    fn limits(rate: u32, burst: u32, seats: u32) -> TenantLimits {
        TenantLimits {
            tenant: Some(Limit {
                tenant: "t".into(),
                requests_per_second: Some(rate),
                burst: Some(burst),
                concurrency: Some(seats),
                ..Limit::default()
            }),
            users: Default::default(),
        }
    }

    #[test]
    fn the_resident_memory_is_read() {
        let rss = sample_rss().unwrap();
        assert!(rss > 1 << 20 && rss < 1 << 40, "{rss}");
        // The cheap reader agrees with VmRSS (within what a few allocations move).
        let cheap = RssReader::open().unwrap().read().unwrap();
        let (lo, hi) = (rss.min(cheap), rss.max(cheap));
        assert!(hi - lo < hi / 10, "statm {cheap} vs VmRSS {rss}");
    }

    #[test]
    fn hands_are_distinct_and_spread() {
        for user in ["alice", "bob", "carol", "x"] {
            let h: Vec<usize> = hand(user, 64, 8).collect();
            let mut s = h.clone();
            s.sort();
            s.dedup();
            assert_eq!(s.len(), 8, "{user}: {h:?}");
            assert!(h.iter().all(|&q| q < 64));
        }
        // Two users rarely share a whole hand: count how often of 1000 pairs the second's hand
        // lies within the first's.
        let mut inside = 0;
        for i in 0..1000 {
            let a: Vec<usize> = hand(&format!("noisy-{i}"), 64, 8).collect();
            let b: Vec<usize> = hand(&format!("quiet-{i}"), 64, 8).collect();
            if b.iter().all(|q| a.contains(q)) {
                inside += 1;
            }
        }
        assert_eq!(inside, 0);
    }

    #[test]
    fn the_bucket_allows_the_burst_then_the_rate() {
        let a = admission(Fairness::default());
        let l = limits(10, 5, 100);
        let mut ok = 0;
        let mut retry = None;
        for _ in 0..20 {
            match a.admit("t", "u", 1, Some(&l), 1) {
                Ok(_) => ok += 1,
                Err(d) => retry = Some(d),
            }
        }
        // The user's bucket is half the tenant's (user_share 0.5): burst 3.
        assert_eq!(ok, 3, "the user's share of the burst");
        let d = retry.unwrap();
        assert_eq!(d.reason(), "user_rate");
        assert_eq!(d.retry_after_secs(), 1);
        // Another user still has the rest of the tenant's burst.
        let mut ok2 = 0;
        for _ in 0..20 {
            if a.admit("t", "v", 1, Some(&l), 1).is_ok() {
                ok2 += 1;
            }
        }
        assert_eq!(ok2, 2, "the tenant's burst (5) minus what u took (3)");
        // No rate limit by default.
        let free = admission(Fairness::default());
        for _ in 0..1000 {
            assert!(free.admit("t", "u", 4, None, 0).is_ok());
        }
    }

    #[test]
    fn freed_seats_go_to_the_queues_in_turn() {
        let a = admission(Fairness {
            queue_length: 1000,
            ..Fairness::default()
        });
        let l = limits(0, 1, 1);
        runtime().block_on(async {
            let Ok(Admit::Now(first)) = a.admit("t", "noisy", 1, Some(&l), 1) else {
                panic!("the first request takes the seat");
            };
            let mut noisy = Vec::new();
            for _ in 0..100 {
                match a.admit("t", "noisy", 1, Some(&l), 1).unwrap() {
                    Admit::Queued(w) => noisy.push(w),
                    Admit::Now(_) => panic!("no seat is free"),
                }
            }
            let Admit::Queued(quiet) = a.admit("t", "quiet", 1, Some(&l), 1).unwrap() else {
                panic!("no seat is free");
            };
            drop(first);
            // The quiet user's request is served within a round of the queues, not after the
            // hundred queued before it.
            let mut served_before = 0;
            let mut quiet = Some(quiet);
            let mut seat = None;
            while seat.is_none() {
                // Whoever has the seat now: find and release it.
                if let Some(mut q) = quiet.take() {
                    match q.rx.try_recv_ok() {
                        true => {
                            seat = Some(());
                            continue;
                        }
                        false => quiet = Some(q),
                    }
                }
                let i = noisy
                    .iter_mut()
                    .position(|w| w.rx.try_recv_ok())
                    .expect("someone has the seat");
                let mut w = noisy.remove(i);
                served_before += 1;
                // It ran and is done.
                w.settled = true;
                a.tenant("t").unwrap().release(w.weight);
            }
            assert!(
                served_before <= 8,
                "served {served_before} noisy requests first"
            );
        });
    }

    trait TryRecvOk {
        fn try_recv_ok(&mut self) -> bool;
    }

    impl TryRecvOk for oneshot::Receiver<()> {
        fn try_recv_ok(&mut self) -> bool {
            self.try_recv().is_ok()
        }
    }

    #[test]
    fn a_queue_timeout_refuses_and_frees_the_place() {
        let a = admission(Fairness::default());
        let l = limits(0, 1, 1);
        runtime().block_on(async {
            let Ok(Admit::Now(seat)) = a.admit("t", "u", 1, Some(&l), 1) else {
                panic!()
            };
            let Ok(Admit::Queued(w)) = a.admit("t", "u", 1, Some(&l), 1) else {
                panic!()
            };
            let e = w.wait(Duration::from_millis(20)).await.unwrap_err();
            assert_eq!(e.reason(), "queue_timeout");
            let class = a.tenant("t").unwrap();
            assert_eq!(class.waiting.inner().load(Ordering::SeqCst), 0);
            drop(seat);
            assert_eq!(class.in_use(), 0, "no seat leaked");
            // A queued request gets the seat once it is freed.
            let Ok(Admit::Now(seat)) = a.admit("t", "u", 1, Some(&l), 1) else {
                panic!()
            };
            let Ok(Admit::Queued(w)) = a.admit("t", "u", 1, Some(&l), 1) else {
                panic!()
            };
            drop(seat);
            let s = w.wait(Duration::from_secs(5)).await.unwrap();
            assert_eq!(class.in_use(), 1);
            drop(s);
            assert_eq!(class.in_use(), 0);
        });
    }

    #[test]
    fn a_waiter_that_goes_away_loses_no_seat() {
        let a = admission(Fairness::default());
        let l = limits(0, 1, 1);
        let class = || a.tenant("t").unwrap();
        let Ok(Admit::Now(seat)) = a.admit("t", "u", 1, Some(&l), 1) else {
            panic!()
        };
        // Gone while queued: it leaves its queue.
        let Ok(Admit::Queued(w)) = a.admit("t", "u", 1, Some(&l), 1) else {
            panic!()
        };
        drop(w);
        assert_eq!(class().waiting.inner().load(Ordering::SeqCst), 0);
        // Gone after the seat was handed to it: the seat comes back.
        let Ok(Admit::Queued(w)) = a.admit("t", "u", 1, Some(&l), 1) else {
            panic!()
        };
        drop(seat);
        assert_eq!(class().in_use(), 1, "handed over to the waiter");
        drop(w);
        assert_eq!(class().in_use(), 0, "given back");
    }

    #[test]
    fn cluster_limits() {
        let a = admission(Fairness {
            cluster_requests_per_second: 1,
            cluster_burst: 3,
            cluster_concurrency: 2,
            ..Fairness::default()
        });
        let s1 = a.forward("t", "c", 1, None, 0).unwrap();
        let mut s2 = a.forward("t", "c", 1, None, 0).unwrap();
        let e = a.forward("t", "c", 1, None, 0).unwrap_err();
        assert_eq!(e.reason(), "cluster_concurrency");
        s2.release();
        drop(s1);
        let e = a.forward("t", "c", 1, None, 0).unwrap_err();
        assert_eq!(
            e.reason(),
            "cluster_rate",
            "burst 3 spent (2 + the refused one)"
        );
        assert!(a.forward("t", "other", 1, None, 0).is_ok(), "per cluster");
    }
}
