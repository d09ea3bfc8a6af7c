//! `kubehub demo` as a new user runs it: it prints kubectl commands that work, and stops
//! cleanly on SIGTERM.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts the demo in `dir`; returns it with the lines it printed up to the kubectl command.
fn start(dir: &std::path::Path) -> (std::process::Child, Vec<String>) {
    start_logging(dir, Stdio::null())
}

/// [`start`], with the demo's log (stderr) going to `log`.
fn start_logging(dir: &std::path::Path, log: Stdio) -> (std::process::Child, Vec<String>) {
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kubehub"))
        .args(["demo", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("Ctrl-C stops")) {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("demo output so far: {lines:#?}"));
        lines.push(line);
    }
    (demo, lines)
}

fn stop(mut demo: std::process::Child) {
    Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = demo.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "demo exit status {status:?}");
}

/// Runs the printed `kubectl … get pods -A` and checks it lists running pods.
fn kubectl_works(dir: &std::path::Path, lines: &[String]) {
    let command = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("kubectl ") && l.contains("get pods -A") && !l.contains("-w"))
        .expect("a kubectl command");
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = Command::new("/usr/bin/kubectl")
        .args(&args)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Running") && text.lines().count() > 3,
        "{text}"
    );
}

#[test]
fn demo_prints_working_commands_keeps_its_state_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (demo, lines) = start(dir.path());
    kubectl_works(dir.path(), &lines);
    // The printed native command runs on the edge host, through the hub.
    let native = lines
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with("kubehub ctl native") && l.contains(" df "))
        .expect("a native command");
    let out = Command::new(env!("CARGO_BIN_EXE_kubehub"))
        .args(native.split_whitespace().skip(1))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Filesystem"),
        "{native}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "meta.toml",
        "hub.toml",
        "agent.toml",
        "kubeconfig",
        "meta/ca.crt",
        "meta/admin.token",
        "hub/hub.crt",
        "agent/agent.crt",
    ] {
        assert!(dir.path().join(f).exists(), "{f} written");
    }
    // The printed environment for `kubehub ctl` works: the agent is registered.
    let env = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("export "))
        .expect("the ctl environment");
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_kubehub"));
    for kv in env.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        ctl.env(k, v);
    }
    let out = ctl.args(["ctl", "agents"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("demo"), "{text}");
    // The canary rule through ctl: none, set (a rule choosing no cluster: nothing moves), shown,
    // bad input refused naming the field, cleared.
    let ctl_run = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_kubehub"));
        for kv in env.split_whitespace() {
            let (k, v) = kv.split_once('=').unwrap();
            c.env(k, v);
        }
        let out = c.arg("ctl").args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = ctl_run(&["canary", "show"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no canary rule is set"), "{err}");
    let (code, out, err) = ctl_run(&["canary", "set", "--version", "9.9.9-rc1", "--percent", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(r#""version": "9.9.9-rc1""#), "{out}");
    let (code, out, _) = ctl_run(&["canary", "show"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("9.9.9-rc1"), "{out}");
    let (code, _, err) = ctl_run(&["canary", "set", "--version", "not a version"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("version"), "{err}");
    let (code, _, err) = ctl_run(&["canary", "clear"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, _) = ctl_run(&["canary", "show"]);
    assert_eq!(code, Some(1));
    // Limits through ctl: set for the tenant and a user, shown, bad input refused naming the
    // field, cleared.
    let (code, out, err) = ctl_run(&["limit", "set", "demo", "--rps", "50", "--burst", "100"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("demo") && out.contains("50"), "{out}");
    let (code, _, err) = ctl_run(&["limit", "set", "demo", "--burst", "0"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("burst"), "{err}");
    let (code, out, _) = ctl_run(&["-o", "json", "limit", "show", "demo"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(r#""requestsPerSecond": 50"#), "{out}");
    let (code, out, _) = ctl_run(&["limit", "show"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("TENANT") && out.contains("demo"), "{out}");
    let (code, _, err) = ctl_run(&["limit", "clear", "demo"]);
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = ctl_run(&["limit", "show", "demo"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (_, out, _) = ctl_run(&["hubs"]);
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert!(
        header.contains(&"ZONE") && header.contains(&"DRAINING"),
        "{out}"
    );
    stop(demo);
    // Again in the same directory: meta's records and the agent's certificate are kept.
    let cert = std::fs::read_to_string(dir.path().join("agent/agent.crt")).unwrap();
    let (demo, lines) = start(dir.path());
    kubectl_works(dir.path(), &lines);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("agent/agent.crt")).unwrap(),
        cert,
        "the agent kept its certificate"
    );
    stop(demo);
}

/// An operator reading the hub's log finds every exec session: who ran what where, and how the
/// command ended (the agent reads the exit status off the session for it), over both of
/// kubectl's transports.
#[test]
fn exec_sessions_are_audited_with_their_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (demo, _) = start_logging(dir.path(), Stdio::from(log));
    let kubectl = |env: &str, args: &[&str]| {
        Command::new("/usr/bin/kubectl")
            .arg("--kubeconfig")
            .arg(dir.path().join("kubeconfig"))
            .arg("--cache-dir")
            .arg(dir.path().join("cache"))
            .args(args)
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", env)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    let out = kubectl(
        "true",
        &[
            "get",
            "pods",
            "-n",
            "edge-0",
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ],
    );
    let pod = String::from_utf8(out.stdout).unwrap();
    assert!(!pod.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    for (env, code) in [("true", 3), ("false", 5)] {
        let script = format!("exit {code}");
        let out = kubectl(
            env,
            &["exec", "-n", "edge-0", &pod, "--", "sh", "-c", &script],
        );
        assert_eq!(
            out.status.code(),
            Some(code),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop(demo);
    let log = std::fs::read_to_string(&log_path).unwrap();
    for (protocol, code) in [("websocket", 3), ("SPDY/3.1", 5)] {
        let line = log
            .lines()
            .find(|l| l.contains("session_end") && l.contains(&format!("exit {code}'")))
            .unwrap_or_else(|| panic!("no audit line for exit {code}:\n{log}"));
        for want in [
            "kubehub::audit".to_owned(),
            "user=demo".to_owned(),
            "cluster=demo".to_owned(),
            "namespace=edge-0".to_owned(),
            format!("pod={pod}"),
            format!("protocol={protocol}"),
            format!("exit=\"{code}\""),
            "end=\"closed\"".to_owned(),
        ] {
            assert!(line.contains(&want), "{want} in {line}");
        }
    }
}
