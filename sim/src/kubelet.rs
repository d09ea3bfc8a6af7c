//! `pods/{name}/exec`, `pods/{name}/attach` and `pods/{name}/portforward`: what
//! kube-apiserver and the kubelet do for them, in one place.
//!
//! A request is validated as kube-apiserver validates it before proxying to the kubelet (the
//! pod exists: else 404; the container is the pod's: else 400 `container X is not valid for
//! pod Y`, or `a container name must be specified …` when the pod has several; the pod has a
//! node; the command is not empty; at least one of stdin, stdout, stderr), then as the kubelet
//! does (the pod is `Running`: else 400 `unable to upgrade connection: container not found
//! ("C")`, the line kubectl prints for a pod whose container is not running; the upgrade
//! headers: else 400 `unable to upgrade: missing upgrade headers in request`; a protocol both
//! sides speak). Port-forward needs the pod `Running` too (else 400 `unable to upgrade
//! connection: pod not found ("NAME_NAMESPACE")`, the kubelet's words); the ports come with
//! each forwarded connection's streams. Then the connection is upgraded (`101 Switching Protocols`, hyper's
//! `upgrade::on`) to one of the transports kubectl 1.30+ speaks
//! ([`kubehub_kapi::remotecommand`]):
//!
//! * exec and attach over **WebSocket** (`GET`, `v5.channel.k8s.io` or `v4.channel.k8s.io`):
//!   binary messages `[channel][payload]`; the session ends with the `Status` on channel 3 and
//!   a normal close;
//! * exec and attach over **SPDY/3.1** (`POST`, `v4.channel.k8s.io`): one stream per channel,
//!   each answered; output as DATA, the `Status` on the error stream, every stream finished
//!   with FIN;
//! * port-forward over **SPDY/3.1** (`portforward.k8s.io`), either directly or tunneled inside
//!   a WebSocket (`SPDY/3.1+portforward.k8s.io`: the SPDY byte stream split into binary
//!   messages), served by [`super::portforward`].
//!
//! What runs is [`super::shell`]'s: `exec` runs the command line, `attach` reaches the
//! container's main process. Each container's filesystem ([`super::vfs`]) is kept for the
//! pod's life (by pod uid) in the cluster's [`Runtimes`].
//!
//! Every stream is bounded: the process writes into channels of a few 64 KiB chunks that the
//! transport drains as the client reads; the client's stdin waits in a bounded channel until
//! the process reads it. A client that goes away ends the process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kubehub_kapi::path::{self, Endpoint};
use kubehub_kapi::query::Query;
use kubehub_kapi::remotecommand::{
    self as rc, channel, parse_ws_message, StreamType, WsMessage, PORT_FORWARD_V1,
    SPDY_TUNNEL_PREFIX, STREAM_TYPE,
};
use kubehub_kapi::Status;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::api::{status_response, Body};
use super::cluster::Cluster;
use super::portforward;
use super::shell::{self, Container, Program, SessionIo};
use super::spdy;
use super::vfs::Vfs;

/// Chunks of output queued between a process and its transport.
const OUTPUT_DEPTH: usize = 8;

/// Chunks of stdin queued between the transport and the process.
const INPUT_DEPTH: usize = 8;

/// How long the kubelet waits for the client to open the streams of a SPDY session.
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a finished session waits for the client to close its side.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pods with state before those that no longer exist are looked for (and forgotten).
const PRUNE_AT: usize = 256;

/// The subresources served here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Exec,
    Attach,
    PortForward,
}

/// Whether `path` is one of the streaming subresources ([`handle`] answers it).
pub fn is_streaming(path: &str) -> bool {
    sub_of(path).is_some()
}

fn sub_of(path: &str) -> Option<(String, String, Sub)> {
    let Endpoint::Resource(rp) = path::parse(path) else {
        return None;
    };
    if !rp.group.is_empty() || rp.version != "v1" || rp.resource != "pods" {
        return None;
    }
    let sub = match rp.subresource? {
        "exec" => Sub::Exec,
        "attach" => Sub::Attach,
        "portforward" => Sub::PortForward,
        _ => return None,
    };
    Some((rp.namespace?.to_owned(), rp.name?.to_owned(), sub))
}

