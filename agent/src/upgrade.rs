//! Upgraded connections at the edge: `kubectl exec`, `attach`, `cp` and `port-forward`
//! (WebSocket, or SPDY/3.1 when kubectl falls back), forwarded by the hub on a duplex stream.
//!
//! The hub sends the request with `Connection: Upgrade` and `Upgrade` (the only hop-by-hop
//! fields that cross the tunnel, and only on such a stream) and keeps its half open. The
//! agent sends it to the edge API server as it came, with its own credentials:
//! * **101**: the edge's head goes back as RESPONSE (its `Upgrade`, `Connection`,
//!   `Sec-WebSocket-*`, `X-Stream-Protocol-Version` fields kept), then bytes move both ways
//!   until both sides ended: the edge's bytes as DATA as the hub's window allows (an edge
//!   faster than the user waits on the window, holding nothing); the hub's DATA written to
//!   the edge, their credit returned once written (a user faster than the edge is held back
//!   by the stream window). The hub ending its half half-closes the edge connection (TCP
//!   FIN); the edge closing its side ends the agent's half. A RESET from the hub drops the
//!   edge connection at once (the task is aborted).
//! * The session's bytes pass unchanged; [`crate::observe`] reads the exit status of an exec
//!   or attach off them as they pass, sent in END's trailers (`KubeHub-Exit-Status`) for the
//!   hub's audit line.
//! * **anything else** is answered as any forwarded request is (the user's kubectl reads it
//!   and may fall back to the other protocol).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue};
use http_body_util::BodyExt;
use kubehub_wire::{ErrorCode, Fields, StreamId};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::observe::ExitObserver;
use crate::tunnel::{respond, send_data, unreachable, Shared};
use crate::upstream::{self, UpstreamClient};

/// The trailer in which the agent reports how an exec or attach ended (`0`, the exit code,
/// or `error: …`; see [`crate::observe`]); the hub logs it.
pub const EXIT_TRAILER: &[u8] = b"KubeHub-Exit-Status";

/// Bytes read from the edge per DATA frame at most.
const READ_CHUNK: usize = 32 * 1024;

/// The protocol a forwarded request switches to (its `Upgrade` field), if it does.
pub(crate) fn protocol(fields: &Fields) -> Option<&Bytes> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(b"upgrade"))
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Forwards an upgrade request on stream `id` and, if the edge switches, carries the session.
pub(crate) async fn answer(
    id: StreamId,
    method: &[u8],
    path: &[u8],
    fields: &Fields,
    body_rx: Option<mpsc::UnboundedReceiver<Bytes>>,
    shared: &Arc<Shared>,
    upstream: &UpstreamClient,
) {
    let empty = http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed();
    let resp = match upstream::request(method, path, fields, empty).and_then(|mut req| {
        // `request` leaves hop-by-hop fields out; the upgrade is this request's point.
        let h = req.headers_mut();
        h.insert(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        );
        if let Some(p) = protocol(fields) {
            let v = HeaderValue::from_bytes(p).map_err(|e| format!("bad Upgrade field: {e}"))?;
            h.insert(http::header::UPGRADE, v);
        }
        Ok(req)
    }) {
        Ok(req) => upstream.call(req).await,
        Err(e) => Err(e),
    };
    let mut resp = match resp {
        Ok(r) => r,
        Err(e) => return unreachable(shared, id, &e),
    };
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        return respond(shared, id, resp).await;
    }
    let head: Fields = resp
        .headers()
        .iter()
        .filter(|(n, _)| {
            !matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "keep-alive"
            )
        })
        .map(|(n, v)| (field_name(n), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    let header = |name: http::HeaderName| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let subprotocol = header(http::header::SEC_WEBSOCKET_PROTOCOL);
    let upgrade = header(http::header::UPGRADE).unwrap_or_default();
    let path = String::from_utf8_lossy(path);
    let route = path.split('?').next().unwrap_or("");
    let command = route.ends_with("/exec") || route.ends_with("/attach");
    // A mutex only because the stream's future must be `Send`: both directions run in this one
    // task, and neither holds it across an await.
    let observer = Mutex::new(ExitObserver::new(&upgrade, subprotocol.as_deref(), command));
    let observe = |f: &mut dyn FnMut(&mut ExitObserver)| {
        f(&mut observer.lock().unwrap_or_else(|e| e.into_inner()))
    };
    let on_upgrade = hyper::upgrade::on(&mut resp);
    if shared
        .with_conn(|c| c.send_response(id, 101, head, false))
        .is_err()
    {
        return;
    }
    let io = match on_upgrade.await {
        Ok(io) => hyper_util::rt::TokioIo::new(io),
        Err(e) => {
            warn!("the edge switched protocols but the connection could not be taken over: {e}");
            shared.with_conn(|c| c.reset(id, ErrorCode::UPSTREAM));
            return;
        }
    };
    let (mut edge_rd, mut edge_wr) = tokio::io::split(io);
    let to_hub = async {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        loop {
            if buf.capacity() < READ_CHUNK / 4 {
                buf = BytesMut::with_capacity(READ_CHUNK);
            }
            match edge_rd.read_buf(&mut buf).await {
                Ok(0) => {
                    debug!("the edge closed its side");
                    // How the command ended, for the hub's audit line.
                    let mut exit = None;
                    observe(&mut |o| exit = o.exit());
                    let trailers: Fields = exit
                        .map(|e| (Bytes::from_static(EXIT_TRAILER), Bytes::from(e)))
                        .into_iter()
                        .collect();
                    let _ = shared.with_conn(|c| c.send_end(id, trailers));
                    return true;
                }
                Ok(_) => {
                    let bytes = buf.split().freeze();
                    observe(&mut |o| o.edge_bytes(&bytes));
                    if !send_data(shared, id, bytes).await {
                        return false;
                    }
                }
                Err(e) => {
                    debug!("edge connection read failed: {e}");
                    shared.with_conn(|c| c.reset(id, ErrorCode::UPSTREAM));
                    return false;
                }
            }
        }
    };
    let to_edge = async {
        let Some(mut rx) = body_rx else {
            return true;
        };
        while let Some(chunk) = rx.recv().await {
            let n = chunk.len() as u32;
            observe(&mut |o| o.client_bytes(&chunk));
            if let Err(e) = edge_wr.write_all(&chunk).await {
                debug!("edge connection write failed: {e}");
                shared.with_conn(|c| c.reset(id, ErrorCode::UPSTREAM));
                return false;
            }
            shared.with_conn(|c| c.release(id, n));
        }
        // The user's side ended: half-close the edge connection.
        debug!("the user closed their side");
        let _ = edge_wr.shutdown().await;
        true
    };
    let (up, down) = tokio::join!(to_hub, to_edge);
    debug!(to_hub = up, to_edge = down, "upgraded connection ended");
}

/// A response field name as the edge's HTTP/1.1 would spell it: hyper lower-cases names,
/// which HTTP allows; the well-known upgrade fields get their usual case back for clients
/// that compare them case-sensitively.
fn field_name(n: &HeaderName) -> Bytes {
    let canonical: &'static [u8] = match n.as_str() {
        "upgrade" => b"Upgrade",
        "connection" => b"Connection",
        "sec-websocket-accept" => b"Sec-WebSocket-Accept",
        "sec-websocket-protocol" => b"Sec-WebSocket-Protocol",
        "x-stream-protocol-version" => b"X-Stream-Protocol-Version",
        _ => return Bytes::copy_from_slice(n.as_str().as_bytes()),
    };
    Bytes::from_static(canonical)
}
