//! The hub's per-request work before anything leaves it, on realistic requests:
//!
//! * `http_head/parse_head/*`: `kubehub_hub::http::parse_head`, the user listener's HTTP/1.1
//!   head parser (httparse, then framing, Host and Connection checks; the fields become `Bytes`
//!   slices of the read buffer). Cases: kubectl 1.32's GET of a pod (its headers as it sends
//!   them), a client-go LIST with a query string, a client-go watch, and kubectl's POST with a
//!   Content-Length body. The read buffer is filled outside the timed part (as in
//!   `wire/decode/request_head`) and is in the state a connection's buffer is in after its first
//!   request (shared, so taking the head off does not allocate the buffer's shared header);
//!   dropping the parsed head is timed, as it is part of every request.
//! * `request_info/*`: `kubehub_kapi::request_info` (kube-apiserver's RequestInfo) on decoded
//!   paths: namespaced get, cluster-wide list, watch, `pods/log`, a CRD group, `scale`, the
//!   deprecated `/api/v1/watch/…` form and the non-resource `/version`.
//! * `resolve/split_cluster_path/*`: `/clusters/{id}/…` → cluster and path (borrowing);
//!   `resolve/resolve_info/*`: the hub's whole resolve phase on a parsed head
//!   (`proxy::resolve::resolve`: cluster, owned path, percent-decoding; then `Target::info`).
//! * `observe/*`: the end of every request (`proxy::observe`): its record made from the head
//!   (audit id, client kind), the identity and target noted, the response head counted, then
//!   `finish` — the per-tenant, per-cluster, per-client and per-source counters, the bytes and
//!   the `/traffic` rings; `audit_metadata` also builds the audit event and queues it (to a
//!   writer thread that discards it).
//!
//! `cargo bench -p kubehub-benches --bench request -- --warm-up-time 1 --measurement-time 3`

use bytes::BytesMut;
use criterion::{
    black_box, criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput,
};
use kubehub_access::Identity;
use kubehub_hub::http::{parse_head, BodyKind, RequestHead};
use kubehub_hub::proxy::resolve::{resolve, split_cluster_path};
use kubehub_kapi::request_info::request_info;

/// The hub's default `limits.max_header_bytes`.
const MAX_HEAD: usize = 64 * 1024;
/// The cluster every request is for.
const CLUSTER: &str = "edge-0042";
/// A KubeHub token's shape: `khT.<12-character id>.<43-character secret>`.
const TOKEN: &str = "khT.k7p2m9x4q1ab.Zq3v8N0yR2mX5pL7tK1wB9cD4fH6jE0sU3aG8iO2nV5";
const HOST: &str = "kubehub.example.com";
const KUBECTL_UA: &str = "kubectl/v1.32.4 (linux/amd64) kubernetes/59526cd";
const KUBECTL_ACCEPT: &str = "application/json;as=Table;v=v1;g=meta.k8s.io,\
                              application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
const KUBECTL_SESSION: &str = "3f2b1c4e-8a6d-4f0e-9b7a-2c5d8e1f0a93";
const CLIENT_GO_UA: &str = "web-controller/v0.0.0 (linux/amd64) kubernetes/$Format";

