//! `tunnel`: one agent connection, owned by the core that accepted it.
//!
//! Tasks of a tunnel (all on the owning core, sharing [`State`] through `Rc<RefCell<_>>`,
//! never borrowed across an await):
//! * the **reader** (this module's [`serve_agent`] after the handshake): decodes frames, runs
//!   them through the [`Session`], and delivers response heads and bodies to each stream's
//!   consumer (the user connection, possibly on another core);
//! * the **commander**: takes [`TunnelCmd`]s from request handlers on any core (open a stream,
//!   send body bytes, release credit, cancel) and turns them into frames;
//! * the **writer**: encodes queued frames with [`EncodeBuf`] and writes them in batches, and
//!   while idle pings the agent (closing the tunnel if it has been silent too long).
//!
//! Identity: the agent's certificate common name is its cluster id; HELLO must claim the same.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::session::Received;
use kubehub_wire::{
    Capabilities, Data, Decoder, EncodeBuf, ErrorCode, Frame, GoAway, Ping, Request, Reset, Role,
    Session, SessionError, StreamId,
};
use monoio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::config::Limits;
use crate::metrics::{DirectionLabel, Metrics};
use crate::route::{OpenError, Registry, StreamEvent, TunnelCmd};
use crate::tls::{self, TlsReader, TlsWriter};

/// What every tunnel on a core shares.
#[derive(Debug)]
pub struct TunnelCtx {
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
}

/// Frames queued for the writer, at most this many.
const WRITE_QUEUE: usize = 1024;

/// The writer's queue: local to the core (no atomics), bounded (senders wait for room), and
/// holding no memory while empty, so an idle tunnel costs nothing here.
#[derive(Default)]
struct WriteQueue {
    frames: RefCell<std::collections::VecDeque<Frame>>,
    ready: Notify,
    room: Notify,
    closed: Cell<bool>,
}

impl WriteQueue {
    /// Queues a frame, waiting while the queue is full. `Err` once the writer is gone.
    async fn send(&self, f: Frame) -> Result<(), ()> {
        loop {
            if self.closed.get() {
                return Err(());
            }
            let room = self.room.notified();
            {
                let mut q = self.frames.borrow_mut();
                if q.len() < WRITE_QUEUE {
                    q.push_back(f);
                    self.ready.notify_one();
                    return Ok(());
                }
            }
            room.await;
        }
    }

    /// The next frame; `None` once closed and drained.
    async fn recv(&self) -> Option<Frame> {
        loop {
            let ready = self.ready.notified();
            if let Some(f) = self.try_recv() {
                return Some(f);
            }
            if self.closed.get() {
                return None;
            }
            ready.await;
        }
    }

    fn try_recv(&self) -> Option<Frame> {
        let f = self.frames.borrow_mut().pop_front();
        if f.is_some() {
            self.room.notify_one();
        }
        f
    }

    fn is_empty(&self) -> bool {
        self.frames.borrow().is_empty()
    }

    /// Gives back the queue's memory while it is empty.
    fn shrink(&self) {
        let mut q = self.frames.borrow_mut();
        if q.is_empty() {
            *q = std::collections::VecDeque::new();
        }
    }

    fn close(&self) {
        self.closed.set(true);
        self.ready.notify_waiters();
        self.room.notify_waiters();
    }
}

type Out = Rc<WriteQueue>;
/// Commands queued for a tunnel, at most this many.
const COMMAND_QUEUE: usize = 1024;

struct PendingData {
    data: bytes::Bytes,
    end: bool,
    ack: oneshot::Sender<bool>,
}

struct Slot {
    events: mpsc::UnboundedSender<StreamEvent>,
    pending: Option<PendingData>,
}

struct State {
    session: Session,
    streams: HashMap<StreamId, Slot>,
    closed: bool,
}

