//! The per-connection state machine: stream ids, stream states and flow control, driven as a
//! hub and an agent would drive it.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use bytes::Bytes;
use kubehub_wire::session::Received;
use kubehub_wire::*;
use proptest::prelude::*;

fn settings() -> Settings {
    Settings {
        max_frame_size: 16 * 1024,
        max_concurrent_streams: 4,
        initial_stream_window: 64 * 1024,
        initial_sync_window: 64 * 1024,
        initial_connection_window: 128 * 1024,
    }
}

fn pair() -> (Session, Session) {
    (
        Session::new(Role::Hub, settings(), settings(), Capabilities::CACHE_SYNC),
        Session::new(
            Role::Agent,
            settings(),
            settings(),
            Capabilities::CACHE_SYNC,
        ),
    )
}

/// Sends `f` from `from` and receives it on `to`; both must accept it.
fn pass(from: &mut Session, to: &mut Session, f: Frame) -> Received {
    from.send(&f).unwrap_or_else(|e| panic!("send {f:?}: {e}"));
    to.recv(&f).unwrap_or_else(|e| panic!("recv {f:?}: {e}"))
}

fn request(id: u32, end_stream: bool) -> Frame {
    Frame::Request(Request {
        stream_id: id,
        end_stream,
        method: Bytes::from_static(b"GET"),
        path: Bytes::from_static(b"/api"),
        fields: vec![],
    })
}

fn response(id: u32, end_stream: bool) -> Frame {
    Frame::Response(Response {
        stream_id: id,
        end_stream,
        status: 200,
        fields: vec![],
    })
}

fn data(id: u32, n: usize, end_stream: bool) -> Frame {
    Frame::Data(Data {
        stream_id: id,
        end_stream,
        payload: Bytes::from(vec![0u8; n]),
    })
}

fn begin(id: u32) -> Frame {
    Frame::SnapshotBegin(SnapshotBegin {
        stream_id: id,
        resource: ResourceKey {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
        },
    })
}

#[test]
fn request_stream_lifecycle() {
    let (mut hub, mut agent) = pair();
    let id = hub.next_stream_id().unwrap();
    assert_eq!(id, 2, "the hub opens even ids, starting at 2");
    pass(&mut hub, &mut agent, request(id, true));
    assert_eq!(hub.stream_state(id), StreamState::HalfClosedLocal);
    assert_eq!(agent.stream_state(id), StreamState::HalfClosedRemote);
    pass(&mut agent, &mut hub, response(id, false));
    pass(&mut agent, &mut hub, data(id, 100, false));
    pass(
        &mut agent,
        &mut hub,
        Frame::End(End {
            stream_id: id,
            trailers: vec![],
        }),
    );
    assert_eq!(hub.stream_state(id), StreamState::Closed);
    assert_eq!(agent.stream_state(id), StreamState::Closed);
    assert_eq!((hub.open_streams(), agent.open_streams()), (0, 0));
    assert_eq!(hub.next_stream_id().unwrap(), 4);
    assert_eq!(
        agent.next_stream_id().unwrap(),
        1,
        "the agent opens odd ids"
    );
}

#[test]
fn stream_id_rules_are_enforced() {
    let (mut hub, mut agent) = pair();
    // The agent receiving a REQUEST on an odd (its own) id.
    let err = agent.recv(&request(3, true)).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Connection {
            code: ErrorCode::PROTOCOL,
            ..
        }
    ));
    // DATA on a stream nobody opened.
    let err = agent.recv(&data(8, 1, false)).unwrap_err();
    assert!(matches!(err, SessionError::Connection { .. }), "{err}");
    // Sending with a skipped or reused id is refused locally.
    assert!(hub.send(&request(4, true)).is_err());
    pass(&mut hub, &mut agent, request(2, false));
    assert!(hub.send(&request(2, false)).is_err());
    // A frame on a stream closed by RESET (crossed in flight) is dropped, not an error.
    pass(
        &mut hub,
        &mut agent,
        Frame::Reset(Reset {
            stream_id: 2,
            code: ErrorCode::CANCEL,
        }),
    );
    let r = hub.recv(&response(2, false)).unwrap();
    assert!(!r.deliver);
}

