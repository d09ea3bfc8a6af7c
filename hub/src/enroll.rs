//! `enroll`: the hub's certificate from the metaserver (`[meta] state_dir`), the way agents get
//! theirs, through the shared client ([`kubehub_enroll`]).
//!
//! **Join** (`kubehub hub --join khJ.<id>.<secret>.<CA hash>`, [`prepare`]): the hub makes its
//! key and a request, pins meta's CA from the token, enrolls (`POST /v1/enroll`; meta signs a
//! hub certificate: server and client authentication, CN = the hub id of the token, SANs = the
//! names given to `kubehub ctl hub-join-token ID --name …`) and saves `hub.key` (mode 0600),
//! `hub.crt` and `ca.crt` in the state directory. Later starts reuse them without a token.
//!
//! **Use** ([`apply`], at every start): the state directory's files are the defaults of every
//! certificate option hub.toml leaves out: the user and agent listeners serve `hub.crt`, the
//! agent listener trusts meta's CA for agents, and the meta client (feed and registration)
//! presents `hub.crt` and trusts meta's CA. The hub's id is the certificate's CN.
//!
//! **Renewal** (when `renew`): on the meta client's thread, at 70–90% of the
//! certificate's life, `POST /v1/renew` over mutual TLS with the names of the current
//! certificate; the new certificate goes to every listener serving the enrolled one
//! ([`crate::server::Hub::user_cert`], [`crate::server::Hub::agent_cert`]) and to the meta
//! client: new handshakes present it, user connections and agent tunnels already up carry
//! on. Metrics: `kubehub_hub_cert_expiry_seconds`, `kubehub_hub_cert_renewals_total`,
//! `kubehub_hub_cert_renewal_failures_total`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubehub_enroll::{Enroller, RenewalEvents, Renewed, Role, StateFiles};
use kubehub_pki::ReloadingCert;
use tracing::{info, warn};

use crate::access::sync::SideTask;
use crate::config::{HubConfig, MetaConfig};
use crate::metrics::Metrics;

pub use kubehub_enroll::EnrollError;

/// Why the hub could not enroll, or start from its enrollment.
#[derive(Debug, thiserror::Error)]
pub enum HubEnrollError {
    /// `[meta] state_dir` holds no certificate and no join token was given.
    #[error(
        "no certificate at {cert}: run `kubehub hub --join TOKEN` once (a token from `kubehub \
         ctl hub-join-token ID --name NAME`), or set user_listener.cert and key"
    )]
    NotEnrolled {
        /// Where the certificate would be.
        cert: PathBuf,
    },
    /// A join token without a state directory to keep the enrollment in.
    #[error(
        "a join token needs [meta] state_dir in hub.toml (where the hub keeps the key and \
         certificate it enrolls with)"
    )]
    NoStateDir,
    /// hub.toml names another id than the one enrolled.
    #[error(
        "hub.toml says id = {configured:?}, but the hub is enrolled as {enrolled:?} (its \
         certificate in {state_dir}): leave id out, or join again with a token for {configured:?}"
    )]
    IdentityMismatch {
        /// hub.toml's `id`.
        configured: String,
        /// The certificate's CN.
        enrolled: String,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// Enrolling with meta, or reading the state directory, failed.
    #[error("enrollment with the metaserver: {0}")]
    Enroll(EnrollError),
    /// The thread the join runs on could not run.
    #[error("joining: {0}")]
    Thread(String),
}

impl From<EnrollError> for HubEnrollError {
    fn from(e: EnrollError) -> HubEnrollError {
        match e {
            EnrollError::NotEnrolled(cert) => HubEnrollError::NotEnrolled { cert },
            e => HubEnrollError::Enroll(e),
        }
    }
}

/// The enrollment client for `[meta]`, if it has a state directory.
fn enroller(meta: &MetaConfig) -> Result<Option<Enroller>, HubEnrollError> {
    let Some(dir) = &meta.state_dir else {
        return Ok(None);
    };
    let enroller = Enroller::new(
        Role::Hub,
        &meta.url,
        Duration::from_millis(meta.heartbeat_timeout_ms),
        StateFiles::in_dir(dir, Role::Hub),
    )?;
    Ok(Some(enroller))
}

/// Makes sure a hub with `[meta] state_dir` has its certificate: the one saved there, else one
/// obtained by joining with `join` (a hub join token); then [`apply`]. Without a state
/// directory, does nothing (and refuses a join token). With a valid saved certificate the
/// token is not used; with an expired one, the token joins again. Runs on any tokio runtime.
pub async fn prepare(cfg: &mut HubConfig, join: Option<&str>) -> Result<(), HubEnrollError> {
    let Some(enroller) = cfg.meta.as_ref().map(enroller).transpose()?.flatten() else {
        return match join {
            Some(_) => Err(HubEnrollError::NoStateDir),
            None => Ok(()),
        };
    };
    let enrolled = enroller.saved_or_join(join, &cfg.id).await?;
    if enrolled.joined.is_some() {
        info!(
            id = %enrolled.identity(),
            names = ?enrolled.info.names,
            state_dir = %enroller.files.dir.display(),
            "the hub enrolled with the metaserver"
        );
    }
    apply(cfg).map(drop)
}

/// [`prepare`] for callers without a tokio runtime (or inside one: it runs on a thread of its
/// own, with a runtime of its own, and the caller waits).
pub fn prepare_blocking(cfg: &mut HubConfig, join: Option<&str>) -> Result<(), HubEnrollError> {
    std::thread::scope(|s| {
        let joiner = std::thread::Builder::new()
            .name("kubehub-enroll".into())
            .spawn_scoped(s, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| HubEnrollError::Thread(format!("its runtime: {e}")))?;
                rt.block_on(prepare(cfg, join))
            })
            .map_err(|e| HubEnrollError::Thread(e.to_string()))?;
        joiner
            .join()
            .map_err(|_| HubEnrollError::Thread("the join panicked".into()))?
    })
}