/// The containers' filesystems of a cluster's pods, by pod uid.
#[derive(Debug)]
pub struct Runtimes {
    pods: Mutex<HashMap<String, PodRuntime>>,
    /// The size at which pods that no longer exist are next looked for.
    prune_at: std::sync::atomic::AtomicUsize,
}

impl Default for Runtimes {
    fn default() -> Self {
        Runtimes {
            pods: Mutex::default(),
            prune_at: std::sync::atomic::AtomicUsize::new(PRUNE_AT),
        }
    }
}

#[derive(Debug)]
struct PodRuntime {
    namespace: String,
    name: String,
    containers: HashMap<String, Arc<Mutex<Vfs>>>,
}

impl Runtimes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodRuntime>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pods with state.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no pod has state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The filesystem of a container (made on first use).
    fn filesystem(
        &self,
        cluster: &Cluster,
        uid: &str,
        ns: &str,
        pod: &str,
        container: &str,
        pod_ip: &str,
    ) -> Arc<Mutex<Vfs>> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.len() >= self.prune_at.load(Relaxed) {
            self.prune(cluster);
            // Live pods stay; look again once as many more have come.
            self.prune_at.store((self.len() * 2).max(PRUNE_AT), Relaxed);
        }
        let mut pods = self.lock();
        let p = pods.entry(uid.to_owned()).or_insert_with(|| PodRuntime {
            namespace: ns.to_owned(),
            name: pod.to_owned(),
            containers: HashMap::new(),
        });
        p.containers
            .entry(container.to_owned())
            .or_insert_with(|| Arc::new(Mutex::new(Vfs::for_container(pod, ns, pod_ip))))
            .clone()
    }

    /// Forgets pods that no longer exist (or were replaced by a pod of the same name).
    fn prune(&self, cluster: &Cluster) {
        let known: Vec<(String, String, String)> = self
            .lock()
            .iter()
            .map(|(uid, p)| (uid.clone(), p.namespace.clone(), p.name.clone()))
            .collect();
        let Some(pods) = cluster.type_index("", "v1", "pods") else {
            return;
        };
        let gone: Vec<String> = known
            .into_iter()
            .filter(|(uid, ns, name)| {
                let current = cluster
                    .get(pods, Some(ns), name)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                    .and_then(|v| v["metadata"]["uid"].as_str().map(str::to_owned));
                current.as_deref() != Some(uid.as_str())
            })
            .map(|(uid, ..)| uid)
            .collect();
        let mut map = self.lock();
        for uid in gone {
            map.remove(&uid);
        }
    }
}

/// What an exec or attach session runs, and which streams it has.
#[derive(Debug)]
struct Session {
    ctr: Arc<Container>,
    program: Program,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

#[derive(Debug)]
enum Plan {
    Streams(Session),
    PortForward(portforward::Target),
}

#[derive(Debug, Clone, Copy)]
enum Transport {
    WebSocket { v5: bool },
    WebSocketTunnel,
    Spdy,
}

/// Answers a streaming request: a `Status` error, or `101` with the session served on the
/// upgraded connection in the background.
pub async fn handle(cluster: &Arc<Cluster>, mut req: Request<Incoming>) -> Response<Body> {
    if !cluster.is_available() {
        return status_response(&Status::unavailable(
            "the simulated API server is restarting",
        ));
    }
    let (plan, transport, response) = match prepare(cluster, &req) {
        Ok(p) => p,
        Err(s) => return status_response(&s),
    };
    let upgrade = hyper::upgrade::on(&mut req);
    let what = format!("{} {}", req.method(), req.uri().path());
    tokio::spawn(async move {
        match upgrade.await {
            Ok(up) => {
                tracing::debug!("{what}: upgraded ({transport:?})");
                serve(plan, transport, TokioIo::new(up)).await;
                tracing::debug!("{what}: session ended");
            }
            Err(e) => tracing::debug!("{what}: upgrade failed: {e}"),
        }
    });
    response
}

fn header_values<'a>(req: &'a Request<Incoming>, name: &str) -> Vec<&'a str> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect()
}

