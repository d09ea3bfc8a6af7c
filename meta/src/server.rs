//! Serving the API over HTTPS: meta's own serving certificate (issued by its CA at start for
//! `server_names`), client certificates verified against the same CA when presented (hubs and
//! agents authenticate with them; `kubehub ctl` uses a bearer token instead), HTTP/1.1.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service;
use tracing::{debug, info, warn};

use crate::api::{self, Peer};
use crate::error::MetaError;
use crate::service::Meta;

/// A running metaserver.
#[derive(Debug)]
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting and ends open connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn tls_config(meta: &Meta) -> Result<Arc<rustls::ServerConfig>, MetaError> {
    let internal = |e: &dyn std::fmt::Display| MetaError::Internal(format!("meta's TLS: {e}"));
    let names: Vec<&str> = meta.cfg.server_names.iter().map(String::as_str).collect();
    let cert = meta.ca().issue_server(&names).map_err(|e| internal(&e))?;
    let roots = kubehub_pki::parse_roots(meta.ca_pem()).map_err(|e| internal(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| internal(&e))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| internal(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            kubehub_pki::parse_certs(&cert.cert).map_err(|e| internal(&e))?,
            kubehub_pki::parse_key(&cert.key).map_err(|e| internal(&e))?,
        )
        .map_err(|e| internal(&e))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn peer_of(conn: &rustls::ServerConnection) -> Peer {
    let Some(der) = conn.peer_certificates().and_then(|c| c.first()) else {
        return Peer::default();
    };
    let Ok((_, x)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Peer::default();
    };
    let common_name = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("")
        .to_owned();
    let organizations = x
        .subject()
        .iter_organization()
        .filter_map(|a| a.as_str().ok().map(str::to_owned))
        .collect();
    let names = kubehub_pki::cert_info(&kubehub_pki::cert_der_to_pem(der.as_ref()))
        .map(|i| i.names)
        .unwrap_or_default();
    Peer {
        addr: None,
        common_name,
        organizations,
        names,
    }
}

/// Binds `meta.cfg.listen` and serves until stopped.
pub async fn start(meta: Meta) -> Result<Server, MetaError> {
    let listener = TcpListener::bind(meta.cfg.listen)
        .await
        .map_err(|e| MetaError::Internal(format!("binding {}: {e}", meta.cfg.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| MetaError::Internal(e.to_string()))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_config(&meta)?);
    let sweeper = meta.clone();
    let router = api::router(meta);
    let (stop, mut stopped) = watch::channel(false);
    // Lapsed bans leave the store (and the hubs' tables) within a sweep interval even when
    // nobody lists bans. Every replica sweeps; each delete compares the ban's revision.
    let mut sweep_stopped = stopped.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(crate::bans::SWEEP_INTERVAL) => {}
                _ = sweep_stopped.changed() => return,
            }
            if let Err(e) = sweeper.sweep_bans().await {
                debug!("sweeping lapsed bans: {e}");
            }
        }
    });
    info!(%addr, "metaserver listening");
    let task = tokio::spawn(async move {
        loop {
            let (tcp, from) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => return,
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
                let tls = match handshake.await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        debug!(%from, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        debug!(%from, "TLS handshake timed out");
                        return;
                    }
                };
                let mut peer = peer_of(tls.get_ref().1);
                peer.addr = Some(from);
                let svc = hyper::service::service_fn(
                    move |mut req: hyper::Request<hyper::body::Incoming>| {
                        req.extensions_mut().insert(peer.clone());
                        let mut router = router.clone();
                        async move { router.call(req.map(axum::body::Body::new)).await }
                    },
                );
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            debug!(%from, "connection: {e}");
                        }
                    }
                    _ = stopped.changed() => {}
                }
            });
        }
    });
    Ok(Server { addr, stop, task })
}
