//! The simulated controllers: what kube-controller-manager, the scheduler, the kubelet and the
//! garbage collector do after a write, done at once and synchronously (right after the write
//! that triggers them, never holding the cluster's lock across calls).
//!
//! * Deployment controller: a Deployment gets a ReplicaSet per pod template
//!   (`<deployment>-<pod-template-hash>`, owned by it, with the `deployment.kubernetes.io/revision`,
//!   `desired-replicas` and `max-replicas` annotations and the Deployment's other annotations,
//!   e.g. `kubernetes.io/change-cause`). A template change rolls out at once: the ReplicaSet
//!   whose template matches (a new one, or an old one for `kubectl rollout undo`, which then
//!   gets the next revision) is scaled to `spec.replicas`, the others to 0; old ones beyond
//!   `revisionHistoryLimit` (default 10) are deleted. Then its status (observedGeneration,
//!   replica counts, the Available and Progressing conditions with kube-controller-manager's
//!   reasons) says the rollout is complete. A paused Deployment only scales its newest
//!   ReplicaSet. Templates are compared as Go's semantic equality would (see [`normalized`]).
//! * ReplicaSet controller: as many pods as `spec.replicas` (owned by it, from its template,
//!   Running: see [`super::objects`]); a deleted pod is replaced.
//! * Garbage collector: deleting an object with dependents (Deployment → ReplicaSets,
//!   ReplicaSet / StatefulSet / DaemonSet → pods) follows `propagationPolicy`: `Background`
//!   (the default) deletes the owner, then its dependents; `Orphan` removes the owner's
//!   reference from the dependents, which stay (and are not deleted); `Foreground` is
//!   simplified: a real API server keeps the owner (with a `deletionTimestamp` and the
//!   `foregroundDeletion` finalizer, answering 202) until the garbage collector has deleted
//!   the dependents; here the owner gets the `deletionTimestamp` (one MODIFIED event, no
//!   finalizer; its controller leaves it alone), its dependents are deleted (recursively, in
//!   the foreground too), then it, all within the DELETE request, which answers 200 with its
//!   last state. Deleting a namespace deletes what is in it without any of this. The policy
//!   comes from the DeleteOptions body (`propagationPolicy`, or the deprecated
//!   `orphanDependents`) or the `propagationPolicy` query parameter.
//! * Events, as a real cluster records them, each stored twice: as core/v1 `events` and as
//!   events.k8s.io/v1 `events` (two objects of the same name, one per API). The scheduler's
//!   `Scheduled`, the kubelet's `Pulling`, `Pulled`, `Created`, `Started` per container for
//!   every pod created through the API or by a ReplicaSet; the ReplicaSet controller's
//!   `SuccessfulCreate` / `SuccessfulDelete`; the Deployment controller's `ScalingReplicaSet`.
//!   A real cluster expires events after an hour; here the newest
//!   [`ClusterConfig::events_per_namespace`](super::ClusterConfig) recorded per namespace are
//!   kept (older ones the controllers recorded are deleted; events created through the API
//!   are not counted). Seeded content ([`super::seed`]) records none: it is old.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use kubehub_kapi::time::rfc3339;
use kubehub_kapi::Status;
use serde_json::{json, Map, Value};

use super::cluster::{Cluster, DeleteOptions, Propagation};

/// The label that tells a Deployment's ReplicaSets (and their pods) apart.
pub const HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's (and its Deployment's) revision.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
const DESIRED: &str = "deployment.kubernetes.io/desired-replicas";
const MAX: &str = "deployment.kubernetes.io/max-replicas";
/// Deployment annotations not copied to its ReplicaSets (kube-controller-manager's list).
const SKIP_ANNOTATIONS: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED,
    MAX,
    "deprecated.deployment.rollback.to",
];

/// What the controllers remember between calls: the events recorded per namespace, oldest
/// first (to bound them), and the last event timestamp used in a name.
#[derive(Debug, Default)]
pub struct Recorder {
    recent: Mutex<HashMap<String, VecDeque<String>>>,
    last_nanos: AtomicU64,
}

fn ty(c: &Cluster, group: &str, resource: &str) -> Result<usize, Status> {
    c.type_index(group, "v1", resource)
        .ok_or_else(|| Status::internal(format!("no type {resource}")))
}

fn parse(b: &[u8]) -> Result<Value, Status> {
    serde_json::from_slice(b)
        .map_err(|e| Status::internal(format!("stored object unreadable: {e}")))
}

fn get(c: &Cluster, t: usize, ns: &str, name: &str) -> Result<Value, Status> {
    parse(&c.get(t, Some(ns), name)?)
}

fn str_of<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    path.iter().fold(v, |v, k| &v[*k]).as_str().unwrap_or("")
}

