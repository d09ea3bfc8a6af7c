//! `bulk`: large responses and long streams through hub + tunnel + agent, against the same
//! content fetched directly from a simulator over TLS, with the CPU time of every process.
//!
//! It starts, from one `kubehub` binary (so an older build can be measured with this tool
//! unchanged), as separate processes:
//!
//! * `kubehub sim` on plain HTTP: the agent's upstream, as in `kubehub demo`;
//! * `kubehub sim --tls`: the direct path (what a client gets from the API server itself);
//! * `kubehub agent` and `kubehub hub`, from an agent.toml and a hub.toml written to `--dir`.
//!
//! Both simulators get the same seed and the same objects (a namespace `bulk` with `--objects`
//! ConfigMaps of `--object-bytes` each, created by POST in the same order, and `--log-pods`
//! single-container pods), so the bodies are the same size both ways (checked).
//!
//! Then, per round, direct first and then through the hub:
//!
//! * LIST: `GET /api/v1/namespaces/bulk/configmaps` `--fetches` times and for `--seconds` at
//!   least, one after the other on one keep-alive connection, each read as fast as the client can (body frames counted and dropped); MB/s
//!   per fetch (MB = 10^6 bytes) and CPU time per MB of each process (utime + stime from
//!   `/proc/PID/stat`, this client included: everything shares the same cores).
//! * logs: `--log-streams` concurrent `logs?follow=true` streams for `--log-seconds` (after
//!   2 s of warm-up). The simulator writes one ~70-byte line per stream every
//!   `--log-interval-ms` (10 ms at least), so this is a stream of many small chunks, not a
//!   bulk transfer: it reports lines per second and CPU time per line.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::stack::{Stack, StackOptions};
use crate::sys::{clock_ticks, cpu_secs, free_port, machine_idle_secs};

/// Options of `kubehub-perf bulk`.
#[derive(Debug, clap::Args)]
pub struct BulkArgs {
    /// The `kubehub` binary whose hub, agent and simulator are measured.
    #[arg(long, default_value = "target/release/kubehub")]
    kubehub: PathBuf,
    /// Working directory (certificates, configurations, the processes' logs).
    #[arg(long, default_value = "target/bulk")]
    dir: PathBuf,
    /// ConfigMaps in the listed namespace.
    #[arg(long, default_value_t = 150)]
    objects: usize,
    /// Bytes of data in each ConfigMap.
    #[arg(long, default_value_t = 60_000)]
    object_bytes: usize,
    /// LIST fetches per path and round, at least (after one warm-up fetch).
    #[arg(long, default_value_t = 10)]
    fetches: usize,
    /// Seconds of LIST fetches per path and round, at least: CPU time is counted in clock
    /// ticks (10 ms), so a short run would measure the tick, not the process.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds; each measures direct, then through the hub.
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Concurrent `logs -f` streams per path (0: skip the logs measurement).
    #[arg(long, default_value_t = 100)]
    log_streams: usize,
    /// Pods the log streams are spread over.
    #[arg(long, default_value_t = 10)]
    log_pods: usize,
    /// Seconds of log streaming measured per path and round.
    #[arg(long, default_value_t = 10)]
    log_seconds: u64,
    /// The simulators' interval between log lines (milliseconds; they take 10 at least).
    #[arg(long, default_value_t = 10)]
    log_interval_ms: u64,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    hub_cores: usize,
}

/// Started processes (moved to [`crate::stack`], where every scenario's set-up lives).
pub use crate::stack::Procs;

