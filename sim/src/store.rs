//! The simulated cluster's storage: objects, one resourceVersion counter, a bounded history of
//! events, and the broadcast that feeds watches. Plays the part of etcd plus the watch cache.
//!
//! Objects are kept as their serialized JSON (`Bytes`), so gets, lists and watches hand out the
//! stored bytes without re-encoding; only the labels and selectable fields are kept parsed, for
//! selectors. Every write goes through [`State::commit`], which bumps the resourceVersion,
//! records the event in the history (dropping the oldest beyond the window: that is the
//! "compaction" behind 410 Gone) and broadcasts it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use kubehub_cache::{ChangeKind, Filter, Listed, Meta, ObjKey};
use kubehub_kapi::Status;
use tokio::sync::broadcast;

/// A stored object.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The object as JSON, with its current resourceVersion.
    pub json: Bytes,
    /// Its resourceVersion.
    pub rv: u64,
    /// Its uid.
    pub uid: Box<str>,
    /// Selector view.
    pub meta: Meta,
}

/// One change, as recorded in the history and broadcast to watches.
#[derive(Debug)]
pub struct Event {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// Index of the resource type in the cluster's type table.
    pub ty: usize,
    /// The object's key.
    pub key: ObjKey,
    /// ADDED, MODIFIED or DELETED.
    pub kind: ChangeKind,
    /// The object after the change (for DELETED: its last state, at the deletion's version).
    pub object: Bytes,
    /// Selector view of `object`.
    pub meta: Meta,
    /// The object before the change (MODIFIED and DELETED), for watches with selectors and
    /// for reconstructing past versions.
    pub prev: Option<(Bytes, Meta)>,
}

impl Event {
    /// The event a watch with `filter` sees, if any (selector transitions become ADDED or
    /// DELETED).
    pub fn visible_to(&self, filter: &Filter) -> Option<ChangeKind> {
        filter.translate(
            &self.key,
            self.kind,
            &self.meta,
            self.prev.as_ref().map(|(_, m)| m),
        )
    }

    /// The object an event of `kind` carries: the object after the change, except when a
    /// change makes it stop matching a selector (MODIFIED seen as DELETED): then its previous
    /// state at this event's version, as kube-apiserver's watch cache sends it.
    pub fn event_object(&self, kind: ChangeKind) -> Bytes {
        match (&self.prev, self.kind, kind) {
            (Some((prev, _)), ChangeKind::Modified, ChangeKind::Deleted) => {
                kubehub_cache::with_resource_version(prev, self.rv)
            }
            _ => self.object.clone(),
        }
    }
}

impl Listed for Stored {
    fn meta(&self) -> &Meta {
        &self.meta
    }
    fn json(&self) -> &Bytes {
        &self.json
    }
}

/// Objects of one type, in key order.
pub type Objects = BTreeMap<ObjKey, Stored>;

/// The mutable state of a cluster (behind the cluster's mutex; never held across an await).
#[derive(Debug)]
pub struct State {
    /// The current resourceVersion: that of the last write.
    pub rv: u64,
    /// Objects per type (indexed like the cluster's type table).
    pub objects: Vec<Objects>,
    history: VecDeque<Arc<Event>>,
    history_window: usize,
    /// Every event with a version at or below this is gone from the history.
    compacted: u64,
}

impl State {
    /// Empty state for `types` resource types, keeping `history_window` events.
    pub fn new(types: usize, history_window: usize) -> State {
        State {
            rv: 1,
            objects: (0..types).map(|_| BTreeMap::new()).collect(),
            history: VecDeque::with_capacity(history_window.min(4096)),
            history_window: history_window.max(1),
            compacted: 1,
        }
    }

    /// The oldest version a watch may start from or an exact list may ask for.
    pub fn oldest_available(&self) -> u64 {
        self.compacted
    }

