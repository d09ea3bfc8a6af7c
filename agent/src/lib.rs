//! # kubehub-agent: the edge side of the tunnel
//!
//! One agent runs next to each edge cluster. It dials the hubs over mutual TLS, says HELLO
//! (the [`kubehub_wire`] protocol), and runs every request the hub forwards against the local
//! API server, streaming the answer back; requests under `/plugins/` go to the agent's
//! plugins instead ([`plugin`]: allow-listed commands on the edge host, the host's facts). It
//! reconnects after any failure with exponential backoff and full jitter, so thousands of
//! agents never reconnect in lock-step. It reports the
//! edge cluster's resource types to the hub ([`discovery`]), and list-watches the types the
//! hub caches ([`reflector`]). With `[meta]` it enrolls with the metaserver using a join token
//! and renews its certificate before it expires ([`enroll`]); tunnels dial with whatever
//! certificate is current. With `[meta]` and no `hubs` in agent.toml, the hubs come from the
//! metaserver's registry: the agent holds tunnels to `hubs_per_agent` of the live hubs chosen by
//! rendezvous hashing, fails over when one dies, and registers itself ([`hubs`]).
//!
//! The agent runs on tokio; it is not the hot path.

pub mod config;
pub mod discovery;
pub mod enroll;
pub mod hubs;
mod observe;
pub mod plugin;
pub mod reflector;
mod sync;
pub mod tunnel;
mod upgrade;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use tokio::sync::watch;
use tracing::Instrument;

pub use config::AgentConfig;

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Tunnels up.
    pub connected: Gauge,
    /// Streams in flight.
    pub streams: Gauge,
    /// Cache sync (the reflectors), per resource type.
    pub sync: SyncMetrics,
    /// The agent's certificate: expiry, renewals, failed attempts.
    pub cert: kubehub_enroll::CertMetrics,
    /// Hubs the metaserver registry's last answer offers this agent (`hubs_known`).
    pub hubs_known: Gauge,
    /// Chosen hubs given up on (failing too long, failing and gone from the registry,
    /// draining) or left (voluntary moves), each replaced by the next in rendezvous order when
    /// there is one (`hub_switches_total`).
    pub hub_switches: Counter,
    /// Voluntary moves started: away from hubs the registry says the agent may not use, or
    /// to rebalance load (`hub_moves_total`).
    pub hub_moves: Counter,
    registry: prometheus_client::registry::Registry,
}

/// Labels of per-type sync gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncTypeLabel {
    /// `group/version/resource` (`version/resource` for core).
    pub resource: String,
}

/// Labels of per-type sync counters with a reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncReasonLabel {
    /// `group/version/resource` (`version/resource` for core).
    pub resource: String,
    /// Why (see the metric).
    pub reason: &'static str,
}

/// Labels of forwarded watch events.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncEventLabel {
    /// `group/version/resource` (`version/resource` for core).
    pub resource: String,
    /// `added`, `modified`, `deleted` or `bookmark`.
    pub event: &'static str,
}

/// Labels of freshness (progress) answers.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncOutcomeLabel {
    /// `group/version/resource` (`version/resource` for core).
    pub resource: String,
    /// `immediate` (the watch had already delivered the edge's version), `watch` (it did
    /// within the grace period), `list` (confirmed by a list compared with what was sent) or
    /// `failed` (answered "": the API server failed, or versions are not numbers).
    pub outcome: &'static str,
}

/// The reflectors' metrics (`kubehub_agent_sync_*`), labelled by resource type.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Snapshots started, by reason: `initial`, `expired` (410 Gone: the watch could not
    /// resume), `too_large` (the API server is behind the version the agent holds).
    pub relists: Family<SyncReasonLabel, Counter>,
    /// Watches started again, by reason: `closed` (the API server ended it, normally at its
    /// timeout), `error` (an ERROR event or a failed read), `stalled` (nothing for too long).
    pub watch_restarts: Family<SyncReasonLabel, Counter>,
    /// Failed calls to the API server, each followed by a backoff, by reason: `connect`,
    /// `timeout`, `http_429`, `http_5xx`, `http_4xx`, `malformed`, `too_large`.
    pub failures: Family<SyncReasonLabel, Counter>,
    /// Watch events received from the API server (forwarded or skipped as already sent).
    pub received: Family<SyncTypeLabel, Counter>,
    /// Events sent towards the hub, by type.
    pub events: Family<SyncEventLabel, Counter>,
    /// Freshness (progress) requests answered, by outcome.
    pub progress: Family<SyncOutcomeLabel, Counter>,
    /// Objects held (the reflector's copy of what the hub has).
    pub objects: Family<SyncTypeLabel, Gauge>,
    /// Bytes of those objects.
    pub object_bytes: Family<SyncTypeLabel, Gauge>,
    /// 1 while the reflector waits for the hub to take its output (backpressure).
    pub blocked: Family<SyncTypeLabel, Gauge>,
}

