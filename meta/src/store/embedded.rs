//! The embedded backend: a redb file, one writer, leases and watch history in memory.
//!
//! * Table `kv`: key → record (`value`, `create_revision`, `mod_revision`, `lease`); table
//!   `meta`: `"revision"` → the store's revision. Both change in the same redb transaction,
//!   committed durably (fsync) before a write returns.
//! * Writes (transactions, lease revocations) run on the blocking pool one at a time under
//!   `Inner::writer`, which also holds the committed revision; reads use redb's MVCC snapshots
//!   and never wait for a writer.
//! * After a commit the write's events are appended to a bounded in-memory history and the
//!   revision is published on a `tokio::sync::watch` channel. Watchers keep only a cursor (the
//!   next revision they need) and read from the shared history, so a slow watcher costs no
//!   memory: when the history has moved past its cursor it gets [`StoreError::Compacted`].
//! * Leases live in memory; a timer task revokes expired ones (a real write with a revision).
//!   Opening the file deletes every key still attached to a lease: its owner is gone.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::watch;

use super::{
    check_key, check_ttl, Compare, Event, EventKind, Kv, Op, StoreConfig, StoreError, Txn,
    TxnResult,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const REVISION: &str = "revision";
/// The revision of an empty store (etcd's too).
const FIRST_REVISION: i64 = 1;
/// How often the lease timer looks for expired leases.
const LEASE_TICK: Duration = Duration::from_millis(100);
/// How long `open` waits for a file another handle of this process is still closing.
const OPEN_WAIT: Duration = Duration::from_secs(5);
/// The record format's version byte.
const RECORD_V1: u8 = 1;
const RECORD_HEADER: usize = 1 + 3 * 8;

/// The embedded store: a redb file. Cheap to clone; the file is closed when the last clone
/// (and any operation still running) is gone. Open it inside the Tokio runtime that uses it:
/// its lease timer is a task of that runtime.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Embedded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedded")
            .field("path", &self.inner.path)
            .field("revision", &*self.inner.notify.borrow())
            .finish()
    }
}

struct Inner {
    path: PathBuf,
    db: Database,
    /// The committed revision; held for the whole of every write (the single writer). Only
    /// ever locked on the blocking pool.
    writer: Mutex<i64>,
    leases: Mutex<Leases>,
    hub: Arc<Mutex<Hub>>,
    /// The latest published revision; watchers wait on it.
    notify: watch::Sender<i64>,
    history: usize,
}

struct Leases {
    next_id: i64,
    map: HashMap<i64, Lease>,
}

struct Lease {
    ttl: i64,
    deadline: Instant,
    keys: BTreeSet<String>,
}

/// The watch history: the latest events, in revision order.
#[derive(Debug)]
pub(super) struct Hub {
    events: VecDeque<Event>,
    /// Every event of this revision and later is in `events` (when it has happened).
    first_retained: i64,
}

/// What a write did, for the watchers and the lease index.
#[derive(Default)]
struct Changes {
    events: Vec<Event>,
    /// (key, lease it had, lease it has now).
    lease_moves: Vec<(String, i64, i64)>,
}

type KvTable<'t> = redb::Table<'t, &'static str, &'static [u8]>;

/// A stored value with its revisions.
struct Record {
    value: Vec<u8>,
    create_revision: i64,
    mod_revision: i64,
    lease: i64,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + self.value.len());
        out.push(RECORD_V1);
        out.extend_from_slice(&self.create_revision.to_le_bytes());
        out.extend_from_slice(&self.mod_revision.to_le_bytes());
        out.extend_from_slice(&self.lease.to_le_bytes());
        out.extend_from_slice(&self.value);
        out
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Record, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt(format!("the record of key {key:?} {why}"));
        let (&version, rest) = bytes.split_first().ok_or_else(|| corrupt("is empty"))?;
        if version != RECORD_V1 {
            return Err(corrupt(&format!("has unknown format version {version}")));
        }
        let int = |i: usize| -> Result<i64, StoreError> {
            rest.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(i64::from_le_bytes)
                .ok_or_else(|| corrupt("is truncated"))
        };
        Ok(Record {
            create_revision: int(0)?,
            mod_revision: int(1)?,
            lease: int(2)?,
            value: rest.get(24..).unwrap_or_default().to_vec(),
        })
    }

    fn into_kv(self, key: String) -> Kv {
        Kv {
            key,
            value: self.value,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: self.lease,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn db_err(context: impl Into<String>, e: impl Into<redb::Error>) -> StoreError {
    let context = context.into();
    match e.into() {
        redb::Error::Io(source) => StoreError::Io { context, source },
        redb::Error::Corrupted(m) => StoreError::Corrupt(format!("{context}: {m}")),
        redb::Error::DatabaseAlreadyOpen => StoreError::Unavailable {
            context,
            message: "the database file is open in another process".into(),
        },
        e => StoreError::Internal {
            context,
            message: e.to_string(),
        },
    }
}

/// Runs blocking redb work on the blocking pool.
async fn blocking<T, F>(context: &'static str, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal {
            context: context.into(),
            message: e.to_string(),
        })?
}

