//! Live traffic over the last minute, per tenant and per client: what `/traffic` on the admin
//! listener answers and what meta's console shows.
//!
//! Each tenant and each client (tenant × user-agent family × source address) has a ring of
//! [`SLOTS`] time slots of [`SLOT_SECS`] seconds, each a few counters (and, for tenants, a
//! latency histogram of log-linear buckets: four per power of two, so a quantile is within
//! ~12% of the truth). A request adds to the current slot of its tenant and its client; a
//! slot is zeroed when it is reused for a newer period. `/traffic` sums the slots of the last
//! 60 s.
//!
//! Thread per core: every core writes its own [`Shard`] (atomics that only that core writes,
//! so no cache line moves between cores on the request path; maps hashed with foldhash, read
//! without a lock shared with another core); `/traffic` reads every shard and merges them.
//! Periods count from the hub's start on the monotonic clock the request already read.
//!
//! Bounds: one entry per tenant and core (meta's tenants, plus `""` for unauthenticated
//! requests, ~11 KiB each) and at most `max_clients` client entries over all cores (split
//! evenly between them; idle ones are pruned when a core's share is full; a client that finds
//! no room is not tracked here, and still counted in the metrics).

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// The hasher of the request path's maps: foldhash, seeded per process.
type Fast = foldhash::fast::RandomState;

/// Seconds per slot.
pub const SLOT_SECS: u64 = 5;
/// Slots per ring (60 s of history, plus the slot being filled).
pub const SLOTS: usize = 13;
/// The window `/traffic` reports on.
pub const WINDOW_SECS: u64 = 60;
/// Clients listed in `/traffic`.
pub const TOP_CLIENTS: usize = 20;
/// Latency buckets (log-linear, 4 per power of two of microseconds, up to ~2^27 µs).
const BUCKETS: usize = 108;

/// One request as the traffic summary sees it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// Tenant (`""`: not authenticated).
    pub tenant: &'a str,
    /// User-agent family.
    pub client: &'a str,
    /// Source address.
    pub source: IpAddr,
    /// The answer was an error (4xx/5xx).
    pub error: bool,
    /// Refused (401/403/404 before forwarding, limits, bans).
    pub rejected: bool,
    /// Time to the response head; `None` for long-running requests (watches, sessions),
    /// which have no latency worth a percentile.
    pub latency: Option<Duration>,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response bytes.
    pub bytes_out: u64,
}

#[derive(Debug)]
struct Slot {
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    rejected: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            period: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        }
    }

    /// Makes the slot the one of `period`, zeroing it if it held an older one. Two cores
    /// racing here may lose a request or two of the new period: a summary, not a ledger.
    fn claim(&self, period: u64) -> bool {
        let old = self.period.load(Relaxed);
        if old == period {
            return false;
        }
        if self
            .period
            .compare_exchange(old, period, Relaxed, Relaxed)
            .is_ok()
        {
            for c in [
                &self.requests,
                &self.errors,
                &self.rejected,
                &self.bytes_in,
                &self.bytes_out,
            ] {
                c.store(0, Relaxed);
            }
            return true;
        }
        false
    }
}

#[derive(Debug)]
struct TenantRing {
    slots: Vec<Slot>,
    latency: Vec<[AtomicU64; BUCKETS]>,
    watches: AtomicI64,
}

impl TenantRing {
    fn new() -> TenantRing {
        TenantRing {
            slots: (0..SLOTS).map(|_| Slot::new()).collect(),
            latency: (0..SLOTS)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect(),
            watches: AtomicI64::new(0),
        }
    }
}

#[derive(Debug)]
struct ClientRing {
    tenant: String,
    client: String,
    source: IpAddr,
    slots: Vec<Slot>,
    last: AtomicU64,
}

/// The rings one core writes.
#[derive(Debug)]
struct Shard {
    tenants: DashMap<String, TenantRing, Fast>,
    clients: DashMap<u64, ClientRing, Fast>,
    max_clients: usize,
}

/// The per-tenant and per-client rings of one hub: a [`Shard`] per core.
#[derive(Debug)]
pub struct Traffic {
    hub: String,
    epoch: Instant,
    shards: Vec<Shard>,
    keys: Fast,
}

