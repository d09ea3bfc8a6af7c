//! `tunnel`: one agent connection, owned by the core that accepted it, driving the shared
//! protocol engine ([`kubehub_wire::Connection`]).
//!
//! After the handshake (certificate common name = HELLO's cluster id) the engine owns the
//! protocol: streams, flow control, keepalive, drain, every frame to send. This module only
//! moves bytes and messages around it. Three tasks on the owning core share the [`Tunnel`]
//! through `Rc<RefCell<_>>`, never borrowed across an await:
//! * the **reader**: socket bytes → `Connection::handle_bytes` → events to each stream's
//!   consumer (a user connection, possibly on another core);
//! * the **commander**: [`TunnelCmd`]s from request handlers on any core (open a stream, send
//!   body bytes, release credit, cancel) → engine calls;
//! * the **writer**: `Connection::poll_transmit` → batched writes; its timer drives the
//!   engine's keepalive and drain (`handle_timeout`), and it starts the drain on shutdown.
//!
//! Whoever changes the engine's state wakes the writer; the writer flushes until the engine
//! has nothing to send, so no frame the engine queued (credit, a GOAWAY) is ever dropped.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use kubehub_wire::conn::{ConnConfig, Event, OpenError as WireOpenError, ResetOrigin};
use kubehub_wire::handshake::{self, Agreed, Offer};
use kubehub_wire::{
    Capabilities, Connection, Decoder, EncodeBuf, ErrorCode, Frame, GoAway, Hello, Role, StreamId,
};
use monoio::net::TcpStream;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn, Instrument};

use crate::cache::ingest::Ingest;
use crate::cache::Caches;
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::registry::{OpenError, Registry, RequestHead, StreamEvent, TunnelCmd};
use crate::tls::{self, TlsReader, TlsWriter};

/// What every tunnel on a core shares.
#[derive(Debug)]
pub struct TunnelCtx {
    /// The core's proxy, which serves the streams other hubs open on peer links (set once the
    /// core's contexts exist).
    pub proxy: std::cell::OnceCell<std::rc::Weak<crate::proxy::ProxyCtx>>,
    /// Links to other hubs.
    pub peers: Arc<crate::peers::Peers>,
    /// The access data (an agent's cluster must be of this hub's environment).
    pub access: Arc<crate::access::Access>,
    /// This hub's environment (hub.toml `environment`).
    pub environment: String,
    /// Clusters to tunnels.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// This hub's id.
    pub hub_id: String,
    /// TLS for agents (client certificates required).
    pub tls: Arc<rustls::ServerConfig>,
    /// Becomes `true` when the hub drains for shutdown.
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// The caches the tunnels' sync streams feed.
    pub caches: Arc<Caches>,
}

/// The cluster id in an agent's certificate: its subject common name, provided the
/// certificate is an agent's (organization `kubehub:agents`). Hubs' certificates come from the
/// same CA and may authenticate clients too; they never pass for an agent.
pub fn cluster_of(cert: &[u8]) -> Option<String> {
    common_name_in(cert, kubehub_pki::AGENTS_GROUP)
}

/// The hub id in another hub's certificate: its common name, provided the certificate is a
/// hub's (organization `kubehub:hubs`).
pub fn hub_of(cert: &[u8]) -> Option<String> {
    common_name_in(cert, kubehub_pki::HUBS_GROUP)
}

/// The subject common name of `cert` if its subject's organizations include `org`.
fn common_name_in(cert: &[u8], org: &str) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = c.subject();
    if !subject.iter_organization().any(|o| o.as_str() == Ok(org)) {
        return None;
    }
    let cn = subject.iter_common_name().next()?.as_str().ok()?.to_owned();
    Some(cn)
}

/// What is at the other end of a tunnel connection.
#[derive(Debug)]
enum Remote {
    /// An agent (the tunnel is its cluster's, registered as `generation`).
    Agent { generation: u64 },
    /// Another hub that dialled this one (a peer link, `PROTOCOL.md` §12): each stream it
    /// opens is one HTTP exchange for a cluster this hub holds, served by
    /// [`crate::proxy::peer::serve_stream`] with `commands` to answer on.
    PeerIn { commands: mpsc::Sender<TunnelCmd> },
    /// A hub this one dialled ([`crate::peers`]), registered there as `generation`.
    PeerOut { generation: u64 },
}

/// An agent connection past the handshakes (TLS, HELLO / HELLO_ACK): what the tunnel runs on.
struct Admitted {
    rd: TlsReader,
    wr: TlsWriter,
    /// Bytes the agent sent right behind its HELLO.
    buf: BytesMut,
    hello: Hello,
    agreed: Agreed,
    /// Another hub (its certificate is a hub's and it asked for a peer link).
    peer: bool,
}

