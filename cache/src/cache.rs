//! [`TypeCache`]: the objects of one resource type of one cluster, their recent history, and
//! reads with kube-apiserver's semantics on immutable [`Snapshot`]s.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use bytes::Bytes;
use imbl::{OrdMap, Vector};
use kubehub_kapi::query::Version;
use kubehub_kapi::Status;
use tokio::sync::watch;

use crate::key::ObjKey;
use crate::list::{list_position, paginate, ListPage, ListRequest};
use crate::object::{with_resource_version, Object};
use crate::select::Filter;
use crate::watch::{ChangeKind, WatchLine};

/// One recorded change.
#[derive(Debug)]
pub struct Change {
    /// The version the change is recorded at: the object's resourceVersion for a watch event;
    /// for the differences a relist found, the relist's version (several changes may share
    /// it).
    pub rv: u64,
    /// What happened, as the cache saw it.
    pub kind: ChangeKind,
    /// The object after the change; for DELETED, its last state as received (a watch event
    /// carries it at the deletion's version; a relist's deletion, at its last known one).
    pub object: Arc<Object>,
    /// The object before the change (MODIFIED and DELETED): for watchers with selectors and
    /// for reading past versions.
    pub prev: Option<Arc<Object>>,
}

impl Change {
    /// The object's key.
    pub fn key(&self) -> &ObjKey {
        &self.object.key
    }

    /// The event a watcher with `filter` sees, if any (selector transitions become ADDED or
    /// DELETED, see [`Filter::translate`]).
    pub fn visible_to(&self, filter: &Filter) -> Option<ChangeKind> {
        filter.translate(
            self.key(),
            self.kind,
            &self.object.meta,
            self.prev.as_ref().map(|p| &p.meta),
        )
    }

    /// The JSON watch line of this change as an event of `kind` (the recorded kind, or the one
    /// a selector translated it to): the object's stored bytes in static framing, shared by
    /// every watcher, never copied.
    pub fn line(&self, kind: ChangeKind) -> WatchLine {
        WatchLine::new(kind, self.event_object(kind))
    }

    /// The object an event of `kind` carries: the object after the change, except for a
    /// change that made it stop matching a selector (recorded MODIFIED, seen as DELETED):
    /// that carries the previous state, at this change's version, as kube-apiserver's watch
    /// cache sends it. (That rare case re-encodes the object.)
    pub fn event_object(&self, kind: ChangeKind) -> Bytes {
        match (&self.prev, self.kind, kind) {
            (Some(prev), ChangeKind::Modified, ChangeKind::Deleted) => {
                with_resource_version(&prev.json, self.rv)
            }
            _ => self.object.json.clone(),
        }
    }
}

/// An immutable view of a [`TypeCache`]: everything a read needs. Taking one is O(1) and
/// lock-free; holding one pins its objects and history (structurally shared with newer
/// snapshots), never the writer.
#[derive(Clone)]
pub struct Snapshot {
    objects: OrdMap<ObjKey, Arc<Object>>,
    /// Changes in version order (non-decreasing `rv`).
    history: Vector<Arc<Change>>,
    /// Sequence number of `history[0]` (every change ever recorded has one, in order).
    first_seq: u64,
    /// The version the snapshot is complete up to.
    rv: u64,
    /// Every change with a version above this is in `history`.
    oldest: u64,
    /// Sum of the objects' JSON lengths.
    bytes: u64,
    /// Whether a first snapshot (a `replace`) has arrived.
    loaded: bool,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("rv", &self.rv)
            .field("oldest", &self.oldest)
            .field("objects", &self.objects.len())
            .field("history", &self.history.len())
            .field("loaded", &self.loaded)
            .finish()
    }
}

/// What a cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Objects.
    pub objects: usize,
    /// Their JSON bytes.
    pub bytes: u64,
    /// Changes in the history.
    pub history: usize,
    /// The version the cache is complete up to.
    pub rv: u64,
    /// The oldest version watches and exact lists can start from.
    pub oldest: u64,
}

