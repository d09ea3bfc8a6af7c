//! Shared set-up for the tests that drive the simulator with real clients: a seeded cluster
//! served on a free loopback port, a kubeconfig for it, and a kubectl runner with its own
//! discovery cache.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubehub_kapi::kubeconfig::Kubeconfig;
use kubehub_perf::pki::{self, DevCa};
use kubehub_perf::sim::{self, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions, Server};

pub struct Sim {
    pub cluster: Arc<Cluster>,
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
}

pub const KUBECTL: &str = "/usr/bin/kubectl";

pub async fn start(cfg: ClusterConfig, spec: SeedSpec, tls: bool, token: Option<&str>) -> Sim {
    let cluster = Cluster::new("sim", cfg);
    sim::seed(&cluster, &spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut opts = ServeOptions {
        token: token.map(str::to_owned),
        ..ServeOptions::default()
    };
    let mut ca_pem = None;
    if tls {
        let ca = DevCa::generate("test CA").unwrap();
        let cert = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        opts.tls = Some(Arc::new(pki::server_config(&cert).unwrap()));
        std::fs::write(dir.path().join("ca.crt"), ca.cert_pem()).unwrap();
        ca_pem = Some(ca.cert_pem());
    }
    let server = sim::serve(
        "127.0.0.1:0".parse().unwrap(),
        Router::Single(cluster.clone()),
        opts,
    )
    .await
    .unwrap();
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://{}", server.local_addr());
    let kc = Kubeconfig {
        name: "sim".into(),
        server: url.clone(),
        ca_pem,
        token: token.map(str::to_owned),
        ..Kubeconfig::default()
    };
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, kc.to_yaml()).unwrap();
    Sim {
        cluster,
        server,
        dir,
        kubeconfig,
        url,
    }
}

impl Sim {
    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.dir.path().join("cache"))
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// Runs kubectl to completion.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_cmd(args).output().expect("run kubectl")
    }

    /// Runs kubectl and returns stdout; panics with stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts kubectl with stdout piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.kubectl_cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kubectl")
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Reads lines from a child's stdout (on a thread) until `pred` holds for the collected
/// output or `timeout` passes. Returns the output so far.
pub fn read_until(child: &mut Child, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut out = String::new();
    while !pred(&out) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            Err(_) => break,
        }
    }
    out
}
