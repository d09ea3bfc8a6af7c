//! The OpenAPI documents the simulator serves, as kube-apiserver serves them:
//!
//! * `/openapi/v3`: an index of group versions with their `serverRelativeURL`s;
//! * `/openapi/v3/api/v1`, `/openapi/v3/apis/{group}/{version}`: per group version the paths
//!   with their operations (the `fieldValidation` and `dryRun` parameters, which kubectl
//!   checks to decide whether the server validates fields) and `components.schemas`: every
//!   kind served in that group version with every schema it references, named as
//!   kube-apiserver names them (`io.k8s.api.core.v1.Pod`), top-level kinds carrying
//!   `x-kubernetes-group-version-kind`, descriptions included (what `kubectl explain` prints);
//! * `/openapi/v2`: the Swagger 2.0 `definitions` of the same schemas, as JSON.
//!
//! The schemas are not written here: they come from `k8s-openapi`'s `schemars` implementations
//! (generated from the Kubernetes OpenAPI specification) and are post-processed into
//! kube-apiserver's shape (`$ref`s under `#/components/schemas/`, a `$ref` with a description
//! wrapped in `allOf`, the group-version-kind extension). [`super::validation`] walks the same
//! schemas to find unknown fields.
//!
//! Patch operations carry no `requestBody`, so kubectl keeps computing strategic merge patches
//! from its built-in types (the schemas have no `x-kubernetes-patch-*` extensions); `/openapi/v2`
//! is JSON only, so kubectl (which asks for it as protobuf) falls back to the same.
//!
//! Memory: everything is built once per process, lazily, and shared by every cluster.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use k8s_openapi::api::{
    apps::v1 as apps, authorization::v1 as authz, autoscaling::v1 as autoscaling,
    batch::v1 as batch, coordination::v1 as coordination, core::v1 as core,
    discovery::v1 as discovery, events::v1 as events, networking::v1 as networking,
    policy::v1 as policy, rbac::v1 as rbac, storage::v1 as storage,
};
use k8s_openapi::schemars::{generate::SchemaSettings, JsonSchema, SchemaGenerator};
use kubehub_kapi::path::Endpoint;
use kubehub_kapi::resources::{group_version_path, groups};
use kubehub_kapi::Status;
use kubehub_wire::ResourceType;
use serde_json::{json, Map, Value};

/// Where schemas are referenced from in OpenAPI v3 documents.
pub const REF_PREFIX: &str = "#/components/schemas/";

/// A top-level kind with its schema's name.
#[derive(Debug, Clone)]
struct Root {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    name: String,
}

/// Every Kubernetes schema the simulator knows, in kube-apiserver's naming and shape.
#[derive(Debug)]
pub struct Schemas {
    defs: Map<String, Value>,
    roots: Vec<Root>,
}

fn add<T: JsonSchema + k8s_openapi::Resource>(gen: &mut SchemaGenerator, roots: &mut Vec<Root>) {
    gen.subschema_for::<T>();
    roots.push(Root {
        group: T::GROUP,
        version: T::VERSION,
        kind: T::KIND,
        name: T::schema_name().into_owned(),
    });
}

/// The schemas, built on first use.
pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(build)
}

