//! Shared set-up for the tests that drive the simulator with real clients: a seeded cluster
//! served on a free loopback port, a kubeconfig for it, and a kubectl runner with its own
//! discovery cache.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::Arc;

use kubehub_testkit::Kubectl;

use kubehub_kapi::kubeconfig::Kubeconfig;
use kubehub_pki::{self as pki, Ca};
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions, Server};

pub struct Sim {
    pub cluster: Arc<Cluster>,
    pub server: Server,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub url: String,
    /// Every request the simulator served.
    pub log: Arc<sim::RequestLog>,
}

pub async fn start(cfg: ClusterConfig, spec: SeedSpec, tls: bool, token: Option<&str>) -> Sim {
    let cluster = Cluster::new("sim", cfg);
    sim::seed(&cluster, &spec).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(sim::RequestLog::default());
    let mut opts = ServeOptions {
        token: token.map(str::to_owned),
        log: Some(log.clone()),
        ..ServeOptions::default()
    };
    let mut ca_pem = None;
    if tls {
        let ca = Ca::generate("test CA").unwrap();
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
        log,
    }
}

impl Sim {
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.k().output(args)
    }

    /// Runs kubectl and returns stdout; panics with stderr if it failed.
    pub fn ok(&self, args: &[&str]) -> String {
        self.k().ok(args)
    }

    /// Starts kubectl with stdout piped.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.k().spawn(args)
    }

    /// The kubectl command, ready for more arguments, environment or redirections.
    pub fn k_cmd(&self, args: &[&str]) -> std::process::Command {
        self.k().cmd(args)
    }

    fn k(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig, self.dir.path())
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