/// How a watch starts: what to send before the changes its cursor delivers.
#[derive(Debug)]
pub struct WatchStart {
    /// Synthetic ADDED events first, for every object [`Snapshot::initial_events`] yields
    /// (a watch from "now", `resourceVersion` unset or `0`, or `sendInitialEvents`).
    pub initial_events: bool,
    /// Then a BOOKMARK at [`WatchStart::cursor`]'s version carrying the
    /// `k8s.io/initial-events-end` annotation (`sendInitialEvents`).
    pub initial_events_end: bool,
    /// Then the changes, from this cursor.
    pub cursor: Cursor,
}

impl Snapshot {
    fn empty() -> Snapshot {
        Snapshot {
            objects: OrdMap::new(),
            history: Vector::new(),
            first_seq: 0,
            rv: 0,
            oldest: 0,
            bytes: 0,
            loaded: false,
        }
    }

    /// Whether the cache has had its first snapshot from the cluster (before that it is empty
    /// and must not answer).
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// The version this snapshot is complete up to.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest version a watch or an exact list may start from.
    pub fn oldest(&self) -> u64 {
        self.oldest
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether there are no objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// What the snapshot holds.
    pub fn stats(&self) -> Stats {
        Stats {
            objects: self.objects.len(),
            bytes: self.bytes,
            history: self.history.len(),
            rv: self.rv,
            oldest: self.oldest,
        }
    }

    /// One object.
    pub fn get(&self, key: &ObjKey) -> Option<&Arc<Object>> {
        self.objects.get(key)
    }

    /// The objects, in key order.
    pub fn objects(&self) -> impl DoubleEndedIterator<Item = (&ObjKey, &Arc<Object>)> {
        self.objects.iter()
    }

    /// The history, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = &Arc<Change>> + ExactSizeIterator {
        self.history.iter()
    }

    /// Index in `history` of the first change after `rv`.
    fn index_after(&self, rv: u64) -> usize {
        match self
            .history
            .binary_search_by(|c| c.rv.cmp(&rv).then(std::cmp::Ordering::Less))
        {
            Ok(i) | Err(i) => i,
        }
    }

    /// The changes after `rv` (exclusive) up to this snapshot, oldest first; 410 Gone if some
    /// have left the history. A binary search, then a walk.
    pub fn changes_since(
        &self,
        rv: u64,
    ) -> Result<impl ExactSizeIterator<Item = &Arc<Change>>, Status> {
        if rv < self.oldest {
            return Err(Status::too_old_resource_version(rv, self.oldest));
        }
        let start = self.index_after(rv);
        Ok(self.history.focus().narrow(start..).into_iter())
    }

    /// A page of the objects `filter` matches, as kube-apiserver lists: at the version asked
    /// for (a past one reconstructed from the history), `limit` at a time, every page of a
    /// paginated list consistent with the first.
    pub fn list(&self, filter: &Filter, req: &ListRequest) -> Result<ListPage, Status> {
        let (read_rv, start) = list_position(req, self.rv, self.oldest)?;
        let after = |k: &ObjKey| start.as_ref().is_none_or(|s| k > s);
        if read_rv >= self.rv {
            let entries = match &start {
                Some(s) => self
                    .objects
                    .range::<_, ObjKey>((std::ops::Bound::Excluded(s), std::ops::Bound::Unbounded)),
                None => self.objects.range::<_, ObjKey>(..),
            };
            return Ok(paginate(entries, filter, req.limit, read_rv));
        }
        // The state at `read_rv`: the current objects with every later change undone. The
        // undo is an overlay of the (few) keys changed since, merged with the current map in
        // key order; the map itself is not touched.
        let mut overlay: BTreeMap<&ObjKey, Option<&Arc<Object>>> = BTreeMap::new();
        for c in self
            .changes_since(read_rv)
            .map_err(|_| Status::too_old_resource_version(read_rv, self.oldest))?
        {
            // The oldest change after `read_rv` holds the state at `read_rv`.
            overlay.entry(c.key()).or_insert(c.prev.as_ref());
        }
        let base = self.objects.iter().filter(|(k, _)| after(k));
        let patch = overlay.into_iter().filter(|(k, _)| after(k));
        let merged = Merge {
            base: base.peekable(),
            overlay: patch.peekable(),
        };
        Ok(paginate(merged, filter, req.limit, read_rv))
    }