/// The cluster id in a certificate: its subject common name.
pub fn cluster_of(cert: &[u8]) -> Option<String> {
    let (_, c) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = c
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

/// Serves one agent connection until it ends.
pub async fn serve_agent(tcp: TcpStream, peer: SocketAddr, ctx: Rc<TunnelCtx>) {
    let _ = tcp.set_nodelay(true);
    let deadline = ctx.limits.handshake_timeout();
    let conn = match rustls::ServerConnection::new(ctx.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, "agent TLS setup: {e}");
            return;
        }
    };
    let tls = match tls::handshake(tcp, conn.into(), deadline).await {
        Ok(t) => t,
        Err(e) => {
            ctx.metrics.tunnel_rejects.inc();
            warn!(%peer, "agent connection refused: {e}");
            return;
        }
    };
    let Some(cert_cluster) = tls
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| cluster_of(c))
    else {
        ctx.metrics.tunnel_rejects.inc();
        warn!(%peer, "agent certificate has no common name");
        return;
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
            return reject(&ctx, peer, &mut wr, g).await;
        }
        Ok(Err((code, e))) => return reject(&ctx, peer, &mut wr, refuse(code, e)).await,
        Err(_) => {
            let g = refuse(ErrorCode::HANDSHAKE, "HELLO timed out".into());
            return reject(&ctx, peer, &mut wr, g).await;
        }
    };
    if hello.cluster_id != cert_cluster {
        let g = refuse(
            ErrorCode::UNAUTHORIZED,
            format!(
                "certificate is for cluster {cert_cluster:?}, HELLO claims {:?}",
                hello.cluster_id
            ),
        );
        return reject(&ctx, peer, &mut wr, g).await;
    }
    if *ctx.drain.borrow() {
        let g = refuse(ErrorCode::NO_ERROR, "hub is shutting down".into());
        return reject(&ctx, peer, &mut wr, g).await;
    }
    if !ctx.registry.serves(&hello.cluster_id) {
        let g = refuse(
            ErrorCode::UNAUTHORIZED,
            format!("this hub does not serve cluster {:?}", hello.cluster_id),
        );
        return reject(&ctx, peer, &mut wr, g).await;
    }
    let offer = Offer {
        // Cache sync arrives with the cache; until then the hub does not ask for it.
        capabilities: Capabilities(0),
        settings: ctx.limits.settings(),
        ..Offer::default()
    };
    let (ack, agreed) =
        match handshake::accept(&hello, &offer, &ctx.hub_id, ctx.limits.keepalive_ms as u32) {
            Ok(x) => x,
            Err(g) => return reject(&ctx, peer, &mut wr, g).await,
        };
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::HelloAck(ack));
    if write_buf(&mut wr, &mut eb).await.is_err() {
        return;
    }
    decoder.set_max_frame_size(agreed.hub_settings.max_frame_size);
    let cluster = hello.cluster_id.clone();
    info!(%peer, cluster = %cluster, agent = %hello.agent_id, software = %hello.software, "agent connected");

    let state = Rc::new(RefCell::new(State {
        session: Session::new(Role::Hub, agreed.hub_settings, agreed.agent_settings),
        streams: HashMap::new(),
        closed: false,
    }));
    let out_tx: Out = Rc::new(WriteQueue::default());
    let out_rx = out_tx.clone();
    let (cmd_tx, cmd_rx) = mpsc::channel::<TunnelCmd>(COMMAND_QUEUE);
    let closing = Rc::new(Notify::new());
    let last_rx = Rc::new(Cell::new(Instant::now()));
    let generation = ctx.registry.register(&cluster, &hello.agent_id, cmd_tx);
    ctx.metrics.agents.inc();

    let writer = monoio::spawn(writer(
        wr,
        eb,
        out_rx,
        WriterCtx {
            ctx: ctx.clone(),
            cluster: cluster.clone(),
            generation,
            state: state.clone(),
            closing: closing.clone(),
            last_rx: last_rx.clone(),
        },
    ));
    let commander = monoio::spawn(commander(
        cmd_rx,
        state.clone(),
        out_tx.clone(),
        ctx.clone(),
        closing.clone(),
    ));

    let why = read_loop(
        &mut rd,
        &mut buf,
        &mut decoder,
        &state,
        &out_tx,
        &ctx,
        &last_rx,
        &closing,
    )
    .await;
    info!(cluster = %cluster, "agent disconnected: {why}");

    // Tear down: unregister first so new requests get 503, then fail what is in flight.
    ctx.registry.unregister(&cluster, generation);
    ctx.metrics.agents.dec();
    {
        let mut st = state.borrow_mut();
        st.closed = true;
        for (_, slot) in st.streams.drain() {
            let _ = slot.events.send(StreamEvent::Reset(ErrorCode::CANCEL));
            if let Some(p) = slot.pending {
                let _ = p.ack.send(false);
            }
            ctx.metrics.streams.dec();
        }
    }
    closing.notify_waiters();
    out_tx.close();
    commander.await;
    writer.await;
}

