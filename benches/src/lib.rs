//! Micro-benchmarks for KubeHub (run with `cargo bench -p kubehub-benches`). The benchmarks
//! are in `benches/benches/`; this library holds the inputs they share.

use bytes::Bytes;
use kubehub_cache::{Filter, ListRequest, Object};
use kubehub_kapi::query::Version;
use kubehub_sim::{Cluster, ClusterConfig, SeedSpec};
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

/// `n` pods as the simulator serves them (2-6 KB of JSON each: owner references, several
/// containers with env, probes, resources and mounts, status conditions), seeded
/// deterministically: 100 per namespace, 10 per deployment.
pub fn pods(n: usize) -> Vec<Bytes> {
    let cluster = Cluster::new(
        "bench",
        ClusterConfig {
            history_window: 16,
            ..ClusterConfig::default()
        },
    );
    let spec = SeedSpec {
        namespaces: n.div_ceil(100),
        deployments_per_namespace: 10,
        pods_per_deployment: 10,
        configmaps_per_namespace: 0,
        secrets_per_namespace: 0,
        nodes: 4,
    };
    if let Err(e) = kubehub_sim::seed(&cluster, &spec) {
        panic!("seeding: {e}");
    }
    let Some(ty) = cluster.type_index("", "v1", "pods") else {
        panic!("no pods type");
    };
    let all = ListRequest {
        version: Version::MostRecent,
        limit: Some(n as u64),
        continue_token: None,
    };
    match cluster.list(ty, &Filter::default(), &all) {
        Ok(page) => page.items,
        Err(e) => panic!("listing pods: {e}"),
    }
}

/// `pods` parsed for the cache. Each JSON is copied into its own allocation first, as a
/// receiver of frames should do before caching (see [`Object`]).
pub fn pod_objects(pods: &[Bytes]) -> Vec<Object> {
    pods.iter()
        .map(
            |p| match Object::parse("", "pods", Bytes::copy_from_slice(p)) {
                Ok(o) => o,
                Err(e) => panic!("parsing a pod: {e}"),
            },
        )
        .collect()
}
