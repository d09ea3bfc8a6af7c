//! Server-side apply (`PATCH` with `application/apply-patch+yaml`, what `kubectl apply
//! --server-side`, Flux and kube-rs's `Patch::Apply` send), with field managers and
//! `metadata.managedFields`, as kube-apiserver does it, simplified where noted.
//!
//! Every manager owns a set of fields, kept in the object as `managedFields` entries in the
//! `FieldsV1` form (`{"f:spec": {"f:replicas": {}}, "f:containers": {"k:{\"name\":\"web\"}":
//! {".": {}, "f:image": {}}}}`: `f:` a field, `k:` a list item by its merge key, `v:` an item
//! of a set list, `.` the item itself). An apply by manager M with configuration C:
//! 1. The fields C sets are computed ([`fields_of`]); list items with a merge key (containers
//!    by name, ports, env, …, the keys of strategic merge patch) are owned one by one, other
//!    lists whole.
//! 2. **Conflicts**: a field C sets that another manager owns with a *different* value is a
//!    conflict; any conflict fails the apply with kube-apiserver's 409 (`Apply failed with N
//!    conflict(s): conflict with "other" using v1: .spec.replicas`, a `FieldManagerConflict`
//!    cause per field) unless `force=true`, which takes the fields from their managers. Equal
//!    values are shared, not conflicts.
//! 3. Fields M owned from its previous apply and no longer sets are removed from the object,
//!    unless another manager owns them too.
//! 4. C is merged into the object (objects field by field, keyed lists item by item, other
//!    lists and scalars replaced), and M's entry becomes C's fields (`operation: Apply`).
//!
//! An apply to an object that does not exist creates it. The write goes through the cluster's
//! ordinary update with the read version as precondition, retried if the object changed in
//! between, so an apply is one write and one watch event.
//!
//! Creates and updates (`PUT`) record their field manager with operation `Update`
//! ([`track_write`]), so an apply conflicts with what `kubectl create` or an editor set, as
//! against kube-apiserver. Simplified: patches other than apply keep `managedFields` as they
//! are; `status` and the always-present metadata (name, namespace, uid, resourceVersion, …) are
//! never owned.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use kubehub_kapi::status::{Cause, Details};
use kubehub_kapi::Status;

use super::cluster::Cluster;
use super::patch::{is_set_list, merge_key, strategic_merge};

/// The content type of an apply patch.
pub const CONTENT_TYPE: &str = "application/apply-patch+yaml";

/// Metadata fields nobody owns.
const UNOWNED_METADATA: [&str; 9] = [
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "deletionTimestamp",
];

/// Reads an apply body: YAML (JSON is YAML too), one document, an object.
pub fn parse_body(body: &[u8]) -> Result<Value, Status> {
    let text = std::str::from_utf8(body)
        .map_err(|_| Status::bad_request("error decoding YAML: the body is not UTF-8"))?;
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| Status::bad_request(format!("error decoding YAML: {e}")))?;
    let doc = docs
        .into_iter()
        .next()
        .map(yaml_to_json)
        .unwrap_or(Value::Null);
    if !doc.is_object() {
        return Err(Status::bad_request(
            "error decoding YAML: the apply configuration must be an object",
        ));
    }
    Ok(doc)
}

fn yaml_to_json(y: yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::String(s), Value::Number),
        Yaml::Integer(i) => json!(i),
        Yaml::String(s) => Value::String(s),
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Array(a) => Value::Array(a.into_iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.into_iter()
                .map(|(k, v)| {
                    let k = match k {
                        Yaml::String(s) => s,
                        Yaml::Integer(i) => i.to_string(),
                        Yaml::Boolean(b) => b.to_string(),
                        Yaml::Real(r) => r,
                        other => format!("{other:?}"),
                    };
                    (k, yaml_to_json(v))
                })
                .collect(),
        ),
        Yaml::Null | Yaml::BadValue | Yaml::Alias(_) => Value::Null,
    }
}

/// A field set in the `FieldsV1` form: keys `f:…`, `k:…`, `v:…`, `.`; an empty map is a
/// leaf (the field is owned whole).
pub type FieldSet = Map<String, Value>;

