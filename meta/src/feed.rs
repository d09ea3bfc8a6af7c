//! Change feeds: a snapshot of a store prefix at one revision, then every change under it in
//! revision order, as NDJSON lines. Two feeds share this machinery ([`Source`]):
//!
//! * the hubs' access feed, `GET /v1/sync?revision=N` ([`start`]): lines of
//!   [`kubehub_access::Line`] over `access/`;
//! * the registry watch, `GET /v1/registry/watch?revision=N` ([`start_registry`]): lines of
//!   [`RegistryLine`] over `registry/` (hubs, agents, the canary rule, and for readers that
//!   ask with `drains=true`, operators' drains of hubs).
//!
//! A reader that knows nothing (N = 0), or whose revision the store has compacted away, first
//! gets a snapshot of the prefix at one revision; then every change after it, in revision
//! order, and a heartbeat at least every `sync.heartbeat_ms` so that a silent connection is
//! known to be dead. A reader reconnecting with the last revision it applied resumes without a
//! snapshot; one ahead of the store (a restored backup, another metaserver) gets a snapshot.
//! Each connection is one store watch: with etcd, any replica serves any reader.
//!
//! The lines go through a small bounded channel: a reader that stops reading stops the feed's
//! task at the next send (its memory stays bounded), and it is dropped when the reader hangs
//! up.

use std::time::Duration;

use bytes::Bytes;
use kubehub_access::model::Record;
use kubehub_access::registry::RegistryLine;
use kubehub_access::Line;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::service::{Meta, ACCESS, AGENTS, CANARY, DRAINS, HUBS, REGISTRY};
use crate::store::{Event, EventKind, Kv, StoreError};

/// Lines in flight to one reader.
const DEPTH: usize = 16;

/// What one feed streams: the keys under [`Source::PREFIX`], as lines of [`Source::Line`].
trait Source: Send + Sync + 'static {
    /// The line type.
    type Line: Serialize + Send + Sync;
    /// The store prefix followed.
    const PREFIX: &'static str;
    /// Every key under the prefix at `revision`.
    fn snapshot(kvs: &[Kv], revision: i64) -> Self::Line;
    /// One change (`None`: nothing the reader needs to hear).
    fn change(event: &Event) -> Option<Self::Line>;
    /// Nothing changed up to `revision`.
    fn heartbeat(revision: i64) -> Self::Line;
}

fn line<L: Serialize>(l: &L) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Starts the access feed for one hub from `revision` (0: snapshot first).
pub fn start(meta: Meta, revision: i64, hub: String) -> mpsc::Receiver<Bytes> {
    spawn::<AccessFeed>(meta, revision, tracing::info_span!("feed", %hub))
}

/// Starts the registry watch for one reader from `revision` (0: snapshot first), with
/// operators' drains when the reader asked for them (`drains`).
pub fn start_registry(
    meta: Meta,
    revision: i64,
    reader: String,
    drains: bool,
) -> mpsc::Receiver<Bytes> {
    let span = tracing::info_span!("registry_watch", %reader);
    if drains {
        spawn::<RegistryFeed<true>>(meta, revision, span)
    } else {
        spawn::<RegistryFeed<false>>(meta, revision, span)
    }
}

fn spawn<S: Source>(meta: Meta, revision: i64, span: tracing::Span) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(DEPTH);
    tokio::spawn(
        async move {
            match run::<S>(&meta, revision, &tx).await {
                Ok(()) => debug!("the reader left the feed"),
                Err(e) => warn!("feed ended: {e}"),
            }
        }
        .instrument(span),
    );
    rx
}

async fn snapshot<S: Source>(
    meta: &Meta,
    tx: &mpsc::Sender<Bytes>,
) -> Result<Option<i64>, StoreError> {
    let (kvs, revision) = meta.store.list(S::PREFIX).await?;
    if tx.send(line(&S::snapshot(&kvs, revision))).await.is_err() {
        return Ok(None);
    }
    Ok(Some(revision))
}

