//! `hub.toml`: every option of the hub, with its default.
//!
//! ```toml
//! id = "hub-0"                       # name of this replica (logs, HELLO_ACK, meta's registry);
//!                                    # default "hub-0", with [meta] state_dir the id the hub
//!                                    # enrolled as (its join token's; if set, it must be that)
//! cores = 0                          # worker threads, one per core; 0 = all available cores
//! clusters = ["edge-1", "edge-2"]    # clusters whose agents may connect (empty: any agent with a
//!                                    # valid certificate); users reach the clusters their grants name
//! impersonate = true                 # add Impersonate-User/-Group (the authenticated user and
//!                                    # groups) to forwarded requests
//! environment = ""                   # this hub's environment ("prod", "staging", ...; sent with its
//!                                    # registration). Traffic never crosses environments: agents of
//!                                    # clusters of another environment (their cluster record's) are
//!                                    # refused, so are users' requests for such clusters (403), and
//!                                    # peer links to and from hubs the registry puts elsewhere
//! zone = ""                          # this hub's failure domain (a zone, a rack), sent with its
//!                                    # registration: agents keep their tunnels in different zones
//!
//! # Who may reach which cluster: tenants, users, clusters, grants and tokens. Exactly one source,
//! # either [access] file (a static snapshot, for development and tests; read once at start)
//! # or [meta] (the metaserver's sync feed, the source of truth in production).
//! # [access]
//! # file = "access.json"             # one JSON snapshot line ({"type":"snapshot",...}) or NDJSON lines
//! # Which hub holds which cluster (for forwarding over peer links): with [meta], its registry
//! # watch; without it, optionally a static file, for development and tests (read once at start).
//! # [registry]
//! # file = "registry.ndjson"         # registry watch lines ({"kind":"snapshot",...}, {"kind":"hub",...},
//!                                    # {"kind":"agent",...}: kubehub_access::registry), applied in order
//!
//! [meta]                             # the metaserver: access sync feed, the hub registry, and
//!                                    # the hub's certificate
//! url = "https://meta:7443"
//! state_dir = "/var/lib/kubehub-hub" # the hub's enrollment. The first start joins with a join
//!                                    # token (`kubehub hub --join khJ....`, or KUBEHUB_JOIN_TOKEN;
//!                                    # from `kubehub ctl hub-join-token ID --name NAME...`): the hub
//!                                    # makes its key here, pins meta's CA from the token, has meta
//!                                    # sign it (CN = ID, SANs = the names; server and client auth)
//!                                    # and saves hub.key (mode 0600), hub.crt and ca.crt (meta's
//!                                    # CA); later starts reuse them (no token). They are the
//!                                    # defaults of ca, cert and key below and of the listeners'
//!                                    # cert, key and client_ca (every one may then be left out)
//! renew = true                       # with state_dir: renew that certificate at a random point
//!                                    # between 70% and 90% of its life (new key) and serve it
//!                                    # without a restart; user connections and agent tunnels
//!                                    # already up are not dropped. Failed attempts are retried
//!                                    # with the backoff below
//! # ca = "ca.crt"                    # PEM CA that signs meta's certificate (required with an
//!                                    # https url, unless state_dir)
//! # token_file = "hub-meta.token"    # bearer credential meta accepts from hubs (first line)
//! # cert = "hub-meta.crt"            # or mutual TLS with this client certificate and key (both;
//! # key = "hub-meta.key"             # instead of, or as well as, token_file). One of the two is
//!                                    # required unless state_dir (whose certificate is the default)
//! heartbeat_timeout_ms = 15000       # nothing from meta for this long: reconnect (meta sends a
//!                                    # heartbeat at least every 5 s); the hub keeps serving. Also
//!                                    # the deadline of one enrollment or renewal call
//! backoff_initial_ms = 200           # reconnect (and renewal retry) delays: full jitter,
//! backoff_max_ms = 10000             # doubling up to backoff_max_ms
//! register_interval_ms = 5000        # PUT /v1/registry/hubs/{id} this often
//! public_url = ""                    # user-facing URL sent to meta; "": https://<host>:<user port>
//! agent_endpoint = ""                # host:port agents dial; "": <host>:<agent port>
//! admin_url = ""                     # where meta (its console) reaches this hub's admin listener
//!                                    # for /traffic, sent with the registration; "":
//!                                    # http://<host>:<admin port> ("" too without [admin])
//! max_line_bytes = 268435456         # largest sync line accepted (a snapshot is one line)
//! version = ""                       # the version this hub registers as (and shows in
//!                                    # kubehub_hub_info); "": this build's. Canary rules
//!                                    # (`kubehub ctl canary`) pick hubs by it
//! unready_after_ms = 30000           # cut from meta this long: /readyz answers 503 (the hub keeps
//!                                    # serving with what it has; a load balancer sends new users
//!                                    # to hubs whose access data and directory are current). 0:
//!                                    # stay ready (choose 0 where a meta outage must not take
//!                                    # every hub out of a load balancer that does not fail open)
//!
//! [user_listener]                    # HTTPS for kubectl and other clients
//! listen = "0.0.0.0:8443"
//! # cert = "hub.crt"                 # PEM certificate chain and its PEM private key; required
//! # key = "hub.key"                  # unless [meta] state_dir (default: the enrolled certificate)
//!
//! [agent_listener]                   # mutual TLS for agents
//! listen = "0.0.0.0:8444"
//! # cert = "hub.crt"                 # as for user_listener
//! # key = "hub.key"
//! # client_ca = "ca.crt"             # CA that signs agent certificates (CN = cluster id);
//!                                    # required unless [meta] state_dir (default: meta's CA)
//!
//! [admin]                            # /healthz, /readyz, /metrics, /clusters, /traffic (plain HTTP)
//! listen = "127.0.0.1:9100"
//!
//! [metrics]                          # label bounds of the per-request metrics (crate::metrics)
//! resources = 200                    # distinct `resource` label values; later ones: "other"
//! clusters = 1000                    # distinct `cluster` values of kubehub_hub_cluster_requests
//! sources = 100                      # distinct `source` addresses of kubehub_hub_source_requests
//! traffic_clients = 10000            # clients (tenant x user agent x address) /traffic tracks
//!                                    # (over all cores: each core tracks its share)
//!
//! [audit]                            # the audit log: audit.k8s.io/v1 Events, one JSON line each
//! enabled = false                    # (kubehub_audit::AuditConfig documents every option)
//! sink = "file"                      # "file" or "stdout"
//! path = "/var/log/kubehub/audit.log"
//! max_size_mb = 100                  # rotate at this size; audit.log.1 is the newest old file
//! max_backups = 10                   # old files kept
//! queue = 10000                      # events waiting for the writer; beyond: dropped, counted
//!                                    # in kubehub_audit_events_dropped_total (never blocks)
//! max_body_bytes = 65536             # Request/RequestResponse levels: JSON bodies up to this
//! write_level = "Metadata"           # writes no rule matched
//! read_level = "None"                # get/list/watch no rule matched
//! # [[audit.rules]]                  # first match wins: level by verbs/resources/users/namespaces
//! # level = "RequestResponse"
//! # verbs = ["create", "update", "patch", "delete"]
//! # resources = ["secrets", "apps/deployments", "pods/exec"]
//!
//! [limits]
//! max_header_bytes = 65536           # request head larger than this: 431
//! max_connections = 100000           # per core; more are closed on accept
//! max_concurrent_streams = 1024      # per agent tunnel
//! stream_window = 262144             # flow-control window per request stream (bytes)
//! sync_window = 4194304              # per cache-sync stream
//! connection_window = 8388608        # per tunnel
//! max_frame_size = 2097152           # largest tunnel frame accepted
//! data_chunk = 16384                 # largest DATA frame the hub sends
//! handshake_timeout_ms = 10000       # TLS + HELLO must complete within this
//! idle_timeout_ms = 300000           # a user connection idle between requests (or mid-body: 408) is closed
//! request_head_timeout_ms = 30000    # a request head must arrive whole within this of its first byte (else 408, close)
//! response_timeout_ms = 60000        # time to a response head from the agent
//! keepalive_ms = 15000               # PING interval on idle tunnels (3 missed: dead)
//! drain_timeout_ms = 5000            # on shutdown (SIGTERM): /readyz answers 503, agents get
//!                                    # GOAWAY, users' new requests go to other hubs holding their
//!                                    # clusters (answers say Connection: close) for this long;
//!                                    # tunnel streams still open then are ended, and the hub exits
//! # An upgraded connection (exec, attach, cp, port-forward) with no bytes either way for this
//! # long is closed. kubectl pings every 5 s over WebSocket (and gives up after 61 s without an
//! # answer), but not over SPDY: an idle shell or port-forward must outlive a coffee break, so
//! # the default is kubelet's streaming-connection-idle-timeout (4 h).
//! upgrade_idle_timeout_ms = 14400000
//! # A request for a cluster whose tunnel is on another hub goes there over a peer link (the
//! # tunnel protocol, dialled to that hub's agent listener with this hub's agent_listener
//! # certificate, which must be a hub's: O=kubehub:hubs, as enrolled hubs' are; verified
//! # against client_ca). Links open on demand and close after this long without a stream.
//! peer_idle_timeout_ms = 300000
//! # The holder of a forwarded request accepts its stream at once, before doing any work; a
//! # holder that has not within this long (hung, overloaded) is passed over for the next one,
//! # and is tried after the others for a while (2 s, doubling to 30 s while it keeps failing).
//! peer_accept_timeout_ms = 5000
//! # Streams another hub may have open at once on its peer link to this hub (one link carries
//! # the forwarded requests, watches and sessions for all the clusters this hub holds; beyond
//! # this the forwarding hub answers 429).
//! peer_max_concurrent_streams = 16384
//! # One link per hub pair (false), or one per core of this hub and holder (true): more links
//! # (cores × holders), but a forwarded request never hands over between this hub's cores
//! # (perf/RESULTS.md, "Hubs in several replicas": the CPU it saves).
//! peer_links_per_core = false
//!
//! # Overload shedding: above this resident memory (RSS, sampled every 100 ms) the hub closes
//! # new user connections as it accepts them (a load balancer sees the connection closed and
//! # tries another hub, and no TLS handshake is spent on it) and answers new requests on open connections
//! # 503 ServiceUnavailable "over its memory ceiling"; open watches, logs and exec sessions go
//! # on, and so do operators' requests. 0: off. Gauges kubehub_hub_resident_memory_bytes and
//! # kubehub_hub_memory_limit_bytes.
//! memory_limit_bytes = 0
//!
//! # Fair sharing and rate limits: the `admit` phase (hub/src/proxy/admit.rs; README "Fair
//! # sharing and rate limits"). Requests are classified by tenant and user; each tenant has a
//! # token bucket and seats (concurrency) on this hub, each user a bucket of its own. The
//! # figures below are the defaults for tenants and users without a limit record in meta
//! # (`kubehub ctl limit set`), which override them. Every limit is per hub.
//! [limits.fairness]
//! enabled = true
//! requests_per_second = 0            # a tenant's sustained request weight per second (0: no rate limit)
//! burst = 0                          # weight a tenant may spend at once (0: twice requests_per_second)
//! concurrency = 256                  # a tenant's seats: request weight in flight at once; more
//!                                    # requests wait in the tenant's queues
//! user_share = 0.5                   # each user's own bucket, as a share of the tenant's rate and
//!                                    # burst, unless meta sets the user's (limits/<tenant>/<user>);
//!                                    # so one user never spends the whole tenant's rate. 1.0: off
//! queues = 64                        # queues per tenant; a user's requests go to the shortest
//! hand_size = 8                      # of hand_size queues dealt from the user's name (shuffle
//!                                    # sharding, kube-apiserver's parameters); freed seats go to
//!                                    # the queues in turn, so a user filling its queues cannot
//!                                    # starve the others' (1 <= hand_size <= queues <= 512)
//! queue_length = 50                  # requests per queue; a full queue: 429
//! queue_timeout_ms = 5000            # a request waiting longer: 429
//! exempt_users = []                  # operators: never queued, limited or shed
//! exempt_groups = []                 # users in any of these groups (user records' groups) too
//! cluster_requests_per_second = 0    # each cluster: forwarded request weight per second (0: off);
//! cluster_burst = 0                  # (0: twice the rate) a tenant's limit record may override both
//! cluster_concurrency = 0            # each cluster: forwarded requests in flight (0: off)
//! # Request weights: what a request costs in tokens and seats. A watch pays its start (the
//! # initial list it may send) and gives its seat back once it is streaming; exec, attach and
//! # port-forward give theirs back once the session is up (101). Weights above the tenant's
//! # burst or seats count as that.
//! weights = { get = 1, list = 4, watch = 2, write = 1, exec = 4 }
//!
//! [cache]                            # get / list / watch answered by the hub (ARCHITECTURE.md)
//! enabled = true
//! # Types to cache, "version/resource" (core) or "group/version/resource". Default: every
//! # list+watch type of core/v1 and apps/v1 except secrets (opt in: a hub holding every edge
//! # cluster's secrets in memory is a target worth not creating by default).
//! types = ["v1/pods", "v1/services", "apps/v1/deployments"]
//! history_window = 4096              # changes kept per cluster and type, for watches resuming
//!                                    # from a resourceVersion (older: 410 Gone). Memory: the
//!                                    # changed objects' JSON size plus ~200 bytes each
//! consistency = "probe"              # resourceVersion-unset reads: "probe" confirms the cache
//!                                    # is current with the agent first (as kube-apiserver does);
//!                                    # "bounded-staleness" serves if confirmed within max_staleness_ms
//! max_staleness_ms = 1000            # with "bounded-staleness" only
//! consistent_read_timeout_ms = 3000  # a read waits this long for confirmation, then is forwarded
//! stale_grace_ms = 30000             # agent gone: reads served from the cache this long, with a
//!                                    # `Warning` header; then 503
//! shards = 64                        # shards of the cluster map (power of two); ~100 bytes each
//!
//! [[cache.overrides]]                # clusters whose labels (agent.toml `labels`) all match
//! labels = { tier = "small" }        # use these types instead (first matching override wins)
//! types = ["v1/pods"]
//! ```

