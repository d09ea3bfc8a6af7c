//! The agent's side of a tunnel: dial, mutual TLS, HELLO, then serve the streams the hub opens
//! until the connection ends.
//!
//! Tasks: the reader (decodes frames and runs them through the [`Session`]), the writer (encodes
//! queued frames in batches), the keepalive, and one task per stream that forwards the request
//! to the edge API server and streams the answer back, waiting for flow-control credit before
//! each DATA frame. The session sits behind a `std::sync::Mutex` that is never held across an
//! await.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, StreamBody};
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::{
    Capabilities, Data, Decoder, EncodeBuf, End, ErrorCode, Frame, GoAway, Hello, Ping, Request,
    Reset, Response, Role, Session, SessionError, StreamId,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use crate::config::AgentConfig;
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

struct Slot {
    body: Option<mpsc::Sender<Bytes>>,
    task: Option<AbortHandle>,
}

struct State {
    session: Session,
    streams: HashMap<StreamId, Slot>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every WINDOW_UPDATE: stream tasks waiting for credit look again.
    credit: Notify,
    out: mpsc::Sender<Frame>,
    chunk: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

const WRITE_QUEUE: usize = 1024;
/// Request body chunks buffered per stream before the upstream takes them (the hub sends at
/// most one chunk at a time per stream).
const BODY_QUEUE: usize = 64;

/// The TLS client configuration for the hubs (TLS 1.3, the agent's client certificate).
pub fn client_tls(cfg: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, String> {
    let roots = kubehub_pki::load_roots(&cfg.tls.ca).map_err(|e| e.to_string())?;
    let certs = kubehub_pki::load_certs(&cfg.tls.cert).map_err(|e| e.to_string())?;
    let key = kubehub_pki::load_key(&cfg.tls.key).map_err(|e| e.to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let c = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(c))
}

/// Connects to `hub`, handshakes, and serves until the connection ends. `on_up` runs once the
/// handshake succeeded (to reset the backoff).
pub async fn run_once(
    hub: &str,
    cfg: &AgentConfig,
    tls: Arc<rustls::ClientConfig>,
    upstream: UpstreamClient,
    metrics: Arc<Metrics>,
    on_up: impl FnOnce(),
) -> Result<(), TunnelError> {
    let deadline = Duration::from_millis(cfg.limits.connect_timeout_ms);
    let connect = async {
        let tcp = TcpStream::connect(hub)
            .await
            .map_err(|e| TunnelError::Connect(hub.into(), e))?;
        tcp.set_nodelay(true)
            .map_err(|e| TunnelError::Connect(hub.into(), e))?;
        let name = rustls::pki_types::ServerName::try_from(cfg.tls.server_name.clone())
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
        capabilities: Capabilities(0),
        settings: cfg.limits.settings(),
        ..Offer::default()
    };
    let hello = Hello {
        min_version: offer.min_version,
        max_version: offer.max_version,
        capabilities: offer.capabilities,
        settings: offer.settings,
        agent_id: cfg.agent_id(),
        cluster_id: cfg.cluster_id.clone(),
        software: format!("kubehub-agent {}", env!("CARGO_PKG_VERSION")),
    };
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

    let (mut rd, mut wr) = tokio::io::split(tls);
    let (out_tx, mut out_rx) = mpsc::channel::<Frame>(WRITE_QUEUE);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            session: Session::new(Role::Agent, agreed.agent_settings, agreed.hub_settings),
            streams: HashMap::new(),
        }),
        credit: Notify::new(),
        out: out_tx,
        chunk: cfg
            .limits
            .data_chunk
            .min(agreed.hub_settings.max_frame_size as usize),
    });
    let writer = tokio::spawn(async move {
        let mut eb = EncodeBuf::new();
        while let Some(f) = out_rx.recv().await {
            eb.push(&f);
            while eb.remaining() < 256 * 1024 {
                match out_rx.try_recv() {
                    Ok(f) => eb.push(&f),
                    Err(_) => break,
                }
            }
            if write_all(&mut wr, &mut eb).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    });
    // However this function ends (returning, or dropped when the agent stops), the streams
    // and the writer end with it, so the socket closes and the hub sees the tunnel go.
    let _cleanup = Cleanup {
        shared: shared.clone(),
        writer: writer.abort_handle(),
        metrics: metrics.clone(),
    };
    let keepalive_every = Duration::from_millis(u64::from(ack.keepalive_ms).max(100));
    read_loop(
        &mut rd,
        &mut buf,
        &mut decoder,
        &shared,
        &upstream,
        keepalive_every,
        &metrics,
    )
    .await
}

