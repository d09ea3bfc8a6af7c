//! A whole KubeHub on loopback for tests: simulator → agent → hub, with real TLS and a
//! kubeconfig for kubectl. [`start`] builds it; the [`Stack`] keeps every piece reachable
//! (stop and restart the agent, issue more certificates from its CA, call the hub with curl).
//!
//! The hub's access data is a static access file the stack writes ([`default_access`]: tenant
//! [`TENANT`], user [`USER`] with every right on [`CLUSTER`] and `edge-silent`, and the token
//! [`TOKEN`]); [`StackOptions::access`] replaces it, with users and tokens made by the
//! helpers here ([`mint`] issues a real token). [`Stack::kubeconfig_for`] and
//! [`Stack::request_as`] act as another user; [`Stack::apply_access`] changes the access data
//! of the running hub (a revocation, as meta's feed would carry it).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Kubectl;
use kubehub_access::{Line, Record};
use kubehub_agent::config::{AgentConfig, Limits as AgentLimits, Reconnect, Tls, Upstream};
use kubehub_agent::Agent;
use kubehub_hub::config::{AccessFile, CacheConfig, HubConfig, Limits, Listener};
use kubehub_hub::server::{self, Hub};
use kubehub_kapi::kubeconfig::Kubeconfig;
use kubehub_pki::Ca;
use kubehub_sim::{
    self as sim, Cluster, ClusterConfig, RequestLog, Router, SeedSpec, ServeOptions, Server,
};

pub const CLUSTER: &str = "edge-1";
/// The tenant of the default access data.
pub const TENANT: &str = "tenant-a";
/// The user of the default access data (and of the stack's kubeconfig).
pub const USER: &str = "alice";
/// [`USER`]'s token, bound to [`CLUSTER`] and `edge-silent`: a real KubeHub token (the access
/// data holds its SHA-256), fixed so that tests can write it into requests.
pub const TOKEN: &str = "khT.alicetoken01.holrA3piHSqK40485lcjpgoK7MFa959tNZO-t9OEo9Y";
/// The id of [`TOKEN`].
pub const TOKEN_ID: &str = "alicetoken01";

pub use kubehub_access::build::{
    cluster, everything, grant, mint, rule, tenant, token_record, user,
};

/// The stack's default access data: [`TENANT`] owns [`CLUSTER`] and `edge-silent`; [`USER`]
/// (groups `devs`) may do everything on both with [`TOKEN`].
pub fn default_access() -> Vec<Record> {
    vec![
        tenant(TENANT),
        user(USER, TENANT, &["devs"]),
        cluster(CLUSTER, TENANT),
        cluster("edge-silent", TENANT),
        grant(
            "alice-admin",
            TENANT,
            USER,
            &[CLUSTER, "edge-silent"],
            everything(),
        ),
        token_record(TOKEN, USER, TENANT, &[CLUSTER, "edge-silent"], 0),
    ]
}

/// [`default_access`] plus user `name` of [`TENANT`], granted `rules` on [`CLUSTER`]; their
/// token is returned with the records (for [`StackOptions::access`]).
pub fn access_with_user(name: &str, rules: Vec<kubehub_access::Rule>) -> (String, Vec<Record>) {
    let (token, record) = mint(name, TENANT, &[CLUSTER], 0);
    let mut access = default_access();
    access.extend([
        user(name, TENANT, &[]),
        grant(&format!("{name}-grant"), TENANT, name, &[CLUSTER], rules),
        record,
    ]);
    (token, access)
}

#[derive(Debug)]
pub struct Stack {
    pub rt: tokio::runtime::Runtime,
    pub ca: Ca,
    pub dir: tempfile::TempDir,
    pub cluster: Arc<Cluster>,
    pub sim: Option<Server>,
    pub sim_addr: std::net::SocketAddr,
    /// Every request the simulator served.
    pub sim_log: Arc<RequestLog>,
    pub hub: Hub,
    pub agent: Option<Agent>,
    pub agent_cfg: AgentConfig,
    pub kubeconfig: PathBuf,
    /// The hub's environment.
    pub environment: String,
}

