//! `registry`: where each cluster's tunnel lives, and the messages request handlers and tunnels
//! exchange.
//!
//! The [`Registry`] maps a cluster to the command channel of the tunnel task that owns its
//! agent connection (on whichever core accepted it); a request on any core reaches the tunnel
//! by message passing ([`TunnelCmd`] in, [`StreamEvent`] back).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;

use kubehub_wire::{ErrorCode, Fields, ResourceType, StreamId};
use tokio::sync::{mpsc, oneshot};

/// What the tunnel sends back for a stream.
#[derive(Debug)]
pub enum StreamEvent {
    /// The response head.
    Head {
        /// HTTP status.
        status: u16,
        /// Header fields.
        fields: Fields,
    },
    /// Body bytes. The consumer returns their credit with [`TunnelCmd::Release`] once written.
    Data(Bytes),
    /// Trailer fields the agent ended its half with (before [`StreamEvent::End`]; only when
    /// there are some).
    Trailers(Fields),
    /// The response is complete.
    End,
    /// The stream failed (the agent reset it, or the tunnel went away).
    Reset(ErrorCode),
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The tunnel is closing or closed.
    #[error("the agent's tunnel is closing")]
    Closing,
    /// The agent's concurrent stream limit is reached.
    #[error("too many concurrent requests to this cluster")]
    Busy,
    /// The request head cannot be carried (a field or the whole head beyond what the agent
    /// accepts).
    #[error("the request cannot be forwarded: {0}")]
    Invalid(String),
}

/// A request head to forward.
#[derive(Debug)]
pub struct RequestHead {
    /// Method token.
    pub method: Bytes,
    /// Path and query on the edge API server.
    pub path: Bytes,
    /// Header fields.
    pub fields: Fields,
}

/// Commands to a tunnel task, from request handlers on any core.
#[derive(Debug)]
pub enum TunnelCmd {
    /// Open a stream.
    Open {
        /// The request head (boxed: every tunnel's command queue holds a block of commands,
        /// so commands stay small).
        head: Box<RequestHead>,
        /// No request body follows.
        end_stream: bool,
        /// Both halves carry bytes independently (an upgraded connection: exec, attach,
        /// port-forward): the requester's half stays open after the agent ended its own, until
        /// the requester ends it too or cancels. Otherwise an answer that is complete ends the
        /// stream, and the rest of a request body is not sent.
        duplex: bool,
        /// Where the stream's response goes. Bounded in bytes by the stream's flow-control
        /// window: the agent cannot send more than the window until the consumer releases it.
        events: mpsc::UnboundedSender<StreamEvent>,
        /// The stream id, or why not.
        reply: oneshot::Sender<Result<StreamId, OpenError>>,
    },
    /// Request body bytes; `ack` answers once they were handed to the connection (the sender
    /// sends no more meanwhile: one chunk in flight per stream).
    Data {
        /// The stream.
        stream: StreamId,
        /// The bytes.
        data: Bytes,
        /// Last chunk of the body.
        end: bool,
        /// `true` once sent, `false` if the stream is gone.
        ack: oneshot::Sender<bool>,
    },
    /// The consumer wrote `n` bytes of the response: return them as credit.
    Release {
        /// The stream.
        stream: StreamId,
        /// Bytes consumed.
        n: u32,
    },
    /// The user went away: reset the stream.
    Cancel {
        /// The stream.
        stream: StreamId,
    },
    /// Reads wait for a confirmation that this cached type is current: send a
    /// PROGRESS_REQUEST with `seq` on its sync stream (or fail the confirmation).
    Progress {
        /// The type.
        slot: Arc<crate::cache::TypeSlot>,
        /// The confirmation's sequence number.
        seq: u32,
    },
}

/// A connected agent.
#[derive(Debug, Clone)]
pub struct AgentHandle {
    /// Commands to its tunnel task.
    pub tx: mpsc::Sender<TunnelCmd>,
    /// Distinguishes reconnections of the same cluster.
    pub generation: u64,
    /// The agent's id (from HELLO); shared, so a request's handle costs no allocation.
    pub agent_id: std::sync::Arc<str>,
}

/// Where a cluster stands.
#[derive(Debug)]
pub enum Lookup {
    /// Its agent is connected.
    Online(AgentHandle),
    /// Known, but no agent is connected.
    Offline,
    /// Not served here.
    Unknown,
}

/// What a cluster's agent reported it serves (its DISCOVERY frame).
#[derive(Debug, Clone)]
pub struct ClusterTypes {
    /// The tunnel that reported them.
    pub generation: u64,
    /// The resource types, in the API server's order.
    pub types: Arc<[ResourceType]>,
}

