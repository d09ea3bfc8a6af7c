//! The representations a client can ask for in `Accept` ([`kapi::accept::Wants`]): plain JSON
//! served from the stored bytes, or a `Table` / `PartialObjectMetadata` rendered from them
//! through [`kapi::table`] (kubectl's `get` asks for Tables; metadata-only informers for
//! `PartialObjectMetadataList`).
//!
//! [`kapi::accept::Wants`]: kubehub_kapi::accept::Wants
//! [`kapi::table`]: kubehub_kapi::table

use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use kubehub_kapi::accept::Wants;
use kubehub_kapi::query::IncludeObject;
use kubehub_kapi::table::{self, ListMeta};
use kubehub_wire::{EventType, ResourceType};
use serde_json::{json, Value};

use crate::list::list_body;
use crate::select::base_resource;
use crate::watch::WatchLine;

/// How objects are rendered for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// As stored.
    Json,
    /// A `meta.k8s.io` Table of this version, rows carrying what `includeObject` asks.
    Table(&'static str, IncludeObject),
    /// `PartialObjectMetadata` of this `meta.k8s.io` version.
    Metadata(&'static str),
}

impl Render {
    /// The rendering for a negotiated representation and the request's `includeObject`.
    pub fn new(wants: Wants, include: IncludeObject) -> Render {
        match wants {
            Wants::Json => Render::Json,
            Wants::Table(v) => Render::Table(v, include),
            Wants::Metadata(v) => Render::Metadata(v),
        }
    }
}

fn parse(b: &[u8]) -> Value {
    serde_json::from_slice(b).unwrap_or(Value::Null)
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// A list page's body: for JSON the slices of [`list_body`] (no item copied); for a Table or
/// `PartialObjectMetadataList` one rendered buffer. `now` is the time the Table's AGE column
/// counts from.
pub fn render_list(
    t: &ResourceType,
    render: Render,
    meta: &ListMeta,
    items: &[Bytes],
    now: SystemTime,
) -> Vec<Bytes> {
    match render {
        Render::Json => list_body(t, meta, items),
        Render::Table(v, include) => {
            let objs: Vec<Value> = items.iter().map(|b| parse(b)).collect();
            vec![to_bytes(&table::table(
                &t.group,
                &t.resource,
                &objs,
                meta,
                include,
                v,
                now,
            ))]
        }
        Render::Metadata(v) => {
            let items: Vec<Value> = items
                .iter()
                .map(|b| table::partial_metadata(&parse(b), v))
                .collect();
            vec![to_bytes(&json!({
                "kind": "PartialObjectMetadataList",
                "apiVersion": format!("meta.k8s.io/{v}"),
                "metadata": meta.to_value(),
                "items": items,
            }))]
        }
    }
}

/// One object's body (a GET): as stored, a one-row Table, or its `PartialObjectMetadata`.
pub fn render_object(t: &ResourceType, render: Render, obj: &Bytes, now: SystemTime) -> Bytes {
    match render {
        Render::Json => obj.clone(),
        Render::Table(v, include) => to_bytes(&table::table(
            &t.group,
            base_resource(&t.resource),
            &[parse(obj)],
            &ListMeta::default(),
            include,
            v,
            now,
        )),
        Render::Metadata(v) => to_bytes(&table::partial_metadata(&parse(obj), v)),
    }
}

/// One watch event's line. JSON lines and bookmarks are the stored bytes in static framing
/// (see [`WatchLine`]); Table and metadata watchers get the object rendered (a one-row Table
/// whose list metadata carries the object's resourceVersion, as kube-apiserver sends).
pub fn render_event(
    t: &ResourceType,
    render: Render,
    kind: EventType,
    object: &Bytes,
    now: SystemTime,
) -> WatchLine {
    let rendered = match (render, kind) {
        (Render::Json, _) | (_, EventType::Bookmark) => {
            return WatchLine::new(kind, object.clone())
        }
        (Render::Table(v, include), _) => {
            let o = parse(object);
            let meta = ListMeta {
                resource_version: o["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                ..ListMeta::default()
            };
            table::table(&t.group, &t.resource, &[o], &meta, include, v, now)
        }
        (Render::Metadata(v), _) => table::partial_metadata(&parse(object), v),
    };
    let mut out = BytesMut::new().writer();
    if serde_json::to_writer(&mut out, &rendered).is_err() {
        return WatchLine::new(kind, Bytes::new());
    }
    WatchLine::new(kind, out.into_inner().freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::list::concat;

    fn pods() -> &'static ResourceType {
        kubehub_kapi::resources::builtin()
            .iter()
            .find(|t| t.resource == "pods")
            .unwrap()
    }

    #[test]
    fn representations() {
        let pod = Bytes::from_static(
            br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"n","resourceVersion":"5","creationTimestamp":"2023-11-14T22:13:00Z"}}"#,
        );
        let now = SystemTime::UNIX_EPOCH;
        let t = pods();
        let table = Render::new(Wants::Table("v1"), IncludeObject::Metadata);
        let meta = ListMeta {
            resource_version: "5".into(),
            ..ListMeta::default()
        };
        let body: Value = serde_json::from_slice(&concat(&render_list(
            t,
            table,
            &meta,
            std::slice::from_ref(&pod),
            now,
        )))
        .unwrap();
        assert_eq!(body["kind"], "Table");
        assert_eq!(body["rows"][0]["cells"][0], "a");
        let md = Render::new(Wants::Metadata("v1"), IncludeObject::Metadata);
        let one: Value = serde_json::from_slice(&render_object(t, md, &pod, now)).unwrap();
        assert_eq!(one["kind"], "PartialObjectMetadata");
        assert_eq!(render_object(t, Render::Json, &pod, now), pod);
        let line = render_event(t, table, EventType::Added, &pod, now).to_bytes();
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "5");
        let bm = render_event(t, table, EventType::Bookmark, &pod, now);
        assert_eq!(bm.object, pod);
    }
}