fn has_token(values: &[&str], token: &str) -> bool {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn prepare(
    cluster: &Arc<Cluster>,
    req: &Request<Incoming>,
) -> Result<(Plan, Transport, Response<Body>), Status> {
    let Some((ns, name, sub)) = sub_of(req.uri().path()) else {
        return Err(Status::no_such_resource());
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return Err(Status::method_not_allowed());
    }
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let pods = cluster
        .type_index("", "v1", "pods")
        .ok_or_else(Status::no_such_resource)?;
    let pod: Value = serde_json::from_slice(&cluster.get(pods, Some(&ns), &name)?)
        .map_err(|e| Status::internal(e.to_string()))?;
    let plan = match sub {
        Sub::Exec | Sub::Attach => Plan::Streams(session(cluster, &pod, &name, sub, &query)?),
        Sub::PortForward => Plan::PortForward(port_target(&pod, &ns, &name)?),
    };
    let (transport, response) = upgrade(req, sub)?;
    Ok((plan, transport, response))
}

fn no_host(pod: &Value, name: &str) -> Result<(), Status> {
    if pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty() {
        return Err(Status::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    }
    Ok(())
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect()
}

fn session(
    cluster: &Arc<Cluster>,
    pod: &Value,
    name: &str,
    sub: Sub,
    query: &Query<'_>,
) -> Result<Session, Status> {
    let spec = &pod["spec"];
    let regular = names(&spec["containers"]);
    // kube-apiserver lists init, regular and ephemeral containers, in that order.
    let all: Vec<&str> = names(&spec["initContainers"])
        .into_iter()
        .chain(regular.iter().copied())
        .chain(names(&spec["ephemeralContainers"]))
        .collect();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if all.contains(&c) => c.to_owned(),
        Some(c) => {
            return Err(Status::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None => match regular.as_slice() {
            [one] => (*one).to_owned(),
            [] => {
                return Err(Status::bad_request(format!(
                    "a container name must be specified for pod {name}"
                )))
            }
            _ => {
                return Err(Status::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    all.join(" ")
                )))
            }
        },
    };
    no_host(pod, name)?;
    let stdin = query.flag("stdin")?;
    let stdout = query.flag("stdout")?;
    let mut stderr = query.flag("stderr")?;
    let tty = query.flag("tty")?;
    let program = match sub {
        Sub::Exec => {
            let command: Vec<String> = query.get_all("command").map(str::to_owned).collect();
            if command.is_empty() {
                return Err(Status::bad_request(
                    "you must specify at least one command for the container",
                ));
            }
            Program::Exec(command)
        }
        _ => Program::Attach,
    };
    if tty && stderr {
        // The kubelet: "tty and stderr cannot both be true"; it drops stderr.
        stderr = false;
    }
    if !stdin && !stdout && !stderr {
        return Err(Status::bad_request(
            "you must specify at least 1 of stdin, stdout, stderr",
        ));
    }
    // The kubelet finds no running container to exec in: init containers have finished, and
    // nothing runs in a pod that is not Running.
    let running = pod["status"]["phase"] == "Running"
        && !names(&spec["initContainers"]).contains(&container.as_str());
    if !running {
        return Err(Status::bad_request(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        )));
    }
    let c = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["ephemeralContainers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == container.as_str());
    let env: Vec<(String, String)> = c
        .and_then(|c| c["env"].as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let uid = pod["metadata"]["uid"].as_str().unwrap_or(name);
    let pod_ip = pod["status"]["podIP"].as_str().unwrap_or("");
    let fs = cluster
        .runtimes()
        .filesystem(cluster, uid, ns, name, &container, pod_ip);
    Ok(Session {
        ctr: Arc::new(Container {
            namespace: ns.to_owned(),
            pod: name.to_owned(),
            name: container,
            pod_ip: pod_ip.to_owned(),
            env,
            fs,
        }),
        program,
        stdin,
        stdout,
        stderr,
        tty,
    })
}

fn port_target(pod: &Value, ns: &str, name: &str) -> Result<portforward::Target, Status> {
    no_host(pod, name)?;
    if pod["status"]["phase"] != "Running" {
        return Err(Status::bad_request(format!(
            "unable to upgrade connection: pod not found (\"{name}_{ns}\")"
        )));
    }
    let spec = &pod["spec"];
    let mut ports: Vec<u16> = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["ports"].as_array().into_iter().flatten())
        .filter_map(|p| p["containerPort"].as_u64())
        .filter_map(|p| u16::try_from(p).ok())
        .collect();
    ports.sort_unstable();
    ports.dedup();
    Ok(portforward::Target {
        namespace: ns.to_owned(),
        pod: name.to_owned(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or("").to_owned(),
        ports,
    })
}

fn switching(headers: &[(&str, String)]) -> Response<Body> {
    let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            r.headers_mut().append(k, v);
        }
    }
    r
}

