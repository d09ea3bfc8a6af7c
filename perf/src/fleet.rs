//! Simulated agents at scale: real agents (`kubehub_agent::Agent`: mutual TLS, the tunnel
//! engine, the reflectors that sync the hub's cache), many per thread, each over its own small
//! simulated cluster reached through the simulator's in-process API (no HTTP connection per
//! watch), in processes separate from the hub so that the hub's memory and CPU are its own.
//!
//! * [`FleetArgs`] / [`run_fleet`]: one fleet process (`kubehub-perf fleet`, started by the
//!   scenarios): clusters `PREFIX-FIRST` … `PREFIX-(FIRST+COUNT-1)`, each with a certificate
//!   issued here by the CA whose key it is given (CN = cluster id), agents started at a set
//!   rate, each tunnel from its own source address in 127.0.0.0/8 (`--spread`: ephemeral ports
//!   are per source address, so 28k per address would otherwise cap the fleet), optional
//!   churn on the edge (writes per second over its clusters). It prints one line per second
//!   (`agents N`) and runs until killed.
//! * [`HubUnderTest`]: a `kubehub hub` process for N clusters (dev access file, cache types),
//!   its `/metrics` read for agents connected and clusters synced, restartable.
//! * [`Fleet`]: the fleet processes for N agents, `per_process` at most each (a process has at
//!   most `ulimit -Hn` descriptors: 20,000 on these machines without the privilege to raise
//!   it, one per tunnel).

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use kubehub_agent::upstream::{DownBody, Handler, UpBody, UpstreamClient};
use kubehub_agent::{Agent, AgentConfig, Parts};
use kubehub_pki::Ca;
use kubehub_sim::{Cluster, ClusterConfig, SeedSpec};

use crate::bulk::Procs;
use crate::sys::{free_port, rss_kib};

/// Options of `kubehub-perf fleet` (one fleet process; the scenarios start these).
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// A hub's agent listener, `host:port` (repeat for several hubs: see `--hubs-per-agent`).
    #[arg(long = "hub", required = true)]
    pub hubs: Vec<String>,
    /// Tunnels each agent keeps: to this many of the `--hub`s, chosen by [`agent_hubs`].
    #[arg(long, default_value_t = 1)]
    pub hubs_per_agent: usize,
    /// The CA certificate (PEM) that verifies the hub and signs the agents' certificates.
    #[arg(long)]
    pub ca_cert: PathBuf,
    /// The CA's key (PEM).
    #[arg(long)]
    pub ca_key: PathBuf,
    /// Cluster id prefix.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Index of the first cluster.
    #[arg(long, default_value_t = 0)]
    pub first: usize,
    /// Clusters (agents) in this process.
    #[arg(long)]
    pub count: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Agents started per second.
    #[arg(long, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Each agent dials from its own address in 127.0.0.0/8 (127.0.0.2 + its index).
    #[arg(long)]
    pub spread: bool,
    /// Edge writes per second, spread over this process's clusters (the simulator's churn:
    /// pod restarts and replacements).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    #[command(flatten)]
    pub content: Content,
}

/// What each simulated cluster holds (beyond the 4 system namespaces with their service
/// accounts every cluster has).
#[derive(Debug, Clone, clap::Args)]
pub struct Content {
    /// Application namespaces per cluster.
    #[arg(long, default_value_t = 1)]
    pub namespaces: usize,
    /// Deployments per namespace (each with a ReplicaSet, a Service and its pods).
    #[arg(long, default_value_t = 1)]
    pub deployments: usize,
    /// Pods per deployment.
    #[arg(long, default_value_t = 2)]
    pub pods: usize,
    /// ConfigMaps per namespace.
    #[arg(long, default_value_t = 2)]
    pub configmaps: usize,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
}

impl Content {
    /// The arguments that give a fleet process this content.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--namespaces".into(),
            self.namespaces.to_string(),
            "--deployments".into(),
            self.deployments.to_string(),
            "--pods".into(),
            self.pods.to_string(),
            "--configmaps".into(),
            self.configmaps.to_string(),
            "--nodes".into(),
            self.nodes.to_string(),
        ]
    }

    fn seed(&self) -> SeedSpec {
        SeedSpec {
            namespaces: self.namespaces,
            deployments_per_namespace: self.deployments,
            pods_per_deployment: self.pods,
            configmaps_per_namespace: self.configmaps,
            secrets_per_namespace: 0,
            nodes: self.nodes,
        }
    }
}

