//! Open-loop load: requests sent at a constant arrival rate whatever the answers do, each
//! latency measured from its *scheduled* send time (no coordinated omission), per operation
//! HDR histograms and errors by kind.
//!
//! A [`Plan`] says what the n-th request is (an operation name, a method, a path, maybe a
//! body): one GET URL, or the 80/20 mix of reads and writes over many clusters. The schedule
//! is kept by a thread of its own (`std::thread::sleep`, tens of µs late at worst here, where
//! the runtime's 1 ms timer would add up to a millisecond to every latency). At most
//! `connections` requests are in flight (keep-alive connections); when all are busy the
//! schedule is behind and the wait shows in the latency of the requests that waited.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};

use crate::report::OpStats;

/// One request to send.
#[derive(Debug, Clone)]
pub struct Req {
    /// The operation it counts under (`get`, `list`, `write`, ...).
    pub op: &'static str,
    /// Method.
    pub method: http::Method,
    /// Path and query, appended to the base URL.
    pub path: String,
    /// Body (with its content type).
    pub body: Option<(Bytes, &'static str)>,
}

impl Req {
    /// A GET of `path`, counted as `op`.
    pub fn get(op: &'static str, path: impl Into<String>) -> Req {
        Req {
            op,
            method: http::Method::GET,
            path: path.into(),
            body: None,
        }
    }
}

/// What the n-th request of a run is.
pub type Plan = Arc<dyn Fn(u64) -> Req + Send + Sync>;

/// A load to offer.
#[derive(Clone)]
pub struct Load {
    /// Base URL (`https://127.0.0.1:8443`), no trailing slash.
    pub base: String,
    /// Bearer token.
    pub token: Option<String>,
    /// PEM of the CA to trust for https (none: plain http only).
    pub ca_pem: Option<String>,
    /// Requests per second.
    pub rate: f64,
    /// Not recorded, before `duration`.
    pub warmup: Duration,
    /// Recorded.
    pub duration: Duration,
    /// Requests in flight at most (keep-alive connections).
    pub connections: usize,
    /// Longest wait for one answer, body included; beyond it the request counts as
    /// `timeout`.
    pub timeout: Duration,
    /// What to send.
    pub plan: Plan,
}

impl std::fmt::Debug for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Load")
            .field("base", &self.base)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("connections", &self.connections)
            .finish()
    }
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Per operation, in the order first seen.
    pub ops: Vec<OpStats>,
    /// When the measured interval started and ended (for CPU accounting).
    pub measured: (Instant, Instant),
    /// Requests scheduled in the measured interval.
    pub scheduled: u64,
    /// Bytes of answer bodies received in the measured interval.
    pub body_bytes: u64,
}

impl Outcome {
    /// Successful requests in the measured interval, all operations.
    pub fn ok(&self) -> u64 {
        self.ops.iter().map(|o| o.ok).sum()
    }
}

struct Sample {
    scheduled: Instant,
    op: &'static str,
    latency: Duration,
    error: Option<String>,
    bytes: u64,
}

type BodyClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn body_client(ca_pem: Option<&str>, conns: usize) -> Result<BodyClient, String> {
    crate::https_client(crate::roots(ca_pem)?, conns)
}

/// Sends one request and reads its whole answer: `Ok(body bytes)` for a 2xx, else the
/// error's kind.
async fn send(client: &BodyClient, load: &Load, r: &Req) -> Result<u64, String> {
    let mut b = http::Request::builder()
        .method(r.method.clone())
        .uri(format!("{}{}", load.base, r.path));
    if let Some(t) = &load.token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = match &r.body {
        Some((bytes, ct)) => {
            b = b.header("content-type", *ct);
            Full::new(bytes.clone())
        }
        None => Full::new(Bytes::new()),
    };
    let req = b.body(body).map_err(|e| format!("request: {e}"))?;
    let resp = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            "connect".to_owned()
        } else {
            "transport".to_owned()
        }
    })?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|_| "body".to_owned())?;
    if !status.is_success() {
        return Err(format!("status {}", status.as_u16()));
    }
    Ok(body.to_bytes().len() as u64)
}