impl Embedded {
    /// Opens (or creates) the file at `config.path`; deletes the keys left attached to leases.
    pub async fn open(config: &StoreConfig) -> Result<Embedded, StoreError> {
        let path = config.path.clone();
        let (db, revision) = {
            let path = path.clone();
            blocking("open", move || open_db(&path)).await?
        };
        let (notify, _) = watch::channel(revision);
        let inner = Arc::new(Inner {
            path,
            db,
            writer: Mutex::new(revision),
            leases: Mutex::new(Leases {
                next_id: first_lease_id(),
                map: HashMap::new(),
            }),
            hub: Arc::new(Mutex::new(Hub {
                events: VecDeque::new(),
                first_retained: revision + 1,
            })),
            notify,
            history: config.watch_history.max(1),
        });
        spawn_lease_timer(Arc::downgrade(&inner));
        tracing::info!(path = %inner.path.display(), revision, "embedded store open");
        Ok(Embedded { inner })
    }

    /// See [`super::Backend::get`].
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        check_key(key)?;
        let inner = self.inner.clone();
        let key = key.to_owned();
        blocking("get", move || {
            let ctx = || format!("get {key:?}");
            let rtx = inner.db.begin_read().map_err(|e| db_err(ctx(), e))?;
            let table = rtx.open_table(KV).map_err(|e| db_err(ctx(), e))?;
            let record = match table.get(key.as_str()).map_err(|e| db_err(ctx(), e))? {
                None => return Ok(None),
                Some(v) => Record::decode(&key, v.value())?,
            };
            Ok(Some(record.into_kv(key)))
        })
        .await
    }

    /// See [`super::Backend::list`].
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let inner = self.inner.clone();
        let prefix = prefix.to_owned();
        blocking("list", move || {
            let ctx = || format!("list {prefix:?}");
            let rtx = inner.db.begin_read().map_err(|e| db_err(ctx(), e))?;
            let revision = read_revision(&rtx.open_table(META).map_err(|e| db_err(ctx(), e))?)?;
            let table = rtx.open_table(KV).map_err(|e| db_err(ctx(), e))?;
            let mut out = Vec::new();
            for item in table
                .range(prefix.as_str()..)
                .map_err(|e| db_err(ctx(), e))?
            {
                let (k, v) = item.map_err(|e| db_err(ctx(), e))?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                out.push(Record::decode(key, v.value())?.into_kv(key.to_owned()));
            }
            Ok((out, revision))
        })
        .await
    }

    /// See [`super::Backend::txn`].
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        txn.validate()?;
        let inner = self.inner.clone();
        blocking("txn", move || inner.apply(txn)).await
    }

    /// See [`super::Backend::watch`].
    pub(super) async fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<EmbeddedWatch, StoreError> {
        if from_revision < 0 {
            return Err(StoreError::InvalidArgument(format!(
                "watch from negative revision {from_revision}"
            )));
        }
        let rx = self.inner.notify.subscribe();
        let next_rev = if from_revision == 0 {
            *rx.borrow() + 1
        } else {
            from_revision
        };
        Ok(EmbeddedWatch {
            hub: self.inner.hub.clone(),
            rx,
            prefix: prefix.to_owned(),
            next_rev,
        })
    }

    /// See [`super::Backend::lease_grant`].
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<i64, StoreError> {
        check_ttl(ttl_s)?;
        let mut leases = lock(&self.inner.leases);
        let id = leases.next_id;
        leases.next_id += 1;
        leases.map.insert(
            id,
            Lease {
                ttl: ttl_s,
                deadline: Instant::now() + ttl_duration(ttl_s),
                keys: BTreeSet::new(),
            },
        );
        Ok(id)
    }

    /// See [`super::Backend::lease_keep_alive`].
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64, StoreError> {
        let now = Instant::now();
        let mut leases = lock(&self.inner.leases);
        match leases.map.get_mut(&id) {
            Some(lease) if lease.deadline > now => {
                lease.deadline = now + ttl_duration(lease.ttl);
                Ok(lease.ttl)
            }
            // An expired lease the timer has not revoked yet is as good as gone.
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// See [`super::Backend::lease_revoke`].
    pub async fn lease_revoke(&self, id: i64) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        match blocking("lease revoke", move || inner.revoke(id, false)).await? {
            true => Ok(()),
            false => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// See [`super::Backend::revision`].
    pub async fn revision(&self) -> Result<i64, StoreError> {
        Ok(*self.inner.notify.borrow())
    }

    /// See [`super::Backend::compact`]: drops the watch history before `revision`.
    pub async fn compact(&self, revision: i64) -> Result<(), StoreError> {
        let current = *self.inner.notify.borrow();
        if revision > current {
            return Err(StoreError::InvalidArgument(format!(
                "cannot compact at revision {revision}: the current revision is {current}"
            )));
        }
        let mut hub = lock(&self.inner.hub);
        if revision > hub.first_retained {
            while hub
                .events
                .front()
                .is_some_and(|e| e.kv.mod_revision < revision)
            {
                hub.events.pop_front();
            }
            hub.first_retained = revision;
        }
        Ok(())
    }
}

impl Inner {
    /// Applies a validated transaction (blocking; the single writer).
    fn apply(&self, txn: Txn) -> Result<TxnResult, StoreError> {
        let mut committed = lock(&self.writer);
        {
            // A lease cannot disappear while we hold the writer: revocation takes it too.
            let now = Instant::now();
            let leases = lock(&self.leases);
            for op in &txn.ops {
                if let Op::Put { lease, .. } = op {
                    let alive = leases.map.get(lease).is_some_and(|l| l.deadline > now);
                    if *lease != 0 && !alive {
                        return Err(StoreError::LeaseNotFound(*lease));
                    }
                }
            }
        }
        let Txn { compares, ops } = txn;
        let (succeeded, revision) = self.write(&mut committed, "txn", |kv, rev, changes| {
            for c in &compares {
                if !compare_holds(kv, c)? {
                    return Ok(false);
                }
            }
            for op in ops {
                match op {
                    Op::Put { key, value, lease } => {
                        let old = get_record(kv, &key)?;
                        let record = Record {
                            value,
                            create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
                            mod_revision: rev,
                            lease,
                        };
                        kv.insert(key.as_str(), record.encode().as_slice())
                            .map_err(|e| db_err(format!("put {key:?}"), e))?;
                        let old_lease = old.map_or(0, |o| o.lease);
                        if old_lease != lease {
                            changes.lease_moves.push((key.clone(), old_lease, lease));
                        }
                        changes.events.push(Event {
                            kind: EventKind::Put,
                            kv: record.into_kv(key),
                        });
                    }
                    Op::Delete { key } => delete_key(kv, key, rev, changes)?,
                    Op::DeletePrefix { prefix } => {
                        let keys = {
                            let ctx = || format!("delete prefix {prefix:?}");
                            let mut keys = Vec::new();
                            for item in kv.range(prefix.as_str()..).map_err(|e| db_err(ctx(), e))? {
                                let (k, _) = item.map_err(|e| db_err(ctx(), e))?;
                                if !k.value().starts_with(prefix.as_str()) {
                                    break;
                                }
                                keys.push(k.value().to_owned());
                            }
                            keys
                        };
                        for key in keys {
                            delete_key(kv, key, rev, changes)?;
                        }
                    }
                }
            }
            Ok(true)
        })?;
        Ok(TxnResult {
            succeeded,
            revision,
        })
    }

    /// Revokes lease `id` and deletes its keys (blocking). `only_if_expired`: leave it alone
    /// when it was renewed meanwhile. Returns whether the lease existed (and was revoked).
    fn revoke(&self, id: i64, only_if_expired: bool) -> Result<bool, StoreError> {
        let mut committed = lock(&self.writer);
        let keys = {
            let mut leases = lock(&self.leases);
            match leases.map.get(&id) {
                None => return Ok(false),
                Some(l) if only_if_expired && l.deadline > Instant::now() => return Ok(false),
                Some(_) => {}
            }
            leases.map.remove(&id).map(|l| l.keys).unwrap_or_default()
        };
        let n = keys.len();
        // Should this write fail, the keys outlive their lease until the file is next opened
        // (which deletes every key that carries a lease).
        self.write(&mut committed, "lease revoke", |kv, rev, changes| {
            for key in keys {
                // The index is exact, but check: only delete what still carries this lease.
                if get_record(kv, &key)?.is_some_and(|r| r.lease == id) {
                    delete_key(kv, key, rev, changes)?;
                }
            }
            Ok(true)
        })?;
        tracing::debug!(lease = id, keys = n, only_if_expired, "lease revoked");
        Ok(true)
    }

    /// Runs `body` in a redb write transaction at revision `*committed + 1` and commits it if
    /// `body` returns `true` and changed something; then updates the lease index and publishes
    /// the events. Returns (body's answer, the revision after).
    fn write<F>(
        &self,
        committed: &mut i64,
        context: &str,
        body: F,
    ) -> Result<(bool, i64), StoreError>
    where
        F: FnOnce(&mut KvTable<'_>, i64, &mut Changes) -> Result<bool, StoreError>,
    {
        let rev = *committed + 1;
        let wtx = self.db.begin_write().map_err(|e| db_err(context, e))?;
        let mut changes = Changes::default();
        let ok = {
            let mut kv = wtx.open_table(KV).map_err(|e| db_err(context, e))?;
            body(&mut kv, rev, &mut changes)?
        };
        if !ok || changes.events.is_empty() {
            wtx.abort().map_err(|e| db_err(context, e))?;
            return Ok((ok, *committed));
        }
        {
            let mut meta = wtx.open_table(META).map_err(|e| db_err(context, e))?;
            meta.insert(REVISION, rev).map_err(|e| db_err(context, e))?;
        }
        wtx.commit().map_err(|e| db_err(context, e))?;
        *committed = rev;
        if !changes.lease_moves.is_empty() {
            let mut leases = lock(&self.leases);
            for (key, old, new) in changes.lease_moves {
                if let Some(l) = leases.map.get_mut(&old) {
                    l.keys.remove(&key);
                }
                if let Some(l) = leases.map.get_mut(&new) {
                    l.keys.insert(key);
                }
            }
        }
        self.publish(changes.events, rev);
        Ok((true, rev))
    }

    /// Appends a committed revision's events to the history (trimming it to its bound, whole
    /// revisions at a time, never the latest) and wakes the watchers.
    fn publish(&self, events: Vec<Event>, rev: i64) {
        {
            let mut hub = lock(&self.hub);
            hub.events.extend(events);
            while hub.events.len() > self.history {
                match hub.events.front() {
                    Some(e) if e.kv.mod_revision < rev => {
                        hub.first_retained = e.kv.mod_revision + 1;
                        hub.events.pop_front();
                    }
                    _ => break,
                }
            }
            while hub
                .events
                .front()
                .is_some_and(|e| e.kv.mod_revision < hub.first_retained)
            {
                hub.events.pop_front();
            }
        }
        self.notify.send_replace(rev);
    }

    fn expired_leases(&self) -> Vec<i64> {
        let now = Instant::now();
        lock(&self.leases)
            .map
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }
}

fn ttl_duration(ttl_s: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl_s).unwrap_or(0))
}

/// Lease ids are positive and, so that ids of an earlier run are not handed out again, start
/// from the clock.
fn first_lease_id() -> i64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // 2^62 ns is ~146 years: the id space is not exhausted by counting up from here.
    i64::try_from(nanos % (1u128 << 62)).unwrap_or(0) + 1
}