/// Clusters to tunnels, shared by every core. Read once per request, written when agents
/// connect or leave (and when they report their resource types).
#[derive(Debug, Default)]
pub struct Registry {
    agents: DashMap<String, AgentHandle>,
    types: DashMap<String, ClusterTypes>,
    known: HashSet<String>,
    next_generation: AtomicU64,
}

impl Registry {
    /// A registry serving `clusters` (empty: any cluster whose agent presents a valid
    /// certificate).
    pub fn new(clusters: &[String]) -> Registry {
        Registry {
            known: clusters.iter().cloned().collect(),
            ..Registry::default()
        }
    }

    /// Whether this hub serves `cluster`.
    pub fn serves(&self, cluster: &str) -> bool {
        self.known.is_empty() || self.known.contains(cluster)
    }

    /// Where `cluster` stands. Without a configured cluster list every cluster is served
    /// here (the access index says which exist): one without an agent is offline.
    pub fn lookup(&self, cluster: &str) -> Lookup {
        // (The handle is cloned: a sender and an `Arc`, no allocation.)
        match self.agents.get(cluster) {
            Some(h) => Lookup::Online(h.clone()),
            None if self.serves(cluster) => Lookup::Offline,
            None => Lookup::Unknown,
        }
    }

    /// Whether a tunnel of `cluster` is held here.
    pub fn has_tunnel(&self, cluster: &str) -> bool {
        self.agents.contains_key(cluster)
    }

    /// Registers a tunnel for `cluster`, replacing any earlier one. Returns its generation.
    pub fn register(&self, cluster: &str, agent_id: &str, tx: mpsc::Sender<TunnelCmd>) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.agents.insert(
            cluster.to_owned(),
            AgentHandle {
                tx,
                generation,
                agent_id: agent_id.into(),
            },
        );
        generation
    }

    /// Removes the tunnel of `cluster` if it is still the one registered as `generation`
    /// (with what it reported).
    pub fn unregister(&self, cluster: &str, generation: u64) {
        self.agents
            .remove_if(cluster, |_, h| h.generation == generation);
        self.types
            .remove_if(cluster, |_, t| t.generation == generation);
    }

    /// Records the resource types the tunnel `generation` of `cluster` reported, replacing
    /// an earlier report; ignored if that tunnel is no longer the registered one.
    pub fn set_types(&self, cluster: &str, generation: u64, types: Vec<ResourceType>) {
        let current = self
            .agents
            .get(cluster)
            .is_some_and(|h| h.generation == generation);
        if current {
            self.types.insert(
                cluster.to_owned(),
                ClusterTypes {
                    generation,
                    types: types.into(),
                },
            );
        }
    }

    /// The resource types `cluster`'s connected agent reported, if it did.
    pub fn types(&self, cluster: &str) -> Option<ClusterTypes> {
        self.types.get(cluster).map(|t| t.clone())
    }

    /// Connected clusters with their agent ids and reported types, sorted by cluster.
    pub fn snapshot(&self) -> Vec<(String, String, Option<ClusterTypes>)> {
        let mut out: Vec<_> = self
            .agents
            .iter()
            .map(|e| (e.key().clone(), e.value().agent_id.to_string()))
            .collect();
        out.sort();
        out.into_iter()
            .map(|(c, a)| {
                let t = self.types(&c);
                (c, a, t)
            })
            .collect()
    }

    /// Connected agents.
    pub fn connected(&self) -> usize {
        self.agents.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_generations() {
        let r = Registry::new(&["a".into()]);
        assert!(matches!(r.lookup("a"), Lookup::Offline));
        assert!(matches!(r.lookup("b"), Lookup::Unknown));
        let (tx, _rx) = mpsc::channel(1);
        let g1 = r.register("a", "agent-1", tx.clone());
        let g2 = r.register("a", "agent-2", tx);
        r.unregister("a", g1); // a stale tunnel leaving does not remove the new one
        assert!(matches!(r.lookup("a"), Lookup::Online(ref h) if h.generation == g2));
        let pods = kubehub_kapi::resources::builtin()[..2].to_vec();
        r.set_types("a", g1, pods.clone()); // from a tunnel that is gone: ignored
        assert!(r.types("a").is_none());
        r.set_types("a", g2, pods.clone());
        assert_eq!(r.types("a").map(|t| t.types.len()), Some(2));
        assert_eq!(r.snapshot()[0].0, "a");
        r.unregister("a", g2);
        assert!(matches!(r.lookup("a"), Lookup::Offline));
        assert!(r.types("a").is_none(), "a tunnel's report leaves with it");
        assert!(!r.serves("b"));
        assert!(Registry::new(&[]).serves("anything"));
        assert!(matches!(Registry::new(&[]).lookup("x"), Lookup::Offline));
    }
}
