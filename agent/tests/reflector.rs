//! The reflector against the simulator: snapshots, convergence under churn, relists after
//! compaction, outages, backpressure and freshness confirmations.
//!
//! Every wait has a generous deadline that only turns a hang into a failure; no test asserts
//! how long something took.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kubehub_agent::config::{ReflectorConfig, Upstream};
use kubehub_agent::reflector::{self, ReflectorHandle, SyncOut};
use kubehub_agent::upstream::UpstreamClient;
use kubehub_agent::{Metrics, SyncOutcomeLabel, SyncReasonLabel, SyncTypeLabel};
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions, Server};
use kubehub_wire::{EventType, ResourceKey};
use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Longest wait for anything (a deadline against hangs, not a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

struct Sim {
    cluster: Arc<Cluster>,
    upstream: UpstreamClient,
    _server: Server,
}

async fn start_sim(cfg: ClusterConfig) -> Sim {
    let cluster = Cluster::new("sim", cfg);
    sim::seed(&cluster, &SeedSpec::default()).unwrap();
    let server = sim::serve(
        "127.0.0.1:0".parse().unwrap(),
        Router::Single(cluster.clone()),
        ServeOptions::default(),
    )
    .await
    .unwrap();
    let upstream = UpstreamClient::new(&Upstream {
        url: format!("http://{}", server.local_addr()),
        ca: None,
        token: None,
        token_file: None,
        client_cert: None,
        client_key: None,
    })
    .unwrap();
    Sim {
        cluster,
        upstream,
        _server: server,
    }
}

/// Quick timings, small pages and batches (to exercise paging and batching).
fn fast() -> ReflectorConfig {
    ReflectorConfig {
        page_size: 4,
        batch_bytes: 8 * 1024,
        progress_grace_ms: 200,
        progress_quiet_ms: 10,
        watch_timeout_min_s: 1,
        watch_timeout_max_s: 2,
        request_timeout_ms: 5_000,
        backoff_initial_ms: 10,
        backoff_max_ms: 200,
    }
}

fn key(group: &str, resource: &str) -> ResourceKey {
    ResourceKey {
        group: group.into(),
        version: "v1".into(),
        resource: resource.into(),
    }
}

fn pods() -> ResourceKey {
    key("", "pods")
}

fn configmaps() -> ResourceKey {
    key("", "configmaps")
}

struct Running {
    handle: ReflectorHandle,
    rx: mpsc::Receiver<SyncOut>,
    metrics: Arc<Metrics>,
    key: ResourceKey,
}

fn start(sim: &Sim, key: ResourceKey, cfg: ReflectorConfig, capacity: usize) -> Running {
    cfg.validate().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (tx, rx) = mpsc::channel(capacity);
    let handle = reflector::spawn(sim.upstream.clone(), key.clone(), cfg, metrics.clone(), tx);
    Running {
        handle,
        rx,
        metrics,
        key,
    }
}

impl Running {
    fn resource(&self) -> String {
        self.handle.resource().to_owned()
    }

    fn relists(&self, reason: &'static str) -> u64 {
        let l = SyncReasonLabel {
            resource: self.resource(),
            reason,
        };
        self.metrics.sync.relists.get_or_create(&l).get()
    }

    fn failures(&self) -> u64 {
        [
            "connect",
            "timeout",
            "http_429",
            "http_5xx",
            "http_4xx",
            "malformed",
        ]
        .into_iter()
        .map(|reason| {
            let l = SyncReasonLabel {
                resource: self.resource(),
                reason,
            };
            self.metrics.sync.failures.get_or_create(&l).get()
        })
        .sum()
    }

    fn progress_count(&self, outcome: &'static str) -> u64 {
        let l = SyncOutcomeLabel {
            resource: self.resource(),
            outcome,
        };
        self.metrics.sync.progress.get_or_create(&l).get()
    }

    fn gauge(&self, f: impl Fn(&kubehub_agent::SyncMetrics) -> i64) -> i64 {
        f(&self.metrics.sync)
    }

    fn type_label(&self) -> SyncTypeLabel {
        SyncTypeLabel {
            resource: self.resource(),
        }
    }

    async fn next(&mut self) -> SyncOut {
        tokio::time::timeout(PATIENCE, self.rx.recv())
            .await
            .expect("reflector output within the deadline")
            .expect("reflector running")
    }
}

type ObjKey = (String, String);

fn obj_key(v: &Value) -> ObjKey {
    (
        v["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
        v["metadata"]["name"].as_str().unwrap().to_owned(),
    )
}

fn obj_rv(v: &Value) -> u64 {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// What the hub would hold, built from the reflector's output, checking its invariants on the
/// way.
#[derive(Default)]
struct Model {
    objects: BTreeMap<ObjKey, Value>,
    /// The snapshot in progress.
    pending: Option<BTreeMap<ObjKey, Value>>,
    /// Versions seen (End, events, answers): never go down.
    last_rv: u64,
    snapshots: usize,
    begins: usize,
    events: Vec<(EventType, u64, ObjKey)>,
    progress: Vec<(u32, String)>,
    batch_bytes: usize,
}

impl Model {
    fn new(batch_bytes: usize) -> Model {
        Model {
            batch_bytes,
            ..Model::default()
        }
    }

    fn advance(&mut self, rv: u64, what: &str) {
        assert!(
            rv >= self.last_rv,
            "{what} at {rv} after {}: versions go down",
            self.last_rv
        );
        self.last_rv = rv;
    }

    fn apply(&mut self, out: SyncOut) {
        match out {
            SyncOut::Begin => {
                self.begins += 1;
                self.pending = Some(BTreeMap::new());
            }
            SyncOut::Items(items) => {
                assert!(!items.is_empty(), "empty batch");
                let size: usize = items.iter().map(Bytes::len).sum();
                assert!(
                    items.len() == 1 || size <= self.batch_bytes,
                    "a batch of {size} bytes"
                );
                let pending = self.pending.as_mut().expect("items inside a snapshot");
                for item in items {
                    let v: Value = serde_json::from_slice(&item).unwrap();
                    assert!(v["kind"].is_string(), "kind in {v}");
                    assert!(v["apiVersion"].is_string(), "apiVersion in {v}");
                    pending.insert(obj_key(&v), v);
                }
            }
            SyncOut::End { resource_version } => {
                self.advance(resource_version.parse().unwrap(), "End");
                self.objects = self.pending.take().expect("End after Begin");
                self.snapshots += 1;
            }
            SyncOut::Event {
                kind,
                resource_version,
                object,
            } => {
                assert!(self.pending.is_none(), "an event inside a snapshot");
                assert!(self.snapshots > 0, "an event before the first snapshot");
                let rv: u64 = resource_version.parse().unwrap();
                self.advance(rv, "event");
                let v: Value = serde_json::from_slice(&object).unwrap();
                if kind == EventType::Bookmark {
                    return;
                }
                assert!(v["kind"].is_string() && v["apiVersion"].is_string());
                let k = obj_key(&v);
                match kind {
                    EventType::Added | EventType::Modified => {
                        assert_eq!(obj_rv(&v), rv, "an event's version is its object's");
                        self.objects.insert(k.clone(), v);
                    }
                    EventType::Deleted => {
                        self.objects.remove(&k);
                    }
                    EventType::Bookmark => {}
                }
                self.events.push((kind, rv, k));
            }
            SyncOut::Progress {
                seq,
                resource_version,
            } => {
                if !resource_version.is_empty() {
                    self.advance(resource_version.parse().unwrap(), "progress");
                }
                self.progress.push((seq, resource_version));
            }
        }
    }

    /// key → resourceVersion.
    fn versions(&self) -> BTreeMap<ObjKey, u64> {
        self.objects
            .iter()
            .map(|(k, v)| (k.clone(), obj_rv(v)))
            .collect()
    }
}

/// A list straight from the simulator's API: key → object, and the list's version.
async fn direct_list(sim: &Sim, key: &ResourceKey) -> (BTreeMap<ObjKey, Value>, u64) {
    let path = reflector::list_path(key);
    let resp = sim
        .upstream
        .send(
            b"GET",
            path.as_bytes(),
            &[],
            Empty::<Bytes>::new()
                .map_err(|never| match never {})
                .boxed(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let list: Value = serde_json::from_slice(&body).unwrap();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let items = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (obj_key(v), v.clone()))
        .collect();
    (items, rv)
}

/// The same object, whether or not a list left out `kind` and `apiVersion`.
fn same(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("kind");
            m.remove("apiVersion");
        }
        v
    };
    strip(a) == strip(b)
}

/// Reads until the model holds exactly what the simulator holds (the simulator quiet).
async fn converge(r: &mut Running, model: &mut Model, sim: &Sim) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        while let Ok(out) = r.rx.try_recv() {
            model.apply(out);
        }
        if model.pending.is_none() && model.snapshots > 0 {
            let (direct, _) = direct_list(sim, &r.key).await;
            let equal = direct.len() == model.objects.len()
                && direct
                    .iter()
                    .all(|(k, v)| model.objects.get(k).is_some_and(|m| same(m, v)));
            if equal {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let want: BTreeMap<ObjKey, u64> =
                    direct.iter().map(|(k, v)| (k.clone(), obj_rv(v))).collect();
                panic!(
                    "no convergence: reflector {:?}\nsimulator {:?}",
                    model.versions(),
                    want
                );
            }
        }
        if let Ok(Some(out)) = tokio::time::timeout(Duration::from_millis(100), r.rx.recv()).await {
            model.apply(out);
        }
        assert!(
            tokio::time::Instant::now() <= deadline + PATIENCE,
            "reflector stuck"
        );
    }
}