/// The fields an object (or an apply configuration) sets.
pub fn fields_of(obj: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(m) = obj.as_object() else {
        return out;
    };
    for (k, v) in m {
        match k.as_str() {
            "apiVersion" | "kind" | "status" => continue,
            "metadata" => {
                let mut meta = FieldSet::new();
                if let Some(mm) = v.as_object() {
                    for (mk, mv) in mm {
                        if !UNOWNED_METADATA.contains(&mk.as_str()) {
                            meta.insert(format!("f:{mk}"), Value::Object(value_fields(mk, mv)));
                        }
                    }
                }
                if !meta.is_empty() {
                    out.insert("f:metadata".into(), Value::Object(meta));
                }
            }
            _ => {
                out.insert(format!("f:{k}"), Value::Object(value_fields(k, v)));
            }
        }
    }
    out
}

/// The fields under one field's value (empty: a leaf).
fn value_fields(field: &str, v: &Value) -> FieldSet {
    match v {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| (format!("f:{k}"), Value::Object(value_fields(k, v))))
            .collect(),
        Value::Array(items) => {
            if let Some(key) = merge_key(field, items) {
                let mut out = FieldSet::new();
                for item in items {
                    let Some(id) = item.get(key) else {
                        // An item without its key cannot be owned by itself: the list is.
                        return FieldSet::new();
                    };
                    let mut inner = value_fields("", item);
                    inner.insert(".".into(), json!({}));
                    out.insert(format!("k:{}", json!({ key: id })), Value::Object(inner));
                }
                out
            } else if is_set_list(field) {
                items
                    .iter()
                    .map(|i| (format!("v:{i}"), json!({})))
                    .collect()
            } else {
                FieldSet::new()
            }
        }
        _ => FieldSet::new(),
    }
}

/// Fields in both sets (a leaf on either side is a leaf).
fn intersect(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = FieldSet::new();
    for (k, av) in a {
        let Some(bv) = b.get(k) else { continue };
        let (am, bm) = (as_set(av), as_set(bv));
        if am.is_empty() || bm.is_empty() {
            out.insert(k.clone(), json!({}));
        } else {
            let sub = intersect(am, bm);
            if !sub.is_empty() {
                out.insert(k.clone(), Value::Object(sub));
            }
        }
    }
    out
}

/// `a` without the fields of `b` (a leaf of `b` removes everything below it).
fn subtract(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = FieldSet::new();
    for (k, av) in a {
        match b.get(k) {
            None => {
                out.insert(k.clone(), av.clone());
            }
            Some(bv) => {
                let (am, bm) = (as_set(av), as_set(bv));
                if bm.is_empty() || am.is_empty() {
                    continue;
                }
                let sub = subtract(am, bm);
                if !sub.is_empty() {
                    out.insert(k.clone(), Value::Object(sub));
                }
            }
        }
    }
    out
}

/// Both sets together.
fn union(a: &FieldSet, b: &FieldSet) -> FieldSet {
    let mut out = a.clone();
    for (k, bv) in b {
        let merged = match out.get(k) {
            Some(av) => Value::Object(union(as_set(av), as_set(bv))),
            None => bv.clone(),
        };
        out.insert(k.clone(), merged);
    }
    out
}

fn as_set(v: &Value) -> &FieldSet {
    static EMPTY: std::sync::OnceLock<FieldSet> = std::sync::OnceLock::new();
    v.as_object()
        .unwrap_or_else(|| EMPTY.get_or_init(FieldSet::new))
}

/// The value at one step of a field set in `v`.
fn step<'a>(v: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    let v = v?;
    if let Some(f) = key.strip_prefix("f:") {
        return v.get(f);
    }
    if let Some(k) = key.strip_prefix("k:") {
        let want: Map<String, Value> = serde_json::from_str(k).ok()?;
        return v
            .as_array()?
            .iter()
            .find(|item| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)));
    }
    if let Some(val) = key.strip_prefix("v:") {
        let want: Value = serde_json::from_str(val).ok()?;
        return v.as_array()?.iter().find(|i| **i == want);
    }
    Some(v)
}

