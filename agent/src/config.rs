//! `agent.toml`: every option of the agent, with its default.
//!
//! ```toml
//! cluster_id = "edge-1"              # must match the CN of the agent's certificate
//! agent_id = "edge-1-a"              # this instance (default: cluster_id)
//! hubs = ["hub.example.com:8444"]    # one tunnel per hub
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
        Ok(())
    }

    /// The agent id to announce.
    pub fn agent_id(&self) -> String {
        self.agent_id
            .clone()
            .unwrap_or_else(|| self.cluster_id.clone())
    }
}
