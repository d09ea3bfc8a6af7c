//! The connection engine: one [`Connection`] per tunnel, sans-IO, driven alike by the hub
//! (monoio) and the agent (tokio), in the manner of quinn-proto's `Connection`.
//!
//! A `Connection` owns everything a tunnel needs after the handshake: the [`Session`] (every
//! rule check), the decoder, the stream table, the per-stream send buffers, the control frames
//! still to send, the keepalive and drain timers, and the events for the application. It does
//! no IO and never reads a clock: the driver hands it bytes and the current [`Instant`], and
//! pulls bytes, events and the next timer deadline out of it.
//!
//! # Driving it
//!
//! ```text
//! loop {
//!     bytes read into `buf`        → conn.handle_bytes(&mut buf, now)
//!     the transport hit EOF/error  → conn.transport_closed("…")
//!     the timer fired              → conn.handle_timeout(now)
//!     application commands         → conn.open_request / send_data / release / reset / …
//!     while let Some(ev) = conn.poll_event() { … }          // after every input above
//!     while conn.has_transmit() && room in the write buffer {
//!         conn.poll_transmit(&mut encode_buf, room);         // then write encode_buf out
//!     }
//!     sleep until conn.poll_timeout(), or until more input / commands
//!     if conn.is_closed() && !conn.has_transmit() && encode_buf is written { shut down }
//! }
//! ```
//!
//! Once [`Connection::is_closed`] is true the connection may still hold frames to send (the
//! GOAWAY of a close, credit, ping answers): keep calling `poll_transmit` until `has_transmit`
//! is false and the write buffer is flushed, then close the transport.
//!
//! # Guarantees
//!
//! * **Control frames are never dropped.** Every frame the engine decides to send is queued
//!   inside it; the driver only pulls bytes. In particular a WINDOW_UPDATE owed after
//!   [`Connection::release`] is always sent eventually, however long the transport is full,
//!   and the GOAWAY of a protocol error or a close goes out before the connection ends.
//! * **The control queue is bounded by coalescing, not by dropping**: at most one pending
//!   PING answer (the latest opaque), one keepalive PING, one connection-level WINDOW_UPDATE
//!   (increments summed), one WINDOW_UPDATE per open stream (summed), one RESET per stream,
//!   one DISCOVERY (the latest report), one SYNC_REQUEST (the latest set), one
//!   PROGRESS_REQUEST per sync stream (the latest `seq`), one GOAWAY. So it is O(open
//!   streams) whatever the peer sends. RESETs are queued only for streams the peer opened or
//!   that we opened; a compliant peer keeps at most
//!   `local.max_concurrent_streams + remote.max_concurrent_streams` of them pending, and a peer
//!   that provokes more while not reading our answers gets GOAWAY `ENHANCE_YOUR_CALM`.
//! * **Output order**: control frames first (PING answers, PING, WINDOW_UPDATE, RESET,
//!   DISCOVERY, SYNC_REQUEST, PROGRESS_REQUEST), then REQUEST heads of newly opened streams
//!   (in stream id order, as the peer requires), then GOAWAY (so no stream opens after it; a
//!   close drops unsent heads, so its GOAWAY is the last frame), then stream frames. Within a
//!   stream the order is the application's (RESPONSE head, DATA…, END; on a sync stream the
//!   snapshot frames, watch events and PROGRESS). Across streams, frames go round-robin, one
//!   frame per stream per turn, so one big stream does not starve the others; a stream without
//!   window is set aside until credit arrives and never blocks others.
//! * **Send buffers hold what the application gave, no more**: `send_data` appends the
//!   [`Bytes`] as they are (no copy; split with [`Bytes::split_to`] into frames of at most
//!   `max_data_frame` and the window). The application paces itself with
//!   [`Connection::is_writable`] and [`Event::Writable`].
//! * **Streams are freed** once both halves are done (our last frame encoded and the peer's
//!   received), or when they are reset.
//!
//! # Sync streams
//!
//! The hub says which resource types it wants with [`Connection::send_sync_request`] (the
//! whole set each time; the agent gets [`Event::SyncRequest`]). The agent opens one sync
//! stream per wanted type it serves with [`Connection::open_sync`], then queues snapshot
//! items, the snapshot's end and watch events ([`Connection::send_snapshot_items`],
//! [`Connection::send_snapshot_end`], [`Connection::send_watch_event`]; a relist restarts with
//! [`Connection::send_snapshot_begin`]). Each goes out whole once the windows allow; the
//! hub (with [`ConnConfig::accept_sync`]) gets them as [`Event::Sync`] and releases their
//! credit once applied, which is what slows an agent whose hub falls behind.
//!
//! For a consistent read the hub asks how current a stream is with
//! [`Connection::request_progress`]; the agent gets [`Event::ProgressRequest`] and answers
//! with [`Connection::send_progress`]. PROGRESS takes no window but is queued with the
//! stream's other frames, so it reaches the hub after every change queued before it (it waits
//! with them while the stream waits for credit); the hub gets it as [`Event::Sync`].
//! SYNC_REQUEST needs CACHE_SYNC in [`ConnConfig::capabilities`] on both sides.
//!
//! # Events of a stream
//!
//! The peer's half of a stream ends with the `end_stream` flag of [`Event::Request`],
//! [`Event::Response`] or [`Event::Data`], or with [`Event::End`] (an END frame, with
//! trailers); exactly one of these per stream. [`Event::Reset`] ends the stream in both
//! directions; no event for the stream follows it. A Reset may follow the peer's end when our
//! own half was not finished yet. A local [`Connection::reset`] produces no event.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Decoder, EncodeBuf, MAX_WINDOW};
use crate::error::ErrorCode;
use crate::frame::{
    Capabilities, Data, Discovery, End, EventType, Fields, Frame, GoAway, Ping, Progress,
    ProgressRequest, Request, Reset, ResourceKey, Response, Settings, SnapshotBegin, SnapshotEnd,
    SnapshotItems, StreamId, SyncRequest, WatchEvent, WindowUpdate,
};
use crate::session::{Role, Session, SessionError, StreamKind, StreamState};

/// GOAWAY messages (and the messages of [`CloseReason`]) are cut to this many bytes.
const MAX_MESSAGE: usize = 1024;

/// Slack above the RESET bound a compliant peer can cause (see the module docs).
const RESET_SLACK: usize = 16;

/// How a [`Connection`] behaves; the protocol settings come from the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnConfig {
    /// PING the peer every `keepalive` (each time the timer fires); if nothing at all was
    /// received for 3 × `keepalive`, close with GOAWAY(`NO_ERROR`, "keepalive timeout") and
    /// [`CloseReason::KeepaliveTimeout`]. `Duration::ZERO` disables both.
    pub keepalive: Duration,
    /// Outgoing DATA payloads are split into frames of at most this many bytes (and never
    /// more than the peer's `max_frame_size`). 0 counts as 1.
    pub max_data_frame: usize,
    /// Bytes per stream accepted from the application before the stream stops being
    /// writable ([`Connection::is_writable`]). Data beyond it is still accepted.
    pub send_buffer: usize,
    /// The peer may open request streams (the agent: `true`). If `false`, a peer's REQUEST is
    /// answered with RESET `REFUSED_STREAM` and no event.
    pub accept_requests: bool,
    /// The peer may open sync streams (SNAPSHOT_BEGIN). If `false`, they are answered with
    /// RESET `REFUSED_STREAM` and no event; if `true`, their frames arrive as [`Event::Sync`].
    pub accept_sync: bool,
    /// The capabilities the handshake agreed ([`crate::handshake::Agreed::capabilities`]).
    /// Without [`Capabilities::CACHE_SYNC`], SYNC_REQUEST is neither sent
    /// ([`Connection::send_sync_request`] fails) nor accepted (a connection error).
    pub capabilities: Capabilities,
}