fn bucket(d: Duration) -> usize {
    let us = d.as_micros().min(1 << 27) as u64;
    if us < 4 {
        return us as usize;
    }
    let exp = 63 - us.leading_zeros() as usize; // >= 2
    let sub = ((us >> (exp - 2)) & 3) as usize;
    ((exp - 1) * 4 + sub).min(BUCKETS - 1)
}

/// The middle of a bucket, in milliseconds.
fn bucket_ms(i: usize) -> f64 {
    if i < 4 {
        return i as f64 / 1000.0;
    }
    let exp = i / 4 + 1;
    let sub = (i % 4) as u64;
    let lo = (4 + sub) << (exp - 2);
    let width = 1u64 << (exp - 2);
    (lo as f64 + width as f64 / 2.0) / 1000.0
}

impl Shard {
    fn tenant<R>(&self, tenant: &str, f: impl FnOnce(&TenantRing) -> R) -> R {
        if let Some(t) = self.tenants.get(tenant) {
            return f(&t);
        }
        let t = self
            .tenants
            .entry(tenant.to_owned())
            .or_insert_with(TenantRing::new)
            .downgrade();
        f(&t)
    }

    /// Forgets clients idle for longer than the window.
    fn prune(&self, now: u64) {
        self.clients
            .retain(|_, c| now.saturating_sub(c.last.load(Relaxed)) <= WINDOW_SECS + SLOT_SECS);
    }
}

impl Traffic {
    /// The summary of hub `hub` with `cores` shards, tracking at most `max_clients` clients
    /// (over all cores).
    pub fn new(hub: &str, max_clients: usize, cores: usize) -> Traffic {
        let cores = cores.max(1);
        Traffic {
            hub: hub.to_owned(),
            epoch: Instant::now(),
            shards: (0..cores)
                .map(|_| Shard {
                    tenants: DashMap::with_hasher(Fast::default()),
                    clients: DashMap::with_hasher(Fast::default()),
                    max_clients: max_clients.div_ceil(cores),
                })
                .collect(),
            keys: Fast::default(),
        }
    }

    /// The shard of `core` (any index works: cores beyond the shards share the last).
    fn shard(&self, core: usize) -> &Shard {
        &self.shards[core.min(self.shards.len() - 1)]
    }

    /// Seconds since the hub started, as of `at`.
    fn secs(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_secs()
    }

    /// A watch of `tenant` opened (`+1`) or ended (`-1`) on `core`.
    pub fn watch(&self, core: usize, tenant: &str, delta: i64) {
        self.shard(core)
            .tenant(tenant, |t| t.watches.fetch_add(delta, Relaxed));
    }

    /// Adds one request, served on `core`, that ended at `now`.
    pub fn record(&self, core: usize, now: Instant, s: &Sample<'_>) {
        let shard = self.shard(core);
        let now = self.secs(now);
        let period = now / SLOT_SECS;
        let i = (period % SLOTS as u64) as usize;
        // Only this core writes these: a load and a store, no locked read-modify-write.
        let bump = |c: &AtomicU64, n: u64| c.store(c.load(Relaxed).wrapping_add(n), Relaxed);
        let add = |slot: &Slot| {
            bump(&slot.requests, 1);
            if s.error {
                bump(&slot.errors, 1);
            }
            if s.rejected {
                bump(&slot.rejected, 1);
            }
            bump(&slot.bytes_in, s.bytes_in);
            bump(&slot.bytes_out, s.bytes_out);
        };
        shard.tenant(s.tenant, |t| {
            if t.slots[i].claim(period) {
                for b in &t.latency[i] {
                    b.store(0, Relaxed);
                }
            }
            add(&t.slots[i]);
            if let Some(l) = s.latency {
                bump(&t.latency[i][bucket(l)], 1);
            }
        });
        let key = self.keys.hash_one((s.tenant, s.client, s.source));
        if let Some(c) = shard.clients.get(&key) {
            c.slots[i].claim(period);
            add(&c.slots[i]);
            c.last.store(now, Relaxed);
            return;
        }
        if shard.clients.len() >= shard.max_clients {
            shard.prune(now);
            if shard.clients.len() >= shard.max_clients {
                return;
            }
        }
        let c = shard
            .clients
            .entry(key)
            .or_insert_with(|| ClientRing {
                tenant: s.tenant.to_owned(),
                client: s.client.to_owned(),
                source: s.source,
                slots: (0..SLOTS).map(|_| Slot::new()).collect(),
                last: AtomicU64::new(now),
            })
            .downgrade();
        c.slots[i].claim(period);
        add(&c.slots[i]);
    }

