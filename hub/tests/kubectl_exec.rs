//! The real kubectl's exec, attach, cp and port-forward through the hub and the agent to the
//! simulator, over WebSocket (kubectl's first choice) and over SPDY (its fallback), what
//! operators rely on when they debug an edge cluster: output, exit codes, stdin, a terminal,
//! files both ways, forwarded connections, a large stream that does not hold other requests
//! up, refusals for users without the grant, and a clean end when the agent goes away.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::io::{Read, Write};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use kubehub_hub::config::Limits;
use kubehub_sim::ClusterConfig;
use kubehub_testkit::kubectl::{wait_with_deadline, Transport};
use kubehub_testkit::stack::{self as common, pod, Pod, Stack};
use kubehub_testkit::Kubectl;

/// A running pod of the seeded cluster: namespace, name, first container, its port.
fn stack() -> Stack {
    common::start(ClusterConfig::default(), Limits::default())
}

/// `kubectl exec` in `p` with `argv` over `t`, stdin from `input`.
fn exec(k: &Kubectl, p: &Pod, t: Transport, flags: &[&str], argv: &[&str], input: &[u8]) -> Output {
    k.run_with_input(t, &p.exec_args(flags, argv), input)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exec_prints_output_returns_exit_codes_and_takes_stdin_both_ways() {
    let s = stack();
    let p = pod(&s);
    let k = s.k();
    for t in Transport::BOTH {
        let out = exec(&k, &p, t, &[], &["echo", "hi"], b"");
        assert_eq!(text(&out.stdout), "hi\n", "{t:?}: {}", text(&out.stderr));
        assert_eq!(out.status.code(), Some(0));

        let out = exec(&k, &p, t, &[], &["sh", "-c", "exit 3"], b"");
        assert_eq!(out.status.code(), Some(3), "{t:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("command terminated with exit code 3"),
            "{}",
            text(&out.stderr)
        );

        let out = exec(
            &k,
            &p,
            t,
            &[],
            &["sh", "-c", "echo oops >&2; echo fine"],
            b"",
        );
        assert_eq!(text(&out.stdout), "fine\n");
        assert_eq!(text(&out.stderr), "oops\n", "stderr is its own stream");

        let input: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let out = exec(&k, &p, t, &["-i"], &["cat"], &input);
        assert_eq!(out.status.code(), Some(0), "{t:?}: {}", text(&out.stderr));
        assert_eq!(out.stdout.len(), input.len(), "{t:?}");
        assert!(out.stdout == input, "stdin comes back unchanged over {t:?}");
    }
}

#[test]
fn attach_reaches_the_main_process() {
    let s = stack();
    let p = pod(&s);
    let k = s.k();
    for t in Transport::BOTH {
        let args = ["attach", "-i", "-n", &p.ns, &p.name, "-c", &p.container];
        let out = k.run_with_input(t, &args, b"first line\nsecond line\n");
        assert!(out.status.success(), "{t:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "first line\nsecond line\n", "{t:?}");
    }
}

#[test]
fn exec_with_a_terminal() {
    let s = stack();
    let p = pod(&s);
    // kubectl on a pseudo-terminal, as a person's shell runs it.
    let k = Kubectl {
        kubeconfig: s.kubeconfig.clone(),
        cache_dir: s.path().join("tty-cache"),
    };
    let args = p.exec_args(&["-it"], &["sh"]);
    for t in Transport::BOTH {
        let mut child = k.under_terminal(t, &args).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        stdin.write_all(b"echo in-a-terminal\n").unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        stdin.write_all(b"exit\n").unwrap();
        drop(stdin);
        let out = wait_with_deadline(child, Duration::from_secs(60));
        let screen = text(&out.stdout);
        assert!(screen.contains("in-a-terminal"), "{t:?}: {screen}");
        assert!(screen.contains("# "), "a prompt: {screen}");
        assert_eq!(out.status.code(), Some(0), "{t:?}: {screen}");
    }
}

#[test]
fn cp_copies_files_both_ways() {
    let s = stack();
    let p = pod(&s);
    let k = s.k();
    let local = s.path().join("notes.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    for (i, t) in Transport::BOTH.into_iter().enumerate() {
        let remote = format!("{}/{}:/tmp/notes-{i}.bin", p.ns, p.name);
        let out = k.output_over(
            t,
            &["cp", "-c", &p.container, local.to_str().unwrap(), &remote],
        );
        assert!(
            out.status.success(),
            "cp up over {t:?}: {}",
            text(&out.stderr)
        );
        // The file is there, whole.
        let out = exec(
            &k,
            &p,
            t,
            &[],
            &["wc", "-c", &format!("/tmp/notes-{i}.bin")],
            b"",
        );
        assert!(
            text(&out.stdout).starts_with("300000"),
            "{}",
            text(&out.stdout)
        );
        let back = s.path().join(format!("back-{i}.bin"));
        let out = k.output_over(
            t,
            &["cp", "-c", &p.container, &remote, back.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "cp down over {t:?}: {}",
            text(&out.stderr)
        );
        assert!(
            std::fs::read(&back).unwrap() == content,
            "the copy comes back unchanged"
        );
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    if let Err(e) = c.read_to_string(&mut answer) {
        return format!("failed: {e}");
    }
    answer
}

#[test]
fn port_forward_carries_several_connections_at_once() {
    let s = stack();
    let p = pod(&s);
    let k = s.k();
    let target = format!("pod/{}", p.name);
    for t in Transport::BOTH {
        let forward = k.port_forward(t, &["-n", &p.ns, &target], &[p.port]);
        let local = forward.local(p.port);
        let answers: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|i| scope.spawn(move || http_get(local, &format!("/conn-{i}"))))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, a) in answers.iter().enumerate() {
            assert!(a.starts_with("HTTP/1.1 200"), "{t:?}: {a}");
            assert!(
                a.contains(&format!("/conn-{i}")),
                "each connection its own answer: {a}"
            );
            assert!(a.contains(&p.name), "{a}");
        }
        // A raw byte stream, echoed.
        let mut c = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 200) as u8).collect();
        c.write_all(&payload).unwrap();
        let mut back = vec![0u8; payload.len()];
        c.read_exact(&mut back).unwrap();
        assert!(back == payload, "echoed unchanged over {t:?}");
        drop(forward);
    }
}

