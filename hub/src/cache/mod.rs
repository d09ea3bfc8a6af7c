//! `cache`: get, list and watch answered by the hub from what each agent streams north.
//!
//! `ingest → store → serve`, one module each:
//! * the store itself is the `kubehub-cache` crate ([`kubehub_cache::TypeCache`]: one per
//!   cluster and type, one writer, lock-free snapshot reads, a bounded history);
//! * [`ingest`]: a tunnel's sync streams applied to its cluster's caches, on the tunnel's core
//!   (the single writer): snapshots replace atomically, events apply in order;
//! * [`freshness`]: confirmations that a type is current, shared by the reads waiting on it;
//! * [`plan`]: whether a request can be answered exactly from the cache, or why not;
//! * [`serve`]: the answer (objects, lists, tables, watches) written from a snapshot.
//!
//! [`Caches`] is what every core shares: cluster → [`ClusterCache`] → type → [`TypeSlot`].
//! A cluster's caches outlive its tunnel: after the agent leaves they answer reads for
//! `stale_grace_ms` (marked with a `Warning`), and when it comes back its first snapshot
//! replaces them, recorded as changes so history stays continuous.

pub mod freshness;
pub mod ingest;
pub mod plan;
pub mod serve;

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Instant;

use dashmap::DashMap;
use kubehub_cache::TypeCache;
use kubehub_wire::{ResourceKey, ResourceType};
use tokio::sync::watch;

use crate::config::CacheConfig;
use crate::metrics::{Metrics, TypeLabel};

/// The cached state of one type of one cluster.
///
/// Memory: what every slot of every cluster holds, so nothing here is allocated before it is
/// needed: the type's description is shared by the clusters that report it alike
/// ([`Caches::wanted`]), the cache allocates its history as changes come, and the wake-up
/// channels (the cache's, and `epoch`) exist only once something waits on them.
#[derive(Debug)]
pub struct TypeSlot {
    /// The type, as the agent reported it (kind, scope); one allocation shared by every
    /// cluster whose agent reported the same.
    pub info: Arc<ResourceType>,
    /// The objects, their history, their watchers' wake-ups.
    pub cache: TypeCache,
    /// Confirmations of currency.
    pub freshness: freshness::Freshness,
    /// A snapshot has been applied and the sync stream is open: reads may be served.
    synced: AtomicBool,
    /// Bumped whenever the sync stream ends (agent gone, stream reset): open watches end so
    /// that their clients relist. Created by the first watch (see [`TypeSlot::epoch`]).
    epoch: OnceLock<watch::Sender<u64>>,
    /// At the last confirmation: the edge's resourceVersion minus the cache's.
    pub last_lag: AtomicU64,
}

impl TypeSlot {
    fn new(info: Arc<ResourceType>, history_window: usize) -> TypeSlot {
        TypeSlot {
            info,
            cache: TypeCache::new(history_window),
            freshness: freshness::Freshness::default(),
            synced: AtomicBool::new(false),
            epoch: OnceLock::new(),
            last_lag: AtomicU64::new(0),
        }
    }

    /// Whether a snapshot was applied on the current sync stream.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Marks the sync stream as current (after a snapshot) or ended.
    pub fn set_synced(&self, synced: bool) {
        let was = self.synced.swap(synced, Ordering::AcqRel);
        if was && !synced {
            // Pairs with the fence in `epoch`: a watcher that subscribed and then still saw
            // the stream synced has a channel this sees.
            fence(Ordering::SeqCst);
            if let Some(tx) = self.epoch.get() {
                tx.send_modify(|e| *e += 1);
            }
        }
        if !synced {
            // No answer comes on a stream that ended, whether or not it ever synced.
            self.freshness.fail_all();
        }
    }

    /// Whether this is the slot of type `key`.
    fn is(&self, key: &ResourceKey) -> bool {
        self.info.resource == key.resource
            && self.info.group == key.group
            && self.info.version == key.version
    }

    /// The type's key.
    fn key(&self) -> ResourceKey {
        ResourceKey {
            group: self.info.group.clone(),
            version: self.info.version.clone(),
            resource: self.info.resource.clone(),
        }
    }

    /// The order of [`ClusterCache::slots`]: by group, version, resource.
    fn order(&self) -> (&str, &str, &str) {
        (&self.info.group, &self.info.version, &self.info.resource)
    }

