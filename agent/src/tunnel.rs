//! The agent's side of a tunnel: dial, mutual TLS, HELLO, then serve the streams the hub opens
//! until the connection ends, driving the shared protocol engine ([`Connection`]).
//!
//! The engine owns the protocol (streams, flow control, keepalive, every frame to send); this
//! module moves bytes and work around it. Tasks: the reader (socket bytes into the engine,
//! its timers, its events to the streams), the writer (whatever the engine has to send, in
//! batches), and one task per stream that forwards the request to the edge API server and
//! streams the answer back, pausing while the stream's send buffer is full. The engine sits
//! behind a `std::sync::Mutex` that is never held across an await; whoever changes it wakes
//! the writer, which flushes until the engine has nothing left, so no frame (credit, a GOAWAY)
//! is ever dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use kubehub_wire::conn::{ConnConfig, Event, OpenError as WireOpenError};
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::{
    Capabilities, Connection, Decoder, EncodeBuf, ErrorCode, Fields, Frame, ResourceKey, Role,
    StreamId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn, Instrument};

use crate::config::AgentConfig;
use crate::sync::{SyncEnv, Syncs};
use crate::upstream::{is_hop_by_hop, UpBody, UpstreamClient};
use crate::Metrics;

/// Why a tunnel ended.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// Connecting failed.
    #[error("connecting to {0}: {1}")]
    Connect(String, std::io::Error),
    /// The hub refused the handshake.
    #[error("hub refused the handshake: {0}")]
    Refused(String),
    /// The handshake did not complete.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The connection ended.
    #[error("{0}")]
    Closed(String),
}

/// One stream the hub opened.
struct Slot {
    /// The request body (or an upgraded connection's bytes from the user), on its way to the
    /// edge. Bounded in bytes, not chunks: the hub cannot send more than the stream's window,
    /// and credit goes back only as the edge takes the bytes.
    body: Option<mpsc::UnboundedSender<Bytes>>,
    /// The task forwarding it.
    task: Option<AbortHandle>,
}

struct State {
    conn: Connection,
    streams: HashMap<StreamId, Slot>,
    /// The sync streams (types the hub caches).
    syncs: Syncs,
}

/// One tunnel's engine and what its tasks share.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// The engine may have something to send: the writer looks.
    wake: Notify,
    /// A stream's send buffer drained (`Event::Writable`): stream tasks waiting look again.
    writable: Notify,
    /// What the sync streams need.
    sync_env: SyncEnv,
    /// What answers forwarded requests besides the edge API server (`/plugins/<name>/…`).
    plugins: crate::plugin::Plugins,
    /// Told the code of a GOAWAY from the hub (`NO_ERROR`: it drains, for a restart).
    on_goaway: Box<dyn Fn(ErrorCode) + Send + Sync>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the engine, then wakes the writer.
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        let out = f(&mut self.lock().conn);
        self.wake.notify_one();
        out
    }

    /// [`Shared::with`], for the sync pumps and upgraded connections.
    pub(crate) fn with_conn<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        self.with(f)
    }

    /// Opens the sync stream of `key` (its SNAPSHOT_BEGIN), waiting while the hub's stream
    /// limit is reached. `None`: the tunnel is closing.
    pub(crate) async fn open_sync(&self, key: &ResourceKey) -> Option<StreamId> {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                match st.conn.open_sync(key.clone()) {
                    Ok(id) => {
                        st.syncs.record_open(key, id);
                        drop(st);
                        self.wake.notify_one();
                        return Some(id);
                    }
                    Err(WireOpenError::Busy) => {}
                    Err(e) => {
                        debug!("sync stream not opened: {e}");
                        return None;
                    }
                }
            }
            // A stream ending frees a slot; look again then (or after a while).
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }

    /// Waits until stream `id` may take another frame. `false`: it is gone.
    pub(crate) async fn wait_writable(&self, id: StreamId) -> bool {
        loop {
            let notified = self.writable.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if !st.conn.can_send(id) {
                    return false;
                }
                if st.conn.is_writable(id) {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// The pump of stream `id` failed (and reset it): stop its type, restart it later.
    pub(crate) fn sync_failed(self: &Arc<Self>, id: StreamId) {
        let mut st = self.lock();
        st.syncs.stream_reset(id, self, &self.sync_env);
    }

    /// Starts the sync of `key` again, if still wanted (after the hub reset its stream).
    pub(crate) fn restart_sync(self: &Arc<Self>, key: ResourceKey, env: &SyncEnv) {
        let mut st = self.lock();
        if st.conn.is_closed() {
            return;
        }
        st.syncs.restart(key, self, env);
    }
}

/// Bytes encoded per write at most.
const WRITE_BATCH: usize = 256 * 1024;

/// How long a tunnel the agent leaves for another hub (a move: the registry, a rebalance)
/// gives its streams in flight to finish after its GOAWAY; the ones still open then (the
/// cache's sync streams, long watches) are reset and the hub's users reconnect through the
/// agent's other tunnels.
pub const LEAVE_GRACE: Duration = Duration::from_secs(10);

/// The TLS client configuration for the hubs (TLS 1.3, the agent's client certificate), from
/// the files the configuration names.
pub fn client_tls(cfg: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let files = cfg.tls_files().map_err(|e| e.to_string())?;
    let cert = kubehub_pki::ReloadingClientCert::new(
        kubehub_pki::load_certs(&files.cert).map_err(|e| e.to_string())?,
        kubehub_pki::load_key(&files.key).map_err(|e| e.to_string())?,
    )
    .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let roots = kubehub_pki::load_roots(&files.ca).map_err(|e| e.to_string())?;
    client_tls_with(roots, Arc::new(cert))
}

/// The TLS client configuration for the hubs: TLS 1.3, `roots` to verify them, and the client
/// certificate `cert` holds when each handshake starts (renewal replaces it there). Session
/// resumption is off: a resumed TLS 1.3 session does not present the certificate again, and
/// the hub must see the current one.
pub fn client_tls_with(
    roots: rustls::RootCertStore,
    cert: Arc<kubehub_pki::ReloadingClientCert>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert);
    c.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(c))
}

