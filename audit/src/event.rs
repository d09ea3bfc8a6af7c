//! `audit.k8s.io/v1` `Event`, as kube-apiserver writes it.

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::policy::Level;

/// The stage of the request the event was written at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// As soon as the request was received (not written by KubeHub).
    RequestReceived,
    /// The response head was sent, its body goes on (watches, logs -f, exec sessions).
    ResponseStarted,
    /// The response is complete.
    ResponseComplete,
    /// The handler panicked.
    Panic,
}

/// Who made a request (`authentication.k8s.io/v1` `UserInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// User name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// Unique id (the KubeHub token's id).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Extra attributes (the tenant, `kubehub.io/tenant`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// What a request was about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Plural resource name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Namespace.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Object name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// API group (`""`: core).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_group: String,
    /// API version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// Subresource.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subresource: String,
}

/// The answer's status (a `metav1.Status`, as much of it as the auditor knows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// Always `{}` (kube-apiserver writes it).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// `Success` / `Failure` (failures only, as kube-apiserver).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// The failure's message.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The failure's reason (`Forbidden`, `NotFound`, …).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// HTTP status code.
    pub code: u16,
}

/// One audit event (`audit.k8s.io/v1` `Event`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// `Event`.
    pub kind: String,
    /// `audit.k8s.io/v1`.
    pub api_version: String,
    /// How much was recorded.
    pub level: Level,
    /// The request's audit id (the client's `Audit-ID`, or one made up).
    #[serde(rename = "auditID")]
    pub audit_id: String,
    /// Stage.
    pub stage: Stage,
    /// Path and query as the client sent them.
    #[serde(rename = "requestURI")]
    pub request_uri: String,
    /// Kubernetes verb (lower-case HTTP method for non-resource requests).
    pub verb: String,
    /// Who asked.
    pub user: UserInfo,
    /// Who the request was made as at the edge (the hub impersonates the user there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impersonated_user: Option<UserInfo>,
    /// The client's address.
    #[serde(rename = "sourceIPs", default, skip_serializing_if = "Vec::is_empty")]
    pub source_ips: Vec<String>,
    /// `User-Agent`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_agent: String,
    /// The object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
    /// The answer's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_status: Option<ResponseStatus>,
    /// The request body (levels Request and RequestResponse, JSON bodies within the bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_object: Option<serde_json::Value>,
    /// The response body (level RequestResponse).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_object: Option<serde_json::Value>,
    /// When the request arrived (RFC 3339, microseconds).
    pub request_received_timestamp: String,
    /// When this stage was reached.
    pub stage_timestamp: String,
    /// `kubehub.io/tenant`, `kubehub.io/cluster`, `kubehub.io/hub`, `kubehub.io/served-by`, …
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Event {
    /// An event with the fixed fields set and the rest empty.
    pub fn new(level: Level, audit_id: String, stage: Stage, received: SystemTime) -> Event {
        Event {
            kind: "Event".into(),
            api_version: "audit.k8s.io/v1".into(),
            level,
            audit_id,
            stage,
            request_uri: String::new(),
            verb: String::new(),
            user: UserInfo::default(),
            impersonated_user: None,
            source_ips: Vec::new(),
            user_agent: String::new(),
            object_ref: None,
            response_status: None,
            request_object: None,
            response_object: None,
            request_received_timestamp: timestamp(received),
            stage_timestamp: timestamp(SystemTime::now()),
            annotations: BTreeMap::new(),
        }
    }

    /// Sets the response status from a code (and, for failures, a message and reason).
    pub fn respond(&mut self, code: u16, message: &str, reason: &str) {
        let failed = code >= 400;
        self.response_status = Some(ResponseStatus {
            metadata: serde_json::Map::new(),
            status: if failed {
                "Failure".into()
            } else {
                String::new()
            },
            message: if failed {
                message.into()
            } else {
                String::new()
            },
            reason: if failed { reason.into() } else { String::new() },
            code,
        });
    }

    /// Adds a body to the event as kube-apiserver does (`requestObject` /
    /// `responseObject`): only a JSON body of at most `max` bytes; otherwise an annotation
    /// (`kubehub.io/<which>-omitted`) says why it is not there.
    pub fn body(&mut self, which: BodyOf, bytes: &[u8], max: usize) {
        let (field, note) = match which {
            BodyOf::Request => (
                &mut self.request_object,
                "kubehub.io/request-object-omitted",
            ),
            BodyOf::Response => (
                &mut self.response_object,
                "kubehub.io/response-object-omitted",
            ),
        };
        if bytes.is_empty() {
            return;
        }
        if bytes.len() > max {
            self.annotations
                .insert(note.into(), format!("larger than {max} bytes"));
            return;
        }
        match serde_json::from_slice::<serde_json::Value>(bytes) {
            Ok(v) => *field = Some(v),
            Err(_) => {
                self.annotations.insert(note.into(), "not JSON".into());
            }
        }
    }

    /// The event as one JSON line (with its newline).
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// Which body [`Event::body`] adds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOf {
    /// The request's.
    Request,
    /// The response's.
    Response,
}