pub use kubehub_audit::AuditConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain (with `[meta] state_dir`, default: the enrolled `hub.crt`).
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// PEM private key (with `[meta] state_dir`, default: the enrolled `hub.key`).
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// PEM CA for client certificates (the agent listener requires one; with `[meta]
    /// state_dir`, default: meta's CA).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

impl Listener {
    /// Its certificate and key must both be set or both left out; left out, they come from
    /// the state directory (`enrolled`), else the listener has no certificate.
    fn validate(&self, what: &str, enrolled: bool) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), Some(_)) => Ok(()),
            (None, None) if enrolled => Ok(()),
            (None, None) => Err(ConfigError::Invalid(format!(
                "{what} has no certificate: run `kubehub hub --join TOKEN` once (with [meta] \
                 state_dir, where the hub keeps the certificate meta signs), or set {what}.cert \
                 and {what}.key"
            ))),
            _ => Err(ConfigError::Invalid(format!(
                "{what}.cert and {what}.key go together"
            ))),
        }
    }
}

/// The admin listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address to listen on.
    pub listen: SocketAddr,
}

/// Limits and timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request head accepted (bytes); larger: 431.
    pub max_header_bytes: usize,
    /// Connections per core; more are closed on accept.
    pub max_connections: usize,
    /// Streams open at once per agent tunnel.
    pub max_concurrent_streams: u32,
    /// Flow-control window of each request stream.
    pub stream_window: u32,
    /// Flow-control window of each cache-sync stream.
    pub sync_window: u32,
    /// Flow-control window of each tunnel.
    pub connection_window: u32,
    /// Largest tunnel frame accepted.
    pub max_frame_size: u32,
    /// Largest DATA frame the hub sends.
    pub data_chunk: usize,
    /// TLS + HELLO deadline.
    pub handshake_timeout_ms: u64,
    /// Idle user connections are closed after this; a request body that stops arriving for
    /// this long is answered 408 (and its stream cancelled).
    pub idle_timeout_ms: u64,
    /// A request head must be complete within this of its first byte, or the connection is
    /// answered 408 and closed (a slow trickle cannot hold a connection slot).
    pub request_head_timeout_ms: u64,
    /// Deadline for the agent's response head.
    pub response_timeout_ms: u64,
    /// PING interval on idle tunnels.
    pub keepalive_ms: u64,
    /// On shutdown, how long streams in flight may go on before they are ended (watches and
    /// `logs -f` end cleanly; clients reconnect elsewhere).
    pub drain_timeout_ms: u64,
    /// An upgraded connection (exec, attach, port-forward) silent both ways for this long is
    /// closed.
    pub upgrade_idle_timeout_ms: u64,
    /// A peer link this hub dialled closes after this long without a stream.
    pub peer_idle_timeout_ms: u64,
    /// How long a forwarded request waits for the holder to accept its stream before the
    /// next holder is tried.
    pub peer_accept_timeout_ms: u64,
    /// Streams a peer hub may have open at once on its link to this hub.
    pub peer_max_concurrent_streams: u32,
    /// Each core dials its own peer links (else one link per hub pair).
    pub peer_links_per_core: bool,
    /// Resident memory above which new connections and non-exempt requests are refused
    /// (0: off).
    pub memory_limit_bytes: u64,
    /// Fair sharing and rate limits (`[limits.fairness]`).
    pub fairness: Fairness,
}

