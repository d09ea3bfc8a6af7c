//! The load harness's peers (`kubehub_perf::peers`) really run: nginx serving files, nginx
//! proxying to a plain-HTTP upstream, and nginx + rathole (TLS tunnel) in front of the same
//! upstream, each fetched over HTTPS by a client that trusts only the test CA; dropping a peer
//! ends all its processes.
//!
//! Needs nginx and rathole 0.5.0: run `perf/peers/install.sh` (these tests fail, and say so,
//! when they are missing; they do not skip).
// The helpers below are test code too (clippy's allow-unwrap-in-tests covers only #[test]s).
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kubehub_perf::peers::{self, Peer, Tls};

const UPSTREAM_BODY: &str = "{\"kind\":\"Status\",\"message\":\"from the upstream\"}";

/// A tiny plain-HTTP/1.1 upstream on loopback: every request gets `200` and
/// [`UPSTREAM_BODY`], connections kept alive. Runs until the test process ends.
fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(conn) = conn else { continue };
            std::thread::spawn(move || serve_conn(conn));
        }
    });
    addr
}

fn serve_conn(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let resp = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        UPSTREAM_BODY.len(),
        UPSTREAM_BODY
    );
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete request head (GETs: no bodies) in the buffer.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let close = String::from_utf8_lossy(&buf[..end])
                .to_ascii_lowercase()
                .contains("connection: close");
            buf.drain(..end + 4);
            if conn.write_all(resp.as_bytes()).is_err() || close {
                return;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A fresh working directory for one peer.
fn workdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kubehub-perf-peers-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tls() -> Tls {
    let ca = kubehub_pki::Ca::generate("kubehub-perf peers test CA").unwrap();
    Tls::from_ca(&ca).unwrap()
}

/// GETs `path` from `peer` `n` times over one client (keep-alive); each (status, content type,
/// body).
async fn fetch(peer: &Peer, tls: &Tls, path: &str, n: usize) -> Vec<(u16, String, String)> {
    let client = kubehub_perf::https_client::<Empty<Bytes>>(tls.roots().unwrap(), 4).unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let uri: http::Uri = format!("{}{path}", peer.url).parse().unwrap();
        let resp = client
            .get(uri)
            .await
            .unwrap_or_else(|e| panic!("GET {}{path}: {e:?}; logs: {:?}", peer.url, peer.logs));
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        out.push((status, ct, String::from_utf8(body.to_vec()).unwrap()));
    }
    out
}

/// Drops `peer` and checks that every one of its processes is gone from /proc.
fn drop_and_check_gone(peer: Peer) {
    let pids = peer.pids.clone();
    let dir = peer.dir.clone();
    for (label, pid) in &pids {
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{label} {pid} not running before the drop"
        );
    }
    drop(peer);
    for (label, pid) in &pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{label} {pid} still in /proc after the peer was dropped"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn count(peer: &Peer, label: &str) -> usize {
    peer.pids.iter().filter(|(l, _)| *l == label).count()
}

#[tokio::test]
async fn nginx_static_serves_the_given_files() {
    let tls = tls();
    let cm = br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"x"}}"#;
    let files: &[(&str, &[u8], &str)] = &[
        (
            "/api/v1",
            b"{\"kind\":\"APIResourceList\"}",
            "application/json",
        ),
        (
            "/api/v1/namespaces/default/configmaps/x",
            cm,
            "application/json; charset=utf-8",
        ),
        ("/version", b"v1.32", "text/plain"),
    ];
    let peer = peers::nginx_static(&workdir("static"), &tls, files, 2).unwrap();
    assert!(peer.url.starts_with("https://127.0.0.1:") && !peer.url.ends_with('/'));
    assert_eq!(
        count(&peer, "nginx"),
        3,
        "master + 2 workers: {:?}",
        peer.pids
    );

    for (path, body, ct) in files {
        let got = fetch(&peer, &tls, path, 3).await;
        for (status, got_ct, got_body) in got {
            assert_eq!(status, 200, "{path}");
            assert_eq!(got_ct, *ct, "{path}");
            assert_eq!(got_body.as_bytes(), *body, "{path}");
        }
    }
    let missing = fetch(&peer, &tls, "/api/v1/namespaces/default/configmaps/y", 1).await;
    assert_eq!(missing[0].0, 404);
    drop_and_check_gone(peer);

    // nginx refusing its configuration: an error naming the log, with what nginx said.
    let dir = workdir("static-bad");
    let twice: &[(&str, &[u8], &str)] = &[("/a", b"1", "text/plain"), ("/a", b"2", "text/plain")];
    let err = peers::nginx_static(&dir, &tls, twice, 1).unwrap_err();
    assert!(
        err.contains("nginx-error.log") && err.contains("duplicate location"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn nginx_proxy_and_rathole_stack_reach_the_upstream() {
    let tls = tls();
    let up = upstream();

    let proxy = peers::nginx_proxy(&workdir("proxy"), &tls, up, 1).unwrap();
    assert_eq!(
        count(&proxy, "nginx"),
        2,
        "master + 1 worker: {:?}",
        proxy.pids
    );
    for (status, ct, body) in fetch(&proxy, &tls, "/api/v1/namespaces/default/pods", 20).await {
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (200, "application/json", UPSTREAM_BODY)
        );
    }
    drop_and_check_gone(proxy);

    let stack = peers::rathole_stack(&workdir("rathole"), &tls, up, 2).unwrap();
    assert_eq!(
        count(&stack, "nginx"),
        3,
        "master + 2 workers: {:?}",
        stack.pids
    );
    assert_eq!(count(&stack, "rathole-server"), 1, "{:?}", stack.pids);
    assert_eq!(count(&stack, "rathole-client"), 1, "{:?}", stack.pids);
    for (status, ct, body) in fetch(&stack, &tls, "/api/v1/namespaces/default/pods", 20).await {
        assert_eq!(
            (status, ct.as_str(), body.as_str()),
            (200, "application/json", UPSTREAM_BODY)
        );
    }
    drop_and_check_gone(stack);
}