/// The request heads, as the clients write them (Go's net/http order: Host, User-Agent,
/// Content-Length, the other fields sorted, then the transport's Accept-Encoding), with what
/// follows the head in the same read (a POST's body).
fn heads() -> Vec<(&'static str, Vec<u8>, BodyKind)> {
    let kubectl_get = format!(
        "GET /clusters/{CLUSTER}/api/v1/namespaces/default/pods/web-7d4b9c8f6d-x2x9k HTTP/1.1\r\n\
         Host: {HOST}\r\n\
         User-Agent: {KUBECTL_UA}\r\n\
         Accept: {KUBECTL_ACCEPT}\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Kubectl-Command: kubectl get\r\n\
         Kubectl-Session: {KUBECTL_SESSION}\r\n\
         Accept-Encoding: gzip\r\n\r\n"
    );
    let client_go = |target: &str| {
        format!(
            "GET /clusters/{CLUSTER}{target} HTTP/1.1\r\n\
             Host: {HOST}\r\n\
             User-Agent: {CLIENT_GO_UA}\r\n\
             Accept: application/json, */*\r\n\
             Authorization: Bearer {TOKEN}\r\n\
             Accept-Encoding: gzip\r\n\r\n"
        )
    };
    // A reflector's initial list, and its watch (client-go sorts the query's keys).
    let list = client_go(
        "/api/v1/namespaces/kube-system/pods?labelSelector=app%3Dweb%2Ctier%3Dfrontend\
         &limit=500&resourceVersion=0",
    );
    let watch = client_go(
        "/api/v1/namespaces/default/pods?allowWatchBookmarks=true&labelSelector=app%3Dweb\
         &resourceVersion=4711093&timeoutSeconds=412&watch=true",
    );
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"web-config","namespace":"default"},"data":{"LOG_LEVEL":"info","LISTEN":":8080"}}"#;
    let post = format!(
        "POST /clusters/{CLUSTER}/api/v1/namespaces/default/configmaps\
         ?fieldManager=kubectl-create&fieldValidation=Strict HTTP/1.1\r\n\
         Host: {HOST}\r\n\
         User-Agent: {KUBECTL_UA}\r\n\
         Content-Length: {}\r\n\
         Accept: application/json\r\n\
         Authorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n\
         Kubectl-Command: kubectl create\r\n\
         Kubectl-Session: {KUBECTL_SESSION}\r\n\
         Accept-Encoding: gzip\r\n\r\n{body}",
        body.len()
    );
    vec![
        ("kubectl_get_pod", kubectl_get.into_bytes(), BodyKind::None),
        ("client_go_list", list.into_bytes(), BodyKind::None),
        ("client_go_watch", watch.into_bytes(), BodyKind::None),
        (
            "kubectl_post",
            post.into_bytes(),
            BodyKind::Length(body.len() as u64),
        ),
    ]
}

/// A connection's read buffer holding `raw`, as it is after the connection's first request:
/// shared (`parse_head` slices the head off it without allocating the shared header).
fn conn_buffer(raw: &[u8]) -> BytesMut {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    buf.extend_from_slice(raw);
    drop(buf.split_off(buf.len()));
    buf
}

fn parsed(raw: &[u8]) -> RequestHead {
    parse_head(&mut conn_buffer(raw), MAX_HEAD)
        .expect("a valid head")
        .expect("a complete head")
}

fn identity() -> Identity {
    Identity {
        token_id: "k7p2m9x4q1ab".into(),
        user: "alice@example.com".into(),
        tenant: "acme".into(),
        groups: vec!["developers".into(), "kubehub:tenant:acme".into()],
        clusters: vec!["edge-0041".to_owned(), CLUSTER.to_owned()].into(),
        expires: 0,
    }
}

fn bench_parse_head(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_head");
    g.throughput(Throughput::Elements(1));
    for (case, raw, body) in heads() {
        let head = parsed(&raw);
        assert_eq!(head.body, body, "{case}");
        assert!(head.keep_alive, "{case}");
        g.bench_function(BenchmarkId::new("parse_head", case), |b| {
            b.iter_batched_ref(
                || conn_buffer(&raw),
                |buf| {
                    let head = parse_head(buf, MAX_HEAD)
                        .expect("a valid head")
                        .expect("a complete head");
                    black_box(&head);
                },
                BatchSize::SmallInput,
            );
        });
    }
    g.finish();
}

