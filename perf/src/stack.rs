//! One edge cluster behind KubeHub, as processes started from one `kubehub` binary: the
//! set-up every scenario that measures the real hub shares (`bulk`, `fanout`, `hol`, the peers
//! comparisons), and its pieces for the scenarios that start more than one cluster
//! (`cached-clusters`).
//!
//! [`Stack::start`] starts, in `dir`:
//!
//! * `kubehub sim` on plain HTTP on loopback (the agent's upstream, as in `kubehub demo`; its
//!   content from extra arguments: `--namespaces`, `--configmaps`, `--log-interval-ms`, ...);
//! * `kubehub hub` from a hub.toml written there ([`HubToml`]: `cores`, `[access] file` (a dev
//!   access file whose token is [`Stack::token`]), the user listener with a server certificate
//!   for 127.0.0.1 and localhost, the agent listener with the client CA, `[admin]`, `[cache]`,
//!   `[limits]`);
//! * `kubehub agent` from an agent.toml (its certificate's CN is the cluster id; the hub; the
//!   simulator as upstream);
//!
//! and waits until the agent is connected and every cached type is synced (the hub's admin
//! `/metrics`). The processes are killed when the [`Stack`] is dropped; the hub can be stopped
//! and started again with the same configuration ([`Stack::restart_hub`]).

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kubehub_pki::Ca;

use crate::report::ProcStats;
use crate::sys::{cpu_delta, cpu_sample, free_port, rss_kib, CpuSample};

/// Writes `text` to `dir/name`, naming the file in the error.
pub fn write_file(dir: &Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
}

/// How a process is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash (nothing flushed, no GOAWAY).
    Kill,
    /// SIGTERM, then SIGKILL if it has not exited within 10 s: a graceful shutdown.
    Term,
}

#[derive(Debug)]
struct Proc {
    name: &'static str,
    /// `None` once stopped (until started again).
    child: Option<Child>,
    bin: PathBuf,
    dir: PathBuf,
    args: Vec<String>,
}

/// Started processes, killed when dropped (also on errors).
#[derive(Debug, Default)]
pub struct Procs(Vec<Proc>);

