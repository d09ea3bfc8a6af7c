//! # kubehub-enroll: enrollment with the metaserver, for hubs and agents alike
//!
//! Hubs and agents get their certificates the same way, and this crate is that way, once:
//!
//! **Join** ([`Enroller::join`], first start, with a join token `khJ.<id>.<secret>.<CA hash>`):
//! 1. make a key and a certificate signing request (the key never leaves the machine);
//! 2. fetch the CA (`GET /v1/ca`) *without* verifying the metaserver's certificate (there is
//!    nothing to verify it with yet), and accept the answer only if the SHA-256 of the CA
//!    certificate is the one the token pins (kubeadm's discovery hash); otherwise stop, naming
//!    both hashes, before the token's secret went anywhere;
//! 3. `POST /v1/enroll {token, csr}` over TLS verified with exactly that CA; the answer is the
//!    certificate (its identity decided by the metaserver from the token: CN = the cluster id
//!    for an agent, CN = the hub id and SANs = its names for a hub), the CA, the identity and
//!    the hubs agents dial;
//! 4. check the certificate (chains to the pinned CA as a client certificate, and for a hub
//!    as a server certificate for its first name; is for the key; CN = the identity) and
//!    write `ca.crt`, the key (mode 0600) and the certificate to the state directory
//!    ([`StateFiles`]), each atomically.
//!
//! Later starts find the certificate there and need no token ([`Enroller::saved_or_join`]).
//!
//! **Renewal** ([`Renewal`]): at a random point between 70% and 90% of the certificate's life
//! ([`kubehub_pki::renew_at`]), a new key and request go to `POST /v1/renew {csr, names}`
//! (names: the current certificate's SANs) over mutual TLS with the current certificate; the
//! new certificate and key are written (temporary file + rename), swapped into the
//! [`kubehub_pki::ReloadingCert`] presented to the metaserver, and handed to the owner's
//! [`RenewalEvents`], which swaps them into whatever else serves or dials with them: new
//! handshakes present the new certificate, established connections carry on. Failures are
//! retried with full-jitter exponential backoff.
//!
//! Runs on tokio (the agent's runtime; the hub's metaserver thread). [`MetaClient`] is the
//! HTTPS JSON client both use for these calls (and the agent for the registry).

mod client;
mod error;
mod renew;
mod state;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubehub_pki::join::JoinToken;
use kubehub_pki::{CertInfo, ReloadingClientCert};
use serde::{Deserialize, Serialize};
use tracing::{info, Instrument};

pub use client::{AnyServerCert, Lines, MetaClient};
pub use error::EnrollError;
pub use renew::{CertMetrics, Renewal, RenewalEvents, Renewed};
pub use state::{read, rfc3339, unix_secs, write_atomic, StateFiles, CA_FILE};

/// Who enrolls: decides the subject the request suggests, the files' names and what the
/// issued certificate must be. The identity itself is the metaserver's decision (the join
/// token's purpose), never the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// An agent: a client certificate, CN = the cluster id, O = `kubehub:agents`.
    Agent,
    /// A hub: a server and client certificate, CN = the hub id, O = `kubehub:hubs`, SANs = the
    /// names given when its join token was made.
    Hub,
}

impl Role {
    /// The organization (group) the request suggests.
    pub fn group(self) -> &'static str {
        match self {
            Role::Agent => kubehub_pki::AGENTS_GROUP,
            Role::Hub => kubehub_pki::HUBS_GROUP,
        }
    }

    /// The certificate's file name in the state directory.
    pub fn cert_file(self) -> &'static str {
        match self {
            Role::Agent => "agent.crt",
            Role::Hub => "hub.crt",
        }
    }

    /// The key's file name in the state directory.
    pub fn key_file(self) -> &'static str {
        match self {
            Role::Agent => "agent.key",
            Role::Hub => "hub.key",
        }
    }

    /// The common name the request suggests when the caller has no better one.
    fn default_name(self) -> &'static str {
        match self {
            Role::Agent => "kubehub-agent",
            Role::Hub => "kubehub-hub",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Hub => "hub",
        })
    }
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

/// The answer of `/v1/enroll` and `/v1/renew`.
#[derive(Deserialize)]
pub(crate) struct Issued {
    pub(crate) certificate: String,
    pub(crate) ca: String,
    pub(crate) identity: String,
    #[serde(default)]
    pub(crate) hubs: Vec<String>,
}

/// What [`Enroller::saved_or_join`] found or did.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// What the certificate in the state directory says (the identity is its CN).
    pub info: CertInfo,
    /// `Some` when this call joined: the hubs the metaserver named (agents dial them); `None`
    /// when the saved certificate was used.
    pub joined: Option<Vec<String>>,
}

impl Enrolled {
    /// The identity enrolled as (the certificate's CN).
    pub fn identity(&self) -> &str {
        &self.info.common_name
    }
}

/// Enrollment with one metaserver into one state directory.
#[derive(Debug, Clone)]
pub struct Enroller {
    /// Hub or agent.
    pub role: Role,
    /// The metaserver.
    pub client: MetaClient,
    /// Where the key, certificate and CA are kept.
    pub files: StateFiles,
}

