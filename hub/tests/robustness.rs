//! Bad input on either listener gets a clear answer or a closed connection, and everyone else
//! keeps being served: no token, unknown clusters, garbage and oversize frames, wrong or
//! mismatched certificates, and a client that stops reading.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use kubehub_testkit::agent::{self, ScriptedAgent};
use kubehub_testkit::stack as common;

use std::sync::Arc;
use std::time::Duration;

use kubehub_hub::config::Limits;
use kubehub_pki::{self as pki, Ca, CertPem};
use kubehub_sim::ClusterConfig;
use kubehub_wire::{ErrorCode, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn stack() -> common::Stack {
    common::start(ClusterConfig::default(), Limits::default())
}

fn hello(cluster: &str) -> Frame {
    agent::hello(cluster, "intruder")
}

/// Connects to the agent port with `cert`, sends `bytes`, and returns the first frame the hub
/// answers with (None: the connection closed without one).
fn agent_exchange(s: &common::Stack, ca: &Ca, cert: &CertPem, bytes: Vec<u8>) -> Option<Frame> {
    let addr = s.hub.agent_addr;
    let tls = agent::client_tls(&ca.cert_pem(), cert).unwrap();
    s.rt.block_on(async move {
        let mut a = ScriptedAgent::connect(addr, tls).await.ok()?;
        a.send(&bytes).await.ok()?;
        a.next_frame(Duration::from_secs(10)).await
    })
}

fn encode(f: &Frame) -> Vec<u8> {
    agent::encode(std::slice::from_ref(f))
}

fn goaway_code(f: Option<Frame>) -> Option<ErrorCode> {
    match f {
        Some(Frame::GoAway(g)) => Some(g.code),
        _ => None,
    }
}

#[test]
fn users_without_a_token_or_with_an_unknown_cluster() {
    let s = stack();
    let out = std::process::Command::new("curl")
        .args(["-sS", "-i", "--cacert"])
        .arg(s.path().join("ca.crt"))
        .arg(format!(
            "https://127.0.0.1:{}/clusters/edge-1/api/v1/pods",
            s.hub.user_addr.port()
        ))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("HTTP/1.1 401"), "{out}");
    assert!(out.contains(r#""reason":"Unauthorized""#), "{out}");
    let out = s.curl("/clusters/nowhere/api/v1/pods");
    assert!(
        out.starts_with("HTTP/1.1 404") && out.contains(r#"clusters \"nowhere\" not found"#),
        "{out}"
    );
    let out = s.curl("/metrics");
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(s.ok(&["get", "ns"]).contains("kube-system"));
}

#[test]
fn bad_agents_are_turned_away_and_the_hub_keeps_serving() {
    let s = stack();
    // Plain garbage on the TLS port.
    s.rt.block_on(async {
        let mut tcp = TcpStream::connect(s.hub.agent_addr).await.unwrap();
        let _ = tcp
            .write_all(b"GET / HTTP/1.1\r\n\r\n\x00\x01garbage")
            .await;
        let mut b = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(n == 0 || b[0] == 0x15, "closed or a TLS alert");
    });
    // A certificate from another CA: the TLS handshake fails.
    let other = Ca::generate("someone else").unwrap();
    let foreign = other.issue_agent(common::CLUSTER).unwrap();
    assert_eq!(
        agent_exchange(&s, &other, &foreign, encode(&hello(common::CLUSTER))),
        None
    );
    // Right CA, right name, but neither an agent's nor a hub's certificate (a user's: no
    // organization kubehub:agents or kubehub:hubs): refused before HELLO is read, no frame at
    // all (it would get a HELLO_ACK and take the cluster's tunnel over if it passed).
    let user =
        s.ca.issue_client(common::CLUSTER, &["kubehub:users"])
            .unwrap();
    let f = agent_exchange(&s, &s.ca, &user, encode(&hello(common::CLUSTER)));
    assert!(f.is_none(), "{f:?}");
    // A hub's certificate may open a peer link only (HELLO with PEER), never an agent's
    // tunnel; an agent's certificate may not open a peer link; and a peer link's HELLO must
    // name the hub its certificate is for.
    let hub =
        s.ca.issue_client(common::CLUSTER, &["kubehub:hubs"])
            .unwrap();
    let f = agent_exchange(&s, &s.ca, &hub, encode(&hello(common::CLUSTER)));
    assert_eq!(goaway_code(f), Some(ErrorCode::UNAUTHORIZED));
    let peer_hello = |id: &str| {
        let Frame::Hello(mut h) = hello(id) else {
            unreachable!()
        };
        h.capabilities = kubehub_wire::Capabilities::PEER;
        encode(&Frame::Hello(h))
    };
    let agent_cert = s.ca.issue_agent(common::CLUSTER).unwrap();
    let f = agent_exchange(&s, &s.ca, &agent_cert, peer_hello(common::CLUSTER));
    assert_eq!(goaway_code(f), Some(ErrorCode::UNAUTHORIZED));
    let hub_b = s.ca.issue_client("hub-b", &["kubehub:hubs"]).unwrap();
    let f = agent_exchange(&s, &s.ca, &hub_b, peer_hello("hub-c"));
    assert_eq!(goaway_code(f), Some(ErrorCode::UNAUTHORIZED));
    let f = agent_exchange(&s, &s.ca, &hub_b, peer_hello("hub-b"));
    assert!(
        matches!(f, Some(Frame::HelloAck(ref a)) if a.capabilities == kubehub_wire::Capabilities::PEER),
        "{f:?}"
    );
    // Right CA, wrong cluster: the certificate says edge-2, HELLO says edge-1.
    let edge2 = s.ca.issue_agent("edge-2").unwrap();
    let f = agent_exchange(&s, &s.ca, &edge2, encode(&hello(common::CLUSTER)));
    assert_eq!(goaway_code(f), Some(ErrorCode::UNAUTHORIZED));
    // A valid identity, then a frame of an unknown type instead of HELLO.
    let edge1 = s.ca.issue_agent(common::CLUSTER).unwrap();
    let garbage = vec![0, 0, 0, 4, 0x7f, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    let f = agent_exchange(&s, &s.ca, &edge1, garbage);
    assert_eq!(goaway_code(f), Some(ErrorCode::PROTOCOL));
    // A valid frame that is not HELLO.
    let ping = encode(&Frame::Ping(kubehub_wire::Ping {
        ack: false,
        opaque: 1,
    }));
    assert_eq!(
        goaway_code(agent_exchange(&s, &s.ca, &edge1, ping)),
        Some(ErrorCode::HANDSHAKE)
    );
    // An oversize frame: refused from its header.
    let mut oversize = encode(&hello(common::CLUSTER));
    oversize[..4].copy_from_slice(&(64 * 1024 * 1024u32).to_be_bytes());
    let f = agent_exchange(&s, &s.ca, &edge1, oversize);
    assert_eq!(goaway_code(f), Some(ErrorCode::FRAME_SIZE));
    // The real agent was never displaced, and users are served.
    s.wait_connected(true, Duration::from_secs(5));
    assert!(s.ok(&["get", "pods", "-A"]).contains("Running"));
    let metrics = s.rt.block_on(async {
        let mut tcp = TcpStream::connect(s.hub.admin_addr.unwrap()).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        out
    });
    assert!(
        metrics.contains("kubehub_hub_agents_connected 1"),
        "{metrics}"
    );
    let rejects: f64 = metrics
        .lines()
        .find(|l| l.starts_with("kubehub_hub_tunnel_rejects_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rejects >= 4.0, "{metrics}");
}

#[test]
fn the_admin_listener_reads_a_head_that_arrives_in_pieces() {
    let s = stack();
    let admin = s.hub.admin_addr.unwrap();
    let ask = |parts: Vec<&'static [u8]>| {
        s.rt.block_on(async move {
            let mut tcp = TcpStream::connect(admin).await.unwrap();
            for p in parts {
                tcp.write_all(p).await.unwrap();
                // Separate reads at the hub.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        })
    };
    // A request line split mid-path, then the fields in two more pieces.
    let out = ask(vec![b"GET /heal", b"thz HTTP/1.1\r\nHo", b"st: x\r\n\r\n"]);
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    assert!(out.ends_with("ok\n"), "{out}");
    // Garbage is a 400, not a 404 for an empty path.
    let out = ask(vec![b"\x01\x02 nonsense\r\n\r\n"]);
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    // An unknown path is still a 404.
    let out = ask(vec![b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"]);
    assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
}

#[test]
fn a_client_that_stops_reading_slows_only_itself() {
    // Enough config maps that listing them is several megabytes.
    let s = stack();
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    let blob = "x".repeat(60_000);
    for i in 0..100 {
        s.cluster
            .create(ty, Some("default"), serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("big-{i}")}, "data": {"blob": blob}}), false)
            .unwrap();
    }
    let port = s.hub.user_addr.port();
    let ca_pem = s.ca.cert_pem();
    // Three clients ask for the big list and never read their responses.
    let stalled: Vec<_> = (0..3)
        .map(|_| {
            let ca_pem = ca_pem.clone();
            s.rt.block_on(async move {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(pki::parse_certs(&ca_pem).unwrap());
                let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .unwrap()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                    .connect("localhost".try_into().unwrap(), tcp)
                    .await
                    .unwrap();
                let req = format!("GET /clusters/edge-1/api/v1/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", common::TOKEN);
                tls.write_all(req.as_bytes()).await.unwrap();
                tls
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Everyone else is served, request after request, while those streams are stuck.
    for _ in 0..10 {
        let out = s.curl("/clusters/edge-1/api/v1/namespaces/default/pods?limit=5");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    }
    assert!(s.ok(&["get", "pods", "-A"]).contains("Running"));
    // The same multi-megabyte list, read by a client that does read, arrives whole: credit
    // cycles through many windows.
    let out = s.curl("/clusters/edge-1/api/v1/namespaces/default/configmaps");
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("");
    let list: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        101,
        "100 big config maps + kube-root-ca.crt"
    );
    assert!(body.len() > 6_000_000, "{} bytes", body.len());
    drop(stalled);
}

#[test]
fn agent_admin_endpoints() {
    let mut s = stack();
    let get = |s: &common::Stack, addr: std::net::SocketAddr, path: &str| {
        s.rt.block_on(async move {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            tcp.read_to_string(&mut out).await.unwrap();
            out
        })
    };
    let addr = {
        let agent = s.agent.as_ref().unwrap();
        s.rt.block_on(agent.serve_admin("127.0.0.1:0".parse().unwrap()))
            .unwrap()
    };
    assert!(get(&s, addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(&s, addr, "/readyz").starts_with("HTTP/1.1 200"));
    s.ok(&["get", "ns"]);
    let m = get(&s, addr, "/metrics");
    assert!(m.contains("kubehub_agent_tunnels_connected 1"), "{m}");
    // With the hub's agent port unreachable, the agent is alive but not ready.
    let mut cfg = s.agent_cfg.clone();
    cfg.hubs = vec!["127.0.0.1:1".into()];
    s.stop_agent();
    let lonely = {
        let _g = s.rt.enter();
        kubehub_agent::Agent::start(cfg).unwrap()
    };
    let addr =
        s.rt.block_on(lonely.serve_admin("127.0.0.1:0".parse().unwrap()))
            .unwrap();
    assert!(get(&s, addr, "/healthz").starts_with("HTTP/1.1 200"));
    assert!(get(&s, addr, "/readyz").starts_with("HTTP/1.1 503"));
    s.rt.block_on(lonely.stop());
}

#[test]
fn a_silent_agent_is_pinged_then_dropped() {
    let limits = Limits {
        keepalive_ms: 200,
        ..Limits::default()
    };
    let s = common::start(ClusterConfig::default(), limits);
    // Another identity for the silent agent, so the real one stays connected.
    let cert = s.ca.issue_agent("edge-silent").unwrap();
    let addr = s.hub.agent_addr;
    let tls = agent::client_tls(&s.ca.cert_pem(), &cert).unwrap();
    let seen = s.rt.block_on(async move {
        let mut a = ScriptedAgent::connect(addr, tls).await.unwrap();
        a.send(&encode(&hello("edge-silent"))).await.unwrap();
        let mut seen = Vec::new();
        while let Some(f) = a.next_frame(Duration::from_secs(10)).await {
            seen.push(f);
        }
        seen
    });
    assert!(matches!(seen.first(), Some(Frame::HelloAck(_))), "{seen:?}");
    assert!(
        seen.iter().any(|f| matches!(f, Frame::Ping(p) if !p.ack)),
        "pinged: {seen:?}"
    );
    assert!(
        matches!(seen.last(), Some(Frame::GoAway(g)) if g.message.contains("keepalive")),
        "dropped with a reason: {seen:?}"
    );
    // The real agent answers its pings and stays (or, on a loaded machine, is back at once).
    std::thread::sleep(Duration::from_millis(1000));
    s.wait_connected(true, Duration::from_secs(5));
    assert!(s.ok(&["get", "ns"]).contains("kube-system"));
}

#[test]
fn shutdown_drains_tunnels_and_refuses_new_agents() {
    let s = common::start(
        ClusterConfig::default(),
        Limits {
            drain_timeout_ms: 500,
            ..Limits::default()
        },
    );
    let mut w = s.k().spawn(&["get", "pods", "-A", "-w"]);
    let _ = kubehub_testkit::read_until(&mut w, Duration::from_secs(10), |o| o.contains("Running"));
    assert!(
        s.hub.shutdown(Duration::from_secs(10)),
        "tunnels closed within the grace period"
    );
    // The watch in flight ended cleanly; kubectl exits.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while w.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "watch still open after the drain"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // New requests get 503; the agent's reconnects are refused.
    let out = s.curl("/clusters/edge-1/api/v1/pods");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s.hub.registry.connected(), 0);
    let edge1 = s.ca.issue_agent(common::CLUSTER).unwrap();
    let f = agent_exchange(&s, &s.ca, &edge1, encode(&hello(common::CLUSTER)));
    assert!(
        matches!(f, Some(Frame::GoAway(ref g)) if g.message.contains("draining")),
        "{f:?}"
    );
}

#[test]
fn a_trickling_request_head_gets_408_and_the_connection_closes() {
    let limits = Limits {
        request_head_timeout_ms: 400,
        ..Limits::default()
    };
    let s = common::start(ClusterConfig::default(), limits);
    let (answer, elapsed, idle_then_served) = s.rt.block_on(async {
        // A head that never completes: one byte of a header every 100 ms.
        let mut tls = s.user_connection().await;
        let started = std::time::Instant::now();
        tls.write_all(b"GET /clusters/edge-1/api/v1/namespaces HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        let mut buf = [0u8; 4096];
        loop {
            tokio::select! {
                r = tls.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    byte[0] = b'X';
                    if tls.write_all(&byte).await.is_err() {
                        break;
                    }
                }
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never closed");
        }
        let elapsed = started.elapsed();
        // A connection that is merely idle between requests is governed by the idle timeout,
        // not the head timeout: after waiting longer than the head timeout it is still served.
        let mut idle = s.user_connection().await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let req = format!(
            "GET /clusters/edge-1/api/v1/namespaces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            common::TOKEN
        );
        idle.write_all(req.as_bytes()).await.unwrap();
        let n = idle.read(&mut buf).await.unwrap();
        let served = String::from_utf8_lossy(&buf[..n]).into_owned();
        (String::from_utf8_lossy(&out).into_owned(), elapsed, served)
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"kind\":\"Status\""),
        "a Status body: {answer}"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed after the head timeout, not the idle timeout: {elapsed:?}"
    );
    assert!(
        idle_then_served.starts_with("HTTP/1.1 200"),
        "{idle_then_served}"
    );
}

/// Sends `req` on a fresh user connection and returns the whole answer (the request asks the
/// hub to close afterwards).
fn raw_exchange(s: &common::Stack, req: Vec<u8>) -> String {
    s.rt.block_on(async {
        let mut tls = s.user_connection().await;
        tls.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    })
}

#[test]
fn request_bodies_larger_than_many_windows_arrive_whole() {
    // 1.2 MB of body is about five stream windows (256 KiB): the upload only completes if the
    // agent's credit for consumed body bytes always reaches the hub.
    let s = stack();
    let blob = "y".repeat(1_200_000);
    let path = "/clusters/edge-1/api/v1/namespaces/default/configmaps";
    let body = |name: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"blob": blob}})
            .to_string()
    };
    // Content-Length framing.
    let b = body("upload-length");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        common::TOKEN,
        b.len()
    )
    .into_bytes();
    req.extend_from_slice(b.as_bytes());
    let out = raw_exchange(&s, req);
    assert!(
        out.starts_with("HTTP/1.1 201"),
        "{}",
        &out[..out.len().min(300)]
    );
    // Chunked framing, in odd-sized chunks.
    let b = body("upload-chunked");
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        common::TOKEN
    )
    .into_bytes();
    for piece in b.as_bytes().chunks(7_001) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let out = raw_exchange(&s, req);
    assert!(
        out.starts_with("HTTP/1.1 201"),
        "{}",
        &out[..out.len().min(300)]
    );
    // Both arrived byte for byte.
    for name in ["upload-length", "upload-chunked"] {
        let cm = s.ok(&["get", "configmap", "-n", "default", name, "-o", "json"]);
        let v: serde_json::Value = serde_json::from_str(&cm).unwrap();
        assert_eq!(
            v["data"]["blob"].as_str().map(str::len),
            Some(1_200_000),
            "{name}"
        );
    }
}

#[test]
fn a_request_body_that_stops_arriving_gets_408_and_frees_the_stream() {
    let limits = Limits {
        idle_timeout_ms: 500,
        ..Limits::default()
    };
    let s = common::start(ClusterConfig::default(), limits);
    let answer = s.rt.block_on(async {
        let mut tls = s.user_connection().await;
        let req = format!(
            "POST /clusters/edge-1/api/v1/namespaces/default/configmaps HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"apiVersion\":",
            common::TOKEN
        );
        tls.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    });
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The stream at the agent was cancelled, not left open.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = s.curl_admin("/metrics");
        if m.contains("kubehub_hub_streams_open 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A scripted agent for `edge-silent` that says HELLO with CACHE_SYNC, reports the pods type,
/// receives the hub's SYNC_REQUEST, and sends one snapshot of `items` at `rv` on stream 1.
fn scripted_sync(s: &common::Stack, items: Vec<bytes::Bytes>, rv: &str) -> ScriptedAgent {
    use kubehub_wire::{
        Capabilities, Discovery, Hello, ResourceKey, Settings, SnapshotBegin, SnapshotEnd,
        SnapshotItems,
    };
    let cert = s.ca.issue_agent("edge-silent").unwrap();
    let tls = agent::client_tls(&s.ca.cert_pem(), &cert).unwrap();
    let addr = s.hub.agent_addr;
    let pods = kubehub_kapi::resources::builtin()
        .iter()
        .find(|t| t.group.is_empty() && t.resource == "pods")
        .unwrap()
        .clone();
    let key = ResourceKey {
        group: String::new(),
        version: "v1".into(),
        resource: "pods".into(),
    };
    s.rt.block_on(async {
        let mut a = ScriptedAgent::connect(addr, tls).await.unwrap();
        a.send_frames(&[Frame::Hello(Hello {
            min_version: 1,
            max_version: 1,
            capabilities: Capabilities::CACHE_SYNC,
            settings: Settings::default(),
            agent_id: "scripted".into(),
            cluster_id: "edge-silent".into(),
            software: "test".into(),
            labels: Vec::new(),
        })])
        .await
        .unwrap();
        assert!(matches!(
            a.next_frame(Duration::from_secs(10)).await,
            Some(Frame::HelloAck(_))
        ));
        a.send_frames(&[Frame::Discovery(Discovery {
            resources: vec![pods],
        })])
        .await
        .unwrap();
        // The hub asks for the type it caches.
        match a.next_frame(Duration::from_secs(10)).await {
            Some(Frame::SyncRequest(r)) => assert_eq!(r.resources, vec![key.clone()]),
            other => panic!("expected SYNC_REQUEST, got {other:?}"),
        }
        a.send_frames(&[
            Frame::SnapshotBegin(SnapshotBegin {
                stream_id: 1,
                resource: key.clone(),
            }),
            Frame::SnapshotItems(SnapshotItems {
                stream_id: 1,
                items,
            }),
            Frame::SnapshotEnd(SnapshotEnd {
                stream_id: 1,
                resource_version: rv.into(),
            }),
        ])
        .await
        .unwrap();
        a
    })
}

fn pod(name: &str, rv: u64) -> bytes::Bytes {
    bytes::Bytes::from(format!(
        r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"default","resourceVersion":"{rv}"}}}}"#
    ))
}

/// An agent whose sync stream carries content the cache cannot take (here an object whose
/// resourceVersion is not an integer): the hub resets that stream with PROTOCOL_ERROR, keeps
/// the tunnel, serves nothing of the type from the cache, and forwards its reads.
#[test]
fn a_sync_stream_with_bad_content_is_refused_and_reads_are_forwarded() {
    let s = stack();
    let bad = bytes::Bytes::from_static(
        br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p","namespace":"default","resourceVersion":"not-a-number"}}"#,
    );
    let mut a = scripted_sync(&s, vec![bad], "5");
    s.rt.block_on(async {
        loop {
            match a.next_frame(Duration::from_secs(10)).await {
                Some(Frame::Reset(r)) => {
                    assert_eq!((r.stream_id, r.code), (1, ErrorCode::PROTOCOL));
                    break;
                }
                Some(Frame::WindowUpdate(_)) | Some(Frame::Ping(_)) => {}
                other => panic!("expected RESET of the sync stream, got {other:?}"),
            }
        }
    });
    // A read of the type goes through the tunnel: the scripted agent receives it.
    let hub_port = s.hub.user_addr.port();
    let ca = s.path().join("ca.crt");
    let reader = std::thread::spawn(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "3", "--cacert"])
            .arg(ca)
            .args(["-H", &format!("Authorization: Bearer {}", common::TOKEN)])
            .arg(format!(
                "https://127.0.0.1:{hub_port}/clusters/edge-silent/api/v1/pods?resourceVersion=0"
            ))
            .output()
            .unwrap()
    });
    let forwarded = s.rt.block_on(async {
        loop {
            match a.next_frame(Duration::from_secs(10)).await {
                Some(Frame::Request(r)) => return r.path,
                Some(_) => {}
                None => panic!("the read never reached the agent"),
            }
        }
    });
    assert!(forwarded.starts_with(b"/api/v1/pods"), "{forwarded:?}");
    let _ = reader.join();
}

