//! `failover`: three hubs, agents with tunnels to two of them, one hub killed: how long until
//! every cluster answers again through a hub that stays, and how many requests failed
//! (issue #13).
//!
//! * Hub processes A, B and C (`hub-a`, `hub-b`, `hub-c`), each with a hub certificate on its
//!   agent listener (`Ca::issue_hub`: it dials peer links with it) and the same **static
//!   directory** (`[registry] file`, no metaserver): the three hubs and, per cluster, the two
//!   hubs its agent holds tunnels to, in the order a forwarding hub tries them.
//! * N simulated agents ([`crate::fleet`]), each with a static list of two hubs
//!   ([`crate::fleet::agent_hubs`]): AB, BC, CA, then BA, CB, AC, … — a sixth of the clusters
//!   in each order. Through B, clusters whose agent holds a tunnel to B are served by B
//!   itself; CA clusters are forwarded to C (C first), AC clusters to A (A first).
//! * A prober sends a forwarded GET (a ServiceAccount: not a cached type, so it goes through
//!   a tunnel to the agent) for every cluster in turn through B at a constant rate, open loop,
//!   recording each request's cluster, scheduled time, completion and outcome.
//! * `--before` seconds into the probing, hub A is killed (`--how kill`: SIGKILL, its sockets
//!   reset; `--how stop`: SIGSTOP, a hub that hangs without closing anything, as a frozen
//!   machine or a partition without resets would). Per cluster: the time from the kill until
//!   a request for it through B succeeded after its last failure (with no failure: its first
//!   success after the kill, i.e. the probe interval), and its failed requests.
//!
//! The directory stays as written: with meta, A's record would go when its lease expires and
//! the agents' records would change; here B keeps A in the directory and tries it first for
//! the AC clusters on every request (a refused connection costs little on loopback). The
//! registry watch's effect is covered by hub/tests, not measured here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use kubehub_pki::Ca;

use crate::fleet::{agent_hubs, Fleet, FleetSpec};
use crate::report::{OpStats, ProcStats, Report, Run, Series};
use crate::scenario::FleetOpts;
use crate::stack::{write_file, CacheMode, HubToml, Procs, Stop};
use crate::sys;

/// Options of `kubehub-perf failover`.
#[derive(Debug, Clone, clap::Args)]
pub struct FailoverArgs {
    #[command(flatten)]
    pub fleet: FleetOpts,
    /// Probes per second through hub B, over all clusters in turn (each cluster is probed
    /// every agents / rate seconds).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds of probing before the kill.
    #[arg(long, default_value_t = 5)]
    pub before: u64,
    /// Seconds of probing after the kill.
    #[arg(long, default_value_t = 20)]
    pub after: u64,
    /// Probes in flight at most (keep-alive connections to B).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// A probe without a whole answer after this many seconds counts as failed (`timeout`).
    #[arg(long, default_value_t = 30)]
    pub request_timeout: u64,
    /// How hub A goes: `kill` (SIGKILL) or `stop` (SIGSTOP: it hangs; killed at the end).
    #[arg(long, default_value = "kill")]
    pub how: String,
}

const HUBS: [&str; 3] = ["hub-a", "hub-b", "hub-c"];
/// The hub killed and the hub probed through (indexes into [`HUBS`]).
const KILLED: usize = 0;
const PROBED: usize = 1;
/// What is probed: forwarded to the edge (the fleet's hub does not cache service accounts).
const PROBE: &str = "/api/v1/namespaces/default/serviceaccounts/default";

struct Hub {
    user_url: String,
    agent_addr: String,
    metrics_url: String,
}

/// How a cluster is reached through B: `b-holds` (B holds a tunnel: served by B),
/// `a-first` (forwarded; the directory lists A, then C), `c-first` (C, then A).
fn group(set: &[usize]) -> &'static str {
    if set.contains(&PROBED) {
        "b-holds"
    } else if set.first() == Some(&KILLED) {
        "a-first"
    } else if set.contains(&KILLED) {
        "c-first"
    } else {
        "no-a"
    }
}