/// The processes whose CPU time is reported, in the order printed.
#[derive(Debug, Clone)]
struct Watched(Vec<(&'static str, u32)>);

impl Watched {
    /// CPU seconds of each watched process, then the idle seconds of the whole machine (all
    /// cores).
    fn snapshot(&self, tck: f64) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().map(|(_, pid)| cpu_secs(*pid, tck)).collect();
        v.push(machine_idle_secs(tck).0);
        v
    }
}

/// How busy the machine was with anything but the watched processes, in % of one core.
/// Busy time is wall × CPUs − idle: `/proc/stat`'s busy fields miss most of a bursty load on
/// these VMs (see `sys::machine_idle_secs`); until 2026-11-26 this summed them and so
/// understated what others used.
fn others_pct(before: &[f64], after: &[f64], wall: f64) -> f64 {
    let n = before.len().min(after.len());
    if n == 0 || wall <= 0.0 {
        return 0.0;
    }
    let (_, cpus) = machine_idle_secs(100.0);
    let total = wall * cpus as f64 - (after[n - 1] - before[n - 1]);
    let ours: f64 = (0..n - 1).map(|i| after[i] - before[i]).sum();
    ((total - ours) / wall * 100.0).max(0.0)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One path to the content: a base URL, a client trusting its CA, and maybe a token.
#[derive(Debug, Clone)]
struct Target {
    label: &'static str,
    base: String,
    token: Option<String>,
    client: HttpClient,
}

fn client(ca_pem: &str) -> Result<HttpClient, String> {
    crate::https_client(crate::roots(Some(ca_pem))?, 1024)
}

impl Target {
    fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<http::Request<Full<Bytes>>, String> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("accept", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        req.body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| e.to_string())
    }

    /// A small request whose whole answer is wanted.
    async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, Bytes), String> {
        let sent = self.client.request(self.request(method, path, body)?).await;
        let a = crate::call::whole(sent, &format!("{} {path}", self.label)).await?;
        Ok((a.status, a.body))
    }

    /// GET, counting the body's bytes (and newlines) as they come, without keeping them.
    async fn drain(
        &self,
        path: &str,
        lines: Option<&AtomicU64>,
        bytes: Option<&AtomicU64>,
    ) -> Result<u64, String> {
        let resp = self
            .client
            .request(self.request(http::Method::GET, path, None)?)
            .await
            .map_err(|e| format!("{} {path}: {e}", self.label))?;
        if !resp.status().is_success() {
            return Err(format!("{} {path}: {}", self.label, resp.status()));
        }
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("{} {path}: {e}", self.label))?;
            if let Ok(d) = frame.into_data() {
                n += d.len() as u64;
                if let Some(b) = bytes {
                    b.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if let Some(l) = lines {
                    let k = d.iter().filter(|&&c| c == b'\n').count();
                    l.fetch_add(k as u64, Ordering::Relaxed);
                }
            }
        }
        Ok(n)
    }
}

async fn wait_ready(t: &Target, path: &str, procs: &mut Procs) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((200, _)) = t.call(http::Method::GET, path, None).await {
            return Ok(());
        }
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready at {}{path} after 20 s",
                t.label, t.base
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same objects, in the same order, on a simulator.
async fn populate(t: &Target, a: &BulkArgs) -> Result<(), String> {
    let ns = r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"bulk"}}"#;
    let (st, b) = t
        .call(http::Method::POST, "/api/v1/namespaces", Some(ns.into()))
        .await?;
    if st != 201 {
        return Err(format!(
            "{}: creating namespace bulk: {st} {}",
            t.label,
            String::from_utf8_lossy(&b)
        ));
    }
    // Deterministic, incompressible-looking text without JSON escapes.
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..a.objects {
        let mut data = String::with_capacity(a.object_bytes);
        for _ in 0..a.object_bytes {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
        }
        let cm = format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"blob-{i:04}","labels":{{"bulk":"true"}}}},"data":{{"blob":"{data}"}}}}"#
        );
        let (st, b) = t
            .call(
                http::Method::POST,
                "/api/v1/namespaces/bulk/configmaps",
                Some(cm),
            )
            .await?;
        if st != 201 {
            return Err(format!(
                "{}: creating configmap {i}: {st} {}",
                t.label,
                String::from_utf8_lossy(&b)
            ));
        }
    }
    for i in 0..a.log_pods {
        let pod = format!(
            r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"logger-{i}"}},"spec":{{"containers":[{{"name":"c","image":"busybox"}}]}}}}"#
        );
        let (st, b) = t
            .call(
                http::Method::POST,
                "/api/v1/namespaces/bulk/pods",
                Some(pod),
            )
            .await?;
        if st != 201 {
            return Err(format!(
                "{}: creating pod {i}: {st} {}",
                t.label,
                String::from_utf8_lossy(&b)
            ));
        }
    }
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn cpu_line(
    w: &Watched,
    before: &[f64],
    after: &[f64],
    per: f64,
    unit: &str,
    scale: f64,
) -> String {
    w.0.iter()
        .zip(before.iter().zip(after))
        .map(|((name, _), (b, a))| format!("{name} {:.2}", (a - b) * scale / per))
        .collect::<Vec<_>>()
        .join(", ")
        + &format!(" {unit}")
}

