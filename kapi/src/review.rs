//! `SelfSubjectAccessReview` and `SelfSubjectRulesReview` requests, as `kubectl auth can-i`
//! sends them, and the answers.
//!
//! kubectl sends built-in kinds as protobuf (`application/vnd.kubernetes.protobuf`), so both
//! encodings are read: JSON, and kube's protobuf envelope (`k8s\0` + `runtime.Unknown` whose
//! `raw` is the review message). Only the few fields a review carries are decoded, with a small
//! wire-format walker; anything else in the message is skipped. Answers are always JSON (kubectl
//! accepts it).
//!
//! Field numbers (k8s.io/api/authorization/v1/generated.proto): `SelfSubjectAccessReview`
//! {1 metadata, 2 spec}; `SelfSubjectAccessReviewSpec` {1 resourceAttributes,
//! 2 nonResourceAttributes}; `ResourceAttributes` {1 namespace, 2 verb, 3 group, 4 version,
//! 5 resource, 6 subresource, 7 name}; `NonResourceAttributes` {1 path, 2 verb};
//! `SelfSubjectRulesReview` {1 metadata, 2 spec}; `SelfSubjectRulesReviewSpec` {1 namespace}.
//! `runtime.Unknown` {1 typeMeta {1 apiVersion, 2 kind}, 2 raw, 3 contentEncoding,
//! 4 contentType}.

use serde_json::{json, Value};

use crate::Status;

/// What a `SelfSubjectAccessReview` asks about.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessReview {
    /// Resource attributes (when `is_resource`).
    pub namespace: String,
    /// The verb (`get`, `create`, …; for non-resource requests the lower-case method).
    pub verb: String,
    /// API group.
    pub group: String,
    /// Version.
    pub version: String,
    /// Resource.
    pub resource: String,
    /// Subresource.
    pub subresource: String,
    /// Object name.
    pub name: String,
    /// Non-resource path (when not `is_resource`).
    pub path: String,
    /// Resource attributes were given (else non-resource ones).
    pub is_resource: bool,
}

/// A review request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Review {
    /// `SelfSubjectAccessReview`.
    Access(AccessReview),
    /// `SelfSubjectRulesReview` for a namespace.
    Rules {
        /// The namespace.
        namespace: String,
    },
}

const MAGIC: &[u8] = b"k8s\0";

/// Reads a review body of `kind` (`SelfSubjectAccessReview` or `SelfSubjectRulesReview`)
/// sent as `content_type`. Errors are the `Status` kube-apiserver would answer (400, 415, 422).
pub fn parse(kind: &str, content_type: &str, body: &[u8]) -> Result<Review, Status> {
    let media = content_type.split(';').next().unwrap_or("").trim();
    let review = match media {
        "application/vnd.kubernetes.protobuf" => from_protobuf(kind, body)?,
        "application/json" | "" | "*/*" => from_json(kind, body)?,
        other => {
            return Err(Status::unsupported_media_type(
                other,
                &["application/json", "application/vnd.kubernetes.protobuf"],
            ))
        }
    };
    if let Review::Access(a) = &review {
        if a.verb.is_empty() && (a.is_resource || !a.path.is_empty()) {
            return Err(Status::invalid(
                "authorization.k8s.io",
                kind,
                "",
                "spec.resourceAttributes.verb",
                "Required value",
            ));
        }
    }
    Ok(review)
}

fn from_json(kind: &str, body: &[u8]) -> Result<Review, Status> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        Status::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })?;
    let k = v.get("kind").and_then(Value::as_str).unwrap_or(kind);
    if k != kind {
        return Err(Status::bad_request(format!(
            "the body is a {k}, not a {kind}"
        )));
    }
    let spec = &v["spec"];
    let s = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
    if kind == "SelfSubjectRulesReview" {
        return Ok(Review::Rules {
            namespace: s(spec, "namespace"),
        });
    }
    if let Some(r) = spec.get("resourceAttributes").filter(|r| r.is_object()) {
        return Ok(Review::Access(AccessReview {
            namespace: s(r, "namespace"),
            verb: s(r, "verb"),
            group: s(r, "group"),
            version: s(r, "version"),
            resource: s(r, "resource"),
            subresource: s(r, "subresource"),
            name: s(r, "name"),
            path: String::new(),
            is_resource: true,
        }));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|r| r.is_object()) {
        return Ok(Review::Access(AccessReview {
            path: s(n, "path"),
            verb: s(n, "verb"),
            ..AccessReview::default()
        }));
    }
    Err(neither(kind))
}

