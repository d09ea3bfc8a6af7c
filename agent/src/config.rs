//! `agent.toml`: every option of the agent, with its default.
//!
//! ```toml
//! cluster_id = "edge-1"              # must match the CN of the agent's certificate; with [meta]
//!                                    # optional (the identity the metaserver enrolled it as)
//! agent_id = "edge-1-a"              # this instance (default: cluster_id)
//! hubs = ["hub.example.com:8444"]    # one tunnel per hub, kept forever; with [meta] optional:
//!                                    # without it the hubs come from the metaserver's registry
//!                                    # ([meta] hub_refresh_ms and below)
//! labels = { region = "eu", tier = "small" }  # the cluster's labels, sent in HELLO: hubs
//!                                    # choose the cached types by them ([[cache.overrides]])
//!
//! [tls]                              # mutual TLS towards the hubs
//! ca = "ca.crt"                      # CA of the hubs' certificates
//! cert = "agent.crt"                 # this agent's certificate (CN = cluster_id)
//! key = "agent.key"
//!                                    # with [meta], ca/cert/key default to ca.crt, agent.crt and
//!                                    # agent.key in the state directory, where enrollment and
//!                                    # renewal write them (the whole [tls] section may go)
//! server_name = "localhost"          # name to verify in the hub certificates (default:
//!                                    # "localhost"; with [meta], each hub's host name or address)
//!
//! [meta]                             # optional: enrollment with the metaserver. The first start
//!                                    # joins with a join token (`kubehub agent --join khJ....`):
//!                                    # it makes a key here, has the metaserver sign it, and saves
//!                                    # the key, certificate, CA and hub list in state_dir; later
//!                                    # starts reuse them (no token)
//! url = "https://meta.example.com:9443"  # the metaserver (https; its certificate is checked
//!                                    # against the CA the join token pins)
//! state_dir = "/var/lib/kubehub-agent"   # key (mode 0600), certificate, CA, enrollment.json
//! renew = true                       # renew the certificate at a random point between 70% and
//!                                    # 90% of its life (new key; tunnels up are not dropped)
//! request_timeout_ms = 30000         # deadline of one call to the metaserver
//! retry_initial_ms = 1000            # a failed renewal is retried after a full-jitter
//! retry_max_ms = 300000              # exponential backoff between these bounds
//!                                    # without `hubs` at the top, the metaserver's registry of
//!                                    # live hubs says which hubs to dial (until its first answer,
//!                                    # the hubs it named at enrollment; while it cannot be read,
//!                                    # the last list it gave):
//! hub_refresh_ms = 10000             # read the registry (GET /v1/registry/hubs) this often
//! hubs_per_agent = 2                 # keep tunnels to this many hubs (0: every live hub), chosen
//!                                    # by rendezvous hashing of (cluster_id, hub address): agents
//!                                    # spread evenly over the hubs, and a hub added or removed
//!                                    # moves only its share. Never two in one zone (the hubs'
//!                                    # failure domain) while another zone has a hub. A healthy
//!                                    # tunnel is not moved (not even back to a hub that returns)
//!                                    # unless the registry says the agent may not use its hub
//!                                    # (draining, another environment, the canary rule)
//! failover_after_ms = 10000          # a chosen hub failing this long (dial errors, refusals, lost
//!                                    # connections; retried with [reconnect]'s backoff), or
//!                                    # failing and gone from the registry, is replaced by the next
//!                                    # in rendezvous order; a hub given up on is skipped for six
//!                                    # times this long unless nothing else is left. A hub that
//!                                    # sends GOAWAY NO_ERROR (draining for a restart) is replaced
//!                                    # at once (its streams in flight finish)
//! max_moves_per_minute = 6           # healthy tunnels moved away from hubs the registry says the
//!                                    # agent may not use (each after a random delay of up to
//!                                    # [reconnect] initial_ms; the new tunnel is up before the
//!                                    # old one closes), or to rebalance load: at most this many a
//!                                    # minute (0: never)
//! register_interval_ms = 5000        # heartbeat to the registry (PUT /v1/registry/agents/{cluster}):
//!                                    # the hubs the agent has a tunnel up to (also with `hubs`)
//!
//! [upstream]                         # the edge cluster's API server
//! url = "https://127.0.0.1:6443"
//! ca = "cluster-ca.crt"              # optional: CA of the API server (https)
//! token = "..."                      # optional bearer token (or token_file)
//! token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
//! client_cert = "client.crt"         # optional client certificate and key
//! client_key = "client.key"
//!
//! [admin]                            # optional /healthz, /readyz, /metrics
//! listen = "127.0.0.1:9101"
//!
//! [limits]
//! max_concurrent_streams = 1024      # streams the hub may open at once
//! stream_window = 262144             # flow-control window per request stream
//! connection_window = 8388608        # per tunnel
//! max_frame_size = 2097152           # largest frame accepted from the hub
//! data_chunk = 16384                 # largest DATA frame the agent sends
//! connect_timeout_ms = 10000         # TCP + TLS + HELLO deadline
//! discovery_interval_ms = 300000     # report the edge's resource types to the hub again this often (new CRDs)
//!
//! [reconnect]                        # exponential backoff with full jitter
//! initial_ms = 500
//! max_ms = 30000
//!
//! [sync]                             # cache sync: list-watching the types the hub caches
//! page_size = 500                    # objects per list page (limit=); a list follows `continue`
//! batch_bytes = 65536                # largest batch of snapshot objects sent to the hub (one
//!                                    # object larger than this goes alone); 1 KiB to 1 MiB
//! progress_grace_ms = 200            # a freshness check waits at most this long for the watch to
//!                                    # reach the edge's current resourceVersion before confirming
//! progress_quiet_ms = 10             # by a list; sooner once the type's watch has been quiet this
//!                                    # long (the edge moved on for other types: nothing will come)
//! watch_timeout_min_s = 300          # each watch asks the API server to end it after a random
//! watch_timeout_max_s = 600          # time in [min, max] (spreads re-watches out)
//! request_timeout_ms = 60000         # deadline of one list page or probe (a watch's response head)
//! backoff_initial_ms = 500           # after an API server failure, retry after a full-jitter
//! backoff_max_ms = 30000             # exponential backoff between these bounds
//!
//! [plugins.host]                     # GET /plugins/host: the edge host's facts as JSON (OS,
//! enabled = true                     # kernel, CPU, memory, disks, network interfaces, uptime).
//!                                    # On by default: only users granted `host` in API group
//!                                    # plugins.kubehub.io reach it, and little of it is not
//!                                    # already in the Node objects such users can read
//!
//! [plugins.native]                   # allow-listed commands run on the edge host
//!                                    # (`kubehub ctl native`); nothing else ever runs
//! enabled = true                     # false: every /plugins/native request is 404
//! max_running = 16                   # commands running at once (all users together); more: 429
//!
//! [[plugins.native.commands]]        # one allowed command (none by default)
//! name = "journal"                   # /plugins/native/journal; a DNS label (a-z, 0-9, -),
//!                                    # what grants name in resourceNames
//! description = "The last lines of a systemd unit's journal"
//! argv = ["journalctl", "--no-pager", "-u", "{unit}", "-n", "{lines}", "--since=-{hours}h"]
//!                                    # run directly (never through a shell): the program
//!                                    # (argv[0], an absolute path or looked up in the PATH
//!                                    # below) and its arguments. `{name}` is replaced by the
//!                                    # caller's value of argument `name`, as a whole element
//!                                    # or a part of one; `{{` and `}}` are literal braces.
//!                                    # argv[0] takes no placeholder; every placeholder must be
//!                                    # declared below and every declared argument used
//! args.unit = { values = ["kubelet", "containerd"] }  # one of these exactly
//! args.lines = { pattern = "[0-9]{1,4}" }  # or a regular expression (Rust `regex` syntax)
//! args.hours = { pattern = "[1-9][0-9]?" } # the whole value must match (it is anchored). A
//!                                    # value may hold any character a pattern admits (spaces,
//!                                    # `;`, `$(...)`: they reach the program as they are), but
//!                                    # mind values starting with `-`, which many programs read
//!                                    # as options. Every argument is required; at most 4096 bytes
//! timeout_ms = 10000                 # killed (its whole process group, SIGKILL) after this;
//!                                    # 1 to 86400000, default 30000
//! user = "nobody"                    # run as this user (name or uid; its uid and primary gid,
//!                                    # no supplementary groups). Default: the agent's own user.
//!                                    # Unknown users are refused when the configuration is
//!                                    # loaded; another user than the agent's needs the agent to
//!                                    # run as root (checked when it starts). Every command runs
//!                                    # with an empty environment but
//!                                    # PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin,
//!                                    # in `/`, with stdin from /dev/null, in its own process
//!                                    # group (killed with it on timeout, when the caller goes
//!                                    # away, and once the command exits: nothing it started
//!                                    # outlives it)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading failed.
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// Malformed TOML or unknown keys.
    #[error("parsing {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
    /// Out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// TLS towards the hubs. With `[meta]`, the files default to the state directory's.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA of the hubs.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Agent certificate.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// Agent key.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// Name to verify in hub certificates (default: `localhost`; with `[meta]`, the host of
    /// each hub's address).
    #[serde(default)]
    pub server_name: Option<String>,
}

