//! `kubehub sim`: a simulated edge Kubernetes API server.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use kubehub_kapi::kubeconfig::Kubeconfig;
use kubehub_pki::{self as pki, Ca};
use kubehub_sim::{self as sim, Churn, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions};

/// Options of `kubehub sim`.
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Serve HTTPS with a freshly generated development CA (written to --dir as ca.crt).
    #[arg(long)]
    pub tls: bool,
    /// Require this bearer token (kubectl sends tokens only over https).
    #[arg(long)]
    pub token: Option<String>,
    /// Where to write ca.crt and kubeconfig.
    #[arg(long, default_value = ".kubehub-sim")]
    pub dir: PathBuf,
    /// Name of the simulated cluster (the prefix of node names).
    #[arg(long, default_value = "sim")]
    pub name: String,
    /// Serve this many clusters at /clusters/<name>-<i>/ instead of one at /.
    #[arg(long)]
    pub clusters: Option<usize>,
    /// Seed of the RNG: the same seed and sizes give the same cluster.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Application namespaces to create.
    #[arg(long, default_value_t = 3)]
    pub namespaces: usize,
    /// Deployments per namespace (each with a ReplicaSet, a Service and pods).
    #[arg(long, default_value_t = 2)]
    pub deployments: usize,
    /// Pods per deployment.
    #[arg(long, default_value_t = 2)]
    pub pods_per_deployment: usize,
    /// ConfigMaps per namespace.
    #[arg(long, default_value_t = 2)]
    pub configmaps: usize,
    /// Nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// Writes per second to keep the cluster changing (0: none).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Events kept for watches; older resourceVersions get 410 Gone.
    #[arg(long, default_value_t = 10_000)]
    pub history: usize,
    /// Seconds between watch bookmarks.
    #[arg(long, default_value_t = 30)]
    pub bookmark_interval: u64,
    /// Milliseconds between lines of `logs -f`.
    #[arg(long, default_value_t = 1000)]
    pub log_interval_ms: u64,
}

/// Runs until Ctrl-C or SIGTERM; returns the exit code.
pub fn run(args: SimArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub sim: starting the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kubehub sim: {e}");
            1
        }
    }
}

async fn serve(args: SimArgs) -> Result<(), String> {
    let cfg = |i: u64| ClusterConfig {
        history_window: args.history,
        bookmark_interval: Duration::from_secs(args.bookmark_interval.max(1)),
        log_interval: Duration::from_millis(args.log_interval_ms.max(10)),
        seed: args.seed.wrapping_add(i),
        ..ClusterConfig::default()
    };
    let spec = SeedSpec {
        namespaces: args.namespaces,
        deployments_per_namespace: args.deployments,
        pods_per_deployment: args.pods_per_deployment,
        configmaps_per_namespace: args.configmaps,
        secrets_per_namespace: 1,
        nodes: args.nodes,
    };
    let names: Vec<String> = match args.clusters {
        None => vec![args.name.clone()],
        Some(n) => (0..n).map(|i| format!("{}-{i}", args.name)).collect(),
    };
    let mut clusters = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let c = Cluster::new(name.clone(), cfg(i as u64));
        let n = sim::seed(&c, &spec).map_err(|e| format!("seeding {name}: {e}"))?;
        tracing::info!(cluster = %name, objects = n, "seeded");
        clusters.push(c);
    }
    let _churn: Vec<Churn> = if args.churn > 0.0 {
        clusters
            .iter()
            .map(|c| Churn::start(c.clone(), args.churn))
            .collect()
    } else {
        Vec::new()
    };
    let router = match args.clusters {
        None => Router::Single(clusters[0].clone()),
        Some(_) => Router::Multi(Arc::new(
            clusters
                .iter()
                .map(|c| (c.name().to_owned(), c.clone()))
                .collect::<HashMap<_, _>>(),
        )),
    };
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| format!("creating {}: {e}", args.dir.display()))?;
    let mut opts = ServeOptions {
        token: args.token.clone(),
        ..ServeOptions::default()
    };
    let mut ca_pem = None;
    if args.tls {
        let ca = Ca::generate("kubehub sim CA").map_err(|e| e.to_string())?;
        let host = args.listen.ip().to_string();
        let cert = ca
            .issue_server(&["localhost", "127.0.0.1", host.as_str()])
            .map_err(|e| e.to_string())?;
        opts.tls = Some(Arc::new(
            pki::server_config(&cert).map_err(|e| e.to_string())?,
        ));
        let path = args.dir.join("ca.crt");
        std::fs::write(&path, ca.cert_pem())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        ca_pem = Some(ca.cert_pem());
    }
    let server = sim::serve(args.listen, router, opts)
        .await
        .map_err(|e| format!("listening on {}: {e}", args.listen))?;
    let scheme = if args.tls { "https" } else { "http" };
    let base = format!("{scheme}://{}", server.local_addr());
    let server_url = match args.clusters {
        None => base.clone(),
        Some(_) => format!("{base}/clusters/{}", names[0]),
    };
    let kubeconfig = Kubeconfig {
        name: args.name.clone(),
        server: server_url,
        ca_pem,
        token: args.token.clone(),
        ..Kubeconfig::default()
    };
    let kc_path = args.dir.join("kubeconfig");
    std::fs::write(&kc_path, kubeconfig.to_yaml())
        .map_err(|e| format!("writing {}: {e}", kc_path.display()))?;
    println!(
        "simulated cluster{} serving at {base}",
        if names.len() > 1 { "s" } else { "" }
    );
    println!(
        "try:\n  kubectl --kubeconfig {} get pods -A",
        kc_path.display()
    );
    if names.len() > 1 {
        println!(
            "  (clusters: {base}/clusters/{}-0 … /clusters/{}-{})",
            args.name,
            args.name,
            names.len() - 1
        );
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
