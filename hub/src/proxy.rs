//! `proxy`: one user connection: `tls → http → auth → route → tunnel`, request after request
//! (keep-alive), each response streamed back as the agent sends it.
//!
//! A reader task owns the TLS reader for the whole connection and hands plaintext over a
//! bounded channel, so the handler can wait for the agent and for the client at the same time:
//! a client that hangs up during a watch cancels the stream at once.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kubehub_kapi::Status;
use kubehub_wire::{Fields, StreamId};
use monoio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::auth::{TokenAuth, User};
use crate::config::Limits;
use crate::http::{self, BodyDecoder, BodyPart, Framing, HeadError, RequestHead};
use crate::metrics::{CodeLabel, Metrics};
use crate::route::{self, Lookup, OpenError, Registry, StreamEvent, TunnelCmd};
use crate::tls::{self, TlsWriter};

/// What every user connection on a core shares.
#[derive(Debug)]
pub struct ProxyCtx {
    /// Clusters to tunnels.
    pub registry: Arc<Registry>,
    /// Bearer tokens.
    pub auth: Arc<TokenAuth>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Limits.
    pub limits: Limits,
    /// Add impersonation headers.
    pub impersonate: bool,
    /// TLS for users.
    pub tls: Arc<rustls::ServerConfig>,
}

/// Response bytes written before their credit is returned in one message (well under half of
/// any sensible stream window, so the agent's sending never stalls on it).
const RELEASE_BATCH: u32 = 32 * 1024;

/// What the reader task hands over.
type Inbound = mpsc::Receiver<BytesMut>;

/// Serves one user connection until it closes.
pub async fn serve_user(tcp: TcpStream, peer: SocketAddr, ctx: Rc<ProxyCtx>) {
    let _ = tcp.set_nodelay(true);
    let conn = match rustls::ServerConnection::new(ctx.tls.clone()) {
        Ok(c) => c,
        Err(e) => {
            warn!(%peer, "TLS setup: {e}");
            return;
        }
    };
    let stream = match tls::handshake(tcp, conn.into(), ctx.limits.handshake_timeout()).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, "user TLS handshake failed: {e}");
            return;
        }
    };
    let (mut rd, mut wr) = stream.into_split();
    let (in_tx, mut inbound) = mpsc::channel::<BytesMut>(4);
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
                Ok(0) | Err(_) => return,
                Ok(_) => {
                    if in_tx.send(chunk).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut buf = BytesMut::new();
    let idle = Duration::from_millis(ctx.limits.idle_timeout_ms);
    loop {
        let head = loop {
            match http::parse_head(&mut buf, ctx.limits.max_header_bytes) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => {
                    let (status, why) = match &e {
                        HeadError::TooLarge => (
                            Status::new(431, "RequestHeaderFieldsTooLarge", e.to_string()),
                            "too large",
                        ),
                        HeadError::UnsupportedEncoding => (
                            Status::new(501, "NotImplemented", e.to_string()),
                            "encoding",
                        ),
                        HeadError::Malformed(_) => {
                            (Status::bad_request(e.to_string()), "malformed")
                        }
                    };
                    debug!(%peer, "bad request ({why}): {e}");
                    ctx.metrics
                        .requests
                        .get_or_create(&CodeLabel { code: status.code })
                        .inc();
                    let _ = wr
                        .write_all(&[&http::status_response(&status, true, false)])
                        .await;
                    let _ = wr.close().await;
                    return;
                }
            }
            match monoio::time::timeout(idle, inbound.recv()).await {
                Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
                Ok(None) | Err(_) => {
                    let _ = wr.close().await;
                    return;
                }
            }
        };
        let keep = handle(&ctx, head, &mut buf, &mut inbound, &mut wr).await;
        if !keep {
            let _ = wr.close().await;
            return;
        }
    }
}

/// Sends a Status and returns whether the connection may continue.
async fn reply_status(ctx: &ProxyCtx, wr: &mut TlsWriter, head: &RequestHead, s: Status) -> bool {
    ctx.metrics
        .requests
        .get_or_create(&CodeLabel { code: s.code })
        .inc();
    let keep = head.keep_alive && head.body == http::BodyKind::None;
    wr.write_all(&[&http::status_response(&s, head.http11, keep)])
        .await
        .is_ok()
        && keep
}