/// The TLS files the agent uses, wherever they come from ([`AgentConfig::tls_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA of the hubs (and, with `[meta]`, of the metaserver).
    pub ca: PathBuf,
    /// The agent's certificate.
    pub cert: PathBuf,
    /// The agent's private key.
    pub key: PathBuf,
}

/// `[meta]`: enrollment with the metaserver and certificate renewal (`crate::enroll`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The metaserver's base URL (`https://host:port`).
    pub url: String,
    /// Where the key, certificate, CA and enrollment (identity, hubs) are kept.
    pub state_dir: PathBuf,
    /// Renew the certificate before it expires.
    #[serde(default = "yes")]
    pub renew: bool,
    /// Deadline of one call to the metaserver (connect, TLS, request, response).
    #[serde(default = "default_meta_timeout")]
    pub request_timeout_ms: u64,
    /// First delay before retrying a failed renewal (full-jitter exponential backoff).
    #[serde(default = "default_retry_initial")]
    pub retry_initial_ms: u64,
    /// Largest delay between renewal attempts.
    #[serde(default = "default_retry_max")]
    pub retry_max_ms: u64,
    /// How often the registry of live hubs is read (`GET /v1/registry/hubs`), when the hubs
    /// come from it (agent.toml names no `hubs`).
    #[serde(default = "default_hub_refresh")]
    pub hub_refresh_ms: u64,
    /// Tunnels kept (to hubs of the registry chosen by rendezvous hashing); 0: every live hub.
    #[serde(default = "default_hubs_per_agent")]
    pub hubs_per_agent: u32,
    /// A chosen hub failing this long is replaced by the next in rendezvous order (at once if
    /// it also left the registry).
    #[serde(default = "default_failover_after")]
    pub failover_after_ms: u64,
    /// Voluntary moves of healthy tunnels (away from hubs the registry says the agent may not
    /// use, or to rebalance load) at most this many a minute; 0: never.
    #[serde(default = "default_max_moves")]
    pub max_moves_per_minute: u32,
    /// How often the agent registers itself (`PUT /v1/registry/agents/{cluster}`) with the
    /// hubs it has a tunnel up to.
    #[serde(default = "default_register_interval")]
    pub register_interval_ms: u64,
    /// Not an agent.toml option: set by [`crate::enroll::prepare`] when agent.toml names no
    /// `hubs`, so that the hubs come from the registry (`hubs` then holds the enrollment's
    /// list, used until the registry first answers).
    #[serde(skip)]
    pub hubs_from_registry: bool,
}

