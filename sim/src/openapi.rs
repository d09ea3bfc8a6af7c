//! The OpenAPI v3 documents `kubectl apply` reads: an index of group versions, and per group
//! version the paths with their operations, the `fieldValidation` parameter (kubectl checks it
//! to decide whether the server validates fields) and `x-kubernetes-group-version-kind`.
//! Schemas are left out: kubectl then computes strategic merge patches from its built-in types.

use kubehub_kapi::resources::{group_version_path, groups};
use kubehub_wire::ResourceType;
use serde_json::{json, Map, Value};

fn group_versions(types: &[ResourceType]) -> Vec<(String, String)> {
    let mut out = vec![(String::new(), "v1".to_owned())];
    for (g, vs) in groups(types) {
        for v in vs {
            out.push((g.clone(), v));
        }
    }
    out
}

/// A stable hash of a document, for its `?hash=` URL.
fn hash(v: &Value) -> String {
    // FNV-1a over the serialized document.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016X}")
}

/// `/openapi/v3`
pub fn index(types: &[ResourceType]) -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions(types) {
        let key = group_version_path(&g, &v)
            .trim_start_matches('/')
            .to_owned();
        if let Some(doc) = document(types, &key) {
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", hash(&doc))}),
            );
        }
    }
    json!({ "paths": paths })
}

fn param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": true}})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub fn document(types: &[ResourceType], group_version: &str) -> Option<Value> {
    let (group, version) = match group_version.split('/').collect::<Vec<_>>().as_slice() {
        ["api", v] => ("", *v),
        ["apis", g, v] => (*g, *v),
        _ => return None,
    };
    let write_params = [
        param("dryRun", "When present, indicates that modifications should not be persisted."),
        param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request containing unknown or duplicate fields."),
    ];
    let mut paths = Map::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
        let base = group_version_path(group, version);
        let (collection, item) = match (t.namespaced, t.resource.split_once('/')) {
            (true, None) => (
                Some(format!("{base}/namespaces/{{namespace}}/{}", t.resource)),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", t.resource),
            ),
            (true, Some((r, sub))) => (
                None,
                format!("{base}/namespaces/{{namespace}}/{r}/{{name}}/{sub}"),
            ),
            (false, None) => (
                Some(format!("{base}/{}", t.resource)),
                format!("{base}/{}/{{name}}", t.resource),
            ),
            (false, Some((r, sub))) => (None, format!("{base}/{r}/{{name}}/{sub}")),
        };
        let op = |action: &str, params: &[Value]| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "parameters": params,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        if let Some(c) = collection {
            paths.insert(
                c,
                json!({
                    "get": op("list", &[]),
                    "post": op("post", &write_params),
                    "delete": op("deletecollection", &[]),
                }),
            );
        }
        paths.insert(
            item,
            json!({
                "get": op("get", &[]),
                "put": op("put", &write_params),
                "patch": op("patch", &write_params),
                "delete": op("delete", &[]),
            }),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::api::VERSION.2},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::resources::builtin;

    #[test]
    fn index_links_every_group_version() {
        let idx = index(builtin());
        let url = idx["paths"]["api/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap();
        assert!(url.starts_with("/openapi/v3/api/v1?hash="));
        assert!(idx["paths"]["apis/apps/v1"].is_object());
        let doc = document(builtin(), "api/v1").unwrap();
        let post = &doc["paths"]["/api/v1/namespaces/{namespace}/pods"]["post"];
        assert_eq!(post["x-kubernetes-group-version-kind"]["kind"], "Pod");
        assert!(post["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation"));
        assert!(document(builtin(), "apis/batch/v1").is_none());
    }
}
