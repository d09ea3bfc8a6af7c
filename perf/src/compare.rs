//! The hub against its peers on the same machine, same run, same offered rate: one edge
//! cluster behind KubeHub ([`crate::stack`]: simulator, agent, hub as processes) and the
//! peers in front of the same simulator ([`crate::peers`]), rounds alternating targets.
//!
//! * `cache-get` / `cache-list`: a GET of one ConfigMap / a LIST of a namespace of ConfigMaps
//!   served from the hub's cache (as kubectl asks: no resourceVersion, and with
//!   `resourceVersion=0`), against nginx serving the same bytes as a static file over HTTPS,
//!   and the simulator directly (plain HTTP: the floor).
//! * `forward`: a GET of a type the hub does not cache, through hub + tunnel + agent, against
//!   nginx as a one-hop TLS proxy to the simulator, the rathole stack (nginx for users' TLS →
//!   rathole server ⇐ TLS tunnel ⇐ rathole client → simulator), and the simulator directly.
//! * `stream`: bulk bytes, one stream at a time and many at once: a multi-MB LIST forwarded
//!   through each path (MB/s and CPU per MB).
//!
//! The open-loop runs report each server process's CPU time per request (from /proc) over
//! the measured interval; the upstream simulator's CPU is left out (the same for every path
//! but `direct`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::load::{Load, Req};
use crate::peers::{self, Peer, Tls};
use crate::report::{OpStats, ProcStats, Report, Run};
use crate::stack::{CacheMode, Stack, StackOptions};
use crate::sys;

/// Options of the compare scenarios.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Rounds; each measures every target once, in a rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Requests per second offered (open loop); default per scenario (GET 2000, LIST 300,
    /// forward 1000).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds measured per target and round.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up per target and round.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Requests in flight at most (keep-alive connections).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// nginx worker processes.
    #[arg(long, default_value_t = 2)]
    pub nginx_workers: usize,
    /// ConfigMaps in the listed namespace (`cache-list`).
    #[arg(long, default_value_t = 50)]
    pub list_objects: usize,
    /// Bulk LIST size for `stream`: ConfigMaps of `--stream-object-bytes` each.
    #[arg(long, default_value_t = 150)]
    pub stream_objects: usize,
    /// Bytes of data per ConfigMap for `stream`.
    #[arg(long, default_value_t = 60_000)]
    pub stream_object_bytes: usize,
    /// Streams at once in the second half of `stream`.
    #[arg(long, default_value_t = 8)]
    pub stream_parallel: usize,
    /// Only these targets (`kubehub`, `kubehub-rv0`, `nginx-static`, `nginx-proxy`,
    /// `nginx+rathole`, `direct`); default: every one the scenario has.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// After the rounds, each target once more, kept busy by `--connections` closed-loop
    /// clients for 5 s, for its maximum throughput (`--max-throughput false` to skip).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub max_throughput: bool,
    /// `--smoke`: 1 round of 1 s per target at a low rate.
    #[command(flatten)]
    pub stack: crate::stack::StackArgs,
}

/// Which comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// GET served from the cache.
    CacheGet,
    /// LIST served from the cache.
    CacheList,
    /// GET forwarded to the edge.
    Forward,
    /// Bulk bytes.
    Stream,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::CacheGet => "cache-get",
            Kind::CacheList => "cache-list",
            Kind::Forward => "forward",
            Kind::Stream => "stream",
        }
    }
}

/// One way to the content.
struct Target {
    label: String,
    base: String,
    path: String,
    token: Option<String>,
    ca_pem: Option<String>,
    /// Processes whose CPU counts, by name.
    pids: Vec<(String, u32)>,
    _peer: Option<Peer>,
}

const NS: &str = "perf";

async fn fill(stack: &Stack, count: usize, object_bytes: Option<usize>) -> Result<(), String> {
    match object_bytes {
        None => {
            crate::edge::configmaps(crate::edge::ConfigmapsArgs {
                url: stack.sim_url(),
                namespace: NS.into(),
                count,
                concurrency: 8,
                token: None,
                ca: None,
            })
            .await
        }
        Some(bytes) => {
            // Large objects: `count` ConfigMaps of `bytes` each.
            let client = crate::https_client::<http_body_util::Full<Bytes>>(
                rustls::RootCertStore::empty(),
                4,
            )?;
            let post = |path: String, body: String| {
                let client = client.clone();
                async move {
                    let req = http::Request::post(path)
                        .header("content-type", "application/json")
                        .body(http_body_util::Full::new(Bytes::from(body)))
                        .map_err(|e| e.to_string())?;
                    let st = crate::call::whole(client.request(req).await, "POST")
                        .await?
                        .status;
                    if st == 201 || st == 409 {
                        Ok(())
                    } else {
                        Err(format!("creating an object: {st}"))
                    }
                }
            };
            let base = stack.sim_url();
            post(
                format!("{base}/api/v1/namespaces"),
                format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{NS}"}}}}"#),
            )
            .await?;
            let data = "x".repeat(bytes);
            for i in 0..count {
                post(
                    format!("{base}/api/v1/namespaces/{NS}/configmaps"),
                    format!(
                        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big-{i}"}},"data":{{"blob":"{data}"}}}}"#
                    ),
                )
                .await?;
            }
            Ok(())
        }
    }
}

