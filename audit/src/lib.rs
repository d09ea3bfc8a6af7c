//! The audit log of the hub and the metaserver, in the format kube-apiserver users already
//! ship to their SIEM: `audit.k8s.io/v1` `Event`s as JSON lines.
//!
//! * [`event`]: the `Event` type (and its parts), serialized exactly as kube-apiserver writes
//!   it (camelCase fields, `auditID`, `sourceIPs`, RFC 3339 timestamps with microseconds),
//!   and audit ids (a client's `Audit-ID` header is honoured; else a random UUID).
//! * [`policy`]: which level a request is logged at (`None`, `Metadata`, `Request`,
//!   `RequestResponse`): the first matching rule (by verb, resource, user, namespace), else
//!   the default level for writes or for reads.
//! * [`sink`]: where events go — a file rotated by size (at most `max_backups` old files
//!   kept) or stdout — written by a dedicated thread behind a bounded queue: the request path
//!   only ever tries to enqueue, and an event that does not fit is dropped and counted
//!   (`kubehub_audit_events_dropped_total`), never waited for.
//! * [`AuditConfig`]: the `[audit]` section shared by `hub.toml` and `meta.toml`.

pub mod event;
pub mod policy;
pub mod sink;

pub use event::{new_audit_id, Event, ObjectRef, ResponseStatus, Stage, UserInfo};
pub use policy::{Level, Policy, Rule};
pub use sink::{AuditError, Sink, SinkKind};

use serde::Deserialize;
use std::path::PathBuf;

/// `[audit]` of `hub.toml` and `meta.toml`:
///
/// ```toml
/// [audit]
/// enabled = false                  # write audit events at all
/// sink = "file"                    # "file" (rotated, below) or "stdout" (one JSON line each)
/// path = "/var/log/kubehub/audit.log" # with sink = "file" (its directory must exist)
/// max_size_mb = 100                # rotate when the file reaches this size: audit.log.1 is the
///                                  # newest old file (kube-apiserver's --audit-log-maxsize)
/// max_backups = 10                 # old files kept; older ones are deleted
///                                  # (kube-apiserver's --audit-log-maxbackup)
/// queue = 10000                    # events waiting for the writer thread; beyond, new events
///                                  # are dropped and counted (the request path never waits)
/// max_body_bytes = 65536           # Request / RequestResponse levels log JSON bodies up to this
///                                  # size; larger or non-JSON bodies are left out (and an
///                                  # annotation says why)
/// write_level = "Metadata"         # level of create/update/patch/delete/… no rule matched
/// read_level = "None"              # level of get/list/watch no rule matched
///
/// [[audit.rules]]                  # first match wins; an empty list matches everything
/// level = "RequestResponse"
/// verbs = ["create", "delete"]     # Kubernetes verbs (exec, attach and port-forward are
///                                  # "create" of pods/exec, pods/attach, pods/portforward)
/// resources = ["secrets", "apps/deployments", "pods/exec"] # resource, group/resource,
///                                  # resource/subresource; "*" any
/// users = ["alice"]                # KubeHub user names
/// namespaces = ["prod"]            # "" is cluster-scoped requests
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Write audit events.
    #[serde(default)]
    pub enabled: bool,
    /// Where to.
    #[serde(default)]
    pub sink: SinkKind,
    /// The log file (with `sink = "file"`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Rotate at this size (MiB).
    #[serde(default = "default_max_size_mb")]
    pub max_size_mb: u64,
    /// Rotated files kept.
    #[serde(default = "default_max_backups")]
    pub max_backups: usize,
    /// Events queued for the writer at most.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// Largest request/response body logged (JSON only).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Level of writes no rule matched.
    #[serde(default = "policy::default_write_level")]
    pub write_level: Level,
    /// Level of reads no rule matched.
    #[serde(default)]
    pub read_level: Level,
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

fn default_max_size_mb() -> u64 {
    100
}
fn default_max_backups() -> usize {
    10
}
fn default_queue() -> usize {
    10_000
}
fn default_max_body_bytes() -> usize {
    64 * 1024
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            enabled: false,
            sink: SinkKind::default(),
            path: None,
            max_size_mb: default_max_size_mb(),
            max_backups: default_max_backups(),
            queue: default_queue(),
            max_body_bytes: default_max_body_bytes(),
            write_level: policy::default_write_level(),
            read_level: Level::None,
            rules: Vec::new(),
        }
    }
}

impl AuditConfig {
    /// The policy these options make.
    pub fn policy(&self) -> Policy {
        Policy {
            rules: self.rules.clone(),
            write_level: self.write_level,
            read_level: self.read_level,
        }
    }

    /// Checks the section (the file's directory exists; sizes above 0). The message names
    /// the option.
    pub fn validate(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.queue == 0 {
            return Err("audit.queue must be at least 1".into());
        }
        if self.sink == SinkKind::File {
            let Some(path) = &self.path else {
                return Err("audit.path is required with audit.sink = \"file\"".into());
            };
            if self.max_size_mb == 0 {
                return Err("audit.max_size_mb must be at least 1".into());
            }
            // A relative path is checked once the file that names it has made it absolute
            // (and again when the sink starts).
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if path.is_absolute() && !dir.is_dir() {
                return Err(format!(
                    "audit.path {}: directory {} does not exist",
                    path.display(),
                    dir.display()
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_with_rules_and_defaults() {
        let c: AuditConfig = toml_like(
            r#"{"enabled": true, "sink": "stdout", "write_level": "Request",
                "rules": [{"level": "None", "verbs": ["get"], "resources": ["events"]}]}"#,
        );
        assert!(c.enabled);
        assert_eq!(c.sink, SinkKind::Stdout);
        assert_eq!(c.write_level, Level::Request);
        assert_eq!(c.read_level, Level::None);
        assert_eq!(c.policy().rules.len(), 1);
        assert_eq!(c.queue, 10_000);
        assert!(c.validate().is_ok());
        let c: AuditConfig = toml_like(r#"{"enabled": true, "sink": "file"}"#);
        assert!(c.validate().unwrap_err().contains("audit.path"));
        let c: AuditConfig =
            toml_like(r#"{"enabled": true, "sink": "file", "path": "/nonexistent/dir/a.log"}"#);
        assert!(c.validate().unwrap_err().contains("does not exist"));
    }

    fn toml_like(json: &str) -> AuditConfig {
        serde_json::from_str(json).unwrap()
    }
}
