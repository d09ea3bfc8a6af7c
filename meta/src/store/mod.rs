//! The metaserver's storage: a small versioned key-value store in etcd's shape.
//!
//! Everything the metaserver keeps (tenants, grants, tokens, the registry) is written through
//! this API, and it is written so that the metaserver itself holds no state: with the etcd
//! backend any number of replicas share one etcd and agree through its transactions and
//! watches. Two backends implement it and pass one conformance suite (`meta/tests/store.rs`):
//!
//! * [`Embedded`], the zero-setup default: a [redb](https://docs.rs/redb) file on local disk,
//!   durable on every commit, for a single metaserver process.
//! * [`Etcd`]: an etcd cluster (v3 API); every key lives under a configurable prefix.
//!
//! Callers use [`Backend`], one concrete type over both, opened from a [`StoreConfig`] (the
//! `[store]` section of `meta.toml`):
//!
//! ```toml
//! [store]
//! backend = "embedded"                 # "embedded" (a local file) or "etcd"
//! path = "meta.redb"                   # embedded: the database file (created when missing)
//! endpoints = ["http://127.0.0.1:2379"]   # etcd: client URLs
//! prefix = "/kubehub/"                 # etcd: every key lives under this prefix
//! dial_timeout_ms = 5000               # etcd: connecting to an endpoint
//! request_timeout_ms = 10000           # etcd: each request (not the life of a watch)
//! watch_history = 10000                # embedded: events kept for watches that resume
//! ```
//!
//! # Guarantees (both backends)
//!
//! * **Revisions.** The store has one revision counter. Every transaction that changes
//!   something bumps it by exactly one, and every key it writes or deletes carries that
//!   revision (`mod_revision`; `create_revision` is the revision that created the key). A
//!   transaction that changes nothing (failed compares, deleting absent keys) does not bump it.
//! * **Transactions are all-or-nothing.** [`Txn`] compares, then writes: if any compare fails,
//!   nothing is written and [`TxnResult::succeeded`] is `false` (a conflict is an answer, not an
//!   error). A transaction may not touch the same key twice ([`StoreError::InvalidArgument`]).
//! * **Reads are consistent.** [`Backend::list`] returns the keys of one snapshot, sorted by
//!   key, with that snapshot's revision: watch from `revision + 1` to follow it without a gap.
//! * **Watches** deliver the events of a key prefix from a revision on, in revision order, with
//!   no gaps and no duplicates, one batch per revision ([`Watch::next`]). When the revision
//!   asked for is no longer held (etcd compaction; the embedded store's bounded history, which
//!   also catches a watcher that stops reading for too long), the watch ends with
//!   [`StoreError::Compacted`]: list again and watch from the list's revision. Nothing is
//!   buffered without bound for a slow watcher.
//! * **Leases.** A key written with a lease is deleted (a real write, seen by watchers as a
//!   Delete) when the lease expires or is revoked. The embedded store keeps leases in memory:
//!   when it is opened again, every key that still carries a lease is deleted, since the
//!   process that kept it alive is gone.
//! * **Durability.** A successful write has been committed to disk (embedded: fsync on commit;
//!   etcd: raft + WAL) before the call returns.
//!
//! Keys are UTF-8 strings, given and returned without the etcd prefix. The etcd backend rounds
//! short lease TTLs up to its minimum (2 s with the default heartbeat).
//!
//! # Use
//!
//! ```no_run
//! use kubehub_meta::store::{Backend, Compare, Op, StoreConfig, StoreError, Txn};
//!
//! # async fn demo() -> Result<(), StoreError> {
//! let store = Backend::open(&StoreConfig::embedded("/var/lib/kubehub/meta.redb")).await?;
//! // Create only if absent: a conflict is `succeeded == false`, not an error.
//! let created = store
//!     .txn(Txn::new().when(Compare::absent("tenants/acme")).then(Op::put("tenants/acme", "{}")))
//!     .await?;
//! // A registration that disappears when its owner stops renewing it.
//! let lease = store.lease_grant(15).await?;
//! store.txn(Txn::new().then(Op::put_with_lease("hubs/hub-1", "10.0.0.1", lease))).await?;
//! store.lease_keep_alive(lease).await?;
//! // Follow a prefix without a gap: list, then watch from the list's revision + 1.
//! let (tenants, revision) = store.list("tenants/").await?;
//! let mut changes = store.watch("tenants/", revision + 1).await?;
//! while let Some(batch) = changes.next().await? {
//!     for event in batch { /* apply event.kind to event.kv */ }
//! }
//! # let _ = (created, tenants);
//! # Ok(())
//! # }
//! ```

