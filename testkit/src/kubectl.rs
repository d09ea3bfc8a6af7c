//! Helpers for tests that drive real clients (kubectl) against the simulator or the hub.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The kubectl the tests use.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl with a kubeconfig and a discovery cache of its own.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The `--cache-dir`.
    pub cache_dir: PathBuf,
}

impl Kubectl {
    /// kubectl for `kubeconfig`, caching discovery under `dir/cache`.
    pub fn new(kubeconfig: &Path, dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_owned(),
            cache_dir: dir.join("cache"),
        }
    }

    /// The command, ready for more arguments or redirections.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// Runs to completion. Panics if kubectl cannot be started.
    pub fn output(&self, args: &[&str]) -> Output {
        match self.cmd(args).output() {
            Ok(o) => o,
            Err(e) => panic!("running {KUBECTL}: {e}"),
        }
    }

    /// Runs and returns stdout; panics with the output if kubectl failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts kubectl with stdout piped (stderr discarded).
    pub fn spawn(&self, args: &[&str]) -> Child {
        match self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("spawning {KUBECTL}: {e}"),
        }
    }
}

/// Reads lines of a child's stdout (on a thread) until `pred` holds for the output so far or
/// `within` passes; returns the output.
pub fn read_until(child: &mut Child, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    use std::io::BufRead;
    let Some(stdout) = child.stdout.take() else {
        return String::new();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut out = String::new();
    while !pred(&out) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            Err(_) => break,
        }
    }
    out
}
