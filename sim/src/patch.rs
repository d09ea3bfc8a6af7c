//! Strategic merge patch, as `kubectl apply`, `kubectl label` and `kubectl edit` send it.
//!
//! Like a JSON merge patch (objects merge recursively, `null` deletes a key), except that lists
//! of objects with a *merge key* (containers by `name`, container ports by `containerPort`, …)
//! merge item by item instead of being replaced, primitive lists with a merge strategy (like
//! `finalizers`) are unioned, and these directives are honoured: `$patch: replace | delete |
//! merge`, `$retainKeys`, `$deleteFromPrimitiveList/<field>`, and `$setElementOrder/<field>`
//! (accepted; the merged order is the target's, then new items in patch order).
//!
//! The merge keys are those of the built-in types' Go structs (`patchMergeKey` tags).

use serde_json::{Map, Value};

/// The merge key of a list field, if the field merges item by item.
pub(crate) fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "containerStatuses"
        | "initContainerStatuses" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        "podIPs" | "hostIPs" => "ip",
        "addresses" => "type",
        // Container ports merge on containerPort; a Service's ports on port.
        "ports" => {
            if items.iter().any(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    })
}

/// Primitive lists that merge as sets instead of being replaced.
pub(crate) fn is_set_list(field: &str) -> bool {
    matches!(field, "finalizers")
}

/// Applies a strategic merge patch to `target`. Errors describe a malformed patch.
pub fn strategic_merge(target: &mut Value, patch: &Value) -> Result<(), String> {
    merge_value(target, patch, "")
}

fn merge_value(target: &mut Value, patch: &Value, field: &str) -> Result<(), String> {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                merge_map(t, p)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            let merged = merge_list(target.as_array().map(Vec::as_slice), items, field)?;
            *target = Value::Array(merged);
            Ok(())
        }
        _ => {
            *target = patch.clone();
            Ok(())
        }
    }
}

fn directive(p: &Map<String, Value>) -> Option<&str> {
    p.get("$patch").and_then(Value::as_str)
}

fn strip_directives(p: &Map<String, Value>) -> Map<String, Value> {
    p.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge_map(t: &mut Map<String, Value>, p: &Map<String, Value>) -> Result<(), String> {
    match directive(p) {
        Some("replace") => {
            *t = strip_directives(p);
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch directive {other:?} in a map")),
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let remove = v
                .as_array()
                .ok_or("$deleteFromPrimitiveList needs a list")?;
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !remove.contains(x));
            }
            continue;
        }
        if k.starts_with("$setElementOrder/") || k == "$patch" || k == "$retainKeys" {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(inner) if directive(inner) == Some("delete") => {
                t.remove(k);
            }
            _ => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_value(slot, v, k)?;
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys") {
        let keep: Vec<&str> = keep
            .as_array()
            .ok_or("$retainKeys needs a list")?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn merge_list(
    target: Option<&[Value]>,
    patch: &[Value],
    field: &str,
) -> Result<Vec<Value>, String> {
    let target = target.unwrap_or(&[]);
    // `[{"$patch": "replace"}, items...]` replaces the whole list.
    if patch
        .iter()
        .any(|i| i.as_object().and_then(directive) == Some("replace"))
    {
        return Ok(patch
            .iter()
            .filter(|i| i.as_object().and_then(directive) != Some("replace"))
            .cloned()
            .collect());
    }
    if is_set_list(field) {
        let mut out = target.to_vec();
        for item in patch {
            if !out.contains(item) {
                out.push(item.clone());
            }
        }
        return Ok(out);
    }
    let all_objects = !patch.is_empty() && patch.iter().all(Value::is_object);
    let key = if all_objects {
        merge_key(field, patch)
    } else {
        None
    };
    let Some(key) = key else {
        return Ok(patch.to_vec());
    };
    let mut out = target.to_vec();
    for item in patch {
        let Some(obj) = item.as_object() else {
            continue;
        };
        let Some(id) = obj.get(key) else {
            return Err(format!("map in list {field:?} lacks its merge key {key:?}"));
        };
        let pos = out.iter().position(|x| x.get(key) == Some(id));
        match (directive(obj), pos) {
            (Some("delete"), Some(i)) => {
                out.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => merge_value(&mut out[i], item, "")?,
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                merge_value(&mut fresh, item, "")?;
                out.push(fresh);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(mut t: Value, p: Value) -> Value {
        strategic_merge(&mut t, &p).unwrap();
        t
    }

    #[test]
    fn maps_merge_and_null_deletes() {
        let t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        let p = json!({"metadata": {"labels": {"a": null, "c": "3"}}});
        assert_eq!(
            smp(t, p),
            json!({"metadata": {"labels": {"b": "2", "c": "3"}}, "spec": {"x": 1}})
        );
    }

    #[test]
    fn containers_merge_by_name() {
        let t = json!({"spec": {"containers": [
            {"name": "app", "image": "app:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]},
            {"name": "sidecar", "image": "envoy:1"}
        ]}});
        let p = json!({"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}, {"name": "new"}],
        "containers": [
            {"name": "app", "image": "app:2", "ports": [{"containerPort": 443}]},
            {"name": "new", "image": "busybox"}
        ]}});
        let out = smp(t, p);
        let cs = out["spec"]["containers"].as_array().unwrap();
        assert_eq!(cs.len(), 3);
        assert_eq!(cs[0]["image"], "app:2");
        assert_eq!(
            cs[0]["ports"].as_array().unwrap().len(),
            2,
            "ports merge on containerPort"
        );
        assert_eq!(cs[1]["image"], "envoy:1", "untouched item kept");
        assert_eq!(cs[2]["name"], "new");
    }

    #[test]
    fn directives() {
        let t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}], "args": ["x"]}});
        let out = smp(
            t.clone(),
            json!({"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}),
        );
        assert_eq!(out["spec"]["containers"], json!([{"name": "b"}]));
        let out = smp(t.clone(), json!({"spec": {"args": ["y", "z"]}}));
        assert_eq!(
            out["spec"]["args"],
            json!(["y", "z"]),
            "plain lists are replaced"
        );
        let out = smp(
            t.clone(),
            json!({"spec": {"$patch": "replace", "replicas": 2}}),
        );
        assert_eq!(out["spec"], json!({"replicas": 2}));
        let out = smp(
            json!({"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}),
            json!({"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}),
        );
        assert_eq!(out["strategy"], json!({"type": "Recreate"}));
        let out = smp(
            json!({"metadata": {"finalizers": ["a", "b"]}}),
            json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
        let out = smp(t, json!({"spec": {"containers": {"$patch": "delete"}}}));
        assert!(out["spec"].get("containers").is_none());
    }

    #[test]
    fn malformed_patches_are_errors() {
        let mut t = json!({"spec": {"containers": [{"name": "a"}]}});
        assert!(
            strategic_merge(&mut t, &json!({"spec": {"containers": [{"image": "x"}]}})).is_err()
        );
        assert!(strategic_merge(&mut t, &json!({"spec": {"$patch": "explode"}})).is_err());
    }
}