impl Default for ConnConfig {
    /// Keepalive 15 s, 64 KiB DATA frames, 256 KiB send buffer, the peer may open nothing, no
    /// capabilities.
    fn default() -> Self {
        ConnConfig {
            keepalive: Duration::from_secs(15),
            max_data_frame: 64 * 1024,
            send_buffer: 256 * 1024,
            accept_requests: false,
            accept_sync: false,
            capabilities: Capabilities::default(),
        }
    }
}

/// Who ended a stream, in [`Event::Reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetOrigin {
    /// The peer sent RESET (or refused the stream: GOAWAY named a lower last stream id).
    Peer,
    /// The peer broke a rule of this stream; we sent RESET with the code.
    StreamError,
    /// Our drain deadline passed while the stream was open; we sent RESET `CANCEL`.
    Drain,
    /// The whole connection closed (code `CANCEL`; the reason is in [`Event::Closed`]).
    ConnectionClosed,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// [`Connection::close`] was called; GOAWAY with `code` sent.
    Local {
        /// The GOAWAY code.
        code: ErrorCode,
        /// The GOAWAY message.
        message: String,
    },
    /// The peer broke a connection rule or sent bytes that do not decode; GOAWAY sent.
    Protocol {
        /// The GOAWAY code.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The peer sent GOAWAY and no stream is left.
    PeerGoAway {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// Nothing was received for three keepalive intervals; GOAWAY sent.
    KeepaliveTimeout,
    /// Our graceful drain ([`Connection::go_away`]) finished: no stream is left.
    Drained,
    /// The driver reported that the transport ended ([`Connection::transport_closed`]).
    TransportClosed {
        /// What the driver said.
        message: String,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Local { code, message } => write!(f, "closed locally ({code}): {message}"),
            CloseReason::Protocol { code, message } => {
                write!(f, "peer broke the protocol ({code}): {message}")
            }
            CloseReason::PeerGoAway { code, message } => {
                write!(f, "peer went away ({code}): {message}")
            }
            CloseReason::KeepaliveTimeout => {
                f.write_str("peer silent for three keepalive intervals")
            }
            CloseReason::Drained => f.write_str("drained"),
            CloseReason::TransportClosed { message } => write!(f, "transport closed: {message}"),
        }
    }
}

/// What happened, for the application. Drain with [`Connection::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The peer opened a request stream (only with [`ConnConfig::accept_requests`]).
    Request {
        /// The new stream.
        id: StreamId,
        /// HTTP method.
        method: Bytes,
        /// Path and query.
        path: Bytes,
        /// Header fields.
        fields: Fields,
        /// The peer's half ended with the head (no request body).
        end_stream: bool,
    },
    /// The response head of a stream we opened.
    Response {
        /// The stream.
        id: StreamId,
        /// HTTP status.
        status: u16,
        /// Header fields.
        fields: Fields,
        /// The peer's half ended with the head (no response body).
        end_stream: bool,
    },
    /// Body bytes. Empty DATA without END_STREAM produces no event. Call
    /// [`Connection::release`]`(id, data.len())` once the bytes are consumed, or the peer
    /// stops after one window.
    Data {
        /// The stream.
        id: StreamId,
        /// The bytes (a slice of the read buffer).
        data: Bytes,
        /// The peer's half ended with these bytes.
        end_stream: bool,
    },
    /// The peer ended its half with an END frame.
    End {
        /// The stream.
        id: StreamId,
        /// Trailer fields.
        trailers: Fields,
    },
    /// The stream ended in both directions; nothing more comes for it and commands on it
    /// fail.
    Reset {
        /// The stream.
        id: StreamId,
        /// The RESET code (`CANCEL` for [`ResetOrigin::Drain`] and
        /// [`ResetOrigin::ConnectionClosed`]; `REFUSED_STREAM` for streams a peer's GOAWAY
        /// left unprocessed).
        code: ErrorCode,
        /// Who ended it.
        origin: ResetOrigin,
    },
    /// The stream may take more data: its send buffer dropped below `send_buffer` after
    /// having been at or above it, or it became empty (everything given was encoded). Both at
    /// once give one event. Only while the application's sending half is open.
    Writable {
        /// The stream.
        id: StreamId,
    },
    /// The peer sent GOAWAY: it opens no new streams and new local opens fail with
    /// [`OpenError::Closing`]. Streams it processed may finish; the connection closes with
    /// [`CloseReason::PeerGoAway`] once none is left.
    GoAway {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// The agent's resource types (hub side).
    Discovery(Discovery),
    /// A frame of a sync stream the peer opened (only with [`ConnConfig::accept_sync`]):
    /// SNAPSHOT_BEGIN (opening or restarting it), SNAPSHOT_ITEMS, SNAPSHOT_END, WATCH_EVENT or
    /// PROGRESS (the answer to [`Connection::request_progress`], or unsolicited with `seq`
    /// 0). END arrives as [`Event::End`].
    Sync {
        /// The stream.
        id: StreamId,
        /// The frame.
        frame: Frame,
        /// Flow-controlled bytes the frame used: pass them to [`Connection::release`] once
        /// the frame is applied (0 for frames without flow control).
        credit: u32,
    },
    /// The hub's SYNC_REQUEST (agent side): the complete set of resource types it wants
    /// synced from now on, replacing any earlier set. Open a sync stream
    /// ([`Connection::open_sync`]) for each type served and not yet synced, end
    /// ([`Connection::send_end`]) or reset those no longer wanted, ignore types not served.
    SyncRequest(Vec<ResourceKey>),
    /// The hub asks how current sync stream `id` (ours) is (agent side): answer with
    /// [`Connection::send_progress`] and the same `seq`, once every change up to the
    /// resourceVersion answered has been queued on the stream.
    ProgressRequest {
        /// The sync stream.
        id: StreamId,
        /// To echo in the answer.
        seq: u32,
    },
    /// The connection is closed. Exactly once, and the last event.
    Closed(CloseReason),
}

/// Why [`Connection::open_request`] (or [`Connection::send_discovery`],
/// [`Connection::send_sync_request`]) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The peer's concurrent stream limit is reached; retry when a stream ends.
    #[error("the peer's concurrent stream limit is reached")]
    Busy,
    /// A GOAWAY was sent or received, or the connection is closed.
    #[error("the connection is going away")]
    Closing,
    /// The frame would not decode at the peer (a bad token, a field too long, a head larger
    /// than the peer's maximum frame size…) or is not this side's to send.
    #[error("invalid frame: {0}")]
    Invalid(String),
}

/// A stream command failed. The stream is unchanged (or gone).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamGone {
    /// The stream is unknown, was reset, the connection is closed, or the application already
    /// ended its sending half.
    #[error("stream {0} is not open for sending")]
    NotOpen(StreamId),
    /// The command breaks the stream's rules (DATA before RESPONSE, RESPONSE from the
    /// requester, a second RESPONSE) or its frame would not decode at the peer.
    #[error("stream {id}: {reason}")]
    Invalid {
        /// The stream.
        id: StreamId,
        /// What is wrong.
        reason: String,
    },
}

