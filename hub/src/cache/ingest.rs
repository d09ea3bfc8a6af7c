//! `ingest`: one tunnel's sync streams, applied to its cluster's caches.
//!
//! Runs inside the tunnel's dispatch on the tunnel's core: the one writer of every cache of
//! that cluster. A snapshot is collected whole and swapped in at SNAPSHOT_END (readers never
//! see half of it); watch events and bookmarks apply as they come; PROGRESS answers the
//! freshness confirmation it names. Credit for each frame is returned once it is applied.
//!
//! Content the cache cannot take (an object without a name, a resourceVersion that is not an
//! integer) ends that type's stream with a log line: its reads are forwarded from then on, and
//! nothing wrong is ever served.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use kubehub_cache::{ChangeKind, Object};
use kubehub_wire::{ErrorCode, EventType, Frame, StreamId};
use tracing::{debug, info, warn};

use prometheus_client::metrics::counter::Counter;

use super::freshness::Outcome;
use super::{type_label, ClusterCache, TypeSlot};
use crate::metrics::{Metrics, TypeLabel};

/// What the tunnel must do after a frame was applied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Reset the stream with this code (the type stops being served from the cache).
    pub reset: Option<ErrorCode>,
    /// Send a PROGRESS_REQUEST with this sequence number on the stream.
    pub request_progress: Option<u32>,
}

struct Stream {
    slot: Arc<TypeSlot>,
    /// The type's event counter (kept: no lookup per event).
    events: Counter,
    /// The snapshot being received, if one is open.
    snapshot: Option<Vec<Object>>,
}

/// The sync streams of one tunnel.
pub struct Ingest {
    cluster: Arc<ClusterCache>,
    metrics: Arc<Metrics>,
    generation: u64,
    /// One per cached type: a handful, for as long as the tunnel lives (a vector costs what
    /// they take; a hash table, room for more).
    streams: Vec<(StreamId, Stream)>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("streams", &self.streams.len())
            .finish()
    }
}

fn rv(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("resourceVersion {s:?} is not an integer"))
}

impl Ingest {
    /// Ingest for `cluster`'s tunnel `generation`.
    pub fn new(cluster: Arc<ClusterCache>, generation: u64, metrics: Arc<Metrics>) -> Ingest {
        cluster.agent_back(generation);
        Ingest {
            cluster,
            metrics,
            generation,
            streams: Vec::new(),
        }
    }

    /// The stream carrying a type, for progress requests.
    pub fn stream_of(&self, slot: &Arc<TypeSlot>) -> Option<StreamId> {
        self.streams
            .iter()
            .find(|(_, s)| Arc::ptr_eq(&s.slot, slot))
            .map(|(id, _)| *id)
    }

    /// Removes stream `id`, if it is a known sync stream.
    fn remove(&mut self, id: StreamId) -> Option<Stream> {
        let i = self.streams.iter().position(|(s, _)| *s == id)?;
        let (_, s) = self.streams.swap_remove(i);
        if self.streams.is_empty() {
            self.streams = Vec::new();
        }
        Some(s)
    }

    /// Applies one frame of sync stream `id`.
    pub fn frame(&mut self, id: StreamId, frame: Frame, now: Instant) -> Effects {
        // A tunnel the cluster's agent has replaced (it reconnected before this one timed
        // out) writes nothing more into the caches its successor feeds.
        if !self.cluster.is_current(self.generation) {
            self.remove(id);
            return Effects {
                reset: Some(ErrorCode::CANCEL),
                request_progress: None,
            };
        }
        match self.apply(id, frame, now) {
            Ok(effects) => effects,
            Err(why) => {
                if let Some(s) = self.remove(id) {
                    warn!(stream = id, resource = %s.slot.info.resource, "sync stream refused: {why}; reads of this type are forwarded");
                    s.slot.set_synced(false);
                } else {
                    warn!(stream = id, "sync stream refused: {why}");
                }
                Effects {
                    reset: Some(ErrorCode::PROTOCOL),
                    request_progress: None,
                }
            }
        }
    }

