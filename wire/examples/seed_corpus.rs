//! Writes the fuzzing seed corpus: one file per frame type plus a multi-frame conversation.
//!
//! `cargo run -p kubehub-wire --example seed_corpus -- wire/fuzz/corpus/decode`

use bytes::{Bytes, BytesMut};
use kubehub_wire::*;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "wire/fuzz/corpus/decode".into());
    std::fs::create_dir_all(&dir)?;
    let b = Bytes::from_static;
    let frames = vec![
        Frame::Hello(Hello {
            min_version: 1,
            max_version: 1,
            capabilities: Capabilities(3),
            settings: Settings::default(),
            agent_id: "agent-1".into(),
            cluster_id: "edge-1".into(),
            software: "kubehub 0.1.0".into(),
            labels: vec![
                ("region".into(), "eu-west".into()),
                ("tier".into(), "".into()),
            ],
        }),
        Frame::HelloAck(HelloAck {
            version: 1,
            capabilities: Capabilities(3),
            settings: Settings::default(),
            keepalive_ms: 15_000,
            hub_id: "hub-0".into(),
        }),
        Frame::Request(Request {
            stream_id: 2,
            end_stream: true,
            method: b(b"GET"),
            path: b(b"/api/v1/namespaces/default/pods?watch=true&resourceVersion=10"),
            fields: vec![(b(b"Accept"), b(b"application/json"))],
        }),
        Frame::Response(Response {
            stream_id: 2,
            end_stream: false,
            status: 200,
            fields: vec![(b(b"Content-Type"), b(b"application/json"))],
        }),
        Frame::Data(Data {
            stream_id: 2,
            end_stream: false,
            payload: b(br#"{"type":"ADDED","object":{"kind":"Pod"}}"#),
        }),
        Frame::End(End {
            stream_id: 2,
            trailers: vec![],
        }),
        Frame::Reset(Reset {
            stream_id: 2,
            code: ErrorCode::CANCEL,
        }),
        Frame::WindowUpdate(WindowUpdate {
            stream_id: 0,
            increment: 65_536,
        }),
        Frame::Ping(Ping {
            ack: false,
            opaque: 42,
        }),
        Frame::GoAway(GoAway {
            last_stream_id: 0,
            code: ErrorCode::NO_ERROR,
            message: "draining".into(),
        }),
        Frame::Discovery(Discovery {
            resources: vec![ResourceType {
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
                kind: "Pod".into(),
                singular: "pod".into(),
                namespaced: true,
                cached: true,
                verbs: Verbs(0xff),
                short_names: vec!["po".into()],
                categories: vec!["all".into()],
            }],
        }),
        Frame::SnapshotBegin(SnapshotBegin {
            stream_id: 1,
            resource: ResourceKey {
                group: String::new(),
                version: "v1".into(),
                resource: "pods".into(),
            },
        }),
        Frame::SnapshotItems(SnapshotItems {
            stream_id: 1,
            items: vec![b(br#"{"kind":"Pod"}"#), b(b"{}")],
        }),
        Frame::SnapshotEnd(SnapshotEnd {
            stream_id: 1,
            resource_version: "10".into(),
        }),
        Frame::WatchEvent(WatchEvent {
            stream_id: 1,
            event: EventType::Modified,
            resource_version: "11".into(),
            object: b(br#"{"kind":"Pod"}"#),
        }),
        Frame::SyncRequest(SyncRequest {
            resources: vec![
                ResourceKey {
                    group: String::new(),
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
        Frame::ProgressRequest(ProgressRequest {
            stream_id: 1,
            seq: 1,
        }),
        Frame::Progress(Progress {
            stream_id: 1,
            seq: 1,
            resource_version: "11".into(),
        }),
    ];
    let mut all = BytesMut::new();
    for f in &frames {
        let mut one = BytesMut::new();
        encode(f, &mut one);
        all.extend_from_slice(&one);
        let name = format!("{dir}/{:02x}-{:?}", f.frame_type() as u8, f.frame_type());
        std::fs::write(name, &one)?;
    }
    // The frames in order, as one conversation: handshake, a request, a sync stream.
    std::fs::write(format!("{dir}/conversation"), &all)?;
    Ok(())
}