async fn fetch(
    base: &str,
    path: &str,
    token: Option<&str>,
    ca: Option<&str>,
) -> Result<(String, Bytes), String> {
    let roots = crate::roots(ca)?;
    let client = crate::https_client::<http_body_util::Empty<Bytes>>(roots, 1)?;
    let mut req = http::Request::get(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(http_body_util::Empty::new())
        .map_err(|e| e.to_string())?;
    let what = format!("GET {base}{path}");
    let a = crate::call::whole(client.request(req).await, &what).await?;
    let ct = a
        .content_type
        .clone()
        .unwrap_or_else(|| "application/json".to_owned());
    Ok((ct, a.ok(&what)?))
}

fn wanted(a: &CompareArgs, label: &str) -> bool {
    a.targets.is_empty() || a.targets.iter().any(|t| t == label)
}

/// Runs one compare scenario.
pub async fn run(kind: Kind, a: CompareArgs) -> Result<Report, String> {
    let mut r = Report::new(kind.name());
    let out = a.stack.out_dir(kind.name());
    let dir = std::path::absolute(out.join("run")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut o = StackOptions::new(
        crate::stack::find_kubehub_or(a.stack.kubehub.as_deref())?,
        dir.join("stack"),
    );
    o.hub_cores = a.stack.hub_cores;
    // Configmaps cached (cache scenarios), nothing but configmaps cached (forward: service
    // accounts are forwarded; stream: the big LIST is forwarded).
    o.cache = CacheMode::Types(vec!["v1/configmaps".into()]);
    if kind == Kind::Stream {
        o.cache = CacheMode::Types(vec!["v1/pods".into()]);
    }
    let mut stack = Stack::start(&o).await?;
    match kind {
        Kind::CacheList => {
            fill(&stack, if a.stack.smoke { 5 } else { a.list_objects }, None).await?
        }
        Kind::Stream => {
            let n = if a.stack.smoke { 5 } else { a.stream_objects };
            fill(&stack, n, Some(a.stream_object_bytes)).await?
        }
        _ => {}
    }
    stack.wait_ready().await?;
    let path = match kind {
        Kind::CacheGet => "/api/v1/namespaces/default/configmaps/kube-root-ca.crt".to_owned(),
        Kind::CacheList => format!("/api/v1/namespaces/{NS}/configmaps"),
        Kind::Forward => "/api/v1/namespaces/default/serviceaccounts/default".to_owned(),
        Kind::Stream => format!("/api/v1/namespaces/{NS}/configmaps"),
    };
    // Wait until the cache holds the listed namespace whole: two equal answers.
    let hub_path = format!("/clusters/{}{path}", stack.cluster);
    let (ct, hub_bytes) = fetch(
        &stack.hub_url,
        &hub_path,
        Some(&stack.token),
        Some(&stack.ca_pem),
    )
    .await?;
    let tls = Tls {
        cert_pem: stack.cert_pem.clone(),
        key_pem: stack.key_pem.clone(),
        ca_pem: stack.ca_pem.clone(),
    };
    let pid = |name: &str| stack.procs.pid(name).map(|p| (name.to_owned(), p));
    // The agent counts on every KubeHub path: it answers the cache's freshness probes too.
    let hub_pids: Vec<(String, u32)> = pid("hub").into_iter().chain(pid("agent")).collect();
    let mut targets = Vec::new();
    let kube = |label: &str, p: String| Target {
        label: label.into(),
        base: stack.hub_url.clone(),
        path: p,
        token: Some(stack.token.clone()),
        ca_pem: Some(stack.ca_pem.clone()),
        pids: hub_pids.clone(),
        _peer: None,
    };
    if wanted(&a, "kubehub") {
        targets.push(kube("kubehub", hub_path.clone()));
    }
    if matches!(kind, Kind::CacheGet | Kind::CacheList) && wanted(&a, "kubehub-rv0") {
        targets.push(kube("kubehub-rv0", format!("{hub_path}?resourceVersion=0")));
    }
    let peer_target = |p: Peer, path: &str| Target {
        label: p.label.into(),
        base: p.url.clone(),
        path: path.to_owned(),
        token: None,
        ca_pem: Some(stack.ca_pem.clone()),
        pids: p
            .pids
            .iter()
            .map(|(n, pid)| ((*n).to_owned(), *pid))
            .collect(),
        _peer: Some(p),
    };
    match kind {
        Kind::CacheGet | Kind::CacheList => {
            if wanted(&a, "nginx-static") {
                let p = peers::nginx_static(
                    &dir.join("nginx-static"),
                    &tls,
                    &[(path.as_str(), &hub_bytes[..], ct.as_str())],
                    a.nginx_workers,
                )?;
                targets.push(peer_target(p, &path));
            }
        }
        Kind::Forward | Kind::Stream => {
            if wanted(&a, "nginx-proxy") {
                let p = peers::nginx_proxy(
                    &dir.join("nginx-proxy"),
                    &tls,
                    stack.sim_addr,
                    a.nginx_workers,
                )?;
                targets.push(peer_target(p, &path));
            }
            if wanted(&a, "nginx+rathole") {
                let p = peers::rathole_stack(
                    &dir.join("rathole"),
                    &tls,
                    stack.sim_addr,
                    a.nginx_workers,
                )?;
                targets.push(peer_target(p, &path));
            }
        }
    }
    if wanted(&a, "direct") {
        targets.push(Target {
            label: "direct".into(),
            base: stack.sim_url(),
            path: path.clone(),
            token: None,
            ca_pem: None,
            pids: Vec::new(),
            _peer: None,
        });
    }
    // Every target answers the same bytes (the hub may add nothing to a cached answer's body).
    for t in &targets {
        let (_, b) = fetch(&t.base, &t.path, t.token.as_deref(), t.ca_pem.as_deref()).await?;
        if kind != Kind::Forward && b.len() != hub_bytes.len() {
            r.notes.push(format!(
                "{} answers {} bytes where the hub answers {}",
                t.label,
                b.len(),
                hub_bytes.len()
            ));
        }
    }
    r.notes.push(format!(
        "{}: `{path}`, {} bytes per answer; the hub with {} worker threads, nginx with {} workers; CPU per request counts {}",
        kind.name(),
        hub_bytes.len(),
        a.stack.hub_cores,
        a.nginx_workers,
        "the hub and the agent for kubehub, every nginx and rathole process for the peers, nothing for direct (the simulator's own CPU is not counted on any path)"
    ));
    let rounds = if a.stack.smoke { 1 } else { a.rounds.max(1) };
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = &targets[(k + round as usize) % targets.len()];
            stack.procs.check_alive()?;
            let run = if kind == Kind::Stream {
                stream_run(&a, t, round).await?
            } else {
                rate_run(&a, kind, t, round).await?
            };
            eprintln!(
                "{} round {round} {}: {}",
                kind.name(),
                t.label,
                run.ops
                    .first()
                    .map(|o| format!(
                        "p50 {:.3} ms p99 {:.3} ms, {} ok, {} errors",
                        o.p50_us / 1000.0,
                        o.p99_us / 1000.0,
                        o.ok,
                        o.error_count()
                    ))
                    .unwrap_or_default()
            );
            r.runs.push(run);
        }
    }
    // Maximum throughput: each target kept busy by `connections` closed-loop clients; what it
    // answers per second is its ceiling on this machine with the client sharing the cores.
    if kind != Kind::Stream && a.max_throughput {
        for t in &targets {
            let max = max_run(&a, t).await?;
            let mut run = Run {
                target: t.label.clone(),
                round: rounds,
                secs: max.secs,
                ..Run::default()
            };
            run.figures
                .insert("max answers/s (closed loop)".into(), max.per_s);
            run.figures
                .insert("errors at max".into(), max.errors as f64);
            eprintln!("{} max {}: {:.0}/s", kind.name(), t.label, max.per_s);
            r.runs.push(run);
        }
    }
    for round in (0..rounds).filter(|_| kind != Kind::Stream) {
        let cpu = |label: &str, names: &[&str]| {
            r.runs
                .iter()
                .find(|x| x.round == round && x.target == label)
                .map(|x| {
                    x.procs
                        .iter()
                        .filter(|p| names.is_empty() || names.contains(&p.name.as_str()))
                        .filter_map(|p| p.cpu_us_per_request)
                        .sum::<f64>()
                })
        };
        let mut parts = Vec::new();
        if let (Some(hub), Some(ng)) = (cpu("kubehub", &["hub"]), cpu("nginx-proxy", &[])) {
            parts.push(format!(
                "hub alone / nginx one-hop proxy = {hub:.1} / {ng:.1} µs = {:.2}",
                hub / ng
            ));
        }
        if let (Some(kh), Some(rh)) = (cpu("kubehub", &[]), cpu("nginx+rathole", &[])) {
            parts.push(format!(
                "hub + agent / nginx + rathole server + client = {kh:.1} / {rh:.1} µs = {:.2}",
                kh / rh
            ));
        }
        if let (Some(hub), Some(ng)) = (cpu("kubehub", &["hub"]), cpu("nginx-static", &[])) {
            parts.push(format!(
                "hub alone / nginx static = {hub:.1} / {ng:.1} µs = {:.2}",
                hub / ng
            ));
        }
        if let (Some(hub), Some(ng)) = (cpu("kubehub-rv0", &["hub"]), cpu("nginx-static", &[])) {
            parts.push(format!(
                "hub alone (resourceVersion=0) / nginx static = {hub:.1} / {ng:.1} µs = {:.2}",
                hub / ng
            ));
        }
        if !parts.is_empty() {
            r.notes.push(format!(
                "round {round}: CPU per request, {}",
                parts.join("; ")
            ));
        }
    }
    let failed: u64 = r
        .runs
        .iter()
        .flat_map(|x| &x.ops)
        .map(|o| o.error_count())
        .sum();
    r.write(&out)?;
    if a.stack.smoke && failed > 0 {
        return Err(format!(
            "smoke: {failed} requests failed; see {}",
            out.display()
        ));
    }
    Ok(r)
}