fn bench_request_info(c: &mut Criterion) {
    // (case, method, decoded path, query, the verb kube-apiserver reads)
    let cases = [
        (
            "get_namespaced",
            "GET",
            "/api/v1/namespaces/default/pods/web-7d4b9c8f6d-x2x9k",
            "",
            "get",
        ),
        (
            "list_cluster_wide",
            "GET",
            "/api/v1/pods",
            "labelSelector=app%3Dweb&limit=500&resourceVersion=0",
            "list",
        ),
        (
            "watch",
            "GET",
            "/api/v1/namespaces/default/pods",
            "allowWatchBookmarks=true&resourceVersion=4711093&timeoutSeconds=412&watch=true",
            "watch",
        ),
        (
            "pods_log",
            "GET",
            "/api/v1/namespaces/default/pods/web-7d4b9c8f6d-x2x9k/log",
            "container=app&follow=true&tailLines=100",
            "get",
        ),
        (
            "crd_group",
            "GET",
            "/apis/monitoring.coreos.com/v1/namespaces/monitoring/servicemonitors/kube-state-metrics",
            "",
            "get",
        ),
        (
            "deployment_scale",
            "PATCH",
            "/apis/apps/v1/namespaces/x/deployments/y/scale",
            "",
            "patch",
        ),
        (
            "deprecated_watch",
            "GET",
            "/api/v1/watch/namespaces/default/pods/web-7d4b9c8f6d-x2x9k",
            "",
            "watch",
        ),
        ("non_resource_version", "GET", "/version", "", "get"),
    ];
    let mut g = c.benchmark_group("request_info");
    g.throughput(Throughput::Elements(1));
    for (case, method, path, query, verb) in cases {
        let info = request_info(method, path, query).expect("a valid request");
        assert_eq!(info.verb.as_str(), verb, "{case}");
        g.bench_function(BenchmarkId::from_parameter(case), |b| {
            b.iter(|| request_info(black_box(method), black_box(path), black_box(query)));
        });
    }
    g.finish();
}

fn bench_resolve(c: &mut Criterion) {
    let id = identity();
    let mut g = c.benchmark_group("resolve");
    g.throughput(Throughput::Elements(1));
    for (case, raw, _) in heads() {
        let head = parsed(&raw);
        let target = std::str::from_utf8(&head.target).expect("an ASCII target");
        assert_eq!(
            split_cluster_path(target).map(|(c, _)| c),
            Some(CLUSTER),
            "{case}"
        );
        g.bench_function(BenchmarkId::new("split_cluster_path", case), |b| {
            b.iter(|| split_cluster_path(black_box(target)));
        });
    }
    for (case, raw, _) in heads() {
        let head = parsed(&raw);
        let t = resolve(&head, &id).expect("a resolvable head");
        assert_eq!(t.cluster, CLUSTER, "{case}");
        t.info().expect("a valid request");
        g.bench_function(BenchmarkId::new("resolve_info", case), |b| {
            b.iter(|| {
                let t = resolve(black_box(&head), &id).expect("a resolvable head");
                let info = t.info().expect("a valid request");
                black_box(&info);
            });
        });
    }
    g.finish();
}

fn bench_observe(c: &mut Criterion) {
    use kubehub_hub::metrics::Metrics;
    use kubehub_hub::proxy::observe::{Audit, Bounded, Bounds, Observer, Record, ServedBy};
    use std::sync::Arc;
    let observer = |audit: Option<Audit>| {
        Observer::new(
            Arc::new(Metrics::new()),
            (
                Arc::new(kubehub_hub::traffic::Traffic::new("hub-0", 10_000, 1)),
                0,
            ),
            audit,
            Arc::from("hub-0"),
            Arc::new(Bounds {
                resources: Bounded::new(200),
                clusters: Bounded::new(1000),
                sources: Bounded::new(100),
            }),
        )
    };
    let audit = || {
        let sink = kubehub_audit::Sink::with_writer(
            Box::new(std::io::sink()),
            100_000,
            Default::default(),
        )
        .expect("a sink");
        Some(Audit {
            sink,
            policy: Arc::new(kubehub_audit::Policy {
                read_level: kubehub_audit::Level::Metadata,
                ..Default::default()
            }),
            max_body: 65536,
        })
    };
    let (_, raw, _) = heads().swap_remove(0);
    let head = parsed(&raw);
    let id = Arc::new(identity());
    let target = resolve(&head, &id).expect("resolves");
    let source: std::net::IpAddr = "10.1.2.3".parse().expect("an address");
    let mut g = c.benchmark_group("observe");
    g.throughput(Throughput::Elements(1));
    for (case, obs) in [
        ("metrics_traffic", observer(None)),
        ("audit_metadata", observer(audit())),
    ] {
        g.bench_function(BenchmarkId::new("kubectl_get_pod", case), |b| {
            b.iter(|| {
                let rec = Record::new(&head, source, None);
                rec.identify(&obs, &id, &target, target.info().ok().as_ref());
                rec.served_by.set(ServedBy::Cache);
                rec.head_written(&obs, 200);
                rec.bytes_out.set(2048);
                rec.finish(&obs);
            });
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_parse_head,
    bench_request_info,
    bench_resolve,
    bench_observe
);
criterion_main!(benches);