/// A field path as kube-apiserver prints it: `.spec.containers[name="web"].image`.
fn path_text(prefix: &str, key: &str) -> String {
    if let Some(f) = key.strip_prefix("f:") {
        format!("{prefix}.{f}")
    } else if let Some(k) = key.strip_prefix("k:") {
        let inner = serde_json::from_str::<Map<String, Value>>(k)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        format!("{prefix}[{inner}]")
    } else if let Some(v) = key.strip_prefix("v:") {
        format!("{prefix}[={v}]")
    } else {
        prefix.to_owned()
    }
}

/// The leaves of `set`, as paths.
fn leaf_paths(set: &FieldSet, prefix: &str, out: &mut Vec<String>) {
    for (k, sub) in set {
        if k == "." {
            continue;
        }
        let path = path_text(prefix, k);
        let sub = as_set(sub);
        if sub.is_empty() {
            out.push(path);
        } else {
            leaf_paths(sub, &path, out);
        }
    }
}

/// Removes the leaves of `set` from `obj`.
fn remove(obj: &mut Value, set: &FieldSet) {
    for (k, sub) in set {
        let sub = as_set(sub);
        let whole = sub.is_empty() || sub.contains_key(".");
        if let Some(f) = k.strip_prefix("f:") {
            let Some(m) = obj.as_object_mut() else {
                continue;
            };
            if whole {
                m.remove(f);
            } else if let Some(child) = m.get_mut(f) {
                remove(child, sub);
            }
        } else if let Some(items) = obj.as_array_mut() {
            let matches = |item: &Value| {
                if let Some(kk) = k.strip_prefix("k:") {
                    serde_json::from_str::<Map<String, Value>>(kk)
                        .is_ok_and(|want| want.iter().all(|(wk, wv)| item.get(wk) == Some(wv)))
                } else if let Some(vv) = k.strip_prefix("v:") {
                    serde_json::from_str::<Value>(vv).is_ok_and(|want| *item == want)
                } else {
                    false
                }
            };
            if whole {
                items.retain(|i| !matches(i));
            } else {
                for item in items.iter_mut().filter(|i| matches(i)) {
                    remove(item, sub);
                }
            }
        }
    }
}

/// One `managedFields` entry.
fn entry(manager: &str, operation: &str, api_version: &str, time: &str, fields: FieldSet) -> Value {
    json!({
        "manager": manager,
        "operation": operation,
        "apiVersion": api_version,
        "time": time,
        "fieldsType": "FieldsV1",
        "fieldsV1": fields,
    })
}

/// What an apply decided.
#[derive(Debug)]
pub struct Outcome {
    /// The object to store.
    pub object: Value,
}