    /// The objects a watch's synthetic initial ADDED events carry, in key order.
    pub fn initial_events<'s>(
        &'s self,
        filter: &'s Filter,
    ) -> impl Iterator<Item = &'s Arc<Object>> + 's {
        self.objects
            .iter()
            .filter(|(k, o)| filter.matches(k, &o.meta))
            .map(|(_, o)| o)
    }

    /// Starts a watch as kube-apiserver does: `send_initial` (a watch-list) or a version unset
    /// or `0`: synthetic ADDED events for what matches now (then, for a watch-list, the
    /// initial-events-end bookmark), then changes after this snapshot; from version `n`: the
    /// changes after `n` (410 Gone if they have left the history).
    pub fn watch(
        &self,
        filter: Filter,
        version: Version,
        send_initial: bool,
    ) -> Result<WatchStart, Status> {
        let synthetic = send_initial || matches!(version, Version::MostRecent | Version::Any);
        let cursor = match version {
            Version::At(n, _) if !synthetic => {
                if n < self.oldest {
                    return Err(Status::too_old_resource_version(n, self.oldest));
                }
                Cursor {
                    filter,
                    seq: self.first_seq + self.index_after(n) as u64,
                    rv: n,
                }
            }
            _ => Cursor::at_end(filter, self),
        };
        Ok(WatchStart {
            initial_events: synthetic,
            initial_events_end: send_initial,
            cursor,
        })
    }

    fn end_seq(&self) -> u64 {
        self.first_seq + self.history.len() as u64
    }
}

/// Merges the current objects with an overlay of past states (None: absent then), in key
/// order; where both have a key, the overlay wins.
struct Merge<B: Iterator, O: Iterator> {
    base: std::iter::Peekable<B>,
    overlay: std::iter::Peekable<O>,
}

impl<'a, B, O> Iterator for Merge<B, O>
where
    B: Iterator<Item = (&'a ObjKey, &'a Arc<Object>)>,
    O: Iterator<Item = (&'a ObjKey, Option<&'a Arc<Object>>)>,
{
    type Item = (&'a ObjKey, &'a Arc<Object>);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let take_overlay = match (self.base.peek(), self.overlay.peek()) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((b, _)), Some((o, _))) => {
                    if o <= b {
                        if o == b {
                            self.base.next();
                        }
                        true
                    } else {
                        false
                    }
                }
            };
            if !take_overlay {
                return self.base.next();
            }
            if let Some((k, Some(obj))) = self.overlay.next() {
                return Some((k, obj));
            }
        }
    }
}

/// A watcher's position: the changes it has been given (a sequence number into the history,
/// so a relist's several changes at one version resume exactly) and its filter. A cursor is
/// the whole per-watcher state: events are read from the shared history, never copied.
#[derive(Debug, Clone)]
pub struct Cursor {
    filter: Filter,
    /// Sequence number of the next change to deliver.
    seq: u64,
    /// Every change up to this version has been delivered (what a bookmark may announce).
    rv: u64,
}

/// A cursor has fallen behind the history window: the changes it needs are gone. The watch
/// ends (kube-apiserver closes a watcher that cannot keep up); its client re-watches from its
/// last version and gets 410 Gone if that has left the window too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("watcher fell behind the history window: it has delivered up to version {delivered}, the history starts after {oldest}")]
pub struct CutOff {
    /// The version the watcher had delivered up to.
    pub delivered: u64,
    /// The oldest version the history still covers.
    pub oldest: u64,
}

impl Cursor {
    /// A cursor that has seen everything in `snap`.
    pub fn at_end(filter: Filter, snap: &Snapshot) -> Cursor {
        Cursor {
            filter,
            seq: snap.end_seq(),
            rv: snap.rv,
        }
    }

    /// The watcher's filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// Every change up to this version has been delivered: the version a BOOKMARK announces.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// Whether everything in `snap` has been delivered.
    pub fn is_caught_up(&self, snap: &Snapshot) -> bool {
        self.seq >= snap.end_seq()
    }