/// Serves one agent connection (or another hub's peer link) until it ends.
///
/// A task keeps the largest state its future may need for as long as it lives, and a tunnel
/// lives for days: so the handshakes, which need far more (rustls' handshake, the timers, a
/// refusal to write), run in a future of their own, boxed and freed once they are done, and
/// the tunnel is set up synchronously ([`start`]); what this future holds while the tunnel
/// runs is the reader's state and a few handles.
pub async fn serve_agent(tcp: TcpStream, peer: SocketAddr, ctx: Rc<TunnelCtx>) {
    let started = {
        let Some(admitted) = Box::pin(admit(tcp, peer, &ctx)).await else {
            return;
        };
        start(admitted, &ctx)
    };
    let Started {
        tunnel,
        mut rd,
        mut buf,
        writer,
        commander,
        span,
    } = started;
    run(&tunnel, &mut rd, &mut buf, writer, commander, span).await;
}

/// Reads until the connection ends, then waits for the other tasks and unregisters.
async fn run(
    tunnel: &Rc<Tunnel>,
    rd: &mut TlsReader,
    buf: &mut BytesMut,
    writer: monoio::task::JoinHandle<()>,
    commander: monoio::task::JoinHandle<()>,
    span: tracing::Span,
) {
    read_loop(rd, buf, tunnel).instrument(span).await;
    // However the reader ended, the writer flushes what the engine still has (a GOAWAY) and
    // closes the socket; then nothing is left to command.
    tunnel.wake.notify_one();
    writer.await;
    commander.await;
    let why = tunnel.state.borrow().why.clone().unwrap_or_default();
    tunnel.unregister();
    match tunnel.remote {
        Remote::Agent { .. } => {
            info!(cluster = %tunnel.cluster, "agent disconnected: {why}");
            tunnel.ctx.metrics.agents.dec();
        }
        Remote::PeerIn { .. } | Remote::PeerOut { .. } => {
            info!(hub = %tunnel.cluster, "peer link closed: {why}");
        }
    }
}

/// The TLS handshake (an agent's certificate), HELLO (its cluster is the certificate's, and
/// served here) and HELLO_ACK; `None` if the agent was refused (it was told why).
async fn admit(tcp: TcpStream, peer: SocketAddr, ctx: &TunnelCtx) -> Option<Admitted> {
    let _ = tcp.set_nodelay(true);
    let deadline = ctx.limits.handshake_timeout();
    let conn = match rustls::ServerConnection::new(ctx.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, "agent TLS setup: {e}");
            return None;
        }
    };
    let tls = match tls::handshake(tcp, conn.into(), deadline).await {
        Ok(t) => t,
        Err(e) => {
            ctx.metrics.tunnel_rejects.inc();
            warn!(%peer, "agent connection refused: {e}");
            return None;
        }
    };
    let leaf = tls.peer_certificates().and_then(|c| c.first());
    // An agent's certificate, or another hub's (a peer link).
    let (cert_cluster, cert_hub) = match leaf.map(|c| (cluster_of(c), hub_of(c))) {
        Some((Some(cluster), _)) => (cluster, false),
        Some((None, Some(hub))) => (hub, true),
        _ => {
            ctx.metrics.tunnel_rejects.inc();
            warn!(%peer, "neither an agent's certificate (organization kubehub:agents) nor a hub's (kubehub:hubs)");
            return None;
        }
    };
    let (mut rd, mut wr) = tls.into_split();
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    // HELLO, within what is left of the handshake time.
    let hello = monoio::time::timeout(deadline, async {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err((e.code(), format!("decoding HELLO: {e}"))),
            }
            match rd.read(&mut buf).await {
                Ok(0) => return Err((ErrorCode::HANDSHAKE, "closed before HELLO".to_owned())),
                Ok(_) => {}
                Err(e) => return Err((ErrorCode::HANDSHAKE, format!("reading HELLO: {e}"))),
            }
        }
    })
    .await;
    let refuse = |code: ErrorCode, message: String| GoAway {
        last_stream_id: 0,
        code,
        message,
    };
    let hello = match hello {
        Ok(Ok(Frame::Hello(h))) => h,
        Ok(Ok(other)) => {
            let g = refuse(
                ErrorCode::HANDSHAKE,
                format!("expected HELLO, got {}", other.frame_type().name()),
            );
            return reject(ctx, peer, &mut wr, g).await;
        }
        Ok(Err((code, e))) => return reject(ctx, peer, &mut wr, refuse(code, e)).await,
        Err(_) => {
            let g = refuse(ErrorCode::HANDSHAKE, "HELLO timed out".into());
            return reject(ctx, peer, &mut wr, g).await;
        }
    };
    let asks_peer = hello.capabilities.contains(Capabilities::PEER);
    if cert_hub != asks_peer {
        let why = if cert_hub {
            "a hub's certificate may only open a peer link"
        } else {
            "only a hub's certificate may open a peer link"
        };
        return reject(
            ctx,
            peer,
            &mut wr,
            refuse(ErrorCode::UNAUTHORIZED, why.into()),
        )
        .await;
    }
    if hello.cluster_id != cert_cluster {
        let what = if cert_hub { "hub" } else { "cluster" };
        let g = refuse(
            ErrorCode::UNAUTHORIZED,
            format!(
                "certificate is for {what} {cert_cluster:?}, HELLO claims {:?}",
                hello.cluster_id
            ),
        );
        return reject(ctx, peer, &mut wr, g).await;
    }
    if *ctx.drain.borrow() {
        let g = refuse(ErrorCode::NO_ERROR, "hub is draining".into());
        return reject(ctx, peer, &mut wr, g).await;
    }
    if let Some(why) = other_environment(ctx, &hello.cluster_id, cert_hub) {
        return reject(ctx, peer, &mut wr, refuse(ErrorCode::UNAUTHORIZED, why)).await;
    }
    if !cert_hub && !ctx.registry.serves(&hello.cluster_id) {
        let g = refuse(
            ErrorCode::UNAUTHORIZED,
            format!("this hub does not serve cluster {:?}", hello.cluster_id),
        );
        return reject(ctx, peer, &mut wr, g).await;
    }
    let offer = Offer {
        capabilities: if cert_hub {
            Capabilities::PEER
        } else if ctx.caches.cfg.enabled {
            Capabilities::CACHE_SYNC
        } else {
            Capabilities(0)
        },
        settings: if cert_hub {
            ctx.limits.peer_settings()
        } else {
            ctx.limits.settings()
        },
        ..Offer::default()
    };
    let (ack, agreed) =
        match handshake::accept(&hello, &offer, &ctx.hub_id, ctx.limits.keepalive_ms as u32) {
            Ok(x) => x,
            Err(g) => return reject(ctx, peer, &mut wr, g).await,
        };
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::HelloAck(ack));
    if write_buf(&mut wr, &mut eb).await.is_err() {
        return None;
    }
    if cert_hub {
        info!(%peer, hub = %hello.cluster_id, software = %hello.software, "peer link accepted");
    } else {
        info!(%peer, cluster = %hello.cluster_id, agent = %hello.agent_id, software = %hello.software, "agent connected");
    }
    Some(Admitted {
        rd,
        wr,
        buf,
        hello,
        agreed,
        peer: cert_hub,
    })
}

