//! `sync`: the sync streams of one tunnel: which types the hub asked for ([`Event::SyncRequest`]),
//! a reflector per type ([`crate::reflector`]) list-watching the edge API server, and a pump per
//! type moving what the reflector emits into the engine as sync frames.
//!
//! Backpressure end to end: the pump sends a frame only while its stream is writable (the
//! engine's send buffer below its bound, which the hub's window drains), the reflector's
//! channel is bounded, and a reflector with a full channel stops reading its watch. A type
//! whose stream the hub resets (content it could not take) is restarted after a backoff,
//! with a fresh list, if the hub still wants it.
//!
//! [`Event::SyncRequest`]: kubehub_wire::conn::Event::SyncRequest

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kubehub_wire::{ResourceKey, StreamId};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{debug, info, warn, Instrument};

use crate::reflector::{self, ReflectorConfig, ReflectorHandle, SyncOut};
use crate::tunnel::Shared;
use crate::upstream::UpstreamClient;

/// Items a reflector may have emitted that its pump has not sent yet. Each is at most
/// `batch_bytes` of objects, so this bounds the agent's memory per type.
const QUEUE: usize = 4;

struct Running {
    /// The stream, once the first snapshot began.
    stream: Option<StreamId>,
    /// Dropping it stops the reflector.
    reflector: ReflectorHandle,
    pump: AbortHandle,
}

/// The sync state of one tunnel (inside the tunnel's engine lock).
#[derive(Default)]
pub struct Syncs {
    /// What the hub wants, with whether the type is namespaced (from discovery).
    wanted: Vec<ResourceKey>,
    running: HashMap<ResourceKey, Running>,
    streams: HashMap<StreamId, ResourceKey>,
}

impl std::fmt::Debug for Syncs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncs")
            .field("wanted", &self.wanted.len())
            .field("running", &self.running.len())
            .finish()
    }
}

/// What the sync layer needs from the agent.
#[derive(Clone, Debug)]
pub struct SyncEnv {
    /// The edge API server.
    pub upstream: UpstreamClient,
    /// Reflector options.
    pub cfg: ReflectorConfig,
    /// Restart delay after the hub reset a type's stream.
    pub restart_after: Duration,
    /// The agent's metrics.
    pub metrics: Arc<crate::Metrics>,
}

impl Syncs {
    /// The hub's new set of wanted types: start the new ones, stop the dropped ones. Returns
    /// the streams to end.
    pub fn set_wanted(
        &mut self,
        keys: Vec<ResourceKey>,
        shared: &Arc<Shared>,
        env: &SyncEnv,
    ) -> Vec<StreamId> {
        self.wanted = keys;
        let mut end = Vec::new();
        let gone: Vec<ResourceKey> = self
            .running
            .keys()
            .filter(|k| !self.wanted.contains(k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(id) = self.stop(&k) {
                end.push(id);
            }
        }
        for k in self.wanted.clone() {
            if !self.running.contains_key(&k) {
                self.start(k, shared, env);
            }
        }
        end
    }

    fn start(&mut self, key: ResourceKey, shared: &Arc<Shared>, env: &SyncEnv) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let span = tracing::info_span!("sync", resource = %label(&key));
        let reflector = reflector::spawn(
            env.upstream.clone(),
            key.clone(),
            env.cfg.clone(),
            env.metrics.clone(),
            tx,
        );
        let pump =
            tokio::spawn(pump(key.clone(), rx, shared.clone(), env.clone()).instrument(span));
        self.running.insert(
            key,
            Running {
                stream: None,
                reflector,
                pump: pump.abort_handle(),
            },
        );
    }

    /// Stops a type; returns its stream, if it had one.
    fn stop(&mut self, key: &ResourceKey) -> Option<StreamId> {
        let r = self.running.remove(key)?;
        r.pump.abort();
        drop(r.reflector);
        let id = r.stream?;
        self.streams.remove(&id);
        Some(id)
    }

    /// The hub asks whether `id` is current.
    pub fn progress_request(&self, id: StreamId, seq: u32) {
        if let Some(r) = self.streams.get(&id).and_then(|k| self.running.get(k)) {
            r.reflector.progress(seq);
        }
    }

