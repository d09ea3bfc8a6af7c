//! Upgraded connections through hub and agent, whatever the protocol: the request reaches the
//! edge with its query and upgrade fields, the 101 comes back as the edge sent it, bytes flow
//! both ways with half-close, a refusal passes through unchanged (kubectl's fallback needs
//! it), a large stream arrives whole while other requests are served, and the agent going
//! away ends the session instead of hanging it. The edge here is a hand-written HTTP/1.1
//! server that speaks a made-up `echo` protocol, so that what is tested is the carrying, not
//! a particular protocol (`kubectl_exec.rs` runs the real kubectl against the simulator).

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kubehub_hub::config::Limits;
use kubehub_sim::ClusterConfig;
use kubehub_testkit::stack::{self as common, Stack};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const EXEC: &str = "/clusters/edge-1/api/v1/namespaces/default/pods/web/exec\
                    ?command=sh&command=-c&command=echo%20hi&container=main&stdin=true&stdout=true";

/// The edge: answers every connection's first request by its path, and records the heads.
struct Edge {
    heads: Arc<Mutex<Vec<String>>>,
    url: String,
}

async fn edge() -> Edge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let h = heads.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_edge(sock, h.clone()));
        }
    });
    Edge { heads, url }
}

async fn serve_edge(mut sock: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if sock.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    heads.lock().unwrap().push(head.clone());
    let target = head.split(' ').nth(1).unwrap_or("").to_owned();
    let protocol = field(&head, "sec-websocket-protocol").unwrap_or_default();
    if target.contains("/refuse/") {
        let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"upgrade request required","reason":"BadRequest","code":400}"#;
        let answer = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let _ = sock.write_all(answer.as_bytes()).await;
        return;
    }
    let switch = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    sock.write_all(switch.as_bytes()).await.unwrap();
    if let Some(n) = target.split("bytes=").nth(1) {
        // A flood: n bytes of a known pattern, then the end.
        let n: usize = n.split('&').next().unwrap().parse().unwrap();
        let block: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
        let mut sent = 0;
        while sent < n {
            let k = (n - sent).min(block.len());
            if sock.write_all(&block[..k]).await.is_err() {
                return;
            }
            sent += k;
        }
        let _ = sock.shutdown().await;
        return;
    }
    // Echo until the client's side ends, then say goodbye and end ours.
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sock.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sock.write_all(b"bye").await;
    let _ = sock.shutdown().await;
}

