//! The fleet scenarios: many simulated agents ([`crate::fleet`]) on one hub process.
//!
//! * `idle`: N agents connect and sync a small inventory each; the hub's resident memory
//!   against agents connected (a curve), per agent at the end, and the time it took.
//! * `reconnect`: the same, then the hub is killed (SIGKILL) and started again; the time until
//!   every agent is back and every cache synced, and the curve of agents back over time.
//! * `mixed`: the 80/20 mix of reads and writes over the N clusters at a constant rate with
//!   churn on the edge and long watches open: per-operation latency, errors, the hub's CPU per
//!   request and memory.
//!
//! Each writes its [`Report`] (JSON, Markdown, plots) to `--out`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressStyle};

use crate::fleet::{Content, Fleet, FleetSpec, HubSpec, HubUnderTest, Progress, WRITTEN};
use crate::load::{Load, Req};
use crate::report::{ProcStats, Report, Run, Series};
use crate::sys;

/// Options every fleet scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetOpts {
    /// The `kubehub` binary (the hub under test); default: the newest `kubehub` built next
    /// to this binary or in the workspace's target/.
    #[arg(long)]
    pub kubehub: Option<PathBuf>,
    /// Output folder (report.json, summary.md, plots; the processes' logs under `run/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Simulated agents (clusters).
    #[arg(long, default_value_t = 1000)]
    pub agents: usize,
    /// Agents per fleet process at most (each tunnel is a descriptor; `ulimit -Hn` bounds a
    /// process).
    #[arg(long, default_value_t = 10_000)]
    pub per_process: usize,
    /// Runtime threads per fleet process.
    #[arg(long, default_value_t = 1)]
    pub fleet_threads: usize,
    /// Agents started per second, over all fleet processes.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    pub hub_cores: usize,
    /// The hub's cached types (`[cache] types`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "v1/namespaces,v1/pods,v1/configmaps,apps/v1/deployments"
    )]
    pub cache_types: Vec<String>,
    /// Seconds to wait for every agent to connect and sync.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Small and quick (CI): 20 agents, short waits and loads.
    #[arg(long)]
    pub smoke: bool,
    #[command(flatten)]
    pub content: Content,
}