/// Why an agent's cluster (or a peer hub) is of another environment than this hub, if it is:
/// the cluster's record says where it belongs; a hub's environment is what the registry says
/// (a hub the directory does not know yet is let in: its certificate is from this CA).
fn other_environment(ctx: &TunnelCtx, id: &str, hub: bool) -> Option<String> {
    let theirs = if hub {
        ctx.peers.environment_of(id)?
    } else {
        ctx.access.index.cluster(id)?.environment.clone()
    };
    (theirs != ctx.environment).then(|| {
        format!(
            "{} {id:?} is in environment {theirs:?}; this hub serves environment {:?}",
            if hub { "hub" } else { "cluster" },
            ctx.environment
        )
    })
}

/// A running tunnel: what [`serve_agent`] keeps while it reads.
struct Started {
    tunnel: Rc<Tunnel>,
    rd: TlsReader,
    buf: BytesMut,
    writer: monoio::task::JoinHandle<()>,
    commander: monoio::task::JoinHandle<()>,
    span: tracing::Span,
}

/// Sets up the tunnel of an admitted agent (or accepted peer link): the engine, its
/// registration, the writer and the commander tasks.
fn start(admitted: Admitted, ctx: &Rc<TunnelCtx>) -> Started {
    let Admitted {
        rd,
        wr,
        mut buf,
        hello,
        agreed,
        peer,
    } = admitted;
    let Hello {
        cluster_id: cluster,
        agent_id,
        labels,
        ..
    } = hello;
    let now = Instant::now();
    let cfg = ConnConfig {
        keepalive: Duration::from_millis(ctx.limits.keepalive_ms.max(100)),
        max_data_frame: ctx.limits.data_chunk,
        // Two chunks per stream in the engine at most; the request handler waits for the
        // ack of each chunk (see `TunnelCmd::Data`).
        send_buffer: 2 * ctx.limits.data_chunk,
        // A peer hub opens request streams; an agent does not.
        accept_requests: peer,
        // Cache sync arrives with the cache; until then sync streams are refused.
        accept_sync: !peer && agreed.capabilities.contains(Capabilities::CACHE_SYNC),
        capabilities: agreed.capabilities,
    };
    let conn = Connection::new(
        Role::Hub,
        agreed.hub_settings,
        agreed.agent_settings,
        cfg,
        now,
    );
    let (cmd_tx, cmd_rx) = mpsc::channel::<TunnelCmd>(COMMAND_QUEUE);
    let (remote, generation) = if peer {
        (Remote::PeerIn { commands: cmd_tx }, 0)
    } else {
        let generation = ctx.registry.register(&cluster, &agent_id, cmd_tx);
        ctx.metrics.agents.inc();
        ctx.metrics.agent_connects.inc();
        (Remote::Agent { generation }, generation)
    };
    // Bytes the agent sent right behind its HELLO (handled once the tunnel exists: on a peer
    // link they may open streams).
    let early = std::mem::take(&mut buf);
    // One statement each: `get_or_create` returns a read guard that lives to the end of its
    // statement, and a second call that must insert would wait on it forever.
    let from_agent = ctx.metrics.bytes("from_agent");
    let to_agent = ctx.metrics.bytes("to_agent");
    let ingest = (!peer).then(|| {
        let cluster_cache = ctx.caches.cluster_or_new(&cluster);
        Ingest::new(cluster_cache, generation, ctx.metrics.clone())
    });
    let tunnel = Rc::new(Tunnel {
        state: RefCell::new(State {
            conn,
            slots: HashMap::new(),
            why: None,
            ingest,
            labels,
        }),
        ctx: ctx.clone(),
        cluster: cluster.clone(),
        remote,
        wake: Notify::new(),
        closing: Notify::new(),
        done: Cell::new(false),
        from_agent,
        to_agent,
        last_open: Cell::new(Instant::now()),
    });
    buf = early;
    tunnel.state.borrow_mut().conn.handle_bytes(&mut buf, now);
    release_if_empty(&mut buf);
    tunnel.dispatch();
    let span = if peer {
        tracing::info_span!("peer_link", hub = %cluster, dir = "in")
    } else {
        tracing::info_span!("tunnel", cluster = %cluster, agent = %agent_id)
    };
    let writer = monoio::spawn(writer(wr, tunnel.clone()).instrument(span.clone()));
    let commander = monoio::spawn(commander(cmd_rx, tunnel.clone()).instrument(span.clone()));
    Started {
        tunnel,
        rd,
        buf,
        writer,
        commander,
        span,
    }
}

