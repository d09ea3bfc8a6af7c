//! Per-connection protocol state: stream ids, stream state machines and flow control.
//!
//! A [`Session`] is created once the handshake has agreed on settings. Every frame the
//! connection receives goes through [`Session::recv`] and every frame it sends through
//! [`Session::send`]; both check the frame against the rules of `wire/PROTOCOL.md` and update
//! the state. The session does no IO and holds no payload: buffering belongs to the caller,
//! which tells the session when it has consumed received bytes ([`Session::release`]), so the
//! session can hand back the WINDOW_UPDATE frames that return the credit.
//!
//! Flow-control rule that keeps one slow reader from stalling the others: connection-level
//! credit is returned as soon as a frame is taken off the wire (the bytes then sit in a
//! per-stream buffer bounded by that stream's window); stream-level credit is returned only when
//! the application consumed the bytes.

use std::collections::HashMap;

use crate::codec::MAX_WINDOW;
use crate::error::ErrorCode;
use crate::frame::*;

/// Which end of the connection this session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The agent: dials, sends HELLO, opens odd stream ids.
    Agent,
    /// The hub: accepts, answers HELLO_ACK, opens even stream ids.
    Hub,
}

impl Role {
    fn owns(self, id: StreamId) -> bool {
        match self {
            Role::Agent => id % 2 == 1,
            Role::Hub => id % 2 == 0,
        }
    }
    fn first_id(self) -> StreamId {
        match self {
            Role::Agent => 1,
            Role::Hub => 2,
        }
    }
}

/// What a stream carries; fixed by the frame that opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Opened by REQUEST: an HTTP exchange, bodies both ways.
    Request,
    /// Opened by SNAPSHOT_BEGIN: cache sync, from the opener to the other side only.
    Sync,
}

/// The state of a stream as seen from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamState {
    /// Not opened yet (its id is above the highest one used by its initiator).
    Idle,
    /// Both sides may send.
    Open,
    /// This side has sent its last frame; the peer may still send.
    HalfClosedLocal,
    /// The peer has sent its last frame; this side may still send.
    HalfClosedRemote,
    /// Done, by END on both sides or by RESET.
    Closed,
}

/// A rule was broken. The variant says how far the damage reaches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Only this stream is affected: answer with RESET (`code`) and carry on.
    #[error("stream {stream}: {reason} ({code})")]
    Stream {
        /// The stream.
        stream: StreamId,
        /// The code for the RESET.
        code: ErrorCode,
        /// What happened.
        reason: &'static str,
    },
    /// The connection can no longer be trusted: send GOAWAY (`code`) and close.
    #[error("connection: {reason} ({code})")]
    Connection {
        /// The code for the GOAWAY.
        code: ErrorCode,
        /// What happened.
        reason: &'static str,
    },
}

fn conn_err(code: ErrorCode, reason: &'static str) -> SessionError {
    SessionError::Connection { code, reason }
}

fn stream_err(stream: StreamId, code: ErrorCode, reason: &'static str) -> SessionError {
    SessionError::Stream {
        stream,
        code,
        reason,
    }
}

/// What the caller should do with a frame [`Session::recv`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// Hand the frame to the stream's consumer. `false` for frames on streams this side has
    /// already closed (they crossed a RESET in flight): drop them.
    pub deliver: bool,
    /// Connection-level credit to send back now, if any.
    pub window_update: Option<WindowUpdate>,
}

#[derive(Debug)]
struct Stream {
    kind: StreamKind,
    local: bool,
    send_open: bool,
    recv_open: bool,
    /// Request streams: the response head was sent (responder) or received (requester).
    /// Sync streams: a snapshot is in progress (between BEGIN and END).
    phase: bool,
    send_window: u32,
    recv_window: u32,
    recv_unreleased: u32,
    recv_initial: u32,
}

/// The protocol state of one connection.
#[derive(Debug)]
pub struct Session {
    role: Role,
    /// What the handshake agreed; CACHE_SYNC allows SYNC_REQUEST.
    capabilities: Capabilities,
    local: Settings,
    remote: Settings,
    streams: HashMap<StreamId, Stream>,
    next_local_id: StreamId,
    highest_remote_id: StreamId,
    local_open: u32,
    remote_open: u32,
    conn_send: u32,
    conn_recv: u32,
    conn_unreleased: u32,
    peer_last_stream: Option<StreamId>,
    local_last_stream: Option<StreamId>,
}

