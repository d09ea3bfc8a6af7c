//! `meta.toml`: every option of the metaserver, with its default.
//!
//! ```toml
//! listen = "127.0.0.1:7443"          # HTTPS API (JSON) for `kubehub ctl`, hubs and agents
//! server_names = ["localhost", "127.0.0.1"]   # names in meta's serving certificate (issued
//!                                    # by its own CA at start)
//! admin_token_file = "admin.token"   # bearer tokens with every right, one per line; created
//!                                    # with one random token when the file does not exist
//! hub_url = "https://127.0.0.1:8443" # the hubs' user-facing URL written into kubeconfigs;
//!                                    # empty: the endpoint of a live registered hub
//! hub_ca_file = ""                   # CA written into kubeconfigs; empty: meta's own CA
//!                                    # (hubs enrolled with meta have certificates from it)
//! max_body_bytes = 1048576           # larger request bodies: 413
//!
//! [tokens]
//! default_lifetime_s = 86400         # a kubeconfig's token lives this long unless asked otherwise
//! max_lifetime_s = 2592000           # and never longer than this (never unlimited)
//! max_per_user = 20                  # live tokens per user; more: 409 (revoke old ones)
//!
//! [certs]
//! agent_lifetime_s = 2592000         # agent client certificates (renewed at 70-90% of life)
//! hub_lifetime_s = 2592000           # hub serving certificates
//! join_token_ttl_s = 86400           # a join token must be used within this
//!
//! [registry]
//! ttl_s = 15                         # a hub or agent that stops heartbeating disappears after this
//! refresh_s = 60                     # a heartbeat that changes nothing only keeps the lease alive
//!                                    # (no store write) unless the record was written this long
//!                                    # ago: `updated` is when it last changed or was refreshed.
//!                                    # 0: write every heartbeat
//!
//! [sync]
//! heartbeat_ms = 5000                # the hubs' change feed carries a heartbeat at least this often
//!
//! [store]                            # meta/src/store/mod.rs says what the store guarantees
//! backend = "embedded"               # "embedded" (a local file) or "etcd"
//! path = "meta.redb"                 # embedded: the database file (created when missing)
//! endpoints = ["http://127.0.0.1:2379"]   # etcd: client URLs
//! prefix = "/kubehub/"               # etcd: every key lives under this prefix
//! dial_timeout_ms = 5000             # etcd: connecting to an endpoint
//! request_timeout_ms = 10000         # etcd: each request (not the life of a watch)
//! watch_history = 10000              # embedded: events kept for feeds that resume
//!
//! [console]                          # the operations console, https://<listen>/console/
//! enabled = true                     # serve it (behind the admin token: see meta/src/console)
//! refresh_ms = 500                   # how often an open page checks the store for changes
//!                                    # (a changed page is pushed to the browser at once)
//! traffic_interval_ms = 2000         # how often the Traffic page asks the hubs again
//! traffic_timeout_ms = 1000          # each hub's admin `/traffic` must answer within this;
//!                                    # a hub that does not is shown as not answering
//! [audit]                            # audit.k8s.io/v1 Events of every mutating API request
//! enabled = false                    # (tenants, users, clusters, grants, tokens, kubeconfigs,
//! sink = "file"                      # bans, limits, canary, drain, pins, enrollment): the
//! path = "/var/log/kubehub/meta-audit.log" # options are the hub's [audit]
//! max_size_mb = 100                  # (kubehub_audit::AuditConfig). Meta logs at most the
//! max_backups = 10                   # Request level (request bodies; never responses, which
//! queue = 10000                      # carry tokens), and only Metadata for enrollment,
//! write_level = "Metadata"           # renewal, kubeconfigs and join tokens (their bodies hold
//!                                    # secrets). Registry heartbeats are not audited.
//! ```
//!
//! With `backend = "etcd"` the metaserver keeps no state of its own: run as many replicas as
//! you like against one etcd (each with its own `listen`); they agree because every write is an
//! etcd transaction and every replica watches etcd.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::StoreConfig;