/// One probe.
#[derive(Debug, Clone)]
struct Probe {
    cluster: usize,
    scheduled: Instant,
    done: Instant,
    error: Option<String>,
}

/// 1 µs .. 10 min, 3 significant digits.
fn hist() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Writes the CA, the hubs' certificates and configurations, the access file and the
/// directory; starts the hubs.
async fn start_hubs(
    o: &FleetOpts,
    dir: &std::path::Path,
    clusters: &[(String, Vec<usize>)],
    procs: &mut Procs,
) -> Result<(Vec<Hub>, String, String), String> {
    let ca = Ca::generate("kubehub-perf CA").map_err(|e| e.to_string())?;
    write_file(dir, "ca.crt", &ca.cert_pem())?;
    write_file(dir, "ca.key", &ca.key_pem())?;
    let user_cert = ca
        .issue_server(&["localhost", "127.0.0.1"])
        .map_err(|e| e.to_string())?;
    write_file(dir, "hub.crt", &user_cert.cert)?;
    write_file(dir, "hub.key", &user_cert.key)?;
    let names: Vec<String> = clusters.iter().map(|(c, _)| c.clone()).collect();
    let token = kubehub_hub::access::write_dev_file(&dir.join("access.json"), "perf", &names)
        .map_err(|e| format!("access.json: {e}"))?;
    let mut ports = Vec::new();
    for _ in HUBS {
        ports.push((sys::free_port()?, sys::free_port()?, sys::free_port()?));
    }
    let directory = crate::peer_hop::registry_lines(
        &HUBS
            .iter()
            .zip(&ports)
            .map(|(id, p)| ((*id).to_owned(), format!("127.0.0.1:{}", p.1)))
            .collect::<Vec<_>>(),
        &clusters
            .iter()
            .map(|(c, set)| {
                (
                    c.clone(),
                    set.iter().map(|h| HUBS[*h].to_owned()).collect::<Vec<_>>(),
                )
            })
            .collect::<Vec<_>>(),
    );
    write_file(dir, "registry.ndjson", &directory)?;
    let bin = crate::stack::find_kubehub_or(o.kubehub.as_deref())?;
    let bin = std::path::absolute(&bin).map_err(|e| e.to_string())?;
    let mut hubs = Vec::new();
    for (id, (user, agents, admin)) in HUBS.iter().zip(&ports) {
        let cert = ca
            .issue_hub(id, &["localhost", "127.0.0.1"])
            .map_err(|e| format!("{id} certificate: {e}"))?;
        write_file(dir, &format!("{id}.crt"), &cert.cert)?;
        write_file(dir, &format!("{id}.key"), &cert.key)?;
        let toml = HubToml {
            id: (*id).to_owned(),
            cores: o.hub_cores,
            clusters: Vec::new(),
            user_port: *user,
            agent_port: *agents,
            admin_port: *admin,
            cache: CacheMode::Types(o.cache_types.clone()),
            limits: vec![("max_connections".into(), "1000000".into())],
            agent_cert: Some((format!("{id}.crt"), format!("{id}.key"))),
            registry: Some("registry.ndjson".into()),
        };
        write_file(dir, &format!("{id}.toml"), &toml.render())?;
        procs.start(id, &bin, dir, &["hub", "--config", &format!("{id}.toml")])?;
        hubs.push(Hub {
            user_url: format!("https://127.0.0.1:{user}"),
            agent_addr: format!("127.0.0.1:{agents}"),
            metrics_url: format!("http://127.0.0.1:{admin}/metrics"),
        });
    }
    let plain = crate::client(None, 3)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    for h in &hubs {
        while crate::edge::get_bytes(&plain, &h.metrics_url)
            .await
            .is_err()
        {
            procs.check_alive()?;
            if Instant::now() > deadline {
                return Err(format!("{} did not answer in 30 s", h.metrics_url));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok((hubs, token, ca.cert_pem()))
}

/// Waits until every hub has its agents connected and synced.
async fn wait_synced(
    hubs: &[Hub],
    expected: &[u64],
    procs: &mut Procs,
    fleet: &mut Fleet,
    timeout: Duration,
) -> Result<f64, String> {
    let t = Instant::now();
    let client = crate::client(None, 3)?;
    let mut last_print = Instant::now();
    let mut agreed = 0;
    loop {
        let mut done = true;
        let mut states = Vec::new();
        for (i, h) in hubs.iter().enumerate() {
            let text = crate::edge::get_bytes(&client, &h.metrics_url)
                .await
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let (agents, synced) = crate::stack::parse_metrics(&text);
            let min = synced.iter().map(|(_, v)| *v).min().unwrap_or(0);
            done &= agents >= expected[i] && !synced.is_empty() && min >= expected[i];
            states.push(format!(
                "{}: {agents}/{} agents, {min} synced",
                HUBS[i], expected[i]
            ));
        }
        if done {
            agreed += 1;
            if agreed == 2 {
                return Ok(t.elapsed().as_secs_f64());
            }
        } else {
            agreed = 0;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "  {:.0} s: {}",
                t.elapsed().as_secs_f64(),
                states.join("; ")
            );
        }
        procs.check_alive()?;
        fleet.check_alive()?;
        if t.elapsed() > timeout {
            return Err(format!(
                "after {} s: {}",
                timeout.as_secs(),
                states.join("; ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One GET through B: `None` on a 2xx answer read whole, else what went wrong.
async fn get(client: &crate::HttpClient, url: String, token: &str) -> Option<String> {
    let req = match http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
    {
        Ok(r) => r,
        Err(e) => return Some(format!("request: {e}")),
    };
    let resp = match client.request(req).await {
        Ok(r) => r,
        Err(e) if e.is_connect() => return Some("connect".into()),
        Err(_) => return Some("transport".into()),
    };
    let status = resp.status();
    match resp.into_body().collect().await {
        Err(_) => Some("body".into()),
        Ok(_) if !status.is_success() => Some(format!("status {}", status.as_u16())),
        Ok(_) => None,
    }
}

/// Runs `kubehub-perf failover`.
pub async fn run(a: FailoverArgs) -> Result<Report, String> {
    let mut r = Report::new("failover");
    let o = &a.fleet;
    let n = if o.smoke {
        o.agents.min(12)
    } else {
        o.agents()
    };
    let (rate, before, after) = if o.smoke {
        (a.rate.min(100.0), 2, 3)
    } else {
        (a.rate, a.before, a.after)
    };
    let stop = match a.how.as_str() {
        "kill" => false,
        "stop" => true,
        x => return Err(format!("--how {x}: kill or stop")),
    };
    let out = o.out("failover");
    let dir = std::path::absolute(out.join("run")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Two tunnels per agent: each fleet process holds twice its agents in descriptors.
    let per_process = o.per_process.clamp(1, 9_000);
    sys::need_files(
        n as u64 + 512,
        &format!("{n} agents (a hub holds two thirds of them, plus links and probes)"),
    )?;
    let clusters: Vec<(String, Vec<usize>)> = (0..n)
        .map(|i| (format!("sim-{i}"), agent_hubs(i, HUBS.len(), 2)))
        .collect();
    let expected: Vec<u64> = (0..HUBS.len())
        .map(|h| clusters.iter().filter(|(_, s)| s.contains(&h)).count() as u64)
        .collect();
    let mut procs = Procs::default();
    let (hubs, token, ca_pem) = start_hubs(o, &dir, &clusters, &mut procs).await?;
    let mut fleet = Fleet::start_with(
        &hubs
            .iter()
            .map(|h| h.agent_addr.clone())
            .collect::<Vec<_>>(),
        2,
        &dir,
        &FleetSpec {
            agents: n,
            per_process,
            threads: o.fleet_threads,
            connect_rate: o.connect_rate,
            churn: 0.0,
            content: o.content.clone(),
        },
    )?;
    let synced_after = wait_synced(
        &hubs,
        &expected,
        &mut procs,
        &mut fleet,
        Duration::from_secs(if o.smoke { 120 } else { o.timeout }),
    )
    .await?;
    eprintln!("failover: {n} agents connected and synced to their two hubs in {synced_after:.1} s");

    // Every cluster answers through B, and B's links to A and C are up.
    let client = crate::https_client::<http_body_util::Empty<Bytes>>(
        crate::roots(Some(&ca_pem))?,
        a.connections.max(1),
    )?;
    let b = &hubs[PROBED];
    let url = |c: usize| format!("{}/clusters/sim-{c}{PROBE}", b.user_url);
    for chunk in (0..n).collect::<Vec<_>>().chunks(32) {
        let mut set = tokio::task::JoinSet::new();
        for &c in chunk {
            let (client, u, token) = (client.clone(), url(c), token.clone());
            set.spawn(async move { (c, get(&client, u, &token).await) });
        }
        while let Some(res) = set.join_next().await {
            let (c, err) = res.map_err(|e| e.to_string())?;
            if let Some(e) = err {
                return Err(format!("sim-{c} through {}: {e}", HUBS[PROBED]));
            }
        }
    }

    // Memory and descriptors with everything up.
    let pids: Vec<(&'static str, u32)> = procs.pids();
    let mut setup = Run {
        target: "set-up".into(),
        ..Run::default()
    };
    setup.figures.insert("agents".into(), n as f64);
    setup.figures.insert(
        "seconds to connect and sync every tunnel".into(),
        synced_after,
    );
    for (name, pid) in &pids {
        setup.procs.push(ProcStats {
            name: (*name).to_owned(),
            rss_kib: sys::rss_kib(*pid).unwrap_or(0),
            ..ProcStats::default()
        });
        setup
            .figures
            .insert(format!("{name}: open descriptors"), open_fds(*pid) as f64);
    }
    setup.procs.push(ProcStats {
        name: "fleet".into(),
        rss_kib: fleet.rss_kib(),
        ..ProcStats::default()
    });
    setup.figures.insert(
        "fleet: open descriptors".into(),
        fleet.pids.iter().map(|p| open_fds(*p)).sum::<u64>() as f64,
    );

    // The probes.
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let start = Instant::now() + Duration::from_millis(20);
    let kill_at = start + Duration::from_secs(before);
    let end = kill_at + Duration::from_secs(after);
    let prober = {
        let (client, token) = (client.clone(), token.clone());
        let base = format!("{}/clusters", b.user_url);
        let timeout = Duration::from_secs(a.request_timeout);
        let slots = Arc::new(tokio::sync::Semaphore::new(a.connections.max(1)));
        tokio::spawn(async move {
            let (pacer, mut sched) = crate::load::pacer(start, period, end);
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Probe>();
            while let Some((i, scheduled)) = sched.recv().await {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    break;
                };
                let cluster = (i as usize) % n;
                let (client, token, tx) = (client.clone(), token.clone(), tx.clone());
                let u = format!("{base}/sim-{cluster}{PROBE}");
                tokio::spawn(async move {
                    let error = match tokio::time::timeout(timeout, get(&client, u, &token)).await {
                        Ok(e) => e,
                        Err(_) => Some("timeout".into()),
                    };
                    let _ = tx.send(Probe {
                        cluster,
                        scheduled,
                        done: Instant::now(),
                        error,
                    });
                    drop(permit);
                });
            }
            drop(tx);
            let _ = pacer.join();
            let mut v = Vec::new();
            while let Some(p) = rx.recv().await {
                v.push(p);
            }
            v
        })
    };
    let tck = sys::clock_ticks();
    let cpu_all = |pids: &[(&'static str, u32)], fleet: &Fleet| {
        let mut v: Vec<(String, sys::CpuSample)> = pids
            .iter()
            .map(|(n, p)| ((*n).to_owned(), sys::cpu_sample(*p, tck)))
            .collect();
        for (i, p) in fleet.pids.iter().enumerate() {
            v.push((format!("fleet-{i}"), sys::cpu_sample(*p, tck)));
        }
        v
    };
    // CPU over the second half of the time before the kill, and over the time after it.
    tokio::time::sleep_until((start + Duration::from_secs(before) / 2).into()).await;
    let cpu0 = (Instant::now(), cpu_all(&pids, &fleet));
    tokio::time::sleep_until(kill_at.into()).await;
    let cpu1 = (Instant::now(), cpu_all(&pids, &fleet));
    let killed_pid = procs.pid(HUBS[KILLED]).unwrap_or(0);
    let t_kill = Instant::now();
    if stop {
        let sent = std::process::Command::new("kill")
            .args(["-STOP", &killed_pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            return Err(format!("could not stop {} ({killed_pid})", HUBS[KILLED]));
        }
    } else {
        procs.stop(HUBS[KILLED], Stop::Kill).await?;
    }
    let kill_took = t_kill.elapsed();
    tokio::time::sleep_until(end.into()).await;
    let cpu2 = (Instant::now(), cpu_all(&procs.pids(), &fleet));
    let probes = prober.await.map_err(|e| e.to_string())?;
    if stop {
        procs.stop(HUBS[KILLED], Stop::Kill).await?;
    }
    fleet.check_alive()?;

    // Per cluster: failures after the kill, and when it answered again.
    let sets: Vec<&'static str> = clusters.iter().map(|(_, s)| group(s)).collect();
    let mut groups: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (c, g) in sets.iter().enumerate() {
        groups.entry(g).or_default().push(c);
    }
    let mut by_cluster: Vec<Vec<&Probe>> = vec![Vec::new(); n];
    for p in &probes {
        by_cluster[p.cluster].push(p);
    }
    let mut recovered_ms = vec![f64::NAN; n];
    let mut failed = vec![0u64; n];
    let mut last_failure_ms = vec![f64::NAN; n];
    for c in 0..n {
        let v = &mut by_cluster[c];
        v.sort_by_key(|p| p.scheduled);
        let after_kill: Vec<&&Probe> = v.iter().filter(|p| p.done >= t_kill).collect();
        let last_fail = after_kill
            .iter()
            .filter(|p| p.error.is_some())
            .map(|p| p.scheduled)
            .max();
        failed[c] = after_kill.iter().filter(|p| p.error.is_some()).count() as u64;
        if let Some(lf) = after_kill
            .iter()
            .filter(|p| p.error.is_some())
            .map(|p| p.done)
            .max()
        {
            last_failure_ms[c] = ms(lf.duration_since(t_kill));
        }
        let first_ok = after_kill
            .iter()
            .filter(|p| p.error.is_none())
            .filter(|p| match last_fail {
                Some(lf) => p.scheduled > lf,
                None => p.scheduled >= t_kill,
            })
            .map(|p| p.done)
            .min();
        if let Some(t) = first_ok {
            // Not before the last failure was known (a failure can take a timeout to come).
            recovered_ms[c] = ms(t.duration_since(t_kill)).max(last_failure_ms[c]);
        }
    }
    // Every probe, for a closer look (ms relative to the kill).
    let mut csv = String::from("cluster,group,scheduled_ms,latency_ms,error\n");
    let mut sorted: Vec<&Probe> = probes.iter().collect();
    sorted.sort_by_key(|p| p.scheduled);
    for p in sorted {
        let rel = p
            .scheduled
            .checked_duration_since(t_kill)
            .map_or_else(|| -ms(t_kill.duration_since(p.scheduled)), ms);
        csv.push_str(&format!(
            "sim-{},{},{rel:.3},{:.3},{}\n",
            p.cluster,
            sets[p.cluster],
            ms(p.done.duration_since(p.scheduled)),
            p.error.as_deref().unwrap_or("")
        ));
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    write_file(&out, "probes.csv", &csv)?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for p in probes.iter().filter(|p| p.done >= t_kill) {
        if let Some(e) = &p.error {
            *errors.entry(e.clone()).or_default() += 1;
        }
    }

    // Latencies (from the scheduled time) before and after the kill, per group.
    for (label, window) in [
        ("before the kill", (start, t_kill)),
        ("after the kill", (t_kill, end)),
    ] {
        let mut run = Run {
            target: format!("through {} {label}", HUBS[PROBED]),
            offered_rate: rate,
            secs: window.1.duration_since(window.0).as_secs_f64(),
            ..Run::default()
        };
        for (g, members) in &groups {
            let mut h = hist()?;
            let mut errs: BTreeMap<String, u64> = BTreeMap::new();
            for c in members {
                for p in &by_cluster[*c] {
                    if p.scheduled < window.0 || p.scheduled >= window.1 {
                        continue;
                    }
                    match &p.error {
                        None => {
                            let _ = h.record(
                                p.done.duration_since(p.scheduled).as_micros().max(1) as u64
                            );
                        }
                        Some(e) => *errs.entry(e.clone()).or_default() += 1,
                    }
                }
            }
            run.ops.push(OpStats::from_hist(g, &h, errs, run.secs));
        }
        r.runs.push(run);
    }

    // The outcome, per group and over all clusters.
    let mut outcome = Run {
        target: "failover".into(),
        ..Run::default()
    };
    let mut curve_lines = Vec::new();
    for (g, members) in groups
        .iter()
        .map(|(g, m)| (*g, m.clone()))
        .chain(std::iter::once(("all", (0..n).collect::<Vec<_>>())))
    {
        let mut rec: Vec<f64> = members.iter().map(|c| recovered_ms[*c]).collect();
        let never = rec.iter().filter(|x| x.is_nan()).count();
        rec.retain(|x| !x.is_nan());
        let fails: u64 = members.iter().map(|c| failed[*c]).sum();
        let hit = members.iter().filter(|c| failed[**c] > 0).count();
        let mut last: Vec<f64> = members
            .iter()
            .map(|c| last_failure_ms[*c])
            .filter(|x| !x.is_nan())
            .collect();
        let f = &mut outcome.figures;
        f.insert(format!("{g}: clusters"), members.len() as f64);
        f.insert(format!("{g}: failed requests after the kill"), fails as f64);
        f.insert(format!("{g}: clusters with a failed request"), hit as f64);
        f.insert(format!("{g}: clusters never answered again"), never as f64);
        f.insert(
            format!("{g}: ms from the kill to a success after the last failure, p50"),
            percentile(&mut rec.clone(), 0.5),
        );
        f.insert(
            format!("{g}: ms from the kill to a success after the last failure, max"),
            percentile(&mut rec.clone(), 1.0),
        );
        if !last.is_empty() {
            f.insert(
                format!("{g}: ms from the kill to the last failure, max"),
                percentile(&mut last, 1.0),
            );
        }
        rec.sort_by(|a, b| a.total_cmp(b));
        let pts: Vec<(f64, f64)> = rec
            .iter()
            .enumerate()
            .map(|(i, x)| (x / 1e3, (i + 1) as f64))
            .collect();
        curve_lines.push((g.to_owned(), pts));
    }
    outcome.figures.insert(
        "probe interval per cluster (ms)".into(),
        n as f64 / rate * 1e3,
    );
    outcome
        .figures
        .insert("ms to send the signal and reap".into(), ms(kill_took));
    outcome
        .figures
        .insert("probes scheduled".into(), probes.len() as f64);
    // CPU per probe answered, before and after the kill, per process.
    let answered = |from: Instant, to: Instant| {
        probes
            .iter()
            .filter(|p| p.error.is_none() && p.done >= from && p.done < to)
            .count() as u64
    };
    for (label, (t0, s0), (t1, s1)) in [
        ("before the kill", &cpu0, &cpu1),
        ("after the kill", &cpu1, &cpu2),
    ] {
        let ok = answered(*t0, *t1).max(1);
        let secs = t1.duration_since(*t0).as_secs_f64();
        for (name, b0) in s0 {
            let Some((_, b1)) = s1.iter().find(|(x, _)| x == name) else {
                continue;
            };
            let cpu = sys::cpu_delta(b0, b1);
            outcome.figures.insert(
                format!("{label}: {name} CPU µs per probe answered"),
                cpu * 1e6 / ok as f64,
            );
            outcome.figures.insert(
                format!("{label}: {name} % of a core"),
                cpu / secs.max(1e-9) * 100.0,
            );
        }
    }
    let mut h = hist()?;
    for x in recovered_ms.iter().filter(|x| !x.is_nan()) {
        let _ = h.record((x * 1e3).max(1.0) as u64);
    }
    outcome
        .ops
        .push(OpStats::from_hist("recovery", &h, errors.clone(), 0.0));
    r.runs.push(setup);
    r.runs.push(outcome);
    r.series.push(Series {
        name: "recovered".into(),
        title: format!(
            "{n} clusters: answered again through {} after {} {}",
            HUBS[PROBED],
            if stop { "SIGSTOP of" } else { "kill -9 of" },
            HUBS[KILLED]
        ),
        x_label: "seconds since the kill".into(),
        y_label: "clusters answered again".into(),
        lines: curve_lines,
    });
    let total_failed: u64 = failed.iter().sum();
    r.notes.push(format!(
        "{n} simulated agents, each with tunnels to two of the three hubs (static lists: AB, BC, CA, BA, CB, AC in turn); every hub's `[registry] file` lists the three hubs and each cluster's two holders in that order (static: nothing tells B that {} went away); hubs with {} worker threads, caching {}",
        HUBS[KILLED],
        o.hub_cores,
        o.cache_types.join(", ")
    ));
    r.notes.push(format!(
        "probes: GET `{PROBE}` (not cached: through a tunnel to the agent) for sim-0, sim-1, … in turn through {} at {rate}/s open loop (each cluster every {:.0} ms), at most {} in flight, a probe failing after {} s; {before} s before and {after} s after {} (pid {killed_pid}) was sent {}",
        HUBS[PROBED],
        n as f64 / rate * 1e3,
        a.connections,
        a.request_timeout,
        HUBS[KILLED],
        if stop { "SIGSTOP (killed after the probes)" } else { "SIGKILL" }
    ));
    r.notes.push(
        "groups: `b-holds`: clusters whose agent holds a tunnel to B (AB, BC, BA, CB: B serves them itself); `a-first`: AC clusters, which B forwards to A, then C if A cannot be reached; `c-first`: CA clusters (C, then A); `all`: every cluster. Op `recovery`: per cluster, the ms from the kill to a success (below)".into(),
    );
    r.notes.push(format!(
        "{} probes, {total_failed} failed after the kill ({}); per cluster, the time from the kill to its first success scheduled after its last failure, and not before that failure came (no failure: its first success after the kill, which is at most the probe interval plus a latency); every probe in probes.csv",
        probes.len(),
        if errors.is_empty() {
            "none".to_owned()
        } else {
            errors
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    r.write(&out)?;
    if o.smoke && !stop {
        let unanswered = recovered_ms.iter().filter(|x| x.is_nan()).count();
        if unanswered > 0 {
            return Err(format!(
                "smoke: {unanswered} clusters never answered after the kill; see {}",
                out.display()
            ));
        }
    }
    Ok(r)
}