/// The in-process edge: requests answered by the simulator's API over `cluster`.
fn in_process(cluster: Arc<Cluster>) -> Handler {
    Arc::new(move |req: http::Request<UpBody>| {
        let cluster = cluster.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = http_body_util::Limited::new(body, kubehub_sim::api::MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("request body: {e}"))?
                .to_bytes();
            let resp =
                kubehub_sim::api::handle(&cluster, http::Request::from_parts(parts, body)).await;
            Ok(resp.map(|b| -> DownBody { b.map_err(|never| match never {}).boxed() }))
        })
    })
}

/// The ConfigMap in `default` of every fleet cluster that the load's writes patch.
pub const WRITTEN: &str = "perf";

/// The source address of agent `i` with `--spread`: 127.0.0.2 + i.
pub fn source_address(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        0x7f00_0002u32.wrapping_add(i as u32) | 0x7f00_0000,
    ))
}

/// The hubs (indexes into `hubs` of `hubs` hubs) agent `i` keeps tunnels to, in order:
/// `per_agent` consecutive hubs from `i mod hubs` on, so that the agents are spread evenly
/// over the sets (3 hubs, 2 each: AB, BC, CA, AB, …); every other cycle lists its set in the
/// reverse order (BA, CB, AC, …), so that both orders appear where the order matters (the
/// directory's holders are tried in it).
pub fn agent_hubs(i: usize, hubs: usize, per_agent: usize) -> Vec<usize> {
    let hubs = hubs.max(1);
    let mut v: Vec<usize> = (0..per_agent.clamp(1, hubs))
        .map(|j| (i + j) % hubs)
        .collect();
    if (i / hubs) % 2 == 1 {
        v.reverse();
    }
    v
}

fn agent_config(a: &FleetArgs, cluster: &str, i: usize) -> AgentConfig {
    let hubs: Vec<String> = agent_hubs(i, a.hubs.len(), a.hubs_per_agent)
        .into_iter()
        .map(|h| a.hubs[h].clone())
        .collect();
    let first = hubs.first().cloned().unwrap_or_default();
    AgentConfig {
        cluster_id: cluster.to_owned(),
        agent_id: None,
        hubs,
        labels: Default::default(),
        local_address: a.spread.then(|| source_address(i)),
        tls: kubehub_agent::config::Tls {
            server_name: Some(
                kubehub_agent::config::host_of(&first)
                    .trim_matches(['[', ']'])
                    .to_owned(),
            ),
            ..Default::default()
        },
        meta: None,
        upstream: kubehub_agent::config::Upstream {
            url: format!("inproc://{cluster}"),
            ca: None,
            token: None,
            token_file: None,
            client_cert: None,
            client_key: None,
        },
        admin: None,
        limits: Default::default(),
        reconnect: Default::default(),
        sync: Default::default(),
        plugins: Default::default(),
    }
}