fn build() -> Schemas {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut roots = Vec::new();
    let g = &mut gen;
    let r = &mut roots;
    // core/v1
    add::<core::ConfigMap>(g, r);
    add::<core::Endpoints>(g, r);
    add::<core::Event>(g, r);
    add::<core::LimitRange>(g, r);
    add::<core::Namespace>(g, r);
    add::<core::Node>(g, r);
    add::<core::PersistentVolume>(g, r);
    add::<core::PersistentVolumeClaim>(g, r);
    add::<core::Pod>(g, r);
    add::<core::PodTemplate>(g, r);
    add::<core::ReplicationController>(g, r);
    add::<core::ResourceQuota>(g, r);
    add::<core::Secret>(g, r);
    add::<core::Service>(g, r);
    add::<core::ServiceAccount>(g, r);
    // apps/v1
    add::<apps::ControllerRevision>(g, r);
    add::<apps::DaemonSet>(g, r);
    add::<apps::Deployment>(g, r);
    add::<apps::ReplicaSet>(g, r);
    add::<apps::StatefulSet>(g, r);
    // others kube-apiserver serves, for types a simulated cluster may add
    add::<autoscaling::Scale>(g, r);
    add::<autoscaling::HorizontalPodAutoscaler>(g, r);
    add::<authz::SelfSubjectAccessReview>(g, r);
    add::<authz::SelfSubjectRulesReview>(g, r);
    add::<authz::SubjectAccessReview>(g, r);
    add::<batch::Job>(g, r);
    add::<batch::CronJob>(g, r);
    add::<coordination::Lease>(g, r);
    add::<discovery::EndpointSlice>(g, r);
    add::<events::Event>(g, r);
    add::<networking::Ingress>(g, r);
    add::<networking::NetworkPolicy>(g, r);
    add::<policy::PodDisruptionBudget>(g, r);
    add::<rbac::ClusterRole>(g, r);
    add::<rbac::ClusterRoleBinding>(g, r);
    add::<rbac::Role>(g, r);
    add::<rbac::RoleBinding>(g, r);
    add::<storage::StorageClass>(g, r);
    let mut defs = gen.take_definitions(false);
    for (name, schema) in defs.iter_mut() {
        kube_shape(schema, true);
        if name == "io.k8s.apimachinery.pkg.util.intstr.IntOrString" {
            if let Some(o) = schema.as_object_mut() {
                o.insert("type".into(), json!("string"));
                o.insert("format".into(), json!("int-or-string"));
            }
        }
    }
    for root in &roots {
        if let Some(o) = defs.get_mut(&root.name).and_then(Value::as_object_mut) {
            o.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": root.group, "kind": root.kind, "version": root.version}]),
            );
        }
    }
    Schemas { defs, roots }
}

/// kube-apiserver's shape: a `$ref` with siblings (a field's description) becomes
/// `{"allOf": [{"$ref": …}], …}`, as OpenAPI 3.0 ignores a `$ref`'s siblings.
fn kube_shape(v: &mut Value, top: bool) {
    match v {
        Value::Object(o) => {
            if !top && o.len() > 1 {
                if let Some(r) = o.remove("$ref") {
                    o.insert("allOf".into(), json!([{ "$ref": r }]));
                }
            }
            for (_, x) in o.iter_mut() {
                kube_shape(x, false);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| kube_shape(x, false)),
        _ => {}
    }
}

/// The name a `$ref` points to.
pub fn ref_name(r: &str) -> Option<&str> {
    r.strip_prefix(REF_PREFIX)
}

impl Schemas {
    /// A schema by name (`io.k8s.api.core.v1.Pod`).
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.defs.get(name)
    }

    /// The schema's name of what is written to a resource type (the subresource's kind for
    /// `*/scale`, the parent's for `*/status`).
    pub fn name_for(&self, t: &ResourceType) -> Option<&str> {
        let (group, version) = if t.kind == "Scale" && t.resource.ends_with("/scale") {
            ("autoscaling", "v1")
        } else {
            (t.group.as_str(), t.version.as_str())
        };
        self.roots
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == t.kind)
            .map(|r| r.name.as_str())
    }

    /// The schema of what is written to a resource type.
    pub fn for_type(&self, t: &ResourceType) -> Option<&Value> {
        self.name_for(t).and_then(|n| self.get(n))
    }

    /// The named schemas with every schema they reference, transitively.
    fn closure<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, Value> {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<String> = names.into_iter().map(str::to_owned).collect();
        let mut out = BTreeMap::new();
        while let Some(n) = todo.pop() {
            if !seen.insert(n.clone()) {
                continue;
            }
            if let Some(s) = self.defs.get(&n) {
                refs(s, &mut todo);
                out.insert(n, s.clone());
            }
        }
        out
    }
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            if let Some(n) = o.get("$ref").and_then(Value::as_str).and_then(ref_name) {
                out.push(n.to_owned());
            }
            o.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

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
fn hash(b: &[u8]) -> String {
    // FNV-1a over the serialized document.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016X}")
}

