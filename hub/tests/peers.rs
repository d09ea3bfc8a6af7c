//! Hub-to-hub forwarding: a hub that holds no tunnel to a cluster serves its users through a
//! peer link to the hub that does (`hub/src/peers.rs`, `hub/src/proxy/peer.rs`). What a user
//! of the second hub sees must be what a user of the first sees: cached reads, writes, watches,
//! logs, exec and port-forward; one stalled stream on the link holds back no other; a user who
//! goes away ends the request at the holder too.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use kubehub_testkit::stack as common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kubehub_hub::config::Limits;
use kubehub_sim::ClusterConfig;
use kubehub_testkit::kubectl::Transport;
use kubehub_testkit::Kubectl;
use serde_json::Value;

fn stack() -> common::Stack {
    common::start(
        ClusterConfig {
            log_interval: Duration::from_millis(100),
            ..ClusterConfig::default()
        },
        Limits::default(),
    )
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads, writes and discovery through a hub without the tunnel give what the holder gives.
#[test]
fn a_hub_without_the_tunnel_serves_the_cluster_through_a_peer() {
    let s = stack();
    let (other, kubeconfig) = s.peer_hub("hub-c", Limits::default());
    let k = Kubectl::new(&kubeconfig, s.path());
    let direct = s.ok(&["get", "pods", "-A", "-o", "name"]);
    let via = k.ok(&["get", "pods", "-A", "-o", "name"]);
    assert!(!direct.trim().is_empty());
    assert_eq!(via, direct, "the same pods through either hub");
    // The holder answered from its cache: no second list reached the edge for it.
    assert_eq!(other.peers.links(), ["hub-test"], "one link, to the holder");
    // A write through the other hub lands at the edge and is read back through both.
    assert_eq!(
        k.ok(&["create", "configmap", "via-peer", "--from-literal=a=b"])
            .trim(),
        "configmap/via-peer created"
    );
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    let cm: Value =
        serde_json::from_slice(&s.cluster.get(ty, Some("default"), "via-peer").unwrap()).unwrap();
    assert_eq!(cm["data"]["a"], "b");
    eventually("the holder's cache to see it", || {
        s.ok(&["get", "configmap", "via-peer", "-o", "jsonpath={.data.a}"]) == "b"
    });
    assert_eq!(
        k.ok(&["get", "configmap", "via-peer", "-o", "jsonpath={.data.a}"]),
        "b"
    );
    // Errors come back as the holder words them, with their codes.
    let o = k.output(&["get", "configmap", "nope"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("configmaps \"nope\" not found"),
        "{o:?}"
    );
    // The forwarding hub's metrics say so; every hub says who it is.
    let admin = other.admin_addr.unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let m = String::from_utf8_lossy(&out.stdout);
    assert!(m.contains("kubehub_hub_peer_links 1"), "{m}");
    assert!(
        m.contains(r#"kubehub_hub_peer_requests_total{outcome="ok"}"#),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            r#"kubehub_hub_info{{id="hub-c",version="{}",environment="",zone=""}} 1"#,
            env!("CARGO_PKG_VERSION")
        )),
        "{m}"
    );
    // Several objects in one command, each its own request and stream.
    let out = k.ok(&["get", "ns", "default", "kube-system", "-o", "name"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    // Without a holder in its directory the hub has nowhere to send it: kube-apiserver's
    // 503, which clients retry.
    other
        .peers
        .apply(&kubehub_access::registry::RegistryLine::AgentGone {
            revision: 2,
            cluster: common::CLUSTER.into(),
        });
    let o = k.output(&["get", "pods", "-A"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is offline"),
        "{o:?}"
    );
}

/// A watch and `logs -f` stream through the link; a user who goes away ends them at the
/// holder too (no stream is left open there).
#[test]
fn watches_and_logs_stream_across_the_hop_and_end_with_the_user() {
    let s = stack();
    let (other, kubeconfig) = s.peer_hub("hub-c", Limits::default());
    let k = Kubectl::new(&kubeconfig, s.path());
    let mut w = k
        .cmd(&["get", "configmaps", "-n", "default", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    s.ok(&["create", "configmap", "watched", "--from-literal=a=b"]);
    let mut out = w.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut seen = String::new();
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            if seen.contains("configmap/watched") {
                let _ = tx.send(seen.clone());
            }
        }
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the watch saw the create");
    assert!(seen.contains("configmap/watched"), "{seen}");
    let streams = |h: &kubehub_hub::server::Hub| h.metrics.streams.get();
    assert!(streams(&s.hub) >= 1, "the watch is a stream at the holder");
    let _ = w.kill();
    let _ = w.wait();
    eventually("the holder's stream to end with the user", || {
        streams(&s.hub) == 0
    });
    assert_eq!(streams(&other), 0);

    // logs -f: lines keep coming through the hop.
    let ty = s.cluster.type_index("", "v1", "pods").unwrap();
    let (ns, pod) = s.cluster.keys(ty)[0].clone();
    let mut l = k
        .cmd(&["logs", "-f", &pod, "-n", &ns, "--tail=1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = l.stdout.take().unwrap();
    let mut buf = vec![0u8; 4096];
    let mut lines = 0;
    let until = Instant::now() + Duration::from_secs(10);
    while lines < 3 && Instant::now() < until {
        let n = out.read(&mut buf).unwrap();
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    assert!(lines >= 3, "log lines streamed through the peer link");
    let _ = l.kill();
    let _ = l.wait();
    eventually("the log stream to end at the holder", || {
        streams(&s.hub) == 0
    });
}

/// exec and port-forward cross the hop (the holder writes the 101; both directions are
/// bytes), and a stalled exec reader on the link does not hold back other requests on it.
#[test]
fn exec_and_port_forward_through_a_peer_and_a_stalled_stream_holds_back_no_other() {
    let s = stack();
    let (_other, kubeconfig) = s.peer_hub("hub-c", Limits::default());
    let k = Kubectl::new(&kubeconfig, s.path());
    let common::Pod {
        ns,
        name: pod,
        container,
        port,
    } = common::pod(&s);
    let exec = |argv: &[&str]| {
        let mut a = vec!["exec", "-n", &ns, &pod, "-c", &container, "--"];
        a.extend_from_slice(argv);
        k.output(&a)
    };
    for t in Transport::BOTH {
        let mut a = vec![
            "exec", "-n", &ns, &pod, "-c", &container, "--", "echo", "hi",
        ];
        let o = k.output_over(t, &a);
        assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{t:?}: {o:?}");
        a.truncate(7);
        a.extend(["sh", "-c", "exit 3"]);
        let o = k.output_over(t, &a);
        assert!(!o.status.success(), "{t:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("exit code 3"),
            "{t:?}: {o:?}"
        );
    }
    // A big exec output nobody reads: its stream fills its window on the link and waits.
    let mut big = k
        .cmd(&[
            "exec",
            "-n",
            &ns,
            &pod,
            "-c",
            &container,
            "--",
            "head",
            "-c",
            "104857600",
            "/dev/zero",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile other requests on the same link are served.
    for i in 0..10 {
        let out = k.ok(&["get", "ns", "default", "-o", "name"]);
        assert_eq!(out.trim(), "namespace/default", "request {i}");
    }
    let o = exec(&["echo", "still"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "still\n");
    // Then the stalled reader drains everything, in order.
    let mut reader = big.stdout.take().unwrap();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 0));
        total += n as u64;
    }
    assert!(big.wait().unwrap().success());
    assert_eq!(total, 104_857_600);
    // port-forward: HTTP to the pod's port through both hubs.
    let target = format!("pod/{pod}");
    let forward = k.port_forward(Transport::WebSocket, &["-n", &ns, &target], &[port]);
    let local = forward.local(port);
    let mut c = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(b"GET /via-peer HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("/via-peer"), "{answer}");
}

/// A holder that cannot be reached is passed over for the next one; an idle link closes and
/// the next request dials again.
#[test]
fn unreachable_holders_are_passed_over_and_idle_links_close() {
    let s = stack();
    let limits = Limits {
        peer_idle_timeout_ms: 2000,
        ..Limits::default()
    };
    let (other, kubeconfig) = s.peer_hub("hub-c", limits);
    let k = Kubectl::new(&kubeconfig, s.path());
    // A dead hub first in the directory (nothing listens on its port), the holder second.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    other
        .peers
        .apply(&common::registry_hub("hub-dead", dead_addr, ""));
    other.peers.apply(&common::registry_agent(
        common::CLUSTER,
        &["hub-dead", s.hub_id()],
    ));
    assert!(k
        .ok(&["get", "ns", "-o", "name"])
        .contains("namespace/default"));
    assert_eq!(other.peers.links(), ["hub-test"]);
    eventually("the idle link to close", || other.peers.links().is_empty());
    // The next request dials again.
    assert!(k
        .ok(&["get", "ns", "-o", "name"])
        .contains("namespace/default"));
    assert_eq!(other.peers.links(), ["hub-test"]);
}

/// With `peer_links_per_core`, each core of the forwarding hub dials its own link to the
/// holder: requests arriving on either core are served, over at most one link per core.
#[test]
fn links_per_core_serve_requests_from_every_core() {
    let s = stack();
    let (other, _) = s.peer_hub(
        "hub-c",
        Limits {
            peer_links_per_core: true,
            ..Limits::default()
        },
    );
    // Separate connections land on both cores (the listener is shared by accept).
    for _ in 0..12 {
        let (code, body) = curl_via(&s, &other, "/api/v1/namespaces/default");
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["metadata"]["name"], "default");
    }
    let links = other.peers.links();
    assert!(
        !links.is_empty() && links.len() <= 2 && links.iter().all(|l| l == "hub-test"),
        "{links:?}"
    );
}

/// A plain GET through `hub`'s user listener with the stack's token: status and body.
fn curl_via(s: &common::Stack, hub: &kubehub_hub::server::Hub, path: &str) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(s.path().join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", common::TOKEN)])
        .arg(format!(
            "https://127.0.0.1:{}/clusters/{}{path}",
            hub.user_addr.port(),
            common::CLUSTER
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A hub that accepts TCP connections and never answers (a hung process): counts them.
fn hung_hub() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let n = std::sync::Arc::new(AtomicUsize::new(0));
    let count = n.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in l.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(c);
        }
    });
    (addr, n)
}

/// A holder that hangs (accepts, never completes the handshake) costs the first request its
/// handshake timeout; then it is tried after the live holder for a while, so the requests
/// that follow do not dial it at all.
#[test]
fn a_hung_holder_is_tried_last_after_it_failed() {
    use std::sync::atomic::Ordering;
    let s = stack();
    let limits = Limits {
        handshake_timeout_ms: 1000,
        ..Limits::default()
    };
    let (other, _) = s.peer_hub("hub-c", limits);
    let (addr, dials) = hung_hub();
    other
        .peers
        .apply(&common::registry_hub("hub-hung", addr, ""));
    other.peers.apply(&common::registry_agent(
        common::CLUSTER,
        &["hub-hung", s.hub_id()],
    ));
    let (code, _) = curl_via(&s, &other, "/api/v1/namespaces/default");
    assert_eq!(code, 200, "passed over for the live holder");
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    let order: Vec<String> = other
        .peers
        .holders(common::CLUSTER)
        .into_iter()
        .map(|h| h.hub)
        .collect();
    assert_eq!(order, [s.hub_id(), "hub-hung"], "the hung hub now last");
    for _ in 0..3 {
        let (code, _) = curl_via(&s, &other, "/api/v1/namespaces/default");
        assert_eq!(code, 200);
    }
    assert_eq!(
        dials.load(Ordering::SeqCst),
        1,
        "requests in its back-off do not dial it"
    );
}

/// A peer link at its stream limit: the cluster is busy, not offline — 429 (clients slow
/// down and retry), and served again once a stream ends.
#[test]
fn a_peer_link_at_its_stream_limit_answers_429() {
    let s = common::start(
        ClusterConfig::default(),
        Limits {
            peer_max_concurrent_streams: 1,
            ..Limits::default()
        },
    );
    let (other, kubeconfig) = s.peer_hub("hub-c", Limits::default());
    let k = Kubectl::new(&kubeconfig, s.path());
    // A watch holds the link's one stream.
    let mut watch = k
        .cmd(&["get", "ns", "-w", "-o", "name"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 9];
    watch
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert_eq!(&first, b"namespace");
    let (code, status) = curl_via(&s, &other, "/api/v1/namespaces/default");
    assert_eq!(code, 429, "{status}");
    assert_eq!(status["reason"], "TooManyRequests", "{status}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("too many concurrent requests"),
        "{status}"
    );
    let admin = other.admin_addr.unwrap();
    let m = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&m.stdout)
            .contains(r#"kubehub_hub_peer_requests_total{outcome="busy"}"#),
        "{}",
        String::from_utf8_lossy(&m.stdout)
    );
    watch.kill().unwrap();
    watch.wait().unwrap();
    eventually("the stream to be free again", || {
        curl_via(&s, &other, "/api/v1/namespaces/default").0 == 200
    });
}

/// A hub draining for a restart: it reports not ready, its agents' tunnels go, and requests
/// its users start after the drain began still succeed — forwarded to another hub that holds
/// the cluster — each answer closing its connection so that clients reconnect elsewhere.
#[test]
fn a_draining_hub_forwards_new_requests_to_another_holder() {
    let s = stack();
    let (b, _) = s.peer_hub("hub-b", Limits::default());
    // A second tunnel for the cluster, to hub-b (as an agent keeping tunnels to two hubs).
    let mut cfg = s.agent_cfg.clone();
    cfg.hubs = vec![b.agent_addr.to_string()];
    cfg.agent_id = Some("agent-b".into());
    let _agent_b = {
        let _g = s.rt.enter();
        kubehub_agent::Agent::start(cfg).unwrap()
    };
    eventually("the tunnel to hub-b", || b.registry.connected() == 1);
    s.hub
        .peers
        .apply(&common::registry_hub("hub-b", b.agent_addr, ""));
    s.hub.peers.apply(&common::registry_agent(
        common::CLUSTER,
        &[s.hub_id(), "hub-b"],
    ));
    assert!(s.curl_admin("/readyz").starts_with("HTTP/1.1 200"));
    // Before the drain: served here, the connection kept.
    let r = s.hub_get("/api/v1/namespaces/default", &[]);
    assert_eq!(r.status, 200);
    assert_ne!(r.header("connection"), Some("close"));
    assert!(s.hub.peers.links().is_empty(), "nothing forwarded yet");

    assert!(
        s.hub.shutdown(Duration::from_secs(10)),
        "the tunnel drained"
    );
    let ready = s.curl_admin("/readyz");
    assert!(
        ready.starts_with("HTTP/1.1 503") && ready.contains("draining"),
        "{ready}"
    );
    // After: the same requests succeed through hub-b, and say the connection closes.
    let r = s.hub_get("/api/v1/namespaces/default", &[]);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["metadata"]["name"], "default");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(s.hub.peers.links(), ["hub-b"]);
    assert!(s.ok(&["get", "pods", "-A", "-o", "name"]).contains("pod/"));
    assert_eq!(
        s.ok(&["create", "configmap", "during-drain", "--from-literal=a=b"])
            .trim(),
        "configmap/during-drain created"
    );
}

/// Environments never mix: a staging hub refuses a prod cluster's agent and a user's request
/// for a prod cluster, and does not forward it to the prod hub that holds it.
#[test]
fn a_staging_hub_refuses_a_prod_agent_and_a_prod_user() {
    let mut access = common::default_access();
    for r in &mut access {
        if let kubehub_access::Record::Cluster(c) = r {
            c.environment = "prod".into();
        }
    }
    let s = common::start_opts(common::StackOptions {
        access: Some(access),
        environment: "prod".into(),
        ..common::StackOptions::default()
    });
    // The prod hub serves its prod cluster.
    assert!(s
        .ok(&["get", "ns", "-o", "name"])
        .contains("namespace/default"));
    let (staging, kubeconfig) = s.peer_hub_in("hub-s", Limits::default(), "staging");
    let k = Kubectl::new(&kubeconfig, s.path());
    let o = k.output(&["get", "ns"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Error from server (Forbidden)"),
        "{o:?}"
    );
    let out = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(s.path().join("ca.crt"))
        .args(["-H", &format!("Authorization: Bearer {}", common::TOKEN)])
        .arg(format!(
            "https://127.0.0.1:{}/clusters/edge-1/api/v1/namespaces",
            staging.user_addr.port()
        ))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["code"], 403, "{status}");
    assert_eq!(
        status["message"],
        r#"cluster "edge-1" is in environment "prod"; this hub serves environment "staging""#
    );
    assert!(staging.peers.links().is_empty(), "nothing crossed over");
    // The prod cluster's agent, pointed at the staging hub, is turned away.
    let mut cfg = s.agent_cfg.clone();
    cfg.hubs = vec![staging.agent_addr.to_string()];
    cfg.agent_id = Some("agent-to-staging".into());
    let _agent = {
        let _g = s.rt.enter();
        kubehub_agent::Agent::start(cfg).unwrap()
    };
    eventually("the agent refused", || {
        staging.metrics.tunnel_rejects.get() > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(staging.registry.connected(), 0);
}

/// A static registry file that does not parse stops the hub at start, naming the file and
/// the line.
#[test]
fn a_bad_registry_file_is_refused_at_start() {
    let s = stack();
    let d = s.path();
    let registry = d.join("bad-registry.ndjson");
    std::fs::write(
        &registry,
        format!(
            "{}{{\"kind\":\"hub\",\"revision\":1}}\n",
            common::registry_agent(common::CLUSTER, &["hub-test"]).to_line()
        ),
    )
    .unwrap();
    let toml = format!(
        r#"id = "hub-bad"
[access]
file = "{access}"
[registry]
file = "{registry}"
[user_listener]
listen = "127.0.0.1:0"
cert = "{crt}"
key = "{key}"
[agent_listener]
listen = "127.0.0.1:0"
cert = "{crt}"
key = "{key}"
client_ca = "{ca}"
"#,
        access = d.join("access.json").display(),
        registry = registry.display(),
        crt = d.join("hub.crt").display(),
        key = d.join("hub.key").display(),
        ca = d.join("ca.crt").display(),
    );
    let path = d.join("hub-bad.toml");
    std::fs::write(&path, toml).unwrap();
    let cfg = kubehub_hub::config::HubConfig::load(&path).unwrap();
    let err = match kubehub_hub::server::start(cfg) {
        Ok(_) => panic!("a hub with a bad registry file started"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("bad-registry.ndjson, line 2"),
        "the file and line are named: {err}"
    );
}