fn records(c: &Cluster) -> bool {
    c.config().events_per_namespace > 0
}

/// The `ownerReference` of the object's controller, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
}

fn owned_by(obj: &Value, uid: &str) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|a| a.iter().any(|r| r["uid"] == uid))
}

fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

fn revision(rs: &Value) -> i64 {
    str_of(rs, &["metadata", "annotations", REVISION])
        .parse()
        .unwrap_or(0)
}

fn replicas(obj: &Value) -> i64 {
    obj["spec"]["replicas"].as_i64().unwrap_or(1)
}

/// A pod template as Go's semantic equality sees it: nulls, `false`, zeros, empty strings,
/// objects and arrays dropped (kubectl round-trips templates through Go structs, e.g. in
/// `rollout undo`, which adds `creationTimestamp: null` and `resources: {}`).
pub fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), normalized(v)))
                .filter(|(_, v)| !is_empty(v))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(m) => m.is_empty(),
    }
}

/// A ReplicaSet's template without its `pod-template-hash` label, normalized.
fn template_without_hash(t: &Value) -> Value {
    let mut t = t.clone();
    if let Some(l) = t["metadata"]["labels"].as_object_mut() {
        l.remove(HASH_LABEL);
    }
    normalized(&t)
}

/// The `pod-template-hash` of a template: FNV-32a of it (normalized) and the collision count,
/// its decimal digits spelled in the alphabet of generated names, as kube-controller-manager
/// spells its hash.
pub fn template_hash(template: &Value, collisions: u64) -> String {
    let mut h: u32 = 0x811c_9dc5;
    let bytes = serde_json::to_vec(&template_without_hash(template)).unwrap_or_default();
    let extra = if collisions > 0 {
        collisions.to_string()
    } else {
        String::new()
    };
    for b in bytes.iter().chain(extra.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// `maxSurge` of a RollingUpdate Deployment, resolved against its replicas (25% by default,
/// rounded up).
pub fn max_surge(d: &Value) -> i64 {
    let n = replicas(d);
    if d["spec"]["strategy"]["type"] == "Recreate" {
        return 0;
    }
    match &d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] {
        Value::Number(x) => x.as_i64().unwrap_or(0),
        Value::String(s) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            (n * p + 99) / 100
        }
        _ => (n * 25 + 99) / 100,
    }
}

fn owner_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The ReplicaSet a Deployment gets for its current template.
pub fn replica_set_for(d: &Value, hash: &str, revision: i64) -> Value {
    let name = format!("{}-{hash}", str_of(d, &["metadata", "name"]));
    let mut template = d["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": name,
            "labels": template["metadata"]["labels"],
            "ownerReferences": [owner_ref(d)],
        },
        "spec": {"replicas": replicas(d), "selector": selector, "template": template},
    });
    set_rs_annotations(&mut rs, d, revision);
    rs
}

/// The annotations a Deployment's current ReplicaSet carries: the Deployment's own (but
/// kubectl's and the controller's), its revision, the desired and maximum replicas.
fn set_rs_annotations(rs: &mut Value, d: &Value, revision: i64) {
    let mut ann: Map<String, Value> = rs["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if let Some(da) = d["metadata"]["annotations"].as_object() {
        for (k, v) in da {
            if !SKIP_ANNOTATIONS.contains(&k.as_str()) {
                ann.insert(k.clone(), v.clone());
            }
        }
    }
    set_replica_annotations(&mut ann, d);
    ann.insert(REVISION.into(), json!(revision.to_string()));
    rs["metadata"]["annotations"] = Value::Object(ann);
}

fn set_replica_annotations(ann: &mut Map<String, Value>, d: &Value) {
    let n = replicas(d);
    ann.insert(DESIRED.into(), json!(n.to_string()));
    ann.insert(MAX.into(), json!((n + max_surge(d)).to_string()));
}

/// A pod of a ReplicaSet (or any controller), from its template.
pub fn pod_for(template: &Value, owner_name: &str, owner_ref: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": format!("{owner_name}-"), "ownerReferences": [owner_ref]},
        "spec": template["spec"],
    });
    for k in ["labels", "annotations"] {
        if template["metadata"][k].is_object() {
            pod["metadata"][k] = template["metadata"][k].clone();
        }
    }
    pod
}

/// A condition as kube-controller-manager writes it, keeping the transition time of an
/// unchanged one.
fn condition(old: &Value, ty: &str, reason: &str, message: &str, now: &str) -> Value {
    let prev = old["status"]["conditions"]
        .as_array()
        .and_then(|a| a.iter().find(|c| c["type"] == ty));
    let same = prev.is_some_and(|p| p["status"] == "True" && p["reason"] == reason);
    let pick = |k: &str| match prev {
        Some(p) if same => p[k].clone(),
        _ => json!(now),
    };
    json!({
        "type": ty, "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": pick("lastUpdateTime"), "lastTransitionTime": pick("lastTransitionTime"),
    })
}