fn no_agreement(client: &[&str], server: &[&str]) -> String {
    format!(
        "unable to upgrade: unable to negotiate protocol: client supports [{}], server accepts [{}]",
        client.join(" "),
        server.join(" ")
    )
}

/// Which transport the request asks for, and the `101` that accepts it.
fn upgrade(req: &Request<Incoming>, sub: Sub) -> Result<(Transport, Response<Body>), Status> {
    let connection = header_values(req, "connection");
    let upgrade = header_values(req, "upgrade");
    if !has_token(&connection, "upgrade") || upgrade.is_empty() {
        return Err(Status::bad_request(
            "unable to upgrade: missing upgrade headers in request",
        ));
    }
    if has_token(&upgrade, "websocket") {
        if req.method() != Method::GET {
            return Err(Status::bad_request(
                "unable to upgrade: a WebSocket upgrade must be a GET",
            ));
        }
        let Some(key) = header_values(req, "sec-websocket-key").first().copied() else {
            return Err(Status::bad_request(
                "unable to upgrade: missing Sec-WebSocket-Key",
            ));
        };
        if header_values(req, "sec-websocket-version").first().copied() != Some("13") {
            return Err(Status::bad_request(
                "unable to upgrade: unsupported WebSocket version (13 is)",
            ));
        }
        let offered = header_values(req, "sec-websocket-protocol");
        let tunnel = format!("{SPDY_TUNNEL_PREFIX}{PORT_FORWARD_V1}");
        let server: Vec<&str> = match sub {
            Sub::PortForward => vec![&tunnel],
            _ => vec![rc::V5, rc::V4],
        };
        let Some(chosen) = rc::negotiate(&offered, &server) else {
            return Err(Status::bad_request(no_agreement(&offered, &server)));
        };
        let transport = match sub {
            Sub::PortForward => Transport::WebSocketTunnel,
            _ => Transport::WebSocket {
                v5: chosen == rc::V5,
            },
        };
        let response = switching(&[
            ("upgrade", "websocket".to_owned()),
            ("connection", "Upgrade".to_owned()),
            ("sec-websocket-accept", derive_accept_key(key.as_bytes())),
            ("sec-websocket-protocol", chosen.to_owned()),
        ]);
        return Ok((transport, response));
    }
    if has_token(&upgrade, rc::SPDY_UPGRADE) {
        let offered = header_values(req, rc::PROTOCOL_HEADER);
        if offered.is_empty() {
            return Err(Status::bad_request(format!(
                "unable to upgrade: {} is required",
                rc::PROTOCOL_HEADER
            )));
        }
        let server: &[&str] = match sub {
            Sub::PortForward => &[PORT_FORWARD_V1],
            _ => &[rc::V4],
        };
        let Some(chosen) = rc::negotiate(&offered, server) else {
            return Err(Status::new(
                403,
                "Forbidden",
                no_agreement(&offered, server),
            ));
        };
        let response = switching(&[
            ("connection", "Upgrade".to_owned()),
            ("upgrade", rc::SPDY_UPGRADE.to_owned()),
            (rc::PROTOCOL_HEADER, chosen.to_owned()),
        ]);
        return Ok((Transport::Spdy, response));
    }
    Err(Status::bad_request(format!(
        "unable to upgrade: unsupported upgrade protocol {:?}",
        upgrade.join(", ")
    )))
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(16 * 1024 * 1024))
        .max_frame_size(Some(16 * 1024 * 1024))
}

