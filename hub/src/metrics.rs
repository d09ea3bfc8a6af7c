//! Prometheus metrics of the hub, served on the admin listener's `/metrics`.
//!
//! **Per-tenant traffic and its cardinality.** Every request ends in one observation
//! (`proxy::observe`), counted here by label sets whose size is bounded whatever clients send:
//!
//! * `kubehub_hub_tenant_requests_total{tenant, verb, resource, code, served_by}`: tenants are
//!   meta's (unauthenticated requests count under `tenant=""`), verbs kube-apiserver's ten or
//!   so, `served_by` one of `hub` (answered by the hub itself: refusals, reviews), `cache`,
//!   `forward` (the cluster's tunnel), `peer` (another hub). `resource` is the request's
//!   `[group/]resource[/subresource]` for the first `[metrics] resources` distinct values this
//!   hub has seen (default 200) and `other` after that, so paths a client makes up cannot
//!   grow the family without bound. **No cluster label** here: 10k clusters × verbs × codes
//!   would be millions of series.
//! * `kubehub_hub_cluster_requests_total{cluster, class}`: per cluster, the code class only
//!   (`2xx`, `3xx`, `4xx`, `5xx`), for the first `[metrics] clusters` clusters seen (default
//!   1000; later ones count as `cluster="other"`): at most 4 × 1001 series. Full per-cluster
//!   figures are on the admin listener's `/clusters`.
//! * `kubehub_hub_client_requests_total{tenant, client}`: `client` is the user-agent family
//!   (`kubectl/v1.<minor>`, `kubectl`, `client-go`, `kube-rs`, `python`, `go`, `curl`,
//!   `browser`, `other`; see `proxy::observe::ClientKind`): at most ~110 values per tenant.
//! * `kubehub_hub_source_requests_total{source}`: the client's IP address for the first
//!   `[metrics] sources` addresses seen (default 100), `other` after. Who is loud *now* (the
//!   top 20 tenant × client × address over the last minute) is `/traffic`'s job.
//! * `kubehub_hub_tenant_bytes_total{tenant, direction="in"|"out"}` (request body bytes in,
//!   response bytes out), `kubehub_hub_tenant_watches{tenant}` (watches open),
//!   `kubehub_hub_rejected_total{tenant, reason}` (`unauthenticated`, `forbidden`,
//!   `not_found`, `ban`, and the admit phase's reasons: [`Metrics::rejected`]).
//!
//! The request path reaches these counters through per-core handles (`proxy::observe`: per
//! tenant, then per resource label, verb, code and served-by; per cluster; per source), found
//! once per request by borrowed names, so a request allocates no label strings once its
//! series exists.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of per-request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// HTTP status code.
    pub code: u16,
}

/// Labels of byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_agent` or `from_agent`.
    pub direction: &'static str,
}

/// Labels of cache read counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabel {
    /// `get`, `list` or `watch`.
    pub verb: &'static str,
    /// `hit`, `stale` (served while the agent is away) or `forward`.
    pub outcome: &'static str,
    /// Why it was forwarded (`""` for hits).
    pub reason: &'static str,
}

/// Labels of per-type cache gauges and counters (aggregated over clusters: per-cluster
/// figures are on the admin listener's `/clusters`, where 10k clusters do not make 100k
/// series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// `group/version/resource` (`version/resource` for core).
    pub resource: String,
}

/// Labels of outcomes: freshness confirmations (`confirmed`, `recent` (bounded staleness),
/// `unconfirmed`, `timeout`), meta registrations (`ok`, `failed`), sync feeds (`closed`,
/// `failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// The outcome.
    pub outcome: &'static str,
}

/// Who this hub is: `kubehub_hub_info` (value 1), so dashboards and alerts can tell hubs,
/// versions (a canary), environments and zones apart.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InfoLabel {
    /// Hub id.
    pub id: String,
    /// Its version.
    pub version: String,
    /// Its environment.
    pub environment: String,
    /// Its zone.
    pub zone: String,
}

/// Labels of upgraded sessions.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabel {
    /// `exec`, `attach`, `portforward`, or `other` (any other upgrade).
    pub kind: &'static str,
    /// How it ended: `closed` (both sides ended), `client_gone`, `agent_gone` (reset, or
    /// the tunnel went away), `idle`, `banned` (a ban or a revocation ended it).
    pub end: &'static str,
}

