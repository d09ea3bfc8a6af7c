//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`), read and written as
//! the simulator's JSON.
//!
//! kubectl sends the built-in kinds it creates (`kubectl create configmap|secret|namespace|
//! deployment|service …`) as protobuf. A body is the four bytes `k8s\0`, then a
//! `runtime.Unknown`: `typeMeta` (apiVersion, kind), `raw` (the typed message), `contentEncoding`
//! and `contentType`. The typed message is read through the message descriptors of
//! `proto/k8s.fds` (compiled from the `generated.proto` files of k8s.io/api and
//! k8s.io/apimachinery, see `proto/regen.sh`) with `prost-reflect`, and turned into the JSON a
//! Go client would have sent for the same object:
//!
//! * field names are the proto names (kube's `generated.proto` names fields by their JSON tag);
//! * `IntOrString` is a number or a string, `Quantity` a string, `Time` RFC 3339 in seconds
//!   (the zero time is `null`), `MicroTime` RFC 3339 in microseconds, `Duration` Go's form
//!   (`1h2m3s`), `RawExtension` and `FieldsV1` the JSON they carry, `bytes` base64;
//! * `Verbs` and `ExtraValue` (slices wrapped in a message) are arrays, and the embedded
//!   (`json:",inline"`) structs in [`INLINE`] (`Probe.handler`, `Volume.volumeSource`, …) are
//!   merged into their parent;
//! * as `encoding/json` with kube's `omitempty` tags: empty strings, zero numbers, `false`,
//!   empty lists and maps are left out, nested structs are kept (`"resources": {}`), except for
//!   the pointer fields in [`KEEP_ZERO`] whose zero means something (`replicas: 0`).
//!
//! Responses go the other way ([`encode_object`]): the stored JSON into the typed message and
//! the envelope, for a client that accepts protobuf and not JSON ([`wants_protobuf`]).
//!
//! Why descriptors and not the `k8s-pb` crate's structs: those are plain `prost` messages with
//! neither serde nor reflection, so JSON would need a hand-written conversion per type (and
//! k8s-pb 0.9 needs Rust 1.88, above the workspace's 1.85); one walker over descriptors covers
//! every kind, including lists. Limits: the protobuf wire cannot tell a pointer field set to
//! zero from a non-pointer one left empty, so a zero is kept only for the fields in
//! [`KEEP_ZERO`]; a non-`omitempty` empty scalar (rare, and usually invalid) is dropped.
//!
//! Decoding never panics on bad input: a bad envelope or message is a 400, a kind without a
//! message descriptor a 415, as kube-apiserver answers.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use kubehub_kapi::accept::Wants;
use kubehub_kapi::Status;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value as PbValue,
};
use serde_json::{Map, Value};

/// The media type of Kubernetes' protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The envelope's first four bytes.
const MAGIC: &[u8; 4] = b"k8s\0";

/// The message descriptors (see the module documentation and `proto/regen.sh`).
static DESCRIPTORS: &[u8] = include_bytes!("../proto/k8s.fds");

/// Pointer fields (`*int32`, `*bool`, …) whose zero value is meaningful and is kept when read.
/// Every other zero scalar is left out, as `omitempty` does for kube's non-pointer fields.
pub const KEEP_ZERO: &[&str] = &[
    "replicas",
    "immutable",
    "automountServiceAccountToken",
    "optional",
    "revisionHistoryLimit",
    "progressDeadlineSeconds",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "enableServiceLinks",
    "shareProcessNamespace",
    "setHostnameAsFQDN",
    "hostUsers",
    "allocateLoadBalancerNodePorts",
    "defaultMode",
    "mode",
    "partition",
];

/// Embedded Go structs (`json:",inline"`): their fields are the outer object's in JSON.
pub const INLINE: &[&str] = &[
    "api.core.v1.Probe.handler",
    "api.core.v1.Volume.volumeSource",
    "api.core.v1.PersistentVolumeSpec.persistentVolumeSource",
    "api.core.v1.EphemeralContainer.ephemeralContainerCommon",
];

const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const VERBS: &str = "apimachinery.pkg.apis.meta.v1.Verbs";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const UNKNOWN: &str = "apimachinery.pkg.runtime.Unknown";

