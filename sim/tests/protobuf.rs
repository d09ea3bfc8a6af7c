//! The real kubectl's protobuf requests: `kubectl create configmap|secret|namespace|deployment|
//! service …` send `application/vnd.kubernetes.protobuf`, and what they create reads back as
//! what the same object sent as JSON (`--dry-run=client -o json | kubectl create -f -`) gives.
//! A client that accepts only protobuf gets the kube envelope back.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::start;
use kubehub_sim::protobuf::{self, MEDIA_TYPE};
use kubehub_sim::{ClusterConfig, SeedSpec};
use serde_json::Value;

async fn sim() -> common::Sim {
    start(ClusterConfig::default(), SeedSpec::default(), false, None).await
}

/// What may differ between two creations of the same object.
fn normalized(mut v: Value) -> Value {
    let m = v["metadata"].as_object_mut().unwrap();
    for k in [
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "managedFields",
    ] {
        m.remove(k);
    }
    if v["kind"] == "Namespace" {
        let m = v["metadata"].as_object_mut().unwrap();
        m.remove("name");
        if let Some(l) = m.get_mut("labels").and_then(Value::as_object_mut) {
            l.remove("kubernetes.io/metadata.name");
        }
    }
    if v["kind"] == "Service" {
        let spec = v["spec"].as_object_mut().unwrap();
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    if v["kind"] == "Deployment" {
        // Filled in by the simulated controllers, on their own time.
        v.as_object_mut().unwrap().remove("status");
    }
    v
}

/// A plain HTTP/1.1 GET: status line, headers, body.
fn http_get(url: &str, path: &str, accept: &str) -> (String, String, Vec<u8>) {
    let addr = url.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(buf[..end].to_vec()).unwrap();
    let (status, headers) = head.split_once("\r\n").unwrap();
    (
        status.to_owned(),
        headers.to_owned(),
        buf[end + 4..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf_and_reads_back_as_json_would() {
    let s = sim().await;
    // The JSON side: the same objects as kubectl would send them, through `create -f`
    // (which sends JSON).
    let json_create = |args: &[&str], file: &str| {
        let mut a = args.to_vec();
        a.extend(["--dry-run=client", "-o", "json"]);
        let path = s.path().join(file);
        std::fs::write(&path, s.ok(&a)).unwrap();
        s.ok(&["create", "-f", path.to_str().unwrap()]);
    };
    json_create(&["create", "namespace", "json-side"], "ns.json");
    // The protobuf side, with the request headers shown.
    let pb_create = |args: &[&str]| {
        let mut a = args.to_vec();
        a.push("-v=8");
        let out = s.kubectl(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl {args:?}: {err}");
        assert!(
            err.contains(&format!("Content-Type: {MEDIA_TYPE}")),
            "kubectl {args:?} did not send protobuf: {err}"
        );
    };
    pb_create(&["create", "namespace", "pb-side"]);

    let cases: [(&[&str], &str, &str); 4] = [
        (
            &["create", "configmap", "c1", "--from-literal=a=b"],
            "configmap",
            "c1",
        ),
        (
            &["create", "secret", "generic", "s1", "--from-literal=a=b"],
            "secret",
            "s1",
        ),
        (
            &["create", "deployment", "d1", "--image=nginx"],
            "deployment",
            "d1",
        ),
        (
            &["create", "service", "clusterip", "s1", "--tcp=80:8080"],
            "service",
            "s1",
        ),
    ];
    for (i, (args, kind, name)) in cases.iter().enumerate() {
        let mut pb = args.to_vec();
        pb.extend(["-n", "pb-side"]);
        pb_create(&pb);
        let mut js = args.to_vec();
        js.extend(["-n", "json-side"]);
        json_create(&js, &format!("{i}.json"));
        let get = |ns: &str| -> Value {
            serde_json::from_str(&s.ok(&["get", kind, name, "-n", ns, "-o", "json"])).unwrap()
        };
        let (from_pb, from_json) = (get("pb-side"), get("json-side"));
        assert_eq!(
            normalized(from_pb.clone()),
            normalized(from_json.clone()),
            "{kind}/{name}\nprotobuf: {from_pb:#}\njson: {from_json:#}"
        );
    }
    // The values themselves, as kubectl shows them.
    let cm: Value =
        serde_json::from_str(&s.ok(&["get", "cm", "c1", "-n", "pb-side", "-o", "json"])).unwrap();
    assert_eq!(cm["data"]["a"], "b");
    let secret: Value =
        serde_json::from_str(&s.ok(&["get", "secret", "s1", "-n", "pb-side", "-o", "json"]))
            .unwrap();
    assert_eq!(secret["data"]["a"], "Yg==", "{secret:#}");
    assert_eq!(secret["type"], "Opaque");
    let svc: Value =
        serde_json::from_str(&s.ok(&["get", "svc", "s1", "-n", "pb-side", "-o", "json"])).unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    let ns: Value = serde_json::from_str(&s.ok(&["get", "ns", "pb-side", "-o", "json"])).unwrap();
    assert_eq!(ns["metadata"]["name"], "pb-side");
    let d: Value =
        serde_json::from_str(&s.ok(&["get", "deploy", "d1", "-n", "pb-side", "-o", "json"]))
            .unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx"
    );

    // A client that accepts protobuf only gets the envelope, which reads as the JSON object.
    for path in [
        "/api/v1/namespaces/pb-side/configmaps/c1",
        "/api/v1/namespaces/pb-side/secrets/s1",
        "/api/v1/namespaces/pb-side",
        "/apis/apps/v1/namespaces/pb-side/deployments/d1",
        "/api/v1/namespaces/pb-side/services/s1",
        "/api/v1/namespaces/pb-side/configmaps",
    ] {
        let (status, headers, body) = http_get(&s.url, path, MEDIA_TYPE);
        assert!(status.contains(" 200 "), "{path}: {status}");
        assert!(
            headers
                .to_ascii_lowercase()
                .contains(&format!("content-type: {MEDIA_TYPE}")),
            "{path}: {headers}"
        );
        assert_eq!(&body[..4], b"k8s\0", "{path}");
        let decoded = protobuf::decode(&body).unwrap();
        let (_, _, json) = http_get(&s.url, path, "application/json");
        let json: Value = serde_json::from_slice(&json).unwrap();
        if path.ends_with("/configmaps") {
            assert_eq!(decoded["kind"], "ConfigMapList");
            assert_eq!(
                decoded["items"].as_array().unwrap().len(),
                json["items"].as_array().unwrap().len()
            );
            assert_eq!(
                decoded["metadata"]["resourceVersion"],
                json["metadata"]["resourceVersion"]
            );
        } else {
            assert_eq!(decoded, json, "{path}");
        }
    }
    // kubectl's own `protobuf, */*` stays JSON; protobuf for a kind without a message is 406.
    let (_, headers, _) = http_get(
        &s.url,
        "/api/v1/namespaces/pb-side/configmaps/c1",
        "application/vnd.kubernetes.protobuf, */*",
    );
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{headers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_protobuf_body_is_a_clean_error() {
    let s = sim().await;
    let post = |body: &[u8]| -> (String, String) {
        let addr = s.url.trim_start_matches("http://");
        let mut c = TcpStream::connect(addr).unwrap();
        write!(
            c,
            "POST /api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: {MEDIA_TYPE}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        c.write_all(body).unwrap();
        let mut buf = String::new();
        c.read_to_string(&mut buf).unwrap();
        let (head, body) = buf.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    };
    let (status, body) = post(b"not protobuf");
    assert!(status.contains(" 400 "), "{status} {body}");
    assert!(body.contains("protobuf"), "{body}");
    let (status, body) = post(b"k8s\0\x0a\x03\xff");
    assert!(status.contains(" 400 "), "{status} {body}");
    // The server goes on serving.
    assert!(!s.ok(&["get", "ns"]).is_empty());
}