fn field(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// The stack with its agent's edge replaced by `edge`.
fn stack_with_edge() -> (Stack, Edge) {
    let mut s = common::start(ClusterConfig::default(), Limits::default());
    let edge = s.rt.block_on(edge());
    s.stop_agent();
    s.wait_connected(false, Duration::from_secs(10));
    s.agent_cfg.upstream.url = edge.url.clone();
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    (s, edge)
}

fn upgrade_request(target: &str, token: &str) -> String {
    format!(
        "GET {target} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Protocol: v5.channel.k8s.io, v4.channel.k8s.io\r\n\r\n"
    )
}

/// Reads a response head (through the blank line).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut byte))
            .await
            .expect("a response head in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before a whole head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// Reads until EOF (or a connection error, which ends the session as well); the bytes read.
async fn read_to_end<S: AsyncRead + Unpin>(s: &mut S, within: Duration) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the session did not end within {within:?} ({} bytes read)",
                out.len()
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
}

#[test]
fn bytes_flow_both_ways_and_either_side_may_end_first() {
    let (s, edge) = stack_with_edge();
    s.rt.block_on(async {
        let mut c = s.user_connection().await;
        send(&mut c, upgrade_request(EXEC, common::TOKEN).as_bytes()).await;
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert_eq!(field(&head, "upgrade").as_deref(), Some("echo"), "{head}");
        assert_eq!(field(&head, "connection").as_deref(), Some("Upgrade"));
        assert_eq!(
            field(&head, "sec-websocket-protocol").as_deref(),
            Some("v5.channel.k8s.io, v4.channel.k8s.io"),
            "the edge's fields come back as it sent them"
        );
        // Several exchanges, each answered before the next.
        for msg in [&b"hello"[..], b"\x00\x01binary\xff", &[b'x'; 40_000]] {
            send(&mut c, msg).await;
            let mut got = vec![0u8; msg.len()];
            tokio::time::timeout(Duration::from_secs(20), c.read_exact(&mut got))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got, msg);
        }
        // The client ends its side; the edge's last words still arrive, then the end.
        c.shutdown().await.unwrap();
        let rest = read_to_end(&mut c, Duration::from_secs(20)).await;
        assert_eq!(rest, b"bye");
    });
    // The edge saw the request as the client sent it: the whole query, the upgrade fields
    // (hop-by-hop, yet carried for an upgrade), and the agent's own credentials, not the user's.
    let heads = edge.heads.lock().unwrap();
    let head = heads.last().unwrap();
    assert!(
        head.starts_with(
            "GET /api/v1/namespaces/default/pods/web/exec?command=sh&command=-c&command=echo%20hi&container=main&stdin=true&stdout=true HTTP/1.1"
        ),
        "{head}"
    );
    assert_eq!(
        field(head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert!(field(head, "connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    assert_eq!(
        field(head, "sec-websocket-key").as_deref(),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );
    assert_eq!(field(head, "sec-websocket-version").as_deref(), Some("13"));
    assert!(
        !head.contains(common::TOKEN),
        "the user's token never reaches the edge"
    );
    drop(heads);
    // The session was counted as it ended.
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_sessions_total{kind=\"exec\",end=\"closed\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kubehub_hub_sessions_open 0"), "{metrics}");
}

#[test]
fn a_refused_upgrade_passes_through_and_the_connection_goes_on() {
    let (s, _edge) = stack_with_edge();
    s.rt.block_on(async {
        let mut c = s.user_connection().await;
        let target = "/clusters/edge-1/api/v1/namespaces/default/pods/refuse/exec?command=ls";
        send(&mut c, upgrade_request(target, common::TOKEN).as_bytes()).await;
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let n: usize = field(&head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; n];
        c.read_exact(&mut body).await.unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status["message"], "upgrade request required");
        // kubectl retries with SPDY on a new request; this connection still serves requests.
        let get = format!(
            "GET /clusters/edge-1/version HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {}\r\n\r\n",
            common::TOKEN
        );
        send(&mut c, get.as_bytes()).await;
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 "), "{head}");
    });
}

#[test]
fn a_large_stream_arrives_whole_while_other_requests_are_served() {
    let (s, _edge) = stack_with_edge();
    const N: usize = 32 * 1024 * 1024;
    s.rt.block_on(async {
        let mut c = s.user_connection().await;
        let target = format!(
            "/clusters/edge-1/api/v1/namespaces/default/pods/web/exec?command=cat&bytes={N}"
        );
        send(&mut c, upgrade_request(&target, common::TOKEN).as_bytes()).await;
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        // Read slowly at first: the stream waits on its window, the tunnel does not.
        let mut first = vec![0u8; 1024];
        c.read_exact(&mut first).await.unwrap();
        let other = "/clusters/edge-1/api/v1/namespaces/default/pods/web/exec?command=cat";
        let mut d = s.user_connection().await;
        send(&mut d, upgrade_request(other, common::TOKEN).as_bytes()).await;
        assert!(read_head(&mut d).await.starts_with("HTTP/1.1 101 "));
        send(&mut d, b"ping").await;
        let mut pong = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(20), d.read_exact(&mut pong))
            .await
            .expect("another session is served while the first one's reader stalls")
            .unwrap();
        assert_eq!(&pong, b"ping");
        let rest = read_to_end(&mut c, Duration::from_secs(300)).await;
        let all: Vec<u8> = first.into_iter().chain(rest).collect();
        assert_eq!(all.len(), N);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, &b)| b == ((i % (64 * 1024)) % 251) as u8),
            "the bytes arrive in order, unchanged"
        );
    });
}

#[test]
fn the_agent_going_away_ends_the_session() {
    let (mut s, _edge) = stack_with_edge();
    let mut c = s.rt.block_on(async {
        let mut c = s.user_connection().await;
        send(&mut c, upgrade_request(EXEC, common::TOKEN).as_bytes()).await;
        assert!(read_head(&mut c).await.starts_with("HTTP/1.1 101 "));
        send(&mut c, b"still there?").await;
        let mut got = [0u8; 12];
        c.read_exact(&mut got).await.unwrap();
        c
    });
    s.stop_agent();
    s.rt.block_on(async {
        // No "bye": the session ends without the edge's goodbye, and in bounded time.
        let rest = read_to_end(&mut c, Duration::from_secs(30)).await;
        assert!(rest.is_empty(), "{rest:?}");
    });
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_sessions_total{kind=\"exec\",end=\"agent_gone\"} 1"),
        "{metrics}"
    );
}

#[test]
fn command_streams_are_authorized_as_their_subresources() {
    // bob may do everything to pods but run commands in them.
    let (bob_token, access) = common::access_with_user(
        "bob",
        vec![common::rule(&[""], &["pods", "pods/log"], &["*"], &[], &[])],
    );
    let s = common::start_opts(common::StackOptions {
        access: Some(access),
        ..Default::default()
    });
    s.rt.block_on(async {
        let mut c = s.user_connection().await;
        send(&mut c, upgrade_request(EXEC, &bob_token).as_bytes()).await;
        let head = read_head(&mut c).await;
        assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
        let n: usize = field(&head, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0u8; n];
        c.read_exact(&mut body).await.unwrap();
        let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            status["message"],
            "pods \"web\" is forbidden: User \"bob\" cannot get resource \"pods/exec\" in API group \"\" in the namespace \"default\": no rule of your grants on this cluster allows this request"
        );
    });
    assert!(
        s.sim_log.lines().iter().all(|l| !l.contains("/exec")),
        "nothing reached the edge"
    );
}