/// LIST `--fetches` times; returns the body size.
async fn measure_list(
    t: &Target,
    w: &Watched,
    a: &BulkArgs,
    tck: f64,
    round: usize,
) -> Result<u64, String> {
    let path = "/api/v1/namespaces/bulk/configmaps";
    let size = t.drain(path, None, None).await?; // warm-up: connection, TLS, caches
    let mut rates = Vec::with_capacity(a.fetches);
    let mut total = 0u64;
    let c0 = w.snapshot(tck);
    let t0 = Instant::now();
    while rates.len() < a.fetches || t0.elapsed().as_secs_f64() < a.seconds {
        let s = Instant::now();
        let n = t.drain(path, None, None).await?;
        let secs = s.elapsed().as_secs_f64();
        if n != size {
            return Err(format!("{}: LIST size changed: {n} after {size}", t.label));
        }
        total += n;
        rates.push(n as f64 / 1e6 / secs);
    }
    let wall = t0.elapsed().as_secs_f64();
    let c1 = w.snapshot(tck);
    let (lo, hi) = rates
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), r| (l.min(*r), h.max(*r)));
    let mb = total as f64 / 1e6;
    println!(
        "round {round} list {}: {} x {size} B: median {:.1} MB/s (min {lo:.1}, max {hi:.1}); overall {:.1} MB/s; CPU per MB: {}; others {:.0}% of a core",
        t.label,
        rates.len(),
        median(&mut rates),
        mb / wall,
        cpu_line(w, &c0, &c1, mb, "ms", 1e3),
        others_pct(&c0, &c1, wall),
    );
    Ok(size)
}

