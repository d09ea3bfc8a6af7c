//! `access::sync`: the hub's metaserver client, on a thread of its own (a tokio current-thread
//! runtime; nothing here touches the request path's cores).
//!
//! * **Sync**: `GET {url}/v1/sync?revision=N` with the hub's bearer token; the answer is a
//!   chunked stream of NDJSON [`Line`]s (a snapshot first when N is 0 or too old, then puts and
//!   deletes, and a heartbeat at least every 5 s), each applied to the shared index as it
//!   arrives. An error, the end of the stream, or `heartbeat_timeout_ms` without a line ends
//!   the connection; the next one resumes from the last revision applied, after a full-jitter
//!   backoff (a uniform draw between zero and a ceiling doubling from `backoff_initial_ms` to
//!   `backoff_max_ms`, reset once a connection delivers a line). Meanwhile the hub keeps
//!   deciding with what it has.
//! * **Registry watch**: `GET {url}/v1/registry/watch?revision=N`, the same way (NDJSON
//!   [`RegistryLine`]s, resumed, backed off): the directory [`Peers`] forwards with (which hub
//!   holds which cluster, where hubs take peer links, their environments and states).
//! * **Registration**: `PUT {url}/v1/registry/hubs/{id}` every `register_interval_ms` with the
//!   hub's endpoints, version, environment, zone and load (agents, open streams, CPU in
//!   permille of one core since the last registration), and at once when the hub starts
//!   draining (`draining: true`, so agents and other hubs move off it first).
//!
//! Failures of either are logged at `warn` once per outage (then at `debug`), and once more at
//! `info` when meta answers again.
//!
//! The client certificate it presents (`[meta] cert`/`key`, or the hub's enrolled one) is a
//! [`ReloadingCert`]: when the hub's certificate is renewed (`crate::enroll`, a side task on
//! this thread), new connections present the new one; the feed already open carries on.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use kubehub_access::registry::RegistryLine;
use kubehub_access::Line;
use kubehub_pki::ReloadingCert;
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument};

use super::Access;
use crate::config::MetaConfig;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::peers::Peers;
use crate::registry::Registry;

const UA: &str = concat!("kubehub-hub/", env!("CARGO_PKG_VERSION"));

/// Why the metaserver client could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetaSetupError {
    /// A credential or CA file could not be read.
    #[error("[meta] {what} {path}: {why}")]
    File {
        /// Which option.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        why: String,
    },
    /// The TLS configuration is unusable.
    #[error("[meta] TLS: {0}")]
    Tls(String),
    /// The thread could not start.
    #[error("starting the meta client thread: {0}")]
    Thread(std::io::Error),
}

/// Why one sync connection ended.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error("meta answered {code}: {body}")]
    Status { code: StatusCode, body: String },
    #[error("nothing from meta for {0:?} (heartbeats stopped)")]
    Silent(Duration),
    #[error("meta ended the feed")]
    Closed,
    #[error("reading the feed: {0}")]
    Body(String),
    #[error("a sync line is longer than {0} bytes (max_line_bytes)")]
    LineTooLong(usize),
    #[error("a line after revision {after} does not parse: {source}")]
    Decode {
        after: i64,
        source: serde_json::Error,
    },
}

/// What the hub tells meta about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The hub's id (hub.toml `id`).
    pub hub_id: String,
    /// The URL users reach the hub at.
    pub endpoint: String,
    /// `host:port` agents dial.
    pub agent_endpoint: String,
    /// The hub's environment (hub.toml `environment`).
    pub environment: String,
    /// The hub's failure domain (hub.toml `zone`).
    pub zone: String,
    /// The version it registers as (`[meta] version`, else this build's).
    pub version: String,
    /// The admin listener's URL (`http://host:port`; `""`: none), where meta's console
    /// fetches `/traffic`.
    pub admin: String,
}

/// What the hub reports of its load and state with each registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Connected agents.
    pub agents: usize,
    /// Streams open on its tunnels and links.
    pub streams: u64,
    /// CPU used since the last registration, permille of one core.
    pub cpu: u32,
    /// Shutting down.
    pub draining: bool,
}