    /// The changes in `snap` this watcher has not had yet, as the events its filter sees. The
    /// cursor advances as the iterator is consumed, so a writer may take a few (`.take(n)`),
    /// write them, and come back for the rest. [`CutOff`] if the next change it needs has left
    /// the history.
    pub fn pending<'c, 's>(&'c mut self, snap: &'s Snapshot) -> Result<Pending<'c, 's>, CutOff> {
        if self.seq < snap.first_seq {
            return Err(CutOff {
                delivered: self.rv,
                oldest: snap.oldest,
            });
        }
        let start = (self.seq - snap.first_seq) as usize;
        let end = snap.history.len();
        if start >= end && self.seq == snap.end_seq() {
            self.rv = self.rv.max(snap.rv);
        }
        Ok(Pending {
            changes: snap
                .history
                .focus()
                .narrow(start.min(end)..)
                .into_iter()
                .peekable(),
            snap_rv: snap.rv,
            cursor: self,
        })
    }
}

type HistoryIter<'s> = imbl::vector::Iter<'s, Arc<Change>, imbl::shared_ptr::DefaultSharedPtr>;

/// The changes a [`Cursor`] has yet to deliver from one snapshot (see [`Cursor::pending`]).
pub struct Pending<'c, 's> {
    cursor: &'c mut Cursor,
    changes: std::iter::Peekable<HistoryIter<'s>>,
    snap_rv: u64,
}

impl fmt::Debug for Pending<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("cursor", &self.cursor)
            .field("snap_rv", &self.snap_rv)
            .finish()
    }
}

impl<'s> Iterator for Pending<'_, 's> {
    type Item = (ChangeKind, &'s Arc<Change>);

    fn next(&mut self) -> Option<Self::Item> {
        while let Some(change) = self.changes.next() {
            self.cursor.seq += 1;
            // All changes at a version are delivered once the next one is later.
            match self.changes.peek() {
                None => self.cursor.rv = self.cursor.rv.max(self.snap_rv),
                Some(next) if next.rv > change.rv => self.cursor.rv = self.cursor.rv.max(change.rv),
                Some(_) => {}
            }
            if let Some(kind) = change.visible_to(&self.cursor.filter) {
                return Some((kind, change));
            }
        }
        None
    }
}

/// Why the writer rejected an update (the cache is unchanged; the caller resyncs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A watch event arrived before the first snapshot.
    #[error("watch event before the first snapshot")]
    NotSynced,
    /// An event or snapshot at a version the cache has already passed.
    #[error("version {got} is not newer than the cache's {current}")]
    NotNewer {
        /// The version received.
        got: u64,
        /// The cache's version.
        current: u64,
    },
    /// A snapshot at the cache's own version whose contents differ from the cache's (the
    /// differences would have no version to be delivered at).
    #[error("a snapshot at version {rv}, the cache's own, differs from the cache")]
    SameVersionDiffers {
        /// The version.
        rv: u64,
    },
}

/// A cache of one resource type of one cluster. Readers on any thread take [`Snapshot`]s
/// (lock-free, O(1)) and wait for changes with [`TypeCache::subscribe`]; one writer (the
/// cluster's tunnel) applies what the list-watch delivers ([`TypeCache::replace`],
/// [`TypeCache::apply`], [`TypeCache::progress`]), each published as a new snapshot.
///
/// Writes take `&self` so the cache can sit in state shared between threads; they are
/// serialised by a mutex that only writers touch (uncontended with one writer, and it makes
/// a second writer safe rather than lossy). Readers never take it, except the very first
/// [`TypeCache::subscribe`] of a cache, which creates the wake-up channel under it.
///
/// Memory: an empty cache is a few pointers; the history is allocated as changes arrive (never
/// for the whole window up front), and the wake-up channel (a few hundred bytes) only once
/// something waits on the cache: most caches of most clusters are never watched through the
/// hub.
pub struct TypeCache {
    current: ArcSwap<Snapshot>,
    write: Mutex<()>,
    window: usize,
    /// Created by the first subscriber, under `write` (so that no publish falls between the
    /// version it starts from and the channel existing); then every publish sends.
    notify: OnceLock<watch::Sender<u64>>,
}

