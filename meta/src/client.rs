//! A client of meta's API, for `kubehub ctl` and tests: one HTTPS request per call (a command
//! line makes a handful), bearer token or client certificate, JSON in and out, errors with
//! meta's message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host:port`.
    #[error("meta URL {0:?}: expected https://host[:port]")]
    Url(String),
    /// TLS material could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Meta could not be reached.
    #[error("connecting to {0}: {1}")]
    Connect(String, String),
    /// Meta answered with an error.
    #[error("meta answered {code}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Meta's message.
        message: String,
    },
    /// The answer is not JSON.
    #[error("meta's answer is not JSON: {0}")]
    Body(String),
}

/// A client of one metaserver.
#[derive(Clone)]
pub struct Client {
    host: String,
    port: u16,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({}:{})", self.host, self.port)
    }
}

/// Splits `https://host:port[/]`.
pub fn split_url(url: &str) -> Result<(String, u16), ClientError> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| ClientError::Url(url.into()))?
        .trim_end_matches('/');
    if rest.is_empty() || rest.contains('/') {
        return Err(ClientError::Url(url.into()));
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(':') => {
            let port = p.parse().map_err(|_| ClientError::Url(url.into()))?;
            Ok((h.trim_matches(['[', ']']).to_owned(), port))
        }
        _ => Ok((rest.to_owned(), 443)),
    }
}

impl Client {
    /// A client of `url` trusting `ca_pem`, authenticating with `token` (if any) and with a
    /// client certificate (if any: `(cert_pem, key_pem)`).
    pub fn new(
        url: &str,
        ca_pem: &str,
        token: Option<String>,
        client_cert: Option<(&str, &str)>,
    ) -> Result<Client, ClientError> {
        let (host, port) = split_url(url)?;
        let tls = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
        let roots = kubehub_pki::parse_roots(ca_pem).map_err(|e| tls(&e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(&e))?
            .with_root_certificates(roots);
        let cfg = match client_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    kubehub_pki::parse_certs(cert).map_err(|e| tls(&e))?,
                    kubehub_pki::parse_key(key).map_err(|e| tls(&e))?,
                )
                .map_err(|e| tls(&e))?,
            None => builder.with_no_client_auth(),
        };
        Ok(Client {
            host,
            port,
            token,
            tls: Arc::new(cfg),
            timeout: Duration::from_secs(30),
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("PUT", path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call("DELETE", path, None).await
    }

    /// One call; the JSON answer (`null` for 204), or meta's error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        tokio::time::timeout(self.timeout, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                ClientError::Connect(self.addr(), format!("no answer within {:?}", self.timeout))
            })?
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    async fn call_inner(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let addr = self.addr();
        let connect = |e: &dyn std::fmt::Display| ClientError::Connect(addr.clone(), e.to_string());
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| connect(&e))?;
        let name = rustls_pki_types::ServerName::try_from(self.host.clone())
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| connect(&e))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| connect(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let bytes = body
            .map(|b| Bytes::from(serde_json::to_vec(b).unwrap_or_default()))
            .unwrap_or_default();
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &addr)
            .header("content-type", "application/json");
        if let Some(t) = &self.token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| ClientError::Url(e.to_string()))?;
        let resp = send.send_request(req).await.map_err(|e| connect(&e))?;
        let code = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| connect(&e))?
            .to_bytes();
        let value: Value = if body.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(_) if code >= 400 => {
                    return Err(ClientError::Api {
                        code,
                        message: String::from_utf8_lossy(&body).trim().to_owned(),
                    })
                }
                Err(e) => return Err(ClientError::Body(e.to_string())),
            }
        };
        if code >= 400 {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            return Err(ClientError::Api { code, message });
        }
        Ok(value)
    }
}