async fn serve(plan: Plan, transport: Transport, io: TokioIo<hyper::upgrade::Upgraded>) {
    match (plan, transport) {
        (Plan::Streams(s), Transport::WebSocket { v5 }) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
            exec_websocket(ws, v5, s).await;
        }
        (Plan::Streams(s), _) => exec_spdy(spdy::start(io), s).await,
        (Plan::PortForward(t), Transport::Spdy) => portforward::serve(spdy::start(io), t).await,
        (Plan::PortForward(t), _) => {
            let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
            let (inner, outer) = tokio::io::duplex(64 * 1024);
            let bridge = tokio::spawn(tunnel(ws, outer));
            portforward::serve(spdy::start(inner), t).await;
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, bridge).await;
        }
    }
}

/// Carries a byte stream inside a WebSocket: each binary message in is bytes in, bytes out
/// go as binary messages. Ends with a normal close when the inner stream ends.
async fn tunnel<S>(ws: WebSocketStream<S>, io: tokio::io::DuplexStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (mut rd, mut wr) = tokio::io::split(io);
    let inbound = tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(Message::Binary(b)) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = wr.shutdown().await;
    });
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if sink
                    .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = sink.send(Message::Close(Some(normal_close()))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, inbound).await;
}

fn normal_close() -> CloseFrame {
    CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }
}

fn status_bytes(code: i32) -> Bytes {
    Bytes::from(serde_json::to_vec(&rc::exit_status(code)).unwrap_or_default())
}

/// Output channels for a session: the process's ends and the transport's.
#[allow(clippy::type_complexity)]
fn outputs(
    s: &Session,
) -> (
    SessionIo,
    Option<mpsc::Sender<Bytes>>,
    Option<mpsc::Receiver<Bytes>>,
    Option<mpsc::Receiver<Bytes>>,
) {
    let pair = |want: bool, depth: usize| {
        if want {
            let (tx, rx) = mpsc::channel(depth);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        }
    };
    let (stdin_tx, stdin_rx) = pair(s.stdin, INPUT_DEPTH);
    let (stdout_tx, stdout_rx) = pair(s.stdout, OUTPUT_DEPTH);
    let (stderr_tx, stderr_rx) = pair(s.stderr && !s.tty, OUTPUT_DEPTH);
    let io = SessionIo {
        stdin: stdin_rx,
        stdout: stdout_tx,
        stderr: stderr_tx,
        tty: s.tty,
    };
    (io, stdin_tx, stdout_rx, stderr_rx)
}

async fn recv(rx: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match rx {
        Some(r) => r.recv().await,
        None => None,
    }
}

