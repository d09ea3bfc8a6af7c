//! `accept`: the hub's threads. One worker per core, each with its own monoio runtime (io_uring
//! where the kernel has it, epoll otherwise) and its own user and agent listening sockets
//! bound with `SO_REUSEPORT`, so the kernel spreads connections across cores and a connection
//! stays on the core that accepted it. Core 0 also serves the admin listener.
//!
//! Ownership: an agent tunnel belongs to the core that accepted it; user requests reach it
//! through its command channel ([`crate::registry::Registry`]) from any core.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use kubehub_pki as pki;

use crate::access::{self, Access};
use crate::cache::Caches;
use crate::config::{HubConfig, Listener};
use crate::metrics::Metrics;
use crate::proxy::{serve_user, ProxyCtx};
use crate::registry::Registry;
use crate::tunnel::{serve_agent, TunnelCtx};

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Configuration problem.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The access file could not be used.
    #[error(transparent)]
    Access(#[from] access::AccessError),
    /// The metaserver client could not start.
    #[error(transparent)]
    Meta(#[from] access::sync::MetaSetupError),
    /// The hub's enrollment with the metaserver (`[meta] state_dir`) failed or is missing.
    #[error(transparent)]
    Enroll(#[from] crate::enroll::HubEnrollError),
    /// Certificate or key problem.
    #[error("TLS material for {what}: {why}")]
    Tls {
        /// Which listener.
        what: &'static str,
        /// Why.
        why: String,
    },
    /// A listener could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A worker thread could not start.
    #[error("starting worker thread: {0}")]
    Thread(std::io::Error),
}

/// A running hub.
#[derive(Debug)]
pub struct Hub {
    /// Where users connect.
    pub user_addr: SocketAddr,
    /// Where agents connect.
    pub agent_addr: SocketAddr,
    /// The admin listener, if configured.
    pub admin_addr: Option<SocketAddr>,
    /// Clusters to tunnels.
    pub registry: Arc<Registry>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The caches of every cluster.
    pub caches: Arc<Caches>,
    /// The user listener's certificate: `set` replaces it for new connections.
    pub user_cert: Arc<pki::ReloadingServerCert>,
    /// The agent listener's certificate: `set` replaces it for new tunnels.
    pub agent_cert: Arc<pki::ReloadingServerCert>,
    /// Who is who and who may do what, and the state of its source.
    pub access: Arc<Access>,
    /// The other hubs: the directory of who holds which cluster, and the peer links.
    pub peers: Arc<crate::peers::Peers>,
    /// Whether it drains (shutdown, or an operator's drain heard from meta).
    pub drain: Arc<crate::drain::Drain>,
    /// Fair sharing, rate limits and the memory ceiling.
    pub admission: Arc<crate::admission::Admission>,
    threads: Vec<JoinHandle<()>>,
    /// The metaserver client (ends when the hub is dropped).
    _meta: Option<JoinHandle<()>>,
}

impl Hub {
    /// Drains for shutdown: every tunnel stops taking requests, sends GOAWAY and closes once
    /// its streams are done; new agents are refused. Returns when no tunnel is left or after
    /// `grace`, whichever comes first; the process can then exit.
    /// A draining hub serves no stale reads: its clusters' agents are moving to other
    /// replicas, whose caches are current.
    pub fn shutdown(&self, grace: Duration) -> bool {
        self.drain.shutdown();
        let deadline = std::time::Instant::now() + grace;
        while self.metrics.agents.get() > 0 {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Blocks until every worker thread ends (they run until the process exits).
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certified(
    what: &'static str,
    l: &Listener,
) -> Result<
    (
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ),
    HubError,
> {
    let tls = |e: pki::PkiError| HubError::Tls {
        what,
        why: e.to_string(),
    };
    let (Some(cert), Some(key)) = (&l.cert, &l.key) else {
        return Err(HubError::Tls {
            what,
            why: "no certificate: run `kubehub hub --join TOKEN` once (with [meta] state_dir), \
                  or set its cert and key"
                .into(),
        });
    };
    Ok((
        pki::load_certs(cert).map_err(tls)?,
        pki::load_key(key).map_err(tls)?,
    ))
}

/// The listener's certificate and key as a [`pki::ReloadingServerCert`], which the hub can
/// replace later (renewal) without a restart.
fn reloading_cert(
    what: &'static str,
    l: &Listener,
) -> Result<Arc<pki::ReloadingServerCert>, HubError> {
    let (certs, key) = certified(what, l)?;
    let cert = pki::ReloadingServerCert::new(certs, key).map_err(|e| HubError::Tls {
        what,
        why: e.to_string(),
    })?;
    Ok(Arc::new(cert))
}

/// TLS for users: server certificate, HTTP/1.1 only. Returns the configuration and the
/// certificate's handle: [`pki::ReloadingServerCert::set`] changes the certificate of the
/// connections accepted from then on.
pub fn user_tls(
    l: &Listener,
) -> Result<(Arc<rustls::ServerConfig>, Arc<pki::ReloadingServerCert>), HubError> {
    let cert = reloading_cert("user_listener", l)?;
    let tls = |why: String| HubError::Tls {
        what: "user_listener",
        why,
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(cert.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), cert))
}

/// TLS for agents: TLS 1.3, client certificates signed by `client_ca` required. Returns the
/// configuration and the certificate's handle, as [`user_tls`].
pub fn agent_tls(
    l: &Listener,
) -> Result<(Arc<rustls::ServerConfig>, Arc<pki::ReloadingServerCert>), HubError> {
    let cert = reloading_cert("agent_listener", l)?;
    let tls = |why: String| HubError::Tls {
        what: "agent_listener",
        why,
    };
    let ca_path = l
        .client_ca
        .as_ref()
        .ok_or_else(|| tls("client_ca is required".into()))?;
    let roots = pki::load_roots(ca_path).map_err(|e| tls(e.to_string()))?;
    let cfg = pki::tunnel_server_config(roots, cert.clone()).map_err(|e| tls(e.to_string()))?;
    Ok((Arc::new(cfg), cert))
}

/// `n` listening sockets on one address with SO_REUSEPORT (port 0: the first picks the port).
fn reuseport_listeners(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, HubError> {
    let mut out = Vec::with_capacity(n);
    let mut addr = addr;
    for _ in 0..n {
        let bind = |addr: SocketAddr| -> std::io::Result<std::net::TcpListener> {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            s.set_nonblocking(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            Ok(s.into())
        };
        let l = bind(addr).map_err(|source| HubError::Bind { addr, source })?;
        addr = l
            .local_addr()
            .map_err(|source| HubError::Bind { addr, source })?;
        out.push(l);
    }
    Ok(out)
}

/// Enrolls if needed ([`crate::enroll::prepare`]: with `[meta] state_dir`, the saved
/// certificate, else a join with `join`, a hub join token), then starts ([`start`]). Blocks
/// while it joins (on a thread of its own: callable from anywhere).
pub fn join_and_start(mut cfg: HubConfig, join: Option<&str>) -> Result<Hub, HubError> {
    cfg.validate()?;
    crate::enroll::prepare_blocking(&mut cfg, join)?;
    start(cfg)
}

/// Starts the hub's worker threads, and with `[meta]` the metaserver client's. With `[meta]
/// state_dir` the hub must have enrolled ([`join_and_start`]); its certificate is renewed on
/// the metaserver client's thread (`renew`).
pub fn start(mut cfg: HubConfig) -> Result<Hub, HubError> {
    cfg.validate()?;
    let enrolled = crate::enroll::apply(&mut cfg)?;
    if cfg.id.is_empty() {
        cfg.id = crate::config::DEFAULT_ID.into();
    }
    let n = cfg.worker_count();
    let (user_tls, user_cert) = user_tls(&cfg.user_listener)?;
    let (agent_tls, agent_cert) = agent_tls(&cfg.agent_listener)?;
    let access = Arc::new(match (&cfg.access, &cfg.meta) {
        (Some(file), _) => Access::from_file(&file.file)?,
        (None, Some(meta)) => Access::for_meta(
            &meta.url,
            (meta.unready_after_ms > 0).then(|| Duration::from_millis(meta.unready_after_ms)),
        ),
        (None, None) => {
            return Err(crate::config::ConfigError::Invalid("no access source".into()).into())
        }
    });
    let registry = Arc::new(Registry::new(&cfg.clusters));
    let metrics = Arc::new(Metrics::new());
    if let Some(leaf) = user_cert.current().cert.first() {
        if let Ok(info) = pki::cert_info(&pki::cert_der_to_pem(leaf)) {
            metrics.cert.expires(info.not_after);
        }
    }
    metrics
        .info
        .get_or_create(&crate::metrics::InfoLabel {
            id: cfg.id.clone(),
            version: cfg
                .meta
                .as_ref()
                .map(|m| m.version.clone())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| env!("CARGO_PKG_VERSION").into()),
            environment: cfg.environment.clone(),
            zone: cfg.zone.clone(),
        })
        .set(1);
    let caches = Arc::new(Caches::new(cfg.cache.clone(), metrics.clone()));
    let admission = Arc::new(crate::admission::Admission::new(
        cfg.limits.fairness.clone(),
        cfg.limits.memory_limit_bytes,
        metrics.clone(),
    ));
    admission.start_sampler().map_err(HubError::Thread)?;
    // Peer links are dialled with the agent listener's certificate (an enrolled hub's) and
    // verify the other hub against the CA agents' certificates come from.
    let peer_tls = match &cfg.agent_listener.client_ca {
        Some(ca) => {
            let tls = |why: String| HubError::Tls {
                what: "peer links",
                why,
            };
            let roots = pki::load_roots(ca).map_err(|e| tls(e.to_string()))?;
            let c = pki::tunnel_client_config(roots, agent_cert.clone())
                .map_err(|e| tls(e.to_string()))?;
            Some(Arc::new(c))
        }
        None => None,
    };
    let peers = Arc::new(
        crate::peers::Peers::new(
            &cfg.id,
            &cfg.environment,
            peer_tls,
            Duration::from_millis(cfg.limits.peer_idle_timeout_ms),
        )
        .with_links_per_core(cfg.limits.peer_links_per_core),
    );
    if let Some(r) = &cfg.registry {
        let text = std::fs::read_to_string(&r.file).map_err(|e| {
            crate::config::ConfigError::Invalid(format!(
                "[registry] file {}: {e}",
                r.file.display()
            ))
        })?;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line =
                kubehub_access::registry::RegistryLine::parse(line.as_bytes()).map_err(|e| {
                    crate::config::ConfigError::Invalid(format!(
                        "[registry] file {}, line {}: {e}",
                        r.file.display(),
                        i + 1
                    ))
                })?;
            peers.apply(&line);
        }
    }
    // What every request's observation feeds: the traffic summary, the bounded label sets,
    // the audit log (its writer thread starts here; the request path only enqueues).
    let traffic = Arc::new(crate::traffic::Traffic::new(
        &cfg.id,
        cfg.metrics.traffic_clients,
        n,
    ));
    let bounds = Arc::new(crate::proxy::observe::Bounds {
        resources: crate::proxy::observe::Bounded::new(cfg.metrics.resources),
        clusters: crate::proxy::observe::Bounded::new(cfg.metrics.clusters),
        sources: crate::proxy::observe::Bounded::new(cfg.metrics.sources),
    });
    let audit = if cfg.audit.enabled {
        let sink = kubehub_audit::Sink::start(
            &cfg.audit,
            kubehub_audit::sink::SinkCounters {
                written: metrics.audit_events.clone(),
                dropped: metrics.audit_dropped.clone(),
            },
        )
        .map_err(|e| crate::config::ConfigError::Invalid(e.to_string()))?;
        Some(crate::proxy::observe::Audit {
            sink,
            policy: Arc::new(cfg.audit.policy()),
            max_body: cfg.audit.max_body_bytes,
        })
    } else {
        None
    };
    let hub_id: Arc<str> = Arc::from(cfg.id.as_str());
    let user = reuseport_listeners(cfg.user_listener.listen, n)?;
    let agent = reuseport_listeners(cfg.agent_listener.listen, n)?;
    let user_addr = user[0].local_addr().map_err(|source| HubError::Bind {
        addr: cfg.user_listener.listen,
        source,
    })?;
    let agent_addr = agent[0].local_addr().map_err(|source| HubError::Bind {
        addr: cfg.agent_listener.listen,
        source,
    })?;
    let mut admin = match &cfg.admin {
        Some(a) => Some(reuseport_listeners(a.listen, 1)?.remove(0)),
        None => None,
    };
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    // The meta client's credentials and tasks, before any thread starts.
    let meta_parts = match &cfg.meta {
        Some(m) => {
            let client_cert = access::sync::client_cert(m)?;
            let side_tasks = match &enrolled {
                Some(files) => crate::enroll::renewal_task(
                    &cfg,
                    files,
                    crate::enroll::Serving {
                        user: &user_cert,
                        agent: &agent_cert,
                        meta: client_cert.as_ref(),
                    },
                    metrics.clone(),
                )?
                .into_iter()
                .collect(),
                None => Vec::new(),
            };
            Some(access::sync::MetaParts {
                registration: access::sync::Registration::new(
                    &cfg.id,
                    (&cfg.environment, &cfg.zone),
                    m,
                    user_addr,
                    agent_addr,
                )
                .with_admin(admin_addr),
                client_cert,
                side_tasks,
            })
        }
        None => None,
    };
    let (drain, drain_rx) = crate::drain::Drain::new(caches.clone());
    let drain = Arc::new(drain);
    let mut threads = Vec::with_capacity(n);
    for (core, (u, a)) in user.into_iter().zip(agent).enumerate() {
        let proxy_parts = (
            registry.clone(),
            access.clone(),
            metrics.clone(),
            cfg.limits.clone(),
            cfg.impersonate,
            user_tls.clone(),
            caches.clone(),
            peers.clone(),
        );
        let observe_parts = (
            traffic.clone(),
            audit.clone(),
            hub_id.clone(),
            bounds.clone(),
        );
        let tunnel_parts = (
            cfg.id.clone(),
            agent_tls.clone(),
            drain_rx.clone(),
            cfg.environment.clone(),
        );
        let admin_l = if core == 0 { admin.take() } else { None };
        let admin_ctx = (
            registry.clone(),
            metrics.clone(),
            caches.clone(),
            access.clone(),
            drain_rx.clone(),
            peers.clone(),
            traffic.clone(),
        );
        let max_conns = cfg.limits.max_connections;
        let admission = admission.clone();
        let t = std::thread::Builder::new()
            .name(format!("kubehub-core-{core}"))
            .spawn(move || {
                let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build();
                let mut rt = match rt {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(core, "cannot start the runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let conns = Rc::new(std::cell::Cell::new(0usize));
                    let (registry, access, metrics, limits, impersonate, tls, caches, peers) =
                        proxy_parts;
                    let (hub_id, agent_tls, drain, environment) = tunnel_parts;
                    let tunnel = Rc::new(TunnelCtx {
                        proxy: std::cell::OnceCell::new(),
                        peers: peers.clone(),
                        access: access.clone(),
                        environment: environment.clone(),
                        registry: registry.clone(),
                        metrics: metrics.clone(),
                        limits: limits.clone(),
                        hub_id,
                        tls: agent_tls,
                        drain,
                        caches: caches.clone(),
                    });
                    let streams = Rc::new(crate::bans::Streams::default());
                    monoio::spawn(crate::bans::sweeper(
                        streams.clone(),
                        access.clone(),
                        metrics.clone(),
                    ));
                    let (traffic, audit, hub_id, bounds) = observe_parts;
                    let mut observer = crate::proxy::observe::Observer::new(
                        metrics.clone(),
                        (traffic, core),
                        audit,
                        hub_id,
                        bounds,
                    );
                    observer.impersonate = impersonate;
                    let proxy = Rc::new(ProxyCtx {
                        observer,
                        registry,
                        access,
                        metrics,
                        streams,
                        limits,
                        impersonate,
                        tls,
                        caches,
                        peers,
                        tunnels: tunnel.clone(),
                        environment,
                        admission: admission.clone(),
                    });
                    let _ = tunnel.proxy.set(Rc::downgrade(&proxy));
                    if let Some(l) = admin_l {
                        match TcpListener::from_std(l) {
                            Ok(l) => {
                                monoio::spawn(admin_loop(l, admin_ctx));
                            }
                            Err(e) => warn!("admin listener: {e}"),
                        }
                    }
                    let agents = match TcpListener::from_std(a) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(core, "agent listener: {e}");
                            return;
                        }
                    };
                    let c2 = conns.clone();
                    monoio::spawn(async move {
                        accept_loop(agents, c2, max_conns, move |tcp, peer, guard| {
                            let ctx = tunnel.clone();
                            monoio::spawn(async move {
                                serve_agent(tcp, peer, ctx).await;
                                drop(guard);
                            });
                        })
                        .await
                    });
                    match TcpListener::from_std(u) {
                        Ok(users) => {
                            accept_loop(users, conns, max_conns, move |tcp, peer, guard| {
                                // Above the memory ceiling new users are turned away at
                                // once (closed: a load balancer tries another hub).
                                if admission.memory.over().is_some() {
                                    admission.count_refusal(
                                        "",
                                        &crate::admission::Denied::Memory {
                                            rss: admission.memory.rss(),
                                            limit: admission.memory.limit(),
                                        },
                                    );
                                    admission.metrics_shed();
                                    drop((tcp, guard));
                                    return;
                                }
                                let ctx = proxy.clone();
                                monoio::spawn(async move {
                                    serve_user(tcp, peer, ctx).await;
                                    drop(guard);
                                });
                            })
                            .await
                        }
                        Err(e) => tracing::error!(core, "user listener: {e}"),
                    }
                });
            })
            .map_err(HubError::Thread)?;
        threads.push(t);
    }
    let meta = match (&cfg.meta, meta_parts) {
        (Some(m), Some(parts)) => Some(access::sync::start(
            m,
            parts,
            access.clone(),
            metrics.clone(),
            registry.clone(),
            peers.clone(),
            &drain,
        )?),
        _ => None,
    };
    info!(%user_addr, %agent_addr, ?admin_addr, cores = n, access = %access.readiness(), "hub started");
    Ok(Hub {
        user_addr,
        agent_addr,
        admin_addr,
        registry,
        metrics,
        caches,
        user_cert,
        agent_cert,
        access,
        peers,
        admission,
        drain,
        threads,
        _meta: meta,
    })
}

async fn accept_loop(
    listener: TcpListener,
    conns: Rc<std::cell::Cell<usize>>,
    max: usize,
    spawn: impl Fn(TcpStream, SocketAddr, ConnGuard),
) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                if conns.get() >= max {
                    warn!(%peer, "connection limit ({max}) reached: closing");
                    drop(tcp);
                    continue;
                }
                conns.set(conns.get() + 1);
                // The guard lives as long as the connection's task.
                spawn(tcp, peer, ConnGuard(conns.clone()));
            }
            Err(e) => {
                warn!("accept failed: {e}");
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Counts a connection while it is alive.
struct ConnGuard(Rc<std::cell::Cell<usize>>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// `/clusters` on the admin listener: every connected cluster, its agent, the resource types
/// the agent reported (`group/version/resource`, core types as `v1/pods`), and what the hub
/// caches of it (per type: synced, objects, JSON bytes, history length, resourceVersion, the
/// oldest version a watch can resume from, milliseconds since the last confirmation).
fn clusters_json(registry: &Registry, caches: &Caches) -> String {
    let clusters: Vec<serde_json::Value> = registry
        .snapshot()
        .into_iter()
        .map(|(cluster, agent, types)| {
            let types: Option<Vec<String>> = types.map(|t| {
                t.types
                    .iter()
                    .map(|r| {
                        kubehub_kapi::resources::api_version(&r.group, &r.version)
                            + "/"
                            + &r.resource
                    })
                    .collect()
            });
            let cache = caches.cluster(&cluster).map(|c| c.stats_json());
            serde_json::json!({"cluster": cluster, "agent": agent, "types": types, "cache": cache})
        })
        .collect();
    let mut body = serde_json::json!({ "clusters": clusters }).to_string();
    body.push('\n');
    body
}

/// What the admin listener reports on.
type AdminCtx = (
    Arc<Registry>,
    Arc<Metrics>,
    Arc<Caches>,
    Arc<Access>,
    tokio::sync::watch::Receiver<bool>,
    Arc<crate::peers::Peers>,
    Arc<crate::traffic::Traffic>,
);

/// The largest admin request head read.
const ADMIN_HEAD_MAX: usize = 8192;

/// Reads an admin request's head, however many reads it takes to arrive (within 5 s): its
/// path; `Err(Some(400))` for a malformed or oversized head; `Err(None)` when the client
/// left or was too slow (nothing to answer).
async fn admin_request_path(tcp: &mut TcpStream) -> Result<String, Option<u16>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut head: Vec<u8> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let (res, chunk) = match monoio::time::timeout(left, tcp.read(vec![0u8; 4096])).await {
            Ok(r) => r,
            Err(_) => return Err(None),
        };
        match res {
            Ok(0) | Err(_) => return Err(None),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => return Ok(req.path.unwrap_or("/").to_owned()),
            Ok(httparse::Status::Partial) if head.len() < ADMIN_HEAD_MAX => {}
            _ => return Err(Some(400)),
        }
    }
}

async fn admin_loop(listener: TcpListener, ctx: AdminCtx) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (registry, metrics, caches, access, drain, peers, traffic) = ctx.clone();
        monoio::spawn(async move {
            let path = match admin_request_path(&mut tcp).await {
                Ok(path) => path,
                Err(Some(code)) => {
                    let resp = format!(
                        "HTTP/1.1 {code} Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n"
                    );
                    let _ = tcp.write_all(resp.into_bytes()).await;
                    return;
                }
                Err(None) => return,
            };
            let route = path.split('?').next().unwrap_or_default();
            let (code, ctype, body) = match route {
                "/healthz" | "/livez" => (200, "text/plain", "ok\n".to_owned()),
                // Ready once requests can be decided (a first access snapshot applied), while
                // not draining and not cut from meta beyond `[meta] unready_after_ms` (a
                // partitioned hub keeps serving with what it has; the body says so).
                "/readyz" => {
                    let draining = *drain.borrow();
                    let ready = access.is_current() && !draining;
                    (
                        if ready { 200 } else { 503 },
                        "text/plain",
                        format!(
                            "{}: {} agents connected\n{}\n",
                            if draining {
                                "not ready: draining"
                            } else if ready {
                                "ok"
                            } else {
                                "not ready"
                            },
                            registry.connected(),
                            access.readiness()
                        ),
                    )
                }
                "/metrics" => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    {
                        caches.update_gauges();
                        access.update_gauges(&metrics);
                        metrics.peer_links.set(peers.links().len() as i64);
                        metrics.encode()
                    },
                ),
                "/clusters" => (200, "application/json", clusters_json(&registry, &caches)),
                "/bans" => (
                    200,
                    "application/json",
                    crate::bans::admin_json(&access, &metrics),
                ),
                // The last minute's traffic per tenant and the top clients (contract 3 of
                // issue #14; meta's console reads it).
                "/traffic" => (200, "application/json", {
                    let mut body =
                        serde_json::to_string(&traffic.summary()).unwrap_or_else(|_| "{}".into());
                    body.push('\n');
                    body
                }),
                _ => (404, "text/plain", "not found\n".to_owned()),
            };
            let resp = format!(
                "HTTP/1.1 {code} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                match code {
                    200 => "OK",
                    503 => "Service Unavailable",
                    _ => "Not Found",
                },
                body.len()
            );
            let _ = tcp.write_all(resp.into_bytes()).await;
        });
    }
}
