//! `kubehub certs`, `kubehub hub`, `kubehub agent` and `kubehub demo`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use kubehub_agent::{Agent, AgentConfig};
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

/// Options of `kubehub hub`.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// The TOML configuration file (hub/src/config.rs documents every option).
    #[arg(long)]
    pub config: PathBuf,
    /// Join token from the metaserver (`kubehub ctl hub-join-token ID --name NAME...`); needs
    /// `[meta] state_dir` in hub.toml, and only on the first start: later starts reuse the
    /// certificate saved there (and renew it before it expires).
    #[arg(long, env = "KUBEHUB_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
}

/// Options of `kubehub agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The TOML configuration file (agent/src/config.rs documents every option). Optional when
    /// enrolling with the metaserver (--meta and --state-dir).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Join token from the metaserver (khJ.<id>.<secret>.<CA hash>); needed on the first
    /// start only: later starts reuse the certificate saved in the state directory.
    #[arg(long, env = "KUBEHUB_JOIN_TOKEN", hide_env_values = true)]
    pub join: Option<String>,
    /// The metaserver, https://host:port (overrides `[meta] url`).
    #[arg(long)]
    pub meta: Option<String>,
    /// Where the agent keeps its key, certificate, CA and hub list (overrides
    /// `[meta] state_dir`).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The edge API server when there is no --config (default: in a pod, the cluster's own
    /// API server with the pod's service account).
    #[arg(long)]
    pub upstream: Option<String>,
}