/// Why a protobuf body could not be read or an object could not be written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not an envelope, or an envelope that does not decode.
    #[error("{0}")]
    Envelope(String),
    /// An envelope whose apiVersion/kind has no message here.
    #[error("no protobuf message for {api_version}, Kind={kind}")]
    UnknownKind {
        /// The envelope's apiVersion.
        api_version: String,
        /// The envelope's kind.
        kind: String,
    },
    /// The typed message does not decode, or holds something JSON cannot say.
    #[error("{0}")]
    Message(String),
    /// JSON that does not fit the typed message.
    #[error("{0}")]
    Encode(String),
    /// The embedded descriptors do not load (a build problem, never the client's).
    #[error("the protobuf descriptors do not load: {0}")]
    Descriptors(String),
}

impl Error {
    /// The kube-apiserver error for a request body that failed with `self`.
    pub fn to_status(&self, content_type: &str) -> Status {
        match self {
            Error::UnknownKind { .. } => {
                Status::unsupported_media_type(content_type, &["application/json"])
            }
            Error::Envelope(_) | Error::Message(_) | Error::Encode(_) => Status::bad_request(
                format!("the body of the request could not be decoded as protobuf: {self}"),
            ),
            Error::Descriptors(_) => Status::internal(self.to_string()),
        }
    }
}

fn pool() -> Result<&'static DescriptorPool, Error> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(DESCRIPTORS).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::Descriptors(e.clone()))
}

fn message(name: &str) -> Result<MessageDescriptor, Error> {
    pool()?
        .get_message_by_name(name)
        .ok_or_else(|| Error::Descriptors(format!("no message {name}")))
}

/// The message of `kind` in `apiVersion` (`v1` → `api.core.v1`, `apps/v1` → `api.apps.v1`,
/// `authorization.k8s.io/v1` → `api.authorization.v1`).
pub fn descriptor(api_version: &str, kind: &str) -> Result<MessageDescriptor, Error> {
    let unknown = || Error::UnknownKind {
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
    };
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.split('.').next().unwrap_or(g), v),
        None => ("core", api_version),
    };
    let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok(group) || !ok(version) || !ok(kind) {
        return Err(unknown());
    }
    pool()?
        .get_message_by_name(&format!("api.{group}.{version}.{kind}"))
        .ok_or_else(unknown)
}

/// Whether `accept` asks for protobuf and nothing JSON: only then is an object answered as
/// protobuf (`application/vnd.kubernetes.protobuf, */*`, as kubectl sends, stays JSON).
pub fn wants_protobuf(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let mut protobuf = false;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let plain = parts.all(|p| !p.starts_with("as="));
        match media.as_str() {
            "application/json" | "application/*" | "*/*" => return false,
            MEDIA_TYPE if plain => protobuf = true,
            _ => {}
        }
    }
    protobuf
}

/// Content negotiation with protobuf: `None` when the answer is protobuf ([`wants_protobuf`]),
/// else what [`kubehub_kapi::accept::negotiate`] chooses.
pub fn negotiate(accept: Option<&str>) -> Result<Option<Wants>, Status> {
    if wants_protobuf(accept) {
        return Ok(None);
    }
    kubehub_kapi::accept::negotiate(accept).map(Some)
}

/// A JSON response body (an object or a list) as kube's protobuf envelope; a kind without a
/// message here is 406, as kube-apiserver answers for a kind it cannot serve as protobuf.
pub fn encode_body(json: &[u8]) -> Result<Vec<u8>, Status> {
    let v: Value = serde_json::from_slice(json).map_err(|e| Status::internal(e.to_string()))?;
    encode_object(&v).map_err(|e| match e {
        Error::UnknownKind { .. } => {
            Status::not_acceptable(&format!("{}, {MEDIA_TYPE}", kubehub_kapi::accept::PRODUCES))
        }
        e => Status::internal(format!("encoding the object as protobuf: {e}")),
    })
}

/// Reads a request body in kube's protobuf envelope into the JSON object a JSON client would
/// have sent (with `apiVersion` and `kind`).
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, Status> {
    decode(body).map_err(|e| e.to_status(content_type))
}

