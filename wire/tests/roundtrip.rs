//! Property tests: every frame survives encode → decode unchanged, whichever encoder wrote it
//! and however the bytes are split on arrival.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod strategies;

use bytes::{Buf, Bytes, BytesMut};
use kubehub_wire::*;
use proptest::prelude::*;
use strategies::frame;

fn encode_all(frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        encode(f, &mut buf);
    }
    buf
}

/// Feeds `input` to a decoder in the given chunk sizes (cycled) and collects the frames.
fn decode_in_chunks(input: &[u8], chunks: &[usize]) -> Vec<Frame> {
    let mut dec = Decoder::new(MAX_FRAME_SIZE_LIMIT);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < input.len() {
        let n = chunks[i % chunks.len()].max(1).min(input.len() - pos);
        i += 1;
        buf.extend_from_slice(&input[pos..pos + n]);
        pos += n;
        while let Some(f) = dec.decode(&mut buf).expect("valid stream") {
            out.push(f);
        }
    }
    assert!(buf.is_empty(), "{} bytes left undecoded", buf.len());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn decode_of_encode_is_identity(f in frame()) {
        let mut buf = BytesMut::new();
        encode(&f, &mut buf);
        prop_assert_eq!(buf.len(), HEADER_LEN + kubehub_wire::codec::body_len(&f));
        let decoded = decode_exact(buf.freeze(), MAX_FRAME_SIZE_LIMIT).unwrap();
        prop_assert_eq!(decoded, f);
    }

    #[test]
    fn vectored_encoder_writes_the_same_bytes(frames in proptest::collection::vec(frame(), 1..8)) {
        let mut eb = EncodeBuf::new();
        for f in &frames {
            eb.push(f);
        }
        let mut flat = Vec::new();
        let mut slices = [std::io::IoSlice::new(&[]); 64];
        let n = eb.chunks_vectored(&mut slices);
        prop_assert_eq!(n, eb.chunk_count().min(64));
        // Drain as a writer would, partially, in odd steps.
        while eb.has_remaining() {
            let chunk = eb.chunk();
            let take = chunk.len().min(7 + flat.len() % 13);
            flat.extend_from_slice(&chunk[..take]);
            eb.advance(take);
        }
        prop_assert_eq!(&flat[..], &encode_all(&frames)[..]);
    }

    #[test]
    fn any_split_of_a_frame_sequence_decodes_the_same(
        frames in proptest::collection::vec(frame(), 1..10),
        chunks in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let input = encode_all(&frames);
        prop_assert_eq!(decode_in_chunks(&input, &chunks), frames);
    }
}

#[test]
fn the_strategy_produces_every_frame_type() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let seen: std::collections::HashSet<FrameType> = (0..2000)
        .map(|_| {
            frame()
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .frame_type()
        })
        .collect();
    for ty in FrameType::ALL {
        assert!(seen.contains(&ty), "no {} frame generated", ty.name());
    }
}

#[test]
fn one_byte_at_a_time_decodes_the_same() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let frames: Vec<Frame> = (0..200)
        .map(|_| frame().new_tree(&mut runner).unwrap().current())
        .collect();
    let input = encode_all(&frames);
    assert_eq!(decode_in_chunks(&input, &[1]), frames);
}

#[test]
fn decoded_payload_shares_memory_with_the_read_buffer() {
    let payload = Bytes::from(vec![0xab; 64 * 1024]);
    let frame = Frame::Data(Data {
        stream_id: 2,
        end_stream: false,
        payload: payload.clone(),
    });
    let mut buf = BytesMut::new();
    encode(&frame, &mut buf);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let mut dec = Decoder::new(MAX_FRAME_SIZE_LIMIT);
    let Some(Frame::Data(d)) = dec.decode(&mut buf).unwrap() else {
        panic!("expected DATA");
    };
    assert_eq!(d.payload, payload);
    let p = d.payload.as_ptr() as usize;
    assert_eq!(
        p,
        range.start + HEADER_LEN,
        "payload must be a slice of the read buffer"
    );
    assert!(p + d.payload.len() <= range.end);

    // The same holds for snapshot items and watch objects.
    let items = Frame::SnapshotItems(SnapshotItems {
        stream_id: 1,
        items: vec![payload.slice(..1000), payload.slice(..5000)],
    });
    let mut buf = BytesMut::new();
    encode(&items, &mut buf);
    let range = buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len();
    let Some(Frame::SnapshotItems(s)) = dec.decode(&mut buf).unwrap() else {
        panic!("expected SNAPSHOT_ITEMS");
    };
    for item in &s.items {
        assert!(range.contains(&(item.as_ptr() as usize)));
    }
}

#[test]
fn vectored_encoder_hands_large_payloads_through_untouched() {
    let payload = Bytes::from(vec![7u8; 4096]);
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::Data(Data {
        stream_id: 4,
        end_stream: true,
        payload: payload.clone(),
    }));
    assert_eq!(eb.chunk_count(), 2, "header chunk + payload chunk");
    eb.advance(HEADER_LEN);
    assert_eq!(
        eb.chunk().as_ptr(),
        payload.as_ptr(),
        "payload queued without a copy"
    );

    // Small payloads ride along with their header in one chunk.
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::Data(Data {
        stream_id: 4,
        end_stream: false,
        payload: Bytes::from_static(b"tiny"),
    }));
    assert_eq!(eb.chunk_count(), 1);
    assert_eq!(eb.remaining(), HEADER_LEN + 4);
}

#[test]
fn encode_buffer_memory_is_released_only_when_drained() {
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::Ping(Ping {
        ack: false,
        opaque: 1,
    }));
    eb.release_memory();
    assert_eq!(
        eb.remaining(),
        HEADER_LEN + 8,
        "queued bytes survive a release"
    );
    let n = eb.remaining();
    eb.advance(n);
    eb.release_memory();
    assert!(eb.is_empty());
    eb.push(&Frame::Ping(Ping {
        ack: true,
        opaque: 2,
    }));
    assert_eq!(eb.remaining(), HEADER_LEN + 8);
}