/// This machine's host name (for endpoints derived from wildcard listeners).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `host` for an address: its IP, or the host name when it listens on every address.
fn host_of(addr: SocketAddr) -> String {
    match addr.ip() {
        ip if ip.is_unspecified() => hostname(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    }
}

impl Registration {
    /// The registration for a hub whose listeners are bound to these addresses: endpoints
    /// from `[meta] public_url` / `agent_endpoint`, else derived from the addresses.
    pub fn new(
        hub_id: &str,
        (environment, zone): (&str, &str),
        cfg: &MetaConfig,
        user_addr: SocketAddr,
        agent_addr: SocketAddr,
    ) -> Registration {
        let endpoint = if cfg.public_url.is_empty() {
            format!("https://{}:{}", host_of(user_addr), user_addr.port())
        } else {
            cfg.public_url.trim_end_matches('/').to_owned()
        };
        let agent_endpoint = if cfg.agent_endpoint.is_empty() {
            format!("{}:{}", host_of(agent_addr), agent_addr.port())
        } else {
            cfg.agent_endpoint.clone()
        };
        Registration {
            hub_id: hub_id.to_owned(),
            endpoint,
            agent_endpoint,
            environment: environment.to_owned(),
            zone: zone.to_owned(),
            version: if cfg.version.is_empty() {
                env!("CARGO_PKG_VERSION").to_owned()
            } else {
                cfg.version.clone()
            },
            admin: cfg.admin_url.trim_end_matches('/').to_owned(),
        }
    }

    /// Sets the admin URL from the admin listener's address, unless `[meta] admin_url` gave
    /// one.
    pub fn with_admin(mut self, admin: Option<SocketAddr>) -> Registration {
        if let (true, Some(a)) = (self.admin.is_empty(), admin) {
            self.admin = format!("http://{}:{}", host_of(a), a.port());
        }
        self
    }

    /// The JSON body of the registration PUT.
    pub fn body(&self, load: Load) -> serde_json::Value {
        serde_json::json!({
            "endpoint": self.endpoint,
            "agentEndpoint": self.agent_endpoint,
            "version": self.version,
            "environment": self.environment,
            "zone": self.zone,
            "agents": load.agents,
            "streams": load.streams,
            "cpu": load.cpu,
            "draining": load.draining,
            "admin": self.admin,
        })
    }
}

/// Percent-encodes a path segment (RFC 3986 unreserved characters pass).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A future run on the meta client's thread for the hub's life (the certificate renewal).
pub type SideTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What the meta client's thread gets besides the configuration and the shared state.
pub struct MetaParts {
    /// What the hub registers as.
    pub registration: Registration,
    /// The client certificate presented to meta ([`client_cert`]); renewal replaces it.
    pub client_cert: Option<Arc<ReloadingCert>>,
    /// Run on the thread until it ends.
    pub side_tasks: Vec<SideTask>,
}

impl std::fmt::Debug for MetaParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaParts")
            .field("registration", &self.registration)
            .field("client_cert", &self.client_cert)
            .field("side_tasks", &self.side_tasks.len())
            .finish()
    }
}

/// `[meta] cert` and `key` as a certificate the hub can replace (renewal), if set.
pub fn client_cert(cfg: &MetaConfig) -> Result<Option<Arc<ReloadingCert>>, MetaSetupError> {
    let (Some(c), Some(k)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let file = |what: &'static str, path: &Path| {
        let path = path.display().to_string();
        move |e: kubehub_pki::PkiError| MetaSetupError::File {
            what,
            path: path.clone(),
            why: e.to_string(),
        }
    };
    let cert = ReloadingCert::new(
        kubehub_pki::load_certs(c).map_err(file("cert", c))?,
        kubehub_pki::load_key(k).map_err(file("key", k))?,
    )
    .map_err(file("key", k))?;
    Ok(Some(Arc::new(cert)))
}

/// The HTTP client for meta, with the hub's credentials.
struct MetaClient {
    client: HttpsClient,
    base: String,
    auth: Option<HeaderValue>,
}