mod embedded;
mod etcd;

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use embedded::Embedded;
pub use etcd::Etcd;

/// Which implementation backs the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// A redb file on local disk (the default).
    #[default]
    Embedded,
    /// An etcd cluster.
    Etcd,
}

/// The `[store]` section of `meta.toml`; see the [module documentation](self) for the TOML.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `"embedded"` or `"etcd"`.
    pub backend: BackendKind,
    /// Embedded: the database file (its directory is created when missing).
    pub path: PathBuf,
    /// Etcd: client URLs (`http://host:port`; a bare `host:port` means `http://`).
    pub endpoints: Vec<String>,
    /// Etcd: the prefix every key is stored under (default `/kubehub/`).
    pub prefix: String,
    /// Etcd: how long connecting to an endpoint may take, milliseconds.
    pub dial_timeout_ms: u64,
    /// Etcd: how long one request may take, milliseconds (a watch only for its creation).
    pub request_timeout_ms: u64,
    /// Embedded: how many of the latest events are kept for watches that start in the past or
    /// fall behind; older revisions answer [`StoreError::Compacted`].
    pub watch_history: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: BackendKind::Embedded,
            path: PathBuf::from("meta.redb"),
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: "/kubehub/".to_owned(),
            dial_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            watch_history: 10_000,
        }
    }
}

impl StoreConfig {
    /// An embedded store at `path`, every other option at its default.
    pub fn embedded(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            backend: BackendKind::Embedded,
            path: path.into(),
            ..StoreConfig::default()
        }
    }

    /// An etcd store at `endpoints` under `prefix`, every other option at its default.
    pub fn etcd(endpoints: Vec<String>, prefix: impl Into<String>) -> StoreConfig {
        StoreConfig {
            backend: BackendKind::Etcd,
            endpoints,
            prefix: prefix.into(),
            ..StoreConfig::default()
        }
    }

    fn dial_timeout(&self) -> Duration {
        Duration::from_millis(self.dial_timeout_ms.max(1))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
}

/// Why a store operation failed. A failed compare is not an error: see [`TxnResult`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, timed out, or is held by someone else; retrying later
    /// may succeed.
    #[error("store unavailable ({context}): {message}")]
    Unavailable {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
    /// The revision asked for is older than the store still holds (or a watcher fell that far
    /// behind): list again, then watch from the list's revision.
    #[error(
        "revision {requested} is no longer available: the oldest revision that can be watched \
         is {compacted}"
    )]
    Compacted {
        /// The revision asked for (for a watch: the next revision it needed).
        requested: i64,
        /// The oldest revision a watch can start from now.
        compacted: i64,
    },
    /// The lease does not exist (never granted, expired, or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// The request itself is wrong (an empty key, a key touched twice in one transaction, a
    /// TTL below 1, a future revision to compact).
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// The configuration cannot be used.
    #[error("store configuration: {0}")]
    Config(String),
    /// Stored data cannot be decoded.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The embedded database file failed.
    #[error("store I/O ({context}): {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An unexpected failure inside the store or its client.
    #[error("store internal error ({context}): {message}")]
    Internal {
        /// What was being done.
        context: String,
        /// What went wrong.
        message: String,
    },
}

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key, without the store's prefix.
    pub key: String,
    /// The value (empty in a Delete event).
    pub value: Vec<u8>,
    /// The revision that created the key (0 in a Delete event).
    pub create_revision: i64,
    /// The revision that last wrote the key; in a Delete event, the deletion's revision.
    pub mod_revision: i64,
    /// The lease the key is attached to; 0: none.
    pub lease: i64,
}

/// A condition of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's `mod_revision` is `revision`; `revision == 0` means the key is absent.
    ModRevision {
        /// The key.
        key: String,
        /// The expected `mod_revision`, or 0 for "absent".
        revision: i64,
    },
    /// The key does not exist.
    Absent {
        /// The key.
        key: String,
    },
    /// The key exists.
    Present {
        /// The key.
        key: String,
    },
}

impl Compare {
    /// The key's `mod_revision` is `revision` (0: the key is absent).
    pub fn mod_revision(key: impl Into<String>, revision: i64) -> Compare {
        Compare::ModRevision {
            key: key.into(),
            revision,
        }
    }

    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Compare {
        Compare::Absent { key: key.into() }
    }

