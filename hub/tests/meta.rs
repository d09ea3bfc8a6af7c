//! The hub and the metaserver: the sync feed (snapshot, puts, deletes, heartbeats; resuming
//! from the last revision after a silence or a lost connection), `/readyz` and the metrics
//! that say how current the hub is, serving on without meta, and the hub's registration.
//! Meta is a fake here (hyper on loopback) that the test drives line by line.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubehub_access::{Line, Record};
use kubehub_hub::config::{Admin, HubConfig, Listener, MetaConfig};
use kubehub_testkit::stack::{cluster, everything, grant, mint, tenant, user};
use tokio::sync::mpsc;

/// A response body fed line by line from the test.
struct Feed(mpsc::Receiver<Bytes>);

impl Body for Feed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// What the fake meta holds and has seen.
#[derive(Default)]
struct State {
    /// Answer sync requests 503.
    refuse: bool,
    /// Send no heartbeats.
    silent: bool,
    revision: i64,
    records: Vec<Record>,
    /// The open feed.
    feed: Option<mpsc::Sender<Bytes>>,
    /// Sync request targets and their Authorization.
    syncs: Vec<(String, String)>,
    /// Registrations: path, Authorization, body.
    registrations: Vec<(String, String, serde_json::Value)>,
}

#[derive(Clone)]
struct FakeMeta {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FakeMeta {
    fn start(rt: &tokio::runtime::Runtime) -> FakeMeta {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| serve(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        FakeMeta { addr, state }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Sends a line on the open feed (if any) after recording its effect.
    fn push(&self, line: Line) {
        let feed = self.with(|s| {
            s.revision = line.revision();
            match &line {
                Line::Put { record, .. } => {
                    let key = record.key();
                    s.records.retain(|r| r.key() != key);
                    s.records.push(record.clone());
                }
                Line::Delete { key, .. } => s.records.retain(|r| &r.key() != key),
                _ => {}
            }
            s.feed.clone()
        });
        if let Some(f) = feed {
            let _ = f.try_send(Bytes::from(line.to_line()));
        }
    }

    /// Ends the open feed (the hub sees the stream end).
    fn hang_up(&self) {
        self.with(|s| s.feed = None);
    }
}

type Reply = Response<BoxBody<Bytes, Infallible>>;

fn full(code: u16, body: &str) -> Reply {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::from(body.to_owned())).boxed())
        .unwrap()
}

async fn serve(state: Arc<Mutex<State>>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let target = req.uri().to_string();
    if req.method() == hyper::Method::PUT && req.uri().path().starts_with("/v1/registry/hubs/") {
        let path = req.uri().path().to_owned();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        state.lock().unwrap().registrations.push((path, auth, v));
        return Ok(full(200, "{}"));
    }
    if req.uri().path() != "/v1/sync" {
        return Ok(full(404, "not found"));
    }
    let from: i64 = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("revision="))
        .and_then(|r| r.parse().ok())
        .unwrap_or(-1);
    let (tx, rx) = mpsc::channel(64);
    {
        let mut s = state.lock().unwrap();
        s.syncs.push((target, auth));
        if s.refuse {
            return Ok(full(503, "meta is not ready"));
        }
        if from != s.revision {
            let snap = Line::Snapshot {
                revision: s.revision,
                records: s.records.clone(),
            };
            let _ = tx.try_send(Bytes::from(snap.to_line()));
        }
        s.feed = Some(tx.clone());
    }
    // Heartbeats every 100 ms while the feed is the open one and meta is not silent.
    let weak = tx.downgrade();
    drop(tx);
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(tx) = weak.upgrade() else { return };
            let beat = {
                let s = st.lock().unwrap();
                let current = s.feed.as_ref().is_some_and(|f| f.same_channel(&tx));
                if !current {
                    return;
                }
                (!s.silent).then(|| Line::Heartbeat {
                    revision: s.revision,
                })
            };
            if let Some(b) = beat {
                let _ = tx.try_send(Bytes::from(b.to_line()));
            }
        }
    });
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Feed(rx).boxed())
        .unwrap())
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A cluster record in `environment`.
fn in_environment(r: kubehub_access::Record, environment: &str) -> kubehub_access::Record {
    match r {
        kubehub_access::Record::Cluster(mut c) => {
            c.environment = environment.into();
            kubehub_access::Record::Cluster(c)
        }
        other => other,
    }
}

