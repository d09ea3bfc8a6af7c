//! # kubehub-pki: certificates for KubeHub
//!
//! * Loading: PEM files to what rustls takes ([`load_certs`], [`load_key`], [`load_roots`]),
//!   with the file named in every error. The hub and the agent load their TLS material with it.
//! * Issuing: a [`Ca`] (rcgen) that signs hub (server), agent (client, CN = cluster id) and user
//!   (client) certificates, and [`write_dev_set`], the set of files `kubehub certs` and
//!   `kubehub demo` write. The metaserver will own the production CA and use the same code.

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

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

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertPem {
    /// The certificate.
    pub cert: String,
    /// The PKCS#8 private key.
    pub key: String,
}

/// A certificate authority that can sign server and client certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
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
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Ca { issuer })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.as_ref().pem()
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
        let a = ca.issue_client(c, &["kubehub:agents"])?;
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
}
