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

/// One request in flight at a backend: its two directions, which an upgraded connection
/// drives at the same time ([`Exchange::split`]).
#[derive(Debug)]
pub struct Exchange {
    up: Uplink,
    down: Downlink,
}

/// Towards the agent: request body chunks, cancellation.
#[derive(Debug)]
pub struct Uplink {
    stream: StreamId,
    tunnel: mpsc::Sender<TunnelCmd>,
}

/// From the agent: the answer's events, and the credit returned for them.
#[derive(Debug)]
pub struct Downlink {
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
        duplex: bool,
    ) -> Result<Exchange, ProxyError> {
        let Backend::Tunnel(agent) = self;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (reply, reply_rx) = oneshot::channel();
        let open = TunnelCmd::Open {
            head: Box::new(head),
            end_stream,
            duplex,
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
                up: Uplink {
                    stream,
                    tunnel: agent.tx.clone(),
                },
                down: Downlink {
                    stream,
                    tunnel: agent.tx.clone(),
                    events,
                },
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
        self.up.stream
    }

    /// The two directions, to be driven independently.
    pub fn split(self) -> (Uplink, Downlink) {
        (self.up, self.down)
    }

    /// See [`Uplink::send_body`].
    pub async fn send_body(&mut self, data: Bytes, end: bool) -> bool {
        self.up.send_body(data, end).await
    }

    /// See [`Downlink::next`].
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.down.next().await
    }

    /// See [`Downlink::has_queued`].
    pub fn has_queued(&self) -> bool {
        self.down.has_queued()
    }

    /// See [`Downlink::release`].
    pub async fn release(&self, n: u32) {
        self.down.release(n).await
    }

    /// See [`Uplink::cancel`].
    pub async fn cancel(&self) {
        self.up.cancel().await
    }
}

impl Uplink {
    /// The sending half of stream `stream` of the tunnel (or link) behind `tunnel`.
    pub fn new(stream: StreamId, tunnel: mpsc::Sender<TunnelCmd>) -> Uplink {
        Uplink { stream, tunnel }
    }

    /// Sends request body bytes, one chunk in flight: returns once the tunnel took them.
    /// `false`: the stream is over (the agent answered early or reset it; the answer or the
    /// reason waits in [`Downlink::next`]).
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

    /// The client went away: stop the request at the agent (RESET `CANCEL`; nothing if the
    /// stream is already over).
    pub async fn cancel(&self) {
        let _ = self
            .tunnel
            .send(TunnelCmd::Cancel {
                stream: self.stream,
            })
            .await;
    }
}

impl Downlink {
    /// The next event of the answer; `None` once the backend dropped the stream without
    /// saying more (the tunnel went away).
    pub async fn next(&mut self) -> Option<StreamEvent> {
        self.events.recv().await
    }

    /// The next event if one is already waiting.
    pub fn try_next(&mut self) -> Option<StreamEvent> {
        self.events.try_recv().ok()
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
}