impl Session {
    /// A session after the handshake. `local` are the settings this side announced (what it
    /// receives), `remote` those the peer announced, `capabilities` those both agreed
    /// ([`crate::handshake::Agreed::capabilities`]).
    pub fn new(
        role: Role,
        local: Settings,
        remote: Settings,
        capabilities: Capabilities,
    ) -> Session {
        Session {
            role,
            capabilities,
            local,
            remote,
            streams: HashMap::new(),
            next_local_id: role.first_id(),
            highest_remote_id: 0,
            local_open: 0,
            remote_open: 0,
            conn_send: remote.initial_connection_window,
            conn_recv: local.initial_connection_window,
            conn_unreleased: 0,
            peer_last_stream: None,
            local_last_stream: None,
        }
    }

    /// This side's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The capabilities both sides agreed.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Settings the peer announced.
    pub fn remote_settings(&self) -> &Settings {
        &self.remote
    }

    /// Streams not yet closed.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The id for the next stream this side opens. Fails if the peer sent GOAWAY, if the peer's
    /// concurrency limit is reached (retry when a stream closes), or if ids ran out.
    pub fn next_stream_id(&self) -> Result<StreamId, SessionError> {
        if self.peer_last_stream.is_some() {
            return Err(conn_err(ErrorCode::REFUSED_STREAM, "peer is going away"));
        }
        if self.local_open >= self.remote.max_concurrent_streams {
            return Err(stream_err(
                self.next_local_id,
                ErrorCode::REFUSED_STREAM,
                "peer's concurrent stream limit reached",
            ));
        }
        if self.next_local_id >= 0x8000_0000 {
            return Err(conn_err(ErrorCode::NO_ERROR, "stream ids exhausted"));
        }
        Ok(self.next_local_id)
    }

    /// The state of a stream as seen from this side.
    pub fn stream_state(&self, id: StreamId) -> StreamState {
        match self.streams.get(&id) {
            Some(s) => match (s.send_open, s.recv_open) {
                (true, true) => StreamState::Open,
                (false, true) => StreamState::HalfClosedLocal,
                (true, false) => StreamState::HalfClosedRemote,
                (false, false) => StreamState::Closed,
            },
            None if self.opened_before(id) => StreamState::Closed,
            None => StreamState::Idle,
        }
    }

    /// How many bytes of flow-controlled frame body this side may send on `stream` now.
    pub fn send_capacity(&self, stream: StreamId) -> u32 {
        match self.streams.get(&stream) {
            Some(s) if s.send_open => s.send_window.min(self.conn_send),
            _ => 0,
        }
    }

    /// Records a GOAWAY this side sends: remote streams above the last one opened so far are
    /// refused from now on. Returns the frame to send.
    pub fn go_away(&mut self, code: ErrorCode, message: impl Into<String>) -> GoAway {
        let last = self.highest_remote_id;
        self.local_last_stream = Some(last);
        GoAway {
            last_stream_id: last,
            code,
            message: message.into(),
        }
    }

    /// The last stream id the peer said it processed, if it sent GOAWAY. Streams this side
    /// opened above it were not processed and may be retried on another connection.
    pub fn peer_going_away(&self) -> Option<StreamId> {
        self.peer_last_stream
    }

    fn opened_before(&self, id: StreamId) -> bool {
        if id == 0 {
            return false;
        }
        if self.role.owns(id) {
            id < self.next_local_id
        } else {
            id <= self.highest_remote_id
        }
    }

