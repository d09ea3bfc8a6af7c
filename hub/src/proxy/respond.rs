//! `respond`: the answer, written to the client as the backend produces it.
//!
//! [`relay`] turns a backend's [`StreamEvent`]s into HTTP/1.1: the response head (framing
//! chosen from the backend's fields: length, chunked or close), body chunks as they come, the
//! terminating chunk. It returns credit to the backend in batches as bytes reach the client,
//! and watches the client's side of the connection meanwhile: a client that hangs up cancels
//! the request at once. [`Responder::status`] writes a complete `Status` answer.

use std::time::{Duration, Instant};

use kubehub_kapi::Status;

use super::backend::Exchange;
use super::error::{ProxyError, Reached};
use super::observe::{Observer, Record};
use super::Conn;
use crate::http::{self, Framing, RequestHead};
use crate::metrics::{CodeLabel, Metrics};
use crate::registry::StreamEvent;

/// Response bytes written before their credit is returned in one message (well under half of
/// any sensible stream window, so the agent's sending never stalls on it).
const RELEASE_BATCH: u32 = 32 * 1024;

/// While a body streams there is no deadline; the timer just wakes the loop this often.
const BODY_TICK: Duration = Duration::from_secs(3600);

/// Writes one response on a user connection.
#[derive(Debug)]
pub struct Responder<'m> {
    metrics: &'m Metrics,
    obs: &'m Observer,
    /// The request's observation: code, bytes, audit id.
    pub rec: &'m Record,
    http11: bool,
    head_only: bool,
    /// The connection may carry another request after this one.
    keep: bool,
    framing: Option<Framing>,
}

impl<'m> Responder<'m> {
    /// A responder for `req`. `keep` is false when the connection cannot carry another
    /// request whatever the answer (the client asked to close, or its body was not read).
    pub fn new(obs: &'m Observer, rec: &'m Record, req: &RequestHead, keep: bool) -> Responder<'m> {
        Responder {
            metrics: &obs.metrics,
            obs,
            rec,
            http11: req.http11,
            head_only: &req.method[..] == b"HEAD",
            keep: keep && req.keep_alive,
            framing: None,
        }
    }

    /// Whether the response head was written (after which no `Status` can be sent).
    pub fn started(&self) -> bool {
        self.framing.is_some()
    }

    /// The connection can no longer carry another request.
    pub fn close_after(&mut self) {
        self.keep = false;
    }

    fn count(&self, code: u16) {
        self.metrics
            .requests
            .get_or_create(&CodeLabel { code })
            .inc();
        self.rec.head_written(self.obs, code);
    }

    fn wrote(&self, n: usize) {
        self.rec.bytes_out.set(self.rec.bytes_out.get() + n as u64);
    }

    fn max_body(&self) -> usize {
        self.obs.audit.as_ref().map_or(0, |a| a.max_body)
    }

    /// Writes a complete `Status` answer. Returns whether the connection may continue.
    pub async fn status(&mut self, conn: &mut Conn, s: &Status) -> bool {
        if s.code >= 400 {
            self.rec.failed(&s.message, s.reason);
        }
        self.count(s.code);
        let keep = self.keep;
        let bytes = http::status_response(s, self.http11, keep, self.rec.audit_id.as_bytes());
        self.wrote(bytes.len());
        conn.wr.write_all(&[&bytes]).await.is_ok() && keep
    }

    /// Answers a failed request (nothing, if the client is gone). Returns whether the
    /// connection may continue.
    pub async fn error(&mut self, conn: &mut Conn, e: &ProxyError, reached: Reached) -> bool {
        tracing::debug!(kind = e.kind(), "request failed: {e}");
        match e.status(reached) {
            Some(s) if !self.started() => self.status(conn, &s).await,
            // Mid-body only the end can be said; a chunked body (a watch, logs -f) ends
            // cleanly, as when an API server ends a watch. Then the connection closes.
            _ => {
                if self.framing == Some(Framing::Chunked) {
                    let _ = conn.wr.write_all(&[b"0\r\n\r\n"]).await;
                }
                false
            }
        }
    }

    async fn head(
        &mut self,
        conn: &mut Conn,
        status: u16,
        fields: &kubehub_wire::Fields,
    ) -> Result<(), ProxyError> {
        let (bytes, f) = self.response_head(status, fields);
        if f == Framing::Close {
            self.keep = false;
        }
        conn.wr
            .write_all(&[&bytes])
            .await
            .map_err(|_| ProxyError::ClientGone)
    }

    /// The response head for this request (its `Audit-ID` included), its framing noted and
    /// its code and bytes counted.
    fn response_head(&mut self, status: u16, fields: &kubehub_wire::Fields) -> (Vec<u8>, Framing) {
        let (bytes, f) = http::response_head(
            status,
            fields,
            self.head_only,
            self.http11,
            self.keep,
            self.rec.audit_id.as_bytes(),
        );
        self.framing = Some(f);
        self.count(status);
        self.wrote(bytes.len());
        (bytes, f)
    }

    async fn data(&mut self, conn: &mut Conn, data: &[u8]) -> Result<(), ProxyError> {
        self.wrote(data.len());
        self.rec.body_out(data, self.max_body());
        let res = match self.framing {
            Some(Framing::Chunked) => {
                let mut line = [0u8; 20];
                conn.wr
                    .write_all(&[http::chunk_header(data.len(), &mut line), data, b"\r\n"])
                    .await
            }
            Some(Framing::Empty) => Ok(()),
            _ => conn.wr.write_all(&[data]).await,
        };
        res.map_err(|_| ProxyError::ClientGone)
    }

    /// Writes a whole response (its fields carry `Content-Length`) from slices, in one
    /// batched write. Returns whether the connection may continue.
    pub async fn whole(
        &mut self,
        conn: &mut Conn,
        status: u16,
        fields: &kubehub_wire::Fields,
        body: &[bytes::Bytes],
    ) -> bool {
        let (head, f) = self.response_head(status, fields);
        for b in body {
            self.wrote(b.len());
            self.rec.body_out(b, self.max_body());
        }
        let mut parts: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
        parts.push(&head);
        if f != Framing::Empty {
            parts.extend(body.iter().map(|b| &b[..]));
        }
        conn.wr.write_all(&parts).await.is_ok() && self.keep && f != Framing::Close
    }

    /// Starts a streamed response (a watch): the head, with chunked framing on HTTP/1.1.
    pub async fn start(
        &mut self,
        conn: &mut Conn,
        status: u16,
        fields: &kubehub_wire::Fields,
    ) -> bool {
        self.head(conn, status, fields).await.is_ok()
    }

    /// Writes `parts` as one chunk (one batched write).
    pub async fn chunk(&mut self, conn: &mut Conn, parts: &[bytes::Bytes]) -> bool {
        let len: usize = parts.iter().map(bytes::Bytes::len).sum();
        if len == 0 {
            return true;
        }
        self.wrote(len);
        let mut line = [0u8; 20];
        let mut out: Vec<&[u8]> = Vec::with_capacity(parts.len() + 2);
        let chunked = self.framing == Some(Framing::Chunked);
        if chunked {
            out.push(http::chunk_header(len, &mut line));
        }
        out.extend(parts.iter().map(|p| &p[..]));
        if chunked {
            out.push(b"\r\n");
        }
        if self.framing == Some(Framing::Empty) {
            return true;
        }
        conn.wr.write_all(&out).await.is_ok()
    }

    /// Ends a streamed response. Returns whether the connection may continue.
    pub async fn finish(&mut self, conn: &mut Conn) -> bool {
        self.end(conn).await
    }

    async fn end(&mut self, conn: &mut Conn) -> bool {
        if self.framing == Some(Framing::Chunked)
            && conn.wr.write_all(&[b"0\r\n\r\n"]).await.is_err()
        {
            return false;
        }
        self.keep && self.framing != Some(Framing::Close)
    }
}