impl SyncMetrics {
    fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        let r = registry.sub_registry_with_prefix("sync");
        r.register(
            "relists",
            "Snapshots (lists) started, by reason",
            self.relists.clone(),
        );
        r.register(
            "watch_restarts",
            "Watches started again, by reason",
            self.watch_restarts.clone(),
        );
        r.register(
            "failures",
            "Failed calls to the edge API server (each followed by a backoff), by reason",
            self.failures.clone(),
        );
        r.register(
            "received",
            "Watch events received from the edge API server",
            self.received.clone(),
        );
        r.register(
            "events",
            "Watch events sent towards the hub, by type",
            self.events.clone(),
        );
        r.register(
            "progress",
            "Freshness (progress) requests answered, by outcome",
            self.progress.clone(),
        );
        r.register(
            "objects",
            "Objects held per synced type",
            self.objects.clone(),
        );
        r.register(
            "object_bytes",
            "Bytes of the objects held per synced type",
            self.object_bytes.clone(),
        );
        r.register(
            "blocked",
            "1 while the type's reflector waits for the hub to take its output",
            self.blocked.clone(),
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = prometheus_client::registry::Registry::with_prefix("kubehub_agent");
        let connected = Gauge::default();
        let streams = Gauge::default();
        registry.register(
            "tunnels_connected",
            "Tunnels to hubs that are up",
            connected.clone(),
        );
        registry.register(
            "streams_open",
            "Forwarded requests in flight",
            streams.clone(),
        );
        let sync = SyncMetrics::default();
        sync.register(&mut registry);
        let cert = kubehub_enroll::CertMetrics::default();
        cert.register(&mut registry, "the agent's");
        let hubs_known = Gauge::default();
        let hub_switches = Counter::default();
        let hub_moves = Counter::default();
        registry.register(
            "hubs_known",
            "Hubs the metaserver registry's last answer offers this agent",
            hubs_known.clone(),
        );
        registry.register(
            "hub_switches",
            "Chosen hubs given up on (failing too long, failing and gone from the registry, \
             draining) or left (voluntary moves)",
            hub_switches.clone(),
        );
        registry.register(
            "hub_moves",
            "Voluntary moves started (away from hubs the agent may not use, or rebalancing)",
            hub_moves.clone(),
        );
        Metrics {
            connected,
            streams,
            sync,
            cert,
            hubs_known,
            hub_switches,
            hub_moves,
            registry,
        }
    }
}