#[test]
fn the_hub_follows_meta_and_serves_on_without_it() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let meta = FakeMeta::start(&rt);
    meta.with(|s| s.refuse = true);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    kubehub_pki::write_dev_set(
        d,
        &kubehub_pki::DevSet {
            clusters: vec![],
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            users: vec![],
        },
    )
    .unwrap();
    std::fs::write(d.join("hub-meta.token"), "meta-secret\n").unwrap();
    let listener = |client_ca| Listener {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: Some(d.join("hub.crt")),
        key: Some(d.join("hub.key")),
        client_ca,
    };
    let cfg = HubConfig {
        id: "hub-meta-test".into(),
        environment: "test".into(),
        zone: "zone-t".into(),
        cores: 1,
        clusters: vec![],
        access: None,
        registry: None,
        meta: Some(MetaConfig {
            token_file: Some(d.join("hub-meta.token")),
            heartbeat_timeout_ms: 500,
            backoff_initial_ms: 20,
            backoff_max_ms: 100,
            register_interval_ms: 100,
            ..MetaConfig::new(format!("http://{}", meta.addr))
        }),
        impersonate: false,
        user_listener: listener(None),
        agent_listener: listener(Some(d.join("ca.crt"))),
        admin: Some(Admin {
            listen: "127.0.0.1:0".parse().unwrap(),
        }),
        limits: Default::default(),
        cache: Default::default(),
        metrics: Default::default(),
        audit: Default::default(),
    };
    let hub = kubehub_hub::server::start(cfg).unwrap();
    let admin = hub.admin_addr.unwrap();
    let readyz = || curl(&[&format!("http://{admin}/readyz?verbose")]);
    let metrics = || curl(&[&format!("http://{admin}/metrics")]).1;
    let ca = d.join("ca.crt");
    let user_port = hub.user_addr.port();
    // 401 (who?) or 503 (authorized; the cluster has no agent here): what the index decided.
    let call_cluster = |token: &str, cluster: &str| {
        curl(&[
            "--cacert",
            ca.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!("https://127.0.0.1:{user_port}/clusters/{cluster}/version"),
        ])
    };
    let call = |token: &str| call_cluster(token, "edge-m");

    // Meta refuses: not ready, nobody authenticated; the hub registers all the same.
    let (code, body) = readyz();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("meta: not connected"), "{body}");
    wait_for("a refused sync", Duration::from_secs(5), || {
        meta.with(|s| !s.syncs.is_empty())
    });
    wait_for("a registration", Duration::from_secs(5), || {
        meta.with(|s| !s.registrations.is_empty())
    });
    let (path, auth, reg) = meta.with(|s| s.registrations[0].clone());
    assert_eq!(path, "/v1/registry/hubs/hub-meta-test");
    assert_eq!(auth, "Bearer meta-secret");
    assert_eq!(reg["endpoint"], format!("https://127.0.0.1:{user_port}"));
    assert_eq!(reg["agentEndpoint"], hub.agent_addr.to_string());
    assert_eq!(reg["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(reg["environment"], "test", "the hub's environment");
    assert_eq!(reg["zone"], "zone-t");
    assert_eq!(reg["draining"], false);
    assert_eq!(reg["agents"], 0);
    let (sync_target, sync_auth) = meta.with(|s| s.syncs[0].clone());
    assert_eq!(
        (sync_target.as_str(), sync_auth.as_str()),
        ("/v1/sync?revision=0", "Bearer meta-secret")
    );

    // Meta answers: a snapshot at revision 5, then heartbeats.
    let (ann, ann_token) = mint("ann", "acme", &["edge-m", "edge-p"], 0);
    let (ben, ben_token) = mint("ben", "acme", &["edge-m"], 0);
    meta.with(|s| {
        s.revision = 5;
        s.records = vec![
            tenant("acme"),
            user("ann", "acme", &[]),
            user("ben", "acme", &[]),
            in_environment(cluster("edge-m", "acme"), "test"),
            in_environment(cluster("edge-p", "acme"), "prod"),
            grant("all", "acme", "ann", &["edge-m", "edge-p"], everything()),
            grant("ben", "acme", "ben", &["edge-m"], everything()),
            ann_token.clone(),
        ];
        s.refuse = false;
    });
    wait_for("ready", Duration::from_secs(5), || readyz().0 == 200);
    let (_, body) = readyz();
    assert!(body.contains("meta: connected (revision 5)"), "{body}");
    assert_eq!(
        call(&ann).0,
        503,
        "ann is authorized; edge-m has no agent here"
    );
    assert_eq!(call(&ben).0, 401, "ben's token is not issued yet");
    // A cluster of another environment is not served here, whoever asks.
    let (code, body) = call_cluster(&ann, "edge-p");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains(
            r#"cluster \"edge-p\" is in environment \"prod\"; this hub serves environment \"test\""#
        ),
        "{body}"
    );

    // Puts and deletes apply as they come.
    meta.push(Line::Put {
        revision: 6,
        record: ben_token,
    });
    wait_for("ben's token", Duration::from_secs(5), || {
        call(&ben).0 == 503
    });
    let Record::Token(t) = &ann_token else {
        unreachable!()
    };
    meta.push(Line::Delete {
        revision: 7,
        key: format!("tokens/{}", t.id),
    });
    wait_for("ann's revocation", Duration::from_secs(5), || {
        call(&ann).0 == 401
    });
    let (_, body) = call(&ann);
    assert!(body.contains("unknown or has been revoked"), "{body}");
    let m = metrics();
    assert!(m.contains("kubehub_hub_access_revision 7"), "{m}");
    assert!(m.contains("kubehub_hub_meta_connected 1"), "{m}");

    // Meta goes silent: after heartbeat_timeout_ms the hub reconnects without a snapshot,
    // replaying the last revision it applied (7): a revision's lines may have been cut short.
    let before = meta.with(|s| s.syncs.len());
    meta.with(|s| s.silent = true);
    wait_for("a reconnection", Duration::from_secs(5), || {
        meta.with(|s| s.syncs.len() > before)
    });
    let resumed = meta.with(|s| s.syncs.last().unwrap().0.clone());
    assert_eq!(resumed, "/v1/sync?revision=6");
    meta.with(|s| s.silent = false);
    assert!(metrics().contains("kubehub_hub_meta_syncs_total{outcome=\"failed\"}"));

    // Meta goes away: the hub serves on with revision 7 and says so.
    meta.with(|s| s.refuse = true);
    meta.hang_up();
    wait_for("disconnected", Duration::from_secs(5), || {
        readyz().1.contains("meta: disconnected for")
    });
    let (code, body) = readyz();
    assert_eq!(code, 200, "a hub without meta serves on: {body}");
    assert!(body.contains("serving with revision 7"), "{body}");
    assert_eq!(
        call(&ben).0,
        503,
        "ben is still authenticated and authorized"
    );
    assert_eq!(call(&ann).0, 401);
    let m = metrics();
    assert!(m.contains("kubehub_hub_meta_connected 0"), "{m}");
    assert!(m.contains("kubehub_hub_meta_disconnected_seconds"), "{m}");
    // Registration goes on meanwhile, with the agent count.
    let n = meta.with(|s| s.registrations.len());
    wait_for("more registrations", Duration::from_secs(5), || {
        meta.with(|s| s.registrations.len() > n)
    });
    // And meta back: a new feed replays revision 7 and the hub is connected again.
    meta.with(|s| s.refuse = false);
    wait_for("reconnected", Duration::from_secs(5), || {
        readyz().1.contains("meta: connected")
    });
    assert!(meta.with(|s| s.syncs.last().unwrap().0 == "/v1/sync?revision=6"));
    drop(hub);
}
