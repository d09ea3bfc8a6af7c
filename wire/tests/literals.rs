//! Byte-literal frames: the layout documented in PROTOCOL.md, pinned. A change of layout must
//! break these on purpose (and bump the protocol version).

#![allow(clippy::unwrap_used)] // tests unwrap freely

use bytes::{Bytes, BytesMut};
use kubehub_wire::*;

fn check(frame: Frame, bytes: &[u8]) {
    let mut buf = BytesMut::new();
    encode(&frame, &mut buf);
    assert_eq!(&buf[..], bytes, "encoding of {frame:?}");
    let decoded = decode_exact(Bytes::copy_from_slice(bytes), MAX_FRAME_SIZE_LIMIT).unwrap();
    assert_eq!(decoded, frame);
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn hello() {
    check(
        Frame::Hello(Hello {
            min_version: 1,
            max_version: 2,
            capabilities: Capabilities(3),
            settings: Settings {
                max_frame_size: 0x4000,
                max_concurrent_streams: 100,
                initial_stream_window: 0x10000,
                initial_sync_window: 0x20000,
                initial_connection_window: 0x40000,
            },
            agent_id: "a".into(),
            cluster_id: "c1".into(),
            software: "".into(),
            labels: vec![("r".into(), "x1".into()), ("t".into(), "".into())],
        }),
        &[
            0, 0, 0, 55, 0x00, 0, 0, 0, 0, 0, // header: len 55, HELLO, stream 0
            0, 1, 0, 2, // versions 1..=2
            0, 0, 0, 0, 0, 0, 0, 3, // capabilities
            0, 0, 0x40, 0, // max_frame_size
            0, 0, 0, 100, // max_concurrent_streams
            0, 1, 0, 0, // initial_stream_window
            0, 2, 0, 0, // initial_sync_window
            0, 4, 0, 0, // initial_connection_window
            0, 1, b'a', // agent_id
            0, 2, b'c', b'1', // cluster_id
            0, 0, // software
            0, 2, // two labels
            0, 1, b'r', 0, 2, b'x', b'1', // r=x1
            0, 1, b't', 0, 0, // t=""
        ],
    );
}

#[test]
fn hello_ack() {
    check(
        Frame::HelloAck(HelloAck {
            version: 1,
            capabilities: Capabilities(1),
            settings: Settings {
                max_frame_size: 0x4000,
                max_concurrent_streams: 1,
                initial_stream_window: 0,
                initial_sync_window: 0x4000,
                initial_connection_window: 0x4000,
            },
            keepalive_ms: 15000,
            hub_id: "h".into(),
        }),
        &[
            0, 0, 0, 37, 0x01, 0, 0, 0, 0, 0, // header
            0, 1, // version
            0, 0, 0, 0, 0, 0, 0, 1, // capabilities
            0, 0, 0x40, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x40, 0, 0, 0, 0x40, 0, // settings
            0, 0, 0x3a, 0x98, // keepalive 15000 ms
            0, 1, b'h',
        ],
    );
}

#[test]
fn request_and_response() {
    check(
        Frame::Request(Request {
            stream_id: 2,
            end_stream: true,
            method: b("GET"),
            path: b("/api"),
            fields: vec![(b("A"), b("b"))],
        }),
        &[
            0, 0, 0, 19, 0x02, 0x01, 0, 0, 0, 2, // header: REQUEST, END_STREAM, stream 2
            0, 3, b'G', b'E', b'T', // method
            0, 4, b'/', b'a', b'p', b'i', // path
            0, 1, // one field
            0, 1, b'A', 0, 1, b'b',
        ],
    );
    check(
        Frame::Response(Response {
            stream_id: 2,
            end_stream: false,
            status: 404,
            fields: vec![],
        }),
        &[0, 0, 0, 4, 0x03, 0, 0, 0, 0, 2, 0x01, 0x94, 0, 0],
    );
}

#[test]
fn data_end_reset() {
    check(
        Frame::Data(Data {
            stream_id: 7,
            end_stream: true,
            payload: b("hi"),
        }),
        &[0, 0, 0, 2, 0x04, 0x01, 0, 0, 0, 7, b'h', b'i'],
    );
    check(
        Frame::End(End {
            stream_id: 7,
            trailers: vec![],
        }),
        &[0, 0, 0, 2, 0x05, 0, 0, 0, 0, 7, 0, 0],
    );
    check(
        Frame::Reset(Reset {
            stream_id: 0x01020304,
            code: ErrorCode::CANCEL,
        }),
        &[0, 0, 0, 4, 0x06, 0, 1, 2, 3, 4, 0, 0, 0, 7],
    );
}

#[test]
fn window_update_ping_goaway() {
    check(
        Frame::WindowUpdate(WindowUpdate {
            stream_id: 0,
            increment: 65535,
        }),
        &[0, 0, 0, 4, 0x07, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
    );
    check(
        Frame::Ping(Ping {
            ack: true,
            opaque: 0x0102030405060708,
        }),
        &[0, 0, 0, 8, 0x08, 0x01, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
    );
    check(
        Frame::GoAway(GoAway {
            last_stream_id: 9,
            code: ErrorCode::NO_ERROR,
            message: "bye".into(),
        }),
        &[
            0, 0, 0, 11, 0x09, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, b'b', b'y', b'e',
        ],
    );
}

#[test]
fn discovery() {
    check(
        Frame::Discovery(Discovery {
            resources: vec![ResourceType {
                group: "".into(),
                version: "v1".into(),
                resource: "pods".into(),
                kind: "Pod".into(),
                singular: "pod".into(),
                namespaced: true,
                cached: true,
                verbs: Verbs(Verbs::GET.0 | Verbs::LIST.0 | Verbs::WATCH.0),
                short_names: vec!["po".into()],
                categories: vec![],
            }],
        }),
        &[
            0, 0, 0, 35, 0x0a, 0, 0, 0, 0, 0, // header
            0, 0, 0, 1,    // one resource
            0x03, // namespaced | cached
            0, 0x07, // get list watch
            0, 0, // group ""
            0, 2, b'v', b'1', // version
            0, 4, b'p', b'o', b'd', b's', // resource
            0, 3, b'P', b'o', b'd', // kind
            0, 3, b'p', b'o', b'd', // singular
            1, 0, 2, b'p', b'o', // short names
            0,    // categories
        ],
    );
}

#[test]
fn sync_family() {
    check(
        Frame::SnapshotBegin(SnapshotBegin {
            stream_id: 1,
            resource: ResourceKey {
                group: "apps".into(),
                version: "v1".into(),
                resource: "deployments".into(),
            },
        }),
        &[
            0, 0, 0, 23, 0x0b, 0, 0, 0, 0, 1, // header
            0, 4, b'a', b'p', b'p', b's', 0, 2, b'v', b'1', 0, 11, b'd', b'e', b'p', b'l', b'o',
            b'y', b'm', b'e', b'n', b't', b's',
        ],
    );
    check(
        Frame::SnapshotItems(SnapshotItems {
            stream_id: 1,
            items: vec![b("{}"), b("")],
        }),
        &[
            0, 0, 0, 14, 0x0c, 0, 0, 0, 0, 1, // header
            0, 0, 0, 2, // two items
            0, 0, 0, 2, b'{', b'}', // item 1
            0, 0, 0, 0, // item 2, empty
        ],
    );
    check(
        Frame::SnapshotEnd(SnapshotEnd {
            stream_id: 1,
            resource_version: "42".into(),
        }),
        &[0, 0, 0, 4, 0x0d, 0, 0, 0, 0, 1, 0, 2, b'4', b'2'],
    );
    check(
        Frame::WatchEvent(WatchEvent {
            stream_id: 1,
            event: EventType::Deleted,
            resource_version: "43".into(),
            object: b("{}"),
        }),
        &[
            0, 0, 0, 7, 0x0e, 0, 0, 0, 0, 1, 2, 0, 2, b'4', b'3', b'{', b'}',
        ],
    );
}

#[test]
fn sync_request_and_progress() {
    check(
        Frame::SyncRequest(SyncRequest {
            resources: vec![
                ResourceKey {
                    group: "".into(),
                    version: "v1".into(),
                    resource: "pods".into(),
                },
                ResourceKey {
                    group: "apps".into(),
                    version: "v1".into(),
                    resource: "deployments".into(),
                },
            ],
        }),
        &[
            0, 0, 0, 39, 0x0f, 0, 0, 0, 0, 0, // header: SYNC_REQUEST, stream 0
            0, 0, 0, 2, // two keys
            0, 0, 0, 2, b'v', b'1', 0, 4, b'p', b'o', b'd', b's', // "" v1 pods
            0, 4, b'a', b'p', b'p', b's', 0, 2, b'v', b'1', 0, 11, b'd', b'e', b'p', b'l', b'o',
            b'y', b'm', b'e', b'n', b't', b's', // apps v1 deployments
        ],
    );
    check(
        Frame::SyncRequest(SyncRequest { resources: vec![] }),
        &[0, 0, 0, 4, 0x0f, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    );
    check(
        Frame::ProgressRequest(ProgressRequest {
            stream_id: 3,
            seq: 0x01020304,
        }),
        &[0, 0, 0, 4, 0x10, 0, 0, 0, 0, 3, 1, 2, 3, 4],
    );
    check(
        Frame::Progress(Progress {
            stream_id: 3,
            seq: 7,
            resource_version: "42".into(),
        }),
        &[
            0, 0, 0, 8, 0x11, 0, 0, 0, 0, 3, // header: PROGRESS, stream 3
            0, 0, 0, 7, // seq
            0, 2, b'4', b'2', // resource_version
        ],
    );
    check(
        Frame::Progress(Progress {
            stream_id: 3,
            seq: 0,
            resource_version: "".into(),
        }),
        &[0, 0, 0, 6, 0x11, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0],
    );
}

#[test]
fn every_frame_type_has_a_literal_test() {
    // FrameType::ALL is what the decoder accepts; this list is what the tests above pin.
    let pinned = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
        0x0f, 0x10, 0x11,
    ];
    let all: Vec<u8> = FrameType::ALL.iter().map(|t| *t as u8).collect();
    assert_eq!(all, pinned);
}
