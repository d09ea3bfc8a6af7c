//! High availability across hubs (#13), as an operator runs it: every piece its own process
//! of the `kubehub` binary — a metaserver on a real etcd, three hubs enrolled with join
//! tokens (one zone each), one simulator process serving three edge clusters, and an agent per
//! cluster holding tunnels to two hubs. Users reach every cluster through every hub; the
//! tests take one hub away the two ways hubs go away, under load, and check what users see:
//!
//! * kill -9 under a steady load: only requests at the killed hub fail (in flight there, or
//!   sent before the load balancer noticed), and every cluster answers through every
//!   surviving hub again within a bound;
//! * SIGTERM under load, behind a load balancer that follows `/readyz`: no request fails, the
//!   draining hub forwards what still reaches it (`Connection: close`), then exits;
//! * a watch through a hub that dies (served by it, or forwarded to it by another hub) ends
//!   instead of hanging, and kubectl relists through another hub.
//!
//! Every process logs to `NAME.log` in the test's directory (`RUST_LOG` applies), kept and
//! named when a test fails (or always, with `KUBEHUB_TEST_KEEP=1`). The tests run one at a
//! time (they share two cores with everything else).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use kubehub_meta::client::Client;
use kubehub_testkit::etcd::Etcd;
use kubehub_testkit::procs::{free_port, http_get, wait_until, Proc};
use kubehub_testkit::Kubectl;
use serde_json::{json, Value};

const KUBEHUB: &str = env!("CARGO_BIN_EXE_kubehub");
const CLUSTERS: [&str; 3] = ["edge-0", "edge-1", "edge-2"];
const HUBS: [&str; 3] = ["hub-a", "hub-b", "hub-c"];
/// Placeholder for the hub URL in meta's kubeconfigs, replaced by each hub's address.
const HUB_URL: &str = "https://hub.invalid";
/// The drain time of every hub (`[limits] drain_timeout_ms`, its default).
const DRAIN: Duration = Duration::from_millis(5000);

/// One system at a time: each is ten processes on a machine of two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

/// The log level of every process unless `RUST_LOG` says otherwise.
const LOG: &str = "info";

/// A hub process and its listeners.
struct HubProc {
    id: &'static str,
    proc: Proc,
    user: SocketAddr,
    admin: SocketAddr,
}

impl HubProc {
    /// `/readyz`: status and body, or why it could not be read.
    fn readyz(&self) -> std::io::Result<(u16, String)> {
        http_get(self.admin, "/readyz", Duration::from_secs(2))
    }

    /// `kubehub_hub_peer_requests_total{outcome="ok"}`: requests it forwarded to other hubs.
    fn peer_requests_ok(&self) -> u64 {
        let (code, body) = http_get(self.admin, "/metrics", Duration::from_secs(2)).unwrap();
        assert_eq!(code, 200);
        body.lines()
            .find(|l| l.starts_with("kubehub_hub_peer_requests_total{outcome=\"ok\"}"))
            .map_or(0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
    }

    /// The clusters whose agents hold a tunnel to this hub (its admin `/clusters`).
    fn clusters(&self) -> Vec<String> {
        let Ok((200, body)) = http_get(self.admin, "/clusters", Duration::from_secs(2)) else {
            return Vec::new();
        };
        let v: Value = serde_json::from_str(&body).unwrap();
        let mut out: Vec<String> = v["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["cluster"].as_str().unwrap().to_owned())
            .collect();
        out.sort();
        out
    }
}

/// The whole system as processes; everything is stopped when it is dropped (the directory
/// with the logs is kept, and named, when the test failed).
struct System {
    // Dropped in this order: agents, hubs, simulator, meta, then etcd and the directory.
    agents: Vec<Proc>,
    hubs: Vec<HubProc>,
    _sim: Proc,
    _meta: Proc,
    _etcd: Etcd,
    rt: tokio::runtime::Runtime,
    admin: Client,
    /// alice's token (every right on the three clusters) and the kubeconfig meta issued.
    token: String,
    kubeconfig: String,
    tls: tokio_rustls::TlsConnector,
    dir: Option<tempfile::TempDir>,
}

impl Drop for System {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("KUBEHUB_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("logs of every process kept in {}", dir.keep().display());
            }
        }
    }
}