/// The application's end of its sending half.
#[derive(Debug)]
enum Fin {
    /// More may come.
    Open,
    /// END_STREAM goes on the last buffered DATA (or an empty DATA).
    Flag,
    /// An END frame with these trailers goes after the buffered DATA.
    Trailers(Fields),
    /// Encoded, or carried by a queued head, or never ours to send (a sync stream we receive).
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sched {
    /// Nothing to send, or not yet (REQUEST head still in `opens`).
    Idle,
    /// In `ready`.
    Ready,
    /// DATA waiting for window, in `blocked`.
    Blocked,
}

#[derive(Debug)]
struct Stream {
    /// We opened it.
    local: bool,
    kind: StreamKind,
    /// Our REQUEST is on the wire (always true for streams the peer opened).
    head_sent: bool,
    /// Responder: the RESPONSE head waiting to be encoded.
    response: Option<Response>,
    /// Responder: RESPONSE was queued (body may follow).
    responded: bool,
    data: VecDeque<Bytes>,
    /// Sync streams we opened: SNAPSHOT_BEGIN (a restart), SNAPSHOT_ITEMS, SNAPSHOT_END and
    /// WATCH_EVENT frames in the application's order (their flow-controlled bytes count in
    /// `buffered`). A frame is never split: it waits until the window takes it whole.
    sync: VecDeque<Frame>,
    /// Sync streams: the application is inside a snapshot (checked when it queues frames, so
    /// the session never refuses one at transmit time).
    in_snapshot: bool,
    /// Sync streams we opened: the resource type (repeated in a restarting SNAPSHOT_BEGIN).
    key: Option<ResourceKey>,
    buffered: usize,
    fin: Fin,
    sched: Sched,
}

impl Stream {
    /// A frame is waiting (the opening head is scheduled apart, through `opens`).
    fn has_next(&self) -> bool {
        self.response.is_some()
            || !self.data.is_empty()
            || !self.sync.is_empty()
            || matches!(self.fin, Fin::Flag | Fin::Trailers(_))
    }

    /// The application may still send on it.
    fn app_open(&self) -> bool {
        matches!(self.fin, Fin::Open)
    }
}

/// One tunnel connection after the handshake. See the [module docs](self).
#[derive(Debug)]
pub struct Connection {
    cfg: ConnConfig,
    session: Session,
    decoder: Decoder,
    /// Largest DATA payload per frame.
    max_frame: usize,
    /// Boxed: a table sized for a past burst of streams then costs a pointer per slot, not a
    /// whole stream.
    streams: HashMap<StreamId, Box<Stream>>,
    /// Opening frames (REQUEST, SNAPSHOT_BEGIN) of streams we opened, in id order.
    opens: VecDeque<Frame>,
    /// Streams with a frame to send, round-robin.
    ready: VecDeque<StreamId>,
    /// Streams whose next DATA waits for window.
    blocked: BTreeSet<StreamId>,
    // The control queue.
    ping_ack: Option<u64>,
    ping_out: Option<u64>,
    conn_credit: u32,
    stream_credit: BTreeMap<StreamId, u32>,
    resets: BTreeMap<StreamId, ErrorCode>,
    discovery: Option<Discovery>,
    sync_request: Option<SyncRequest>,
    /// PROGRESS_REQUESTs on sync streams the peer opened: the latest `seq` per stream.
    progress_requests: BTreeMap<StreamId, u32>,
    goaway: Option<GoAway>,
    reset_limit: usize,
    // Lifecycle.
    events: VecDeque<Event>,
    closed: Option<CloseReason>,
    drain_deadline: Option<Instant>,
    peer_goaway: Option<(ErrorCode, String)>,
    // Keepalive.
    last_recv: Instant,
    next_ping: Option<Instant>,
    ping_seq: u64,
}

impl Connection {
    /// A connection after the handshake (see [`crate::handshake::Agreed`]): `local` are the
    /// settings this side announced (what it receives; incoming frames are decoded against
    /// its `max_frame_size`), `remote` the peer's. `now` starts the keepalive timers.
    pub fn new(
        role: Role,
        local: Settings,
        remote: Settings,
        cfg: ConnConfig,
        now: Instant,
    ) -> Connection {
        let max_frame = cfg
            .max_data_frame
            .clamp(1, remote.max_frame_size.max(1) as usize);
        let reset_limit = (local.max_concurrent_streams as usize)
            .saturating_add(remote.max_concurrent_streams as usize)
            .saturating_add(RESET_SLACK);
        let next_ping = if cfg.keepalive.is_zero() {
            None
        } else {
            now.checked_add(cfg.keepalive)
        };
        Connection {
            session: Session::new(role, local, remote, cfg.capabilities),
            decoder: Decoder::new(local.max_frame_size),
            max_frame,
            cfg,
            streams: HashMap::new(),
            opens: VecDeque::new(),
            ready: VecDeque::new(),
            blocked: BTreeSet::new(),
            ping_ack: None,
            ping_out: None,
            conn_credit: 0,
            stream_credit: BTreeMap::new(),
            resets: BTreeMap::new(),
            discovery: None,
            sync_request: None,
            progress_requests: BTreeMap::new(),
            goaway: None,
            reset_limit,
            events: VecDeque::new(),
            closed: None,
            drain_deadline: None,
            peer_goaway: None,
            last_recv: now,
            next_ping,
            ping_seq: 0,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Input

    /// Decodes and handles every whole frame at the front of `buf` (bytes of a partial frame
    /// stay in it). Bytes that do not decode close the connection: GOAWAY with the error's
    /// code and message, [`CloseReason::Protocol`]. Nothing is decoded once closed.
    pub fn handle_bytes(&mut self, buf: &mut BytesMut, now: Instant) {
        while self.closed.is_none() {
            match self.decoder.decode(buf) {
                Ok(Some(frame)) => self.handle_frame(frame, now),
                Ok(None) => break,
                Err(e) => {
                    let code = e.code();
                    let message = e.to_string();
                    self.close_with(
                        CloseReason::Protocol {
                            code,
                            message: message.clone(),
                        },
                        Some((code, message)),
                    );
                }
            }
        }
    }

    /// Handles one decoded frame from the peer. Any frame restarts the silence timer.
    /// Ignored once closed.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        self.last_recv = now;
        self.recv_frame(frame);
        self.after_op();
    }

    /// Runs the timers: the drain deadline (remaining streams are reset), the silence timeout
    /// (close), the keepalive PING. Call it when [`Connection::poll_timeout`] has passed;
    /// calling it early or often is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed.is_some() {
            return;
        }
        if self.drain_deadline.is_some_and(|d| now >= d) {
            for id in self.stream_ids() {
                self.emit(Event::Reset {
                    id,
                    code: ErrorCode::CANCEL,
                    origin: ResetOrigin::Drain,
                });
                self.reset_stream(id, ErrorCode::CANCEL);
            }
            self.after_op();
            if self.closed.is_some() {
                return;
            }
        }
        if self.silence_deadline().is_some_and(|d| now >= d) {
            self.close_with(
                CloseReason::KeepaliveTimeout,
                Some((ErrorCode::NO_ERROR, "keepalive timeout".into())),
            );
            return;
        }
        if self.next_ping.is_some_and(|t| now >= t) {
            if self.ping_out.is_none() {
                self.ping_seq = self.ping_seq.wrapping_add(1);
                self.ping_out = Some(self.ping_seq);
            }
            self.next_ping = now.checked_add(self.cfg.keepalive);
        }
        self.after_op();
    }

