//! The hubs' change feed: `GET /v1/sync?revision=N`, NDJSON lines of [`kubehub_access::Line`].
//!
//! A hub that knows nothing (N = 0), or whose revision the store has compacted away, first gets
//! a `snapshot` of every access record at one revision; then every `put` and `delete` after it,
//! in revision order, and a `heartbeat` at least every `sync.heartbeat_ms` so that a silent
//! connection is known to be dead. A hub reconnecting with the last revision it applied
//! resumes without a snapshot. Each connection is one store watch: with etcd, any replica
//! serves any hub.
//!
//! The lines go through a small bounded channel: a hub that stops reading stops the feed's
//! task at the next send (its memory stays bounded), and it is dropped when the hub hangs up.

use std::time::Duration;

use bytes::Bytes;
use kubehub_access::model::Record;
use kubehub_access::Line;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use crate::service::{Meta, ACCESS};
use crate::store::{EventKind, StoreError};

/// Lines in flight to one hub.
const DEPTH: usize = 16;

fn line(l: &Line) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// Starts the feed for one hub from `revision` (0: snapshot first).
pub fn start(meta: Meta, revision: i64, hub: String) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel(DEPTH);
    let span = tracing::info_span!("feed", %hub);
    tokio::spawn(
        async move {
            match run(&meta, revision, &tx).await {
                Ok(()) => debug!("hub left the feed"),
                Err(e) => warn!("feed ended: {e}"),
            }
        }
        .instrument(span),
    );
    rx
}

async fn snapshot(meta: &Meta, tx: &mpsc::Sender<Bytes>) -> Result<Option<i64>, StoreError> {
    let (kvs, revision) = meta.store.list(ACCESS).await?;
    let mut records = Vec::with_capacity(kvs.len());
    for kv in &kvs {
        let k = kv.key.strip_prefix(ACCESS).unwrap_or(&kv.key);
        match Record::parse(k, &kv.value) {
            Ok(r) => records.push(r),
            Err(e) => {
                warn!("a stored record the feed cannot read is left out of the snapshot: {e}")
            }
        }
    }
    let l = Line::Snapshot { revision, records };
    if tx.send(line(&l)).await.is_err() {
        return Ok(None);
    }
    Ok(Some(revision))
}

async fn run(meta: &Meta, from: i64, tx: &mpsc::Sender<Bytes>) -> Result<(), StoreError> {
    let heartbeat = Duration::from_millis(meta.cfg.sync.heartbeat_ms);
    let mut revision = from;
    let mut watch = None;
    // A hub ahead of the store (restored from a backup, or pointed at another meta) would
    // wait for revisions that mean something else here: it gets a snapshot.
    if revision > meta.store.revision().await? {
        revision = 0;
    }
    if revision > 0 {
        match meta.store.watch(ACCESS, revision + 1).await {
            Ok(w) => watch = Some(w),
            Err(StoreError::Compacted { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut watch = match watch {
        Some(w) => w,
        None => {
            let Some(r) = snapshot(meta, tx).await? else {
                return Ok(());
            };
            revision = r;
            meta.store.watch(ACCESS, revision + 1).await?
        }
    };
    loop {
        let next = tokio::time::timeout(heartbeat, watch.next()).await;
        let lines: Vec<Line> = match next {
            Err(_) => vec![Line::Heartbeat { revision }],
            Ok(Ok(Some(events))) => {
                let mut out = Vec::with_capacity(events.len());
                for ev in events {
                    revision = revision.max(ev.kv.mod_revision);
                    let k = ev.kv.key.strip_prefix(ACCESS).unwrap_or(&ev.kv.key);
                    match ev.kind {
                        EventKind::Delete => out.push(Line::Delete {
                            revision: ev.kv.mod_revision,
                            key: k.to_owned(),
                        }),
                        EventKind::Put => match Record::parse(k, &ev.kv.value) {
                            Ok(record) => out.push(Line::Put {
                                revision: ev.kv.mod_revision,
                                record,
                            }),
                            // Fail closed: hubs drop what they held under that key rather
                            // than keep an older version (a grant narrowed by a newer meta
                            // must not stay broad).
                            Err(e) => {
                                warn!("a stored record the feed cannot read goes as a delete: {e}");
                                out.push(Line::Delete {
                                    revision: ev.kv.mod_revision,
                                    key: k.to_owned(),
                                })
                            }
                        },
                    }
                }
                out
            }
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(StoreError::Compacted { .. })) => {
                // Fell behind what the store keeps: start over with a snapshot.
                let Some(r) = snapshot(meta, tx).await? else {
                    return Ok(());
                };
                revision = r;
                watch = meta.store.watch(ACCESS, revision + 1).await?;
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
