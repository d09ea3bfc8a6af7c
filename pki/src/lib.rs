//! # kubehub-pki: certificates for KubeHub
//!
//! * Loading: PEM files to what rustls takes ([`load_certs`], [`load_key`], [`load_roots`]),
//!   with the file named in every error. The hub and the agent load their TLS material with it.
//! * Issuing: a [`Ca`] (rcgen) that signs hub (server), agent (client, CN = cluster id) and user
//!   (client) certificates, and [`write_dev_set`], the set of files `kubehub certs` and
//!   `kubehub demo` write. The metaserver owns the production CA ([`Ca::from_pem`],
//!   [`Ca::key_pem`] to persist it) and signs what enrolling agents and hubs ask for
//!   ([`Ca::sign_csr`] with a [`Profile`]: the metaserver, not the request, decides the
//!   identity). Requesters make their key and request with [`generate_key_and_csr`]; the key
//!   never leaves them.
//! * Enrollment: [`join`], the join token format (`khJ.<id>.<secret>.<CA hash>`; the hash pins
//!   the CA, [`Ca::cert_hash`], as kubeadm's discovery hash does).
//! * Renewal: [`cert_validity`] and [`renew_at`] (a jittered point at 70-90% of the life), and
//!   [`ReloadingServerCert`] / [`ReloadingClientCert`], rustls certificate resolvers whose
//!   certificate can be replaced while connections are open: new handshakes present the new
//!   one, established connections are untouched.
//! * Inspection: [`cert_info`] (subject, names, usages, validity), [`verify_client_cert`] and
//!   [`verify_server_cert`] (does a certificate chain to a CA, for that use).

pub mod join;
mod reload;

pub use reload::{ReloadingCert, ReloadingClientCert, ReloadingServerCert};

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls_pki_types::CertificateDer;

/// The organization (group) of agent certificates.
pub const AGENTS_GROUP: &str = "kubehub:agents";
/// The organization (group) of hub certificates.
pub const HUBS_GROUP: &str = "kubehub:hubs";
/// How far back [`Ca::sign_csr`] dates a certificate's `not_before`, so that a peer whose
/// clock is a little behind the CA's accepts it at once.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Why a certificate could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The PEM could not be parsed.
    #[error("reading PEM: {0}")]
    Pem(String),
    /// rustls rejected the key or certificate.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A file could not be read, written or used.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// What went wrong.
        why: String,
    },
    /// A certificate signing request is malformed, its signature does not verify, or it asks
    /// for something that is not supported.
    #[error("certificate signing request: {0}")]
    Csr(String),
    /// A certificate or key parses but cannot be used as asked (the key does not match the
    /// certificate, a CA certificate that is not a CA, an empty identity…).
    #[error("{0}")]
    Invalid(String),
    /// A certificate does not chain to the CA, is expired, or is not valid for its use.
    #[error("certificate not accepted: {0}")]
    Untrusted(String),
}

fn file_err(path: &std::path::Path, why: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.to_owned(),
        why: why.to_string(),
    }
}

fn read(path: &std::path::Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

/// The certificates of a PEM file (a chain, leaf first); an error if there is none.
pub fn load_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    let certs = parse_certs(&read(path)?).map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn load_key(
    path: &std::path::Path,
) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PkiError> {
    parse_key(&read(path)?).map_err(|e| file_err(path, e))
}

/// A root store with every certificate of a PEM file (the CA to trust).
pub fn load_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(roots)
}