impl fmt::Debug for TypeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TypeCache")
            .field("current", &*self.current.load())
            .field("window", &self.window)
            .finish()
    }
}

impl TypeCache {
    /// An empty, unloaded cache keeping at most `history_window` changes (at least 1) for
    /// watches, exact lists and continue tokens; older versions get 410 Gone, and a watcher
    /// that falls that far behind is cut off.
    pub fn new(history_window: usize) -> TypeCache {
        TypeCache {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            write: Mutex::new(()),
            window: history_window.max(1),
            notify: OnceLock::new(),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// One object, now.
    pub fn get(&self, key: &ObjKey) -> Option<Arc<Object>> {
        self.current.load().get(key).cloned()
    }

    /// What the cache holds now.
    pub fn stats(&self) -> Stats {
        self.current.load().stats()
    }

    /// A receiver of the cache's version, which changes whenever a new snapshot is published
    /// (`changed()`, or `wait_for(|rv| *rv >= n)` for "not older than"). Works without an
    /// async runtime: any executor can await it. Subscribe before taking the snapshot a watch
    /// starts from, so that no change falls between the two.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        if let Some(tx) = self.notify.get() {
            return tx.subscribe();
        }
        // The first subscriber: created under the writer's lock, starting from the version
        // published last; every later publish sees the channel and sends.
        let _writing = self.lock();
        self.notify
            .get_or_init(|| watch::channel(self.current.load().rv).0)
            .subscribe()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with the writer's lock held.
    fn publish(&self, snap: Snapshot) {
        let rv = snap.rv;
        self.current.store(Arc::new(snap));
        if let Some(tx) = self.notify.get() {
            tx.send_replace(rv);
        }
    }

    /// Appends `changes` to the history, trimming it to the window.
    fn record(&self, snap: &mut Snapshot, changes: impl IntoIterator<Item = Change>) {
        for c in changes {
            snap.history.push_back(Arc::new(c));
        }
        while snap.history.len() > self.window {
            if let Some(old) = snap.history.pop_front() {
                snap.oldest = snap.oldest.max(old.rv);
                snap.first_seq += 1;
            }
        }
    }

    /// Forgets everything, as before the first snapshot: for a cluster whose versions went
    /// backwards (its etcd was restored from a backup), where no history can continue. The
    /// caller ends every watcher first; the next [`TypeCache::replace`] is a first snapshot.
    pub fn reset(&self) {
        let _writing = self.lock();
        let old = self.snapshot();
        let mut snap = Snapshot::empty();
        snap.first_seq = old.end_seq() + 1;
        self.publish(snap);
    }

    /// A full list of the type at version `rv` (the first one, or a relist after the watch
    /// broke). Published at once. After the first, the differences from what the cache held
    /// are recorded as changes at `rv` (ADDED for new keys, MODIFIED where the version
    /// differs, DELETED for keys gone), so watchers carry on across a relist.
    pub fn replace(&self, mut objects: Vec<Object>, rv: u64) -> Result<(), ApplyError> {
        let _writing = self.lock();
        let old = self.snapshot();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        // A key listed twice: the later entry wins, as it would in a map.
        objects.reverse();
        objects.dedup_by(|later, earlier| later.key == earlier.key);
        objects.reverse();
        if !old.loaded {
            let mut bytes = 0;
            let map: OrdMap<ObjKey, Arc<Object>> = objects
                .into_iter()
                .map(|o| {
                    bytes += o.json.len() as u64;
                    (o.key.clone(), Arc::new(o))
                })
                .collect();
            let first_seq = old.end_seq();
            self.publish(Snapshot {
                objects: map,
                history: Vector::new(),
                first_seq,
                rv,
                oldest: rv,
                bytes,
                loaded: true,
            });
            return Ok(());
        }
        if rv < old.rv {
            return Err(ApplyError::NotNewer {
                got: rv,
                current: old.rv,
            });
        }
        // Merge-walk the old map and the new list, both in key order.
        let mut changes = Vec::new();
        let mut old_iter = old.objects.iter().peekable();
        let mut new_iter = objects.into_iter().peekable();
        loop {
            let order = match (old_iter.peek(), new_iter.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((k, _)), Some(n)) => (*k).cmp(&n.key),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((_, gone)) = old_iter.next() {
                        changes.push(Change {
                            rv,
                            kind: ChangeKind::Deleted,
                            object: Arc::new(gone.at_version(rv)),
                            prev: Some(gone.clone()),
                        });
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some(new) = new_iter.next() {
                        changes.push(Change {
                            rv,
                            kind: ChangeKind::Added,
                            object: Arc::new(new),
                            prev: None,
                        });
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((_, was)), Some(new)) = (old_iter.next(), new_iter.next()) {
                        if was.rv != new.rv {
                            changes.push(Change {
                                rv,
                                kind: ChangeKind::Modified,
                                object: Arc::new(new),
                                prev: Some(was.clone()),
                            });
                        }
                    }
                }
            }
        }
        if rv == old.rv && !changes.is_empty() {
            return Err(ApplyError::SameVersionDiffers { rv });
        }
        let mut snap = (*old).clone();
        for c in &changes {
            match c.kind {
                ChangeKind::Deleted => {
                    if let Some(gone) = snap.objects.remove(c.key()) {
                        snap.bytes = snap.bytes.saturating_sub(gone.json.len() as u64);
                    }
                }
                _ => {
                    if let Some(p) = &c.prev {
                        snap.bytes = snap.bytes.saturating_sub(p.json.len() as u64);
                    }
                    snap.bytes += c.object.json.len() as u64;
                    snap.objects.insert(c.key().clone(), c.object.clone());
                }
            }
        }
        snap.rv = rv;
        self.record(&mut snap, changes);
        self.publish(snap);
        Ok(())
    }