/// Why `meta.toml` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid TOML for this schema.
    #[error("{0}: {1}")]
    Parse(String, toml::de::Error),
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Token issuance limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tokens {
    /// Default lifetime of an issued token, seconds.
    pub default_lifetime_s: u64,
    /// Longest lifetime a token may be issued with, seconds.
    pub max_lifetime_s: u64,
    /// Live tokens a user may hold.
    pub max_per_user: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens {
            default_lifetime_s: 86_400,
            max_lifetime_s: 30 * 86_400,
            max_per_user: 20,
        }
    }
}

/// Certificate lifetimes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Certs {
    /// Agent client certificates, seconds.
    pub agent_lifetime_s: u64,
    /// Hub serving certificates, seconds.
    pub hub_lifetime_s: u64,
    /// Join tokens, seconds.
    pub join_token_ttl_s: u64,
}

impl Default for Certs {
    fn default() -> Self {
        Certs {
            agent_lifetime_s: 30 * 86_400,
            hub_lifetime_s: 30 * 86_400,
            join_token_ttl_s: 86_400,
        }
    }
}

/// The registry of hubs and agents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Lease time to live, seconds.
    pub ttl_s: i64,
    /// A heartbeat that changes nothing rewrites the record only when it was written this
    /// long ago, seconds (otherwise it only keeps the lease alive); 0: every heartbeat writes.
    pub refresh_s: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            ttl_s: 15,
            refresh_s: 60,
        }
    }
}

/// The hubs' change feed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig { heartbeat_ms: 5000 }
    }
}

/// The operations console ([`crate::console`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve `/console/`.
    pub enabled: bool,
    /// How often an open page checks the store revision, milliseconds.
    pub refresh_ms: u64,
    /// How often the Traffic page fetches the hubs' `/traffic` again, milliseconds.
    pub traffic_interval_ms: u64,
    /// Timeout of one hub's `/traffic`, milliseconds.
    pub traffic_timeout_ms: u64,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            refresh_ms: 500,
            traffic_interval_ms: 2000,
            traffic_timeout_ms: 1000,
        }
    }
}

/// Everything `meta.toml` says.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaConfig {
    /// HTTPS listen address.
    pub listen: SocketAddr,
    /// DNS names and IP addresses of the serving certificate.
    #[serde(default = "default_names")]
    pub server_names: Vec<String>,
    /// Admin bearer tokens, one per line.
    pub admin_token_file: PathBuf,
    /// The hubs' public URL for kubeconfigs.
    #[serde(default)]
    pub hub_url: String,
    /// CA for kubeconfigs (empty: meta's CA).
    #[serde(default)]
    pub hub_ca_file: Option<PathBuf>,
    /// Request body limit.
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    /// Token limits.
    #[serde(default)]
    pub tokens: Tokens,
    /// Certificate lifetimes.
    #[serde(default)]
    pub certs: Certs,
    /// Registry.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// Change feed.
    #[serde(default)]
    pub sync: SyncConfig,
    /// Storage.
    #[serde(default)]
    pub store: StoreConfig,
    /// The operations console.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// The audit log of mutating requests.
    #[serde(default)]
    pub audit: kubehub_audit::AuditConfig,
}

fn default_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

fn default_body() -> usize {
    1 << 20
}

