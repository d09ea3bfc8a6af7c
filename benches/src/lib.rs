//! Micro-benchmarks for KubeHub (run with `cargo bench -p kubehub-benches`). The benchmarks
//! are in `benches/benches/`; this library holds the inputs they share.

use bytes::Bytes;
use kubehub_wire::{Data, Frame, Request, WatchEvent};

/// A DATA frame with a payload of `size` bytes.
pub fn data_frame(size: usize) -> Frame {
    Frame::Data(Data {
        stream_id: 2,
        end_stream: false,
        payload: Bytes::from(vec![0x5a; size]),
    })
}

/// A WATCH_EVENT carrying an object of `size` bytes.
pub fn watch_frame(size: usize) -> Frame {
    Frame::WatchEvent(WatchEvent {
        stream_id: 1,
        event: kubehub_wire::EventType::Modified,
        resource_version: "123456789".into(),
        object: Bytes::from(vec![b'{'; size]),
    })
}

/// A REQUEST head like the ones kubectl sends.
pub fn request_frame() -> Frame {
    let f = |n: &'static str, v: &'static str| {
        (
            Bytes::from_static(n.as_bytes()),
            Bytes::from_static(v.as_bytes()),
        )
    };
    Frame::Request(Request {
        stream_id: 2,
        end_stream: true,
        method: Bytes::from_static(b"GET"),
        path: Bytes::from_static(b"/api/v1/namespaces/default/pods?limit=500"),
        fields: vec![
            f(
                "Accept",
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
            f(
                "User-Agent",
                "kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd",
            ),
            f("Impersonate-User", "alice"),
            f("Kubectl-Command", "kubectl get"),
        ],
    })
}