/// The agent's configuration: agent.toml, completed by the command line.
fn agent_config(args: &AgentArgs) -> Result<AgentConfig, String> {
    use kubehub_agent::config::{in_cluster_upstream, Meta, Upstream};
    let mut cfg = match &args.config {
        Some(path) => AgentConfig::read(path).map_err(|e| e.to_string())?,
        None => {
            let (Some(url), Some(dir)) = (&args.meta, &args.state_dir) else {
                return Err(
                    "--config is required, unless the agent enrolls with the metaserver \
                     (--meta and --state-dir, and --join the first time)"
                        .into(),
                );
            };
            let upstream = match &args.upstream {
                Some(url) => Upstream {
                    url: url.clone(),
                    ca: None,
                    token: None,
                    token_file: None,
                    client_cert: None,
                    client_key: None,
                },
                None => in_cluster_upstream().ok_or(
                    "--upstream is required outside a pod (or use --config with [upstream])",
                )?,
            };
            AgentConfig::enrolling(Meta::new(url.clone(), dir.clone()), upstream)
        }
    };
    if args.config.is_some() && args.upstream.is_some() {
        return Err("--upstream goes without --config (agent.toml has [upstream])".into());
    }
    match (&mut cfg.meta, &args.meta, &args.state_dir) {
        (Some(meta), url, dir) => {
            if let Some(url) = url {
                meta.url = url.clone();
            }
            if let Some(dir) = dir {
                meta.state_dir = dir.clone();
            }
        }
        (None, Some(url), Some(dir)) => cfg.meta = Some(Meta::new(url.clone(), dir.clone())),
        (None, None, None) => {}
        (None, _, _) => {
            return Err("--meta and --state-dir go together (or put [meta] in agent.toml)".into())
        }
    }
    if args.join.is_some() && cfg.meta.is_none() {
        return Err(
            "--join needs the metaserver: --meta and --state-dir, or [meta] in agent.toml".into(),
        );
    }
    cfg.validate().map_err(|e| e.to_string())?;
    Ok(cfg)
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
pub fn hub(args: HubArgs) -> i32 {
    let cfg = match HubConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubehub hub: {e}");
            return 2;
        }
    };
    let drain = std::time::Duration::from_millis(cfg.limits.drain_timeout_ms);
    let hub = match kubehub_hub::server::join_and_start(cfg, args.join.as_deref()) {
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
    // Draining: /readyz answers 503, agents get GOAWAY (and move to their other hubs), users'
    // new requests go to other hubs that hold their clusters, answers say Connection: close.
    // The hub keeps serving users for the whole drain time, so that requests started during
    // it finish, then exits.
    let began = std::time::Instant::now();
    tracing::info!(
        ?drain,
        "draining: agents get GOAWAY, users are served through other hubs"
    );
    if !hub.shutdown(drain + std::time::Duration::from_secs(5)) {
        tracing::warn!("tunnels still open after the drain; exiting anyway");
    }
    std::thread::sleep(drain.saturating_sub(began.elapsed()));
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
pub fn agent(args: AgentArgs) -> i32 {
    let cfg = match agent_config(&args) {
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
        let agent = match Agent::join_and_start(cfg, args.join.as_deref()).await {
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
    for sub in ["meta", "hub", "agent"] {
        std::fs::create_dir_all(dir.join(sub))
            .map_err(|e| format!("creating {}: {e}", dir.join(sub).display()))?;
    }
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
    // The metaserver, on its embedded store (kept across runs in DIR/meta).
    let meta_toml = r#"# Written by `kubehub demo`. Every option is documented in meta/src/config.rs.
listen = "127.0.0.1:0"
admin_token_file = "meta/admin.token"
# hub_url is left out: kubeconfigs point at a live registered hub.

[store]
backend = "embedded"
path = "meta/meta.redb"
"#;
    let meta_path = write(dir, "meta.toml", meta_toml)?;
    let meta_cfg = kubehub_meta::config::MetaConfig::load(&meta_path).map_err(|e| e.to_string())?;
    let (meta, meta_server) = rt.block_on(async {
        let meta = kubehub_meta::service::Meta::start(meta_cfg)
            .await
            .map_err(|e| format!("starting meta: {e}"))?;
        let server = kubehub_meta::server::start(meta.clone())
            .await
            .map_err(|e| format!("starting meta: {e}"))?;
        Ok::<_, String>((meta, server))
    })?;
    let meta_url = format!("https://{}", meta_server.addr);
    write(dir, "meta/ca.crt", meta.ca_pem())?;
    // What an administrator would do with `kubehub ctl`: a tenant, a user, the cluster, a
    // grant. Done in-process; a second run finds them there.
    rt.block_on(demo_records(&meta, cluster_id))?;
    // The hub, from a hub.toml a user can read and reuse: it enrolls with meta the way
    // `kubehub hub --join` does (its key stays in DIR/hub, meta signs its certificate), the
    // first time with a hub join token (`kubehub ctl hub-join-token`); later runs reuse it.
    let hub_toml = format!(
        r#"# Written by `kubehub demo`. Every option is documented in hub/src/config.rs.
id = "hub-demo"
cores = 0
impersonate = false    # the simulator does not implement impersonation
environment = "demo"   # the demo cluster's environment: hubs serve only their own

[meta]                 # access data (tenants, users, grants, tokens), the registry, and the
url = "{meta_url}"     # hub's certificate:
state_dir = "hub"      # its key, the certificate meta signed (renewed before it expires) and
                       # meta's CA, from `kubehub hub --join`; the listeners serve that
                       # certificate, agents are checked against meta's CA

[user_listener]
listen = "127.0.0.1:{port}"

[agent_listener]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
"#,
        port = args.port
    );
    let hub_path = write(dir, "hub.toml", &hub_toml)?;
    let hub_cfg = HubConfig::load(&hub_path).map_err(|e| e.to_string())?;
    let hub_join = if hub_enrolled(&dir.join("hub")) {
        None
    } else {
        Some(
            rt.block_on(meta.hub_join_token(
                &kubehub_meta::service::Caller::Admin,
                "hub-demo",
                vec!["localhost".into(), "127.0.0.1".into()],
            ))
            .map_err(|e| format!("a join token for the hub: {e}"))?,
        )
    };
    let hub = kubehub_hub::server::join_and_start(hub_cfg, hub_join.as_deref())
        .map_err(|e| format!("starting the hub: {e}"))?;
    // The hub registers with meta; enrollment tells the agent where the live hubs are.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while rt
        .block_on(meta.hubs())
        .map(|h| h.is_empty())
        .unwrap_or(true)
    {
        if std::time::Instant::now() > deadline {
            return Err("the hub did not register with meta within 15 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The agent enrolls with a join token the first time; later runs reuse its certificate.
    let agent_toml = format!(
        r#"# Written by `kubehub demo`. Every option is documented in agent/src/config.rs.
# cluster_id and hubs come from the enrollment with meta.

[meta]
url = "{meta_url}"
state_dir = "agent"    # the agent's key, certificate and enrollment

[upstream]
url = "http://{sim}"

[plugins.native]       # commands users may run on the edge host (`kubehub ctl native`)
[[plugins.native.commands]]
name = "uptime"
description = "How long the host has been up (seconds), and its load averages"
argv = ["cat", "/proc/uptime", "/proc/loadavg"]

[[plugins.native.commands]]
name = "df"
description = "Disk space of a file system"
argv = ["df", "-h", "{{path}}"]
args.path = {{ values = ["/", "/tmp"] }}
"#,
        sim = sim_server.local_addr()
    );
    let agent_path = write(dir, "agent.toml", &agent_toml)?;
    let agent_cfg = AgentConfig::read(&agent_path).map_err(|e| e.to_string())?;
    let join = rt
        .block_on(meta.cluster_join_token(&kubehub_meta::service::Caller::Admin, cluster_id))
        .map_err(|e| e.to_string())?;
    let agent = rt
        .block_on(Agent::join_and_start(agent_cfg, Some(&join)))
        .map_err(|e| format!("starting the agent: {e}"))?;
    // The user's kubeconfig, issued by meta (replacing the previous run's token).
    let issued = rt
        .block_on(meta.kubeconfig(
            &kubehub_meta::service::Caller::Admin,
            kubehub_meta::service::KubeconfigRequest {
                user: Some("demo".into()),
                clusters: vec![cluster_id.into()],
                description: "kubehub demo".into(),
                replace: true,
                ..Default::default()
            },
        ))
        .map_err(|e| format!("issuing the kubeconfig: {e}"))?;
    let kc_path = dir.join("kubeconfig");
    kubehub_meta::service::write_private(&kc_path, &issued.kubeconfig)
        .map_err(|e| format!("writing {}: {e}", kc_path.display()))?;
    // Wait for the tunnel and the access data before telling the user to try it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while hub.registry.connected() == 0 || hub.access.index.revision() == 0 {
        if std::time::Instant::now() > deadline {
            return Err("the agent did not connect to the hub within 15 s".into());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let k = format!("kubectl --kubeconfig {}", kc_path.display());
    println!("KubeHub demo is running: kubectl → hub (https://{}) → tunnel → agent → simulated cluster \"{cluster_id}\"", hub.user_addr);
    println!("                         meta (https://{}) issued the kubeconfig, enrolled the agent and the hub", meta_server.addr);
    println!();
    println!("Try:");
    println!("  {k} get pods -A");
    println!("  {k} get pods -A -w            # the cluster changes every few seconds");
    println!("  {k} get deploy,svc -A -o wide");
    println!("  {k} logs -f -n <namespace> <pod>");
    println!("  {k} exec -it -n <namespace> <pod> -- sh          # also exec -i, attach, cp");
    println!("  {k} port-forward -n <namespace> pod/<pod> 8080:<port> & curl localhost:8080/");
    println!("  {k} label pods -n <namespace> --all team=demo && {k} get pods -A --show-labels");
    println!("  {k} auth can-i delete pods -n default");
    println!("  {k} create deployment web --image=nginx && {k} rollout status deployment/web");
    println!("  {k} apply --server-side -f <manifest.yaml>");
    let kc = kc_path.display();
    println!(
        "  kubehub ctl native --kubeconfig {kc} --list   # commands the agent may run on its host"
    );
    println!("  kubehub ctl native --kubeconfig {kc} df path=/");
    println!("  kubehub ctl host --kubeconfig {kc}            # the edge host's facts");
    if let Some(a) = hub.admin_addr {
        println!("  curl http://{a}/metrics      # the hub's metrics");
    }
    println!("The metaserver's command line:");
    println!(
        "  export KUBEHUB_META={meta_url} KUBEHUB_META_CA={} KUBEHUB_META_TOKEN_FILE={}",
        dir.join("meta/ca.crt").display(),
        dir.join("meta/admin.token").display()
    );
    println!(
        "  kubehub ctl hubs; kubehub ctl agents; kubehub ctl grant list; kubehub ctl token list"
    );
    println!("  kubehub ctl user create bob --tenant demo && kubehub ctl grant create view --tenant demo --user bob --cluster {cluster_id} --verbs get,list,watch --resources pods");
    println!("  kubehub ctl kubeconfig --user bob > bob.kubeconfig");
    println!();
    println!(
        "Configuration written to {} (meta.toml, hub.toml, agent.toml, kubeconfig; meta/, hub/, agent/). Ctrl-C stops.",
        dir.display()
    );
    rt.block_on(wait_for_signal());
    println!("stopping");
    hub.shutdown(std::time::Duration::from_secs(8));
    rt.block_on(agent.stop());
    rt.block_on(meta_server.stop());
    rt.block_on(sim_server.shutdown());
    Ok(())
}

/// Whether the hub's state directory holds a certificate still valid for a minute (else the
/// hub joins again).
fn hub_enrolled(state_dir: &Path) -> bool {
    std::fs::read_to_string(state_dir.join("hub.crt"))
        .ok()
        .and_then(|pem| kubehub_pki::cert_info(&pem).ok())
        .is_some_and(|info| {
            info.not_after > std::time::SystemTime::now() + std::time::Duration::from_secs(60)
        })
}

/// The demo's tenant, user, cluster and grant (kept when they exist from an earlier run).
async fn demo_records(meta: &kubehub_meta::service::Meta, cluster: &str) -> Result<(), String> {
    use kubehub_access::model::{Cluster, ClusterSelector, Grant, Subject, Tenant, User};
    use kubehub_meta::error::MetaError;
    use kubehub_meta::service::Caller;
    let admin = Caller::Admin;
    let keep = |r: Result<(), MetaError>| match r {
        Ok(()) | Err(MetaError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    keep(
        meta.create_tenant(
            &admin,
            Tenant {
                name: "demo".into(),
                display_name: "the demo".into(),
            },
        )
        .await
        .map(drop),
    )?;
    keep(
        meta.create_user(
            &admin,
            User {
                name: "demo".into(),
                tenant: "demo".into(),
                groups: vec![],
                admin: true,
            },
        )
        .await
        .map(drop),
    )?;
    keep(
        meta.create_cluster(
            &admin,
            Cluster {
                id: cluster.into(),
                display_name: "simulated edge cluster".into(),
                tenant: "demo".into(),
                labels: [("env".to_owned(), "demo".to_owned())].into(),
                environment: "demo".into(),
            },
        )
        .await
        .map(drop),
    )?;
    keep(
        meta.create_grant(
            &admin,
            Grant {
                name: "everything".into(),
                tenant: "demo".into(),
                subject: Subject::User {
                    name: "demo".into(),
                },
                clusters: ClusterSelector {
                    ids: vec![cluster.into()],
                    labels: Default::default(),
                },
                rules: kubehub_access::build::everything(),
            },
        )
        .await
        .map(drop),
    )
}