    /// Records a change: the object (already carrying `rv` as its resourceVersion) replaces
    /// what was stored under `key` (`None`: deletes it). Returns the event to broadcast.
    pub fn commit(
        &mut self,
        ty: usize,
        key: ObjKey,
        kind: ChangeKind,
        rv: u64,
        next: Option<Stored>,
        deleted_json: Option<Bytes>,
    ) -> Arc<Event> {
        debug_assert_eq!(rv, self.rv + 1);
        self.rv = rv;
        let prev = match &next {
            Some(s) => self.objects[ty].insert(key.clone(), s.clone()),
            None => self.objects[ty].remove(&key),
        };
        let (object, meta) = match (next, &prev) {
            (Some(s), _) => (s.json, s.meta),
            (None, Some(p)) => (
                deleted_json.unwrap_or_else(|| p.json.clone()),
                p.meta.clone(),
            ),
            (None, None) => (Bytes::new(), Meta::default()),
        };
        let ev = Arc::new(Event {
            rv,
            ty,
            key,
            kind,
            object,
            meta,
            prev: prev.map(|p| (p.json, p.meta)),
        });
        if self.history.len() == self.history_window {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.history.push_back(ev.clone());
        ev
    }

    /// Drops the whole history: only the current version remains readable.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// History events after `rv` (exclusive), oldest first; 410 if some are gone.
    pub fn events_since(&self, rv: u64) -> Result<Vec<Arc<Event>>, Status> {
        if rv < self.compacted {
            return Err(Status::too_old_resource_version(rv, self.compacted));
        }
        let start = self.history.partition_point(|e| e.rv <= rv);
        Ok(self.history.range(start..).cloned().collect())
    }

    /// The objects of type `ty` as they were at version `rv` (which must not be in the
    /// future): the current ones with later history undone. 410 if that history is gone.
    pub fn objects_at(&self, ty: usize, rv: u64) -> Result<std::borrow::Cow<'_, Objects>, Status> {
        if rv >= self.rv {
            return Ok(std::borrow::Cow::Borrowed(&self.objects[ty]));
        }
        if rv < self.compacted {
            return Err(Status::expired(format!(
                "too old resource version: {rv} ({})",
                self.compacted
            )));
        }
        let mut objs = self.objects[ty].clone();
        for ev in self.history.iter().rev().take_while(|e| e.rv > rv) {
            if ev.ty != ty {
                continue;
            }
            match &ev.prev {
                Some((json, meta)) => {
                    let uid = objs.get(&ev.key).map(|s| s.uid.clone()).unwrap_or_default();
                    objs.insert(
                        ev.key.clone(),
                        Stored {
                            json: json.clone(),
                            rv: resource_version_of(json).unwrap_or(0),
                            uid,
                            meta: meta.clone(),
                        },
                    );
                }
                None => {
                    objs.remove(&ev.key);
                }
            }
        }
        Ok(std::borrow::Cow::Owned(objs))
    }
}

/// `metadata.resourceVersion` of a serialized object.
pub fn resource_version_of(json: &[u8]) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct M {
        #[serde(rename = "resourceVersion")]
        rv: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct O {
        metadata: Option<M>,
    }
    serde_json::from_slice::<O>(json)
        .ok()?
        .metadata?
        .rv?
        .parse()
        .ok()
}

/// A broadcast of events to every watch of a cluster.
pub type Events = broadcast::Sender<Arc<Event>>;

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_kapi::selector::LabelSelector;
    use serde_json::{json, Value};

    fn stored(name: &str, rv: u64, labels: Value) -> Stored {
        let obj = json!({"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv.to_string(), "labels": labels}});
        Stored {
            json: Bytes::from(serde_json::to_vec(&obj).unwrap()),
            rv,
            uid: "u".into(),
            meta: Meta::of("", "pods", &obj),
        }
    }

    fn key(name: &str) -> ObjKey {
        ObjKey::new("ns", name)
    }

    #[test]
    fn history_window_and_past_versions() {
        let mut st = State::new(1, 3);
        st.commit(
            0,
            key("a"),
            ChangeKind::Added,
            2,
            Some(stored("a", 2, json!({}))),
            None,
        );
        st.commit(
            0,
            key("b"),
            ChangeKind::Added,
            3,
            Some(stored("b", 3, json!({}))),
            None,
        );
        st.commit(
            0,
            key("a"),
            ChangeKind::Modified,
            4,
            Some(stored("a", 4, json!({"x": "1"}))),
            None,
        );
        st.commit(0, key("b"), ChangeKind::Deleted, 5, None, None);
        // Window of 3: the event at 2 is gone; watching from 2 still works (it needs 3..),
        // from 1 does not.
        assert_eq!(st.oldest_available(), 2);
        assert_eq!(st.events_since(2).unwrap().len(), 3);
        assert_eq!(st.events_since(1).unwrap_err().code, 410);
        assert_eq!(st.events_since(5).unwrap().len(), 0);
        // At version 3: a (unlabelled) and b; now: only a (labelled).
        let at3 = st.objects_at(0, 3).unwrap();
        assert_eq!(at3.len(), 2);
        assert_eq!(at3[&key("a")].rv, 2);
        let now = st.objects_at(0, 5).unwrap();
        assert_eq!(now.len(), 1);
        assert_eq!(now[&key("a")].rv, 4);
        assert_eq!(st.objects_at(0, 1).unwrap_err().code, 410);
    }

    #[test]
    fn selector_transitions() {
        let mut st = State::new(1, 10);
        st.commit(
            0,
            key("a"),
            ChangeKind::Added,
            2,
            Some(stored("a", 2, json!({"app": "web"}))),
            None,
        );
        let ev = st.commit(
            0,
            key("a"),
            ChangeKind::Modified,
            3,
            Some(stored("a", 3, json!({"app": "db"}))),
            None,
        );
        let web = Filter {
            labels: LabelSelector::parse("app=web").unwrap(),
            ..Filter::default()
        };
        let db = Filter {
            labels: LabelSelector::parse("app=db").unwrap(),
            ..Filter::default()
        };
        let other_ns = Filter {
            namespace: Some("other".into()),
            ..Filter::default()
        };
        assert_eq!(ev.visible_to(&web), Some(ChangeKind::Deleted));
        assert_eq!(ev.visible_to(&db), Some(ChangeKind::Added));
        assert_eq!(
            ev.visible_to(&Filter::default()),
            Some(ChangeKind::Modified)
        );
        assert_eq!(ev.visible_to(&other_ns), None);
    }
}