/// Labels of refused requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why (`missing`, `not_bearer`, `malformed`, `unknown`, `expired`; `forbidden`,
    /// `not_found`, `banned`; for ended streams `banned`, `revoked`).
    pub reason: &'static str,
}

/// Labels of the per-tenant request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantRequestLabel {
    /// The tenant (`""`: not authenticated).
    pub tenant: String,
    /// Kubernetes verb.
    pub verb: String,
    /// `[group/]resource[/subresource]`, or `other` beyond the bound.
    pub resource: String,
    /// HTTP status code.
    pub code: u16,
    /// `hub`, `cache`, `forward` or `peer`.
    pub served_by: &'static str,
}

/// Labels of the per-cluster request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    /// The cluster, or `other` beyond the bound.
    pub cluster: String,
    /// `2xx`, `3xx`, `4xx`, `5xx` (`1xx` for upgrades).
    pub class: &'static str,
}

/// Labels of the per-client-kind request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    /// The tenant.
    pub tenant: String,
    /// User-agent family.
    pub client: String,
}

/// Labels of the per-source-address request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// IP address, or `other` beyond the bound.
    pub source: String,
}

/// Labels of per-tenant byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantDirectionLabel {
    /// The tenant.
    pub tenant: String,
    /// `in` (request bodies) or `out` (responses).
    pub direction: &'static str,
}

/// Labels of per-tenant gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabel {
    /// The tenant.
    pub tenant: String,
}

/// Labels of rejections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabel {
    /// The tenant (`""`: not known, e.g. not authenticated).
    pub tenant: String,
    /// `unauthenticated`, `forbidden`, `not_found`, `limit`, `ban`, `overload`.
    pub reason: &'static str,
}

