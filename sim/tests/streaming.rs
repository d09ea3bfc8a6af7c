//! exec, attach, cp and port-forward with the real kubectl against the simulator, over both
//! transports kubectl speaks: WebSocket (its default since 1.30) and SPDY (its fallback,
//! forced with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false` / `KUBECTL_PORT_FORWARD_WEBSOCKETS=false`).

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::start;
use kubehub_sim::{ClusterConfig, SeedSpec};
use kubehub_testkit::kubectl::{wait_with_deadline, Transport};
use kubehub_testkit::Kubectl;
use serde_json::json;

/// A simulator with one pod of our own: `box` in `default`, container `main` declaring ports
/// 8080 and 9090, with an environment variable; plus `duo` with two containers and `waiting`,
/// a pod that is not running.
async fn sim() -> common::Sim {
    let s = start(
        ClusterConfig::default(),
        SeedSpec {
            namespaces: 0,
            ..SeedSpec::default()
        },
        false,
        None,
    )
    .await;
    let pods = s.cluster.type_index("", "v1", "pods").unwrap();
    for pod in [
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box"},
            "spec": {"containers": [{"name": "main", "image": "busybox",
                "env": [{"name": "GREETING", "value": "hello from the box"}],
                "ports": [{"containerPort": 8080}, {"containerPort": 9090}]}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "duo"},
            "spec": {"containers": [{"name": "app", "image": "a"}, {"name": "proxy", "image": "b"}]}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "waiting"},
            "spec": {"containers": [{"name": "main", "image": "a"}]}}),
    ] {
        s.cluster.create(pods, Some("default"), pod, false).unwrap();
    }
    let mut w: serde_json::Value =
        serde_json::from_slice(&s.cluster.get(pods, Some("default"), "waiting").unwrap()).unwrap();
    w["status"]["phase"] = json!("Pending");
    s.cluster
        .update(pods, Some("default"), "waiting", w, Some("status"), false)
        .unwrap();
    s
}

/// kubectl for the simulator, with its discovery cache in the simulator's directory.
fn kubectl(s: &common::Sim) -> Kubectl {
    Kubectl::new(&s.kubeconfig, s.path())
}

fn run(s: &common::Sim, t: Transport, args: &[&str]) -> Output {
    kubectl(s).output_over(t, args)
}

/// `sh -c script` in `box` over `t`.
fn sh(s: &common::Sim, t: Transport, script: &str) -> Output {
    run(s, t, &["exec", "box", "--", "sh", "-c", script])
}