/// exec/attach over WebSocket (v4/v5 channel framing).
async fn exec_websocket<S>(ws: WebSocketStream<S>, v5: bool, s: Session)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (io, stdin_tx, mut stdout_rx, mut stderr_rx) = outputs(&s);
    let mut reader = tokio::spawn(async move {
        let mut stdin = stdin_tx;
        while let Some(msg) = stream.next().await {
            let b = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match parse_ws_message(&b, v5) {
                WsMessage::Data(channel::STDIN, _) => {
                    let data = b.slice(1..);
                    if let Some(tx) = &stdin {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                WsMessage::Data(channel::RESIZE, m) => match rc::parse_resize(m) {
                    Ok(size) => tracing::trace!(?size, "terminal resized"),
                    Err(e) => tracing::debug!("{e}"),
                },
                WsMessage::Close(channel::STDIN) => stdin = None,
                _ => {}
            }
        }
    });
    let mut process = tokio::spawn(shell::run_session(s.ctr, s.program, io));
    let mut client_gone = false;
    while stdout_rx.is_some() || stderr_rx.is_some() {
        let (ch, data) = tokio::select! {
            b = recv(&mut stdout_rx), if stdout_rx.is_some() => match b {
                Some(b) => (channel::STDOUT, b),
                None => { stdout_rx = None; continue; }
            },
            b = recv(&mut stderr_rx), if stderr_rx.is_some() => match b {
                Some(b) => (channel::STDERR, b),
                None => { stderr_rx = None; continue; }
            },
            _ = &mut reader, if !client_gone => { client_gone = true; break; }
        };
        let msg = Message::Binary(Bytes::from(rc::ws_message(ch, &data)));
        if sink.send(msg).await.is_err() {
            client_gone = true;
            break;
        }
    }
    let code = if client_gone {
        process.abort();
        return;
    } else {
        tokio::select! {
            code = &mut process => code.unwrap_or(1),
            _ = &mut reader => { process.abort(); return; }
        }
    };
    let status = Message::Binary(Bytes::from(rc::ws_message(
        channel::ERROR,
        &status_bytes(code),
    )));
    if sink.send(status).await.is_ok() {
        let _ = sink.send(Message::Close(Some(normal_close()))).await;
        // The client answers the close; the reader ends when it has.
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut reader)
            .await
            .is_err()
        {
            reader.abort();
        }
    } else {
        reader.abort();
    }
}