/// One agent with its cluster.
fn start_agent(
    a: &FleetArgs,
    ca: &Ca,
    roots: &rustls::RootCertStore,
    i: usize,
) -> Result<(Agent, Arc<Cluster>), String> {
    let name = format!("{}-{}", a.prefix, a.first + i);
    let cluster = Cluster::new(
        name.clone(),
        ClusterConfig {
            // Small clusters: a short history, a small watch buffer (the broadcast channel
            // allocates every slot up front).
            history_window: 256,
            watch_buffer: 64,
            seed: (a.first + i) as u64,
            ..ClusterConfig::default()
        },
    );
    kubehub_sim::seed(&cluster, &a.content.seed()).map_err(|e| format!("{name}: seed: {e}"))?;
    // The object the load's writes change (`PATCH default/configmaps/perf`).
    let cms = cluster
        .type_index("", "v1", "configmaps")
        .ok_or_else(|| format!("{name}: no configmaps type"))?;
    cluster
        .create(
            cms,
            Some("default"),
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": WRITTEN, "namespace": "default"}, "data": {"n": "0"}}),
            false,
        )
        .map_err(|e| format!("{name}: {e}"))?;
    let cert = ca
        .issue_agent(&name)
        .map_err(|e| format!("{name}: certificate: {e}"))?;
    let client_cert = Arc::new(
        kubehub_pki::ReloadingClientCert::new(
            kubehub_pki::parse_certs(&cert.cert).map_err(|e| e.to_string())?,
            kubehub_pki::parse_key(&cert.key).map_err(|e| e.to_string())?,
        )
        .map_err(|e| format!("{name}: {e}"))?,
    );
    let parts = Parts {
        client_cert,
        cert_pem: cert.cert,
        roots: roots.clone(),
        upstream: UpstreamClient::in_process(
            format!("inproc://{name}"),
            in_process(cluster.clone()),
        ),
    };
    let agent = Agent::start_with(agent_config(a, &name, a.first + i), parts)
        .map_err(|e| format!("{name}: {e}"))?;
    Ok((agent, cluster))
}

/// `kubehub-perf fleet`: builds its own runtime with `--threads` workers.
pub fn run_fleet(a: FleetArgs) -> Result<(), String> {
    crate::sys::need_files(
        (a.count * a.hubs_per_agent.clamp(1, a.hubs.len().max(1))) as u64 + 64,
        &format!(
            "{} agents in one fleet process (use more processes, fewer agents each)",
            a.count
        ),
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.threads.max(1))
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(fleet(a))
}

async fn fleet(a: FleetArgs) -> Result<(), String> {
    let ca = Ca::from_pem(
        &std::fs::read_to_string(&a.ca_cert)
            .map_err(|e| format!("{}: {e}", a.ca_cert.display()))?,
        &std::fs::read_to_string(&a.ca_key).map_err(|e| format!("{}: {e}", a.ca_key.display()))?,
    )
    .map_err(|e| e.to_string())?;
    let roots = crate::roots(Some(&ca.cert_pem()))?;
    let mut agents = Vec::with_capacity(a.count);
    let mut clusters = Vec::with_capacity(a.count);
    let period = Duration::from_secs_f64(1.0 / a.connect_rate.max(1.0));
    let start = Instant::now();
    let mut last = Instant::now();
    for i in 0..a.count {
        let due = start + period.mul_f64(i as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let (agent, cluster) = start_agent(&a, &ca, &roots, i)?;
        agents.push(agent);
        clusters.push(cluster);
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            println!("started {}", agents.len());
        }
    }
    println!("started {}", agents.len());
    let churn = (a.churn > 0.0 && !clusters.is_empty()).then(|| {
        let clusters = clusters.clone();
        let rate = a.churn;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            let mut n = 0usize;
            loop {
                tick.tick().await;
                n = n.wrapping_add(7919);
                let c = &clusters[n % clusters.len()];
                if let Err(e) = kubehub_sim::seed::churn_once(c) {
                    tracing::debug!("churn: {e}");
                }
            }
        })
    });
    // Until killed: report the tunnels that are up.
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let up = agents
            .iter()
            .filter(|x| x.metrics.connected.get() > 0)
            .count();
        println!("agents {up}");
        if churn.as_ref().is_some_and(|t| t.is_finished()) {
            return Err("the churn task ended".into());
        }
    }
}

/// A `kubehub hub` under test, for clusters `PREFIX-0..N`, with a dev access file.
#[derive(Debug)]
pub struct HubUnderTest {
    /// Working directory.
    pub dir: PathBuf,
    bin: PathBuf,
    /// Its process (and nothing else).
    pub procs: Procs,
    /// The user listener's base URL.
    pub url: String,
    /// The agent listener, `127.0.0.1:port`.
    pub agents_addr: String,
    /// `/metrics`.
    pub metrics_url: String,
    /// The dev user's token.
    pub token: String,
    /// The CA (PEM) of every certificate.
    pub ca_pem: String,
    /// The hub's pid.
    pub pid: u32,
}

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct HubSpec {
    /// The `kubehub` binary.
    pub kubehub: PathBuf,
    /// Working directory.
    pub dir: PathBuf,
    /// Worker threads.
    pub cores: usize,
    /// Cluster id prefix and count (`PREFIX-0` …).
    pub prefix: String,
    /// Clusters.
    pub clusters: usize,
    /// `[cache] types`; empty: the hub's default set.
    pub cache_types: Vec<String>,
}