/// Checks that kubectl used `t` for `sub` (`exec`, `attach`, `portforward`) since the log was
/// last cleared (WebSocket: GET and no SPDY fallback; SPDY: POST only), then clears the log.
fn assert_used(s: &common::Sim, t: Transport, sub: &str) {
    let lines = s.log.lines();
    let path = format!("/pods/box/{sub}");
    let hits: Vec<&String> = lines.iter().filter(|l| l.contains(&path)).collect();
    let (want, not) = match t {
        Transport::WebSocket => ("GET ", "POST "),
        Transport::Spdy => ("POST ", "GET "),
    };
    assert!(
        hits.iter().any(|l| l.starts_with(want)),
        "{t:?} {sub}: {hits:?}"
    );
    assert!(
        !hits.iter().any(|l| l.starts_with(not)),
        "{t:?} {sub}: {hits:?}"
    );
    s.log.clear();
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_prints_output_and_exits_zero() {
    let s = sim().await;
    for t in Transport::BOTH {
        let out = run(&s, t, &["exec", "box", "--", "echo", "hi"]);
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hi\n", "{t:?}");
        let out = sh(&s, t, "echo $GREETING; hostname; cat /etc/hostname");
        assert_eq!(
            text(&out.stdout),
            "hello from the box\nbox\nbox\n",
            "{t:?}: {}",
            text(&out.stderr)
        );
        // stderr is its own stream.
        let out = sh(&s, t, "echo out; echo err >&2");
        assert_eq!(
            (text(&out.stdout).as_str(), text(&out.stderr).as_str()),
            ("out\n", "err\n"),
            "{t:?}"
        );
        assert_used(&s, t, "exec");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_the_exit_code() {
    let s = sim().await;
    for t in Transport::BOTH {
        let out = sh(&s, t, "exit 3");
        assert_eq!(out.status.code(), Some(3), "{t:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("command terminated with exit code 3"),
            "{t:?}: {}",
            text(&out.stderr)
        );
        let out = run(&s, t, &["exec", "box", "--", "nosuchcommand"]);
        assert_eq!(out.status.code(), Some(127), "{t:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("executable file not found in $PATH"),
            "{t:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_piped_stdin() {
    let s = sim().await;
    // 1 MiB of varied bytes through `cat`, and a count through a pipeline.
    let input: Vec<u8> = (0..1024 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    for t in Transport::BOTH {
        let out = kubectl(&s).run_with_input(t, &["exec", "-i", "box", "--", "cat"], &input);
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), input.len(), "{t:?}");
        assert!(out.stdout == input, "{t:?}: the bytes differ");
        let out = kubectl(&s).run_with_input(
            t,
            &["exec", "-i", "box", "--", "sh", "-c", "wc -l"],
            b"one\ntwo\nthree\n",
        );
        assert_eq!(text(&out.stdout), "3\n", "{t:?}: {}", text(&out.stderr));
        // A command that stops reading early: the session still ends cleanly.
        let out = kubectl(&s).run_with_input(
            t,
            &["exec", "-i", "box", "--", "head", "-c", "5"],
            &vec![b'x'; 8 * 1024 * 1024],
        );
        assert_eq!(text(&out.stdout), "xxxxx", "{t:?}: {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{t:?}: {}", text(&out.stderr));
        assert_used(&s, t, "exec");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_stream_arrives_whole() {
    let s = sim().await;
    for t in Transport::BOTH {
        let mut child = kubectl(&s)
            .cmd_over(
                t,
                &["exec", "box", "--", "head", "-c", "104857600", "/dev/zero"],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let (mut total, mut nonzero) = (0usize, 0usize);
        loop {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            total += n;
            nonzero += buf[..n].iter().filter(|&&b| b != 0).count();
        }
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!((total, nonzero), (104_857_600, 0), "{t:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_with_a_terminal() {
    let s = sim().await;
    for t in Transport::BOTH {
        // What we write to its stdin is typed into kubectl's terminal.
        let mut child = kubectl(&s)
            .under_terminal(t, &["exec", "-it", "box", "--", "sh"])
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        let wait_for = |want: &str, seen: &mut Vec<u8>| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !text(seen).contains(want) {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(b) => seen.extend_from_slice(&b),
                    Err(_) => panic!("{t:?}: no {want:?} in {:?}", text(seen)),
                }
            }
        };
        wait_for("# ", &mut seen);
        stdin.write_all(b"echo hi from a tty\n").unwrap();
        wait_for("hi from a tty\r\n# ", &mut seen);
        stdin.write_all(b"exit 4\n").unwrap();
        let status = wait_with_deadline(child, Duration::from_secs(30)).status;
        assert_eq!(status.code(), Some(4), "{t:?}: {:?}", text(&seen));
        // The terminal echoed the command, then the shell printed its answer.
        assert!(
            text(&seen).contains("# echo hi from a tty\r\nhi from a tty\r\n# "),
            "{t:?}: {:?}",
            text(&seen)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cp_both_ways() {
    let s = sim().await;
    for (i, t) in Transport::BOTH.into_iter().enumerate() {
        let local = s.path().join(format!("upload-{i}.txt"));
        let content: String = (0..5000)
            .map(|n| format!("line {n} of the upload\n"))
            .collect();
        std::fs::write(&local, &content).unwrap();
        let dest = format!("box:/tmp/copied-{i}.txt");
        let out = run(&s, t, &["cp", local.to_str().unwrap(), &dest]);
        assert!(
            out.status.success(),
            "{t:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        // It is in the container's filesystem ...
        let out = run(
            &s,
            t,
            &["exec", "box", "--", "cat", &format!("/tmp/copied-{i}.txt")],
        );
        assert_eq!(text(&out.stdout), content, "{t:?}");
        // ... and comes back.
        let back = s.path().join(format!("download-{i}.txt"));
        let out = run(&s, t, &["cp", &dest, back.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{t:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(std::fs::read_to_string(&back).unwrap(), content, "{t:?}");
        // A file made in the container, copied out.
        sh(&s, t, "mkdir -p /data && echo made inside > /data/made.txt");
        let made = s.path().join(format!("made-{i}.txt"));
        let out = run(&s, t, &["cp", "box:/data/made.txt", made.to_str().unwrap()]);
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!(std::fs::read_to_string(&made).unwrap(), "made inside\n");
    }
    // A directory, recursively.
    let dir = s.path().join("tree");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "A").unwrap();
    std::fs::write(dir.join("sub/b.txt"), "B").unwrap();
    let out = run(
        &s,
        Transport::WebSocket,
        &["cp", dir.to_str().unwrap(), "box:/srv"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = sh(&s, Transport::WebSocket, "cat /srv/a.txt /srv/sub/b.txt");
    assert_eq!(text(&out.stdout), "AB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_echoes_stdin() {
    let s = sim().await;
    for t in Transport::BOTH {
        let out =
            kubectl(&s).run_with_input(t, &["attach", "-i", "box"], b"first line\nsecond line\n");
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "first line\nsecond line\n", "{t:?}");
        assert_used(&s, t, "attach");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_the_apiservers() {
    let s = sim().await;
    for t in Transport::BOTH {
        for (args, error) in [
            (
                &["exec", "nosuchpod", "--", "true"][..],
                "pods \"nosuchpod\" not found",
            ),
            (
                &["exec", "box", "-c", "nope", "--", "true"],
                "container nope is not valid for pod box",
            ),
            (
                &["exec", "waiting", "--", "true"],
                "container not found (\"main\")",
            ),
        ] {
            let out = run(&s, t, args);
            assert!(!out.status.success(), "{t:?}: {args:?}");
            assert!(
                text(&out.stderr).contains(error),
                "{t:?}: {}",
                text(&out.stderr)
            );
        }
        // Both containers of a two-container pod are reachable by name.
        let out = run(&s, t, &["exec", "duo", "-c", "proxy", "--", "hostname"]);
        assert_eq!(text(&out.stdout), "duo\n", "{t:?}: {}", text(&out.stderr));
    }
}

/// Writes `request` on a fresh connection to `addr` and reads until the server closes it.
fn exchange(addr: impl std::net::ToSocketAddrs, request: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.write_all(request).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    answer
}

/// One HTTP/1.1 exchange on a fresh connection: the answer's body.
fn http_get(port: u16, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let answer = exchange(("127.0.0.1", port), request.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_serves_http_on_several_connections_at_once() {
    let s = sim().await;
    for t in Transport::BOTH {
        let forward = kubectl(&s).port_forward(t, &["pod/box"], &[8080, 9090]);
        let (a, b) = (forward.local(8080), forward.local(9090));
        // Sixteen connections at once, over both forwarded ports.
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let (port, remote) = if i % 2 == 0 { (a, 8080) } else { (b, 9090) };
                std::thread::spawn(move || {
                    let body = http_get(port, &format!("/req/{i}"));
                    assert_eq!(
                        body,
                        format!("pod default/box port {remote}: GET /req/{i}\n")
                    );
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        // Keep-alive: two requests on one connection, then something that is not HTTP.
        let answer = exchange(
            ("127.0.0.1", a),
            b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            answer.matches("HTTP/1.1 200 OK").count(),
            2,
            "{t:?}: {answer}"
        );
        assert!(
            answer.contains("GET /one\n") && answer.contains("GET /two\n"),
            "{answer}"
        );
        let mut c = TcpStream::connect(("127.0.0.1", b)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        c.write_all(b"\x00hello, echo").unwrap();
        let mut got = [0u8; 12];
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x00hello, echo");
        assert_used(&s, t, "portforward");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn port_forward_to_a_port_nothing_listens_on() {
    let s = sim().await;
    for t in Transport::BOTH {
        let mut forward = kubectl(&s).port_forward(t, &["pod/box"], &[7777]);
        let local = forward.local(7777);
        let mut c = TcpStream::connect(("127.0.0.1", local)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(got.is_empty(), "{t:?}: {}", text(&got));
        // kubectl reports what the kubelet wrote on the error stream, and (since 1.30) gives
        // up on the forward.
        let status = forward.wait_exit(Duration::from_secs(30));
        let err = forward.log();
        assert!(
            err.contains(&format!("an error occurred forwarding {local} -> 7777"))
                && err.contains("connect: connection refused"),
            "{t:?}: {err}"
        );
        assert!(!status.success());
    }
}

/// One raw HTTP/1.1 request to the simulator: the status code and the body.
fn raw(s: &common::Sim, head: &str) -> (u16, serde_json::Value) {
    let addr = s.url.trim_start_matches("http://");
    let request = format!("{head}Host: sim\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let answer = exchange(addr, request.as_bytes());
    let code = answer[9..12].parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    (
        code,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_errors_are_status_objects() {
    let s = sim().await;
    let exec = "/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true";
    // No upgrade at all.
    let (code, v) = raw(&s, &format!("POST {exec} HTTP/1.1\r\n"));
    assert_eq!(code, 400);
    assert_eq!(v["kind"], "Status");
    assert_eq!(
        v["message"],
        "unable to upgrade: missing upgrade headers in request"
    );
    // SPDY without a protocol both sides speak.
    let (code, v) = raw(
        &s,
        &format!("POST {exec} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: channel.k8s.io\r\n"),
    );
    assert_eq!(
        (code, v["reason"].as_str()),
        (403, Some("Forbidden")),
        "{v}"
    );
    // WebSocket offering only the old protocols.
    let (code, v) = raw(
        &s,
        &format!("GET {exec} HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: channel.k8s.io\r\n"),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("unable to negotiate protocol"),
        "{v}"
    );
    // Validation comes first, as in kube-apiserver.
    for (target, message) in [
        (
            "box/exec?stdout=true",
            "you must specify at least one command for the container",
        ),
        (
            "box/exec?command=true",
            "you must specify at least 1 of stdin, stdout, stderr",
        ),
        (
            "duo/exec?command=true&stdout=true",
            "a container name must be specified for pod duo, choose one of: [app proxy]",
        ),
    ] {
        let head = format!("POST /api/v1/namespaces/default/pods/{target} HTTP/1.1\r\n");
        let (code, v) = raw(&s, &head);
        assert_eq!(code, 400, "{target}");
        assert_eq!(v["message"], message, "{target}");
    }
    let (code, v) = raw(
        &s,
        "POST /api/v1/namespaces/default/pods/ghost/portforward HTTP/1.1\r\n",
    );
    assert_eq!((code, v["reason"].as_str()), (404, Some("NotFound")));
    let (code, _) = raw(
        &s,
        "DELETE /api/v1/namespaces/default/pods/box/exec?command=true HTTP/1.1\r\n",
    );
    assert_eq!(code, 405);
}
