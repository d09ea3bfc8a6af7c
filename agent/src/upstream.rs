//! The edge API server, as the agent calls it: an HTTP/1.1 client (hyper, rustls) with the
//! agent's own credentials, or an in-process handler ([`UpstreamClient::in_process`]) for an
//! agent whose edge lives in the same process (the load harness runs thousands of agents,
//! each over its own simulated cluster's in-process API, without an HTTP connection per
//! watch).

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::combinators::BoxBody;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

use crate::config::Upstream;

/// Request body type sent upstream.
pub type UpBody = BoxBody<Bytes, std::io::Error>;

/// Response body type from upstream.
pub type DownBody = BoxBody<Bytes, std::io::Error>;

/// An in-process edge: answers a request (path and query in the URI, fields, body).
pub type Handler = Arc<
    dyn Fn(
            Request<UpBody>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<http::Response<DownBody>, String>> + Send>,
        > + Send
        + Sync,
>;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// A file could not be read.
    #[error("reading {0}: {1}")]
    Read(String, std::io::Error),
    /// TLS material is bad.
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// The URL is bad.
    #[error("upstream url: {0}")]
    Url(String),
}

/// A client for the edge API server.
#[derive(Clone)]
pub struct UpstreamClient {
    via: Via,
    base: String,
    token: Option<Arc<str>>,
}

#[derive(Clone)]
enum Via {
    Http(Arc<Client<hyper_rustls::HttpsConnector<HttpConnector>, UpBody>>),
    InProcess(Handler),
}

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient")
            .field("base", &self.base)
            .finish()
    }
}

fn read(path: &std::path::Path) -> Result<String, UpstreamError> {
    std::fs::read_to_string(path).map_err(|e| UpstreamError::Read(path.display().to_string(), e))
}

impl UpstreamClient {
    /// Builds the client from the configuration.
    pub fn new(cfg: &Upstream) -> Result<UpstreamClient, UpstreamError> {
        let tls = |e: String| UpstreamError::Tls(e);
        let pem = |e: kubehub_pki::PkiError| UpstreamError::Tls(e.to_string());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &cfg.ca {
            Some(ca) => kubehub_pki::load_roots(ca).map_err(pem)?,
            None => rustls::RootCertStore::empty(),
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_root_certificates(roots);
        let tls_cfg = match (&cfg.client_cert, &cfg.client_key) {
            (Some(c), Some(k)) => {
                let certs = kubehub_pki::load_certs(c).map_err(pem)?;
                let key = kubehub_pki::load_key(k).map_err(pem)?;
                builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            _ => builder.with_no_client_auth(),
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_cfg)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let token = match (&cfg.token, &cfg.token_file) {
            (Some(t), _) => Some(Arc::from(t.trim())),
            (None, Some(f)) => Some(Arc::from(read(f)?.trim())),
            (None, None) => None,
        };
        let base = cfg.url.trim_end_matches('/').to_owned();
        base.parse::<Uri>()
            .map_err(|e| UpstreamError::Url(e.to_string()))?;
        Ok(UpstreamClient {
            via: Via::Http(Arc::new(client)),
            base,
            token,
        })
    }

    /// An upstream answered by `handler` in this process; `name` stands for its URL in logs.
    /// Requests reach the handler as they would reach an API server (hop-by-hop fields,
    /// `Host` and `Authorization` removed; the URI is the path and query only).
    pub fn in_process(name: impl Into<String>, handler: Handler) -> UpstreamClient {
        UpstreamClient {
            via: Via::InProcess(handler),
            base: name.into(),
            token: None,
        }
    }

    /// Sends a request for `path` (path and query) with the given method, fields and body.
    pub async fn send(
        &self,
        method: &[u8],
        path: &[u8],
        fields: &[(Bytes, Bytes)],
        body: UpBody,
    ) -> Result<http::Response<DownBody>, String> {
        self.call(request(method, path, fields, body)?).await
    }

    /// Sends a request built by [`request`] (its URI the path and query only): the base URL
    /// goes in front and the agent's credentials are added.
    pub async fn call(&self, mut req: Request<UpBody>) -> Result<http::Response<DownBody>, String> {
        if let Some(t) = &self.token {
            if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
                req.headers_mut().insert(http::header::AUTHORIZATION, v);
            }
        }
        let client = match &self.via {
            Via::Http(c) => c,
            Via::InProcess(handler) => return handler(req).await,
        };
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        *req.uri_mut() = format!("{}{path}", self.base)
            .parse()
            .map_err(|e| format!("bad path: {e}"))?;
        let resp = client.request(req).await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            msg
        })?;
        use http_body_util::BodyExt;
        Ok(resp.map(|b| b.map_err(std::io::Error::other).boxed()))
    }
}

/// A forwarded request as the edge (the API server, or a plugin) receives it: the URI is the
/// path and query only; hop-by-hop fields, `Host` and `Authorization` are removed.
pub fn request(
    method: &[u8],
    path: &[u8],
    fields: &[(Bytes, Bytes)],
    body: UpBody,
) -> Result<Request<UpBody>, String> {
    let uri: Uri = String::from_utf8_lossy(path)
        .parse()
        .map_err(|e| format!("bad path: {e}"))?;
    let method = http::Method::from_bytes(method).map_err(|e| format!("bad method: {e}"))?;
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(h) = req.headers_mut() {
        for (n, v) in fields {
            if is_hop_by_hop(n)
                || n.eq_ignore_ascii_case(b"host")
                || n.eq_ignore_ascii_case(b"authorization")
            {
                continue;
            }
            if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
                h.append(n, v);
            }
        }
    }
    req.body(body).map_err(|e| e.to_string())
}

pub use kubehub_kapi::http::is_hop_by_hop;