impl System {
    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// etcd, meta, the simulator, three hubs and an agent per cluster, all up: every agent
    /// holds two tunnels, meta's registry says so, and every cluster answers through every hub.
    fn start() -> System {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("kubehub-ha-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_owned();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let etcd = Etcd::start();
        let meta_toml = write(
            &d.join("meta/meta.toml"),
            &format!(
                r#"listen = "127.0.0.1:0"
admin_token_file = "{admin}"
hub_url = "{HUB_URL}"
[registry]
ttl_s = 2
[sync]
heartbeat_ms = 1000
[store]
backend = "etcd"
endpoints = ["{etcd}"]
"#,
                admin = d.join("meta/admin.token").display(),
                etcd = etcd.endpoint,
            ),
        );
        let mut meta = Proc::start(
            "meta",
            &d,
            Path::new(KUBEHUB),
            &[
                "--log",
                LOG,
                "meta",
                "--config",
                meta_toml.to_str().unwrap(),
            ],
            &[],
        );
        let line = meta.wait_for_line("metaserver on https://", Duration::from_secs(30));
        let meta_addr = line
            .split("https://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let meta_url = format!("https://{meta_addr}");
        // Meta's CA, as an operator fetches it (and joiners pin it by the join token's hash).
        let out = std::process::Command::new("curl")
            .args(["-sfk", &format!("{meta_url}/v1/ca")])
            .output()
            .unwrap();
        assert!(out.status.success(), "GET /v1/ca: {out:?}");
        let ca_pem = serde_json::from_slice::<Value>(&out.stdout).unwrap()["ca"]
            .as_str()
            .unwrap()
            .to_owned();
        let admin_token = std::fs::read_to_string(d.join("meta/admin.token")).unwrap();
        let admin = Client::new(
            &meta_url,
            &ca_pem,
            Some(admin_token.lines().next().unwrap().trim().to_owned()),
            None,
        )
        .unwrap();
        let call = |method: &str, path: &str, body: Value| -> Value {
            rt.block_on(async {
                match method {
                    "POST" => admin.post(path, &body).await,
                    "GET" => admin.get(path).await,
                    _ => unreachable!(),
                }
            })
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
        };
        call("POST", "/v1/tenants", json!({"name": "t"}));
        call("POST", "/v1/users", json!({"name": "alice", "tenant": "t"}));
        let mut agent_tokens = Vec::new();
        for c in CLUSTERS {
            let v = call("POST", "/v1/clusters", json!({"id": c, "tenant": "t"}));
            agent_tokens.push(v["joinToken"].as_str().unwrap().to_owned());
        }
        call(
            "POST",
            "/v1/grants",
            json!({"name": "everything", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
                   "clusters": {"ids": CLUSTERS},
                   "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                             {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
        );
        let issued = call(
            "POST",
            "/v1/kubeconfig",
            json!({"user": "alice", "clusters": CLUSTERS}),
        );
        let kubeconfig = issued["kubeconfig"].as_str().unwrap().to_owned();
        let token = kubehub_testkit::kubeconfig_token(&kubeconfig);
        // The edge: one simulator process serving the three clusters at /clusters/edge-N.
        let mut sim = Proc::start(
            "sim",
            &d,
            Path::new(KUBEHUB),
            &[
                "--log",
                LOG,
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--clusters",
                "3",
                "--name",
                "edge",
                "--dir",
                d.join("sim").to_str().unwrap(),
            ],
            &[],
        );
        let line = sim.wait_for_line("serving at http://", Duration::from_secs(30));
        let sim_addr = line.rsplit("http://").next().unwrap().trim().to_owned();
        // Three hubs, one zone each, enrolled with join tokens.
        let mut hubs = Vec::new();
        for (i, id) in HUBS.into_iter().enumerate() {
            let join = call(
                "POST",
                "/v1/hubs/join-token",
                json!({"id": id, "names": ["localhost", "127.0.0.1"]}),
            );
            let admin_port = free_port();
            let toml = write(
                &d.join(id).join("hub.toml"),
                &format!(
                    r#"cores = 1
impersonate = false
zone = "zone-{i}"
[meta]
url = "{meta_url}"
state_dir = "{state}"
register_interval_ms = 300
heartbeat_timeout_ms = 5000
backoff_initial_ms = 100
backoff_max_ms = 1000
[user_listener]
listen = "127.0.0.1:0"
[agent_listener]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:{admin_port}"
[limits]
drain_timeout_ms = {drain}
keepalive_ms = 1000
"#,
                    state = d.join(id).join("state").display(),
                    drain = DRAIN.as_millis(),
                ),
            );
            let proc = Proc::start(
                id,
                &d,
                Path::new(KUBEHUB),
                &["--log", LOG, "hub", "--config", toml.to_str().unwrap()],
                &[("KUBEHUB_JOIN_TOKEN", join["joinToken"].as_str().unwrap())],
            );
            hubs.push((id, proc, admin_port));
        }
        let hubs: Vec<HubProc> = hubs
            .into_iter()
            .map(|(id, mut proc, admin_port)| {
                // "hub serving users on A and agents on B"
                let line = proc.wait_for_line("hub serving users on", Duration::from_secs(30));
                let user = line
                    .split("users on ")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap();
                HubProc {
                    id,
                    proc,
                    user,
                    admin: SocketAddr::from(([127, 0, 0, 1], admin_port)),
                }
            })
            .collect();
        // The agents, enrolled with join tokens; hubs from meta's registry, two each.
        let mut agents = Vec::new();
        for (c, join) in CLUSTERS.into_iter().zip(&agent_tokens) {
            let toml = write(
                &d.join(c).join("agent.toml"),
                &format!(
                    r#"[meta]
url = "{meta_url}"
state_dir = "{state}"
hubs_per_agent = 2
hub_refresh_ms = 300
failover_after_ms = 1000
register_interval_ms = 300
[upstream]
url = "http://{sim_addr}/clusters/{c}"
[reconnect]
initial_ms = 100
max_ms = 1000
"#,
                    state = d.join(c).join("state").display(),
                ),
            );
            agents.push(Proc::start(
                &format!("agent-{c}"),
                &d,
                Path::new(KUBEHUB),
                &["--log", LOG, "agent", "--config", toml.to_str().unwrap()],
                &[("KUBEHUB_JOIN_TOKEN", join.as_str())],
            ));
        }
        let roots = kubehub_pki::parse_roots(&ca_pem).unwrap();
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut s = System {
            agents,
            hubs,
            _sim: sim,
            _meta: meta,
            _etcd: etcd,
            rt,
            admin,
            token,
            kubeconfig,
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            dir: Some(dir),
        };
        s.wait_settled(&[0, 1, 2], Duration::from_secs(60));
        eprintln!(
            "system up in {:?}: tunnels {:?}",
            started.elapsed(),
            s.holdings()
        );
        s
    }

    /// Which hubs hold each cluster's tunnel, by the hubs' own account (hub ids, sorted).
    fn holdings(&self) -> BTreeMap<String, Vec<&'static str>> {
        let mut m: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
        for h in &self.hubs {
            for c in h.clusters() {
                m.entry(c).or_default().push(h.id);
            }
        }
        m
    }

    /// Meta's registry of agents: cluster → the hubs it registered (in the order hubs use).
    fn registered(&self) -> BTreeMap<String, Vec<String>> {
        let v = self
            .rt
            .block_on(self.admin.get("/v1/registry/agents"))
            .unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["cluster"].as_str().unwrap().to_owned(),
                    a["hubs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|h| h.as_str().unwrap().to_owned())
                        .collect(),
                )
            })
            .collect()
    }

    /// The hub the others forward to first (holders are tried in the order of meta's
    /// registry) for the most clusters, then holding the most tunnels.
    fn forwarded_to_most(&self) -> usize {
        let reg = self.registered();
        (0..self.hubs.len())
            .max_by_key(|&i| {
                let id = self.hubs[i].id;
                let first = reg.values().filter(|h| h.first().is_some_and(|f| f == id));
                let held = reg.values().filter(|h| h.iter().any(|x| x == id));
                (first.count(), held.count())
            })
            .unwrap()
    }

    /// Waits until the hubs `live` (indexes) are ready, every agent holds two tunnels among
    /// them and meta's registry agrees, and every cluster answers through every one of them.
    fn wait_settled(&mut self, live: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        let left = || deadline.saturating_duration_since(Instant::now());
        for &i in live {
            let h = &self.hubs[i];
            wait_until(left(), &format!("{} is ready", h.id), || {
                matches!(h.readyz(), Ok((200, _)))
            });
        }
        wait_until(
            left(),
            "every agent holds two tunnels to live hubs, and meta's registry says so",
            || self.tunnels_settled(live),
        );
        for &i in live {
            for c in CLUSTERS {
                let (hub, addr) = (self.hubs[i].id, self.hubs[i].user);
                wait_until(left(), &format!("{c} answers through {hub}"), || {
                    self.status(
                        addr,
                        &format!("/clusters/{c}/api/v1/namespaces/default/configmaps"),
                    ) == Ok(200)
                });
            }
        }
        for a in &mut self.agents {
            assert!(a.is_running(), "{} exited:\n{}", a.name(), a.log_tail(30));
        }
    }

    /// Whether every agent holds two tunnels, both to hubs among `live` (indexes), by the
    /// hubs' account and by meta's registry (what the hubs forward by).
    fn tunnels_settled(&self, live: &[usize]) -> bool {
        let live_ids: Vec<&str> = live.iter().map(|&i| self.hubs[i].id).collect();
        let held = self.holdings();
        let reg = self.registered();
        CLUSTERS.iter().all(|c| {
            let hubs = held.get(*c).cloned().unwrap_or_default();
            hubs.len() == 2
                && hubs.iter().all(|h| live_ids.contains(h))
                && reg
                    .get(*c)
                    .is_some_and(|r| r.iter().map(String::as_str).eq(hubs.iter().copied()))
        })
    }

    /// One GET through the hub at `addr` as alice (a fresh connection): its status.
    fn status(&self, addr: SocketAddr, path: &str) -> Result<u16, String> {
        let tls = self.tls.clone();
        let token = self.token.clone();
        let path = path.to_owned();
        self.rt.block_on(async move {
            let mut conn = None;
            let r = request(&mut conn, &tls, addr, &token, &path).await;
            r.map(|a| a.status).map_err(|e| format!("{e:?}"))
        })
    }

    /// A kubeconfig for the hub `i` (meta's, with the server pointed at that hub), and a
    /// kubectl with a discovery cache of its own.
    fn kubectl(&self, i: usize) -> Kubectl {
        let h = &self.hubs[i];
        let d = self.dir().join("kubectl").join(h.id);
        let text = self
            .kubeconfig
            .replace(HUB_URL, &format!("https://{}", h.user));
        let path = write(&d.join("kubeconfig"), &text);
        Kubectl::new(&path, &d)
    }

    /// The logs' directory, for messages.
    fn logs(&self) -> String {
        format!("(logs: {})", self.dir().display())
    }
}

// ---------------------------------------------------------------------------------------
// The load: users behind a load balancer.

/// How one request went.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// An HTTP answer other than 200 (status, the body's start).
    Status(u16, String),
    /// No answer: the connection failed or broke, or the time ran out.
    Broken(String),
}