    /// The summary over the last minute (`GET /traffic`): every core's shard, merged.
    pub fn summary(&self) -> Summary {
        let now = self.secs(Instant::now());
        let period = now / SLOT_SECS;
        // The slots of the last WINDOW_SECS: the current one and the ones before it.
        let first = period.saturating_sub(WINDOW_SECS / SLOT_SECS);
        let live = |slot: &Slot| {
            let p = slot.period.load(Relaxed);
            p >= first && p <= period
        };
        let w = WINDOW_SECS as f64;
        #[derive(Default)]
        struct Sum {
            requests: u64,
            errors: u64,
            rejected: u64,
            bytes_in: u64,
            bytes_out: u64,
            watches: i64,
            hist: Vec<u64>,
        }
        let mut by_tenant: std::collections::BTreeMap<String, Sum> = Default::default();
        let mut by_client: std::collections::BTreeMap<(String, String, IpAddr), (u64, u64)> =
            Default::default();
        for shard in &self.shards {
            for t in shard.tenants.iter() {
                let sum = by_tenant.entry(t.key().clone()).or_default();
                sum.hist.resize(BUCKETS, 0);
                sum.watches += t.watches.load(Relaxed);
                for (i, slot) in t.slots.iter().enumerate() {
                    if !live(slot) {
                        continue;
                    }
                    sum.requests += slot.requests.load(Relaxed);
                    sum.errors += slot.errors.load(Relaxed);
                    sum.rejected += slot.rejected.load(Relaxed);
                    sum.bytes_in += slot.bytes_in.load(Relaxed);
                    sum.bytes_out += slot.bytes_out.load(Relaxed);
                    for (h, b) in sum.hist.iter_mut().zip(t.latency[i].iter()) {
                        *h += b.load(Relaxed);
                    }
                }
            }
            for c in shard.clients.iter() {
                let (mut req, mut err) = (0, 0);
                for slot in c.slots.iter().filter(|s| live(s)) {
                    req += slot.requests.load(Relaxed);
                    err += slot.errors.load(Relaxed);
                }
                let e = by_client
                    .entry((c.tenant.clone(), c.client.clone(), c.source))
                    .or_default();
                e.0 += req;
                e.1 += err;
            }
        }
        let mut tenants: Vec<TenantSummary> = by_tenant
            .into_iter()
            .map(|(tenant, t)| TenantSummary {
                tenant,
                requests_per_second: t.requests as f64 / w,
                errors_per_second: t.errors as f64 / w,
                p50_ms: quantile(&t.hist, 0.50),
                p99_ms: quantile(&t.hist, 0.99),
                bytes_in_per_second: t.bytes_in as f64 / w,
                bytes_out_per_second: t.bytes_out as f64 / w,
                watches: u64::try_from(t.watches).unwrap_or(0),
                rejected_per_second: t.rejected as f64 / w,
            })
            .filter(|t| t.requests_per_second > 0.0 || t.watches > 0)
            .collect();
        tenants.sort_by(|a, b| {
            b.requests_per_second
                .total_cmp(&a.requests_per_second)
                .then_with(|| a.tenant.cmp(&b.tenant))
        });
        let mut clients: Vec<ClientSummary> = by_client
            .into_iter()
            .filter(|(_, (req, _))| *req > 0)
            .map(|((tenant, client, source), (req, err))| ClientSummary {
                tenant,
                client,
                source: source.to_string(),
                requests_per_second: req as f64 / w,
                errors_per_second: err as f64 / w,
            })
            .collect();
        clients.sort_by(|a, b| {
            b.requests_per_second
                .total_cmp(&a.requests_per_second)
                .then_with(|| {
                    (&a.tenant, &a.client, &a.source).cmp(&(&b.tenant, &b.client, &b.source))
                })
        });
        clients.truncate(TOP_CLIENTS);
        Summary {
            hub: self.hub.clone(),
            window_seconds: WINDOW_SECS,
            tenants,
            clients,
        }
    }
}