/// `[limits.fairness]`: the `admit` phase's parameters and the defaults of limits meta does
/// not set (see the module documentation's hub.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fairness {
    /// Off: every request is admitted (the memory ceiling still applies).
    pub enabled: bool,
    /// A tenant's sustained weight per second (0: unlimited).
    pub requests_per_second: u32,
    /// A tenant's burst (0: twice the rate).
    pub burst: u32,
    /// A tenant's seats.
    pub concurrency: u32,
    /// A user's default bucket as a share of the tenant's (1.0: none).
    pub user_share: f64,
    /// Queues per tenant.
    pub queues: u32,
    /// Queues dealt to each user.
    pub hand_size: u32,
    /// Requests per queue.
    pub queue_length: u32,
    /// Longest wait in a queue.
    pub queue_timeout_ms: u64,
    /// Users never limited.
    pub exempt_users: Vec<String>,
    /// Groups whose users are never limited.
    pub exempt_groups: Vec<String>,
    /// Each cluster's forwarded weight per second (0: off).
    pub cluster_requests_per_second: u32,
    /// Each cluster's forward burst (0: twice the rate).
    pub cluster_burst: u32,
    /// Each cluster's forwarded requests in flight (0: off).
    pub cluster_concurrency: u32,
    /// Request weights.
    pub weights: Weights,
}