fn yes() -> bool {
    true
}
fn default_meta_timeout() -> u64 {
    30_000
}
fn default_retry_initial() -> u64 {
    1_000
}
fn default_retry_max() -> u64 {
    300_000
}
fn default_hub_refresh() -> u64 {
    10_000
}
fn default_hubs_per_agent() -> u32 {
    2
}
fn default_max_moves() -> u32 {
    6
}
fn default_failover_after() -> u64 {
    10_000
}
fn default_register_interval() -> u64 {
    5_000
}

impl Meta {
    /// `[meta]` with the defaults for everything but the URL and the state directory.
    pub fn new(url: impl Into<String>, state_dir: impl Into<PathBuf>) -> Meta {
        Meta {
            url: url.into(),
            state_dir: state_dir.into(),
            renew: true,
            request_timeout_ms: default_meta_timeout(),
            retry_initial_ms: default_retry_initial(),
            retry_max_ms: default_retry_max(),
            hub_refresh_ms: default_hub_refresh(),
            hubs_per_agent: default_hubs_per_agent(),
            failover_after_ms: default_failover_after(),
            max_moves_per_minute: default_max_moves(),
            register_interval_ms: default_register_interval(),
            hubs_from_registry: false,
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("meta.{m}")));
        if !self.url.starts_with("https://") {
            return bad("url must be https://");
        }
        if self.state_dir.as_os_str().is_empty() {
            return bad("state_dir is empty");
        }
        if self.request_timeout_ms < 100 {
            return bad("request_timeout_ms must be at least 100");
        }
        if self.retry_initial_ms == 0 || self.retry_initial_ms > self.retry_max_ms {
            return bad("retry_initial_ms must be at least 1 and at most retry_max_ms");
        }
        if !(100..=3_600_000).contains(&self.hub_refresh_ms) {
            return bad("hub_refresh_ms must be 100 to 3600000");
        }
        if !(100..=3_600_000).contains(&self.register_interval_ms) {
            return bad("register_interval_ms must be 100 to 3600000");
        }
        if self.failover_after_ms > 3_600_000 {
            return bad("failover_after_ms must be at most 3600000");
        }
        if self.max_moves_per_minute > 600 {
            return bad("max_moves_per_minute must be at most 600");
        }
        Ok(())
    }
}