/// One request of the load.
#[derive(Debug, Clone)]
struct Sample {
    hub: usize,
    cluster: usize,
    path: &'static str,
    start: Instant,
    end: Instant,
    outcome: Outcome,
    /// The answer said `Connection: close`.
    close: bool,
    /// Sent on a connection that had carried an earlier request.
    reused: bool,
}

/// An answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    close: bool,
    body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug)]
enum Failure {
    /// The hub refused the connection: nothing was sent (a load balancer tries another).
    Refused,
    Broken(String),
}

type Conn = Option<(http1::SendRequest<Empty<Bytes>>, bool)>;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// GET `path` through the hub at `addr` on `conn` (kept alive across calls unless the answer
/// said `Connection: close`; a fresh one is made when there is none or it has closed).
async fn request(
    conn: &mut Conn,
    tls: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
    token: &str,
    path: &str,
) -> Result<Answer, Failure> {
    // A kept connection the hub has closed meanwhile is not used (nothing is sent on it).
    if let Some((c, _)) = conn.as_mut() {
        if c.is_closed() || c.ready().await.is_err() {
            *conn = None;
        }
    }
    if conn.is_none() {
        let tcp = match tokio::time::timeout(REQUEST_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
        {
            Err(_) => return Err(Failure::Broken("connect: timed out".into())),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(Failure::Refused)
            }
            Ok(Err(e)) => return Err(Failure::Broken(format!("connect: {e}"))),
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let stream = match tokio::time::timeout(REQUEST_TIMEOUT, tls.connect(name, tcp)).await {
            Err(_) => return Err(Failure::Broken("TLS handshake: timed out".into())),
            Ok(Err(e)) => return Err(Failure::Broken(format!("TLS handshake: {e}"))),
            Ok(Ok(s)) => s,
        };
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Broken(format!("HTTP handshake: {e}")))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *conn = Some((sender, false));
    }
    let (sender, used) = conn.as_mut().unwrap();
    *used = true;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let exchange = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Broken(format!("request: {e}")))?;
        let status = resp.status().as_u16();
        let close = resp
            .headers()
            .get_all("connection")
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| Failure::Broken(format!("body after {status}: {e}")))?
            .to_bytes();
        Ok(Answer {
            status,
            close,
            body,
        })
    };
    let r = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Err(_) => Err(Failure::Broken(format!(
            "no whole answer within {REQUEST_TIMEOUT:?}"
        ))),
        Ok(r) => r,
    };
    if !matches!(&r, Ok(a) if !a.close) {
        *conn = None;
    }
    r
}