/// With `[meta] state_dir`: checks that the state directory holds a valid certificate (else
/// [`HubEnrollError::NotEnrolled`], or expired), takes the hub's id from it (an error if
/// hub.toml names another), and fills in every certificate option hub.toml leaves out with
/// the state directory's files. Returns those files (`None` without a state directory).
/// Reads files only; idempotent.
pub fn apply(cfg: &mut HubConfig) -> Result<Option<StateFiles>, HubEnrollError> {
    let Some(dir) = cfg.state_dir().map(ToOwned::to_owned) else {
        return Ok(None);
    };
    let files = StateFiles::in_dir(&dir, Role::Hub);
    let info = files.load()?.ok_or_else(|| HubEnrollError::NotEnrolled {
        cert: files.cert.clone(),
    })?;
    if info.not_after <= SystemTime::now() {
        return Err(EnrollError::Expired {
            path: files.cert.clone(),
            when: kubehub_enroll::rfc3339(info.not_after),
        }
        .into());
    }
    if cfg.id.is_empty() {
        cfg.id = info.common_name.clone();
    } else if cfg.id != info.common_name {
        return Err(HubEnrollError::IdentityMismatch {
            configured: cfg.id.clone(),
            enrolled: info.common_name,
            state_dir: dir,
        });
    }
    for l in [&mut cfg.user_listener, &mut cfg.agent_listener] {
        if l.cert.is_none() && l.key.is_none() {
            l.cert = Some(files.cert.clone());
            l.key = Some(files.key.clone());
        }
    }
    cfg.agent_listener
        .client_ca
        .get_or_insert_with(|| files.ca.clone());
    if let Some(m) = cfg.meta.as_mut() {
        m.ca.get_or_insert_with(|| files.ca.clone());
        if m.cert.is_none() && m.key.is_none() {
            m.cert = Some(files.cert.clone());
            m.key = Some(files.key.clone());
        }
    }
    Ok(Some(files))
}

/// The certificates a renewal replaces: every one that is the enrolled certificate.
#[derive(Debug, Default)]
struct Targets {
    /// Name (for the log) and certificate.
    certs: Vec<(&'static str, Arc<ReloadingCert>)>,
}

/// The certificates the hub serves and presents, for [`renewal_task`].
#[derive(Debug)]
pub(crate) struct Serving<'a> {
    /// The user listener's.
    pub(crate) user: &'a Arc<ReloadingCert>,
    /// The agent listener's.
    pub(crate) agent: &'a Arc<ReloadingCert>,
    /// The one the meta client presents (`[meta] cert`), if any.
    pub(crate) meta: Option<&'a Arc<ReloadingCert>>,
}

/// The hub's side of a renewal: metrics, and the new certificate into every target.
struct HubEvents {
    metrics: Arc<Metrics>,
    targets: Targets,
}

impl RenewalEvents for HubEvents {
    fn expires(&self, not_after: SystemTime) {
        self.metrics.cert.expires(not_after);
    }

    fn renewed(&self, renewed: &Renewed) {
        for (what, cert) in &self.targets.certs {
            if let Err(e) = cert.set(&renewed.cert_pem, &renewed.key_pem) {
                warn!("{what}: the renewed certificate cannot be served: {e}");
            }
        }
        self.metrics.cert.renewed(renewed.info.not_after);
    }

    fn failed(&self, _error: &EnrollError) {
        self.metrics.cert.failures.inc();
    }
}

/// With `renew`: the renewal of the enrolled certificate in `files`, as a task for the meta
/// client's thread. It presents to meta the meta client's certificate when that is the
/// enrolled one (else its own copy of it), and replaces every listener certificate that is
/// the enrolled one (a listener with files of its own keeps them).
pub(crate) fn renewal_task(
    cfg: &HubConfig,
    files: &StateFiles,
    serving: Serving<'_>,
    metrics: Arc<Metrics>,
) -> Result<Option<SideTask>, HubEnrollError> {
    let Some(meta) = cfg.meta.as_ref().filter(|m| m.renew) else {
        return Ok(None);
    };
    let enrolled = |p: &Option<PathBuf>| p.as_ref() == Some(&files.cert);
    let mut targets = Targets::default();
    if enrolled(&cfg.user_listener.cert) {
        targets.certs.push(("user_listener", serving.user.clone()));
    }
    if enrolled(&cfg.agent_listener.cert) {
        targets
            .certs
            .push(("agent_listener", serving.agent.clone()));
    }
    let presented = match serving.meta {
        Some(c) if enrolled(&meta.cert) => c.clone(),
        _ => {
            let cert = kubehub_enroll::read(&files.cert)?;
            let key = kubehub_enroll::read(&files.key)?;
            Arc::new(ReloadingCert::from_pem(&cert, &key).map_err(EnrollError::from)?)
        }
    };
    let enroller = enroller(meta)?.ok_or(HubEnrollError::NoStateDir)?;
    let renewal = kubehub_enroll::Renewal {
        enroller,
        identity: cfg.id.clone(),
        cert: presented,
        retry_initial: Duration::from_millis(meta.backoff_initial_ms),
        retry_max: Duration::from_millis(meta.backoff_max_ms),
        events: Arc::new(HubEvents { metrics, targets }),
    };
    Ok(Some(Box::pin(renewal.run())))
}
