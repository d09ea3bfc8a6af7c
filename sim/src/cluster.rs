//! One simulated cluster: the API server's verbs over the [`State`], with kube-apiserver's
//! semantics (resourceVersion preconditions, 409/404/410/422 errors, consistent paginated
//! lists, watches from a version).
//!
//! Everything here is synchronous: one short critical section per call, never held across an
//! await. The HTTP layer ([`super::api`]) and in-process users (the load harness, tests) call
//! the same methods.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use kubehub_cache::{bookmark_object, list_position, paginate, ChangeKind, Filter, Meta, ObjKey};
use kubehub_kapi::query::Version;
use kubehub_kapi::resources::builtin;
use kubehub_kapi::time::rfc3339;
use kubehub_kapi::Status;
use kubehub_wire::{EventType, ResourceType};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

use super::objects::{self, Ctx};
use super::patch::strategic_merge;
use super::store::{Event, State, Stored};

pub use kubehub_cache::{base_resource, ListPage, ListRequest};

/// Tunables of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Events kept for watches and exact reads; older versions get 410 Gone.
    pub history_window: usize,
    /// Events buffered per watch before a slow watcher is disconnected.
    pub watch_buffer: usize,
    /// How often watches that allow bookmarks get one.
    pub bookmark_interval: Duration,
    /// How often `logs -f` prints a line.
    pub log_interval: Duration,
    /// Seed of the cluster's RNG (uids, generated names, IPs): same seed, same cluster.
    pub seed: u64,
    /// How late watches deliver each change (a lagging watch cache; tests of freshness use
    /// it). Zero: at once.
    pub watch_delay: Duration,
    /// Events the simulated controllers record, kept per namespace (the oldest are deleted
    /// beyond it, as a real cluster expires them after an hour). Zero: record none.
    pub events_per_namespace: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            history_window: 10_000,
            watch_buffer: 1024,
            bookmark_interval: Duration::from_secs(30),
            log_interval: Duration::from_secs(1),
            seed: 1,
            watch_delay: Duration::ZERO,
            events_per_namespace: 500,
        }
    }
}

struct Inner {
    state: State,
    rng: ChaCha8Rng,
}

/// A simulated Kubernetes API server's data and verbs.
pub struct Cluster {
    name: String,
    cfg: ClusterConfig,
    types: &'static [ResourceType],
    inner: Mutex<Inner>,
    events: broadcast::Sender<Arc<Event>>,
    disconnect: watch::Sender<u64>,
    available: std::sync::atomic::AtomicBool,
    runtimes: super::kubelet::Runtimes,
    recorder: super::controllers::Recorder,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("name", &self.name).finish()
    }
}

/// One event as a watch delivers it.
#[derive(Debug, Clone)]
pub struct WatchItem {
    /// ADDED / MODIFIED / DELETED / BOOKMARK.
    pub kind: EventType,
    /// The serialized object (for BOOKMARK, a minimal object carrying the version).
    pub object: Bytes,
}

/// A started watch: what to send first, then the live feed.
#[derive(Debug)]
pub struct WatchStart {
    /// Events to send before the live ones.
    pub initial: Vec<WatchItem>,
    /// The version the watch has seen everything up to once `initial` is sent.
    pub start_rv: u64,
    /// Live events (every type; filter with the watch's [`Filter`]).
    pub live: broadcast::Receiver<Arc<Event>>,
    /// Changes when the cluster drops every watch ([`Cluster::disconnect_watchers`]).
    pub disconnect: watch::Receiver<u64>,
}

/// Preconditions and options of a delete (the DeleteOptions body).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// `preconditions.uid`
    pub uid: Option<String>,
    /// `preconditions.resourceVersion`
    pub resource_version: Option<String>,
    /// `propagationPolicy` (None: Background, as for apps/v1 kinds).
    pub propagation_policy: Option<Propagation>,
}

/// What happens to an object's dependents (by `ownerReferences`) when it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The dependents stay, without the owner reference.
    Orphan,
    /// The owner goes at once, the dependents after it.
    Background,
    /// The dependents go first, then the owner.
    Foreground,
}

/// The patch formats kube-apiserver accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/json-patch+json` (RFC 6902)
    Json,
    /// `application/merge-patch+json` (RFC 7386)
    Merge,
    /// `application/strategic-merge-patch+json`
    Strategic,
}