async fn measure_logs(
    t: &Target,
    w: &Watched,
    a: &BulkArgs,
    tck: f64,
    round: usize,
) -> Result<(), String> {
    let lines = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(a.log_streams);
    for i in 0..a.log_streams {
        let (t, lines, bytes, errors) = (t.clone(), lines.clone(), bytes.clone(), errors.clone());
        let pod = i % a.log_pods.max(1);
        tasks.push(tokio::spawn(async move {
            let path = format!("/api/v1/namespaces/bulk/pods/logger-{pod}/log?follow=true");
            if let Err(e) = t.drain(&path, Some(&lines), Some(&bytes)).await {
                if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("kubehub-perf bulk: {e}");
                }
            } else {
                // A follow stream that ends by itself before we stop is an error too.
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (l0, b0, c0) = (
        lines.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        w.snapshot(tck),
    );
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(a.log_seconds)).await;
    let (l1, b1, c1) = (
        lines.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed),
        w.snapshot(tck),
    );
    let secs = t0.elapsed().as_secs_f64();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
    let n = (l1 - l0) as f64;
    let offered = a.log_streams as f64 * 1000.0 / a.log_interval_ms.max(10) as f64;
    println!(
        "round {round} logs {}: {} streams, {:.0} lines/s (offered ~{offered:.0}), {:.3} MB/s, {} errors; CPU per line: {}; others {:.0}% of a core",
        t.label,
        a.log_streams,
        n / secs,
        (b1 - b0) as f64 / 1e6 / secs,
        errors.load(Ordering::Relaxed),
        cpu_line(w, &c0, &c1, n.max(1.0), "us", 1e6),
        others_pct(&c0, &c1, secs),
    );
    // Let the servers notice the closed streams before the next measurement.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

pub async fn run(a: BulkArgs) -> Result<(), String> {
    let dir = std::path::absolute(&a.dir).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let bin = std::path::absolute(&a.kubehub).map_err(|e| e.to_string())?;
    let tck = clock_ticks();
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    println!(
        "kubehub: {} ({})",
        bin.display(),
        String::from_utf8_lossy(&version.stdout).trim()
    );

    // Simulator (plain HTTP), hub and agent: the stack every scenario shares. The direct
    // path's TLS simulator gets the same arguments.
    let interval = a.log_interval_ms.to_string();
    let mut opts = StackOptions::new(&bin, &dir);
    opts.cluster = "bulk".into();
    opts.hub_id = "hub-bulk".into();
    opts.hub_cores = a.hub_cores;
    opts.sim_args = vec!["--log-interval-ms".into(), interval.clone()];
    // A CA left by an earlier run in the same --dir would be read before the new simulator
    // writes its own.
    let _ = std::fs::remove_dir_all(dir.join("sim-tls"));
    let mut procs = Procs::default();
    let tls = free_port()?;
    let tls_listen = format!("127.0.0.1:{tls}");
    let pid_tls = procs.start(
        "sim-tls",
        &bin,
        &dir,
        &[
            "sim",
            "--listen",
            &tls_listen,
            "--dir",
            "sim-tls",
            "--churn",
            "0",
            "--log-interval-ms",
            &interval,
            "--tls",
        ],
    )?;
    let mut stack = Stack::start(&opts).await?;
    let missing = |name: &str| format!("the stack has no {name} process");
    let pid_plain = stack.pid("sim").ok_or_else(|| missing("sim"))?;
    let pid_hub = stack.pid("hub").ok_or_else(|| missing("hub"))?;
    let pid_agent = stack.pid("agent").ok_or_else(|| missing("agent"))?;

    let plain_t = Target {
        label: "sim-plain",
        base: stack.sim_url(),
        token: None,
        client: client(&stack.ca_pem)?,
    };
    wait_ready(&plain_t, "/version", &mut stack.procs).await?;
    let sim_ca = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(pem) = std::fs::read_to_string(dir.join("sim-tls/ca.crt")) {
                if pem.contains("END CERTIFICATE") {
                    break pem;
                }
            }
            procs.check_alive()?;
            if Instant::now() > deadline {
                return Err("sim --tls wrote no ca.crt".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let direct = Target {
        label: "direct",
        base: format!("https://127.0.0.1:{tls}"),
        token: None,
        client: client(&sim_ca)?,
    };
    wait_ready(&direct, "/version", &mut procs).await?;
    let hub = Target {
        label: "hub",
        base: stack.cluster_url(),
        token: Some(stack.token.clone()),
        client: client(&stack.ca_pem)?,
    };
    wait_ready(&hub, "/version", &mut stack.procs).await?;
    populate(&plain_t, &a).await?;
    populate(&direct, &a).await?;

    let me = std::process::id();
    let direct_w = Watched(vec![("sim-tls", pid_tls), ("client", me)]);
    let hub_w = Watched(vec![
        ("hub", pid_hub),
        ("agent", pid_agent),
        ("sim-plain", pid_plain),
        ("client", me),
    ]);
    for round in 1..=a.rounds.max(1) {
        let d = measure_list(&direct, &direct_w, &a, tck, round).await?;
        let h = measure_list(&hub, &hub_w, &a, tck, round).await?;
        if d != h {
            println!("note: LIST sizes differ: direct {d} B, hub {h} B");
        }
        if a.log_streams > 0 {
            measure_logs(&direct, &direct_w, &a, tck, round).await?;
            measure_logs(&hub, &hub_w, &a, tck, round).await?;
        }
        procs.check_alive()?;
        stack.check_alive()?;
    }
    Ok(())
}
