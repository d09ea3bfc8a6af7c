//! The HTTP client for the metaserver's JSON API as a joiner and renewer calls it (and the
//! agent, for the registry): one JSON request per connection, over TLS with the configuration
//! the caller passes (which CA to trust, which client certificate), with a deadline and a bound
//! on the answer's size; and streamed NDJSON answers (the feeds) line by line ([`Lines`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::EnrollError;

/// The largest answer read from the metaserver.
const MAX_ANSWER: usize = 1024 * 1024;

/// The metaserver at a base URL.
#[derive(Debug, Clone)]
pub struct MetaClient {
    url: String,
    user_agent: &'static str,
    host: String,
    port: u16,
    authority: String,
    prefix: String,
    timeout: Duration,
    /// `Authorization: Bearer …` on every call (`kubehub ctl`); enrollment sends none.
    token: Option<String>,
}

/// The metaserver's error answers: `{"error": "<message>"}`.
#[derive(serde::Deserialize)]
struct ErrorBody {
    error: String,
}

impl MetaClient {
    /// `url`: `https://host[:port][/prefix]`; `timeout`: the deadline of one call (connect,
    /// TLS, request, answer).
    pub fn new(url: &str, timeout: Duration) -> Result<MetaClient, EnrollError> {
        let bad = |why: &str| EnrollError::Config(format!("metaserver URL {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad("must be https://"));
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(MetaClient {
            url: url.trim_end_matches('/').to_owned(),
            user_agent: concat!("kubehub/", env!("CARGO_PKG_VERSION")),
            host,
            port: authority.port_u16().unwrap_or(443),
            authority: authority.as_str().to_owned(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout,
            token: None,
        })
    }

    /// The same client, sending `user_agent` (e.g. `kubehub-agent/0.1.0`).
    pub fn with_user_agent(mut self, user_agent: &'static str) -> MetaClient {
        self.user_agent = user_agent;
        self
    }

    /// The same client, authenticating every call with a bearer token.
    pub fn with_token(mut self, token: String) -> MetaClient {
        self.token = Some(token);
        self
    }

    /// The base URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `GET path`, the answer's JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
    ) -> Result<T, EnrollError> {
        self.call(tls, Method::GET, path, None).await
    }

    /// `POST path` with a JSON body, the answer's JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
        body: &B,
    ) -> Result<T, EnrollError> {
        let body = serde_json::to_vec(body).map_err(|e| self.transport(path, e))?;
        self.call(tls, Method::POST, path, Some(body)).await
    }

    /// `PUT path` with a JSON body, the answer's JSON.
    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
        body: &B,
    ) -> Result<T, EnrollError> {
        let body = serde_json::to_vec(body).map_err(|e| self.transport(path, e))?;
        self.call(tls, Method::PUT, path, Some(body)).await
    }

