//! `hol`: head-of-line blocking on one tunnel. One stream whose client never reads must not
//! slow the others down.
//!
//! One [`Stack`] (one agent, one tunnel; the hub caches `v1/pods` only, so ConfigMaps are
//! forwarded). The busy streams: `--streams` keep-alive HTTPS connections to the hub, each
//! issuing its next `GET` of a small ConfigMap as soon as the last one is answered (closed
//! loop per connection: about that many requests always in flight through the tunnel); the
//! latency of each is measured from its send time to the end of its body (op `busy`). The
//! stalled stream: a forwarded LIST of `--stall-mb` MB of ConfigMaps on a raw TLS connection
//! this process never reads from, so the client socket's receive buffer, the hub's send
//! buffer, the hub's queue for the stream and the stream's flow-control window fill, and the
//! agent stops sending on it.
//!
//! Rounds alternate run A (`kubehub`: busy streams alone) and run B (`kubehub+stall`: the
//! stall opened first and kept during the whole run), with the same connections and load.
//! Figures: `req/s`, and on B `p99 ratio` (B's p99 / A's of the same round) and what shows
//! the stall is real: the stalled socket's unread bytes (kernel, `/proc/net/tcp`: the same
//! at the start and end of B) and the bytes the hub could not send on it, and the hub's
//! `streams_open` with the busy load stopped (the stalled stream still open).

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};

use crate::report::{OpStats, Report, Run};
use crate::stack::{metric, Stack, StackOptions};

/// Options of the `hol` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct HolArgs {
    /// Busy connections, each with one forwarded request in flight at all times.
    #[arg(long, default_value_t = 1000)]
    pub streams: usize,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// Seconds of load before each run's measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Rounds, each a run without and a run with the stalled stream.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Size of the stalled LIST (MB of ConfigMap data).
    #[arg(long, default_value_t = 16)]
    pub stall_mb: usize,
    #[command(flatten)]
    pub stack: crate::stack::StackArgs,
}

type Client<B> = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>;

const SMALL: &str = "/api/v1/namespaces/hol/configmaps/small";
const BIG: &str = "/api/v1/namespaces/hol-big/configmaps";
/// Bytes of data per ConfigMap of the big LIST.
const BIG_OBJECT: usize = 512 * 1024;

async fn post(client: &Client<Full<Bytes>>, url: &str, body: String) -> Result<(), String> {
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    crate::call::whole(client.request(req).await, &format!("POST {url}"))
        .await?
        .ok(&format!("POST {url}"))
        .map(|_| ())
}

/// The small ConfigMap and the big namespace, on the simulator.
async fn populate(stack: &Stack, stall_mb: usize) -> Result<usize, String> {
    let sim: Client<Full<Bytes>> = stack.client(4)?;
    let base = stack.sim_url();
    for ns in ["hol", "hol-big"] {
        post(
            &sim,
            &format!("{base}/api/v1/namespaces"),
            format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{ns}"}}}}"#),
        )
        .await?;
    }
    post(
        &sim,
        &format!("{base}/api/v1/namespaces/hol/configmaps"),
        format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"small"}},"data":{{"x":"{}"}}}}"#,
            "s".repeat(1000)
        ),
    )
    .await?;
    let objects = (stall_mb * 1_000_000).div_ceil(BIG_OBJECT).max(1);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    for i in 0..objects {
        let mut data = String::with_capacity(BIG_OBJECT);
        for _ in 0..BIG_OBJECT {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
        }
        post(
            &sim,
            &format!("{base}{BIG}"),
            format!(
                r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big-{i:04}"}},"data":{{"blob":"{data}"}}}}"#
            ),
        )
        .await?;
    }
    Ok(objects)
}

/// A request on a raw TLS connection that is never read from.
struct Stalled {
    /// Kept open until dropped; never read.
    _stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    local_port: u16,
}

impl std::fmt::Debug for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stalled(:{})", self.local_port)
    }
}