fn get_record(kv: &KvTable<'_>, key: &str) -> Result<Option<Record>, StoreError> {
    match kv.get(key).map_err(|e| db_err(format!("get {key:?}"), e))? {
        None => Ok(None),
        Some(v) => Record::decode(key, v.value()).map(Some),
    }
}

fn compare_holds(kv: &KvTable<'_>, c: &Compare) -> Result<bool, StoreError> {
    Ok(match c {
        Compare::ModRevision { key, revision } => {
            get_record(kv, key)?.map_or(0, |r| r.mod_revision) == *revision
        }
        Compare::Absent { key } => get_record(kv, key)?.is_none(),
        Compare::Present { key } => get_record(kv, key)?.is_some(),
    })
}

fn delete_key(
    kv: &mut KvTable<'_>,
    key: String,
    rev: i64,
    changes: &mut Changes,
) -> Result<(), StoreError> {
    let old = match kv
        .remove(key.as_str())
        .map_err(|e| db_err(format!("delete {key:?}"), e))?
    {
        None => return Ok(()),
        Some(v) => Record::decode(&key, v.value())?,
    };
    if old.lease != 0 {
        changes.lease_moves.push((key.clone(), old.lease, 0));
    }
    changes.events.push(Event::delete(key, rev));
    Ok(())
}