fn cpu_of(pids: &[(String, u32)], tck: f64) -> Vec<sys::CpuSample> {
    pids.iter().map(|(_, p)| sys::cpu_sample(*p, tck)).collect()
}

/// Folds per-pid CPU into per-name processes (nginx's workers become one `nginx`).
fn procs_of(
    t: &Target,
    before: &[sys::CpuSample],
    after: &[sys::CpuSample],
    ok: u64,
) -> Vec<ProcStats> {
    let mut out: Vec<ProcStats> = Vec::new();
    for (i, (name, pid)) in t.pids.iter().enumerate() {
        let secs = match (before.get(i), after.get(i)) {
            (Some(b), Some(a)) => sys::cpu_delta(b, a),
            _ => 0.0,
        };
        let rss = sys::rss_kib(*pid).unwrap_or(0);
        match out.iter_mut().find(|p| &p.name == name) {
            Some(p) => {
                p.cpu_secs += secs;
                p.rss_kib += rss;
            }
            None => out.push(ProcStats {
                name: name.clone(),
                rss_kib: rss,
                cpu_secs: secs,
                cpu_us_per_request: None,
            }),
        }
    }
    for p in &mut out {
        p.cpu_us_per_request = (ok > 0).then(|| p.cpu_secs * 1e6 / ok as f64);
    }
    out
}