impl PatchType {
    /// The accepted content types, for 415 messages.
    pub const CONTENT_TYPES: [&'static str; 4] = [
        "application/json-patch+json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];

    /// The patch type of a Content-Type header value.
    pub fn from_content_type(ct: &str) -> Option<PatchType> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            _ => None,
        }
    }
}

const PROTECTED_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

fn parse(json: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(json)
        .map_err(|e| Status::internal(format!("stored object unreadable: {e}")))
}

impl Cluster {
    /// A cluster with the namespaces every cluster has (`default`, `kube-system`,
    /// `kube-public`, `kube-node-lease`), each with its `default` service account.
    pub fn new(name: impl Into<String>, cfg: ClusterConfig) -> Arc<Cluster> {
        let types = builtin();
        let (events, _) = broadcast::channel(cfg.watch_buffer.max(16));
        let (disconnect, _) = watch::channel(0);
        let cluster = Arc::new(Cluster {
            name: name.into(),
            inner: Mutex::new(Inner {
                state: State::new(types.len(), cfg.history_window),
                rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            }),
            cfg,
            types,
            events,
            disconnect,
            available: std::sync::atomic::AtomicBool::new(true),
            runtimes: super::kubelet::Runtimes::default(),
            recorder: super::controllers::Recorder::default(),
        });
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            if let Err(e) = cluster.create(cluster.namespaces(), None, obj, false) {
                tracing::error!(cluster = %cluster.name, "creating namespace {ns}: {e}");
            }
        }
        cluster
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.cfg
    }

    /// What its pods' containers hold (their filesystems), for exec, attach and `kubectl cp`.
    pub fn runtimes(&self) -> &super::kubelet::Runtimes {
        &self.runtimes
    }

    /// The resource types it serves (subresources included).
    pub fn types(&self) -> &'static [ResourceType] {
        self.types
    }

    /// Index of a type in [`Cluster::types`].
    pub fn type_index(&self, group: &str, version: &str, resource: &str) -> Option<usize> {
        self.types
            .iter()
            .position(|t| t.group == group && t.version == version && t.resource == resource)
    }

    fn namespaces(&self) -> usize {
        self.type_index("", "v1", "namespaces").unwrap_or(0)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.inner).state.rv
    }

    /// Number of objects of a type.
    pub fn count(&self, ty: usize) -> usize {
        lock(&self.inner).state.objects[ty].len()
    }

    /// The keys of a type's objects (namespace, name).
    pub fn keys(&self, ty: usize) -> Vec<(String, String)> {
        lock(&self.inner).state.objects[ty]
            .keys()
            .map(|k| (k.namespace().to_string(), k.name().to_string()))
            .collect()
    }

    /// `namespace/name` → resourceVersion of every object of type `ty` (what a client's
    /// cache of the type should converge to).
    pub fn versions(&self, ty: usize) -> std::collections::BTreeMap<String, String> {
        lock(&self.inner).state.objects[ty]
            .iter()
            .map(|(k, o)| (format!("{}/{}", k.namespace(), k.name()), o.rv.to_string()))
            .collect()
    }

    /// Ends every open watch, as an API server restart would; clients re-watch from their last
    /// version (and get 410 if it has left the history window).
    pub fn disconnect_watchers(&self) {
        self.disconnect.send_modify(|g| *g += 1);
    }

    /// Whether the API answers (see [`Cluster::set_available`]).
    pub fn is_available(&self) -> bool {
        self.available.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes the HTTP API down (every request gets 503, as during an API server restart) or
    /// brings it back. In-process calls keep working.
    pub fn set_available(&self, up: bool) {
        self.available
            .store(up, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets the whole event history, as an etcd compaction would: watches and exact reads
    /// from any earlier version now get 410 Gone.
    pub fn compact_history(&self) {
        lock(&self.inner).state.compact();
    }

    fn key(&self, ty: usize, ns: Option<&str>, name: &str) -> ObjKey {
        let ns = if self.types[ty].namespaced {
            ns.unwrap_or("")
        } else {
            ""
        };
        ObjKey::new(ns, name)
    }

    fn not_found(&self, ty: usize, name: &str) -> Status {
        let t = &self.types[ty];
        Status::not_found(&t.group, base_resource(&t.resource), name)
    }

    /// Reads one object.
    pub fn get(&self, ty: usize, ns: Option<&str>, name: &str) -> Result<Bytes, Status> {
        let key = self.key(ty, ns, name);
        let inner = lock(&self.inner);
        inner.state.objects[ty]
            .get(&key)
            .map(|s| s.json.clone())
            .ok_or_else(|| self.not_found(ty, name))
    }

    /// Lists objects as kube-apiserver does: at the version asked for, a page at a time, each
    /// page of a paginated list consistent with the first.
    pub fn list(&self, ty: usize, filter: &Filter, req: &ListRequest) -> Result<ListPage, Status> {
        let inner = lock(&self.inner);
        let st = &inner.state;
        let (read_rv, start) = list_position(req, st.rv, st.oldest_available())?;
        let objs = st.objects_at(ty, read_rv)?;
        let range = match &start {
            Some(k) => {
                objs.range::<ObjKey, _>((std::ops::Bound::Excluded(k), std::ops::Bound::Unbounded))
            }
            None => objs.range::<ObjKey, _>(..),
        };
        Ok(paginate(range, filter, req.limit, read_rv))
    }

    /// Creates an object (`dry_run`: validates and returns it without storing); the simulated
    /// controllers then act on it (a Deployment gets its ReplicaSet and pods).
    pub fn create(
        &self,
        ty: usize,
        ns: Option<&str>,
        obj: Value,
        dry_run: bool,
    ) -> Result<Bytes, Status> {
        let out = self.create_inner(ty, ns, obj, dry_run)?;
        if !dry_run {
            super::controllers::after_create(self, ty, &out);
        }
        Ok(out)
    }

    /// [`Cluster::create`] without the controllers (what the controllers themselves use).
    pub(crate) fn create_inner(
        &self,
        ty: usize,
        ns: Option<&str>,
        mut obj: Value,
        dry_run: bool,
    ) -> Result<Bytes, Status> {
        let t = &self.types[ty];
        check_kind(t, &obj)?;
        let path_ns = if t.namespaced { ns } else { None };
        check_namespace(&mut obj, path_ns)?;
        let mut inner = lock(&self.inner);
        let Inner { state, rng } = &mut *inner;
        if let Some(ns) = path_ns {
            if !state.objects[self.namespaces()].contains_key(&ObjKey::new("", ns)) {
                return Err(Status::not_found("", "namespaces", ns));
            }
        }
        let name = match obj["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(n) => n.to_owned(),
            None => match obj["metadata"]["generateName"]
                .as_str()
                .filter(|n| !n.is_empty())
            {
                Some(prefix) => loop {
                    let n = format!("{prefix}{}", objects::name_suffix(rng));
                    if !state.objects[ty].contains_key(&self.key(ty, ns, &n)) {
                        break n;
                    }
                },
                None => {
                    return Err(Status::invalid(
                        &t.group,
                        &t.kind,
                        "",
                        "metadata.name",
                        "Required value: name or generateName is required",
                    ))
                }
            },
        };
        objects::validate_name(&t.group, &t.kind, base_resource(&t.resource), &name)?;
        let key = self.key(ty, ns, &name);
        if state.objects[ty].contains_key(&key) {
            return Err(Status::already_exists(
                &t.group,
                base_resource(&t.resource),
                &name,
            ));
        }
        let now = SystemTime::now();
        let uid = objects::uuid(rng);
        let rv = state.rv + 1;
        {
            let meta = &mut obj["metadata"];
            meta["name"] = json!(name);
            meta["uid"] = json!(uid);
            meta["creationTimestamp"] = json!(rfc3339(now));
            meta["resourceVersion"] = json!(rv.to_string());
            if let Some(m) = meta.as_object_mut() {
                m.remove("deletionTimestamp");
                m.remove("deletionGracePeriodSeconds");
                m.remove("selfLink");
            }
            if objects::has_generation(&t.kind) {
                meta["generation"] = json!(1);
            }
        }
        obj["apiVersion"] = json!(kubehub_kapi::resources::api_version(&t.group, &t.version));
        obj["kind"] = json!(t.kind);
        // The "scheduler": a random node, if there are any.
        let nodes = &state.objects[self.type_index("", "v1", "nodes").unwrap_or(0)];
        let node = match nodes.len() {
            0 => "sim-node-0".to_owned(),
            n => {
                let i = rand::Rng::random_range(rng, 0..n);
                nodes
                    .keys()
                    .nth(i)
                    .map(|k| k.name().to_string())
                    .unwrap_or_default()
            }
        };
        objects::on_create(
            &t.kind,
            &mut obj,
            &mut Ctx {
                rng,
                now,
                node: &node,
            },
        );
        if dry_run {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            return Ok(to_bytes(&obj));
        }
        let stored = Stored {
            json: to_bytes(&obj),
            rv,
            uid: uid.into(),
            meta: Meta::of(&t.group, &t.resource, &obj),
        };
        let out = stored.json.clone();
        let ev = state.commit(ty, key, ChangeKind::Added, rv, Some(stored), None);
        let _ = self.events.send(ev);
        drop(inner);
        if t.kind == "Namespace" {
            self.populate_namespace(&name);
        }
        Ok(out)
    }

    /// What the namespace controllers create in every new namespace.
    fn populate_namespace(&self, ns: &str) {
        let Some(sa) = self.type_index("", "v1", "serviceaccounts") else {
            return;
        };
        let obj =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        if let Err(e) = self.create(sa, Some(ns), obj, false) {
            tracing::warn!(cluster = %self.name, "default service account in {ns}: {e}");
        }
        let Some(cm) = self.type_index("", "v1", "configmaps") else {
            return;
        };
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt"},
            "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nsimulated\n-----END CERTIFICATE-----\n"}});
        if let Err(e) = self.create(cm, Some(ns), obj, false) {
            tracing::warn!(cluster = %self.name, "kube-root-ca.crt in {ns}: {e}");
        }
    }

    /// Replaces an object (PUT), or its status or scale subresource.
    pub fn update(
        &self,
        ty: usize,
        ns: Option<&str>,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
        dry_run: bool,
    ) -> Result<Bytes, Status> {
        // As kube-apiserver's handler: the body's name is checked before the object is read.
        if subresource != Some("scale") {
            check_name(&obj, name)?;
        }
        let out = self.modify(ty, ns, name, subresource, dry_run, |_| Ok(obj))?;
        if !dry_run {
            super::controllers::after_update(self, ty, ns, name, subresource);
        }
        Ok(out)
    }

    /// Patches an object, or its status or scale subresource. With a `manager`, a patch of the
    /// object itself is recorded in its `managedFields` as that manager's `Update`, as
    /// kube-apiserver records every write (`kubectl label`, `edit`, `patch`, client-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        ty: usize,
        ns: Option<&str>,
        name: &str,
        patch_type: PatchType,
        patch: &[u8],
        subresource: Option<&str>,
        dry_run: bool,
        manager: Option<&str>,
    ) -> Result<Bytes, Status> {
        let patch: Value = serde_json::from_slice(patch)
            .map_err(|e| Status::bad_request(format!("error decoding patch: {e}")))?;
        let out = self.modify(ty, ns, name, subresource, dry_run, |current| {
            let mut doc = current.clone();
            match patch_type {
                PatchType::Json => {
                    let p: json_patch::Patch = serde_json::from_value(patch.clone())
                        .map_err(|e| Status::bad_request(format!("error decoding JSON patch: {e}")))?;
                    json_patch::patch(&mut doc, &p).map_err(|e| {
                        Status::new(422, "Invalid", format!("the server rejected our request due to an error in our request: {e}"))
                    })?;
                }
                PatchType::Merge => {
                    if !patch.is_object() {
                        return Err(Status::bad_request("a merge patch must be a JSON object"));
                    }
                    json_patch::merge(&mut doc, &patch);
                }
                PatchType::Strategic => {
                    if !patch.is_object() {
                        return Err(Status::bad_request("a strategic merge patch must be a JSON object"));
                    }
                    strategic_merge(&mut doc, &patch).map_err(Status::bad_request)?;
                }
            }
            if let (Some(manager), None) = (manager, subresource) {
                let now = kubehub_kapi::time::now_rfc3339();
                super::apply::track_write(Some(current), &mut doc, manager, &now);
            }
            Ok(doc)
        })?;
        if !dry_run {
            super::controllers::after_update(self, ty, ns, name, subresource);
        }
        Ok(out)
    }

    /// The shared path of update and patch: read, compute the new object, check it, commit.
    /// Without the controllers (what the controllers themselves use).
    pub(crate) fn modify(
        &self,
        ty: usize,
        ns: Option<&str>,
        name: &str,
        subresource: Option<&str>,
        dry_run: bool,
        compute: impl FnOnce(&Value) -> Result<Value, Status>,
    ) -> Result<Bytes, Status> {
        let t = &self.types[ty];
        let resource = base_resource(&t.resource);
        let key = self.key(ty, ns, name);
        let mut inner = lock(&self.inner);
        let state = &mut inner.state;
        let Some(existing) = state.objects[ty].get(&key) else {
            return Err(self.not_found(ty, name));
        };
        let old = parse(&existing.json)?;
        let old_uid = existing.uid.clone();
        // Subresources read and write a view of the object.
        let view = match subresource {
            Some("scale") => scale_of(&old),
            _ => old.clone(),
        };
        let mut new = compute(&view)?;
        if !new.is_object() {
            return Err(Status::bad_request("the body must be a JSON object"));
        }
        match subresource {
            None => check_kind(t, &new)?,
            Some("scale") => {}
            Some(_) => check_kind(t, &new)?,
        }
        check_name(&new, name)?;
        check_namespace(&mut new, ns.filter(|_| t.namespaced))?;
        // resourceVersion and uid are preconditions when present.
        if let Some(rv) = new["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
        {
            if rv != old["metadata"]["resourceVersion"].as_str().unwrap_or("") {
                return Err(Status::conflict(&t.group, resource, name, Status::MODIFIED));
            }
        }
        if let Some(uid) = new["metadata"]["uid"].as_str().filter(|s| !s.is_empty()) {
            if uid != &*old_uid {
                return Err(Status::conflict(
                    &t.group,
                    resource,
                    name,
                    &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {old_uid}"),
                ));
            }
        }
        let new_status = (subresource == Some("status")).then(|| new["status"].clone());
        let mut next = match subresource {
            Some("status") => {
                let mut n = old.clone();
                n["status"] = new["status"].clone();
                n
            }
            Some("scale") => {
                let replicas = new["spec"]["replicas"].as_i64().ok_or_else(|| {
                    Status::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        "spec.replicas",
                        "Required value",
                    )
                })?;
                if replicas < 0 {
                    return Err(Status::invalid(
                        "autoscaling",
                        "Scale",
                        name,
                        "spec.replicas",
                        "Invalid value: must be greater than or equal to 0",
                    ));
                }
                let mut n = old.clone();
                n["spec"]["replicas"] = json!(replicas);
                n
            }
            Some(other) => {
                return Err(Status::bad_request(format!(
                    "subresource {other:?} cannot be written"
                )))
            }
            None => {
                // Immutable metadata comes from the stored object.
                for k in ["uid", "creationTimestamp", "namespace"] {
                    new["metadata"][k] = old["metadata"][k].clone();
                }
                if objects::has_generation(&t.kind) {
                    new["metadata"]["generation"] = old["metadata"]["generation"].clone();
                }
                new["apiVersion"] = old["apiVersion"].clone();
                new["kind"] = old["kind"].clone();
                new
            }
        };
        if objects::has_generation(&t.kind) && next.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            next["metadata"]["generation"] = json!(g);
        }
        objects::on_update(&t.kind, &old, &mut next, SystemTime::now());
        if let Some(status) = new_status {
            next["status"] = status;
        }
        next["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if next == old {
            // A no-op write changes nothing, not even the resourceVersion.
            return Ok(to_view(subresource, &old));
        }
        if dry_run {
            // Nothing is written: the resourceVersion stays, as kube-apiserver's dry run.
            return Ok(to_view(subresource, &next));
        }
        let rv = state.rv + 1;
        next["metadata"]["resourceVersion"] = json!(rv.to_string());
        let stored = Stored {
            json: to_bytes(&next),
            rv,
            uid: old_uid,
            meta: Meta::of(&t.group, &t.resource, &next),
        };
        let ev = state.commit(ty, key, ChangeKind::Modified, rv, Some(stored), None);
        let _ = self.events.send(ev);
        Ok(to_view(subresource, &next))
    }

    /// Deletes an object and returns its last state, its dependents (by `ownerReferences`) as
    /// `opts.propagation_policy` says (see [`super::controllers`]). Deleting a namespace
    /// deletes what is in it first.
    pub fn delete(
        &self,
        ty: usize,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Bytes, Status> {
        if dry_run {
            return self.delete_inner(ty, ns, name, opts, dry_run);
        }
        super::controllers::delete(self, ty, ns, name, opts)
    }

    /// Every object of type `ty` in namespace `ns` with the labels `labels` (all of them, if
    /// `None`), parsed (for the controllers).
    pub(crate) fn objects_in(
        &self,
        ty: usize,
        ns: &str,
        labels: Option<&serde_json::Map<String, Value>>,
    ) -> Vec<Value> {
        let raw: Vec<Bytes> = {
            let inner = lock(&self.inner);
            let lo = ObjKey::new(ns, "");
            inner.state.objects[ty]
                .range::<ObjKey, _>(lo..)
                .take_while(|(k, _)| k.namespace() == ns)
                .filter(|(_, s)| {
                    labels.is_none_or(|l| {
                        l.iter()
                            .all(|(k, v)| s.meta.label(k) == Some(v.as_str().unwrap_or("")))
                    })
                })
                .map(|(_, s)| s.json.clone())
                .collect()
        };
        raw.iter()
            .filter_map(|b| serde_json::from_slice(b).ok())
            .collect()
    }

    /// [`Cluster::delete`] without the controllers: the object alone.
    pub(crate) fn delete_inner(
        &self,
        ty: usize,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Bytes, Status> {
        let t = &self.types[ty];
        let resource = base_resource(&t.resource);
        let key = self.key(ty, ns, name);
        let is_namespace = t.kind == "Namespace";
        {
            let inner = lock(&self.inner);
            let Some(existing) = inner.state.objects[ty].get(&key) else {
                return Err(self.not_found(ty, name));
            };
            if let Some(uid) = &opts.uid {
                if uid != &*existing.uid {
                    return Err(Status::conflict(
                        &t.group,
                        resource,
                        name,
                        &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        existing.uid
                    ),
                    ));
                }
            }
            if let Some(rv) = &opts.resource_version {
                if *rv != existing.rv.to_string() {
                    return Err(Status::conflict(&t.group, resource, name, &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        existing.rv
                    )));
                }
            }
            if is_namespace && PROTECTED_NAMESPACES.contains(&name) {
                let mut s = Status::new(
                    403,
                    "Forbidden",
                    format!(
                        "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
                    ),
                );
                s.details = Some(Box::new(kubehub_kapi::status::Details {
                    name: name.into(),
                    kind: "namespaces".into(),
                    ..Default::default()
                }));
                return Err(s);
            }
            if dry_run {
                return Ok(existing.json.clone());
            }
        }
        if is_namespace {
            for (i, ty_i) in self.types.iter().enumerate() {
                if ty_i.namespaced && !ty_i.resource.contains('/') {
                    let filter = Filter {
                        namespace: Some(name.to_owned()),
                        ..Filter::default()
                    };
                    self.delete_collection_inner(i, &filter, false, false)?;
                }
            }
        }
        let mut inner = lock(&self.inner);
        let state = &mut inner.state;
        let Some(existing) = state.objects[ty].get(&key) else {
            return Err(self.not_found(ty, name));
        };
        let rv = state.rv + 1;
        let mut last = parse(&existing.json)?;
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        let last = to_bytes(&last);
        let ev = state.commit(ty, key, ChangeKind::Deleted, rv, None, Some(last.clone()));
        let _ = self.events.send(ev);
        Ok(last)
    }

    /// Deletes every object a filter matches; returns their last states.
    pub fn delete_collection(
        &self,
        ty: usize,
        filter: &Filter,
        dry_run: bool,
    ) -> Result<Vec<Bytes>, Status> {
        self.delete_collection_inner(ty, filter, dry_run, true)
    }

    /// `controllers`: whether each deletion cascades and is replaced as
    /// [`Cluster::delete`] does (not when a namespace goes, with everything in it).
    fn delete_collection_inner(
        &self,
        ty: usize,
        filter: &Filter,
        dry_run: bool,
        controllers: bool,
    ) -> Result<Vec<Bytes>, Status> {
        let keys: Vec<ObjKey> = {
            let inner = lock(&self.inner);
            inner.state.objects[ty]
                .iter()
                .filter(|(k, s)| filter.matches(k, &s.meta))
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let ns = Some(key.namespace()).filter(|ns| !ns.is_empty());
            let opts = DeleteOptions::default();
            let res = if controllers {
                self.delete(ty, ns, key.name(), &opts, dry_run)
            } else {
                self.delete_inner(ty, ns, key.name(), &opts, dry_run)
            };
            match res {
                Ok(b) => out.push(b),
                Err(e) if e.code == 404 => {} // raced with another delete
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Starts a watch of type `ty` at `version`. `send_initial`: the watch-list protocol
    /// (initial ADDED events, then a BOOKMARK marking their end).
    pub fn watch(
        &self,
        ty: usize,
        filter: &Filter,
        version: Version,
        send_initial: bool,
    ) -> Result<WatchStart, Status> {
        let inner = lock(&self.inner);
        let st = &inner.state;
        let mut initial = Vec::new();
        let synthetic = send_initial || matches!(version, Version::MostRecent | Version::Any);
        if synthetic {
            for (k, s) in st.objects[ty].iter() {
                if filter.matches(k, &s.meta) {
                    initial.push(WatchItem {
                        kind: EventType::Added,
                        object: s.json.clone(),
                    });
                }
            }
            if send_initial {
                initial.push(self.bookmark(ty, st.rv, true));
            }
        } else if let Version::At(n, _) = version {
            for ev in st.events_since(n)? {
                if ev.ty == ty {
                    if let Some(kind) = ev.visible_to(filter) {
                        initial.push(WatchItem {
                            kind: kind.into(),
                            object: ev.event_object(kind),
                        });
                    }
                }
            }
        }
        Ok(WatchStart {
            initial,
            start_rv: st.rv,
            live: self.events.subscribe(),
            disconnect: self.disconnect.subscribe(),
        })
    }

    /// A BOOKMARK event's object for type `ty` at version `rv`.
    pub fn bookmark(&self, ty: usize, rv: u64, initial_events_end: bool) -> WatchItem {
        WatchItem {
            kind: EventType::Bookmark,
            object: bookmark_object(&self.types[ty], rv, initial_events_end),
        }
    }

    /// What the simulated controllers remember (the events they recorded, per namespace).
    pub(crate) fn recorder(&self) -> &super::controllers::Recorder {
        &self.recorder
    }

    /// Runs `f` with the cluster's RNG (seeding and churn draw from it, so a seeded cluster is
    /// reproducible).
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        f(&mut lock(&self.inner).rng)
    }
}

fn check_kind(t: &ResourceType, obj: &Value) -> Result<(), Status> {
    if !obj.is_object() {
        return Err(Status::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    let want_version = kubehub_kapi::resources::api_version(&t.group, &t.version);
    // Like kube-apiserver's decoder, a missing kind or apiVersion defaults to the endpoint's
    // (the Python client sends bodies without them); a different one is an error.
    match obj.get("kind").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k != t.kind => {
            return Err(Status::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.kind
            )))
        }
        _ => {}
    }
    match obj.get("apiVersion").and_then(Value::as_str) {
        Some(v) if !v.is_empty() && v != want_version => Err(Status::bad_request(format!(
            "the API version in the data ({v}) does not match the expected API version ({want_version})"
        ))),
        _ => Ok(()),
    }
}

