//! Certificates that can be replaced while a TLS server or client runs: rustls resolvers over
//! an atomically swapped [`CertifiedKey`]. A handshake reads the current certificate once, so
//! after [`ReloadingCert::set`] new handshakes present the new
//! certificate while established connections, which hold no reference to the resolver's
//! slot, carry on untouched.
//!
//! Clients: TLS 1.3 session resumption does not present a client certificate again (the
//! server keeps the identity of the resumed session), so a client that renews its certificate
//! should disable resumption (`ClientConfig::resumption`) for its handshakes to carry the new
//! one.

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{parse_certs, parse_key, PkiError};

/// A certificate chain and its key as rustls signs with them; the key must be the key of the
/// chain's first certificate.
fn certified_key(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, PkiError> {
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate in the PEM text".into()));
    }
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        match e {
            rustls::Error::InconsistentKeys(_) => PkiError::Invalid(format!(
                "the private key is not the key of the certificate ({e})"
            )),
            e => PkiError::Tls(e),
        }
    })
}

fn certified_pem(cert_pem: &str, key_pem: &str) -> Result<CertifiedKey, PkiError> {
    certified_key(parse_certs(cert_pem)?, parse_key(key_pem)?)
}

/// A certificate that can be replaced while a server or a client runs: a rustls resolver for
/// servers (`ServerConfig::builder()…with_cert_resolver`: every handshake gets the current
/// certificate whatever the client asks for, SNI is not used) and for clients
/// (`…with_client_cert_resolver`: every handshake that asks for a client certificate gets the
/// current one).
pub struct ReloadingCert(ArcSwap<CertifiedKey>);

/// The name servers use.
pub type ReloadingServerCert = ReloadingCert;
/// The name clients use.
pub type ReloadingClientCert = ReloadingCert;

impl ReloadingCert {
    /// Starts with a chain (leaf first) and its key.
    pub fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<ReloadingCert, PkiError> {
        Ok(ReloadingCert(ArcSwap::from_pointee(certified_key(
            certs, key,
        )?)))
    }

    /// Starts with a PEM chain and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ReloadingCert, PkiError> {
        Ok(ReloadingCert(ArcSwap::from_pointee(certified_pem(
            cert_pem, key_pem,
        )?)))
    }

    /// Replaces the certificate for the handshakes that start from now on. On an error (bad
    /// PEM, a key that is not the certificate's) the current certificate stays.
    pub fn set(&self, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
        self.0.store(Arc::new(certified_pem(cert_pem, key_pem)?));
        Ok(())
    }

    /// [`ReloadingCert::set`] from DER.
    pub fn set_der(
        &self,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), PkiError> {
        self.0.store(Arc::new(certified_key(certs, key)?));
        Ok(())
    }

    /// The certificate new handshakes present.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ck = self.0.load();
        let leaf = ck
            .cert
            .first()
            .map(|c| crate::hash_der(c))
            .unwrap_or_default();
        f.debug_struct("ReloadingCert")
            .field("leaf", &leaf)
            .finish()
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for ReloadingCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
