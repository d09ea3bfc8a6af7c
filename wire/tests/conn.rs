//! The connection engine, hub and agent end to end: two [`Connection`]s joined by in-memory
//! pipes, simulated time, no sockets.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::*;
use proptest::prelude::*;

const HUB: usize = 0;
const AGENT: usize = 1;

// ---------------------------------------------------------------------------------------------
// Harness

struct Side {
    conn: Connection,
    /// Bytes received and not yet decoded (a partial frame).
    rbuf: BytesMut,
    eb: EncodeBuf,
    events: Vec<Event>,
}

impl Side {
    fn collect(&mut self) {
        while let Some(e) = self.conn.poll_event() {
            self.events.push(e);
        }
    }
}

/// A hub and an agent. `pipes[i]` holds the bytes side `i` sent that the other side has not
/// received yet.
struct Net {
    sides: [Side; 2],
    pipes: [BytesMut; 2],
    now: Instant,
    /// The streams side `i` sent RESET for.
    resets_sent: [BTreeSet<StreamId>; 2],
}

fn settings(stream_window: u32, conn_window: u32, max_streams: u32) -> Settings {
    Settings {
        max_frame_size: 16 * 1024,
        max_concurrent_streams: max_streams,
        initial_stream_window: stream_window,
        initial_sync_window: 16 * 1024,
        initial_connection_window: conn_window,
    }
}

fn cfg(accept_requests: bool) -> ConnConfig {
    ConnConfig {
        keepalive: Duration::from_secs(1),
        max_data_frame: 16 * 1024,
        send_buffer: 64 * 1024,
        accept_requests,
        accept_sync: false,
        // Net sets what the handshake agreed.
        capabilities: Capabilities::default(),
    }
}

impl Net {
    /// Hub and agent after a real handshake, both announcing `s` and the default
    /// capabilities (CACHE_SYNC among them).
    fn new(s: Settings, hub_cfg: ConnConfig, agent_cfg: ConnConfig) -> Net {
        Net::with_capabilities(s, Offer::default().capabilities, hub_cfg, agent_cfg)
    }

    /// Hub and agent after a real handshake, both announcing `s` and `capabilities`; both
    /// engines get the capabilities agreed, as the drivers do.
    fn with_capabilities(
        s: Settings,
        capabilities: Capabilities,
        mut hub_cfg: ConnConfig,
        mut agent_cfg: ConnConfig,
    ) -> Net {
        let offer = Offer {
            settings: s,
            capabilities,
            ..Offer::default()
        };
        let hello = Hello {
            min_version: 1,
            max_version: 1,
            capabilities: offer.capabilities,
            settings: s,
            agent_id: "agent-1".into(),
            cluster_id: "edge-1".into(),
            software: "test".into(),
            labels: vec![("env".into(), "test".into())],
        };
        let (ack, agreed) = handshake::accept(&hello, &offer, "hub-0", 1000).unwrap();
        assert_eq!(handshake::confirm(&offer, &ack).unwrap(), agreed);
        hub_cfg.capabilities = agreed.capabilities;
        agent_cfg.capabilities = agreed.capabilities;
        let now = Instant::now();
        let side = |conn| Side {
            conn,
            rbuf: BytesMut::new(),
            eb: EncodeBuf::new(),
            events: Vec::new(),
        };
        Net {
            sides: [
                side(Connection::new(
                    Role::Hub,
                    agreed.hub_settings,
                    agreed.agent_settings,
                    hub_cfg,
                    now,
                )),
                side(Connection::new(
                    Role::Agent,
                    agreed.agent_settings,
                    agreed.hub_settings,
                    agent_cfg,
                    now,
                )),
            ],
            pipes: [BytesMut::new(), BytesMut::new()],
            now,
            resets_sent: [BTreeSet::new(), BTreeSet::new()],
        }
    }

    fn hub(&mut self) -> &mut Connection {
        &mut self.sides[HUB].conn
    }

    fn agent(&mut self) -> &mut Connection {
        &mut self.sides[AGENT].conn
    }

    /// Moves side `i`'s `poll_transmit` output (one call) into its pipe; returns the frames.
    fn pull(&mut self, i: usize, max_bytes: usize) -> usize {
        let side = &mut self.sides[i];
        let before = self.pipes[i].len();
        let n = side.conn.poll_transmit(&mut side.eb, max_bytes);
        while side.eb.has_remaining() {
            let chunk = side.eb.chunk();
            let len = chunk.len();
            self.pipes[i].extend_from_slice(chunk);
            side.eb.advance(len);
        }
        side.collect();
        for f in decode_all(&self.pipes[i][before..]) {
            if let Frame::Reset(r) = f {
                self.resets_sent[i].insert(r.stream_id);
            }
        }
        n
    }

    /// Like [`Net::pull`], and decodes what was pulled.
    fn pull_frames(&mut self, i: usize, max_bytes: usize) -> Vec<Frame> {
        let before = self.pipes[i].len();
        self.pull(i, max_bytes);
        decode_all(&self.pipes[i][before..])
    }

    /// Everything side `i` has to send, decoded (and left in its pipe).
    fn pull_all_frames(&mut self, i: usize) -> Vec<Frame> {
        let mut frames = Vec::new();
        while self.sides[i].conn.has_transmit() {
            frames.extend(self.pull_frames(i, 64 * 1024));
        }
        frames
    }

    /// Delivers up to `n` bytes of side `i`'s pipe to the other side.
    fn deliver(&mut self, i: usize, n: usize) -> usize {
        let n = n.min(self.pipes[i].len());
        if n == 0 {
            return 0;
        }
        let chunk = self.pipes[i].split_to(n);
        let to = &mut self.sides[1 - i];
        to.rbuf.extend_from_slice(&chunk);
        to.conn.handle_bytes(&mut to.rbuf, self.now);
        to.collect();
        n
    }

    /// Side `a` transmits everything it has (in calls of `max_bytes`), all of it arrives at
    /// `b`.
    fn pump_one(&mut self, a: usize, max_bytes: usize) -> usize {
        let mut moved = 0;
        while self.sides[a].conn.has_transmit() {
            moved += self.pull(a, max_bytes);
        }
        moved + self.deliver(a, usize::MAX)
    }

    /// Both ways until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            if self.pump_one(HUB, 64 * 1024) + self.pump_one(AGENT, 64 * 1024) == 0 {
                return;
            }
        }
        panic!("pump does not settle");
    }

    /// Advances simulated time and runs the timers that are due.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        for side in &mut self.sides {
            if side.conn.poll_timeout().is_some_and(|t| t <= self.now) {
                side.conn.handle_timeout(self.now);
            }
            side.collect();
        }
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        self.sides[i].collect();
        std::mem::take(&mut self.sides[i].events)
    }
}

fn decode_all(bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut dec = Decoder::new(MAX_FRAME_SIZE_LIMIT);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        out.push(f);
    }
    assert!(buf.is_empty(), "a partial frame was transmitted");
    out
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// Deterministic, non-periodic bytes: position `off` of body `(id, dir)`.
fn pat(id: u32, dir: u8, off: usize) -> u8 {
    let x = (off as u64) ^ (u64::from(id) << 40) ^ (u64::from(dir) << 60);
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8
}

fn body(id: u32, dir: u8, off: usize, n: usize) -> Bytes {
    (off..off + n)
        .map(|i| pat(id, dir, i))
        .collect::<Vec<u8>>()
        .into()
}

fn closed_events(events: &[Event]) -> Vec<&CloseReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Closed(r) => Some(r),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip

#[test]
fn request_response_with_bodies_larger_than_the_windows() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    const N: usize = 1 << 20;
    let up = body(0, 0, 0, N);
    let down = body(0, 1, 0, N);
    let id = net
        .hub()
        .open_request(b("POST"), b("/upload"), vec![(b("x-test"), b("1"))], false)
        .unwrap();
    assert_eq!(id, 2, "the hub opens even ids");
    let (mut up_off, mut down_off) = (0, 0);
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let (mut up_end, mut down_end, mut responded) = (false, false, false);
    for _ in 0..100_000 {
        while up_off < N && net.hub().is_writable(id) {
            let n = 10_000.min(N - up_off);
            let last = up_off + n == N;
            net.hub()
                .send_data(id, up.slice(up_off..up_off + n), last)
                .unwrap();
            up_off += n;
        }
        while responded && down_off < N && net.agent().is_writable(id) {
            let n = 7_000.min(N - down_off);
            let chunk = down.slice(down_off..down_off + n);
            down_off += n;
            if down_off == N {
                net.agent().send_data(id, chunk, false).unwrap();
                net.agent()
                    .send_end(id, vec![(b("x-sum"), b("ok"))])
                    .unwrap();
            } else {
                net.agent().send_data(id, chunk, false).unwrap();
            }
        }
        for i in [HUB, AGENT] {
            net.pull(i, 20_000);
            net.deliver(i, 30_000);
        }
        for e in net.events(AGENT) {
            match e {
                Event::Request {
                    id: rid,
                    method,
                    path,
                    fields,
                    end_stream,
                } => {
                    assert_eq!(
                        (rid, &method[..], &path[..]),
                        (id, &b"POST"[..], &b"/upload"[..])
                    );
                    assert_eq!(fields, vec![(b("x-test"), b("1"))]);
                    assert!(!end_stream);
                    net.agent().send_response(id, 200, vec![], false).unwrap();
                    responded = true;
                }
                Event::Data {
                    data, end_stream, ..
                } => {
                    got_up.extend_from_slice(&data);
                    net.agent().release(id, data.len() as u32);
                    up_end |= end_stream;
                }
                Event::Writable { .. } => {}
                e => panic!("agent: unexpected {e:?}"),
            }
        }
        for e in net.events(HUB) {
            match e {
                Event::Response {
                    status, end_stream, ..
                } => assert_eq!((status, end_stream), (200, false)),
                Event::Data {
                    data, end_stream, ..
                } => {
                    assert!(!end_stream);
                    got_down.extend_from_slice(&data);
                    net.hub().release(id, data.len() as u32);
                }
                Event::End { trailers, .. } => {
                    assert_eq!(trailers, vec![(b("x-sum"), b("ok"))]);
                    down_end = true;
                }
                Event::Writable { .. } => {}
                e => panic!("hub: unexpected {e:?}"),
            }
        }
        if up_end && down_end {
            break;
        }
    }
    assert!(up_end && down_end, "the exchange did not finish");
    assert!(got_up == up, "request body damaged");
    assert!(got_down == down, "response body damaged");
    net.pump();
    for side in &net.sides {
        assert_eq!(side.conn.open_streams(), 0);
        assert_eq!(side.conn.session().open_streams(), 0);
        assert!(!side.conn.is_closed());
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Random interleavings

#[derive(Debug, Clone)]
enum Op {
    Open {
        side: usize,
        req: usize,
        resp: usize,
        trailers: bool,
    },
    Send {
        side: usize,
        pick: usize,
        n: usize,
    },
    Release {
        side: usize,
        pick: usize,
        n: usize,
    },
    Reset {
        side: usize,
        pick: usize,
    },
    GoAway {
        side: usize,
        ms: u64,
    },
    Pull {
        side: usize,
        max_bytes: usize,
    },
    Deliver {
        side: usize,
        n: usize,
    },
    Advance {
        ms: u64,
    },
    /// The agent opens a sync stream.
    OpenSync,
    /// The agent queues the next sync frame on one of its sync streams: `what` picks among
    /// those the snapshot phase allows (items, end or a restart inside a snapshot; a watch
    /// event, an unsolicited PROGRESS or a restart outside), `n` sizes objects.
    SyncFrame {
        pick: usize,
        what: u8,
        n: usize,
    },
    /// The agent ends one of its sync streams.
    EndSync {
        pick: usize,
    },
    /// The hub asks how current a sync stream is.
    AskProgress {
        pick: usize,
    },
    /// The hub sends a SYNC_REQUEST.
    SyncRequest,
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![Just(0usize), 1usize..200, 0usize..40_000]
}

fn op() -> impl Strategy<Value = Op> {
    let side = 0usize..2;
    prop_oneof![
        40 => (side.clone(), len(), len(), any::<bool>())
            .prop_map(|(side, req, resp, trailers)| Op::Open { side, req, resp, trailers }),
        60 => (side.clone(), any::<usize>(), 1usize..30_000)
            .prop_map(|(side, pick, n)| Op::Send { side, pick, n }),
        40 => (side.clone(), any::<usize>(), 1usize..40_000)
            .prop_map(|(side, pick, n)| Op::Release { side, pick, n }),
        12 => (side.clone(), any::<usize>()).prop_map(|(side, pick)| Op::Reset { side, pick }),
        1 => (side.clone(), 0u64..500).prop_map(|(side, ms)| Op::GoAway { side, ms }),
        60 => (side.clone(), 1usize..40_000)
            .prop_map(|(side, max_bytes)| Op::Pull { side, max_bytes }),
        60 => (side, 1usize..40_000).prop_map(|(side, n)| Op::Deliver { side, n }),
        26 => (0u64..40).prop_map(|ms| Op::Advance { ms }),
        10 => Just(Op::OpenSync),
        40 => (any::<usize>(), any::<u8>(), 0usize..4_000)
            .prop_map(|(pick, what, n)| Op::SyncFrame { pick, what, n }),
        3 => any::<usize>().prop_map(|pick| Op::EndSync { pick }),
        15 => any::<usize>().prop_map(|pick| Op::AskProgress { pick }),
        3 => Just(Op::SyncRequest),
    ]
}

/// What the application on one side knows about a stream.
#[derive(Debug, Default)]
struct AppStream {
    opener: bool,
    /// Bytes this side sends, and how many it handed to the engine.
    send_len: usize,
    sent: usize,
    send_ended: bool,
    trailers: bool,
    /// Responder: RESPONSE given to the engine.
    responded: bool,
    /// Bytes the peer sends (from the request's fields).
    recv_len: usize,
    received: usize,
    recv_ended: bool,
    got_response: bool,
    unreleased: usize,
    reset: bool,
    /// The engine refused a command: a Reset event must follow.
    expect_reset: bool,
    /// A sync stream (the agent opens it and sends, the hub receives).
    sync: bool,
    /// Sync, opener: a snapshot is in progress.
    in_snapshot: bool,
    /// Sync: the resourceVersion last queued (opener) or received (receiver); they count up.
    rv: u64,
    /// Sync: the frames queued (opener) or received (receiver), in order.
    log: Vec<Frame>,
    /// Sync, opener: a PROGRESS_REQUEST to answer once the snapshot has ended.
    pending_progress: Option<u32>,
    /// Sync, receiver: the highest `seq` asked and the highest answered.
    asked: u32,
    answered: u32,
}

impl AppStream {
    fn can_send(&self) -> bool {
        !self.sync && !self.reset && !self.send_ended && (self.opener || self.responded)
    }
    /// Sync, opener: frames may still be queued.
    fn can_sync(&self) -> bool {
        self.sync && self.opener && !self.reset && !self.send_ended
    }
    fn finished(&self) -> bool {
        self.reset || (self.send_ended && self.recv_ended)
    }
}

#[derive(Debug, Default)]
struct App {
    streams: BTreeMap<StreamId, AppStream>,
    closed: Option<CloseReason>,
    /// Hub: SYNC_REQUESTs queued (the n-th asks for version `v{n}`). Agent: the last seen.
    sync_requests: u32,
}

/// The key of the `n`-th SYNC_REQUEST of the random interleavings.
fn nth_key(n: u32) -> ResourceKey {
    ResourceKey {
        group: String::new(),
        version: format!("v{n}"),
        resource: "pods".into(),
    }
}

fn field(fields: &Fields, name: &str) -> usize {
    let (_, v) = fields
        .iter()
        .find(|(n, _)| &n[..] == name.as_bytes())
        .unwrap();
    std::str::from_utf8(v).unwrap().parse().unwrap()
}

/// Direction of a stream's bytes: 0 opener → responder, 1 back.
fn dir(opener: bool, sending: bool) -> u8 {
    u8::from(opener != sending)
}

impl App {
    fn open(&mut self, conn: &mut Connection, req: usize, resp: usize, trailers: bool) {
        let fields = vec![
            (b("x-len"), Bytes::from(req.to_string())),
            (b("x-resp"), Bytes::from(resp.to_string())),
            (b("x-trailers"), Bytes::from(u8::from(trailers).to_string())),
        ];
        match conn.open_request(b("POST"), b("/x"), fields, req == 0) {
            Ok(id) => {
                let s = AppStream {
                    opener: true,
                    send_len: req,
                    send_ended: req == 0,
                    trailers,
                    recv_len: resp,
                    ..AppStream::default()
                };
                assert!(self.streams.insert(id, s).is_none(), "id {id} reused");
            }
            Err(OpenError::Busy | OpenError::Closing) => {}
            Err(e) => panic!("open: {e}"),
        }
    }

    /// Hands up to `n` more body bytes of `id` to the engine, ending the half at the end.
    fn send(&mut self, conn: &mut Connection, id: StreamId, n: usize) {
        let s = self.streams.get_mut(&id).unwrap();
        let n = n.min(s.send_len - s.sent);
        let data = body(id, dir(s.opener, true), s.sent, n);
        s.sent += n;
        let last = s.sent == s.send_len;
        if last && s.trailers {
            conn.send_data(id, data, false).unwrap();
            conn.send_end(id, vec![(b("x-t"), b("1"))]).unwrap();
        } else {
            conn.send_data(id, data, last).unwrap();
        }
        s.send_ended = last;
    }

    /// Agent: opens a sync stream; its snapshot starts.
    fn open_sync(&mut self, conn: &mut Connection) {
        match conn.open_sync(pods()) {
            Ok(id) => {
                let s = AppStream {
                    opener: true,
                    sync: true,
                    in_snapshot: true,
                    recv_ended: true,
                    log: vec![Frame::SnapshotBegin(SnapshotBegin {
                        stream_id: id,
                        resource: pods(),
                    })],
                    ..AppStream::default()
                };
                assert!(self.streams.insert(id, s).is_none(), "id {id} reused");
            }
            Err(OpenError::Busy | OpenError::Closing) => {}
            Err(e) => panic!("open_sync: {e}"),
        }
    }

    /// Agent: queues the next sync frame on `id` (see [`Op::SyncFrame`]).
    fn sync_frame(&mut self, conn: &mut Connection, id: StreamId, what: u8, n: usize) {
        let s = self.streams.get_mut(&id).unwrap();
        let begin = Frame::SnapshotBegin(SnapshotBegin {
            stream_id: id,
            resource: pods(),
        });
        let object = |k: usize| body(id, 2, s.log.len() * 8 + k, n);
        let frame = match (s.in_snapshot, what % 6) {
            (true, 0..=2) => Frame::SnapshotItems(SnapshotItems {
                stream_id: id,
                items: (0..1 + n % 3).map(object).collect(),
            }),
            (true, 3 | 4) => Frame::SnapshotEnd(SnapshotEnd {
                stream_id: id,
                resource_version: (s.rv + 1).to_string(),
            }),
            (false, 0..=2) => Frame::WatchEvent(WatchEvent {
                stream_id: id,
                event: EventType::Modified,
                resource_version: (s.rv + 1).to_string(),
                object: object(0),
            }),
            (false, 3 | 4) => Frame::Progress(Progress {
                stream_id: id,
                seq: 0,
                resource_version: s.rv.to_string(),
            }),
            _ => begin,
        };
        self.queue_sync(conn, frame);
    }

    /// Agent: gives `frame` to the engine with the matching command, and logs it.
    fn queue_sync(&mut self, conn: &mut Connection, frame: Frame) {
        let id = frame.stream_id();
        let s = self.streams.get_mut(&id).unwrap();
        let r = match frame.clone() {
            Frame::SnapshotBegin(_) => {
                s.in_snapshot = true;
                conn.send_snapshot_begin(id)
            }
            Frame::SnapshotItems(i) => conn.send_snapshot_items(id, i.items),
            Frame::SnapshotEnd(e) => {
                s.in_snapshot = false;
                s.rv += 1;
                conn.send_snapshot_end(id, e.resource_version)
            }
            Frame::WatchEvent(w) => {
                s.rv += 1;
                conn.send_watch_event(id, w.event, w.resource_version, w.object)
            }
            Frame::Progress(p) => conn.send_progress(id, p.seq, &p.resource_version),
            f => panic!("not a sync frame: {f:?}"),
        };
        r.unwrap_or_else(|e| panic!("{frame:?}: {e}"));
        s.log.push(frame);
        // A request that came in during the snapshot is answered once it has ended.
        if !s.in_snapshot {
            if let Some(seq) = s.pending_progress.take() {
                let answer = Frame::Progress(Progress {
                    stream_id: id,
                    seq,
                    resource_version: s.rv.to_string(),
                });
                self.queue_sync(conn, answer);
            }
        }
    }

    fn handle(&mut self, conn: &mut Connection, events: Vec<Event>) {
        for e in events {
            if let Some(id) = event_stream(&e) {
                let s = self.streams.get(&id);
                assert!(
                    s.is_some()
                        || matches!(
                            e,
                            Event::Request { .. }
                                | Event::Sync {
                                    frame: Frame::SnapshotBegin(_),
                                    ..
                                }
                        ),
                    "{e:?} on an unknown stream"
                );
                if let Some(s) = s {
                    assert!(!s.reset, "{e:?} after the stream was reset");
                }
            }
            match e {
                Event::Request {
                    id,
                    fields,
                    end_stream,
                    ..
                } => {
                    let req = field(&fields, "x-len");
                    let resp = field(&fields, "x-resp");
                    assert_eq!(end_stream, req == 0);
                    let mut s = AppStream {
                        opener: false,
                        send_len: resp,
                        send_ended: resp == 0,
                        trailers: field(&fields, "x-trailers") == 1,
                        recv_len: req,
                        recv_ended: end_stream,
                        ..AppStream::default()
                    };
                    match conn.send_response(id, 200, vec![], resp == 0) {
                        Ok(()) => s.responded = true,
                        // A RESET came in the same batch: its event follows.
                        Err(StreamGone::NotOpen(_)) => s.expect_reset = true,
                        Err(e) => panic!("{e}"),
                    }
                    assert!(
                        self.streams.insert(id, s).is_none(),
                        "second REQUEST on {id}"
                    );
                }
                Event::Response { id, end_stream, .. } => {
                    let s = self.streams.get_mut(&id).unwrap();
                    assert!(s.opener && !s.got_response && !s.recv_ended);
                    s.got_response = true;
                    if end_stream {
                        assert_eq!(s.recv_len, 0);
                        s.recv_ended = true;
                    }
                }
                Event::Data {
                    id,
                    data,
                    end_stream,
                } => {
                    let s = self.streams.get_mut(&id).unwrap();
                    assert!(!s.recv_ended, "data after the end");
                    assert!(!s.opener || s.got_response, "data before the response");
                    let d = dir(s.opener, false);
                    for (k, byte) in data.iter().enumerate() {
                        assert_eq!(*byte, pat(id, d, s.received + k), "stream {id} byte");
                    }
                    s.received += data.len();
                    s.unreleased += data.len();
                    assert!(s.received <= s.recv_len, "stream {id}: too many bytes");
                    if end_stream {
                        assert_eq!(s.received, s.recv_len, "stream {id}: bytes lost");
                        s.recv_ended = true;
                    }
                }
                Event::End { id, trailers } => {
                    let s = self.streams.get_mut(&id).unwrap();
                    assert!(!s.recv_ended, "a second end");
                    if s.sync {
                        assert!(!s.opener && trailers.is_empty());
                        s.recv_ended = true;
                        continue;
                    }
                    assert!(!s.opener || s.got_response, "end before the response");
                    assert_eq!(trailers, vec![(b("x-t"), b("1"))]);
                    assert_eq!(s.received, s.recv_len, "stream {id}: bytes lost");
                    s.recv_ended = true;
                }
                Event::Reset { id, origin, .. } => {
                    assert_ne!(origin, ResetOrigin::StreamError, "no stream errors here");
                    self.streams.get_mut(&id).unwrap().reset = true;
                }
                Event::Writable { .. } | Event::GoAway { .. } => {}
                Event::Closed(r) => {
                    assert!(self.closed.is_none(), "Closed twice");
                    assert!(
                        !matches!(r, CloseReason::Protocol { .. } | CloseReason::Local { .. }),
                        "{r:?}"
                    );
                    self.closed = Some(r);
                }
                Event::Sync { id, frame, credit } => {
                    let s = self.streams.entry(id).or_insert_with(|| AppStream {
                        sync: true,
                        send_ended: true,
                        ..AppStream::default()
                    });
                    assert!(s.sync && !s.opener && !s.recv_ended, "{frame:?} on {id}");
                    s.unreleased += credit as usize;
                    match &frame {
                        Frame::SnapshotEnd(SnapshotEnd {
                            resource_version: rv,
                            ..
                        })
                        | Frame::WatchEvent(WatchEvent {
                            resource_version: rv,
                            ..
                        }) => s.rv = rv.parse().unwrap(),
                        Frame::Progress(p) => {
                            // Every change queued before it has arrived before it.
                            assert_eq!(p.resource_version, s.rv.to_string(), "{p:?} overtook");
                            if p.seq > 0 {
                                assert!(p.seq <= s.asked && p.seq > s.answered, "{p:?} {s:?}");
                                s.answered = p.seq;
                            }
                        }
                        _ => {}
                    }
                    s.log.push(frame);
                }
                Event::ProgressRequest { id, seq } => {
                    let s = self.streams.get_mut(&id).unwrap();
                    assert!(s.sync && s.opener);
                    if s.send_ended {
                        // Our END is queued: the stream closes before an answer could go.
                    } else if s.in_snapshot {
                        s.pending_progress = Some(seq);
                    } else {
                        let rv = s.rv.to_string();
                        match conn.send_progress(id, seq, &rv) {
                            Ok(()) => s.log.push(Frame::Progress(Progress {
                                stream_id: id,
                                seq,
                                resource_version: rv,
                            })),
                            // A RESET (or the close) came in the same batch: its event follows.
                            Err(StreamGone::NotOpen(_)) => s.expect_reset = true,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
                Event::SyncRequest(keys) => {
                    // Coalesced, never reordered: each one newer than the last.
                    assert_eq!(keys.len(), 1);
                    let n: u32 = keys[0].version[1..].parse().unwrap();
                    assert!(
                        n > self.sync_requests,
                        "SYNC_REQUEST {n} after {}",
                        self.sync_requests
                    );
                    assert_eq!(keys[0], nth_key(n));
                    self.sync_requests = n;
                }
                e @ Event::Discovery(_) => panic!("unexpected {e:?}"),
            }
        }
    }

    /// Finishes every send and releases every byte.
    fn finish_all(&mut self, conn: &mut Connection) {
        let ids: Vec<StreamId> = self.streams.keys().copied().collect();
        for id in ids {
            let s = &self.streams[&id];
            if s.can_sync() {
                if s.in_snapshot {
                    let end = Frame::SnapshotEnd(SnapshotEnd {
                        stream_id: id,
                        resource_version: (s.rv + 1).to_string(),
                    });
                    self.queue_sync(conn, end);
                }
                conn.send_end(id, vec![]).unwrap();
                self.streams.get_mut(&id).unwrap().send_ended = true;
            }
            let s = &self.streams[&id];
            if s.can_send() {
                let rest = s.send_len - s.sent;
                self.send(conn, id, rest);
            }
            let s = self.streams.get_mut(&id).unwrap();
            if !s.reset && s.unreleased > 0 {
                conn.release(id, s.unreleased as u32);
                s.unreleased = 0;
            }
        }
    }
}

fn event_stream(e: &Event) -> Option<StreamId> {
    match e {
        Event::Request { id, .. }
        | Event::Response { id, .. }
        | Event::Data { id, .. }
        | Event::End { id, .. }
        | Event::Reset { id, .. }
        | Event::Writable { id }
        | Event::Sync { id, .. }
        | Event::ProgressRequest { id, .. } => Some(*id),
        _ => None,
    }
}

fn pick(app: &App, n: usize, f: impl Fn(&AppStream) -> bool) -> Option<StreamId> {
    let ids: Vec<StreamId> = app
        .streams
        .iter()
        .filter(|(_, s)| f(s))
        .map(|(id, _)| *id)
        .collect();
    (!ids.is_empty()).then(|| ids[n % ids.len()])
}

fn run_ops(ops: Vec<Op>) {
    let prop_cfg = |accept_sync| ConnConfig {
        keepalive: Duration::from_millis(300),
        max_data_frame: 5_000,
        send_buffer: 10_000,
        accept_requests: true,
        accept_sync,
        capabilities: Capabilities::default(),
    };
    // Both open request streams; the agent opens sync streams too, the hub receives them.
    let mut net = Net::new(
        settings(8 * 1024, 16 * 1024, 4),
        prop_cfg(true),
        prop_cfg(false),
    );
    let mut apps = [App::default(), App::default()];
    let sync = |net: &mut Net, apps: &mut [App; 2]| {
        for i in [HUB, AGENT] {
            let events = net.events(i);
            apps[i].handle(&mut net.sides[i].conn, events);
        }
    };
    for op in ops {
        match op {
            Op::Open {
                side,
                req,
                resp,
                trailers,
            } => apps[side].open(&mut net.sides[side].conn, req, resp, trailers),
            Op::Send { side, pick: p, n } => {
                if let Some(id) = pick(&apps[side], p, AppStream::can_send) {
                    apps[side].send(&mut net.sides[side].conn, id, n);
                }
            }
            Op::Release { side, pick: p, n } => {
                if let Some(id) = pick(&apps[side], p, |s| !s.reset && s.unreleased > 0) {
                    let s = apps[side].streams.get_mut(&id).unwrap();
                    let n = n.min(s.unreleased);
                    s.unreleased -= n;
                    net.sides[side].conn.release(id, n as u32);
                }
            }
            Op::Reset { side, pick: p } => {
                if let Some(id) = pick(&apps[side], p, |s| !s.finished()) {
                    apps[side].streams.get_mut(&id).unwrap().reset = true;
                    net.sides[side].conn.reset(id, ErrorCode::CANCEL);
                }
            }
            Op::GoAway { side, ms } => {
                let deadline = net.now + Duration::from_millis(ms);
                net.sides[side]
                    .conn
                    .go_away(ErrorCode::NO_ERROR, "drain", deadline);
            }
            Op::Pull { side, max_bytes } => {
                net.pull(side, max_bytes);
            }
            Op::Deliver { side, n } => {
                net.deliver(side, n);
            }
            Op::Advance { ms } => net.advance(Duration::from_millis(ms)),
            Op::OpenSync => apps[AGENT].open_sync(&mut net.sides[AGENT].conn),
            Op::SyncFrame { pick: p, what, n } => {
                if let Some(id) = pick(&apps[AGENT], p, AppStream::can_sync) {
                    apps[AGENT].sync_frame(&mut net.sides[AGENT].conn, id, what, n);
                }
            }
            Op::EndSync { pick: p } => {
                if let Some(id) = pick(&apps[AGENT], p, AppStream::can_sync) {
                    net.sides[AGENT].conn.send_end(id, vec![]).unwrap();
                    apps[AGENT].streams.get_mut(&id).unwrap().send_ended = true;
                }
            }
            Op::AskProgress { pick: p } => {
                let live = |s: &AppStream| s.sync && !s.opener && !s.finished();
                if let Some(id) = pick(&apps[HUB], p, live) {
                    let s = apps[HUB].streams.get_mut(&id).unwrap();
                    s.asked += 1;
                    net.sides[HUB].conn.request_progress(id, s.asked).unwrap();
                }
            }
            Op::SyncRequest => {
                let n = apps[HUB].sync_requests + 1;
                match net.sides[HUB].conn.send_sync_request(vec![nth_key(n)]) {
                    Ok(()) => apps[HUB].sync_requests = n,
                    Err(OpenError::Closing) => {}
                    Err(e) => panic!("send_sync_request: {e}"),
                }
            }
        }
        sync(&mut net, &mut apps);
    }

    // Settle: every application finishes its sends and releases everything; the transport
    // delivers everything; time runs (drain deadlines pass).
    let mut hung_up = [false, false];
    for _ in 0..20_000 {
        for i in [HUB, AGENT] {
            apps[i].finish_all(&mut net.sides[i].conn);
        }
        sync(&mut net, &mut apps);
        let moved = net.pump_one(HUB, 64 * 1024) + net.pump_one(AGENT, 64 * 1024);
        sync(&mut net, &mut apps);
        // A closed side whose bytes are all out closes its transport: the peer sees EOF.
        for i in [HUB, AGENT] {
            let done = net.sides[i].conn.is_closed()
                && !net.sides[i].conn.has_transmit()
                && net.pipes[i].is_empty();
            if done && !hung_up[i] {
                hung_up[i] = true;
                net.sides[1 - i].conn.transport_closed("eof");
            }
        }
        sync(&mut net, &mut apps);
        let quiet =
            net.sides.iter().all(|s| {
                (s.conn.is_closed() || s.conn.open_streams() == 0) && !s.conn.has_transmit()
            }) && net.pipes.iter().all(|p| p.is_empty());
        if moved == 0 && quiet {
            break;
        }
        net.advance(Duration::from_millis(10));
        sync(&mut net, &mut apps);
    }

    for (i, side) in net.sides.iter().enumerate() {
        assert_eq!(side.conn.open_streams(), 0, "side {i} holds streams");
        assert_eq!(side.conn.session().open_streams(), 0, "side {i} session");
        assert_eq!(side.conn.is_closed(), apps[i].closed.is_some());
        for (id, s) in &apps[i].streams {
            assert!(s.finished(), "side {i} stream {id} never ended: {s:?}");
            assert!(!s.expect_reset || s.reset, "side {i} stream {id}: no Reset");
            if !s.reset {
                assert_eq!(s.received, s.recv_len);
                assert_eq!(s.sent, s.send_len);
            }
        }
    }
    // Every sync stream that was not reset delivered every frame, in order, to the hub.
    for (id, a) in &apps[AGENT].streams {
        if !a.sync || a.reset {
            continue;
        }
        // The agent may END a stream before the hub sees it; if the hub refuses it then (it is
        // going away, or has not seen an earlier stream's END yet and is at its limit), the
        // RESET finds the stream closed at the agent, which never hears of it.
        let Some(h) = apps[HUB].streams.get(id) else {
            assert!(
                net.resets_sent[HUB].contains(id) || apps[HUB].closed.is_some(),
                "sync stream {id} never reached the hub, and the hub did not refuse it"
            );
            continue;
        };
        // (A hub's RESET may cross the agent's END: then only the hub saw a reset.)
        if !h.reset {
            assert!(h.recv_ended, "sync stream {id} did not end at the hub");
            assert!(h.log == a.log, "sync stream {id}: frames lost or reordered");
        }
    }
    assert!(apps[AGENT].sync_requests <= apps[HUB].sync_requests);
    // A drain that finished lets the peer close on its own, without an EOF.
    for i in [HUB, AGENT] {
        if apps[i].closed == Some(CloseReason::Drained) {
            assert!(
                matches!(
                    apps[1 - i].closed,
                    Some(
                        CloseReason::Drained
                            | CloseReason::PeerGoAway { .. }
                            | CloseReason::KeepaliveTimeout
                    )
                ),
                "peer of a drained side: {:?}",
                apps[1 - i].closed
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_interleavings_lose_nothing(ops in proptest::collection::vec(op(), 1..250)) {
        run_ops(ops);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A stalled stream

#[test]
fn a_stalled_stream_does_not_stall_the_others() {
    let window = 64 * 1024;
    let mut net = Net::new(settings(window, 256 * 1024, 16), cfg(false), cfg(true));
    const N: usize = 300 * 1024;
    let ids: Vec<StreamId> = (0..6)
        .map(|_| {
            net.hub()
                .open_request(b("GET"), b("/big"), vec![], true)
                .unwrap()
        })
        .collect();
    let stalled = ids[0];
    net.pump();
    for e in net.events(AGENT) {
        let Event::Request { id, .. } = e else {
            panic!("{e:?}")
        };
        net.agent().send_response(id, 200, vec![], false).unwrap();
        net.agent().send_data(id, body(id, 1, 0, N), true).unwrap();
    }
    let mut got: BTreeMap<StreamId, (usize, bool)> = BTreeMap::new();
    for _ in 0..1_000 {
        net.pump_one(AGENT, 20_000);
        net.pump_one(HUB, 20_000);
        for e in net.events(HUB) {
            match e {
                Event::Data {
                    id,
                    data,
                    end_stream,
                } => {
                    let g = got.entry(id).or_default();
                    assert!(data
                        .iter()
                        .enumerate()
                        .all(|(k, x)| *x == pat(id, 1, g.0 + k)));
                    g.0 += data.len();
                    g.1 |= end_stream;
                    if id != stalled {
                        net.hub().release(id, data.len() as u32);
                    }
                }
                Event::Response { .. } => {}
                e => panic!("{e:?}"),
            }
        }
        if ids[1..].iter().all(|id| got.get(id).is_some_and(|g| g.1)) {
            break;
        }
    }
    for id in &ids[1..] {
        assert_eq!(got[id], (N, true), "stream {id}");
    }
    assert_eq!(
        got[&stalled],
        (window as usize, false),
        "the stalled stream holds one window"
    );
    assert_eq!(net.agent().send_buffered(stalled), N - window as usize);
    assert!(!net.agent().is_writable(stalled) || N - (window as usize) < 64 * 1024);
    // The consumer comes back: the rest flows.
    net.hub().release(stalled, window);
    for _ in 0..1_000 {
        net.pump();
        for e in net.events(HUB) {
            if let Event::Data {
                id,
                data,
                end_stream,
            } = e
            {
                let g = got.get_mut(&id).unwrap();
                g.0 += data.len();
                g.1 |= end_stream;
                net.hub().release(id, data.len() as u32);
            }
        }
        if got[&stalled].1 {
            break;
        }
    }
    assert_eq!(got[&stalled], (N, true));
    net.pump();
    assert_eq!(net.hub().open_streams(), 0);
    assert_eq!(net.agent().open_streams(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. Keepalive

fn is_ping(f: &Frame, ack: bool) -> bool {
    matches!(f, Frame::Ping(p) if p.ack == ack)
}

#[test]
fn a_silent_peer_is_pinged_then_dropped_after_three_intervals() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let step = Duration::from_millis(100);
    let mut pings = 0;
    for k in 1..=30 {
        net.advance(step);
        let frames = net.pull_all_frames(HUB);
        pings += frames.iter().filter(|f| is_ping(f, false)).count();
        // The agent answers, but none of its bytes ever reach the hub.
        net.deliver(HUB, usize::MAX);
        while net.agent().has_transmit() {
            net.pull(AGENT, 64 * 1024);
        }
        net.pipes[AGENT].clear();
        if k < 30 {
            assert!(!net.hub().is_closed(), "closed after {k} steps");
        } else {
            assert_eq!(
                net.hub().close_reason(),
                Some(&CloseReason::KeepaliveTimeout)
            );
            let last = frames.last().unwrap();
            assert!(
                matches!(last, Frame::GoAway(g) if g.code == ErrorCode::NO_ERROR && g.message == "keepalive timeout"),
                "{last:?}"
            );
        }
    }
    assert_eq!(pings, 2, "a PING at 1 s and at 2 s");
    let events = net.events(HUB);
    assert_eq!(closed_events(&events), vec![&CloseReason::KeepaliveTimeout]);
    assert_eq!(net.hub().poll_timeout(), None);
    // The agent got the GOAWAY.
    assert!(net
        .events(AGENT)
        .iter()
        .any(|e| matches!(e, Event::GoAway { message, .. } if message == "keepalive timeout")));
}

#[test]
fn a_live_peer_stays_up_over_many_intervals() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let (mut pings, mut acks) = (0, 0);
    for _ in 0..1_000 {
        let next = [HUB, AGENT]
            .iter()
            .filter_map(|i| net.sides[*i].conn.poll_timeout())
            .min()
            .unwrap();
        assert!(next > net.now);
        net.advance(next - net.now);
        for i in [HUB, AGENT] {
            let frames = net.pull_all_frames(i);
            pings += frames.iter().filter(|f| is_ping(f, false)).count();
            acks += frames.iter().filter(|f| is_ping(f, true)).count();
            net.deliver(i, usize::MAX);
        }
    }
    assert!(pings >= 900 && acks >= 900, "{pings} pings, {acks} acks");
    for i in [HUB, AGENT] {
        assert!(!net.sides[i].conn.is_closed());
        assert!(closed_events(&net.events(i)).is_empty());
    }
}

// ---------------------------------------------------------------------------------------------
// 5. Drain

#[test]
fn drain_lets_streams_finish_and_resets_the_rest_at_the_deadline() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let short = net
        .hub()
        .open_request(b("GET"), b("/short"), vec![], true)
        .unwrap();
    let long = net
        .hub()
        .open_request(b("GET"), b("/watch"), vec![], true)
        .unwrap();
    net.pump();
    net.events(AGENT);
    net.agent().send_response(long, 200, vec![], false).unwrap();
    net.agent().send_data(long, b("event 1"), false).unwrap();
    let deadline = net.now + Duration::from_secs(5);
    net.hub().go_away(ErrorCode::NO_ERROR, "restart", deadline);
    assert!(net.hub().is_draining());
    assert_eq!(
        net.hub().open_request(b("GET"), b("/"), vec![], true),
        Err(OpenError::Closing)
    );
    net.pump();
    let agent_events = net.events(AGENT);
    assert!(agent_events.contains(&Event::GoAway {
        code: ErrorCode::NO_ERROR,
        message: "restart".into()
    }));
    assert!(net.agent().is_draining());
    assert_eq!(
        net.agent().open_request(b("GET"), b("/"), vec![], true),
        Err(OpenError::Closing)
    );
    // The short stream finishes during the drain.
    net.agent()
        .send_response(short, 200, vec![], false)
        .unwrap();
    net.agent().send_data(short, b("done"), true).unwrap();
    net.pump();
    let events = net.events(HUB);
    assert!(events.contains(&Event::Data {
        id: short,
        data: b("done"),
        end_stream: true
    }));
    // Time passes, with keepalives, until just before the deadline: the watch stays open.
    while net.now + Duration::from_millis(500) < deadline {
        net.advance(Duration::from_millis(500));
        net.pump();
    }
    assert!(!net.hub().is_closed());
    assert_eq!(net.hub().open_streams(), 1);
    net.advance(deadline - net.now);
    let events = net.events(HUB);
    assert_eq!(
        events,
        vec![
            Event::Reset {
                id: long,
                code: ErrorCode::CANCEL,
                origin: ResetOrigin::Drain
            },
            Event::Closed(CloseReason::Drained)
        ]
    );
    let frames = net.pull_all_frames(HUB);
    assert!(frames.contains(&Frame::Reset(Reset {
        stream_id: long,
        code: ErrorCode::CANCEL
    })));
    net.deliver(HUB, usize::MAX);
    let events = net.events(AGENT);
    assert_eq!(
        events,
        vec![
            Event::Reset {
                id: long,
                code: ErrorCode::CANCEL,
                origin: ResetOrigin::Peer
            },
            Event::Closed(CloseReason::PeerGoAway {
                code: ErrorCode::NO_ERROR,
                message: "restart".into()
            })
        ]
    );
    for side in &net.sides {
        assert_eq!(side.conn.session().open_streams(), 0);
    }
}

#[test]
fn drain_closes_before_the_deadline_once_streams_are_done() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let id = net
        .hub()
        .open_request(b("GET"), b("/"), vec![], true)
        .unwrap();
    net.pump();
    net.events(AGENT);
    let deadline = net.now + Duration::from_secs(60);
    net.hub().go_away(ErrorCode::NO_ERROR, "restart", deadline);
    net.pump();
    assert!(!net.hub().is_closed());
    net.agent().send_response(id, 204, vec![], true).unwrap();
    net.pump();
    let events = net.events(HUB);
    assert_eq!(events.last(), Some(&Event::Closed(CloseReason::Drained)));
    assert!(
        net.agent().is_closed(),
        "the agent closes once its streams are done too"
    );
    // Nothing open: go_away closes at once.
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let now = net.now;
    net.agent().go_away(ErrorCode::NO_ERROR, "bye", now);
    assert_eq!(net.agent().close_reason(), Some(&CloseReason::Drained));
    let frames = net.pull_all_frames(AGENT);
    assert!(matches!(&frames[..], [Frame::GoAway(g)] if g.last_stream_id == 0));
}

#[test]
fn drain_refuses_streams_the_peer_opened_in_flight() {
    // Both sides accept requests here, so the refusal comes from the drain alone.
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(true), cfg(true));
    let before = net
        .agent()
        .open_request(b("GET"), b("/a"), vec![], true)
        .unwrap();
    net.pump();
    assert!(matches!(net.events(HUB)[..], [Event::Request { id, .. }] if id == before));
    // The hub drains while the agent's next REQUEST is on the wire.
    let deadline = net.now + Duration::from_secs(60);
    net.hub().go_away(ErrorCode::NO_ERROR, "restart", deadline);
    let crossing = net
        .agent()
        .open_request(b("GET"), b("/b"), vec![], true)
        .unwrap();
    net.pull(HUB, usize::MAX);
    net.pull(AGENT, usize::MAX);
    net.deliver(AGENT, usize::MAX); // REQUEST reaches the draining hub: refused, no event
    assert!(net.events(HUB).is_empty());
    net.deliver(HUB, usize::MAX); // GOAWAY (last stream = `before`) reaches the agent
    let events = net.events(AGENT);
    assert_eq!(
        events,
        vec![
            Event::GoAway {
                code: ErrorCode::NO_ERROR,
                message: "restart".into()
            },
            Event::Reset {
                id: crossing,
                code: ErrorCode::REFUSED_STREAM,
                origin: ResetOrigin::Peer
            }
        ]
    );
    net.pump();
    assert!(net.events(AGENT).is_empty(), "one Reset, not two");
    // The stream opened before the drain still completes.
    net.hub().send_response(before, 200, vec![], true).unwrap();
    net.pump();
    assert!(net.events(AGENT).contains(&Event::Response {
        id: before,
        status: 200,
        fields: vec![],
        end_stream: true
    }));
    assert_eq!(net.hub().close_reason(), Some(&CloseReason::Drained));
    assert!(matches!(
        net.agent().close_reason(),
        Some(CloseReason::PeerGoAway { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// 6. Credit released while the transport is full is not lost

#[test]
fn credit_released_while_the_transport_is_full_is_sent_later() {
    let window = 64 * 1024;
    let mut net = Net::new(settings(window, 128 * 1024, 16), cfg(false), cfg(true));
    const N: usize = 1 << 20;
    let id = net
        .hub()
        .open_request(b("PUT"), b("/upload"), vec![], false)
        .unwrap();
    net.hub().send_data(id, body(id, 0, 0, N), true).unwrap();
    let mut got = Vec::with_capacity(N);
    let mut ended = false;
    let consume = |net: &mut Net, got: &mut Vec<u8>, ended: &mut bool| {
        for e in net.events(AGENT) {
            match e {
                Event::Request { .. } => {}
                Event::Data {
                    data, end_stream, ..
                } => {
                    got.extend_from_slice(&data);
                    // Consumed: credit goes back while the agent's transport is full.
                    net.agent().release(id, data.len() as u32);
                    *ended |= end_stream;
                }
                e => panic!("{e:?}"),
            }
        }
    };
    // The agent's transport is full: nothing of its output is pulled.
    for _ in 0..50 {
        net.pump_one(HUB, 16 * 1024);
        consume(&mut net, &mut got, &mut ended);
    }
    assert_eq!(
        got.len(),
        window as usize,
        "the hub stopped after one window"
    );
    assert!(net.agent().has_transmit());
    assert!(
        net.agent().pending_control_frames() <= 2,
        "one stream and one connection WINDOW_UPDATE, coalesced"
    );
    // The transport drains again, one frame per write.
    for _ in 0..100_000 {
        while net.agent().has_transmit() {
            net.pull(AGENT, 1);
            net.deliver(AGENT, usize::MAX);
        }
        net.pump_one(HUB, 16 * 1024);
        consume(&mut net, &mut got, &mut ended);
        if ended {
            break;
        }
    }
    assert!(ended, "the upload hangs");
    assert!(got == body(id, 0, 0, N), "the upload was damaged");
    net.agent().send_response(id, 201, vec![], true).unwrap();
    net.pump();
    assert_eq!(net.hub().open_streams(), 0);
    assert_eq!(net.agent().open_streams(), 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Protocol errors

fn protocol_close(net: &mut Net, i: usize, code: ErrorCode) {
    let frames = net.pull_all_frames(i);
    assert!(
        matches!(frames.last(), Some(Frame::GoAway(g)) if g.code == code),
        "{frames:?}"
    );
    let events = net.events(i);
    assert!(
        matches!(events.last(), Some(Event::Closed(CloseReason::Protocol { code: c, .. })) if *c == code),
        "{events:?}"
    );
    assert_eq!(closed_events(&events).len(), 1);
}

#[test]
fn undecodable_bytes_close_with_goaway() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let id = net
        .hub()
        .open_request(b("GET"), b("/"), vec![], true)
        .unwrap();
    net.pump();
    net.events(AGENT);
    // Unknown frame type 0xff.
    let mut garbage = BytesMut::from(&[0u8, 0, 0, 0, 0xff, 0, 0, 0, 0, 0][..]);
    let now = net.now;
    net.agent().handle_bytes(&mut garbage, now);
    let events = net.events(AGENT);
    assert_eq!(
        events[0],
        Event::Reset {
            id,
            code: ErrorCode::CANCEL,
            origin: ResetOrigin::ConnectionClosed
        }
    );
    net.sides[AGENT].events = events;
    protocol_close(&mut net, AGENT, ErrorCode::PROTOCOL);
    assert!(net
        .agent()
        .open_request(b("GET"), b("/"), vec![], true)
        .is_err());

    // A frame longer than the receiver's maximum: FRAME_SIZE_ERROR from the header alone.
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let mut big = BytesMut::new();
    big.extend_from_slice(&(16 * 1024 + 1u32).to_be_bytes());
    big.extend_from_slice(&[0x04, 0, 0, 0, 0, 2]);
    let now = net.now;
    net.agent().handle_bytes(&mut big, now);
    protocol_close(&mut net, AGENT, ErrorCode::FRAME_SIZE);
}

#[test]
fn a_broken_connection_rule_closes_with_the_right_code() {
    let now = Instant::now();
    let cases: Vec<(Frame, ErrorCode)> = vec![
        (
            Frame::Data(Data {
                stream_id: 2,
                end_stream: false,
                payload: b("x"),
            }),
            ErrorCode::PROTOCOL,
        ),
        (
            Frame::WindowUpdate(WindowUpdate {
                stream_id: 0,
                increment: MAX_WINDOW,
            }),
            ErrorCode::FLOW_CONTROL,
        ),
        (
            Frame::Request(Request {
                stream_id: 1,
                end_stream: true,
                method: b("GET"),
                path: b("/"),
                fields: vec![],
            }),
            ErrorCode::PROTOCOL, // the agent's own parity
        ),
    ];
    for (frame, code) in cases {
        let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
        net.agent().handle_frame(frame, now);
        protocol_close(&mut net, AGENT, code);
    }
}

#[test]
fn a_broken_stream_rule_resets_only_that_stream() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let bad = net
        .hub()
        .open_request(b("GET"), b("/a"), vec![], true)
        .unwrap();
    let good = net
        .hub()
        .open_request(b("GET"), b("/b"), vec![], true)
        .unwrap();
    net.pump();
    assert_eq!(net.events(AGENT).len(), 2);
    // DATA after the hub ended its half: STREAM_CLOSED on that stream only.
    let now = net.now;
    net.agent().handle_frame(
        Frame::Data(Data {
            stream_id: bad,
            end_stream: false,
            payload: b("late"),
        }),
        now,
    );
    assert_eq!(
        net.events(AGENT),
        vec![Event::Reset {
            id: bad,
            code: ErrorCode::STREAM_CLOSED,
            origin: ResetOrigin::StreamError
        }]
    );
    assert_eq!(
        net.agent().send_response(bad, 200, vec![], true),
        Err(StreamGone::NotOpen(bad))
    );
    let frames = net.pull_all_frames(AGENT);
    assert_eq!(
        frames,
        vec![Frame::Reset(Reset {
            stream_id: bad,
            code: ErrorCode::STREAM_CLOSED
        })]
    );
    net.agent().send_response(good, 200, vec![], true).unwrap();
    net.pump();
    let events = net.events(HUB);
    assert_eq!(
        events,
        vec![
            Event::Reset {
                id: bad,
                code: ErrorCode::STREAM_CLOSED,
                origin: ResetOrigin::Peer
            },
            Event::Response {
                id: good,
                status: 200,
                fields: vec![],
                end_stream: true
            }
        ]
    );
    assert!(!net.agent().is_closed() && !net.hub().is_closed());
    assert_eq!(net.agent().open_streams(), 0);
}

#[test]
fn streams_the_side_does_not_accept_are_refused_without_events() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    // A REQUEST from the agent: the hub does not accept requests.
    let id = net
        .agent()
        .open_request(b("GET"), b("/"), vec![], true)
        .unwrap();
    assert_eq!(id, 1, "the agent opens odd ids");
    net.pump();
    assert!(net.events(HUB).is_empty());
    assert_eq!(
        net.events(AGENT),
        vec![Event::Reset {
            id,
            code: ErrorCode::REFUSED_STREAM,
            origin: ResetOrigin::Peer
        }]
    );
    // A sync stream: refused too (accept_sync is false).
    let now = net.now;
    net.hub().handle_frame(
        Frame::SnapshotBegin(SnapshotBegin {
            stream_id: 3,
            resource: ResourceKey {
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
            },
        }),
        now,
    );
    assert!(net.events(HUB).is_empty());
    assert_eq!(
        net.pull_all_frames(HUB),
        vec![Frame::Reset(Reset {
            stream_id: 3,
            code: ErrorCode::REFUSED_STREAM
        })]
    );
    assert_eq!(net.hub().open_streams(), 0);
    assert_eq!(net.hub().session().open_streams(), 0);
}

#[test]
fn discovery_reaches_the_hub() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let pods = ResourceType {
        group: String::new(),
        version: "v1".into(),
        resource: "pods".into(),
        kind: "Pod".into(),
        singular: "pod".into(),
        namespaced: true,
        cached: false,
        verbs: Verbs::GET,
        short_names: vec!["po".into()],
        categories: vec![],
    };
    let first = Discovery {
        resources: vec![pods.clone()],
    };
    let second = Discovery {
        resources: vec![pods.clone(), pods],
    };
    net.agent().send_discovery(first).unwrap();
    net.agent().send_discovery(second.clone()).unwrap();
    assert!(matches!(
        net.hub().send_discovery(second.clone()),
        Err(OpenError::Invalid(_))
    ));
    net.pump();
    assert_eq!(
        net.events(HUB),
        vec![Event::Discovery(second)],
        "the latest report only"
    );
}

// ---------------------------------------------------------------------------------------------
// 8. The control queue stays bounded

#[test]
fn a_ping_flood_leaves_one_answer_queued() {
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 16), cfg(false), cfg(true));
    let now = net.now;
    for opaque in 0..100_000u64 {
        net.agent()
            .handle_frame(Frame::Ping(Ping { ack: false, opaque }), now);
        assert!(net.agent().pending_control_frames() <= 1);
    }
    assert_eq!(
        net.pull_all_frames(AGENT),
        vec![Frame::Ping(Ping {
            ack: true,
            opaque: 99_999
        })]
    );
    assert!(net.events(AGENT).is_empty(), "a PING needs no event");
}

#[test]
fn credit_coalesces_per_stream_while_nothing_is_sent() {
    let window = 16 * 1024;
    let mut net = Net::new(settings(window, 64 * 1024, 16), cfg(false), cfg(true));
    let ids: Vec<StreamId> = (0..3)
        .map(|_| {
            net.hub()
                .open_request(b("PUT"), b("/"), vec![], false)
                .unwrap()
        })
        .collect();
    for id in &ids {
        net.hub()
            .send_data(*id, body(*id, 0, 0, 100_000), false)
            .unwrap();
    }
    net.pump_one(HUB, usize::MAX);
    let mut received = 0;
    for e in net.events(AGENT) {
        if let Event::Data { id, data, .. } = e {
            received += data.len();
            // Consumed a byte at a time: thousands of releases, nothing transmitted.
            for _ in 0..data.len() {
                net.agent().release(id, 1);
                assert!(net.agent().pending_control_frames() <= ids.len() + 1);
            }
        }
    }
    assert_eq!(received, 3 * window as usize, "one window per stream");
    let mut frames = net.pull_all_frames(AGENT);
    frames.retain(|f| matches!(f, Frame::WindowUpdate(_)));
    let mut expected = vec![Frame::WindowUpdate(WindowUpdate {
        stream_id: 0,
        increment: 32 * 1024,
    })];
    expected.extend(ids.iter().map(|id| {
        Frame::WindowUpdate(WindowUpdate {
            stream_id: *id,
            increment: window,
        })
    }));
    assert_eq!(frames, expected, "one update per stream, increments summed");
}

#[test]
fn a_peer_provoking_resets_without_reading_is_told_to_calm_down() {
    // max_concurrent_streams 4 on both sides: a compliant peer keeps at most 8 RESETs pending.
    let mut net = Net::new(settings(64 * 1024, 128 * 1024, 4), cfg(false), cfg(true));
    let now = net.now;
    for k in 0..100u32 {
        net.hub().handle_frame(
            Frame::Request(Request {
                stream_id: 2 * k + 1,
                end_stream: true,
                method: b("GET"),
                path: b("/"),
                fields: vec![],
            }),
            now,
        );
        assert!(net.hub().pending_control_frames() <= 4 + 4 + 16 + 2);
    }
    let frames = net.pull_all_frames(HUB);
    assert!(frames[..frames.len() - 1]
        .iter()
        .all(|f| matches!(f, Frame::Reset(r) if r.code == ErrorCode::REFUSED_STREAM)));
    net.sides[HUB].events = net.events(HUB);
    assert!(
        matches!(frames.last(), Some(Frame::GoAway(g)) if g.code == ErrorCode::ENHANCE_YOUR_CALM)
    );
    assert!(matches!(
        net.hub().close_reason(),
        Some(CloseReason::Protocol {
            code: ErrorCode::ENHANCE_YOUR_CALM,
            ..
        })
    ));
}

// ---------------------------------------------------------------------------------------------
// 9. Closing

#[test]
fn close_resets_every_stream_and_goaway_is_the_last_frame() {
    let mut net = Net::new(settings(16 * 1024, 64 * 1024, 16), cfg(false), cfg(true));
    let ids: Vec<StreamId> = (0..3)
        .map(|_| {
            net.hub()
                .open_request(b("PUT"), b("/"), vec![], false)
                .unwrap()
        })
        .collect();
    for id in &ids {
        net.hub()
            .send_data(*id, body(*id, 0, 0, 100_000), true)
            .unwrap();
    }
    net.pump();
    let now = net.now;
    // Something else is queued when the close comes: an answer to a PING, stream data.
    net.hub().handle_frame(
        Frame::Ping(Ping {
            ack: false,
            opaque: 7,
        }),
        now,
    );
    net.events(HUB);
    net.hub().close(ErrorCode::INTERNAL, "shutting down");
    net.hub().close(ErrorCode::INTERNAL, "twice");
    let events = net.events(HUB);
    let mut expected: Vec<Event> = ids
        .iter()
        .map(|id| Event::Reset {
            id: *id,
            code: ErrorCode::CANCEL,
            origin: ResetOrigin::ConnectionClosed,
        })
        .collect();
    let reason = CloseReason::Local {
        code: ErrorCode::INTERNAL,
        message: "shutting down".into(),
    };
    expected.push(Event::Closed(reason.clone()));
    assert_eq!(events, expected);
    assert!(net.hub().is_closed());
    assert_eq!(net.hub().open_streams(), 0);
    assert_eq!(net.hub().session().open_streams(), 0);
    assert_eq!(
        net.hub().open_request(b("GET"), b("/"), vec![], true),
        Err(OpenError::Closing)
    );
    assert_eq!(
        net.hub().send_data(ids[0], b("x"), false),
        Err(StreamGone::NotOpen(ids[0]))
    );
    let frames = net.pull_all_frames(HUB);
    assert_eq!(
        frames[0],
        Frame::Ping(Ping {
            ack: true,
            opaque: 7
        })
    );
    assert!(
        matches!(frames.last(), Some(Frame::GoAway(g)) if g.code == ErrorCode::INTERNAL && g.message == "shutting down"),
        "{frames:?}"
    );
    assert!(!frames.iter().any(|f| matches!(f, Frame::Data(_))));
    assert!(!net.hub().has_transmit());
    net.pump();
    // The agent sees GOAWAY, then the transport end: its streams end too.
    let events = net.events(AGENT);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::GoAway { code, .. } if *code == ErrorCode::INTERNAL)));
    assert_eq!(net.agent().open_streams(), 3);
    net.agent().transport_closed("eof");
    let events = net.events(AGENT);
    assert_eq!(events.len(), 4);
    assert!(events[..3].iter().all(|e| matches!(
        e,
        Event::Reset {
            origin: ResetOrigin::ConnectionClosed,
            ..
        }
    )));
    assert_eq!(
        events[3],
        Event::Closed(CloseReason::TransportClosed {
            message: "eof".into()
        })
    );
    assert!(!net.agent().has_transmit());
    // Input after the close is ignored; no event follows Closed.
    let now = net.now;
    net.hub().handle_frame(
        Frame::Ping(Ping {
            ack: false,
            opaque: 8,
        }),
        now,
    );
    net.advance(Duration::from_secs(10));
    assert!(net.events(HUB).is_empty());
    assert!(net.events(AGENT).is_empty());
    assert!(!net.hub().has_transmit());
}

// ---------------------------------------------------------------------------------------------
// Writable

#[test]
fn writable_fires_when_the_buffer_drains_below_the_limit_and_when_it_empties() {
    let mut agent_cfg = cfg(true);
    agent_cfg.send_buffer = 32 * 1024;
    let mut net = Net::new(settings(16 * 1024, 64 * 1024, 16), cfg(false), agent_cfg);
    let id = net
        .hub()
        .open_request(b("GET"), b("/"), vec![], true)
        .unwrap();
    net.pump();
    net.events(AGENT);
    assert!(
        !net.agent().is_writable(id),
        "DATA needs the RESPONSE first"
    );
    assert!(matches!(
        net.agent().send_data(id, b("x"), false),
        Err(StreamGone::Invalid { .. })
    ));
    net.agent().send_response(id, 200, vec![], false).unwrap();
    assert!(net.agent().is_writable(id));
    net.agent()
        .send_data(id, body(id, 1, 0, 64 * 1024), false)
        .unwrap();
    assert!(!net.agent().is_writable(id));
    let mut writable = Vec::new();
    for _ in 0..4 {
        // One window (16 KiB) per round: 48, 32, 16, 0 KiB left.
        net.pump();
        writable.push(
            net.events(AGENT)
                .iter()
                .filter(|e| matches!(e, Event::Writable { .. }))
                .count(),
        );
        let buffered = net.agent().send_buffered(id);
        assert_eq!(net.agent().is_writable(id), buffered < 32 * 1024);
        for e in net.events(HUB) {
            if let Event::Data { data, .. } = e {
                net.hub().release(id, data.len() as u32);
            }
        }
    }
    assert_eq!(writable, vec![0, 0, 1, 1]);
    assert_eq!(net.agent().send_buffered(id), 0);
}

// ---------------------------------------------------------------------------------------------
// Sync streams sent by the engine

fn sync_net() -> Net {
    let hub = ConnConfig {
        accept_sync: true,
        ..cfg(false)
    };
    Net::new(settings(64 * 1024, 128 * 1024, 16), hub, cfg(true))
}

fn pods() -> ResourceKey {
    ResourceKey {
        group: String::new(),
        version: "v1".into(),
        resource: "pods".into(),
    }
}

/// Drains the hub's sync events, releasing their credit as an applying cache would; returns
/// the frames in order.
fn hub_sync_frames(net: &mut Net, release: bool) -> Vec<Frame> {
    let mut out = Vec::new();
    for e in net.events(HUB) {
        match e {
            Event::Sync { id, frame, credit } => {
                if release {
                    net.hub().release(id, credit);
                }
                out.push(frame);
            }
            Event::End { .. } => out.push(Frame::End(End {
                stream_id: 0,
                trailers: vec![],
            })),
            other => panic!("unexpected {other:?}"),
        }
    }
    out
}

#[test]
fn a_sync_stream_carries_snapshots_and_events_through_many_windows() {
    let mut net = sync_net();
    let id = net.agent().open_sync(pods()).unwrap();
    // 64 objects of 3 KiB in batches of 4: 192 KiB through a 16 KiB sync window.
    let object = |i: usize| Bytes::from(format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(3000)));
    for batch in 0..16 {
        let items = (0..4).map(|k| object(batch * 4 + k)).collect();
        net.agent().send_snapshot_items(id, items).unwrap();
    }
    net.agent().send_snapshot_end(id, "100".into()).unwrap();
    net.agent()
        .send_watch_event(id, EventType::Modified, "101".into(), object(7))
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..200 {
        net.pump();
        let frames = hub_sync_frames(&mut net, true);
        if frames.is_empty() {
            break;
        }
        got.extend(frames);
    }
    let mut items = Vec::new();
    let mut rest = Vec::new();
    for f in &got {
        match f {
            Frame::SnapshotBegin(b) => assert_eq!(b.resource, pods()),
            Frame::SnapshotItems(i) => items.extend(i.items.iter().cloned()),
            other => rest.push(other.clone()),
        }
    }
    assert_eq!(
        items,
        (0..64).map(object).collect::<Vec<_>>(),
        "every object, in order"
    );
    assert!(matches!(&rest[0], Frame::SnapshotEnd(e) if e.resource_version == "100"));
    assert!(
        matches!(&rest[1], Frame::WatchEvent(w) if w.resource_version == "101" && w.object == object(7))
    );
    assert!(
        matches!(got[0], Frame::SnapshotBegin(_)),
        "the stream opens with its BEGIN"
    );

    // A relist restarts the snapshot on the same stream; END closes it and frees it.
    net.agent().send_snapshot_begin(id).unwrap();
    net.agent()
        .send_snapshot_items(id, vec![object(1)])
        .unwrap();
    net.agent().send_snapshot_end(id, "200".into()).unwrap();
    net.agent().send_end(id, vec![]).unwrap();
    net.pump();
    let got = hub_sync_frames(&mut net, true);
    assert!(matches!(&got[0], Frame::SnapshotBegin(b) if b.resource == pods()));
    assert!(matches!(&got[1], Frame::SnapshotItems(i) if i.items == [object(1)]));
    assert!(matches!(&got[2], Frame::SnapshotEnd(e) if e.resource_version == "200"));
    assert!(matches!(&got[3], Frame::End(_)));
    net.pump();
    assert_eq!(net.agent().open_streams(), 0);
    assert_eq!(net.hub().open_streams(), 0);
}

#[test]
fn sync_frames_are_checked_when_queued() {
    let mut net = sync_net();
    let id = net.agent().open_sync(pods()).unwrap();
    let obj = b("{}");
    // Inside a snapshot: no watch events, no DATA.
    assert!(matches!(
        net.agent()
            .send_watch_event(id, EventType::Added, "1".into(), obj.clone()),
        Err(StreamGone::Invalid { .. })
    ));
    assert!(matches!(
        net.agent().send_data(id, obj.clone(), false),
        Err(StreamGone::Invalid { .. })
    ));
    net.agent().send_snapshot_end(id, "1".into()).unwrap();
    // After it: no items, no second end.
    assert!(matches!(
        net.agent().send_snapshot_items(id, vec![obj.clone()]),
        Err(StreamGone::Invalid { .. })
    ));
    assert!(matches!(
        net.agent().send_snapshot_end(id, "2".into()),
        Err(StreamGone::Invalid { .. })
    ));
    // A frame the peer could not take whole is refused, not split.
    let huge = Bytes::from(vec![b'x'; 20 * 1024]);
    assert!(matches!(
        net.agent()
            .send_watch_event(id, EventType::Added, "2".into(), huge),
        Err(StreamGone::Invalid { .. })
    ));
    // Only the opener sends on a sync stream; a request stream is not a sync stream.
    assert!(matches!(
        net.hub().send_snapshot_items(id, vec![obj.clone()]),
        Err(StreamGone::NotOpen(_) | StreamGone::Invalid { .. })
    ));
    assert!(matches!(
        net.agent().open_sync(ResourceKey {
            group: String::new(),
            version: String::new(),
            resource: "pods".into()
        }),
        Err(OpenError::Invalid(_))
    ));
    net.pump();
    // Everything accepted went through and nothing broke the session.
    let got = hub_sync_frames(&mut net, true);
    assert!(
        matches!(
            got.as_slice(),
            [Frame::SnapshotBegin(_), Frame::SnapshotEnd(_)]
        ),
        "{got:?}"
    );
    assert!(!net.hub().is_closed() && !net.agent().is_closed());
}

#[test]
fn a_sync_stream_waiting_for_window_does_not_hold_up_requests() {
    let mut net = sync_net();
    let id = net.agent().open_sync(pods()).unwrap();
    // 10 batches of 8 KiB: more than the send buffer (64 KiB) and the sync window (16 KiB).
    for i in 0..10 {
        let items = vec![Bytes::from(vec![b'a' + i; 8 * 1024])];
        net.agent().send_snapshot_items(id, items).unwrap();
    }
    net.pump();
    // The hub applies nothing: the sync window (16 KiB) stays full.
    let first = hub_sync_frames(&mut net, false);
    assert!(
        first.len() < 11,
        "the window holds the snapshot back: {}",
        first.len()
    );
    assert!(!net.agent().is_writable(id));
    // Meanwhile a request goes through both ways.
    let r = net
        .hub()
        .open_request(b("GET"), b("/api/v1/pods"), vec![], true)
        .unwrap();
    net.pump();
    let ev = net.events(AGENT);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Request { id, .. } if *id == r)));
    net.agent().send_response(r, 200, vec![], true).unwrap();
    net.pump();
    assert!(net
        .events(HUB)
        .iter()
        .any(|e| matches!(e, Event::Response { id, .. } if *id == r)));
    // Once the hub applies and releases, the rest of the snapshot follows, and the agent hears
    // that the stream can take more.
    let mut total = first.len();
    let mut writable = false;
    for f in &first {
        if let Frame::SnapshotItems(i) = f {
            net.hub().release(
                id,
                4 + i.items.iter().map(|x| 4 + x.len() as u32).sum::<u32>(),
            );
        }
    }
    for _ in 0..50 {
        let frames = {
            let mut out = Vec::new();
            for e in net.events(HUB) {
                if let Event::Sync { id, frame, credit } = e {
                    net.hub().release(id, credit);
                    out.push(frame);
                }
            }
            out
        };
        total += frames.len();
        net.pump();
        writable |= net
            .events(AGENT)
            .iter()
            .any(|e| matches!(e, Event::Writable { id: w } if *w == id));
        if total == 11 {
            break;
        }
    }
    assert_eq!(total, 11, "BEGIN and 10 batches");
    assert!(writable, "the agent heard that the stream takes more");
}

// ---------------------------------------------------------------------------------------------
// Sync requests and progress

fn deployments() -> ResourceKey {
    ResourceKey {
        group: "apps".into(),
        version: "v1".into(),
        resource: "deployments".into(),
    }
}

/// Side `i`'s events, without [`Event::Writable`].
fn events_but_writable(net: &mut Net, i: usize) -> Vec<Event> {
    let mut events = net.events(i);
    events.retain(|e| !matches!(e, Event::Writable { .. }));
    events
}

/// A sync stream of pods opened by the agent, its first snapshot ended at `rv`, delivered.
fn synced_stream(net: &mut Net, rv: &str) -> StreamId {
    let id = net.agent().open_sync(pods()).unwrap();
    net.agent().send_snapshot_end(id, rv.into()).unwrap();
    net.pump();
    let got = hub_sync_frames(net, true);
    assert!(
        matches!(
            got.as_slice(),
            [Frame::SnapshotBegin(_), Frame::SnapshotEnd(_)]
        ),
        "{got:?}"
    );
    id
}

#[test]
fn a_sync_frame_larger_than_half_the_window_is_never_stuck() {
    // Found by the random interleavings: sync and connection windows as small as the maximum
    // frame size (16 KiB). A 7,914-byte event, consumed, then an 8,725-byte one: had the hub
    // waited for half a window owed before returning credit, the agent would be left with
    // 8,470 bytes of window for good.
    let event = |net: &mut Net, id, rv: &str, len: usize| {
        let object = Bytes::from(vec![b'o'; len - 1 - 2 - rv.len()]);
        net.agent()
            .send_watch_event(id, EventType::Modified, rv.into(), object)
            .unwrap();
    };
    let narrow_sync = settings(64 * 1024, 128 * 1024, 16);
    let mut narrow_conn = narrow_sync;
    narrow_conn.initial_sync_window = 64 * 1024;
    narrow_conn.initial_connection_window = 16 * 1024;
    for s in [narrow_sync, narrow_conn] {
        let hub = ConnConfig {
            accept_sync: true,
            ..cfg(false)
        };
        let mut net = Net::new(s, hub, cfg(true));
        let id = synced_stream(&mut net, "1");
        event(&mut net, id, "2", 7_914);
        net.pump();
        assert_eq!(hub_sync_frames(&mut net, true).len(), 1);
        event(&mut net, id, "3", 8_725);
        net.pump();
        let got = hub_sync_frames(&mut net, true);
        assert!(
            matches!(&got[..], [Frame::WatchEvent(w)] if w.resource_version == "3"),
            "{s:?}: {got:?}"
        );
    }
}

#[test]
fn progress_queued_behind_a_window_blocked_watch_event_follows_it() {
    let mut net = sync_net();
    let id = synced_stream(&mut net, "1");
    // The sync window is 16 KiB: the first event fits, the second waits for credit, and the
    // PROGRESS queued after it waits behind it though it needs no window itself.
    let object = |c: u8| Bytes::from(vec![c; 10 * 1024]);
    net.agent()
        .send_watch_event(id, EventType::Added, "2".into(), object(b'a'))
        .unwrap();
    net.agent()
        .send_watch_event(id, EventType::Modified, "3".into(), object(b'b'))
        .unwrap();
    net.agent().send_progress(id, 1, "3").unwrap();
    let sent = net.pull_all_frames(AGENT);
    assert!(
        matches!(sent.as_slice(), [Frame::WatchEvent(w)] if w.resource_version == "2"),
        "only the event that fits goes: {sent:?}"
    );
    assert!(!net.agent().has_transmit(), "PROGRESS does not overtake");
    net.pump();
    // The hub holds the credit: nothing more moves, however often we pump.
    let got = hub_sync_frames(&mut net, false);
    assert!(matches!(got.as_slice(), [Frame::WatchEvent(_)]), "{got:?}");
    for _ in 0..3 {
        net.pump();
        assert!(net.events(HUB).is_empty());
    }
    // Credit comes back: the second event, then PROGRESS, in that order.
    net.hub().release(id, 1 + 2 + 1 + 10 * 1024);
    net.pump();
    let events = net.events(HUB);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(matches!(
        &events[0],
        Event::Sync { frame: Frame::WatchEvent(w), credit, .. }
            if w.resource_version == "3" && *credit > 0
    ));
    assert_eq!(
        events[1],
        Event::Sync {
            id,
            frame: Frame::Progress(Progress {
                stream_id: id,
                seq: 1,
                resource_version: "3".into()
            }),
            credit: 0
        }
    );
}

#[test]
fn progress_without_pending_frames_goes_at_once_and_uses_no_credit() {
    let mut net = sync_net();
    let id = synced_stream(&mut net, "5");
    // Use up the whole sync window: PROGRESS still goes, as nothing is queued before it.
    net.agent()
        .send_watch_event(
            id,
            EventType::Added,
            "6".into(),
            Bytes::from(vec![b'x'; 16_000]),
        )
        .unwrap();
    net.pump();
    assert_eq!(net.agent().session().send_capacity(id), 16 * 1024 - 16_004);
    net.agent().send_progress(id, 0, "6").unwrap();
    net.pump();
    let got = hub_sync_frames(&mut net, false);
    assert!(
        matches!(&got[..], [Frame::WatchEvent(_), Frame::Progress(p)] if p.seq == 0 && p.resource_version == "6"),
        "{got:?}"
    );
    assert_eq!(net.agent().session().send_capacity(id), 16 * 1024 - 16_004);
}

#[test]
fn sync_request_reaches_the_agent_as_an_event() {
    let mut net = sync_net();
    // Two before a transmit: only the newest set goes.
    net.hub().send_sync_request(vec![pods()]).unwrap();
    net.hub()
        .send_sync_request(vec![pods(), deployments()])
        .unwrap();
    assert_eq!(net.hub().pending_control_frames(), 1);
    assert_eq!(
        net.pull_all_frames(HUB),
        vec![Frame::SyncRequest(SyncRequest {
            resources: vec![pods(), deployments()]
        })]
    );
    net.pump();
    assert_eq!(
        net.events(AGENT),
        vec![Event::SyncRequest(vec![pods(), deployments()])]
    );
    // An empty set is a set too (sync nothing).
    net.hub().send_sync_request(vec![]).unwrap();
    net.pump();
    assert_eq!(net.events(AGENT), vec![Event::SyncRequest(vec![])]);
    // The agent does not send it; keys the agent could not decode are refused.
    assert!(matches!(
        net.agent().send_sync_request(vec![pods()]),
        Err(OpenError::Invalid(_))
    ));
    let mut no_resource = pods();
    no_resource.resource.clear();
    assert!(matches!(
        net.hub().send_sync_request(vec![no_resource]),
        Err(OpenError::Invalid(_))
    ));
    let mut too_long = pods();
    too_long.group = "g".repeat(70_000);
    assert!(matches!(
        net.hub().send_sync_request(vec![too_long]),
        Err(OpenError::Invalid(_))
    ));
    assert!(!net.hub().has_transmit());
    // Once closed: Closing.
    net.hub().close(ErrorCode::NO_ERROR, "bye");
    assert_eq!(
        net.hub().send_sync_request(vec![pods()]),
        Err(OpenError::Closing)
    );
}

#[test]
fn sync_request_needs_cache_sync_and_flows_hub_to_agent() {
    let hub_cfg = ConnConfig {
        accept_sync: true,
        ..cfg(false)
    };
    let mut net = Net::with_capabilities(
        settings(64 * 1024, 128 * 1024, 16),
        Capabilities::UPGRADE,
        hub_cfg,
        cfg(true),
    );
    assert!(matches!(
        net.hub().send_sync_request(vec![pods()]),
        Err(OpenError::Invalid(_))
    ));
    assert!(!net.hub().has_transmit(), "nothing queued");
    // A peer that sends it anyway breaks the connection.
    let frame = Frame::SyncRequest(SyncRequest {
        resources: vec![pods()],
    });
    let now = net.now;
    net.agent().handle_frame(frame.clone(), now);
    protocol_close(&mut net, AGENT, ErrorCode::PROTOCOL);

    // With CACHE_SYNC, from the agent to the hub: the wrong direction, a connection error.
    let mut net = sync_net();
    net.hub().handle_frame(frame, now);
    protocol_close(&mut net, HUB, ErrorCode::PROTOCOL);
}

#[test]
fn progress_request_and_answer_round_trip() {
    let mut net = sync_net();
    let id = synced_stream(&mut net, "10");
    // Requests not yet sent coalesce per stream: the latest seq goes.
    for seq in 1..=3 {
        net.hub().request_progress(id, seq).unwrap();
        assert_eq!(net.hub().pending_control_frames(), 1);
    }
    assert_eq!(
        net.pull_all_frames(HUB),
        vec![Frame::ProgressRequest(ProgressRequest {
            stream_id: id,
            seq: 3
        })]
    );
    net.pump();
    assert_eq!(
        net.events(AGENT),
        vec![Event::ProgressRequest { id, seq: 3 }]
    );
    // The agent queues what it has seen up to now, then answers.
    net.agent()
        .send_watch_event(id, EventType::Added, "11".into(), b("{}"))
        .unwrap();
    net.agent().send_progress(id, 3, "11").unwrap();
    net.pump();
    let got = hub_sync_frames(&mut net, true);
    assert_eq!(
        got,
        vec![
            Frame::WatchEvent(WatchEvent {
                stream_id: id,
                event: EventType::Added,
                resource_version: "11".into(),
                object: b("{}"),
            }),
            Frame::Progress(Progress {
                stream_id: id,
                seq: 3,
                resource_version: "11".into(),
            }),
        ]
    );
    // "Could not confirm": an empty resourceVersion.
    net.hub().request_progress(id, 4).unwrap();
    net.pump();
    assert_eq!(
        events_but_writable(&mut net, AGENT),
        vec![Event::ProgressRequest { id, seq: 4 }]
    );
    net.agent().send_progress(id, 4, "").unwrap();
    net.pump();
    assert!(matches!(
        &hub_sync_frames(&mut net, true)[..],
        [Frame::Progress(p)] if p.seq == 4 && p.resource_version.is_empty()
    ));
    // Inside a (restarted) snapshot the agent cannot answer until its end.
    net.agent().send_snapshot_begin(id).unwrap();
    assert!(matches!(
        net.agent().send_progress(id, 5, "11"),
        Err(StreamGone::Invalid { .. })
    ));
    net.agent().send_snapshot_end(id, "12".into()).unwrap();
    net.agent().send_progress(id, 5, "12").unwrap();
    net.pump();
    let got = hub_sync_frames(&mut net, true);
    assert!(matches!(
        &got[..],
        [Frame::SnapshotBegin(_), Frame::SnapshotEnd(_), Frame::Progress(p)] if p.seq == 5
    ));
    assert!(!net.hub().is_closed() && !net.agent().is_closed());
}

#[test]
fn progress_commands_are_checked() {
    let mut net = sync_net();
    let id = synced_stream(&mut net, "1");
    // The opener does not ask, the receiver does not answer, request streams have neither.
    assert!(matches!(
        net.agent().request_progress(id, 1),
        Err(StreamGone::Invalid { .. })
    ));
    assert!(matches!(
        net.hub().send_progress(id, 1, "1"),
        Err(StreamGone::NotOpen(_) | StreamGone::Invalid { .. })
    ));
    let r = net
        .hub()
        .open_request(b("GET"), b("/api"), vec![], true)
        .unwrap();
    assert!(matches!(
        net.hub().request_progress(r, 1),
        Err(StreamGone::Invalid { .. })
    ));
    assert_eq!(
        net.hub().request_progress(99, 1),
        Err(StreamGone::NotOpen(99))
    );
    assert!(matches!(
        net.agent().send_progress(id, 1, &"9".repeat(70_000)),
        Err(StreamGone::Invalid { .. })
    ));
    // A request for a stream reset before it went out is not sent.
    net.hub().request_progress(id, 1).unwrap();
    net.hub().reset(id, ErrorCode::CANCEL);
    assert_eq!(
        net.pull_all_frames(HUB)
            .into_iter()
            .filter(|f| f.stream_id() == id)
            .collect::<Vec<_>>(),
        vec![Frame::Reset(Reset {
            stream_id: id,
            code: ErrorCode::CANCEL
        })]
    );
    assert_eq!(net.hub().pending_control_frames(), 0);
    assert_eq!(
        net.hub().request_progress(id, 2),
        Err(StreamGone::NotOpen(id))
    );
}

#[test]
fn progress_frames_from_the_wrong_side_reset_the_stream() {
    let mut net = sync_net();
    let id = synced_stream(&mut net, "1");
    let now = net.now;
    // The agent asking the hub on its own stream: a stream error at the hub.
    net.hub().handle_frame(
        Frame::ProgressRequest(ProgressRequest {
            stream_id: id,
            seq: 1,
        }),
        now,
    );
    assert_eq!(
        net.events(HUB),
        vec![Event::Reset {
            id,
            code: ErrorCode::PROTOCOL,
            origin: ResetOrigin::StreamError
        }]
    );
    assert_eq!(
        net.pull_all_frames(HUB),
        vec![Frame::Reset(Reset {
            stream_id: id,
            code: ErrorCode::PROTOCOL
        })]
    );
    // PROGRESS inside a snapshot: a stream error at the hub, like a watch event there.
    let mut net = sync_net();
    let id = net.agent().open_sync(pods()).unwrap();
    net.pump();
    hub_sync_frames(&mut net, true);
    net.hub().handle_frame(
        Frame::Progress(Progress {
            stream_id: id,
            seq: 0,
            resource_version: "1".into(),
        }),
        now,
    );
    assert_eq!(
        net.events(HUB),
        vec![Event::Reset {
            id,
            code: ErrorCode::PROTOCOL,
            origin: ResetOrigin::StreamError
        }]
    );
    // A PROGRESS_REQUEST on a request stream, received by the agent.
    let mut net = sync_net();
    let r = net
        .hub()
        .open_request(b("GET"), b("/api"), vec![], true)
        .unwrap();
    net.pump();
    net.events(AGENT);
    net.agent().handle_frame(
        Frame::ProgressRequest(ProgressRequest {
            stream_id: r,
            seq: 1,
        }),
        now,
    );
    assert_eq!(
        net.events(AGENT),
        vec![Event::Reset {
            id: r,
            code: ErrorCode::PROTOCOL,
            origin: ResetOrigin::StreamError
        }]
    );
    assert!(!net.agent().is_closed() && !net.hub().is_closed());
}