struct Cleanup {
    shared: Arc<Shared>,
    writer: AbortHandle,
    metrics: Arc<Metrics>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        for (_, slot) in st.streams.drain() {
            if let Some(t) = slot.task {
                t.abort();
            }
        }
        self.writer.abort();
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

async fn read_loop<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    shared: &Arc<Shared>,
    upstream: &UpstreamClient,
    keepalive: Duration,
    metrics: &Arc<Metrics>,
) -> Result<(), TunnelError> {
    let mut last_rx = Instant::now();
    let mut ping = tokio::time::interval(keepalive);
    ping.tick().await;
    let mut n_ping = 0u64;
    loop {
        while let Some(frame) = decoder
            .decode(buf)
            .map_err(|e| TunnelError::Closed(format!("hub sent bad bytes: {e}")))?
        {
            last_rx = Instant::now();
            handle_frame(frame, shared, upstream, metrics).await?;
        }
        tokio::select! {
            r = rd.read_buf(buf) => match r {
                Ok(0) => return Err(TunnelError::Closed("hub closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(TunnelError::Closed(format!("read failed: {e}"))),
            },
            _ = ping.tick() => {
                if last_rx.elapsed() > keepalive * 3 {
                    return Err(TunnelError::Closed("hub silent for three keepalive intervals".into()));
                }
                n_ping += 1;
                let _ = shared.out.send(Frame::Ping(Ping { ack: false, opaque: n_ping })).await;
            }
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(16 * 1024);
        }
    }
}

async fn handle_frame(
    frame: Frame,
    shared: &Arc<Shared>,
    upstream: &UpstreamClient,
    metrics: &Arc<Metrics>,
) -> Result<(), TunnelError> {
    let id = frame.stream_id();
    let mut reply = Vec::new();
    let mut spawn_req = None;
    {
        let mut st = shared.lock();
        let st = &mut *st;
        match st.session.recv(&frame) {
            Err(SessionError::Connection { code, reason }) => {
                drop(std::mem::take(&mut reply));
                let g = Frame::GoAway(GoAway {
                    last_stream_id: 0,
                    code,
                    message: reason.into(),
                });
                let out = shared.out.clone();
                tokio::spawn(async move {
                    let _ = out.send(g).await;
                });
                return Err(TunnelError::Closed(format!(
                    "hub broke the protocol: {reason}"
                )));
            }
            Err(SessionError::Stream {
                stream,
                code,
                reason,
            }) => {
                debug!(stream, %code, "stream error: {reason}");
                reply.push(Frame::Reset(Reset {
                    stream_id: stream,
                    code,
                }));
                if let Some(slot) = st.streams.remove(&stream) {
                    if let Some(t) = slot.task {
                        t.abort();
                    }
                }
            }
            Ok(r) => {
                if let Some(wu) = r.window_update {
                    reply.push(Frame::WindowUpdate(wu));
                }
                if r.deliver {
                    match frame {
                        Frame::Request(req) => {
                            let (body_tx, body_rx) = if req.end_stream {
                                (None, None)
                            } else {
                                let (t, r) = mpsc::channel(BODY_QUEUE);
                                (Some(t), Some(r))
                            };
                            st.streams.insert(
                                id,
                                Slot {
                                    body: body_tx,
                                    task: None,
                                },
                            );
                            spawn_req = Some((req, body_rx));
                        }
                        Frame::Data(d) => {
                            let mut reset = false;
                            if let Some(slot) = st.streams.get_mut(&id) {
                                if !d.payload.is_empty() {
                                    if let Some(tx) = &slot.body {
                                        reset = tx.try_send(d.payload).is_err();
                                    }
                                }
                                if d.end_stream {
                                    slot.body = None;
                                }
                            }
                            if reset {
                                reply.push(Frame::Reset(Reset {
                                    stream_id: id,
                                    code: ErrorCode::ENHANCE_YOUR_CALM,
                                }));
                                if let Some(slot) = st.streams.remove(&id) {
                                    if let Some(t) = slot.task {
                                        t.abort();
                                    }
                                }
                            }
                        }
                        Frame::End(_) => {
                            if let Some(slot) = st.streams.get_mut(&id) {
                                slot.body = None;
                            }
                        }
                        Frame::Reset(_) => {
                            // The user went away: cancel the upstream request.
                            if let Some(slot) = st.streams.remove(&id) {
                                if let Some(t) = slot.task {
                                    t.abort();
                                }
                            }
                        }
                        Frame::WindowUpdate(_) => shared.credit.notify_waiters(),
                        Frame::Ping(p) if !p.ack => reply.push(Frame::Ping(Ping {
                            ack: true,
                            opaque: p.opaque,
                        })),
                        Frame::GoAway(g) => {
                            info!(code = %g.code, "hub is going away: {}", g.message)
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    if let Some((req, body_rx)) = spawn_req {
        metrics.streams.inc();
        let task = tokio::spawn(forward(
            req,
            body_rx,
            shared.clone(),
            upstream.clone(),
            metrics.clone(),
        ));
        let mut st = shared.lock();
        match st.streams.get_mut(&id) {
            Some(slot) => slot.task = Some(task.abort_handle()),
            None => task.abort(),
        }
    }
    for f in reply {
        if shared.out.send(f).await.is_err() {
            return Err(TunnelError::Closed("writer closed".into()));
        }
    }
    Ok(())
}

/// Sends `f` after the session accepted it.
async fn send(shared: &Shared, f: Frame) -> bool {
    let ok = shared.lock().session.send(&f).is_ok();
    ok && shared.out.send(f).await.is_ok()
}

/// Sends body bytes on `id`, waiting for flow-control credit.
async fn send_data(shared: &Shared, id: StreamId, mut data: Bytes) -> bool {
    while !data.is_empty() {
        let notified = shared.credit.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let frame = {
            let mut st = shared.lock();
            let cap = st.session.send_capacity(id) as usize;
            if cap == 0 {
                if !st.streams.contains_key(&id) {
                    return false;
                }
                None
            } else {
                let n = data.len().min(cap).min(shared.chunk);
                let f = Frame::Data(Data {
                    stream_id: id,
                    end_stream: false,
                    payload: data.split_to(n),
                });
                if st.session.send(&f).is_err() {
                    return false;
                }
                Some(f)
            }
        };
        match frame {
            Some(f) => {
                if shared.out.send(f).await.is_err() {
                    return false;
                }
            }
            None => notified.await,
        }
    }
    true
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

/// One forwarded request: upstream call, then the response streamed back.
async fn forward(
    req: Request,
    body_rx: Option<mpsc::Receiver<Bytes>>,
    shared: Arc<Shared>,
    upstream: UpstreamClient,
    metrics: Arc<Metrics>,
) {
    let id = req.stream_id;
    let body: UpBody = match body_rx {
        None => http_body_util::Empty::<Bytes>::new()
            .map_err(|e| match e {})
            .boxed(),
        Some(rx) => {
            // Credit for request body bytes goes back as the upstream takes them.
            let s2 = shared.clone();
            let stream = ReceiverStream::new(rx).map(move |b: Bytes| {
                let wu = s2.lock().session.release(id, b.len() as u32);
                if let Some(wu) = wu {
                    if s2.out.try_send(Frame::WindowUpdate(wu)).is_err() {
                        warn!(stream = id, "writer queue full: credit update dropped");
                    }
                }
                Ok::<_, std::io::Error>(hyper::body::Frame::data(b))
            });
            BodyExt::boxed(StreamBody::new(stream))
        }
    };
    let done = |shared: &Shared| {
        let mut st = shared.lock();
        st.streams.remove(&id);
    };
    let resp = upstream
        .send(&req.method, &req.path, &req.fields, body)
        .await;
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            warn!(stream = id, "edge API server unreachable: {e}");
            let (code, fields, body) = status_body(
                503,
                "ServiceUnavailable",
                format!("the edge API server is unreachable from the agent: {e}"),
            );
            let _ = send(
                &shared,
                Frame::Response(Response {
                    stream_id: id,
                    end_stream: false,
                    status: code,
                    fields,
                }),
            )
            .await
                && send_data(&shared, id, body).await
                && send(
                    &shared,
                    Frame::End(End {
                        stream_id: id,
                        trailers: vec![],
                    }),
                )
                .await;
            done(&shared);
            metrics.streams.dec();
            return;
        }
    };
    let status = resp.status().as_u16();
    let fields: Vec<(Bytes, Bytes)> = resp
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
    if !send(
        &shared,
        Frame::Response(Response {
            stream_id: id,
            end_stream: false,
            status,
            fields,
        }),
    )
    .await
    {
        done(&shared);
        metrics.streams.dec();
        return;
    }
    let mut trailers = Vec::new();
    let mut failed = false;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => match f.into_data() {
                Ok(data) => {
                    if !send_data(&shared, id, data).await {
                        failed = true;
                        break;
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
                debug!(stream = id, "upstream body failed: {e}");
                let _ = send(
                    &shared,
                    Frame::Reset(Reset {
                        stream_id: id,
                        code: ErrorCode::UPSTREAM,
                    }),
                )
                .await;
                failed = true;
                break;
            }
        }
    }
    if !failed {
        let _ = send(
            &shared,
            Frame::End(End {
                stream_id: id,
                trailers,
            }),
        )
        .await;
    }
    done(&shared);
    metrics.streams.dec();
}