/// Starts a peer link this hub dialled ([`crate::peers`]) after its handshake: the engine (this
/// side opens the streams, as an agent's side does), the writer and commander tasks, and a
/// task that reads until the link ends and then unregisters it. Returns the link's command
/// channel, which carries the same [`TunnelCmd`]s as an agent's tunnel.
pub(crate) fn start_dialed(
    rd: TlsReader,
    wr: TlsWriter,
    mut buf: BytesMut,
    agreed: &Agreed,
    hub: &str,
    generation: u64,
    ctx: &Rc<TunnelCtx>,
) -> mpsc::Sender<TunnelCmd> {
    let now = Instant::now();
    let cfg = ConnConfig {
        keepalive: Duration::from_millis(ctx.limits.keepalive_ms.max(100)),
        max_data_frame: ctx.limits.data_chunk,
        send_buffer: 2 * ctx.limits.data_chunk,
        accept_requests: false,
        accept_sync: false,
        capabilities: agreed.capabilities,
    };
    let mut conn = Connection::new(
        Role::Agent,
        agreed.agent_settings,
        agreed.hub_settings,
        cfg,
        now,
    );
    conn.handle_bytes(&mut buf, now);
    release_if_empty(&mut buf);
    let (cmd_tx, cmd_rx) = mpsc::channel::<TunnelCmd>(COMMAND_QUEUE);
    let tunnel = Rc::new(Tunnel {
        state: RefCell::new(State {
            conn,
            slots: HashMap::new(),
            why: None,
            ingest: None,
            labels: Vec::new(),
        }),
        ctx: ctx.clone(),
        cluster: hub.to_owned(),
        remote: Remote::PeerOut { generation },
        wake: Notify::new(),
        closing: Notify::new(),
        done: Cell::new(false),
        from_agent: ctx.metrics.bytes("from_peer"),
        to_agent: ctx.metrics.bytes("to_peer"),
        last_open: Cell::new(now),
    });
    tunnel.dispatch();
    let span = tracing::info_span!("peer_link", hub = %hub, dir = "out");
    let writer = monoio::spawn(writer(wr, tunnel.clone()).instrument(span.clone()));
    let commander = monoio::spawn(commander(cmd_rx, tunnel.clone()).instrument(span.clone()));
    monoio::spawn(async move {
        let (mut rd, mut buf) = (rd, buf);
        run(&tunnel, &mut rd, &mut buf, writer, commander, span).await;
    });
    cmd_tx
}

/// Gives back the read buffer's memory once every byte in it was decoded. Frames are slices of
/// the buffer, and what the caches keep is copied out of them, so a buffer that held a burst
/// (a snapshot: frames of up to the negotiated maximum) would otherwise keep that allocation,
/// grown to the burst's largest read, for as long as the tunnel lives. Even with no room left
/// (`capacity() == 0`) an emptied buffer still holds its share of the allocation the frames
/// were cut from: it is dropped whenever it is empty. The next read allocates what it needs.
fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// Commands queued for a tunnel, at most this many.
const COMMAND_QUEUE: usize = 1024;