impl Enroller {
    /// The metaserver at `url` (`https://host[:port]`), calls bounded by `timeout`.
    pub fn new(
        role: Role,
        url: &str,
        timeout: Duration,
        files: StateFiles,
    ) -> Result<Enroller, EnrollError> {
        let user_agent = match role {
            Role::Agent => concat!("kubehub-agent/", env!("CARGO_PKG_VERSION")),
            Role::Hub => concat!("kubehub-hub/", env!("CARGO_PKG_VERSION")),
        };
        Ok(Enroller {
            role,
            client: MetaClient::new(url, timeout)?.with_user_agent(user_agent),
            files,
        })
    }

    /// The metaserver's base URL.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// The certificate saved in the state directory if it is still valid, else a join with
    /// `join` (a join token); `name_hint` is the common name the request suggests (the
    /// metaserver decides). A malformed token fails before anything else. With a valid saved
    /// certificate the token is not used (the state directory must be emptied to join
    /// again); with an expired one, the token joins again. Neither: [`EnrollError::NotEnrolled`]
    /// or [`EnrollError::Expired`].
    pub async fn saved_or_join(
        &self,
        join: Option<&str>,
        name_hint: &str,
    ) -> Result<Enrolled, EnrollError> {
        let token = join.map(JoinToken::parse).transpose()?;
        let saved = self.files.load()?;
        match (saved, token) {
            (Some(info), token) if info.not_after > SystemTime::now() => {
                if let Some(t) = token {
                    info!(
                        token = %t.id,
                        identity = %info.common_name,
                        state_dir = %self.files.dir.display(),
                        "already enrolled: the join token is not used (empty the state directory to join again)"
                    );
                }
                Ok(Enrolled { info, joined: None })
            }
            (Some(info), None) => Err(EnrollError::Expired {
                path: self.files.cert.clone(),
                when: rfc3339(info.not_after),
            }),
            (None, None) => Err(EnrollError::NotEnrolled(self.files.cert.clone())),
            (_, Some(token)) => {
                let span = tracing::info_span!("join", role = %self.role, meta = %self.url(), token = %token.id);
                self.join(&token, name_hint).instrument(span).await
            }
        }
    }

    /// Steps 1-4 of the join (crate documentation). Nothing is written unless every step
    /// succeeded.
    pub async fn join(&self, token: &JoinToken, name_hint: &str) -> Result<Enrolled, EnrollError> {
        let hint = if name_hint.is_empty() {
            self.role.default_name()
        } else {
            name_hint
        };
        let (key_pem, csr_pem) = kubehub_pki::generate_key_and_csr(hint, &[self.role.group()])?;

        // The CA, unverified, then pinned.
        let answer: CaAnswer = self
            .client
            .get(AnyServerCert::client_config()?, "/v1/ca")
            .await?;
        let count = kubehub_pki::parse_certs(&answer.ca)?.len();
        if count != 1 {
            return Err(EnrollError::BadAnswer {
                url: format!("{}/v1/ca", self.url()),
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
        let issued: Issued = self
            .client
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
        let info = check_issued(self.role, &issued, &ca_pem, &key_pem, None)?;

        // Save.
        self.files.create_dir()?;
        write_atomic(&self.files.ca, ca_pem.as_bytes(), 0o644)?;
        self.files
            .write_key_and_cert(&key_pem, &issued.certificate)?;
        info!(
            identity = %info.common_name,
            names = ?info.names,
            hubs = ?issued.hubs,
            not_after = %rfc3339(info.not_after),
            state_dir = %self.files.dir.display(),
            "enrolled"
        );
        Ok(Enrolled {
            info,
            joined: Some(issued.hubs),
        })
    }
}

/// A client configuration for the metaserver trusting exactly the CA of `ca_pem`, presenting
/// `client_cert` if given. No session resumption (a renewed client certificate must be
/// presented by the next handshake).
pub fn verified_config(
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

/// Checks an issued certificate: a client certificate of the CA of `ca_pem` (for a hub also a
/// server certificate for its first name), for `key_pem`'s key, whose CN is the identity the
/// answer names (and `expected`, if given: `(what, identity)`).
pub(crate) fn check_issued(
    role: Role,
    issued: &Issued,
    ca_pem: &str,
    key_pem: &str,
    expected: Option<(&str, &str)>,
) -> Result<CertInfo, EnrollError> {
    let bad = |why: String| EnrollError::BadCertificate(why);
    kubehub_pki::verify_client_cert(ca_pem, &issued.certificate)
        .map_err(|e| bad(format!("not a client certificate of the pinned CA: {e}")))?;
    let info = kubehub_pki::cert_info(&issued.certificate)?;
    if role == Role::Hub {
        let first = info
            .names
            .first()
            .ok_or_else(|| bad("a hub certificate without names".into()))?;
        kubehub_pki::verify_server_cert(ca_pem, &issued.certificate, first)
            .map_err(|e| bad(format!("not a server certificate for {first:?}: {e}")))?;
    }
    if info.common_name != issued.identity {
        return Err(bad(format!(
            "it is for {:?} while the answer says {:?}",
            info.common_name, issued.identity
        )));
    }
    if let Some((what, expected)) = expected.filter(|(_, e)| *e != issued.identity) {
        return Err(EnrollError::IdentityMismatch {
            what: what.to_owned(),
            configured: expected.to_owned(),
            enrolled: issued.identity.clone(),
        });
    }
    ReloadingClientCert::from_pem(&issued.certificate, key_pem)
        .map_err(|e| bad(format!("not for the key sent: {e}")))?;
    Ok(info)
}