struct Max {
    per_s: f64,
    errors: u64,
    secs: f64,
}

/// `connections` clients each sending the next request as soon as the last is answered
/// (closed loop: the target is never idle), for a few seconds.
async fn max_run(a: &CompareArgs, t: &Target) -> Result<Max, String> {
    let secs = if a.stack.smoke { 1.0 } else { 5.0 };
    let roots = crate::roots(t.ca_pem.as_deref())?;
    let client = crate::https_client::<http_body_util::Empty<Bytes>>(roots, a.connections)?;
    let url = format!("{}{}", t.base, t.path);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..a.connections.max(1) {
        let (client, url, token) = (client.clone(), url.clone(), t.token.clone());
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors) = (0u64, 0u64);
            while Instant::now() < end {
                let mut req = http::Request::get(&url);
                if let Some(t) = &token {
                    req = req.header("authorization", format!("Bearer {t}"));
                }
                let Ok(req) = req.body(http_body_util::Empty::<Bytes>::new()) else {
                    errors += 1;
                    continue;
                };
                match crate::call::whole(client.request(req).await, &url).await {
                    Ok(a) if (200..300).contains(&a.status) => ok += 1,
                    _ => errors += 1,
                }
            }
            (ok, errors)
        }));
    }
    let (mut ok, mut errors) = (0u64, 0u64);
    for task in tasks {
        let (o, e) = task.await.map_err(|e| e.to_string())?;
        ok += o;
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Max {
        per_s: ok as f64 / secs,
        errors,
        secs,
    })
}