/// Reads the first snapshot.
async fn first_snapshot(r: &mut Running, model: &mut Model) {
    while model.snapshots == 0 {
        let out = r.next().await;
        model.apply(out);
    }
}

/// Reads until the answer to `seq`.
async fn until_progress(r: &mut Running, model: &mut Model, seq: u32) -> String {
    loop {
        let out = r.next().await;
        let answer = match &out {
            SyncOut::Progress {
                seq: s,
                resource_version,
            } if *s == seq => Some(resource_version.clone()),
            _ => None,
        };
        model.apply(out);
        if let Some(a) = answer {
            return a;
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn churn(cluster: &Cluster, n: usize) {
    for _ in 0..n {
        sim::seed::churn_once(cluster).unwrap();
    }
}

fn ty(cluster: &Cluster, k: &ResourceKey) -> usize {
    cluster
        .type_index(&k.group, &k.version, &k.resource)
        .unwrap()
}

fn configmap(name: &str, value: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": value}})
}

fn rv_of(json: &[u8]) -> u64 {
    obj_rv(&serde_json::from_slice(json).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_equals_a_direct_list() {
    let sim = start_sim(ClusterConfig::default()).await;
    for (k, cfg) in [
        (pods(), fast()),
        (key("apps", "deployments"), fast()),
        (key("", "namespaces"), fast()),
        // One page, one batch.
        (
            pods(),
            ReflectorConfig {
                page_size: 500,
                batch_bytes: 1024 * 1024,
                ..fast()
            },
        ),
    ] {
        let batch = cfg.batch_bytes;
        let mut r = start(&sim, k.clone(), cfg, 4);
        let mut model = Model::new(batch);
        assert_eq!(r.next().await, SyncOut::Begin);
        model.apply(SyncOut::Begin);
        first_snapshot(&mut r, &mut model).await;
        let (direct, direct_rv) = direct_list(&sim, &k).await;
        assert!(!direct.is_empty(), "{k:?} seeded");
        assert_eq!(model.last_rv, direct_rv, "the snapshot's version ({k:?})");
        assert_eq!(model.objects.len(), direct.len(), "{k:?}");
        for (key, v) in &direct {
            assert!(same(&model.objects[key], v), "{key:?}");
        }
        assert_eq!(model.begins, 1);
        let objects = r.gauge(|s| s.objects.get_or_create(&r.type_label()).get());
        assert_eq!(objects, direct.len() as i64, "objects gauge");
        assert_eq!(r.relists("initial"), 1);
        drop(r.handle);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_continue_token_restarts_the_list() {
    let sim = start_sim(ClusterConfig::default()).await;
    // Capacity 1: the reflector holds its first batch until the test reads, so the list's
    // second page is asked for only after the history below is gone.
    let mut r = start(&sim, pods(), fast(), 1);
    let mut model = Model::new(fast().batch_bytes);
    let (metrics, label) = (r.metrics.clone(), r.type_label());
    wait_for("the first page", || {
        metrics.sync.blocked.get_or_create(&label).get() == 1
    })
    .await;
    churn(&sim.cluster, 5);
    sim.cluster.compact_history();
    first_snapshot(&mut r, &mut model).await;
    assert_eq!(model.begins, 2, "the list started over");
    assert_eq!(r.relists("initial"), 1);
    let (direct, direct_rv) = direct_list(&sim, &pods()).await;
    assert_eq!(model.last_rv, direct_rv);
    assert_eq!(model.objects.len(), direct.len());
    for (key, v) in &direct {
        assert!(same(&model.objects[key], v), "{key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_under_churn_with_versions_in_order() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_millis(100),
        ..ClusterConfig::default()
    })
    .await;
    let mut r = start(&sim, pods(), fast(), 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    // Churn concurrently with reading, across watch restarts (timeouts of 1-2 s).
    let cluster = sim.cluster.clone();
    let churner = tokio::spawn(async move {
        for i in 0..600 {
            churn(&cluster, 1);
            if i % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    while !churner.is_finished() {
        if let Ok(Some(out)) = tokio::time::timeout(Duration::from_millis(50), r.rx.recv()).await {
            model.apply(out);
        }
    }
    churner.await.unwrap();
    converge(&mut r, &mut model, &sim).await;
    let kinds = |k: EventType| model.events.iter().filter(|e| e.0 == k).count();
    assert!(kinds(EventType::Modified) > 100, "updates went through");
    assert!(
        kinds(EventType::Added) > 0 && kinds(EventType::Deleted) > 0,
        "replacements"
    );
    assert_eq!(model.begins, 1, "no relist needed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_and_disconnect_relist_and_converge() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ClusterConfig::default()
    })
    .await;
    let cfg = ReflectorConfig {
        watch_timeout_min_s: 600,
        watch_timeout_max_s: 600,
        ..fast()
    };
    let mut r = start(&sim, pods(), cfg, 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    churn(&sim.cluster, 20);
    converge(&mut r, &mut model, &sim).await;
    // Another type moves the version past the last pod event; the history goes; watches drop:
    // resuming from the reflector's version is impossible.
    let cms = ty(&sim.cluster, &configmaps());
    sim.cluster
        .create(cms, Some("default"), configmap("bump", "1"), false)
        .unwrap();
    sim.cluster.compact_history();
    sim.cluster.disconnect_watchers();
    churn(&sim.cluster, 20);
    converge(&mut r, &mut model, &sim).await;
    assert_eq!(model.begins, 2, "one relist");
    assert_eq!(model.snapshots, 2);
    assert_eq!(r.relists("expired"), 1);
    // Disconnection alone (the history kept): the watch resumes, no relist.
    sim.cluster.disconnect_watchers();
    churn(&sim.cluster, 20);
    converge(&mut r, &mut model, &sim).await;
    assert_eq!(model.begins, 2, "resumed without a relist");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_api_server_backs_off_then_recovers() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ClusterConfig::default()
    })
    .await;
    let mut r = start(&sim, pods(), fast(), 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;

    // An outage the watch can resume after.
    sim.cluster.set_available(false);
    sim.cluster.disconnect_watchers();
    churn(&sim.cluster, 30);
    let failures = || r.failures();
    wait_for("failed watch attempts", || failures() >= 3).await;
    sim.cluster.set_available(true);
    converge(&mut r, &mut model, &sim).await;
    assert_eq!(model.begins, 1, "resumed from its version");

    // An outage during which the history is compacted: a relist once the API is back.
    sim.cluster.set_available(false);
    sim.cluster.disconnect_watchers();
    let before = r.failures();
    churn(&sim.cluster, 30);
    sim.cluster.compact_history();
    wait_for("failed watch attempts", || r.failures() >= before + 3).await;
    sim.cluster.set_available(true);
    converge(&mut r, &mut model, &sim).await;
    assert_eq!(model.begins, 2, "relisted after 410");
    assert_eq!(r.relists("expired"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_stops_reading_the_watch() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_secs(3600),
        watch_buffer: 64,
        ..ClusterConfig::default()
    })
    .await;
    let cfg = ReflectorConfig {
        watch_timeout_min_s: 600,
        watch_timeout_max_s: 600,
        ..fast()
    };
    let mut r = start(&sim, pods(), cfg, 1);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    let objects = r.gauge(|s| s.objects.get_or_create(&r.type_label()).get());
    let bytes = r.gauge(|s| s.object_bytes.get_or_create(&r.type_label()).get());
    let (metrics, label) = (r.metrics.clone(), r.type_label());
    let received = || metrics.sync.received.get_or_create(&label).get();
    let blocked = || metrics.sync.blocked.get_or_create(&label).get();

    // Nobody reads: 2,000 changes (the simulator ends watches 64 events behind).
    churn(&sim.cluster, 2_000);
    wait_for("the reflector to block on its output", || blocked() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One event in the channel, one waiting for room: nothing else was read.
    assert_eq!(received(), 2, "events read while the output is full");
    assert_eq!(blocked(), 1);
    assert_eq!(r.rx.len(), 1);
    assert_eq!(
        r.gauge(|s| s.objects.get_or_create(&r.type_label()).get()),
        objects
    );
    let held = r.gauge(|s| s.object_bytes.get_or_create(&r.type_label()).get());
    assert!(
        held <= bytes + 64 * 1024,
        "memory held stays put: {bytes} -> {held}"
    );

    // Reading again, it catches up.
    converge(&mut r, &mut model, &sim).await;
    assert_eq!(blocked(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_on_a_quiet_type_is_confirmed_by_a_list() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ClusterConfig::default()
    })
    .await;
    let mut r = start(&sim, configmaps(), fast(), 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    for seq in 1..=5u32 {
        // Pods change, configmaps do not: the configmaps' watch never reaches the edge's
        // version.
        churn(&sim.cluster, 3);
        let edge = sim.cluster.resource_version();
        r.handle.progress(seq);
        let answer = until_progress(&mut r, &mut model, seq).await;
        let rv: u64 = answer.parse().unwrap();
        assert!(rv >= edge, "answer {rv} vouches for the edge's {edge}");
    }
    assert!(
        model.events.is_empty(),
        "nothing changed: {:?}",
        model.events
    );
    assert_eq!(r.progress_count("list"), 5);
    // Requests sent together share one confirmation.
    churn(&sim.cluster, 3);
    let edge = sim.cluster.resource_version();
    for seq in 10..15u32 {
        r.handle.progress(seq);
    }
    for seq in 10..15u32 {
        let answer = until_progress(&mut r, &mut model, seq).await;
        assert!(answer.parse::<u64>().unwrap() >= edge);
    }
    converge(&mut r, &mut model, &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_type_is_confirmed_once_its_watch_is_quiet_not_after_the_whole_grace() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_secs(3600),
        ..ClusterConfig::default()
    })
    .await;
    // A grace longer than `until_progress` waits: only the quiet period can answer in time.
    let cfg = ReflectorConfig {
        progress_grace_ms: 60_000,
        progress_quiet_ms: 10,
        ..fast()
    };
    let mut r = start(&sim, configmaps(), cfg.clone(), 8);
    let mut model = Model::new(cfg.batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    for seq in 1..=3u32 {
        churn(&sim.cluster, 3);
        let edge = sim.cluster.resource_version();
        r.handle.progress(seq);
        let answer = until_progress(&mut r, &mut model, seq).await;
        assert!(answer.parse::<u64>().unwrap() >= edge);
    }
    assert_eq!(r.progress_count("list"), 3);
    converge(&mut r, &mut model, &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_always_follows_the_change_made_before_it() {
    let sim = start_sim(ClusterConfig {
        bookmark_interval: Duration::from_millis(500),
        ..ClusterConfig::default()
    })
    .await;
    let mut r = start(&sim, configmaps(), fast(), 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    // Other types change all along (some confirmations need the list, some the watch).
    let cluster = sim.cluster.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let churner = tokio::spawn(async move {
        let mut n = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            churn(&cluster, 1);
            n += 1;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        n
    });
    let cms = ty(&sim.cluster, &configmaps());
    for i in 0..40u32 {
        let name = format!("cm-{}", i / 3);
        let (kind, rv) = match i % 3 {
            0 => {
                let b = sim
                    .cluster
                    .create(cms, Some("default"), configmap(&name, "a"), false)
                    .unwrap();
                (EventType::Added, rv_of(&b))
            }
            1 => {
                let b = sim
                    .cluster
                    .patch(
                        cms,
                        Some("default"),
                        &name,
                        kubehub_sim::cluster::PatchType::Merge,
                        br#"{"data":{"v":"b"}}"#,
                        None,
                        false,
                        None,
                    )
                    .unwrap();
                (EventType::Modified, rv_of(&b))
            }
            _ => {
                let b = sim
                    .cluster
                    .delete(cms, Some("default"), &name, &Default::default(), false)
                    .unwrap();
                (EventType::Deleted, rv_of(&b))
            }
        };
        let seen = model.events.len();
        r.handle.progress(i);
        let answer = until_progress(&mut r, &mut model, i).await;
        let confirmed: u64 = answer.parse().unwrap();
        assert!(
            confirmed >= rv,
            "answer {confirmed} covers the change at {rv}"
        );
        let k = ("default".to_owned(), name.clone());
        let ev = model.events[seen..]
            .iter()
            .find(|e| e.2 == k)
            .unwrap_or_else(|| panic!("no event for {k:?} before answer {i}"));
        assert_eq!(ev.0, kind, "{k:?}");
        if kind != EventType::Deleted {
            assert_eq!(ev.1, rv, "{k:?}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let churned = churner.await.unwrap();
    assert!(churned > 0);
    converge(&mut r, &mut model, &sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_when_the_edge_fails_is_empty() {
    let sim = start_sim(ClusterConfig::default()).await;
    let mut r = start(&sim, configmaps(), fast(), 8);
    let mut model = Model::new(fast().batch_bytes);
    first_snapshot(&mut r, &mut model).await;
    sim.cluster.set_available(false);
    r.handle.progress(1);
    assert_eq!(until_progress(&mut r, &mut model, 1).await, "");
    assert_eq!(r.progress_count("failed"), 1);
    sim.cluster.set_available(true);
    churn(&sim.cluster, 2);
    let edge = sim.cluster.resource_version();
    r.handle.progress(2);
    let answer = until_progress(&mut r, &mut model, 2).await;
    assert!(answer.parse::<u64>().unwrap() >= edge);
}
