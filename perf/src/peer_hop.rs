//! `peer-hop`: what the extra hop of hub-to-hub forwarding costs (issue #13). One edge cluster
//! ([`crate::stack`]: simulator → agent → hub A, as processes) and a second hub process, C,
//! without a tunnel to it: C's hub.toml names a static directory (`[registry] file`: hub A's
//! agent listener, and the cluster held by A), so C forwards every request for the cluster
//! over a peer link to A (`PROTOCOL.md` §12). Both hubs present hub certificates
//! (`Ca::issue_hub`) on their agent listeners, as enrolled hubs do; they share the access file
//! (each authenticates and authorizes the request itself).
//!
//! The same two GETs at the same constant rate, open loop, through A directly and through C:
//!
//! * `rv0`: one ConfigMap with `resourceVersion=0`, served from A's cache (C forwards it; A
//!   answers it from its cache; the agent and the edge do nothing);
//! * `fwd`: a ServiceAccount, a type the hub does not cache: forwarded through A's tunnel to
//!   the agent and the simulator (the path of the `forward` scenario).
//!
//! Per run, the CPU time of every process (hub A, hub C, agent, simulator) over the measured
//! interval, per request; per round, the C path's total against the A path's (same request,
//! same round) and the p99s' ratio.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::load::{Load, Req};
use crate::report::{ProcStats, Report, Run};
use crate::stack::{
    write_file, CacheMode, HubToml, MachineMark, Stack, StackArgs, StackOptions, Stop,
};
use crate::sys;

/// Options of `kubehub-perf peer-hop`.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerHopArgs {
    /// Rounds; each measures every target once, in a rotating order.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Requests per second offered (open loop), every target.
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Seconds measured per target and round.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of warm-up per target and round.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Requests in flight at most (keep-alive connections).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Only these targets (`a-rv0`, `c-rv0`, `a-fwd`, `c-fwd`); default: all four.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Before each run, wait up to this many seconds for the machine to be quiet (others below
    /// 10% of a core over a second); 0: do not wait.
    #[arg(long, default_value_t = 60)]
    pub wait_quiet: u64,
    /// Hub C dials one peer link per core (`limits.peer_links_per_core`) instead of one.
    #[arg(long)]
    pub links_per_core: bool,
    /// `--smoke`: 1 round of 1 s per target at a low rate.
    #[command(flatten)]
    pub stack: StackArgs,
}

/// The cached read (the `cache-get` scenario's object) and the forwarded one (`forward`'s).
const CACHED: &str = "/api/v1/namespaces/default/configmaps/kube-root-ca.crt?resourceVersion=0";
const FORWARDED: &str = "/api/v1/namespaces/default/serviceaccounts/default";

/// A run during which the rest of the machine used more than this (% of a core) is marked
/// busy, and its round left out of the medians.
const BUSY_PCT: f64 = 10.0;

/// Hub A's id (the holder) and hub C's (the forwarder).
const HUB_A: &str = "hub-a";
const HUB_C: &str = "hub-c";

struct Target {
    label: &'static str,
    base: String,
    path: String,
}

/// A GET through a hub: (status, `X-Kubehub-Cache` value, body).
async fn probe(
    client: &crate::HttpClient,
    url: &str,
    token: &str,
) -> Result<(u16, Option<String>, Bytes), String> {
    use http_body_util::BodyExt;
    let req = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-kubehub-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    Ok((status, cache, body))
}

/// A static directory for hub.toml's `[registry] file`: lines of meta's registry watch
/// (`kubehub_access::registry::RegistryLine`, written here as JSON so that the harness needs
/// no more of the product's crates; a hub stops on a line it cannot parse, naming it, so the
/// scenarios check them): `hubs` as (id, agent listener `host:port`), then `clusters` as
/// (cluster, the ids of the hubs its agent holds tunnels to, in the order a hub tries them).
pub fn registry_lines(hubs: &[(String, String)], clusters: &[(String, Vec<String>)]) -> String {
    let mut s = String::new();
    for (id, agent_endpoint) in hubs {
        let line = serde_json::json!({"kind": "hub", "revision": 1, "hub": {
            "id": id, "endpoint": format!("https://{id}"), "agentEndpoint": agent_endpoint,
            "environment": ""}});
        s.push_str(&format!("{line}\n"));
    }
    for (cluster, holders) in clusters {
        let line = serde_json::json!({"kind": "agent", "revision": 1, "agent": {
            "cluster": cluster, "hubs": holders}});
        s.push_str(&format!("{line}\n"));
    }
    s
}

