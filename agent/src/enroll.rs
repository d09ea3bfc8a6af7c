//! Enrollment with the metaserver, and certificate renewal (`[meta]` in agent.toml).
//!
//! **Join** (first start, `kubehub agent --join khJ.<id>.<secret>.<CA hash>`): the agent
//! 1. makes its key and a certificate signing request (the key never leaves it);
//! 2. fetches the CA (`GET /v1/ca`) *without* verifying the metaserver's certificate (it has
//!    nothing to verify it with yet), and accepts the answer only if the SHA-256 of the CA
//!    certificate is the one the token pins (kubeadm's discovery hash); otherwise it stops,
//!    naming both hashes, before the token's secret went anywhere;
//! 3. `POST /v1/enroll {token, csr}` over TLS verified with exactly that CA; the answer is
//!    the certificate (CN = the cluster id the metaserver decided), the CA, the identity and
//!    the hubs to dial;
//! 4. checks the certificate (chains to the pinned CA as a client certificate, is for its key,
//!    CN = identity) and writes `ca.crt`, `agent.key` (mode 0600), `agent.crt` and
//!    `enrollment.json` (identity, hubs) to the state directory, each atomically.
//!
//! Later starts find the certificate there and need no token ([`prepare`]).
//!
//! **Renewal** ([`Renewal`], when `renew = true`): at a random point between 70% and 90% of the
//! certificate's life, a new key and request go to `POST /v1/renew` over mutual TLS with the
//! current certificate; the new certificate and key are written (temporary file + rename),
//! then swapped into the [`ReloadingClientCert`] the tunnels dial with: new dials present it,
//! tunnels already up carry on. Failures are retried with full-jitter exponential backoff
//! (`retry_initial_ms` … `retry_max_ms`). Metrics: `kubehub_agent_cert_expiry_seconds`,
//! `kubehub_agent_cert_renewals_total`, `kubehub_agent_cert_renewal_failures_total`.
//!
//! The exchange with the metaserver, the state directory's files and the renewal loop are
//! [`kubehub_enroll`]'s, shared with the hub; what is the agent's here: agent.toml's `[meta]`,
//! `enrollment.json` and the agent's metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubehub_enroll::{Enroller, RenewalEvents, Renewed, Role, StateFiles};
use kubehub_pki::ReloadingClientCert;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{AgentConfig, Meta, TlsFiles};
use crate::Metrics;

pub use kubehub_enroll::{EnrollError, CA_FILE};

/// The agent's private key in the state directory.
pub const KEY_FILE: &str = "agent.key";
/// The agent's certificate in the state directory.
pub const CERT_FILE: &str = "agent.crt";
/// What the enrollment said (identity, hubs) in the state directory.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// What the enrollment said, kept as `enrollment.json` in the state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// The identity enrolled as (the cluster id; the certificate's CN).
    pub identity: String,
    /// The hubs the metaserver named, `host:port`.
    #[serde(default)]
    pub hubs: Vec<String>,
    /// The metaserver enrolled with.
    #[serde(default)]
    pub meta: String,
}

/// The shared enrollment client for `[meta]`, writing the files `files` names.
pub(crate) fn enroller(meta: &Meta, files: &TlsFiles) -> Result<Enroller, EnrollError> {
    Enroller::new(
        Role::Agent,
        &meta.url,
        Duration::from_millis(meta.request_timeout_ms),
        StateFiles {
            dir: meta.state_dir.clone(),
            ca: files.ca.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
    )
}

/// `enrollment.json` for a saved certificate of `identity` (identity from the certificate:
/// it is the truth about who the agent is; without the file, no hubs).
fn load_enrollment(meta: &Meta, identity: &str) -> Result<Enrollment, EnrollError> {
    let path = meta.state_dir.join(ENROLLMENT_FILE);
    let mut enrollment = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice::<Enrollment>(&bytes).map_err(|e| EnrollError::State {
                path: path.clone(),
                why: e.to_string(),
            })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Enrollment {
            identity: identity.to_owned(),
            hubs: Vec::new(),
            meta: meta.url.clone(),
        },
        Err(e) => {
            return Err(EnrollError::State {
                path,
                why: e.to_string(),
            })
        }
    };
    enrollment.identity = identity.to_owned();
    Ok(enrollment)
}

