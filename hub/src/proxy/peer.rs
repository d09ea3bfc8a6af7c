//! `peer`: a request for a cluster whose tunnel another hub holds ([`crate::peers`]).
//!
//! One stream on the peer link per request, in both hubs' terms an ordinary duplex stream:
//! * **this hub** ([`relay`]), after `authenticate → resolve → authorize` found no tunnel
//!   here, opens a stream (method [`METHOD`]) on a holder's link and writes the user's
//!   request onto it as HTTP/1.1 bytes — the head as received (credentials included: the
//!   holder authenticates and authorizes again with the same access data, so no hub has to
//!   trust another's decision), then the body with its own framing — and copies the bytes
//!   that come back to the user unchanged. After an ordinary answer it ends its half; after
//!   a `101` both directions carry the session until each side ends (as in `upgrade`).
//! * **the holder** ([`serve_stream`]) answers the stream `200`, then serves the bytes as a
//!   user connection carrying one request, through the same phases (cache, tunnel, upgrade),
//!   except that it never forwards to a third hub.
//!
//! Before the holder accepted a stream nothing was processed: a refused stream (the link is
//! draining) or a failed dial moves on to the next holder. After that the usual rule holds
//! (`error`: no 503 once the request may have reached an agent).

use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kubehub_wire::{ErrorCode, StreamId};
use tokio::sync::mpsc;
use tracing::debug;

use super::backend::{Backend, Exchange, Uplink};
use super::error::{ProxyError, Reached};
use super::respond::Responder;
use super::{Conn, ProxyCtx, Writer};
use crate::http::{self, BodyDecoder, BodyKind, BodyPart, RequestHead};
use crate::metrics::CodeLabel;
use crate::peers::Holder;
use crate::registry::{self, AgentHandle, StreamEvent, TunnelCmd};

/// The method of a peer stream's REQUEST (`PROTOCOL.md` §12).
pub const METHOD: &str = "KUBEHUB-PEER";

/// The field naming the hub a peer stream comes from.
pub const VIA: &str = "KubeHub-Via";

/// A holder's response head longer than this is not looked into (the bytes still go to the
/// user, and the connection closes after them).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Response bytes written before their credit goes back (as in `respond`).
const RELEASE_BATCH: u32 = 32 * 1024;

/// A stream another hub opened on its peer link, as the tunnel hands it over.
#[derive(Debug)]
pub struct Accepted {
    /// The stream.
    pub stream: StreamId,
    /// The link's command channel (to answer on).
    pub tunnel: mpsc::Sender<TunnelCmd>,
    /// What arrives on the stream.
    pub events: mpsc::UnboundedReceiver<StreamEvent>,
    /// The hub that opened it.
    pub origin: String,
}

/// The writing half of a peer stream, for the holder's proxy: what it writes becomes DATA, one
/// chunk in flight (the stream's window holds back a reader that stalls, and no other stream).
#[derive(Debug)]
pub struct StreamWriter {
    up: Uplink,
    chunk: usize,
    ended: bool,
}

impl StreamWriter {
    async fn send(&mut self, data: Bytes, end: bool) -> io::Result<()> {
        if self.up.send_body(data, end).await {
            self.ended |= end;
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the peer stream is gone",
            ))
        }
    }

    /// Writes `chunks` in order, in DATA of at most the link's chunk size.
    pub async fn write_all(&mut self, chunks: &[&[u8]]) -> io::Result<()> {
        let mut cur = BytesMut::new();
        for c in chunks {
            let mut c: &[u8] = c;
            while !c.is_empty() {
                let n = (self.chunk - cur.len()).min(c.len());
                cur.extend_from_slice(&c[..n]);
                c = &c[n..];
                if cur.len() == self.chunk {
                    self.send(cur.split().freeze(), false).await?;
                }
            }
        }
        if !cur.is_empty() {
            self.send(cur.freeze(), false).await?;
        }
        Ok(())
    }

    /// Ends this side's half of the stream.
    pub async fn close(&mut self) -> io::Result<()> {
        if self.ended {
            return Ok(());
        }
        self.send(Bytes::new(), true).await
    }

    /// Resets the stream (the exchange broke).
    pub async fn abort(&mut self) {
        self.up.cancel().await;
        self.ended = true;
    }
}