fn read_revision(meta: &impl ReadableTable<&'static str, i64>) -> Result<i64, StoreError> {
    meta.get(REVISION)
        .map_err(|e| db_err("read the revision", e))?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Corrupt("the store has no revision".into()))
}

/// Opens or creates the file, creates the tables, and deletes every key that carries a lease
/// (leases do not survive the process). Returns the database and its revision.
fn open_db(path: &Path) -> Result<(Database, i64), StoreError> {
    let ctx = || format!("open {}", path.display());
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            context: format!("create directory {}", dir.display()),
            source,
        })?;
    }
    // Another handle of this process may still be closing the file (an operation of a dropped
    // handle finishing on the blocking pool): wait for it a little.
    let started = Instant::now();
    let db = loop {
        match Database::create(path) {
            Ok(db) => break db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_WAIT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(db_err(ctx(), e)),
        }
    };
    let wtx = db.begin_write().map_err(|e| db_err(ctx(), e))?;
    let mut revision;
    let mut leased = 0usize;
    {
        let mut meta = wtx.open_table(META).map_err(|e| db_err(ctx(), e))?;
        let mut kv = wtx.open_table(KV).map_err(|e| db_err(ctx(), e))?;
        let stored = meta
            .get(REVISION)
            .map_err(|e| db_err(ctx(), e))?
            .map(|v| v.value());
        revision = match stored {
            Some(r) => r,
            None if kv.is_empty().map_err(|e| db_err(ctx(), e))? => FIRST_REVISION,
            None => {
                return Err(StoreError::Corrupt(format!(
                    "{}: keys but no revision",
                    ctx()
                )))
            }
        };
        let mut doomed = Vec::new();
        for item in kv.iter().map_err(|e| db_err(ctx(), e))? {
            let (k, v) = item.map_err(|e| db_err(ctx(), e))?;
            if Record::decode(k.value(), v.value())?.lease != 0 {
                doomed.push(k.value().to_owned());
            }
        }
        if !doomed.is_empty() {
            revision += 1;
            leased = doomed.len();
            for key in doomed {
                kv.remove(key.as_str()).map_err(|e| db_err(ctx(), e))?;
            }
        }
        meta.insert(REVISION, revision)
            .map_err(|e| db_err(ctx(), e))?;
    }
    wtx.commit().map_err(|e| db_err(ctx(), e))?;
    if leased > 0 {
        tracing::info!(path = %path.display(), keys = leased, revision,
            "deleted keys whose leases died with the previous process");
    }
    Ok((db, revision))
}