/// A Deployment's status once its rollout to `new_rs` is complete.
pub fn deployment_status(d: &Value, rss: &[Value], new_rs: Option<&str>, now: &str) -> Value {
    let count = |f: &str| -> i64 {
        rss.iter()
            .map(|r| r["status"][f].as_i64().unwrap_or(0))
            .sum()
    };
    let new = rss
        .iter()
        .find(|r| Some(str_of(r, &["metadata", "name"])) == new_rs);
    let updated = new.map_or(0, |r| r["status"]["replicas"].as_i64().unwrap_or(0));
    let available = count("availableReplicas");
    let progressing = match new_rs {
        Some(n) => condition(
            d,
            "Progressing",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{n}\" has successfully progressed."),
            now,
        ),
        None => condition(d, "Progressing", "NewReplicaSetCreated", "", now),
    };
    let mut st = json!({
        "observedGeneration": d["metadata"]["generation"],
        "replicas": count("replicas"),
        "updatedReplicas": updated,
        "readyReplicas": count("readyReplicas"),
        "availableReplicas": available,
        "conditions": [
            condition(d, "Available", "MinimumReplicasAvailable", "Deployment has minimum availability.", now),
            progressing,
        ],
    });
    if !d["status"]["collisionCount"].is_null() {
        st["collisionCount"] = d["status"]["collisionCount"].clone();
    }
    st
}

/// A ReplicaSet's status with `pods` running and ready.
pub fn replica_set_status(rs: &Value, pods: i64) -> Value {
    let mut st = json!({"replicas": pods, "observedGeneration": rs["metadata"]["generation"]});
    if pods > 0 {
        st["fullyLabeledReplicas"] = json!(pods);
        st["readyReplicas"] = json!(pods);
        st["availableReplicas"] = json!(pods);
    }
    st
}

/// Writes `status` as the object's status subresource (no write if unchanged).
fn write_status(c: &Cluster, t: usize, ns: &str, name: &str, status: Value) -> Result<(), Status> {
    c.modify(t, Some(ns), name, Some("status"), false, |cur| {
        let mut n = cur.clone();
        n["status"] = status;
        Ok(n)
    })
    .map(|_| ())
}

/// After a create through the API.
pub(crate) fn after_create(c: &Cluster, t: usize, out: &Bytes) {
    let kind = c.types()[t].kind.as_str();
    if !matches!(kind, "Deployment" | "ReplicaSet" | "Pod") {
        return;
    }
    let Ok(obj) = parse(out) else { return };
    let ns = str_of(&obj, &["metadata", "namespace"]);
    let name = str_of(&obj, &["metadata", "name"]);
    let rec = records(c);
    let res = match kind {
        "Deployment" => sync_deployment(c, ns, name, rec),
        "ReplicaSet" => sync_replica_set(c, ns, name, rec, true),
        _ if rec => pod_started(c, &obj),
        _ => Ok(()),
    };
    if let Err(e) = res {
        tracing::warn!(
            cluster = c.name(),
            "controllers after creating {kind} {ns}/{name}: {e}"
        );
    }
}

/// After an update or patch through the API (of the object, or its scale).
pub(crate) fn after_update(c: &Cluster, t: usize, ns: Option<&str>, name: &str, sub: Option<&str>) {
    if !matches!(sub, None | Some("scale")) {
        return;
    }
    let kind = c.types()[t].kind.as_str();
    let ns = ns.unwrap_or("");
    let rec = records(c);
    let res = match kind {
        "Deployment" => sync_deployment(c, ns, name, rec),
        "ReplicaSet" => sync_replica_set(c, ns, name, rec, true),
        _ => Ok(()),
    };
    if let Err(e) = res {
        tracing::warn!(
            cluster = c.name(),
            "controllers after updating {kind} {ns}/{name}: {e}"
        );
    }
}

