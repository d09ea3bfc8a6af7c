//! `kubehub-perf`: KubeHub's load harness.
//!
//! `get` sends open-loop GETs of one URL (requests are scheduled at a constant rate regardless
//! of how fast answers come, and each latency is measured from the request's *scheduled* time,
//! so a stall shows up in the percentiles instead of silently lowering the rate: no
//! coordinated omission), with HDR percentiles and the CPU time per request of the server
//! processes named. The other subcommands start what they measure as processes.
//!
//! ```text
//! kubehub-perf get --url https://127.0.0.1:8443/clusters/demo/api/v1/namespaces/default/configmaps/x \
//!     --token T --ca ca.crt --rate 500 --duration 20 --connections 8 --cpu hub=PID
//! kubehub-perf idle-agents --hub-bin target/release/kubehub --count 1000
//! kubehub-perf bulk --kubehub target/release/kubehub --rounds 3
//! kubehub-perf cached-clusters --kubehub target/release/kubehub --count 1000
//! perf/cache-vs-peers.sh target/release/kubehub-perf target/release/kubehub   # sim, configmaps, wait-synced, get, summary
//! ```

use std::sync::Arc;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

// In a directory of its own: a file next to this one would be taken for another binary.
#[path = "kubehub-perf/bulk.rs"]
mod bulk;
#[path = "kubehub-perf/clusters.rs"]
mod clusters;
#[path = "kubehub-perf/edge.rs"]
mod edge;
#[path = "kubehub-perf/get.rs"]
mod get;
#[path = "kubehub-perf/summary.rs"]
mod summary;
#[path = "kubehub-perf/sys.rs"]
mod sys;

#[derive(Debug, Parser)]
#[command(name = "kubehub-perf", version, about = "KubeHub's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open-loop GETs of one URL at a constant rate: HDR latency percentiles, and optionally
    /// the CPU time per request of server processes and what reached the edge meanwhile.
    Get(get::GetArgs),
    /// Memory of idle agent tunnels: starts `kubehub hub` as its own process, connects many
    /// minimal agents to it, and reports the hub's resident memory per tunnel.
    IdleAgents(IdleArgs),
    /// Throughput of a multi-MB LIST and of many `logs -f` streams through hub + tunnel +
    /// agent vs directly from a TLS simulator, with CPU time per MB (per line) of each process;
    /// starts everything from the `kubehub` binary given, so older builds can be compared.
    Bulk(bulk::BulkArgs),
    /// A simulated edge API server (plain HTTP, `kubehub sim`'s default content, no churn)
    /// whose request log can be read and emptied on a control port: what reached the edge.
    Sim(edge::SimArgs),
    /// Creates a namespace and N realistic ConfigMaps (1.0-1.8 KB of JSON each) on an API server
    /// by POSTing JSON.
    Configmaps(edge::ConfigmapsArgs),
    /// Waits until the hub's cache holds a type for a cluster, synced, with as many objects as
    /// the edge lists (the hub's admin `/clusters`).
    WaitSynced(edge::WaitSyncedArgs),
    /// Medians over rounds of the JSON lines `get --record` wrote, with ratios against peers
    /// measured in the same rounds, as Markdown tables.
    Summary(summary::SummaryArgs),
    /// The hub's memory for many clusters with their types cached: one `kubehub sim
    /// --clusters N` process, one hub process, N real agents in this process.
    CachedClusters(clusters::ClustersArgs),
    /// Writes a development access file for a hub's `[access] file` (tenant `dev`, USER with
    /// every right on CLUSTERS) and prints the user's new token.
    AccessFile(AccessFileArgs),
}

#[derive(Debug, clap::Args)]
struct AccessFileArgs {
    /// Where to write it.
    #[arg(long)]
    out: std::path::PathBuf,
    /// The user.
    #[arg(long, default_value = "perf")]
    user: String,
    /// The clusters (repeat).
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct IdleArgs {
    /// The `kubehub` binary.
    #[arg(long, default_value = "target/release/kubehub")]
    hub_bin: std::path::PathBuf,
    /// Working directory (certificates, hub.toml).
    #[arg(long, default_value = "target/idle-agents")]
    dir: std::path::PathBuf,
    /// Agents to connect.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    cores: usize,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client(ca: Option<&std::path::Path>, conns: usize) -> Result<HttpClient, String> {
    let roots = match ca {
        Some(ca) => kubehub_pki::load_roots(ca).map_err(|e| e.to_string())?,
        None => rustls::RootCertStore::empty(),
    };
    https_client(roots, conns)
}

/// An HTTP/1.1 client over TLS (or plain HTTP) trusting `roots`, keeping up to `conns` idle
/// connections per host.
fn https_client<B>(
    roots: rustls::RootCertStore,
    conns: usize,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>, String>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
{
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(conn))
}

fn main() {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub-perf: {e}");
            std::process::exit(1);
        }
    };
    let res = match cli.command {
        Cmd::Get(a) => rt.block_on(get::run(a)),
        Cmd::IdleAgents(a) => rt.block_on(idle::run(a)),
        Cmd::Bulk(a) => rt.block_on(bulk::run(a)),
        Cmd::Sim(a) => rt.block_on(edge::sim(a)),
        Cmd::Configmaps(a) => rt.block_on(edge::configmaps(a)),
        Cmd::WaitSynced(a) => rt.block_on(edge::wait_synced(a)),
        Cmd::Summary(a) => summary::run(a),
        Cmd::CachedClusters(a) => rt.block_on(clusters::run(a)),
        Cmd::AccessFile(a) => kubehub_hub::access::write_dev_file(&a.out, &a.user, &a.clusters)
            .map(|token| println!("{token}"))
            .map_err(|e| format!("writing {}: {e}", a.out.display())),
    };
    if let Err(e) = res {
        eprintln!("kubehub-perf: {e}");
        std::process::exit(1);
    }
}