    /// The key exists.
    pub fn present(key: impl Into<String>) -> Compare {
        Compare::Present { key: key.into() }
    }

    fn key(&self) -> &str {
        match self {
            Compare::ModRevision { key, .. }
            | Compare::Absent { key }
            | Compare::Present { key } => key,
        }
    }
}

/// A write of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Writes `value` at `key`, attached to `lease` (0: none).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// The lease (0: none); it must exist.
        lease: i64,
    },
    /// Deletes `key` (nothing happens if it is absent).
    Delete {
        /// The key.
        key: String,
    },
    /// Deletes every key that starts with `prefix`.
    DeletePrefix {
        /// The prefix.
        prefix: String,
    },
}

impl Op {
    /// Writes `value` at `key`, without a lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// Writes `value` at `key`, attached to `lease`.
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: i64) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }

    /// Deletes `key`.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }

    /// Deletes every key under `prefix`.
    pub fn delete_prefix(prefix: impl Into<String>) -> Op {
        Op::DeletePrefix {
            prefix: prefix.into(),
        }
    }
}

/// A transaction: if every compare holds, every op is applied, as one revision; otherwise
/// nothing is. Keep it under 128 compares and ops: etcd's default limit (`--max-txn-ops`);
/// the embedded store has none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    /// The conditions (all must hold).
    pub compares: Vec<Compare>,
    /// The writes.
    pub ops: Vec<Op>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Txn {
        self.compares.push(compare);
        self
    }

    /// Adds a write.
    pub fn then(mut self, op: Op) -> Txn {
        self.ops.push(op);
        self
    }

    /// Checks what both backends reject: empty keys, and a key written twice or both written
    /// and deleted (etcd's rule).
    fn validate(&self) -> Result<(), StoreError> {
        let bad = |m: String| Err(StoreError::InvalidArgument(m));
        if let Some(c) = self.compares.iter().find(|c| c.key().is_empty()) {
            return bad(format!("empty key in compare {c:?}"));
        }
        let mut puts = std::collections::BTreeSet::new();
        for op in &self.ops {
            match op {
                Op::Put { key, .. } => {
                    if key.is_empty() {
                        return bad("empty key in put".into());
                    }
                    if !puts.insert(key.as_str()) {
                        return bad(format!("key {key:?} is written twice in one transaction"));
                    }
                }
                Op::Delete { key } if key.is_empty() => return bad("empty key in delete".into()),
                _ => {}
            }
        }
        for op in &self.ops {
            let hit = match op {
                Op::Delete { key } => puts.contains(key.as_str()),
                Op::DeletePrefix { prefix } => puts.iter().any(|k| k.starts_with(prefix.as_str())),
                Op::Put { .. } => false,
            };
            if hit {
                return bad(format!("{op:?} deletes a key the same transaction writes"));
            }
        }
        Ok(())
    }
}

/// The answer to a [`Txn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (and so the ops were applied).
    pub succeeded: bool,
    /// The store's revision after the transaction: the revision of its writes when it wrote
    /// something, otherwise the current revision.
    pub revision: i64,
}

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Created or overwritten.
    Put,
    /// Deleted (explicitly, by prefix, or by its lease).
    Delete,
}

/// One change seen by a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Put or Delete.
    pub kind: EventKind,
    /// The key as written; for a Delete only `key` and `mod_revision` (the deletion's revision)
    /// are set.
    pub kv: Kv,
}

impl Event {
    fn delete(key: String, revision: i64) -> Event {
        Event {
            kind: EventKind::Delete,
            kv: Kv {
                key,
                value: Vec::new(),
                create_revision: 0,
                mod_revision: revision,
                lease: 0,
            },
        }
    }
}

/// A stream of changes under a prefix, from [`Backend::watch`].
#[derive(Debug)]
pub struct Watch {
    inner: WatchInner,
}

#[derive(Debug)]
enum WatchInner {
    Embedded(embedded::EmbeddedWatch),
    Etcd(Box<etcd::EtcdWatch>),
}

