//! `kubehub certs`, `kubehub hub`, `kubehub agent` and `kubehub demo`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use kubehub_agent::{Agent, AgentConfig};
use kubehub_kapi::kubeconfig::Kubeconfig;
use kubehub_pki::Ca;
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions};

use super::sim::wait_for_signal;
use kubehub_hub::config::HubConfig;

/// Options of `kubehub certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Where to write the PEM files.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// Clusters to issue agent certificates for (CN = cluster id).
    #[arg(long, value_delimiter = ',', default_value = "edge-1")]
    pub clusters: Vec<String>,
    /// Names and addresses the hub certificate is valid for.
    #[arg(long, value_delimiter = ',', default_value = "localhost,127.0.0.1")]
    pub hosts: Vec<String>,
    /// Users to issue client certificates for (CN = user, O = group "kubehub:users").
    #[arg(long, value_delimiter = ',', default_value = "admin")]
    pub users: Vec<String>,
}

/// Options of `kubehub hub` and `kubehub agent`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

/// Options of `kubehub demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write certificates, configurations and the kubeconfig.
    #[arg(long, default_value = ".kubehub-demo")]
    pub dir: PathBuf,
    /// Port for kubectl (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("writing {}: {e}", p.display()))?;
    Ok(p)
}

fn issue_all(args: &CertsArgs) -> Result<Ca, String> {
    let set = kubehub_pki::DevSet {
        clusters: args.clusters.clone(),
        hosts: args.hosts.clone(),
        users: args.users.clone(),
    };
    kubehub_pki::write_dev_set(&args.dir, &set).map_err(|e| e.to_string())
}

/// `kubehub certs`.
pub fn certs(args: CertsArgs) -> i32 {
    match issue_all(&args) {
        Ok(_) => {
            println!("wrote a development CA, a hub certificate ({}), agent certificates ({}) and user certificates ({}) to {}",
                args.hosts.join(", "), args.clusters.join(", "), args.users.join(", "), args.dir.display());
            println!("the CA key is not kept: issue new certificates by running this again");
            0
        }
        Err(e) => {
            eprintln!("kubehub certs: {e}");
            1
        }
    }
}

/// `kubehub hub`.
pub fn hub(args: ConfigArgs) -> i32 {
    let cfg = match HubConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubehub hub: {e}");
            return 2;
        }
    };
    let hub = match kubehub_hub::server::start(cfg) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("kubehub hub: {e}");
            return 1;
        }
    };
    println!(
        "hub serving users on {} and agents on {}",
        hub.user_addr, hub.agent_addr
    );
    block_until_signal();
    tracing::info!("draining: agents get GOAWAY, requests in flight may finish (10 s at most)");
    if !hub.shutdown(std::time::Duration::from_secs(10)) {
        tracing::warn!("tunnels still open after 10 s; exiting anyway");
    }
    0
}

fn block_until_signal() {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(wait_for_signal()),
        Err(e) => {
            eprintln!("cannot wait for signals ({e}); running until killed");
            loop {
                std::thread::park();
            }
        }
    }
}

/// `kubehub agent`.
pub fn agent(args: ConfigArgs) -> i32 {
    let cfg = match AgentConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubehub agent: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub agent: {e}");
            return 1;
        }
    };
    rt.block_on(async move {
        let admin = cfg.admin.clone();
        let agent = match Agent::start(cfg) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("kubehub agent: {e}");
                return 1;
            }
        };
        if let Some(a) = admin {
            match agent.serve_admin(a.listen).await {
                Ok(addr) => tracing::info!(%addr, "admin listener"),
                Err(e) => {
                    eprintln!("kubehub agent: admin listener {}: {e}", a.listen);
                    return 1;
                }
            }
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        agent.stop().await;
        0
    })
}

/// `kubehub demo`: simulator, agent and hub on loopback, from configuration files written to
/// `--dir`, with a kubeconfig for kubectl.
pub fn demo(args: DemoArgs) -> i32 {
    match run_demo(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kubehub demo: {e}");
            1
        }
    }
}