/// Requests for every cluster through every hub in the load balancer's rotation, by a few
/// users in turn, until stopped. The load balancer takes a hub out of rotation when its
/// `/readyz` is not 200 (checked every 50 ms) or it refuses a connection (the request then
/// goes to the next hub: nothing was sent), and back in when `/readyz` says 200 again.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    in_rotation: Arc<Vec<AtomicBool>>,
    /// (when, hub, in rotation now, why): every change of the rotation.
    rotation_log: Arc<Mutex<Vec<RotationChange>>>,
    checker: Option<std::thread::JoinHandle<()>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// A change of the load balancer's rotation: when, which hub, in rotation now, why.
type RotationChange = (Instant, usize, bool, String);

const USERS: usize = 3;
/// Pause of each user between two requests.
const THINK: Duration = Duration::from_millis(10);
const PATHS: [&str; 2] = [
    // cached: the hub confirms its cache is current with the agent first
    "api/v1/namespaces/default/configmaps",
    // not cached: forwarded through the tunnel to the edge
    "api/v1/namespaces/default/secrets",
];

impl Load {
    fn start(s: &System) -> Load {
        let n = s.hubs.len();
        let in_rotation: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(true)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let rotation_log = Arc::new(Mutex::new(Vec::new()));
        let set = {
            let in_rotation = in_rotation.clone();
            let rotation_log = rotation_log.clone();
            move |hub: usize, on: bool, why: String| {
                if in_rotation[hub].swap(on, Ordering::SeqCst) != on {
                    rotation_log
                        .lock()
                        .unwrap()
                        .push((Instant::now(), hub, on, why));
                }
            }
        };
        // The health check.
        let admins: Vec<SocketAddr> = s.hubs.iter().map(|h| h.admin).collect();
        let checker = {
            let stop = stop.clone();
            let set = set.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    for (i, a) in admins.iter().enumerate() {
                        match http_get(*a, "/readyz", Duration::from_millis(500)) {
                            Ok((200, _)) => set(i, true, "readyz 200".into()),
                            Ok((code, body)) => {
                                set(i, false, format!("readyz {code}: {}", body.trim()))
                            }
                            Err(e) => set(i, false, format!("readyz: {e}")),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let users: Vec<SocketAddr> = s.hubs.iter().map(|h| h.user).collect();
        let counter = Arc::new(AtomicUsize::new(0));
        let workers = (0..USERS)
            .map(|_| {
                let (stop, samples, in_rotation, set, users, counter, tls, token) = (
                    stop.clone(),
                    samples.clone(),
                    in_rotation.clone(),
                    set.clone(),
                    users.clone(),
                    counter.clone(),
                    s.tls.clone(),
                    s.token.clone(),
                );
                s.rt.spawn(async move {
                    let mut conns: Vec<Conn> = (0..users.len()).map(|_| None).collect();
                    while !stop.load(Ordering::SeqCst) {
                        // Every (cluster, hub, path) in turn, across the users.
                        let k = counter.fetch_add(1, Ordering::SeqCst);
                        let cluster = k % CLUSTERS.len();
                        let first = (k / CLUSTERS.len()) % users.len();
                        let path = PATHS[(k / (CLUSTERS.len() * users.len())) % PATHS.len()];
                        let full = format!("/clusters/{}/{path}", CLUSTERS[cluster]);
                        let mut sent = false;
                        for j in 0..users.len() {
                            let hub = (first + j) % users.len();
                            if !in_rotation[hub].load(Ordering::SeqCst) {
                                continue;
                            }
                            let reused = conns[hub].as_ref().is_some_and(|(_, used)| *used);
                            let start = Instant::now();
                            let r = request(&mut conns[hub], &tls, users[hub], &token, &full).await;
                            let end = Instant::now();
                            let (outcome, close) = match r {
                                Err(Failure::Refused) => {
                                    set(hub, false, "connection refused".into());
                                    continue;
                                }
                                Err(Failure::Broken(why)) => (Outcome::Broken(why), false),
                                Ok(a) if a.status == 200 => (Outcome::Ok, a.close),
                                Ok(a) => (
                                    Outcome::Status(
                                        a.status,
                                        String::from_utf8_lossy(&a.body[..a.body.len().min(300)])
                                            .into_owned(),
                                    ),
                                    a.close,
                                ),
                            };
                            samples.lock().unwrap().push(Sample {
                                hub,
                                cluster,
                                path,
                                start,
                                end,
                                outcome,
                                close,
                                reused,
                            });
                            sent = true;
                            break;
                        }
                        if !sent {
                            // No hub in rotation: wait for the health check.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        tokio::time::sleep(THINK).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            samples,
            in_rotation,
            rotation_log,
            checker: Some(checker),
            workers,
        }
    }

    /// Requests done so far.
    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits until `n` more requests are done.
    fn run_for(&self, n: usize, within: Duration) {
        let target = self.count() + n;
        wait_until(within, &format!("{n} more requests done"), || {
            self.count() >= target
        });
    }

    /// Stops (the requests in flight finish) and returns every sample, in start order.
    fn stop(mut self, s: &System) -> (Vec<Sample>, Vec<RotationChange>) {
        self.stop.store(true, Ordering::SeqCst);
        for w in self.workers.drain(..) {
            s.rt.block_on(w).unwrap();
        }
        self.checker.take().unwrap().join().unwrap();
        let mut v = std::mem::take(&mut *self.samples.lock().unwrap());
        v.sort_by_key(|x| x.start);
        let log = std::mem::take(&mut *self.rotation_log.lock().unwrap());
        (v, log)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn describe(s: &Sample, t0: Instant, hubs: &[HubProc]) -> String {
    let at = |t: Instant| {
        if t >= t0 {
            format!("+{:?}", t - t0)
        } else {
            format!("-{:?}", t0 - t)
        }
    };
    format!(
        "{} {} /clusters/{}/{} started {} ended {}{}: {:?}",
        hubs[s.hub].id,
        if s.reused {
            "(kept connection)"
        } else {
            "(new connection)"
        },
        CLUSTERS[s.cluster],
        s.path,
        at(s.start),
        at(s.end),
        if s.close { " Connection: close" } else { "" },
        s.outcome
    )
}

// ---------------------------------------------------------------------------------------
// The tests.

/// A hub killed with kill -9 under a steady load: the only requests that fail are those at
/// the killed hub — in flight there (sent to it, or forwarded to it by another hub), or sent
/// to it before the load balancer noticed. Every cluster answers through every surviving hub
/// again within a bound (their peer links to the dead hub fail and they forward to the
/// cluster's other holder), and from then on nothing fails through them, also while the
/// agents that lost a tunnel open one to another hub.
#[test]
fn kill_9_of_a_hub_under_load_fails_only_requests_at_that_hub() {
    let _serial = serial();
    let mut s = System::start();
    let load = Load::start(&s);
    // A steady state first: every (cluster, hub, path) several times.
    load.run_for(200, Duration::from_secs(60));
    // The victim: the hub the others forward to first for the most clusters, so that their
    // peer links to it fail.
    let reg = s.registered();
    let victim = s.forwarded_to_most();
    let victim_id = s.hubs[victim].id;
    let holds: Vec<&String> = reg
        .iter()
        .filter(|(_, h)| h.iter().any(|x| x == victim_id))
        .map(|(c, _)| c)
        .collect();
    assert!(!holds.is_empty(), "{victim_id} holds no tunnel: {reg:?}");
    let before = load.count();
    let t0 = Instant::now();
    s.hubs[victim].proc.kill9();
    eprintln!("killed {victim_id} with SIGKILL; tunnels were {reg:?}");
    let survivors: Vec<usize> = (0..s.hubs.len()).filter(|&i| i != victim).collect();
    // Every surviving (hub, cluster) pair answers again within the bound …
    let bound = Duration::from_secs(10);
    let answered = wait_until(
        bound,
        "every cluster answers through every surviving hub again",
        || {
            let v = load.samples.lock().unwrap();
            survivors.iter().all(|&h| {
                (0..CLUSTERS.len()).all(|c| {
                    // The pair's latest request that started after the kill succeeded.
                    v.iter()
                        .rev()
                        .find(|x| x.hub == h && x.cluster == c && x.start > t0)
                        .is_some_and(|x| x.outcome == Outcome::Ok)
                })
            })
        },
    );
    // … and keeps answering, under the same load, while the agents that lost a tunnel open
    // one to another hub and its cache fills.
    s.wait_settled(&survivors, Duration::from_secs(30));
    let settled = t0.elapsed();
    load.run_for(150, Duration::from_secs(60));
    assert!(
        !load.in_rotation[victim].load(Ordering::SeqCst),
        "the load balancer still sends to the dead hub"
    );
    let (samples, rotation) = load.stop(&s);
    let hubs = &s.hubs;
    // Requests to the killed hub: those in flight at the kill, and those sent before the load
    // balancer took it out, may fail.
    let to_victim: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.hub == victim && x.end > t0)
        .collect();
    let victim_failed: Vec<&Sample> = to_victim
        .iter()
        .copied()
        .filter(|x| x.outcome != Outcome::Ok)
        .collect();
    // Requests through the surviving hubs.
    let through_survivors: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.hub != victim && x.end > t0)
        .collect();
    let survivor_failed: Vec<&Sample> = through_survivors
        .iter()
        .copied()
        .filter(|x| x.outcome != Outcome::Ok)
        .collect();
    let out_at = rotation
        .iter()
        .find(|(t, h, on, _)| *h == victim && !on && *t >= t0)
        .map(|(t, _, _, why)| (*t - t0, why.clone()));
    // When each surviving (hub, cluster) pair answered again: the end of its first success
    // after its last failure (after the kill).
    let mut recovered = Duration::ZERO;
    for &h in &survivors {
        for (c, name) in CLUSTERS.iter().enumerate() {
            let pair: Vec<&&Sample> = through_survivors
                .iter()
                .filter(|x| x.hub == h && x.cluster == c)
                .collect();
            let last_failure = pair
                .iter()
                .filter(|x| x.outcome != Outcome::Ok)
                .map(|x| x.end)
                .max()
                .unwrap_or(t0);
            let ok = pair
                .iter()
                .find(|x| x.outcome == Outcome::Ok && x.start >= last_failure)
                .unwrap_or_else(|| panic!("{} never answered for {name} again", hubs[h].id));
            recovered = recovered.max(ok.end - t0);
        }
    }
    eprintln!(
        "kill -9 of {victim_id}: {} requests before, {} after; to {victim_id}: {} after the kill \
         ({} failed); through the surviving hubs: {} ({} failed); the load balancer took \
         {victim_id} out {:?} after the kill; every cluster answered through every surviving \
         hub {:?} after the kill (seen at {answered:?}); every agent held two tunnels among the \
         survivors again {settled:?} after the kill",
        before,
        samples.len() - before,
        to_victim.len(),
        victim_failed.len(),
        through_survivors.len(),
        survivor_failed.len(),
        out_at,
        recovered,
    );
    for x in victim_failed.iter().take(10) {
        eprintln!("  failed at the killed hub: {}", describe(x, t0, hubs));
    }
    for x in survivor_failed.iter().take(20) {
        eprintln!(
            "  failed through a surviving hub: {}",
            describe(x, t0, hubs)
        );
    }
    assert!(
        out_at.is_some(),
        "the load balancer never took the dead hub out"
    );
    assert!(
        recovered < bound,
        "every cluster through every surviving hub again only after {recovered:?} {}",
        s.logs()
    );
    // Once every pair had answered again, nothing failed through the surviving hubs.
    let late: Vec<String> = survivor_failed
        .iter()
        .filter(|x| x.start > t0 + answered)
        .map(|x| describe(x, t0, hubs))
        .collect();
    assert!(
        late.is_empty(),
        "requests through surviving hubs failed after every cluster had answered through every \
         one of them again ({answered:?} after the kill): {late:#?} {}",
        s.logs()
    );
}

/// A hub told to stop (SIGTERM) under load, behind a load balancer that follows `/readyz`
/// (every 50 ms): no request fails, neither those the load balancer still sent to the
/// draining hub (its own tunnels while they last, then forwarded to another holder, answered
/// with `Connection: close`) nor any other; its agents move to the other hubs; the process
/// exits after the drain time.
#[test]
fn sigterm_of_a_hub_under_load_fails_no_request() {
    let _serial = serial();
    let mut s = System::start();
    let load = Load::start(&s);
    load.run_for(200, Duration::from_secs(60));
    let victim = s.forwarded_to_most();
    let victim_id = s.hubs[victim].id;
    let before = load.count();
    let peer_ok_before = s.hubs[victim].peer_requests_ok();
    // What is checked of the draining hub is checked before this (it exits at the end of the
    // drain time).
    let drain_end = Instant::now() + DRAIN - Duration::from_secs(1);
    let left = || drain_end.saturating_duration_since(Instant::now());
    // A client that keeps sending to the draining hub itself (it kept the address, or its
    // load balancer has not noticed yet) until shortly before the drain time ends.
    let sticky = {
        let (tls, token, addr) = (s.tls.clone(), s.token.clone(), s.hubs[victim].user);
        let until = drain_end;
        s.rt.spawn(async move {
            let mut conn = None;
            let mut out = Vec::new();
            for k in 0.. {
                if Instant::now() >= until {
                    break;
                }
                let c = CLUSTERS[k % CLUSTERS.len()];
                let path = PATHS[(k / CLUSTERS.len()) % PATHS.len()];
                let start = Instant::now();
                let r = request(
                    &mut conn,
                    &tls,
                    addr,
                    &token,
                    &format!("/clusters/{c}/{path}"),
                )
                .await
                .map(|a| (a.status, a.close))
                .map_err(|e| format!("{e:?}"));
                out.push((start, Instant::now(), c, path, r));
                tokio::time::sleep(THINK).await;
            }
            out
        })
    };
    let t0 = Instant::now();
    s.hubs[victim].proc.signal("TERM");
    // The load balancer sees /readyz 503 and stops sending to it.
    let draining = wait_until(
        left(),
        "readyz says draining",
        || matches!(s.hubs[victim].readyz(), Ok((503, b)) if b.contains("draining")),
    );
    wait_until(
        left(),
        "the load balancer takes the draining hub out",
        || !load.in_rotation[victim].load(Ordering::SeqCst),
    );
    // Its agents move to the other hubs (GOAWAY: at once).
    wait_until(
        left(),
        "the draining hub's agents moved away",
        || matches!(s.hubs[victim].readyz(), Ok((503, b)) if b.contains(" 0 agents connected")),
    );
    let gone = Instant::now();
    // … to the other hubs: every agent holds two tunnels among them while this one still
    // drains, and meta's registry says so (what the other hubs forward by).
    let survivors: Vec<usize> = (0..s.hubs.len()).filter(|&i| i != victim).collect();
    wait_until(
        left(),
        "every agent holds two tunnels among the other hubs, during the drain",
        || s.tunnels_settled(&survivors),
    );
    let moved = t0.elapsed();
    // What reached the draining hub directly was answered (once its agents were gone, through
    // another hub holding the cluster), each answer ending its connection.
    let sticky = s.rt.block_on(sticky).unwrap();
    let peer_ok = s.hubs[victim].peer_requests_ok() - peer_ok_before;
    assert!(
        s.hubs[victim].proc.is_running(),
        "{victim_id} exited before the end of its drain time"
    );
    let bad: Vec<String> = sticky
        .iter()
        .filter(|(start, _, _, _, r)| match r {
            Ok((200, close)) => *start >= t0 + draining && !close,
            _ => true,
        })
        .map(|(start, end, c, path, r)| {
            format!(
                "/clusters/{c}/{path} started +{:?} ended +{:?}: {r:?}",
                *start - t0,
                *end - t0
            )
        })
        .collect();
    let after_gone = sticky.iter().filter(|x| x.0 >= gone).count();
    eprintln!(
        "requests straight to the draining {victim_id}: {} (from {:?} to {:?} after the \
         signal), {} after its agents were gone ({:?} after the signal); it forwarded {peer_ok} \
         requests to other hubs meanwhile",
        sticky.len(),
        sticky.first().map(|x| x.0 - t0),
        sticky.last().map(|x| x.0 - t0),
        after_gone,
        gone - t0,
    );
    assert!(
        bad.is_empty(),
        "requests straight to the draining {victim_id} not answered 200 (with Connection: close \
         once /readyz said draining): {bad:#?} {}",
        s.logs()
    );
    assert!(
        after_gone > 0 && peer_ok >= after_gone as u64,
        "{after_gone} requests reached {victim_id} after its agents were gone, yet it forwarded \
         only {peer_ok} to other hubs"
    );
    // It exits after the drain.
    let status = s.hubs[victim]
        .proc
        .wait_exit(DRAIN + Duration::from_secs(15))
        .unwrap_or_else(|| panic!("{victim_id} still running {:?} after SIGTERM", t0.elapsed()));
    let exited = t0.elapsed();
    assert!(
        status.success(),
        "{victim_id} exited with {status}:\n{}",
        s.hubs[victim].proc.log_tail(30)
    );
    assert!(
        exited >= DRAIN,
        "{victim_id} exited {exited:?} after SIGTERM, before its drain time ({DRAIN:?}) was over"
    );
    // The load goes on; every cluster answers through every remaining hub.
    s.wait_settled(&survivors, Duration::from_secs(30));
    load.run_for(150, Duration::from_secs(60));
    let (samples, rotation) = load.stop(&s);
    let hubs = &s.hubs;
    let after: Vec<&Sample> = samples.iter().filter(|x| x.start >= t0).collect();
    let in_flight: Vec<&Sample> = samples
        .iter()
        .filter(|x| x.start < t0 && x.end >= t0)
        .collect();
    let failed: Vec<String> = after
        .iter()
        .chain(&in_flight)
        .filter(|x| x.outcome != Outcome::Ok)
        .map(|x| describe(x, t0, hubs))
        .collect();
    let at_victim: Vec<&&Sample> = after.iter().filter(|x| x.hub == victim).collect();
    let out_at = rotation
        .iter()
        .find(|(t, h, on, _)| *h == victim && !on && *t >= t0)
        .map(|(t, _, _, why)| (*t - t0, why.clone()));
    eprintln!(
        "SIGTERM to {victim_id} (drain {DRAIN:?}): {} requests before, {} started after ({} in \
         flight at the signal); {} reached {victim_id} after the signal ({} answered with \
         Connection: close); the load balancer took it out {:?} after the signal; it exited \
         (status {status}) {exited:?} after; every agent held two tunnels among the other hubs \
         {moved:?} after",
        before,
        after.len(),
        in_flight.len(),
        at_victim.len(),
        at_victim.iter().filter(|x| x.close).count(),
        out_at,
    );
    for x in &at_victim {
        eprintln!(
            "  sent to {victim_id} after the signal: {}",
            describe(x, t0, hubs)
        );
    }
    assert!(
        failed.is_empty(),
        "{} requests failed around the drain of {victim_id}: {failed:#?} {}",
        failed.len(),
        s.logs()
    );
}

/// A watch through a hub that dies (kill -9) ends instead of hanging, whether that hub
/// served it (its cache) or another hub forwarded it there over a peer link; kubectl then
/// relists through another hub, and sees what was written before.
#[test]
fn a_watch_through_a_hub_that_dies_ends_and_kubectl_relists_elsewhere() {
    let _serial = serial();
    let mut s = System::start();
    // A cluster, the hub that holds it and that other hubs forward it to first (holders are
    // tried in the order of meta's registry), and a hub that does not hold it.
    let cluster = CLUSTERS[0];
    // Pin the cluster where it is (what `kubehub ctl cluster move` does): the agents'
    // rebalancing must not move it while the test relies on which hubs hold it.
    let mut pinned = s.registered()[cluster].clone();
    s.rt.block_on(s.admin.put(
        &format!("/v1/registry/pins/{cluster}"),
        &json!({"hubs": pinned, "reason": "test: placement held"}),
    ))
    .unwrap();
    pinned.sort();
    wait_until(
        Duration::from_secs(20),
        "the cluster on its pinned hubs",
        || {
            let mut now = s.registered().get(cluster).cloned().unwrap_or_default();
            now.sort();
            now == pinned
        },
    );
    let holders = s.registered()[cluster].clone();
    let index = |id: &str| s.hubs.iter().position(|h| h.id == id).unwrap();
    let victim = index(&holders[0]);
    let other_holder = index(&holders[1]);
    let forwarder = (0..s.hubs.len())
        .find(|&i| !holders.iter().any(|h| h == s.hubs[i].id))
        .unwrap();
    eprintln!(
        "{cluster}: held by {holders:?}; watching through {} (served there) and {} \
         (forwarded to {})",
        s.hubs[victim].id, s.hubs[forwarder].id, s.hubs[victim].id
    );
    let watch_through = |i: usize| -> Proc {
        let k = s.kubectl(i);
        // Discovery first (its cache), so that the watch below is the only request in flight.
        k.ok(&["--context", cluster, "get", "configmaps", "-n", "default"]);
        let args = [
            "--kubeconfig",
            k.kubeconfig.to_str().unwrap(),
            "--cache-dir",
            k.cache_dir.to_str().unwrap(),
            "--context",
            cluster,
            "get",
            "configmaps",
            "-n",
            "default",
            "-w",
        ];
        Proc::start(
            &format!("watch-via-{}", s.hubs[i].id),
            s.dir(),
            Path::new(kubehub_testkit::KUBECTL),
            &args,
            &[],
        )
    };
    let mut served = watch_through(victim);
    let mut forwarded = watch_through(forwarder);
    for w in [&mut served, &mut forwarded] {
        w.wait_for_line("kube-root-ca.crt", Duration::from_secs(20));
    }
    // The watches are live: a write through the third hub reaches both.
    let writer = s.kubectl(other_holder);
    writer.ok(&[
        "--context",
        cluster,
        "create",
        "configmap",
        "before-the-kill",
        "-n",
        "default",
    ]);
    for w in [&mut served, &mut forwarded] {
        w.wait_for_line("before-the-kill", Duration::from_secs(20));
    }
    let t0 = Instant::now();
    s.hubs[victim].proc.kill9();
    let mut ended = Vec::new();
    for w in [&mut served, &mut forwarded] {
        let Some(st) = w.wait_exit(Duration::from_secs(30)) else {
            // Still running: is it still carrying events (then it did not go through the hub
            // that died: holders are no longer tried in the registry's order), or hanging?
            writer.ok(&[
                "--context",
                cluster,
                "create",
                "configmap",
                "after-the-kill",
                "-n",
                "default",
            ]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && !w.log().contains("after-the-kill") {
                std::thread::sleep(Duration::from_millis(50));
            }
            let live = w.log().contains("after-the-kill");
            panic!(
                "{} still running 30 s after {} died: {}; its output:\n{} {}",
                w.name(),
                s.hubs[victim].id,
                if live {
                    "it still gets events, so it was not going through that hub (the test's \
                     assumption about which holder a hub forwards to no longer holds)"
                } else {
                    "the watch hangs"
                },
                w.log_tail(20),
                s.logs()
            );
        };
        ended.push(format!(
            "{} ended {:?} after the kill ({st}; its last line: {:?})",
            w.name(),
            t0.elapsed(),
            w.log_tail(1)
        ));
    }
    eprintln!("kill -9 of {}: {}", s.hubs[victim].id, ended.join("; "));
    // kubectl relists through each remaining hub: the one that forwarded to the dead hub
    // first, and the cluster's other holder.
    for i in [forwarder, other_holder] {
        let k = s.kubectl(i);
        let mut last = String::new();
        let took = wait_until(
            Duration::from_secs(20),
            &format!("a relist of {cluster} through {}", s.hubs[i].id),
            || {
                let out = k.output(&["--context", cluster, "get", "configmaps", "-n", "default"]);
                last = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                out.status.success() && last.contains("before-the-kill")
            },
        );
        eprintln!(
            "relist through {} succeeded {:?} after the kill (took {took:?})",
            s.hubs[i].id,
            t0.elapsed()
        );
    }
}
