//! Malformed input gets a typed error, never a panic, and oversize frames are refused from the
//! header alone, before any memory is reserved for the body.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod strategies;

use bytes::{Bytes, BytesMut};
use kubehub_wire::*;
use proptest::prelude::*;

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    Decoder::new(DEFAULT_MAX_FRAME_SIZE).decode(&mut buf)
}

fn header(len: u32, ty: u8, flags: u8, stream: u32) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.push(ty);
    v.push(flags);
    v.extend_from_slice(&stream.to_be_bytes());
    v
}

#[test]
fn oversize_length_is_refused_before_the_body_arrives() {
    let mut buf = BytesMut::from(&header(DEFAULT_MAX_FRAME_SIZE + 1, 0x04, 0, 2)[..]);
    let cap_before = buf.capacity();
    let err = Decoder::new(DEFAULT_MAX_FRAME_SIZE)
        .decode(&mut buf)
        .unwrap_err();
    assert_eq!(
        err,
        DecodeError::FrameTooLarge {
            len: DEFAULT_MAX_FRAME_SIZE + 1,
            max: DEFAULT_MAX_FRAME_SIZE
        }
    );
    assert_eq!(err.code(), ErrorCode::FRAME_SIZE);
    assert_eq!(
        buf.capacity(),
        cap_before,
        "nothing reserved for a refused frame"
    );

    // u32::MAX too, and the handshake decoder's small limit.
    let err = decode_one(&header(u32::MAX, 0x04, 0, 2)).unwrap_err();
    assert!(matches!(err, DecodeError::FrameTooLarge { .. }));
    let mut buf = BytesMut::from(&header(HANDSHAKE_MAX_FRAME_SIZE + 1, 0x00, 0, 0)[..]);
    assert!(matches!(
        Decoder::default().decode(&mut buf),
        Err(DecodeError::FrameTooLarge { .. })
    ));
}

#[test]
fn valid_header_reserves_room_for_the_body_and_waits() {
    let mut buf = BytesMut::from(&header(1000, 0x04, 0, 2)[..]);
    assert_eq!(Decoder::new(4096).decode(&mut buf).unwrap(), None);
    assert!(buf.capacity() >= HEADER_LEN + 1000);
}

#[test]
fn unknown_type_and_bad_flags() {
    assert_eq!(
        decode_one(&header(0, 0x12, 0, 0)).unwrap_err(),
        DecodeError::UnknownType(0x12)
    );
    assert_eq!(
        decode_one(&header(0, 0xff, 0, 0)).unwrap_err(),
        DecodeError::UnknownType(0xff)
    );
    // END_STREAM is not defined on RESET; 0x2 on DATA is undefined.
    assert!(matches!(
        decode_one(&header(4, 0x06, 0x01, 1)).unwrap_err(),
        DecodeError::BadFlags {
            ty: FrameType::Reset,
            flags: 1
        }
    ));
    assert!(matches!(
        decode_one(&header(0, 0x04, 0x02, 1)).unwrap_err(),
        DecodeError::BadFlags { .. }
    ));
}

#[test]
fn stream_id_rules() {
    // DATA on stream 0; PING on stream 3; reserved bit.
    assert!(matches!(
        decode_one(&header(0, 0x04, 0, 0)).unwrap_err(),
        DecodeError::BadStreamId { stream: 0, .. }
    ));
    assert!(matches!(
        decode_one(&header(8, 0x08, 0, 3)).unwrap_err(),
        DecodeError::BadStreamId { stream: 3, .. }
    ));
    assert_eq!(
        decode_one(&header(0, 0x04, 0, 0x8000_0002)).unwrap_err(),
        DecodeError::ReservedBit(0x8000_0002)
    );
    // WINDOW_UPDATE may use either.
    let mut v = header(4, 0x07, 0, 0);
    v.extend_from_slice(&1u32.to_be_bytes());
    assert!(decode_one(&v).unwrap().is_some());
}