    /// Changes when the sync stream ends (see [`TypeSlot::set_synced`]). Subscribe before
    /// checking [`TypeSlot::is_synced`]: an end after the check is then always seen.
    pub fn epoch(&self) -> watch::Receiver<u64> {
        let rx = self.epoch.get_or_init(|| watch::channel(0).0).subscribe();
        // Pairs with the fence in `set_synced`: either that sees this channel and sends, or
        // the `is_synced` check that follows sees the stream ended.
        fence(Ordering::SeqCst);
        rx
    }
}

/// Where the cluster's agent stands, for reads.
#[derive(Debug)]
pub struct ClusterCache {
    /// The slots, sorted by type (group, version, resource). A handful per cluster: a scan
    /// finds one as fast as a hash would, and a vector costs a pointer per type where a hash
    /// table would cost a bucket of room (key included) per type and then some.
    types: RwLock<Vec<Arc<TypeSlot>>>,
    /// Milliseconds since `origin` when the agent left; 0 while connected.
    left_at_ms: AtomicU64,
    /// The tunnel generation currently feeding these caches.
    generation: AtomicU64,
    origin: Instant,
}

impl ClusterCache {
    fn new() -> ClusterCache {
        ClusterCache {
            types: RwLock::new(Vec::new()),
            left_at_ms: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            origin: Instant::now(),
        }
    }

    /// The slot of a type, if it is cached.
    pub fn slot(&self, key: &ResourceKey) -> Option<Arc<TypeSlot>> {
        self.slot_of(&key.group, &key.version, &key.resource)
    }

    /// The slot of a type named by borrowed strings (the request path's lookup).
    pub fn slot_of(&self, group: &str, version: &str, resource: &str) -> Option<Arc<TypeSlot>> {
        self.types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|s| {
                s.info.resource == resource && s.info.group == group && s.info.version == version
            })
            .cloned()
    }

    /// The slots, sorted by type.
    pub fn slots(&self) -> Vec<(ResourceKey, Arc<TypeSlot>)> {
        self.types
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| (s.key(), s.clone()))
            .collect()
    }

    /// Makes the cached types exactly `wanted` (keeping the slots of types that stay), and
    /// returns their keys.
    pub fn set_types(
        &self,
        wanted: Vec<Arc<ResourceType>>,
        history_window: usize,
    ) -> Vec<ResourceKey> {
        let mut types = self.types.write().unwrap_or_else(|e| e.into_inner());
        let mut next: Vec<Arc<TypeSlot>> = Vec::with_capacity(wanted.len());
        for t in wanted {
            let key = ResourceKey {
                group: t.group.clone(),
                version: t.version.clone(),
                resource: t.resource.clone(),
            };
            if next.iter().any(|s| s.is(&key)) {
                continue;
            }
            let slot = match types.iter().position(|s| s.is(&key)) {
                Some(i) => types.swap_remove(i),
                None => Arc::new(TypeSlot::new(t, history_window)),
            };
            next.push(slot);
        }
        for gone in types.drain(..) {
            gone.set_synced(false);
        }
        next.sort_by(|a, b| a.order().cmp(&b.order()));
        *types = next;
        types.iter().map(|s| s.key()).collect()
    }

    /// What is cached per type, for `/clusters` on the admin listener.
    pub fn stats_json(&self) -> serde_json::Value {
        let now = Instant::now();
        let types: Vec<serde_json::Value> = self
            .slots()
            .into_iter()
            .map(|(k, s)| {
                let st = s.cache.stats();
                serde_json::json!({
                    "type": type_label(&k),
                    "synced": s.is_synced(),
                    "objects": st.objects,
                    "bytes": st.bytes,
                    "history": st.history,
                    "resourceVersion": st.rv,
                    "oldest": st.oldest,
                    "confirmedMsAgo": s.freshness.confirmed_age(now).map(|d| d.as_millis() as u64),
                    "lagVersions": s.last_lag.load(Ordering::Relaxed),
                })
            })
            .collect();
        serde_json::json!({
            "agentGoneMs": self.gone_for().map(|d| d.as_millis() as u64),
            "types": types,
        })
    }

    /// The agent of tunnel `generation` left (its sync streams ended with it); ignored if a
    /// newer tunnel took over meanwhile.
    pub fn agent_left(&self, generation: u64) {
        if !self.is_current(generation) {
            return;
        }
        let ms = (self.origin.elapsed().as_millis() as u64).max(1);
        self.left_at_ms.store(ms, Ordering::Release);
        for (_, s) in self.slots() {
            s.set_synced(false);
        }
    }

    /// Whether tunnel `generation` is the one feeding these caches.
    pub fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
    }

    /// The agent is connected again, on tunnel `generation`.
    pub fn agent_back(&self, generation: u64) {
        self.generation.store(generation, Ordering::Release);
        self.left_at_ms.store(0, Ordering::Release);
    }

    /// How long ago the agent left, if it is gone.
    pub fn gone_for(&self) -> Option<std::time::Duration> {
        match self.left_at_ms.load(Ordering::Acquire) {
            0 => None,
            ms => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(std::time::Duration::from_millis(ms)),
            ),
        }
    }
}