/// The edge API server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Base URL.
    pub url: String,
    /// CA (https).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Client certificate.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// Client key.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

impl Upstream {
    /// The API server at `url`, without credentials or a CA of its own.
    pub fn at(url: impl Into<String>) -> Upstream {
        Upstream {
            url: url.into(),
            ca: None,
            token: None,
            token_file: None,
            client_cert: None,
            client_key: None,
        }
    }
}

/// Admin endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Address.
    pub listen: SocketAddr,
}

/// Limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Streams the hub may open at once.
    pub max_concurrent_streams: u32,
    /// Window per request stream.
    pub stream_window: u32,
    /// Window per tunnel.
    pub connection_window: u32,
    /// Largest frame accepted.
    pub max_frame_size: u32,
    /// Largest DATA frame sent.
    pub data_chunk: usize,
    /// TCP + TLS + HELLO deadline.
    pub connect_timeout_ms: u64,
    /// The edge API server's discovery is read and reported to the hub when a tunnel comes
    /// up and again this often (custom resource types come and go); a failed read is retried
    /// within a tenth of this (at least 1 s).
    pub discovery_interval_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: 1024,
            stream_window: 256 * 1024,
            connection_window: 8 * 1024 * 1024,
            max_frame_size: kubehub_wire::DEFAULT_MAX_FRAME_SIZE,
            data_chunk: 16 * 1024,
            connect_timeout_ms: 10_000,
            discovery_interval_ms: 300_000,
        }
    }
}

impl Limits {
    /// What the agent announces in HELLO.
    pub fn settings(&self) -> kubehub_wire::Settings {
        kubehub_wire::Settings {
            max_frame_size: self.max_frame_size,
            max_concurrent_streams: self.max_concurrent_streams,
            initial_stream_window: self.stream_window,
            initial_sync_window: self.max_frame_size.max(4 * 1024 * 1024),
            initial_connection_window: self.connection_window,
        }
    }
}

/// Reconnection backoff.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    /// First delay.
    pub initial_ms: u64,
    /// Largest delay.
    pub max_ms: u64,
}

impl Default for Reconnect {
    fn default() -> Self {
        Reconnect {
            initial_ms: 500,
            max_ms: 30_000,
        }
    }
}