fn spawn(
    name: &str,
    bin: &Path,
    dir: &Path,
    args: &[String],
    append: bool,
) -> Result<Child, String> {
    let path = dir.join(format!("{name}.log"));
    let log = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Command::new(bin)
        .args(["--log", "warn"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting {} ({name}): {e}", bin.display()))
}

impl Procs {
    /// Starts `bin --log warn ARGS` in `dir`, stderr to `dir/NAME.log`; returns its pid.
    pub fn start(
        &mut self,
        name: &'static str,
        bin: &Path,
        dir: &Path,
        args: &[&str],
    ) -> Result<u32, String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let child = spawn(name, bin, dir, &args, false)?;
        let pid = child.id();
        self.0.push(Proc {
            name,
            child: Some(child),
            bin: bin.to_owned(),
            dir: dir.to_owned(),
            args,
        });
        Ok(pid)
    }

    /// An error naming the first process that exited (stopped ones excepted).
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.0 {
            if let Some(c) = &mut p.child {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(format!(
                        "{} exited ({st}); see {}",
                        p.name,
                        p.dir.join(format!("{}.log", p.name)).display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The pid of the running process `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.0
            .iter()
            .find(|p| p.name == name)
            .and_then(|p| p.child.as_ref())
            .map(Child::id)
    }

    /// The running processes' names and pids, in the order started.
    pub fn pids(&self) -> Vec<(&'static str, u32)> {
        self.0
            .iter()
            .filter_map(|p| p.child.as_ref().map(|c| (p.name, c.id())))
            .collect()
    }

    fn find(&mut self, name: &str) -> Result<&mut Proc, String> {
        self.0
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| format!("no process {name} was started"))
    }

    /// Stops `name` and waits until it has exited.
    pub async fn stop(&mut self, name: &str, how: Stop) -> Result<(), String> {
        let p = self.find(name)?;
        let Some(mut child) = p.child.take() else {
            return Ok(());
        };
        if how == Stop::Term {
            // No signal API without `unsafe` here: kill(1) sends it (if it cannot, SIGKILL
            // below: the child is ours to end either way).
            let sent = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .is_ok_and(|st| st.success());
            if sent {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        let _ = child.kill();
        child
            .wait()
            .map_err(|e| format!("waiting for {name}: {e}"))?;
        Ok(())
    }

    /// Starts a stopped process again with the same arguments (its log is appended to);
    /// returns the new pid.
    pub fn restart(&mut self, name: &str) -> Result<u32, String> {
        let p = self.find(name)?;
        if p.child.is_some() {
            return Err(format!("{name} is running: stop it first"));
        }
        let child = spawn(p.name, &p.bin, &p.dir, &p.args, true)?;
        let pid = child.id();
        p.child = Some(child);
        Ok(pid)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in &mut self.0 {
            if let Some(c) = &mut p.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A CA and a server certificate for `localhost` and `127.0.0.1` it signed, written as
/// `ca.crt`, `hub.crt` and `hub.key`.
#[derive(Debug)]
pub struct Pki {
    /// Issues the agents' certificates.
    pub ca: Ca,
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
}

impl Pki {
    /// A new CA named `name`, its server certificate, both written into `dir`.
    pub fn write(dir: &Path, name: &str) -> Result<Pki, String> {
        let ca = Ca::generate(name).map_err(|e| e.to_string())?;
        let server = ca
            .issue_server(&["localhost", "127.0.0.1"])
            .map_err(|e| e.to_string())?;
        let ca_pem = ca.cert_pem();
        write_file(dir, "ca.crt", &ca_pem)?;
        write_file(dir, "hub.crt", &server.cert)?;
        write_file(dir, "hub.key", &server.key)?;
        Ok(Pki {
            ca,
            ca_pem,
            cert_pem: server.cert,
            key_pem: server.key,
        })
    }

    /// An agent certificate for `cluster` (CN = the cluster id), written as `dir/CERT` and
    /// `dir/KEY`.
    pub fn write_agent(
        &self,
        dir: &Path,
        cluster: &str,
        cert: &str,
        key: &str,
    ) -> Result<(), String> {
        let c = self
            .ca
            .issue_agent(cluster)
            .map_err(|e| format!("agent certificate for {cluster}: {e}"))?;
        write_file(dir, cert, &c.cert)?;
        write_file(dir, key, &c.key)
    }
}

/// What the hub caches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheMode {
    /// No `[cache]` section: the hub's default types.
    Default,
    /// `[cache] enabled = false`: everything is forwarded.
    Disabled,
    /// `[cache] types = [...]` (`v1/configmaps`, `apps/v1/deployments`).
    Types(Vec<String>),
}

impl CacheMode {
    /// Whether the hub caches anything.
    pub fn enabled(&self) -> bool {
        *self != CacheMode::Disabled
    }
}

/// A hub.toml with the certificates of [`Pki::write`] and the access file `access.json`.
#[derive(Debug, Clone)]
pub struct HubToml {
    /// `id`.
    pub id: String,
    /// `cores`.
    pub cores: usize,
    /// `clusters` (the agents that may connect).
    pub clusters: Vec<String>,
    /// Port of the user listener on 127.0.0.1.
    pub user_port: u16,
    /// Port of the agent listener on 127.0.0.1.
    pub agent_port: u16,
    /// Port of the admin listener on 127.0.0.1.
    pub admin_port: u16,
    /// `[cache]`.
    pub cache: CacheMode,
    /// `[limits]` lines (`("max_connections", "100000")`); none: no section.
    pub limits: Vec<(String, String)>,
    /// The agent listener's certificate and key files; none: `hub.crt` and `hub.key` (a
    /// server certificate). A hub that dials peer links needs a hub's there
    /// (`Ca::issue_hub`: O=kubehub:hubs, CN = its id).
    pub agent_cert: Option<(String, String)>,
    /// `[registry] file` (a static directory of which hub holds which cluster); none: no
    /// section.
    pub registry: Option<String>,
}

impl HubToml {
    /// The file's text.
    pub fn render(&self) -> String {
        let quoted = |v: &[String]| {
            v.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (agent_cert, agent_key) = self
            .agent_cert
            .clone()
            .unwrap_or_else(|| ("hub.crt".into(), "hub.key".into()));
        let mut s = format!(
            "id = \"{}\"\ncores = {}\nclusters = [{}]\nimpersonate = false\n[access]\nfile = \"access.json\"\n[user_listener]\nlisten = \"127.0.0.1:{}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\n[agent_listener]\nlisten = \"127.0.0.1:{}\"\ncert = \"{agent_cert}\"\nkey = \"{agent_key}\"\nclient_ca = \"ca.crt\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            self.id,
            self.cores,
            quoted(&self.clusters),
            self.user_port,
            self.agent_port,
            self.admin_port
        );
        if let Some(file) = &self.registry {
            s.push_str(&format!("[registry]\nfile = \"{file}\"\n"));
        }
        match &self.cache {
            CacheMode::Default => {}
            CacheMode::Disabled => s.push_str("[cache]\nenabled = false\n"),
            CacheMode::Types(t) if t.is_empty() => s.push_str("[cache]\nenabled = true\n"),
            CacheMode::Types(t) => {
                s.push_str(&format!(
                    "[cache]\nenabled = true\ntypes = [{}]\n",
                    quoted(t)
                ));
            }
        }
        if !self.limits.is_empty() {
            s.push_str("[limits]\n");
            for (k, v) in &self.limits {
                s.push_str(&format!("{k} = {v}\n"));
            }
        }
        s
    }
}

/// An agent.toml for `cluster` dialing the hub's agent listener on 127.0.0.1, with the CA,
/// certificate and key files given (relative to the file), and `upstream` as its API server.
/// `extra` is appended (whole sections: `[sync]\nbatch_bytes = 4096\n`).
pub fn agent_toml(
    cluster: &str,
    agent_port: u16,
    (ca, cert, key): (&str, &str, &str),
    upstream: &str,
    extra: &str,
) -> String {
    format!(
        "cluster_id = \"{cluster}\"\nhubs = [\"127.0.0.1:{agent_port}\"]\n[tls]\nca = \"{ca}\"\ncert = \"{cert}\"\nkey = \"{key}\"\nserver_name = \"localhost\"\n[upstream]\nurl = \"{upstream}\"\n{extra}"
    )
}

/// From the hub's `/metrics`: agents connected, and per cached type the clusters synced.
pub fn parse_metrics(text: &str) -> (u64, Vec<(String, u64)>) {
    let mut agents = 0;
    let mut synced = Vec::new();
    for l in text.lines() {
        let Some((name, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let v = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        if name == "kubehub_hub_agents_connected" {
            agents = v;
        } else if let Some(rest) = name.strip_prefix("kubehub_hub_cache_synced_clusters{") {
            synced.push((rest.trim_end_matches('}').to_owned(), v));
        }
    }
    (agents, synced)
}

/// One metric's value in a `/metrics` text (the first line with that name, labels included
/// in `name` if it has any), 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (n, v) = l.rsplit_once(' ')?;
            (n == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Waits until `n` agents are connected and (with the cache) every cached type, and at least
/// `types` of them, is synced for `n` clusters. Returns the cached types' count.
pub async fn wait_agents(
    client: &crate::HttpClient,
    metrics: &str,
    n: u64,
    (cache, types): (bool, usize),
    timeout: Duration,
    procs: &mut Procs,
) -> Result<usize, String> {
    let t = Instant::now();
    let deadline = t + timeout;
    let mut last_print = t;
    // Types appear as their sync streams open: done only when two polls in a row agree.
    let mut done_with = None;
    loop {
        let text = crate::edge::get_bytes(client, metrics)
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let (agents, synced) = parse_metrics(&text);
        let min_synced = synced.iter().map(|(_, v)| *v).min().unwrap_or(0);
        let done = agents >= n
            && (!cache || (!synced.is_empty() && synced.len() >= types && min_synced >= n));
        if done && done_with == Some(synced.len()) {
            return Ok(synced.len());
        }
        done_with = done.then_some(synced.len());
        if last_print.elapsed() > Duration::from_secs(10) {
            last_print = Instant::now();
            eprintln!(
                "  {:.0} s: {agents} of {n} agents connected; {} types, synced for at least {min_synced} clusters",
                t.elapsed().as_secs_f64(),
                synced.len()
            );
        }
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "after {} s: {agents} of {n} agents, {} types synced for at least {min_synced} clusters",
                timeout.as_secs(),
                synced.len()
            ));
        }
        // Many clusters: every poll costs the hub a /metrics rendering.
        tokio::time::sleep(Duration::from_millis(if n > 1 { 500 } else { 100 })).await;
    }
}

/// The `kubehub` binary for tests and examples: `$KUBEHUB_BIN`, else the newest
/// `release/kubehub` or `debug/kubehub` in the target directory this executable was built
/// into (a test runs from `TARGET/debug/deps/`, an example from `TARGET/PROFILE/examples/`;
/// that covers `CARGO_TARGET_DIR`), else in the workspace's `target/`. An error says how to
/// build it.
pub fn find_kubehub() -> Result<PathBuf, String> {
    find_kubehub_or(None)
}

/// `given` if there is one (a `--kubehub` option), else [`find_kubehub`]'s answer.
pub fn find_kubehub_or(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    if let Some(p) = std::env::var_os("KUBEHUB_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("KUBEHUB_BIN={} is not a file", p.display()))
        };
    }
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(3).map(Path::to_owned));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    dirs.push(workspace);
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for d in &dirs {
        for profile in ["release", "debug"] {
            let p = d.join(profile).join("kubehub");
            if let Ok(m) = std::fs::metadata(&p) {
                if m.is_file() {
                    found.push((m.modified().unwrap_or(std::time::UNIX_EPOCH), p));
                }
            }
        }
        if !found.is_empty() {
            break;
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        format!(
            "no kubehub binary: set KUBEHUB_BIN or build it (cargo build -p kubehub-cli) into the same target directory; looked in {}",
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// A moment of the whole machine's CPU accounting, to tell how much of an interval's CPU
/// went to processes other than the measured ones (others build and test on these machines).
#[derive(Debug, Clone, Copy)]
pub struct MachineMark {
    idle: f64,
    at: Instant,
}

impl MachineMark {
    /// Now.
    pub fn now() -> MachineMark {
        MachineMark {
            idle: crate::sys::machine_idle_secs(crate::sys::clock_ticks()).0,
            at: Instant::now(),
        }
    }

    /// CPU seconds the machine was busy (all CPUs) since the mark: wall × CPUs − idle (see
    /// [`crate::sys::machine_idle_secs`] for why not the busy fields).
    pub fn busy_secs(&self) -> f64 {
        let (idle, cpus) = crate::sys::machine_idle_secs(crate::sys::clock_ticks());
        (self.at.elapsed().as_secs_f64() * cpus as f64 - (idle - self.idle)).max(0.0)
    }

    /// % of one core used since the mark by everything but `ours` CPU seconds.
    pub fn others_pct(&self, ours: f64) -> f64 {
        let wall = self.at.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        ((self.busy_secs() - ours) / wall * 100.0).max(0.0)
    }
}

/// Waits, up to `max`, for a second in which the machine is busy less than `below_pct` % of
/// one core; returns the last second's figure (above `below_pct`: it never got quiet).
pub async fn wait_quiet(max: Duration, below_pct: f64) -> f64 {
    let deadline = Instant::now() + max;
    loop {
        let m = MachineMark::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pct = m.others_pct(0.0);
        if pct < below_pct || Instant::now() >= deadline {
            return pct;
        }
    }
}

/// The options every scenario over one [`Stack`] takes (flattened into its own).
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// The `kubehub` binary (simulator, agent, hub); default: the newest `kubehub` built next
    /// to this binary or in the workspace's target/.
    #[arg(long)]
    pub kubehub: Option<PathBuf>,
    /// Output folder (report.json, summary.md, plots; the processes' files under `run/`);
    /// default `target/perf/SCENARIO`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    pub hub_cores: usize,
    /// Small and quick (CI): a few seconds, and a check that the outcome is sane.
    #[arg(long)]
    pub smoke: bool,
}

impl StackArgs {
    /// The output folder of `scenario`.
    pub fn out_dir(&self, scenario: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("target/perf/{scenario}")))
    }
}

/// Options of [`Stack::start`].
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The `kubehub` binary (simulator, hub and agent).
    pub kubehub: PathBuf,
    /// Working directory: certificates, configurations, the processes' logs (created; what an
    /// earlier run left there is overwritten).
    pub dir: PathBuf,
    /// The cluster id (the agent's certificate CN).
    pub cluster: String,
    /// The hub's `cores`.
    pub hub_cores: usize,
    /// The hub's `[cache]`.
    pub cache: CacheMode,
    /// `[limits]` lines added to the hub's (after `max_connections = 1000000`).
    pub hub_limits: Vec<(String, String)>,
    /// Text appended to agent.toml (whole sections).
    pub agent_extra: String,
    /// Extra arguments of `kubehub sim` (content: `--namespaces 0`, `--log-interval-ms 10`).
    pub sim_args: Vec<String>,
    /// The hub's `id`.
    pub hub_id: String,
    /// The agent listener with a hub's certificate for `hub_id` (`Ca::issue_hub`), as peer
    /// links need, instead of a plain server certificate.
    pub hub_cert: bool,
    /// How long to wait for the agent to connect and the cache to sync.
    pub timeout: Duration,
}

impl StackOptions {
    /// A small edge (one application namespace with one deployment and one ConfigMap) whose
    /// hub, with `hub_cores` threads, caches only `types`; the `kubehub` binary given or found.
    pub fn small(
        kubehub: Option<&Path>,
        dir: impl Into<PathBuf>,
        hub_cores: usize,
        types: &[&str],
    ) -> Result<StackOptions, String> {
        let mut o = StackOptions::new(find_kubehub_or(kubehub)?, dir);
        o.hub_cores = hub_cores;
        o.cache = CacheMode::Types(types.iter().map(|t| (*t).to_owned()).collect());
        o.sim_args = [
            "--namespaces",
            "1",
            "--deployments",
            "1",
            "--configmaps",
            "1",
        ]
        .map(String::from)
        .to_vec();
        Ok(o)
    }

    /// Defaults: cluster `edge`, 2 hub cores, the hub's default cache, 60 s to sync.
    pub fn new(kubehub: impl Into<PathBuf>, dir: impl Into<PathBuf>) -> StackOptions {
        StackOptions {
            kubehub: kubehub.into(),
            dir: dir.into(),
            cluster: "edge".into(),
            hub_cores: 2,
            cache: CacheMode::Default,
            hub_limits: Vec::new(),
            agent_extra: String::new(),
            sim_args: Vec::new(),
            hub_id: "hub-perf".into(),
            hub_cert: false,
            timeout: Duration::from_secs(60),
        }
    }
}

/// One edge cluster (simulator → agent → hub) as processes; see the module's documentation.
#[derive(Debug)]
pub struct Stack {
    /// The hub's user listener, `https://127.0.0.1:PORT` (no trailing slash).
    pub hub_url: String,
    /// The hub's admin listener, `http://127.0.0.1:PORT`.
    pub admin_url: String,
    /// The cluster id.
    pub cluster: String,
    /// A bearer token with every right on the cluster.
    pub token: String,
    /// The CA of every certificate here (PEM).
    pub ca_pem: String,
    /// The hub's server certificate, for `127.0.0.1` and `localhost` (PEM): a peer server can
    /// present the same kind of certificate.
    pub cert_pem: String,
    /// Its key (PEM).
    pub key_pem: String,
    /// The simulator's plain-HTTP address (the agent's upstream).
    pub sim_addr: SocketAddr,
    /// The hub's agent listener, `127.0.0.1:PORT` (where agents and peer hubs dial).
    pub agent_addr: String,
    /// The hub's id.
    pub hub_id: String,
    /// The CA of every certificate here (it issues more: another hub's, an agent's).
    pub ca: Ca,
    /// The working directory (absolute).
    pub dir: PathBuf,
    /// `hub`, `agent`, `sim`: killed when the stack is dropped.
    pub procs: Procs,
    cache: CacheMode,
    types: usize,
    timeout: Duration,
    admin: crate::HttpClient,
}

impl Stack {
    /// Writes the files, starts simulator, hub and agent, and waits until the agent is
    /// connected and every cached type synced.
    pub async fn start(o: &StackOptions) -> Result<Stack, String> {
        let dir = std::path::absolute(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let bin = std::path::absolute(&o.kubehub).map_err(|e| e.to_string())?;
        if !bin.is_file() {
            return Err(format!("no kubehub binary at {}", bin.display()));
        }
        let pki = Pki::write(&dir, "kubehub-perf CA")?;
        pki.write_agent(&dir, &o.cluster, "agent.crt", "agent.key")?;
        let token = kubehub_hub::access::write_dev_file(
            &dir.join("access.json"),
            "perf",
            std::slice::from_ref(&o.cluster),
        )
        .map_err(|e| format!("access.json: {e}"))?;
        let (user, agents, admin, sim) = (free_port()?, free_port()?, free_port()?, free_port()?);
        let mut limits = vec![("max_connections".to_owned(), "1000000".to_owned())];
        limits.extend(o.hub_limits.iter().cloned());
        let agent_cert = if o.hub_cert {
            let c = pki
                .ca
                .issue_hub(&o.hub_id, &["localhost", "127.0.0.1"])
                .map_err(|e| format!("hub certificate: {e}"))?;
            let (crt, key) = (format!("{}.crt", o.hub_id), format!("{}.key", o.hub_id));
            write_file(&dir, &crt, &c.cert)?;
            write_file(&dir, &key, &c.key)?;
            Some((crt, key))
        } else {
            None
        };
        let hub = HubToml {
            id: o.hub_id.clone(),
            cores: o.hub_cores,
            clusters: vec![o.cluster.clone()],
            user_port: user,
            agent_port: agents,
            admin_port: admin,
            cache: o.cache.clone(),
            limits,
            agent_cert,
            registry: None,
        };
        write_file(&dir, "hub.toml", &hub.render())?;
        write_file(
            &dir,
            "agent.toml",
            &agent_toml(
                &o.cluster,
                agents,
                ("ca.crt", "agent.crt", "agent.key"),
                &format!("http://127.0.0.1:{sim}"),
                &o.agent_extra,
            ),
        )?;
        // What an earlier simulator left (its CA, kubeconfig).
        let _ = std::fs::remove_dir_all(dir.join("sim"));

        let mut procs = Procs::default();
        let sim_addr: SocketAddr = ([127, 0, 0, 1], sim).into();
        let mut sim_args: Vec<String> = vec![
            "sim".into(),
            "--listen".into(),
            sim_addr.to_string(),
            "--dir".into(),
            "sim".into(),
            "--churn".into(),
            "0".into(),
        ];
        sim_args.extend(o.sim_args.iter().cloned());
        procs.start(
            "sim",
            &bin,
            &dir,
            &sim_args.iter().map(String::as_str).collect::<Vec<_>>(),
        )?;
        procs.start("hub", &bin, &dir, &["hub", "--config", "hub.toml"])?;
        let admin_client = crate::client(None, 4)?;
        // The agent's first dial should find the simulator up (else it backs off).
        let deadline = Instant::now() + o.timeout;
        let version = format!("http://{sim_addr}/version");
        while crate::edge::get_bytes(&admin_client, &version)
            .await
            .is_err()
        {
            procs.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("the simulator did not answer {version}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        procs.start("agent", &bin, &dir, &["agent", "--config", "agent.toml"])?;
        let types = match &o.cache {
            CacheMode::Types(t) => t.len(),
            _ => 0,
        };
        let mut stack = Stack {
            hub_url: format!("https://127.0.0.1:{user}"),
            admin_url: format!("http://127.0.0.1:{admin}"),
            cluster: o.cluster.clone(),
            token,
            ca_pem: pki.ca_pem,
            cert_pem: pki.cert_pem,
            key_pem: pki.key_pem,
            sim_addr,
            agent_addr: format!("127.0.0.1:{agents}"),
            hub_id: o.hub_id.clone(),
            ca: pki.ca,
            dir,
            procs,
            cache: o.cache.clone(),
            types,
            timeout: o.timeout,
            admin: admin_client,
        };
        stack.wait_ready().await?;
        Ok(stack)
    }

    /// Waits until the agent is connected and every cached type synced; returns how many
    /// types are cached.
    pub async fn wait_ready(&mut self) -> Result<usize, String> {
        let metrics = format!("{}/metrics", self.admin_url);
        wait_agents(
            &self.admin,
            &metrics,
            1,
            (self.cache.enabled(), self.types),
            self.timeout,
            &mut self.procs,
        )
        .await
        .map_err(|e| format!("hub {}: {e}; logs in {}", self.hub_url, self.dir.display()))
    }

    /// `hub_url/clusters/<cluster>`: prefix of Kubernetes API paths through the hub.
    pub fn cluster_url(&self) -> String {
        format!("{}/clusters/{}", self.hub_url, self.cluster)
    }

    /// `http://<sim_addr>`.
    pub fn sim_url(&self) -> String {
        format!("http://{}", self.sim_addr)
    }

    /// `dir/ca.crt`, `dir/hub.crt`, `dir/hub.key`.
    pub fn cert_files(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.dir.join("ca.crt"),
            self.dir.join("hub.crt"),
            self.dir.join("hub.key"),
        )
    }

    /// The pid of `hub`, `agent` or `sim` (while running).
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.pid(name)
    }

    /// An error naming the first process that exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.procs.check_alive()
    }

    /// A client for the hub (trusting the CA) or the simulator, keeping up to `conns` idle
    /// connections.
    pub fn client<B>(
        &self,
        conns: usize,
    ) -> Result<
        hyper_util::client::legacy::Client<
            hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
            B,
        >,
        String,
    >
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
    {
        crate::https_client(crate::roots(Some(&self.ca_pem))?, conns)
    }

    /// The hub's `/metrics` text.
    pub async fn metrics(&self) -> Result<String, String> {
        let b = crate::edge::get_bytes(&self.admin, &format!("{}/metrics", self.admin_url)).await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Stops the hub (the agent notices and reconnects with its backoff).
    pub async fn stop_hub(&mut self, how: Stop) -> Result<(), String> {
        self.procs.stop("hub", how).await
    }

    /// Starts the stopped hub again with the same configuration; returns its pid. Does not
    /// wait: see [`Stack::wait_ready`].
    pub fn start_hub(&mut self) -> Result<u32, String> {
        self.procs.restart("hub")
    }

    /// Stops the hub, starts it again, and waits until the agent is back and the cache
    /// synced; returns the time from the restart to then.
    pub async fn restart_hub(&mut self, how: Stop) -> Result<Duration, String> {
        self.stop_hub(how).await?;
        self.start_hub()?;
        let t = Instant::now();
        self.wait_ready().await?;
        Ok(t.elapsed())
    }

    /// CPU time of every running process now, to compare with a later sample
    /// ([`Stack::proc_stats`]).
    pub fn sample(&self) -> Vec<(&'static str, u32, CpuSample)> {
        let tck = crate::sys::clock_ticks();
        self.procs
            .pids()
            .into_iter()
            .map(|(n, pid)| (n, pid, cpu_sample(pid, tck)))
            .collect()
    }

    /// Per process: CPU seconds since `before`, CPU µs per `per` units of work (requests,
    /// deliveries; none when 0), RSS now.
    pub fn proc_stats(
        &self,
        before: &[(&'static str, u32, CpuSample)],
        per: u64,
    ) -> Vec<ProcStats> {
        let tck = crate::sys::clock_ticks();
        before
            .iter()
            .map(|(name, pid, b)| {
                let cpu = cpu_delta(b, &cpu_sample(*pid, tck));
                ProcStats {
                    name: (*name).to_owned(),
                    rss_kib: rss_kib(*pid).unwrap_or(0),
                    cpu_secs: cpu,
                    cpu_us_per_request: (per > 0).then(|| cpu * 1e6 / per as f64),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines() {
        let text = "# HELP x\nkubehub_hub_agents_connected 3\nkubehub_hub_cache_synced_clusters{resource=\"v1/pods\"} 2\nkubehub_hub_cache_synced_clusters{resource=\"apps/v1/deployments\"} 3\nkubehub_hub_cache_objects{resource=\"v1/pods\"} 9\n";
        let (agents, synced) = parse_metrics(text);
        assert_eq!(agents, 3);
        assert_eq!(
            synced,
            vec![
                ("resource=\"v1/pods\"".to_owned(), 2),
                ("resource=\"apps/v1/deployments\"".to_owned(), 3)
            ]
        );
        assert_eq!(metric(text, "kubehub_hub_agents_connected"), 3.0);
        assert_eq!(
            metric(text, "kubehub_hub_cache_objects{resource=\"v1/pods\"}"),
            9.0
        );
        assert_eq!(metric(text, "absent"), 0.0);
    }

    #[test]
    fn hub_toml_parses() {
        let mut h = HubToml {
            id: "h".into(),
            cores: 2,
            clusters: vec!["a".into(), "b".into()],
            user_port: 1,
            agent_port: 2,
            admin_port: 3,
            cache: CacheMode::Types(vec!["v1/configmaps".into()]),
            limits: vec![("max_connections".into(), "1000".into())],
            agent_cert: Some(("h.crt".into(), "h.key".into())),
            registry: Some("registry.ndjson".into()),
        };
        for cache in [
            CacheMode::Default,
            CacheMode::Disabled,
            CacheMode::Types(vec!["v1/configmaps".into()]),
        ] {
            h.cache = cache;
            let dir = std::env::temp_dir().join(format!("kubehub-stack-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("hub.toml"), h.render()).unwrap();
            for f in [
                "access.json",
                "ca.crt",
                "hub.crt",
                "hub.key",
                "h.crt",
                "h.key",
                "registry.ndjson",
            ] {
                std::fs::write(dir.join(f), "").unwrap();
            }
            let r = kubehub_hub::config::HubConfig::load(&dir.join("hub.toml"));
            let _ = std::fs::remove_dir_all(&dir);
            let cfg = r.unwrap_or_else(|e| panic!("{}: {e}", h.render()));
            assert_eq!(cfg.cache.enabled, h.cache.enabled());
            assert_eq!(cfg.limits.max_connections, 1000);
        }
    }
}