/// `group/version/resource` (`version/resource` for core): the `resource` label.
pub fn type_label(k: &ResourceKey) -> String {
    if k.group.is_empty() {
        format!("{}/{}", k.version, k.resource)
    } else {
        format!("{}/{}/{}", k.group, k.version, k.resource)
    }
}

/// Every cluster's caches, shared by all cores.
#[derive(Debug)]
pub struct Caches {
    /// The `[cache]` options.
    pub cfg: CacheConfig,
    clusters: DashMap<String, Arc<ClusterCache>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The hub is shutting down: no stale reads.
    draining: AtomicBool,
    /// The type descriptions in use, each once (see [`Caches::wanted`]).
    infos: Mutex<Vec<Weak<ResourceType>>>,
}

impl Caches {
    /// Empty caches.
    pub fn new(cfg: CacheConfig, metrics: Arc<Metrics>) -> Caches {
        let clusters = DashMap::with_shard_amount(cfg.shards.max(2));
        Caches {
            cfg,
            clusters,
            metrics,
            draining: AtomicBool::new(false),
            infos: Mutex::new(Vec::new()),
        }
    }

    /// The hub is draining (`crate::drain`), or no longer.
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Release);
    }

    /// Whether reads may be served while a cluster's agent is away.
    pub fn serves_stale(&self) -> bool {
        !self.draining.load(Ordering::Acquire) && self.cfg.stale_grace_ms > 0
    }

    /// A cluster's caches, if it has any.
    pub fn cluster(&self, cluster: &str) -> Option<Arc<ClusterCache>> {
        self.clusters.get(cluster).map(|c| c.clone())
    }

    /// A cluster's caches, created empty if needed.
    pub fn cluster_or_new(&self, cluster: &str) -> Arc<ClusterCache> {
        self.clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| Arc::new(ClusterCache::new()))
            .clone()
    }

    /// Sets the per-type gauges (summed over clusters) before `/metrics` is encoded: reading
    /// every cache's counters at scrape time keeps the ingest path free of metric updates.
    pub fn update_gauges(&self) {
        let mut sums: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for c in self.clusters.iter() {
            for (k, s) in c.slots() {
                let st = s.cache.stats();
                let e = sums.entry(type_label(&k)).or_default();
                e.0 += st.objects as i64;
                e.1 += st.bytes as i64;
                e.2 += i64::from(s.is_synced());
            }
        }
        for (resource, (objects, bytes, synced)) in sums {
            let l = TypeLabel { resource };
            self.metrics.cache_objects.get_or_create(&l).set(objects);
            self.metrics.cache_bytes.get_or_create(&l).set(bytes);
            self.metrics.cache_synced.get_or_create(&l).set(synced);
        }
    }

    /// The types to cache for a cluster: those configured for its labels that its agent
    /// reported it can sync (DISCOVERY's `cached` flag: list and watch, no subresource).
    ///
    /// Each description is shared: clusters whose agents report a type alike (the same
    /// Kubernetes version, as a fleet mostly is) hold one allocation of it, not one each.
    pub fn wanted(
        &self,
        labels: &[(String, String)],
        reported: &[ResourceType],
    ) -> Vec<Arc<ResourceType>> {
        if !self.cfg.enabled {
            return Vec::new();
        }
        let names = self.cfg.types_for(labels);
        reported
            .iter()
            .filter(|t| t.cached)
            .filter(|t| {
                names.iter().any(|n| {
                    n.group == t.group && n.version == t.version && n.resource == t.resource
                })
            })
            .map(|t| self.intern(t))
            .collect()
    }

    /// The shared description equal to `t` (made if none is in use). Descriptions no slot
    /// holds any more are forgotten as this runs, so the table holds what is in use: a few
    /// per cached type, however many clusters and however often they report.
    fn intern(&self, t: &ResourceType) -> Arc<ResourceType> {
        let mut infos = self.infos.lock().unwrap_or_else(|e| e.into_inner());
        infos.retain(|w| w.strong_count() > 0);
        if let Some(shared) = infos.iter().filter_map(Weak::upgrade).find(|s| **s == *t) {
            return shared;
        }
        let shared = Arc::new(t.clone());
        infos.push(Arc::downgrade(&shared));
        shared
    }
}
