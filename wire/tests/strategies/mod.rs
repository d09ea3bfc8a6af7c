//! proptest strategies producing every frame type with valid field domains.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::Bytes;
use kubehub_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn stream_id() -> impl Strategy<Value = u32> {
    1u32..0x8000_0000
}

fn token() -> impl Strategy<Value = Bytes> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,20}".prop_map(Bytes::from)
}

fn value() -> impl Strategy<Value = Bytes> {
    vec(
        any::<u8>().prop_filter("no CR LF NUL", |b| !matches!(b, b'\r' | b'\n' | 0)),
        0..40,
    )
    .prop_map(Bytes::from)
}

fn fields() -> impl Strategy<Value = Fields> {
    vec((token(), value()), 0..6)
}

fn payload(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn text() -> impl Strategy<Value = String> {
    "\\PC{0,24}"
}

pub fn settings() -> impl Strategy<Value = Settings> {
    (
        HANDSHAKE_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT,
        1u32..=u32::MAX,
        0u32..=MAX_WINDOW,
        0u32..=MAX_WINDOW,
        0u32..=MAX_WINDOW,
    )
        .prop_map(
            |(max_frame_size, max_concurrent_streams, a, b, c)| Settings {
                max_frame_size,
                max_concurrent_streams,
                initial_stream_window: a,
                initial_sync_window: b.max(max_frame_size),
                initial_connection_window: c.max(max_frame_size),
            },
        )
}

fn resource_type() -> impl Strategy<Value = ResourceType> {
    (
        (
            "[a-z.]{0,12}",
            "v[0-9]{1,2}",
            "[a-z]{1,12}",
            "[A-Z][a-z]{0,10}",
            "[a-z]{0,10}",
        ),
        any::<bool>(),
        any::<bool>(),
        0u16..=0xff,
        vec("[a-z]{1,4}", 0..3),
        vec("[a-z]{1,6}", 0..2),
    )
        .prop_map(
            |(
                (group, version, resource, kind, singular),
                namespaced,
                cached,
                verbs,
                short_names,
                categories,
            )| {
                ResourceType {
                    group,
                    version,
                    resource,
                    kind,
                    singular,
                    namespaced,
                    cached,
                    verbs: Verbs(verbs),
                    short_names,
                    categories,
                }
            },
        )
}

/// Cluster labels: names non-empty and unique, in any order.
fn labels() -> impl Strategy<Value = Vec<(String, String)>> {
    vec(("[a-z0-9./-]{1,20}", "\\PC{0,16}"), 0..4).prop_map(|mut labels| {
        let mut seen = std::collections::HashSet::new();
        labels.retain(|(name, _)| seen.insert(name.clone()));
        labels
    })
}

fn resource_key() -> impl Strategy<Value = ResourceKey> {
    ("[a-z.]{0,12}", "v[0-9]{1,2}", "[a-z]{1,12}").prop_map(|(group, version, resource)| {
        ResourceKey {
            group,
            version,
            resource,
        }
    })
}

pub fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            1u16..10,
            0u16..10,
            any::<u64>(),
            settings(),
            text(),
            text(),
            text(),
            labels()
        )
            .prop_map(
                |(min, extra, caps, settings, agent_id, cluster_id, software, labels)| {
                    Frame::Hello(Hello {
                        min_version: min,
                        max_version: min + extra,
                        capabilities: Capabilities(caps),
                        settings,
                        agent_id,
                        cluster_id,
                        software,
                        labels,
                    })
                }
            ),
        (1u16.., any::<u64>(), settings(), any::<u32>(), text()).prop_map(
            |(version, caps, settings, keepalive_ms, hub_id)| Frame::HelloAck(HelloAck {
                version,
                capabilities: Capabilities(caps),
                settings,
                keepalive_ms,
                hub_id,
            })
        ),
        (
            stream_id(),
            any::<bool>(),
            token(),
            "/[!-~]{0,60}",
            fields()
        )
            .prop_map(
                |(stream_id, end_stream, method, path, fields)| Frame::Request(Request {
                    stream_id,
                    end_stream,
                    method,
                    path: Bytes::from(path),
                    fields,
                })
            ),
        (stream_id(), any::<bool>(), 100u16..=999, fields()).prop_map(
            |(stream_id, end_stream, status, fields)| Frame::Response(Response {
                stream_id,
                end_stream,
                status,
                fields,
            })
        ),
        (stream_id(), any::<bool>(), payload(600)).prop_map(|(stream_id, end_stream, payload)| {
            Frame::Data(Data {
                stream_id,
                end_stream,
                payload,
            })
        }),
        (stream_id(), fields()).prop_map(|(stream_id, trailers)| Frame::End(End {
            stream_id,
            trailers
        })),
        (stream_id(), any::<u32>()).prop_map(|(stream_id, c)| Frame::Reset(Reset {
            stream_id,
            code: ErrorCode(c),
        })),
        (0u32..0x8000_0000, 1u32..=MAX_WINDOW).prop_map(|(stream_id, increment)| {
            Frame::WindowUpdate(WindowUpdate {
                stream_id,
                increment,
            })
        }),
        (any::<bool>(), any::<u64>()).prop_map(|(ack, opaque)| Frame::Ping(Ping { ack, opaque })),
        (0u32..0x8000_0000, any::<u32>(), text()).prop_map(|(last_stream_id, c, message)| {
            Frame::GoAway(GoAway {
                last_stream_id,
                code: ErrorCode(c),
                message,
            })
        }),
        vec(resource_type(), 0..4).prop_map(|resources| Frame::Discovery(Discovery { resources })),
        (stream_id(), resource_key()).prop_map(|(stream_id, resource)| Frame::SnapshotBegin(
            SnapshotBegin {
                stream_id,
                resource
            }
        )),
        (stream_id(), vec(payload(300), 0..5)).prop_map(|(stream_id, items)| {
            Frame::SnapshotItems(SnapshotItems { stream_id, items })
        }),
        (stream_id(), "[0-9]{0,12}").prop_map(|(stream_id, resource_version)| {
            Frame::SnapshotEnd(SnapshotEnd {
                stream_id,
                resource_version,
            })
        }),
        (stream_id(), 0u8..4, "[0-9]{0,12}", payload(600)).prop_map(
            |(stream_id, ev, resource_version, object)| Frame::WatchEvent(WatchEvent {
                stream_id,
                event: EventType::from_u8(ev).unwrap(),
                resource_version,
                object,
            })
        ),
        vec(resource_key(), 0..5)
            .prop_map(|resources| Frame::SyncRequest(SyncRequest { resources })),
        (stream_id(), any::<u32>()).prop_map(|(stream_id, seq)| Frame::ProgressRequest(
            ProgressRequest { stream_id, seq }
        )),
        (stream_id(), any::<u32>(), "[0-9]{0,12}").prop_map(
            |(stream_id, seq, resource_version)| Frame::Progress(Progress {
                stream_id,
                seq,
                resource_version,
            })
        ),
    ]
}
