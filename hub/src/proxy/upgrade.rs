//! `upgrade`: connections that switch protocols — `kubectl exec`, `attach`, `cp` and
//! `port-forward` (WebSocket, or SPDY/3.1 when kubectl falls back) — carried through the
//! tunnel as raw bytes.
//!
//! The request goes to the agent with its whole query and its `Connection: Upgrade` /
//! `Upgrade` / `Sec-WebSocket-*` / `X-Stream-Protocol-Version` fields on a *duplex* stream
//! (the hub's half stays open). The edge decides:
//! * **101**: its head goes to the client as it came, and from then on [`splice`] moves bytes
//!   both ways on the one tunnel stream, with the stream's flow control in each direction (a
//!   client that stops reading stops the agent after one window; the agent's window stops a
//!   client that sends faster than the edge takes). Neither side's bytes are interpreted.
//! * **anything else** passes through unchanged (kubectl reads a refused WebSocket upgrade and
//!   falls back to SPDY on a new request), and the stream is closed.
//!
//! Ends: the client closing its side (EOF or TLS close_notify) ends the hub's half (the agent
//! half-closes the edge connection) and the edge's remaining bytes still reach the client;
//! the edge closing its side ends the agent's half, and the hub then closes the client's
//! (close_notify, then the socket's write side). Once one side ended, the other has
//! [`LINGER`] after the last byte to end too, then the session is ended for it. The agent going away (RESET, or its tunnel closing) ends the session at once:
//! the client's connection is cut without TLS close_notify (so it cannot pass for a clean
//! end), and kubectl reports the error and exits non-zero. A session silent
//! both ways for `limits.upgrade_idle_timeout_ms` is closed.
//!
//! Every session is an audit event twice (`proxy::observe`: `ResponseStarted` at the 101,
//! `ResponseComplete` at the end, annotated with how it ended, the exit status and the bytes
//! each way — [`Ended::annotate`]), and is logged twice on the `kubehub::audit` target: when it starts (who, which
//! cluster, namespace, pod, container, command or ports, protocol) and when it ends (how,
//! how long, bytes each way, and the command's exit status when the agent reported one in
//! the stream's trailers, field [`EXIT_TRAILER`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kubehub_access::Identity;
use kubehub_kapi::request_info::RequestInfo;
use kubehub_wire::Fields;
use tracing::info;

use super::backend::{Downlink, Exchange, Uplink};
use super::Conn;
use crate::http;
use crate::metrics::{Metrics, SessionLabel};
use crate::registry::StreamEvent;

/// After one side ended its half, how long the other has (from the last byte either way) to
/// end its own before the hub ends the session.
pub const LINGER: Duration = Duration::from_secs(30);

/// The trailer field in which the agent reports an exec's exit status (`0`, or the `Status`
/// reason and exit code it read off the session's error channel).
pub const EXIT_TRAILER: &str = "KubeHub-Exit-Status";

/// Response bytes written before their credit goes back (as in `respond`).
const RELEASE_BATCH: u32 = 32 * 1024;

/// At most this many queued chunks go to the client in one write.
const WRITE_BATCH: usize = 64;

/// The fields of an upgrade request as forwarded: the end-to-end fields (which already
/// include `Sec-WebSocket-*` and `X-Stream-Protocol-Version`), plus the upgrade itself, which
/// is hop-by-hop and was dropped with the rest.
pub fn forward_fields(fields: &mut Fields, protocol: &[u8]) {
    fields.push((
        Bytes::from_static(b"Connection"),
        Bytes::from_static(b"Upgrade"),
    ));
    fields.push((
        Bytes::from_static(b"Upgrade"),
        Bytes::copy_from_slice(protocol),
    ));
}

/// Who asked for what: the audit record of one session. Its span (target `kubehub::audit`)
/// carries who and what — kind, user, tenant, cluster, namespace, pod, container, command (or
/// ports), tty, stdin, protocol — so each of its log lines says it once.
#[derive(Debug)]
pub struct Session {
    kind: &'static str,
    span: tracing::Span,
    started: Instant,
}