/// Starts hub C in the stack's directory (same CA, access file and user certificate; a hub
/// certificate of its own on the agent listener; the directory in `registry.ndjson`) and
/// waits until it answers; returns its user URL.
async fn start_forwarder(
    stack: &mut Stack,
    cores: usize,
    links_per_core: bool,
) -> Result<(String, String), String> {
    let c = stack
        .ca
        .issue_hub(HUB_C, &["localhost", "127.0.0.1"])
        .map_err(|e| format!("{HUB_C} certificate: {e}"))?;
    write_file(&stack.dir, "hub-c.crt", &c.cert)?;
    write_file(&stack.dir, "hub-c.key", &c.key)?;
    write_file(
        &stack.dir,
        "registry.ndjson",
        &registry_lines(
            &[(stack.hub_id.clone(), stack.agent_addr.clone())],
            &[(stack.cluster.clone(), vec![stack.hub_id.clone()])],
        ),
    )?;
    let (user, agents, admin) = (sys::free_port()?, sys::free_port()?, sys::free_port()?);
    let toml = HubToml {
        id: HUB_C.into(),
        cores,
        clusters: Vec::new(),
        user_port: user,
        agent_port: agents,
        admin_port: admin,
        cache: CacheMode::Types(vec!["v1/configmaps".into()]),
        limits: vec![
            ("max_connections".into(), "1000000".into()),
            ("peer_links_per_core".into(), links_per_core.to_string()),
        ],
        agent_cert: Some(("hub-c.crt".into(), "hub-c.key".into())),
        registry: Some("registry.ndjson".into()),
    };
    write_file(&stack.dir, "hub-c.toml", &toml.render())?;
    let bin = find_bin(stack)?;
    let dir = stack.dir.clone();
    stack
        .procs
        .start("hub-c", &bin, &dir, &["hub", "--config", "hub-c.toml"])?;
    let plain = crate::client(None, 1)?;
    let health = format!("http://127.0.0.1:{admin}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while crate::edge::get_bytes(&plain, &health).await.is_err() {
        stack.procs.check_alive()?;
        if std::time::Instant::now() > deadline {
            return Err(format!("{HUB_C} did not answer {health}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((
        format!("https://127.0.0.1:{user}"),
        format!("http://127.0.0.1:{admin}"),
    ))
}

/// The `kubehub` binary the stack's processes run (`/proc/PID/exe` of its hub).
fn find_bin(stack: &Stack) -> Result<std::path::PathBuf, String> {
    let pid = stack
        .pid("hub")
        .ok_or_else(|| "the hub is not running".to_owned())?;
    std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| format!("/proc/{pid}/exe: {e}"))
}

/// Runs `kubehub-perf peer-hop`.
pub async fn run(a: PeerHopArgs) -> Result<Report, String> {
    let mut r = Report::new("peer-hop");
    let out = a.stack.out_dir("peer-hop");
    let dir = std::path::absolute(out.join("run")).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut o = StackOptions::new(
        crate::stack::find_kubehub_or(a.stack.kubehub.as_deref())?,
        dir.join("stack"),
    );
    o.hub_cores = a.stack.hub_cores;
    o.hub_id = HUB_A.into();
    o.hub_cert = true;
    o.cache = CacheMode::Types(vec!["v1/configmaps".into()]);
    let mut stack = Stack::start(&o).await?;
    let (c_url, c_admin) = start_forwarder(&mut stack, a.stack.hub_cores, a.links_per_core).await?;
    // For requests by hand while it runs: the user's token and both hubs' URLs.
    write_file(
        &stack.dir,
        "by-hand.txt",
        &format!(
            "token {}\nhub-a {}\nhub-c {c_url}\ncluster {}\nca ca.crt\n",
            stack.token, stack.hub_url, stack.cluster
        ),
    )?;

    // Both ways give the same answers; the cached one says it came from A's cache.
    let client = stack.client::<http_body_util::Empty<Bytes>>(2)?;
    let cluster = stack.cluster.clone();
    for path in [CACHED, FORWARDED] {
        let direct = probe(
            &client,
            &format!("{}/clusters/{cluster}{path}", stack.hub_url),
            &stack.token,
        )
        .await?;
        let via = probe(
            &client,
            &format!("{c_url}/clusters/{cluster}{path}"),
            &stack.token,
        )
        .await?;
        if direct.0 != 200 || via.0 != 200 || direct.2 != via.2 {
            return Err(format!(
                "{path}: hub A answered {} ({} B), hub C {} ({} B): {}",
                direct.0,
                direct.2.len(),
                via.0,
                via.2.len(),
                String::from_utf8_lossy(&via.2[..via.2.len().min(300)])
            ));
        }
        if path == CACHED && (direct.1.as_deref() != Some("hit") || via.1.as_deref() != Some("hit"))
        {
            return Err(format!(
                "{path}: not from the cache (X-Kubehub-Cache: A {:?}, C {:?})",
                direct.1, via.1
            ));
        }
        r.notes.push(format!(
            "`{path}`: {} bytes per answer, the same through A and through C{}",
            direct.2.len(),
            if path == CACHED {
                " (X-Kubehub-Cache: hit both ways: C forwards it, A answers from its cache)"
            } else {
                " (forwarded by A through the tunnel to the agent and the simulator)"
            }
        ));
    }
    let c_metrics = crate::edge::get_bytes(&crate::client(None, 1)?, &format!("{c_admin}/metrics"))
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    r.notes.push(format!(
        "hub C (`{HUB_C}`) forwards over a peer link to hub A (`{HUB_A}`, the tunnel's holder) by a static directory (`[registry] file`); C's metrics after the checks: kubehub_hub_peer_links {}",
        crate::stack::metric(&c_metrics, "kubehub_hub_peer_links")
    ));

    let mut targets = vec![
        Target {
            label: "a-rv0",
            base: stack.hub_url.clone(),
            path: format!("/clusters/{cluster}{CACHED}"),
        },
        Target {
            label: "c-rv0",
            base: c_url.clone(),
            path: format!("/clusters/{cluster}{CACHED}"),
        },
        Target {
            label: "a-fwd",
            base: stack.hub_url.clone(),
            path: format!("/clusters/{cluster}{FORWARDED}"),
        },
        Target {
            label: "c-fwd",
            base: c_url.clone(),
            path: format!("/clusters/{cluster}{FORWARDED}"),
        },
    ];
    targets.retain(|t| a.targets.is_empty() || a.targets.iter().any(|x| x == t.label));
    let (rate, warmup, duration, rounds) = if a.stack.smoke {
        (a.rate.min(100.0), 1, 1, 1)
    } else {
        (a.rate, a.warmup, a.duration, a.rounds.max(1))
    };
    r.notes.push(format!(
        "{rate}/s offered per run, open loop, {} keep-alive connections, {warmup} s warm-up then {duration} s measured; hubs with {} worker threads each; CPU per request: utime + stime of each process over the measured interval / requests answered",
        a.connections, a.stack.hub_cores
    ));
    for round in 0..rounds {
        for k in 0..targets.len() {
            let t = &targets[(k + round as usize) % targets.len()];
            stack.procs.check_alive()?;
            let quiet = if a.wait_quiet > 0 && !a.stack.smoke {
                Some(crate::stack::wait_quiet(Duration::from_secs(a.wait_quiet), 10.0).await)
            } else {
                None
            };
            let load = Load {
                base: t.base.clone(),
                token: Some(stack.token.clone()),
                ca_pem: Some(stack.ca_pem.clone()),
                rate,
                warmup: Duration::from_secs(warmup),
                duration: Duration::from_secs(duration),
                connections: a.connections,
                timeout: Duration::from_secs(10),
                plan: {
                    let p = t.path.clone();
                    Arc::new(move |_| Req::get("get", p.clone()))
                },
            };
            let mut pids: Vec<(&'static str, u32)> = stack.procs.pids();
            // This client too (last): its CPU is not a server's, but it shares the cores.
            pids.push(("client", std::process::id()));
            let tck = sys::clock_ticks();
            let mut before = None;
            let mut mark = None;
            let mut switches = None;
            let outcome = crate::load::run(&load, &|_| {}, &mut || {
                mark = Some(MachineMark::now());
                before = Some(
                    pids.iter()
                        .map(|(_, p)| sys::cpu_sample(*p, tck))
                        .collect::<Vec<_>>(),
                );
                switches = Some(
                    pids.iter()
                        .map(|(_, p)| sys::context_switches(*p))
                        .collect::<Vec<_>>(),
                );
            })
            .await?;
            let after: Vec<sys::CpuSample> =
                pids.iter().map(|(_, p)| sys::cpu_sample(*p, tck)).collect();
            let switches_after: Vec<u64> = pids
                .iter()
                .map(|(_, p)| sys::context_switches(*p))
                .collect();
            let before = before.unwrap_or_else(|| after.clone());
            let ok = outcome.ok();
            let mut procs = Vec::new();
            let mut ours = 0.0;
            let mut client_us = f64::NAN;
            let mut per_request_switches = Vec::new();
            for (i, (name, pid)) in pids.iter().enumerate() {
                let secs = sys::cpu_delta(&before[i], &after[i]);
                ours += secs;
                if let Some(s0) = switches.as_ref().and_then(|v| v.get(i)) {
                    let name = if *name == "hub" { HUB_A } else { name };
                    per_request_switches.push((
                        format!("{name}: context switches per request"),
                        switches_after[i].saturating_sub(*s0) as f64 / ok.max(1) as f64,
                    ));
                }
                if *name == "client" {
                    client_us = secs * 1e6 / ok.max(1) as f64;
                    continue;
                }
                procs.push(ProcStats {
                    // The stack calls its hub `hub`: here it is hub A.
                    name: if *name == "hub" { HUB_A } else { name }.to_owned(),
                    rss_kib: sys::rss_kib(*pid).unwrap_or(0),
                    cpu_secs: secs,
                    cpu_us_per_request: (ok > 0).then(|| secs * 1e6 / ok as f64),
                });
            }
            let mut run = Run {
                target: t.label.to_owned(),
                round,
                offered_rate: rate,
                secs: outcome
                    .measured
                    .1
                    .duration_since(outcome.measured.0)
                    .as_secs_f64(),
                ops: outcome.ops,
                procs,
                ..Run::default()
            };
            run.figures
                .insert("client CPU µs per request".into(), client_us);
            run.figures.extend(per_request_switches);
            if let Some(m) = mark {
                run.figures.insert(
                    "others: % of a core (not these processes, not this client)".into(),
                    m.others_pct(ours),
                );
            }
            if let Some(q) = quiet {
                run.figures
                    .insert("machine busy before the run (% of a core)".into(), q);
            }
            eprintln!(
                "peer-hop round {round} {}: {}; CPU µs/request {}",
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
                    .unwrap_or_default(),
                run.procs
                    .iter()
                    .map(|p| format!("{} {:.1}", p.name, p.cpu_us_per_request.unwrap_or(f64::NAN)))
                    .collect::<Vec<_>>()
                    .join(" + ")
            );
            r.runs.push(run);
        }
    }
    // The C path against the A path, same request, same round.
    let others = |run: &Run| {
        run.figures
            .get("others: % of a core (not these processes, not this client)")
            .copied()
            .unwrap_or(0.0)
    };
    // Per request: (A µs, C µs, C/A, hub C µs, A p50, C p50, A p99, C p99) of quiet rounds.
    let mut quiet_rounds: BTreeMap<&str, Vec<[f64; 8]>> = BTreeMap::new();
    for round in 0..rounds {
        for req in ["rv0", "fwd"] {
            let find = |hub: &str| {
                r.runs
                    .iter()
                    .position(|x| x.round == round && x.target == format!("{hub}-{req}"))
            };
            let (Some(ia), Some(ic)) = (find("a"), find("c")) else {
                continue;
            };
            let (ra, rc) = (&r.runs[ia], &r.runs[ic]);
            let (Some(ca), Some(cc)) = (ra.cpu_us_per_request(), rc.cpu_us_per_request()) else {
                continue;
            };
            let p = |run: &Run, f: fn(&crate::report::OpStats) -> f64| {
                run.ops.first().map_or(f64::NAN, f)
            };
            let (p50, p99) = (
                p(rc, |o| o.p50_us) / p(ra, |o| o.p50_us),
                p(rc, |o| o.p99_us) / p(ra, |o| o.p99_us),
            );
            let c_own = rc
                .procs
                .iter()
                .find(|x| x.name == HUB_C)
                .and_then(|x| x.cpu_us_per_request)
                .unwrap_or(f64::NAN);
            let busy = others(ra).max(others(rc));
            if busy < BUSY_PCT {
                quiet_rounds.entry(req).or_default().push([
                    ca,
                    cc,
                    cc / ca,
                    c_own,
                    p(ra, |o| o.p50_us),
                    p(rc, |o| o.p50_us),
                    p(ra, |o| o.p99_us),
                    p(rc, |o| o.p99_us),
                ]);
            }
            r.notes.push(format!(
                "round {round}, {req}: CPU per request, all processes, C path / A path = {cc:.1} / {ca:.1} µs = {:.2} (+{:.1} µs, of which hub C {c_own:.1}); p50 {p50:.2}×, p99 {p99:.2}×{}",
                cc / ca,
                cc - ca,
                if busy < BUSY_PCT {
                    String::new()
                } else {
                    format!(" (machine busy: others used {busy:.0}% of a core)")
                }
            ));
            let run = &mut r.runs[ic];
            run.figures
                .insert("CPU per request ÷ the A path's, same round".into(), cc / ca);
            run.figures
                .insert("p50 ÷ the A path's, same round".into(), p50);
            run.figures
                .insert("p99 ÷ the A path's, same round".into(), p99);
        }
    }
    for (req, v) in &quiet_rounds {
        let med = |i: usize| {
            let mut x: Vec<f64> = v.iter().map(|row| row[i]).collect();
            x.sort_by(|a, b| a.total_cmp(b));
            let n = x.len();
            if n % 2 == 1 {
                x[n / 2]
            } else {
                (x[n / 2 - 1] + x[n / 2]) / 2.0
            }
        };
        r.notes.push(format!(
            "{req}, medians over the {} of {rounds} rounds in which the machine was quiet (others < {BUSY_PCT}% of a core in both runs): CPU per request A path {:.1} µs, C path {:.1} µs (hub C {:.1}), C/A {:.2}; p50 {:.3} → {:.3} ms; p99 {:.3} → {:.3} ms",
            v.len(),
            med(0),
            med(1),
            med(3),
            med(2),
            med(4) / 1e3,
            med(5) / 1e3,
            med(6) / 1e3,
            med(7) / 1e3,
        ));
    }
    let failed: u64 = r
        .runs
        .iter()
        .flat_map(|x| &x.ops)
        .map(|o| o.error_count())
        .sum();
    r.write(&out)?;
    stack.procs.stop("hub-c", Stop::Kill).await?;
    if a.stack.smoke && failed > 0 {
        return Err(format!(
            "smoke: {failed} requests failed; see {}",
            out.display()
        ));
    }
    Ok(r)
}
