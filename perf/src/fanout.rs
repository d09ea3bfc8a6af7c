//! `fanout`: one change, K watchers. How many event deliveries per second the hub's cache
//! sustains, and how late the last of K watchers gets an event.
//!
//! One [`Stack`] caching `v1/configmaps`. K watch connections to the hub (HTTPS keep-alive,
//! one connection and one watch each), all on the namespace `fanout` from the resourceVersion
//! of a LIST through the hub, so they are served by the cache (the first answer's
//! `X-Kubehub-Cache: hit` is checked). A writer changes one ConfigMap directly on the
//! simulator (merge PATCH over plain HTTP) at E per second, open loop: change `i` is sent at
//! its scheduled time whatever happened to the ones before, and carries that time (ns since a
//! base `Instant` this process shares with the watchers) in `data.sent` and its number in
//! `data.seq`. Every watcher pulls those two fields out of each event line (no JSON parsing)
//! and records `now − sent`: the delivery latency from the intended write to the watcher,
//! edge write, agent watch, tunnel, cache and the client's own TLS included.
//!
//! Per rate (`--rates`, one run each, in order; warm-up excluded): op `delivery` (every
//! watcher's every event), op `last-watcher` (per event, the latency of the last of the K to
//! get it; an event some watcher never got is counted as the error `lost`), figures
//! `deliveries/s` (counted while measuring), `offered deliveries/s` (E × K), `events/s`,
//! `watchers`, `lost` (events written × K − delivered: must be 0), `duplicates`, and the hub,
//! agent and simulator's CPU time and CPU µs per delivery.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};

use crate::report::{OpStats, Report, Run};
use crate::stack::{Stack, StackOptions};

/// Options of the `fanout` scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutArgs {
    /// Watchers (one HTTPS connection and one watch each).
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Events written per second, one run per rate, in this order (on 2 shared cores the
    /// deliveries top out between 1,000 and 1,500 events/s × 1,000 watchers, with latencies
    /// in the hundreds of ms: batching per watcher write is what gets it there).
    #[arg(long, value_delimiter = ',', default_value = "50,200,500,1000,1500")]
    pub rates: Vec<f64>,
    /// Seconds measured per rate.
    #[arg(long, default_value_t = 6.0)]
    pub seconds: f64,
    /// Seconds of warm-up per rate (written and delivered, not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    #[command(flatten)]
    pub stack: crate::stack::StackArgs,
}

const NAMESPACE: &str = "fanout";
const OBJECT: &str = "ticker";

/// What watchers and the writer share.
#[derive(Debug)]
struct Shared {
    base: Instant,
    watchers: usize,
    /// The first event number of the current rate's range.
    first: AtomicU64,
    /// Per (event − first, watcher): latency µs + 1 (0: not delivered).
    lat: Vec<AtomicU32>,
    /// Per event − first: its PATCH was answered 200.
    written: Vec<AtomicBool>,
    /// Events delivered (to any watcher, any rate).
    delivered: AtomicU64,
    /// An event a watcher had already had.
    duplicates: AtomicU64,
    /// Events with a number outside the current range (a late one from an earlier rate).
    stray: AtomicU64,
    /// Watches answered (response head received), and of those with `X-Kubehub-Cache: hit`.
    established: AtomicU64,
    hits: AtomicU64,
    /// Watches that ended or failed, and ERROR events.
    ended: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
    stop: AtomicBool,
}