/// What requests weigh, in tokens and seats.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Weights {
    /// get, and anything not below.
    pub get: u32,
    /// list.
    pub list: u32,
    /// watch (its start).
    pub watch: u32,
    /// create, update, patch, delete, deletecollection.
    pub write: u32,
    /// exec, attach, port-forward (their start).
    pub exec: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            get: 1,
            list: 4,
            watch: 2,
            write: 1,
            exec: 4,
        }
    }
}

impl Default for Fairness {
    fn default() -> Self {
        Fairness {
            enabled: true,
            requests_per_second: 0,
            burst: 0,
            concurrency: 256,
            user_share: 0.5,
            queues: 64,
            hand_size: 8,
            queue_length: 50,
            queue_timeout_ms: 5000,
            exempt_users: Vec::new(),
            exempt_groups: Vec::new(),
            cluster_requests_per_second: 0,
            cluster_burst: 0,
            cluster_concurrency: 0,
            weights: Weights::default(),
        }
    }
}

impl Fairness {
    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("limits.fairness.{m}")));
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1".into());
        }
        if !(self.user_share > 0.0 && self.user_share <= 1.0) {
            return bad(format!(
                "user_share = {} must be above 0 and at most 1",
                self.user_share
            ));
        }
        if self.queues == 0
            || self.queues > 512
            || self.hand_size == 0
            || self.hand_size > self.queues
        {
            return bad("queues and hand_size: 1 <= hand_size <= queues <= 512".into());
        }
        if self.queue_length == 0 || self.queue_timeout_ms == 0 {
            return bad("queue_length and queue_timeout_ms must be above 0".into());
        }
        let w = &self.weights;
        if [w.get, w.list, w.watch, w.write, w.exec].contains(&0) {
            return bad("weights must all be at least 1".into());
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 * 1024,
            max_connections: 100_000,
            max_concurrent_streams: 1024,
            stream_window: 256 * 1024,
            sync_window: 4 * 1024 * 1024,
            connection_window: 8 * 1024 * 1024,
            max_frame_size: kubehub_wire::DEFAULT_MAX_FRAME_SIZE,
            data_chunk: 16 * 1024,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 300_000,
            request_head_timeout_ms: 30_000,
            response_timeout_ms: 60_000,
            keepalive_ms: 15_000,
            drain_timeout_ms: 5_000,
            upgrade_idle_timeout_ms: 4 * 3600 * 1000,
            peer_idle_timeout_ms: 300_000,
            peer_accept_timeout_ms: 5_000,
            peer_max_concurrent_streams: 16_384,
            peer_links_per_core: false,
            memory_limit_bytes: 0,
            fairness: Fairness::default(),
        }
    }
}

impl Limits {
    /// What the hub announces in HELLO_ACK.
    pub fn settings(&self) -> kubehub_wire::Settings {
        kubehub_wire::Settings {
            max_frame_size: self.max_frame_size,
            max_concurrent_streams: self.max_concurrent_streams,
            initial_stream_window: self.stream_window,
            initial_sync_window: self.sync_window,
            initial_connection_window: self.connection_window,
        }
    }

    /// What the hub announces on a peer link (either end): as [`Limits::settings`], but a
    /// link carries the streams of every cluster its holder serves.
    pub fn peer_settings(&self) -> kubehub_wire::Settings {
        kubehub_wire::Settings {
            max_concurrent_streams: self.peer_max_concurrent_streams,
            ..self.settings()
        }
    }

    /// As a `Duration`.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
}

/// The hub's id when hub.toml names none and it did not enroll.
pub const DEFAULT_ID: &str = "hub-0";