/// The agent reconnects before the hub has noticed its old connection is gone: when the old
/// tunnel finally ends, the caches the new one feeds stay synced and keep answering.
#[test]
fn a_replaced_tunnel_leaving_does_not_unsync_its_successor() {
    let s = stack();
    let old = scripted_sync(&s, vec![pod("old", 3)], "3");
    let new = scripted_sync(&s, vec![pod("new", 7)], "7");
    let key = kubehub_wire::ResourceKey {
        group: String::new(),
        version: "v1".into(),
        resource: "pods".into(),
    };
    let slot = || {
        s.hub
            .caches
            .cluster("edge-silent")
            .and_then(|c| c.slot(&key))
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !(slot().is_synced() && slot().cache.snapshot().rv() == 7) {
        assert!(
            std::time::Instant::now() < deadline,
            "the new snapshot was not applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The old connection goes away (its sync stream ends with it).
    drop(old);
    std::thread::sleep(Duration::from_millis(500));
    assert!(slot().is_synced(), "the successor's caches were unsynced");
    let r = s.hub_get_cluster("edge-silent", "/api/v1/pods?resourceVersion=0");
    assert_eq!(r.header("x-kubehub-cache"), Some("hit"));
    let names: Vec<String> = r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["new"]);
    drop(new);
}

/// A client that keeps sending while a watch streams to it (bytes nobody reads until the
/// response ends) is cut off once it has sent twice the head limit, instead of growing the
/// hub's buffer for as long as the watch lasts.
#[test]
fn a_client_that_floods_during_a_watch_is_cut_off() {
    let s = stack();
    s.wait_synced("", "configmaps", Duration::from_secs(20));
    let closed = s.rt.block_on(async {
        let mut c = s.user_connection().await;
        let req = format!(
            "GET /clusters/{}/api/v1/configmaps?watch=1 HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {}\r\n\r\n",
            common::CLUSTER,
            common::TOKEN
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let junk = vec![b'x'; 16 * 1024];
        // Up to 4 MiB: the hub must give up long before.
        for _ in 0..256 {
            if c.write_all(&junk).await.is_err() {
                return true;
            }
        }
        // Whatever was written, the hub closes: reads end.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    });
    assert!(closed, "the flooding client is still connected");
}