/// Makes sure an agent with `[meta]` has a certificate: the one saved in the state directory,
/// else one obtained by joining with `join` (a join token). Then fills in what agent.toml may
/// leave out: `cluster_id` (the identity enrolled as; an error if agent.toml names another)
/// and `hubs` (the metaserver's list, unless agent.toml has one). Without a `hubs` list in
/// agent.toml, the agent takes its hubs from the metaserver's registry (`[meta]
/// hubs_from_registry` is set; `hubs` holds the enrollment's list, dialed until the registry
/// first answers, and may be empty). Without `[meta]`, does nothing (and refuses a join
/// token: there is nowhere to join).
///
/// With a valid saved certificate the token is not used (the state directory must be emptied
/// to join again); with an expired one, the token joins again.
pub async fn prepare(cfg: &mut AgentConfig, join: Option<&str>) -> Result<(), EnrollError> {
    let Some(meta) = cfg.meta.clone() else {
        if join.is_some() {
            return Err(EnrollError::Config(
                "a join token needs the metaserver: [meta] in agent.toml, or --meta and --state-dir"
                    .into(),
            ));
        }
        return Ok(());
    };
    cfg.validate()
        .map_err(|e| EnrollError::Config(e.to_string()))?;
    let files = cfg
        .tls_files()
        .map_err(|e| EnrollError::Config(e.to_string()))?;
    let enrolled = enroller(&meta, &files)?
        .saved_or_join(join, &cfg.cluster_id)
        .await?;
    let enrollment = match enrolled.joined {
        Some(hubs) => {
            let enrollment = Enrollment {
                identity: enrolled.info.common_name.clone(),
                hubs,
                meta: meta.url.clone(),
            };
            save_enrollment(&meta.state_dir, &enrollment)?;
            enrollment
        }
        None => load_enrollment(&meta, &enrolled.info.common_name)?,
    };
    if !cfg.cluster_id.is_empty() && cfg.cluster_id != enrollment.identity {
        return Err(EnrollError::IdentityMismatch {
            what: "agent.toml's cluster_id".into(),
            configured: cfg.cluster_id.clone(),
            enrolled: enrollment.identity,
        });
    }
    cfg.cluster_id = enrollment.identity;
    let from_registry = cfg.hubs.is_empty();
    if from_registry {
        cfg.hubs = enrollment.hubs;
        if cfg.hubs.is_empty() {
            info!("the metaserver named no live hub yet: waiting for one in its registry");
        }
    }
    if let Some(m) = cfg.meta.as_mut() {
        // Sticky: a second `prepare` of the same configuration finds `hubs` filled in.
        m.hubs_from_registry |= from_registry;
    }
    Ok(())
}

fn save_enrollment(dir: &Path, enrollment: &Enrollment) -> Result<(), EnrollError> {
    let path = dir.join(ENROLLMENT_FILE);
    let mut json = serde_json::to_vec_pretty(enrollment).map_err(|e| EnrollError::State {
        path: path.clone(),
        why: e.to_string(),
    })?;
    json.push(b'\n');
    kubehub_enroll::write_atomic(&path, &json, 0o644)
}

/// The renewal task: everything it needs.
#[derive(Debug)]
pub struct Renewal {
    /// `[meta]`.
    pub meta: Meta,
    /// Where the key, certificate and CA are.
    pub files: TlsFiles,
    /// The identity to keep.
    pub cluster: String,
    /// The certificate the tunnels dial with: replaced on renewal.
    pub cert: Arc<ReloadingClientCert>,
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
}

/// What the agent does with the shared renewal's news: metrics, and the hub list.
struct AgentEvents {
    metrics: Arc<Metrics>,
    meta: Meta,
    cluster: String,
}

impl RenewalEvents for AgentEvents {
    fn expires(&self, not_after: SystemTime) {
        self.metrics.cert.expires(not_after);
    }

    fn renewed(&self, renewed: &Renewed) {
        // The tunnels dial with the certificate the renewal swapped (the same `cert`).
        self.metrics.cert.renewed(renewed.info.not_after);
        if !renewed.hubs.is_empty() {
            self.update_hubs(renewed.hubs.clone());
        }
    }

    fn failed(&self, _error: &EnrollError) {
        self.metrics.cert.failures.inc();
    }
}

impl AgentEvents {
    /// Keeps the metaserver's latest hub list in `enrollment.json` (used at the next start).
    fn update_hubs(&self, hubs: Vec<String>) {
        let path = self.meta.state_dir.join(ENROLLMENT_FILE);
        let mut enrollment = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Enrollment>(&b).ok())
            .unwrap_or_else(|| Enrollment {
                identity: self.cluster.clone(),
                hubs: Vec::new(),
                meta: self.meta.url.clone(),
            });
        if enrollment.hubs == hubs {
            return;
        }
        info!(
            ?hubs,
            "the metaserver names other hubs; they are dialed from the next start"
        );
        enrollment.hubs = hubs;
        if let Err(e) = save_enrollment(&self.meta.state_dir, &enrollment) {
            warn!("saving the hub list: {e}");
        }
    }
}

impl Renewal {
    /// Renews until `stop` says so (or its sender is gone).
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let enroller = match enroller(&self.meta, &self.files) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(cluster = %self.cluster, "certificate renewal cannot start: {e}");
                return;
            }
        };
        let renewal = kubehub_enroll::Renewal {
            enroller,
            identity: self.cluster.clone(),
            cert: self.cert,
            retry_initial: Duration::from_millis(self.meta.retry_initial_ms),
            retry_max: Duration::from_millis(self.meta.retry_max_ms),
            events: Arc::new(AgentEvents {
                metrics: self.metrics,
                meta: self.meta,
                cluster: self.cluster,
            }),
        };
        tokio::select! {
            _ = renewal.run() => {}
            _ = stop.changed() => {}
        }
    }
}