fn default_true() -> bool {
    true
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// Name of this replica. Left empty, "hub-0"; with `[meta] state_dir`, the identity the
    /// hub enrolled as (`crate::enroll::apply` fills it in; a different value is refused).
    #[serde(default)]
    pub id: String,
    /// Worker threads (0: one per available core).
    #[serde(default)]
    pub cores: usize,
    /// Clusters whose agents may connect (empty: any with a valid certificate).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// A static access snapshot (`[access] file`).
    #[serde(default)]
    pub access: Option<AccessFile>,
    /// The metaserver (`[meta]`).
    #[serde(default)]
    pub meta: Option<MetaConfig>,
    /// A static registry (`[registry] file`), without meta.
    #[serde(default)]
    pub registry: Option<RegistryFile>,
    /// Add impersonation headers to forwarded requests.
    #[serde(default = "default_true")]
    pub impersonate: bool,
    /// This hub's environment: it serves only clusters of it and links only to hubs of it.
    #[serde(default)]
    pub environment: String,
    /// This hub's failure domain (agents spread their tunnels over zones).
    #[serde(default)]
    pub zone: String,
    /// HTTPS for users.
    pub user_listener: Listener,
    /// Mutual TLS for agents.
    pub agent_listener: Listener,
    /// Admin endpoints.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: Limits,
    /// The cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Label bounds of the metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// The audit log.
    #[serde(default)]
    pub audit: kubehub_audit::AuditConfig,
}

/// `[metrics]`: how many distinct values the bounded labels take (`crate::metrics`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Distinct `resource` values.
    pub resources: usize,
    /// Distinct `cluster` values.
    pub clusters: usize,
    /// Distinct `source` values.
    pub sources: usize,
    /// Clients `/traffic` tracks.
    pub traffic_clients: usize,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            resources: 200,
            clusters: 1000,
            sources: 100,
            traffic_clients: 10_000,
        }
    }
}

/// `[access]`: a static access snapshot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    /// One JSON `snapshot` line, or NDJSON sync lines applied in order.
    pub file: PathBuf,
}

/// `[registry]`: which hub holds which cluster, from a file (without meta).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    /// NDJSON registry watch lines, applied in order.
    pub file: PathBuf,
}

/// `[meta]`: the metaserver the hub syncs access data from and registers with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// Base URL (`https://meta:7443`).
    pub url: String,
    /// PEM CA for meta's certificate (required with `https://`: no other roots are trusted).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// File holding the bearer token meta accepts from this hub.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Where the hub's enrollment is kept: `hub.key`, `hub.crt`, `ca.crt`
    /// (`kubehub hub --join`); the default of every certificate option.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// With `state_dir`: renew the certificate before it expires.
    #[serde(default = "default_true")]
    pub renew: bool,
    /// Silence from meta longer than this ends the connection (and the deadline of an
    /// enrollment or renewal call).
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// First reconnect delay ceiling.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Largest reconnect delay ceiling.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Registration interval.
    #[serde(default = "default_register_interval_ms")]
    pub register_interval_ms: u64,
    /// The URL users reach this hub at ("": derived from the user listener).
    #[serde(default)]
    pub public_url: String,
    /// `host:port` agents dial ("": derived from the agent listener).
    #[serde(default)]
    pub agent_endpoint: String,
    /// The admin listener's URL for meta ("": derived from `[admin] listen`).
    #[serde(default)]
    pub admin_url: String,
    /// Largest sync line accepted.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// The version registered (empty: this build's).
    #[serde(default)]
    pub version: String,
    /// Cut from meta this long, the hub reports not ready (0: never).
    #[serde(default = "default_unready_after_ms")]
    pub unready_after_ms: u64,
}

fn default_heartbeat_timeout_ms() -> u64 {
    15_000
}
fn default_backoff_initial_ms() -> u64 {
    200
}
fn default_backoff_max_ms() -> u64 {
    10_000
}
fn default_register_interval_ms() -> u64 {
    5_000
}
fn default_unready_after_ms() -> u64 {
    30_000
}
fn default_max_line_bytes() -> usize {
    256 * 1024 * 1024
}

impl MetaConfig {
    /// A `[meta]` section for `url` with every other option at its default.
    pub fn new(url: impl Into<String>) -> MetaConfig {
        MetaConfig {
            url: url.into(),
            ca: None,
            token_file: None,
            cert: None,
            key: None,
            state_dir: None,
            renew: true,
            heartbeat_timeout_ms: default_heartbeat_timeout_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            register_interval_ms: default_register_interval_ms(),
            public_url: String::new(),
            agent_endpoint: String::new(),
            admin_url: String::new(),
            max_line_bytes: default_max_line_bytes(),
            unready_after_ms: default_unready_after_ms(),
            version: String::new(),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(format!("meta.{m}")));
        let scheme_ok = self.url.starts_with("https://") || self.url.starts_with("http://");
        if !scheme_ok || self.url.parse::<http::Uri>().is_err() {
            return bad(format!("url {:?} is not an http(s) URL", self.url));
        }
        let enrolled = self.state_dir.is_some();
        if self.url.starts_with("https://") && self.ca.is_none() && !enrolled {
            return bad("ca is required with an https url (or state_dir: meta's CA from the hub's enrollment)".into());
        }
        if self.cert.is_some() != self.key.is_some() {
            return bad("cert and key go together".into());
        }
        if self.token_file.is_none() && self.cert.is_none() && !enrolled {
            return bad(
                "token_file (or cert and key, or state_dir: the hub's enrolled certificate) is \
                 required: meta authenticates hubs"
                    .into(),
            );
        }
        if enrolled && !self.url.starts_with("https://") {
            return bad("state_dir needs an https url: the hub enrolls over TLS".into());
        }
        if self.heartbeat_timeout_ms == 0 || self.register_interval_ms == 0 {
            return bad("heartbeat_timeout_ms and register_interval_ms must be above 0".into());
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return bad("backoff_initial_ms must be above 0 and at most backoff_max_ms".into());
        }
        if self.max_line_bytes < 1024 {
            return bad("max_line_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

/// How `resourceVersion`-unset reads (kubectl's default, "most recent") are confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Ask the agent to confirm the type is current (one request shared by every read
    /// waiting on that cluster and type), then serve from the cache.
    Probe,
    /// Serve if the type was confirmed current within `max_staleness_ms`; otherwise probe.
    BoundedStaleness,
}

/// A group/version/resource as written in hub.toml.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TypeName {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural resource name.
    pub resource: String,
}

impl TypeName {
    /// Parses `version/resource` (core) or `group/version/resource`.
    pub fn parse(s: &str) -> Result<TypeName, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let (group, version, resource) = match parts.as_slice() {
            [v, r] => ("", *v, *r),
            [g, v, r] if !g.is_empty() => (*g, *v, *r),
            _ => {
                return Err(format!(
                    "cache type {s:?}: expected \"version/resource\" (core) or \"group/version/resource\""
                ))
            }
        };
        if version.is_empty() || resource.is_empty() {
            return Err(format!("cache type {s:?}: empty version or resource"));
        }
        Ok(TypeName {
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
        })
    }
}

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}/{}", self.version, self.resource)
        } else {
            write!(f, "{}/{}/{}", self.group, self.version, self.resource)
        }
    }
}