async fn reject(ctx: &TunnelCtx, peer: SocketAddr, wr: &mut TlsWriter, g: GoAway) {
    ctx.metrics.tunnel_rejects.inc();
    warn!(%peer, code = %g.code, "agent refused: {}", g.message);
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::GoAway(g));
    let _ = write_buf(wr, &mut eb).await;
    let _ = wr.close().await;
}

async fn write_buf(wr: &mut TlsWriter, eb: &mut EncodeBuf) -> std::io::Result<()> {
    while eb.has_remaining() {
        let written = {
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let k = eb.chunks_vectored(&mut slices);
            let parts: Vec<&[u8]> = slices[..k].iter().map(|s| &s[..]).collect();
            wr.write_all(&parts).await?;
            parts.iter().map(|p| p.len()).sum::<usize>()
        };
        eb.advance(written);
    }
    Ok(())
}

/// What the writer needs besides its socket and queue.
struct WriterCtx {
    ctx: Rc<TunnelCtx>,
    cluster: String,
    generation: u64,
    state: Rc<RefCell<State>>,
    closing: Rc<Notify>,
    last_rx: Rc<Cell<Instant>>,
}

/// Writes queued frames in batches. Its timer also does the tunnel's housekeeping, so an idle
/// tunnel needs no other task for it: PING the agent while idle (GOAWAY and close after three
/// silent intervals), and on hub shutdown drain (unregister, GOAWAY, let streams finish for
/// `drain_timeout_ms`, end the rest, close).
async fn writer(mut wr: TlsWriter, mut eb: EncodeBuf, rx: Out, w: WriterCtx) {
    // The HELLO_ACK left a scratch buffer behind; an idle tunnel keeps none.
    eb.release_memory();
    let to_agent = w
        .ctx
        .metrics
        .tunnel_bytes
        .get_or_create(&DirectionLabel {
            direction: "to_agent",
        })
        .clone();
    let every = Duration::from_millis(w.ctx.limits.keepalive_ms.max(100));
    let mut drain = w.ctx.drain.clone();
    let mut drain_watch = true;
    let mut drain_deadline: Option<Instant> = None;
    let mut pings = 0u64;
    let mut next_tick = Instant::now() + every;
    loop {
        let wait = next_tick.saturating_duration_since(Instant::now());
        let first = monoio::select! {
            f = rx.recv() => f,
            _ = w.closing.notified() => None,
            r = drain.changed(), if drain_watch => {
                match r {
                    Ok(()) if *drain.borrow() => {
                        drain_watch = false;
                        drain_deadline = Some(Instant::now() + Duration::from_millis(w.ctx.limits.drain_timeout_ms));
                        next_tick = Instant::now() + Duration::from_millis(50);
                        w.ctx.registry.unregister(&w.cluster, w.generation);
                        w.state.borrow_mut().closed = true;
                        info!(cluster = %w.cluster, "draining tunnel");
                        Some(Frame::GoAway(GoAway {
                            last_stream_id: 0,
                            code: ErrorCode::NO_ERROR,
                            message: "hub is shutting down".into(),
                        }))
                    }
                    Ok(()) => continue,
                    Err(_) => {
                        // The hub handle is gone: no drain will come.
                        drain_watch = false;
                        continue;
                    }
                }
            },
            _ = monoio::time::sleep(wait) => {
                if let Some(deadline) = drain_deadline {
                    next_tick = Instant::now() + Duration::from_millis(50);
                    if Instant::now() >= deadline {
                        end_all_streams(&w, &mut eb);
                    }
                    if w.state.borrow().streams.is_empty() {
                        let _ = write_buf(&mut wr, &mut eb).await;
                        w.closing.notify_waiters();
                        break;
                    }
                    if eb.is_empty() { continue } else { None }
                } else {
                    next_tick = Instant::now() + every;
                    if w.last_rx.get().elapsed() > every * 3 {
                        // Silent for three intervals: say why, then close.
                        eb.push(&Frame::GoAway(GoAway {
                            last_stream_id: 0,
                            code: ErrorCode::NO_ERROR,
                            message: "keepalive timeout".into(),
                        }));
                        let _ = write_buf(&mut wr, &mut eb).await;
                        w.closing.notify_waiters();
                        break;
                    }
                    pings += 1;
                    Some(Frame::Ping(Ping { ack: false, opaque: pings }))
                }
            },
        };
        let push = |eb: &mut EncodeBuf, f: &Frame| {
            if let Frame::Data(d) = f {
                to_agent.inc_by(d.payload.len() as u64);
            }
            eb.push(f);
        };
        match first {
            Some(f) => push(&mut eb, &f),
            None if eb.is_empty() => break,
            None => {}
        }
        // Batch whatever else is queued into one write.
        while eb.remaining() < 256 * 1024 {
            match rx.try_recv() {
                Some(f) => push(&mut eb, &f),
                None => break,
            }
        }
        if let Err(e) = write_buf(&mut wr, &mut eb).await {
            debug!("tunnel write failed: {e}");
            break;
        }
        if rx.is_empty() {
            // Going idle: hold no buffers while waiting.
            eb.release_memory();
            rx.shrink();
        }
    }
    let _ = wr.close().await;
}