/// `[sync]`: how the agent list-watches each resource type the hub caches (the reflector,
/// `crate::reflector`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReflectorConfig {
    /// Objects per list page (`limit`); a list follows `continue` tokens to the end.
    pub page_size: u32,
    /// Largest batch of snapshot objects (the sum of their JSON sizes) sent to the hub at once;
    /// an object larger than this is sent alone. The batch travels in one frame, so it must stay
    /// well below the hub's maximum frame size (2 MiB by default): 1 KiB to 1 MiB.
    pub batch_bytes: usize,
    /// A freshness check (the hub's PROGRESS_REQUEST) first reads the edge's current
    /// resourceVersion; if the watch has not delivered that far, the reflector waits this long
    /// for it before confirming with a list compared against what it sent.
    pub progress_grace_ms: u64,
    /// While it waits, a watch that delivers nothing of this type for this long means the
    /// edge's version moved on through other types (a quiet type in a busy cluster): the
    /// reflector confirms by list then, rather than waiting out `progress_grace_ms`. Each event
    /// of the type restarts the quiet period (never past the grace). 0 lists at once.
    pub progress_quiet_ms: u64,
    /// Each watch asks the API server to end it after a random time between
    /// `watch_timeout_min_s` and `watch_timeout_max_s` seconds (client-go draws from 5-10 min),
    /// so the watches of many types and agents do not restart in step.
    pub watch_timeout_min_s: u64,
    /// See `watch_timeout_min_s`.
    pub watch_timeout_max_s: u64,
    /// Deadline of one list page or freshness probe (head and body), and of a watch's response
    /// head. A watch that sends nothing (not even a bookmark) for its timeout plus this long is
    /// considered dead and restarted.
    pub request_timeout_ms: u64,
    /// First retry delay after the API server failed (full-jitter exponential backoff).
    pub backoff_initial_ms: u64,
    /// Largest retry delay.
    pub backoff_max_ms: u64,
}

impl Default for ReflectorConfig {
    fn default() -> Self {
        ReflectorConfig {
            page_size: 500,
            batch_bytes: 64 * 1024,
            progress_grace_ms: 200,
            progress_quiet_ms: 10,
            watch_timeout_min_s: 300,
            watch_timeout_max_s: 600,
            request_timeout_ms: 60_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
        }
    }
}

impl ReflectorConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(format!("sync.{m}")));
        if !(1..=100_000).contains(&self.page_size) {
            return bad("page_size must be 1 to 100000");
        }
        if !(1024..=1024 * 1024).contains(&self.batch_bytes) {
            return bad("batch_bytes must be 1024 to 1048576");
        }
        if self.progress_grace_ms > 60_000 {
            return bad("progress_grace_ms must be at most 60000");
        }
        if self.watch_timeout_min_s == 0 || self.watch_timeout_min_s > self.watch_timeout_max_s {
            return bad("watch_timeout_min_s must be at least 1 and at most watch_timeout_max_s");
        }
        if self.watch_timeout_max_s > 24 * 3600 {
            return bad("watch_timeout_max_s must be at most 86400");
        }
        if self.request_timeout_ms < 100 {
            return bad("request_timeout_ms must be at least 100");
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            return bad("backoff_initial_ms must be at least 1 and at most backoff_max_ms");
        }
        Ok(())
    }
}

/// `[plugins]`: what the agent serves besides the edge API server, under `/plugins/<name>`
/// (`crate::plugin`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// `[plugins.host]`: the edge host's facts.
    #[serde(default)]
    pub host: HostConfig,
    /// `[plugins.native]`: allow-listed commands.
    #[serde(default)]
    pub native: NativeConfig,
}

impl PluginsConfig {
    /// Checks the commands (names, templates, argument rules, timeouts, users).
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::plugin::native::Native::compile(&self.native).map(|_| ())
    }
}

/// `[plugins.host]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Serve `GET /plugins/host`.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig { enabled: true }
    }
}

/// `[plugins.native]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeConfig {
    /// Serve `/plugins/native` (false: 404, whatever the commands).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Commands running at once, all callers together; beyond, 429.
    #[serde(default = "default_max_running")]
    pub max_running: u32,
    /// The allowed commands.
    #[serde(default)]
    pub commands: Vec<NativeCommand>,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            enabled: true,
            max_running: default_max_running(),
            commands: Vec::new(),
        }
    }
}

fn default_max_running() -> u32 {
    16
}

fn default_command_timeout() -> u64 {
    30_000
}

/// `[[plugins.native.commands]]`: one allowed command.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NativeCommand {
    /// Its name in `/plugins/native/<name>` (a DNS label).
    pub name: String,
    /// What it does, for `GET /plugins/native`.
    #[serde(default)]
    pub description: String,
    /// The program and its arguments, with `{placeholders}`.
    pub argv: Vec<String>,
    /// The placeholders' rules.
    #[serde(default)]
    pub args: std::collections::BTreeMap<String, ArgRule>,
    /// Killed after this long.
    #[serde(default = "default_command_timeout")]
    pub timeout_ms: u64,
    /// Run as this user (name or uid); default: the agent's user.
    #[serde(default)]
    pub user: Option<RunAs>,
}