/// Bytes encoded per write at most.
const WRITE_BATCH: usize = 256 * 1024;

/// The consumer of one stream.
struct Slot {
    events: mpsc::UnboundedSender<StreamEvent>,
    /// The ack of the request body chunk the engine holds, answered once the stream can take
    /// more (or failed if the stream ends first).
    ack: Option<oneshot::Sender<bool>>,
    /// See [`TunnelCmd::Open`]'s `duplex`.
    duplex: bool,
    /// This side ended its half (REQUEST with END_STREAM, or the last body chunk).
    local_done: bool,
    /// The agent ended its half (a duplex stream lives on until this side ends its own).
    remote_done: bool,
}

struct State {
    conn: Connection,
    slots: HashMap<StreamId, Slot>,
    /// Why the connection closed, once it did.
    why: Option<String>,
    /// The sync streams, feeding the cluster's caches (agents only).
    ingest: Option<Ingest>,
    /// The cluster's labels (HELLO): which types it caches.
    labels: Vec<(String, String)>,
}

/// One agent connection (or peer link), shared by its three tasks.
struct Tunnel {
    state: RefCell<State>,
    ctx: Rc<TunnelCtx>,
    /// The agent's cluster, or the peer hub's id.
    cluster: String,
    remote: Remote,
    /// The engine may have something to send: the writer looks.
    wake: Notify,
    /// The writer is gone: the reader and the commander stop (see [`Tunnel::close`]).
    closing: Notify,
    done: Cell<bool>,
    from_agent: Counter,
    to_agent: Counter,
    /// When a stream was last opened on it (a dialled peer link closes when idle).
    last_open: Cell<Instant>,
}

impl Tunnel {
    /// The writer is done: the other tasks stop (now, or as soon as they look).
    fn close(&self) {
        self.done.set(true);
        self.closing.notify_waiters();
    }

    /// Resolves once [`Tunnel::close`] was called, even if that happened before this was.
    async fn closed(&self) {
        let notified = self.closing.notified();
        if !self.done.get() {
            notified.await;
        }
    }

    fn unregister(&self) {
        match self.remote {
            Remote::Agent { generation } => self.ctx.registry.unregister(&self.cluster, generation),
            Remote::PeerOut { generation } => self.ctx.peers.unregister(&self.cluster, generation),
            Remote::PeerIn { .. } => {}
        }
    }

    /// Hands the engine's events to the streams' consumers, and wakes the writer.
    fn dispatch(&self) {
        let mut guard = self.state.borrow_mut();
        let st = &mut *guard;
        while let Some(ev) = st.conn.poll_event() {
            match ev {
                Event::Response {
                    id,
                    status,
                    fields,
                    end_stream,
                } => {
                    self.deliver(st, id, StreamEvent::Head { status, fields });
                    if end_stream {
                        self.ended(st, id, Vec::new());
                    }
                }
                Event::Data {
                    id,
                    data,
                    end_stream,
                } => {
                    self.from_agent.inc_by(data.len() as u64);
                    if !data.is_empty() {
                        self.deliver(st, id, StreamEvent::Data(data));
                    }
                    if end_stream {
                        self.ended(st, id, Vec::new());
                    }
                }
                Event::End { id, trailers } => {
                    if let Some(i) = &mut st.ingest {
                        i.ended(id);
                    }
                    self.ended(st, id, trailers)
                }
                Event::Reset { id, code, origin } => {
                    debug!(stream = id, %code, ?origin, "stream reset");
                    if let Some(i) = &mut st.ingest {
                        i.ended(id);
                    }
                    // A stream ended by our drain deadline ends cleanly for its user (a watch
                    // ends as when an API server ends it; the client reconnects elsewhere).
                    let ev = if origin == ResetOrigin::Drain {
                        StreamEvent::End
                    } else {
                        StreamEvent::Reset(code)
                    };
                    self.finish(st, id, Some(ev));
                }
                Event::Writable { id } => {
                    if let Some(ack) = st.slots.get_mut(&id).and_then(|s| s.ack.take()) {
                        let _ = ack.send(true);
                    }
                }
                Event::GoAway { code, message } => {
                    info!(%code, "the other end is going away: {message}");
                    // No new requests for this tunnel: the agent reconnects elsewhere (a peer
                    // hub's clusters are reached through another link).
                    self.unregister();
                }
                Event::Discovery(d) => {
                    if let Remote::Agent { generation } = self.remote {
                        debug!(types = d.resources.len(), "resource types reported");
                        self.sync_types(st, &d.resources);
                        self.ctx
                            .registry
                            .set_types(&self.cluster, generation, d.resources);
                    }
                }
                Event::Sync { id, frame, credit } => {
                    let Some(ingest) = &mut st.ingest else {
                        st.conn.reset(id, ErrorCode::REFUSED_STREAM);
                        continue;
                    };
                    let fx = ingest.frame(id, frame, Instant::now());
                    if let Some(code) = fx.reset {
                        st.conn.reset(id, code);
                    } else {
                        if let Some(seq) = fx.request_progress {
                            let _ = st.conn.request_progress(id, seq);
                        }
                        st.conn.release(id, credit);
                    }
                }
                Event::Request {
                    id,
                    method,
                    path,
                    fields,
                    end_stream,
                } => self.accept(st, id, &method, &path, &fields, end_stream),
                Event::SyncRequest(_) | Event::ProgressRequest { .. } => {}
                Event::Closed(reason) => {
                    self.unregister();
                    if let Some(i) = &mut st.ingest {
                        i.closed();
                    }
                    st.why = Some(reason.to_string());
                    for (_, slot) in st.slots.drain() {
                        let _ = slot.events.send(StreamEvent::Reset(ErrorCode::CANCEL));
                        if let Some(ack) = slot.ack {
                            let _ = ack.send(false);
                        }
                        self.ctx.metrics.streams.dec();
                    }
                }
            }
        }
        // The writer has work (credit, a RESET), or must see the close.
        let wake = st.conn.has_transmit() || st.conn.is_closed();
        drop(guard);
        if wake {
            self.wake.notify_one();
        }
    }

