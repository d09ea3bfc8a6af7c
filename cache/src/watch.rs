//! Watch events on the wire: their kinds, the JSON lines of a watch response, bookmarks.

use bytes::{BufMut, Bytes, BytesMut};
use kubehub_kapi::resources::api_version;
use kubehub_kapi::Status;
use kubehub_wire::{EventType, ResourceType};
use serde_json::json;

/// What a change did to an object (a watch event other than BOOKMARK).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

impl ChangeKind {
    /// The Kubernetes name, e.g. `ADDED`.
    pub fn as_str(self) -> &'static str {
        EventType::from(self).as_str()
    }
}

impl From<ChangeKind> for EventType {
    fn from(k: ChangeKind) -> EventType {
        match k {
            ChangeKind::Added => EventType::Added,
            ChangeKind::Modified => EventType::Modified,
            ChangeKind::Deleted => EventType::Deleted,
        }
    }
}

impl TryFrom<EventType> for ChangeKind {
    type Error = EventType;

    /// The change an event records; BOOKMARK records none (it is progress).
    fn try_from(e: EventType) -> Result<ChangeKind, EventType> {
        match e {
            EventType::Added => Ok(ChangeKind::Added),
            EventType::Modified => Ok(ChangeKind::Modified),
            EventType::Deleted => Ok(ChangeKind::Deleted),
            EventType::Bookmark => Err(e),
        }
    }
}

const SUFFIX: &[u8] = b"}\n";

fn prefix(kind: EventType) -> &'static [u8] {
    match kind {
        EventType::Added => br#"{"type":"ADDED","object":"#,
        EventType::Modified => br#"{"type":"MODIFIED","object":"#,
        EventType::Deleted => br#"{"type":"DELETED","object":"#,
        EventType::Bookmark => br#"{"type":"BOOKMARK","object":"#,
    }
}

/// One line of a JSON watch response, `{"type":"ADDED","object":{...}}\n`, as three slices:
/// a static prefix, the object's bytes as stored, a static suffix. Nothing is encoded or copied
/// to make one; a writer hands [`WatchLine::parts`] to a vectored write (or
/// [`WatchLine::write_to`] a buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchLine {
    /// The event type.
    pub kind: EventType,
    /// The object, serialized.
    pub object: Bytes,
}

impl WatchLine {
    /// The line of an event of `kind` carrying `object`.
    pub fn new(kind: impl Into<EventType>, object: Bytes) -> WatchLine {
        WatchLine {
            kind: kind.into(),
            object,
        }
    }

    /// Prefix, object, suffix.
    pub fn parts(&self) -> [Bytes; 3] {
        [
            Bytes::from_static(prefix(self.kind)),
            self.object.clone(),
            Bytes::from_static(SUFFIX),
        ]
    }

    /// Length of the line in bytes.
    pub fn len(&self) -> usize {
        prefix(self.kind).len() + self.object.len() + SUFFIX.len()
    }

    /// Never: a line has at least its framing.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends the line to `out`.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(self.len());
        out.put_slice(prefix(self.kind));
        out.put_slice(&self.object);
        out.put_slice(SUFFIX);
    }

    /// The line in one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        self.write_to(&mut out);
        out.freeze()
    }
}

/// The line of a watch that ends with an error: `{"type":"ERROR","object":<Status>}\n` (how
/// kube-apiserver reports, inside a 200 response, a watch it cannot serve, e.g. 410 Gone).
pub fn error_line(status: &Status) -> Bytes {
    let body = status.to_json();
    let mut out = BytesMut::with_capacity(body.len() + 32);
    out.put_slice(br#"{"type":"ERROR","object":"#);
    out.put_slice(&body);
    out.put_slice(SUFFIX);
    out.freeze()
}

/// The BOOKMARK line for type `t` at version `rv` (see [`bookmark_object`]).
pub fn bookmark_line(t: &ResourceType, rv: u64, initial_events_end: bool) -> WatchLine {
    WatchLine::new(
        EventType::Bookmark,
        bookmark_object(t, rv, initial_events_end),
    )
}

/// A BOOKMARK event's object for type `t` at version `rv`; `initial_events_end` adds the
/// `k8s.io/initial-events-end` annotation that ends a watch-list's initial events.
pub fn bookmark_object(t: &ResourceType, rv: u64, initial_events_end: bool) -> Bytes {
    let mut obj = json!({
        "kind": t.kind,
        "apiVersion": api_version(&t.group, &t.version),
        "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null},
    });
    if initial_events_end {
        obj["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    Bytes::from(serde_json::to_vec(&obj).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = WatchLine::new(ChangeKind::Modified, Bytes::from_static(br#"{"a":1}"#));
        assert_eq!(
            &l.to_bytes()[..],
            b"{\"type\":\"MODIFIED\",\"object\":{\"a\":1}}\n"
        );
        assert_eq!(l.len(), l.to_bytes().len());
        assert_eq!(l.parts().concat(), l.to_bytes());
        let e = error_line(&Status::expired("gone"));
        let v: serde_json::Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["type"], "ERROR");
        assert_eq!(v["object"]["code"], 410);
        for k in [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted] {
            assert_eq!(ChangeKind::try_from(EventType::from(k)), Ok(k));
        }
        assert!(ChangeKind::try_from(EventType::Bookmark).is_err());
    }

    #[test]
    fn bookmark_shape() {
        let t = &kubehub_kapi::resources::builtin()[0];
        let b: serde_json::Value = serde_json::from_slice(&bookmark_object(t, 9, true)).unwrap();
        assert_eq!(b["metadata"]["resourceVersion"], "9");
        assert_eq!(
            b["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(b["kind"], t.kind.as_str());
    }
}