/// A user, by name or uid.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RunAs {
    /// A uid.
    Uid(u32),
    /// A user name.
    Name(String),
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunAs::Uid(u) => write!(f, "uid {u}"),
            RunAs::Name(n) => write!(f, "{n:?}"),
        }
    }
}

/// What values an argument admits: one of `values`, or a whole match of `pattern`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgRule {
    /// The admitted values.
    #[serde(default)]
    pub values: Vec<String>,
    /// A regular expression the whole value must match.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster served (with `[meta]`, empty until enrollment fills it in).
    #[serde(default)]
    pub cluster_id: String,
    /// This instance.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Hubs to dial, each kept forever. With `[meta]` it may be left out: the hubs then come
    /// from the metaserver's registry (`crate::hubs`), starting with the enrollment's list.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// The cluster's labels (sent in HELLO).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The source address of connections to hubs (e.g. `"10.0.0.5"` on a multi-homed edge
    /// host). Default: the kernel's choice. The load harness gives each simulated agent its
    /// own address in 127.0.0.0/8, so that tens of thousands of tunnels to one hub do not run
    /// out of ephemeral ports.
    #[serde(default)]
    pub local_address: Option<std::net::IpAddr>,
    /// TLS towards the hubs.
    #[serde(default)]
    pub tls: Tls,
    /// Enrollment with the metaserver.
    #[serde(default)]
    pub meta: Option<Meta>,
    /// The edge API server.
    pub upstream: Upstream,
    /// Admin endpoints.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Backoff.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// Cache sync.
    #[serde(default)]
    pub sync: ReflectorConfig,
    /// Plugins: what the agent serves besides the edge API server (`crate::plugin`).
    #[serde(default)]
    pub plugins: PluginsConfig,
}

impl AgentConfig {
    /// Reads and checks a TOML file; relative paths are relative to it.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let cfg = AgentConfig::read(path)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a TOML file without checking it (the command line may complete it first, then
    /// [`AgentConfig::validate`]); relative paths are relative to it.
    pub fn read(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_owned(), e))?;
        let mut cfg: AgentConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_owned(), e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(meta) = &mut cfg.meta {
            fix(&mut meta.state_dir);
        }
        for p in [
            &mut cfg.tls.ca,
            &mut cfg.tls.cert,
            &mut cfg.tls.key,
            &mut cfg.upstream.ca,
            &mut cfg.upstream.token_file,
            &mut cfg.upstream.client_cert,
            &mut cfg.upstream.client_key,
        ]
        .into_iter()
        .flatten()
        {
            fix(p);
        }
        Ok(cfg)
    }

    /// A configuration with the defaults, for an agent that enrolls with the metaserver and
    /// has no agent.toml (`kubehub agent --join … --meta … --state-dir …`).
    pub fn enrolling(meta: Meta, upstream: Upstream) -> AgentConfig {
        AgentConfig {
            cluster_id: String::new(),
            agent_id: None,
            hubs: Vec::new(),
            labels: Default::default(),
            local_address: None,
            tls: Tls::default(),
            meta: Some(meta),
            upstream,
            admin: None,
            limits: Limits::default(),
            reconnect: Reconnect::default(),
            sync: ReflectorConfig::default(),
            plugins: PluginsConfig::default(),
        }
    }

    /// Checks ranges. With `[meta]`, `cluster_id`, `hubs` and the `[tls]` files may be left
    /// for enrollment to provide.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.meta {
            Some(meta) => meta.validate()?,
            None => {
                if self.cluster_id.is_empty() {
                    return Err(ConfigError::Invalid(
                        "cluster_id is empty (or enroll with the metaserver: [meta])".into(),
                    ));
                }
                if self.hubs.is_empty() {
                    return Err(ConfigError::Invalid(
                        "hubs is empty (or enroll with the metaserver: [meta])".into(),
                    ));
                }
                self.tls_files()?;
            }
        }
        kubehub_wire::validate_settings(&self.limits.settings())
            .map_err(|e| ConfigError::Invalid(format!("limits: {e}")))?;
        if !(self.upstream.url.starts_with("http://") || self.upstream.url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid(
                "upstream.url must be http:// or https://".into(),
            ));
        }
        if self.upstream.client_cert.is_some() != self.upstream.client_key.is_some() {
            return Err(ConfigError::Invalid(
                "upstream.client_cert and client_key go together".into(),
            ));
        }
        self.sync.validate()?;
        self.plugins.validate()?;
        Ok(())
    }

    /// The CA, certificate and key files: as `[tls]` names them, else (with `[meta]`) in the
    /// state directory (`ca.crt`, `agent.crt`, `agent.key`).
    pub fn tls_files(&self) -> Result<TlsFiles, ConfigError> {
        let pick = |set: &Option<PathBuf>, name: &str, default: &str| match (set, &self.meta) {
            (Some(p), _) => Ok(p.clone()),
            (None, Some(meta)) => Ok(meta.state_dir.join(default)),
            (None, None) => Err(ConfigError::Invalid(format!(
                "tls.{name} is required (or enroll with the metaserver: [meta])"
            ))),
        };
        Ok(TlsFiles {
            ca: pick(&self.tls.ca, "ca", crate::enroll::CA_FILE)?,
            cert: pick(&self.tls.cert, "cert", crate::enroll::CERT_FILE)?,
            key: pick(&self.tls.key, "key", crate::enroll::KEY_FILE)?,
        })
    }

    /// The name to verify in the certificate of `hub` (`host:port`): `tls.server_name`, else
    /// with `[meta]` the hub's host, else `localhost`.
    pub fn server_name_for(&self, hub: &str) -> String {
        if let Some(name) = &self.tls.server_name {
            return name.clone();
        }
        if self.meta.is_none() {
            return "localhost".into();
        }
        host_of(hub).to_owned()
    }

    /// The agent id to announce.
    pub fn agent_id(&self) -> String {
        self.agent_id
            .clone()
            .unwrap_or_else(|| self.cluster_id.clone())
    }
}