    fn close_if_done(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id) {
            if !s.send_open && !s.recv_open {
                let local = s.local;
                self.streams.remove(&id);
                crate::conn::shrink_after_burst(&mut self.streams);
                if local {
                    self.local_open -= 1;
                } else {
                    self.remote_open -= 1;
                }
            }
        }
    }

    fn remove(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.send_open = false;
            s.recv_open = false;
        }
        self.close_if_done(id);
    }

    /// Returns application-consumed bytes of `stream` to the peer as credit. Returns the
    /// WINDOW_UPDATE to send once at least half the stream's initial window is owed, so
    /// updates stay rare; sooner on a sync stream whose window is under twice the maximum frame
    /// size, so a frame that cannot be split never waits for window for good. Unknown or
    /// finished streams need no credit.
    pub fn release(&mut self, stream: StreamId, n: u32) -> Option<WindowUpdate> {
        let max_frame = self.local.max_frame_size;
        let s = self.streams.get_mut(&stream)?;
        if !s.recv_open {
            return None;
        }
        s.recv_unreleased = s.recv_unreleased.saturating_add(n);
        let due = match s.kind {
            StreamKind::Request => (s.recv_initial / 2).max(1),
            StreamKind::Sync => unsplittable_threshold(s.recv_initial, max_frame),
        };
        if s.recv_unreleased >= due {
            let increment = s.recv_unreleased.min(MAX_WINDOW - s.recv_window);
            s.recv_unreleased -= increment;
            s.recv_window += increment;
            (increment > 0).then_some(WindowUpdate {
                stream_id: stream,
                increment,
            })
        } else {
            None
        }
    }

    fn release_connection(&mut self, n: u32) -> Option<WindowUpdate> {
        self.conn_unreleased = self.conn_unreleased.saturating_add(n);
        let due = unsplittable_threshold(
            self.local.initial_connection_window,
            self.local.max_frame_size,
        );
        if self.conn_unreleased >= due {
            let increment = self.conn_unreleased.min(MAX_WINDOW - self.conn_recv);
            self.conn_unreleased -= increment;
            self.conn_recv += increment;
            (increment > 0).then_some(WindowUpdate {
                stream_id: 0,
                increment,
            })
        } else {
            None
        }
    }

    fn new_stream(&self, kind: StreamKind, local: bool) -> Stream {
        let (send_window, recv_initial) = match kind {
            StreamKind::Request => (
                self.remote.initial_stream_window,
                self.local.initial_stream_window,
            ),
            StreamKind::Sync => (
                self.remote.initial_sync_window,
                self.local.initial_sync_window,
            ),
        };
        // A sync stream flows from its opener only.
        let sync = kind == StreamKind::Sync;
        Stream {
            kind,
            local,
            send_open: !sync || local,
            recv_open: !sync || !local,
            phase: false,
            send_window,
            recv_window: recv_initial,
            recv_unreleased: 0,
            recv_initial,
        }
    }

    /// Checks and records a frame this side is about to send. An error means the caller is
    /// about to break the protocol: it must not send the frame.
    pub fn send(&mut self, frame: &Frame) -> Result<(), SessionError> {
        let id = frame.stream_id();
        match frame {
            Frame::Hello(_) | Frame::HelloAck(_) => {
                return Err(conn_err(
                    ErrorCode::PROTOCOL,
                    "handshake frame after handshake",
                ))
            }
            Frame::Discovery(_) if self.role == Role::Hub => {
                return Err(conn_err(
                    ErrorCode::PROTOCOL,
                    "DISCOVERY flows agent to hub",
                ))
            }
            Frame::Ping(_) | Frame::Discovery(_) => return Ok(()),
            Frame::SyncRequest(_) => return self.check_sync_request(Role::Hub),
            Frame::GoAway(g) => {
                self.local_last_stream = Some(g.last_stream_id);
                return Ok(());
            }
            Frame::ProgressRequest(_) => {
                return match self.streams.get(&id) {
                    Some(s) => check_progress_request(id, s, false),
                    None => Err(stream_err(
                        id,
                        ErrorCode::STREAM_CLOSED,
                        "stream is not open",
                    )),
                }
            }
            Frame::WindowUpdate(_) | Frame::Reset(_)
                if id != 0 && self.stream_state(id) == StreamState::Idle =>
            {
                return Err(stream_err(
                    id,
                    ErrorCode::PROTOCOL,
                    "stream was never opened",
                ))
            }
            Frame::WindowUpdate(_) => return Ok(()),
            Frame::Reset(_) => {
                self.remove(id);
                return Ok(());
            }
            Frame::Request(_) | Frame::SnapshotBegin(_) if !self.streams.contains_key(&id) => {
                let kind = if matches!(frame, Frame::Request(_)) {
                    StreamKind::Request
                } else {
                    StreamKind::Sync
                };
                if !self.role.owns(id) || id != self.next_stream_id()? {
                    return Err(stream_err(id, ErrorCode::PROTOCOL, "not the next local id"));
                }
                self.next_local_id = id + 2;
                self.local_open += 1;
                let mut s = self.new_stream(kind, true);
                s.phase = kind == StreamKind::Sync;
                s.send_open = !frame.ends_stream();
                self.streams.insert(id, s);
                self.close_if_done(id);
                return Ok(());
            }
            _ => {}
        }
        let Some(s) = self.streams.get_mut(&id) else {
            return Err(stream_err(
                id,
                ErrorCode::STREAM_CLOSED,
                "stream is not open",
            ));
        };
        if !s.send_open {
            return Err(stream_err(
                id,
                ErrorCode::STREAM_CLOSED,
                "sending half is closed",
            ));
        }
        check_order(frame, s, true)
            .map_err(|reason| stream_err(id, ErrorCode::PROTOCOL, reason))?;
        let len = flow_len(frame);
        if len > 0 {
            if len > s.send_window || len > self.conn_send {
                return Err(stream_err(
                    id,
                    ErrorCode::FLOW_CONTROL,
                    "beyond send window",
                ));
            }
            s.send_window -= len;
            self.conn_send -= len;
        }
        if frame.ends_stream() {
            s.send_open = false;
        }
        self.close_if_done(id);
        Ok(())
    }

    /// Checks and records a frame received from the peer.
    pub fn recv(&mut self, frame: &Frame) -> Result<Received, SessionError> {
        let id = frame.stream_id();
        let len = flow_len(frame);
        let deliver = |window_update| {
            Ok(Received {
                deliver: true,
                window_update,
            })
        };
        match frame {
            Frame::Hello(_) | Frame::HelloAck(_) => {
                return Err(conn_err(
                    ErrorCode::PROTOCOL,
                    "handshake frame after handshake",
                ))
            }
            Frame::Discovery(_) if self.role == Role::Agent => {
                return Err(conn_err(
                    ErrorCode::PROTOCOL,
                    "DISCOVERY flows agent to hub",
                ))
            }
            Frame::Ping(_) | Frame::Discovery(_) => return deliver(None),
            Frame::SyncRequest(_) => {
                self.check_sync_request(Role::Agent)?;
                return deliver(None);
            }
            Frame::GoAway(g) => {
                if g.last_stream_id != 0 && !self.role.owns(g.last_stream_id) {
                    return Err(conn_err(ErrorCode::PROTOCOL, "GOAWAY names a peer stream"));
                }
                self.peer_last_stream = Some(g.last_stream_id);
                return deliver(None);
            }
            Frame::WindowUpdate(w) if id == 0 => {
                if self.conn_send as u64 + w.increment as u64 > MAX_WINDOW as u64 {
                    return Err(conn_err(
                        ErrorCode::FLOW_CONTROL,
                        "connection window overflow",
                    ));
                }
                self.conn_send += w.increment;
                return deliver(None);
            }
            _ => {}
        }

        // A stream frame on a stream that is not open.
        if !self.streams.contains_key(&id) {
            if self.opened_before(id) {
                // Crossed our RESET or END in flight: drop it, but its bytes used connection
                // credit, so give that back.
                let window_update = self.release_connection(len);
                return Ok(Received {
                    deliver: false,
                    window_update,
                });
            }
            let kind = match frame {
                Frame::Request(_) => StreamKind::Request,
                Frame::SnapshotBegin(_) => StreamKind::Sync,
                _ => return Err(conn_err(ErrorCode::PROTOCOL, "frame on an idle stream")),
            };
            if self.role.owns(id) {
                return Err(conn_err(
                    ErrorCode::PROTOCOL,
                    "peer used this side's stream id",
                ));
            }
            // id > highest_remote_id, or opened_before() would have been true.
            self.highest_remote_id = id;
            if self.local_last_stream.is_some() {
                return Err(stream_err(id, ErrorCode::REFUSED_STREAM, "going away"));
            }
            if self.remote_open >= self.local.max_concurrent_streams {
                return Err(stream_err(
                    id,
                    ErrorCode::REFUSED_STREAM,
                    "too many streams",
                ));
            }
            self.remote_open += 1;
            let mut s = self.new_stream(kind, false);
            s.phase = kind == StreamKind::Sync;
            s.recv_open = !frame.ends_stream();
            self.streams.insert(id, s);
            self.close_if_done(id);
            return deliver(None);
        }

        let Some(s) = self.streams.get_mut(&id) else {
            return Err(conn_err(ErrorCode::INTERNAL, "stream vanished"));
        };
        match frame {
            Frame::Reset(_) => {
                self.remove(id);
                return deliver(None);
            }
            Frame::WindowUpdate(w) => {
                if s.send_window as u64 + w.increment as u64 > MAX_WINDOW as u64 {
                    return Err(stream_err(
                        id,
                        ErrorCode::FLOW_CONTROL,
                        "stream window overflow",
                    ));
                }
                s.send_window += w.increment;
                return deliver(None);
            }
            // Flows against the stream, like WINDOW_UPDATE: the opener's receiving half is
            // closed from the start.
            Frame::ProgressRequest(_) => {
                check_progress_request(id, s, true)?;
                return deliver(None);
            }
            _ => {}
        }
        if !s.recv_open {
            return Err(stream_err(
                id,
                ErrorCode::STREAM_CLOSED,
                "peer's half is closed",
            ));
        }
        if len > 0 {
            if len > self.conn_recv {
                return Err(conn_err(
                    ErrorCode::FLOW_CONTROL,
                    "beyond connection window",
                ));
            }
            self.conn_recv -= len;
            if len > s.recv_window {
                self.remove(id);
                // The bytes are dropped; their connection credit goes back with the next update.
                self.conn_unreleased = self.conn_unreleased.saturating_add(len);
                return Err(stream_err(
                    id,
                    ErrorCode::FLOW_CONTROL,
                    "beyond stream window",
                ));
            }
            s.recv_window -= len;
        }
        check_order(frame, s, false)
            .map_err(|reason| stream_err(id, ErrorCode::PROTOCOL, reason))?;
        if frame.ends_stream() {
            s.recv_open = false;
        }
        self.close_if_done(id);
        let window_update = self.release_connection(len);
        deliver(window_update)
    }

    /// SYNC_REQUEST may be sent or received here: `receiver` is the role it flows to, and
    /// CACHE_SYNC must have been agreed. Either rule broken is a connection error.
    fn check_sync_request(&self, receiver: Role) -> Result<(), SessionError> {
        if self.role != receiver {
            return Err(conn_err(
                ErrorCode::PROTOCOL,
                "SYNC_REQUEST flows hub to agent",
            ));
        }
        if !self.capabilities.contains(Capabilities::CACHE_SYNC) {
            return Err(conn_err(
                ErrorCode::PROTOCOL,
                "SYNC_REQUEST without the CACHE_SYNC capability",
            ));
        }
        Ok(())
    }
}

