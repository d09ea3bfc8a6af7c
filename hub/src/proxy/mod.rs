//! `proxy`: one user connection, request after request (keep-alive). A request's path is the
//! module list, in order:
//!
//! `authenticate → resolve → authorize → admit → route → cache | backend → respond`
//!
//! * [`authenticate`]: who is asking (a KubeHub bearer token, looked up in the access index);
//!   first, because a token bound to one cluster may leave the cluster out of the path.
//! * [`resolve`]: cluster and Kubernetes path from `/clusters/{id}/…` (or the token's only
//!   cluster); what the request asks (kube-apiserver's request info: verb, group, resource,
//!   namespace, name).
//! * [`authorize`]: may they (the access index: grants of the user's tenant; 404 for clusters
//!   not theirs, else 403 worded as kube-apiserver's). Cached reads and watches are decided
//!   here like everything else, before routing.
//! * [`admit`]: may it run now (fair sharing and rate limits per tenant and user, queues with
//!   shuffle sharding; 429 with `Retry-After` when over a limit, 503 above the hub's memory
//!   ceiling); exempt: operators, and requests another hub relayed (admitted there). Just
//!   before a request is opened on a tunnel, the cluster's forward limits.
//! * [`review`]: `SelfSubjectAccessReview`s and `SelfSubjectRulesReview`s (`kubectl auth
//!   can-i`) answered with KubeHub's decisions, or forwarded when KubeHub allows.
//! * [`route`]: which backend answers (the cluster's cache for reads it can serve, else its
//!   tunnel).
//! * [`backend`]: the request in flight at that backend, its answer as a stream of events.
//! * [`respond`]: the answer written as HTTP/1.1, credit returned as the client takes it.
//! * [`upgrade`]: instead of `respond` for a request that switches protocols (exec, attach,
//!   cp, port-forward): the edge's 101, then bytes both ways on the tunnel stream.
//! * [`error`]: every way a request can fail, and the one place that decides the answer
//!   (including "never 503 once the agent may have the request").
//! * [`observe`]: the end of every request's path: one record per request (who, what, which
//!   cluster, code, served-by, bytes, client) into the metrics, `/traffic` and the audit log;
//!   the `Audit-ID` every answer carries.
//!
//! A reader task owns the TLS reader for the whole connection and hands plaintext over a
//! bounded channel, so the handler can wait for the agent and for the client at the same time:
//! a client that hangs up during a watch cancels the stream at once.

pub mod admit;
pub mod authenticate;
pub mod authorize;
pub mod backend;
pub mod error;
pub mod observe;
pub mod peer;
pub mod resolve;
pub mod respond;
pub mod review;
pub mod route;
pub mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kubehub_kapi::Status;
use kubehub_wire::Fields;
use monoio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, warn, Instrument};

use kubehub_access::Identity;

use self::backend::Exchange;
use self::error::{ProxyError, Reached};
use self::observe::{Record, ServedBy};
use self::respond::Responder;
use crate::access::Access;
use crate::cache;
use crate::config::Limits;
use crate::http::{self, BodyDecoder, BodyPart, HeadError, RequestHead};
use crate::metrics::{CodeLabel, Metrics};
use crate::registry::{self, Registry, StreamEvent};
use crate::tls::{self, TlsWriter};

/// What every user connection on a core shares.
#[derive(Debug)]
pub struct ProxyCtx {
    /// Clusters to tunnels.
    pub registry: Arc<Registry>,
    /// Who is who, and who may do what.
    pub access: Arc<Access>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// This core's long-running requests, for bans and revocations to end them.
    pub streams: Rc<crate::bans::Streams>,
    /// Limits.
    pub limits: Limits,
    /// Add impersonation headers.
    pub impersonate: bool,
    /// TLS for users.
    pub tls: Arc<rustls::ServerConfig>,
    /// Cached clusters.
    pub caches: Arc<crate::cache::Caches>,
    /// The other hubs (for clusters whose tunnels are held elsewhere).
    pub peers: Arc<crate::peers::Peers>,
    /// The core's tunnel context (peer links are dialled on the requesting core).
    pub tunnels: Rc<crate::tunnel::TunnelCtx>,
    /// This hub's environment (hub.toml `environment`).
    pub environment: String,
    /// Fair sharing, rate limits and the memory ceiling (every core's, shared).
    pub admission: Arc<crate::admission::Admission>,
    /// Where every request's observation goes (metrics, traffic, audit).
    pub observer: observe::Observer,
}

