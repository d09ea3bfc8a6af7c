//! Certificate renewal before expiry (crate documentation, **Renewal**).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kubehub_pki::{CertInfo, ReloadingClientCert};
use rand::Rng;
use serde::Serialize;
use tracing::{error, info, warn, Instrument};

use crate::{check_issued, read, rfc3339, verified_config, EnrollError, Enroller, Issued};

/// `POST /v1/renew`.
#[derive(Serialize)]
struct RenewRequest<'a> {
    csr: &'a str,
    /// The names (SANs) the new certificate keeps: the current certificate's (a hub's; an
    /// agent's certificate has none).
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    names: &'a [String],
}

/// A renewed certificate, already written to the state directory and presented to the
/// metaserver from now on.
pub struct Renewed {
    /// The new certificate (PEM).
    pub cert_pem: String,
    /// Its new key (PEM).
    pub key_pem: String,
    /// What the new certificate says.
    pub info: CertInfo,
    /// The hubs the metaserver named in its answer (agents dial them).
    pub hubs: Vec<String>,
}

impl std::fmt::Debug for Renewed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Renewed")
            .field("serial", &self.info.serial)
            .field("not_after", &rfc3339(self.info.not_after))
            .field("hubs", &self.hubs)
            .finish_non_exhaustive()
    }
}

/// What the owner of a [`Renewal`] hears: metrics, and the new certificate to swap into
/// whatever else serves or dials with it. Called on the renewal's task; keep them short.
pub trait RenewalEvents: Send + Sync {
    /// The certificate in use expires at `not_after` (at start and after each renewal).
    fn expires(&self, not_after: SystemTime);
    /// A renewal succeeded.
    fn renewed(&self, renewed: &Renewed);
    /// A renewal attempt failed; it is retried after a backoff.
    fn failed(&self, error: &EnrollError);
}

/// The renewal task of one enrolled identity ([`Renewal::run`]).
pub struct Renewal {
    /// The metaserver and the state directory.
    pub enroller: Enroller,
    /// The identity to keep (the current certificate's CN).
    pub identity: String,
    /// The certificate presented to the metaserver (mutual TLS): replaced by each renewed one.
    pub cert: Arc<ReloadingClientCert>,
    /// First delay before retrying a failed renewal (full-jitter exponential backoff).
    pub retry_initial: Duration,
    /// Largest delay between attempts.
    pub retry_max: Duration,
    /// The owner's side.
    pub events: Arc<dyn RenewalEvents>,
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewal")
            .field("enroller", &self.enroller)
            .field("identity", &self.identity)
            .field("cert", &self.cert)
            .field("retry_initial", &self.retry_initial)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

/// No two renewals closer together than this, however short the certificates.
const MIN_RENEWAL_INTERVAL: Duration = Duration::from_secs(1);

/// A full-jitter delay: uniform in `[0, min(max, initial · 2^attempt)]`.
fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let ceiling = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = u64::try_from(ceiling.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    Duration::from_millis(rand::rng().random_range(0..=ms))
}

impl Renewal {
    /// Renews for ever (drop the future to stop it; a renewal is never half-written, the
    /// files are renamed into place between two awaits). Returns only if it cannot go on (the
    /// state directory unreadable), after saying why.
    pub async fn run(self) {
        let span = tracing::info_span!(
            "cert_renewal",
            role = %self.enroller.role,
            identity = %self.identity,
            meta = %self.enroller.url()
        );
        self.run_inner().instrument(span).await
    }