#[test]
fn a_large_exec_stream_does_not_hold_up_other_requests() {
    let s = stack();
    let p = pod(&s);
    let k = s.k();
    const N: usize = 100 * 1024 * 1024;
    let n = N.to_string();
    let mut child = k
        .cmd(&p.exec_args(&[], &["head", "-c", &n, "/dev/zero"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    // Nobody reads it for now: the stream fills its window and waits. Other requests, and
    // another session, go on meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let out = s.ok(&["get", "namespaces", "-o", "name"]);
        latencies.push(t.elapsed());
        assert!(out.contains("namespace/default"), "{out}");
    }
    let out = exec(
        &k,
        &p,
        Transport::WebSocket,
        &[],
        &["echo", "meanwhile"],
        b"",
    );
    assert_eq!(text(&out.stdout), "meanwhile\n");
    latencies.sort();
    eprintln!(
        "kubectl get --raw while a 100 MiB exec stream waits: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // Now read it all.
    let t = Instant::now();
    let mut total = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        assert!(buf[..n].iter().all(|&b| b == 0));
        total += n;
    }
    let status = child.wait().unwrap();
    assert_eq!(total, N, "every byte arrives");
    assert!(status.success());
    eprintln!("100 MiB through kubectl exec in {:?}", t.elapsed());
}

#[test]
fn exec_and_port_forward_need_their_grants() {
    // bob may read and change pods, but neither run commands nor forward ports.
    let (bob_token, access) = common::access_with_user(
        "bob",
        vec![common::rule(
            &[""],
            &["pods", "pods/log", "namespaces"],
            &["*"],
            &[],
            &[],
        )],
    );
    let s = common::start_opts(common::StackOptions {
        access: Some(access),
        ..Default::default()
    });
    let p = pod(&s);
    s.kubeconfig_for("bob", &bob_token, Some(common::CLUSTER));
    let bob = s.kubectl_as("bob");
    for t in Transport::BOTH {
        let out = exec(&bob, &p, t, &[], &["echo", "hi"], b"");
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains("cannot get resource \"pods/exec\"")
                || err.contains("cannot create resource \"pods/exec\""),
            "{t:?}: {err}"
        );
        assert!(out.stdout.is_empty());
    }
    let target = format!("pod/{}", p.name);
    let out = bob.output_over(
        Transport::Spdy,
        &[
            "port-forward",
            "-n",
            &p.ns,
            &target,
            &format!(":{}", p.port),
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("pods/portforward"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        s.sim_log
            .lines()
            .iter()
            .all(|l| !l.contains("/exec") && !l.contains("/portforward")),
        "nothing reached the edge"
    );
}

#[test]
fn the_agent_going_away_ends_a_session_with_an_error() {
    let mut s = stack();
    let p = pod(&s);
    let k = s.k();
    for t in Transport::BOTH {
        if s.agent.is_none() {
            s.start_agent();
            s.wait_connected(true, Duration::from_secs(10));
        }
        let child = k.open_session(
            t,
            &p.exec_args(&[], &["sh", "-c", "echo started; sleep 600"]),
        );
        s.stop_agent();
        let out = wait_with_deadline(child, Duration::from_secs(90));
        if t == Transport::WebSocket {
            assert!(!out.status.success(), "an error, not success");
            assert!(
                text(&out.stderr).contains("unexpected EOF"),
                "{}",
                text(&out.stderr)
            );
        }
        // Over SPDY kubectl takes a connection that drops for the end of the session and
        // exits 0 (as it does when kube-apiserver's connection drops): the session ends, and
        // the hub counts it as broken.
    }
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_sessions_total{kind=\"exec\",end=\"agent_gone\"} 2"),
        "{metrics}"
    );
}