impl<'de> Deserialize<'de> for TypeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TypeName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Cached types for clusters with given labels.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheOverride {
    /// Every label must match the cluster's.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The types cached for those clusters.
    pub types: Vec<TypeName>,
}

/// The `[cache]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Serve reads from the cache at all.
    pub enabled: bool,
    /// Types cached by default.
    pub types: Vec<TypeName>,
    /// Per-label replacements of `types`.
    pub overrides: Vec<CacheOverride>,
    /// Changes kept per cluster and type.
    pub history_window: usize,
    /// How most-recent reads are confirmed.
    pub consistency: Consistency,
    /// With bounded staleness: how old a confirmation may be.
    pub max_staleness_ms: u64,
    /// How long a read waits for confirmation before it is forwarded.
    pub consistent_read_timeout_ms: u64,
    /// How long reads are served after the agent left.
    pub stale_grace_ms: u64,
    /// Shards of the cluster map.
    pub shards: usize,
}

/// The default cached types: every list+watch type of core/v1 and apps/v1 the simulator
/// serves, except secrets.
fn default_cache_types() -> Vec<TypeName> {
    kubehub_kapi::resources::builtin()
        .iter()
        .filter(|t| t.cached && t.resource != "secrets")
        .filter(|t| t.group.is_empty() || t.group == "apps")
        .map(|t| TypeName {
            group: t.group.clone(),
            version: t.version.clone(),
            resource: t.resource.clone(),
        })
        .collect()
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            types: default_cache_types(),
            overrides: Vec::new(),
            history_window: 4096,
            consistency: Consistency::Probe,
            max_staleness_ms: 1000,
            consistent_read_timeout_ms: 3000,
            stale_grace_ms: 30_000,
            shards: 64,
        }
    }
}

impl CacheConfig {
    /// The types to cache for a cluster with these labels.
    pub fn types_for(&self, labels: &[(String, String)]) -> &[TypeName] {
        self.overrides
            .iter()
            .find(|o| {
                o.labels
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map_or(&self.types, |o| &o.types)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("cache.{m}")));
        if self.history_window == 0 {
            return bad("history_window must be at least 1");
        }
        if !self.shards.is_power_of_two() {
            return bad("shards must be a power of two");
        }
        if self.consistent_read_timeout_ms == 0 {
            return bad("consistent_read_timeout_ms must be above 0");
        }
        Ok(())
    }
}