    /// A stream another hub opened on its peer link: answered `200` at once, then its bytes
    /// are one HTTP/1.1 exchange, served by the core's proxy like a user connection's request
    /// ([`crate::proxy::peer::serve_stream`]). Anything else is refused.
    fn accept(
        &self,
        st: &mut State,
        id: StreamId,
        method: &[u8],
        path: &[u8],
        fields: &kubehub_wire::Fields,
        end_stream: bool,
    ) {
        let proxy = self.ctx.proxy.get().and_then(std::rc::Weak::upgrade);
        let (Remote::PeerIn { commands }, Some(proxy)) = (&self.remote, proxy) else {
            st.conn.reset(id, ErrorCode::REFUSED_STREAM);
            return;
        };
        if method != crate::proxy::peer::METHOD.as_bytes() {
            st.conn.reset(id, ErrorCode::REFUSED_STREAM);
            return;
        }
        if st.conn.send_response(id, 200, Vec::new(), false).is_err() {
            return;
        }
        let (events, rx) = mpsc::unbounded_channel();
        st.slots.insert(
            id,
            Slot {
                events,
                ack: None,
                duplex: true,
                local_done: false,
                remote_done: end_stream,
            },
        );
        self.ctx.metrics.streams.inc();
        let stream = crate::proxy::peer::Accepted {
            stream: id,
            tunnel: commands.clone(),
            events: rx,
            origin: self.cluster.clone(),
        };
        debug!(stream = id, path = %String::from_utf8_lossy(path), fields = fields.len(), "peer stream");
        let span = tracing::info_span!("peer_stream", hub = %self.cluster, stream = id);
        monoio::spawn(crate::proxy::peer::serve_stream(proxy, stream).instrument(span));
    }

    /// Asks the agent to sync the configured types it reported (a new report may change
    /// them).
    fn sync_types(&self, st: &mut State, reported: &[kubehub_wire::ResourceType]) {
        let Some(ingest) = &st.ingest else { return };
        if !st
            .conn
            .session()
            .capabilities()
            .contains(Capabilities::CACHE_SYNC)
            || !ingest.is_current()
        {
            return;
        }
        let wanted = self.ctx.caches.wanted(&st.labels, reported);
        let cluster = self.ctx.caches.cluster_or_new(&self.cluster);
        let keys = cluster.set_types(wanted, self.ctx.caches.cfg.history_window);
        debug!(types = keys.len(), "asking the agent to sync");
        if let Err(e) = st.conn.send_sync_request(keys) {
            debug!("sync request not sent: {e}");
        }
    }

    /// Gives an event to a stream's consumer; a consumer that is gone cancels the stream.
    fn deliver(&self, st: &mut State, id: StreamId, ev: StreamEvent) {
        let ok = st.slots.get(&id).is_some_and(|s| s.events.send(ev).is_ok());
        if !ok && st.slots.contains_key(&id) {
            st.conn.reset(id, ErrorCode::CANCEL);
            self.finish(st, id, None);
        }
    }

    /// The agent ended its half of request stream `id`. A duplex stream whose requester is
    /// still sending lives on; otherwise the stream is done, and a request body not sent
    /// whole is abandoned (RESET `CANCEL`, so that neither engine keeps a half-open stream).
    fn ended(&self, st: &mut State, id: StreamId, trailers: kubehub_wire::Fields) {
        let Some(slot) = st.slots.get_mut(&id) else {
            return;
        };
        if !trailers.is_empty() {
            let _ = slot.events.send(StreamEvent::Trailers(trailers));
        }
        if slot.duplex && !slot.local_done {
            slot.remote_done = true;
            let _ = slot.events.send(StreamEvent::End);
            return;
        }
        let abandoned = !slot.local_done;
        self.finish(st, id, Some(StreamEvent::End));
        if abandoned {
            st.conn.reset(id, ErrorCode::CANCEL);
        }
    }