/// PROGRESS_REQUEST may go on stream `s`: a sync stream, from its receiver to its opener (the
/// side that has `s.local == receiving`). Anything else is a stream error.
fn check_progress_request(id: StreamId, s: &Stream, receiving: bool) -> Result<(), SessionError> {
    if s.kind != StreamKind::Sync || s.local != receiving {
        return Err(stream_err(
            id,
            ErrorCode::PROTOCOL,
            "PROGRESS_REQUEST goes only from a sync stream's receiver to its opener",
        ));
    }
    Ok(())
}

/// How many owed bytes make a receiver return credit on a window that carries frames which
/// cannot be split (sync streams, and the connection, which carries them too): half the
/// `initial` window, to keep updates rare, but at most `initial - max_frame + 1`. A sender
/// holding a frame of up to `max_frame` bytes (the receiver's maximum) must always get the
/// window for it once everything before it was consumed: with `owed` bytes not returned its
/// window is `initial - owed`, so at most `initial - max_frame` may stay owed.
fn unsplittable_threshold(initial: u32, max_frame: u32) -> u32 {
    (initial / 2)
        .min(initial.saturating_sub(max_frame).saturating_add(1))
        .max(1)
}

/// Bytes of flow-control credit a frame consumes.
fn flow_len(frame: &Frame) -> u32 {
    if frame.frame_type().is_flow_controlled() {
        crate::codec::body_len(frame) as u32
    } else {
        0
    }
}