/// A root store with every certificate of a PEM text; an error if there is none.
pub fn parse_roots(pem: &str) -> Result<rustls::RootCertStore, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in first_certs(pem)? {
        roots
            .add(c)
            .map_err(|e| PkiError::Invalid(format!("CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

/// What a certificate [`Ca::sign_csr`] issues is for: the identity and usages come from here,
/// never from the request (the metaserver decides who the requester is, from its join token or
/// its current certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Profile {
    /// An agent: client authentication, CN = the cluster id, O = [`AGENTS_GROUP`].
    Agent {
        /// The cluster the agent serves.
        cluster: String,
    },
    /// A hub: server and client authentication, CN = the hub id, O = [`HUBS_GROUP`], subject
    /// alternative names = `names` (DNS names or IP addresses).
    Hub {
        /// The hub's id.
        id: String,
        /// The names and addresses agents and users reach it by (at least one).
        names: Vec<String>,
    },
}

/// A certificate authority that can sign server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

impl Ca {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Ca, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    /// A CA persisted earlier: its certificate ([`Ca::cert_pem`]) and its key
    /// ([`Ca::key_pem`]). Refused if the certificate is not a CA certificate or the key is not
    /// its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert = first_certs(cert_pem)?.swap_remove(0);
        let key =
            KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(format!("the CA key: {e}")))?;
        let (_, x509) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| PkiError::Pem(format!("the CA certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(PkiError::Invalid(
                "the CA certificate is not a CA certificate (basic constraints)".into(),
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(PkiError::Invalid(
                "the CA key is not the key of the CA certificate".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)?;
        Ok(Ca { issuer, cert })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        der_to_pem("CERTIFICATE", &self.cert)
    }

    /// The CA's private key, PKCS#8 PEM: to persist the CA (keep it secret: it signs every
    /// identity).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// `sha256:<lowercase hex>` of the CA certificate's DER (kubeadm's
    /// `--discovery-token-ca-cert-hash` style, but over the whole certificate): what a join
    /// token pins.
    pub fn cert_hash(&self) -> String {
        hash_der(&self.cert)
    }

    /// Signs a certificate signing request ([`generate_key_and_csr`]) for `profile`: the
    /// certificate carries the request's public key and nothing else of it (subject, names and
    /// usages come from the profile). Valid from [`BACKDATE`] ago to `lifetime` from now.
    /// Refused if the request's signature does not verify (it was not made with the key it
    /// carries, or it was altered).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        profile: &Profile,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
            rcgen::Error::InvalidCertificationRequestSignature => {
                PkiError::Csr("its signature does not verify".into())
            }
            e => PkiError::Csr(e.to_string()),
        })?;
        if lifetime.is_zero() {
            return Err(PkiError::Invalid("a certificate lifetime of zero".into()));
        }
        let now = SystemTime::now();
        let (cn, org, names, usages) = match profile {
            Profile::Agent { cluster } => (
                cluster,
                AGENTS_GROUP,
                Vec::new(),
                vec![ExtendedKeyUsagePurpose::ClientAuth],
            ),
            Profile::Hub { id, names } => {
                if names.is_empty() {
                    return Err(PkiError::Invalid(format!(
                        "hub {id}: a hub certificate needs at least one name"
                    )));
                }
                (
                    id,
                    HUBS_GROUP,
                    names.clone(),
                    vec![
                        ExtendedKeyUsagePurpose::ServerAuth,
                        ExtendedKeyUsagePurpose::ClientAuth,
                    ],
                )
            }
        };
        if cn.is_empty() {
            return Err(PkiError::Invalid("an empty identity (common name)".into()));
        }
        let mut params = CertificateParams::new(names)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn.as_str());
        dn.push(DnType::OrganizationName, org);
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = usages;
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        params.not_before = now.checked_sub(BACKDATE).unwrap_or(UNIX_EPOCH).into();
        params.not_after = now
            .checked_add(lifetime)
            .ok_or_else(|| PkiError::Invalid(format!("a lifetime of {lifetime:?}")))?
            .into();
        let request = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        Ok(request.signed_by(&self.issuer)?.pem())
    }

    fn issue(
        &self,
        common_name: &str,
        organizations: &[&str],
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<CertPem, PkiError> {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        for o in organizations {
            dn.push(DnType::OrganizationName, *o);
        }
        params.distinguished_name = dn;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    /// A server certificate for DNS names and IP addresses in `names`.
    pub fn issue_server(&self, names: &[&str]) -> Result<CertPem, PkiError> {
        let cn = names.first().copied().unwrap_or("localhost");
        self.issue(cn, &[], names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A hub's certificate as enrollment issues it ([`Profile::Hub`]: CN = `id`, O =
    /// [`HUBS_GROUP`], SANs = `names`, server and client authentication), valid for a year.
    pub fn issue_hub(&self, id: &str, names: &[&str]) -> Result<CertPem, PkiError> {
        let (key, csr) = generate_key_and_csr(id, &[HUBS_GROUP])?;
        let profile = Profile::Hub {
            id: id.to_owned(),
            names: names.iter().map(|n| n.to_string()).collect(),
        };
        let cert = self.sign_csr(&csr, &profile, Duration::from_secs(365 * 24 * 3600))?;
        Ok(CertPem { cert, key })
    }

    /// An agent's certificate for `cluster` (CN = the cluster id, O = [`AGENTS_GROUP`]), as
    /// the hub's agent listener requires.
    pub fn issue_agent(&self, cluster: &str) -> Result<CertPem, PkiError> {
        self.issue_client(cluster, &[AGENTS_GROUP])
    }

    /// A client certificate: `common_name` is the identity (user or agent), `organizations` its
    /// groups.
    pub fn issue_client(
        &self,
        common_name: &str,
        organizations: &[&str],
    ) -> Result<CertPem, PkiError> {
        self.issue(
            common_name,
            organizations,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A positive 128-bit serial number (RFC 5280: at most 20 octets, positive, unpredictable).
fn random_serial() -> SerialNumber {
    use rand::Rng;
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn der_to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A DER certificate (as rustls hands out peer certificates) as PEM.
pub fn cert_der_to_pem(der: &[u8]) -> String {
    der_to_pem("CERTIFICATE", der)
}

fn hash_der(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest.as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The certificates of a PEM text; an error if there is none.
fn first_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = parse_certs(pem)?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// `sha256:<lowercase hex>` of the DER of the first certificate of a PEM text (see
/// [`Ca::cert_hash`]).
pub fn cert_hash(cert_pem: &str) -> Result<String, PkiError> {
    Ok(hash_der(&first_certs(cert_pem)?[0]))
}

/// A new private key (ECDSA P-256) and a certificate signing request for it, both PEM:
/// `(key_pem, csr_pem)`. The subject is a suggestion; the CA decides ([`Ca::sign_csr`]).
pub fn generate_key_and_csr(
    common_name: &str,
    organizations: &[&str],
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for o in organizations {
        dn.push(DnType::OrganizationName, *o);
    }
    params.distinguished_name = dn;
    let key = KeyPair::generate()?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// What a certificate says (its first certificate, for a chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's common name ("" if none).
    pub common_name: String,
    /// The subject's organizations (groups).
    pub organizations: Vec<String>,
    /// Subject alternative names: DNS names and IP addresses, as text.
    pub names: Vec<String>,
    /// Valid for TLS client authentication (extended key usage).
    pub client_auth: bool,
    /// Valid for TLS server authentication (extended key usage).
    pub server_auth: bool,
    /// A CA certificate.
    pub is_ca: bool,
    /// Valid from.
    pub not_before: SystemTime,
    /// Valid until.
    pub not_after: SystemTime,
    /// The serial number, lowercase hex.
    pub serial: String,
}

fn unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .unwrap_or(UNIX_EPOCH)
    }
}

/// Reads the first certificate of a PEM text.
pub fn cert_info(cert_pem: &str) -> Result<CertInfo, PkiError> {
    use x509_parser::extensions::GeneralName;
    let der = first_certs(cert_pem)?.swap_remove(0);
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| PkiError::Pem(format!("certificate: {e}")))?;
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_owned).unwrap_or_default()
    };
    let subject = x.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .map(text)
        .unwrap_or_default();
    let organizations = subject.iter_organization().map(text).collect();
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => {
                    let ip: Option<std::net::IpAddr> = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(Into::into),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(Into::into),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let (client_auth, server_auth) = match x.extended_key_usage() {
        Ok(Some(eku)) => (eku.value.client_auth, eku.value.server_auth),
        _ => (false, false),
    };
    let serial = x.raw_serial().iter().map(|b| format!("{b:02x}")).collect();
    Ok(CertInfo {
        common_name,
        organizations,
        names,
        client_auth,
        server_auth,
        is_ca: x.is_ca(),
        not_before: unix(x.validity().not_before.timestamp()),
        not_after: unix(x.validity().not_after.timestamp()),
        serial,
    })
}

/// `(not_before, not_after)` of the first certificate of a PEM text.
pub fn cert_validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let info = cert_info(cert_pem)?;
    Ok((info.not_before, info.not_after))
}

/// When to renew a certificate valid from `not_before` to `not_after`: a uniformly random
/// point between 70% and 90% of its life, so that certificates issued together are not renewed
/// together and a failed renewal leaves a tenth of the life to retry in. (For a certificate
/// from [`Ca::sign_csr`], pass `not_before + BACKDATE` when that is before `not_after`: its
/// life started when it was issued.)
pub fn renew_at(
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &mut impl rand::Rng,
) -> SystemTime {
    let Ok(life) = not_after.duration_since(not_before) else {
        return not_after;
    };
    not_before + life.mul_f64(rng.random_range(0.7..=0.9))
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// Checks that `cert_pem` (a chain, leaf first) is a client certificate issued by the CA of
/// `ca_pem` and valid now.
pub fn verify_client_cert(ca_pem: &str, cert_pem: &str) -> Result<(), PkiError> {
    let roots = std::sync::Arc::new(parse_roots(ca_pem)?);
    let chain = first_certs(cert_pem)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
    verifier
        .verify_client_cert(&chain[0], &chain[1..], rustls_pki_types::UnixTime::now())
        .map_err(|e| PkiError::Untrusted(e.to_string()))?;
    Ok(())
}

/// Checks that `cert_pem` (a chain, leaf first) is a server certificate for `name` issued by
/// the CA of `ca_pem` and valid now.
pub fn verify_server_cert(ca_pem: &str, cert_pem: &str, name: &str) -> Result<(), PkiError> {
    use rustls::client::danger::ServerCertVerifier;
    let roots = std::sync::Arc::new(parse_roots(ca_pem)?);
    let chain = first_certs(cert_pem)?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| PkiError::Invalid(format!("server verifier: {e}")))?;
    let server_name = rustls_pki_types::ServerName::try_from(name.to_owned())
        .map_err(|e| PkiError::Invalid(format!("server name {name:?}: {e}")))?;
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &server_name,
            &[],
            rustls_pki_types::UnixTime::now(),
        )
        .map_err(|e| PkiError::Untrusted(e.to_string()))?;
    Ok(())
}

/// Parses PEM certificates.
pub fn parse_certs(pem: &str) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))
}