impl FleetOpts {
    pub(crate) fn out(&self, scenario: &str) -> PathBuf {
        self.out
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("target/perf/{scenario}")))
    }

    pub(crate) fn agents(&self) -> usize {
        if self.smoke {
            self.agents.min(20)
        } else {
            self.agents.max(1)
        }
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{elapsed:>4}} [{{bar:40}}] {{pos}}/{{len}} {what} {{msg}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

/// The hub and the fleet, started; every agent connected and synced.
struct Started {
    hub: HubUnderTest,
    fleet: Fleet,
    client: crate::HttpClient,
    /// Hub RSS before any agent (KiB).
    rss_empty: u64,
    /// (agents connected, hub RSS MiB) while they came.
    rss_curve: Vec<(f64, f64)>,
    /// Seconds from the first agent started to all connected and synced.
    secs_to_synced: f64,
}

async fn wait_all(
    hub: &HubUnderTest,
    fleet: &mut Fleet,
    client: &crate::HttpClient,
    n: u64,
    timeout: Duration,
    mut sample: impl FnMut(f64, Progress, u64),
) -> Result<f64, String> {
    let t = Instant::now();
    let pb = bar(n, "agents synced");
    let mut done_twice = 0;
    loop {
        let p = hub.progress(client).await.unwrap_or_default();
        let rss = hub.rss_kib().unwrap_or(0);
        sample(t.elapsed().as_secs_f64(), p, rss);
        pb.set_position(p.synced.min(n));
        pb.set_message(format!("({} connected, {} types)", p.agents, p.types));
        // Types appear as their sync streams open: done when two polls in a row agree.
        if p.agents >= n && p.types > 0 && p.synced >= n {
            done_twice += 1;
            if done_twice == 2 {
                pb.finish();
                return Ok(t.elapsed().as_secs_f64());
            }
        } else {
            done_twice = 0;
        }
        fleet.check_alive()?;
        if t.elapsed() > timeout {
            pb.abandon();
            return Err(format!(
                "after {} s: {} of {n} agents connected, {} synced for every type ({} types); see {}",
                timeout.as_secs(),
                p.agents,
                p.synced,
                p.types,
                hub.dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn start(o: &FleetOpts, scenario: &str, churn: f64) -> Result<Started, String> {
    let n = o.agents();
    sys::need_files(
        n as u64 + 256,
        &format!("{n} agents (one descriptor each in the hub process, which inherits this limit)"),
    )?;
    let hub = HubUnderTest::start(&HubSpec {
        kubehub: crate::stack::find_kubehub_or(o.kubehub.as_deref())?,
        dir: o.out(scenario).join("run"),
        cores: o.hub_cores,
        prefix: "sim".into(),
        clusters: n,
        cache_types: o.cache_types.clone(),
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = hub.rss_kib()?;
    let mut fleet = Fleet::start(
        &hub,
        &FleetSpec {
            agents: n,
            per_process: o.per_process,
            threads: o.fleet_threads,
            connect_rate: o.connect_rate,
            churn,
            content: o.content.clone(),
        },
    )?;
    let client = crate::client(None, 2)?;
    let mut rss_curve = Vec::new();
    let secs_to_synced = wait_all(
        &hub,
        &mut fleet,
        &client,
        n as u64,
        Duration::from_secs(if o.smoke { 120 } else { o.timeout }),
        |_, p, rss| rss_curve.push((p.agents as f64, rss as f64 / 1024.0)),
    )
    .await?;
    Ok(Started {
        hub,
        fleet,
        client,
        rss_empty,
        rss_curve,
        secs_to_synced,
    })
}

fn hub_and_fleet_procs(s: &Started, cpu: Option<(f64, f64, u64)>) -> Vec<ProcStats> {
    let per = |secs: f64, ok: u64| (ok > 0).then(|| secs * 1e6 / ok as f64);
    vec![
        ProcStats {
            name: "hub".into(),
            rss_kib: s.hub.rss_kib().unwrap_or(0),
            cpu_secs: cpu.map_or(0.0, |c| c.0),
            cpu_us_per_request: cpu.and_then(|c| per(c.0, c.2)),
        },
        ProcStats {
            name: "fleet (agents + simulated clusters)".into(),
            rss_kib: s.fleet.rss_kib(),
            cpu_secs: cpu.map_or(0.0, |c| c.1),
            cpu_us_per_request: None,
        },
    ]
}

/// `kubehub-perf idle`.
pub async fn idle(o: FleetOpts) -> Result<Report, String> {
    let mut r = Report::new("idle");
    let n = o.agents();
    let s = start(&o, "idle", 0.0).await?;
    // Settle: what idle tunnels hold, not the high-water mark of the connecting burst.
    tokio::time::sleep(Duration::from_secs(if o.smoke { 1 } else { 5 })).await;
    let rss = s.hub.rss_kib()?;
    let fleet_rss = s.fleet.rss_kib();
    let per_agent = rss.saturating_sub(s.rss_empty) as f64 / n as f64;
    let mut run = Run {
        target: "kubehub".into(),
        procs: hub_and_fleet_procs(&s, None),
        ..Run::default()
    };
    run.figures.insert("agents".into(), n as f64);
    run.figures.insert(
        "hub RSS with no agent (MiB)".into(),
        s.rss_empty as f64 / 1024.0,
    );
    run.figures
        .insert("hub RSS (MiB)".into(), rss as f64 / 1024.0);
    run.figures.insert("hub KiB per agent".into(), per_agent);
    run.figures
        .insert("fleet KiB per agent".into(), fleet_rss as f64 / n as f64);
    run.figures.insert(
        "seconds to all connected and synced".into(),
        s.secs_to_synced,
    );
    r.notes.push(format!(
        "{n} agents, each syncing {} to the hub's cache; each cluster holds the 4 system namespaces and {} application namespace(s) with {} deployment(s) of {} pod(s) and {} ConfigMap(s) each, {} node(s); hub with {} worker threads",
        o.cache_types.join(", "),
        o.content.namespaces,
        o.content.deployments,
        o.content.pods,
        o.content.configmaps,
        o.content.nodes,
        o.hub_cores
    ));
    r.runs.push(run);
    r.series.push(Series {
        name: "rss-per-agent".into(),
        title: format!("hub resident memory as {n} agents connect and sync"),
        x_label: "agents connected".into(),
        y_label: "hub RSS (MiB)".into(),
        lines: vec![("hub".into(), s.rss_curve.clone())],
    });
    r.write(&o.out("idle"))?;
    Ok(r)
}

/// `kubehub-perf reconnect`.
pub async fn reconnect(o: FleetOpts) -> Result<Report, String> {
    let mut r = Report::new("reconnect");
    let n = o.agents() as u64;
    let mut s = start(&o, "reconnect", 0.0).await?;
    let first = s.secs_to_synced;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    s.hub.restart().await?;
    let restarted = t.elapsed().as_secs_f64();
    let (mut back, mut synced) = (vec![(0.0, 0.0)], vec![(0.0, 0.0)]);
    let (mut all_back, mut all_synced) = (None, None);
    let secs = wait_all(
        &s.hub,
        &mut s.fleet,
        &s.client,
        n,
        Duration::from_secs(if o.smoke { 120 } else { o.timeout }),
        |at, p, _| {
            let at = at + restarted;
            back.push((at, p.agents as f64));
            synced.push((at, p.synced as f64));
            if all_back.is_none() && p.agents >= n {
                all_back = Some(at);
            }
            if all_synced.is_none() && p.agents >= n && p.types > 0 && p.synced >= n {
                all_synced = Some(at);
            }
        },
    )
    .await?;
    let mut run = Run {
        target: "kubehub".into(),
        procs: hub_and_fleet_procs(&s, None),
        ..Run::default()
    };
    run.figures.insert("agents".into(), n as f64);
    run.figures
        .insert("seconds to first connect and sync".into(), first);
    run.figures
        .insert("seconds until the new hub answered".into(), restarted);
    run.figures.insert(
        "seconds until every agent was back".into(),
        all_back.unwrap_or(secs + restarted),
    );
    run.figures.insert(
        "seconds until every cache was synced".into(),
        all_synced.unwrap_or(secs + restarted),
    );
    r.notes.push(format!(
        "the hub was killed with SIGKILL and started again at t = 0; agents reconnect with the default backoff (full jitter from 500 ms, doubling to 30 s); {} cached types each",
        o.cache_types.len()
    ));
    r.runs.push(run);
    r.series.push(Series {
        name: "reconnect".into(),
        title: format!("{n} agents after a hub restart"),
        x_label: "seconds since the kill".into(),
        y_label: "agents".into(),
        lines: vec![("connected".into(), back), ("synced".into(), synced)],
    });
    r.write(&o.out("reconnect"))?;
    Ok(r)
}

/// Options of `kubehub-perf mixed`.
#[derive(Debug, Clone, clap::Args)]
pub struct MixedArgs {
    #[command(flatten)]
    pub fleet: FleetOpts,
    /// Requests per second offered (open loop).
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 30)]
    pub duration: u64,
    /// Seconds of warm-up.
    #[arg(long, default_value_t = 3)]
    pub warmup: u64,
    /// Requests in flight at most (keep-alive connections).
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Percent of requests that are writes (the rest: GETs and LISTs, 2:1).
    #[arg(long, default_value_t = 20)]
    pub write_percent: u64,
    /// Edge writes per second over all clusters (the simulator's churn).
    #[arg(long, default_value_t = 50.0)]
    pub churn: f64,
    /// Long watches kept open through the hub, on random clusters.
    #[arg(long, default_value_t = 100)]
    pub watches: usize,
}

/// A deterministic spread of request `n` over `clusters`.
fn pick(n: u64, clusters: usize) -> usize {
    // SplitMix64: successive requests land on unrelated clusters.
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) % clusters as u64) as usize
}

/// The mix: `write_percent` merge-patches of `default/configmaps/perf`, the rest GETs of a
/// cached object and LISTs of a cached namespace, over random clusters.
pub fn mixed_plan(clusters: usize, write_percent: u64) -> crate::load::Plan {
    std::sync::Arc::new(move |n: u64| {
        let c = pick(n, clusters);
        let base = format!("/clusters/sim-{c}");
        let slot = n.wrapping_mul(0x9e37_79b9) % 100;
        if slot < write_percent {
            Req {
                op: "write",
                method: http::Method::PATCH,
                path: format!("{base}/api/v1/namespaces/default/configmaps/{WRITTEN}"),
                body: Some((
                    Bytes::from(format!("{{\"data\":{{\"n\":\"{n}\"}}}}")),
                    "application/merge-patch+json",
                )),
            }
        } else if slot % 3 == 0 {
            Req::get("list", format!("{base}/api/v1/namespaces/kube-system/pods"))
        } else if slot % 3 == 1 {
            Req::get(
                "list",
                format!("{base}/api/v1/namespaces/default/configmaps"),
            )
        } else {
            Req::get(
                "get",
                format!("{base}/api/v1/namespaces/default/configmaps/{WRITTEN}"),
            )
        }
    })
}

/// Long watches through the hub: counts the bytes of events they receive.
fn open_watches(
    s: &Started,
    count: usize,
    clusters: usize,
) -> Result<
    (
        Vec<tokio::task::JoinHandle<()>>,
        std::sync::Arc<std::sync::atomic::AtomicU64>,
    ),
    String,
> {
    use http_body_util::BodyExt;
    let roots = crate::roots(Some(&s.hub.ca_pem))?;
    let client = crate::https_client::<http_body_util::Empty<Bytes>>(roots, count.max(1))?;
    let lines = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..count {
        let c = pick(u64::MAX - w as u64, clusters);
        let url = format!(
            "{}/clusters/sim-{c}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0&allowWatchBookmarks=true",
            s.hub.url
        );
        let (client, token, lines) = (client.clone(), s.hub.token.clone(), lines.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(req) = http::Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Empty::<Bytes>::new())
            else {
                return;
            };
            let Ok(resp) = client.request(req).await else {
                return;
            };
            let mut body = resp.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data() {
                    let n = d.iter().filter(|&&b| b == b'\n').count() as u64;
                    lines.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }));
    }
    Ok((tasks, lines))
}

/// `kubehub-perf mixed`.
pub async fn mixed(a: MixedArgs) -> Result<Report, String> {
    let mut r = Report::new("mixed");
    let o = &a.fleet;
    let n = o.agents();
    let (rate, duration, warmup) = if o.smoke {
        (a.rate.min(50.0), 3, 1)
    } else {
        (a.rate, a.duration, a.warmup)
    };
    let churn = if o.smoke { a.churn.min(5.0) } else { a.churn };
    let s = start(o, "mixed", churn).await?;
    let (watches, lines) = open_watches(&s, if o.smoke { 5 } else { a.watches }, n)?;
    let load = Load {
        base: s.hub.url.clone(),
        token: Some(s.hub.token.clone()),
        ca_pem: Some(s.hub.ca_pem.clone()),
        rate,
        warmup: Duration::from_secs(warmup),
        duration: Duration::from_secs(duration),
        connections: a.connections,
        timeout: Duration::from_secs(10),
        plan: mixed_plan(n, a.write_percent),
    };
    let tck = sys::clock_ticks();
    let pb = bar(1000, "of the load");
    let mut marks = None;
    let hub_pid = s.hub.pid;
    let fleet_pids = s.fleet.pids.clone();
    let cpu_now = move || {
        (
            sys::cpu_secs(hub_pid, tck),
            fleet_pids
                .iter()
                .map(|p| sys::cpu_secs(*p, tck))
                .sum::<f64>(),
            lines.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let cpu_now2 = cpu_now.clone();
    let out = crate::load::run(
        &load,
        &|f| pb.set_position((f * 1000.0) as u64),
        &mut || marks = Some(cpu_now2()),
    )
    .await?;
    pb.finish();
    let end = cpu_now();
    let begin = marks.unwrap_or(end);
    let secs = out.measured.1.duration_since(out.measured.0).as_secs_f64();
    for w in watches {
        w.abort();
    }
    let ok = out.ok();
    let mut run = Run {
        target: "kubehub".into(),
        offered_rate: rate,
        secs,
        ops: out.ops.clone(),
        procs: hub_and_fleet_procs(&s, Some((end.0 - begin.0, end.1 - begin.1, ok))),
        ..Run::default()
    };
    run.figures.insert("agents".into(), n as f64);
    run.figures.insert(
        "watch events received per s".into(),
        (end.2 - begin.2) as f64 / secs.max(1e-9),
    );
    run.figures.insert("edge churn per s".into(), churn);
    let errors: u64 = out.ops.iter().map(|o| o.error_count()).sum();
    r.notes.push(format!(
        "{n} clusters; {rate}/s offered: {}% merge-patches of default/configmaps/{WRITTEN} (forwarded, then back through the cache's sync), the rest GETs of that object and LISTs of default/configmaps or kube-system/pods (served from the cache); {} long watches open; edge churn {churn}/s; {errors} errors",
        a.write_percent,
        if o.smoke { 5 } else { a.watches },
    ));
    r.runs.push(run);
    r.write(&o.out("mixed"))?;
    if o.smoke && (ok == 0 || errors > 0) {
        return Err(format!(
            "smoke: {ok} requests succeeded, {errors} failed; see {}",
            o.out("mixed").display()
        ));
    }
    Ok(r)
}