    /// When [`Connection::handle_timeout`] must next be called; `None` once closed (or with
    /// keepalive disabled and no drain running).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed.is_some() {
            return None;
        }
        [self.next_ping, self.silence_deadline(), self.drain_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The driver's transport ended (EOF, read or write error): every stream is reported
    /// [`Event::Reset`] with [`ResetOrigin::ConnectionClosed`], the connection closes with
    /// [`CloseReason::TransportClosed`] (unless already closed), and whatever was still queued
    /// for sending is discarded.
    pub fn transport_closed(&mut self, message: &str) {
        self.close_with(
            CloseReason::TransportClosed {
                message: truncate(message),
            },
            None,
        );
        self.ping_ack = None;
        self.ping_out = None;
        self.conn_credit = 0;
        self.stream_credit.clear();
        self.resets.clear();
        self.discovery = None;
        self.sync_request = None;
        self.progress_requests.clear();
        self.goaway = None;
    }

    // ---------------------------------------------------------------------------------------
    // Application commands

    /// Opens a request stream; the REQUEST head is sent before any later stream's. Fails with
    /// [`OpenError::Busy`] at the peer's concurrency limit, [`OpenError::Closing`] once a
    /// GOAWAY was sent or received (or the connection closed), [`OpenError::Invalid`] if the
    /// head would not decode at the peer.
    pub fn open_request(
        &mut self,
        method: Bytes,
        path: Bytes,
        fields: Fields,
        end_stream: bool,
    ) -> Result<StreamId, OpenError> {
        let fin = if end_stream { Fin::Done } else { Fin::Open };
        self.open_local(StreamKind::Request, fin, None, |stream_id| {
            Frame::Request(Request {
                stream_id,
                end_stream,
                method,
                path,
                fields,
            })
        })
    }

    /// Opens a sync stream for one resource type (the agent, with the CACHE_SYNC capability):
    /// SNAPSHOT_BEGIN is queued and a snapshot is in progress. Then
    /// [`Connection::send_snapshot_items`]…, [`Connection::send_snapshot_end`], and
    /// [`Connection::send_watch_event`]s; [`Connection::send_snapshot_begin`] restarts the
    /// snapshot (after a relist); [`Connection::send_end`] closes the stream.
    pub fn open_sync(&mut self, resource: ResourceKey) -> Result<StreamId, OpenError> {
        if resource.version.is_empty() || resource.resource.is_empty() {
            return Err(OpenError::Invalid(
                "a sync stream needs a version and a resource".into(),
            ));
        }
        let key = resource.clone();
        self.open_local(StreamKind::Sync, Fin::Open, Some(key), |stream_id| {
            Frame::SnapshotBegin(SnapshotBegin {
                stream_id,
                resource,
            })
        })
    }

    /// Opens a stream of ours with the opening frame `make(id)` (queued in id order).
    fn open_local(
        &mut self,
        kind: StreamKind,
        fin: Fin,
        key: Option<ResourceKey>,
        make: impl FnOnce(StreamId) -> Frame,
    ) -> Result<StreamId, OpenError> {
        if self.closed.is_some() || self.drain_deadline.is_some() || self.peer_goaway.is_some() {
            return Err(OpenError::Closing);
        }
        let id = match self.session.next_stream_id() {
            Ok(id) => id,
            Err(SessionError::Stream { .. }) => return Err(OpenError::Busy),
            Err(SessionError::Connection { .. }) => return Err(OpenError::Closing),
        };
        let frame = make(id);
        self.check_frame(&frame).map_err(OpenError::Invalid)?;
        self.session
            .send(&frame)
            .map_err(|e| OpenError::Invalid(e.to_string()))?;
        self.streams.insert(
            id,
            Box::new(Stream {
                local: true,
                kind,
                head_sent: false,
                response: None,
                responded: false,
                data: VecDeque::new(),
                sync: VecDeque::new(),
                // A sync stream opens with its first snapshot under way.
                in_snapshot: kind == StreamKind::Sync,
                key,
                buffered: 0,
                fin,
                sched: Sched::Idle,
            }),
        );
        self.opens.push_back(frame);
        Ok(id)
    }

    /// The sync stream `id` we opened, for queuing `frame`: it must fit the peer's maximum
    /// frame size, and the snapshot phase must allow it (`inside`: items and end go inside a
    /// snapshot, watch events and PROGRESS outside, a restart anywhere).
    fn queue_sync(
        &mut self,
        id: StreamId,
        frame: Frame,
        inside: Option<bool>,
    ) -> Result<(), StreamGone> {
        let s = self.app_stream(id)?;
        if s.kind != StreamKind::Sync || !s.local {
            return Err(invalid(id, "not a sync stream this side opened"));
        }
        if let Some(inside) = inside {
            if s.in_snapshot != inside {
                let place = if inside { "outside" } else { "inside" };
                let name = frame.frame_type().name();
                return Err(invalid(id, &format!("{name} {place} a snapshot")));
            }
        }
        let max = self.session.remote_settings().max_frame_size as usize;
        let len = codec::body_len(&frame);
        if len > max {
            return Err(invalid(
                id,
                &format!("{len}-byte frame larger than the peer's maximum of {max}"),
            ));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            match &frame {
                Frame::SnapshotBegin(_) => s.in_snapshot = true,
                Frame::SnapshotEnd(_) => s.in_snapshot = false,
                _ => {}
            }
            if frame.frame_type().is_flow_controlled() {
                s.buffered += len;
            }
            s.sync.push_back(frame);
        }
        self.schedule(id);
        Ok(())
    }

    /// Restarts the snapshot of sync stream `id` (the receiver keeps serving the previous
    /// one until the new one ends).
    pub fn send_snapshot_begin(&mut self, id: StreamId) -> Result<(), StreamGone> {
        let resource = match self.opening_key(id) {
            Some(k) => k,
            None => return Err(StreamGone::NotOpen(id)),
        };
        let frame = Frame::SnapshotBegin(SnapshotBegin {
            stream_id: id,
            resource,
        });
        self.queue_sync(id, frame, None)
    }

    /// The resource a sync stream we opened carries.
    fn opening_key(&self, id: StreamId) -> Option<ResourceKey> {
        self.streams.get(&id).and_then(|s| s.key.clone())
    }

    /// A batch of JSON-encoded objects of the snapshot in progress. The batch goes out as one
    /// frame: keep it within the peer's maximum frame size and sync window.
    pub fn send_snapshot_items(
        &mut self,
        id: StreamId,
        items: Vec<Bytes>,
    ) -> Result<(), StreamGone> {
        let frame = Frame::SnapshotItems(SnapshotItems {
            stream_id: id,
            items,
        });
        self.queue_sync(id, frame, Some(true))
    }

    /// Ends the snapshot in progress: consistent as of `resource_version`.
    pub fn send_snapshot_end(
        &mut self,
        id: StreamId,
        resource_version: String,
    ) -> Result<(), StreamGone> {
        check_resource_version(id, &resource_version)?;
        let frame = Frame::SnapshotEnd(SnapshotEnd {
            stream_id: id,
            resource_version,
        });
        self.queue_sync(id, frame, Some(true))
    }

    /// One change after the snapshot: `object` is the JSON-encoded object (for BOOKMARK, one
    /// with just `metadata.resourceVersion`).
    pub fn send_watch_event(
        &mut self,
        id: StreamId,
        event: EventType,
        resource_version: String,
        object: Bytes,
    ) -> Result<(), StreamGone> {
        check_resource_version(id, &resource_version)?;
        let frame = Frame::WatchEvent(WatchEvent {
            stream_id: id,
            event,
            resource_version,
            object,
        });
        self.queue_sync(id, frame, Some(false))
    }

    /// Answers a PROGRESS_REQUEST ([`Event::ProgressRequest`], same `seq`; `seq` 0 for an
    /// unsolicited report): every change of the type up to `resource_version` has been queued
    /// on sync stream `id` (ours) before this call. Empty `resource_version`: the agent could
    /// not confirm. PROGRESS takes no window, but it is queued behind the stream's frames and
    /// never overtakes them: it goes out after every frame queued before it, waiting with
    /// them for credit. Refused inside a snapshot (after BEGIN, before its END).
    pub fn send_progress(
        &mut self,
        id: StreamId,
        seq: u32,
        resource_version: &str,
    ) -> Result<(), StreamGone> {
        check_resource_version(id, resource_version)?;
        let frame = Frame::Progress(Progress {
            stream_id: id,
            seq,
            resource_version: resource_version.to_owned(),
        });
        self.queue_sync(id, frame, Some(false))
    }

    /// Asks the opener of sync stream `id` (the agent; the stream is one the peer opened)
    /// how current the stream is: PROGRESS_REQUEST `seq` is queued as a control frame (not
    /// flow-controlled) and the answer arrives as [`Event::Sync`] with a [`Frame::Progress`]
    /// of the same `seq`, after every change up to its resourceVersion. A request not yet
    /// sent is replaced by a later one on the same stream: use increasing numbers, and take an
    /// answer with a `seq` at least yours as the answer to yours.
    pub fn request_progress(&mut self, id: StreamId, seq: u32) -> Result<(), StreamGone> {
        if self.closed.is_some() {
            return Err(StreamGone::NotOpen(id));
        }
        let Some(s) = self.streams.get(&id) else {
            return Err(StreamGone::NotOpen(id));
        };
        if s.kind != StreamKind::Sync || s.local {
            return Err(invalid(
                id,
                "PROGRESS_REQUEST goes only on a sync stream the peer opened",
            ));
        }
        let frame = Frame::ProgressRequest(ProgressRequest { stream_id: id, seq });
        self.session
            .send(&frame)
            .map_err(|e| invalid(id, &e.to_string()))?;
        self.progress_requests.insert(id, seq);
        Ok(())
    }

    /// Queues the RESPONSE head of a stream the peer opened. `end_stream`: no body follows.
    pub fn send_response(
        &mut self,
        id: StreamId,
        status: u16,
        fields: Fields,
        end_stream: bool,
    ) -> Result<(), StreamGone> {
        let s = self.app_stream(id)?;
        if s.local || s.kind != StreamKind::Request {
            return Err(invalid(
                id,
                "only the responder of a request stream sends RESPONSE",
            ));
        }
        if s.responded {
            return Err(invalid(id, "RESPONSE already sent"));
        }
        let response = Response {
            stream_id: id,
            end_stream,
            status,
            fields,
        };
        let frame = Frame::Response(response);
        self.check_frame(&frame)
            .map_err(|reason| StreamGone::Invalid { id, reason })?;
        let Frame::Response(response) = frame else {
            return Err(invalid(id, "not a RESPONSE"));
        };
        if let Some(s) = self.streams.get_mut(&id) {
            s.response = Some(response);
            s.responded = true;
            if end_stream {
                s.fin = Fin::Done;
            }
        }
        self.schedule(id);
        Ok(())
    }

    /// Appends `data` to the stream's send buffer (no copy) to be sent as windows allow;
    /// accepted even beyond the window (pace with [`Connection::is_writable`] and
    /// [`Event::Writable`]). `end_stream`: END_STREAM goes on the last DATA (an empty DATA
    /// if `data` is empty and nothing is buffered).
    pub fn send_data(
        &mut self,
        id: StreamId,
        data: Bytes,
        end_stream: bool,
    ) -> Result<(), StreamGone> {
        let s = self.app_stream(id)?;
        if s.kind == StreamKind::Sync {
            return Err(invalid(id, "DATA on a sync stream"));
        }
        if !s.local && !s.responded {
            return Err(invalid(id, "DATA before RESPONSE"));
        }
        if let Some(s) = self.streams.get_mut(&id) {
            if !data.is_empty() {
                s.buffered += data.len();
                s.data.push_back(data);
            }
            if end_stream {
                s.fin = Fin::Flag;
            }
        }
        self.schedule(id);
        Ok(())
    }

    /// Ends the application's sending half with an END frame (after the buffered data).
    pub fn send_end(&mut self, id: StreamId, trailers: Fields) -> Result<(), StreamGone> {
        let s = self.app_stream(id)?;
        if !s.local && !s.responded {
            return Err(invalid(id, "END before RESPONSE"));
        }
        if !trailers.is_empty() {
            let frame = Frame::End(End {
                stream_id: id,
                trailers,
            });
            self.check_frame(&frame)
                .map_err(|reason| StreamGone::Invalid { id, reason })?;
            let Frame::End(end) = frame else {
                return Err(invalid(id, "not an END"));
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.fin = Fin::Trailers(end.trailers);
            }
        } else if let Some(s) = self.streams.get_mut(&id) {
            s.fin = Fin::Trailers(Vec::new());
        }
        self.schedule(id);
        Ok(())
    }

    /// Resets a stream: its buffered data is dropped, RESET `code` is queued (unless the
    /// peer never heard of the stream: then its REQUEST is simply not sent), the stream is
    /// forgotten. No event. Unknown streams are ignored.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode) {
        if self.closed.is_some() || !self.streams.contains_key(&id) {
            return;
        }
        self.reset_stream(id, code);
        self.after_op();
    }

    /// The application consumed `n` received bytes of stream `id`: the credit is recorded in
    /// the session, and a WINDOW_UPDATE that falls due is queued (summed with any pending one
    /// for the stream), never dropped. Unknown or finished streams are ignored.
    pub fn release(&mut self, id: StreamId, n: u32) {
        if self.closed.is_some() || n == 0 {
            return;
        }
        if let Some(wu) = self.session.release(id, n) {
            if self.streams.contains_key(&id) {
                let pending = self.stream_credit.entry(id).or_insert(0);
                *pending = pending.saturating_add(wu.increment).min(MAX_WINDOW);
            }
        }
    }

    /// Queues a DISCOVERY report (agent → hub), replacing one not yet sent.
    pub fn send_discovery(&mut self, discovery: Discovery) -> Result<(), OpenError> {
        let frame = Frame::Discovery(discovery);
        if !discovery_fits(&frame) {
            return Err(OpenError::Invalid("a DISCOVERY field is too long".into()));
        }
        if let Frame::Discovery(d) = self.check_control(frame)? {
            self.discovery = Some(d);
        }
        Ok(())
    }

    /// Queues a SYNC_REQUEST (hub → agent, with [`Capabilities::CACHE_SYNC`] agreed): the
    /// complete set of resource types to sync from now on. Replaces one not yet sent (only the
    /// latest set matters). Fails with [`OpenError::Invalid`] on the agent, without
    /// CACHE_SYNC, for a key without version or resource, or a frame above the peer's maximum
    /// frame size; with [`OpenError::Closing`] once the connection is closed.
    pub fn send_sync_request(&mut self, keys: Vec<ResourceKey>) -> Result<(), OpenError> {
        let frame = Frame::SyncRequest(SyncRequest { resources: keys });
        if let Frame::SyncRequest(r) = self.check_control(frame)? {
            self.sync_request = Some(r);
        }
        Ok(())
    }

    /// A control frame on stream 0 the application asked for: refused once closed, if it
    /// would not decode at the peer, or if the session refuses it (direction, capability).
    fn check_control(&mut self, frame: Frame) -> Result<Frame, OpenError> {
        if self.closed.is_some() {
            return Err(OpenError::Closing);
        }
        self.check_frame(&frame).map_err(OpenError::Invalid)?;
        self.session
            .send(&frame)
            .map_err(|e| OpenError::Invalid(e.to_string()))?;
        Ok(frame)
    }

    /// Bytes given by the application for stream `id` and not yet encoded.
    pub fn send_buffered(&self, id: StreamId) -> usize {
        self.streams.get(&id).map_or(0, |s| s.buffered)
    }

    /// Whether the application may still send on `id`: the stream is known here and its
    /// sending half is open (it may be full: see [`Connection::is_writable`]).
    pub fn can_send(&self, id: StreamId) -> bool {
        self.closed.is_none() && self.streams.get(&id).is_some_and(|s| s.app_open())
    }

    /// The application may send on `id` (`send_data` would succeed) and its send buffer holds
    /// less than `send_buffer` bytes.
    pub fn is_writable(&self, id: StreamId) -> bool {
        self.closed.is_none()
            && self.streams.get(&id).is_some_and(|s| {
                s.app_open() && (s.local || s.responded) && s.buffered < self.cfg.send_buffer
            })
    }

    /// Graceful drain: GOAWAY(`code`, `message`) is queued now; new local opens fail with
    /// [`OpenError::Closing`]; streams the peer opens from now on are refused (RESET
    /// `REFUSED_STREAM`, no event); streams in flight may finish. At `deadline` every stream
    /// left gets RESET `CANCEL` toward the peer and [`Event::Reset`] with
    /// [`ResetOrigin::Drain`]. The connection closes with [`CloseReason::Drained`] as soon as
    /// no stream is left (at once if none is open). A second call only moves the deadline
    /// earlier.
    pub fn go_away(&mut self, code: ErrorCode, message: &str, deadline: Instant) {
        if self.closed.is_some() {
            return;
        }
        if let Some(d) = self.drain_deadline {
            self.drain_deadline = Some(d.min(deadline));
            return;
        }
        self.goaway = Some(self.session.go_away(code, truncate(message)));
        self.drain_deadline = Some(deadline);
        self.after_op();
    }

    /// Immediate close: GOAWAY(`code`, `message`) is queued after what is already queued and
    /// is the last frame sent; every stream is reported [`Event::Reset`] with
    /// [`ResetOrigin::ConnectionClosed`] (no RESET frames: the GOAWAY says it all); the
    /// connection is closed with [`CloseReason::Local`]. Later commands fail or are ignored.
    pub fn close(&mut self, code: ErrorCode, message: &str) {
        let message = truncate(message);
        self.close_with(
            CloseReason::Local {
                code,
                message: message.clone(),
            },
            Some((code, message)),
        );
    }

    // ---------------------------------------------------------------------------------------
    // Output

    /// Encodes frames into `out` until at least `max_bytes` were encoded by this call or
    /// nothing is ready (at least one frame if any is ready; a DATA frame is never cut to fit
    /// `max_bytes`). Returns the number of frames encoded. Order: see the module docs.
    pub fn poll_transmit(&mut self, out: &mut EncodeBuf, max_bytes: usize) -> usize {
        let start = out.len();
        let mut frames = 0;
        while frames == 0 || out.len().saturating_sub(start) < max_bytes {
            let Some(frame) = self.next_frame() else {
                break;
            };
            out.push(&frame);
            frames += 1;
        }
        self.after_op();
        frames
    }

    /// [`Connection::poll_transmit`] would encode something now.
    pub fn has_transmit(&self) -> bool {
        self.pending_control_frames() > 0
            || !self.opens.is_empty()
            || self.ready.iter().any(|id| self.sendable(*id))
    }

    /// Control frames waiting to be sent (PING, WINDOW_UPDATE, RESET, DISCOVERY,
    /// SYNC_REQUEST, PROGRESS_REQUEST, GOAWAY). Bounded by coalescing: see the module docs.
    pub fn pending_control_frames(&self) -> usize {
        usize::from(self.ping_ack.is_some())
            + usize::from(self.ping_out.is_some())
            + usize::from(self.conn_credit > 0)
            + self.stream_credit.len()
            + self.resets.len()
            + usize::from(self.discovery.is_some())
            + usize::from(self.sync_request.is_some())
            + self.progress_requests.len()
            + usize::from(self.goaway.is_some())
    }

    /// The next event for the application. Once none is left the queue gives its memory back:
    /// a burst (a snapshot arriving) queues many events at once, and an idle tunnel should not
    /// keep room for them.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front();
        if ev.is_none() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
        }
        ev
    }

    /// The connection is closed: after [`Connection::close`], a protocol error, a keepalive
    /// timeout, a finished drain, a peer's GOAWAY once no stream is left, or
    /// [`Connection::transport_closed`]. Frames may still wait in
    /// [`Connection::poll_transmit`].
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// Why the connection closed.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.closed.as_ref()
    }

    /// A GOAWAY was sent ([`Connection::go_away`]) or received, and the connection is not
    /// closed yet: no new streams; the remaining ones finish.
    pub fn is_draining(&self) -> bool {
        self.closed.is_none() && (self.drain_deadline.is_some() || self.peer_goaway.is_some())
    }

    /// Streams not finished (including opened ones whose REQUEST is not sent yet).
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The protocol state (read-only).
    pub fn session(&self) -> &Session {
        &self.session
    }

    // ---------------------------------------------------------------------------------------
    // Internals: receiving

    fn recv_frame(&mut self, frame: Frame) {
        match self.session.recv(&frame) {
            Err(SessionError::Connection { code, reason }) => self.close_with(
                CloseReason::Protocol {
                    code,
                    message: reason.into(),
                },
                Some((code, reason.into())),
            ),
            Err(SessionError::Stream { stream, code, .. }) => {
                let known = self.streams.contains_key(&stream);
                self.reset_stream(stream, code);
                if known {
                    self.emit(Event::Reset {
                        id: stream,
                        code,
                        origin: ResetOrigin::StreamError,
                    });
                }
            }
            Ok(received) => {
                if let Some(wu) = received.window_update {
                    self.conn_credit = self
                        .conn_credit
                        .saturating_add(wu.increment)
                        .min(MAX_WINDOW);
                }
                if received.deliver {
                    let id = frame.stream_id();
                    self.deliver(frame);
                    if id != 0 {
                        self.gc(id);
                    }
                }
            }
        }
    }

    fn deliver(&mut self, frame: Frame) {
        let id = frame.stream_id();
        let known = self.streams.contains_key(&id);
        match frame {
            Frame::Request(r) => {
                if known {
                    return; // the session rejects a second REQUEST; be safe anyway
                }
                if !self.cfg.accept_requests {
                    self.reset_stream(id, ErrorCode::REFUSED_STREAM);
                    return;
                }
                self.streams.insert(id, remote_stream(StreamKind::Request));
                self.emit(Event::Request {
                    id,
                    method: r.method,
                    path: r.path,
                    fields: r.fields,
                    end_stream: r.end_stream,
                });
            }
            Frame::SnapshotBegin(_) if !known => {
                if !self.cfg.accept_sync {
                    self.reset_stream(id, ErrorCode::REFUSED_STREAM);
                    return;
                }
                self.streams.insert(id, remote_stream(StreamKind::Sync));
                self.emit(Event::Sync {
                    id,
                    frame,
                    credit: 0,
                });
            }
            Frame::SnapshotBegin(_)
            | Frame::SnapshotItems(_)
            | Frame::SnapshotEnd(_)
            | Frame::WatchEvent(_)
            | Frame::Progress(_) => {
                if known {
                    let credit = if frame.frame_type().is_flow_controlled() {
                        codec::body_len(&frame).min(u32::MAX as usize) as u32
                    } else {
                        0
                    };
                    self.emit(Event::Sync { id, frame, credit });
                }
            }
            Frame::Response(r) => {
                if known {
                    self.emit(Event::Response {
                        id,
                        status: r.status,
                        fields: r.fields,
                        end_stream: r.end_stream,
                    });
                }
            }
            Frame::Data(d) => {
                if known && (d.end_stream || !d.payload.is_empty()) {
                    self.emit(Event::Data {
                        id,
                        data: d.payload,
                        end_stream: d.end_stream,
                    });
                }
            }
            Frame::End(e) => {
                if known {
                    self.emit(Event::End {
                        id,
                        trailers: e.trailers,
                    });
                }
            }
            Frame::Reset(r) => {
                if self.forget(id).is_some() {
                    self.emit(Event::Reset {
                        id,
                        code: r.code,
                        origin: ResetOrigin::Peer,
                    });
                }
            }
            Frame::WindowUpdate(_) if id == 0 => {
                for id in std::mem::take(&mut self.blocked) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.sched = Sched::Ready;
                        self.ready.push_back(id);
                    }
                }
            }
            Frame::WindowUpdate(_) => {
                if self.blocked.remove(&id) {
                    if let Some(s) = self.streams.get_mut(&id) {
                        s.sched = Sched::Ready;
                        self.ready.push_back(id);
                    }
                }
            }
            Frame::Ping(p) => {
                if !p.ack {
                    self.ping_ack = Some(p.opaque);
                }
            }
            Frame::GoAway(g) => self.peer_going_away(g),
            Frame::Discovery(d) => self.emit(Event::Discovery(d)),
            Frame::SyncRequest(r) => self.emit(Event::SyncRequest(r.resources)),
            Frame::ProgressRequest(p) => {
                if known {
                    self.emit(Event::ProgressRequest { id, seq: p.seq });
                }
            }
            Frame::Hello(_) | Frame::HelloAck(_) => {} // the session rejects them
        }
    }

    /// The peer sent GOAWAY: our streams above its last stream id were not processed.
    fn peer_going_away(&mut self, g: GoAway) {
        self.emit(Event::GoAway {
            code: g.code,
            message: g.message.clone(),
        });
        self.peer_goaway = Some((g.code, truncate(&g.message)));
        let refused: Vec<StreamId> = self
            .stream_ids()
            .into_iter()
            .filter(|id| self.streams.get(id).is_some_and(|s| s.local) && *id > g.last_stream_id)
            .collect();
        for id in refused {
            self.emit(Event::Reset {
                id,
                code: ErrorCode::REFUSED_STREAM,
                origin: ResetOrigin::Peer,
            });
            self.reset_stream(id, ErrorCode::CANCEL);
        }
    }

    // ---------------------------------------------------------------------------------------
    // Internals: sending

    fn next_frame(&mut self) -> Option<Frame> {
        if let Some(opaque) = self.ping_ack.take() {
            return Some(Frame::Ping(Ping { ack: true, opaque }));
        }
        if let Some(opaque) = self.ping_out.take() {
            return Some(Frame::Ping(Ping { ack: false, opaque }));
        }
        if self.conn_credit > 0 {
            let increment = std::mem::take(&mut self.conn_credit);
            return Some(Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                increment,
            }));
        }
        if let Some((stream_id, increment)) = self.stream_credit.pop_first() {
            return Some(Frame::WindowUpdate(WindowUpdate {
                stream_id,
                increment,
            }));
        }
        if let Some((stream_id, code)) = self.resets.pop_first() {
            return Some(Frame::Reset(Reset { stream_id, code }));
        }
        if let Some(d) = self.discovery.take() {
            return Some(Frame::Discovery(d));
        }
        if let Some(r) = self.sync_request.take() {
            return Some(Frame::SyncRequest(r));
        }
        if let Some((stream_id, seq)) = self.progress_requests.pop_first() {
            return Some(Frame::ProgressRequest(ProgressRequest { stream_id, seq }));
        }
        // REQUEST heads of streams opened before a GOAWAY go out before it: after GOAWAY this
        // side opens nothing. (A close clears them, so its GOAWAY is the last frame.)
        if let Some(head) = self.opens.pop_front() {
            let id = head.stream_id();
            if let Some(s) = self.streams.get_mut(&id) {
                s.head_sent = true;
            }
            self.schedule(id);
            return Some(head);
        }
        if let Some(g) = self.goaway.take() {
            return Some(Frame::GoAway(g));
        }
        self.next_stream_frame()
    }

    /// The next frame of the round-robin, with the session's checks and the Writable event.
    fn next_stream_frame(&mut self) -> Option<Frame> {
        while let Some(id) = self.ready.pop_front() {
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if s.sched != Sched::Ready {
                continue;
            }
            s.sched = Sched::Idle;
            let mut writable = false;
            let frame = if let Some(r) = s.response.take() {
                Frame::Response(r)
            } else if let Some(front) = s.sync.front() {
                // Sync frames go whole: a flow-controlled one waits for window enough for it.
                let len = if front.frame_type().is_flow_controlled() {
                    codec::body_len(front)
                } else {
                    0
                };
                if len > self.session.send_capacity(id) as usize {
                    s.sched = Sched::Blocked;
                    self.blocked.insert(id);
                    continue;
                }
                let before = s.buffered;
                s.buffered -= len;
                let limit = self.cfg.send_buffer;
                writable = len > 0
                    && s.app_open()
                    && (s.buffered == 0 || (before >= limit && s.buffered < limit));
                match s.sync.pop_front() {
                    Some(f) => f,
                    None => continue,
                }
            } else if let Some(front) = s.data.front_mut() {
                let cap = self.session.send_capacity(id) as usize;
                if cap == 0 {
                    s.sched = Sched::Blocked;
                    self.blocked.insert(id);
                    continue;
                }
                let n = front.len().min(cap).min(self.max_frame);
                let payload = if n < front.len() {
                    front.split_to(n)
                } else {
                    s.data.pop_front().unwrap_or_default()
                };
                let before = s.buffered;
                s.buffered -= payload.len();
                let end_stream = s.data.is_empty() && matches!(s.fin, Fin::Flag);
                if end_stream {
                    s.fin = Fin::Done;
                }
                let limit = self.cfg.send_buffer;
                writable =
                    s.app_open() && (s.buffered == 0 || (before >= limit && s.buffered < limit));
                Frame::Data(Data {
                    stream_id: id,
                    end_stream,
                    payload,
                })
            } else {
                match std::mem::replace(&mut s.fin, Fin::Done) {
                    Fin::Flag => Frame::Data(Data {
                        stream_id: id,
                        end_stream: true,
                        payload: Bytes::new(),
                    }),
                    Fin::Trailers(trailers) => Frame::End(End {
                        stream_id: id,
                        trailers,
                    }),
                    other => {
                        s.fin = other;
                        continue;
                    }
                }
            };
            if let Err(e) = self.session.send(&frame) {
                // Not reachable when the commands' checks hold; never put a frame on the wire
                // that the session refused.
                self.internal_error(id, e);
                continue;
            }
            if writable {
                self.emit(Event::Writable { id });
            }
            if let Some(s) = self.streams.get_mut(&id) {
                if s.has_next() {
                    s.sched = Sched::Ready;
                    self.ready.push_back(id);
                }
            }
            self.gc(id);
            return Some(frame);
        }
        None
    }

    fn internal_error(&mut self, id: StreamId, e: SessionError) {
        match e {
            SessionError::Stream { .. } => {
                let known = self.streams.contains_key(&id);
                self.reset_stream(id, ErrorCode::INTERNAL);
                if known {
                    self.emit(Event::Reset {
                        id,
                        code: ErrorCode::INTERNAL,
                        origin: ResetOrigin::StreamError,
                    });
                }
            }
            SessionError::Connection { code, reason } => self.close_with(
                CloseReason::Local {
                    code: ErrorCode::INTERNAL,
                    message: format!("{reason} ({code})"),
                },
                Some((ErrorCode::INTERNAL, reason.into())),
            ),
        }
    }

    /// Whether the first stream frame of `id` could be encoded now.
    fn sendable(&self, id: StreamId) -> bool {
        self.streams.get(&id).is_some_and(|s| {
            s.sched == Sched::Ready
                && s.has_next()
                && (s.response.is_some()
                    || match s.sync.front() {
                        Some(f) if f.frame_type().is_flow_controlled() => {
                            codec::body_len(f) <= self.session.send_capacity(id) as usize
                        }
                        Some(_) => true,
                        None => s.data.is_empty() || self.session.send_capacity(id) > 0,
                    })
        })
    }

    /// Puts `id` in the round-robin if it has something to send and is not scheduled yet.
    fn schedule(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            if s.sched == Sched::Idle && s.head_sent && s.has_next() {
                s.sched = Sched::Ready;
                self.ready.push_back(id);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Internals: streams and lifecycle

    /// The stream, if the application may still send on it.
    fn app_stream(&self, id: StreamId) -> Result<&Stream, StreamGone> {
        if self.closed.is_some() {
            return Err(StreamGone::NotOpen(id));
        }
        match self.streams.get(&id) {
            Some(s) if s.app_open() => Ok(s),
            _ => Err(StreamGone::NotOpen(id)),
        }
    }

    /// Removes the stream from the table and every queue. Returns it if it was known.
    fn forget(&mut self, id: StreamId) -> Option<Box<Stream>> {
        let s = self.streams.remove(&id)?;
        shrink_after_burst(&mut self.streams);
        match s.sched {
            Sched::Ready => self.ready.retain(|x| *x != id),
            Sched::Blocked => {
                self.blocked.remove(&id);
            }
            Sched::Idle => {}
        }
        if !s.head_sent {
            self.opens.retain(|f| f.stream_id() != id);
        }
        self.stream_credit.remove(&id);
        self.progress_requests.remove(&id);
        Some(s)
    }

    /// Frees the stream once the session considers it closed (both halves done).
    fn gc(&mut self, id: StreamId) {
        if self.streams.contains_key(&id) && self.session.stream_state(id) == StreamState::Closed {
            self.forget(id);
        }
    }

    /// Ends the stream in the session without a frame on the wire.
    fn session_forget(&mut self, id: StreamId, code: ErrorCode) {
        if self.session.stream_state(id) != StreamState::Idle {
            // Only removes the stream (RESET is valid in every non-idle state).
            let _ = self.session.send(&Frame::Reset(Reset {
                stream_id: id,
                code,
            }));
        }
    }

    /// Forgets the stream and queues RESET `code`, unless the peer never saw the stream (our
    /// REQUEST not sent yet: it never will be).
    fn reset_stream(&mut self, id: StreamId, code: ErrorCode) {
        let on_wire = match self.forget(id) {
            Some(s) => s.head_sent,
            None => true,
        };
        self.session_forget(id, code);
        if on_wire {
            self.resets.insert(id, code);
        }
    }

    /// Stream ids in the table, in order.
    fn stream_ids(&self) -> Vec<StreamId> {
        let mut ids: Vec<StreamId> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    fn emit(&mut self, event: Event) {
        if self.closed.is_none() {
            self.events.push_back(event);
        }
    }

    fn silence_deadline(&self) -> Option<Instant> {
        if self.cfg.keepalive.is_zero() {
            return None;
        }
        self.last_recv
            .checked_add(self.cfg.keepalive.saturating_mul(3))
    }

    /// Closes at once: streams reported reset, GOAWAY queued (if given), Closed(reason).
    fn close_with(&mut self, reason: CloseReason, goaway: Option<(ErrorCode, String)>) {
        if self.closed.is_some() {
            return;
        }
        for id in self.stream_ids() {
            self.emit(Event::Reset {
                id,
                code: ErrorCode::CANCEL,
                origin: ResetOrigin::ConnectionClosed,
            });
            self.forget(id);
            self.session_forget(id, ErrorCode::CANCEL);
        }
        if let Some((code, message)) = goaway {
            self.goaway = Some(self.session.go_away(code, truncate(&message)));
        }
        self.finish(reason);
    }

    fn finish(&mut self, reason: CloseReason) {
        self.events.push_back(Event::Closed(reason.clone()));
        self.closed = Some(reason);
    }

    /// After every input and command: too many RESETs → close; a drain or the peer's GOAWAY
    /// with no stream left → closed.
    fn after_op(&mut self) {
        if self.closed.is_some() {
            return;
        }
        if self.resets.len() > self.reset_limit {
            self.close_with(
                CloseReason::Protocol {
                    code: ErrorCode::ENHANCE_YOUR_CALM,
                    message: "too many RESETs pending".into(),
                },
                Some((
                    ErrorCode::ENHANCE_YOUR_CALM,
                    "too many RESETs pending".into(),
                )),
            );
            return;
        }
        if !self.streams.is_empty() {
            return;
        }
        if self.drain_deadline.is_some() {
            self.finish(CloseReason::Drained);
        } else if let Some((code, message)) = self.peer_goaway.clone() {
            self.finish(CloseReason::PeerGoAway { code, message });
        }
    }

    /// Checks that `frame` will decode at the peer: field lengths, the peer's maximum frame
    /// size, then the peer's own decoder on the encoded bytes.
    fn check_frame(&self, frame: &Frame) -> Result<(), String> {
        let fits = match frame {
            Frame::Request(r) => {
                r.method.len() <= STR16 && r.path.len() <= STR16 && fields_fit(&r.fields)
            }
            Frame::Response(r) => fields_fit(&r.fields),
            Frame::End(e) => fields_fit(&e.trailers),
            Frame::SnapshotBegin(b) => key_fits(&b.resource),
            Frame::SyncRequest(r) => {
                r.resources.len() <= u32::MAX as usize && r.resources.iter().all(key_fits)
            }
            _ => true,
        };
        if !fits {
            return Err("a field is longer than 65,535 bytes or there are too many".into());
        }
        let max = self.session.remote_settings().max_frame_size;
        if codec::body_len(frame) > max as usize {
            return Err(format!(
                "frame larger than the peer's maximum of {max} bytes"
            ));
        }
        let mut buf = BytesMut::new();
        codec::encode(frame, &mut buf);
        codec::decode_exact(buf.freeze(), max)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

const STR16: usize = u16::MAX as usize;

fn fields_fit(fields: &Fields) -> bool {
    fields.len() <= STR16
        && fields
            .iter()
            .all(|(n, v)| n.len() <= STR16 && v.len() <= STR16)
}

fn key_fits(k: &ResourceKey) -> bool {
    [&k.group, &k.version, &k.resource]
        .iter()
        .all(|s| s.len() <= STR16)
}

fn check_resource_version(id: StreamId, resource_version: &str) -> Result<(), StreamGone> {
    if resource_version.len() > STR16 {
        return Err(invalid(id, "resourceVersion longer than 65,535 bytes"));
    }
    Ok(())
}

fn discovery_fits(frame: &Frame) -> bool {
    let Frame::Discovery(d) = frame else {
        return true;
    };
    d.resources.len() <= u32::MAX as usize
        && d.resources.iter().all(|r| {
            [&r.group, &r.version, &r.resource, &r.kind, &r.singular]
                .iter()
                .all(|s| s.len() <= STR16)
                && [&r.short_names, &r.categories]
                    .iter()
                    .all(|l| l.len() <= u8::MAX as usize && l.iter().all(|s| s.len() <= STR16))
        })
}

/// Gives back most of a map's table once it holds a quarter of what it has room for or less
/// (a burst of streams has ended), so that a connection's tables follow its streams down as
/// well as up. Hash tables never shrink by themselves; the hysteresis keeps a connection
/// whose stream count swings from rebuilding its table each time.
pub(crate) fn shrink_after_burst<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    // The capacity of an 8-slot table.
    const KEEP: usize = 7;
    let cap = map.capacity();
    if cap > KEEP && map.len() * 4 <= cap {
        map.shrink_to(KEEP.max(map.len() * 2));
    }
}

fn remote_stream(kind: StreamKind) -> Box<Stream> {
    Box::new(Stream {
        local: false,
        kind,
        head_sent: true,
        response: None,
        responded: false,
        data: VecDeque::new(),
        sync: VecDeque::new(),
        in_snapshot: false,
        key: None,
        buffered: 0,
        // We never send on a sync stream the peer opened.
        fin: if kind == StreamKind::Sync {
            Fin::Done
        } else {
            Fin::Open
        },
        sched: Sched::Idle,
    })
}

fn invalid(id: StreamId, reason: &str) -> StreamGone {
    StreamGone::Invalid {
        id,
        reason: reason.into(),
    }
}

/// Cuts a message to [`MAX_MESSAGE`] bytes at a character boundary.
fn truncate(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_follow_a_burst_of_streams_down() {
        let mut map: HashMap<StreamId, u64> = HashMap::new();
        for id in 0..200 {
            map.insert(id, 0);
        }
        let burst = map.capacity();
        for id in 0..200 {
            map.remove(&id);
            shrink_after_burst(&mut map);
            // Room for four times what is left at most (and never below an 8-slot table).
            assert!(map.capacity() <= 7.max(4 * map.len() + 7), "{}", map.len());
        }
        assert!(map.capacity() < burst);
        assert_eq!(map.capacity(), 7);
        // A small table is left alone.
        for id in 0..4 {
            map.insert(id, 0);
        }
        map.remove(&0);
        shrink_after_burst(&mut map);
        assert_eq!(map.capacity(), 7);
    }
}
