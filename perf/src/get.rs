//! `get`: open-loop GETs of one URL, latencies in an HDR histogram; optionally the CPU time per
//! request of the server processes and what reached the edge API server meanwhile.
//!
//! Requests are scheduled at a constant rate regardless of how fast answers come (open loop),
//! and each latency is measured from the request's *scheduled* time, so a stall shows up in
//! the percentiles instead of silently lowering the rate (no coordinated omission). The
//! schedule is kept by a thread of its own sleeping with `std::thread::sleep` (tens of µs late
//! at worst here), not by the runtime's timer, whose 1 ms granularity put up to a millisecond
//! into every latency. Each latency ends when the whole body has arrived.
//!
//! * `--cpu NAME=PID[+PID…]`: utime + stime of those processes over the measured interval
//!   (after the warm-up, until the last answer), divided by the requests measured; this
//!   client's own CPU per request and the CPU anything else used meanwhile are printed too;
//!   and each group's context switches per request (all threads' voluntary + involuntary:
//!   on these VMs a sleep and a wake-up cost more than a small request's own work).
//! * `--edge-log URL`: the request log of a simulator started by `kubehub-perf sim --control`:
//!   emptied when measuring starts and read when it ends, so it says what reached the edge
//!   (freshness probes, reads of the very path requested, anything else).
//! * `--record FILE`: the figures as one JSON line appended to FILE, for `kubehub-perf summary`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};

use crate::sys;

/// Options of `kubehub-perf get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The URL (http or https).
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// CA certificate (PEM) for https.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Requests per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load (after warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not recorded.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent keep-alive connections (requests in flight at most).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// A label for the output line (the path measured: "direct", "hub", ...).
    #[arg(long, default_value = "get")]
    label: String,
    /// An extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// A response header every answer must carry, `Name: value` (name and value compared
    /// without case); answers without it count as errors.
    #[arg(long)]
    expect_header: Option<String>,
    /// Report the CPU time per request of these processes: `NAME=PID`, or `NAME=PID+PID+…`
    /// for a group (e.g. nginx's workers) (repeatable).
    #[arg(long = "cpu")]
    cpu: Vec<String>,
    /// URL of a simulator's request log (`kubehub-perf sim --control ADDR`: http://ADDR/requests):
    /// report the requests that reached it while measuring.
    #[arg(long)]
    edge_log: Option<String>,
    /// Append the figures as a JSON line to this file (read by `kubehub-perf summary`).
    #[arg(long)]
    record: Option<PathBuf>,
    /// What is measured, for the record (e.g. "GET 1 object"); rows of a summary table.
    #[arg(long, default_value = "")]
    case: String,
    /// Round number, for the record (ratios are taken between paths of the same round).
    #[arg(long, default_value_t = 0)]
    round: u32,
    /// Free text for the record (e.g. "machine busy").
    #[arg(long, default_value = "")]
    note: String,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    MissingHeader,
}

#[derive(Debug)]
struct Sample {
    scheduled: Instant,
    latency: Duration,
    /// Scheduled time to the request's start (the pacer's lateness, the wake-up, waiting for
    /// a free connection).
    lag: Duration,
    outcome: Outcome,
    bytes: u64,
}

fn parse_header(s: &str) -> Result<(http::HeaderName, http::HeaderValue), String> {
    let (n, v) = s
        .split_once(':')
        .ok_or_else(|| format!("header {s:?}: expected `Name: value`"))?;
    let name = http::HeaderName::from_bytes(n.trim().as_bytes())
        .map_err(|e| format!("header {s:?}: {e}"))?;
    let value = http::HeaderValue::from_str(v.trim()).map_err(|e| format!("header {s:?}: {e}"))?;
    Ok((name, value))
}