/// [`decode_body`], with the typed error.
pub fn decode(body: &[u8]) -> Result<Value, Error> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| Error::Envelope("missing the k8s protobuf prefix".into()))?;
    let unknown = DynamicMessage::decode(message(UNKNOWN)?, raw)
        .map_err(|e| Error::Envelope(format!("the envelope does not decode: {e}")))?;
    let text = |m: &DynamicMessage, f: &str| -> String {
        m.get_field_by_name(f)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let type_meta = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(PbValue::Message(m)) => m.clone(),
        _ => return Err(Error::Envelope("the envelope has no typeMeta".into())),
    };
    let api_version = text(&type_meta, "apiVersion");
    let kind = text(&type_meta, "kind");
    let encoding = text(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(Error::Envelope(format!(
            "unsupported contentEncoding {encoding:?}"
        )));
    }
    let payload = match unknown.get_field_by_name("raw").as_deref() {
        Some(PbValue::Bytes(b)) => b.clone(),
        _ => bytes::Bytes::new(),
    };
    let desc = descriptor(&api_version, &kind)?;
    let msg = DynamicMessage::decode(desc, payload)
        .map_err(|e| Error::Message(format!("{api_version}, Kind={kind}: {e}")))?;
    let mut out = Map::new();
    out.insert("kind".into(), Value::String(kind));
    out.insert("apiVersion".into(), Value::String(api_version));
    if let Value::Object(fields) = to_json(&msg)? {
        out.extend(fields);
    }
    Ok(Value::Object(out))
}

/// Writes a JSON object (with `apiVersion` and `kind`; a list too) as kube's protobuf
/// envelope.
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, Error> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("");
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    let msg = from_json(&descriptor(api_version, kind)?, obj)?;
    let udesc = message(UNKNOWN)?;
    let tdesc = match udesc.get_field_by_name("typeMeta").map(|f| f.kind()) {
        Some(Kind::Message(m)) => m,
        _ => return Err(Error::Descriptors("Unknown without typeMeta".into())),
    };
    let mut type_meta = DynamicMessage::new(tdesc);
    set(
        &mut type_meta,
        "apiVersion",
        PbValue::String(api_version.into()),
    )?;
    set(&mut type_meta, "kind", PbValue::String(kind.into()))?;
    let mut unknown = DynamicMessage::new(udesc);
    set(&mut unknown, "typeMeta", PbValue::Message(type_meta))?;
    set(
        &mut unknown,
        "raw",
        PbValue::Bytes(msg.encode_to_vec().into()),
    )?;
    set(
        &mut unknown,
        "contentEncoding",
        PbValue::String(String::new()),
    )?;
    set(&mut unknown, "contentType", PbValue::String(String::new()))?;
    let mut out = MAGIC.to_vec();
    unknown
        .encode(&mut out)
        .map_err(|e| Error::Encode(e.to_string()))?;
    Ok(out)
}

fn set(m: &mut DynamicMessage, name: &str, v: PbValue) -> Result<(), Error> {
    m.try_set_field_by_name(name, v)
        .map_err(|e| Error::Encode(format!("{name}: {e}")))
}

// ---------------------------------------------------------------- protobuf → JSON

fn to_json(msg: &DynamicMessage) -> Result<Value, Error> {
    let desc = msg.descriptor();
    let field = |name: &str| msg.get_field_by_name(name);
    let int = |name: &str| field(name).and_then(|v| integer(&v)).unwrap_or(0);
    let bytes = |name: &str| match field(name).as_deref() {
        Some(PbValue::Bytes(b)) => b.clone(),
        _ => bytes::Bytes::new(),
    };
    match desc.full_name() {
        TIME => {
            let (s, n) = (int("seconds"), int("nanos"));
            if s == 0 && n == 0 {
                return Ok(Value::Null);
            }
            let t = system_time(s, 0)?;
            return Ok(Value::String(
                humantime::format_rfc3339_seconds(t).to_string(),
            ));
        }
        MICRO_TIME => {
            let (s, n) = (int("seconds"), int("nanos"));
            if s == 0 && n == 0 {
                return Ok(Value::Null);
            }
            let t = system_time(s, n)?;
            return Ok(Value::String(
                humantime::format_rfc3339_micros(t).to_string(),
            ));
        }
        DURATION => return Ok(Value::String(go_duration(int("duration")))),
        INT_OR_STRING => {
            return Ok(if int("type") == 1 {
                Value::String(
                    field("strVal")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                )
            } else {
                Value::from(int("intVal"))
            });
        }
        QUANTITY => {
            return Ok(Value::String(
                field("string")
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            ))
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let raw = bytes(if desc.full_name() == FIELDS_V1 {
                "Raw"
            } else {
                "raw"
            });
            if raw.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&raw)
                .map_err(|e| Error::Message(format!("{}: not JSON: {e}", desc.name())));
        }
        name if name == VERBS || name.ends_with(".ExtraValue") => {
            return match field("items").as_deref() {
                Some(v) => field_json(v),
                None => Ok(Value::Array(Vec::new())),
            };
        }
        _ => {}
    }
    let mut out = Map::new();
    for f in desc.fields() {
        if !msg.has_field(&f) {
            continue;
        }
        let v = msg.get_field(&f);
        let keep_zero = KEEP_ZERO.contains(&f.name());
        let empty = match v.as_ref() {
            PbValue::Bool(b) => !b,
            PbValue::I32(n) => *n == 0,
            PbValue::I64(n) => *n == 0,
            PbValue::U32(n) => *n == 0,
            PbValue::U64(n) => *n == 0,
            PbValue::F32(n) => *n == 0.0,
            PbValue::F64(n) => *n == 0.0,
            PbValue::EnumNumber(n) => *n == 0,
            PbValue::String(s) => s.is_empty(),
            PbValue::Bytes(b) => b.is_empty(),
            PbValue::List(l) => l.is_empty(),
            PbValue::Map(m) => m.is_empty(),
            PbValue::Message(_) => false,
        };
        let scalar = !matches!(
            v.as_ref(),
            PbValue::List(_) | PbValue::Map(_) | PbValue::Message(_)
        );
        if empty && !(keep_zero && scalar) {
            continue;
        }
        let v = field_json(&v)?;
        match v {
            Value::Object(inner) if INLINE.contains(&f.full_name()) => out.extend(inner),
            v => {
                out.insert(f.name().to_owned(), v);
            }
        }
    }
    Ok(Value::Object(out))
}