/// RFC 3339 with microseconds, UTC (`2026-11-26T22:53:10.123456Z`), as kube-apiserver's
/// `metav1.MicroTime`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The audit id of a request: the client's `Audit-ID` when it is a sensible one (1 to 128
/// visible ASCII characters, kube-apiserver accepts any non-empty value), else a new one.
pub fn audit_id_of(header: Option<&[u8]>) -> String {
    match header {
        Some(v) if !v.is_empty() && v.len() <= 128 && v.iter().all(|b| b.is_ascii_graphic()) => {
            String::from_utf8_lossy(v).into_owned()
        }
        _ => new_audit_id(),
    }
}

/// A random UUID (version 4), the form of kube-apiserver's audit ids. Unique, not secret:
/// drawn from a per-thread fast generator seeded from the OS (one per request on the hub's
/// hot path).
pub fn new_audit_id() -> String {
    use rand::{Rng, SeedableRng};
    thread_local! {
        static RNG: std::cell::RefCell<rand::rngs::SmallRng> =
            std::cell::RefCell::new(rand::rngs::SmallRng::from_rng(&mut rand::rng()));
    }
    let mut b: [u8; 16] = RNG.with(|r| r.borrow_mut().random());
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_as_kube_apiserver_writes_them() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        let mut e = Event::new(Level::Metadata, "id-1".into(), Stage::ResponseComplete, t);
        e.request_uri = "/api/v1/namespaces/a/pods".into();
        e.verb = "create".into();
        e.user.username = "alice".into();
        e.source_ips = vec!["10.0.0.1".into()];
        e.object_ref = Some(ObjectRef {
            resource: "pods".into(),
            namespace: "a".into(),
            api_version: "v1".into(),
            ..Default::default()
        });
        e.respond(403, "banned: abuse", "Forbidden");
        let v: serde_json::Value = serde_json::from_slice(&e.to_line()).unwrap();
        assert_eq!(v["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(v["kind"], "Event");
        assert_eq!(v["auditID"], "id-1");
        assert_eq!(v["requestURI"], "/api/v1/namespaces/a/pods");
        assert_eq!(v["sourceIPs"][0], "10.0.0.1");
        assert_eq!(v["objectRef"]["apiVersion"], "v1");
        assert_eq!(v["responseStatus"]["code"], 403);
        assert_eq!(v["responseStatus"]["status"], "Failure");
        assert_eq!(v["requestReceivedTimestamp"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(v["stage"], "ResponseComplete");
        assert_eq!(v["level"], "Metadata");
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn bodies_are_logged_when_json_and_small() {
        let mut e = Event::new(
            Level::Request,
            "x".into(),
            Stage::ResponseComplete,
            SystemTime::now(),
        );
        e.body(BodyOf::Request, br#"{"kind":"Pod"}"#, 100);
        assert_eq!(e.request_object.as_ref().unwrap()["kind"], "Pod");
        e.body(BodyOf::Response, b"\x0a\x0bk8s", 100);
        assert_eq!(e.response_object, None);
        assert_eq!(
            e.annotations["kubehub.io/response-object-omitted"],
            "not JSON"
        );
        let mut e2 = e.clone();
        e2.request_object = None;
        e2.body(BodyOf::Request, &[b' '; 200], 100);
        assert!(e2.annotations["kubehub.io/request-object-omitted"].contains("100 bytes"));
    }

    #[test]
    fn audit_ids_are_honoured_or_made() {
        assert_eq!(audit_id_of(Some(b"abc-123")), "abc-123");
        let made = audit_id_of(Some(b"bad value with spaces"));
        assert_eq!(made.len(), 36);
        assert_eq!(&made[14..15], "4");
        assert_ne!(new_audit_id(), new_audit_id());
        assert_eq!(audit_id_of(None).len(), 36);
    }
}