    fn apply(&mut self, id: StreamId, frame: Frame, now: Instant) -> Result<Effects, String> {
        match frame {
            Frame::SnapshotBegin(b) => {
                let slot = self
                    .cluster
                    .slot(&b.resource)
                    .ok_or_else(|| format!("type {:?} was not asked for", b.resource))?;
                if let Some(other) = self.stream_of(&slot).filter(|o| *o != id) {
                    return Err(format!("type already synced on stream {other}"));
                }
                debug!(stream = id, resource = %slot.info.resource, "snapshot begins");
                let label = TypeLabel {
                    resource: type_label(&b.resource),
                };
                let events = self.metrics.cache_events.get_or_create(&label).clone();
                let stream = Stream {
                    slot,
                    events,
                    snapshot: Some(Vec::new()),
                };
                // A relist restarts on its stream: its snapshot starts over.
                match self.streams.iter_mut().find(|(s, _)| *s == id) {
                    Some((_, s)) => *s = stream,
                    None => self.streams.push((id, stream)),
                }
                Ok(Effects::default())
            }
            Frame::SnapshotItems(items) => {
                let s = self.stream(id)?;
                let (group, resource) = (s.slot.info.group.clone(), s.slot.info.resource.clone());
                let snap = s.snapshot.as_mut().ok_or("items outside a snapshot")?;
                for json in items.items {
                    // Copied out of the tunnel's read buffer: a cached object must not keep
                    // a whole read buffer alive.
                    let json = Bytes::copy_from_slice(&json);
                    snap.push(Object::parse(&group, &resource, json).map_err(|e| e.to_string())?);
                }
                Ok(Effects::default())
            }
            Frame::SnapshotEnd(end) => {
                let s = self.stream(id)?;
                let objects = s.snapshot.take().ok_or("SNAPSHOT_END without a snapshot")?;
                let n = objects.len();
                let version = rv(&end.resource_version)?;
                let held = s.slot.cache.snapshot();
                if held.is_loaded() && version < held.rv() {
                    // The edge's versions went backwards (etcd restored from a backup): no
                    // history continues across that. Watchers end (clients relist), the cache
                    // starts over from this snapshot.
                    warn!(stream = id, resource = %s.slot.info.resource, "the edge's resourceVersion went back from {} to {version}: starting the cache over", held.rv());
                    s.slot.set_synced(false);
                    s.slot.cache.reset();
                }
                drop(held);
                s.slot
                    .cache
                    .replace(objects, version)
                    .map_err(|e| e.to_string())?;
                s.slot.set_synced(true);
                info!(stream = id, resource = %s.slot.info.resource, objects = n, rv = %end.resource_version, "snapshot applied");
                s.events.inc_by(n as u64);
                let label = TypeLabel {
                    resource: type_label(&s.slot.key()),
                };
                self.metrics.cache_snapshots.get_or_create(&label).inc();
                Ok(Effects::default())
            }
            Frame::WatchEvent(ev) => {
                let s = self.stream(id)?;
                let version = rv(&ev.resource_version)?;
                let kind = match ev.event {
                    EventType::Bookmark => {
                        s.slot.cache.progress(version);
                        return Ok(Effects::default());
                    }
                    EventType::Added => ChangeKind::Added,
                    EventType::Modified => ChangeKind::Modified,
                    EventType::Deleted => ChangeKind::Deleted,
                };
                let mut obj = parse(&s.slot, ev.object)?;
                // A deletion the agent found by a confirming list carries that list's version
                // in the frame and the object's last one inside it.
                if kind == ChangeKind::Deleted && version > obj.rv {
                    obj = obj.at_version(version);
                }
                s.slot.cache.apply(kind, obj).map_err(|e| e.to_string())?;
                s.events.inc();
                Ok(Effects::default())
            }
            Frame::Progress(p) => {
                let metrics = self.metrics.clone();
                let s = self.stream(id)?;
                let outcome = if p.resource_version.is_empty() {
                    Outcome::Unconfirmed
                } else {
                    let version = rv(&p.resource_version)?;
                    // How far behind the edge the cache was when the agent confirmed it.
                    let lag = version.saturating_sub(s.slot.cache.snapshot().rv());
                    s.slot
                        .last_lag
                        .store(lag, std::sync::atomic::Ordering::Relaxed);
                    metrics.cache_sync_lag.observe(lag as f64);
                    s.slot.cache.progress(version);
                    Outcome::Confirmed(version)
                };
                let next = s.slot.freshness.answered(p.seq, outcome, now);
                Ok(Effects {
                    reset: None,
                    request_progress: next,
                })
            }
            other => Err(format!(
                "unexpected {} on a sync stream",
                other.frame_type().name()
            )),
        }
    }

    fn stream(&mut self, id: StreamId) -> Result<&mut Stream, String> {
        self.streams
            .iter_mut()
            .find(|(s, _)| *s == id)
            .map(|(_, s)| s)
            .ok_or_else(|| format!("stream {id} is not a known sync stream"))
    }

    /// The stream ended (END, RESET, or the tunnel closed).
    pub fn ended(&mut self, id: StreamId) {
        if let Some(s) = self.remove(id) {
            debug!(stream = id, resource = %s.slot.info.resource, "sync stream ended");
            // Unless a newer tunnel of the cluster feeds the slot by now.
            if self.cluster.is_current(self.generation) {
                s.slot.set_synced(false);
            }
        }
    }

    /// Whether this tunnel still feeds its cluster's caches.
    pub fn is_current(&self) -> bool {
        self.cluster.is_current(self.generation)
    }

    /// The tunnel closed: every stream ended.
    pub fn closed(&mut self) {
        let streams = std::mem::take(&mut self.streams);
        // A newer tunnel of the cluster may already feed these slots: leave them to it.
        if self.cluster.is_current(self.generation) {
            for (_, s) in streams {
                s.slot.set_synced(false);
            }
            self.cluster.agent_left(self.generation);
        }
    }
}

fn parse(slot: &TypeSlot, json: Bytes) -> Result<Object, String> {
    let json = Bytes::copy_from_slice(&json);
    Object::parse(&slot.info.group, &slot.info.resource, json).map_err(|e| e.to_string())
}