/// `NAME=PID[+PID…]` groups.
fn parse_cpu(specs: &[String]) -> Result<Vec<(String, Vec<u32>)>, String> {
    specs
        .iter()
        .map(|s| {
            let (name, pids) = s
                .split_once('=')
                .ok_or_else(|| format!("--cpu {s:?}: expected NAME=PID[+PID...]"))?;
            let pids = pids
                .split('+')
                .map(|p| p.trim().parse::<u32>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--cpu {s:?}: {e}"))?;
            Ok((name.to_owned(), pids))
        })
        .collect()
}

/// The CPU time of each group's processes, then of this process; the machine's idle
/// seconds; and each group's context switches so far.
#[derive(Debug)]
struct Snapshot {
    cpu: Vec<Vec<sys::CpuSample>>,
    idle: f64,
    switches: Vec<u64>,
}

fn cpu_snapshot(groups: &[(String, Vec<u32>)], tck: f64) -> Snapshot {
    let mut cpu: Vec<Vec<sys::CpuSample>> = groups
        .iter()
        .map(|(_, pids)| pids.iter().map(|p| sys::cpu_sample(*p, tck)).collect())
        .collect();
    cpu.push(vec![sys::cpu_sample(std::process::id(), tck)]);
    let switches = groups
        .iter()
        .map(|(_, pids)| pids.iter().map(|p| sys::context_switches(*p)).sum())
        .collect();
    Snapshot {
        cpu,
        idle: sys::machine_idle_secs(tck).0,
        switches,
    }
}

/// Seconds used by each group (then this process) between two snapshots, idle seconds, and
/// each group's context switches.
fn cpu_used(a: &Snapshot, b: &Snapshot) -> (Vec<f64>, f64, Vec<u64>) {
    let used = a
        .cpu
        .iter()
        .zip(&b.cpu)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| sys::cpu_delta(p, q)).sum())
        .collect();
    let switches = a
        .switches
        .iter()
        .zip(&b.switches)
        .map(|(x, y)| y.saturating_sub(*x))
        .collect();
    (used, b.idle - a.idle, switches)
}

/// What reached the edge: every request, freshness probes (`limit=1` lists), and reads of
/// the path measured.
#[derive(Debug, Default, Clone)]
struct EdgeCounts {
    total: u64,
    probes: u64,
    target: u64,
    /// The first few requests that were neither (watch renewals, relists, discovery…).
    others: Vec<String>,
}

/// The API path as the edge sees it: `/clusters/{id}` removed.
fn edge_path(url_path: &str) -> &str {
    match url_path.strip_prefix("/clusters/") {
        Some(rest) => rest.find('/').map(|i| &rest[i..]).unwrap_or("/"),
        None => url_path,
    }
}

fn classify(log: &str, target: &str) -> EdgeCounts {
    let mut c = EdgeCounts::default();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        c.total += 1;
        let uri = line.split_whitespace().nth(1).unwrap_or("");
        let (path, query) = uri.split_once('?').unwrap_or((uri, ""));
        if query.split('&').any(|kv| kv == "limit=1") {
            c.probes += 1;
        } else if path == target {
            c.target += 1;
        } else if c.others.len() < 5 {
            c.others.push(line.trim().to_owned());
        }
    }
    c
}