mod idle {
    //! `idle-agents`: the hub's memory per idle tunnel.

    use std::sync::Arc;
    use std::time::Duration;

    use kubehub_pki::Ca;
    use kubehub_testkit::agent::{client_tls, ScriptedAgent};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rss_kib(pid: u32) -> Result<u64, String> {
        let s =
            std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| "no VmRSS".to_owned())
    }

    fn write(dir: &std::path::Path, name: &str, text: &str) -> Result<(), String> {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    }

    /// The smallest agent: HELLO, then only answers pings.
    async fn agent(
        addr: std::net::SocketAddr,
        tls: Arc<rustls::ClientConfig>,
        cluster: String,
    ) -> Result<(), String> {
        let mut a = ScriptedAgent::connect(addr, tls).await?;
        a.hello(&cluster, &cluster).await?;
        Err(a.idle().await)
    }

    async fn connected(admin: std::net::SocketAddr) -> Option<usize> {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.ok()?;
        out.lines()
            .find(|l| l.starts_with("kubehub_hub_agents_connected "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }

    fn free_port() -> Result<u16, String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        Ok(l.local_addr().map_err(|e| e.to_string())?.port())
    }

    pub async fn run(a: super::IdleArgs) -> Result<(), String> {
        let dir = &a.dir;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let ca = Ca::generate("idle agents CA").map_err(|e| e.to_string())?;
        let hub = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .map_err(|e| e.to_string())?;
        write(dir, "ca.crt", &ca.cert_pem())?;
        write(dir, "hub.crt", &hub.cert)?;
        write(dir, "hub.key", &hub.key)?;
        kubehub_hub::access::write_dev_file(&dir.join("access.json"), "perf", &["idle".into()])
            .map_err(|e| e.to_string())?;
        let (user, agents, admin) = (free_port()?, free_port()?, free_port()?);
        write(dir, "hub.toml", &format!(
            "cores = {}\n[access]\nfile = \"access.json\"\n[user_listener]\nlisten = \"127.0.0.1:{user}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\n[agent_listener]\nlisten = \"127.0.0.1:{agents}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\nclient_ca = \"ca.crt\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[limits]\nmax_connections = 1000000\n",
            a.cores
        ))?;
        let mut child = std::process::Command::new(&a.hub_bin)
            .args(["--log", "warn", "hub", "--config"])
            .arg(dir.join("hub.toml"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", a.hub_bin.display()))?;
        let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        let agent_addr: std::net::SocketAddr = format!("127.0.0.1:{agents}")
            .parse()
            .map_err(|e| format!("{e}"))?;
        for _ in 0..100 {
            if connected(admin_addr).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut configs = Vec::with_capacity(a.count + 1);
        for i in 0..=a.count {
            let c = ca
                .issue_agent(&format!("idle-{i}"))
                .map_err(|e| e.to_string())?;
            configs.push(client_tls(&ca.cert_pem(), &c)?);
        }
        // Warm the hub up with one tunnel so its per-core structures exist, then measure.
        let mut tasks = Vec::new();
        let first = configs.remove(0);
        tasks.push(tokio::spawn(agent(agent_addr, first, "idle-0".into())));
        while connected(admin_addr).await != Some(1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = rss_kib(child.id())?;
        for (i, cfg) in configs.into_iter().enumerate() {
            tasks.push(tokio::spawn(agent(
                agent_addr,
                cfg,
                format!("idle-{}", i + 1),
            )));
            // Connect in small batches: a burst of simultaneous handshakes would measure the
            // allocator's high-water mark rather than what idle tunnels hold.
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let want = a.count + 1;
        let mut n = 0;
        for _ in 0..600 {
            n = connected(admin_addr).await.unwrap_or(0);
            if n >= want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(child.id())?;
        // SIGTERM, so a hub run under a profiler can write its report.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        for t in tasks {
            t.abort();
        }
        if n < want {
            return Err(format!("only {n} of {want} agents connected"));
        }
        let per = (after.saturating_sub(before)) as f64 / a.count as f64;
        println!(
            "idle tunnels: {} agents, hub RSS {} KiB -> {} KiB: {:.1} KiB per idle tunnel ({} cores)",
            a.count, before, after, per, a.cores
        );
        Ok(())
    }
}