#[test]
fn response_order_is_enforced() {
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, false));
    // Request body before the response is fine; response body before the head is not.
    pass(&mut hub, &mut agent, data(2, 10, false));
    assert!(matches!(
        agent.send(&data(2, 10, false)),
        Err(SessionError::Stream {
            code: ErrorCode::PROTOCOL,
            ..
        })
    ));
    let err = hub.recv(&data(2, 10, false)).unwrap_err();
    assert!(
        matches!(err, SessionError::Stream { stream: 2, .. }),
        "{err}"
    );
    // The requester may not answer its own request.
    assert!(hub.send(&response(2, false)).is_err());
    pass(&mut agent, &mut hub, response(2, false));
    assert!(
        agent.send(&response(2, false)).is_err(),
        "one response per stream"
    );
}

#[test]
fn flow_control_windows() {
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, true));
    pass(&mut agent, &mut hub, response(2, false));
    assert_eq!(agent.send_capacity(2), 64 * 1024);
    for _ in 0..4 {
        pass(&mut agent, &mut hub, data(2, 16 * 1024, false));
    }
    assert_eq!(agent.send_capacity(2), 0);
    assert!(matches!(
        agent.send(&data(2, 1, false)),
        Err(SessionError::Stream {
            code: ErrorCode::FLOW_CONTROL,
            ..
        })
    ));
    // A peer that ignores the window gets a stream FLOW_CONTROL error.
    let err = hub.recv(&data(2, 1, false)).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Stream {
            code: ErrorCode::FLOW_CONTROL,
            ..
        }
    ));

    // Releasing half the window returns credit in one update.
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, true));
    pass(&mut agent, &mut hub, response(2, false));
    pass(&mut agent, &mut hub, data(2, 16 * 1024, false));
    assert_eq!(
        hub.release(2, 16 * 1024),
        None,
        "below half the window: no update yet"
    );
    pass(&mut agent, &mut hub, data(2, 16 * 1024, false));
    let wu = hub.release(2, 16 * 1024).expect("half the window released");
    assert_eq!(wu.increment, 32 * 1024);
    pass(&mut hub, &mut agent, Frame::WindowUpdate(wu));
    assert_eq!(agent.send_capacity(2), 64 * 1024);
}

#[test]
fn a_slow_reader_does_not_stall_other_streams() {
    // The agent sends two responses; the hub's consumer of stream 2 never reads, stream 4 is
    // drained. Stream 4 must keep flowing long after stream 2 is stuck.
    let (mut hub, mut agent) = pair();
    for id in [2, 4] {
        pass(&mut hub, &mut agent, request(id, true));
        pass(&mut agent, &mut hub, response(id, false));
    }
    let mut moved_on_4 = 0usize;
    for _ in 0..100 {
        for id in [2, 4] {
            let n = agent.send_capacity(id).min(16 * 1024) as usize;
            if n == 0 {
                continue;
            }
            let r = pass(&mut agent, &mut hub, data(id, n, false));
            if let Some(wu) = r.window_update {
                pass(&mut hub, &mut agent, Frame::WindowUpdate(wu));
            }
            if id == 4 {
                moved_on_4 += n;
                if let Some(wu) = hub.release(4, n as u32) {
                    pass(&mut hub, &mut agent, Frame::WindowUpdate(wu));
                }
            }
        }
    }
    assert_eq!(
        agent.send_capacity(2),
        0,
        "the stalled stream is out of credit"
    );
    assert!(agent.send_capacity(4) > 0);
    // 100 rounds of 16 KiB, ten times the connection window.
    assert_eq!(moved_on_4, 100 * 16 * 1024);
}

#[test]
fn connection_window_violation_is_a_connection_error() {
    let mut s = settings();
    s.initial_connection_window = 32 * 1024;
    s.initial_stream_window = 64 * 1024;
    let mut hub = Session::new(Role::Hub, s, s, Capabilities::CACHE_SYNC);
    let mut agent = Session::new(Role::Agent, s, s, Capabilities::CACHE_SYNC);
    pass(&mut hub, &mut agent, request(2, true));
    pass(&mut agent, &mut hub, response(2, false));
    // Credit goes back once half the connection window is owed: one byte is not enough, so
    // only 32 KiB - 1 remain for a peer that has seen no update.
    assert_eq!(hub.recv(&data(2, 1, false)).unwrap().window_update, None);
    let err = hub.recv(&data(2, 32 * 1024, false)).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Connection {
            code: ErrorCode::FLOW_CONTROL,
            ..
        }
    ));
}

