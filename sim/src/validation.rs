//! Field validation and the write options, as kube-apiserver does them.
//!
//! * `fieldValidation` (`Strict`, `Warn`, the default, or `Ignore`) on create, update and
//!   patch: unknown fields are found by walking the request against the Kubernetes schemas
//!   [`super::openapi`] serves (the same schemas `kubectl explain` prints). `Strict` fails with
//!   kube-apiserver's 400 (`strict decoding error: unknown field "spec.foo", …`), `Warn`
//!   answers with one `Warning: 299 - "unknown field \"spec.foo\""` header per field and
//!   stores the object without them, `Ignore` drops them silently. A type without a schema
//!   (none today) is not checked, as a CRD preserving unknown fields.
//! * Patches: a JSON merge or strategic merge patch is checked as the partial object it is
//!   (strategic merge directives such as `$patch` or `$setElementOrder/…` are not fields);
//!   a JSON patch by what its `add` and `replace` operations write.
//! * `dryRun`: absent or `All`; anything else is kube-apiserver's 422 on the verb's options
//!   (`CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: …`).

use http::{Method, Response};
use kubehub_kapi::query::Query;
use kubehub_kapi::status::{Cause, Details};
use kubehub_kapi::Status;
use kubehub_wire::ResourceType;
use serde_json::Value;

use super::cluster::PatchType;
use super::openapi::{ref_name, schemas};

/// How unknown fields are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Dropped silently.
    Ignore,
    /// Dropped, with a warning each (kube-apiserver's default).
    Warn,
    /// The request fails.
    Strict,
}

/// The options kind of a verb, for errors about its query parameters.
fn options_kind(method: &Method) -> &'static str {
    match *method {
        Method::POST => "CreateOptions",
        Method::PUT => "UpdateOptions",
        Method::PATCH => "PatchOptions",
        _ => "DeleteOptions",
    }
}

fn options_invalid(method: &Method, field: &str, message: String) -> Status {
    let kind = options_kind(method);
    Status {
        code: 422,
        reason: "Invalid",
        message: format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {message}"),
        details: Some(Box::new(Details {
            group: "meta.k8s.io".into(),
            kind: kind.into(),
            causes: vec![Cause {
                reason: "FieldValueNotSupported".into(),
                message,
                field: field.into(),
            }],
            ..Details::default()
        })),
    }
}

/// `dryRun`: whether the write is a dry run.
pub fn dry_run(query: &Query<'_>, method: &Method) -> Result<bool, Status> {
    if *method == Method::GET {
        return Ok(false); // reads have no dryRun
    }
    let values: Vec<&str> = query.get_all("dryRun").filter(|v| !v.is_empty()).collect();
    if values.iter().all(|v| *v == "All") {
        return Ok(!values.is_empty());
    }
    Err(unsupported_dry_run(method, &values))
}

/// `dryRun` in a delete's `DeleteOptions` body (where kubectl puts it).
pub fn delete_dry_run(body: &[u8]) -> Result<bool, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(false);
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Ok(false); // the DeleteOptions reader reports it
    };
    let values: Vec<&str> = match &v["dryRun"] {
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(false),
    };
    let values: Vec<&str> = values.into_iter().filter(|v| !v.is_empty()).collect();
    if values.iter().all(|v| *v == "All") {
        return Ok(!values.is_empty());
    }
    Err(unsupported_dry_run(&Method::DELETE, &values))
}

fn unsupported_dry_run(method: &Method, values: &[&str]) -> Status {
    let list = values
        .iter()
        .map(|v| format!("{v:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    options_invalid(
        method,
        "dryRun",
        format!("Unsupported value: []string{{{list}}}: supported values: \"All\""),
    )
}

/// `fieldValidation`.
pub fn directive(query: &Query<'_>, method: &Method) -> Result<Directive, Status> {
    match query.get("fieldValidation") {
        None | Some("") | Some("Warn") => Ok(Directive::Warn),
        Some("Ignore") => Ok(Directive::Ignore),
        Some("Strict") => Ok(Directive::Strict),
        Some(v) => Err(options_invalid(
            method,
            "fieldValidation",
            format!("Unsupported value: {v:?}: supported values: \"\", \"Ignore\", \"Strict\", \"Warn\""),
        )),
    }
}

/// The unknown fields of `v` by `schema`, as kube-apiserver names them (`spec.foo`,
/// `spec.containers[0].foo`), in the order of the object's keys; removed from `v` when
/// `strip`. `patch`: `v` is a merge or strategic merge patch (`$…` directives and `null`s,
/// which delete, are not fields).
pub fn unknown_fields(schema: &Value, v: &mut Value, strip: bool, patch: bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = String::new();
    walk(schema, v, &mut path, &mut out, strip, patch, 0);
    out
}

/// Follows `$ref` and a single-element `allOf` to the schema itself.
fn resolve(mut s: &Value) -> &Value {
    for _ in 0..8 {
        if let Some(n) = s.get("$ref").and_then(Value::as_str).and_then(ref_name) {
            match schemas().get(n) {
                Some(t) => s = t,
                None => return s,
            }
        } else if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            s = one;
        } else {
            return s;
        }
    }
    s
}