    /// One watch event, at the object's resourceVersion, which must be newer than the cache's
    /// (a version names one state: a reader that saw version N must never find N changed
    /// later). The recorded kind follows the cache's state: ADDED for a key it holds is
    /// recorded as MODIFIED, MODIFIED for a key it lacks as ADDED; DELETED for a key it lacks
    /// only moves the version.
    pub fn apply(&self, kind: ChangeKind, obj: Object) -> Result<(), ApplyError> {
        let _writing = self.lock();
        let old = self.snapshot();
        if !old.loaded {
            return Err(ApplyError::NotSynced);
        }
        if obj.rv <= old.rv {
            return Err(ApplyError::NotNewer {
                got: obj.rv,
                current: old.rv,
            });
        }
        let mut snap = (*old).clone();
        snap.rv = obj.rv;
        let prev = snap.objects.get(&obj.key).cloned();
        let obj = Arc::new(obj);
        let change = match (kind, prev) {
            (ChangeKind::Deleted, None) => None,
            (ChangeKind::Deleted, Some(prev)) => {
                snap.objects.remove(&obj.key);
                snap.bytes = snap.bytes.saturating_sub(prev.json.len() as u64);
                Some(Change {
                    rv: obj.rv,
                    kind: ChangeKind::Deleted,
                    object: obj,
                    prev: Some(prev),
                })
            }
            (_, prev) => {
                snap.bytes += obj.json.len() as u64;
                if let Some(p) = &prev {
                    snap.bytes = snap.bytes.saturating_sub(p.json.len() as u64);
                }
                snap.objects.insert(obj.key.clone(), obj.clone());
                Some(Change {
                    rv: obj.rv,
                    kind: match prev {
                        Some(_) => ChangeKind::Modified,
                        None => ChangeKind::Added,
                    },
                    object: obj,
                    prev,
                })
            }
        };
        self.record(&mut snap, change);
        self.publish(snap);
        Ok(())
    }

    /// The cluster confirmed the type is current at `rv` (a bookmark, or the list-watch's
    /// progress): the version moves without a change. Older or equal versions are ignored.
    pub fn progress(&self, rv: u64) {
        let _writing = self.lock();
        let old = self.snapshot();
        if !old.loaded || rv <= old.rv {
            return;
        }
        let mut snap = (*old).clone();
        snap.rv = rv;
        self.publish(snap);
    }
}