fn quantile(hist: &[u64], q: f64) -> f64 {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return (bucket_ms(i) * 1000.0).round() / 1000.0;
        }
    }
    0.0
}

/// `GET /traffic`, and its parts: the type meta's console reads them with.
pub use kubehub_access::traffic::{
    ClientTraffic as ClientSummary, TenantTraffic as TenantSummary, TrafficSummary as Summary,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(tenant: &'a str, client: &'a str, ms: u64, error: bool) -> Sample<'a> {
        Sample {
            tenant,
            client,
            source: "10.0.0.1".parse().unwrap(),
            error,
            rejected: false,
            latency: Some(Duration::from_millis(ms)),
            bytes_in: 10,
            bytes_out: 100,
        }
    }

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for us in [
            0u64,
            1,
            3,
            4,
            5,
            7,
            8,
            100,
            1000,
            12_345,
            1 << 20,
            1 << 27,
            1 << 40,
        ] {
            let b = bucket(Duration::from_micros(us));
            assert!(b >= last, "{us}");
            last = b;
            if (8..1 << 27).contains(&us) {
                let mid = bucket_ms(b) * 1000.0;
                assert!((mid - us as f64).abs() / (us as f64) < 0.2, "{us} -> {mid}");
            }
        }
    }

    #[test]
    fn summary_rates_quantiles_and_top_clients() {
        let t = Traffic::new("hub-a", 100, 2);
        let now = Instant::now();
        for i in 0..120 {
            // Both cores' shards: the summary merges them.
            t.record(
                i % 2,
                now,
                &sample(
                    "acme",
                    "kubectl/v1.32",
                    if i < 60 { 1 } else { 3 },
                    i % 10 == 0,
                ),
            );
        }
        for _ in 0..30 {
            t.record(1, now, &sample("beta", "python", 100, false));
        }
        t.watch(0, "beta", 1);
        t.watch(1, "beta", 1);
        t.watch(1, "beta", -1);
        let s = t.summary();
        assert_eq!(s.hub, "hub-a");
        assert_eq!(s.window_seconds, 60);
        assert_eq!(s.tenants[0].tenant, "acme");
        assert!((s.tenants[0].requests_per_second - 2.0).abs() < 1e-9);
        assert!((s.tenants[0].errors_per_second - 0.2).abs() < 1e-9);
        assert!(
            (0.8..1.2).contains(&s.tenants[0].p50_ms),
            "{}",
            s.tenants[0].p50_ms
        );
        assert!(
            (2.5..3.5).contains(&s.tenants[0].p99_ms),
            "{}",
            s.tenants[0].p99_ms
        );
        assert_eq!(s.tenants[1].watches, 1);
        assert_eq!(s.clients.len(), 2);
        assert_eq!(s.clients[0].client, "kubectl/v1.32");
        assert_eq!(s.clients[0].source, "10.0.0.1");
        let json = serde_json::to_value(&s).unwrap();
        for k in [
            "tenant",
            "requestsPerSecond",
            "errorsPerSecond",
            "p50Ms",
            "p99Ms",
            "bytesInPerSecond",
            "bytesOutPerSecond",
            "watches",
            "rejectedPerSecond",
        ] {
            assert!(json["tenants"][0].get(k).is_some(), "{k}");
        }
        assert!(json["windowSeconds"].is_u64());
    }

    #[test]
    fn clients_are_bounded() {
        let t = Traffic::new("h", 5, 1);
        for i in 0..50u8 {
            let mut s = sample("acme", "curl", 1, false);
            s.source = IpAddr::from([10, 0, 0, i]);
            t.record(0, Instant::now(), &s);
        }
        assert_eq!(t.shards[0].clients.len(), 5);
        assert_eq!(t.summary().tenants[0].requests_per_second * 60.0, 50.0);
    }
}