impl HubUnderTest {
    /// Writes the CA (`ca.crt`, `ca.key`: the fleet processes issue their agents'
    /// certificates with it), the hub's certificate, the access file and hub.toml, and starts
    /// the hub.
    pub async fn start(s: &HubSpec) -> Result<HubUnderTest, String> {
        let dir = std::path::absolute(&s.dir).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let w = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
        };
        let ca = Ca::generate("kubehub-perf CA").map_err(|e| e.to_string())?;
        let hub = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .map_err(|e| e.to_string())?;
        w("ca.crt", &ca.cert_pem())?;
        w("ca.key", &ca.key_pem())?;
        w("hub.crt", &hub.cert)?;
        w("hub.key", &hub.key)?;
        let names: Vec<String> = (0..s.clusters)
            .map(|i| format!("{}-{i}", s.prefix))
            .collect();
        let token = kubehub_hub::access::write_dev_file(&dir.join("access.json"), "perf", &names)
            .map_err(|e| format!("access.json: {e}"))?;
        let (user, agents, admin) = (free_port()?, free_port()?, free_port()?);
        let types = if s.cache_types.is_empty() {
            String::new()
        } else {
            format!(
                "types = [{}]\n",
                s.cache_types
                    .iter()
                    .map(|t| format!("\"{t}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        w(
            "hub.toml",
            &format!(
                "id = \"hub-perf\"\ncores = {}\nimpersonate = false\n[access]\nfile = \"access.json\"\n\
                 [user_listener]\nlisten = \"127.0.0.1:{user}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\n\
                 [agent_listener]\nlisten = \"127.0.0.1:{agents}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\nclient_ca = \"ca.crt\"\n\
                 [admin]\nlisten = \"127.0.0.1:{admin}\"\n[limits]\nmax_connections = 1000000\n[cache]\n{types}",
                s.cores
            ),
        )?;
        let mut h = HubUnderTest {
            dir,
            bin: std::path::absolute(&s.kubehub).map_err(|e| e.to_string())?,
            procs: Procs::default(),
            url: format!("https://127.0.0.1:{user}"),
            agents_addr: format!("127.0.0.1:{agents}"),
            metrics_url: format!("http://127.0.0.1:{admin}/metrics"),
            token,
            ca_pem: ca.cert_pem(),
            pid: 0,
        };
        h.spawn().await?;
        Ok(h)
    }

    async fn spawn(&mut self) -> Result<(), String> {
        self.pid = self.procs.start(
            "hub",
            &self.bin,
            &self.dir,
            &["hub", "--config", "hub.toml"],
        )?;
        let client = crate::client(None, 1)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while crate::edge::get_bytes(&client, &self.metrics_url)
            .await
            .is_err()
        {
            self.procs.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!(
                    "the hub did not answer on {} within 30 s; see {}",
                    self.metrics_url,
                    self.dir.join("hub.log").display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Kills the hub (SIGKILL: no goodbye to its agents) and starts it again with the same
    /// configuration; returns when it answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        // Dropping the processes kills (SIGKILL) and reaps them.
        drop(std::mem::take(&mut self.procs));
        self.spawn().await
    }

    /// The hub's resident memory (KiB).
    pub fn rss_kib(&self) -> Result<u64, String> {
        rss_kib(self.pid)
    }

    /// Agents connected and, per cached type, clusters synced, from `/metrics`.
    pub async fn progress(&self, client: &crate::HttpClient) -> Option<Progress> {
        let body = crate::edge::get_bytes(client, &self.metrics_url)
            .await
            .ok()?;
        let (agents, synced) = crate::stack::parse_metrics(&String::from_utf8_lossy(&body));
        Some(Progress {
            agents,
            types: synced.len(),
            synced: synced.iter().map(|(_, v)| *v).min().unwrap_or(0),
        })
    }
}

/// What the hub's metrics say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Agents connected.
    pub agents: u64,
    /// Cached types seen.
    pub types: usize,
    /// Clusters synced for every cached type (the least over types).
    pub synced: u64,
}

/// Fleet processes: N agents over as many processes as the descriptor limit needs.
#[derive(Debug)]
pub struct Fleet {
    children: Vec<Child>,
    /// Their pids.
    pub pids: Vec<u32>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How to start a fleet.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// Agents in all.
    pub agents: usize,
    /// Agents per process at most.
    pub per_process: usize,
    /// Runtime threads per process.
    pub threads: usize,
    /// Agents started per second, over all processes.
    pub connect_rate: f64,
    /// Edge writes per second, over all processes.
    pub churn: f64,
    /// Cluster content.
    pub content: Content,
}

impl Fleet {
    /// Starts the fleet processes (this very binary, `fleet` subcommand) against `hub`.
    pub fn start(hub: &HubUnderTest, s: &FleetSpec) -> Result<Fleet, String> {
        Fleet::start_with(std::slice::from_ref(&hub.agents_addr), 1, &hub.dir, s)
    }

    /// Starts the fleet processes against several hubs (agent listeners, `host:port`), each
    /// agent keeping tunnels to `per_agent` of them ([`agent_hubs`]); `dir` holds the CA
    /// (`ca.crt`, `ca.key`) and receives the logs (`fleet-N.log`).
    pub fn start_with(
        hubs: &[String],
        per_agent: usize,
        dir: &std::path::Path,
        s: &FleetSpec,
    ) -> Result<Fleet, String> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let procs = s.agents.div_ceil(s.per_process.max(1)).max(1);
        let mut f = Fleet {
            children: Vec::new(),
            pids: Vec::new(),
        };
        let mut first = 0;
        for p in 0..procs {
            let count = (s.agents - first).min(s.agents.div_ceil(procs));
            let log = std::fs::File::create(dir.join(format!("fleet-{p}.log")))
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(&me);
            cmd.arg("fleet");
            for h in hubs {
                cmd.args(["--hub", h]);
            }
            let child = cmd
                .args(["--hubs-per-agent", &per_agent.to_string()])
                .arg("--ca-cert")
                .arg(dir.join("ca.crt"))
                .arg("--ca-key")
                .arg(dir.join("ca.key"))
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .args(["--threads", &s.threads.to_string()])
                .args([
                    "--connect-rate",
                    &(s.connect_rate / procs as f64).to_string(),
                ])
                .args(["--churn", &(s.churn / procs as f64).to_string()])
                .arg("--spread")
                .args(s.content.args())
                .env("RUST_LOG", "error")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("starting {} fleet: {e}", me.display()))?;
            f.pids.push(child.id());
            f.children.push(child);
            first += count;
        }
        Ok(f)
    }

    /// An error naming a fleet process that exited (see its log in the hub's directory).
    pub fn check_alive(&mut self) -> Result<(), String> {
        for (i, c) in self.children.iter_mut().enumerate() {
            if let Ok(Some(st)) = c.try_wait() {
                return Err(format!(
                    "fleet process {i} exited ({st}); see fleet-{i}.log"
                ));
            }
        }
        Ok(())
    }

    /// Resident memory of all fleet processes (KiB).
    pub fn rss_kib(&self) -> u64 {
        self.pids.iter().filter_map(|p| rss_kib(*p).ok()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::agent_hubs;

    #[test]
    fn agents_spread_over_pairs_in_both_orders() {
        let sets: Vec<Vec<usize>> = (0..6).map(|i| agent_hubs(i, 3, 2)).collect();
        assert_eq!(
            sets,
            [[0, 1], [1, 2], [2, 0], [1, 0], [2, 1], [0, 2]].map(|s| s.to_vec())
        );
        assert_eq!(agent_hubs(7, 3, 2), [1, 2], "the cycle repeats");
        // One hub: every agent dials it, whatever it asks for.
        assert_eq!(agent_hubs(5, 1, 1), [0]);
        assert_eq!(agent_hubs(5, 1, 2), [0]);
    }
}
