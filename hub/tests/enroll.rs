//! The hub's enrollment with a real metaserver (in-process, on its embedded store): `--join`
//! writes the state directory and the hub serves the certificate meta signed (and talks to
//! meta with it); a later start reuses it; a token pinning another CA is refused before
//! anything is written; renewal replaces the served certificate without a restart while a
//! watch and a keep-alive connection opened before carry on, through the agent's tunnel.
#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kubehub_hub::config::HubConfig;
use kubehub_hub::enroll::{EnrollError, HubEnrollError};
use kubehub_hub::server::{Hub, HubError};
use kubehub_meta::client::Client;
use kubehub_meta::config::MetaConfig;
use kubehub_meta::server::Server;
use kubehub_meta::service::Meta;
use kubehub_pki::join::JoinToken;
use kubehub_pki::CertInfo;
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions};
use serde_json::{json, Value};

const CLUSTER: &str = "edge-1";
const CONFIGMAPS: &str = "/clusters/edge-1/api/v1/namespaces/default/configmaps";

/// A metaserver on loopback, with an admin client.
struct Env {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    meta: Meta,
    _server: Server,
    url: String,
    admin: Client,
}

impl Env {
    /// Meta with `extra` in its meta.toml.
    fn start(extra: &str) -> Env {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\n{extra}\n\
             [store]\nbackend = \"embedded\"\npath = \"{}\"\n",
            dir.path().join("admin.token").display(),
            dir.path().join("meta.redb").display(),
        );
        let (meta, server) = rt.block_on(async {
            let meta = Meta::start(MetaConfig::parse(&text).unwrap())
                .await
                .unwrap();
            let server = kubehub_meta::server::start(meta.clone()).await.unwrap();
            (meta, server)
        });
        let url = format!("https://{}", server.addr);
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let admin = Client::new(&url, meta.ca_pem(), Some(token.trim().into()), None).unwrap();
        Env {
            rt,
            dir,
            meta,
            _server: server,
            url,
            admin,
        }
    }

    fn post(&self, path: &str, body: Value) -> Value {
        self.rt.block_on(self.admin.post(path, &body)).unwrap()
    }

    /// What `kubehub ctl hub-join-token ID --name localhost --name 127.0.0.1` prints.
    fn hub_join_token(&self, id: &str) -> String {
        let v = self.post(
            "/v1/hubs/join-token",
            json!({"id": id, "names": ["localhost", "127.0.0.1"]}),
        );
        v["joinToken"].as_str().unwrap().to_owned()
    }

    /// A hub.toml naming only addresses, meta and the state directory `state_dir`.
    fn hub_config(&self, name: &str) -> (HubConfig, PathBuf) {
        let d = self.dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let toml = format!(
            "cores = 1\nimpersonate = false\n\
             [meta]\nurl = \"{}\"\nstate_dir = \"state\"\nregister_interval_ms = 200\n\
             backoff_initial_ms = 100\nbackoff_max_ms = 1000\n\
             [user_listener]\nlisten = \"127.0.0.1:0\"\n\
             [agent_listener]\nlisten = \"127.0.0.1:0\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n",
            self.url
        );
        let path = d.join("hub.toml");
        std::fs::write(&path, toml).unwrap();
        (HubConfig::load(&path).unwrap(), d.join("state"))
    }

    fn registered_hubs(&self) -> Vec<String> {
        let v = self
            .rt
            .block_on(self.admin.get("/v1/registry/hubs"))
            .unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h["id"].as_str().map(str::to_owned))
            .collect()
    }
}