/// Parses a PEM private key.
pub fn parse_key(pem: &str) -> Result<rustls_pki_types::PrivateKeyDer<'static>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))
}

/// A rustls server configuration (TLS 1.2 and 1.3, ring, ALPN `http/1.1`) for a certificate.
pub fn server_config(cert: &CertPem) -> Result<rustls::ServerConfig, PkiError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(parse_certs(&cert.cert)?, parse_key(&cert.key)?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// TLS for a tunnel's dialling side (an agent, or a hub opening a peer link): TLS 1.3, the
/// server verified against `roots`, `cert` presented as the client certificate (reloaded
/// when it is renewed).
pub fn tunnel_client_config(
    roots: rustls::RootCertStore,
    cert: std::sync::Arc<ReloadingCert>,
) -> Result<rustls::ClientConfig, PkiError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(cert))
}

/// The server side of an agent tunnel (the hub's agent listener, and test hubs): TLS 1.3 only,
/// a client certificate required and verified against `roots`, the server certificate from
/// `cert` (replaceable while serving).
pub fn tunnel_server_config(
    roots: rustls::RootCertStore,
    cert: std::sync::Arc<ReloadingCert>,
) -> Result<rustls::ServerConfig, PkiError> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider.clone())
            .build()
            .map_err(|e| PkiError::Invalid(format!("client certificate verifier: {e}")))?;
    Ok(rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert))
}