fn integer(v: &PbValue) -> Option<i64> {
    match v {
        PbValue::I32(n) => Some(i64::from(*n)),
        PbValue::I64(n) => Some(*n),
        PbValue::U32(n) => Some(i64::from(*n)),
        PbValue::U64(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

fn desc_field(desc: &MessageDescriptor, name: &str) -> Result<FieldDescriptor, Error> {
    desc.get_field_by_name(name)
        .ok_or_else(|| Error::Descriptors(format!("{} has no field {name}", desc.full_name())))
}

fn field_json(v: &PbValue) -> Result<Value, Error> {
    Ok(match v {
        PbValue::List(items) => Value::Array(
            items
                .iter()
                .map(scalar_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        PbValue::Map(m) => {
            let mut entries: Vec<(String, Value)> = m
                .iter()
                .map(|(k, v)| Ok((map_key(k), scalar_json(v)?)))
                .collect::<Result<_, Error>>()?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().collect())
        }
        other => scalar_json(other)?,
    })
}

fn map_key(k: &MapKey) -> String {
    match k {
        MapKey::String(s) => s.clone(),
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(n) => n.to_string(),
        MapKey::I64(n) => n.to_string(),
        MapKey::U32(n) => n.to_string(),
        MapKey::U64(n) => n.to_string(),
    }
}

fn scalar_json(v: &PbValue) -> Result<Value, Error> {
    Ok(match v {
        PbValue::Bool(b) => Value::Bool(*b),
        PbValue::I32(n) => Value::from(*n),
        PbValue::I64(n) => Value::from(*n),
        PbValue::U32(n) => Value::from(*n),
        PbValue::U64(n) => Value::from(*n),
        PbValue::F32(n) => {
            serde_json::Number::from_f64(f64::from(*n)).map_or(Value::Null, Value::Number)
        }
        PbValue::F64(n) => serde_json::Number::from_f64(*n).map_or(Value::Null, Value::Number),
        PbValue::EnumNumber(n) => Value::from(*n),
        PbValue::String(s) => Value::String(s.clone()),
        PbValue::Bytes(b) => Value::String(base64::engine::general_purpose::STANDARD.encode(b)),
        PbValue::Message(m) => to_json(m)?,
        PbValue::List(_) | PbValue::Map(_) => {
            return Err(Error::Message("a list or map inside a list or map".into()))
        }
    })
}

/// Largest second RFC 3339 can say (9999-12-31T23:59:59Z).
const MAX_SECONDS: i64 = 253_402_300_799;

fn system_time(seconds: i64, nanos: i64) -> Result<SystemTime, Error> {
    if !(0..=MAX_SECONDS).contains(&seconds) || !(0..1_000_000_000).contains(&nanos) {
        return Err(Error::Message(format!(
            "time out of range: {seconds}s {nanos}ns"
        )));
    }
    let secs = u64::try_from(seconds).map_err(|e| Error::Message(e.to_string()))?;
    let nanos = u32::try_from(nanos).map_err(|e| Error::Message(e.to_string()))?;
    Ok(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// Go's `time.Duration.String()` for whole and fractional seconds (`1h2m3s`, `1.5s`, `0s`).
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    if ns < 1_000_000_000 {
        return match ns {
            n if n < 1_000 => format!("{sign}{n}ns"),
            n if n < 1_000_000 => format!("{sign}{}µs", trim_frac(n, 1_000)),
            n => format!("{sign}{}ms", trim_frac(n, 1_000_000)),
        };
    }
    let (h, rest) = (ns / 3_600_000_000_000, ns % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let s = trim_frac(rest, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn trim_frac(n: u64, unit: u64) -> String {
    let (whole, frac) = (n / unit, n % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

// ---------------------------------------------------------------- JSON → protobuf

fn from_json(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, Error> {
    let mut msg = DynamicMessage::new(desc.clone());
    let what = || desc.name().to_owned();
    match desc.full_name() {
        TIME | MICRO_TIME => {
            let s = v
                .as_str()
                .ok_or_else(|| Error::Encode(format!("{}: not a string", what())))?;
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|e| Error::Encode(format!("{}: {s:?}: {e}", what())))?;
            let d = t
                .duration_since(UNIX_EPOCH)
                .map_err(|e| Error::Encode(e.to_string()))?;
            let secs = i64::try_from(d.as_secs()).map_err(|e| Error::Encode(e.to_string()))?;
            set(&mut msg, "seconds", PbValue::I64(secs))?;
            let nanos = if desc.full_name() == TIME {
                0
            } else {
                d.subsec_micros() * 1_000
            };
            let nanos = i32::try_from(nanos).map_err(|e| Error::Encode(e.to_string()))?;
            set(&mut msg, "nanos", PbValue::I32(nanos))?;
        }
        DURATION => {
            return Err(Error::Encode("Duration is not written as protobuf".into()));
        }
        INT_OR_STRING => match v {
            Value::Number(n) => {
                let n = n
                    .as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| Error::Encode(format!("IntOrString: {n} is not an int32")))?;
                set(&mut msg, "type", PbValue::I64(0))?;
                set(&mut msg, "intVal", PbValue::I32(n))?;
            }
            Value::String(s) => {
                set(&mut msg, "type", PbValue::I64(1))?;
                set(&mut msg, "strVal", PbValue::String(s.clone()))?;
            }
            _ => {
                return Err(Error::Encode(
                    "IntOrString: neither a number nor a string".into(),
                ))
            }
        },
        QUANTITY => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(Error::Encode("Quantity: not a string".into())),
            };
            set(&mut msg, "string", PbValue::String(s))?;
        }
        RAW_EXTENSION | FIELDS_V1 => {
            let raw = serde_json::to_vec(v).map_err(|e| Error::Encode(e.to_string()))?;
            let name = if desc.full_name() == FIELDS_V1 {
                "Raw"
            } else {
                "raw"
            };
            set(&mut msg, name, PbValue::Bytes(raw.into()))?;
        }
        name if name == VERBS || name.ends_with(".ExtraValue") => {
            let f = desc_field(desc, "items")?;
            let items = value_for(&f, v)?;
            msg.try_set_field(&f, items)
                .map_err(|e| Error::Encode(format!("{}: {e}", what())))?;
        }
        _ => {
            let obj = v
                .as_object()
                .ok_or_else(|| Error::Encode(format!("{}: not an object", what())))?;
            for f in desc.fields() {
                if INLINE.contains(&f.full_name()) {
                    if let Kind::Message(m) = f.kind() {
                        let inner = PbValue::Message(from_json(&m, v)?);
                        msg.try_set_field(&f, inner)
                            .map_err(|e| Error::Encode(format!("{}: {e}", f.full_name())))?;
                    }
                }
            }
            for (k, fv) in obj {
                let Some(f) = desc.get_field_by_name(k) else {
                    continue; // apiVersion, kind (in the envelope), fields kube drops
                };
                if fv.is_null() {
                    // A Go `metav1.Time` (not a pointer) is `null` when zero, and is still sent.
                    if let Kind::Message(m) = f.kind() {
                        if matches!(m.full_name(), TIME | MICRO_TIME) && !f.is_list() {
                            msg.try_set_field(&f, PbValue::Message(DynamicMessage::new(m)))
                                .map_err(|e| Error::Encode(format!("{}.{k}: {e}", what())))?;
                        }
                    }
                    continue;
                }
                let pv = value_for(&f, fv)?;
                msg.try_set_field(&f, pv)
                    .map_err(|e| Error::Encode(format!("{}.{k}: {e}", what())))?;
            }
        }
    }
    Ok(msg)
}

/// The protobuf value of field `f` from JSON `v`.
fn value_for(f: &FieldDescriptor, v: &Value) -> Result<PbValue, Error> {
    let at = || f.full_name().to_owned();
    if f.is_map() {
        let Kind::Message(entry) = f.kind() else {
            return Err(Error::Descriptors(format!("{}: map without entry", at())));
        };
        let vf = entry.map_entry_value_field();
        let obj = v
            .as_object()
            .ok_or_else(|| Error::Encode(format!("{}: not an object", at())))?;
        let mut m = HashMap::with_capacity(obj.len());
        for (k, ev) in obj {
            m.insert(MapKey::String(k.clone()), single(&vf, &vf.kind(), ev)?);
        }
        return Ok(PbValue::Map(m));
    }
    if f.is_list() {
        let arr = v
            .as_array()
            .ok_or_else(|| Error::Encode(format!("{}: not an array", at())))?;
        let kind = f.kind();
        return Ok(PbValue::List(
            arr.iter()
                .map(|e| single(f, &kind, e))
                .collect::<Result<_, _>>()?,
        ));
    }
    single(f, &f.kind(), v)
}

fn single(f: &FieldDescriptor, kind: &Kind, v: &Value) -> Result<PbValue, Error> {
    let bad = |what: &str| Error::Encode(format!("{}: {what}: {v}", f.full_name()));
    let int = || v.as_i64().ok_or_else(|| bad("not an integer"));
    let uint = || v.as_u64().ok_or_else(|| bad("not an unsigned integer"));
    Ok(match kind {
        Kind::Bool => PbValue::Bool(v.as_bool().ok_or_else(|| bad("not a boolean"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            PbValue::I32(i32::try_from(int()?).map_err(|_| bad("out of range"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PbValue::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => {
            PbValue::U32(u32::try_from(uint()?).map_err(|_| bad("out of range"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => PbValue::U64(uint()?),
        Kind::Float => PbValue::F32(v.as_f64().ok_or_else(|| bad("not a number"))? as f32),
        Kind::Double => PbValue::F64(v.as_f64().ok_or_else(|| bad("not a number"))?),
        Kind::String => PbValue::String(v.as_str().ok_or_else(|| bad("not a string"))?.to_owned()),
        Kind::Bytes => {
            let s = v.as_str().ok_or_else(|| bad("not a base64 string"))?;
            let b = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| bad("not base64"))?;
            PbValue::Bytes(b.into())
        }
        Kind::Enum(_) => {
            PbValue::EnumNumber(i32::try_from(int()?).map_err(|_| bad("out of range"))?)
        }
        Kind::Message(m) => PbValue::Message(from_json(m, v)?),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    fn round_trip(obj: Value) {
        let pb = encode_object(&obj).unwrap();
        assert_eq!(&pb[..4], MAGIC);
        let back = decode(&pb).unwrap();
        assert_eq!(back, obj, "\n{back:#}\n!=\n{obj:#}");
        // What the server answers is what it reads.
        assert_eq!(
            encode_body(&serde_json::to_vec(&obj).unwrap())
                .unwrap()
                .len(),
            pb.len()
        );
    }

    fn metadata(name: &str, ns: Option<&str>) -> Value {
        let mut m = json!({
            "name": name,
            "uid": "5f0e3a8c-0000-4000-8000-000000000001",
            "resourceVersion": "42",
            "generation": 3,
            "creationTimestamp": "2025-01-02T03:04:05Z",
            "labels": {"app": name, "tier": "web"},
            "annotations": {"note": "a \"quoted\" value"},
            "managedFields": [{
                "manager": "kubectl-create",
                "operation": "Update",
                "apiVersion": "v1",
                "time": "2025-01-02T03:04:05Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:a": {}}}
            }]
        });
        if let Some(ns) = ns {
            m["namespace"] = json!(ns);
        }
        m
    }

    #[test]
    fn configmap_round_trips() {
        round_trip(json!({
            "kind": "ConfigMap",
            "apiVersion": "v1",
            "metadata": metadata("c1", Some("default")),
            "data": {"a": "b", "empty": "", "multi": "line 1\nline 2"},
            "binaryData": {"bin": "AAEC/w=="},
            "immutable": false
        }));
    }

    #[test]
    fn secret_bytes_are_base64() {
        let obj = json!({
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": metadata("s1", Some("default")),
            "type": "Opaque",
            "data": {"a": "Yg==", "raw": "/wCAgQ=="}
        });
        round_trip(obj.clone());
        // The bytes on the wire are the decoded bytes, not the base64 text.
        let pb = encode_object(&obj).unwrap();
        assert!(pb.windows(4).any(|w| w == [0xff, 0x00, 0x80, 0x81]));
        assert!(!pb.windows(8).any(|w| w == b"/wCAgQ=="));
    }

    #[test]
    fn namespace_round_trips() {
        round_trip(json!({
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": metadata("n1", None),
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"}
        }));
    }

    #[test]
    fn deployment_int_or_string_quantity_and_zero_replicas() {
        round_trip(json!({
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": metadata("d1", Some("default")),
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "d1"}},
                "template": {
                    "metadata": {"creationTimestamp": null, "labels": {"app": "d1"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "resources": {
                                "limits": {"cpu": "500m", "memory": "128Mi"},
                                "requests": {"cpu": "250m"}
                            },
                            "livenessProbe": {"httpGet": {"path": "/", "port": "http", "scheme": "HTTP"}},
                            "terminationMessagePath": "/dev/termination-log",
                            "imagePullPolicy": "Always"
                        }],
                        "restartPolicy": "Always",
                        "terminationGracePeriodSeconds": 30,
                        "dnsPolicy": "ClusterFirst",
                        "securityContext": {},
                        "schedulerName": "default-scheduler"
                    }
                },
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}
                },
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600
            },
            "status": {
                "observedGeneration": 3,
                "conditions": [{
                    "type": "Available",
                    "status": "True",
                    "lastUpdateTime": "2025-01-02T03:04:05Z",
                    "lastTransitionTime": "2025-01-02T03:04:05Z",
                    "reason": "MinimumReplicasAvailable",
                    "message": "Deployment has minimum availability."
                }]
            }
        }));
    }

    #[test]
    fn service_ports_and_lists() {
        round_trip(json!({
            "kind": "Service",
            "apiVersion": "v1",
            "metadata": metadata("s1", Some("default")),
            "spec": {
                "ports": [
                    {"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080},
                    {"name": "web", "protocol": "TCP", "port": 443, "targetPort": "https"}
                ],
                "selector": {"app": "s1"},
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "type": "ClusterIP",
                "sessionAffinity": "None",
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "internalTrafficPolicy": "Cluster"
            },
            "status": {"loadBalancer": {}}
        }));
    }

    #[test]
    fn lists_and_micro_time() {
        round_trip(json!({
            "kind": "ConfigMapList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "7", "continue": "abc", "remainingItemCount": 2},
            "items": [
                {"metadata": {"name": "a", "namespace": "x"}, "data": {"k": "v"}},
                {"metadata": {"name": "b", "namespace": "x"}}
            ]
        }));
        round_trip(json!({
            "kind": "Event",
            "apiVersion": "events.k8s.io/v1",
            "metadata": {"name": "e1", "namespace": "default"},
            "eventTime": "2025-01-02T03:04:05.123456Z",
            "reportingController": "sim",
            "reportingInstance": "sim-1",
            "action": "Scheduled",
            "reason": "Scheduled",
            "regarding": {"kind": "Pod", "name": "p", "namespace": "default"},
            "type": "Normal"
        }));
    }

    /// A Go client writes its non-pointer fields even when empty; they read as
    /// `encoding/json` with `omitempty` writes them.
    #[test]
    fn empty_go_fields_are_omitted_as_kube_omits_them() {
        let cm = descriptor("v1", "ConfigMap").unwrap();
        let meta_desc = match cm.get_field_by_name("metadata").unwrap().kind() {
            Kind::Message(m) => m,
            _ => unreachable!(),
        };
        let mut meta = DynamicMessage::new(meta_desc.clone());
        meta.set_field_by_name("name", PbValue::String("c1".into()));
        meta.set_field_by_name("generateName", PbValue::String(String::new()));
        meta.set_field_by_name("namespace", PbValue::String(String::new()));
        meta.set_field_by_name("generation", PbValue::I64(0));
        let time = match meta_desc
            .get_field_by_name("creationTimestamp")
            .unwrap()
            .kind()
        {
            Kind::Message(m) => DynamicMessage::new(m),
            _ => unreachable!(),
        };
        meta.set_field_by_name("creationTimestamp", PbValue::Message(time));
        let mut msg = DynamicMessage::new(cm);
        msg.set_field_by_name("metadata", PbValue::Message(meta));
        msg.set_field_by_name("immutable", PbValue::Bool(false));
        assert_eq!(
            to_json(&msg).unwrap(),
            json!({"metadata": {"name": "c1", "creationTimestamp": null}, "immutable": false})
        );
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let udesc = message(UNKNOWN).unwrap();
        let Kind::Message(tdesc) = udesc.get_field_by_name("typeMeta").unwrap().kind() else {
            unreachable!()
        };
        let mut tm = DynamicMessage::new(tdesc);
        tm.set_field_by_name("apiVersion", PbValue::String(api_version.into()));
        tm.set_field_by_name("kind", PbValue::String(kind.into()));
        let mut u = DynamicMessage::new(udesc);
        u.set_field_by_name("typeMeta", PbValue::Message(tm));
        u.set_field_by_name("raw", PbValue::Bytes(raw.to_vec().into()));
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn bad_bodies_are_kube_errors() {
        let ct = MEDIA_TYPE;
        let st = decode_body(ct, b"{\"kind\":\"ConfigMap\"}").unwrap_err();
        assert_eq!(st.code, 400);
        assert!(
            st.message.contains("missing the k8s protobuf prefix"),
            "{}",
            st.message
        );
        let st = decode_body(ct, b"k8s\0\xff\xff\xff").unwrap_err();
        assert_eq!(st.code, 400, "{}", st.message);
        // A kind without a protobuf message: 415 with kube-apiserver's wording.
        let st = decode_body(ct, &envelope("example.com/v1", "Widget", b"")).unwrap_err();
        assert_eq!(st.code, 415);
        assert!(
            st.message.starts_with(
                "the body of the request was in an unknown format - accepted media types include: "
            ),
            "{}",
            st.message
        );
        let st = decode_body(ct, &envelope("v1", "../Pod", b"")).unwrap_err();
        assert_eq!(st.code, 415);
        // A typed message that is not one.
        let st = decode_body(ct, &envelope("v1", "ConfigMap", b"\x0a\x05ab")).unwrap_err();
        assert_eq!(st.code, 400, "{}", st.message);
        // A time out of range is an error, not a panic.
        let mut bad_time = json!({"kind": "ConfigMap", "apiVersion": "v1",
            "metadata": {"name": "x", "creationTimestamp": "2025-01-02T03:04:05Z"}});
        let ok = encode_object(&bad_time).unwrap();
        assert!(decode(&ok).is_ok());
        bad_time["metadata"]["creationTimestamp"] = json!("not a time");
        assert!(matches!(encode_object(&bad_time), Err(Error::Encode(_))));
    }

    #[test]
    fn no_prefix_truncation_or_bit_flip_panics() {
        let obj = json!({"kind": "Deployment", "apiVersion": "apps/v1",
            "metadata": metadata("d1", Some("default")),
            "spec": {"replicas": 2, "strategy": {"rollingUpdate": {"maxSurge": "25%"}}}});
        let pb = encode_object(&obj).unwrap();
        for n in 0..pb.len() {
            let _ = decode(&pb[..n]);
        }
        for i in 4..pb.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = pb.clone();
                b[i] ^= bit;
                let _ = decode(&b);
            }
        }
    }

    #[test]
    fn only_protobuf_is_answered_as_protobuf() {
        assert!(wants_protobuf(Some(MEDIA_TYPE)));
        assert!(wants_protobuf(Some(
            "application/vnd.kubernetes.protobuf;q=1"
        )));
        assert!(!wants_protobuf(None));
        assert!(!wants_protobuf(Some("application/json")));
        assert!(!wants_protobuf(Some(
            "application/vnd.kubernetes.protobuf, */*"
        )));
        assert!(!wants_protobuf(Some(
            "application/vnd.kubernetes.protobuf,application/json"
        )));
        assert!(!wants_protobuf(Some(
            "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io"
        )));
        assert_eq!(negotiate(Some(MEDIA_TYPE)).unwrap(), None);
        assert_eq!(
            negotiate(Some("application/vnd.kubernetes.protobuf, */*")).unwrap(),
            Some(Wants::Json)
        );
        // A kind that has no message: 406.
        let st = encode_body(br#"{"kind":"Widget","apiVersion":"example.com/v1"}"#).unwrap_err();
        assert_eq!(st.code, 406);
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(120_000_000_000), "2m0s");
        assert_eq!(go_duration(-2_000_000), "-2ms");
    }
}