/// Connects to `hub` (host:port, resolved) from the source address `local`.
async fn connect_from(local: std::net::IpAddr, hub: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host(hub).await? {
        if addr.is_ipv4() != local.is_ipv4() {
            continue;
        }
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.bind(std::net::SocketAddr::new(local, 0))?;
        match socket.connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            format!("no address of {hub} in the family of local_address {local}"),
        )
    }))
}

/// Connects to `hub`, handshakes, and serves until the connection ends. `on_up` runs once the
/// handshake succeeded (to reset the backoff); `on_goaway` when the hub sends GOAWAY on the
/// established tunnel, with its code (streams in flight then finish before it closes).
#[allow(clippy::too_many_arguments)]
pub async fn run_once(
    hub: &str,
    cfg: &AgentConfig,
    tls: Arc<rustls::ClientConfig>,
    upstream: UpstreamClient,
    plugins: crate::plugin::Plugins,
    metrics: Arc<Metrics>,
    on_up: impl FnOnce(),
    on_goaway: impl Fn(ErrorCode) + Send + Sync + 'static,
    mut leave: watch::Receiver<bool>,
) -> Result<(), TunnelError> {
    let deadline = Duration::from_millis(cfg.limits.connect_timeout_ms);
    let connect = async {
        let tcp = match cfg.local_address {
            None => TcpStream::connect(hub).await,
            Some(local) => connect_from(local, hub).await,
        }
        .map_err(|e| TunnelError::Connect(hub.into(), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| TunnelError::Connect(hub.into(), e))?;
        let name = rustls::pki_types::ServerName::try_from(cfg.server_name_for(hub))
            .map_err(|e| TunnelError::Handshake(format!("server name: {e}")))?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| TunnelError::Handshake(format!("TLS: {e}")))?;
        Ok::<_, TunnelError>(tls)
    };
    let mut tls = tokio::time::timeout(deadline, connect)
        .await
        .map_err(|_| TunnelError::Handshake("timed out".into()))??;
    let offer = Offer {
        capabilities: Capabilities::CACHE_SYNC,
        settings: cfg.limits.settings(),
        ..Offer::default()
    };
    let hello = offer.hello(
        cfg.agent_id(),
        cfg.cluster_id.clone(),
        format!("kubehub-agent {}", env!("CARGO_PKG_VERSION")),
        cfg.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::Hello(hello));
    write_all(&mut tls, &mut eb)
        .await
        .map_err(|e| TunnelError::Handshake(e.to_string()))?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut decoder = Decoder::default();
    let first = tokio::time::timeout(deadline, async {
        loop {
            if let Some(f) = decoder
                .decode(&mut buf)
                .map_err(|e| TunnelError::Handshake(e.to_string()))?
            {
                return Ok(f);
            }
            let n = tls
                .read_buf(&mut buf)
                .await
                .map_err(|e| TunnelError::Handshake(e.to_string()))?;
            if n == 0 {
                return Err(TunnelError::Handshake("hub closed the connection".into()));
            }
        }
    })
    .await
    .map_err(|_| TunnelError::Handshake("no HELLO_ACK in time".into()))??;
    let ack = match first {
        Frame::HelloAck(a) => a,
        Frame::GoAway(g) => return Err(TunnelError::Refused(format!("{}: {}", g.code, g.message))),
        f => {
            return Err(TunnelError::Handshake(format!(
                "expected HELLO_ACK, got {}",
                f.frame_type().name()
            )))
        }
    };
    let agreed = handshake::confirm(&offer, &ack).map_err(|e| TunnelError::Handshake(e.into()))?;
    decoder.set_max_frame_size(agreed.agent_settings.max_frame_size);
    info!(hub, hub_id = %ack.hub_id, version = agreed.version, "tunnel up");
    on_up();
    metrics.connected.inc();

    let (mut rd, wr) = tokio::io::split(tls);
    let keepalive = Duration::from_millis(u64::from(ack.keepalive_ms).max(100));
    let discovery_every = Duration::from_millis(cfg.limits.discovery_interval_ms);
    let conn_cfg = ConnConfig {
        keepalive,
        max_data_frame: cfg.limits.data_chunk,
        // Two chunks queued in the engine per stream before its task waits.
        send_buffer: 2 * cfg.limits.data_chunk,
        accept_requests: true,
        accept_sync: false,
        capabilities: agreed.capabilities,
    };
    let mut conn = Connection::new(
        Role::Agent,
        agreed.agent_settings,
        agreed.hub_settings,
        conn_cfg,
        Instant::now(),
    );
    // Frames the hub sent right behind its HELLO_ACK.
    conn.handle_bytes(&mut buf, Instant::now());
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            conn,
            streams: HashMap::new(),
            syncs: Syncs::default(),
        }),
        wake: Notify::new(),
        writable: Notify::new(),
        sync_env: SyncEnv {
            upstream: upstream.clone(),
            cfg: cfg.sync.clone(),
            restart_after: Duration::from_millis(cfg.reconnect.max_ms),
            metrics: metrics.clone(),
        },
        plugins,
        on_goaway: Box::new(on_goaway),
    });
    let writer = tokio::spawn(writer(
        wr,
        shared.clone(),
        upstream.clone(),
        metrics.clone(),
    ));
    // However this function ends (returning, or dropped when the agent stops), the streams
    // and the writer end with it, so the socket closes and the hub sees the tunnel go.
    let discovery = tokio::spawn(
        report_discovery(shared.clone(), upstream.clone(), discovery_every)
            .instrument(tracing::debug_span!("discovery")),
    );
    let cleanup = Cleanup {
        shared: shared.clone(),
        writer: writer.abort_handle(),
        discovery: discovery.abort_handle(),
        metrics: metrics.clone(),
    };
    let read = read_loop(&mut rd, &mut buf, &shared, &upstream, &metrics);
    tokio::pin!(read);
    let leaving = async {
        // Until `leave` says so; a dropped sender never does.
        while !*leave.borrow_and_update() {
            if leave.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let why = tokio::select! {
        why = &mut read => why,
        () = leaving => {
            info!("leaving this hub: GOAWAY, streams in flight finish");
            shared.with(|c| {
                c.go_away(
                    ErrorCode::NO_ERROR,
                    "the agent is moving to another hub",
                    Instant::now() + LEAVE_GRACE,
                );
            });
            read.await
        }
    };
    // The engine may still hold its last words (a GOAWAY): give the writer a moment to flush
    // them, then close.
    shared.wake.notify_one();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    cleanup.writer.abort();
    Err(TunnelError::Closed(why))
}

struct Cleanup {
    shared: Arc<Shared>,
    writer: AbortHandle,
    discovery: AbortHandle,
    metrics: Arc<Metrics>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.syncs.stop_all();
        for (_, slot) in st.streams.drain() {
            if let Some(t) = slot.task {
                t.abort();
            }
        }
        self.writer.abort();
        self.discovery.abort();
        self.metrics.connected.dec();
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    eb: &mut EncodeBuf,
) -> std::io::Result<()> {
    while eb.has_remaining() {
        let n = {
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let k = eb.chunks_vectored(&mut slices);
            w.write_vectored(&slices[..k]).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        eb.advance(n);
    }
    w.flush().await
}

/// Writes whatever the engine has to send, whenever it is woken; ends (shutting the socket
/// down) once the engine is closed and flushed, or the socket fails.
async fn writer<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    shared: Arc<Shared>,
    upstream: UpstreamClient,
    metrics: Arc<Metrics>,
) {
    let mut eb = EncodeBuf::new();
    loop {
        let (encoded, closed) = {
            let mut st = shared.lock();
            let n = if st.conn.has_transmit() {
                st.conn.poll_transmit(&mut eb, WRITE_BATCH)
            } else {
                0
            };
            (n, st.conn.is_closed() && !st.conn.has_transmit())
        };
        // Sending drains send buffers: streams waiting to write hear it now (Writable), not
        // whenever the hub next says something.
        dispatch(&shared, &upstream, &metrics);
        if encoded > 0 {
            if let Err(e) = write_all(&mut wr, &mut eb).await {
                debug!("tunnel write failed: {e}");
                shared.with(|c| c.transport_closed(&format!("write failed: {e}")));
                break;
            }
            continue;
        }
        if closed {
            break;
        }
        eb.release_memory();
        shared.wake.notified().await;
    }
    let _ = wr.shutdown().await;
}

/// Reports the edge's resource types to the hub now and every `every` (0: once), retrying a
/// failed read sooner.
async fn report_discovery(shared: Arc<Shared>, upstream: UpstreamClient, every: Duration) {
    let retry = (every / 10).max(Duration::from_secs(1));
    loop {
        let wait = match crate::discovery::discover(&upstream).await {
            Ok(d) => {
                let n = d.resources.len();
                match shared.with(|c| c.send_discovery(d)) {
                    Ok(()) => debug!(types = n, "resource types reported"),
                    Err(WireOpenError::Closing) => return,
                    Err(e) => warn!("resource types not reported: {e}"),
                }
                if every.is_zero() {
                    return;
                }
                every
            }
            Err(e) => {
                warn!("reading the edge API server's discovery: {e}; again in {retry:?}");
                retry
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Reads from the hub into the engine, drives its timers, and hands its events out, until
/// the connection closes; returns why.
async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    shared: &Arc<Shared>,
    upstream: &UpstreamClient,
    metrics: &Arc<Metrics>,
) -> String {
    loop {
        let deadline = shared.lock().conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = rd.read_buf(buf) => {
                let now = Instant::now();
                let mut st = shared.lock();
                match r {
                    Ok(0) => st.conn.transport_closed("hub closed the connection"),
                    Ok(_) => st.conn.handle_bytes(buf, now),
                    Err(e) => st.conn.transport_closed(&format!("read failed: {e}")),
                }
            }
            _ = sleep => shared.lock().conn.handle_timeout(Instant::now()),
        }
        if let Some(why) = dispatch(shared, upstream, metrics) {
            return why;
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
    }
}

/// Hands the engine's events out: new requests get a task, body bytes go to their upstream
/// request, resets cancel it. Returns why the connection closed, once it did.
fn dispatch(
    shared: &Arc<Shared>,
    upstream: &UpstreamClient,
    metrics: &Arc<Metrics>,
) -> Option<String> {
    let mut closed = None;
    let mut st = shared.lock();
    let st = &mut *st;
    while let Some(ev) = st.conn.poll_event() {
        match ev {
            Event::Request {
                id,
                method,
                path,
                fields,
                end_stream,
            } => {
                let (body_tx, body_rx) = if end_stream {
                    (None, None)
                } else {
                    let (t, r) = mpsc::unbounded_channel();
                    (Some(t), Some(r))
                };
                metrics.streams.inc();
                let req = Forward {
                    id,
                    method,
                    path,
                    fields,
                };
                let task = tokio::spawn(
                    forward(
                        req,
                        body_rx,
                        shared.clone(),
                        upstream.clone(),
                        metrics.clone(),
                    )
                    .instrument(tracing::debug_span!("stream", stream = id)),
                );
                st.streams.insert(
                    id,
                    Slot {
                        body: body_tx,
                        task: Some(task.abort_handle()),
                    },
                );
            }
            Event::Data {
                id,
                data,
                end_stream,
            } => {
                if let Some(slot) = st.streams.get_mut(&id) {
                    if !data.is_empty() {
                        if let Some(tx) = &slot.body {
                            // The consumer may have finished (an early answer): its credit
                            // no longer matters, the stream is ending.
                            let _ = tx.send(data);
                        }
                    }
                    if end_stream {
                        slot.body = None;
                    }
                }
            }
            Event::End { id, .. } => {
                if let Some(slot) = st.streams.get_mut(&id) {
                    slot.body = None;
                }
            }
            // The user went away (or the stream broke): cancel the upstream request. A sync
            // stream the hub reset restarts later with a fresh list.
            Event::Reset { id, .. } => {
                abort(st, id);
                st.syncs.stream_reset(id, shared, &shared.sync_env);
            }
            Event::SyncRequest(keys) => {
                info!(types = keys.len(), "the hub asks to sync");
                for id in st.syncs.set_wanted(keys, shared, &shared.sync_env) {
                    let _ = st.conn.send_end(id, Vec::new());
                }
            }
            Event::ProgressRequest { id, seq } => st.syncs.progress_request(id, seq),
            Event::Writable { .. } => shared.writable.notify_waiters(),
            Event::GoAway { code, message } => {
                info!(%code, "hub is going away: {message}");
                (shared.on_goaway)(code);
            }
            Event::Response { .. } | Event::Discovery(_) | Event::Sync { .. } => {}
            Event::Closed(reason) => {
                st.syncs.stop_all();
                closed = Some(reason.to_string())
            }
        }
    }
    // The writer has work (an answer, credit), or must see the close.
    if st.conn.has_transmit() || st.conn.is_closed() {
        shared.wake.notify_one();
    }
    closed
}

fn abort(st: &mut State, id: StreamId) {
    if let Some(slot) = st.streams.remove(&id) {
        if let Some(t) = slot.task {
            t.abort();
        }
    }
}

/// Sends body bytes on `id`, waiting while the stream's send buffer is full. `false`: the
/// stream is gone.
pub(crate) async fn send_data(shared: &Shared, id: StreamId, data: Bytes) -> bool {
    loop {
        let notified = shared.writable.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let mut st = shared.lock();
            if !st.streams.contains_key(&id) {
                return false;
            }
            if st.conn.is_writable(id) {
                let ok = st.conn.send_data(id, data, false).is_ok();
                drop(st);
                shared.wake.notify_one();
                return ok;
            }
        }
        notified.await;
    }
}

fn status_body(
    code: u16,
    reason: &'static str,
    message: String,
) -> (u16, Vec<(Bytes, Bytes)>, Bytes) {
    let s = kubehub_kapi::Status::new(code, reason, message);
    let body = Bytes::from(s.to_json());
    let fields = vec![
        (
            Bytes::from_static(b"Content-Type"),
            Bytes::from_static(b"application/json"),
        ),
        (
            Bytes::from_static(b"Content-Length"),
            Bytes::from(body.len().to_string()),
        ),
    ];
    (code, fields, body)
}

/// A request the hub forwarded.
struct Forward {
    id: StreamId,
    method: Bytes,
    path: Bytes,
    fields: Fields,
}

/// One forwarded request: upstream call, then the response streamed back.
async fn forward(
    req: Forward,
    body_rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    shared: Arc<Shared>,
    upstream: UpstreamClient,
    metrics: Arc<Metrics>,
) {
    let id = req.id;
    answer(req, body_rx, &shared, upstream).await;
    shared.lock().streams.remove(&id);
    metrics.streams.dec();
}

async fn answer(
    req: Forward,
    body_rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    shared: &Arc<Shared>,
    upstream: UpstreamClient,
) {
    let id = req.id;
    if crate::upgrade::protocol(&req.fields).is_some() {
        return crate::upgrade::answer(
            req.id,
            &req.method,
            &req.path,
            &req.fields,
            body_rx,
            shared,
            &upstream,
        )
        .await;
    }
    let body: UpBody = match body_rx {
        None => http_body_util::Empty::<Bytes>::new()
            .map_err(|e| match e {})
            .boxed(),
        Some(rx) => {
            // Credit for request body bytes goes back as the upstream takes them. The engine
            // queues the WINDOW_UPDATE itself: it cannot be lost to a full queue.
            let s2 = shared.clone();
            let stream = UnboundedReceiverStream::new(rx).map(move |b: Bytes| {
                s2.with(|c| c.release(id, b.len() as u32));
                Ok::<_, std::io::Error>(hyper::body::Frame::data(b))
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
    };
    let resp = match shared
        .plugins
        .send(&upstream, &req.method, &req.path, &req.fields, body)
        .await
    {
        Ok(r) => r,
        Err(e) => return unreachable(shared, id, &e),
    };
    respond(shared, id, resp).await;
}

/// Answers stream `id` with a 503 `Status`: the edge API server could not be reached.
pub(crate) fn unreachable(shared: &Shared, id: StreamId, e: &str) {
    warn!("edge API server unreachable: {e}");
    let (code, fields, body) = status_body(
        503,
        "ServiceUnavailable",
        format!("the edge API server is unreachable from the agent: {e}"),
    );
    let _ = shared.with(|c| c.send_response(id, code, fields, false).is_ok())
        && shared.with(|c| c.send_data(id, body, true).is_ok());
}

/// Streams the edge's answer back on stream `id`: RESPONSE, the body as DATA as the hub's
/// window allows, END with any trailers.
pub(crate) async fn respond(
    shared: &Arc<Shared>,
    id: StreamId,
    resp: http::Response<crate::upstream::DownBody>,
) {
    let status = resp.status().as_u16();
    let fields: Fields = resp
        .headers()
        .iter()
        .filter(|(n, _)| !is_hop_by_hop(n.as_str().as_bytes()))
        .map(|(n, v)| {
            (
                Bytes::copy_from_slice(n.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect();
    let mut body = resp.into_body();
    if shared
        .with(|c| c.send_response(id, status, fields, false))
        .is_err()
    {
        return;
    }
    let mut trailers = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => {
                    if !send_data(shared, id, data).await {
                        return;
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = t
                            .iter()
                            .map(|(n, v)| {
                                (
                                    Bytes::copy_from_slice(n.as_str().as_bytes()),
                                    Bytes::copy_from_slice(v.as_bytes()),
                                )
                            })
                            .collect();
                    }
                }
            },
            Err(e) => {
                debug!("upstream body failed: {e}");
                shared.with(|c| c.reset(id, ErrorCode::UPSTREAM));
                return;
            }
        }
    }
    let _ = if trailers.is_empty() {
        shared.with(|c| c.send_data(id, Bytes::new(), true))
    } else {
        shared.with(|c| c.send_end(id, trailers))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_address_is_the_source_of_the_connection() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hub = listener.local_addr().unwrap().to_string();
        let local: std::net::IpAddr = "127.0.0.7".parse().unwrap();
        let (dialed, accepted) = tokio::join!(connect_from(local, &hub), listener.accept());
        let dialed = dialed.unwrap();
        assert_eq!(dialed.local_addr().unwrap().ip(), local);
        assert_eq!(accepted.unwrap().1.ip(), local);
        // An address of the other family cannot reach an IPv4 hub: a clear error.
        let v6: std::net::IpAddr = "::1".parse().unwrap();
        let err = connect_from(v6, &hub).await.unwrap_err();
        assert!(err.to_string().contains("local_address"), "{err}");
    }
}