impl Metrics {
    /// Text exposition.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Bad TLS material for the hubs.
    #[error("TLS towards the hubs: {0}")]
    Tls(String),
    /// Bad upstream configuration.
    #[error(transparent)]
    Upstream(#[from] upstream::UpstreamError),
    /// Enrollment with the metaserver failed.
    #[error("enrollment: {0}")]
    Enroll(#[from] enroll::EnrollError),
    /// The plugins cannot run as configured.
    #[error(transparent)]
    Plugins(#[from] config::ConfigError),
    /// `[meta]` but no identity or hubs yet: [`enroll::prepare`] comes first
    /// ([`Agent::join_and_start`] does both).
    #[error("not ready to start: {0}")]
    NotEnrolled(&'static str),
}

/// A running agent: a reconnect loop per hub held (with the registry, also its poller and
/// chooser) and, with `[meta]`, renewal and registration. [`Agent::stop`] stops them and waits
/// for them; dropping it stops them without waiting.
#[derive(Debug)]
pub struct Agent {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The certificate tunnels dial with (renewal replaces it; so may its owner).
    pub client_cert: Arc<kubehub_pki::ReloadingClientCert>,
}

/// What [`Agent::start_with`] takes instead of reading files: the client certificate (and its
/// PEM, for the expiry metric), the CA roots that verify hubs, the edge.
#[derive(Debug)]
pub struct Parts {
    /// The certificate tunnels present.
    pub client_cert: Arc<kubehub_pki::ReloadingClientCert>,
    /// Its PEM.
    pub cert_pem: String,
    /// Roots verifying the hubs.
    pub roots: rustls::RootCertStore,
    /// The edge API server.
    pub upstream: upstream::UpstreamClient,
}

/// The delay before reconnect attempt `attempt` (0-based): "full jitter", a uniform draw from
/// zero to an exponential ceiling (`initial × 2^attempt`, at most `max`). When a hub restarts,
/// its thousands of agents spread their reconnects evenly over the whole window instead of
/// arriving in waves; a draw that lands near zero is harmless because the ceiling, not the
/// draw, grows with each failure.
pub fn backoff(attempt: u32, initial: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rng.random_range(0..=ms))
}

impl Agent {
    /// Enrolls if needed ([`enroll::prepare`]: the saved certificate, else a join with `join`,
    /// a join token), then starts ([`Agent::start`]). Without `[meta]`, just starts.
    pub async fn join_and_start(
        mut cfg: AgentConfig,
        join: Option<&str>,
    ) -> Result<Agent, AgentError> {
        enroll::prepare(&mut cfg, join).await?;
        Agent::start(cfg)
    }

    /// Starts the agent on the current tokio runtime. With `[meta]`, the agent must be enrolled
    /// ([`enroll::prepare`]; `cluster_id` set, and `hubs` unless they come from the registry),
    /// renews its certificate if `renew` is on, and registers itself ([`hubs`]).
    pub fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let files = cfg
            .tls_files()
            .map_err(|e| AgentError::Tls(e.to_string()))?;
        let cert_pem = std::fs::read_to_string(&files.cert)
            .map_err(|e| AgentError::Tls(format!("{}: {e}", files.cert.display())))?;
        let client_cert = Arc::new(
            kubehub_pki::ReloadingClientCert::new(
                kubehub_pki::load_certs(&files.cert).map_err(|e| AgentError::Tls(e.to_string()))?,
                kubehub_pki::load_key(&files.key).map_err(|e| AgentError::Tls(e.to_string()))?,
            )
            .map_err(|e| AgentError::Tls(format!("{}: {e}", files.key.display())))?,
        );
        let roots =
            kubehub_pki::load_roots(&files.ca).map_err(|e| AgentError::Tls(e.to_string()))?;
        let upstream = upstream::UpstreamClient::new(&cfg.upstream)?;
        Agent::start_with(
            cfg,
            Parts {
                client_cert,
                cert_pem,
                roots,
                upstream,
            },
        )
    }

    /// Starts the agent with its TLS material and upstream given rather than read from the
    /// files and URL the configuration names (`tls` and `upstream` are then not used; with
    /// `[meta]`, enrollment's files still are). The load harness runs thousands of agents in
    /// one process this way, each with an in-memory certificate and an in-process edge.
    pub fn start_with(cfg: AgentConfig, parts: Parts) -> Result<Agent, AgentError> {
        let Parts {
            client_cert,
            cert_pem,
            roots,
            upstream,
        } = parts;
        if cfg.cluster_id.is_empty() {
            return Err(AgentError::NotEnrolled("cluster_id is empty"));
        }
        let from_registry = cfg.meta.as_ref().is_some_and(|m| m.hubs_from_registry);
        if cfg.hubs.is_empty() && !from_registry {
            return Err(AgentError::NotEnrolled("no hubs to dial"));
        }
        let tls = tunnel::client_tls_with(roots, client_cert.clone()).map_err(AgentError::Tls)?;
        let plugins = plugin::Plugins::from_config(&cfg.plugins)?;
        let metrics = Arc::new(Metrics::default());
        if let Ok((_, not_after)) = kubehub_pki::cert_validity(&cert_pem) {
            metrics.cert.expires(not_after);
        }
        let (stop, _) = watch::channel(false);
        let mut tasks = Vec::new();
        let book = Arc::new(hubs::Book::new());
        let files = match &cfg.meta {
            Some(_) => Some(
                cfg.tls_files()
                    .map_err(|e| AgentError::Tls(e.to_string()))?,
            ),
            None => None,
        };
        let meta_access = match (&cfg.meta, &files) {
            (Some(meta), Some(files)) => {
                let client = enroll::enroller(meta, files)?.client;
                let ca_pem = kubehub_enroll::read(&files.ca)?;
                let tls = kubehub_enroll::verified_config(&ca_pem, Some(client_cert.clone()))?;
                Some((meta.clone(), hubs::MetaAccess { client, tls }))
            }
            _ => None,
        };
        if let (Some(meta), Some(files)) = (cfg.meta.clone().filter(|m| m.renew), files) {
            let renewal = enroll::Renewal {
                meta,
                files,
                cluster: cfg.cluster_id.clone(),
                cert: client_cert.clone(),
                metrics: metrics.clone(),
            };
            tasks.push(tokio::spawn(renewal.run(stop.subscribe())));
        }
        let cfg = Arc::new(cfg);
        let cluster = cfg.cluster_id.clone();
        let dialer = hubs::Dialer {
            cfg: cfg.clone(),
            tls,
            upstream,
            plugins,
            metrics: metrics.clone(),
        };
        if let Some((meta, access)) = meta_access {
            let span = tracing::info_span!("registration", cluster = %cluster, meta = %meta.url);
            tasks.push(tokio::spawn(
                hubs::register(
                    access.clone(),
                    cluster.clone(),
                    cfg.agent_id(),
                    Duration::from_millis(meta.register_interval_ms),
                    book.clone(),
                    stop.subscribe(),
                )
                .instrument(span),
            ));
            if from_registry {
                let initial = hubs::Directory::from_endpoints(&cfg.hubs);
                let (live_tx, live_rx) = watch::channel(initial);
                let span =
                    tracing::info_span!("hub_registry", cluster = %cluster, meta = %meta.url);
                tasks.push(tokio::spawn(
                    hubs::poll_registry(
                        access,
                        Duration::from_millis(meta.hub_refresh_ms),
                        live_tx,
                        metrics.clone(),
                        stop.subscribe(),
                    )
                    .instrument(span),
                ));
                let chooser = hubs::Chooser::new(
                    &cluster,
                    meta.hubs_per_agent,
                    Duration::from_millis(meta.failover_after_ms),
                )
                .with_moves(
                    meta.max_moves_per_minute,
                    Duration::from_millis(cfg.reconnect.initial_ms),
                );
                let span = tracing::info_span!("hubs", cluster = %cluster);
                tasks.push(tokio::spawn(
                    hubs::choose(chooser, dialer, book, live_rx, stop.subscribe()).instrument(span),
                ));
                return Ok(Agent {
                    stop,
                    tasks,
                    metrics,
                    client_cert,
                });
            }
        }
        // A static list: every hub, forever.
        for hub in cfg.hubs.clone() {
            let generation = book.insert(&hub, hub.clone(), std::time::Instant::now());
            let span = hubs::tunnel_span(&cluster, &hub);
            tasks.push(tokio::spawn(
                hubs::dial_loop(
                    hub,
                    generation,
                    dialer.clone(),
                    book.clone(),
                    stop.subscribe(),
                    None,
                    Duration::ZERO,
                )
                .instrument(span),
            ));
        }
        Ok(Agent {
            stop,
            tasks,
            metrics,
            client_cert,
        })
    }

    /// Serves `/healthz`, `/readyz` (ready once a tunnel is up) and `/metrics` on `addr`.
    /// Returns the bound address.
    pub async fn serve_admin(
        &self,
        addr: std::net::SocketAddr,
    ) -> std::io::Result<std::net::SocketAddr> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let metrics = self.metrics.clone();
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = stop.changed() => return,
                };
                let Ok((sock, _)) = conn else { continue };
                let metrics = metrics.clone();
                tokio::spawn(admin_request(sock, metrics));
            }
        });
        Ok(local)
    }

    /// Stops every tunnel (connections close; the hub fails their streams).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn admin_request(mut sock: tokio::net::TcpStream, metrics: Arc<Metrics>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 4096];
    let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let line = String::from_utf8_lossy(&buf[..n]);
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (code, body) = match path {
        "/healthz" | "/livez" => (200, "ok\n".to_owned()),
        "/readyz" if metrics.connected.get() > 0 => (200, "ok: tunnel up\n".to_owned()),
        "/readyz" => (503, "not ready: no tunnel to a hub\n".to_owned()),
        "/metrics" => (200, metrics.encode()),
        _ => (404, "not found\n".to_owned()),
    };
    let reason = match code {
        200 => "OK",
        503 => "Service Unavailable",
        _ => "Not Found",
    };
    let resp = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (i, m) = (Duration::from_millis(500), Duration::from_secs(30));
        for attempt in 0..20 {
            let d = backoff(attempt, i, m, &mut rng);
            let ceiling = (500u64 << attempt.min(16)).min(30_000);
            assert!(d.as_millis() as u64 <= ceiling, "{attempt}: {d:?}");
        }
        // Full jitter: draws cover the whole window, its lower half included.
        let draws: Vec<u64> = (0..1000)
            .map(|_| backoff(5, i, m, &mut rng).as_millis() as u64)
            .collect();
        let ceiling = 16_000;
        let low = draws.iter().filter(|&&d| d < ceiling / 4).count();
        let high = draws.iter().filter(|&&d| d > ceiling * 3 / 4).count();
        assert!(
            low > 150 && high > 150,
            "uniform over [0, ceiling]: {low} low, {high} high"
        );
        let spread: std::collections::HashSet<u64> = draws.into_iter().collect();
        assert!(spread.len() > 500, "jitter spreads reconnects");
    }
}