impl HubConfig {
    /// Reads and checks a TOML file; relative paths in it are relative to the file.
    pub fn load(path: &Path) -> Result<HubConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut cfg: HubConfig = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(a) = &mut cfg.access {
            fix(&mut a.file);
        }
        if let Some(m) = &mut cfg.meta {
            for p in [
                &mut m.ca,
                &mut m.token_file,
                &mut m.cert,
                &mut m.key,
                &mut m.state_dir,
            ]
            .into_iter()
            .flatten()
            {
                fix(p);
            }
        }
        if let Some(p) = &mut cfg.audit.path {
            fix(p);
        }
        for l in [&mut cfg.user_listener, &mut cfg.agent_listener] {
            for p in [&mut l.cert, &mut l.key, &mut l.client_ca]
                .into_iter()
                .flatten()
            {
                fix(p);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        kubehub_wire::validate_settings(&l.peer_settings())
            .map_err(|e| ConfigError::Invalid(format!("limits.peer_*: {e}")))?;
        kubehub_wire::validate_settings(&l.settings())
            .map_err(|e| ConfigError::Invalid(format!("limits: {e}")))?;
        if l.data_chunk == 0 || l.data_chunk > l.max_frame_size as usize {
            return Err(ConfigError::Invalid(
                "limits.data_chunk must be 1..=max_frame_size".into(),
            ));
        }
        if l.max_header_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_header_bytes must be at least 1024".into(),
            ));
        }
        if l.request_head_timeout_ms == 0 || l.idle_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "limits.request_head_timeout_ms and limits.idle_timeout_ms must be above 0".into(),
            ));
        }
        // Below kubectl's 61 s ping deadline a healthy WebSocket session could be cut between
        // two pings that crossed a busy moment; far below it, every idle shell would be.
        if l.upgrade_idle_timeout_ms < 61_000 {
            return Err(ConfigError::Invalid(format!(
                "limits.upgrade_idle_timeout_ms = {} is below kubectl's 61 s ping deadline: \
                 use at least 61000",
                l.upgrade_idle_timeout_ms
            )));
        }
        self.cache.validate()?;
        l.fairness.validate()?;
        self.audit.validate().map_err(ConfigError::Invalid)?;
        match (&self.access, &self.meta) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "[access] file and [meta] are exclusive: choose one source of access data"
                        .into(),
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "no access source: set [access] file (a static snapshot) or [meta] url".into(),
                ))
            }
            (None, Some(m)) => m.validate()?,
            (Some(_), None) => {}
        }
        if self.registry.is_some() && self.meta.is_some() {
            return Err(ConfigError::Invalid(
                "[registry] file and [meta] are exclusive: with meta, the hub follows its registry"
                    .into(),
            ));
        }
        let enrolled = self.state_dir().is_some();
        self.user_listener.validate("user_listener", enrolled)?;
        self.agent_listener.validate("agent_listener", enrolled)?;
        if self.agent_listener.client_ca.is_none() && !enrolled {
            return Err(ConfigError::Invalid(
                "agent_listener.client_ca is required (agents authenticate with certificates), \
                 unless [meta] state_dir (meta's CA from the hub's enrollment)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// `[meta] state_dir`, if the hub enrolls with meta.
    pub fn state_dir(&self) -> Option<&Path> {
        self.meta.as_ref().and_then(|m| m.state_dir.as_deref())
    }

    /// Worker threads to run.
    pub fn worker_count(&self) -> usize {
        if self.cores > 0 {
            self.cores
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented hub.toml with its commented-out certificate options (`# ca = …`,
    /// `# cert = …`, …) turned on: the configuration of a hub with files of its own.
    fn with_explicit_files(documented: &str) -> String {
        documented
            .lines()
            .map(|l| {
                let option = l.strip_prefix("# ").filter(|rest| {
                    ["ca ", "token_file ", "cert ", "key ", "client_ca "]
                        .iter()
                        .any(|k| rest.starts_with(k))
                });
                format!("{}\n", option.unwrap_or(l))
            })
            .collect()
    }

    /// The example in this module's documentation is a valid hub.toml: its `[cache]` values
    /// other than the type lists are the defaults, and its override applies by label.
    #[test]
    fn documented_example_parses() {
        let src = include_str!("config.rs");
        let toml_text = kubehub_testkit::documented_toml(src);
        assert!(toml_text.contains("[cache]"), "{toml_text}");
        let cfg: HubConfig = toml::from_str(&toml_text).expect("the documented hub.toml parses");
        cfg.validate().expect("and is valid");
        let (c, d) = (&cfg.cache, CacheConfig::default());
        assert_eq!(
            (
                c.history_window,
                c.consistency,
                c.max_staleness_ms,
                c.consistent_read_timeout_ms,
                c.stale_grace_ms,
                c.shards
            ),
            (
                d.history_window,
                d.consistency,
                d.max_staleness_ms,
                d.consistent_read_timeout_ms,
                d.stale_grace_ms,
                d.shards
            )
        );
        let pods = TypeName::parse("v1/pods").expect("core type");
        let small = [("tier".to_owned(), "small".to_owned())];
        assert_eq!(c.types_for(&small), [pods]);
        assert_eq!(c.types_for(&[]).len(), 3);
        assert!(c
            .types_for(&[])
            .contains(&TypeName::parse("apps/v1/deployments").unwrap()));
        // The example enrolls: no certificate files, they come from the state directory.
        assert_eq!(cfg.state_dir(), Some(Path::new("/var/lib/kubehub-hub")));
        assert!(cfg.user_listener.cert.is_none() && cfg.agent_listener.client_ca.is_none());
        assert!(cfg.id == "hub-0");
        // `[meta]` values other than the endpoint and credentials are the defaults.
        let m = cfg.meta.as_ref().expect("the example syncs from meta");
        let d = MetaConfig::new(&m.url);
        assert_eq!(
            (
                m.heartbeat_timeout_ms,
                m.backoff_initial_ms,
                m.backoff_max_ms,
                m.register_interval_ms,
                &m.public_url,
                &m.agent_endpoint,
                m.max_line_bytes,
                m.renew
            ),
            (
                d.heartbeat_timeout_ms,
                d.backoff_initial_ms,
                d.backoff_max_ms,
                d.register_interval_ms,
                &d.public_url,
                &d.agent_endpoint,
                d.max_line_bytes,
                d.renew
            )
        );
        assert!(cfg.access.is_none());
    }

    /// The commented-out certificate options are options: turned on, they parse, and without
    /// the state directory they are what makes the configuration valid.
    #[test]
    fn certificate_files_without_enrollment() {
        let documented = kubehub_testkit::documented_toml(include_str!("config.rs"));
        let explicit = with_explicit_files(&documented);
        let cfg: HubConfig = toml::from_str(&explicit).expect("parses");
        cfg.validate().expect("valid");
        assert_eq!(cfg.user_listener.cert, Some(PathBuf::from("hub.crt")));
        assert_eq!(cfg.agent_listener.key, Some(PathBuf::from("hub.key")));
        assert_eq!(cfg.agent_listener.client_ca, Some(PathBuf::from("ca.crt")));
        let m = cfg.meta.as_ref().unwrap();
        assert_eq!(m.ca, Some(PathBuf::from("ca.crt")));
        assert_eq!(m.token_file, Some(PathBuf::from("hub-meta.token")));
        assert_eq!(m.cert, Some(PathBuf::from("hub-meta.crt")));
        // Without the state directory (and its files): each missing file is named.
        let no_state = explicit.replace("state_dir = \"/var/lib/kubehub-hub\"", "");
        let parse = |t: &str| toml::from_str::<HubConfig>(t).expect("parses");
        parse(&no_state).validate().expect("files of its own");
        let no_user_cert =
            no_state
                .replacen("cert = \"hub.crt\"", "", 1)
                .replacen("key = \"hub.key\"", "", 1);
        let err = parse(&no_user_cert).validate().unwrap_err().to_string();
        assert!(
            err.contains("user_listener has no certificate")
                && err.contains("kubehub hub --join TOKEN")
                && err.contains("user_listener.cert"),
            "{err}"
        );
        let at = no_state
            .rfind("cert = \"hub.crt\"")
            .expect("the agent listener's");
        let no_agent_cert = format!("{}{}", &no_state[..at], &no_state[at + 16..]);
        let err = parse(&no_agent_cert).validate().unwrap_err().to_string();
        assert!(
            err.contains("agent_listener.cert and agent_listener.key go together"),
            "{err}"
        );
        let no_client_ca = no_state.replace("client_ca = \"ca.crt\"", "");
        let err = parse(&no_client_ca).validate().unwrap_err().to_string();
        assert!(err.contains("client_ca is required"), "{err}");
        // With it, nothing but the listeners' addresses and meta's URL is needed.
        let minimal = "[meta]\nurl = \"https://meta:7443\"\nstate_dir = \"state\"\n\
                       [user_listener]\nlisten = \"127.0.0.1:0\"\n\
                       [agent_listener]\nlisten = \"127.0.0.1:0\"\n";
        let cfg = parse(minimal);
        cfg.validate().expect("an enrolled hub needs no files");
        assert!(cfg.id.is_empty(), "the enrolled identity fills it in");
        let plain = minimal.replace("https://", "http://");
        assert!(parse(&plain).validate().is_err(), "enrollment is over TLS");
    }

    /// Exactly one access source: a file or meta (with a credential, and a CA for https).
    #[test]
    fn access_sources() {
        let src = include_str!("config.rs");
        let base = kubehub_testkit::documented_toml(src);
        // Without its [meta] section (the last part of the example before [user_listener]).
        let start = base.find("\n[meta]").expect("documented [meta]");
        let end = base
            .find("\n[user_listener]")
            .expect("documented listeners");
        let without_meta = format!("{}{}", &base[..start], &base[end..]);
        let parse = |t: &str| toml::from_str::<HubConfig>(t).expect("parses");
        let err = parse(&without_meta).validate().unwrap_err().to_string();
        assert!(err.contains("no access source"), "{err}");
        let err = parse(&with_explicit_files(&without_meta))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("no access source"), "{err}");
        let with_file = format!(
            "{}\n[access]\nfile = \"access.json\"\n",
            with_explicit_files(&without_meta)
        );
        let cfg = parse(&with_file);
        cfg.validate().expect("a file is a source");
        assert_eq!(
            cfg.access.map(|a| a.file),
            Some(PathBuf::from("access.json"))
        );
        let both = format!("{base}\n[access]\nfile = \"access.json\"\n");
        let err = parse(&both).validate().unwrap_err().to_string();
        assert!(err.contains("exclusive"), "{err}");
        assert!(
            toml::from_str::<HubConfig>(&format!("token_file = \"tokens.csv\"\n{base}")).is_err(),
            "the old token file is gone"
        );
        let meta = |extra: &str| {
            toml::from_str::<MetaConfig>(&format!("url = \"https://meta:7443\"\n{extra}"))
                .expect("parses")
        };
        assert!(meta("ca = \"ca.crt\"\ntoken_file = \"t\"")
            .validate()
            .is_ok());
        assert!(meta("ca = \"ca.crt\"\ncert = \"c\"\nkey = \"k\"")
            .validate()
            .is_ok());
        assert!(
            meta("state_dir = \"s\"").validate().is_ok(),
            "an enrolled hub"
        );
        assert!(meta("state_dir = \"s\"\nrenew = false").validate().is_ok());
        for bad in [
            "token_file = \"t\"",            // https without a CA
            "ca = \"ca.crt\"",               // no credential
            "ca = \"ca.crt\"\ncert = \"c\"", // a certificate without its key
            "ca = \"ca.crt\"\ntoken_file = \"t\"\nheartbeat_timeout_ms = 0",
            "ca = \"ca.crt\"\ntoken_file = \"t\"\nbackoff_max_ms = 1",
        ] {
            assert!(meta(bad).validate().is_err(), "{bad}");
        }
        let plain =
            toml::from_str::<MetaConfig>("url = \"meta:7443\"\ntoken_file = \"t\"").unwrap();
        assert!(plain.validate().is_err(), "a URL needs its scheme");
    }

    #[test]
    fn cache_defaults_and_bad_values() {
        let d = CacheConfig::default();
        let names: Vec<String> = d.types.iter().map(ToString::to_string).collect();
        assert!(names.contains(&"v1/pods".to_owned()), "{names:?}");
        assert!(
            names.contains(&"apps/v1/deployments".to_owned()),
            "{names:?}"
        );
        assert!(
            !names.contains(&"v1/secrets".to_owned()),
            "secrets are opt-in"
        );
        assert!(names
            .iter()
            .all(|n| !n.contains("/log") && !n.contains("/status")));
        for bad in ["pods", "/v1/pods", "v1/", "a/b/c/d", "apps//deployments"] {
            assert!(TypeName::parse(bad).is_err(), "{bad}");
        }
        let parse = |t: &str| toml::from_str::<CacheConfig>(t);
        assert!(parse("typo = 1").is_err(), "unknown keys are refused");
        assert!(parse(r#"consistency = "eventual""#).is_err());
        assert!(parse(r#"types = ["pods"]"#).is_err());
        for bad in [
            "history_window = 0",
            "shards = 3",
            "consistent_read_timeout_ms = 0",
        ] {
            let c = parse(bad).expect("parses");
            assert!(c.validate().is_err(), "{bad}");
        }
    }
}
