//! `agent.toml`: every option of the agent, with its default.
//!
//! ```toml
//! cluster_id = "edge-1"              # must match the CN of the agent's certificate
//! agent_id = "edge-1-a"              # this instance (default: cluster_id)
//! hubs = ["hub.example.com:8444"]    # one tunnel per hub
//! labels = { region = "eu", tier = "small" }  # the cluster's labels, sent in HELLO: hubs
//!                                    # choose the cached types by them ([[cache.overrides]])
//!
//! [tls]                              # mutual TLS towards the hubs
//! ca = "ca.crt"                      # CA of the hubs' certificates
//! cert = "agent.crt"                 # this agent's certificate (CN = cluster_id)
//! key = "agent.key"
//! server_name = "localhost"          # name to verify in the hub certificate
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
//! progress_grace_ms = 200            # a freshness check waits this long for the watch to reach
//!                                    # the edge's current resourceVersion before confirming by a list
//! watch_timeout_min_s = 300          # each watch asks the API server to end it after a random
//! watch_timeout_max_s = 600          # time in [min, max] (spreads re-watches out)
//! request_timeout_ms = 60000         # deadline of one list page or probe (a watch's response head)
//! backoff_initial_ms = 500           # after an API server failure, retry after a full-jitter
//! backoff_max_ms = 30000             # exponential backoff between these bounds
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

/// TLS towards the hubs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA of the hubs.
    pub ca: PathBuf,
    /// Agent certificate.
    pub cert: PathBuf,
    /// Agent key.
    pub key: PathBuf,
    /// Name to verify in hub certificates.
    #[serde(default = "default_server_name")]
    pub server_name: String,
}

fn default_server_name() -> String {
    "localhost".into()
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

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The cluster served.
    pub cluster_id: String,
    /// This instance.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// Hubs to dial.
    pub hubs: Vec<String>,
    /// The cluster's labels (sent in HELLO).
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// TLS towards the hubs.
    pub tls: Tls,
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
}

impl AgentConfig {
    /// Reads a TOML file; relative paths are relative to it.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
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
        fix(&mut cfg.tls.ca);
        fix(&mut cfg.tls.cert);
        fix(&mut cfg.tls.key);
        for p in [
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
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.cluster_id.is_empty() {
            return Err(ConfigError::Invalid("cluster_id is empty".into()));
        }
        if self.hubs.is_empty() {
            return Err(ConfigError::Invalid("hubs is empty".into()));
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
        Ok(())
    }

    /// The agent id to announce.
    pub fn agent_id(&self) -> String {
        self.agent_id
            .clone()
            .unwrap_or_else(|| self.cluster_id.clone())
    }
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