    /// `DELETE path`, the answer's JSON (`null` for an empty answer).
    pub async fn delete<T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
    ) -> Result<T, EnrollError> {
        self.call(tls, Method::DELETE, path, None).await
    }

    /// Any call with an optional JSON body: what `kubehub ctl` sends.
    pub async fn request<T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, EnrollError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| self.transport(path, format!("method {method:?}: {e}")))?;
        self.call(tls, method, path, body).await
    }

    fn transport(&self, path: &str, why: impl std::fmt::Display) -> EnrollError {
        EnrollError::Meta {
            url: format!("{}{path}", self.url),
            why: why.to_string(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, EnrollError> {
        let exchange = self.exchange(tls, method, path, body);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.transport(path, format!("no answer within {:?}", self.timeout)))??;
        if !status.is_success() {
            return Err(self.refused(path, status, &bytes));
        }
        // An empty answer (204) reads as JSON `null`.
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).map_err(|e| EnrollError::BadAnswer {
            url: format!("{}{path}", self.url),
            why: e.to_string(),
        })
    }

    /// `GET path` answered with newline-delimited JSON (`/v1/sync`, `/v1/registry/watch`):
    /// the answer's head within the call's deadline, then its lines one by one as they
    /// arrive ([`Lines::next`]), each at most `max_line` bytes. The stream has no deadline
    /// of its own: the caller decides how long it waits for a line (heartbeats).
    pub async fn lines<T: DeserializeOwned>(
        &self,
        tls: Arc<rustls::ClientConfig>,
        path: &str,
        max_line: usize,
    ) -> Result<Lines<T>, EnrollError> {
        let open = self.open(tls, Method::GET, path, None, "application/x-ndjson");
        let (resp, driver) = tokio::time::timeout(self.timeout, open)
            .await
            .map_err(|_| self.transport(path, format!("no answer within {:?}", self.timeout)))??;
        let status = resp.status();
        if !status.is_success() {
            let bytes = tokio::time::timeout(
                self.timeout,
                Limited::new(resp.into_body(), MAX_ANSWER).collect(),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| b.to_bytes())
            .unwrap_or_default();
            driver.abort();
            return Err(self.refused(path, status, &bytes));
        }
        Ok(Lines {
            body: resp.into_body(),
            buf: bytes::BytesMut::new(),
            max_line,
            url: format!("{}{path}", self.url),
            driver,
            _line: std::marker::PhantomData,
        })
    }

    fn refused(&self, path: &str, status: StatusCode, bytes: &[u8]) -> EnrollError {
        let message = match serde_json::from_slice::<ErrorBody>(bytes) {
            Ok(b) => b.error,
            Err(_) => String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned(),
        };
        EnrollError::Refused {
            url: format!("{}{path}", self.url),
            status: status.as_u16(),
            message,
        }
    }

    async fn exchange(
        &self,
        tls: Arc<rustls::ClientConfig>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), EnrollError> {
        let (resp, driver) = self
            .open(tls, method, path, body, "application/json")
            .await?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| self.transport(path, format!("reading the answer: {e}")));
        driver.abort();
        Ok((status, bytes?))
    }

    /// Connects, sends the request and reads the answer's head; the connection lives as long
    /// as the returned task (abort it when done with the body).
    async fn open(
        &self,
        tls: Arc<rustls::ClientConfig>,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        accept: &'static str,
    ) -> Result<(http::Response<Incoming>, tokio::task::JoinHandle<()>), EnrollError> {
        let err = |e: &dyn std::fmt::Display| self.transport(path, e);
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| err(&format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| err(&format!("server name {}: {e}", self.host)))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| err(&format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| err(&e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, accept)
            .header(header::USER_AGENT, self.user_agent);
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let sent = match req.body(Full::new(Bytes::from(body.unwrap_or_default()))) {
            Ok(req) => sender.send_request(req).await.map_err(|e| err(&e)),
            Err(e) => Err(err(&e)),
        };
        match sent {
            Ok(resp) => Ok((resp, driver)),
            Err(e) => {
                driver.abort();
                Err(e)
            }
        }
    }
}

/// A streamed NDJSON answer ([`MetaClient::lines`]): one `T` a line. Dropping it closes the
/// connection.
#[derive(Debug)]
pub struct Lines<T> {
    body: Incoming,
    buf: bytes::BytesMut,
    max_line: usize,
    url: String,
    driver: tokio::task::JoinHandle<()>,
    _line: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Lines<T> {
    /// The next line; `None` once the server ended the answer. Cancel-safe: bytes read are
    /// kept for the next call.
    pub async fn next(&mut self) -> Result<Option<T>, EnrollError> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(i + 1);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(&line)
                    .map(Some)
                    .map_err(|e| self.bad(format!("a line that does not read: {e}")));
            }
            if self.buf.len() > self.max_line {
                return Err(self.bad(format!("a line longer than {} bytes", self.max_line)));
            }
            match self.body.frame().await {
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Err(self.bad("the answer ended in the middle of a line".into())),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Err(EnrollError::Meta {
                        url: self.url.clone(),
                        why: format!("reading the answer: {e}"),
                    })
                }
            }
        }
    }

    fn bad(&self, why: String) -> EnrollError {
        EnrollError::BadAnswer {
            url: self.url.clone(),
            why,
        }
    }
}

impl<T> Drop for Lines<T> {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A server certificate "verifier" that accepts any certificate (it still checks that the
/// server holds the key of the certificate it shows). Used for exactly one call, `GET /v1/ca`,
/// whose answer the caller then accepts only if its hash is the one the join token pins.
#[derive(Debug)]
pub struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl AnyServerCert {
    /// A client configuration trusting any server, without a client certificate.
    pub fn client_config() -> Result<Arc<rustls::ClientConfig>, EnrollError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| EnrollError::Config(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

impl rustls::client::danger::ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Duration::from_secs(1);
        let c = MetaClient::new("https://meta.example.com:9443/", t).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("meta.example.com", 9443));
        assert_eq!(c.prefix, "");
        assert_eq!(c.url(), "https://meta.example.com:9443");
        let c = MetaClient::new("https://[::1]/kubehub", t).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 443));
        assert_eq!(c.prefix, "/kubehub");
        assert_eq!(c.authority, "[::1]");
        for bad in ["http://meta:1", "meta:1", "https://", ""] {
            assert!(MetaClient::new(bad, t).is_err(), "{bad}");
        }
    }
}