/// Drain timeout: long-lived streams (watches, logs -f) would never finish. End them cleanly for
/// their users and cancel them at the agent.
fn end_all_streams(w: &WriterCtx, eb: &mut EncodeBuf) {
    let mut st = w.state.borrow_mut();
    let ids: Vec<StreamId> = st.streams.keys().copied().collect();
    for id in ids {
        let f = Frame::Reset(Reset {
            stream_id: id,
            code: ErrorCode::CANCEL,
        });
        if st.session.send(&f).is_ok() {
            eb.push(&f);
        }
        finish(&mut st, &w.ctx.metrics, id, Some(StreamEvent::End));
    }
}

/// Sends `frames` to the writer, in order.
async fn send_all(out: &Out, frames: Vec<Frame>) -> bool {
    for f in frames {
        if out.send(f).await.is_err() {
            return false;
        }
    }
    true
}

/// Removes a stream, telling its consumer why.
fn finish(st: &mut State, metrics: &Metrics, id: StreamId, ev: Option<StreamEvent>) {
    if let Some(slot) = st.streams.remove(&id) {
        if let Some(ev) = ev {
            let _ = slot.events.send(ev);
        }
        if let Some(p) = slot.pending {
            let _ = p.ack.send(false);
        }
        metrics.streams.dec();
    }
}

/// Sends pending request body bytes of `id` if the windows allow; returns frames to write.
fn flush_pending(st: &mut State, id: StreamId, chunk: usize, out: &mut Vec<Frame>) {
    let Some(slot) = st.streams.get_mut(&id) else {
        return;
    };
    let Some(p) = slot.pending.take() else { return };
    let cap = st.session.send_capacity(id) as usize;
    if cap < p.data.len().min(chunk) && !p.data.is_empty() {
        slot.pending = Some(p);
        return;
    }
    let mut data = p.data;
    let mut ok = true;
    while !data.is_empty() || p.end {
        let cap = st.session.send_capacity(id) as usize;
        let n = data.len().min(chunk).min(cap);
        if n == 0 && !data.is_empty() {
            break;
        }
        let piece = data.split_to(n);
        let end = p.end && data.is_empty();
        let f = Frame::Data(Data {
            stream_id: id,
            end_stream: end,
            payload: piece,
        });
        if st.session.send(&f).is_err() {
            ok = false;
            break;
        }
        out.push(f);
        if data.is_empty() {
            break;
        }
    }
    if data.is_empty() || !ok {
        let _ = p.ack.send(ok);
    } else if let Some(slot) = st.streams.get_mut(&id) {
        slot.pending = Some(PendingData {
            data,
            end: p.end,
            ack: p.ack,
        });
    }
}