impl Session {
    /// The record of a session about to be forwarded.
    pub fn new(
        id: &Identity,
        cluster: &str,
        info: &RequestInfo<'_>,
        query: &str,
        protocol: &[u8],
        offered: Option<&[u8]>,
    ) -> Session {
        let kind = match info.subresource {
            "exec" => "exec",
            "attach" => "attach",
            "portforward" => "portforward",
            _ => "other",
        };
        let (mut command, mut container, mut tty, mut stdin) =
            (Vec::new(), String::new(), false, false);
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "command" | "ports" => command.push(v.into_owned()),
                "container" => container = v.into_owned(),
                "tty" => tty = v == "true" || v == "1",
                "stdin" => stdin = v == "true" || v == "1",
                _ => {}
            }
        }
        let mut protocol = String::from_utf8_lossy(protocol).into_owned();
        if let Some(o) = offered {
            protocol.push_str(" (");
            protocol.push_str(&String::from_utf8_lossy(o));
            protocol.push(')');
        }
        let span = tracing::info_span!(
            target: "kubehub::audit",
            "session",
            kind,
            user = %id.user,
            tenant = %id.tenant,
            cluster = %cluster,
            namespace = %info.namespace,
            pod = %info.name,
            container = %container,
            command = %shell_words(&command),
            tty,
            stdin,
            protocol = %protocol,
        );
        Session {
            kind,
            span,
            started: Instant::now(),
        }
    }

    /// Logs the start, once the edge switched protocols.
    fn log_start(&self, chosen: &str) {
        info!(
            target: "kubehub::audit",
            parent: &self.span,
            event = "session_start",
            chosen = %chosen,
            "{} session started", self.kind
        );
    }

    fn log_end(&self, end: End, stats: &Stats, exit: Option<&str>) {
        info!(
            target: "kubehub::audit",
            parent: &self.span,
            event = "session_end",
            end = end.as_str(),
            exit = exit.unwrap_or("unknown"),
            duration_ms = self.started.elapsed().as_millis() as u64,
            bytes_from_client = stats.from_client.get(),
            bytes_to_client = stats.to_client.get(),
            "{} session ended", self.kind
        );
    }

    /// The edge refused to switch (its answer goes to the client as it is).
    pub fn log_refused(&self, status: u16) {
        info!(
            target: "kubehub::audit",
            parent: &self.span,
            event = "session_refused",
            status,
            "{} upgrade answered {status}", self.kind
        );
    }
}

/// A command line as a person would type it: words with spaces or quotes are quoted.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Both sides ended their halves.
    Closed,
    /// The client's connection failed; or one side ended and the other did not follow within
    /// [`LINGER`] (a client that closed its connection is gone: these protocols end inside).
    ClientGone,
    /// The agent reset the stream or its tunnel went away.
    AgentGone,
    /// Nothing moved either way for the idle limit.
    Idle,
    /// Ended by the hub: its party was banned or its token revoked (`bans`).
    Ended,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientGone => "client_gone",
            End::AgentGone => "agent_gone",
            End::Idle => "idle",
            End::Ended => "banned",
        }
    }
}

#[derive(Debug, Default)]
struct Stats {
    from_client: Cell<u64>,
    to_client: Cell<u64>,
    /// When a byte last moved either way.
    active: Cell<Option<Instant>>,
}

impl Stats {
    fn touch(&self) {
        self.active.set(Some(Instant::now()));
    }
}

/// How one direction ended: `Ok` once its sender ended its side, else how the session
/// broke.
type Half = Result<(), End>;

/// How a session went, for its audit event.
#[derive(Debug)]
pub struct Ended {
    /// How it ended.
    pub end: End,
    /// The exit status the agent reported, if any.
    pub exit: Option<String>,
    /// Bytes from the client.
    pub from_client: u64,
    /// Bytes to the client.
    pub to_client: u64,
    /// The protocol chosen (`v5.channel.k8s.io`, …).
    pub chosen: String,
}

impl Ended {
    /// Annotates the request's audit event (`kubehub.io/session-end`, `…/exit-status`,
    /// `…/bytes-from-client`, `…/bytes-to-client`, `…/protocol`) and counts its bytes.
    pub fn annotate(&self, rec: &super::observe::Record) {
        rec.annotate("kubehub.io/session-end", self.end.as_str().to_owned());
        if let Some(exit) = &self.exit {
            rec.annotate("kubehub.io/exit-status", exit.clone());
        }
        rec.annotate("kubehub.io/bytes-from-client", self.from_client.to_string());
        rec.annotate("kubehub.io/bytes-to-client", self.to_client.to_string());
        if !self.chosen.is_empty() {
            rec.annotate("kubehub.io/protocol", self.chosen.clone());
        }
        rec.bytes_in.set(rec.bytes_in.get() + self.from_client);
        rec.bytes_out.set(rec.bytes_out.get() + self.to_client);
    }
}