/// An HTTP answer: status, head fields (lower-cased names), body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A list's `metadata.resourceVersion` (the version a watch resumes from).
    pub fn resource_version(&self) -> String {
        self.json()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "no list resourceVersion: {}",
                    String::from_utf8_lossy(&self.body)
                )
            })
            .to_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn curl_reply(mut cmd: Command, url: &str, headers: &[&str]) -> Reply {
    let head_file = tempfile::NamedTempFile::new().unwrap();
    cmd.args(["-sS", "--max-time", "20", "-D"])
        .arg(head_file.path());
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().unwrap();
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(head_file.path()).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: out.stdout,
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

pub fn start(cluster_cfg: ClusterConfig, limits: Limits) -> Stack {
    start_opts(StackOptions {
        cluster: cluster_cfg,
        limits,
        ..StackOptions::default()
    })
}

/// A registry line: hub `id` is live, its agent listener at `agent_endpoint`, in
/// `environment` (what a hub's directory learns from meta's registry watch).
pub fn registry_hub(
    id: &str,
    agent_endpoint: impl std::fmt::Display,
    environment: &str,
) -> kubehub_access::registry::RegistryLine {
    kubehub_access::registry::RegistryLine::Hub {
        revision: 1,
        hub: kubehub_access::registry::HubRecord {
            id: id.into(),
            endpoint: format!("https://{id}"),
            agent_endpoint: agent_endpoint.to_string(),
            environment: environment.into(),
            ..Default::default()
        },
    }
}

/// A registry line: the agent of `cluster` holds tunnels to `hubs`.
pub fn registry_agent(cluster: &str, hubs: &[&str]) -> kubehub_access::registry::RegistryLine {
    kubehub_access::registry::RegistryLine::Agent {
        revision: 1,
        agent: kubehub_access::registry::AgentRecord {
            cluster: cluster.into(),
            hubs: hubs.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        },
    }
}

/// Everything a test may choose about its stack.
#[derive(Debug, Default)]
pub struct StackOptions {
    /// The simulated cluster.
    pub cluster: ClusterConfig,
    /// The hub's limits.
    pub limits: Limits,
    /// The hub's cache.
    pub cache: CacheConfig,
    /// The hub's access data (`None`: [`default_access`]); written as the hub's access file,
    /// one snapshot.
    pub access: Option<Vec<Record>>,
    /// The hub's environment (hub.toml `environment`; the clusters' records must say the same).
    pub environment: String,
    /// The hub's audit log (`[audit]`; off by default).
    pub audit: kubehub_hub::config::AuditConfig,
}

/// A stack built from `opts`.
pub fn start_opts(opts: StackOptions) -> Stack {
    let StackOptions {
        cluster: cluster_cfg,
        limits,
        cache,
        access,
        environment,
        audit,
    } = opts;
    // `RUST_LOG=kubehub_hub=debug cargo test …` shows the hub's and agent's logs.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let set = kubehub_pki::DevSet {
        clusters: vec![CLUSTER.into()],
        hosts: vec!["localhost".into(), "127.0.0.1".into()],
        users: vec![],
    };
    let ca = kubehub_pki::write_dev_set(d, &set).unwrap();
    let ca_path = d.join("ca.crt");
    // The hub's certificate as enrollment issues it (O=kubehub:hubs, server and client
    // authentication), so that it can also open peer links to other hubs.
    let hub_cert = ca
        .issue_hub("hub-test", &["localhost", "127.0.0.1"])
        .unwrap();
    let hub_crt = write(d, "hub.crt", &hub_cert.cert);
    let hub_key = write(d, "hub.key", &hub_cert.key);
    let agent_crt = d.join(format!("agent-{CLUSTER}.crt"));
    let agent_key = d.join(format!("agent-{CLUSTER}.key"));
    let snapshot = Line::Snapshot {
        revision: 1,
        records: access.unwrap_or_else(default_access),
    };
    let access_file = write(d, "access.json", &snapshot.to_line());
    let cluster = Cluster::new("sim", cluster_cfg);
    let sim_log = Arc::new(RequestLog::default());
    sim::seed(&cluster, &SeedSpec::default()).unwrap();
    let sim_server = rt
        .block_on(sim::serve(
            "127.0.0.1:0".parse().unwrap(),
            Router::Single(cluster.clone()),
            ServeOptions {
                log: Some(sim_log.clone()),
                ..ServeOptions::default()
            },
        ))
        .unwrap();
    let sim_addr = sim_server.local_addr();
    let listener = |client_ca: Option<PathBuf>| Listener {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: Some(hub_crt.clone()),
        key: Some(hub_key.clone()),
        client_ca,
    };
    let hub_cfg = HubConfig {
        id: "hub-test".into(),
        environment: environment.clone(),
        zone: String::new(),
        cores: 2,
        clusters: vec![CLUSTER.into(), "edge-silent".into()],
        access: Some(AccessFile { file: access_file }),
        meta: None,
        registry: None,
        impersonate: false,
        user_listener: listener(None),
        agent_listener: listener(Some(ca_path.clone())),
        admin: Some(kubehub_hub::config::Admin {
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
        limits,
        cache,
        metrics: Default::default(),
        audit,
    };
    let hub = server::start(hub_cfg).unwrap();
    let agent_cfg = AgentConfig {
        cluster_id: CLUSTER.into(),
        agent_id: Some("agent-test".into()),
        hubs: vec![hub.agent_addr.to_string()],
        labels: Default::default(),
        local_address: None,
        tls: Tls {
            ca: Some(ca_path.clone()),
            cert: Some(agent_crt),
            key: Some(agent_key),
            server_name: Some("localhost".into()),
        },
        meta: None,
        upstream: Upstream {
            url: format!("http://{sim_addr}"),
            ca: None,
            token: None,
            token_file: None,
            client_cert: None,
            client_key: None,
        },
        admin: None,
        limits: AgentLimits::default(),
        reconnect: Reconnect {
            initial_ms: 100,
            max_ms: 1000,
        },
        sync: Default::default(),
        plugins: Default::default(),
    };
    let agent = {
        let _g = rt.enter();
        Agent::start(agent_cfg.clone()).unwrap()
    };
    let kc = Kubeconfig {
        name: CLUSTER.into(),
        server: format!(
            "https://127.0.0.1:{}/clusters/{CLUSTER}",
            hub.user_addr.port()
        ),
        ca_pem: Some(ca.cert_pem()),
        token: Some(TOKEN.into()),
        ..Kubeconfig::default()
    };
    let kubeconfig = write(d, "kubeconfig", &kc.to_yaml());
    let s = Stack {
        rt,
        ca,
        dir,
        cluster,
        sim: Some(sim_server),
        sim_addr,
        sim_log,
        hub,
        agent: Some(agent),
        agent_cfg,
        kubeconfig,
        environment,
    };
    s.wait_connected(true, Duration::from_secs(10));
    s
}

/// A running pod of the stack's cluster with a declared container port (the simulator answers
/// HTTP on it), for exec and port-forward tests.
#[derive(Debug, Clone)]
pub struct Pod {
    pub ns: String,
    pub name: String,
    pub container: String,
    pub port: u16,
}

/// The first running pod with a declared port, as kubectl lists it through the hub.
pub fn pod(s: &Stack) -> Pod {
    let out = s.ok(&[
        "get",
        "pods",
        "-A",
        "-o",
        "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name} {.status.phase} {.spec.containers[0].name} {.spec.containers[0].ports[0].containerPort}{\"\\n\"}{end}",
    ]);
    let line = out
        .lines()
        .find(|l| l.split(' ').nth(2) == Some("Running") && l.split(' ').count() == 5)
        .unwrap_or_else(|| panic!("a running pod with a port: {out}"));
    let f: Vec<&str> = line.split(' ').collect();
    Pod {
        ns: f[0].into(),
        name: f[1].into(),
        container: f[3].into(),
        port: f[4].parse().unwrap(),
    }
}

impl Pod {
    /// The arguments of `kubectl exec` with `flags` running `argv` in the pod's first container.
    pub fn exec_args<'a>(&'a self, flags: &[&'a str], argv: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["exec", "-n", &self.ns, &self.name, "-c", &self.container];
        args.extend_from_slice(flags);
        args.push("--");
        args.extend_from_slice(argv);
        args
    }
}

impl Stack {
    /// Another hub beside the stack's, sharing its access data and holding no tunnel: its
    /// directory names the stack's hub (`hub-test`) as the holder of the stack's cluster, so
    /// every request to it crosses a peer link. Its certificate is a hub's, as enrollment
    /// issues them. Returns the hub and a kubeconfig pointing at it.
    pub fn peer_hub(&self, id: &str, limits: Limits) -> (Hub, PathBuf) {
        self.peer_hub_in(id, limits, &self.environment.clone())
    }

    /// [`Stack::peer_hub`] in `environment` (the directory says the stack's hub is in the
    /// stack's).
    pub fn peer_hub_in(&self, id: &str, limits: Limits, environment: &str) -> (Hub, PathBuf) {
        let d = self.dir.path();
        let cert = self.ca.issue_hub(id, &["localhost", "127.0.0.1"]).unwrap();
        let crt = write(d, &format!("hub-{id}.crt"), &cert.cert);
        let key = write(d, &format!("hub-{id}.key"), &cert.key);
        let listener = |client_ca: Option<PathBuf>| Listener {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: Some(crt.clone()),
            key: Some(key.clone()),
            client_ca,
        };
        // Its directory, as a static registry file (a hub without meta).
        let registry = write(
            d,
            &format!("registry-{id}.ndjson"),
            &[
                registry_hub(self.hub_id(), self.hub.agent_addr, &self.environment),
                registry_agent(CLUSTER, &[self.hub_id()]),
            ]
            .map(|l| l.to_line())
            .concat(),
        );
        let cfg = HubConfig {
            id: id.into(),
            environment: environment.into(),
            zone: String::new(),
            cores: 2,
            clusters: Vec::new(),
            access: Some(AccessFile {
                file: d.join("access.json"),
            }),
            meta: None,
            registry: Some(kubehub_hub::config::RegistryFile { file: registry }),
            impersonate: false,
            user_listener: listener(None),
            agent_listener: listener(Some(d.join("ca.crt"))),
            admin: Some(kubehub_hub::config::Admin {
                listen: "127.0.0.1:0".parse().unwrap(),
            }),
            limits,
            cache: CacheConfig::default(),
            metrics: Default::default(),
            audit: Default::default(),
        };
        let hub = server::start(cfg).unwrap();
        let kc = Kubeconfig {
            name: CLUSTER.into(),
            server: format!(
                "https://127.0.0.1:{}/clusters/{CLUSTER}",
                hub.user_addr.port()
            ),
            ca_pem: Some(self.ca.cert_pem()),
            token: Some(TOKEN.into()),
            ..Kubeconfig::default()
        };
        let kubeconfig = write(d, &format!("kubeconfig-{id}"), &kc.to_yaml());
        (hub, kubeconfig)
    }

    /// The stack's hub's id.
    pub fn hub_id(&self) -> &str {
        "hub-test"
    }

    pub fn wait_connected(&self, want: bool, within: Duration) {
        let deadline = Instant::now() + within;
        while (self.hub.registry.connected() == 1) != want {
            assert!(
                Instant::now() < deadline,
                "agent connected != {want} after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn k(&self) -> Kubectl {
        Kubectl::new(&self.kubeconfig, self.dir.path())
    }

    pub fn kubectl_cmd(&self, args: &[&str]) -> Command {
        self.k().cmd(args)
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.k().output(args)
    }

    pub fn ok(&self, args: &[&str]) -> String {
        self.k().ok(args)
    }

    /// A request through the hub with curl (status line, headers and body).
    pub fn curl(&self, path: &str) -> String {
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10", "--cacert"])
            .arg(self.dir.path().join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
            .arg(format!(
                "https://127.0.0.1:{}{path}",
                self.hub.user_addr.port()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A raw TLS connection to the hub's user listener (trusting the stack's CA), for tests
    /// that write requests by hand. Call inside `rt.block_on`.
    pub async fn user_connection(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.user_connection_with(None).await
    }

    /// [`Stack::user_connection`] with a small socket receive buffer (`SO_RCVBUF`), for tests
    /// of clients that stop reading.
    pub async fn user_connection_with(
        &self,
        recv_buffer: Option<u32>,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.try_user_connection(recv_buffer).await.unwrap()
    }

    /// [`Stack::user_connection_with`], with the failure to connect or to complete the TLS
    /// handshake returned (a hub refusing connections).
    pub async fn try_user_connection(
        &self,
        recv_buffer: Option<u32>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.try_connection_to(self.hub.user_addr, recv_buffer)
            .await
    }

    /// A TLS connection to the user listener at `addr` (another hub of the stack's CA).
    pub async fn try_connection_to(
        &self,
        addr: std::net::SocketAddr,
        recv_buffer: Option<u32>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(kubehub_pki::parse_certs(&self.ca.cert_pem()).unwrap());
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(n) = recv_buffer {
            sock.set_recv_buffer_size(n).unwrap();
        }
        let tcp = sock.connect(addr).await?;
        tcp.set_nodelay(true)?;
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
    }

    /// GET on the hub's admin listener (`/metrics`, `/healthz`, `/readyz`): the whole answer.
    pub fn curl_admin(&self, path: &str) -> String {
        let addr = self
            .hub
            .admin_addr
            .expect("the stack's hub has an admin listener");
        let out = Command::new("curl")
            .args(["-sS", "-i", "--max-time", "10"])
            .arg(format!("http://{addr}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A GET through the hub with extra request headers: (status, response head, body).
    pub fn hub_get(&self, path: &str, headers: &[&str]) -> Reply {
        let (cmd, url) = self.hub_curl(path);
        curl_reply(cmd, &url, headers)
    }

    /// A GET through the hub on another cluster than the stack's own.
    pub fn hub_get_cluster(&self, cluster: &str, path: &str) -> Reply {
        let (cmd, _) = self.hub_curl(path);
        let url = format!(
            "https://127.0.0.1:{}/clusters/{cluster}{path}",
            self.hub.user_addr.port()
        );
        curl_reply(cmd, &url, &[])
    }

    /// curl set up for the hub (CA, token) and the URL of `path` on the stack's cluster.
    fn hub_curl(&self, path: &str) -> (Command, String) {
        let url = format!(
            "https://127.0.0.1:{}/clusters/{CLUSTER}{path}",
            self.hub.user_addr.port()
        );
        let mut cmd = Command::new("curl");
        cmd.arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        (cmd, url)
    }

    /// A request with a JSON body through the hub (`POST`, `PUT`, `PATCH` with its content
    /// type, `DELETE`).
    pub fn hub_send(&self, method: &str, path: &str, content_type: &str, body: &str) -> Reply {
        let (mut cmd, url) = self.hub_curl(path);
        cmd.args(["-X", method, "--data-binary", body]);
        curl_reply(cmd, &url, &[&format!("Content-Type: {content_type}")])
    }

    /// The same GET straight to the simulator (the edge API server), bypassing KubeHub.
    pub fn sim_get(&self, path: &str, headers: &[&str]) -> Reply {
        curl_reply(
            Command::new("curl"),
            &format!("http://{}{path}", self.sim_addr),
            headers,
        )
    }

    /// Waits until the hub's cache of `resource` (core `v1` or `apps/v1`) is synced.
    pub fn wait_synced(&self, group: &str, resource: &str, within: Duration) {
        let key = kubehub_wire::ResourceKey {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
        };
        let deadline = Instant::now() + within;
        loop {
            let synced = self
                .hub
                .caches
                .cluster(CLUSTER)
                .and_then(|c| c.slot(&key))
                .is_some_and(|s| s.is_synced());
            if synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{resource} not synced within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            self.rt.block_on(a.stop());
        }
    }

    pub fn start_agent(&mut self) {
        let _g = self.rt.enter();
        self.agent = Some(Agent::start(self.agent_cfg.clone()).unwrap());
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig named `name` for `token`: its server is the hub with the prefix of
    /// `cluster`, or the hub's root (`None`: for a token bound to one cluster).
    pub fn kubeconfig_for(&self, name: &str, token: &str, cluster: Option<&str>) -> PathBuf {
        let prefix = cluster.map_or(String::new(), |c| format!("/clusters/{c}"));
        let kc = Kubeconfig {
            name: name.into(),
            server: format!("https://127.0.0.1:{}{prefix}", self.hub.user_addr.port()),
            ca_pem: Some(self.ca.cert_pem()),
            token: Some(token.into()),
            ..Kubeconfig::default()
        };
        write(self.path(), &format!("kubeconfig-{name}"), &kc.to_yaml())
    }

    /// kubectl with the kubeconfig `name` written by [`Stack::kubeconfig_for`] (and a
    /// discovery cache of its own).
    pub fn kubectl_as(&self, name: &str) -> Kubectl {
        Kubectl::new(
            &self.path().join(format!("kubeconfig-{name}")),
            &self.path().join(format!("as-{name}")),
        )
    }

    /// A request through the hub with `token` (`None`: no Authorization header) on `target`
    /// (the whole path: `/clusters/{id}/…`, or unprefixed), with extra headers and a body
    /// (sent when not empty, with the content type in `headers`).
    pub fn request_as(
        &self,
        token: Option<&str>,
        method: &str,
        target: &str,
        headers: &[&str],
        body: &[u8],
    ) -> Reply {
        let url = format!("https://127.0.0.1:{}{target}", self.hub.user_addr.port());
        let mut cmd = Command::new("curl");
        cmd.arg("--cacert")
            .arg(self.dir.path().join("ca.crt"))
            .args(["-X", method]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        let body_file;
        if !body.is_empty() {
            body_file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(body_file.path(), body).unwrap();
            cmd.arg("--data-binary")
                .arg(format!("@{}", body_file.path().display()));
            return curl_reply(cmd, &url, headers);
        }
        curl_reply(cmd, &url, headers)
    }

    /// Applies a sync line to the running hub's access data (what meta's feed would carry:
    /// a put, a delete).
    pub fn apply_access(&self, line: &Line) {
        self.hub.access.apply(line);
    }
}