/// Serialized documents, by list of types and path: built once per process.
fn cached(
    types: &'static [ResourceType],
    key: &str,
    make: impl FnOnce() -> Option<Value>,
) -> Option<Bytes> {
    type Cache = Mutex<HashMap<(usize, String), Option<Bytes>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Cache::default);
    let k = (types.as_ptr() as usize, key.to_owned());
    if let Some(b) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&k) {
        return b.clone();
    }
    // Built outside the lock: two first requests may both build, one result is kept.
    let b = make().map(|v| Bytes::from(serde_json::to_vec(&v).unwrap_or_default()));
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(k)
        .or_insert(b)
        .clone()
}

/// `/openapi/v3`, serialized.
pub fn index_json(types: &'static [ResourceType]) -> Bytes {
    cached(types, "", || Some(index(types))).unwrap_or_default()
}

/// `/openapi/v3/{group_version}`, serialized.
pub fn document_json(types: &'static [ResourceType], group_version: &str) -> Option<Bytes> {
    cached(types, group_version, || document(types, group_version))
}

/// `/openapi/v2`, serialized.
pub fn v2_json(types: &'static [ResourceType]) -> Bytes {
    cached(types, "/openapi/v2", || Some(v2(types))).unwrap_or_default()
}

/// Answers `GET /openapi/v3`, `/openapi/v3/{group version}` and `/openapi/v2` (JSON only: a
/// client that accepts only protobuf, as kubectl asks for v2, gets 406 and uses its own types).
pub fn serve(
    req: &http::Request<Bytes>,
    types: &'static [ResourceType],
) -> Result<http::Response<super::api::Body>, Status> {
    use http_body_util::{BodyExt, Full};
    if req.method() != http::Method::GET {
        return Err(Status::method_not_allowed());
    }
    let body = match kubehub_kapi::path::parse(req.uri().path()) {
        Endpoint::OpenApiV3Index => index_json(types),
        Endpoint::OpenApiV3(gv) => document_json(types, gv).ok_or_else(Status::no_such_resource)?,
        Endpoint::OpenApiV2 => {
            let accept = req
                .headers()
                .get(http::header::ACCEPT)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !(accept.is_empty() || accept.contains("json") || accept.contains("*/*")) {
                return Err(Status::new(
                    406,
                    "NotAcceptable",
                    "the server was unable to respond with a content type that the client supports"
                        .to_owned(),
                ));
            }
            v2_json(types)
        }
        _ => return Err(Status::no_such_resource()),
    };
    let mut r = http::Response::new(Full::new(body).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

/// `/openapi/v3`
pub fn index(types: &'static [ResourceType]) -> Value {
    let mut paths = Map::new();
    for (g, v) in group_versions(types) {
        let key = group_version_path(&g, &v)
            .trim_start_matches('/')
            .to_owned();
        if let Some(doc) = document_json(types, &key) {
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
        param("dryRun", "When present, indicates that modifications should not be persisted. An invalid or unrecognized dryRun directive will result in an error response and no further processing of the request. Valid values are: - All: all dry run stages will be processed"),
        param("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes."),
        param("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore: This will ignore any unknown fields that are silently dropped from the object, and will ignore all but the last duplicate field that the decoder encounters. - Warn: This will send a warning via the standard warning response header for each unknown field that is dropped from the object, and for each duplicate field that is encountered. The request will still succeed if there are no other errors, and will only persist the last of any duplicate fields. This is the default in v1.23+ - Strict: This will fail the request with a BadRequest error if any unknown fields would be dropped from the object, or if any duplicate fields are present. The error returned from the server will contain all unknown and duplicate fields encountered."),
    ];
    let delete_params = [param(
        "dryRun",
        "When present, indicates that modifications should not be persisted.",
    )];
    let schemas = schemas();
    let mut paths = Map::new();
    let mut roots = Vec::new();
    for t in types
        .iter()
        .filter(|t| t.group == group && t.version == version)
    {
        let schema = schemas.name_for(t);
        roots.extend(schema);
        let gvk = match (t.kind.as_str(), t.resource.ends_with("/scale")) {
            ("Scale", true) => json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
            _ => json!({"group": t.group, "version": t.version, "kind": t.kind}),
        };
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
        let content = |code: &str| match schema {
            Some(n) => json!({code: {"description": "OK", "content": {
                "application/json": {"schema": {"$ref": format!("{REF_PREFIX}{n}")}}}}}),
            None => json!({code: {"description": "OK"}}),
        };
        let op = |action: &str, params: &[Value], code: &str| {
            json!({
                "operationId": format!("{action}{}", t.kind),
                "parameters": params,
                "responses": content(code),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
            })
        };
        if let Some(c) = collection {
            paths.insert(
                c,
                json!({
                    "get": op("list", &[], "200"),
                    "post": op("post", &write_params, "201"),
                    "delete": op("deletecollection", &delete_params, "200"),
                }),
            );
        }
        paths.insert(
            item,
            json!({
                "get": op("get", &[], "200"),
                "put": op("put", &write_params, "200"),
                "patch": op("patch", &write_params, "200"),
                "delete": op("delete", &delete_params, "200"),
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
        "components": {"schemas": schemas.closure(roots)},
    }))
}

/// `/openapi/v2`: the definitions of every kind served (Swagger 2.0; no paths, so clients that
/// look for patch types there fall back to their own).
pub fn v2(types: &[ResourceType]) -> Value {
    let schemas = schemas();
    let defs = schemas.closure(types.iter().filter_map(|t| schemas.name_for(t)));
    let mut text = serde_json::to_string(&defs).unwrap_or_default();
    text = text.replace(&format!("\"{REF_PREFIX}"), "\"#/definitions/");
    let defs: Value = serde_json::from_str(&text).unwrap_or_default();
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": super::api::VERSION.2},
        "paths": {},
        "definitions": defs,
    })
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
        // No requestBody: kubectl computes strategic merge patches from its own types.
        let patch = &doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"];
        assert!(patch.get("requestBody").is_none());
        assert!(document(builtin(), "apis/batch/v1").is_none());
    }

    #[test]
    fn schemas_are_kube_apiservers() {
        let doc = document(builtin(), "api/v1").unwrap();
        let s = &doc["components"]["schemas"];
        let pod = &s["io.k8s.api.core.v1.Pod"];
        assert_eq!(
            pod["x-kubernetes-group-version-kind"],
            json!([{"group": "", "kind": "Pod", "version": "v1"}])
        );
        assert_eq!(
            pod["properties"]["spec"]["allOf"][0]["$ref"],
            "#/components/schemas/io.k8s.api.core.v1.PodSpec"
        );
        let containers = &s["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert!(containers["description"]
            .as_str()
            .unwrap()
            .contains("List of containers belonging to the pod"));
        assert!(s["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"].is_object());
        assert!(s["io.k8s.api.apps.v1.Deployment"].is_null());
        // Every reference resolves within the document.
        let mut r = Vec::new();
        refs(s, &mut r);
        for n in r {
            assert!(s[&n].is_object(), "{n}");
        }
        let apps = document(builtin(), "apis/apps/v1").unwrap();
        let s = &apps["components"]["schemas"];
        assert!(s["io.k8s.api.apps.v1.Deployment"]["x-kubernetes-group-version-kind"].is_array());
        assert_eq!(
            s["io.k8s.api.autoscaling.v1.Scale"]["x-kubernetes-group-version-kind"][0]["group"],
            "autoscaling"
        );
    }

    #[test]
    fn v2_has_definitions() {
        let v = v2(builtin());
        let d = &v["definitions"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            d["properties"]["spec"]["allOf"][0]["$ref"],
            "#/definitions/io.k8s.api.apps.v1.DeploymentSpec"
        );
        assert!(!v.to_string().contains("#/components/"));
    }
}