/// Writes the 101 and moves bytes both ways until the session ends; the connection is done
/// afterwards (it is no longer HTTP).
pub async fn splice(
    conn: &mut Conn,
    ex: Exchange,
    fields: &Fields,
    session: &Session,
    metrics: &Metrics,
    idle: Duration,
) -> Ended {
    let chosen = fields
        .iter()
        .find(|(n, _)| {
            n.eq_ignore_ascii_case(b"sec-websocket-protocol")
                || n.eq_ignore_ascii_case(b"x-stream-protocol-version")
        })
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    if conn
        .wr
        .write_all(&[&http::switching_protocols_head(fields)])
        .await
        .is_err()
    {
        ex.cancel().await;
        return Ended {
            end: End::ClientGone,
            exit: None,
            from_client: 0,
            to_client: 0,
            chosen,
        };
    }
    session.log_start(&chosen);
    metrics.sessions_open.inc();
    let (end, stats, exit) = exchange(conn, ex, idle, session.started).await;
    metrics.sessions_open.dec();
    metrics
        .sessions
        .get_or_create(&SessionLabel {
            kind: session.kind,
            end: end.as_str(),
        })
        .inc();
    session.log_end(end, &stats, exit.as_deref());
    Ended {
        end,
        exit,
        from_client: stats.from_client.get(),
        to_client: stats.to_client.get(),
        chosen,
    }
}

/// Moves bytes both ways on `ex` until the session ends, as [`splice`] does after its 101,
/// for a session whose 101 is among the bytes (a request carried to another hub, which
/// writes it). The connection is done afterwards.
pub async fn pump(conn: &mut Conn, ex: Exchange, idle: Duration, started: Instant) -> End {
    exchange(conn, ex, idle, started).await.0
}

/// Both directions until the session ends: how, the byte counts, the exit status the agent
/// reported. Ends the client's connection (cleanly, or cut when the session broke).
async fn exchange(
    conn: &mut Conn,
    ex: Exchange,
    idle: Duration,
    started: Instant,
) -> (End, Stats, Option<String>) {
    let (mut up, mut down) = ex.split();
    let stats = Stats::default();
    stats.touch();
    let exit: Cell<Option<String>> = Cell::new(None);
    let leftover = conn.buf.split().freeze();
    let Conn {
        inbound, wr, stop, ..
    } = conn;

    let end = {
        let mut to_agent = pin!(client_to_agent(inbound, &mut up, leftover, &stats));
        let mut to_client = pin!(agent_to_client(wr, &mut down, &stats, &exit));
        let (mut upward, mut downward) = (None, None);
        let mut stopped = pin!(async {
            match stop {
                Some(s) => s.wait().await,
                None => std::future::pending().await,
            }
        });
        let mut timer = pin!(monoio::time::sleep(idle));
        let mut timer_at = Instant::now() + idle;
        std::future::poll_fn(|cx| loop {
            if upward.is_none() {
                if let Poll::Ready(h) = to_agent.as_mut().poll(cx) {
                    upward = Some(h);
                }
            }
            if downward.is_none() {
                if let Poll::Ready(h) = to_client.as_mut().poll(cx) {
                    downward = Some(h);
                }
            }
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(End::Ended);
            }
            match (upward, downward) {
                (Some(Ok(())), Some(Ok(()))) => return Poll::Ready(End::Closed),
                (_, Some(Err(e))) | (Some(Err(e)), _) => return Poll::Ready(e),
                _ => {}
            }
            // Idle limit while both sides are open; once one side ended, the other has
            // LINGER (after the last byte either way) to end too. Clients end these protocols
            // inside them, so a client's EOF usually means it is gone: the edge is given the
            // time to finish what it was sending, not the idle limit.
            let limit = if downward.is_some() || upward.is_some() {
                LINGER.min(idle)
            } else {
                idle
            };
            let since = stats.active.get().unwrap_or(started);
            let due = since + limit;
            if Instant::now() >= due {
                return Poll::Ready(if upward.is_none() && downward.is_none() {
                    End::Idle
                } else {
                    End::ClientGone
                });
            }
            if due != timer_at {
                timer_at = due;
                timer.set(monoio::time::sleep(
                    due.saturating_duration_since(Instant::now()),
                ));
            }
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => continue,
                Poll::Pending => return Poll::Pending,
            }
        })
        .await
    };
    if end == End::Closed {
        let _ = conn.wr.close().await;
    } else {
        // Whatever is left at the agent (the edge connection, the stream) goes, and the
        // client is told the session broke: no close_notify, so TLS reports the stream cut
        // short instead of a clean end kubectl could take for success.
        up.cancel().await;
        conn.wr.abort().await;
    }
    let exit = exit.take();
    (end, stats, exit)
}