impl ProxyCtx {
    /// The hub is draining for shutdown: answers end their connections (`Connection:
    /// close`), so clients reconnect, through their load balancer, to a hub that stays.
    pub fn draining(&self) -> bool {
        *self.tunnels.drain.borrow()
    }
}

/// Where a connection's answers go: a user's TLS connection, or a stream of a peer link
/// (another hub forwarded the request: [`peer`]).
#[derive(Debug)]
pub enum Writer {
    /// A user's connection.
    Tls(TlsWriter),
    /// A peer link's stream.
    Stream(peer::StreamWriter),
}

impl Writer {
    /// Writes `chunks` in order (one vectored TLS write of whole records on a user
    /// connection).
    pub async fn write_all(&mut self, chunks: &[&[u8]]) -> std::io::Result<()> {
        match self {
            Writer::Tls(w) => w.write_all(chunks).await,
            Writer::Stream(w) => w.write_all(chunks).await,
        }
    }

    /// Ends the connection cleanly (TLS close_notify; a peer stream's END).
    pub async fn close(&mut self) -> std::io::Result<()> {
        match self {
            Writer::Tls(w) => w.close().await,
            Writer::Stream(w) => w.close().await,
        }
    }

    /// Cuts the connection (no close_notify; a peer stream's RESET).
    pub async fn abort(&mut self) {
        match self {
            Writer::Tls(w) => w.abort().await,
            Writer::Stream(w) => w.abort().await,
        }
    }
}

/// One user connection's state between requests: bytes read but not used yet (the next
/// request's head, a body), the reader task's channel, and the writing half.
#[derive(Debug)]
pub struct Conn {
    /// Plaintext read from the client and not consumed yet.
    pub buf: BytesMut,
    /// More unconsumed bytes than this (a client that keeps sending while a watch streams
    /// to it) ends the connection.
    max_buffered: usize,
    inbound: mpsc::Receiver<BytesMut>,
    /// The writing half.
    pub wr: Writer,
    /// The request came over a peer link from this hub: it is served here or not at all
    /// (never forwarded to a third hub).
    pub via_peer: Option<String>,
    /// The client's address (a user connection's peer; for a peer stream what the relaying
    /// hub said in [`crate::bans::CLIENT_FIELD`]).
    pub source: Option<std::net::IpAddr>,
    /// Set while a long-running request is entered in [`crate::bans::Streams`]: once it
    /// fires, [`Conn::read_more`] says the client is done, which ends the request the way
    /// a client leaving does (a watch with its terminating chunk).
    pub stop: Option<Rc<crate::bans::Stop>>,
}

impl Conn {
    /// Waits for more bytes from the client and appends them to `buf`; `false` once the
    /// client closed its side (or the connection failed), or has sent more than the
    /// connection holds unconsumed.
    pub async fn read_more(&mut self) -> bool {
        let chunk = match &self.stop {
            Some(stop) if stop.is_set() => return false,
            Some(stop) => monoio::select! {
                c = self.inbound.recv() => c,
                _ = stop.wait() => return false,
            },
            None => self.inbound.recv().await,
        };
        match chunk {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk);
                self.buf.len() <= self.max_buffered
            }
            None => false,
        }
    }

    /// Whether the running request was told to end (a ban, a revocation).
    pub fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| s.is_set())
    }
}