#[test]
fn credit_for_frames_that_cannot_be_split_comes_back_in_time() {
    // A sync window as small as the maximum frame size: with credit held back until half the
    // window is owed, 8,000 consumed bytes would stay owed and leave the sender 8,384 bytes of
    // window, too few for a frame of up to 16 KiB that it cannot split. So it comes back at once.
    let mut s = settings();
    s.initial_sync_window = 16 * 1024;
    let mut hub = Session::new(Role::Hub, s, s, Capabilities::CACHE_SYNC);
    let mut agent = Session::new(Role::Agent, s, s, Capabilities::CACHE_SYNC);
    pass(&mut agent, &mut hub, begin(1));
    let items = |n: usize| {
        Frame::SnapshotItems(SnapshotItems {
            stream_id: 1,
            items: vec![Bytes::from(vec![b'x'; n - 8])],
        })
    };
    pass(&mut agent, &mut hub, items(8_000));
    let wu = hub.release(1, 8_000).expect("credit due at once");
    assert_eq!(wu.increment, 8_000);
    pass(&mut hub, &mut agent, Frame::WindowUpdate(wu));
    assert_eq!(agent.send_capacity(1), 16 * 1024);

    // A window of twice the maximum frame size keeps updates rare: half of it, as for DATA.
    s.initial_sync_window = 32 * 1024;
    let mut hub = Session::new(Role::Hub, s, s, Capabilities::CACHE_SYNC);
    let mut agent = Session::new(Role::Agent, s, s, Capabilities::CACHE_SYNC);
    pass(&mut agent, &mut hub, begin(1));
    pass(&mut agent, &mut hub, items(8_000));
    assert_eq!(hub.release(1, 8_000), None);
    pass(&mut agent, &mut hub, items(8_384));
    assert_eq!(hub.release(1, 8_384).map(|wu| wu.increment), Some(16_384));

    // The connection window carries sync frames too: the same rule.
    s.initial_connection_window = 16 * 1024;
    let mut hub = Session::new(Role::Hub, s, s, Capabilities::CACHE_SYNC);
    let mut agent = Session::new(Role::Agent, s, s, Capabilities::CACHE_SYNC);
    pass(&mut agent, &mut hub, begin(1));
    let r = pass(&mut agent, &mut hub, items(8_000));
    assert_eq!(
        r.window_update.map(|wu| (wu.stream_id, wu.increment)),
        Some((0, 8_000))
    );
    // Request streams, whose DATA can be split, keep the half-window rule.
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, true));
    pass(&mut agent, &mut hub, response(2, false));
    pass(&mut agent, &mut hub, data(2, 8_000, false));
    assert_eq!(hub.release(2, 8_000), None);
}

#[test]
fn window_update_overflow() {
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, true));
    let err = hub
        .recv(&Frame::WindowUpdate(WindowUpdate {
            stream_id: 0,
            increment: MAX_WINDOW,
        }))
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::Connection {
            code: ErrorCode::FLOW_CONTROL,
            ..
        }
    ));
    let err = agent
        .recv(&Frame::WindowUpdate(WindowUpdate {
            stream_id: 2,
            increment: MAX_WINDOW,
        }))
        .unwrap_err();
    assert!(matches!(
        err,
        SessionError::Stream {
            code: ErrorCode::FLOW_CONTROL,
            ..
        }
    ));
}

#[test]
fn concurrency_limit_and_goaway() {
    let (mut hub, mut agent) = pair();
    for _ in 0..4 {
        let id = hub.next_stream_id().unwrap();
        pass(&mut hub, &mut agent, request(id, false));
    }
    assert!(matches!(
        hub.next_stream_id(),
        Err(SessionError::Stream {
            code: ErrorCode::REFUSED_STREAM,
            ..
        })
    ));
    // A peer that ignores the limit has its stream refused.
    let err = agent.recv(&request(10, false)).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Stream {
            stream: 10,
            code: ErrorCode::REFUSED_STREAM,
            ..
        }
    ));

    // GOAWAY: the agent drains; the hub may open nothing new; the agent refuses new streams.
    let g = agent.go_away(ErrorCode::NO_ERROR, "restarting");
    assert_eq!(g.last_stream_id, 10);
    pass(&mut agent, &mut hub, Frame::GoAway(g));
    assert_eq!(hub.peer_going_away(), Some(10));
    assert!(hub.next_stream_id().is_err());
    let err = agent.recv(&request(12, false)).unwrap_err();
    assert!(matches!(
        err,
        SessionError::Stream {
            code: ErrorCode::REFUSED_STREAM,
            ..
        }
    ));
}