/// What [`write_dev_set`] issues.
#[derive(Debug, Clone)]
pub struct DevSet {
    /// Clusters to issue agent certificates for (CN = cluster id, O = `kubehub:agents`).
    pub clusters: Vec<String>,
    /// DNS names and IP addresses the hub certificate is valid for.
    pub hosts: Vec<String>,
    /// Users to issue client certificates for (CN = user, O = `kubehub:users`).
    pub users: Vec<String>,
}

/// Issues a new CA and, signed by it, a hub certificate and agent and user certificates, and
/// writes them to `dir` as `ca.crt`, `hub.crt`/`hub.key`, `agent-{cluster}.crt`/`.key` and
/// `user-{user}.crt`/`.key`. The CA's key is not written: the CA is returned for more.
pub fn write_dev_set(dir: &std::path::Path, set: &DevSet) -> Result<Ca, PkiError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| file_err(&p, e))
    };
    let ca = Ca::generate("kubehub development CA")?;
    write("ca.crt", &ca.cert_pem())?;
    let hosts: Vec<&str> = set.hosts.iter().map(String::as_str).collect();
    let hub = ca.issue_server(&hosts)?;
    write("hub.crt", &hub.cert)?;
    write("hub.key", &hub.key)?;
    for c in &set.clusters {
        let a = ca.issue_agent(c)?;
        write(&format!("agent-{c}.crt"), &a.cert)?;
        write(&format!("agent-{c}.key"), &a.key)?;
    }
    for u in &set.users {
        let c = ca.issue_client(u, &["kubehub:users"])?;
        write(&format!("user-{u}.crt"), &c.cert)?;
        write(&format!("user-{u}.key"), &c.key)?;
    }
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_server_and_client_certs() {
        let ca = Ca::generate("test CA").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        assert_eq!(parse_certs(&server.cert).unwrap().len(), 1);
        server_config(&server).unwrap();
        let client = ca.issue_client("alice", &["devs"]).unwrap();
        assert!(parse_key(&client.key).is_ok());
        assert!(parse_certs("garbage").unwrap().is_empty());
    }

    #[test]
    fn a_dev_set_loads_back_and_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let set = DevSet {
            clusters: vec!["edge-1".into()],
            hosts: vec!["localhost".into()],
            users: vec!["admin".into()],
        };
        write_dev_set(dir.path(), &set).unwrap();
        assert_eq!(load_roots(&dir.path().join("ca.crt")).unwrap().len(), 1);
        assert_eq!(
            load_certs(&dir.path().join("agent-edge-1.crt"))
                .unwrap()
                .len(),
            1
        );
        load_key(&dir.path().join("user-admin.key")).unwrap();
        let missing = dir.path().join("nope.crt");
        let e = load_certs(&missing).unwrap_err().to_string();
        assert!(e.contains("nope.crt"), "{e}");
        std::fs::write(dir.path().join("empty.crt"), "not a certificate").unwrap();
        let e = load_certs(&dir.path().join("empty.crt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("empty.crt") && e.contains("no certificate"),
            "{e}"
        );
    }

    fn pem_der(pem: &str) -> (String, Vec<u8>) {
        use base64::Engine;
        let label = pem
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("-----BEGIN ")
            .trim_end_matches("-----")
            .to_owned();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        (label, der)
    }

    #[test]
    fn agent_profile_takes_the_identity_from_the_profile_not_the_request() {
        let ca = Ca::generate("test CA").unwrap();
        let (key, csr) = generate_key_and_csr("evil", &["system:masters"]).unwrap();
        assert!(
            csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"),
            "{csr}"
        );
        let before = SystemTime::now();
        let cert = ca
            .sign_csr(
                &csr,
                &Profile::Agent {
                    cluster: "edge-1".into(),
                },
                Duration::from_secs(3600),
            )
            .unwrap();
        let info = cert_info(&cert).unwrap();
        assert_eq!(info.common_name, "edge-1");
        assert_eq!(info.organizations, vec![AGENTS_GROUP.to_owned()]);
        assert!(info.client_auth && !info.server_auth && !info.is_ca);
        assert!(info.names.is_empty());
        // Valid from five minutes ago (clock skew) for the lifetime asked.
        let (nb, na) = cert_validity(&cert).unwrap();
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        assert!((secs(before) - 300 - secs(nb)).abs() <= 2, "{nb:?}");
        assert!((secs(before) + 3600 - secs(na)).abs() <= 2, "{na:?}");
        // Chains to the CA as a client certificate, not as a server certificate, and carries
        // the requester's key.
        verify_client_cert(&ca.cert_pem(), &cert).unwrap();
        assert!(verify_server_cert(&ca.cert_pem(), &cert, "edge-1").is_err());
        ReloadingClientCert::from_pem(&cert, &key).unwrap();
        let other = Ca::generate("other CA").unwrap();
        let e = verify_client_cert(&other.cert_pem(), &cert).unwrap_err();
        assert!(matches!(e, PkiError::Untrusted(_)), "{e}");
        // Two certificates for the same request have different serial numbers.
        let again = ca
            .sign_csr(
                &csr,
                &Profile::Agent {
                    cluster: "edge-1".into(),
                },
                Duration::from_secs(60),
            )
            .unwrap();
        assert_ne!(cert_info(&again).unwrap().serial, info.serial);
    }

    #[test]
    fn hub_profile_is_a_server_and_client_certificate_for_its_names() {
        let ca = Ca::generate("test CA").unwrap();
        let (_key, csr) = generate_key_and_csr("whatever", &[]).unwrap();
        let profile = Profile::Hub {
            id: "hub-1".into(),
            names: vec!["hub-1.example.com".into(), "10.0.0.7".into()],
        };
        let cert = ca
            .sign_csr(&csr, &profile, Duration::from_secs(600))
            .unwrap();
        let info = cert_info(&cert).unwrap();
        assert_eq!(info.common_name, "hub-1");
        assert_eq!(info.organizations, vec![HUBS_GROUP.to_owned()]);
        assert_eq!(info.names, vec!["hub-1.example.com", "10.0.0.7"]);
        assert!(info.client_auth && info.server_auth);
        verify_server_cert(&ca.cert_pem(), &cert, "hub-1.example.com").unwrap();
        verify_server_cert(&ca.cert_pem(), &cert, "10.0.0.7").unwrap();
        assert!(verify_server_cert(&ca.cert_pem(), &cert, "other.example.com").is_err());
        verify_client_cert(&ca.cert_pem(), &cert).unwrap();
        let no_names = Profile::Hub {
            id: "hub-1".into(),
            names: vec![],
        };
        assert!(ca
            .sign_csr(&csr, &no_names, Duration::from_secs(1))
            .is_err());
        let agent = Profile::Agent { cluster: "".into() };
        assert!(ca.sign_csr(&csr, &agent, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn a_tampered_or_garbled_request_is_refused() {
        use base64::Engine;
        let ca = Ca::generate("test CA").unwrap();
        let profile = Profile::Agent {
            cluster: "edge-1".into(),
        };
        let (_key, csr) = generate_key_and_csr("edge-1", &[]).unwrap();
        let (label, mut der) = pem_der(&csr);
        // Change the requested common name: the signature no longer covers the content.
        let at = der
            .windows(6)
            .position(|w| w == b"edge-1")
            .expect("the subject is in the request");
        der[at + 5] = b'2';
        let tampered = der_to_pem(&label, &der);
        let e = ca
            .sign_csr(&tampered, &profile, Duration::from_secs(60))
            .unwrap_err();
        assert!(
            matches!(&e, PkiError::Csr(m) if m.contains("signature does not verify")),
            "{e}"
        );
        // Not a request at all.
        let e = ca
            .sign_csr(&ca.cert_pem(), &profile, Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(e, PkiError::Csr(_)), "{e}");
        let garbage = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
            base64::engine::general_purpose::STANDARD.encode(b"not DER")
        );
        assert!(ca
            .sign_csr(&garbage, &profile, Duration::from_secs(60))
            .is_err());
        assert!(ca.sign_csr(&csr, &profile, Duration::ZERO).is_err());
    }

    #[test]
    fn a_persisted_ca_loads_back_and_keeps_signing() {
        let ca = Ca::generate("test CA").unwrap();
        let hash = ca.cert_hash();
        assert!(hash.starts_with("sha256:"), "{hash}");
        let hex = &hash["sha256:".len()..];
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()));
        assert_eq!(cert_hash(&ca.cert_pem()).unwrap(), hash);
        let (_, der) = pem_der(&ca.cert_pem());
        assert_eq!(
            hash,
            hash_der(&der),
            "the hash is over the certificate's DER"
        );

        let loaded = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(loaded.cert_hash(), hash);
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem(), ca.key_pem());
        let (_k, csr) = generate_key_and_csr("x", &[]).unwrap();
        let cert = loaded
            .sign_csr(
                &csr,
                &Profile::Agent {
                    cluster: "edge-9".into(),
                },
                Duration::from_secs(60),
            )
            .unwrap();
        verify_client_cert(&ca.cert_pem(), &cert).unwrap();
        let client = loaded.issue_client("alice", &["devs"]).unwrap();
        verify_client_cert(&ca.cert_pem(), &client.cert).unwrap();

        // The wrong key, a certificate that is not a CA, garbage.
        let other = Ca::generate("other").unwrap();
        let e = Ca::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(e.to_string().contains("not the key"), "{e}");
        let leaf = ca.issue_client("bob", &[]).unwrap();
        let e = Ca::from_pem(&leaf.cert, &leaf.key).unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
        assert!(Ca::from_pem("nothing", &ca.key_pem()).is_err());
        assert!(Ca::from_pem(&ca.cert_pem(), "nothing").is_err());
    }

    #[test]
    fn renewal_lands_between_70_and_90_percent_of_the_life() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let nb = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(1000);
        let mut low = 0;
        let mut high = 0;
        for _ in 0..2000 {
            let at = renew_at(nb, na, &mut rng);
            let off = at.duration_since(nb).unwrap().as_secs_f64();
            assert!((700.0..=900.0).contains(&off), "{off}");
            low += usize::from(off < 750.0);
            high += usize::from(off > 850.0);
        }
        assert!(low > 300 && high > 300, "uniform: {low} low, {high} high");
        // A certificate whose life is empty or negative: renew at its end (now, in practice).
        assert_eq!(renew_at(na, nb, &mut rng), nb);
        assert_eq!(renew_at(nb, nb, &mut rng), nb);
    }

    #[test]
    fn a_reloading_cert_refuses_a_key_that_is_not_its_certificates() {
        let ca = Ca::generate("test CA").unwrap();
        let a = ca.issue_server(&["localhost"]).unwrap();
        let b = ca.issue_server(&["localhost"]).unwrap();
        assert!(ReloadingServerCert::from_pem(&a.cert, &b.key).is_err());
        let r = ReloadingServerCert::from_pem(&a.cert, &a.key).unwrap();
        let before = r.current();
        let e = r.set(&b.cert, &a.key).unwrap_err();
        assert!(e.to_string().contains("not the key"), "{e}");
        assert_eq!(
            r.current().cert,
            before.cert,
            "a failed set keeps the old one"
        );
        r.set(&b.cert, &b.key).unwrap();
        assert_ne!(r.current().cert, before.cert);
    }

    /// A loopback TLS server whose certificate is a `ReloadingServerCert` and which requires a
    /// client certificate; each connection reports the client's leaf certificate, then echoes.
    #[tokio::test]
    async fn new_handshakes_present_the_new_cert_and_old_connections_carry_on() {
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let ca = Ca::generate("test CA").unwrap();
        let server_a = ca.issue_server(&["localhost"]).unwrap();
        let server_b = ca.issue_server(&["localhost"]).unwrap();
        let client_a = ca.issue_client("edge-1", &[AGENTS_GROUP]).unwrap();
        let client_b = ca.issue_client("edge-1", &[AGENTS_GROUP]).unwrap();
        let roots = Arc::new(parse_roots(&ca.cert_pem()).unwrap());

        let server_cert =
            Arc::new(ReloadingServerCert::from_pem(&server_a.cert, &server_a.key).unwrap());
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap();
        let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(server_cert.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut tls = acceptor.accept(tcp).await.unwrap();
                    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                    seen_tx.send(leaf).unwrap();
                    let mut buf = [0u8; 64];
                    loop {
                        let n = tls.read(&mut buf).await.unwrap_or(0);
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });

        let client_cert =
            Arc::new(ReloadingClientCert::from_pem(&client_a.cert, &client_a.key).unwrap());
        let mut client_cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_cert_resolver(client_cert.clone());
        // A resumed session would not present the client certificate again.
        client_cfg.resumption = rustls::client::Resumption::disabled();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        let dial = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            // Round trip once so that the server has the client's certificate.
            tls.write_all(b"hi").await.unwrap();
            let mut buf = [0u8; 2];
            tls.read_exact(&mut buf).await.unwrap();
            tls
        };
        let leaf = |pem: &str| parse_certs(pem).unwrap().remove(0);
        let server_leaf = |tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        };

        let mut old = dial().await;
        assert_eq!(server_leaf(&old), leaf(&server_a.cert));
        assert_eq!(seen.recv().await.unwrap(), leaf(&client_a.cert));

        server_cert.set(&server_b.cert, &server_b.key).unwrap();
        client_cert.set(&client_b.cert, &client_b.key).unwrap();

        let new = dial().await;
        assert_eq!(server_leaf(&new), leaf(&server_b.cert));
        assert_eq!(seen.recv().await.unwrap(), leaf(&client_b.cert));

        // The connection made before the swap still works, with the certificates it had.
        old.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        old.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
        assert_eq!(server_leaf(&old), leaf(&server_a.cert));
    }
}