fn walk(
    schema: &Value,
    v: &mut Value,
    path: &mut String,
    out: &mut Vec<String>,
    strip: bool,
    patch: bool,
    depth: usize,
) {
    let s = resolve(schema);
    if depth > 64 || s["x-kubernetes-preserve-unknown-fields"] == true {
        return;
    }
    match v {
        Value::Object(o) => {
            let props = s.get("properties").and_then(Value::as_object);
            let additional = s.get("additionalProperties").filter(|a| a.is_object());
            if props.is_none() && additional.is_none() {
                return; // free-form (RawExtension, FieldsV1)
            }
            let mut unknown = Vec::new();
            for (k, x) in o.iter_mut() {
                if patch && (k.starts_with('$') || x.is_null()) {
                    continue;
                }
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                match props.and_then(|p| p.get(k)).or(additional) {
                    Some(sub) => walk(sub, x, path, out, strip, patch, depth + 1),
                    None => {
                        out.push(path.clone());
                        unknown.push(k.clone());
                    }
                }
                path.truncate(len);
            }
            if strip {
                for k in unknown {
                    o.remove(&k);
                }
            }
        }
        Value::Array(a) => {
            let Some(items) = s.get("items") else { return };
            for (i, x) in a.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(items, x, path, out, strip, patch, depth + 1);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// The keys that occur twice in an object of the JSON document `raw` (serde_json keeps the
/// last, as kube-apiserver does), by path: `spec.replicas`.
pub fn duplicate_fields(raw: &[u8]) -> Vec<String> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
    use std::cell::RefCell;
    use std::collections::HashSet;

    struct Walk<'a> {
        path: String,
        out: &'a RefCell<Vec<String>>,
        depth: usize,
    }
    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut i = 0;
            loop {
                let seed = Walk {
                    path: format!("{}[{i}]", self.path),
                    out: self.out,
                    depth: self.depth + 1,
                };
                if self.depth > 128 || a.next_element_seed(seed)?.is_none() {
                    return Ok(());
                }
                i += 1;
            }
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(k) = m.next_key::<String>()? {
                let path = if self.path.is_empty() {
                    k.clone()
                } else {
                    format!("{}.{k}", self.path)
                };
                if !seen.insert(k) {
                    self.out.borrow_mut().push(path.clone());
                }
                if self.depth > 128 {
                    m.next_value::<serde::de::IgnoredAny>()?;
                } else {
                    m.next_value_seed(Walk {
                        path,
                        out: self.out,
                        depth: self.depth + 1,
                    })?;
                }
            }
            Ok(())
        }
    }
    let out = RefCell::new(Vec::new());
    let mut d = serde_json::Deserializer::from_slice(raw);
    let _ = Walk {
        path: String::new(),
        out: &out,
        depth: 0,
    }
    .deserialize(&mut d);
    out.into_inner()
}

/// What is wrong with a request's fields, as kube-apiserver words it: its unknown fields, then
/// its duplicate fields.
fn problems(unknown: &[String], raw: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = unknown
        .iter()
        .map(|f| format!("unknown field {f:?}"))
        .collect();
    out.extend(
        duplicate_fields(raw)
            .into_iter()
            .map(|f| format!("duplicate field {f:?}")),
    );
    out
}

fn strict_error(problems: &[String]) -> String {
    format!("strict decoding error: {}", problems.join(", "))
}