#[test]
fn truncated_and_trailing_bodies() {
    // RESET announces 3 bytes: its code needs 4.
    let mut v = header(3, 0x06, 0, 1);
    v.extend_from_slice(&[0, 0, 0]);
    assert!(matches!(
        decode_one(&v).unwrap_err(),
        DecodeError::Truncated {
            ty: FrameType::Reset,
            ..
        }
    ));
    // PING with 9 bytes.
    let mut v = header(9, 0x08, 0, 0);
    v.extend_from_slice(&[0; 9]);
    assert_eq!(
        decode_one(&v).unwrap_err(),
        DecodeError::TrailingBytes {
            ty: FrameType::Ping,
            extra: 1
        }
    );
    // A string length that runs past the body.
    let mut v = header(4, 0x0d, 0, 1);
    v.extend_from_slice(&[0, 9, b'1', b'2']);
    assert!(matches!(
        decode_one(&v).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
    // decode_exact on short and long buffers.
    assert!(matches!(
        decode_exact(Bytes::from_static(&[0, 0, 0]), 100),
        Err(DecodeError::Incomplete { have: 3, need: 10 })
    ));
}

#[test]
fn bad_header_encoding() {
    let request = |method: &[u8], path: &[u8], name: &[u8], value: &[u8]| {
        let mut body = Vec::new();
        for f in [method, path] {
            body.extend_from_slice(&(f.len() as u16).to_be_bytes());
            body.extend_from_slice(f);
        }
        body.extend_from_slice(&1u16.to_be_bytes());
        for f in [name, value] {
            body.extend_from_slice(&(f.len() as u16).to_be_bytes());
            body.extend_from_slice(f);
        }
        let mut v = header(body.len() as u32, 0x02, 0, 2);
        v.extend_from_slice(&body);
        decode_one(&v)
    };
    assert!(request(b"GET", b"/x", b"Accept", b"*/*").unwrap().is_some());
    let invalid = |r: Result<Option<Frame>, DecodeError>, field: &str| match r {
        Err(DecodeError::InvalidField { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    };
    invalid(request(b"G T", b"/x", b"A", b"b"), "method");
    invalid(request(b"", b"/x", b"A", b"b"), "method");
    invalid(request(b"GET", b"x", b"A", b"b"), "path");
    invalid(request(b"GET", b"/a b", b"A", b"b"), "path");
    invalid(request(b"GET", b"/x", b"A:", b"b"), "field name");
    invalid(request(b"GET", b"/x", b"", b"b"), "field name");
    invalid(
        request(b"GET", b"/x", b"A", b"b\r\nX-Injected: 1"),
        "field value",
    );
    invalid(request(b"GET", b"/x", b"A", b"b\0"), "field value");

    // Invalid UTF-8 in a string field, an undefined event type, a zero window increment.
    let mut v = header(3, 0x0d, 0, 1);
    v.extend_from_slice(&[0, 1, 0xff]);
    invalid(decode_one(&v), "resource_version");
    let mut v = header(3, 0x0e, 0, 1);
    v.extend_from_slice(&[9, 0, 0]);
    invalid(decode_one(&v), "event type");
    let mut v = header(4, 0x07, 0, 1);
    v.extend_from_slice(&[0, 0, 0, 0]);
    invalid(decode_one(&v), "increment");
    // A response status outside 100..=999.
    let mut v = header(4, 0x03, 0, 1);
    v.extend_from_slice(&[0, 99, 0, 0]);
    invalid(decode_one(&v), "status");
}

#[test]
fn hello_with_impossible_settings_is_refused() {
    let mut f = Hello {
        min_version: 1,
        max_version: 1,
        capabilities: Capabilities(0),
        settings: Settings::default(),
        agent_id: "a".into(),
        cluster_id: "c".into(),
        software: "s".into(),
        labels: vec![],
    };
    f.settings.max_frame_size = 100; // below the 16 KiB floor
    let mut buf = BytesMut::new();
    encode(&Frame::Hello(f), &mut buf);
    assert!(matches!(
        decode_one(&buf).unwrap_err(),
        DecodeError::InvalidField {
            field: "settings",
            ..
        }
    ));
}

/// A frame of type `ty` on `stream` with `body`.
fn frame_bytes(ty: u8, stream: u32, body: &[u8]) -> Vec<u8> {
    let mut v = header(body.len() as u32, ty, 0, stream);
    v.extend_from_slice(body);
    v
}

fn invalid_field(r: Result<Option<Frame>, DecodeError>, field: &str) {
    match r {
        Err(DecodeError::InvalidField { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected invalid {field}, got {other:?}"),
    }
}

/// A key as SNAPSHOT_BEGIN and SYNC_REQUEST carry it.
fn key(group: &[u8], version: &[u8], resource: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    for f in [group, version, resource] {
        v.extend_from_slice(&(f.len() as u16).to_be_bytes());
        v.extend_from_slice(f);
    }
    v
}

#[test]
fn malformed_sync_requests() {
    let sync_request = |count: u32, keys: &[&[u8]], extra: &[u8]| {
        let mut body = count.to_be_bytes().to_vec();
        for k in keys {
            body.extend_from_slice(k);
        }
        body.extend_from_slice(extra);
        decode_one(&frame_bytes(0x0f, 0, &body))
    };
    let pods = key(b"", b"v1", b"pods");
    assert_eq!(
        sync_request(1, &[&pods], &[]).unwrap(),
        Some(Frame::SyncRequest(SyncRequest {
            resources: vec![ResourceKey {
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
            }]
        }))
    );
    // A count above the keys present, and a huge count in a small body.
    assert!(matches!(
        sync_request(2, &[&pods], &[]).unwrap_err(),
        DecodeError::Truncated {
            ty: FrameType::SyncRequest,
            ..
        }
    ));
    assert!(matches!(
        sync_request(u32::MAX, &[], &[]).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
    // A count below them: the rest is trailing bytes.
    assert_eq!(
        sync_request(0, &[&pods], &[]).unwrap_err(),
        DecodeError::TrailingBytes {
            ty: FrameType::SyncRequest,
            extra: pods.len()
        }
    );
    assert!(matches!(
        sync_request(1, &[&pods], &[0]).unwrap_err(),
        DecodeError::TrailingBytes { extra: 1, .. }
    ));
    // An empty resource or version; a resource that is not UTF-8.
    invalid_field(
        sync_request(1, &[&key(b"apps", b"v1", b"")], &[]),
        "resource",
    );
    invalid_field(sync_request(1, &[&key(b"", b"", b"pods")], &[]), "resource");
    invalid_field(
        sync_request(1, &[&key(b"", b"v1", b"\xff")], &[]),
        "resource",
    );
    // Stream 0 only; no flags.
    assert!(matches!(
        decode_one(&frame_bytes(0x0f, 1, &0u32.to_be_bytes())).unwrap_err(),
        DecodeError::BadStreamId {
            ty: FrameType::SyncRequest,
            stream: 1,
            ..
        }
    ));
    let mut v = header(4, 0x0f, 0x01, 0);
    v.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode_one(&v).unwrap_err(),
        DecodeError::BadFlags {
            ty: FrameType::SyncRequest,
            ..
        }
    ));
}

#[test]
fn malformed_progress_frames() {
    // PROGRESS_REQUEST: exactly a 32-bit seq, on a stream, no flags.
    assert!(decode_one(&frame_bytes(0x10, 3, &[0, 0, 0, 1]))
        .unwrap()
        .is_some());
    assert!(matches!(
        decode_one(&frame_bytes(0x10, 3, &[0, 0, 1])).unwrap_err(),
        DecodeError::Truncated {
            ty: FrameType::ProgressRequest,
            ..
        }
    ));
    assert_eq!(
        decode_one(&frame_bytes(0x10, 3, &[0, 0, 0, 1, 0])).unwrap_err(),
        DecodeError::TrailingBytes {
            ty: FrameType::ProgressRequest,
            extra: 1
        }
    );
    assert!(matches!(
        decode_one(&frame_bytes(0x10, 0, &[0, 0, 0, 1])).unwrap_err(),
        DecodeError::BadStreamId { stream: 0, .. }
    ));
    let mut v = header(4, 0x10, 0x01, 3);
    v.extend_from_slice(&[0; 4]);
    assert!(matches!(
        decode_one(&v).unwrap_err(),
        DecodeError::BadFlags { .. }
    ));

    // PROGRESS: seq, then a UTF-8 resourceVersion, nothing after it.
    assert!(decode_one(&frame_bytes(0x11, 3, &[0, 0, 0, 1, 0, 1, b'5']))
        .unwrap()
        .is_some());
    assert!(matches!(
        decode_one(&frame_bytes(0x11, 3, &[0, 0, 0, 1])).unwrap_err(),
        DecodeError::Truncated {
            ty: FrameType::Progress,
            field: "resource_version"
        }
    ));
    assert!(matches!(
        decode_one(&frame_bytes(0x11, 3, &[0, 0, 0, 1, 0, 3, b'5'])).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
    assert_eq!(
        decode_one(&frame_bytes(0x11, 3, &[0, 0, 0, 1, 0, 1, b'5', b'6'])).unwrap_err(),
        DecodeError::TrailingBytes {
            ty: FrameType::Progress,
            extra: 1
        }
    );
    invalid_field(
        decode_one(&frame_bytes(0x11, 3, &[0, 0, 0, 1, 0, 1, 0xff])),
        "resource_version",
    );
    assert!(matches!(
        decode_one(&frame_bytes(0x11, 0, &[0, 0, 0, 1, 0, 0])).unwrap_err(),
        DecodeError::BadStreamId { stream: 0, .. }
    ));
}

#[test]
fn malformed_hello_labels() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        capabilities: Capabilities(0),
        settings: Settings::default(),
        agent_id: "a".into(),
        cluster_id: "c".into(),
        software: "s".into(),
        labels: vec![],
    };
    let mut buf = BytesMut::new();
    encode(&Frame::Hello(hello.clone()), &mut buf);
    // The body up to the labels (HELLO without its last field, as before labels existed).
    let before_labels = buf[HEADER_LEN..buf.len() - 2].to_vec();
    let with_labels = |tail: &[u8]| {
        let mut body = before_labels.clone();
        body.extend_from_slice(tail);
        decode_one(&frame_bytes(0x00, 0, &body))
    };
    assert_eq!(
        with_labels(&[0, 1, 0, 1, b'k', 0, 1, b'v']).unwrap(),
        Some(Frame::Hello(Hello {
            labels: vec![("k".into(), "v".into())],
            ..hello
        }))
    );
    // No label count at all; a count above the labels present; a label without its value.
    assert!(matches!(
        with_labels(&[]).unwrap_err(),
        DecodeError::Truncated {
            ty: FrameType::Hello,
            field: "label count"
        }
    ));
    assert!(matches!(
        with_labels(&[0, 2, 0, 1, b'k', 0, 1, b'v']).unwrap_err(),
        DecodeError::Truncated {
            field: "label name",
            ..
        }
    ));
    assert!(matches!(
        with_labels(&[0, 1, 0, 1, b'k']).unwrap_err(),
        DecodeError::Truncated {
            field: "label value",
            ..
        }
    ));
    // An empty name, a repeated name, bytes that are not UTF-8, trailing bytes.
    invalid_field(with_labels(&[0, 1, 0, 0, 0, 1, b'v']), "label name");
    invalid_field(
        with_labels(&[0, 2, 0, 1, b'k', 0, 1, b'v', 0, 1, b'k', 0, 0]),
        "label name",
    );
    invalid_field(with_labels(&[0, 1, 0, 1, 0xff, 0, 0]), "label name");
    invalid_field(with_labels(&[0, 1, 0, 1, b'k', 0, 1, 0xff]), "label value");
    assert!(matches!(
        with_labels(&[0, 0, 7]).unwrap_err(),
        DecodeError::TrailingBytes {
            ty: FrameType::Hello,
            extra: 1
        }
    ));
    // A huge count in a small body does not allocate for it.
    assert!(matches!(
        with_labels(&[0xff, 0xff]).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
}

#[test]
fn huge_counts_do_not_allocate_up_front() {
    // SNAPSHOT_ITEMS announcing 2^32-1 items in a 4-byte body: truncated, no giant Vec.
    let mut v = header(4, 0x0c, 0, 1);
    v.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode_one(&v).unwrap_err(),
        DecodeError::Truncated { .. }
    ));
    let mut v = header(6, 0x0a, 0, 0);
    v.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0, 0]);
    assert!(decode_one(&v).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// Arbitrary bytes: the decoder returns frames, waits, or errors; it never panics, and what
    /// it does return re-encodes to the bytes it came from.
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&input[..]);
        let mut dec = Decoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut consumed = 0;
        loop {
            let before = buf.len();
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    let used = before - buf.len();
                    let mut again = BytesMut::new();
                    encode(&f, &mut again);
                    prop_assert_eq!(&again[..], &input[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Valid frames with one byte flipped: still no panic.
    #[test]
    fn corrupted_frames_never_panic(f in strategies::frame(), pos in any::<usize>(), bit in 0u8..8) {
        let mut buf = BytesMut::new();
        encode(&f, &mut buf);
        let i = pos % buf.len();
        buf[i] ^= 1 << bit;
        let _ = Decoder::new(MAX_FRAME_SIZE_LIMIT).decode(&mut buf);
    }
}