fn wait(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A TLS connection to the hub's user listener trusting exactly meta's CA (checking the name
/// `localhost`), as an HTTP/1.1 client; and the certificate the hub presented.
async fn connect(hub: &Hub, ca_pem: &str) -> (SendRequest<Full<Bytes>>, CertInfo) {
    let roots = kubehub_pki::parse_roots(ca_pem).unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    let tcp = tokio::net::TcpStream::connect(hub.user_addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let info = kubehub_pki::cert_info(&kubehub_pki::cert_der_to_pem(&leaf)).unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, info)
}

fn get(path: &str, token: &str) -> hyper::Request<Full<Bytes>> {
    hyper::Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// GET on an open connection: the status and the body.
async fn fetch(conn: &mut SendRequest<Full<Bytes>>, path: &str, token: &str) -> (u16, String) {
    conn.ready().await.unwrap();
    let resp = conn.send_request(get(path, token)).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn leaf_der(cert: &kubehub_pki::ReloadingCert) -> Vec<u8> {
    cert.current().cert[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    let pem = std::fs::read_to_string(path).unwrap();
    kubehub_pki::parse_certs(&pem).unwrap()[0].to_vec()
}

#[test]
fn join_writes_the_state_dir_and_the_hub_serves_the_meta_signed_certificate() {
    let env = Env::start("");
    let (cfg, state) = env.hub_config("hub");

    // Not enrolled and no token: the error says what to do.
    let e = kubehub_hub::server::start(cfg.clone()).unwrap_err();
    assert!(
        matches!(e, HubError::Enroll(HubEnrollError::NotEnrolled { .. })),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("kubehub hub --join TOKEN") && msg.contains("user_listener.cert"),
        "{msg}"
    );

    let token = env.hub_join_token("hub-x");
    let hub = kubehub_hub::server::join_and_start(cfg.clone(), Some(&token)).unwrap();

    // The state directory: the key (private), meta's certificate for it, meta's CA.
    let ca_pem = env.meta.ca_pem().to_owned();
    assert_eq!(
        std::fs::read_to_string(state.join("ca.crt")).unwrap(),
        ca_pem
    );
    let cert = std::fs::read_to_string(state.join("hub.crt")).unwrap();
    let key = std::fs::read_to_string(state.join("hub.key")).unwrap();
    kubehub_pki::ReloadingCert::from_pem(&cert, &key).unwrap();
    let info = kubehub_pki::cert_info(&cert).unwrap();
    assert_eq!(info.common_name, "hub-x", "the join token decides the id");
    assert_eq!(info.organizations, vec![kubehub_pki::HUBS_GROUP.to_owned()]);
    assert_eq!(info.names, vec!["localhost".to_owned(), "127.0.0.1".into()]);
    assert!(info.server_auth && info.client_auth);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join("hub.key")), 0o600, "the key is private");
        assert_eq!(mode(&state), 0o700);
    }

    // Both listeners serve it; a client trusting meta's CA sees CN = the hub id.
    assert_eq!(leaf_der(&hub.user_cert), pem_der(&state.join("hub.crt")));
    assert_eq!(leaf_der(&hub.agent_cert), pem_der(&state.join("hub.crt")));
    let served = env.rt.block_on(async { connect(&hub, &ca_pem).await.1 });
    assert_eq!(served.common_name, "hub-x");
    assert_eq!(served.serial, info.serial);

    // It talks to meta with it (mutual TLS, no token file): the feed and the registration,
    // under the enrolled id (hub.toml has none).
    wait(Duration::from_secs(15), "the hub has access data", || {
        hub.access.index.revision() > 0
    });
    wait(Duration::from_secs(15), "the hub registered", || {
        env.registered_hubs() == ["hub-x"]
    });
    let metrics = hub.metrics.encode();
    assert!(
        metrics.contains(&format!(
            "kubehub_hub_cert_expiry_seconds {}",
            unix_secs(info.not_after)
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("kubehub_hub_cert_renewals_total 0"),
        "{metrics}"
    );
    hub.shutdown(Duration::from_secs(1));
    drop(hub);

    // A later start reuses the saved certificate: no token (and a token given anyway is not
    // spent: the state directory is not rewritten).
    let spare = env.hub_join_token("hub-x");
    for join in [None, Some(spare.as_str())] {
        let again = kubehub_hub::server::join_and_start(cfg.clone(), join).unwrap();
        let served = env.rt.block_on(async { connect(&again, &ca_pem).await.1 });
        assert_eq!(served.serial, info.serial, "the same certificate");
        again.shutdown(Duration::from_secs(1));
    }
    assert_eq!(std::fs::read_to_string(state.join("hub.key")).unwrap(), key);

    // hub.toml naming another id than the enrolled one is refused.
    let mut other = cfg;
    other.id = "hub-y".into();
    let e = kubehub_hub::server::start(other).unwrap_err().to_string();
    assert!(e.contains("hub-y") && e.contains("hub-x"), "{e}");
}

fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_token_pinning_another_ca_is_refused_and_nothing_is_written() {
    let env = Env::start("");
    let (cfg, state) = env.hub_config("hub");
    let token = env.hub_join_token("hub-x");
    let other = kubehub_pki::Ca::generate("someone else's CA").unwrap();
    let mut wrong = JoinToken::parse(&token).unwrap();
    wrong.ca_hash = JoinToken::generate(&other.cert_hash()).unwrap().ca_hash;
    let e = kubehub_hub::server::join_and_start(cfg.clone(), Some(&wrong.encode())).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            HubError::Enroll(HubEnrollError::Enroll(EnrollError::CaPinMismatch { .. }))
        ),
        "{msg}"
    );
    assert!(
        msg.contains(&env.meta.ca().cert_hash()) && msg.contains(&other.cert_hash()),
        "names both hashes: {msg}"
    );
    assert!(!state.exists(), "nothing written");

    // A malformed token fails before any call; a join token without a state directory is
    // refused.
    let e = kubehub_hub::server::join_and_start(cfg.clone(), Some("hello"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a KubeHub join token"), "{e}");
    let mut no_state = cfg.clone();
    no_state.meta.as_mut().unwrap().state_dir = None;
    let e = kubehub_hub::enroll::prepare_blocking(&mut no_state, Some(&token)).unwrap_err();
    assert!(matches!(e, HubEnrollError::NoStateDir), "{e}");
    assert!(!state.exists(), "nothing written");

    // The secret never left: the token still enrolls.
    let hub = kubehub_hub::server::join_and_start(cfg, Some(&token)).unwrap();
    assert!(state.join("hub.crt").exists());
    hub.shutdown(Duration::from_secs(1));
}

#[test]
fn renewal_replaces_the_served_certificate_and_connections_carry_on() {
    let env = Env::start("[certs]\nhub_lifetime_s = 8\n");
    // The edge: a simulated cluster, its agent enrolled with meta.
    let cluster: Arc<Cluster> = Cluster::new(CLUSTER, ClusterConfig::default());
    sim::seed(&cluster, &SeedSpec::default()).unwrap();
    let sim_server = env
        .rt
        .block_on(sim::serve(
            "127.0.0.1:0".parse().unwrap(),
            Router::Single(cluster.clone()),
            ServeOptions::default(),
        ))
        .unwrap();
    env.post("/v1/tenants", json!({"name": "t"}));
    env.post("/v1/users", json!({"name": "alice", "tenant": "t"}));
    let created = env.post("/v1/clusters", json!({"id": CLUSTER, "tenant": "t"}));
    env.post(
        "/v1/grants",
        json!({"name": "configmaps", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
               "clusters": {"ids": [CLUSTER]},
               "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}),
    );

    // The hub, enrolled with an 8 s certificate.
    let (cfg, state) = env.hub_config("hub");
    let hub = kubehub_hub::server::join_and_start(cfg, Some(&env.hub_join_token("hub-r"))).unwrap();
    // alice's token (a kubeconfig points at a registered hub).
    wait(Duration::from_secs(15), "the hub registered", || {
        env.registered_hubs() == ["hub-r"]
    });
    let kubeconfig = env.post(
        "/v1/kubeconfig",
        json!({"user": "alice", "clusters": [CLUSTER]}),
    );
    let token = kubehub_testkit::kubeconfig_token(kubeconfig["kubeconfig"].as_str().unwrap());
    let ca_pem = env.meta.ca_pem().to_owned();
    let agent_toml = env.dir.path().join("agent.toml");
    std::fs::write(
        &agent_toml,
        format!(
            "hubs = [\"{}\"]\n[meta]\nurl = \"{}\"\nstate_dir = \"agent\"\n\
             [reconnect]\ninitial_ms = 100\nmax_ms = 500\n[upstream]\nurl = \"http://{}\"\n",
            hub.agent_addr,
            env.url,
            sim_server.local_addr()
        ),
    )
    .unwrap();
    let agent_cfg = kubehub_agent::AgentConfig::read(&agent_toml).unwrap();
    let agent = env
        .rt
        .block_on(kubehub_agent::Agent::join_and_start(
            agent_cfg,
            Some(created["joinToken"].as_str().unwrap()),
        ))
        .unwrap();
    wait(Duration::from_secs(20), "the agent's tunnel is up", || {
        hub.registry.connected() == 1
    });

    // A keep-alive connection and a watch, both opened now.
    let (mut keep, before) = env.rt.block_on(connect(&hub, &ca_pem));
    wait(Duration::from_secs(15), "alice's token is known", || {
        env.rt.block_on(fetch(&mut keep, CONFIGMAPS, &token)).0 == 200
    });
    let renewals_before = hub.metrics.cert.renewals.get();
    let watched = Arc::new(Mutex::new(String::new()));
    let (mut watch_conn, _) = env.rt.block_on(connect(&hub, &ca_pem));
    let w = watched.clone();
    let path = format!("{CONFIGMAPS}?watch=1&resourceVersion=0");
    env.rt.block_on(async {
        watch_conn.ready().await.unwrap();
        let resp = watch_conn.send_request(get(&path, &token)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    w.lock().unwrap().push_str(&String::from_utf8_lossy(&data));
                }
            }
            w.lock().unwrap().push_str("\n<watch ended>");
        });
    });

    // Renewed at 70-90% of the 8 s life: new connections see a later certificate, served by
    // both listeners, from the state directory, without a restart.
    wait(
        Duration::from_secs(30),
        "the hub renewed its certificate",
        || hub.metrics.cert.renewals.get() > renewals_before,
    );
    let (_, after) = env.rt.block_on(connect(&hub, &ca_pem));
    assert!(
        after.not_after > before.not_after,
        "a new connection sees the renewed certificate ({} then {})",
        before.serial,
        after.serial
    );
    assert_eq!(after.common_name, "hub-r");
    assert_eq!(after.names, before.names, "the names are kept");
    wait(
        Duration::from_secs(10),
        "the listeners serve the certificate in the state directory",
        || {
            let saved = pem_der(&state.join("hub.crt"));
            leaf_der(&hub.user_cert) == saved && leaf_der(&hub.agent_cert) == saved
        },
    );
    assert!(hub
        .metrics
        .encode()
        .contains("kubehub_hub_cert_renewals_total"));

    // The connections opened before carry on: the keep-alive one answers, the watch (through
    // the agent's tunnel, still up) delivers a change made now.
    assert!(!keep.is_closed(), "the keep-alive connection is open");
    assert_eq!(env.rt.block_on(fetch(&mut keep, CONFIGMAPS, &token)).0, 200);
    let ty = cluster.type_index("", "v1", "configmaps").unwrap();
    cluster
        .create(
            ty,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after-renewal"}}),
            false,
        )
        .unwrap();
    wait(
        Duration::from_secs(15),
        "the watch delivers the change",
        || {
            let w = watched.lock().unwrap();
            assert!(!w.contains("<watch ended>"), "the watch ended: {w}");
            w.contains("after-renewal")
        },
    );
    assert_eq!(hub.registry.connected(), 1, "the tunnel was not dropped");
    assert_eq!(
        agent.metrics.connected.get(),
        1,
        "the agent's tunnel is still the one up"
    );
    env.rt.block_on(agent.stop());
    hub.shutdown(Duration::from_secs(1));
}