    async fn run_inner(self) {
        let files = &self.enroller.files;
        let setup = read(&files.ca).and_then(|ca| Ok((ca, read(&files.cert)?)));
        let (ca_pem, mut cert_pem) = match setup {
            Ok(s) => s,
            Err(e) => {
                error!("certificate renewal cannot start: {e}");
                return;
            }
        };
        let mut min_wait = Duration::ZERO;
        loop {
            let info = match kubehub_pki::cert_info(&cert_pem) {
                Ok(v) => v,
                Err(e) => {
                    error!("certificate renewal stops: reading the certificate: {e}");
                    return;
                }
            };
            let (not_before, not_after) = (info.not_before, info.not_after);
            self.events.expires(not_after);
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
            tokio::time::sleep(wait).await;
            let mut attempt = 0u32;
            cert_pem = loop {
                match self.renew_once(&ca_pem, &info.names).await {
                    Ok(new) => break new,
                    Err(e) => {
                        self.events.failed(&e);
                        let delay = backoff(attempt, self.retry_initial, self.retry_max);
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
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            min_wait = MIN_RENEWAL_INTERVAL;
        }
    }

    /// One renewal: a new key and request, `POST /v1/renew` with the current certificate, the
    /// answer checked, written, and swapped in. Returns the new certificate.
    async fn renew_once(&self, ca_pem: &str, names: &[String]) -> Result<String, EnrollError> {
        let role = self.enroller.role;
        let (key_pem, csr_pem) =
            kubehub_pki::generate_key_and_csr(&self.identity, &[role.group()])?;
        let tls = verified_config(ca_pem, Some(self.cert.clone()))?;
        let issued: Issued = self
            .enroller
            .client
            .post(
                tls,
                "/v1/renew",
                &RenewRequest {
                    csr: &csr_pem,
                    names,
                },
            )
            .await?;
        let info = check_issued(
            role,
            &issued,
            ca_pem,
            &key_pem,
            Some(("the certificate being renewed", &self.identity)),
        )?;
        if kubehub_pki::cert_hash(&issued.ca).ok() != kubehub_pki::cert_hash(ca_pem).ok() {
            warn!("the metaserver now sends another CA; this {role} keeps the one it joined with (a new CA needs a new join)");
        }
        self.enroller
            .files
            .write_key_and_cert(&key_pem, &issued.certificate)?;
        self.cert.set(&issued.certificate, &key_pem)?;
        info!(
            serial = %info.serial,
            not_after = %rfc3339(info.not_after),
            "certificate renewed: new handshakes present it, established connections carry on"
        );
        let renewed = Renewed {
            cert_pem: issued.certificate,
            key_pem,
            info,
            hubs: issued.hubs,
        };
        self.events.renewed(&renewed);
        Ok(renewed.cert_pem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_ceiling() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(1));
        for attempt in [0, 1, 3, 40] {
            let ceiling = (100u64 << attempt.min(16)).min(1000);
            for _ in 0..50 {
                assert!(backoff(attempt, i, m) <= Duration::from_millis(ceiling));
            }
        }
    }

    #[test]
    fn renew_requests_carry_names_only_when_there_are_some() {
        let none = serde_json::to_value(RenewRequest {
            csr: "c",
            names: &[],
        })
        .unwrap();
        assert_eq!(none, serde_json::json!({"csr": "c"}));
        let names = ["hub.example.com".to_owned(), "10.0.0.1".to_owned()];
        let some = serde_json::to_value(RenewRequest {
            csr: "c",
            names: &names,
        })
        .unwrap();
        assert_eq!(
            some,
            serde_json::json!({"csr": "c", "names": ["hub.example.com", "10.0.0.1"]})
        );
    }
}

/// The certificate metrics both the hub and the agent expose, registered under the process's
/// prefix: `cert_expiry_seconds`, `cert_renewals_total`, `cert_renewal_failures_total`.
#[derive(Debug, Clone, Default)]
pub struct CertMetrics {
    /// When the certificate expires, unix seconds.
    pub expiry: prometheus_client::metrics::gauge::Gauge,
    /// Certificates renewed with the metaserver.
    pub renewals: prometheus_client::metrics::counter::Counter,
    /// Renewal attempts that failed (each is retried after a backoff).
    pub failures: prometheus_client::metrics::counter::Counter,
}

impl CertMetrics {
    /// Registers the three metrics; `whose` names the certificate in the help text.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry, whose: &str) {
        registry.register(
            "cert_expiry_seconds",
            format!("When {whose} certificate expires (unix time)"),
            self.expiry.clone(),
        );
        registry.register(
            "cert_renewals",
            "Certificates renewed with the metaserver",
            self.renewals.clone(),
        );
        registry.register(
            "cert_renewal_failures",
            "Certificate renewal attempts that failed (each is retried after a backoff)",
            self.failures.clone(),
        );
    }

    /// The certificate in use now expires at `not_after`.
    pub fn expires(&self, not_after: std::time::SystemTime) {
        self.expiry.set(crate::unix_secs(not_after));
    }

    /// A renewal succeeded; the new certificate expires at `not_after`.
    pub fn renewed(&self, not_after: std::time::SystemTime) {
        self.renewals.inc();
        self.expires(not_after);
    }
}