/// The schedule of an open-loop run, kept by a thread of its own: `(n, scheduled time)` for
/// n = 0, 1, … every `period` from `start` until `end`, each sent when its time comes. The
/// channel is bounded: a pacer ahead of its consumer waits (and the consumer's lateness shows
/// in the latencies it measures from the scheduled times). Join the thread after the channel
/// is drained.
pub fn pacer(
    start: Instant,
    period: Duration,
    end: Instant,
) -> (
    std::thread::JoinHandle<()>,
    tokio::sync::mpsc::Receiver<(u64, Instant)>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(4096);
    let thread = std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let scheduled = start + period.mul_f64(n as f64);
            if scheduled >= end {
                break;
            }
            let now = Instant::now();
            if scheduled > now {
                std::thread::sleep(scheduled - now);
            }
            if tx.blocking_send((n, scheduled)).is_err() {
                break;
            }
            n += 1;
        }
    });
    (thread, rx)
}

/// Offers `load` and returns what it measured. `tick` is called about every 100 ms with the
/// fraction done (0..1), for a progress bar; `at_measure` once, when the measured interval
/// begins (the warm-up is over): the moment to read the servers' CPU times.
pub async fn run(
    load: &Load,
    tick: &(dyn Fn(f64) + Sync),
    at_measure: &mut (dyn FnMut() + Send),
) -> Result<Outcome, String> {
    let client = body_client(load.ca_pem.as_deref(), load.connections)?;
    let load = Arc::new(load.clone());
    let period = Duration::from_secs_f64(1.0 / load.rate.max(0.001));
    let total = load.warmup + load.duration;
    let start = Instant::now() + Duration::from_millis(10);
    let end = start + total;
    let record_from = start + load.warmup;

    let (pacer, mut sched_rx) = pacer(start, period, end);

    let slots = Arc::new(tokio::sync::Semaphore::new(load.connections.max(1)));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Sample>(4096);
    let collector = tokio::spawn(async move {
        let mut v = Vec::new();
        while let Some(s) = rx.recv().await {
            v.push(s);
        }
        v
    });
    let mut last_tick = Instant::now();
    let mut measuring = false;
    while let Some((n, scheduled)) = sched_rx.recv().await {
        if !measuring && scheduled >= record_from {
            measuring = true;
            at_measure();
        }
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            tick((scheduled.saturating_duration_since(start)).as_secs_f64() / total.as_secs_f64());
        }
        let (client, load, tx) = (client.clone(), load.clone(), tx.clone());
        tokio::spawn(async move {
            let r = (load.plan)(n);
            let res = tokio::time::timeout(load.timeout, send(&client, &load, &r)).await;
            let (error, bytes) = match res {
                Ok(Ok(b)) => (None, b),
                Ok(Err(kind)) => (Some(kind), 0),
                Err(_) => (Some("timeout".to_owned()), 0),
            };
            let _ = tx
                .send(Sample {
                    scheduled,
                    op: r.op,
                    latency: scheduled.elapsed(),
                    error,
                    bytes,
                })
                .await;
            drop(permit);
        });
    }
    drop(tx);
    let _ = pacer.join();
    let samples = collector.await.map_err(|e| e.to_string())?;
    let measured_end = Instant::now();
    tick(1.0);

    let mut order: Vec<&'static str> = Vec::new();
    let mut hists: BTreeMap<&'static str, (Histogram<u64>, BTreeMap<String, u64>)> =
        BTreeMap::new();
    let (mut scheduled, mut body_bytes) = (0u64, 0u64);
    for s in samples.into_iter().filter(|s| s.scheduled >= record_from) {
        scheduled += 1;
        if !hists.contains_key(s.op) {
            order.push(s.op);
            let h =
                Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())?;
            hists.insert(s.op, (h, BTreeMap::new()));
        }
        let Some((h, errors)) = hists.get_mut(s.op) else {
            continue;
        };
        match s.error {
            None => {
                body_bytes += s.bytes;
                let _ = h.record(s.latency.as_micros().max(1) as u64);
            }
            Some(kind) => *errors.entry(kind).or_default() += 1,
        }
    }
    let secs = load.duration.as_secs_f64();
    let ops = order
        .iter()
        .filter_map(|op| {
            let (h, errors) = hists.remove(op)?;
            Some(OpStats::from_hist(op, &h, errors, secs))
        })
        .collect();
    Ok(Outcome {
        ops,
        measured: (record_from, measured_end),
        scheduled,
        body_bytes,
    })
}
