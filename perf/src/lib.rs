//! KubeHub's load harness as a library: the `kubehub-perf` binary is its command line, and
//! the tests drive the same pieces. See `perf/README.md` for the scenarios and how to run them.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

pub mod bulk;
pub mod call;
pub mod clusters;
pub mod compare;
pub mod edge;
pub mod failover;
pub mod fanout;
pub mod fleet;
pub mod get;
pub mod hol;
pub mod idle;
pub mod load;
pub mod peer_hop;
pub mod peers;
pub mod plot;
pub mod report;
pub mod scenario;
pub mod stack;
pub mod summary;
pub mod sys;

/// Logs to stderr at `RUST_LOG`, else at `default` (`error`, `warn`).
pub fn init_logging(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for a log file or a collector.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// An HTTP/1.1 client (TLS or plain) with empty request bodies.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub fn client(ca: Option<&std::path::Path>, conns: usize) -> Result<HttpClient, String> {
    let roots = match ca {
        Some(ca) => kubehub_pki::load_roots(ca).map_err(|e| e.to_string())?,
        None => rustls::RootCertStore::empty(),
    };
    https_client(roots, conns)
}

/// The roots trusting `ca_pem` (PEM, one or more certificates); none: an empty store (plain
/// HTTP only).
pub fn roots(ca_pem: Option<&str>) -> Result<rustls::RootCertStore, String> {
    match ca_pem {
        Some(pem) => kubehub_pki::parse_roots(pem).map_err(|e| e.to_string()),
        None => Ok(rustls::RootCertStore::empty()),
    }
}

/// The harness's TLS client configuration (ring, TLS 1.2 and 1.3, no client certificate)
/// trusting `roots`; callers set ALPN if they speak HTTP themselves.
pub fn tls_client(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// An HTTP/1.1 client over TLS (or plain HTTP) trusting `roots`, keeping up to `conns` idle
/// connections per host.
pub fn https_client<B>(
    roots: rustls::RootCertStore,
    conns: usize,
) -> Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>, String>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
{
    let tls = tls_client(roots)?;
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(conn))
}