fn neither(kind: &str) -> Status {
    Status::invalid(
        "authorization.k8s.io",
        kind,
        "",
        "spec.resourceAttributes",
        "Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified",
    )
}

/// One protobuf field: number and, for length-delimited fields, the bytes.
fn fields(mut b: &[u8]) -> Result<Vec<(u64, &[u8])>, String> {
    fn varint(b: &mut &[u8]) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err("varint longer than 10 bytes".into())
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                varint(&mut b)?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or("truncated fixed field")?;
            }
            2 => {
                let len = usize::try_from(varint(&mut b)?).map_err(|_| "length too large")?;
                let (v, rest) = (b.get(..len).ok_or("truncated field")?, &b[len..]);
                out.push((number, v));
                b = rest;
            }
            w => return Err(format!("unsupported wire type {w}")),
        }
    }
    Ok(out)
}

fn field<'a>(fs: &[(u64, &'a [u8])], n: u64) -> Option<&'a [u8]> {
    fs.iter().rev().find(|(k, _)| *k == n).map(|(_, v)| *v)
}

fn text(fs: &[(u64, &[u8])], n: u64) -> Result<String, String> {
    match field(fs, n) {
        Some(v) => String::from_utf8(v.to_vec()).map_err(|_| format!("field {n} is not UTF-8")),
        None => Ok(String::new()),
    }
}

fn from_protobuf(kind: &str, body: &[u8]) -> Result<Review, Status> {
    let bad = |e: String| {
        Status::bad_request(format!(
            "the body of the request could not be decoded as protobuf: {e}"
        ))
    };
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("missing the k8s protobuf prefix".into()))?;
    let envelope = fields(unknown).map_err(bad)?;
    if let Some(tm) = field(&envelope, 1) {
        let tm = fields(tm).map_err(bad)?;
        let k = text(&tm, 2).map_err(bad)?;
        if !k.is_empty() && k != kind {
            return Err(Status::bad_request(format!(
                "the body is a {k}, not a {kind}"
            )));
        }
    }
    let raw = fields(field(&envelope, 2).unwrap_or_default()).map_err(bad)?;
    let spec = fields(field(&raw, 2).unwrap_or_default()).map_err(bad)?;
    if kind == "SelfSubjectRulesReview" {
        return Ok(Review::Rules {
            namespace: text(&spec, 1).map_err(bad)?,
        });
    }
    if let Some(r) = field(&spec, 1) {
        let r = fields(r).map_err(bad)?;
        let t = |n| text(&r, n).map_err(bad);
        return Ok(Review::Access(AccessReview {
            namespace: t(1)?,
            verb: t(2)?,
            group: t(3)?,
            version: t(4)?,
            resource: t(5)?,
            subresource: t(6)?,
            name: t(7)?,
            path: String::new(),
            is_resource: true,
        }));
    }
    if let Some(n) = field(&spec, 2) {
        let n = fields(n).map_err(bad)?;
        return Ok(Review::Access(AccessReview {
            path: text(&n, 1).map_err(bad)?,
            verb: text(&n, 2).map_err(bad)?,
            ..AccessReview::default()
        }));
    }
    Err(neither(kind))
}

/// The answered `SelfSubjectAccessReview` (JSON), echoing the spec as kube-apiserver does.
pub fn access_answer(r: &AccessReview, allowed: bool, reason: &str) -> Value {
    let spec = if r.is_resource {
        json!({"resourceAttributes": {
            "namespace": r.namespace, "verb": r.verb, "group": r.group, "version": r.version,
            "resource": r.resource, "subresource": r.subresource, "name": r.name,
        }})
    } else {
        json!({"nonResourceAttributes": {"path": r.path, "verb": r.verb}})
    };
    let mut status = json!({ "allowed": allowed });
    if !allowed {
        status["denied"] = json!(false);
    }
    if !reason.is_empty() {
        status["reason"] = json!(reason);
    }
    json!({
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {},
        "spec": spec,
        "status": status,
    })
}