fn read_file(what: &'static str, path: &Path) -> Result<String, MetaSetupError> {
    std::fs::read_to_string(path).map_err(|e| MetaSetupError::File {
        what,
        path: path.display().to_string(),
        why: e.to_string(),
    })
}

impl MetaClient {
    fn new(
        cfg: &MetaConfig,
        client_cert: Option<Arc<ReloadingCert>>,
    ) -> Result<MetaClient, MetaSetupError> {
        fn pem(
            what: &'static str,
            path: &Path,
        ) -> impl Fn(kubehub_pki::PkiError) -> MetaSetupError {
            let path = path.display().to_string();
            move |e| MetaSetupError::File {
                what,
                path: path.clone(),
                why: e.to_string(),
            }
        }
        let tls = |e: rustls::Error| MetaSetupError::Tls(e.to_string());
        let roots = match &cfg.ca {
            Some(ca) => kubehub_pki::load_roots(ca).map_err(pem("ca", ca))?,
            None => rustls::RootCertStore::empty(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(tls)?
        .with_root_certificates(roots);
        let mut tls_cfg = match client_cert {
            Some(c) => builder.with_client_cert_resolver(c),
            None => builder.with_no_client_auth(),
        };
        // A resumed TLS 1.3 session does not present the client certificate again: without
        // resumption, a renewed certificate is presented by the next connection.
        tls_cfg.resumption = rustls::client::Resumption::disabled();
        let auth = match &cfg.token_file {
            Some(path) => {
                let text = read_file("token_file", path)?;
                let token = text.lines().next().unwrap_or("").trim();
                if token.is_empty() {
                    return Err(MetaSetupError::File {
                        what: "token_file",
                        path: path.display().to_string(),
                        why: "is empty".into(),
                    });
                }
                let value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                    MetaSetupError::File {
                        what: "token_file",
                        path: path.display().to_string(),
                        why: "the token has characters a header cannot carry".into(),
                    }
                })?;
                Some(value)
            }
            None => None,
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(MetaClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
            base: cfg.url.trim_end_matches('/').to_owned(),
            auth,
        })
    }

    fn request(&self, method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(USER_AGENT, UA);
        if let Some(auth) = &self.auth {
            req = req.header(AUTHORIZATION, auth.clone());
        }
        if !body.is_empty() {
            req = req.header(CONTENT_TYPE, "application/json");
        }
        // The URI is the validated base URL plus an encoded path: it parses.
        req.body(Full::new(body)).unwrap_or_default()
    }
}

/// Every cause of a hyper error, joined (hyper's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// The start of an error answer's body, for the log.
async fn error_body(body: hyper::body::Incoming) -> String {
    match Limited::new(body, 4096).collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).trim().to_owned(),
        Err(_) => "(body unreadable or longer than 4 KiB)".into(),
    }
}

/// Starts the meta client thread. Configuration problems (files, TLS) are reported here;
/// everything after is retried. The thread ends when the drain switch is dropped with the
/// hub (and with it the side tasks); while the hub drains it registers as draining.
pub fn start(
    cfg: &MetaConfig,
    parts: MetaParts,
    access: Arc<Access>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    peers: Arc<Peers>,
    drain_switch: &Arc<crate::drain::Drain>,
) -> Result<JoinHandle<()>, MetaSetupError> {
    // The thread holds the switch weakly: it ends when the hub (the switch's owner) goes.
    let drain = drain_switch.subscribe();
    let drain_switch = Arc::downgrade(drain_switch);
    let MetaParts {
        registration,
        client_cert,
        side_tasks,
    } = parts;
    let client = MetaClient::new(cfg, client_cert)?;
    let cfg = cfg.clone();
    std::thread::Builder::new()
        .name("kubehub-meta".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("meta client: cannot start its runtime: {e}");
                    return;
                }
            };
            let span = tracing::info_span!("meta", url = %cfg.url);
            rt.block_on(
                async move {
                    for task in side_tasks {
                        // Each carries its own span; they end with this runtime.
                        tokio::spawn(task);
                    }
                    let sync = sync_loop(&client, &cfg, &access, &metrics);
                    let directory = registry_loop(&client, &cfg, &peers, &metrics, &drain_switch);
                    let register = register_loop(
                        &client,
                        &cfg,
                        &registration,
                        &metrics,
                        &registry,
                        drain.clone(),
                    );
                    tokio::select! {
                        _ = sync => {}
                        _ = directory => {}
                        _ = register => {}
                        _ = until_dropped(drain) => {}
                    }
                }
                .instrument(span),
            );
        })
        .map_err(MetaSetupError::Thread)
}

