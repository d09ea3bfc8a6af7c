//! `backend`: where an answer comes from, as a stream of [`StreamEvent`]s (head, body chunks,
//! end or reset) that `respond` writes to the client.
//!
//! Today the only backend is the cluster's tunnel: the request goes to the tunnel's core as a
//! [`TunnelCmd`], and the agent's answer comes back on the stream's event channel. The cache
//! (planned) will be a second variant producing the same events from the hub's own store, so
//! framing, chunking and credit handling exist once, in `respond`.

use bytes::Bytes;
use kubehub_wire::StreamId;
use tokio::sync::{mpsc, oneshot};

use super::error::ProxyError;
use crate::registry::{AgentHandle, OpenError, RequestHead, StreamEvent, TunnelCmd};

/// Where a request is answered.
#[derive(Debug)]
pub enum Backend {
    /// Forwarded through the cluster's tunnel to its agent.
    Tunnel(AgentHandle),
}

/// One request in flight at a backend.
#[derive(Debug)]
pub struct Exchange {
    stream: StreamId,
    tunnel: mpsc::Sender<TunnelCmd>,
    events: mpsc::UnboundedReceiver<StreamEvent>,
}

impl Backend {
    /// Starts the request. Fails only before anything reached the agent.
    pub async fn open(
        &self,
        cluster: &str,
        head: RequestHead,
        end_stream: bool,
    ) -> Result<Exchange, ProxyError> {
        let Backend::Tunnel(agent) = self;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let open = TunnelCmd::Open {
            head: Box::new(head),
            end_stream,
            events: events_tx,
            reply,
        };
        let offline = || ProxyError::Offline {
            cluster: cluster.to_owned(),
            why: "its agent disconnected",
        };
        agent.tx.send(open).await.map_err(|_| offline())?;
        match reply_rx.await {
            Ok(Ok(stream)) => Ok(Exchange {
                stream,
                tunnel: agent.tx.clone(),
                events,
            }),
            Ok(Err(OpenError::Busy)) => Err(ProxyError::Busy(cluster.to_owned())),
            Ok(Err(OpenError::Invalid(why))) => Err(ProxyError::Unforwardable(why)),
            Ok(Err(OpenError::Closing)) | Err(_) => Err(offline()),
        }
    }
}

impl Exchange {
    /// The tunnel stream carrying it.
    pub fn stream_id(&self) -> StreamId {
        self.stream
    }

    /// Sends request body bytes, one chunk in flight: returns once the tunnel took them.
    /// `false`: the stream is over (the agent answered early or reset it; the answer or the
    /// reason waits in [`Exchange::next`]).
    pub async fn send_body(&mut self, data: Bytes, end: bool) -> bool {
        let (ack, ack_rx) = oneshot::channel();
        let cmd = TunnelCmd::Data {
            stream: self.stream,
            data,
            end,
            ack,
        };
        self.tunnel.send(cmd).await.is_ok() && matches!(ack_rx.await, Ok(true))
    }

    /// The next event of the answer; `None` once the backend dropped the stream without
    /// saying more (the tunnel went away).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// Whether more events are already waiting.
    pub fn has_queued(&self) -> bool {
        !self.events.is_empty()
    }

    /// The client took `n` bytes of the answer: the backend may send that much more.
    pub async fn release(&self, n: u32) {
        let _ = self
            .tunnel
            .send(TunnelCmd::Release {
                stream: self.stream,
                n,
            })
            .await;
    }

    /// The client went away: stop the request at the agent.
    pub async fn cancel(&self) {
        let _ = self
            .tunnel
            .send(TunnelCmd::Cancel {
                stream: self.stream,
            })
            .await;
    }
}
