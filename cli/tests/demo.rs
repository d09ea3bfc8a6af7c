//! `kubehub demo` as a new user runs it: it prints kubectl commands that work, and stops
//! cleanly on SIGTERM.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn demo_prints_working_kubectl_commands_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_kubehub"))
        .args(["demo", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut command = None;
    while command.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo output");
        if line.trim_start().starts_with("kubectl ")
            && line.contains("get pods -A")
            && !line.contains("-w")
        {
            command = Some(line.trim().to_owned());
        }
    }
    let command = command.unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    let out = Command::new("/usr/bin/kubectl")
        .args(&args)
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
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
    for f in [
        "hub.toml",
        "agent.toml",
        "tokens.csv",
        "kubeconfig",
        "certs/ca.crt",
    ] {
        assert!(dir.path().join(f).exists(), "{f} written");
    }
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