impl MetaConfig {
    /// Reads and checks `meta.toml`; relative paths are taken from the file's directory.
    pub fn load(path: &Path) -> Result<MetaConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read(path.display().to_string(), e))?;
        let mut cfg = MetaConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse(_, e) => ConfigError::Parse(path.display().to_string(), e),
            e => e,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut cfg.admin_token_file);
        if let Some(p) = cfg.hub_ca_file.as_mut() {
            if p.as_os_str().is_empty() {
                cfg.hub_ca_file = None;
            } else {
                fix(p);
            }
        }
        fix(&mut cfg.store.path);
        if let Some(p) = cfg.audit.path.as_mut() {
            fix(p);
        }
        Ok(cfg)
    }

    /// Parses and checks TOML text.
    pub fn parse(text: &str) -> Result<MetaConfig, ConfigError> {
        let cfg: MetaConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse("meta.toml".into(), e))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.tokens.default_lifetime_s == 0
            || self.tokens.default_lifetime_s > self.tokens.max_lifetime_s
        {
            return bad("tokens.default_lifetime_s must be > 0 and <= tokens.max_lifetime_s");
        }
        self.audit.validate().map_err(ConfigError::Invalid)?;
        if self.tokens.max_per_user == 0 {
            return bad("tokens.max_per_user must be > 0");
        }
        if self.certs.agent_lifetime_s < 5 || self.certs.hub_lifetime_s < 5 {
            return bad("certificate lifetimes must be at least 5 s");
        }
        if self.registry.ttl_s < 2 {
            return bad("registry.ttl_s must be at least 2");
        }
        if self.registry.refresh_s > 86_400 {
            return bad("registry.refresh_s must be at most 86400");
        }
        if self.sync.heartbeat_ms < 100 {
            return bad("sync.heartbeat_ms must be at least 100");
        }
        let c = &self.console;
        if !(50..=60_000).contains(&c.refresh_ms) {
            return bad("console.refresh_ms must be 50 to 60000");
        }
        if !(100..=600_000).contains(&c.traffic_interval_ms) {
            return bad("console.traffic_interval_ms must be 100 to 600000");
        }
        if !(50..=60_000).contains(&c.traffic_timeout_ms) {
            return bad("console.traffic_timeout_ms must be 50 to 60000");
        }
        if self.max_body_bytes < 1024 {
            return bad("max_body_bytes must be at least 1024");
        }
        if !self.hub_url.is_empty() && !self.hub_url.starts_with("https://") {
            return bad("hub_url must be an https:// URL");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_example_parses_with_the_defaults() {
        let text = kubehub_testkit::documented_toml(include_str!("config.rs"));
        assert!(text.contains("[store]"), "{text}");
        let cfg = MetaConfig::parse(&text).expect("the documented meta.toml parses");
        let (t, d) = (&cfg.tokens, Tokens::default());
        assert_eq!(
            (t.default_lifetime_s, t.max_lifetime_s, t.max_per_user),
            (d.default_lifetime_s, d.max_lifetime_s, d.max_per_user)
        );
        let (c, d) = (&cfg.certs, Certs::default());
        assert_eq!(
            (c.agent_lifetime_s, c.hub_lifetime_s, c.join_token_ttl_s),
            (d.agent_lifetime_s, d.hub_lifetime_s, d.join_token_ttl_s)
        );
        assert_eq!(cfg.registry.ttl_s, RegistryConfig::default().ttl_s);
        assert_eq!(cfg.registry.refresh_s, RegistryConfig::default().refresh_s);
        assert_eq!(cfg.sync.heartbeat_ms, SyncConfig::default().heartbeat_ms);
        assert_eq!(cfg.store, StoreConfig::default());
        assert_eq!(cfg.max_body_bytes, default_body());
        assert_eq!(cfg.server_names, default_names());
        let (c, d) = (&cfg.console, ConsoleConfig::default());
        assert_eq!(
            (
                c.enabled,
                c.refresh_ms,
                c.traffic_interval_ms,
                c.traffic_timeout_ms
            ),
            (
                d.enabled,
                d.refresh_ms,
                d.traffic_interval_ms,
                d.traffic_timeout_ms
            )
        );
    }

    #[test]
    fn bad_values_are_refused_with_the_option_named() {
        let base = "listen = \"127.0.0.1:0\"\nadmin_token_file = \"a\"\n";
        for (extra, word) in [
            (
                "[tokens]\ndefault_lifetime_s = 0",
                "tokens.default_lifetime_s",
            ),
            (
                "[tokens]\ndefault_lifetime_s = 100\nmax_lifetime_s = 10",
                "tokens.default_lifetime_s",
            ),
            ("[registry]\nttl_s = 1", "registry.ttl_s"),
            ("[registry]\nrefresh_s = 100000", "registry.refresh_s"),
            ("hub_url = \"http://x\"", "hub_url"),
            (
                "[console]\ntraffic_timeout_ms = 0",
                "console.traffic_timeout_ms",
            ),
            ("colour = 1", "unknown field"),
        ] {
            let err = MetaConfig::parse(&format!("{base}{extra}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(word), "{extra}: {err}");
        }
    }
}