#[test]
fn sync_stream_lifecycle() {
    let (mut hub, mut agent) = pair();
    let id = agent.next_stream_id().unwrap();
    pass(&mut agent, &mut hub, begin(id));
    assert_eq!(
        hub.stream_state(id),
        StreamState::HalfClosedLocal,
        "hub only receives"
    );
    let items = Frame::SnapshotItems(SnapshotItems {
        stream_id: id,
        items: vec![Bytes::from_static(b"{}")],
    });
    pass(&mut agent, &mut hub, items.clone());
    let event = Frame::WatchEvent(WatchEvent {
        stream_id: id,
        event: EventType::Added,
        resource_version: "5".into(),
        object: Bytes::from_static(b"{}"),
    });
    assert!(
        agent.send(&event).is_err(),
        "watch events only after SNAPSHOT_END"
    );
    assert!(hub.recv(&event).is_err());
    let (mut hub, mut agent) = pair();
    pass(&mut agent, &mut hub, begin(id));
    pass(&mut agent, &mut hub, items.clone());
    let end = Frame::SnapshotEnd(SnapshotEnd {
        stream_id: id,
        resource_version: "4".into(),
    });
    pass(&mut agent, &mut hub, end.clone());
    pass(&mut agent, &mut hub, event.clone());
    assert!(agent.send(&items).is_err(), "items only inside a snapshot");
    // A relist restarts the snapshot on the same stream.
    pass(&mut agent, &mut hub, begin(id));
    pass(&mut agent, &mut hub, items);
    pass(&mut agent, &mut hub, end);
    // The hub cannot send on the agent's sync stream, only credit or reset it.
    assert!(hub.send(&event).is_err());
    pass(
        &mut hub,
        &mut agent,
        Frame::Reset(Reset {
            stream_id: id,
            code: ErrorCode::CANCEL,
        }),
    );
    assert_eq!(agent.stream_state(id), StreamState::Closed);
    // DISCOVERY flows agent → hub only.
    let d = Frame::Discovery(Discovery { resources: vec![] });
    assert!(hub.send(&d).is_err());
    assert!(agent.recv(&d).is_err());
    pass(&mut agent, &mut hub, d);
}

fn sync_request() -> Frame {
    Frame::SyncRequest(SyncRequest {
        resources: vec![ResourceKey {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
        }],
    })
}

fn progress_request(id: u32, seq: u32) -> Frame {
    Frame::ProgressRequest(ProgressRequest { stream_id: id, seq })
}

fn progress(id: u32, seq: u32) -> Frame {
    Frame::Progress(Progress {
        stream_id: id,
        seq,
        resource_version: "7".into(),
    })
}

fn snapshot_end(id: u32) -> Frame {
    Frame::SnapshotEnd(SnapshotEnd {
        stream_id: id,
        resource_version: "7".into(),
    })
}

fn is_conn_err(r: Result<impl std::fmt::Debug, SessionError>, code: ErrorCode) -> bool {
    matches!(r, Err(SessionError::Connection { code: c, .. }) if c == code)
}

fn is_stream_err(r: Result<impl std::fmt::Debug, SessionError>, id: u32, code: ErrorCode) -> bool {
    matches!(r, Err(SessionError::Stream { stream, code: c, .. }) if stream == id && c == code)
}