/// The fields forwarded to the agent: end-to-end fields minus credentials and any
/// impersonation the user tried, plus the hub's impersonation of the authenticated user.
fn forward_fields(head: &RequestHead, user: &User, impersonate: bool) -> Fields {
    let mut out: Fields = head
        .fields
        .iter()
        .filter(|(n, _)| {
            !(http::is_hop_by_hop(n)
                || n.eq_ignore_ascii_case(b"authorization")
                || n.eq_ignore_ascii_case(b"host")
                || n.len() >= 12 && n[..12].eq_ignore_ascii_case(b"impersonate-"))
        })
        .cloned()
        .collect();
    if impersonate {
        out.push((
            Bytes::from_static(b"Impersonate-User"),
            Bytes::from(user.name.clone()),
        ));
        for g in &user.groups {
            out.push((
                Bytes::from_static(b"Impersonate-Group"),
                Bytes::from(g.clone()),
            ));
        }
        if !user.uid.is_empty() {
            out.push((
                Bytes::from_static(b"Impersonate-Uid"),
                Bytes::from(user.uid.clone()),
            ));
        }
    }
    out
}

/// Handles one request; returns whether the connection stays open.
async fn handle(
    ctx: &ProxyCtx,
    head: RequestHead,
    buf: &mut BytesMut,
    inbound: &mut Inbound,
    wr: &mut TlsWriter,
) -> bool {
    let started = Instant::now();
    let Some(user) = ctx.auth.authenticate(head.header("authorization")) else {
        return reply_status(ctx, wr, &head, Status::unauthorized()).await;
    };
    let target = String::from_utf8_lossy(&head.target).into_owned();
    let Some((cluster, rest)) = route::split_cluster_path(&target) else {
        return reply_status(ctx, wr, &head, Status::no_such_resource()).await;
    };
    let path = if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    };
    let tunnel = match ctx.registry.lookup(cluster) {
        Lookup::Online(h) => h,
        Lookup::Offline => {
            let s = Status::unavailable(format!(
                "cluster {cluster:?} is offline: its agent is not connected to this hub"
            ));
            return reply_status(ctx, wr, &head, s).await;
        }
        Lookup::Unknown => {
            return reply_status(ctx, wr, &head, Status::not_found("", "clusters", cluster)).await;
        }
    };
    let span = tracing::debug_span!("request", cluster = %cluster, user = %user.name, method = %String::from_utf8_lossy(&head.method));
    let _enter = span.enter();
    let (ev_tx, mut events) = mpsc::unbounded_channel();
    let (reply_tx, reply_rx) = oneshot::channel();
    let has_body = head.body != http::BodyKind::None;
    let open = TunnelCmd::Open {
        head: Box::new(route::RequestHead {
            method: head.method.clone(),
            path: Bytes::from(path),
            fields: forward_fields(&head, user, ctx.impersonate),
        }),
        end_stream: !has_body,
        events: ev_tx,
        reply: reply_tx,
    };
    let offline = || {
        Status::unavailable(format!(
            "cluster {cluster:?} is offline: its agent disconnected"
        ))
    };
    if tunnel.tx.send(open).await.is_err() {
        return reply_status(ctx, wr, &head, offline()).await;
    }
    let stream = match reply_rx.await {
        Ok(Ok(id)) => id,
        Ok(Err(OpenError::Busy)) => {
            let s = Status::new(
                429,
                "TooManyRequests",
                format!("too many concurrent requests to cluster {cluster:?}"),
            );
            return reply_status(ctx, wr, &head, s).await;
        }
        Ok(Err(OpenError::Closing)) | Err(_) => {
            return reply_status(ctx, wr, &head, offline()).await
        }
    };
    let cancel = |stream: StreamId| {
        let tx = tunnel.tx.clone();
        async move {
            let _ = tx.send(TunnelCmd::Cancel { stream }).await;
        }
    };
    // Request body, one chunk in flight. If the stream ends before the body is through (the
    // agent already answered, or reset it), stop sending: the answer or the error is waiting on
    // `events`. Once the request may have reached the agent, failures are never 503 with
    // Retry-After: clients would retry, and repeat a write that may have happened.
    let mut body_complete = !has_body;
    if has_body {
        let mut dec = BodyDecoder::new(head.body);
        loop {
            let (data, end) = match dec.decode(buf, ctx.limits.data_chunk) {
                Ok(BodyPart::Data(data)) => (data, false),
                Ok(BodyPart::End) => (Bytes::new(), true),
                Ok(BodyPart::More) => match inbound.recv().await {
                    Some(chunk) => {
                        buf.extend_from_slice(&chunk);
                        continue;
                    }
                    None => {
                        cancel(stream).await;
                        return false;
                    }
                },
                Err(e) => {
                    cancel(stream).await;
                    let s = Status::bad_request(e.to_string());
                    let _ = reply_status(ctx, wr, &head, s).await;
                    return false;
                }
            };
            body_complete = end;
            let (ack_tx, ack_rx) = oneshot::channel();
            let cmd = TunnelCmd::Data {
                stream,
                data,
                end,
                ack: ack_tx,
            };
            let sent = tunnel.tx.send(cmd).await.is_ok() && matches!(ack_rx.await, Ok(true));
            if end || !sent {
                break;
            }
        }
    }
    // The response, streamed; the client hanging up cancels the stream.
    let response_deadline = Duration::from_millis(ctx.limits.response_timeout_ms);
    let mut framing: Option<Framing> = None;
    // A body not read to its end leaves bytes on the connection: it cannot carry another request.
    let mut keep = head.keep_alive && body_complete;
    let mut unreleased: u32 = 0;
    loop {
        let ev = if framing.is_none() {
            monoio::select! {
                ev = events.recv() => Some(ev),
                chunk = inbound.recv() => {
                    match chunk {
                        Some(c) => { buf.extend_from_slice(&c); continue; }
                        None => { cancel(stream).await; return false; }
                    }
                },
                _ = monoio::time::sleep(response_deadline.saturating_sub(started.elapsed())) => None,
            }
        } else {
            monoio::select! {
                ev = events.recv() => Some(ev),
                chunk = inbound.recv() => {
                    match chunk {
                        Some(c) => { buf.extend_from_slice(&c); continue; }
                        None => { cancel(stream).await; return false; }
                    }
                },
            }
        };
        let Some(ev) = ev else {
            cancel(stream).await;
            let s = Status::new(
                504,
                "Timeout",
                format!("cluster {cluster:?} did not answer within {response_deadline:?}"),
            );
            return reply_status(ctx, wr, &head, s).await;
        };
        match ev {
            Some(StreamEvent::Head { status, fields }) => {
                let (bytes, f) = http::response_head(
                    status,
                    &fields,
                    &head.method[..] == b"HEAD",
                    head.http11,
                    keep,
                );
                framing = Some(f);
                if f == Framing::Close {
                    keep = false;
                }
                ctx.metrics.latency.observe(started.elapsed().as_secs_f64());
                ctx.metrics
                    .requests
                    .get_or_create(&CodeLabel { code: status })
                    .inc();
                if wr.write_all(&[&bytes]).await.is_err() {
                    cancel(stream).await;
                    return false;
                }
            }
            Some(StreamEvent::Data(data)) => {
                let n = data.len();
                let res = match framing {
                    Some(Framing::Chunked) => {
                        let mut line = [0u8; 20];
                        wr.write_all(&[http::chunk_header(n, &mut line), &data, b"\r\n"])
                            .await
                    }
                    Some(Framing::Empty) => Ok(()),
                    _ => wr.write_all(&[&data]).await,
                };
                if res.is_err() {
                    cancel(stream).await;
                    return false;
                }
                // Credit goes back in batches: once enough is owed, or whenever this consumer
                // has caught up (nothing more queued), so the agent never waits on us.
                unreleased += n as u32;
                if unreleased >= RELEASE_BATCH || events.is_empty() {
                    let n = std::mem::take(&mut unreleased);
                    let _ = tunnel.tx.send(TunnelCmd::Release { stream, n }).await;
                }
            }
            Some(StreamEvent::End) => {
                if framing == Some(Framing::Chunked) && wr.write_all(&[b"0\r\n\r\n"]).await.is_err()
                {
                    return false;
                }
                return keep && framing != Some(Framing::Close);
            }
            Some(StreamEvent::Reset(code)) if framing.is_none() => {
                let s = Status::new(
                    502,
                    "BadGateway",
                    format!(
                        "cluster {cluster:?}: the agent could not complete the request ({code})"
                    ),
                );
                return reply_status(ctx, wr, &head, s).await;
            }
            None if framing.is_none() => {
                let s = Status::new(
                    502,
                    "BadGateway",
                    format!("cluster {cluster:?}: the tunnel closed before the agent answered"),
                );
                return reply_status(ctx, wr, &head, s).await;
            }
            Some(StreamEvent::Reset(_)) | None => {
                // Mid-body the response can only end. A chunked one (a watch, logs -f) ends
                // cleanly, as when an API server ends a watch; then the connection closes.
                if framing == Some(Framing::Chunked) {
                    let _ = wr.write_all(&[b"0\r\n\r\n"]).await;
                }
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_fields_carry_the_authenticated_user_only() {
        let mut buf = BytesMut::from(
            &b"GET /clusters/a/api HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer secret\r\nImpersonate-User: root\r\nimpersonate-group: system:masters\r\nConnection: keep-alive\r\nAccept: application/json\r\n\r\n"[..],
        );
        let head = http::parse_head(&mut buf, 4096).unwrap().unwrap();
        let user = User {
            name: "alice".into(),
            uid: "1001".into(),
            groups: vec!["devs".into(), "ops".into()],
        };
        let f = forward_fields(&head, &user, true);
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
            ("Impersonate-Group", "ops"),
            ("Impersonate-Uid", "1001"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            pairs, want,
            "credentials, hop-by-hop fields and the user's own impersonation are dropped"
        );
        let f = forward_fields(&head, &user, false);
        assert_eq!(
            f.len(),
            1,
            "without impersonation only end-to-end fields pass"
        );
    }
}