/// The 409 of an apply that conflicts with other managers (`(manager, apiVersion, path)`).
fn conflict_status(
    group: &str,
    resource: &str,
    name: &str,
    conflicts: &[(String, String, String)],
) -> Status {
    let n = conflicts.len();
    let message = if n == 1 {
        let (m, v, p) = &conflicts[0];
        format!("Apply failed with 1 conflict: conflict with \"{m}\" using {v}: {p}")
    } else {
        let mut by_manager: Vec<(String, String, Vec<&str>)> = Vec::new();
        for (m, v, p) in conflicts {
            match by_manager.iter_mut().find(|(bm, bv, _)| bm == m && bv == v) {
                Some((_, _, paths)) => paths.push(p),
                None => by_manager.push((m.clone(), v.clone(), vec![p])),
            }
        }
        let parts: Vec<String> = by_manager
            .iter()
            .map(|(m, v, paths)| {
                let list: String = paths.iter().map(|p| format!("\n- {p}")).collect();
                format!("conflicts with \"{m}\" using {v}:{list}")
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", parts.join("\n"))
    };
    let mut s = Status::new(409, "Conflict", message);
    s.details = Some(Box::new(Details {
        name: name.to_owned(),
        group: group.to_owned(),
        kind: resource.to_owned(),
        causes: conflicts
            .iter()
            .map(|(m, v, p)| Cause {
                reason: "FieldManagerConflict".into(),
                message: format!("conflict with \"{m}\" using {v}"),
                field: p.clone(),
            })
            .collect(),
        retry_after_seconds: None,
    }));
    s
}

/// Applies `config` by `manager` to `current` (`None`: the object does not exist yet). Pure:
/// returns the object to store, or the 409 of the conflicts.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    current: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
    group: &str,
    resource: &str,
    name: &str,
) -> Result<Outcome, Status> {
    let api_version = config["apiVersion"].as_str().unwrap_or("v1").to_owned();
    let applied = fields_of(config);
    let Some(current) = current else {
        let mut object = config.clone();
        object["metadata"]["managedFields"] =
            json!([entry(manager, "Apply", &api_version, now, applied)]);
        return Ok(Outcome { object });
    };
    let entries: Vec<Value> = current["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let is_mine = |e: &Value| e["manager"] == manager && e["operation"] == "Apply";
    // Conflicts: fields another manager owns that this apply sets to another value.
    let mut conflicts = Vec::new();
    let mut others = Vec::new();
    for e in &entries {
        if is_mine(e) {
            continue;
        }
        let owned = as_set(&e["fieldsV1"]).clone();
        let mut paths = Vec::new();
        leaf_paths(
            &differing_set(&intersect(&owned, &applied), current, config),
            "",
            &mut paths,
        );
        for p in paths {
            conflicts.push((
                e["manager"].as_str().unwrap_or("").to_owned(),
                e["apiVersion"].as_str().unwrap_or("").to_owned(),
                p,
            ));
        }
        others.push((e.clone(), owned));
    }
    if !conflicts.is_empty() && !force {
        return Err(conflict_status(group, resource, name, &conflicts));
    }
    // Forced: the conflicting fields change hands.
    let taken = if force {
        applied.clone()
    } else {
        FieldSet::new()
    };
    let mut others_union = FieldSet::new();
    let mut kept = Vec::new();
    for (mut e, owned) in others {
        // Only the fields whose values this apply changes leave their manager.
        let lost = differing_set(&intersect(&owned, &taken), current, config);
        let owned = if lost.is_empty() {
            owned
        } else {
            subtract(&owned, &lost)
        };
        others_union = union(&others_union, &owned);
        if !owned.is_empty() {
            e["fieldsV1"] = Value::Object(owned);
            kept.push(e);
        }
    }
    // What this manager applied before and no longer does goes, unless someone else owns it.
    let previous = entries
        .iter()
        .find(|e| is_mine(e))
        .map(|e| as_set(&e["fieldsV1"]).clone())
        .unwrap_or_default();
    let dropped = subtract(&subtract(&previous, &applied), &others_union);
    let mut object = current.clone();
    remove(&mut object, &dropped);
    strategic_merge(&mut object, config).map_err(Status::bad_request)?;
    kept.push(entry(manager, "Apply", &api_version, now, applied));
    object["metadata"]["managedFields"] = Value::Array(kept);
    Ok(Outcome { object })
}

/// The part of `set` whose values differ between `a` and `b`, as a field set.
fn differing_set(set: &FieldSet, a: &Value, b: &Value) -> FieldSet {
    fn walk(set: &FieldSet, a: Option<&Value>, b: Option<&Value>) -> FieldSet {
        let mut out = FieldSet::new();
        for (k, sub) in set {
            if k == "." {
                continue;
            }
            let (av, bv) = (step(a, k), step(b, k));
            let sub = as_set(sub);
            if sub.is_empty() || sub.keys().all(|k| k == ".") {
                if av != bv {
                    out.insert(k.clone(), json!({}));
                }
            } else {
                let inner = walk(sub, av, bv);
                if !inner.is_empty() {
                    out.insert(k.clone(), Value::Object(inner));
                }
            }
        }
        out
    }
    walk(set, Some(a), Some(b))
}

/// Records a write other than an apply (create, update) in `new`'s `managedFields`, as
/// kube-apiserver does: `manager` (operation `Update`) now owns every field the write set or
/// changed, other managers lose those fields, and fields the write removed leave everyone.
/// `old` is the stored object (`None` for a create); the client's own `managedFields` are
/// ignored.
pub fn track_write(old: Option<&Value>, new: &mut Value, manager: &str, now: &str) {
    let api_version = new["apiVersion"].as_str().unwrap_or("v1").to_owned();
    let after = fields_of(new);
    let (entries, changed) = match old {
        None => (Vec::new(), after.clone()),
        Some(old) => {
            let before = fields_of(old);
            let gone = subtract(&before, &after);
            let entries = old["metadata"]["managedFields"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut e| {
                    let owned = subtract(as_set(&e["fieldsV1"]), &gone);
                    e["fieldsV1"] = Value::Object(owned);
                    e
                })
                .collect::<Vec<_>>();
            let mut changed = differing_set(&after, old, new);
            // New list items and fields count as changed too (absent before).
            changed = union(&changed, &subtract(&after, &before));
            (entries, changed)
        }
    };
    let mut out = Vec::new();
    let mut mine = FieldSet::new();
    for mut e in entries {
        if e["manager"] == manager && e["operation"] == "Update" {
            mine = as_set(&e["fieldsV1"]).clone();
            continue;
        }
        let owned = subtract(as_set(&e["fieldsV1"]), &changed);
        if !owned.is_empty() {
            e["fieldsV1"] = Value::Object(owned);
            out.push(e);
        }
    }
    let mine = union(&mine, &changed);
    if !mine.is_empty() {
        out.push(entry(manager, "Update", &api_version, now, mine));
    }
    new["metadata"]["managedFields"] = Value::Array(out);
}

/// The field manager of a write: `fieldManager`, else the client's user agent up to its first
/// `/` (as kube-apiserver defaults it), else `unknown`.
pub fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    field_manager
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .or_else(|| {
            user_agent
                .and_then(|ua| ua.split('/').next())
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Serves an apply patch on `cluster`: read, [`apply`], write with the read version as a
/// precondition (retried if the object changed meanwhile), or create.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    cluster: &Arc<Cluster>,
    ty: usize,
    ns: Option<&str>,
    name: &str,
    body: &[u8],
    manager: Option<&str>,
    force: bool,
    dry_run: bool,
    t: &kubehub_wire::ResourceType,
) -> Result<(u16, bytes::Bytes), Status> {
    let (group, resource) = (t.group.as_str(), t.resource.as_str());
    let Some(manager) = manager.filter(|m| !m.is_empty()) else {
        return Err(Status::invalid(
            "meta.k8s.io",
            "PatchOptions.meta.k8s.io",
            "",
            "fieldManager",
            "Required value: is required for apply patch",
        ));
    };
    let config = parse_body(body)?;
    if let Some(n) = config["metadata"]["name"].as_str() {
        if n != name {
            return Err(Status::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    super::validation::check_apply(t, &config, ns, name)?;
    let mut config = config;
    config["metadata"]["name"] = json!(name);
    let now = kubehub_kapi::time::rfc3339(std::time::SystemTime::now());
    for _ in 0..16 {
        let current = match cluster.get(ty, ns, name) {
            Ok(bytes) => Some(
                serde_json::from_slice::<Value>(&bytes)
                    .map_err(|e| Status::internal(e.to_string()))?,
            ),
            Err(s) if s.code == 404 => None,
            Err(s) => return Err(s),
        };
        let outcome = apply(
            current.as_ref(),
            &config,
            manager,
            force,
            &now,
            group,
            resource,
            name,
        )?;
        let result = match &current {
            None => cluster
                .create(ty, ns, outcome.object, dry_run)
                .map(|b| (201, b)),
            Some(cur) => {
                let mut obj = outcome.object;
                obj["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"].clone();
                cluster
                    .update(ty, ns, name, obj, None, dry_run)
                    .map(|b| (200, b))
            }
        };
        match result {
            // Created or changed meanwhile: read again and apply to what is there now.
            Err(s) if s_is_race(&s) => continue,
            other => return other,
        }
    }
    Err(Status::conflict(
        group,
        resource,
        name,
        "the object kept changing while it was applied",
    ))
}

/// A write lost to a concurrent one (the precondition failed, or a create raced one).
fn s_is_race(s: &Status) -> bool {
    s.code == 409 && (s.message.contains(Status::MODIFIED) || s.reason == "AlreadyExists")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data})
    }

    fn apply_as(cur: Option<&Value>, cfg: &Value, m: &str, force: bool) -> Result<Value, Status> {
        apply(
            cur,
            cfg,
            m,
            force,
            "2026-11-26T00:00:00Z",
            "",
            "configmaps",
            "c",
        )
        .map(|o| o.object)
    }

    #[test]
    fn fields_are_owned_per_item_of_keyed_lists() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "labels": {"app": "web"}, "resourceVersion": "9"},
            "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "web", "image": "nginx", "args": ["a"]}]}}},
            "status": {"replicas": 2}});
        let f = fields_of(&d);
        assert_eq!(
            Value::Object(f),
            json!({"f:metadata": {"f:labels": {"f:app": {}}},
                   "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                       "k:{\"name\":\"web\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}}}}}})
        );
    }

    #[test]
    fn an_apply_creates_updates_conflicts_and_forces() {
        let created = apply_as(None, &cm(json!({"a": "1", "b": "2"})), "kubectl", false).unwrap();
        assert_eq!(
            created["metadata"]["managedFields"][0]["manager"],
            "kubectl"
        );
        assert_eq!(
            created["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:b": {}}})
        );
        // The same manager drops b: it goes.
        let updated = apply_as(Some(&created), &cm(json!({"a": "1"})), "kubectl", false).unwrap();
        assert_eq!(updated["data"], json!({"a": "1"}));
        // Another manager sets a to the same value: shared, no conflict.
        let shared = apply_as(
            Some(&updated),
            &cm(json!({"a": "1", "c": "3"})),
            "flux",
            false,
        )
        .unwrap();
        assert_eq!(shared["data"], json!({"a": "1", "c": "3"}));
        // ... to another value: a conflict naming the manager and the field.
        let e = apply_as(Some(&shared), &cm(json!({"a": "9"})), "flux", false).unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.a"
        );
        // kubectl dropping a while flux still owns it keeps it.
        let mut nothing = cm(json!({}));
        nothing.as_object_mut().unwrap().remove("data");
        let kept = apply_as(Some(&shared), &nothing, "kubectl", false).unwrap();
        assert_eq!(kept["data"]["a"], "1");
        // Forced: flux takes a; kubectl keeps nothing of it.
        let forced = apply_as(
            Some(&shared),
            &cm(json!({"a": "9", "c": "3"})),
            "flux",
            true,
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let mf = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1, "kubectl owned only a, now flux's: {mf:?}");
        assert_eq!(mf[0]["manager"], "flux");
    }

    #[test]
    fn several_conflicts_are_listed_by_manager() {
        let base = apply_as(None, &cm(json!({"a": "1", "b": "2"})), "kubectl", false).unwrap();
        let e = apply_as(
            Some(&base),
            &cm(json!({"a": "x", "b": "y"})),
            "other",
            false,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 2 conflicts: conflicts with \"kubectl\" using v1:\n- .data.a\n- .data.b"
        );
        assert_eq!(e.details.as_ref().unwrap().causes.len(), 2);
    }

    #[test]
    fn yaml_bodies_are_read() {
        let v = parse_body(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\ndata:\n  n: \"1\"\n  on: 'yes'\n").unwrap();
        assert_eq!(v["data"], json!({"n": "1", "on": "yes"}));
        assert!(parse_body(b"- a\n- b\n").is_err());
        assert!(parse_body(b"a: [").is_err());
    }

    #[test]
    fn creates_and_updates_record_their_manager() {
        let mut created = cm(json!({"a": "1", "b": "2"}));
        track_write(None, &mut created, "kubectl-create", "t");
        assert_eq!(
            created["metadata"]["managedFields"][0]["operation"],
            "Update"
        );
        // An apply changing a field kubectl-create set conflicts with it.
        let e = apply_as(Some(&created), &cm(json!({"a": "9"})), "kubectl", false).unwrap_err();
        assert!(
            e.message
                .contains("conflict with \"kubectl-create\" using v1: .data.a"),
            "{}",
            e.message
        );
        // An editor changes b and drops a: b is the editor's, a is nobody's.
        let mut edited = cm(json!({"b": "3"}));
        track_write(Some(&created), &mut edited, "kubectl-edit", "t");
        let mf = edited["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(mf.len(), 1, "{mf:?}");
        assert_eq!(mf[0]["manager"], "kubectl-edit");
        assert_eq!(mf[0]["fieldsV1"], json!({"f:data": {"f:b": {}}}));
        assert_eq!(
            manager_of(None, Some("kubectl/v1.32.4 (linux/amd64)")),
            "kubectl"
        );
        assert_eq!(manager_of(Some("flux"), Some("kubectl/v1")), "flux");
    }
}