/// Checks that `frame` may come next on stream `s` (on the side that sends it when
/// `sending`), and advances the stream's phase.
fn check_order(frame: &Frame, s: &mut Stream, sending: bool) -> Result<(), &'static str> {
    // On a request stream the requester is the side that opened it.
    let requester = s.local == sending;
    match (s.kind, frame) {
        (StreamKind::Request, Frame::Response(_)) => {
            if requester {
                return Err("RESPONSE from the requester");
            }
            if s.phase {
                return Err("second RESPONSE");
            }
            s.phase = true;
        }
        (StreamKind::Request, Frame::Data(_) | Frame::End(_)) => {
            if !requester && !s.phase {
                return Err("body before RESPONSE");
            }
        }
        (StreamKind::Request, Frame::Request(_)) => return Err("REQUEST on an open stream"),
        (StreamKind::Sync, Frame::SnapshotBegin(_)) => s.phase = true,
        (StreamKind::Sync, Frame::SnapshotItems(_)) if s.phase => {}
        (StreamKind::Sync, Frame::SnapshotItems(_)) => return Err("items outside a snapshot"),
        (StreamKind::Sync, Frame::SnapshotEnd(_)) if s.phase => s.phase = false,
        (StreamKind::Sync, Frame::SnapshotEnd(_)) => return Err("SNAPSHOT_END without BEGIN"),
        (StreamKind::Sync, Frame::WatchEvent(_)) if !s.phase => {}
        (StreamKind::Sync, Frame::WatchEvent(_)) => return Err("watch event inside a snapshot"),
        (StreamKind::Sync, Frame::Progress(_)) if !s.phase => {}
        (StreamKind::Sync, Frame::Progress(_)) => return Err("PROGRESS inside a snapshot"),
        (StreamKind::Sync, Frame::End(_)) => {}
        _ => return Err("frame type not allowed on this kind of stream"),
    }
    Ok(())
}