/// Relays the backend's answer to the client until it ends. `Ok(keep)`: the answer is
/// complete, and whether the connection may carry another request. `Err`: the answer could
/// not be completed; `respond` has not written anything for it that `Responder::error`
/// would contradict.
pub async fn relay(
    conn: &mut Conn,
    out: &mut Responder<'_>,
    ex: &mut Exchange,
    cluster: &str,
    started: Instant,
    head_deadline: Duration,
    written: Option<&crate::cache::freshness::Freshness>,
) -> Result<bool, ProxyError> {
    let mut unreleased: u32 = 0;
    loop {
        // Until the head arrives the response deadline applies; after it, the body may take
        // as long as it takes (watches, logs -f), bounded by the client staying.
        let wait = if out.started() {
            BODY_TICK
        } else {
            head_deadline.saturating_sub(started.elapsed())
        };
        let ev = monoio::select! {
            ev = ex.next() => ev,
            more = conn.read_more() => {
                if !more {
                    ex.cancel().await;
                    return Err(ProxyError::ClientGone);
                }
                continue;
            },
            _ = monoio::time::sleep(wait) => {
                if out.started() {
                    continue;
                }
                ex.cancel().await;
                return Err(ProxyError::Timeout { cluster: cluster.to_owned(), after: head_deadline });
            },
        };
        match ev {
            Some(StreamEvent::Head { status, fields }) => {
                out.metrics.latency.observe(started.elapsed().as_secs_f64());
                // A write answered: the edge has applied it (or refused it) by now.
                if let Some(f) = written {
                    f.wrote(Instant::now());
                }
                if let Err(e) = out.head(conn, status, &fields).await {
                    ex.cancel().await;
                    return Err(e);
                }
            }
            Some(StreamEvent::Data(data)) => {
                if let Err(e) = out.data(conn, &data).await {
                    ex.cancel().await;
                    return Err(e);
                }
                // Credit goes back in batches: once enough is owed, or whenever this consumer
                // has caught up (nothing more queued), so the agent never waits on us.
                unreleased += data.len() as u32;
                if unreleased >= RELEASE_BATCH || !ex.has_queued() {
                    ex.release(std::mem::take(&mut unreleased)).await;
                }
            }
            Some(StreamEvent::Trailers(_)) => {}
            Some(StreamEvent::End) => return Ok(out.end(conn).await),
            Some(StreamEvent::Reset(code)) => {
                return Err(ProxyError::AgentReset {
                    cluster: cluster.to_owned(),
                    code,
                })
            }
            None => {
                return Err(ProxyError::Offline {
                    cluster: cluster.to_owned(),
                    why: "its tunnel closed",
                })
            }
        }
    }
}