async fn rate_run(a: &CompareArgs, kind: Kind, t: &Target, round: u32) -> Result<Run, String> {
    let rate = a.rate.unwrap_or(match kind {
        Kind::CacheGet => 2000.0,
        Kind::CacheList => 300.0,
        _ => 1000.0,
    });
    let (rate, warmup, duration) = if a.stack.smoke {
        (rate.min(100.0), 1, 1)
    } else {
        (rate, a.warmup, a.duration)
    };
    let op: &'static str = match kind {
        Kind::CacheList => "list",
        _ => "get",
    };
    let path = t.path.clone();
    let load = Load {
        base: t.base.clone(),
        token: t.token.clone(),
        ca_pem: t.ca_pem.clone(),
        rate,
        warmup: Duration::from_secs(warmup),
        duration: Duration::from_secs(duration),
        connections: a.connections,
        timeout: Duration::from_secs(10),
        plan: Arc::new(move |_| Req::get(op, path.clone())),
    };
    let tck = sys::clock_ticks();
    let pids = t.pids.clone();
    let mut before = None;
    let out = crate::load::run(&load, &|_| {}, &mut || before = Some(cpu_of(&pids, tck))).await?;
    let after = cpu_of(&t.pids, tck);
    let before = before.unwrap_or_else(|| after.clone());
    Ok(Run {
        target: t.label.clone(),
        round,
        offered_rate: rate,
        secs: out.measured.1.duration_since(out.measured.0).as_secs_f64(),
        procs: procs_of(t, &before, &after, out.ok()),
        ops: out.ops,
        ..Run::default()
    })
}

/// Bulk: the LIST fetched back to back on one connection for the measured time, then by
/// `stream_parallel` connections at once; MB/s and CPU per MB.
async fn stream_run(a: &CompareArgs, t: &Target, round: u32) -> Result<Run, String> {
    let secs = if a.stack.smoke {
        1.0
    } else {
        a.duration as f64
    };
    let tck = sys::clock_ticks();
    let mut run = Run {
        target: t.label.clone(),
        round,
        ..Run::default()
    };
    for (op, parallel) in [
        ("one stream", 1usize),
        ("parallel streams", a.stream_parallel.max(1)),
    ] {
        let roots = crate::roots(t.ca_pem.as_deref())?;
        let client = crate::https_client::<http_body_util::Empty<Bytes>>(roots, parallel)?;
        let url = format!("{}{}", t.base, t.path);
        let before = cpu_of(&t.pids, tck);
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(secs);
        let mut tasks = Vec::new();
        for _ in 0..parallel {
            let (client, url, token) = (client.clone(), url.clone(), t.token.clone());
            tasks.push(tokio::spawn(async move {
                let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
                    .map_err(|e| e.to_string())?;
                let (mut bytes, mut errors) = (0u64, 0u64);
                while Instant::now() < end {
                    let t0 = Instant::now();
                    let mut req = http::Request::get(&url);
                    if let Some(t) = &token {
                        req = req.header("authorization", format!("Bearer {t}"));
                    }
                    let Ok(req) = req.body(http_body_util::Empty::<Bytes>::new()) else {
                        errors += 1;
                        continue;
                    };
                    match client.request(req).await {
                        Ok(resp) if resp.status().is_success() => {
                            let mut body = resp.into_body();
                            let mut n = 0u64;
                            let mut ok = true;
                            while let Some(f) = body.frame().await {
                                match f {
                                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                                    Err(_) => {
                                        ok = false;
                                        break;
                                    }
                                }
                            }
                            if ok {
                                bytes += n;
                                let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                            } else {
                                errors += 1;
                            }
                        }
                        _ => errors += 1,
                    }
                }
                Ok::<_, String>((h, bytes, errors))
            }));
        }
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| e.to_string())?;
        let (mut bytes, mut errors) = (0u64, 0u64);
        for task in tasks {
            let (hh, b, e) = task.await.map_err(|e| e.to_string())??;
            let _ = h.add(&hh);
            bytes += b;
            errors += e;
        }
        let wall = start.elapsed().as_secs_f64();
        let after = cpu_of(&t.pids, tck);
        let mb = bytes as f64 / 1e6;
        let mut errs = std::collections::BTreeMap::new();
        if errors > 0 {
            errs.insert("failed".to_owned(), errors);
        }
        run.ops.push(OpStats::from_hist(op, &h, errs, wall));
        run.figures.insert(format!("{op}: MB/s"), mb / wall);
        for p in procs_of(t, &before, &after, 0) {
            run.figures.insert(
                format!("{op}: {} CPU ms per MB", p.name),
                p.cpu_secs * 1e3 / mb.max(1e-9),
            );
            if parallel == 1 {
                run.procs.push(p);
            }
        }
        run.secs = wall;
    }
    Ok(run)
}