    /// The stream `id` ended from the hub's side: stop its type; restart it later if wanted.
    pub fn stream_reset(&mut self, id: StreamId, shared: &Arc<Shared>, env: &SyncEnv) {
        let Some(key) = self.streams.get(&id).cloned() else {
            return;
        };
        warn!(stream = id, resource = %label(&key), "the sync stream ended; restarting the type in {:?}", env.restart_after);
        self.stop(&key);
        let shared = shared.clone();
        let env = env.clone();
        tokio::spawn(async move {
            tokio::time::sleep(env.restart_after).await;
            shared.restart_sync(key, &env);
        });
    }

    /// Starts `key` again if it is still wanted and not running.
    pub fn restart(&mut self, key: ResourceKey, shared: &Arc<Shared>, env: &SyncEnv) {
        if self.wanted.contains(&key) && !self.running.contains_key(&key) {
            self.start(key, shared, env);
        }
    }

    fn opened(&mut self, key: &ResourceKey, id: StreamId) {
        if let Some(r) = self.running.get_mut(key) {
            r.stream = Some(id);
            self.streams.insert(id, key.clone());
        }
    }

    /// Everything stops (the tunnel closed).
    pub fn stop_all(&mut self) {
        for (_, r) in self.running.drain() {
            r.pump.abort();
        }
        self.streams.clear();
    }
}

fn label(k: &ResourceKey) -> String {
    reflector::resource_label(k)
}

/// Moves a reflector's output into the engine, one frame at a time while the stream can take
/// it. A freshness answer that comes while a snapshot is open (the reflector relists) waits
/// for the snapshot's end: the protocol allows PROGRESS only between snapshots, and the hub
/// can only use it once the snapshot is applied.
async fn pump(
    key: ResourceKey,
    mut rx: mpsc::Receiver<SyncOut>,
    shared: Arc<Shared>,
    _env: SyncEnv,
) {
    let mut stream: Option<StreamId> = None;
    let mut in_snapshot = false;
    let mut held: Vec<(u32, String)> = Vec::new();
    while let Some(out) = rx.recv().await {
        let id = match (stream, &out) {
            (None, SyncOut::Begin) => match shared.open_sync(&key).await {
                Some(id) => {
                    info!(stream = id, "sync stream open");
                    stream = Some(id);
                    in_snapshot = true;
                    continue;
                }
                None => return,
            },
            (None, _) => {
                debug!("reflector output before its first snapshot: dropped");
                continue;
            }
            (Some(id), _) => id,
        };
        let mut frames = vec![out];
        match &frames[0] {
            SyncOut::Begin => in_snapshot = true,
            SyncOut::End { .. } => {
                in_snapshot = false;
                frames.extend(
                    held.drain(..)
                        .map(|(seq, resource_version)| SyncOut::Progress {
                            seq,
                            resource_version,
                        }),
                );
            }
            SyncOut::Progress {
                seq,
                resource_version,
            } if in_snapshot => {
                // The hub has at most two requests per type outstanding and gives up on older
                // ones: a few held answers suffice, however long the relist fails.
                if held.len() >= 4 {
                    held.remove(0);
                }
                held.push((*seq, resource_version.clone()));
                continue;
            }
            _ => {}
        }
        for out in frames {
            if !shared.wait_writable(id).await {
                return;
            }
            let sent = shared.with_conn(|c| match out {
                SyncOut::Begin => c.send_snapshot_begin(id),
                SyncOut::Items(items) => c.send_snapshot_items(id, items),
                SyncOut::End { resource_version } => c.send_snapshot_end(id, resource_version),
                SyncOut::Event {
                    kind,
                    resource_version,
                    object,
                } => c.send_watch_event(id, kind, resource_version, object),
                SyncOut::Progress {
                    seq,
                    resource_version,
                } => c.send_progress(id, seq, &resource_version),
            });
            if let Err(e) = sent {
                warn!(stream = id, "sync frame not sent: {e}");
                shared.with_conn(|c| c.reset(id, kubehub_wire::ErrorCode::INTERNAL));
                // Our own reset raises no event: stop the type here and start it over.
                shared.sync_failed(id);
                return;
            }
        }
    }
}

impl Syncs {
    /// Records the stream opened for `key` (called by the tunnel under its lock).
    pub fn record_open(&mut self, key: &ResourceKey, id: StreamId) {
        self.opened(key, id);
    }
}
