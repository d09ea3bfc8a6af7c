//! Encode and decode throughput of the tunnel protocol at 64 B, 4 KiB and 64 KiB payloads.
//!
//! `encode/*` is the hot-path form (EncodeBuf: header bytes written, payload handed through);
//! `encode_copy/*` the contiguous form for comparison; `decode/*` a stream of frames taken off
//! one read buffer (payloads are zero-copy slices; filling the buffer is not timed).

use bytes::{Buf, BytesMut};
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use kubehub_benches::{data_frame, request_frame, watch_frame};
use kubehub_wire::{encode, Decoder, EncodeBuf, Frame, MAX_FRAME_SIZE_LIMIT};

const SIZES: [(usize, &str); 3] = [(64, "64B"), (4096, "4KiB"), (65536, "64KiB")];
/// Frames per iteration, so per-iteration overhead does not dominate small payloads.
const BATCH: usize = 64;

fn bench_encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for (size, label) in SIZES {
        for (kind, frame) in [("data", data_frame(size)), ("watch", watch_frame(size))] {
            g.throughput(Throughput::Bytes((size * BATCH) as u64));
            g.bench_function(BenchmarkId::new(kind, label), |b| {
                let mut out = EncodeBuf::new();
                b.iter(|| {
                    for _ in 0..BATCH {
                        out.push(black_box(&frame));
                    }
                    let n = out.remaining();
                    out.advance(n);
                });
            });
        }
    }
    g.finish();

    let mut g = c.benchmark_group("encode_copy");
    for (size, label) in SIZES {
        let frame = data_frame(size);
        g.throughput(Throughput::Bytes((size * BATCH) as u64));
        g.bench_function(BenchmarkId::new("data", label), |b| {
            let mut out = BytesMut::with_capacity((size + 16) * BATCH);
            b.iter(|| {
                for _ in 0..BATCH {
                    encode(black_box(&frame), &mut out);
                }
                out.clear();
            });
        });
    }
    g.finish();
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    for _ in 0..BATCH {
        encode(frame, &mut buf);
    }
    buf
}

fn bench_decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for (size, label) in SIZES {
        for (kind, frame) in [("data", data_frame(size)), ("watch", watch_frame(size))] {
            let input = encoded(&frame).freeze();
            g.throughput(Throughput::Bytes((size * BATCH) as u64));
            g.bench_function(BenchmarkId::new(kind, label), |b| {
                let mut dec = Decoder::new(MAX_FRAME_SIZE_LIMIT);
                // The read buffer is filled outside the timed part (the socket read's copy is
                // not the decoder's cost).
                b.iter_batched_ref(
                    || BytesMut::from(&input[..]),
                    |buf| {
                        let mut n = 0;
                        while let Some(f) = dec.decode(buf).expect("valid input") {
                            black_box(&f);
                            n += 1;
                        }
                        assert_eq!(n, BATCH);
                    },
                    BatchSize::LargeInput,
                );
            });
        }
    }
    let input = encoded(&request_frame()).freeze();
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("request_head", |b| {
        let mut dec = Decoder::new(MAX_FRAME_SIZE_LIMIT);
        b.iter_batched_ref(
            || BytesMut::from(&input[..]),
            |buf| {
                while let Some(f) = dec.decode(buf).expect("valid input") {
                    black_box(&f);
                }
            },
            BatchSize::SmallInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench_encode, bench_decode);
criterion_main!(benches);
