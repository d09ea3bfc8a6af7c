//! The simulator on sockets: HTTP/1.1 (keep-alive, chunked streaming), plain or TLS, with an
//! optional bearer token, serving one cluster at `/` or many at `/clusters/{name}/`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use kubehub_kapi::Status;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::api::{self, status_response, Body, MAX_BODY};
use super::cluster::Cluster;
use super::kubelet;

/// Which cluster answers a request.
#[derive(Debug, Clone)]
pub enum Router {
    /// One cluster at the root.
    Single(Arc<Cluster>),
    /// Many clusters, each under `/clusters/{name}/`.
    Multi(Arc<HashMap<String, Arc<Cluster>>>),
}

/// How to serve.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Serve TLS with this configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Require `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Record every request served here (tests count what reached the edge).
    pub log: Option<Arc<RequestLog>>,
}

/// The requests a simulator served, in arrival order: `METHOD path?query`.
#[derive(Debug, Default)]
pub struct RequestLog(std::sync::Mutex<Vec<String>>);

impl RequestLog {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    /// Everything recorded so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets what was recorded.
    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A running server; dropping it (or [`Server::shutdown`]) stops it.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Binds `addr` and serves in the background (on the current tokio runtime).
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    opts: ServeOptions,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (stop, mut stopped) = watch::channel(false);
    let opts = Arc::new(opts);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, peer)) => {
                        let (router, opts) = (router.clone(), opts.clone());
                        conns.spawn(async move {
                            if let Err(e) = connection(sock, router, opts).await {
                                tracing::debug!(%peer, "connection ended: {e}");
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
                _ = stopped.changed() => break,
            }
        }
        conns.shutdown().await;
    });
    Ok(Server {
        addr,
        stop,
        task: Some(task),
    })
}

async fn connection(
    sock: TcpStream,
    router: Router,
    opts: Arc<ServeOptions>,
) -> Result<(), String> {
    sock.set_nodelay(true).map_err(|e| e.to_string())?;
    let service = {
        let opts = opts.clone();
        service_fn(move |req: Request<Incoming>| {
            let (router, opts) = (router.clone(), opts.clone());
            async move { Ok::<_, Infallible>(serve_request(&router, &opts, req).await) }
        })
    };
    let http = http1::Builder::new();
    match &opts.tls {
        Some(cfg) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg.clone());
            let tls = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(sock))
                .await
                .map_err(|_| "TLS handshake timed out".to_owned())?
                .map_err(|e| format!("TLS handshake: {e}"))?;
            http.serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await
                .map_err(|e| e.to_string())
        }
        None => http
            .serve_connection(TokioIo::new(sock), service)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
    }
}

fn authorized(opts: &ServeOptions, req: &Request<Incoming>) -> bool {
    let Some(token) = &opts.token else {
        return true;
    };
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.trim() == token)
}

async fn serve_request(
    router: &Router,
    opts: &ServeOptions,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if let Some(log) = &opts.log {
        log.push(format!("{} {}", req.method(), req.uri()));
    }
    if !authorized(opts, &req) && !matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        return status_response(&Status::unauthorized());
    }
    let (mut parts, body) = req.into_parts();
    let cluster = match router {
        Router::Single(c) => c.clone(),
        Router::Multi(map) => {
            let rest = path.strip_prefix("/clusters/").unwrap_or("");
            let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
            let Some(c) = map.get(name) else {
                return status_response(&Status::not_found("", "clusters", name));
            };
            let pq = match parts.uri.query() {
                Some(q) => format!("/{tail}?{q}"),
                None => format!("/{tail}"),
            };
            match pq.parse() {
                Ok(uri) => parts.uri = uri,
                Err(_) => return status_response(&Status::bad_request("malformed path")),
            }
            c.clone()
        }
    };
    if kubelet::is_streaming(parts.uri.path()) {
        // exec, attach, port-forward: an upgrade, not a body.
        let uri = parts.uri.clone();
        let resp = kubelet::handle(&cluster, Request::from_parts(parts, body)).await;
        tracing::debug!(cluster = cluster.name(), %uri, status = resp.status().as_u16(), "streaming request");
        return resp;
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return status_response(&if too_large {
                Status::new(
                    413,
                    "RequestEntityTooLarge",
                    format!("Request entity too large: limit is {MAX_BODY}"),
                )
            } else {
                Status::bad_request(format!("reading the request body: {e}"))
            });
        }
    };
    let method = parts.method.clone();
    let uri = parts.uri.clone();
    let resp = api::handle(&cluster, Request::from_parts(parts, body)).await;
    tracing::debug!(cluster = cluster.name(), %method, %uri, status = resp.status().as_u16(), "request");
    resp
}