/// The answered `SelfSubjectRulesReview` (JSON): `resource_rules` and `non_resource_rules` are
/// already in the API's shape (`{verbs, apiGroups, resources, resourceNames}` and
/// `{verbs, nonResourceURLs}`).
pub fn rules_answer(namespace: &str, resource_rules: Value, non_resource_rules: Value) -> Value {
    json!({
        "kind": "SelfSubjectRulesReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {},
        "spec": {"namespace": namespace},
        "status": {
            "resourceRules": resource_rules,
            "nonResourceRules": non_resource_rules,
            "incomplete": false,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(n: u64, v: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(n << 3 | 2).unwrap_or(0)];
        let mut len = v.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
        out.extend_from_slice(v);
        out
    }

    /// The bytes kubectl sends for `kubectl auth can-i delete pods/exec -n team-a`.
    fn ssar_protobuf(kind: &str) -> Vec<u8> {
        let attrs = [
            ld(1, b"team-a"),
            ld(2, b"delete"),
            ld(3, b""),
            ld(5, b"pods"),
            ld(6, b"exec"),
        ]
        .concat();
        let spec = ld(1, &attrs);
        let raw = [ld(1, b""), ld(2, &spec)].concat();
        let tm = [ld(1, b"authorization.k8s.io/v1"), ld(2, kind.as_bytes())].concat();
        // A varint field (wire type 0) that must be skipped.
        let envelope = [ld(1, &tm), ld(2, &raw), vec![0x18, 0x96, 0x01]].concat();
        [MAGIC.to_vec(), envelope].concat()
    }

    #[test]
    fn protobuf_and_json_read_the_same() {
        let p = parse(
            "SelfSubjectAccessReview",
            "application/vnd.kubernetes.protobuf",
            &ssar_protobuf("SelfSubjectAccessReview"),
        )
        .unwrap();
        let j = parse(
            "SelfSubjectAccessReview",
            "application/json",
            br#"{"kind":"SelfSubjectAccessReview","apiVersion":"authorization.k8s.io/v1",
                "spec":{"resourceAttributes":{"namespace":"team-a","verb":"delete","resource":"pods","subresource":"exec"}}}"#,
        )
        .unwrap();
        assert_eq!(p, j);
        let Review::Access(a) = p else { panic!() };
        assert_eq!(
            (a.verb.as_str(), a.resource.as_str(), a.subresource.as_str()),
            ("delete", "pods", "exec")
        );
        let n = parse(
            "SelfSubjectAccessReview",
            "application/json",
            br#"{"spec":{"nonResourceAttributes":{"path":"/version","verb":"get"}}}"#,
        )
        .unwrap();
        assert_eq!(
            n,
            Review::Access(AccessReview {
                path: "/version".into(),
                verb: "get".into(),
                ..AccessReview::default()
            })
        );
    }

    #[test]
    fn bad_bodies_are_kube_errors() {
        let k = "SelfSubjectAccessReview";
        let pb = "application/vnd.kubernetes.protobuf";
        assert_eq!(parse(k, pb, b"nope").unwrap_err().code, 400);
        let mut truncated = ssar_protobuf(k);
        truncated.truncate(truncated.len() - 6);
        assert_eq!(parse(k, pb, &truncated).unwrap_err().code, 400);
        assert_eq!(
            parse(k, pb, &ssar_protobuf("SelfSubjectRulesReview"))
                .unwrap_err()
                .code,
            400,
            "a different kind"
        );
        assert_eq!(parse(k, "application/json", b"{").unwrap_err().code, 400);
        assert_eq!(
            parse(k, "application/json", b"{\"spec\":{}}")
                .unwrap_err()
                .code,
            422
        );
        assert_eq!(parse(k, "text/plain", b"x").unwrap_err().code, 415);
        let rules = parse(
            "SelfSubjectRulesReview",
            "application/json",
            br#"{"spec":{"namespace":"a"}}"#,
        )
        .unwrap();
        assert_eq!(
            rules,
            Review::Rules {
                namespace: "a".into()
            }
        );
    }

    #[test]
    fn answers_echo_the_question() {
        let a = AccessReview {
            verb: "get".into(),
            resource: "pods".into(),
            is_resource: true,
            ..AccessReview::default()
        };
        let v = access_answer(&a, false, "no grant");
        assert_eq!(v["status"]["allowed"], false);
        assert_eq!(v["status"]["reason"], "no grant");
        assert_eq!(v["spec"]["resourceAttributes"]["resource"], "pods");
    }
}