/// The host of `host:port` or `[v6]:port` (the whole string if it has no port).
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split_once(']').map(|(h, _)| h).unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    }
}

/// `[upstream]` for an agent running in a pod: the API server from `KUBERNETES_SERVICE_HOST`
/// and `_PORT`, the service account's CA and token. `None` outside a pod.
pub fn in_cluster_upstream() -> Option<Upstream> {
    let host = std::env::var("KUBERNETES_SERVICE_HOST").ok()?;
    let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let sa = Path::new("/var/run/secrets/kubernetes.io/serviceaccount");
    Some(Upstream {
        url: format!("https://{host}:{port}"),
        ca: Some(sa.join("ca.crt")),
        token: None,
        token_file: Some(sa.join("token")),
        client_cert: None,
        client_key: None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The example in this module's documentation is a valid agent.toml whose `[sync]` values
    /// are the defaults.
    #[test]
    fn documented_example_parses_with_default_sync() {
        let src = include_str!("config.rs");
        let toml_text = kubehub_testkit::documented_toml(src);
        assert!(toml_text.contains("[sync]"), "{toml_text}");
        let cfg: AgentConfig = toml::from_str(&toml_text).unwrap();
        assert_eq!(cfg.sync, ReflectorConfig::default());
        cfg.validate().unwrap();
        let meta = cfg.meta.clone().unwrap();
        let defaults = Meta::new(meta.url.clone(), meta.state_dir.clone());
        assert_eq!(
            meta, defaults,
            "the documented [meta] values are the defaults"
        );
    }

    fn minimal(extra: &str) -> Result<AgentConfig, ConfigError> {
        let text = format!("{extra}\n[upstream]\nurl = \"http://127.0.0.1:1\"\n");
        let cfg: AgentConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    #[test]
    fn without_meta_identity_hubs_and_tls_files_are_required() {
        let full =
            "cluster_id = \"e\"\nhubs = [\"h:1\"]\n[tls]\nca = \"ca\"\ncert = \"c\"\nkey = \"k\"\n";
        let cfg = minimal(full).unwrap();
        assert_eq!(cfg.server_name_for("hub.example.com:8444"), "localhost");
        assert_eq!(
            cfg.tls_files().unwrap(),
            TlsFiles {
                ca: "ca".into(),
                cert: "c".into(),
                key: "k".into()
            }
        );
        for (without, why) in [
            ("cluster_id = \"e\"\n", "cluster_id"),
            ("hubs = [\"h:1\"]\n", "hubs"),
            ("cert = \"c\"\n", "tls.cert"),
        ] {
            let e = minimal(&full.replace(without, "")).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("[meta]"), "{e}");
        }
    }

    #[test]
    fn with_meta_the_state_directory_holds_the_tls_files() {
        let cfg =
            minimal("[meta]\nurl = \"https://meta:9443\"\nstate_dir = \"/var/lib/kh\"\n").unwrap();
        assert!(cfg.cluster_id.is_empty() && cfg.hubs.is_empty());
        let meta = cfg.meta.clone().unwrap();
        assert!(meta.renew);
        assert_eq!(
            cfg.tls_files().unwrap(),
            TlsFiles {
                ca: "/var/lib/kh/ca.crt".into(),
                cert: "/var/lib/kh/agent.crt".into(),
                key: "/var/lib/kh/agent.key".into()
            }
        );
        assert_eq!(
            cfg.server_name_for("hub-1.example.com:8444"),
            "hub-1.example.com"
        );
        assert_eq!(cfg.server_name_for("10.0.0.1:8444"), "10.0.0.1");
        assert_eq!(cfg.server_name_for("[::1]:8444"), "::1");
        // A file named in [tls] wins over the state directory.
        let cfg = minimal(
            "[tls]\ncert = \"/etc/agent.crt\"\nserver_name = \"hubs.example.com\"\n[meta]\nurl = \"https://m\"\nstate_dir = \"s\"\n",
        )
        .unwrap();
        let files = cfg.tls_files().unwrap();
        assert_eq!(files.cert, PathBuf::from("/etc/agent.crt"));
        assert_eq!(files.key, PathBuf::from("s/agent.key"));
        assert_eq!(cfg.server_name_for("h:1"), "hubs.example.com");
        for bad in [
            "[meta]\nurl = \"http://meta\"\nstate_dir = \"s\"\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"\"\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nretry_initial_ms = 0\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nrequest_timeout_ms = 1\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nhub_refresh_ms = 10\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nregister_interval_ms = 0\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nfailover_after_ms = 86400000\n",
            "[meta]\nurl = \"https://meta\"\nstate_dir = \"s\"\nmax_moves_per_minute = 1000\n",
        ] {
            assert!(minimal(bad).is_err(), "{bad}");
        }
        assert!(minimal("[meta]\nurl = \"https://m\"\nstate_dir = \"s\"\ntypo = 1\n").is_err());
        // The registry's options; hubs_from_registry is not an option.
        let cfg = minimal(
            "[meta]\nurl = \"https://m\"\nstate_dir = \"s\"\nhubs_per_agent = 0\nfailover_after_ms = 0\n",
        )
        .unwrap();
        let meta = cfg.meta.unwrap();
        assert_eq!((meta.hubs_per_agent, meta.failover_after_ms), (0, 0));
        assert_eq!(meta.hub_refresh_ms, 10_000);
        assert_eq!(meta.max_moves_per_minute, 6);
        let defaults = minimal("[meta]\nurl = \"https://m\"\nstate_dir = \"s\"\n").unwrap();
        assert_eq!(defaults.meta.unwrap().hubs_per_agent, 2);
        assert!(!meta.hubs_from_registry);
        assert!(minimal(
            "[meta]\nurl = \"https://m\"\nstate_dir = \"s\"\nhubs_from_registry = true\n"
        )
        .is_err());
    }

    #[test]
    fn sync_options_are_validated() {
        let parse = |t: &str| toml::from_str::<ReflectorConfig>(t);
        let c = parse("page_size = 100\nprogress_grace_ms = 0").unwrap();
        assert_eq!(c.page_size, 100);
        assert_eq!(c.batch_bytes, 64 * 1024);
        c.validate().unwrap();
        assert!(parse("pagesize = 1").is_err(), "unknown keys are refused");
        for bad in [
            "page_size = 0",
            "batch_bytes = 100",
            "batch_bytes = 4194304",
            "watch_timeout_min_s = 0",
            "watch_timeout_min_s = 700",
            "request_timeout_ms = 10",
            "backoff_initial_ms = 0",
            "backoff_initial_ms = 60000",
            "progress_grace_ms = 600000",
        ] {
            assert!(parse(bad).unwrap().validate().is_err(), "{bad}");
        }
    }
}