/// exec/attach over SPDY (v4: one stream per channel).
async fn exec_spdy(mut session: spdy::Session, s: Session) {
    let mut wanted = vec![StreamType::Error];
    if s.stdin {
        wanted.push(StreamType::Stdin);
    }
    if s.stdout {
        wanted.push(StreamType::Stdout);
    }
    if s.stderr && !s.tty {
        wanted.push(StreamType::Stderr);
    }
    if s.tty {
        wanted.push(StreamType::Resize);
    }
    let mut streams: HashMap<StreamType, spdy::Stream> = HashMap::new();
    let deadline = tokio::time::Instant::now() + STREAM_CREATION_TIMEOUT;
    while !wanted.iter().all(|t| streams.contains_key(t)) {
        let next = tokio::time::timeout_at(deadline, session.next_stream()).await;
        let stream = match next {
            Ok(Some(st)) => st,
            Ok(None) => return session.close().await,
            Err(_) => {
                tracing::debug!("exec: the client did not open its streams in time");
                if let Some(e) = streams.remove(&StreamType::Error) {
                    let msg = Status::internal("timed out waiting for client to create streams");
                    let _ = e.tx.send(Bytes::from(msg.to_json())).await;
                    let _ = e.tx.finish().await;
                }
                drop(streams);
                return session.close().await;
            }
        };
        match stream.headers.get(STREAM_TYPE).and_then(StreamType::parse) {
            Some(t) if !streams.contains_key(&t) && t != StreamType::Data => {
                streams.insert(t, stream);
            }
            other => {
                tracing::debug!("exec: ignoring a stream of type {other:?}");
            }
        }
    }
    let (mut io, _, mut stdout_rx, mut stderr_rx) = outputs(&s);
    let mut pumps = Vec::new();
    let mut ours: Vec<spdy::StreamTx> = Vec::new();
    let mut error_tx = None;
    let mut resizes = None;
    for (t, st) in streams {
        let spdy::Stream { rx, tx, .. } = st;
        match t {
            StreamType::Stdin => {
                io.stdin = s.stdin.then_some(rx);
                ours.push(tx);
            }
            StreamType::Stdout | StreamType::Stderr => {
                let src = if t == StreamType::Stdout {
                    stdout_rx.take()
                } else {
                    stderr_rx.take()
                };
                pumps.push(tokio::spawn(async move {
                    let mut src = src;
                    while let Some(b) = recv(&mut src).await {
                        if tx.send(b).await.is_err() {
                            return;
                        }
                    }
                    let _ = tx.finish().await;
                }));
            }
            StreamType::Resize => {
                let mut rx = rx;
                // Not awaited: the client keeps its resize stream open to the end.
                resizes = Some(tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while let Some(b) = rx.recv().await {
                        match rc::feed_resizes(&mut pending, &b, 4096) {
                            Ok(sizes) => tracing::trace!(?sizes, "terminal resized"),
                            Err(e) => {
                                tracing::debug!("{e}");
                                return;
                            }
                        }
                    }
                }));
                ours.push(tx);
            }
            StreamType::Error => error_tx = Some(tx),
            StreamType::Data => {}
        }
    }
    let gone = session.gone();
    let process = tokio::spawn(shell::run_session(s.ctr, s.program, io));
    let abort = process.abort_handle();
    let finished = async move {
        let code = process.await.unwrap_or(1);
        for p in pumps {
            let _ = p.await;
        }
        code
    };
    let code = tokio::select! {
        code = finished => Some(code),
        _ = gone => None,
    };
    match code {
        Some(code) => {
            if let Some(e) = error_tx.take() {
                let _ = e.send(status_bytes(code)).await;
                let _ = e.finish().await;
            }
            for tx in ours.drain(..) {
                let _ = tx.finish().await;
            }
        }
        None => abort.abort(),
    }
    if let Some(r) = resizes {
        r.abort();
    }
    drop(error_tx);
    drop(ours);
    session.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterConfig;
    use serde_json::json;

    #[test]
    fn filesystems_live_as_long_as_their_pod() {
        let cluster = Cluster::new("t", ClusterConfig::default());
        let pods = cluster.type_index("", "v1", "pods").unwrap();
        let make = |name: &str| {
            let pod = cluster
                .create(
                    pods,
                    Some("default"),
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                        "spec": {"containers": [{"name": "c", "image": "x"}]}}),
                    false,
                )
                .unwrap();
            let v: Value = serde_json::from_slice(&pod).unwrap();
            v["metadata"]["uid"].as_str().unwrap().to_owned()
        };
        let rt = cluster.runtimes();
        let uid = make("p");
        let fs = rt.filesystem(&cluster, &uid, "default", "p", "c", "10.0.0.1");
        fs.lock()
            .unwrap()
            .write("/tmp/kept", Bytes::from_static(b"1"), false)
            .unwrap();
        let again = rt.filesystem(&cluster, &uid, "default", "p", "c", "10.0.0.1");
        assert!(again.lock().unwrap().stat("/tmp/kept").is_some());
        // Another container of the pod has its own files.
        let other = rt.filesystem(&cluster, &uid, "default", "p", "d", "10.0.0.1");
        assert!(other.lock().unwrap().stat("/tmp/kept").is_none());
        // Pods that are gone are forgotten once there are many; the live one is kept.
        for i in 0..3 * PRUNE_AT {
            rt.filesystem(&cluster, &format!("gone-{i}"), "default", "x", "c", "");
            assert!(rt.len() <= PRUNE_AT + 1);
        }
        assert!(rt
            .filesystem(&cluster, &uid, "default", "p", "c", "10.0.0.1")
            .lock()
            .unwrap()
            .stat("/tmp/kept")
            .is_some());
    }

    #[test]
    fn streaming_paths() {
        assert!(is_streaming("/api/v1/namespaces/ns/pods/p/exec"));
        assert!(is_streaming("/api/v1/namespaces/ns/pods/p/attach"));
        assert!(is_streaming("/api/v1/namespaces/ns/pods/p/portforward"));
        assert!(!is_streaming("/api/v1/namespaces/ns/pods/p/log"));
        assert!(!is_streaming("/api/v1/namespaces/ns/pods/p"));
        assert!(!is_streaming(
            "/apis/apps/v1/namespaces/ns/deployments/p/exec"
        ));
        assert!(!is_streaming("/api/v1/pods/p/exec"));
    }
}