impl Watch {
    /// The next batch: the events of one revision under the prefix, in the order the
    /// transaction wrote them. Waits until there is one. Cancel-safe.
    ///
    /// * `Ok(None)`: the embedded store was closed (every handle dropped).
    /// * [`StoreError::Compacted`]: the revision this watch needs is gone (it started too far
    ///   back, or it was not read for too long); list again and watch from the list.
    /// * [`StoreError::Unavailable`] (etcd): the stream broke (etcd restarted, the connection
    ///   dropped); watch again from [`Watch::next_revision`].
    ///
    /// After an error the watch is over: it keeps answering with an error.
    pub async fn next(&mut self) -> Result<Option<Vec<Event>>, StoreError> {
        match &mut self.inner {
            WatchInner::Embedded(w) => w.next().await,
            WatchInner::Etcd(w) => w.next().await,
        }
    }

    /// The revision this watch delivers next: after a failure, watch again from here.
    pub fn next_revision(&self) -> i64 {
        match &self.inner {
            WatchInner::Embedded(w) => w.next_revision(),
            WatchInner::Etcd(w) => w.next_revision(),
        }
    }
}

/// The store: one of the backends, chosen by [`StoreConfig::backend`]. Cheap to clone (the
/// clones share one database or one etcd connection).
#[derive(Debug, Clone)]
pub enum Backend {
    /// The embedded redb store.
    Embedded(Embedded),
    /// The etcd store.
    Etcd(Etcd),
}

macro_rules! delegate {
    ($self:ident, $b:ident => $e:expr) => {
        match $self {
            Backend::Embedded($b) => $e,
            Backend::Etcd($b) => $e,
        }
    };
}

impl Backend {
    /// Opens the configured backend. Embedded: opens or creates the file, deleting keys left
    /// with leases by a previous process. Etcd: connects and checks that etcd answers.
    pub async fn open(config: &StoreConfig) -> Result<Backend, StoreError> {
        Ok(match config.backend {
            BackendKind::Embedded => Backend::Embedded(Embedded::open(config).await?),
            BackendKind::Etcd => Backend::Etcd(Etcd::open(config).await?),
        })
    }

    /// The key, or `None` when it is absent.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        delegate!(self, b => b.get(key).await)
    }

    /// Every key under `prefix` (`""`: all), sorted by key, and the revision of the read.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        delegate!(self, b => b.list(prefix).await)
    }

    /// Applies `txn` atomically; see [`Txn`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        delegate!(self, b => b.txn(txn).await)
    }

    /// Writes `value` at `key` unconditionally; returns the write's revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<i64, StoreError> {
        Ok(self
            .txn(Txn::new().then(Op::put(key, value)))
            .await?
            .revision)
    }

    /// Deletes `key` unconditionally; returns the store's revision after it.
    pub async fn delete(&self, key: &str) -> Result<i64, StoreError> {
        Ok(self.txn(Txn::new().then(Op::delete(key))).await?.revision)
    }

    /// Watches the keys under `prefix` from `from_revision` on (0: from the next write). Once
    /// this returns the watch is established: later writes are seen. A revision no longer held
    /// is reported by the first [`Watch::next`] as [`StoreError::Compacted`].
    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<Watch, StoreError> {
        let inner = match self {
            Backend::Embedded(b) => WatchInner::Embedded(b.watch(prefix, from_revision).await?),
            Backend::Etcd(b) => WatchInner::Etcd(Box::new(b.watch(prefix, from_revision).await?)),
        };
        Ok(Watch { inner })
    }

    /// Grants a lease of `ttl_s` seconds (at least 1); returns its id.
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64, StoreError> {
        delegate!(self, b => b.lease_grant(ttl_s).await)
    }

    /// Renews the lease once; returns its TTL from now, seconds.
    /// [`StoreError::LeaseNotFound`] when it has expired or been revoked.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        delegate!(self, b => b.lease_keep_alive(id).await)
    }

    /// Revokes the lease, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        delegate!(self, b => b.lease_revoke(id).await)
    }

    /// The store's current revision.
    pub async fn revision(&self) -> Result<i64, StoreError> {
        delegate!(self, b => b.revision().await)
    }

    /// Forgets the history before `revision`: watches from older revisions get
    /// [`StoreError::Compacted`]. Compacting at or below an earlier compaction does nothing.
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        delegate!(self, b => b.compact(revision).await)
    }
}

fn check_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        Err(StoreError::InvalidArgument("empty key".into()))
    } else {
        Ok(())
    }
}

fn check_ttl(ttl_s: i64) -> Result<(), StoreError> {
    if ttl_s < 1 {
        Err(StoreError::InvalidArgument(format!(
            "lease TTL must be at least 1 s, not {ttl_s}"
        )))
    } else {
        Ok(())
    }
}