async fn run<S: Source>(
    meta: &Meta,
    from: i64,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), StoreError> {
    let heartbeat = Duration::from_millis(meta.cfg.sync.heartbeat_ms);
    let mut revision = from;
    let mut watch = None;
    // A reader ahead of the store (restored from a backup, or pointed at another meta) would
    // wait for revisions that mean something else here: it gets a snapshot.
    if revision > meta.store.revision().await? {
        revision = 0;
    }
    if revision > 0 {
        match meta.store.watch(S::PREFIX, revision + 1).await {
            Ok(w) => watch = Some(w),
            Err(StoreError::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut watch = match watch {
        Some(w) => w,
        None => {
            let Some(r) = snapshot::<S>(meta, tx).await? else {
                return Ok(());
            };
            revision = r;
            meta.store.watch(S::PREFIX, revision + 1).await?
        }
    };
    loop {
        let next = tokio::time::timeout(heartbeat, watch.next()).await;
        let lines: Vec<S::Line> = match next {
            Err(_) => vec![S::heartbeat(revision)],
            Ok(Ok(Some(events))) => {
                for ev in &events {
                    revision = revision.max(ev.kv.mod_revision);
                }
                events.iter().filter_map(S::change).collect()
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(StoreError::Compacted { .. })) => {
                // Fell behind what the store keeps: start over with a snapshot.
                let Some(r) = snapshot::<S>(meta, tx).await? else {
                    return Ok(());
                };
                revision = r;
                watch = meta.store.watch(S::PREFIX, revision + 1).await?;
                continue;
            }
            Ok(Err(e)) => return Err(e),
        };
        for l in &lines {
            if tx.send(line(l)).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// The hubs' access feed: every record under `access/`.
struct AccessFeed;

impl Source for AccessFeed {
    type Line = Line;
    const PREFIX: &'static str = ACCESS;

    fn snapshot(kvs: &[Kv], revision: i64) -> Line {
        let mut records = Vec::with_capacity(kvs.len());
        for kv in kvs {
            let k = kv.key.strip_prefix(ACCESS).unwrap_or(&kv.key);
            match Record::parse(k, &kv.value) {
                Ok(r) => records.push(r),
                Err(e) => {
                    warn!("a stored record the feed cannot read is left out of the snapshot: {e}")
                }
            }
        }
        Line::Snapshot { revision, records }
    }

    fn change(ev: &Event) -> Option<Line> {
        let k = ev.kv.key.strip_prefix(ACCESS).unwrap_or(&ev.kv.key);
        let revision = ev.kv.mod_revision;
        let delete = || Line::Delete {
            revision,
            key: k.to_owned(),
        };
        Some(match ev.kind {
            EventKind::Delete => delete(),
            EventKind::Put => match Record::parse(k, &ev.kv.value) {
                Ok(record) => Line::Put { revision, record },
                // Fail closed: hubs drop what they held under that key rather than keep an
                // older version (a grant narrowed by a newer meta must not stay broad).
                Err(e) => {
                    warn!("a stored record the feed cannot read goes as a delete: {e}");
                    delete()
                }
            },
        })
    }

    fn heartbeat(revision: i64) -> Line {
        Line::Heartbeat { revision }
    }
}

/// The registry watch: live hubs and agents, the canary rule, and (`DRAINS`) operators'
/// drains of hubs. Pins are not in it: they are meta's, for agents' hub lists.
struct RegistryFeed<const DRAINS: bool>;

/// What a key under `registry/` is.
enum RegistryKey<'a> {
    Hub(&'a str),
    Agent(&'a str),
    Canary,
    Drain(&'a str),
}

fn registry_key(key: &str) -> Option<RegistryKey<'_>> {
    if let Some(id) = key.strip_prefix(HUBS) {
        Some(RegistryKey::Hub(id))
    } else if let Some(cluster) = key.strip_prefix(AGENTS) {
        Some(RegistryKey::Agent(cluster))
    } else if key == CANARY {
        Some(RegistryKey::Canary)
    } else {
        key.strip_prefix(DRAINS).map(RegistryKey::Drain)
    }
}

/// A stored registry value, or `None` (reported) when it does not read.
fn decode<T: serde::de::DeserializeOwned>(kv: &Kv) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(key = %kv.key, "a registry entry the watch cannot read is taken as gone: {e}");
            None
        }
    }
}

impl<const DRAINS: bool> Source for RegistryFeed<DRAINS> {
    type Line = RegistryLine;
    const PREFIX: &'static str = REGISTRY;

    fn snapshot(kvs: &[Kv], revision: i64) -> RegistryLine {
        let (mut hubs, mut agents, mut canary) = (Vec::new(), Vec::new(), None);
        let mut drains = Vec::new();
        for kv in kvs {
            match registry_key(&kv.key) {
                Some(RegistryKey::Hub(_)) => hubs.extend(decode(kv)),
                Some(RegistryKey::Agent(_)) => agents.extend(decode(kv)),
                Some(RegistryKey::Canary) => canary = decode(kv),
                Some(RegistryKey::Drain(_)) if DRAINS => drains.extend(decode(kv)),
                Some(RegistryKey::Drain(_)) | None => {}
            }
        }
        RegistryLine::Snapshot {
            revision,
            hubs,
            agents,
            canary,
            drains,
        }
    }

    fn change(ev: &Event) -> Option<RegistryLine> {
        let revision = ev.kv.mod_revision;
        let put = ev.kind == EventKind::Put;
        // An entry that does not read goes as gone (as for the access feed: fail closed).
        Some(match registry_key(&ev.kv.key)? {
            RegistryKey::Hub(id) => match put.then(|| decode(&ev.kv)).flatten() {
                Some(hub) => RegistryLine::Hub { revision, hub },
                None => RegistryLine::HubGone {
                    revision,
                    id: id.to_owned(),
                },
            },
            RegistryKey::Agent(cluster) => match put.then(|| decode(&ev.kv)).flatten() {
                Some(agent) => RegistryLine::Agent { revision, agent },
                None => RegistryLine::AgentGone {
                    revision,
                    cluster: cluster.to_owned(),
                },
            },
            RegistryKey::Canary => RegistryLine::Canary {
                revision,
                rule: put.then(|| decode(&ev.kv)).flatten(),
            },
            RegistryKey::Drain(_) if !DRAINS => return None,
            RegistryKey::Drain(hub) => RegistryLine::Drain {
                revision,
                hub: hub.to_owned(),
                mark: put.then(|| decode(&ev.kv)).flatten(),
            },
        })
    }

    fn heartbeat(revision: i64) -> RegistryLine {
        RegistryLine::Heartbeat { revision }
    }
}