/// The field in which a hub relaying a request tells the holder the client's address (for
/// the holder's metrics and audit log). Whatever a client puts in it is replaced.
pub const SOURCE_FIELD: &str = "KubeHub-Source-IP";

/// Serves one stream another hub opened: its bytes are one HTTP/1.1 request, answered as a
/// user connection's would be (never forwarded to a third hub), then this side's half ends.
pub async fn serve_stream(ctx: Rc<ProxyCtx>, s: Accepted) {
    let Accepted {
        stream,
        tunnel,
        mut events,
        origin,
    } = s;
    // The stream's bytes into the connection's inbound channel, credit returned as they are
    // taken: a holder that stops reading stops the other hub after one window.
    let (in_tx, inbound) = mpsc::channel::<BytesMut>(4);
    let pump_tunnel = tunnel.clone();
    monoio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                StreamEvent::Data(d) => {
                    let n = d.len() as u32;
                    // A consumer that is done takes nothing more; the credit still goes back.
                    let _ = in_tx.send(BytesMut::from(&d[..])).await;
                    let _ = pump_tunnel.send(TunnelCmd::Release { stream, n }).await;
                }
                StreamEvent::End | StreamEvent::Reset(_) => break,
                StreamEvent::Head { .. } | StreamEvent::Trailers(_) => {}
            }
        }
    });
    let mut conn = Conn {
        buf: BytesMut::new(),
        max_buffered: 2 * ctx.limits.max_header_bytes.max(ctx.limits.data_chunk),
        inbound,
        wr: Writer::Stream(StreamWriter {
            up: Uplink::new(stream, tunnel),
            chunk: ctx.limits.data_chunk,
            ended: false,
        }),
        via_peer: Some(origin),
        source: None,
        stop: None,
    };
    match super::read_head(&ctx, &mut conn).await {
        Ok(Some(head)) => {
            let source = head
                .header(&SOURCE_FIELD.to_ascii_lowercase())
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
            let span = tracing::debug_span!(
                "request",
                method = %String::from_utf8_lossy(&head.method),
                cluster = tracing::field::Empty,
                user = tracing::field::Empty,
                stream = tracing::field::Empty,
            );
            let _ =
                tracing::Instrument::instrument(super::handle(&ctx, head, &mut conn, source), span)
                    .await;
        }
        Ok(None) => {}
        Err(status) => {
            let _ = conn
                .wr
                .write_all(&[&http::status_response(
                    &status,
                    true,
                    false,
                    kubehub_audit::new_audit_id().as_bytes(),
                )])
                .await;
        }
    }
    let _ = conn.wr.close().await;
}