/// Revokes expired leases every [`LEASE_TICK`] while the store is open.
fn spawn_lease_timer(weak: Weak<Inner>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(LEASE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(inner) = weak.upgrade() else { break };
            let expired = inner.expired_leases();
            if expired.is_empty() {
                continue;
            }
            let done = tokio::task::spawn_blocking(move || {
                for id in expired {
                    if let Err(e) = inner.revoke(id, true) {
                        tracing::warn!(lease = id, error = %e, "revoking an expired lease failed");
                    }
                }
            })
            .await;
            if let Err(e) = done {
                tracing::warn!(error = %e, "lease expiry task failed");
            }
        }
    });
}

/// A watch on the embedded store: a cursor into the shared history.
#[derive(Debug)]
pub(super) struct EmbeddedWatch {
    hub: Arc<Mutex<Hub>>,
    rx: watch::Receiver<i64>,
    prefix: String,
    next_rev: i64,
}

impl EmbeddedWatch {
    pub(super) fn next_revision(&self) -> i64 {
        self.next_rev
    }

    pub(super) async fn next(&mut self) -> Result<Option<Vec<Event>>, StoreError> {
        loop {
            // Mark the current revision seen before looking, so a publish after the look
            // wakes `changed` below.
            let published = *self.rx.borrow_and_update();
            {
                let hub = lock(&self.hub);
                if self.next_rev < hub.first_retained {
                    return Err(StoreError::Compacted {
                        requested: self.next_rev,
                        compacted: hub.first_retained,
                    });
                }
                let start = hub
                    .events
                    .partition_point(|e| e.kv.mod_revision < self.next_rev);
                let mut batch = Vec::new();
                for e in hub.events.range(start..) {
                    if batch
                        .first()
                        .is_some_and(|b: &Event| b.kv.mod_revision != e.kv.mod_revision)
                    {
                        break;
                    }
                    if e.kv.key.starts_with(self.prefix.as_str()) {
                        batch.push(e.clone());
                    }
                }
                if let Some(first) = batch.first() {
                    self.next_rev = first.kv.mod_revision + 1;
                    return Ok(Some(batch));
                }
                // Nothing for us up to what is published: skip it.
                self.next_rev = self.next_rev.max(published + 1);
            }
            if self.rx.changed().await.is_err() {
                return Ok(None); // every handle of the store is gone
            }
        }
    }
}
