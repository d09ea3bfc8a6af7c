//! # kubehub-cache: the hub's store of edge clusters' objects
//!
//! The agent list-watches resource types on its edge API server and streams a snapshot plus
//! watch events north; the hub keeps them here and answers GET, LIST and WATCH itself, with
//! kube-apiserver's semantics (resource versions, consistent pagination, watch from a version,
//! 410 Gone outside the history, selector transitions, watch-list initial events). This crate
//! is the store and the query engine: synchronous and runtime-free (the hub runs it on monoio
//! threads); the simulator (`kubehub-sim`) uses the same list/watch semantics from it.
//!
//! ## The pieces
//! * [`TypeCache`]: the objects of one resource type of one cluster, with a bounded history of
//!   recent [`Change`]s. One writer (the cluster's tunnel) feeds it what the cluster's
//!   list-watch delivers: [`TypeCache::replace`] (a snapshot / relist: swapped in at once, its
//!   differences from the previous contents recorded as changes so watchers carry on),
//!   [`TypeCache::apply`] (one watch event) and [`TypeCache::progress`] (a bookmark).
//! * [`Snapshot`]: an immutable view; every read runs on one: [`Snapshot::get`],
//!   [`Snapshot::list`] (pages consistent at the first page's version, past versions
//!   reconstructed from the history), [`Snapshot::changes_since`], [`Snapshot::watch`].
//! * [`Cursor`]: a watcher's whole state (a position in the shared history and a filter).
//! * [`Object`]: an object as received, parsed once ([`Object::parse`]).
//! * Shared with the simulator: [`ObjKey`], [`Meta`], [`Filter`], continue tokens
//!   ([`encode_continue`], [`decode_continue`]), which version a list reads
//!   ([`list_position`]), pages ([`paginate`]), list bodies as slices ([`list_body`]), watch
//!   lines ([`WatchLine`], [`error_line`]), bookmarks ([`bookmark_object`]), and Table /
//!   `PartialObjectMetadata` rendering ([`render`]).
//!
//! ## Invariants
//! * **One writer, lock-free readers.** The writer builds the next [`Snapshot`] and publishes
//!   it with one atomic pointer swap ([`arc_swap`]); a reader loads the current one without a
//!   lock and keeps it as long as it likes. No reader ever sees half an update (a relist is
//!   one swap), and no reader can slow the writer. (Writes are serialised by a mutex only
//!   writers take, so a second writer would be safe, not lossy.)
//! * **O(1) snapshots.** Objects are in a persistent B-tree ([`imbl::OrdMap`]) and the history
//!   in a persistent vector ([`imbl::Vector`]): the writer clones the previous snapshot in O(1)
//!   and path-copies what it changes; old snapshots share everything else.
//! * **Bytes as received.** An object's JSON is kept and served exactly as the agent sent it:
//!   GET and LIST hand out the stored `Bytes`, a watch line is the stored bytes between two
//!   static slices ([`WatchLine`]); nothing is re-encoded on the JSON path.
//! * **Bounded history.** At most `history_window` changes are kept; the oldest version a watch
//!   or an exact list can start from ([`Snapshot::oldest`]) rises as they are dropped; older
//!   ones get 410 Gone, as from kube-apiserver after a compaction.
//! * **Watchers cost a cursor.** A watcher reads the shared history from its cursor; nothing is
//!   queued per watcher. One that falls behind the window is [`CutOff`] (the caller ends it)
//!   and never slows the others. [`TypeCache::subscribe`] wakes watchers on any thread, with
//!   any executor (a `tokio::sync::watch` channel, which needs no runtime); the channel is
//!   created by the first subscriber (under the writers' mutex, once per cache), so a cache
//!   nobody waits on costs none.
//! * **Versions are integers.** kube-apiserver's resourceVersions are etcd revisions; an object
//!   whose version does not parse as `u64` is rejected ([`ParseError::BadResourceVersion`]),
//!   and its type is not cacheable.
//!
//! ## Design notes
//! * **History.** A persistent vector of `Arc<Change>`; a change references the object after
//!   it and the one before (`prev`), the same `Arc<Object>`s the map holds, so history costs
//!   one small record per change plus whatever old states it alone keeps alive. Every change
//!   has a sequence number; a [`Cursor`] is one, so it resumes exactly even inside a relist's
//!   several changes at one version, and "behind the window" is one comparison.
//! * **Watch lines.** kube-apiserver's watch cache encodes each event once for all watchers;
//!   here there is nothing to encode: `{"type":"MODIFIED","object":` and `}\n` are static and
//!   the object is the stored `Bytes` ([`Change::line`]), so the history holds no second copy
//!   of each object and a JSON watcher's write is three slices. Selector transitions only
//!   change the static prefix; Table and metadata watchers render ([`render_event`]).
//! * **Consistent pages.** A continue token carries the first page's version. A later page at
//!   an older version than the snapshot's is read through an overlay: the keys changed since
//!   that version (from the history, each mapped to its `prev`) merged in key order with the
//!   current map, which is not touched; tokens older than the history get 410 Expired with
//!   kube-apiserver's message. `Exact` lists of past versions use the same path.
//! * **Relists.** [`TypeCache::replace`] merge-walks the old map and the sorted new list; only
//!   differences are written (path copies), so a relist that finds little changed costs
//!   little and shares structure with older snapshots.
//! * **Input is not trusted.** An event at a version the cache has passed is refused
//!   ([`ApplyError`]); ADDED for a key the cache holds is recorded as MODIFIED (and the
//!   reverse), DELETED of an unknown key only moves the version; a relist at the cache's own
//!   version must not differ from it.
//!
//! ## Memory
//! [`Stats`] reports objects held and their JSON bytes. Measured with a counting allocator
//! (`benches/tests/overhead.rs`: 10,000 simulator pods of 4.6 KB of JSON on average, three
//! labels each and the ten pod field selectors), the cache holds [`OVERHEAD_PER_OBJECT`]
//! (460) bytes per object beyond its JSON (about 10% for pods: the object record, its key and
//! selector view, its share of the B-tree), and a modification adds [`OVERHEAD_PER_CHANGE`]
//! (440) bytes beyond its new JSON while it is in the history window.
//!
//! A received object's `Bytes` should own its allocation: one sliced from a large read buffer
//! would keep the whole buffer alive while cached.

#![deny(missing_docs)]

mod cache;
mod key;
pub mod list;
mod object;
pub mod render;
mod select;
pub mod watch;

pub use cache::{
    ApplyError, Change, Cursor, CutOff, Pending, Snapshot, Stats, TypeCache, WatchStart,
};
pub use key::ObjKey;
pub use list::{
    concat, decode_continue, encode_continue, list_body, list_position, paginate, ListPage,
    ListRequest, Listed,
};
pub use object::{with_resource_version, Object, ParseError};
pub use render::{render_event, render_list, render_object, Render};
pub use select::{base_resource, Filter, Meta};
pub use watch::{bookmark_line, bookmark_object, error_line, ChangeKind, WatchLine};

/// Heap bytes the cache holds per object beyond its JSON, measured (see the crate docs): the
/// object record, its key and selector view, and its share of the B-tree.
pub const OVERHEAD_PER_OBJECT: usize = 460;

/// Heap bytes one modification adds beyond its new JSON, measured: the new object's record and
/// the history entry (the previous state stays referenced by the entry, as `prev`, until it
/// leaves the window).
pub const OVERHEAD_PER_CHANGE: usize = 440;