impl Shared {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert(e);
        }
    }

    /// One event line (`{"type":...,"object":{...}}`) received by watcher `w`.
    fn line(&self, w: usize, line: &[u8]) {
        if find(&line[..line.len().min(32)], b"\"type\":\"ERROR\"").is_some() {
            self.error(format!(
                "watcher {w}: {}",
                String::from_utf8_lossy(&line[..line.len().min(300)])
            ));
            return;
        }
        let (Some(seq), Some(sent)) = (field(line, b"seq\":\""), field(line, b"sent\":\"")) else {
            return; // the object as created, a bookmark
        };
        let now = self.base.elapsed().as_nanos() as u64;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let first = self.first.load(Ordering::Relaxed);
        let Some(i) = seq
            .checked_sub(first)
            .map(|i| i as usize)
            .filter(|i| *i < self.written.len())
        else {
            self.stray.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let us = (now.saturating_sub(sent) / 1000).min(u32::MAX as u64 - 1) as u32;
        if self.lat[i * self.watchers + w].swap(us + 1, Ordering::Relaxed) != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where `needle` (not empty) starts in `hay`: a scan for its first byte, then a compare
/// (200,000 lines a second go through this).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut from = 0;
    while let Some(p) = hay.get(from..)?.iter().position(|&c| c == first) {
        let at = from + p;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The digits after `key` (`"seq":"`), as a number.
fn field(line: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(line, key)? + key.len();
    let digits = &line[at..];
    let n = digits.iter().take_while(|c| c.is_ascii_digit()).count();
    std::str::from_utf8(&digits[..n]).ok()?.parse().ok()
}

/// Splits a watch body into lines across frames, handing each whole line to `shared`.
#[derive(Debug, Default)]
struct Lines {
    carry: Vec<u8>,
}

impl Lines {
    fn feed(&mut self, data: &[u8], mut each: impl FnMut(&[u8])) {
        let mut rest = data;
        if !self.carry.is_empty() {
            let Some(nl) = rest.iter().position(|&c| c == b'\n') else {
                self.carry.extend_from_slice(rest);
                return;
            };
            self.carry.extend_from_slice(&rest[..nl]);
            each(&self.carry);
            self.carry.clear();
            rest = &rest[nl + 1..];
        }
        while let Some(nl) = rest.iter().position(|&c| c == b'\n') {
            if nl > 0 {
                each(&rest[..nl]);
            }
            rest = &rest[nl + 1..];
        }
        self.carry.extend_from_slice(rest);
    }
}

type Client<B> = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    B,
>;

/// How a watcher reaches the hub: address, TLS configuration, the request's bytes.
#[derive(Debug)]
struct Target {
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    request: Vec<u8>,
}

/// A response body's framing, decoded as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line (hex digits so far); `ext`: past them (extensions, `\r`).
    Size { n: usize, ext: bool },
    /// Bytes of chunk data left.
    Data(usize),
    /// The `\r\n` after a chunk's data (`true`: the `\r` was seen).
    DataEnd(bool),
    /// The last chunk was read.
    Done,
}

/// Decodes a chunked body, handing its data to `each`; returns false once the last chunk
/// was read, or on malformed framing (`Err`).
fn dechunk(
    state: &mut Chunk,
    mut input: &[u8],
    mut each: impl FnMut(&[u8]),
) -> Result<bool, String> {
    while !input.is_empty() {
        match *state {
            Chunk::Size { n, ext } => {
                let c = input[0];
                input = &input[1..];
                *state = match (c, ext) {
                    (b'\n', _) if n == 0 => Chunk::Done,
                    (b'\n', _) => Chunk::Data(n),
                    (_, true) => Chunk::Size { n, ext },
                    (b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F', false) => {
                        let d = (c as char).to_digit(16).unwrap_or(0) as usize;
                        let n = n
                            .checked_mul(16)
                            .and_then(|n| n.checked_add(d))
                            .filter(|n| *n <= 1 << 30)
                            .ok_or("chunk size too large")?;
                        Chunk::Size { n, ext }
                    }
                    (b';' | b'\r' | b' ', false) => Chunk::Size { n, ext: true },
                    _ => return Err(format!("bad chunk size byte {c:#x}")),
                };
            }
            Chunk::Data(left) => {
                let take = left.min(input.len());
                each(&input[..take]);
                input = &input[take..];
                *state = if take == left {
                    Chunk::DataEnd(false)
                } else {
                    Chunk::Data(left - take)
                };
            }
            Chunk::DataEnd(cr) => {
                let c = input[0];
                input = &input[1..];
                *state = match (c, cr) {
                    (b'\r', false) => Chunk::DataEnd(true),
                    (b'\n', true) => Chunk::Size { n: 0, ext: false },
                    _ => return Err("no CRLF after chunk data".into()),
                };
            }
            Chunk::Done => return Ok(false),
        }
    }
    Ok(*state != Chunk::Done)
}

/// One socket read: its records decrypted and their plaintext appended to `out` (drained
/// record batch by record batch, so rustls's plaintext buffer never fills). `Ok(false)` once
/// the stream ended (end of file, or the peer's close_notify).
async fn tls_read(
    tcp: &mut tokio::net::TcpStream,
    tls: &mut rustls::ClientConnection,
    buf: &mut [u8],
    out: &mut Vec<u8>,
) -> Result<bool, String> {
    use std::io::Read;
    use tokio::io::AsyncReadExt;
    let n = tcp.read(buf).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(false);
    }
    let mut input = &buf[..n];
    while !input.is_empty() {
        tls.read_tls(&mut input).map_err(|e| e.to_string())?;
        let state = tls.process_new_packets().map_err(|e| e.to_string())?;
        let mut left = state.plaintext_bytes_to_read();
        while left > 0 {
            let at = out.len();
            out.resize(at + left, 0);
            let got = tls
                .reader()
                .read(&mut out[at..])
                .map_err(|e| e.to_string())?;
            out.truncate(at + got);
            if got == 0 {
                break;
            }
            left -= got.min(left);
        }
        if state.peer_has_closed() {
            return Ok(false);
        }
    }
    Ok(true)
}

async fn tls_flush(
    tcp: &mut tokio::net::TcpStream,
    tls: &mut rustls::ClientConnection,
) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    while tls.wants_write() {
        let mut out = Vec::new();
        tls.write_tls(&mut out).map_err(|e| e.to_string())?;
        tcp.write_all(&out).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One watcher: its own TLS connection (rustls over a tokio socket: one task, no HTTP
/// client machinery, so the watchers cost the shared cores as little as they can), the watch
/// request, then every line of the body until it ends or `stop`.
async fn watcher(
    w: usize,
    target: Arc<Target>,
    shared: Arc<Shared>,
    connecting: Arc<tokio::sync::Semaphore>,
) {
    let fail = |e: String| {
        shared.ended.fetch_add(1, Ordering::Relaxed);
        shared.error(format!("watcher {w}: {e}"));
    };
    // Connections are opened a batch at a time (the hub's accept backlog).
    let permit = connecting.acquire().await;
    let conn = watch_open(&target).await;
    drop(permit);
    let (mut tcp, mut tls, mut body) = match conn {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    if body.hit {
        shared.hits.fetch_add(1, Ordering::Relaxed);
    }
    shared.established.fetch_add(1, Ordering::Relaxed);
    let mut lines = Lines::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = std::mem::take(&mut body.rest);
    loop {
        let more = dechunk(&mut body.chunk, &pending, |d| {
            lines.feed(d, |l| shared.line(w, l))
        });
        pending.clear();
        match more {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => return fail(e),
        }
        let open = match tls_read(&mut tcp, &mut tls, &mut buf, &mut pending).await {
            Ok(open) => open,
            Err(e) => {
                if !shared.stop.load(Ordering::Relaxed) {
                    fail(e);
                }
                return;
            }
        };
        if !open {
            // What came with the end still counts.
            let _ = dechunk(&mut body.chunk, &pending, |d| {
                lines.feed(d, |l| shared.line(w, l))
            });
            break;
        }
        if let Err(e) = tls_flush(&mut tcp, &mut tls).await {
            return fail(e);
        }
    }
    if !shared.stop.load(Ordering::Relaxed) {
        fail("the watch ended".into());
    }
}

/// What the response head said, and the body bytes read with it.
#[derive(Debug)]
struct Body {
    hit: bool,
    chunk: Chunk,
    rest: Vec<u8>,
}

/// Connects, completes the handshake, sends the request and reads the response head.
async fn watch_open(
    t: &Target,
) -> Result<(tokio::net::TcpStream, rustls::ClientConnection, Body), String> {
    use std::io::Write;
    let mut tcp = tokio::net::TcpStream::connect(t.addr)
        .await
        .map_err(|e| format!("connecting to {}: {e}", t.addr))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::IpAddress(t.addr.ip().into());
    let mut tls = rustls::ClientConnection::new(t.tls.clone(), name).map_err(|e| e.to_string())?;
    tls.writer()
        .write_all(&t.request)
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut head = Vec::new();
    loop {
        tls_flush(&mut tcp, &mut tls).await?;
        let open = tls_read(&mut tcp, &mut tls, &mut buf, &mut head).await?;
        if let Some(end) = find(&head, b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let status = text.lines().next().unwrap_or_default().to_owned();
            if !status.starts_with("http/1.1 200") {
                return Err(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&head[end + 4..(end + 304).min(head.len())])
                ));
            }
            let header = |name: &str, value: &str| {
                text.lines().skip(1).any(|l| {
                    l.split_once(':')
                        .is_some_and(|(n, v)| n.trim() == name && v.trim() == value)
                })
            };
            if !header("transfer-encoding", "chunked") {
                return Err(format!("not a chunked watch answer: {text}"));
            }
            return Ok((
                tcp,
                tls,
                Body {
                    hit: header("x-kubehub-cache", "hit"),
                    chunk: Chunk::Size { n: 0, ext: false },
                    rest: head[end + 4..].to_vec(),
                },
            ));
        }
        if !open {
            return Err("the hub closed the connection before answering".into());
        }
        if head.len() > 64 * 1024 {
            return Err("no end of the response head in 64 KiB".into());
        }
    }
}

/// TLS 1.3/1.2 towards the hub, trusting `ca_pem`, HTTP/1.1 by ALPN.
fn tls_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut cfg = crate::tls_client(crate::roots(Some(ca_pem))?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A request to the simulator; the status and body.
async fn sim_call(
    client: &Client<Full<Bytes>>,
    method: http::Method,
    url: &str,
    ctype: &str,
    body: String,
) -> Result<(u16, Bytes), String> {
    let req = http::Request::builder()
        .method(method.clone())
        .uri(url)
        .header("content-type", ctype)
        .header("accept", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let a = crate::call::whole(client.request(req).await, &format!("{method} {url}")).await?;
    Ok((a.status, a.body))
}

impl FanoutArgs {
    /// The output folder.
    pub fn out_dir(&self) -> PathBuf {
        self.stack.out_dir("fanout")
    }
}

/// Runs the scenario, adding a [`Run`] per rate to `report`.
pub async fn run(mut a: FanoutArgs, report: &mut Report) -> Result<(), String> {
    if a.stack.smoke {
        a.watchers = a.watchers.min(20);
        a.rates = vec![20.0];
        a.seconds = 2.0;
        a.warmup = 1.0;
    }
    let k = a.watchers.max(1);
    if a.rates.is_empty() || a.rates.iter().any(|r| r.is_nan() || *r <= 0.0) {
        return Err(format!("--rates must be positive: {:?}", a.rates));
    }
    crate::sys::need_files(k as u64 + 200, &format!("{k} watchers"))?;
    let opts = StackOptions::small(
        a.stack.kubehub.as_deref(),
        a.out_dir().join("run"),
        a.stack.hub_cores,
        &["v1/configmaps"],
    )?;
    let mut stack = Stack::start(&opts).await?;

    // The namespace and the object, on the simulator.
    let sim: Client<Full<Bytes>> = stack.client(64)?;
    let sim_url = stack.sim_url();
    let (st, b) = sim_call(
        &sim,
        http::Method::POST,
        &format!("{sim_url}/api/v1/namespaces"),
        "application/json",
        format!(r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{NAMESPACE}"}}}}"#),
    )
    .await?;
    if st != 201 {
        return Err(format!(
            "creating namespace {NAMESPACE}: {st} {}",
            String::from_utf8_lossy(&b)
        ));
    }
    let (st, b) = sim_call(
        &sim,
        http::Method::POST,
        &format!("{sim_url}/api/v1/namespaces/{NAMESPACE}/configmaps"),
        "application/json",
        format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{OBJECT}"}},"data":{{"created":"yes"}}}}"#),
    )
    .await?;
    if st != 201 {
        return Err(format!(
            "creating configmap {OBJECT}: {st} {}",
            String::from_utf8_lossy(&b)
        ));
    }

    // A LIST through the hub (consistent: it includes the object): the watches' start.
    let client: Client<Empty<Bytes>> = stack.client(2)?;
    let list_url = format!(
        "{}/api/v1/namespaces/{NAMESPACE}/configmaps",
        stack.cluster_url()
    );
    let req = http::Request::get(&list_url)
        .header("authorization", format!("Bearer {}", stack.token))
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("LIST {list_url}: {e}"))?;
    let (status, list_hit) = (
        resp.status(),
        resp.headers().get("x-kubehub-cache").is_some(),
    );
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("LIST {list_url}: {e}"))?
        .to_bytes();
    let list: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("LIST {list_url}: {status}: {e}"))?;
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .ok_or_else(|| format!("LIST {list_url}: {status}, no resourceVersion"))?
        .to_owned();
    if !list["items"]
        .as_array()
        .is_some_and(|i| i.iter().any(|o| o["metadata"]["name"] == OBJECT))
    {
        return Err(format!("LIST {list_url} at {rv} lacks {OBJECT}"));
    }
    if !list_hit {
        report
            .notes
            .push("fanout: the LIST the watches start from was not answered by the cache".into());
    }

    // Room for the largest rate's events.
    let per_rate = a
        .rates
        .iter()
        .map(|r| (r * (a.warmup + a.seconds)).ceil() as usize + 1)
        .max()
        .unwrap_or(1);
    let cells = per_rate
        .checked_mul(k)
        .filter(|c| *c <= 256 << 20)
        .ok_or_else(|| format!("{per_rate} events × {k} watchers: too many to record"))?;
    let shared = Arc::new(Shared {
        base: Instant::now(),
        watchers: k,
        first: AtomicU64::new(0),
        lat: (0..cells).map(|_| AtomicU32::new(0)).collect(),
        written: (0..per_rate).map(|_| AtomicBool::new(false)).collect(),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        stray: AtomicU64::new(0),
        established: AtomicU64::new(0),
        hits: AtomicU64::new(0),
        ended: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
        stop: AtomicBool::new(false),
    });

    // The watchers.
    let watch_url = format!("{list_url}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true");
    let hub: std::net::SocketAddr = stack
        .hub_url
        .trim_start_matches("https://")
        .parse()
        .map_err(|e| format!("{}: {e}", stack.hub_url))?;
    let path = watch_url
        .strip_prefix(stack.hub_url.as_str())
        .unwrap_or(watch_url.as_str());
    let target = Arc::new(Target {
        addr: hub,
        tls: tls_config(&stack.ca_pem)?,
        request: format!(
            "GET {path} HTTP/1.1\r\nHost: {hub}\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\n\r\n",
            stack.token
        )
        .into_bytes(),
    });
    let connecting = Arc::new(tokio::sync::Semaphore::new(100));
    let t = Instant::now();
    let mut tasks = Vec::with_capacity(k);
    for w in 0..k {
        tasks.push(tokio::spawn(watcher(
            w,
            target.clone(),
            shared.clone(),
            connecting.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.established.load(Ordering::Relaxed) + shared.ended.load(Ordering::Relaxed)
        < k as u64
    {
        stack.check_alive()?;
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {k} watches answered after 60 s",
                shared.established.load(Ordering::Relaxed)
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let established = shared.established.load(Ordering::Relaxed);
    let hits = shared.hits.load(Ordering::Relaxed);
    if established < k as u64 {
        let e = shared.first_error.lock().ok().and_then(|e| e.clone());
        return Err(format!(
            "only {established} of {k} watches were answered: {}",
            e.unwrap_or_default()
        ));
    }
    let watching = crate::stack::metric(&stack.metrics().await?, "kubehub_hub_cache_watchers");
    report.notes.push(format!(
        "fanout: {k} watches answered in {:.1} s; {hits} of them with X-Kubehub-Cache: hit; the hub counts {watching} cache watchers",
        t.elapsed().as_secs_f64()
    ));
    if hits < k as u64 {
        report.notes.push(format!(
            "fanout: {} watches were not marked as served by the cache",
            k as u64 - hits
        ));
    }

    let patch_url = Arc::new(format!(
        "{sim_url}/api/v1/namespaces/{NAMESPACE}/configmaps/{OBJECT}"
    ));
    let mut seq: u64 = 0;
    let mut lost_total = 0u64;
    let mut best: Option<(f64, f64)> = None;
    for (idx, &rate) in a.rates.iter().enumerate() {
        let quiet = crate::stack::wait_quiet(
            Duration::from_secs(if a.stack.smoke { 2 } else { 20 }),
            30.0,
        )
        .await;
        if quiet >= 30.0 {
            report.notes.push(format!(
                "fanout {rate}/s: the machine was busy before the run ({quiet:.0}% of a core used by others)"
            ));
        }
        // A new range of event numbers: late events of the last rate are strays.
        for c in &shared.lat {
            c.store(0, Ordering::Relaxed);
        }
        for c in &shared.written {
            c.store(false, Ordering::Relaxed);
        }
        shared.first.store(seq, Ordering::Relaxed);
        let first = seq;
        let n_warm = (rate * a.warmup).round() as u64;
        let n_meas = ((rate * a.seconds).round() as u64).max(1);
        let total = n_warm + n_meas;
        let writer_errors = Arc::new(AtomicU64::new(0));
        let t0 = Instant::now() + Duration::from_millis(100);
        let at = move |i: u64| t0 + Duration::from_secs_f64(i as f64 / rate);
        // The schedule, on a thread of its own: `std::thread::sleep` is tens of µs late at
        // worst, the runtime's 1 ms timer would add up to a millisecond to every latency.
        let (sched_tx, mut sched_rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(4096);
        let pacer = std::thread::spawn(move || {
            for i in 0..total {
                let when = at(i);
                let now = Instant::now();
                if when > now {
                    std::thread::sleep(when - now);
                }
                if sched_tx.blocking_send((i, when)).is_err() {
                    break;
                }
            }
        });
        let me = std::process::id();
        let tck = crate::sys::clock_ticks();
        let mut before = None;
        let mut writes = tokio::task::JoinSet::new();
        while let Some((i, when)) = sched_rx.recv().await {
            if i == n_warm {
                before = Some((
                    stack.sample(),
                    crate::sys::cpu_sample(me, tck),
                    shared.delivered.load(Ordering::Relaxed),
                    Instant::now(),
                    crate::stack::MachineMark::now(),
                ));
            }
            let sent = (when - shared.base).as_nanos() as u64;
            let s = seq + i;
            let (sim, url, shared, errors) = (
                sim.clone(),
                patch_url.clone(),
                shared.clone(),
                writer_errors.clone(),
            );
            writes.spawn(async move {
                let body = format!(r#"{{"data":{{"seq":"{s}","sent":"{sent}"}}}}"#);
                match sim_call(
                    &sim,
                    http::Method::PATCH,
                    &url,
                    "application/merge-patch+json",
                    body,
                )
                .await
                {
                    Ok((200, _)) => {
                        if let Some(c) = shared.written.get((s - first) as usize) {
                            c.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok((st, b)) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            shared.error(format!("PATCH: {st} {}", String::from_utf8_lossy(&b)));
                        }
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            shared.error(e);
                        }
                    }
                }
            });
            while writes.try_join_next().is_some() {}
        }
        let _ = pacer.join();
        tokio::time::sleep_until(at(total).into()).await;
        let (cpu0, me0, d0, m0, mark) = before.ok_or("no measured events")?;
        let secs = m0.elapsed().as_secs_f64();
        let procs_delivered = shared.delivered.load(Ordering::Relaxed) - d0;
        let procs = stack.proc_stats(&cpu0, procs_delivered);
        let client_cpu = crate::sys::cpu_delta(&me0, &crate::sys::cpu_sample(me, tck));
        let others = mark.others_pct(procs.iter().map(|p| p.cpu_secs).sum::<f64>() + client_cpu);
        while writes.join_next().await.is_some() {}
        seq += total;

        // Until every written event reached every watcher, or 5 s without progress.
        let want = |shared: &Shared| {
            shared
                .written
                .iter()
                .filter(|w| w.load(Ordering::Relaxed))
                .count() as u64
                * k as u64
        };
        let written_all = want(&shared);
        let mut last = (Instant::now(), u64::MAX);
        loop {
            let got = shared
                .lat
                .iter()
                .take(total as usize * k)
                .filter(|c| c.load(Ordering::Relaxed) != 0)
                .count() as u64;
            if got >= written_all {
                break;
            }
            if got != last.1 {
                last = (Instant::now(), got);
            } else if last.0.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        stack.check_alive()?;

        // The measured events' figures.
        let mut delivery =
            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
        let mut last_watcher = delivery.clone();
        let (mut lost, mut written, mut incomplete) = (0u64, 0u64, 0u64);
        for i in n_warm as usize..total as usize {
            if !shared.written[i].load(Ordering::Relaxed) {
                continue;
            }
            written += 1;
            let mut max = 0u64;
            let mut missing = 0u64;
            for w in 0..k {
                match shared.lat[i * k + w].load(Ordering::Relaxed) {
                    0 => missing += 1,
                    v => {
                        let us = (v - 1) as u64;
                        delivery.saturating_record(us.max(1));
                        max = max.max(us);
                    }
                }
            }
            if missing == 0 {
                last_watcher.saturating_record(max.max(1));
            } else {
                incomplete += 1;
                lost += missing;
            }
        }
        lost_total += lost;
        let mut delivery_errors = std::collections::BTreeMap::new();
        let mut last_errors = std::collections::BTreeMap::new();
        if lost > 0 {
            delivery_errors.insert("lost".to_owned(), lost);
            last_errors.insert("lost".to_owned(), incomplete);
        }
        let werr = writer_errors.load(Ordering::Relaxed);
        let per_s = procs_delivered as f64 / secs;
        let delivery_stats = OpStats::from_hist("delivery", &delivery, delivery_errors, secs);
        let last_stats = OpStats::from_hist("last-watcher", &last_watcher, last_errors, secs);
        if best.is_none_or(|(_, d)| per_s > d) {
            best = Some((rate, per_s));
        }
        let mut figures = std::collections::BTreeMap::new();
        figures.insert("deliveries/s".to_owned(), per_s);
        figures.insert("offered deliveries/s".to_owned(), rate * k as f64);
        figures.insert("events/s".to_owned(), written as f64 / a.seconds);
        figures.insert("watchers".to_owned(), k as f64);
        // The watchers and the writer share the machine with the servers.
        figures.insert("client CPU s".to_owned(), client_cpu);
        figures.insert("others % of a core".to_owned(), others);
        figures.insert(
            "client CPU µs per delivery".to_owned(),
            client_cpu * 1e6 / procs_delivered.max(1) as f64,
        );
        figures.insert("lost".to_owned(), lost as f64);
        figures.insert("events written".to_owned(), written as f64);
        figures.insert("writer errors".to_owned(), werr as f64);
        figures.insert(
            "duplicates".to_owned(),
            shared.duplicates.swap(0, Ordering::Relaxed) as f64,
        );
        figures.insert(
            "late events of an earlier rate".to_owned(),
            shared.stray.swap(0, Ordering::Relaxed) as f64,
        );
        figures.insert(
            "watches ended".to_owned(),
            shared.ended.load(Ordering::Relaxed) as f64,
        );
        println!(
            "fanout {rate}/s × {k}: {per_s:.0} deliveries/s (offered {:.0}); delivery p50 {:.2} ms p99 {:.2} ms; last watcher p50 {:.2} ms p99 {:.2} ms max {:.2} ms; lost {lost}",
            rate * k as f64,
            delivery_stats.p50_us / 1e3,
            delivery_stats.p99_us / 1e3,
            last_stats.p50_us / 1e3,
            last_stats.p99_us / 1e3,
            last_stats.max_us / 1e3,
        );
        report.notes.push(format!(
            "fanout {rate} events/s × {k}: last watcher p99 {:.1} ms (target with 1,000 watchers: 10 ms); hub {:.1} µs, watchers (this process) {:.1} µs of CPU per delivery; others used {others:.0}% of a core",
            last_stats.p99_us / 1e3,
            procs
                .iter()
                .find(|p| p.name == "hub")
                .and_then(|p| p.cpu_us_per_request)
                .unwrap_or(0.0),
            client_cpu * 1e6 / procs_delivered.max(1) as f64,
        ));
        report.runs.push(Run {
            target: "kubehub".into(),
            round: (idx + 1) as u32,
            offered_rate: rate,
            secs,
            ops: vec![delivery_stats, last_stats],
            procs,
            figures,
        });
    }
    shared.stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let errors = shared.errors.load(Ordering::Relaxed);
    let first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    if let Some((rate, d)) = best {
        report.notes.push(format!(
            "fanout: most deliveries per second {d:.0} (at {rate} events/s × {k} watchers); runs are numbered by rate in the order of --rates"
        ));
    }
    if errors > 0 {
        report.notes.push(format!(
            "fanout: {errors} errors; the first: {}",
            first_error.clone().unwrap_or_default()
        ));
    }
    if lost_total > 0 {
        report
            .notes
            .push(format!("fanout: {lost_total} deliveries lost (must be 0)"));
    }
    if a.stack.smoke && (lost_total > 0 || errors > 0 || hits < k as u64) {
        return Err(format!(
            "fanout smoke: {lost_total} deliveries lost, {errors} errors ({}), {hits} of {k} watches served by the cache",
            first_error.unwrap_or_default()
        ));
    }
    drop(stack);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_lines() {
        let l = br#"{"type":"MODIFIED","object":{"data":{"sent":"123456","seq":"42"}}}"#;
        assert_eq!(field(l, b"seq\":\""), Some(42));
        assert_eq!(field(l, b"sent\":\""), Some(123456));
        assert_eq!(field(l, b"other\":\""), None);
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abd"), None);
        let mut st = Chunk::Size { n: 0, ext: false };
        let mut out = Vec::new();
        let body = b"5\r\nhello\r\nA;x=y\r\n0123456789\r\n0\r\n\r\n";
        for part in body.chunks(3) {
            dechunk(&mut st, part, |d| out.extend_from_slice(d)).unwrap();
        }
        assert_eq!(out, b"hello0123456789");
        assert_eq!(st, Chunk::Done);
        let mut st = Chunk::Size { n: 0, ext: false };
        assert!(dechunk(&mut st, b"zz\r\n", |_| {}).is_err());
        let mut got = Vec::new();
        let mut lines = Lines::default();
        lines.feed(b"a\nbb", |l| got.push(l.to_vec()));
        lines.feed(b"b\n", |l| got.push(l.to_vec()));
        lines.feed(b"c", |l| got.push(l.to_vec()));
        lines.feed(b"\nd\ne\n", |l| got.push(l.to_vec()));
        assert_eq!(
            got,
            vec![
                b"a".to_vec(),
                b"bbb".to_vec(),
                b"c".to_vec(),
                b"d".to_vec(),
                b"e".to_vec()
            ]
        );
    }
}