fn check_name(obj: &Value, name: &str) -> Result<(), Status> {
    let body_name = obj["metadata"]["name"].as_str().unwrap_or("");
    if body_name == name {
        Ok(())
    } else {
        Err(Status::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )))
    }
}

fn check_namespace(obj: &mut Value, path_ns: Option<&str>) -> Result<(), Status> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    let body_ns = obj["metadata"]["namespace"]
        .as_str()
        .filter(|s| !s.is_empty());
    match (body_ns, path_ns) {
        (Some(b), Some(p)) if b != p => Err(Status::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        (_, Some(p)) => {
            obj["metadata"]["namespace"] = json!(p);
            Ok(())
        }
        (_, None) => {
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("namespace");
            }
            Ok(())
        }
    }
}

/// The `autoscaling/v1` Scale view of a workload.
pub fn scale_of(obj: &Value) -> Value {
    let meta = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
            "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {
            "replicas": obj["status"]["replicas"],
            "selector": label_selector_string(&obj["spec"]["selector"]),
        },
    })
}

fn label_selector_string(sel: &Value) -> String {
    sel["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn to_view(subresource: Option<&str>, obj: &Value) -> Bytes {
    match subresource {
        Some("scale") => to_bytes(&scale_of(obj)),
        _ => to_bytes(obj),
    }
}