#[test]
fn sync_request_flows_hub_to_agent_with_cache_sync_only() {
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, sync_request());
    pass(
        &mut hub,
        &mut agent,
        Frame::SyncRequest(SyncRequest { resources: vec![] }),
    );
    // The wrong direction is a connection error, sent or received.
    assert!(is_conn_err(
        agent.send(&sync_request()),
        ErrorCode::PROTOCOL
    ));
    assert!(is_conn_err(hub.recv(&sync_request()), ErrorCode::PROTOCOL));
    // Without CACHE_SYNC agreed, neither sending nor receiving.
    let none = Capabilities(0);
    let mut hub = Session::new(Role::Hub, settings(), settings(), none);
    let mut agent = Session::new(Role::Agent, settings(), settings(), none);
    assert!(is_conn_err(hub.send(&sync_request()), ErrorCode::PROTOCOL));
    assert!(is_conn_err(
        agent.recv(&sync_request()),
        ErrorCode::PROTOCOL
    ));
    // Other capabilities do not stand in for it.
    let upgrade = Capabilities::UPGRADE;
    let mut agent = Session::new(Role::Agent, settings(), settings(), upgrade);
    assert!(is_conn_err(
        agent.recv(&sync_request()),
        ErrorCode::PROTOCOL
    ));
}

#[test]
fn progress_request_goes_from_the_receiver_of_a_sync_stream_to_its_opener() {
    let (mut hub, mut agent) = pair();
    let id = agent.next_stream_id().unwrap();
    pass(&mut agent, &mut hub, begin(id));
    // The agent's receiving half is closed from the start, yet it takes PROGRESS_REQUEST,
    // inside a snapshot too; no credit moves.
    let (hub_cap, agent_cap) = (hub.send_capacity(id), agent.send_capacity(id));
    let r = pass(&mut hub, &mut agent, progress_request(id, 1));
    assert!(r.deliver && r.window_update.is_none());
    assert_eq!(
        (hub.send_capacity(id), agent.send_capacity(id)),
        (hub_cap, agent_cap)
    );
    assert_eq!(agent.stream_state(id), StreamState::HalfClosedRemote);
    // The opener may not ask: a stream error, sent or received.
    assert!(is_stream_err(
        agent.send(&progress_request(id, 2)),
        id,
        ErrorCode::PROTOCOL
    ));
    assert!(is_stream_err(
        hub.recv(&progress_request(id, 2)),
        id,
        ErrorCode::PROTOCOL
    ));

    // On a request stream: a stream error both ways.
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, false));
    assert!(is_stream_err(
        hub.send(&progress_request(2, 1)),
        2,
        ErrorCode::PROTOCOL
    ));
    assert!(is_stream_err(
        agent.recv(&progress_request(2, 1)),
        2,
        ErrorCode::PROTOCOL
    ));
    assert!(is_stream_err(
        agent.send(&progress_request(2, 1)),
        2,
        ErrorCode::PROTOCOL
    ));
    // On a stream never opened: a connection error, like any frame on an idle stream.
    assert!(is_conn_err(
        agent.recv(&progress_request(5, 1)),
        ErrorCode::PROTOCOL
    ));
    // On a stream closed since (crossed a RESET in flight): dropped.
    let (mut hub, mut agent) = pair();
    pass(&mut agent, &mut hub, begin(1));
    pass(
        &mut agent,
        &mut hub,
        Frame::Reset(Reset {
            stream_id: 1,
            code: ErrorCode::CANCEL,
        }),
    );
    assert!(!agent.recv(&progress_request(1, 1)).unwrap().deliver);
    assert!(hub.send(&progress_request(1, 1)).is_err());
}