/// The request head as it came, for the holder to read again: request line, every field
/// (credentials too: the holder authenticates on its own) and the blank line. With `close`
/// (this hub is draining) it asks for `Connection: close`, so that the answer the user gets
/// says the connection ends.
fn head_bytes(head: &RequestHead, close: bool, audit_id: &str, source: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(&head.method);
    out.extend_from_slice(b" ");
    out.extend_from_slice(&head.target);
    out.extend_from_slice(if head.http11 {
        b" HTTP/1.1\r\n"
    } else {
        b" HTTP/1.0\r\n"
    });
    for (n, v) in &head.fields {
        if close && n.eq_ignore_ascii_case(b"connection")
            || n.eq_ignore_ascii_case(SOURCE_FIELD.as_bytes())
        {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    // The holder audits the request under the same id, and knows whom it came from.
    if head.header("audit-id").is_none() {
        out.extend_from_slice(b"Audit-ID: ");
        out.extend_from_slice(audit_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(SOURCE_FIELD.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(source.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// Forwards the request on `conn` to the first of `holders` that takes it, and relays the
/// answer. Returns whether the user's connection may carry another request.
pub async fn relay(
    ctx: &ProxyCtx,
    head: &RequestHead,
    conn: &mut Conn,
    mut out: Responder<'_>,
    cluster: &str,
    holders: Vec<Holder>,
) -> bool {
    let started = Instant::now();
    let accept = Duration::from_millis(ctx.limits.peer_accept_timeout_ms);
    let upgrade = http::upgrade_of(head).is_some();
    let request = head_bytes(
        head,
        ctx.draining() && !upgrade,
        &out.rec.audit_id,
        &out.rec.source.to_string(),
    );
    let mut ex = None;
    let mut busy = false;
    for h in &holders {
        match open(ctx, h, cluster, request.clone(), accept).await {
            Ok(e) => {
                ctx.peers.succeeded(&h.hub);
                ex = Some(e);
                break;
            }
            Err(refusal) => {
                debug!(hub = %h.hub, "not forwarded there: {refusal}");
                match refusal {
                    Refusal::Busy => busy = true,
                    Refusal::Down(_) => ctx.peers.failed(&h.hub),
                    Refusal::Declined(_) => {}
                }
            }
        }
    }
    let outcome = match (&ex, busy) {
        (Some(_), _) => "ok",
        (None, true) => "busy",
        (None, false) => "unreachable",
    };
    ctx.metrics
        .peer_requests
        .get_or_create(&crate::metrics::OutcomeLabel { outcome })
        .inc();
    let Some(mut ex) = ex else {
        // Every holder that answered was at its stream limit: the cluster is there, only
        // busy, and the client should slow down, not think it offline.
        let e = if busy {
            ProxyError::Busy(cluster.to_owned())
        } else {
            ProxyError::Offline {
                cluster: cluster.to_owned(),
                why: "no hub holding its tunnel could be reached",
            }
        };
        return out.error(conn, &e, Reached::Hub).await;
    };
    tracing::Span::current().record("stream", ex.stream_id());
    if upgrade {
        // The holder writes the 101 (or its refusal) itself; from here on both ways are bytes.
        let idle = Duration::from_millis(ctx.limits.upgrade_idle_timeout_ms);
        let end = super::upgrade::pump(conn, ex, idle, started).await;
        debug!(end = ?end, "peer session ended");
        return false;
    }
    // The body, framed as the head says (the holder decodes it again).
    let body_done = match upload(ctx, head, conn, &mut ex).await {
        Ok(done) => done,
        Err(e) => {
            ex.cancel().await;
            return out.error(conn, &e, Reached::MaybeAgent).await;
        }
    };
    let (status, close) = match download(conn, &mut ex, cluster).await {
        Ok(x) => x,
        Err(e) => {
            ex.cancel().await;
            if let Some(e) = e {
                return out.error(conn, &e, Reached::MaybeAgent).await;
            }
            return false;
        }
    };
    // The answer is complete: end this side's half too.
    let _ = ex.send_body(Bytes::new(), true).await;
    ctx.metrics.latency.observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .requests
        .get_or_create(&CodeLabel { code: status })
        .inc();
    out.rec.code.set(status);
    body_done && !close && head.keep_alive && !ctx.draining()
}

/// Why a holder did not take a forwarded request. Every one happened before the holder
/// processed anything, so the next holder may be tried.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    /// The link is at its concurrent stream limit.
    #[error("the link to it is at its stream limit")]
    Busy,
    /// The hub could not be reached, or did not accept in time: it goes into back-off.
    #[error("{0}")]
    Down(String),
    /// The hub answered but would not take it (draining, no longer holding the cluster).
    #[error("{0}")]
    Declined(String),
}

/// Opens a stream on `holder`'s link and sends the request head; `Ok` once the holder
/// accepted it (`200`, which it sends before any work), within `accept`.
async fn open(
    ctx: &ProxyCtx,
    holder: &Holder,
    cluster: &str,
    request: Bytes,
    accept: Duration,
) -> Result<Exchange, Refusal> {
    let tx = ctx
        .peers
        .link(holder, &ctx.tunnels)
        .await
        .map_err(|e| Refusal::Down(e.to_string()))?;
    let backend = Backend::Tunnel(AgentHandle {
        tx,
        generation: 0,
        agent_id: holder.hub.as_str().into(),
    });
    let open_head = registry::RequestHead {
        method: Bytes::from_static(METHOD.as_bytes()),
        path: Bytes::from(format!("/clusters/{cluster}")),
        fields: vec![(
            Bytes::from_static(VIA.as_bytes()),
            Bytes::from(ctx.peers.hub_id().to_owned()),
        )],
    };
    let mut ex = match backend.open(cluster, open_head, false, true).await {
        Ok(ex) => ex,
        Err(ProxyError::Busy(_)) => return Err(Refusal::Busy),
        Err(e) => return Err(Refusal::Down(e.to_string())),
    };
    // The head goes with the open, before the holder accepted: a GET costs no extra round
    // trip. If the stream is refused instead, the refusal is the first event below.
    let _ = ex.send_body(request, false).await;
    let first = monoio::select! {
        ev = ex.next() => ev,
        _ = monoio::time::sleep(accept) => {
            ex.cancel().await;
            return Err(Refusal::Down(format!("it did not accept the stream within {accept:?}")));
        }
    };
    match first {
        Some(StreamEvent::Head { status: 200, .. }) => Ok(ex),
        Some(StreamEvent::Head { status, .. }) => {
            ex.cancel().await;
            Err(Refusal::Declined(format!("refused with {status}")))
        }
        Some(StreamEvent::Reset(code)) if code == ErrorCode::REFUSED_STREAM => {
            Err(Refusal::Declined("refused (the link is draining)".into()))
        }
        Some(other) => Err(Refusal::Down(format!("unexpected {other:?}"))),
        None => Err(Refusal::Down("the link closed".into())),
    }
}

/// Sends the request body as it arrives, in the framing the head announced (one chunk in
/// flight). `Ok(true)`: all of it went, the connection can carry another request.
async fn upload(
    ctx: &ProxyCtx,
    head: &RequestHead,
    conn: &mut Conn,
    ex: &mut Exchange,
) -> Result<bool, ProxyError> {
    if head.body == BodyKind::None {
        return Ok(true);
    }
    let chunked = head.body == BodyKind::Chunked;
    let mut dec = BodyDecoder::new(head.body);
    loop {
        let part = dec.decode(&mut conn.buf, ctx.limits.data_chunk);
        let data = match part {
            Ok(BodyPart::Data(data)) if chunked => {
                let mut framed = BytesMut::with_capacity(data.len() + 16);
                framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                framed.freeze()
            }
            Ok(BodyPart::Data(data)) => data,
            Ok(BodyPart::End) if chunked => Bytes::from_static(b"0\r\n\r\n"),
            Ok(BodyPart::End) => return Ok(true),
            Ok(BodyPart::More) => {
                let idle = Duration::from_millis(ctx.limits.idle_timeout_ms);
                match monoio::time::timeout(idle, conn.read_more()).await {
                    Ok(true) => continue,
                    Ok(false) => return Err(ProxyError::ClientGone),
                    Err(_) => return Err(ProxyError::BodyTimeout(idle)),
                }
            }
            Err(e) => return Err(ProxyError::BadBody(e.to_string())),
        };
        let last = data.as_ref() == b"0\r\n\r\n" && chunked;
        if !ex.send_body(data, false).await {
            // The holder answered early (or the stream broke): the rest of the body stays
            // on the user's connection, which cannot carry another request.
            return Ok(false);
        }
        if last {
            return Ok(true);
        }
    }
}

/// Copies the holder's answer to the user until the holder ends its half: `(status, close)`
/// of its head. `Err(None)`: the user went away (nothing more to say); `Err(Some)`: the
/// stream broke before the answer began.
async fn download(
    conn: &mut Conn,
    ex: &mut Exchange,
    cluster: &str,
) -> Result<(u16, bool), Option<ProxyError>> {
    let mut head = Vec::new();
    let mut parsed: Option<(u16, bool)> = None;
    let mut unreleased: u32 = 0;
    loop {
        let ev = monoio::select! {
            ev = ex.next() => ev,
            more = conn.read_more() => {
                if !more {
                    return Err(None);
                }
                continue;
            },
        };
        match ev {
            Some(StreamEvent::Data(d)) => {
                if parsed.is_none() {
                    head.extend_from_slice(&d);
                    parsed = response_head(&head);
                    if parsed.is_none() && head.len() > MAX_RESPONSE_HEAD {
                        // Relayed as it is; the connection cannot be trusted after it.
                        parsed = Some((502, true));
                    }
                }
                if conn.wr.write_all(&[&d]).await.is_err() {
                    return Err(None);
                }
                unreleased += d.len() as u32;
                if unreleased >= RELEASE_BATCH || !ex.has_queued() {
                    ex.release(std::mem::take(&mut unreleased)).await;
                }
            }
            Some(StreamEvent::End) => {
                return match parsed {
                    Some(p) => Ok(p),
                    None if head.is_empty() => Err(Some(ProxyError::Offline {
                        cluster: cluster.to_owned(),
                        why: "the hub holding its tunnel answered nothing",
                    })),
                    // Bytes went to the user already: all that is left is to close.
                    None => Ok((502, true)),
                };
            }
            Some(StreamEvent::Head { .. }) | Some(StreamEvent::Trailers(_)) => {}
            Some(StreamEvent::Reset(_)) | None => {
                return if head.is_empty() {
                    Err(Some(ProxyError::Offline {
                        cluster: cluster.to_owned(),
                        why: "the link to the hub holding its tunnel broke",
                    }))
                } else {
                    Err(None)
                };
            }
        }
    }
}

/// The status of a complete response head at the start of `buf`, and whether it closes the
/// connection; `None` until the head is complete.
fn response_head(buf: &[u8]) -> Option<(u16, bool)> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut fields);
    match r.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let close = r.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection")
                    && h.value
                        .split(|&b| b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            });
            Some((r.code.unwrap_or(0), close))
        }
        Ok(httparse::Status::Partial) => None,
        // Not HTTP: relayed as it is; the connection cannot be trusted after it.
        Err(_) => Some((502, true)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_is_sent_as_it_came() {
        let mut buf = BytesMut::from(
            &b"POST /clusters/a/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        let head = http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let bytes = head_bytes(&head, false, "id-1", "10.0.0.9");
        let mut again = BytesMut::from(&bytes[..]);
        let reparsed = http::parse_head(&mut again, 4096).unwrap().unwrap();
        assert_eq!(reparsed.method, head.method);
        assert_eq!(reparsed.target, head.target);
        assert_eq!(reparsed.fields[..head.fields.len()], head.fields[..]);
        // The request's audit id and the client's address go along.
        assert_eq!(reparsed.header("audit-id"), Some(&b"id-1"[..]));
        assert_eq!(reparsed.header(SOURCE_FIELD), Some(&b"10.0.0.9"[..]));
        assert_eq!(reparsed.body, BodyKind::Chunked);
        assert!(reparsed.keep_alive);
        assert!(again.is_empty());
        // Draining: the holder is asked to close (its answer will say so).
        let mut again = BytesMut::from(&head_bytes(&head, true, "id-1", "10.0.0.9")[..]);
        let reparsed = http::parse_head(&mut again, 4096).unwrap().unwrap();
        assert!(!reparsed.keep_alive);
        assert_eq!(reparsed.header("connection"), Some(&b"close"[..]));
    }

    #[test]
    fn response_heads_are_read_once_complete() {
        assert_eq!(response_head(b"HTTP/1.1 200 OK\r\nContent-Le"), None);
        assert_eq!(
            response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
            Some((200, false))
        );
        assert_eq!(
            response_head(b"HTTP/1.1 400 Bad Request\r\nConnection: keep-alive, close\r\n\r\n"),
            Some((400, true))
        );
        assert_eq!(response_head(b"\x00\x01garbage\r\n\r\n"), Some((502, true)));
    }
}
