//! A development PKI: a CA and the certificates it signs, generated with rcgen, as PEM.
//!
//! The simulator's `--tls` mode and the tests use it; production certificates come from the
//! metaserver's CA.

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
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

impl DevCa {
    /// A new CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<DevCa, PkiError> {
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
        Ok(DevCa { issuer })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_server_and_client_certs() {
        let ca = DevCa::generate("test CA").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let server = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        assert_eq!(parse_certs(&server.cert).unwrap().len(), 1);
        server_config(&server).unwrap();
        let client = ca.issue_client("alice", &["devs"]).unwrap();
        assert!(parse_key(&client.key).is_ok());
        assert!(parse_certs("garbage").unwrap().is_empty());
    }
}