/// Checks a create or update body of type `t` by the request's `fieldValidation`: the
/// warnings to send, or kube-apiserver's 400 for `Strict`. Unknown fields are removed.
pub fn check_object(
    t: &ResourceType,
    obj: &mut Value,
    raw: &[u8],
    query: &Query<'_>,
    method: &Method,
) -> Result<Vec<String>, Status> {
    let d = directive(query, method)?;
    let Some(schema) = schemas().for_type(t) else {
        return Ok(Vec::new());
    };
    let fields = problems(&unknown_fields(schema, obj, true, false), raw);
    match (d, fields.is_empty()) {
        (_, true) | (Directive::Ignore, _) => Ok(Vec::new()),
        (Directive::Warn, _) => Ok(fields),
        (Directive::Strict, _) => {
            let (kind, version) = match schemas().name_for(t) {
                Some(n) if n.ends_with(".Scale") => ("Scale", "v1"),
                _ => (t.kind.as_str(), t.version.as_str()),
            };
            Err(Status::bad_request(format!(
                "{kind} in version {version:?} cannot be handled as a {kind}: {}",
                strict_error(&fields)
            )))
        }
    }
}

/// Checks a patch of type `t` by the request's `fieldValidation`: the patch to apply (without
/// the unknown fields when there were some) and the warnings to send.
pub fn check_patch(
    t: &ResourceType,
    patch_type: PatchType,
    body: &[u8],
    query: &Query<'_>,
    method: &Method,
) -> Result<(Option<Vec<u8>>, Vec<String>), Status> {
    let d = directive(query, method)?;
    let Some(schema) = schemas().for_type(t) else {
        return Ok((None, Vec::new()));
    };
    // Malformed patches are the patch code's to report.
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return Ok((None, Vec::new()));
    };
    let (unknown, raw) = match patch_type {
        PatchType::Json => (json_patch_unknown_fields(schema, &mut v), &b""[..]),
        _ => (unknown_fields(schema, &mut v, true, true), body),
    };
    let fields = problems(&unknown, raw);
    if fields.is_empty() {
        return Ok((None, Vec::new()));
    }
    let stripped = if unknown.is_empty() {
        None
    } else {
        Some(serde_json::to_vec(&v).map_err(|e| Status::internal(e.to_string()))?)
    };
    match d {
        Directive::Ignore => Ok((stripped, Vec::new())),
        Directive::Warn => Ok((stripped, fields)),
        Directive::Strict => Err(Status::bad_request(strict_error(&fields))),
    }
}

/// Checks an apply patch (`config`, already parsed) of type `t`: apply configurations are
/// always strict, whatever `fieldValidation` says (the typed conversion of server-side apply
/// fails on a field the schema does not declare), worded as kube-apiserver words it.
/// Known difference: items of keyed lists are named by index (`[0]`), not by key
/// (`[name="web"]`).
pub fn check_apply(
    t: &ResourceType,
    config: &Value,
    ns: Option<&str>,
    name: &str,
) -> Result<(), Status> {
    let Some(schema) = schemas().for_type(t) else {
        return Ok(());
    };
    let mut v = config.clone();
    let unknown = unknown_fields(schema, &mut v, false, false);
    if unknown.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = unknown
        .iter()
        .map(|f| format!(".{f}: field not declared in schema"))
        .collect();
    let errors = match lines.as_slice() {
        [one] => one.clone(),
        many => format!("errors:\n  {}", many.join("\n  ")),
    };
    Err(Status::bad_request(format!(
        "failed to create typed patch object ({}/{name}; {}/{}, Kind={}): {errors}",
        ns.unwrap_or(""),
        t.group,
        t.version,
        t.kind
    )))
}

/// The unknown fields a JSON patch's `add` and `replace` operations write: an operation whose
/// path is not a field is removed, as are unknown fields within its value.
fn json_patch_unknown_fields(schema: &Value, ops: &mut Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(list) = ops.as_array_mut() else {
        return out;
    };
    list.retain_mut(|op| {
        if !matches!(op["op"].as_str(), Some("add" | "replace")) {
            return true;
        }
        let Some(pointer) = op["path"].as_str() else {
            return true;
        };
        let mut s = schema;
        let mut path = String::new();
        for seg in pointer.split('/').skip(1) {
            let seg = seg.replace("~1", "/").replace("~0", "~");
            let r = resolve(s);
            if r["x-kubernetes-preserve-unknown-fields"] == true {
                return true;
            }
            let next = if let Some(items) = r.get("items") {
                path.push_str(&format!("[{seg}]"));
                Some(items)
            } else {
                let props = r.get("properties").and_then(Value::as_object);
                let additional = r.get("additionalProperties").filter(|a| a.is_object());
                if props.is_none() && additional.is_none() {
                    return true; // free-form
                }
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(&seg);
                props.and_then(|p| p.get(&seg)).or(additional)
            };
            match next {
                Some(n) => s = n,
                None => {
                    out.push(path);
                    return false;
                }
            }
        }
        if let Some(value) = op.get_mut("value") {
            walk(s, value, &mut path, &mut out, true, false, 0);
        }
        true
    });
    out
}