/// Serves one user connection until it closes.
pub async fn serve_user(tcp: TcpStream, peer: SocketAddr, ctx: Rc<ProxyCtx>) {
    let _ = tcp.set_nodelay(true);
    let tls_conn = match rustls::ServerConnection::new(ctx.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, "TLS setup: {e}");
            return;
        }
    };
    let stream = match tls::handshake(tcp, tls_conn.into(), ctx.limits.handshake_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, "user TLS handshake failed: {e}");
            return;
        }
    };
    let (mut rd, wr) = stream.into_split();
    let (in_tx, inbound) = mpsc::channel::<BytesMut>(4);
    monoio::spawn(async move {
        loop {
            let mut chunk = BytesMut::with_capacity(4096);
            // Ends with the connection: when the handler is done, the socket is released even
            // if the client keeps its side open.
            let read = monoio::select! {
                r = rd.read(&mut chunk) => r,
                _ = in_tx.closed() => return,
            };
            match read {
                Ok(0) => return,
                Err(e) => {
                    debug!(%peer, "user connection read failed: {e}");
                    return;
                }
                Ok(_) => {
                    if in_tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut conn = Conn {
        buf: BytesMut::new(),
        // A whole head (read_head answers 431 beyond it) or a body chunk, twice over.
        max_buffered: 2 * ctx.limits.max_header_bytes.max(ctx.limits.data_chunk),
        inbound,
        wr: Writer::Tls(wr),
        via_peer: None,
        source: Some(peer.ip()),
        stop: None,
    };
    loop {
        let head = match read_head(&ctx, &mut conn).await {
            Ok(Some(head)) => head,
            Ok(None) => break,
            Err(status) => {
                debug!(%peer, code = status.code, "bad request head: {}", status.message);
                ctx.metrics
                    .requests
                    .get_or_create(&CodeLabel { code: status.code })
                    .inc();
                let _ = conn
                    .wr
                    .write_all(&[&http::status_response(
                        &status,
                        true,
                        false,
                        kubehub_audit::new_audit_id().as_bytes(),
                    )])
                    .await;
                break;
            }
        };
        let span = tracing::debug_span!(
            "request",
            %peer,
            method = %String::from_utf8_lossy(&head.method),
            cluster = tracing::field::Empty,
            user = tracing::field::Empty,
            stream = tracing::field::Empty,
        );
        if !handle(&ctx, head, &mut conn, peer.ip())
            .instrument(span)
            .await
        {
            break;
        }
    }
    let _ = conn.wr.close().await;
}

/// The next request head. `Ok(None)`: the client closed, or stayed idle past the idle
/// timeout, between requests. `Err`: the answer for a head that cannot be served (after which
/// the connection closes): malformed or ambiguous (400), too large (431), an unsupported
/// transfer coding (501), or a head that trickled in slower than `request_head_timeout_ms`
/// (408: a connection may not hold its slot without ever sending a whole request).
async fn read_head(ctx: &ProxyCtx, conn: &mut Conn) -> Result<Option<RequestHead>, Status> {
    let idle = Duration::from_millis(ctx.limits.idle_timeout_ms);
    let head_timeout = Duration::from_millis(ctx.limits.request_head_timeout_ms);
    // The head's clock starts with its first byte (which may already be buffered).
    let mut head_deadline = (!conn.buf.is_empty()).then(|| Instant::now() + head_timeout);
    loop {
        match http::parse_head(&mut conn.buf, ctx.limits.max_header_bytes) {
            Ok(Some(h)) => return Ok(Some(h)),
            Ok(None) => {}
            Err(e) => {
                return Err(match &e {
                    HeadError::TooLarge => {
                        Status::new(431, "RequestHeaderFieldsTooLarge", e.to_string())
                    }
                    HeadError::UnsupportedEncoding => {
                        Status::new(501, "NotImplemented", e.to_string())
                    }
                    HeadError::Malformed(_) => Status::bad_request(e.to_string()),
                })
            }
        }
        let wait = match head_deadline {
            Some(d) => d.saturating_duration_since(Instant::now()),
            None => idle,
        };
        match monoio::time::timeout(wait, conn.read_more()).await {
            Ok(true) => {
                head_deadline.get_or_insert_with(|| Instant::now() + head_timeout);
            }
            Ok(false) => return Ok(None),
            Err(_) if head_deadline.is_some() => {
                return Err(Status::new(
                    408,
                    "Timeout",
                    format!("the request head did not arrive within {head_timeout:?}"),
                ))
            }
            Err(_) => return Ok(None),
        }
    }
}

/// The fields forwarded to the agent: end-to-end fields minus credentials and any
/// impersonation the user tried, plus the hub's impersonation of the authenticated user (name
/// and effective groups, `kubehub:tenant:<tenant>` among them).
fn forward_fields(
    head: &RequestHead,
    user: &Identity,
    impersonate: bool,
    audit_id: &str,
) -> Fields {
    // Fields the client named in `Connection` are for this hop only (RFC 9110 §7.6.1).
    let connection_listed = |name: &[u8]| {
        head.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| v.split(|&b| b == b','))
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(name))
    };
    let mut out: Fields = head
        .fields
        .iter()
        .filter(|(n, _)| {
            !(http::is_hop_by_hop(n)
                || connection_listed(n)
                || n.eq_ignore_ascii_case(b"authorization")
                || n.eq_ignore_ascii_case(b"host")
                || n.eq_ignore_ascii_case(peer::SOURCE_FIELD.as_bytes())
                || n.len() >= 12 && n[..12].eq_ignore_ascii_case(b"impersonate-"))
        })
        .cloned()
        .collect();
    // The edge's audit log names the same request as the hub's.
    if head.header("audit-id").is_none() && !audit_id.is_empty() {
        out.push((
            Bytes::from_static(b"Audit-ID"),
            Bytes::copy_from_slice(audit_id.as_bytes()),
        ));
    }
    if impersonate {
        out.push((
            Bytes::from_static(b"Impersonate-User"),
            Bytes::from(user.user.clone()),
        ));
        for g in &user.groups {
            out.push((
                Bytes::from_static(b"Impersonate-Group"),
                Bytes::from(g.clone()),
            ));
        }
    }
    out
}

/// Replaces the body's framing fields: the hub forwards a body it re-encoded.
fn set_body_fields(fields: &mut Fields, content_type: &'static str, len: usize) {
    fields.retain(|(n, _)| {
        !(n.eq_ignore_ascii_case(b"content-type") || n.eq_ignore_ascii_case(b"content-length"))
    });
    fields.push((
        Bytes::from_static(b"Content-Type"),
        Bytes::from_static(content_type.as_bytes()),
    ));
    fields.push((
        Bytes::from_static(b"Content-Length"),
        Bytes::from(len.to_string()),
    ));
}

/// Handles one request through the phases, then observes it; returns whether the connection
/// stays open.
async fn handle(ctx: &ProxyCtx, head: RequestHead, conn: &mut Conn, source: IpAddr) -> bool {
    let rec = Record::new(&head, source, conn.via_peer.as_deref());
    let keep = phases(ctx, head, conn, &rec).await;
    rec.finish(&ctx.observer);
    // A request a ban or a revocation stopped ends its connection.
    let stopped = conn.stopped();
    conn.stop = None;
    keep && !stopped
}

/// The field's value as received (a slice of the read buffer).
fn field(head: &RequestHead, name: &[u8]) -> Option<Bytes> {
    head.fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

/// Whether a request runs until someone ends it: a watch, `logs -f`, an upgraded session.
fn long_running(
    info: &kubehub_kapi::request_info::RequestInfo<'_>,
    path: &str,
    upgrade: bool,
) -> bool {
    upgrade
        || matches!(info.verb, kubehub_kapi::request_info::Verb::Watch)
        || (info.subresource == "log"
            && path.split_once('?').is_some_and(|(_, q)| {
                q.split('&')
                    .any(|p| matches!(p, "follow=true" | "follow=1" | "follow=True"))
            }))
}

/// The reason a refusal before forwarding is counted under (`kubehub_hub_rejected_total`).
fn rejection(e: &ProxyError) -> Option<&'static str> {
    match e {
        ProxyError::Unauthorized(_) => Some("unauthenticated"),
        ProxyError::Forbidden(_) => Some("forbidden"),
        ProxyError::Banned(_) => Some("ban"),
        ProxyError::NoCluster(_) | ProxyError::UnknownCluster(_) => Some("not_found"),
        ProxyError::Admission(d) => Some(d.reason()),
        _ => None,
    }
}

/// The request's phases (`authenticate → … → respond`).
async fn phases(ctx: &ProxyCtx, head: RequestHead, conn: &mut Conn, rec: &Record) -> bool {
    let started = Instant::now();
    if conn.via_peer.is_some() {
        // The relaying hub names the client (its own connection is a hub's).
        conn.source = head
            .header(crate::bans::CLIENT_FIELD)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
    }
    let source = conn.source;
    let has_body = head.body != http::BodyKind::None;
    // Until the body is read to its end, bytes of it are still on the connection: it cannot
    // carry another request.
    let draining = ctx.draining();
    let mut out = Responder::new(&ctx.observer, rec, &head, !has_body && !draining);
    // authenticate → resolve → authorize → route: nothing has left the hub yet.
    let prepared = (|| {
        let span = tracing::Span::current();
        let index = &ctx.access.index;
        let user_agent = head.header("user-agent").unwrap_or_default();
        crate::bans::check_client(index, &ctx.metrics, user_agent, source)?;
        let identity = authenticate::authenticate(index, &ctx.metrics, &head)?;
        span.record("user", identity.user.as_str());
        crate::bans::check_identity(index, &ctx.metrics, &identity)?;
        let target = resolve::resolve(&head, &identity)?;
        span.record("cluster", target.cluster.as_str());
        let info = target.info();
        rec.identify(&ctx.observer, &identity, &target, info.as_ref().ok());
        let info = info?;
        authorize::authorize(index, &ctx.metrics, &identity, &target.cluster, &info)?;
        if info.verb == kubehub_kapi::request_info::Verb::Watch {
            rec.watch_opened(&ctx.observer, &identity.tenant);
        }
        authorize::environment(index, &ctx.environment, &target.cluster)?;
        crate::bans::check_cluster(index, &ctx.metrics, &target.cluster)?;
        let upgrade = http::upgrade_of(&head).is_some();
        // Entered in the bans table for its lifetime (watches, `logs -f`, sessions).
        let long = long_running(&info, &target.path, upgrade);
        // What it costs the admit phase, and whether its seat goes back once it streams.
        let weight = admit::weight(&ctx.limits.fairness.weights, &info, upgrade);
        let review = review::Review::of(&info);
        let cached = route::cached(&ctx.caches, &target, &info, &head);
        let backend = route::route(&ctx.registry, &target.cluster, &info);
        Ok::<_, ProxyError>((target, identity, weight, review, cached, backend, long))
    })();
    let (target, identity, (weight, streams), review, cached, backend, long) = match prepared {
        Ok(p) => p,
        Err(e) => {
            if let Some(reason) = rejection(&e) {
                rec.reject(reason);
            }
            return out.error(conn, &e, Reached::Hub).await;
        }
    };
    // admit: the seats are held until the answer is complete (a long-running request's
    // until it is handed to its backend).
    let mut seat = match admit::admit(ctx, &identity, weight, conn.via_peer.is_some()).await {
        Ok(s) => s,
        Err(e) => {
            if let Some(reason) = rejection(&e) {
                rec.reject(reason);
            }
            return out.error(conn, &e, Reached::Hub).await;
        }
    };
    // A cluster whose tunnel another hub holds: the request goes there whole.
    if conn.via_peer.is_none() {
        if let Some(holders) = route::peer(&ctx.registry, &ctx.peers, &target.cluster) {
            if streams {
                // Relayed whole: a watch's or a session's seat is not held for its life.
                drop(seat.take());
            }
            rec.served_by.set(ServedBy::Peer);
            return peer::relay(ctx, &head, conn, out, &target.cluster, holders).await;
        }
    }
    // A long-running request is entered for its lifetime, so that a ban or a revocation
    // arriving meanwhile ends it (`bans`). A relayed one is entered at the holder.
    let _entered = long.then(|| {
        let (entered, stop) = ctx.streams.enter(
            crate::bans::Party {
                authorization: field(&head, b"authorization"),
                identity: identity.clone(),
                cluster: target.cluster.clone(),
                user_agent: field(&head, b"user-agent").unwrap_or_default(),
                source,
            },
            &ctx.metrics,
        );
        conn.stop = Some(stop);
        entered
    });
    // The fields the edge gets, made only for a request that goes there.
    let edge_fields = || forward_fields(&head, &identity, ctx.impersonate, &rec.audit_id);
    if let Some(protocol) = http::upgrade_of(&head) {
        drop(seat);
        if backend.is_ok() {
            if let Err(e) = admit::forward(ctx, &identity, &target.cluster, weight, true) {
                if let Some(reason) = rejection(&e) {
                    rec.reject(reason);
                }
                return out.error(conn, &e, Reached::Hub).await;
            }
        }
        return upgraded(
            ctx,
            &head,
            conn,
            out,
            (target, identity.clone(), backend),
            edge_fields(),
            protocol,
        )
        .await;
    }
    // review: KubeHub's decision first; the edge's only if KubeHub allows.
    let mut fields = None;
    let mut body = if has_body {
        Upload::Stream
    } else {
        Upload::None
    };
    if let Some(kind) = review {
        let read = read_body(ctx, &head, conn, review::MAX_BODY).await;
        if let Ok(bytes) = &read {
            rec.body_in(bytes, max_body(ctx));
        }
        let verdict = read.and_then(|bytes| {
            let content_type = head.header("content-type");
            review::decide(
                &ctx.access.index,
                &identity,
                &target.cluster,
                kind,
                content_type,
                bytes,
            )
        });
        match verdict {
            Err(e) => return out.error(conn, &e, Reached::Hub).await,
            Ok(v) => {
                // The body was read whole: the connection can carry the next request.
                out = Responder::new(&ctx.observer, rec, &head, !draining);
                match v {
                    review::Verdict::Answer(json) => {
                        let fields: Fields = vec![
                            (
                                Bytes::from_static(b"Content-Type"),
                                Bytes::from_static(b"application/json"),
                            ),
                            (
                                Bytes::from_static(b"Content-Length"),
                                Bytes::from(json.len().to_string()),
                            ),
                        ];
                        return out.whole(conn, 201, &fields, &[json]).await;
                    }
                    review::Verdict::Forward { body: bytes, json } => {
                        let mut f = edge_fields();
                        if json {
                            set_body_fields(&mut f, "application/json", bytes.len());
                        }
                        fields = Some(f);
                        body = Upload::Buffered(bytes);
                    }
                }
            }
        }
    }
    // cache: reads of synced types are answered here.
    let written = match cached {
        route::Cached::Read(cc, slot, plan) => {
            if streams {
                drop(seat.take());
            }
            rec.served_by.set(ServedBy::Cache);
            match cache::serve::serve(ctx, conn, &mut out, &target.cluster, &cc, slot, *plan).await
            {
                cache::serve::Served::Done(keep) => return keep,
                cache::serve::Served::Forward(_) => None,
            }
        }
        route::Cached::Write(slot) => Some(slot),
        route::Cached::No => None,
    };
    let backend = match backend {
        Ok(b) => b,
        Err(e) => return out.error(conn, &e, Reached::Hub).await,
    };
    // Read-your-writes: reads of a written type confirm currency from now on, and only
    // confirmations requested after the edge answered (marked again at the response head)
    // count for them.
    if let Some(slot) = &written {
        slot.freshness.wrote(Instant::now());
    }
    rec.served_by.set(ServedBy::Forward);
    // backend: open the request there.
    let forwarded = registry::RequestHead {
        method: head.method.clone(),
        path: Bytes::from(target.path),
        fields: fields.unwrap_or_else(edge_fields),
    };
    let cluster = target.cluster;
    // The cluster's forward limits (the edge API server's protection).
    let _in_flight = match admit::forward(ctx, &identity, &cluster, weight, streams) {
        Ok(slot) => slot,
        Err(e) => {
            if let Some(reason) = rejection(&e) {
                rec.reject(reason);
            }
            return out.error(conn, &e, Reached::Hub).await;
        }
    };
    let mut ex = match backend.open(&cluster, forwarded, !has_body, false).await {
        Ok(ex) => ex,
        Err(e) => return out.error(conn, &e, Reached::Hub).await,
    };
    if streams {
        // A watch streams from here on: its start is paid for.
        drop(seat.take());
    }
    tracing::Span::current().record("stream", ex.stream_id());
    // From here on the agent may have the request: errors are never "retry" (see `error`).
    let uploaded = match body {
        Upload::None => Ok(true),
        Upload::Stream => upload(ctx, &head, conn, &mut ex, rec).await,
        Upload::Buffered(bytes) => Ok(upload_buffered(ctx, &mut ex, bytes).await),
    };
    match uploaded {
        Ok(true) if has_body => out = Responder::new(&ctx.observer, rec, &head, !draining),
        Ok(_) => {}
        Err(e) => {
            ex.cancel().await;
            out.error(conn, &e, Reached::MaybeAgent).await;
            return false;
        }
    }
    let deadline = Duration::from_millis(ctx.limits.response_timeout_ms);
    let written = written.as_ref().map(|s| &s.freshness);
    let result = respond::relay(
        conn, &mut out, &mut ex, &cluster, started, deadline, written,
    )
    .await;
    match result {
        Ok(keep) => keep,
        Err(e) => out.error(conn, &e, Reached::MaybeAgent).await,
    }
}

/// A request that asks to switch protocols: forwarded on a duplex stream; on the edge's 101
/// the connection becomes the session ([`upgrade::splice`]), any other answer is relayed as
/// it is. Never served from the cache, never reused after a 101.
async fn upgraded(
    ctx: &ProxyCtx,
    head: &RequestHead,
    conn: &mut Conn,
    mut out: Responder<'_>,
    (target, identity, backend): (
        resolve::Target,
        Arc<Identity>,
        Result<backend::Backend, ProxyError>,
    ),
    mut fields: Fields,
    protocol: &[u8],
) -> bool {
    let started = Instant::now();
    if head.body != http::BodyKind::None && head.body != http::BodyKind::Length(0) {
        let e =
            ProxyError::BadBody("a request that asks to switch protocols carries no body".into());
        return out.error(conn, &e, Reached::Hub).await;
    }
    let backend = match backend {
        Ok(b) => b,
        Err(e) => return out.error(conn, &e, Reached::Hub).await,
    };
    let session = match target.info() {
        Ok(info) => {
            let query = target.path.split_once('?').map_or("", |(_, q)| q);
            let offered = head
                .header("sec-websocket-protocol")
                .or_else(|| head.header("x-stream-protocol-version"));
            upgrade::Session::new(&identity, &target.cluster, &info, query, protocol, offered)
        }
        Err(e) => return out.error(conn, &e, Reached::Hub).await,
    };
    upgrade::forward_fields(&mut fields, protocol);
    out.rec.served_by.set(ServedBy::Forward);
    let forwarded = registry::RequestHead {
        method: head.method.clone(),
        path: Bytes::from(target.path),
        fields,
    };
    let cluster = target.cluster;
    let mut ex = match backend.open(&cluster, forwarded, false, true).await {
        Ok(ex) => ex,
        Err(e) => return out.error(conn, &e, Reached::Hub).await,
    };
    tracing::Span::current().record("stream", ex.stream_id());
    let deadline = Duration::from_millis(ctx.limits.response_timeout_ms);
    let first = monoio::select! {
        ev = ex.next() => ev,
        _ = monoio::time::sleep(deadline) => {
            ex.cancel().await;
            let e = ProxyError::Timeout { cluster: cluster.clone(), after: deadline };
            return out.error(conn, &e, Reached::MaybeAgent).await;
        }
    };
    match first {
        Some(StreamEvent::Head {
            status: 101,
            fields,
        }) => {
            ctx.metrics.latency.observe(started.elapsed().as_secs_f64());
            ctx.metrics
                .requests
                .get_or_create(&CodeLabel { code: 101 })
                .inc();
            // The session's ResponseStarted event, then, when it ends, its ResponseComplete
            // with how it went.
            out.rec.head_written(&ctx.observer, 101);
            let idle = Duration::from_millis(ctx.limits.upgrade_idle_timeout_ms);
            let ended = upgrade::splice(conn, ex, &fields, &session, &ctx.metrics, idle).await;
            ended.annotate(out.rec);
            false
        }
        Some(StreamEvent::Head { status, fields }) => {
            // Refused (a 400 for a missing container, a 403 from the edge's RBAC, an
            // upgrade the edge does not speak): the client reads it and may fall back.
            session.log_refused(status);
            ctx.metrics.latency.observe(started.elapsed().as_secs_f64());
            let keep = out.start(conn, status, &fields).await
                && respond::relay(conn, &mut out, &mut ex, &cluster, started, deadline, None)
                    .await
                    .unwrap_or(false);
            // The hub's half is still open: close the stream.
            ex.cancel().await;
            keep
        }
        Some(StreamEvent::Reset(code)) => {
            let e = ProxyError::AgentReset { cluster, code };
            out.error(conn, &e, Reached::MaybeAgent).await
        }
        _ => {
            let e = ProxyError::Offline {
                cluster,
                why: "its tunnel closed",
            };
            out.error(conn, &e, Reached::MaybeAgent).await
        }
    }
}

/// The largest body the audit log records.
fn max_body(ctx: &ProxyCtx) -> usize {
    ctx.observer.audit.as_ref().map_or(0, |a| a.max_body)
}

/// Where a forwarded request's body comes from.
#[derive(Debug)]
enum Upload {
    /// It has none.
    None,
    /// From the connection, as it arrives.
    Stream,
    /// Already read (a review): these bytes.
    Buffered(Bytes),
}

/// Reads a whole request body the hub answers from itself (at most `max` bytes: beyond,
/// 413 and the connection closes).
async fn read_body(
    ctx: &ProxyCtx,
    head: &RequestHead,
    conn: &mut Conn,
    max: usize,
) -> Result<Bytes, ProxyError> {
    if let http::BodyKind::Length(n) = head.body {
        if n > max as u64 {
            return Err(ProxyError::TooLarge(max));
        }
    }
    let mut dec = BodyDecoder::new(head.body);
    let mut out = BytesMut::new();
    loop {
        match dec.decode(&mut conn.buf, ctx.limits.data_chunk) {
            Ok(BodyPart::Data(data)) => {
                if out.len() + data.len() > max {
                    return Err(ProxyError::TooLarge(max));
                }
                out.extend_from_slice(&data);
            }
            Ok(BodyPart::End) => return Ok(out.freeze()),
            Ok(BodyPart::More) => {
                let idle = Duration::from_millis(ctx.limits.idle_timeout_ms);
                match monoio::time::timeout(idle, conn.read_more()).await {
                    Ok(true) => continue,
                    Ok(false) => return Err(ProxyError::ClientGone),
                    Err(_) => return Err(ProxyError::BodyTimeout(idle)),
                }
            }
            Err(e) => return Err(ProxyError::BadBody(e.to_string())),
        }
    }
}

/// Sends a body already read to the backend, one chunk in flight; `false` if the stream
/// ended first.
async fn upload_buffered(ctx: &ProxyCtx, ex: &mut Exchange, mut body: Bytes) -> bool {
    loop {
        let chunk = body.split_to(body.len().min(ctx.limits.data_chunk));
        let end = body.is_empty();
        if !ex.send_body(chunk, end).await {
            return false;
        }
        if end {
            return true;
        }
    }
}

/// Sends the request body to the backend, one chunk in flight. `Ok(true)`: all of it went;
/// `Ok(false)`: the stream ended first. `Err`: the body was malformed, the client left, or it
/// sent nothing for the idle timeout.
async fn upload(
    ctx: &ProxyCtx,
    head: &RequestHead,
    conn: &mut Conn,
    ex: &mut Exchange,
    rec: &Record,
) -> Result<bool, ProxyError> {
    let mut dec = BodyDecoder::new(head.body);
    loop {
        let (data, end) = match dec.decode(&mut conn.buf, ctx.limits.data_chunk) {
            Ok(BodyPart::Data(data)) => (data, false),
            Ok(BodyPart::End) => (Bytes::new(), true),
            Ok(BodyPart::More) => {
                // A client that stops sending mid-body gets the idle timeout, as between
                // requests, not forever.
                let idle = Duration::from_millis(ctx.limits.idle_timeout_ms);
                match monoio::time::timeout(idle, conn.read_more()).await {
                    Ok(true) => continue,
                    Ok(false) => return Err(ProxyError::ClientGone),
                    Err(_) => return Err(ProxyError::BodyTimeout(idle)),
                }
            }
            Err(e) => return Err(ProxyError::BadBody(e.to_string())),
        };
        rec.body_in(&data, max_body(ctx));
        if !ex.send_body(data, end).await {
            return Ok(false);
        }
        if end {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_fields_carry_the_authenticated_user_only() {
        let mut buf = BytesMut::from(
            &b"GET /clusters/a/api HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer secret\r\nImpersonate-User: root\r\nimpersonate-group: system:masters\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: application/json\r\n\r\n"[..],
        );
        let head = http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let user = Identity {
            token_id: "abcdefghij01".into(),
            user: "alice".into(),
            tenant: "acme".into(),
            groups: vec!["devs".into(), "kubehub:tenant:acme".into()],
            clusters: Box::new(["a".to_owned()]),
            expires: 0,
        };
        let f = forward_fields(&head, &user, true, "");
        let pairs: Vec<(String, String)> = f
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = [
            ("Accept", "application/json"),
            ("Impersonate-User", "alice"),
            ("Impersonate-Group", "devs"),
            ("Impersonate-Group", "kubehub:tenant:acme"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            pairs, want,
            "credentials, hop-by-hop fields (and those Connection names) and the user's own impersonation are dropped"
        );
        let f = forward_fields(&head, &user, false, "");
        assert_eq!(
            f.len(),
            1,
            "without impersonation only end-to-end fields pass"
        );
    }
}