async fn commander(
    mut rx: mpsc::Receiver<TunnelCmd>,
    state: Rc<RefCell<State>>,
    out: Out,
    ctx: Rc<TunnelCtx>,
    closing: Rc<Notify>,
) {
    loop {
        let cmd = monoio::select! {
            c = rx.recv() => c,
            _ = closing.notified() => None,
        };
        let Some(cmd) = cmd else { break };
        let mut frames = Vec::new();
        {
            let mut st = state.borrow_mut();
            let st = &mut *st;
            match cmd {
                TunnelCmd::Open {
                    head,
                    end_stream,
                    events,
                    reply,
                } => {
                    if st.closed {
                        let _ = reply.send(Err(OpenError::Closing));
                        continue;
                    }
                    let id = match st.session.next_stream_id() {
                        Ok(id) => id,
                        Err(SessionError::Stream { .. }) => {
                            let _ = reply.send(Err(OpenError::Busy));
                            continue;
                        }
                        Err(SessionError::Connection { .. }) => {
                            let _ = reply.send(Err(OpenError::Closing));
                            continue;
                        }
                    };
                    let f = Frame::Request(Request {
                        stream_id: id,
                        end_stream,
                        method: head.method,
                        path: head.path,
                        fields: head.fields,
                    });
                    if st.session.send(&f).is_err() {
                        let _ = reply.send(Err(OpenError::Closing));
                        continue;
                    }
                    st.streams.insert(
                        id,
                        Slot {
                            events,
                            pending: None,
                        },
                    );
                    ctx.metrics.streams.inc();
                    frames.push(f);
                    let _ = reply.send(Ok(id));
                }
                TunnelCmd::Data {
                    stream,
                    data,
                    end,
                    ack,
                } => match st.streams.get_mut(&stream) {
                    Some(slot) if slot.pending.is_none() => {
                        slot.pending = Some(PendingData { data, end, ack });
                        flush_pending(st, stream, ctx.limits.data_chunk, &mut frames);
                    }
                    _ => {
                        let _ = ack.send(false);
                    }
                },
                TunnelCmd::Release { stream, n } => {
                    if let Some(wu) = st.session.release(stream, n) {
                        frames.push(Frame::WindowUpdate(wu));
                    }
                }
                TunnelCmd::Cancel { stream } => {
                    if st.streams.contains_key(&stream) {
                        let f = Frame::Reset(Reset {
                            stream_id: stream,
                            code: ErrorCode::CANCEL,
                        });
                        if st.session.send(&f).is_ok() {
                            frames.push(f);
                        }
                        finish(st, &ctx.metrics, stream, None);
                    }
                }
            }
        }
        if !send_all(&out, frames).await {
            break;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_loop(
    rd: &mut TlsReader,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    state: &Rc<RefCell<State>>,
    out: &Out,
    ctx: &Rc<TunnelCtx>,
    last_rx: &Rc<Cell<Instant>>,
    closing: &Rc<Notify>,
) -> String {
    let from_agent = ctx
        .metrics
        .tunnel_bytes
        .get_or_create(&DirectionLabel {
            direction: "from_agent",
        })
        .clone();
    loop {
        // Every whole frame in the buffer first.
        loop {
            let frame = match decoder.decode(buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let g = GoAway {
                        last_stream_id: 0,
                        code: e.code(),
                        message: e.to_string(),
                    };
                    let _ = out.send(Frame::GoAway(g)).await;
                    return format!("protocol error: {e}");
                }
            };
            last_rx.set(Instant::now());
            let mut frames = Vec::new();
            let result = {
                let mut st = state.borrow_mut();
                handle_frame(
                    &mut st,
                    frame,
                    &ctx.metrics,
                    &from_agent,
                    ctx.limits.data_chunk,
                    &mut frames,
                )
            };
            if !send_all(out, frames).await {
                return "writer closed".into();
            }
            if let Err(why) = result {
                return why;
            }
        }
        let read = monoio::select! {
            r = rd.read(buf) => Some(r),
            _ = closing.notified() => None,
        };
        match read {
            None => return "closed by the hub".into(),
            Some(Ok(0)) => return "connection closed".into(),
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("read failed: {e}"),
        }
    }
}

/// Applies one frame from the agent. `Err` ends the connection (after `frames` are sent).
fn handle_frame(
    st: &mut State,
    frame: Frame,
    metrics: &Metrics,
    from_agent: &prometheus_client::metrics::counter::Counter,
    chunk: usize,
    frames: &mut Vec<Frame>,
) -> Result<(), String> {
    let id = frame.stream_id();
    match st.session.recv(&frame) {
        Err(SessionError::Connection { code, reason }) => {
            frames.push(Frame::GoAway(GoAway {
                last_stream_id: 0,
                code,
                message: reason.into(),
            }));
            return Err(format!("agent broke the protocol: {reason} ({code})"));
        }
        Err(SessionError::Stream {
            stream,
            code,
            reason,
        }) => {
            debug!(stream, %code, "stream error: {reason}");
            frames.push(Frame::Reset(Reset {
                stream_id: stream,
                code,
            }));
            finish(st, metrics, stream, Some(StreamEvent::Reset(code)));
            return Ok(());
        }
        Ok(Received {
            deliver,
            window_update,
        }) => {
            if let Some(wu) = window_update {
                frames.push(Frame::WindowUpdate(wu));
            }
            if !deliver {
                return Ok(());
            }
        }
    }
    let send = |st: &mut State, ev: StreamEvent| -> bool {
        match st.streams.get(&id) {
            Some(slot) => slot.events.send(ev).is_ok(),
            None => false,
        }
    };
    match frame {
        Frame::Response(r) => {
            let ok = send(
                st,
                StreamEvent::Head {
                    status: r.status,
                    fields: r.fields,
                },
            );
            if r.end_stream {
                finish(st, metrics, id, Some(StreamEvent::End));
            } else if !ok {
                cancel(st, metrics, id, frames);
            }
        }
        Frame::Data(d) => {
            from_agent.inc_by(d.payload.len() as u64);
            // Empty DATA carries nothing to deliver (and must not grow the queue).
            let ok = d.payload.is_empty() || send(st, StreamEvent::Data(d.payload));
            if d.end_stream {
                finish(st, metrics, id, Some(StreamEvent::End));
            } else if !ok {
                cancel(st, metrics, id, frames);
            }
        }
        Frame::End(_) => finish(st, metrics, id, Some(StreamEvent::End)),
        Frame::Reset(r) => finish(st, metrics, id, Some(StreamEvent::Reset(r.code))),
        Frame::WindowUpdate(w) => {
            let ids: Vec<StreamId> = if w.stream_id == 0 {
                st.streams
                    .iter()
                    .filter(|(_, s)| s.pending.is_some())
                    .map(|(k, _)| *k)
                    .collect()
            } else {
                vec![w.stream_id]
            };
            for sid in ids {
                flush_pending(st, sid, chunk, frames);
            }
        }
        Frame::Ping(p) if !p.ack => frames.push(Frame::Ping(Ping {
            ack: true,
            opaque: p.opaque,
        })),
        Frame::Ping(_) => {}
        Frame::GoAway(g) => info!(code = %g.code, "agent is going away: {}", g.message),
        Frame::Discovery(d) => debug!(types = d.resources.len(), "discovery report"),
        Frame::SnapshotBegin(_) => {
            // Not negotiated yet: refuse the sync stream.
            let f = Frame::Reset(Reset {
                stream_id: id,
                code: ErrorCode::REFUSED_STREAM,
            });
            if st.session.send(&f).is_ok() {
                frames.push(f);
            }
        }
        Frame::Request(_) => {
            // The hub serves no requests from agents (yet).
            let f = Frame::Reset(Reset {
                stream_id: id,
                code: ErrorCode::REFUSED_STREAM,
            });
            if st.session.send(&f).is_ok() {
                frames.push(f);
            }
        }
        _ => {}
    }
    Ok(())
}

/// The consumer is gone: reset the stream towards the agent.
fn cancel(st: &mut State, metrics: &Metrics, id: StreamId, frames: &mut Vec<Frame>) {
    let f = Frame::Reset(Reset {
        stream_id: id,
        code: ErrorCode::CANCEL,
    });
    if st.session.send(&f).is_ok() {
        frames.push(f);
    }
    finish(st, metrics, id, None);
}