async fn edge_take(client: &crate::HttpClient, url: &str) -> Result<String, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--edge-log: {e}"))?;
    let resp = client
        .get(uri)
        .await
        .map_err(|e| format!("--edge-log {url}: {e}"))?;
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("--edge-log {url}: {e}"))?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Runs `kubehub-perf get`.
pub async fn run(a: GetArgs) -> Result<(), String> {
    let client = crate::client(a.ca.as_deref(), a.connections)?;
    let uri: http::Uri = a.url.parse().map_err(|e| format!("--url: {e}"))?;
    let headers = Arc::new(
        a.headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let expect = a.expect_header.as_deref().map(parse_header).transpose()?;
    let groups = parse_cpu(&a.cpu)?;
    let tck = sys::clock_ticks();
    let token = a.token.clone();
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let total = Duration::from_secs(a.warmup + a.duration);
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + total;
    let record_from = start + Duration::from_secs(a.warmup);

    // The mark at the start of the measured interval: the edge's log emptied, CPU read.
    let mark = {
        let (client, edge, groups) = (client.clone(), a.edge_log.clone(), groups.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(record_from.into()).await;
            if let Some(url) = &edge {
                edge_take(&client, url).await?;
            }
            Ok::<_, String>((Instant::now(), cpu_snapshot(&groups, tck)))
        })
    };

    // The schedule, on a thread of its own.
    let (pacer, mut sched_rx) = crate::load::pacer(start, period, end);

    // A bounded number of requests in flight: beyond it, the schedule is behind and the
    // waiting shows in the latency of the requests that wait.
    let slots = Arc::new(tokio::sync::Semaphore::new(a.connections));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let collector = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(s) = rx.recv().await {
            v.push(s);
        }
        v
    });
    while let Some((_, scheduled)) = sched_rx.recv().await {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let lag = scheduled.elapsed();
        let (client, uri, token, tx, headers, expect) = (
            client.clone(),
            uri.clone(),
            token.clone(),
            tx.clone(),
            headers.clone(),
            expect.clone(),
        );
        tokio::spawn(async move {
            let mut req = http::Request::get(uri);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            for (n, v) in headers.iter() {
                req = req.header(n, v);
            }
            let mut bytes = 0u64;
            let outcome = match req.body(Empty::<Bytes>::new()) {
                Ok(req) => match client.request(req).await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        let has = expect.as_ref().is_none_or(|(n, v)| {
                            resp.headers()
                                .get(n)
                                .and_then(|x| x.to_str().ok())
                                .is_some_and(|x| x.eq_ignore_ascii_case(v.to_str().unwrap_or("")))
                        });
                        match resp.into_body().collect().await {
                            Ok(b) if good => {
                                bytes = b.to_bytes().len() as u64;
                                if has {
                                    Outcome::Ok
                                } else {
                                    Outcome::MissingHeader
                                }
                            }
                            _ => Outcome::Failed,
                        }
                    }
                    Err(_) => Outcome::Failed,
                },
                Err(_) => Outcome::Failed,
            };
            let _ = tx.send(Sample {
                scheduled,
                latency: scheduled.elapsed(),
                lag,
                outcome,
                bytes,
            });
            drop(permit);
        });
    }
    drop(tx);
    let _ = pacer.join();
    let samples = collector.await.map_err(|e| e.to_string())?;
    let cpu1 = cpu_snapshot(&groups, tck);
    let t1 = Instant::now();
    let (t0, cpu0) = mark.await.map_err(|e| e.to_string())??;
    let edge = match &a.edge_log {
        Some(url) => Some(classify(
            &edge_take(&client, url).await?,
            edge_path(uri.path()),
        )),
        None => None,
    };

    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let mut lags =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let (mut failed, mut missing, mut recorded, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for s in samples.iter().filter(|s| s.scheduled >= record_from) {
        recorded += 1;
        match s.outcome {
            Outcome::Ok => bytes += s.bytes,
            Outcome::Failed => failed += 1,
            Outcome::MissingHeader => missing += 1,
        }
        let _ = hist.record(s.latency.as_micros().max(1) as u64);
        let _ = lags.record(s.lag.as_micros().max(1) as u64);
    }
    let good = recorded - failed - missing;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let per_answer = bytes.checked_div(good).unwrap_or(0);
    let mut line = format!(
        "{}: {} requests at {:.0}/s over {}s ({} errors): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; {} B per answer; start lag p50 {:.3} ms, p99 {:.3} ms",
        a.label,
        recorded,
        a.rate,
        a.duration,
        failed + missing,
        ms(&hist, 0.5),
        ms(&hist, 0.99),
        ms(&hist, 0.999),
        hist.max() as f64 / 1000.0,
        per_answer,
        ms(&lags, 0.5),
        ms(&lags, 0.99),
    );
    if missing > 0 {
        line += &format!(
            "; {missing} answers without {:?}",
            a.expect_header.as_deref().unwrap_or("")
        );
    }
    // CPU per request: groups, then this client; "others" is the rest of the machine.
    let per = good.max(1) as f64;
    let (d, idle, switches) = cpu_used(&cpu0, &cpu1);
    let wall = (t1 - t0).as_secs_f64();
    let mut cpu_json = serde_json::Map::new();
    let mut csw_json = serde_json::Map::new();
    let mut client_us = 0.0;
    let mut others_pct = 0.0;
    if let Some(client) = d.last() {
        let listed: f64 = d.iter().sum();
        client_us = client * 1e6 / per;
        // Busy = wall × CPUs − idle (see `sys::machine_idle_secs`); what the processes
        // listed did not use went to others: other processes, kernel threads, and the
        // softirq time of loopback networking that is charged to no process.
        let busy = wall * sys::machine_idle_secs(tck).1 as f64 - idle;
        others_pct = ((busy - listed) / wall.max(1e-9) * 100.0).max(0.0);
        let parts: Vec<String> = groups
            .iter()
            .zip(&d)
            .zip(&switches)
            .map(|(((name, _), secs), csw)| {
                let us = secs * 1e6 / per;
                let csw = *csw as f64 / per;
                cpu_json.insert(name.clone(), serde_json::json!(us));
                csw_json.insert(name.clone(), serde_json::json!(csw));
                format!("{name} {us:.1} us ({csw:.2} csw)")
            })
            .chain(std::iter::once(format!("client {client_us:.1} us")))
            .collect();
        line += &format!(
            "; CPU per request: {}; others {others_pct:.0}% of a core",
            parts.join(", ")
        );
    }
    if let Some(e) = &edge {
        line += &format!(
            "; edge: {} requests ({} probes, {} of this path)",
            e.total, e.probes, e.target
        );
        if !e.others.is_empty() {
            line += &format!("; other edge requests: {}", e.others.join(", "));
        }
    }
    println!("{line}");
    if let Some(path) = &a.record {
        let rec = serde_json::json!({
            "case": a.case,
            "label": a.label,
            "round": a.round,
            "note": a.note,
            "url": a.url,
            "rate": a.rate,
            "duration": a.duration,
            "connections": a.connections,
            "requests": recorded,
            "errors": failed + missing,
            "bytes": per_answer,
            "p50_ms": ms(&hist, 0.5),
            "p99_ms": ms(&hist, 0.99),
            "p999_ms": ms(&hist, 0.999),
            "max_ms": hist.max() as f64 / 1000.0,
            "lag_p50_ms": ms(&lags, 0.5),
            "lag_p99_ms": ms(&lags, 0.99),
            "cpu_us": cpu_json,
            "csw_per_request": csw_json,
            "cpu_order": groups.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
            "client_us": client_us,
            "others_pct": others_pct,
            "edge": edge.map(|e| serde_json::json!({"total": e.total, "probes": e.probes, "target": e.target, "others": e.others})),
        });
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        writeln!(f, "{rec}").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if failed + missing > 0 {
        return Err(format!("{} requests failed", failed + missing));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edge_paths_and_classes() {
        assert_eq!(
            edge_path("/clusters/edge/api/v1/namespaces/a/configmaps"),
            "/api/v1/namespaces/a/configmaps"
        );
        assert_eq!(edge_path("/api/v1/pods"), "/api/v1/pods");
        let log = "GET /api/v1/configmaps?limit=1\nGET /api/v1/namespaces/a/configmaps?resourceVersion=0\nGET /api/v1/namespaces/a/configmaps/x\n\n";
        let c = classify(log, "/api/v1/namespaces/a/configmaps");
        assert_eq!((c.total, c.probes, c.target), (3, 1, 1));
        assert_eq!(c.others, vec!["GET /api/v1/namespaces/a/configmaps/x"]);
    }

    #[test]
    fn cpu_specs() {
        let g = parse_cpu(&["hub=12".into(), "nginx=3+4".into()]).unwrap();
        assert_eq!(
            g,
            vec![("hub".into(), vec![12]), ("nginx".into(), vec![3, 4])]
        );
        assert!(parse_cpu(&["x".into()]).is_err());
    }
}
