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
        decode_one(&header(0, 0x0f, 0, 0)).unwrap_err(),
        DecodeError::UnknownType(0x0f)
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