fn run_demo(args: &DemoArgs) -> Result<(), String> {
    let dir = &args.dir;
    let cluster_id = "demo";
    let certs = CertsArgs {
        dir: dir.join("certs"),
        clusters: vec![cluster_id.into()],
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        users: vec![],
    };
    let ca = issue_all(&certs)?;
    let token = {
        use rand::Rng;
        let bytes: [u8; 16] = rand::rng().random();
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    write(
        dir,
        "tokens.csv",
        &format!("# token,user,uid,\"groups\"\n{token},admin,1,\"system:masters\"\n"),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // The edge cluster.
    let cluster: Arc<Cluster> = Cluster::new("demo", ClusterConfig::default());
    sim::seed(&cluster, &SeedSpec::default()).map_err(|e| e.to_string())?;
    let _churn = {
        let _g = rt.enter();
        sim::Churn::start(cluster.clone(), 0.5)
    };
    let sim_server = rt
        .block_on(sim::serve(
            "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?,
            Router::Single(cluster),
            ServeOptions::default(),
        ))
        .map_err(|e| format!("starting the simulator: {e}"))?;
    // The hub, from a hub.toml a user can read and reuse.
    let hub_toml = format!(
        r#"# Written by `kubehub demo`. Every option is documented in hub/src/config.rs.
id = "hub-demo"
cores = 0
clusters = ["{cluster_id}"]
token_file = "tokens.csv"
impersonate = false    # the simulator does not implement impersonation

[user_listener]
listen = "127.0.0.1:{port}"
cert = "certs/hub.crt"
key = "certs/hub.key"

[agent_listener]
listen = "127.0.0.1:0"
cert = "certs/hub.crt"
key = "certs/hub.key"
client_ca = "certs/ca.crt"

[admin]
listen = "127.0.0.1:0"
"#,
        port = args.port
    );
    let hub_path = write(dir, "hub.toml", &hub_toml)?;
    let hub_cfg = HubConfig::load(&hub_path).map_err(|e| e.to_string())?;
    let hub = kubehub_hub::server::start(hub_cfg).map_err(|e| e.to_string())?;
    // The agent, likewise.
    let agent_toml = format!(
        r#"# Written by `kubehub demo`. Every option is documented in agent/src/config.rs.
cluster_id = "{cluster_id}"
hubs = ["{agent_addr}"]

[tls]
ca = "certs/ca.crt"
cert = "certs/agent-{cluster_id}.crt"
key = "certs/agent-{cluster_id}.key"
server_name = "localhost"

[upstream]
url = "http://{sim}"
"#,
        agent_addr = hub.agent_addr,
        sim = sim_server.local_addr()
    );
    let agent_path = write(dir, "agent.toml", &agent_toml)?;
    let agent_cfg = AgentConfig::load(&agent_path).map_err(|e| e.to_string())?;
    let agent = {
        let _g = rt.enter();
        Agent::start(agent_cfg).map_err(|e| e.to_string())?
    };
    let kc = Kubeconfig {
        name: format!("kubehub-{cluster_id}"),
        server: format!(
            "https://127.0.0.1:{}/clusters/{cluster_id}",
            hub.user_addr.port()
        ),
        ca_pem: Some(ca.cert_pem()),
        token: Some(token),
        ..Kubeconfig::default()
    };
    let kc_path = write(dir, "kubeconfig", &kc.to_yaml())?;
    // Wait for the tunnel before telling the user to try it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while hub.registry.connected() == 0 {
        if std::time::Instant::now() > deadline {
            return Err("the agent did not connect to the hub within 10 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let k = format!("kubectl --kubeconfig {}", kc_path.display());
    println!("KubeHub demo is running: kubectl → hub (https://{}) → tunnel → agent → simulated cluster \"{cluster_id}\"", hub.user_addr);
    println!();
    println!("Try:");
    println!("  {k} get pods -A");
    println!("  {k} get pods -A -w            # the cluster changes every few seconds");
    println!("  {k} get deploy,svc -A -o wide");
    println!("  {k} logs -f -n <namespace> <pod>");
    println!("  {k} label pods -n <namespace> --all team=demo && {k} get pods -A --show-labels");
    println!("  {k} apply -f <manifest.yaml>   # JSON-bodied writes; the simulator does not decode protobuf bodies");
    if let Some(a) = hub.admin_addr {
        println!("  curl http://{a}/metrics      # the hub's metrics");
    }
    println!();
    println!(
        "Configuration written to {} (hub.toml, agent.toml, tokens.csv, certs/). Ctrl-C stops.",
        dir.display()
    );
    rt.block_on(wait_for_signal());
    println!("stopping");
    hub.shutdown(std::time::Duration::from_secs(8));
    rt.block_on(agent.stop());
    rt.block_on(sim_server.shutdown());
    Ok(())
}