/// The client's bytes to the agent, one chunk in flight; at the client's EOF the hub's half
/// of the stream ends.
async fn client_to_agent(
    inbound: &mut tokio::sync::mpsc::Receiver<bytes::BytesMut>,
    up: &mut Uplink,
    leftover: Bytes,
    stats: &Stats,
) -> Half {
    if !leftover.is_empty() {
        stats
            .from_client
            .set(stats.from_client.get() + leftover.len() as u64);
        if !up.send_body(leftover, false).await {
            return Err(End::AgentGone);
        }
    }
    loop {
        match inbound.recv().await {
            Some(chunk) => {
                stats.touch();
                stats
                    .from_client
                    .set(stats.from_client.get() + chunk.len() as u64);
                if !up.send_body(chunk.freeze(), false).await {
                    return Err(End::AgentGone);
                }
            }
            None => {
                tracing::debug!("the client closed its side");
                return if up.send_body(Bytes::new(), true).await {
                    Ok(())
                } else {
                    Err(End::AgentGone)
                };
            }
        }
    }
}

/// The edge's bytes to the client, in batches of whatever is queued (whole TLS records),
/// credit returned as they are written; at the agent's END the client's side is closed.
async fn agent_to_client(
    wr: &mut super::Writer,
    down: &mut Downlink,
    stats: &Stats,
    exit: &Cell<Option<String>>,
) -> Half {
    let mut unreleased: u32 = 0;
    let mut batch: Vec<Bytes> = Vec::with_capacity(WRITE_BATCH);
    loop {
        let mut next = take(down.next().await, &mut batch, exit);
        while next == Step::More && batch.len() < WRITE_BATCH {
            match down.try_next() {
                Some(ev) => next = take(Some(ev), &mut batch, exit),
                None => break,
            }
        }
        if !batch.is_empty() {
            let parts: Vec<&[u8]> = batch.iter().map(|b| &b[..]).collect();
            let n: usize = parts.iter().map(|p| p.len()).sum();
            if wr.write_all(&parts).await.is_err() {
                return Err(End::ClientGone);
            }
            stats.touch();
            stats.to_client.set(stats.to_client.get() + n as u64);
            unreleased += n as u32;
            batch.clear();
            if unreleased >= RELEASE_BATCH || !down.has_queued() {
                down.release(std::mem::take(&mut unreleased)).await;
            }
        }
        match next {
            Step::More => {}
            Step::Ended => {
                let _ = wr.close().await;
                return Ok(());
            }
            Step::Broken => return Err(End::AgentGone),
        }
    }
}

/// What an event from the agent means for the client's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    More,
    Ended,
    Broken,
}

/// Takes one event: bytes join the batch, the exit status is kept.
fn take(ev: Option<StreamEvent>, batch: &mut Vec<Bytes>, exit: &Cell<Option<String>>) -> Step {
    match ev {
        Some(StreamEvent::Data(d)) => {
            batch.push(d);
            Step::More
        }
        Some(StreamEvent::Trailers(t)) => {
            if let Some((_, v)) = t
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(EXIT_TRAILER.as_bytes()))
            {
                exit.set(Some(String::from_utf8_lossy(v).into_owned()));
            }
            Step::More
        }
        Some(StreamEvent::Head { .. }) => Step::More,
        Some(StreamEvent::End) => Step::Ended,
        Some(StreamEvent::Reset(_)) | None => Step::Broken,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_logged_as_typed() {
        let words = |w: &[&str]| shell_words(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(words(&["ls", "-la", "/tmp"]), "ls -la /tmp");
        assert_eq!(words(&["sh", "-c", "exit 3"]), "sh -c 'exit 3'");
        assert_eq!(words(&["echo", "it's"]), r"echo 'it'\''s'");
        assert_eq!(words(&["echo", ""]), "echo ''");
    }
}