async fn until_dropped(mut drain: watch::Receiver<bool>) {
    while drain.changed().await.is_ok() {}
}

/// A full-jitter delay: uniform in `[0, min(max, initial · 2^attempt)]`.
fn backoff(cfg: &MetaConfig, attempt: u32) -> Duration {
    let ceiling = cfg
        .backoff_initial_ms
        .saturating_mul(1u64 << attempt.min(20))
        .min(cfg.backoff_max_ms);
    Duration::from_millis(rand::random_range(0..=ceiling))
}

/// A feed of meta's followed for the hub's life: connect, hand every line to `on_line`,
/// reconnect after a failure with a full-jitter backoff (reset once a connection delivered a
/// line), resuming where `from` says. `connected` hears when a connection opens and closes.
/// A failure is logged at `warn` once per outage (then at `debug`), and at `info` when the
/// feed works again.
async fn follow<F>(
    client: &MetaClient,
    cfg: &MetaConfig,
    what: &'static str,
    metrics: &Metrics,
    from: impl Fn() -> String,
    connected: impl Fn(bool),
    mut on_line: F,
) where
    F: FnMut(&[u8]) -> Result<i64, SyncError>,
{
    let mut attempt = 0u32;
    let mut outage: Option<Instant> = None;
    loop {
        let path = from();
        let mut progressed = false;
        let result = follow_once(client, cfg, &path, &connected, |line| {
            let revision = on_line(line)?;
            progressed = true;
            if let Some(since) = outage.take() {
                info!(revision, "meta {what} restored after {:?}", since.elapsed());
            }
            Ok(())
        })
        .await;
        connected(false);
        let outcome = match &result {
            Err(SyncError::Closed) => "closed",
            _ => "failed",
        };
        metrics
            .meta_syncs
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        if let Err(e) = result {
            if outage.is_none() {
                warn!("meta {what} ({path}): {e}; serving with what the hub has, reconnecting");
                outage = Some(Instant::now());
            } else {
                debug!("meta {what}: {e}");
            }
        }
        if progressed {
            attempt = 0;
        }
        tokio::time::sleep(backoff(cfg, attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// The access feed: sync lines applied to the index.
async fn sync_loop(client: &MetaClient, cfg: &MetaConfig, access: &Access, metrics: &Metrics) {
    // One store revision can carry several lines (a user deleted with its tokens is one
    // transaction); the index records a revision at its first line, so a connection lost
    // mid-revision must replay all of it. Resuming one revision back does: applying a put or
    // a delete again changes nothing.
    let from = || format!("/v1/sync?revision={}", (access.index.revision() - 1).max(0));
    let connected = |up: bool| access.set_connected(up);
    follow(client, cfg, "sync", metrics, from, connected, |text| {
        let line = Line::parse(text).map_err(|source| SyncError::Decode {
            after: access.index.revision(),
            source,
        })?;
        access.apply(&line);
        Ok(line.revision())
    })
    .await
}

/// The registry watch: the directory of which hub holds which cluster (for peer links), and
/// whether an operator drained this hub (`drain`, held weakly: it goes with the hub).
async fn registry_loop(
    client: &MetaClient,
    cfg: &MetaConfig,
    peers: &Peers,
    metrics: &Metrics,
    drain: &std::sync::Weak<crate::drain::Drain>,
) {
    // As for the access feed, resumed one revision back (applying a line again is harmless).
    let from = || {
        format!(
            "/v1/registry/watch?revision={}&drains=true",
            (peers.revision() - 1).max(0)
        )
    };
    follow(
        client,
        cfg,
        "registry watch",
        metrics,
        from,
        |_| {},
        |text| {
            let line = RegistryLine::parse(text).map_err(|source| SyncError::Decode {
                after: peers.revision(),
                source,
            })?;
            peers.apply(&line);
            if matches!(
                line,
                RegistryLine::Snapshot { .. } | RegistryLine::Drain { .. }
            ) {
                if let Some(d) = drain.upgrade() {
                    d.set_operator(peers.drained_here());
                }
            }
            Ok(line.revision())
        },
    )
    .await
}

/// One connection to a feed (`path`), until it fails or meta ends it; each line to `on_line`.
async fn follow_once(
    client: &MetaClient,
    cfg: &MetaConfig,
    path: &str,
    connected: &impl Fn(bool),
    mut on_line: impl FnMut(&[u8]) -> Result<(), SyncError>,
) -> Result<(), SyncError> {
    let silence = Duration::from_millis(cfg.heartbeat_timeout_ms);
    let mut req = client.request(Method::GET, path, Bytes::new());
    req.headers_mut()
        .insert(ACCEPT, HeaderValue::from_static("application/x-ndjson"));
    let resp = match tokio::time::timeout(silence, client.client.request(req)).await {
        Err(_) => return Err(SyncError::Silent(silence)),
        Ok(Err(e)) => return Err(SyncError::Connect(chain(&e))),
        Ok(Ok(r)) => r,
    };
    if resp.status() != StatusCode::OK {
        let code = resp.status();
        return Err(SyncError::Status {
            code,
            body: error_body(resp.into_body()).await,
        });
    }
    connected(true);
    debug!(path, "meta feed connected");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    // Bytes of `buf` already searched for a newline.
    let mut scanned = 0;
    loop {
        let frame = match tokio::time::timeout(silence, body.frame()).await {
            Err(_) => return Err(SyncError::Silent(silence)),
            Ok(None) => return Err(SyncError::Closed),
            Ok(Some(Err(e))) => return Err(SyncError::Body(chain(&e))),
            Ok(Some(Ok(f))) => f,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf[scanned..].iter().position(|&b| b == b'\n') {
            let line = buf.split_to(scanned + nl + 1);
            scanned = 0;
            let text = line.trim_ascii();
            if !text.is_empty() {
                on_line(text)?;
            }
        }
        scanned = buf.len();
        if buf.len() > cfg.max_line_bytes {
            return Err(SyncError::LineTooLong(cfg.max_line_bytes));
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            // A snapshot's buffer is not kept around for heartbeats.
            buf = BytesMut::new();
        }
    }
}

/// The process's CPU use between two readings, in permille of one core (`getrusage`).
struct CpuMeter {
    last: Option<(Instant, Duration)>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        CpuMeter { last: None }
    }

    fn used() -> Option<Duration> {
        use nix::sys::resource::{getrusage, UsageWho};
        let u = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        let d = |t: nix::sys::time::TimeVal| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_usec()).unwrap_or(0) * 1000,
            )
        };
        Some(d(u.user_time()) + d(u.system_time()))
    }

    /// CPU time used since the previous call over the wall time since it (0 the first time).
    fn permille(&mut self) -> u32 {
        let (now, used) = (Instant::now(), CpuMeter::used().unwrap_or_default());
        let out = match self.last {
            Some((then, before)) => {
                let wall = now.duration_since(then).as_secs_f64();
                let cpu = used.saturating_sub(before).as_secs_f64();
                if wall > 0.0 {
                    (cpu / wall * 1000.0).round() as u32
                } else {
                    0
                }
            }
            None => 0,
        };
        self.last = Some((now, used));
        out
    }
}

async fn register_loop(
    client: &MetaClient,
    cfg: &MetaConfig,
    registration: &Registration,
    metrics: &Metrics,
    registry: &Registry,
    mut drain: watch::Receiver<bool>,
) {
    let path = format!("/v1/registry/hubs/{}", segment(&registration.hub_id));
    let timeout = Duration::from_millis(cfg.heartbeat_timeout_ms);
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.register_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage: Option<Instant> = None;
    let mut cpu = CpuMeter::new();
    let mut watching = true;
    loop {
        // Every interval, and at once when a drain begins (agents and hubs move off first)
        // or an operator's drain is lifted.
        tokio::select! {
            _ = tick.tick() => {}
            r = drain.changed(), if watching => {
                if r.is_err() {
                    watching = false;
                    continue;
                }
            }
        }
        let load = Load {
            agents: registry.connected(),
            streams: u64::try_from(metrics.streams.get()).unwrap_or(0),
            cpu: cpu.permille(),
            draining: *drain.borrow(),
        };
        let body = registration.body(load).to_string();
        let req = client.request(Method::PUT, &path, Bytes::from(body));
        let result = match tokio::time::timeout(timeout, client.client.request(req)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(chain(&e)),
            Ok(Ok(resp)) if resp.status().is_success() => {
                // Read the (small) answer so the connection is reused.
                let _ = Limited::new(resp.into_body(), 64 * 1024).collect().await;
                Ok(())
            }
            Ok(Ok(resp)) => {
                let code = resp.status();
                Err(format!(
                    "meta answered {code}: {}",
                    error_body(resp.into_body()).await
                ))
            }
        };
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        metrics
            .meta_registrations
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        match result {
            Ok(()) => {
                if let Some(since) = outage.take() {
                    info!(
                        "registration with meta works again after {:?}",
                        since.elapsed()
                    );
                }
            }
            Err(e) => {
                if outage.is_none() {
                    warn!(hub = %registration.hub_id, "registering with meta: {e}; retrying every {:?}", tick.period());
                    outage = Some(Instant::now());
                } else {
                    debug!("registering with meta: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_endpoints() {
        let mut cfg = MetaConfig::new("https://meta:7443");
        let user: SocketAddr = "10.0.0.5:8443".parse().unwrap();
        let agent: SocketAddr = "[::1]:8444".parse().unwrap();
        let r = Registration::new("hub 0", ("", ""), &cfg, user, agent);
        assert_eq!(r.endpoint, "https://10.0.0.5:8443");
        assert_eq!(r.agent_endpoint, "[::1]:8444");
        let wild = Registration::new("h", ("", ""), &cfg, "0.0.0.0:8443".parse().unwrap(), agent);
        assert_eq!(wild.endpoint, format!("https://{}:8443", hostname()));
        cfg.public_url = "https://hub.example.com/".into();
        cfg.agent_endpoint = "tunnel.example.com:443".into();
        let r = Registration::new("hub-0", ("prod-eu", "zone-a"), &cfg, user, agent);
        let body = r.body(Load {
            agents: 3,
            streams: 12,
            cpu: 250,
            draining: true,
        });
        assert_eq!(body["endpoint"], "https://hub.example.com");
        assert_eq!(body["agentEndpoint"], "tunnel.example.com:443");
        assert_eq!(body["environment"], "prod-eu");
        assert_eq!(body["agents"], 3);
        assert_eq!(body["zone"], "zone-a");
        assert_eq!(body["streams"], 12);
        assert_eq!(body["cpu"], 250);
        assert_eq!(body["draining"], true);
        assert_eq!(body["admin"], "");
        let r = r.with_admin(Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(r.body(Load::default())["admin"], "http://127.0.0.1:9100");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(segment("hub 0/x"), "hub%200%2Fx");
    }

    #[test]
    fn the_cpu_meter_sees_work_done_between_readings() {
        let mut m = CpuMeter::new();
        assert_eq!(m.permille(), 0, "nothing to compare with yet");
        let until = Instant::now() + Duration::from_millis(200);
        let mut x = 0u64;
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let busy = m.permille();
        assert!(busy > 0, "a busy thread shows as CPU use ({busy})");
        assert!(busy <= 1000 * 64, "at most all cores ({busy})");
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let cfg = MetaConfig {
            backoff_initial_ms: 100,
            backoff_max_ms: 1000,
            ..MetaConfig::new("http://meta")
        };
        for attempt in [0, 1, 3, 40] {
            let ceiling = (100u64 << attempt.min(20)).min(1000);
            for _ in 0..50 {
                assert!(backoff(&cfg, attempt) <= Duration::from_millis(ceiling));
            }
        }
    }
}