#[test]
fn progress_goes_from_the_opener_outside_a_snapshot() {
    let (mut hub, mut agent) = pair();
    let id = agent.next_stream_id().unwrap();
    pass(&mut agent, &mut hub, begin(id));
    // Inside the snapshot: a stream error, sent or received.
    assert!(is_stream_err(
        agent.send(&progress(id, 1)),
        id,
        ErrorCode::PROTOCOL
    ));
    assert!(is_stream_err(
        hub.recv(&progress(id, 1)),
        id,
        ErrorCode::PROTOCOL
    ));
    let (mut hub, mut agent) = pair();
    pass(&mut agent, &mut hub, begin(id));
    pass(&mut agent, &mut hub, snapshot_end(id));
    // After SNAPSHOT_END: answers and unsolicited reports (seq 0); no credit used.
    let cap = agent.send_capacity(id);
    pass(&mut agent, &mut hub, progress(id, 1));
    pass(&mut agent, &mut hub, progress(id, 0));
    assert_eq!(
        agent.send_capacity(id),
        cap,
        "PROGRESS is not flow-controlled"
    );
    // A restarted snapshot forbids it again until its end.
    pass(&mut agent, &mut hub, begin(id));
    assert!(agent.send(&progress(id, 2)).is_err());
    pass(&mut agent, &mut hub, snapshot_end(id));
    pass(&mut agent, &mut hub, progress(id, 2));
    // The receiver cannot send it: its sending half is closed (STREAM_CLOSED, as for any
    // sync frame from the receiver).
    assert!(is_stream_err(
        hub.send(&progress(id, 3)),
        id,
        ErrorCode::STREAM_CLOSED
    ));
    assert!(is_stream_err(
        agent.recv(&progress(id, 3)),
        id,
        ErrorCode::STREAM_CLOSED
    ));
    // Not on a request stream.
    let (mut hub, mut agent) = pair();
    pass(&mut hub, &mut agent, request(2, false));
    pass(&mut agent, &mut hub, response(2, false));
    assert!(is_stream_err(
        agent.send(&progress(2, 1)),
        2,
        ErrorCode::PROTOCOL
    ));
    assert!(is_stream_err(
        hub.recv(&progress(2, 1)),
        2,
        ErrorCode::PROTOCOL
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Open {
        end: bool,
    },
    Respond {
        pick: usize,
    },
    Data {
        pick: usize,
        from_hub: bool,
        size: u16,
        end: bool,
    },
    Reset {
        pick: usize,
        from_hub: bool,
    },
    Release {
        pick: usize,
        n: u16,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<bool>().prop_map(|end| Op::Open { end }),
        any::<usize>().prop_map(|pick| Op::Respond { pick }),
        (any::<usize>(), any::<bool>(), any::<u16>(), any::<bool>()).prop_map(
            |(pick, from_hub, size, end)| Op::Data {
                pick,
                from_hub,
                size,
                end
            }
        ),
        (any::<usize>(), any::<bool>()).prop_map(|(pick, from_hub)| Op::Reset { pick, from_hub }),
        (any::<usize>(), any::<u16>()).prop_map(|(pick, n)| Op::Release { pick, n }),
    ]
}

proptest! {
    /// Whatever one side's `send` accepts, the other side's `recv` accepts, and both sides
    /// agree on every stream's state afterwards.
    #[test]
    fn sides_agree(ops in proptest::collection::vec(op(), 1..200)) {
        let (mut hub, mut agent) = pair();
        let mut ids: Vec<u32> = Vec::new();
        for op in ops {
            let pick = |p: usize| if ids.is_empty() { 2 } else { ids[p % ids.len()] };
            let (frame, hub_sends) = match op {
                Op::Open { end } => match hub.next_stream_id() {
                    Ok(id) => { ids.push(id); (request(id, end), true) }
                    Err(_) => continue,
                },
                Op::Respond { pick: p } => (response(pick(p), false), false),
                Op::Data { pick: p, from_hub, size, end } => {
                    let id = pick(p);
                    let (s, _) = if from_hub { (&hub, &agent) } else { (&agent, &hub) };
                    let n = (size as u32).min(s.send_capacity(id)).min(16 * 1024);
                    (data(id, n as usize, end), from_hub)
                }
                Op::Reset { pick: p, from_hub } => (Frame::Reset(Reset { stream_id: pick(p), code: ErrorCode::CANCEL }), from_hub),
                Op::Release { pick: p, n } => {
                    if let Some(wu) = hub.release(pick(p), n as u32) {
                        (Frame::WindowUpdate(wu), true)
                    } else { continue }
                }
            };
            let (from, to) = if hub_sends { (&mut hub, &mut agent) } else { (&mut agent, &mut hub) };
            if from.send(&frame).is_ok() {
                let r = to.recv(&frame);
                prop_assert!(r.is_ok(), "send accepted {:?} but recv said {:?}", frame, r);
                if let Some(wu) = r.unwrap().window_update {
                    let wu = Frame::WindowUpdate(wu);
                    to.send(&wu).unwrap();
                    from.recv(&wu).unwrap();
                }
            }
            for &id in &ids {
                let (h, a) = (hub.stream_state(id), agent.stream_state(id));
                let mirrored = match h {
                    StreamState::HalfClosedLocal => StreamState::HalfClosedRemote,
                    StreamState::HalfClosedRemote => StreamState::HalfClosedLocal,
                    s => s,
                };
                prop_assert_eq!(mirrored, a, "stream {}", id);
            }
        }
    }
}