    /// Removes a stream, telling its consumer how it ended.
    fn finish(&self, st: &mut State, id: StreamId, ev: Option<StreamEvent>) {
        if let Some(slot) = st.slots.remove(&id) {
            if let Some(ev) = ev {
                let _ = slot.events.send(ev);
            }
            if let Some(ack) = slot.ack {
                let _ = ack.send(false);
            }
            self.ctx.metrics.streams.dec();
        }
    }

    /// Applies one command from a request handler.
    fn command(&self, cmd: TunnelCmd) {
        {
            let mut guard = self.state.borrow_mut();
            let st = &mut *guard;
            match cmd {
                TunnelCmd::Open {
                    head,
                    end_stream,
                    duplex,
                    events,
                    reply,
                } => {
                    let RequestHead {
                        method,
                        path,
                        fields,
                    } = *head;
                    self.last_open.set(Instant::now());
                    match st.conn.open_request(method, path, fields, end_stream) {
                        Ok(id) => {
                            st.slots.insert(
                                id,
                                Slot {
                                    events,
                                    ack: None,
                                    duplex,
                                    local_done: end_stream,
                                    remote_done: false,
                                },
                            );
                            self.ctx.metrics.streams.inc();
                            let _ = reply.send(Ok(id));
                        }
                        Err(e) => {
                            let e = match e {
                                WireOpenError::Busy => OpenError::Busy,
                                WireOpenError::Closing => OpenError::Closing,
                                WireOpenError::Invalid(why) => OpenError::Invalid(why),
                            };
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                TunnelCmd::Data {
                    stream,
                    data,
                    end,
                    ack,
                } => {
                    let n = data.len() as u64;
                    let mut both_ended = false;
                    let slot = st.slots.get_mut(&stream);
                    match slot {
                        Some(slot) if slot.ack.is_none() && !slot.local_done => {
                            if st.conn.send_data(stream, data, end).is_err() {
                                let _ = ack.send(false);
                            } else {
                                self.to_agent.inc_by(n);
                                slot.local_done = end;
                                if st.conn.is_writable(stream) || end {
                                    let _ = ack.send(true);
                                } else {
                                    slot.ack = Some(ack);
                                }
                                both_ended = end && slot.remote_done;
                            }
                        }
                        _ => {
                            let _ = ack.send(false);
                        }
                    }
                    if both_ended {
                        self.finish(st, stream, None);
                    }
                }
                TunnelCmd::Release { stream, n } => st.conn.release(stream, n),
                TunnelCmd::Progress { slot, seq } => {
                    let sent = st
                        .ingest
                        .as_ref()
                        .and_then(|i| i.stream_of(&slot))
                        .is_some_and(|id| st.conn.request_progress(id, seq).is_ok());
                    if !sent {
                        slot.freshness.fail_all();
                    }
                }
                TunnelCmd::Cancel { stream } => {
                    if st.slots.contains_key(&stream) {
                        st.conn.reset(stream, ErrorCode::CANCEL);
                        self.finish(st, stream, None);
                    }
                }
            }
        }
        self.dispatch();
    }
}

/// Refuses an agent with `g` (its GOAWAY) and closes; always `None` (nothing admitted).
async fn reject(
    ctx: &TunnelCtx,
    peer: SocketAddr,
    wr: &mut TlsWriter,
    g: GoAway,
) -> Option<Admitted> {
    ctx.metrics.tunnel_rejects.inc();
    warn!(%peer, code = %g.code, "agent refused: {}", g.message);
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::GoAway(g));
    let _ = write_buf(wr, &mut eb).await;
    let _ = wr.close().await;
    None
}

/// Chunks handed to one TLS write at most.
const WRITE_SLICES: usize = 64;

async fn write_buf(wr: &mut TlsWriter, eb: &mut EncodeBuf) -> std::io::Result<()> {
    while eb.has_remaining() {
        let written = {
            // Slices of the queued chunks themselves (no iovec array held across the write:
            // it would sit in every tunnel's writer task for the tunnel's whole life).
            let parts: Vec<&[u8]> = eb.slices().take(WRITE_SLICES).collect();
            wr.write_all(&parts).await?;
            parts.iter().map(|p| p.len()).sum::<usize>()
        };
        eb.advance(written);
    }
    Ok(())
}

async fn commander(mut rx: mpsc::Receiver<TunnelCmd>, tunnel: Rc<Tunnel>) {
    loop {
        let cmd = monoio::select! {
            c = rx.recv() => c,
            _ = tunnel.closed() => None,
        };
        let Some(cmd) = cmd else { break };
        tunnel.command(cmd);
    }
    // Whatever is still queued gets a clear "closing", not a hang.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        tunnel.command(cmd);
    }
}

async fn read_loop(rd: &mut TlsReader, buf: &mut BytesMut, tunnel: &Rc<Tunnel>) {
    loop {
        if tunnel.state.borrow().conn.is_closed() {
            return;
        }
        let read = monoio::select! {
            r = rd.read(buf) => Some(r),
            _ = tunnel.closed() => None,
        };
        let now = Instant::now();
        {
            let mut st = tunnel.state.borrow_mut();
            match read {
                None => st.conn.transport_closed("the hub closed the connection"),
                Some(Ok(0)) => st.conn.transport_closed("the agent closed the connection"),
                Some(Ok(_)) => {
                    st.conn.handle_bytes(buf, now);
                    release_if_empty(buf);
                }
                Some(Err(e)) => st.conn.transport_closed(&format!("read failed: {e}")),
            }
        }
        tunnel.dispatch();
    }
}

/// Flushes what the engine has to send, in batches of whole frames; drives its timers; starts
/// the drain when the hub shuts down. Ends once the engine is closed and flushed (or the
/// socket fails), closing the socket.
async fn writer(mut wr: TlsWriter, tunnel: Rc<Tunnel>) {
    let mut eb = EncodeBuf::new();
    let mut drain = tunnel.ctx.drain.clone();
    // A link this hub dialled serves its own users' requests, which a draining hub still
    // forwards (to hubs that stay): it does not drain with the hub.
    let mut drain_watch = !matches!(tunnel.remote, Remote::PeerOut { .. });
    loop {
        // Everything the engine has, written out.
        loop {
            let more = {
                let mut st = tunnel.state.borrow_mut();
                if st.conn.has_transmit() {
                    let n = st.conn.poll_transmit(&mut eb, WRITE_BATCH);
                    tracing::trace!(frames = n, bytes = eb.remaining(), "encoded");
                    // `has_transmit` promised a frame; never spin if it was wrong.
                    n > 0
                } else {
                    false
                }
            };
            // Sending drains send buffers: a request body waiting for room hears it now
            // (Writable), not whenever the agent next says something.
            if more {
                tunnel.dispatch();
            }
            if !more && eb.is_empty() {
                break;
            }
            if let Err(e) = write_buf(&mut wr, &mut eb).await {
                tunnel
                    .state
                    .borrow_mut()
                    .conn
                    .transport_closed(&format!("write failed: {e}"));
                tunnel.dispatch();
                let _ = wr.close().await;
                tunnel.close();
                return;
            }
        }
        if tunnel.state.borrow().conn.is_closed() {
            break;
        }
        // Going idle: hold no buffers while waiting.
        eb.release_memory();
        let mut deadline = tunnel.state.borrow().conn.poll_timeout();
        // A dialled peer link with no stream for the idle time closes.
        if let Remote::PeerOut { .. } = tunnel.remote {
            let idle = tunnel.ctx.peers.idle_timeout();
            let st = tunnel.state.borrow();
            if st.conn.open_streams() == 0 && !st.conn.is_draining() {
                let due = tunnel.last_open.get() + idle;
                if due <= Instant::now() {
                    drop(st);
                    debug!("peer link idle: closing");
                    tunnel.unregister();
                    let now = Instant::now();
                    tunnel
                        .state
                        .borrow_mut()
                        .conn
                        .go_away(ErrorCode::NO_ERROR, "idle", now);
                    tunnel.dispatch();
                    continue;
                }
                deadline = Some(deadline.map_or(due, |d| d.min(due)));
            }
        }
        let wait = deadline.map_or(IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()));
        monoio::select! {
            _ = tunnel.wake.notified() => {}
            _ = monoio::time::sleep(wait) => {
                tunnel.state.borrow_mut().conn.handle_timeout(Instant::now());
                tunnel.dispatch();
            }
            r = drain.changed(), if drain_watch => {
                match r {
                    Ok(()) if *drain.borrow() => {
                        drain_watch = false;
                        // No new requests here; streams in flight may finish until the deadline.
                        tunnel.unregister();
                        info!("draining tunnel");
                        let deadline = Instant::now()
                            + Duration::from_millis(tunnel.ctx.limits.drain_timeout_ms);
                        tunnel.state.borrow_mut().conn.go_away(
                            ErrorCode::NO_ERROR,
                            "hub is draining",
                            deadline,
                        );
                        tunnel.dispatch();
                    }
                    Ok(()) => {}
                    // The hub handle is gone: no drain will come.
                    Err(_) => drain_watch = false,
                }
            }
        }
    }
    let _ = wr.close().await;
    tunnel.close();
}

/// The writer's wait when the engine has no timer (keepalive disabled): it is woken anyway.
const IDLE_WAIT: Duration = Duration::from_secs(3600);