fn open_stalled(hub: SocketAddr, ca_pem: &str, path: &str, token: &str) -> Result<Stalled, String> {
    let mut cfg = crate::tls_client(crate::roots(Some(ca_pem))?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::IpAddress(hub.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(hub).map_err(|e| format!("connecting to {hub}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let local_port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {hub}\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    );
    // The handshake, then the request; nothing is read after that.
    stream
        .write_all(req.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("the stalled request: {e}"))?;
    Ok(Stalled {
        _stream: stream,
        local_port,
    })
}

/// `(tx_queue, rx_queue)` of the loopback TCP socket from `local` to `remote` (ports), from
/// `/proc/net/tcp`: bytes not yet acknowledged by the peer, bytes received and not yet read.
fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let port = |a: &str| {
        a.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 5 || port(f[1])? != local || port(f[2])? != remote {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// What one run of busy streams measured.
struct Busy {
    hist: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    secs: f64,
    procs: Vec<crate::report::ProcStats>,
    /// This process's CPU seconds, and the % of a core others used, while measuring.
    client_cpu: f64,
    others_pct: f64,
}

/// One busy connection: GET after GET until `end`; latencies of those sent in
/// `[m0, end)`.
async fn busy_loop(
    client: Client<Empty<Bytes>>,
    url: Arc<String>,
    token: Arc<String>,
    (m0, end): (Instant, Instant),
    mut hist: Histogram<u64>,
) -> (Histogram<u64>, BTreeMap<String, u64>) {
    let mut errors = BTreeMap::new();
    loop {
        let start = Instant::now();
        if start >= end {
            break;
        }
        let req = http::Request::get(url.as_str())
            .header("authorization", format!("Bearer {token}"))
            .header("accept", "application/json")
            .body(Empty::new());
        let outcome = match req {
            Err(e) => Err(e.to_string()),
            Ok(req) => match client.request(req).await {
                Err(e) => Err(if e.is_connect() { "connect" } else { "request" }.to_owned()),
                Ok(resp) => {
                    let status = resp.status();
                    match resp.into_body().collect().await {
                        Err(_) => Err("body".to_owned()),
                        Ok(_) if status != http::StatusCode::OK => {
                            Err(format!("status {}", status.as_u16()))
                        }
                        Ok(_) => Ok(()),
                    }
                }
            },
        };
        if start < m0 {
            continue;
        }
        match outcome {
            Ok(()) => {
                hist.saturating_record((start.elapsed().as_micros() as u64).max(1));
            }
            Err(kind) => {
                *errors.entry(kind).or_insert(0) += 1;
                // A failing connection must not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    (hist, errors)
}

/// `streams` busy connections for `warmup + secs`; measured: the last `secs`.
async fn busy(
    stack: &Stack,
    client: &Client<Empty<Bytes>>,
    streams: usize,
    warmup: f64,
    secs: f64,
) -> Result<Busy, String> {
    let url = Arc::new(format!("{}{SMALL}", stack.cluster_url()));
    let token = Arc::new(stack.token.clone());
    let m0 = Instant::now() + Duration::from_secs_f64(warmup);
    let end = m0 + Duration::from_secs_f64(secs);
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            tokio::spawn(busy_loop(
                client.clone(),
                url.clone(),
                token.clone(),
                (m0, end),
                hist.clone(),
            ))
        })
        .collect();
    tokio::time::sleep_until(m0.into()).await;
    let (me, tck) = (std::process::id(), crate::sys::clock_ticks());
    let (cpu0, me0, mark) = (
        stack.sample(),
        crate::sys::cpu_sample(me, tck),
        crate::stack::MachineMark::now(),
    );
    tokio::time::sleep_until(end.into()).await;
    let measured = m0.elapsed().as_secs_f64();
    let client_cpu = crate::sys::cpu_delta(&me0, &crate::sys::cpu_sample(me, tck));
    let mut errors = BTreeMap::new();
    // CPU until the end of the window; requests still in flight are waited for below.
    let mut procs = stack.proc_stats(&cpu0, 0);
    let others_pct = mark.others_pct(procs.iter().map(|p| p.cpu_secs).sum::<f64>() + client_cpu);
    for t in tasks {
        let (h, e) = t.await.map_err(|e| e.to_string())?;
        hist.add(&h).map_err(|e| e.to_string())?;
        for (k, v) in e {
            *errors.entry(k).or_insert(0) += v;
        }
    }
    let n = hist.len();
    for p in &mut procs {
        p.cpu_us_per_request = (n > 0).then(|| p.cpu_secs * 1e6 / n as f64);
    }
    Ok(Busy {
        hist,
        errors,
        secs: measured,
        procs,
        client_cpu,
        others_pct,
    })
}

/// The stalled stream's state: the client socket's unread bytes and the hub's unsent ones.
fn stall_state(s: &Stalled, hub_port: u16) -> (u64, u64) {
    let rx = tcp_queues(s.local_port, hub_port).map_or(0, |q| q.1);
    let tx = tcp_queues(hub_port, s.local_port).map_or(0, |q| q.0);
    (rx, tx)
}

/// Opens the stalled stream and waits until the client's unread bytes stop growing.
async fn stall(stack: &Stack, hub: SocketAddr) -> Result<(Stalled, u64, u64), String> {
    let (ca, token) = (stack.ca_pem.clone(), stack.token.clone());
    let path = format!("/clusters/{}{BIG}", stack.cluster);
    let s = tokio::task::spawn_blocking(move || open_stalled(hub, &ca, &path, &token))
        .await
        .map_err(|e| e.to_string())??;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = (0, 0);
    let mut same = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = stall_state(&s, hub.port());
        same = if now == last && now.0 > 0 {
            same + 1
        } else {
            0
        };
        last = now;
        if same >= 5 {
            return Ok((s, now.0, now.1));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the stalled stream's socket did not settle in 20 s (unread {} B, unsent {} B)",
                now.0, now.1
            ));
        }
    }
}

/// Runs the scenario, adding two [`Run`]s per round to `report`.
impl HolArgs {
    /// The output folder.
    pub fn out_dir(&self) -> PathBuf {
        self.stack.out_dir("hol")
    }
}

pub async fn run(mut a: HolArgs, report: &mut Report) -> Result<(), String> {
    if a.stack.smoke {
        a.streams = a.streams.min(20);
        a.seconds = 2.0;
        a.warmup = 1.0;
        a.rounds = 1;
        a.stall_mb = a.stall_mb.min(8);
    }
    let n = a.streams.max(1);
    crate::sys::need_files(n as u64 + 200, &format!("{n} busy connections"))?;
    let opts = StackOptions::small(
        a.stack.kubehub.as_deref(),
        a.out_dir().join("run"),
        a.stack.hub_cores,
        &["v1/pods"],
    )?;
    let mut stack = Stack::start(&opts).await?;
    let t = Instant::now();
    let objects = populate(&stack, a.stall_mb).await?;
    report.notes.push(format!(
        "hol: the stalled LIST is {objects} ConfigMaps of {BIG_OBJECT} B (created in {:.1} s)",
        t.elapsed().as_secs_f64()
    ));
    let hub: SocketAddr = stack
        .hub_url
        .trim_start_matches("https://")
        .parse()
        .map_err(|e| format!("{}: {e}", stack.hub_url))?;

    // The busy requests go through the tunnel, not the cache.
    let client: Client<Empty<Bytes>> = stack.client(n + 16)?;
    let req = http::Request::get(format!("{}{SMALL}", stack.cluster_url()))
        .header("authorization", format!("Bearer {}", stack.token))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("GET {SMALL}: {e}"))?;
    if resp.status() != http::StatusCode::OK {
        return Err(format!("GET {SMALL} through the hub: {}", resp.status()));
    }
    if let Some(v) = resp.headers().get("x-kubehub-cache") {
        return Err(format!(
            "GET {SMALL} was answered by the hub's cache ({v:?}): the busy streams must be forwarded"
        ));
    }
    let _ = resp.into_body().collect().await;
    // Every connection opened (TLS handshakes) before anything is measured.
    let prime = busy(&stack, &client, n, a.warmup.max(1.0), 0.0).await?;
    if prime.hist.is_empty() && !prime.errors.is_empty() {
        return Err(format!("hol: the busy requests fail: {:?}", prime.errors));
    }

    let mut problems = Vec::new();
    let mut ratios = Vec::new();
    for round in 1..=a.rounds.max(1) as u32 {
        let mut p99_a = 0.0;
        for stalled in [false, true] {
            stack.check_alive()?;
            let quiet = crate::stack::wait_quiet(
                Duration::from_secs(if a.stack.smoke { 2 } else { 20 }),
                30.0,
            )
            .await;
            if quiet >= 30.0 {
                report.notes.push(format!(
                    "hol round {round}: the machine was busy before the run ({quiet:.0}% of a core used by others)"
                ));
            }
            let mut figures = BTreeMap::new();
            let st = if stalled {
                let (s, rx, tx) = stall(&stack, hub).await?;
                Some((s, rx, tx))
            } else {
                None
            };
            let b = busy(&stack, &client, n, a.warmup, a.seconds).await?;
            let ops = OpStats::from_hist("busy", &b.hist, b.errors.clone(), b.secs);
            let label = if stalled { "kubehub+stall" } else { "kubehub" };
            if b.hist.is_empty() || !b.errors.is_empty() {
                problems.push(format!(
                    "round {round} {label}: {} busy answers, errors {:?}",
                    b.hist.len(),
                    b.errors
                ));
            }
            figures.insert("req/s".to_owned(), ops.throughput);
            figures.insert("busy connections".to_owned(), n as f64);
            figures.insert("client CPU s".to_owned(), b.client_cpu);
            figures.insert("others % of a core".to_owned(), b.others_pct);
            if let Some((s, rx0, tx0)) = st {
                let (rx1, tx1) = stall_state(&s, hub.port());
                // The busy load has stopped: what is still open is the stalled stream.
                tokio::time::sleep(Duration::from_millis(300)).await;
                let open = metric(&stack.metrics().await?, "kubehub_hub_streams_open");
                let really = rx1 == rx0 && rx1 > 0 && tx1 > 0 && open >= 1.0;
                figures.insert("stall: client unread KiB".to_owned(), rx1 as f64 / 1024.0);
                figures.insert("stall: hub unsent KiB".to_owned(), tx1 as f64 / 1024.0);
                figures.insert("stall: hub streams open".to_owned(), open);
                figures.insert("stall: stalled".to_owned(), if really { 1.0 } else { 0.0 });
                let p99_b = ops.p99_us;
                if p99_a > 0.0 {
                    figures.insert("p99 ratio".to_owned(), p99_b / p99_a);
                    ratios.push(p99_b / p99_a);
                }
                report.notes.push(format!(
                    "hol round {round}: the stalled socket held {rx0} B unread at the start and {rx1} B at the end, the hub {tx0} -> {tx1} B unsent on it, {open} tunnel streams open with the busy load stopped: {}",
                    if really { "stalled throughout" } else { "NOT a stall" }
                ));
                if !really {
                    problems.push(format!("round {round}: the stalled stream was not stalled"));
                }
                drop(s);
                // The hub notices the client gone and cancels the stream.
                let t = Instant::now();
                let mut left = open;
                while t.elapsed() < Duration::from_secs(10) {
                    left = metric(&stack.metrics().await?, "kubehub_hub_streams_open");
                    if left == 0.0 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                report.notes.push(format!(
                    "hol round {round}: the stalled client closed; tunnel streams open {left} after {:.2} s",
                    t.elapsed().as_secs_f64()
                ));
            } else {
                p99_a = ops.p99_us;
            }
            println!(
                "hol round {round} {label}: {:.0} req/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, errors {}",
                ops.throughput,
                ops.p50_us / 1e3,
                ops.p99_us / 1e3,
                ops.max_us / 1e3,
                ops.error_count()
            );
            report.runs.push(Run {
                target: label.into(),
                round,
                offered_rate: 0.0,
                secs: b.secs,
                ops: vec![ops],
                procs: b.procs,
                figures,
            });
        }
    }
    if !ratios.is_empty() {
        let mut r = ratios.clone();
        r.sort_by(f64::total_cmp);
        let mid = r.len() / 2;
        let median = if r.len() % 2 == 1 {
            r[mid]
        } else {
            (r[mid - 1] + r[mid]) / 2.0
        };
        report.notes.push(format!(
            "hol: p99 with the stall / without, per round: {}; median {median:.2} (target: at most 1.10; compare with `others % of a core`: this machine is shared)",
            ratios
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for p in &problems {
        report.notes.push(format!("hol: {p}"));
    }
    stack.check_alive()?;
    if a.stack.smoke && !problems.is_empty() {
        return Err(format!("hol smoke: {}", problems.join("; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_of_an_absent_socket() {
        assert_eq!(tcp_queues(1, 1), None);
    }
}