/// Adds `Warning: 299 - "…"` headers, as kube-apiserver sends them.
pub fn with_warnings<B>(mut r: Response<B>, warnings: &[String]) -> Response<B> {
    for w in warnings {
        let text: String = w
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        let quoted = text.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = http::HeaderValue::from_str(&format!("299 - \"{quoted}\"")) {
            r.headers_mut().append(http::header::WARNING, v);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::resources::builtin;
    use serde_json::json;

    fn ty(resource: &str) -> &'static ResourceType {
        builtin().iter().find(|t| t.resource == resource).unwrap()
    }

    fn pod() -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"},
            "annotations": {"x": "y"}, "managedFields": [{"fieldsV1": {"f:metadata": {}}}]},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                "resources": {"limits": {"cpu": "1"}}, "ports": [{"containerPort": 80}]}]},
            "status": {"phase": "Running"}})
    }

    #[test]
    fn a_known_object_has_no_unknown_fields() {
        let s = schemas().for_type(ty("pods")).unwrap();
        let mut p = pod();
        assert!(unknown_fields(s, &mut p, true, false).is_empty());
        assert_eq!(p, pod());
        let d = schemas().for_type(ty("deployments")).unwrap();
        let mut dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                "template": {"metadata": {"labels": {"a": "b"}}, "spec": pod()["spec"].clone()}}});
        assert!(unknown_fields(d, &mut dep, false, false).is_empty());
    }

    #[test]
    fn unknown_fields_are_named_and_stripped() {
        let s = schemas().for_type(ty("pods")).unwrap();
        let mut p = pod();
        p["spec"]["foo"] = json!(1);
        p["spec"]["bar"] = json!({"x": 1});
        p["spec"]["containers"][0]["imagePullPolicyy"] = json!("Always");
        p["spec"]["containers"][0]["ports"][0]["nope"] = json!(1);
        p["top"] = json!(true);
        let fields = unknown_fields(s, &mut p, false, false);
        assert_eq!(
            fields,
            [
                "spec.bar",
                "spec.containers[0].imagePullPolicyy",
                "spec.containers[0].ports[0].nope",
                "spec.foo",
                "top"
            ]
        );
        assert_eq!(
            strict_error(&problems(&fields[..2], b"")),
            r#"strict decoding error: unknown field "spec.bar", unknown field "spec.containers[0].imagePullPolicyy""#
        );
        unknown_fields(s, &mut p, true, false);
        assert_eq!(p, pod());
    }

    #[test]
    fn duplicate_fields_are_found_by_path() {
        let raw = br#"{"metadata":{"name":"a","name":"b"},"spec":{"containers":[{"name":"c","image":"x","image":"y"}]},"spec":{}}"#;
        assert_eq!(
            duplicate_fields(raw),
            ["metadata.name", "spec.containers[0].image", "spec"]
        );
        assert!(duplicate_fields(br#"{"a":[1,{"b":2}],"c":{"b":1}}"#).is_empty());
        let mut v: Value = serde_json::from_slice(raw).unwrap();
        let e = check_object(
            ty("pods"),
            &mut v,
            raw,
            &Query::parse("fieldValidation=Strict"),
            &Method::POST,
        )
        .unwrap_err();
        assert!(
            e.message.ends_with(r#"strict decoding error: duplicate field "metadata.name", duplicate field "spec.containers[0].image", duplicate field "spec""#),
            "{}",
            e.message
        );
    }

    #[test]
    fn patches_skip_directives_and_deletions() {
        let s = schemas().for_type(ty("deployments")).unwrap();
        let mut patch = json!({"spec": {"replicas": 3, "paused": null, "bogus": null,
            "template": {"spec": {"$setElementOrder/containers": [{"name": "c"}],
                "containers": [{"name": "c", "$patch": "delete", "extra": 1}]}}}});
        assert_eq!(
            unknown_fields(s, &mut patch, true, true),
            ["spec.template.spec.containers[0].extra"]
        );
        assert!(patch["spec"]["template"]["spec"]["containers"][0]
            .get("extra")
            .is_none());
    }

    #[test]
    fn directives_and_messages() {
        let q = |s: &'static str| Query::parse(s);
        let t = ty("pods");
        let mut p = pod();
        p["spec"]["foo"] = json!(1);
        let e = check_object(
            t,
            &mut p.clone(),
            br#"{"spec":{"foo":1}}"#,
            &q("fieldValidation=Strict"),
            &Method::POST,
        )
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            r#"Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "spec.foo""#
        );
        let w = check_object(t, &mut p, b"", &q(""), &Method::POST).unwrap();
        assert_eq!(w, [r#"unknown field "spec.foo""#]);
        assert!(p["spec"].get("foo").is_none());
        let mut p2 = pod();
        p2["spec"]["foo"] = json!(1);
        assert!(
            check_object(t, &mut p2, b"", &q("fieldValidation=Ignore"), &Method::PUT)
                .unwrap()
                .is_empty()
        );
        assert!(p2["spec"].get("foo").is_none());
        let e = directive(&q("fieldValidation=Loose"), &Method::PATCH).unwrap_err();
        assert_eq!(e.code, 422);
        assert!(e.message.starts_with("PatchOptions.meta.k8s.io \"\" is invalid: fieldValidation: Unsupported value: \"Loose\""), "{}", e.message);
        let (body, w) = check_patch(
            t,
            PatchType::Strategic,
            br#"{"spec":{"foo":1,"activeDeadlineSeconds":5}}"#,
            &q("fieldValidation=Warn"),
            &Method::PATCH,
        )
        .unwrap();
        assert_eq!(body.unwrap(), br#"{"spec":{"activeDeadlineSeconds":5}}"#);
        assert_eq!(w.len(), 1);
        let e = check_patch(
            t,
            PatchType::Merge,
            br#"{"spec":{"foo":1}}"#,
            &q("fieldValidation=Strict"),
            &Method::PATCH,
        )
        .unwrap_err();
        assert_eq!(
            e.message,
            r#"strict decoding error: unknown field "spec.foo""#
        );
        let (body, w2) = check_patch(
            t,
            PatchType::Json,
            br#"[{"op":"add","path":"/spec/foo","value":1},{"op":"replace","path":"/spec/containers/0","value":{"name":"c","image":"x","bad":1}},{"op":"add","path":"/metadata/labels/a~1b","value":"c"}]"#,
            &q(""),
            &Method::PATCH,
        )
        .unwrap();
        assert_eq!(
            w2,
            [
                r#"unknown field "spec.foo""#,
                r#"unknown field "spec.containers[0].bad""#
            ]
        );
        let body: Value = serde_json::from_slice(&body.unwrap()).unwrap();
        assert_eq!(
            body,
            json!([{"op":"replace","path":"/spec/containers/0","value":{"name":"c","image":"x"}},
                {"op":"add","path":"/metadata/labels/a~1b","value":"c"}])
        );
        let r = with_warnings(Response::new(()), &w);
        assert_eq!(
            r.headers()["warning"],
            r#"299 - "unknown field \"spec.foo\"""#
        );
    }

    #[test]
    fn dry_run_values() {
        let q = |s: &'static str| Query::parse(s);
        assert!(!dry_run(&q(""), &Method::POST).unwrap());
        assert!(dry_run(&q("dryRun=All"), &Method::DELETE).unwrap());
        let e = dry_run(&q("dryRun=Some"), &Method::POST).unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            r#"CreateOptions.meta.k8s.io "" is invalid: dryRun: Unsupported value: []string{"Some"}: supported values: "All""#
        );
        assert!(delete_dry_run(br#"{"kind":"DeleteOptions","dryRun":["All"]}"#).unwrap());
        assert!(!delete_dry_run(b"").unwrap());
        assert!(!delete_dry_run(br#"{"propagationPolicy":"Background"}"#).unwrap());
        let e = delete_dry_run(br#"{"dryRun":["x"]}"#).unwrap_err();
        assert!(
            e.message.starts_with("DeleteOptions.meta.k8s.io"),
            "{}",
            e.message
        );
    }
}
