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

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubehub_pki::join::{JoinToken, JoinTokenError};
use kubehub_pki::{PkiError, ReloadingClientCert};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{error, info, warn, Instrument};

use crate::config::{AgentConfig, Meta, TlsFiles};
use crate::meta_client::{AnyServerCert, MetaClient};
use crate::Metrics;

/// The agent's private key in the state directory.
pub const KEY_FILE: &str = "agent.key";
/// The agent's certificate in the state directory.
pub const CERT_FILE: &str = "agent.crt";
/// The CA (of the metaserver and the hubs) in the state directory.
pub const CA_FILE: &str = "ca.crt";
/// What the enrollment said (identity, hubs) in the state directory.
pub const ENROLLMENT_FILE: &str = "enrollment.json";

/// Why the agent could not enroll or renew.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The join token is malformed.
    #[error("join token: {0}")]
    Token(#[from] JoinTokenError),
    /// The metaserver's CA is not the one the join token pins.
    #[error(
        "the metaserver's CA has hash {served}, but the join token pins {pinned}: refusing to \
         enroll (a wrong --meta URL, a token from another metaserver, or someone in between)"
    )]
    CaPinMismatch {
        /// The hash in the token.
        pinned: String,
        /// The hash of the CA the metaserver sent.
        served: String,
    },
    /// The metaserver could not be reached or the exchange failed.
    #[error("{url}: {why}")]
    Meta {
        /// The URL called.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The metaserver answered with an error.
    #[error("{url} refused: HTTP {status}: {message}")]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The metaserver's `error`.
        message: String,
    },
    /// The metaserver's answer is not what the API says.
    #[error("{url}: unexpected answer: {why}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate the metaserver issued cannot be used.
    #[error("the metaserver issued an unusable certificate: {0}")]
    BadCertificate(String),
    /// The configuration names another identity than the one enrolled.
    #[error(
        "agent.toml says cluster_id = {configured:?}, but the metaserver enrolled this agent as \
         {enrolled:?}"
    )]
    IdentityMismatch {
        /// `cluster_id` in agent.toml.
        configured: String,
        /// The identity of the certificate.
        enrolled: String,
    },
    /// A file of the state directory could not be read or written.
    #[error("{path}: {why}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// No certificate and no join token.
    #[error("not enrolled: no certificate at {0}; start once with --join <token>")]
    NotEnrolled(PathBuf),
    /// The saved certificate expired and there is no join token.
    #[error("the certificate {path} expired at {when}; join again with a new token (--join)")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired.
        when: String,
    },
    /// The configuration does not allow enrolling.
    #[error("{0}")]
    Config(String),
    /// A key, request or certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

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

/// `GET /v1/ca`.
#[derive(Deserialize)]
struct CaAnswer {
    ca: String,
}

/// `POST /v1/enroll`.
#[derive(Serialize)]
struct EnrollRequest<'a> {
    token: &'a str,
    csr: &'a str,
}

/// `POST /v1/renew`.
#[derive(Serialize)]
struct RenewRequest<'a> {
    csr: &'a str,
}

/// The answer of `/v1/enroll` and `/v1/renew`.
#[derive(Deserialize)]
struct Issued {
    certificate: String,
    ca: String,
    identity: String,
    #[serde(default)]
    hubs: Vec<String>,
}

fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn state_err(path: &Path, why: impl std::fmt::Display) -> EnrollError {
    EnrollError::State {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

pub(crate) fn read(path: &Path) -> Result<String, EnrollError> {
    std::fs::read_to_string(path).map_err(|e| state_err(path, e))
}

/// Writes `data` to `path` atomically: a temporary file next to it (created with `mode`),
/// flushed to disk, renamed over `path`.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), EnrollError> {
    let tmp = stage(path, data, mode)?;
    commit(&tmp, path)
}

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// The first half of [`write_atomic`]: the temporary file, complete and on disk.
fn stage(path: &Path, data: &[u8], mode: u32) -> Result<PathBuf, EnrollError> {
    let tmp = temp_path(path);
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(|e| state_err(&tmp, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| state_err(&tmp, e))?;
    Ok(tmp)
}

/// The second half of [`write_atomic`]: the rename, and the directory flushed.
fn commit(tmp: &Path, path: &Path) -> Result<(), EnrollError> {
    std::fs::rename(tmp, path).map_err(|e| state_err(path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes a new key and its certificate: both staged first, then renamed key first, so that
/// the window in which the two files do not match is two renames long (a start that finds
/// them mismatched says so).
fn write_key_and_cert(files: &TlsFiles, key_pem: &str, cert_pem: &str) -> Result<(), EnrollError> {
    let key_tmp = stage(&files.key, key_pem.as_bytes(), 0o600)?;
    let cert_tmp = stage(&files.cert, cert_pem.as_bytes(), 0o644)?;
    commit(&key_tmp, &files.key)?;
    commit(&cert_tmp, &files.cert)
}

fn create_state_dir(dir: &Path) -> Result<(), EnrollError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|e| state_err(dir, e))
}

/// A client configuration for the metaserver trusting exactly the CA of `ca_pem`, presenting
/// `client_cert` if given. No session resumption (the client certificate must be presented).
pub(crate) fn verified_config(
    ca_pem: &str,
    client_cert: Option<Arc<ReloadingClientCert>>,
) -> Result<Arc<rustls::ClientConfig>, EnrollError> {
    let roots = kubehub_pki::parse_roots(ca_pem)?;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EnrollError::Config(format!("TLS: {e}")))?
    .with_root_certificates(roots);
    let mut cfg = match client_cert {
        Some(c) => builder.with_client_cert_resolver(c),
        None => builder.with_no_client_auth(),
    };
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Checks an issued certificate: a client certificate of the CA of `ca_pem`, for `key_pem`'s
/// key, whose CN is the identity the answer names (and `expected`, if given).
fn check_issued(
    issued: &Issued,
    ca_pem: &str,
    key_pem: &str,
    expected: Option<&str>,
) -> Result<kubehub_pki::CertInfo, EnrollError> {
    let bad = |why: String| EnrollError::BadCertificate(why);
    kubehub_pki::verify_client_cert(ca_pem, &issued.certificate)
        .map_err(|e| bad(format!("not a client certificate of the pinned CA: {e}")))?;
    let info = kubehub_pki::cert_info(&issued.certificate)?;
    if info.common_name != issued.identity {
        return Err(bad(format!(
            "it is for {:?} while the answer says {:?}",
            info.common_name, issued.identity
        )));
    }
    if let Some(expected) = expected.filter(|e| *e != issued.identity) {
        return Err(EnrollError::IdentityMismatch {
            configured: expected.to_owned(),
            enrolled: issued.identity.clone(),
        });
    }
    ReloadingClientCert::from_pem(&issued.certificate, key_pem)
        .map_err(|e| bad(format!("not for the key the agent sent: {e}")))?;
    Ok(info)
}

/// What the state directory holds.
enum Saved {
    /// Nothing yet.
    Nothing,
    /// A certificate and its key.
    Enrolled {
        enrollment: Enrollment,
        not_after: SystemTime,
    },
}

fn load_saved(files: &TlsFiles, meta: &Meta) -> Result<Saved, EnrollError> {
    if !files.cert.exists() && !files.key.exists() {
        return Ok(Saved::Nothing);
    }
    let cert_pem = read(&files.cert)?;
    let key_pem = read(&files.key)?;
    ReloadingClientCert::from_pem(&cert_pem, &key_pem).map_err(|e| {
        state_err(
            &files.key,
            format!("{e} (an interrupted renewal? empty the state directory and join again)"),
        )
    })?;
    kubehub_pki::load_roots(&files.ca)?;
    let info = kubehub_pki::cert_info(&cert_pem).map_err(|e| state_err(&files.cert, e))?;
    let path = meta.state_dir.join(ENROLLMENT_FILE);
    let mut enrollment = match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice::<Enrollment>(&bytes).map_err(|e| state_err(&path, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Enrollment {
            identity: info.common_name.clone(),
            hubs: Vec::new(),
            meta: meta.url.clone(),
        },
        Err(e) => return Err(state_err(&path, e)),
    };
    // The certificate is the truth about who the agent is.
    enrollment.identity = info.common_name;
    Ok(Saved::Enrolled {
        enrollment,
        not_after: info.not_after,
    })
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
    // A malformed token fails before anything else happens.
    let token = join.map(JoinToken::parse).transpose()?;
    let enrollment = match (load_saved(&files, &meta)?, token) {
        (
            Saved::Enrolled {
                enrollment,
                not_after,
            },
            token,
        ) if not_after > SystemTime::now() => {
            if let Some(t) = token {
                info!(
                    token = %t.id,
                    identity = %enrollment.identity,
                    state_dir = %meta.state_dir.display(),
                    "already enrolled: the join token is not used (empty the state directory to join again)"
                );
            }
            enrollment
        }
        (Saved::Enrolled { not_after, .. }, None) => {
            return Err(EnrollError::Expired {
                path: files.cert.clone(),
                when: rfc3339(not_after),
            })
        }
        (Saved::Nothing, None) => return Err(EnrollError::NotEnrolled(files.cert.clone())),
        (_, Some(token)) => {
            let span = tracing::info_span!("join", meta = %meta.url, token = %token.id);
            join_meta(&meta, &files, &token, &cfg.cluster_id)
                .instrument(span)
                .await?
        }
    };
    if !cfg.cluster_id.is_empty() && cfg.cluster_id != enrollment.identity {
        return Err(EnrollError::IdentityMismatch {
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

/// Steps 1-4 of the join (module documentation).
async fn join_meta(
    meta: &Meta,
    files: &TlsFiles,
    token: &JoinToken,
    cluster_hint: &str,
) -> Result<Enrollment, EnrollError> {
    let client = MetaClient::new(&meta.url, Duration::from_millis(meta.request_timeout_ms))?;
    let hint = if cluster_hint.is_empty() {
        "kubehub-agent"
    } else {
        cluster_hint
    };
    let (key_pem, csr_pem) = kubehub_pki::generate_key_and_csr(hint, &[kubehub_pki::AGENTS_GROUP])?;

    // The CA, unverified, then pinned.
    let answer: CaAnswer = client
        .get(AnyServerCert::client_config()?, "/v1/ca")
        .await?;
    let count = kubehub_pki::parse_certs(&answer.ca)?.len();
    if count != 1 {
        return Err(EnrollError::BadAnswer {
            url: format!("{}/v1/ca", client.url()),
            why: format!("expected exactly one CA certificate, got {count}"),
        });
    }
    let served = kubehub_pki::cert_hash(&answer.ca)?;
    if served != token.ca_pin() {
        return Err(EnrollError::CaPinMismatch {
            pinned: token.ca_pin(),
            served,
        });
    }
    let ca_pem = answer.ca;
    info!(ca = %served, "the metaserver's CA matches the join token");

    // Enroll over TLS verified with exactly that CA.
    let issued: Issued = client
        .post(
            verified_config(&ca_pem, None)?,
            "/v1/enroll",
            &EnrollRequest {
                token: &token.encode(),
                csr: &csr_pem,
            },
        )
        .await?;
    if kubehub_pki::cert_hash(&issued.ca).ok().as_deref() != Some(served.as_str()) {
        return Err(EnrollError::BadCertificate(
            "the enrollment answer names another CA than the one the token pins".into(),
        ));
    }
    let info = check_issued(&issued, &ca_pem, &key_pem, None)?;

    // Save.
    create_state_dir(&meta.state_dir)?;
    write_atomic(&files.ca, ca_pem.as_bytes(), 0o644)?;
    write_key_and_cert(files, &key_pem, &issued.certificate)?;
    let enrollment = Enrollment {
        identity: issued.identity,
        hubs: issued.hubs,
        meta: meta.url.clone(),
    };
    save_enrollment(&meta.state_dir, &enrollment)?;
    info!(
        identity = %enrollment.identity,
        hubs = ?enrollment.hubs,
        not_after = %rfc3339(info.not_after),
        state_dir = %meta.state_dir.display(),
        "enrolled"
    );
    Ok(enrollment)
}

fn save_enrollment(dir: &Path, enrollment: &Enrollment) -> Result<(), EnrollError> {
    let path = dir.join(ENROLLMENT_FILE);
    let mut json = serde_json::to_vec_pretty(enrollment).map_err(|e| state_err(&path, e))?;
    json.push(b'\n');
    write_atomic(&path, &json, 0o644)
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

/// No two renewals closer together than this, however short the certificates.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

impl Renewal {
    /// Renews until `stop` says so.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let span =
            tracing::info_span!("cert_renewal", cluster = %self.cluster, meta = %self.meta.url);
        async move {
            let setup = (|| {
                let client =
                    MetaClient::new(&self.meta.url, Duration::from_millis(self.meta.request_timeout_ms))?;
                Ok::<_, EnrollError>((client, read(&self.files.ca)?, read(&self.files.cert)?))
            })();
            let (client, ca_pem, mut cert_pem) = match setup {
                Ok(s) => s,
                Err(e) => {
                    error!("certificate renewal cannot start: {e}");
                    return;
                }
            };
            let mut min_wait = Duration::ZERO;
            loop {
                let (not_before, not_after) = match kubehub_pki::cert_validity(&cert_pem) {
                    Ok(v) => v,
                    Err(e) => {
                        error!("certificate renewal stops: reading the certificate: {e}");
                        return;
                    }
                };
                self.metrics.cert_expiry.set(unix_secs(not_after));
                // The certificate's life started when it was issued, after its back-dated
                // not_before.
                let start = not_before
                    .checked_add(kubehub_pki::BACKDATE)
                    .filter(|s| *s < not_after)
                    .unwrap_or(not_before);
                let at = kubehub_pki::renew_at(start, not_after, &mut rand::rng());
                let wait = at
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .max(min_wait);
                info!(not_after = %rfc3339(not_after), in_secs = wait.as_secs(), "renewal scheduled");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => return,
                }
                let mut attempt = 0u32;
                cert_pem = loop {
                    match self.renew_once(&client, &ca_pem).await {
                        Ok(new) => {
                            self.metrics.cert_renewals.inc();
                            break new;
                        }
                        Err(e) => {
                            self.metrics.cert_renewal_failures.inc();
                            let delay = crate::backoff(
                                attempt,
                                Duration::from_millis(self.meta.retry_initial_ms),
                                Duration::from_millis(self.meta.retry_max_ms),
                                &mut rand::rng(),
                            );
                            attempt = attempt.saturating_add(1);
                            if not_after <= SystemTime::now() {
                                error!(
                                    attempt,
                                    "renewal failed and the certificate expired at {}: {e}; \
                                     retrying in {delay:?} (if the metaserver no longer accepts \
                                     it, join again with a new token)",
                                    rfc3339(not_after)
                                );
                            } else {
                                warn!(attempt, "renewal failed: {e}; retrying in {delay:?}");
                            }
                            tokio::select! {
                                _ = tokio::time::sleep(delay) => {}
                                _ = stop.changed() => return,
                            }
                        }
                    }
                };
                min_wait = MIN_RENEWAL_INTERVAL;
            }
        }
        .instrument(span)
        .await
    }

    /// One renewal: a new key and request, `POST /v1/renew` with the current certificate, the
    /// answer checked, written, and swapped in. Returns the new certificate.
    async fn renew_once(&self, client: &MetaClient, ca_pem: &str) -> Result<String, EnrollError> {
        let (key_pem, csr_pem) =
            kubehub_pki::generate_key_and_csr(&self.cluster, &[kubehub_pki::AGENTS_GROUP])?;
        let tls = verified_config(ca_pem, Some(self.cert.clone()))?;
        let issued: Issued = client
            .post(tls, "/v1/renew", &RenewRequest { csr: &csr_pem })
            .await?;
        let info = check_issued(&issued, ca_pem, &key_pem, Some(&self.cluster))?;
        if kubehub_pki::cert_hash(&issued.ca).ok() != kubehub_pki::cert_hash(ca_pem).ok() {
            warn!("the metaserver now sends another CA; the agent keeps the one it joined with (a new CA needs a new join)");
        }
        write_key_and_cert(&self.files, &key_pem, &issued.certificate)?;
        self.cert.set(&issued.certificate, &key_pem)?;
        self.metrics.cert_expiry.set(unix_secs(info.not_after));
        if !issued.hubs.is_empty() {
            self.update_hubs(issued.hubs);
        }
        info!(
            serial = %info.serial,
            not_after = %rfc3339(info.not_after),
            "certificate renewed: new tunnel dials present it"
        );
        Ok(issued.certificate)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_750_000_600)),
            "2025-06-15T15:16:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(unix_secs(UNIX_EPOCH + Duration::from_secs(5)), 5);
    }

    #[test]
    fn atomic_writes_replace_whole_files_with_their_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("agent.key")],
            "no temporary left"
        );
    }
}