/// The hub's metrics (shared by every core; all updates are atomic).
#[derive(Debug)]
pub struct Metrics {
    /// Agents connected.
    pub agents: Gauge,
    /// Agent tunnels accepted (a rate well above the agents' number is flapping).
    pub agent_connects: Counter,
    /// Streams open across tunnels.
    pub streams: Gauge,
    /// Tunnel payload bytes each way.
    pub tunnel_bytes: Family<DirectionLabel, Counter>,
    /// User requests by response code.
    pub requests: Family<CodeLabel, Counter>,
    /// Seconds from a request head to its response head.
    pub latency: Histogram,
    /// Tunnel connections refused (handshake, identity, protocol).
    pub tunnel_rejects: Counter,
    /// Reads offered to the cache, by verb and outcome.
    pub cache_reads: Family<CacheLabel, Counter>,
    /// Confirmations of currency that reads waited for, by outcome.
    pub cache_freshness: Family<OutcomeLabel, Counter>,
    /// Seconds reads waited for a confirmation.
    pub cache_freshness_wait: Histogram,
    /// At each confirmation, the edge's resourceVersion minus the cache's (how far the cache
    /// was behind; 0 when the watch had kept up).
    pub cache_sync_lag: Histogram,
    /// Sync events applied (watch events and snapshot objects), by type.
    pub cache_events: Family<TypeLabel, Counter>,
    /// Snapshots (lists and relists) applied, by type.
    pub cache_snapshots: Family<TypeLabel, Counter>,
    /// Watches served from the cache, open now.
    pub cache_watchers: Gauge,
    /// Objects held, by type (summed over clusters; set at scrape time).
    pub cache_objects: Family<TypeLabel, Gauge>,
    /// JSON bytes held, by type.
    pub cache_bytes: Family<TypeLabel, Gauge>,
    /// Clusters whose type is synced, by type.
    pub cache_synced: Family<TypeLabel, Gauge>,
    /// Watches ended because they fell behind the history window.
    pub cache_watchers_cut: Counter,
    /// Requests refused by authentication (401), by reason.
    pub unauthenticated: Family<ReasonLabel, Counter>,
    /// Requests refused by authorization (403, or 404 for clusters not the user's).
    pub denied: Family<ReasonLabel, Counter>,
    /// The revision of the access data decisions are made with (set at scrape time).
    pub access_revision: Gauge,
    /// 1 while the sync feed from meta is open (always 1 with a static access file).
    pub meta_connected: Gauge,
    /// Unix time of the last line from meta (0: never).
    pub meta_last_contact: Gauge<f64, AtomicU64>,
    /// Seconds since meta was last connected (0 while connected).
    pub meta_disconnected: Gauge<f64, AtomicU64>,
    /// Registrations with meta, by outcome (`ok`, `failed`).
    pub meta_registrations: Family<OutcomeLabel, Counter>,
    /// Sync feed connections to meta that ended, by outcome (`closed`, `failed`).
    pub meta_syncs: Family<OutcomeLabel, Counter>,
    /// The user listener's certificate: expiry (with `[meta] state_dir`, the enrolled
    /// certificate's, updated on renewal), renewals, failed attempts.
    pub cert: kubehub_enroll::CertMetrics,
    /// Upgraded connections (exec, attach, port-forward) open now.
    pub sessions_open: Gauge,
    /// Upgraded connections that ended, by kind and how.
    pub sessions: Family<SessionLabel, Counter>,
    /// Running requests (watches, `logs -f`, exec/attach/port-forward sessions) the hub
    /// ended because their party was banned (`banned`) or their token revoked (`revoked`).
    pub streams_ended: Family<ReasonLabel, Counter>,
    /// Running requests a ban or revocation would end now (watches, `logs -f`, sessions).
    pub streams_running: Gauge,
    /// This hub (one series, value 1).
    pub info: Family<InfoLabel, Gauge>,
    /// Peer links this hub dialled, up now (set at scrape time).
    pub peer_links: Gauge,
    /// Requests forwarded to another hub over a peer link, by outcome (`ok`: a holder
    /// answered; `unreachable`: none could be reached).
    pub peer_requests: Family<OutcomeLabel, Counter>,
    /// The admit phase: admissions, waits, refusals, memory (`crate::admission`).
    pub admission: crate::admission::AdmissionMetrics,
    /// Requests by tenant, verb, resource, code and who served them.
    pub tenant_requests: Family<TenantRequestLabel, Counter>,
    /// Requests by cluster (bounded) and code class.
    pub cluster_requests: Family<ClusterLabel, Counter>,
    /// Requests by tenant and user-agent family.
    pub client_requests: Family<ClientLabel, Counter>,
    /// Requests by source address (bounded).
    pub source_requests: Family<SourceLabel, Counter>,
    /// Bytes by tenant and direction.
    pub tenant_bytes: Family<TenantDirectionLabel, Counter>,
    /// Watches open, by tenant.
    pub tenant_watches: Family<TenantLabel, Gauge>,
    /// Requests refused, by tenant and reason.
    pub rejections: Family<RejectLabel, Counter>,
    /// Audit events written (`kubehub_audit_events_total`).
    pub audit_events: Counter,
    /// Audit events dropped because the writer fell behind (`kubehub_audit_events_dropped_total`).
    pub audit_dropped: Counter,
    registry: Registry,
    audit_registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The tunnel byte counter for `direction` (`to_agent`, `from_agent`), to keep and bump
    /// without a lookup per frame.
    pub fn bytes(&self, direction: &'static str) -> Counter {
        self.tunnel_bytes
            .get_or_create(&DirectionLabel { direction })
            .clone()
    }

    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kubehub_hub");
        let agents = Gauge::default();
        let streams = Gauge::default();
        let tunnel_bytes = Family::<DirectionLabel, Counter>::default();
        let requests = Family::<CodeLabel, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let tunnel_rejects = Counter::default();
        registry.register(
            "agents_connected",
            "Agents with an open tunnel",
            agents.clone(),
        );
        registry.register("streams_open", "Tunnel streams open", streams.clone());
        let agent_connects = Counter::default();
        registry.register(
            "agent_connects",
            "Agent tunnels accepted (each reconnect counts)",
            agent_connects.clone(),
        );
        registry.register("tunnel_bytes", "Tunnel payload bytes", tunnel_bytes.clone());
        registry.register(
            "requests",
            "User requests by response code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request head to its response head",
            latency.clone(),
        );
        registry.register(
            "tunnel_rejects",
            "Agent connections refused",
            tunnel_rejects.clone(),
        );
        let cache_reads = Family::<CacheLabel, Counter>::default();
        let cache_freshness = Family::<OutcomeLabel, Counter>::default();
        let cache_freshness_wait = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let cache_sync_lag = Histogram::new(exponential_buckets(1.0, 4.0, 10));
        registry.register(
            "cache_sync_lag_versions",
            "At each confirmation: the edge's resourceVersion minus the cache's",
            cache_sync_lag.clone(),
        );
        let cache_events = Family::<TypeLabel, Counter>::default();
        let cache_snapshots = Family::<TypeLabel, Counter>::default();
        let cache_watchers = Gauge::default();
        let cache_watchers_cut = Counter::default();
        let cache_objects = Family::<TypeLabel, Gauge>::default();
        let cache_bytes = Family::<TypeLabel, Gauge>::default();
        let cache_synced = Family::<TypeLabel, Gauge>::default();
        registry.register(
            "cache_objects",
            "Objects held in the cache, by type (all clusters)",
            cache_objects.clone(),
        );
        registry.register(
            "cache_bytes",
            "JSON bytes of the objects held, by type (all clusters)",
            cache_bytes.clone(),
        );
        registry.register(
            "cache_synced_clusters",
            "Clusters whose type is synced and served from the cache",
            cache_synced.clone(),
        );
        registry.register(
            "cache_reads",
            "Reads offered to the cache: hit, stale or forward (with the reason)",
            cache_reads.clone(),
        );
        registry.register(
            "cache_freshness",
            "Confirmations that a cached type is current, by outcome",
            cache_freshness.clone(),
        );
        registry.register(
            "cache_freshness_wait_seconds",
            "Time reads waited for a confirmation",
            cache_freshness_wait.clone(),
        );
        registry.register(
            "cache_events",
            "Objects and watch events applied to the cache",
            cache_events.clone(),
        );
        registry.register(
            "cache_snapshots",
            "Snapshots (lists and relists) applied to the cache",
            cache_snapshots.clone(),
        );
        registry.register(
            "cache_watchers",
            "Watches served from the cache",
            cache_watchers.clone(),
        );
        registry.register(
            "cache_watchers_cut",
            "Cache watches ended because they fell behind the history window",
            cache_watchers_cut.clone(),
        );
        let unauthenticated = Family::<ReasonLabel, Counter>::default();
        let denied = Family::<ReasonLabel, Counter>::default();
        let access_revision = Gauge::default();
        let meta_connected = Gauge::default();
        let meta_last_contact = Gauge::<f64, AtomicU64>::default();
        let meta_disconnected = Gauge::<f64, AtomicU64>::default();
        let meta_registrations = Family::<OutcomeLabel, Counter>::default();
        let meta_syncs = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "unauthenticated",
            "Requests answered 401, by reason",
            unauthenticated.clone(),
        );
        registry.register(
            "denied",
            "Requests refused by authorization (403, or 404 for clusters not the user's)",
            denied.clone(),
        );
        registry.register(
            "access_revision",
            "Revision of the access data (meta's store) requests are decided with",
            access_revision.clone(),
        );
        registry.register(
            "meta_connected",
            "1 while the sync feed from the metaserver is open (1 with a static access file)",
            meta_connected.clone(),
        );
        registry.register(
            "meta_last_contact_timestamp_seconds",
            "Unix time of the last line received from the metaserver",
            meta_last_contact.clone(),
        );
        registry.register(
            "meta_disconnected_seconds",
            "Seconds since the metaserver was last connected (0 while connected)",
            meta_disconnected.clone(),
        );
        registry.register(
            "meta_registrations",
            "Registrations with the metaserver, by outcome",
            meta_registrations.clone(),
        );
        registry.register(
            "meta_syncs",
            "Sync feed connections to the metaserver that ended, by outcome",
            meta_syncs.clone(),
        );
        let sessions_open = Gauge::default();
        let sessions = Family::<SessionLabel, Counter>::default();
        let streams_ended = Family::<ReasonLabel, Counter>::default();
        let streams_running = Gauge::default();
        registry.register(
            "streams_running",
            "Running requests (watches, logs -f, exec sessions) a ban or revocation would end",
            streams_running.clone(),
        );
        registry.register(
            "streams_ended",
            "Running requests (watches, logs -f, exec sessions) ended by a ban or a token \
             revocation, by reason (banned, revoked)",
            streams_ended.clone(),
        );
        registry.register(
            "sessions_open",
            "Upgraded connections (exec, attach, port-forward) open",
            sessions_open.clone(),
        );
        registry.register(
            "sessions",
            "Upgraded connections that ended, by kind and how they ended",
            sessions.clone(),
        );
        let info = Family::<InfoLabel, Gauge>::default();
        registry.register(
            "info",
            "This hub: id, version, environment and zone (value 1)",
            info.clone(),
        );
        let peer_links = Gauge::default();
        registry.register(
            "peer_links",
            "Peer links to other hubs this hub dialled, up now",
            peer_links.clone(),
        );
        let peer_requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "peer_requests",
            "Requests forwarded to another hub holding the cluster, by outcome (ok; busy: every holder's link at its stream limit, answered 429; unreachable: 503)",
            peer_requests.clone(),
        );
        let admission = crate::admission::AdmissionMetrics::default();
        admission.register(&mut registry);
        let cert = kubehub_enroll::CertMetrics::default();
        cert.register(&mut registry, "the hub's (user listener's)");
        let tenant_requests = Family::<TenantRequestLabel, Counter>::default();
        registry.register(
            "tenant_requests",
            "Requests by tenant, verb, resource (bounded), code and served_by (hub, cache, forward, peer)",
            tenant_requests.clone(),
        );
        let cluster_requests = Family::<ClusterLabel, Counter>::default();
        registry.register(
            "cluster_requests",
            "Requests by cluster (the first [metrics] clusters seen, then other) and code class",
            cluster_requests.clone(),
        );
        let client_requests = Family::<ClientLabel, Counter>::default();
        registry.register(
            "client_requests",
            "Requests by tenant and client (user-agent family: kubectl/v1.32, client-go, kube-rs, python, ...)",
            client_requests.clone(),
        );
        let source_requests = Family::<SourceLabel, Counter>::default();
        registry.register(
            "source_requests",
            "Requests by source address (the first [metrics] sources seen, then other)",
            source_requests.clone(),
        );
        let tenant_bytes = Family::<TenantDirectionLabel, Counter>::default();
        registry.register(
            "tenant_bytes",
            "Bytes by tenant: in (request bodies), out (responses)",
            tenant_bytes.clone(),
        );
        let tenant_watches = Family::<TenantLabel, Gauge>::default();
        registry.register(
            "tenant_watches",
            "Watches open, by tenant",
            tenant_watches.clone(),
        );
        let rejections = Family::<RejectLabel, Counter>::default();
        registry.register(
            "rejected",
            "Requests refused, by tenant and reason (unauthenticated, forbidden, not_found; the admit phase's tenant_rate, user_rate, queue_full, queue_timeout, cluster_rate, cluster_concurrency, memory)",
            rejections.clone(),
        );
        // The audit log's counters are the sink's (kubehub-audit): `kubehub_audit_*`, the
        // same names wherever an audit log is written.
        let audit_events = Counter::default();
        let audit_dropped = Counter::default();
        let mut audit = Registry::with_prefix("kubehub_audit");
        audit.register("events", "Audit events written", audit_events.clone());
        audit.register(
            "events_dropped",
            "Audit events dropped because the writer fell behind (the request path never waits)",
            audit_dropped.clone(),
        );
        Metrics {
            admission,
            agent_connects,
            tenant_requests,
            cluster_requests,
            client_requests,
            source_requests,
            tenant_bytes,
            tenant_watches,
            rejections,
            audit_events,
            audit_dropped,
            audit_registry: audit,
            info,
            peer_links,
            peer_requests,
            sessions_open,
            sessions,
            streams_ended,
            streams_running,
            cert,
            unauthenticated,
            denied,
            access_revision,
            meta_connected,
            meta_last_contact,
            meta_disconnected,
            meta_registrations,
            meta_syncs,
            agents,
            streams,
            tunnel_bytes,
            requests,
            latency,
            tunnel_rejects,
            cache_reads,
            cache_freshness,
            cache_freshness_wait,
            cache_sync_lag,
            cache_events,
            cache_snapshots,
            cache_watchers,
            cache_watchers_cut,
            cache_objects,
            cache_bytes,
            cache_synced,
            registry,
        }
    }

    /// Counts a refused request (`reason`: `unauthenticated`, `forbidden`, `not_found`,
    /// `limit`, `ban`, `overload`) for `tenant` (`""` when unknown). Inside a request's path
    /// use `proxy::observe::Record::reject` instead (it counts here once the request ends,
    /// and in `/traffic`); this is for refusals outside one (a connection refused on accept).
    pub fn rejected(&self, tenant: &str, reason: &'static str) {
        self.rejections
            .get_or_create(&RejectLabel {
                tenant: tenant.to_owned(),
                reason,
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.audit_registry);
        // One exposition: the first registry's `# EOF` goes.
        if out.ends_with("# EOF\n") {
            out.truncate(out.len() - "# EOF\n".len());
        }
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