/// The Deployment controller's sync of one Deployment (`rec`: record events).
pub fn sync_deployment(c: &Cluster, ns: &str, name: &str, rec: bool) -> Result<(), Status> {
    let (deps, rs_ty) = (ty(c, "apps", "deployments")?, ty(c, "apps", "replicasets")?);
    let d = match get(c, deps, ns, name) {
        Ok(d) => d,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_deleting(&d) {
        return Ok(());
    }
    let uid = str_of(&d, &["metadata", "uid"]).to_owned();
    let mut rss: Vec<Value> = c
        .objects_in(rs_ty, ns, d["spec"]["selector"]["matchLabels"].as_object())
        .into_iter()
        .filter(|rs| controller_of(rs).is_some_and(|r| r["uid"] == uid.as_str()))
        .collect();
    let want = normalized(&d["spec"]["template"]);
    let max_rev = rss.iter().map(revision).max().unwrap_or(0);
    let n = replicas(&d);
    // A paused Deployment scales its newest ReplicaSet and rolls nothing out.
    let paused = d["spec"]["paused"] == true;
    let new_idx = rss
        .iter()
        .position(|rs| template_without_hash(&rs["spec"]["template"]) == want)
        .or_else(|| {
            let newest = rss.iter().enumerate().max_by_key(|(_, r)| revision(r));
            newest.filter(|_| paused).map(|(i, _)| i)
        });
    let new_name = match new_idx {
        None => {
            let mut collisions = d["status"]["collisionCount"].as_u64().unwrap_or(0);
            let rs = loop {
                let hash = template_hash(&d["spec"]["template"], collisions);
                let rs = replica_set_for(&d, &hash, max_rev + 1);
                match c.create_inner(rs_ty, Some(ns), rs, false) {
                    Ok(b) => break parse(&b)?,
                    Err(e) if e.code == 409 && collisions < 10 => collisions += 1,
                    Err(e) => return Err(e),
                }
            };
            let rs_name = str_of(&rs, &["metadata", "name"]).to_owned();
            if rec && n > 0 {
                record(
                    c,
                    &d,
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {rs_name} to {n}"),
                    "deployment-controller",
                    None,
                    None,
                );
            }
            sync_replica_set(c, ns, &rs_name, rec, false)?;
            rss.push(get(c, rs_ty, ns, &rs_name)?);
            rs_name
        }
        Some(i) => {
            let rs_name = str_of(&rss[i], &["metadata", "name"]).to_owned();
            let old_n = replicas(&rss[i]);
            let rev = if revision(&rss[i]) < max_rev {
                max_rev + 1
            } else {
                revision(&rss[i])
            };
            c.modify(rs_ty, Some(ns), &rs_name, None, false, |cur| {
                let mut rs = cur.clone();
                rs["spec"]["replicas"] = json!(n);
                set_rs_annotations(&mut rs, &d, rev);
                Ok(rs)
            })?;
            if rec && old_n != n {
                let dir = if n > old_n { "up" } else { "down" };
                record(
                    c,
                    &d,
                    "ScalingReplicaSet",
                    &format!("Scaled {dir} replica set {rs_name} to {n} from {old_n}"),
                    "deployment-controller",
                    None,
                    None,
                );
            }
            sync_replica_set(c, ns, &rs_name, rec, false)?;
            rss[i] = get(c, rs_ty, ns, &rs_name)?;
            rs_name
        }
    };
    // The old ReplicaSets: scaled to 0, the oldest beyond the history limit deleted.
    let mut old: Vec<Value> = Vec::new();
    for rs in &mut rss {
        let rs_name = str_of(rs, &["metadata", "name"]).to_owned();
        if rs_name == new_name {
            continue;
        }
        let old_n = replicas(rs);
        if old_n != 0 {
            c.modify(rs_ty, Some(ns), &rs_name, None, false, |cur| {
                let mut r = cur.clone();
                r["spec"]["replicas"] = json!(0);
                if let Some(a) = r["metadata"]["annotations"].as_object_mut() {
                    set_replica_annotations(a, &d);
                }
                Ok(r)
            })?;
            if rec {
                record(
                    c,
                    &d,
                    "ScalingReplicaSet",
                    &format!("Scaled down replica set {rs_name} to 0 from {old_n}"),
                    "deployment-controller",
                    None,
                    None,
                );
            }
            sync_replica_set(c, ns, &rs_name, rec, false)?;
            *rs = get(c, rs_ty, ns, &rs_name)?;
        }
        old.push(rs.clone());
    }
    let limit = d["spec"]["revisionHistoryLimit"].as_u64().unwrap_or(10) as usize;
    old.sort_by_key(revision);
    let excess = old.len().saturating_sub(limit);
    for rs in old.iter().take(excess) {
        let rs_name = str_of(rs, &["metadata", "name"]);
        match delete(c, rs_ty, Some(ns), rs_name, &DeleteOptions::default()) {
            Ok(_) => {}
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
        rss.retain(|r| str_of(r, &["metadata", "name"]) != rs_name);
    }
    // The Deployment's revision, then its status.
    let rev = rss
        .iter()
        .find(|r| str_of(r, &["metadata", "name"]) == new_name)
        .map(revision)
        .unwrap_or(1);
    c.modify(deps, Some(ns), name, None, false, |cur| {
        let mut n = cur.clone();
        n["metadata"]["annotations"][REVISION] = json!(rev.to_string());
        Ok(n)
    })?;
    let d = get(c, deps, ns, name)?;
    let now = rfc3339(SystemTime::now());
    write_status(
        c,
        deps,
        ns,
        name,
        deployment_status(&d, &rss, Some(&new_name), &now),
    )
}

/// Refreshes a Deployment's status from its ReplicaSets (after one of them changed).
fn refresh_deployment(c: &Cluster, ns: &str, name: &str) -> Result<(), Status> {
    let (deps, rs_ty) = (ty(c, "apps", "deployments")?, ty(c, "apps", "replicasets")?);
    let d = match get(c, deps, ns, name) {
        Ok(d) if !is_deleting(&d) => d,
        Ok(_) => return Ok(()),
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    let uid = str_of(&d, &["metadata", "uid"]);
    let rss: Vec<Value> = c
        .objects_in(rs_ty, ns, d["spec"]["selector"]["matchLabels"].as_object())
        .into_iter()
        .filter(|rs| controller_of(rs).is_some_and(|r| r["uid"] == uid))
        .collect();
    let want = normalized(&d["spec"]["template"]);
    let new = rss
        .iter()
        .find(|rs| template_without_hash(&rs["spec"]["template"]) == want)
        .map(|rs| str_of(rs, &["metadata", "name"]).to_owned());
    let now = rfc3339(SystemTime::now());
    let st = deployment_status(&d, &rss, new.as_deref(), &now);
    write_status(c, deps, ns, name, st)
}

/// The ReplicaSet controller's sync of one ReplicaSet: pods created or deleted to match
/// `spec.replicas`, then its status (and, with `owner`, its Deployment's).
pub fn sync_replica_set(
    c: &Cluster,
    ns: &str,
    name: &str,
    rec: bool,
    owner: bool,
) -> Result<(), Status> {
    let (rs_ty, pods_ty) = (ty(c, "apps", "replicasets")?, ty(c, "", "pods")?);
    let rs = match get(c, rs_ty, ns, name) {
        Ok(rs) => rs,
        Err(e) if e.code == 404 => return Ok(()),
        Err(e) => return Err(e),
    };
    if is_deleting(&rs) {
        return Ok(());
    }
    let uid = str_of(&rs, &["metadata", "uid"]);
    let mut pods: Vec<Value> = c
        .objects_in(
            pods_ty,
            ns,
            rs["spec"]["selector"]["matchLabels"].as_object(),
        )
        .into_iter()
        .filter(|p| !is_deleting(p) && controller_of(p).is_some_and(|r| r["uid"] == uid))
        .collect();
    let want = replicas(&rs).max(0) as usize;
    while pods.len() < want {
        let pod = pod_for(&rs["spec"]["template"], name, owner_ref(&rs));
        let pod = parse(&c.create_inner(pods_ty, Some(ns), pod, false)?)?;
        if rec {
            let msg = format!("Created pod: {}", str_of(&pod, &["metadata", "name"]));
            record(
                c,
                &rs,
                "SuccessfulCreate",
                &msg,
                "replicaset-controller",
                None,
                None,
            );
            pod_started(c, &pod)?;
        }
        pods.push(pod);
    }
    if pods.len() > want {
        // The newest go first.
        pods.sort_by(|a, b| {
            let key = |p: &Value| {
                (
                    str_of(p, &["metadata", "creationTimestamp"]).to_owned(),
                    str_of(p, &["metadata", "name"]).to_owned(),
                )
            };
            key(b).cmp(&key(a))
        });
        for p in pods.drain(..pods.len() - want) {
            let pname = str_of(&p, &["metadata", "name"]);
            match c.delete_inner(pods_ty, Some(ns), pname, &DeleteOptions::default(), false) {
                Ok(_) => {}
                Err(e) if e.code == 404 => continue,
                Err(e) => return Err(e),
            }
            if rec {
                record(
                    c,
                    &rs,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {pname}"),
                    "replicaset-controller",
                    None,
                    None,
                );
            }
        }
    }
    write_status(
        c,
        rs_ty,
        ns,
        name,
        replica_set_status(&rs, pods.len() as i64),
    )?;
    if owner {
        if let Some(o) = controller_of(&rs).filter(|o| o["kind"] == "Deployment") {
            refresh_deployment(c, ns, o["name"].as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

/// The types whose objects an object of `kind` may own.
fn dependent_type(c: &Cluster, kind: &str) -> Option<usize> {
    match kind {
        "Deployment" => c.type_index("apps", "v1", "replicasets"),
        "ReplicaSet" | "StatefulSet" | "DaemonSet" => c.type_index("", "v1", "pods"),
        _ => None,
    }
}

/// DELETE with the garbage collector and the controllers behind it: dependents handled as
/// `opts.propagation_policy` says, a deleted pod of a ReplicaSet replaced, the owner of a
/// deleted ReplicaSet updated.
pub(crate) fn delete(
    c: &Cluster,
    t: usize,
    ns: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Bytes, Status> {
    let kind = c.types()[t].kind.clone();
    let Some(dep_ty) = dependent_type(c, &kind) else {
        let out = c.delete_inner(t, ns, name, opts, false)?;
        if kind == "Pod" {
            replace_pod(c, &out);
        }
        return Ok(out);
    };
    let ns_s = ns.unwrap_or("");
    // Preconditions first: nothing happens to the dependents of an object not deleted.
    let owner = parse(&c.delete_inner(t, ns, name, opts, true)?)?;
    let uid = str_of(&owner, &["metadata", "uid"]).to_owned();
    let dependents: Vec<String> = c
        .objects_in(dep_ty, ns_s, None)
        .into_iter()
        .filter(|o| owned_by(o, &uid))
        .map(|o| str_of(&o, &["metadata", "name"]).to_owned())
        .collect();
    let policy = opts.propagation_policy.unwrap_or(Propagation::Background);
    let cascade = |policy: Propagation| -> Result<(), Status> {
        let opts = DeleteOptions {
            propagation_policy: Some(policy),
            ..DeleteOptions::default()
        };
        for d in &dependents {
            match delete(c, dep_ty, ns, d, &opts) {
                Ok(_) => {}
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    };
    let out = match policy {
        Propagation::Orphan => {
            for d in &dependents {
                let res = c.modify(dep_ty, ns, d, None, false, |cur| {
                    let mut o = cur.clone();
                    if let Some(refs) = o["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"] != uid.as_str());
                        if refs.is_empty() {
                            if let Some(m) = o["metadata"].as_object_mut() {
                                m.remove("ownerReferences");
                            }
                        }
                    }
                    Ok(o)
                });
                match res {
                    Ok(_) => {}
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            c.delete_inner(t, ns, name, opts, false)?
        }
        Propagation::Background => {
            let out = c.delete_inner(t, ns, name, opts, false)?;
            cascade(Propagation::Background)?;
            out
        }
        Propagation::Foreground => {
            // Marked as being deleted (so its controller leaves it alone), its dependents
            // deleted, then it.
            c.modify(t, ns, name, None, false, |cur| {
                let mut o = cur.clone();
                o["metadata"]["deletionTimestamp"] = json!(rfc3339(SystemTime::now()));
                o["metadata"]["deletionGracePeriodSeconds"] = json!(0);
                Ok(o)
            })?;
            cascade(Propagation::Foreground)?;
            c.delete_inner(t, ns, name, &DeleteOptions::default(), false)?
        }
    };
    if kind == "ReplicaSet" {
        if let Some(o) = controller_of(&owner).filter(|o| o["kind"] == "Deployment") {
            if let Err(e) = refresh_deployment(c, ns_s, o["name"].as_str().unwrap_or("")) {
                tracing::warn!(
                    cluster = c.name(),
                    "deployment status after deleting {ns_s}/{name}: {e}"
                );
            }
        }
    }
    Ok(out)
}

/// A deleted pod's ReplicaSet makes another.
fn replace_pod(c: &Cluster, out: &Bytes) {
    let Ok(pod) = parse(out) else { return };
    let Some(o) = controller_of(&pod).filter(|o| o["kind"] == "ReplicaSet") else {
        return;
    };
    let ns = str_of(&pod, &["metadata", "namespace"]);
    let rs = o["name"].as_str().unwrap_or("");
    if let Err(e) = sync_replica_set(c, ns, rs, records(c), true) {
        tracing::warn!(cluster = c.name(), "replacing a pod of {ns}/{rs}: {e}");
    }
}

/// What the scheduler and the kubelet report for a new pod: Scheduled, then per container
/// Pulling, Pulled, Created and Started.
fn pod_started(c: &Cluster, pod: &Value) -> Result<(), Status> {
    let ns = str_of(pod, &["metadata", "namespace"]);
    let name = str_of(pod, &["metadata", "name"]);
    let node = str_of(pod, &["spec", "nodeName"]);
    record(
        c,
        pod,
        "Scheduled",
        &format!("Successfully assigned {ns}/{name} to {node}"),
        "default-scheduler",
        None,
        None,
    );
    let empty = Vec::new();
    let containers = pod["spec"]["containers"].as_array().unwrap_or(&empty);
    for (i, ctr) in containers.iter().enumerate() {
        let cname = ctr["name"].as_str().unwrap_or("");
        let image = ctr["image"].as_str().unwrap_or("");
        let path = Some(format!("spec.containers{{{cname}}}"));
        let host = Some(node);
        let ms = 800 + 137 * (i as u64 % 7);
        let size = 48_000_000 + 1_234_567 * (image.len() as u64 % 40);
        for (reason, msg) in [
            ("Pulling", format!("Pulling image \"{image}\"")),
            ("Pulled", format!("Successfully pulled image \"{image}\" in {}.{:03}s ({}.{:03}s including waiting). Image size: {size} bytes.", ms / 1000, ms % 1000, ms / 1000, ms % 1000)),
            ("Created", format!("Created container: {cname}")),
            ("Started", format!("Started container {cname}")),
        ] {
            record(c, pod, reason, &msg, "kubelet", host, path.clone());
        }
    }
    Ok(())
}

/// A core/v1 Event about `obj`.
#[allow(clippy::too_many_arguments)]
pub fn core_event(
    obj: &Value,
    name: &str,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
    field_path: Option<String>,
    now: SystemTime,
) -> Value {
    let meta = &obj["metadata"];
    let mut involved = json!({
        "kind": obj["kind"], "namespace": meta["namespace"], "name": meta["name"],
        "uid": meta["uid"], "apiVersion": obj["apiVersion"], "resourceVersion": meta["resourceVersion"],
    });
    if let Some(p) = field_path {
        involved["fieldPath"] = json!(p);
    }
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let ts = rfc3339(now);
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": ts,
        "lastTimestamp": ts,
        "count": 1,
        "type": "Normal",
        "eventTime": null,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or(""),
    })
}

/// The same Event as events.k8s.io/v1 shows it.
pub fn events_v1(core: &Value, now: SystemTime) -> Value {
    let micro = {
        let s = rfc3339(now);
        let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        format!("{}.{:06}Z", s.trim_end_matches('Z'), d.subsec_micros())
    };
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": core["metadata"]["name"], "namespace": core["metadata"]["namespace"]},
        "eventTime": micro,
        "reportingController": core["reportingComponent"],
        "reportingInstance": core["reportingInstance"],
        "action": core["reason"],
        "reason": core["reason"],
        "regarding": core["involvedObject"],
        "note": core["message"],
        "type": core["type"],
        "deprecatedSource": core["source"],
        "deprecatedFirstTimestamp": core["firstTimestamp"],
        "deprecatedLastTimestamp": core["lastTimestamp"],
        "deprecatedCount": 1,
    })
}

/// Records an Event about `obj` (in both APIs), dropping the namespace's oldest recorded ones
/// beyond the bound. Failures are logged: a lost event fails nothing.
#[allow(clippy::too_many_arguments)]
fn record(
    c: &Cluster,
    obj: &Value,
    reason: &str,
    message: &str,
    component: &str,
    host: Option<&str>,
    field_path: Option<String>,
) {
    let (Some(core_ty), Some(v1_ty)) = (
        c.type_index("", "v1", "events"),
        c.type_index("events.k8s.io", "v1", "events"),
    ) else {
        return;
    };
    let ns = str_of(obj, &["metadata", "namespace"]).to_owned();
    if ns.is_empty() {
        return;
    }
    let now = SystemTime::now();
    let r = c.recorder();
    // kube's event names: the object's name and the time in hex nanoseconds (kept unique).
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let prev = r
        .last_nanos
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
            Some(nanos.max(l + 1))
        })
        .unwrap_or(0);
    let stamp = nanos.max(prev + 1);
    let name = format!("{}.{stamp:x}", str_of(obj, &["metadata", "name"]));
    let core = core_event(
        obj, &name, reason, message, component, host, field_path, now,
    );
    let v1 = events_v1(&core, now);
    for (t, ev) in [(core_ty, core), (v1_ty, v1)] {
        if let Err(e) = c.create_inner(t, Some(&ns), ev, false) {
            tracing::debug!(cluster = c.name(), "recording event {ns}/{name}: {e}");
        }
    }
    let expired: Vec<String> = {
        let mut recent = r.recent.lock().unwrap_or_else(|e| e.into_inner());
        let q = recent.entry(ns.clone()).or_default();
        q.push_back(name);
        let bound = c.config().events_per_namespace;
        let n = q.len().saturating_sub(bound);
        q.drain(..n).collect()
    };
    for old in expired {
        for t in [core_ty, v1_ty] {
            let _ = c.delete_inner(t, Some(&ns), &old, &DeleteOptions::default(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "u1", "generation": 3,
                "annotations": {"kubernetes.io/change-cause": "v2", REVISION: "1",
                    "kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 4, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "nginx:1"}]}}}})
    }

    #[test]
    fn hashes_are_stable_and_ignore_go_round_trips() {
        let d = deployment();
        let h = template_hash(&d["spec"]["template"], 0);
        assert!(!h.is_empty() && h.len() <= 10, "{h}");
        assert!(h
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
        let mut round_trip = d["spec"]["template"].clone();
        round_trip["metadata"]["creationTimestamp"] = Value::Null;
        round_trip["spec"]["containers"][0]["resources"] = json!({});
        round_trip["metadata"]["labels"][HASH_LABEL] = json!(h);
        assert_eq!(template_hash(&round_trip, 0), h);
        assert_ne!(template_hash(&d["spec"]["template"], 1), h);
        let mut other = d["spec"]["template"].clone();
        other["spec"]["containers"][0]["image"] = json!("nginx:2");
        assert_ne!(template_hash(&other, 0), h);
    }

    #[test]
    fn a_deployments_replica_set() {
        let d = deployment();
        let rs = replica_set_for(&d, "abc", 2);
        assert_eq!(rs["metadata"]["name"], "web-abc");
        assert_eq!(
            rs["metadata"]["labels"],
            json!({"app": "web", HASH_LABEL: "abc"})
        );
        assert_eq!(
            rs["spec"]["selector"]["matchLabels"],
            json!({"app": "web", HASH_LABEL: "abc"})
        );
        assert_eq!(rs["spec"]["replicas"], 4);
        let refs = &rs["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                refs["kind"].as_str(),
                refs["uid"].as_str(),
                &refs["controller"]
            ),
            (Some("Deployment"), Some("u1"), &json!(true))
        );
        let ann = &rs["metadata"]["annotations"];
        assert_eq!(ann[REVISION], "2");
        assert_eq!(ann[DESIRED], "4");
        assert_eq!(ann[MAX], "5"); // 25% of 4, rounded up
        assert_eq!(ann["kubernetes.io/change-cause"], "v2");
        assert!(ann
            .get("kubectl.kubernetes.io/last-applied-configuration")
            .is_none());
        let pod = pod_for(&rs["spec"]["template"], "web-abc", owner_ref(&rs));
        assert_eq!(pod["metadata"]["generateName"], "web-abc-");
        assert_eq!(pod["metadata"]["labels"][HASH_LABEL], "abc");
        assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "ReplicaSet");
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1");
    }

    #[test]
    fn a_complete_rollouts_status() {
        let d = deployment();
        let mut rs = replica_set_for(&d, "abc", 1);
        rs["status"] = replica_set_status(&rs, 4);
        let mut old = replica_set_for(&d, "old", 1);
        old["metadata"]["name"] = json!("web-old");
        old["status"] = replica_set_status(&old, 0);
        let st = deployment_status(&d, &[rs, old], Some("web-abc"), "T");
        assert_eq!(st["observedGeneration"], 3);
        for f in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ] {
            assert_eq!(st[f], 4, "{f}");
        }
        assert_eq!(st["conditions"][0]["reason"], "MinimumReplicasAvailable");
        assert_eq!(st["conditions"][1]["reason"], "NewReplicaSetAvailable");
        assert_eq!(
            st["conditions"][1]["message"],
            "ReplicaSet \"web-abc\" has successfully progressed."
        );
        // Unchanged conditions keep their times.
        let mut d2 = d.clone();
        d2["status"] = st;
        let st2 = deployment_status(&d2, &[], Some("web-abc"), "LATER");
        assert_eq!(st2["conditions"][1]["lastTransitionTime"], "T");
    }

    #[test]
    fn events_in_both_apis() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "5"}});
        let now = SystemTime::now();
        let e = core_event(
            &pod,
            "p.1",
            "Pulled",
            "ok",
            "kubelet",
            Some("n1"),
            Some("spec.containers{c}".into()),
            now,
        );
        assert_eq!(e["involvedObject"]["uid"], "u");
        assert_eq!(e["involvedObject"]["fieldPath"], "spec.containers{c}");
        assert_eq!(e["source"], json!({"component": "kubelet", "host": "n1"}));
        let v1 = events_v1(&e, now);
        assert_eq!(v1["regarding"], e["involvedObject"]);
        assert_eq!(v1["note"], "ok");
        assert_eq!(v1["reportingController"], "kubelet");
        assert!(v1["eventTime"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn max_surge_rounds_up() {
        let mut d = deployment();
        d["spec"]["replicas"] = json!(1);
        assert_eq!(max_surge(&d), 1);
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2}});
        assert_eq!(max_surge(&d), 2);
        d["spec"]["strategy"] = json!({"type": "Recreate"});
        assert_eq!(max_surge(&d), 0);
    }
}
