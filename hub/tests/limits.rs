//! Fair sharing, rate limits and overload shedding, seen from clients (the `admit` phase):
//! a tenant over its rate gets 429 with `Retry-After` while another tenant is served; a noisy
//! user cannot starve another user of its tenant (shuffle-sharded fair queues); operators
//! are exempt; the per-cluster forward limit protects the edge; above the memory ceiling new
//! connections are refused while open ones are served; limits set in meta reach the hub.
//! simulator → agent → hub on loopback with real TLS (the stack of `kubehub-testkit`); the
//! meta test runs the real metaserver (embedded store) and a hub that joined it.
//!
//! No timing is asserted: counts of answers are, and the figures (latencies, how long a limit
//! took to reach the hub) are printed (`cargo test -p kubehub-hub --test limits --
//! --nocapture`).

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use kubehub_access::model::Limit;
use kubehub_access::{Line, Record};
use kubehub_hub::config::{Fairness, Limits};
use kubehub_testkit::stack::{
    self as common, cluster, everything, grant, mint, tenant, user, Stack, StackOptions, CLUSTER,
};

const SYNC: Duration = Duration::from_secs(20);
/// The second cluster of the stack's hub (its allowed list names it), here tenant B's.
const CLUSTER_B: &str = "edge-silent";

/// An answer: status, `Retry-After`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: String,
    took: Duration,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_default()
    }
}

/// An HTTP/1.1 keep-alive connection to the hub's user listener.
async fn connect(s: &Stack) -> SendRequest<Full<Bytes>> {
    connect_to(s, s.hub.user_addr).await
}

/// An HTTP/1.1 keep-alive connection to a hub's user listener.
async fn connect_to(s: &Stack, addr: std::net::SocketAddr) -> SendRequest<Full<Bytes>> {
    let tls = s.try_connection_to(addr, None).await.unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

async fn get(conn: &mut SendRequest<Full<Bytes>>, token: &str, path: &str) -> Answer {
    let started = Instant::now();
    conn.ready().await.unwrap();
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        retry_after,
        body: String::from_utf8_lossy(&body).into_owned(),
        took: started.elapsed(),
    }
}

/// Tenant A owns the stack's cluster with users alice, bob and ops; tenant B owns
/// `edge-silent` with user carol. Tokens returned in that order.
fn two_tenants() -> (Vec<Record>, [String; 4]) {
    let (alice, alice_rec) = mint("alice", "tenant-a", &[CLUSTER], 0);
    let (bob, bob_rec) = mint("bob", "tenant-a", &[CLUSTER], 0);
    let (ops, ops_rec) = mint("ops", "tenant-a", &[CLUSTER], 0);
    let (carol, carol_rec) = mint("carol", "tenant-b", &[CLUSTER_B], 0);
    let records = vec![
        tenant("tenant-a"),
        tenant("tenant-b"),
        user("alice", "tenant-a", &[]),
        user("bob", "tenant-a", &[]),
        user("ops", "tenant-a", &[]),
        user("carol", "tenant-b", &[]),
        cluster(CLUSTER, "tenant-a"),
        cluster(CLUSTER_B, "tenant-b"),
        grant("a-all", "tenant-a", "alice", &[CLUSTER], everything()),
        grant("b-all", "tenant-a", "bob", &[CLUSTER], everything()),
        grant("ops-all", "tenant-a", "ops", &[CLUSTER], everything()),
        grant("c-all", "tenant-b", "carol", &[CLUSTER_B], everything()),
        alice_rec,
        bob_rec,
        ops_rec,
        carol_rec,
    ];
    (records, [alice, bob, ops, carol])
}

/// The defaults, with user `ops` exempt (an operator).
fn with_operator() -> Fairness {
    Fairness {
        exempt_users: vec!["ops".into()],
        ..Fairness::default()
    }
}

fn stack(fairness: Fairness, records: Vec<Record>) -> Stack {
    let s = common::start_opts(StackOptions {
        access: Some(records),
        limits: Limits {
            fairness,
            ..Limits::default()
        },
        ..StackOptions::default()
    });
    s.wait_synced("", "pods", SYNC);
    s
}

/// A second agent, for `edge-silent`, against the same simulator (tenant B's cluster).
fn second_agent(s: &Stack) -> kubehub_agent::Agent {
    let cert = s.ca.issue_agent(CLUSTER_B).unwrap();
    let crt = s.path().join("agent-b.crt");
    let key = s.path().join("agent-b.key");
    std::fs::write(&crt, &cert.cert).unwrap();
    std::fs::write(&key, &cert.key).unwrap();
    let mut cfg = s.agent_cfg.clone();
    cfg.cluster_id = CLUSTER_B.into();
    cfg.agent_id = Some("agent-b".into());
    cfg.tls.cert = Some(crt);
    cfg.tls.key = Some(key);
    let _g = s.rt.enter();
    let agent = kubehub_agent::Agent::start(cfg).unwrap();
    let deadline = Instant::now() + SYNC;
    while s
        .hub
        .registry
        .snapshot()
        .iter()
        .all(|(c, _, _)| c != CLUSTER_B)
    {
        assert!(
            Instant::now() < deadline,
            "the second agent did not connect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

fn put_limit(s: &Stack, limit: Limit, revision: i64) {
    s.apply_access(&Line::Put {
        revision,
        record: Record::Limit(limit),
    });
}

fn pods(cluster: &str) -> String {
    format!("/clusters/{cluster}/api/v1/namespaces/default/pods?limit=1")
}

/// Tenant A is limited to 2 requests/s (burst 4); a client of it and one of tenant B (no
/// limit) each send 40 requests at the same time: A's are mostly refused with 429,
/// `Retry-After` and a `TooManyRequests` Status naming the limit, B's all succeed. An exempt
/// operator of tenant A is never limited.
#[test]
fn a_tenant_over_its_limit_gets_429_while_another_tenant_is_served() {
    let (records, [alice, _bob, ops, carol]) = two_tenants();
    let s = stack(with_operator(), records);
    let _b = second_agent(&s);
    // B alone first: its baseline latency.
    let baseline = s.rt.block_on(async {
        let mut c = connect(&s).await;
        let mut total = Duration::ZERO;
        for _ in 0..40 {
            let a = get(&mut c, &carol, &pods(CLUSTER_B)).await;
            assert_eq!(a.status, 200, "{}", a.body);
            total += a.took;
        }
        total / 40
    });
    put_limit(
        &s,
        Limit {
            tenant: "tenant-a".into(),
            requests_per_second: Some(2),
            burst: Some(4),
            ..Limit::default()
        },
        100,
    );
    let (a_answers, b_answers) = s.rt.block_on(async {
        let (mut ca, mut cb) = (connect(&s).await, connect(&s).await);
        let a = async {
            let mut out = Vec::new();
            for _ in 0..40 {
                out.push(get(&mut ca, &alice, &pods(CLUSTER)).await);
            }
            out
        };
        let b = async {
            let mut out = Vec::new();
            for _ in 0..40 {
                out.push(get(&mut cb, &carol, &pods(CLUSTER_B)).await);
            }
            out
        };
        tokio::join!(a, b)
    });
    let ok = |v: &[Answer]| v.iter().filter(|a| a.status == 200).count();
    let mean = |v: &[Answer]| v.iter().map(|a| a.took).sum::<Duration>() / v.len() as u32;
    let (a_ok, b_ok) = (ok(&a_answers), ok(&b_answers));
    println!(
        "tenant A (limited): {a_ok}/40 served; tenant B: {b_ok}/40 served; B's mean latency {:?} \
         under A's burst vs {:?} alone (ratio {:.2})",
        mean(&b_answers),
        baseline,
        mean(&b_answers).as_secs_f64() / baseline.as_secs_f64()
    );
    assert_eq!(b_ok, 40, "tenant B is not limited by tenant A's limit");
    assert!(
        a_ok <= 10,
        "tenant A's burst (its user's share: 2) and rate: {a_ok}"
    );
    let refused: Vec<&Answer> = a_answers.iter().filter(|a| a.status != 200).collect();
    assert_eq!(refused.len(), 40 - a_ok);
    for r in &refused {
        assert_eq!(r.status, 429, "{}", r.body);
        let secs: u32 = r.retry_after.as_deref().unwrap().parse().unwrap();
        assert!(secs >= 1);
        let st = r.json();
        assert_eq!(st["kind"], "Status");
        assert_eq!(st["reason"], "TooManyRequests");
        assert_eq!(st["code"], 429);
        let msg = st["message"].as_str().unwrap();
        assert!(
            msg.contains("is over its rate limit of") && msg.contains("requests/s"),
            "{msg}"
        );
        assert_eq!(st["details"]["retryAfterSeconds"], secs);
    }
    // The operator: exempt, never refused, however fast.
    let ops_ok = s.rt.block_on(async {
        let mut c = connect(&s).await;
        let mut n = 0;
        for _ in 0..40 {
            n += usize::from(get(&mut c, &ops, &pods(CLUSTER)).await.status == 200);
        }
        n
    });
    assert_eq!(ops_ok, 40, "exempt operators are not throttled");
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains(r#"kubehub_hub_rejected_total{tenant="tenant-a",reason="user_rate"}"#)
            || metrics
                .contains(r#"kubehub_hub_rejected_total{tenant="tenant-a",reason="tenant_rate"}"#),
        "{metrics}"
    );
    assert!(metrics.contains("kubehub_hub_admission_exempt_total 40"));
    // The refusals are in the live traffic summary too (the console's Traffic page).
    let traffic: serde_json::Value = {
        let text = s.curl_admin("/traffic");
        let body = text.split("\r\n\r\n").last().unwrap_or(&text).to_owned();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let a = traffic["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == "tenant-a")
        .cloned()
        .unwrap_or_default();
    assert!(
        a["rejectedPerSecond"].as_f64().unwrap_or(0.0) > 0.0,
        "{traffic}"
    );
    // The limit cleared: alice is served again (after her bucket refilled).
    s.apply_access(&Line::Delete {
        revision: 101,
        key: "limits/tenant-a".into(),
    });
    let a = s.rt.block_on(async {
        let mut c = connect(&s).await;
        get(&mut c, &alice, &pods(CLUSTER)).await
    });
    assert_eq!(a.status, 200, "{}", a.body);
}

/// Alice keeps 48 lists in flight (each takes tenant A's 2 seats) while bob, of the same
/// tenant, sends 40 requests one at a time; queues hold 4 requests each. Returns alice's
/// (served, refused), bob's answers, and the hub's metrics.
fn noisy_and_quiet(queues: u32, hand_size: u32) -> ((u32, u32), Vec<Answer>, String) {
    let (records, [alice, bob, _, _]) = two_tenants();
    let s = stack(
        Fairness {
            concurrency: 2,
            queue_length: 4,
            queues,
            hand_size,
            queue_timeout_ms: 10_000,
            ..Fairness::default()
        },
        records,
    );
    let list = format!("/clusters/{CLUSTER}/api/v1/pods");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (noisy, quiet) = s.rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..48 {
            let mut c = connect(&s).await;
            let (alice, list, stop) = (alice.clone(), list.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut refused) = (0u32, 0u32);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    match get(&mut c, &alice, &list).await.status {
                        200 => ok += 1,
                        429 => refused += 1,
                        other => panic!("alice got {other}"),
                    }
                }
                (ok, refused)
            }));
        }
        // Let alice's flood fill her queues.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut c = connect(&s).await;
        let mut quiet = Vec::new();
        for _ in 0..40 {
            quiet.push(get(&mut c, &bob, &pods(CLUSTER)).await);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut refused) = (0, 0);
        for t in tasks {
            let (o, r) = t.await.unwrap();
            ok += o;
            refused += r;
        }
        ((ok, refused), quiet)
    });
    let bob_ok = quiet.iter().filter(|a| a.status == 200).count();
    let bob_mean = quiet.iter().map(|a| a.took).sum::<Duration>() / 40;
    println!(
        "{queues} queue(s), hand {hand_size}: alice (48 lists in flight): {} served, {} refused; \
         bob (one at a time): {bob_ok}/40 served, mean latency {bob_mean:?}",
        noisy.0, noisy.1
    );
    // Every seat and place in a queue is given back once the flood is over.
    let deadline = Instant::now() + SYNC;
    loop {
        let metrics = s.curl_admin("/metrics");
        if metrics.contains(r#"kubehub_hub_admission_seats_in_use{tenant="tenant-a"} 0"#)
            && metrics.contains(r#"kubehub_hub_admission_queued{tenant="tenant-a"} 0"#)
        {
            return (noisy, quiet, metrics);
        }
        assert!(
            Instant::now() < deadline,
            "seats or queue places leaked: {metrics}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// With shuffle sharding (64 queues, hands of 8) alice overflows her own queues and is refused
/// a lot; bob is never refused: his hand has queues she does not fill, and freed seats go to
/// the queues in turn. The same flood with one queue for the tenant (what fairness prevents):
/// bob is refused too.
#[test]
fn a_noisy_user_cannot_starve_another_user_of_its_tenant() {
    let (noisy, quiet, metrics) = noisy_and_quiet(64, 8);
    assert!(noisy.1 > 0, "alice's flood overflowed her queues");
    for a in &quiet {
        assert_eq!(a.status, 200, "bob was refused: {}", a.body);
    }
    assert!(
        metrics.contains(r#"kubehub_hub_rejected_total{tenant="tenant-a",reason="queue_full"}"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kubehub_hub_admission_waits_total{tenant="tenant-a"}"#));
    // The contrast: one queue, shared.
    let (_, quiet, _) = noisy_and_quiet(1, 1);
    let refused = quiet.iter().filter(|a| a.status == 429).count();
    assert!(refused > 0, "with a single queue alice's flood starves bob");
}

/// The per-cluster forward limit: 1 forwarded request/s (burst 3) to the stack's cluster.
/// Forwarded reads beyond it are refused with 429 naming the cluster, and the edge never sees
/// them; reads the cache answers are not forwarded, so they go on.
#[test]
fn the_per_cluster_forward_limit_protects_the_edge() {
    let (records, [alice, _, _, _]) = two_tenants();
    let s = stack(
        Fairness {
            cluster_requests_per_second: 1,
            cluster_burst: 3,
            ..Fairness::default()
        },
        records,
    );
    // Secrets are not cached: every read is forwarded (a GET weighs 1; the edge answers 404).
    let secrets = format!("/clusters/{CLUSTER}/api/v1/namespaces/default/secrets/nope");
    let before = s.sim_log.lines().len();
    let answers = s.rt.block_on(async {
        let mut c = connect(&s).await;
        let mut out = Vec::new();
        for _ in 0..20 {
            out.push(get(&mut c, &alice, &secrets).await);
        }
        out
    });
    let served = answers.iter().filter(|a| a.status == 404).count();
    let refused: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let edge_saw = s.sim_log.lines()[before..]
        .iter()
        .filter(|l| l.contains("/secrets/nope"))
        .count();
    println!(
        "forwarded: {served} served, {} refused; the edge saw {edge_saw}",
        refused.len()
    );
    assert_eq!(served + refused.len(), 20);
    assert!((3..=6).contains(&served), "burst 3 plus 1/s: {served}");
    assert_eq!(edge_saw, served, "refused requests never reach the edge");
    let msg = refused[0].json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(&format!("cluster {CLUSTER:?}")), "{msg}");
    // Cached reads are answered by the hub, not forwarded: not limited.
    let cached = s.rt.block_on(async {
        let mut c = connect(&s).await;
        let mut n = 0;
        for _ in 0..20 {
            n += usize::from(get(&mut c, &alice, &pods(CLUSTER)).await.status == 200);
        }
        n
    });
    assert_eq!(cached, 20);
    // A tenant's record overrides the hub's default: 0 is unlimited.
    put_limit(
        &s,
        Limit {
            tenant: "tenant-a".into(),
            cluster_requests_per_second: Some(0),
            ..Limit::default()
        },
        100,
    );
    let served = s.rt.block_on(async {
        let mut c = connect(&s).await;
        let mut n = 0;
        for _ in 0..20 {
            n += usize::from(get(&mut c, &alice, &secrets).await.status == 404);
        }
        n
    });
    assert_eq!(served, 20);
}

/// The memory ceiling set below the hub's resident memory: a flood of new connections is
/// closed at accept, new requests on open connections get 503 `ServiceUnavailable`; an open
/// watch keeps streaming and an exempt operator's open connection keeps being served. The
/// ceiling lifted, new connections are accepted again.
#[test]
fn above_the_memory_ceiling_new_connections_are_refused_and_open_ones_served() {
    let (records, [alice, _, ops, _]) = two_tenants();
    let s = stack(with_operator(), records);
    let rss = s.hub.admission.memory.rss();
    assert!(rss > 0, "the hub samples its resident memory");
    s.rt.block_on(async {
        let mut ops_conn = connect(&s).await;
        let mut alice_conn = connect(&s).await;
        assert_eq!(
            get(&mut alice_conn, &alice, &pods(CLUSTER)).await.status,
            200
        );
        // A watch open before the ceiling is crossed.
        let mut watch = connect(&s).await;
        watch.ready().await.unwrap();
        let req = hyper::Request::get(format!(
            "/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?watch=true"
        ))
        .header("host", "localhost")
        .header("authorization", format!("Bearer {alice}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
        let resp = watch.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut events = resp.into_body();
        // Over the ceiling (half the resident memory).
        s.hub.admission.memory.set_limit(rss / 2);
        let flood = 200;
        let started = Instant::now();
        let mut refused = 0;
        for _ in 0..flood {
            refused += usize::from(s.try_user_connection(None).await.is_err());
        }
        let flood_time = started.elapsed();
        // Meanwhile: the operator's open connection is served, alice's gets 503.
        let a = get(&mut ops_conn, &ops, &pods(CLUSTER)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let a = get(&mut alice_conn, &alice, &pods(CLUSTER)).await;
        assert_eq!(a.status, 503, "{}", a.body);
        let st = a.json();
        assert_eq!(st["reason"], "ServiceUnavailable");
        assert!(
            st["message"]
                .as_str()
                .unwrap()
                .contains("over its memory ceiling"),
            "{st}"
        );
        assert!(a.retry_after.is_some());
        // The watch still streams: a configmap created at the edge arrives.
        let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
        let cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "during-overload", "namespace": "default"}});
        s.cluster.create(ty, Some("default"), cm, false).unwrap();
        let deadline = Instant::now() + SYNC;
        let mut seen = String::new();
        while !seen.contains("during-overload") {
            assert!(
                Instant::now() < deadline,
                "the watch did not deliver: {seen}"
            );
            let frame = tokio::time::timeout(SYNC, events.frame()).await.unwrap();
            if let Some(Ok(f)) = frame {
                if let Some(d) = f.data_ref() {
                    seen.push_str(&String::from_utf8_lossy(d));
                }
            }
        }
        println!(
            "memory ceiling {} bytes (resident {rss}): {refused}/{flood} new connections refused \
             in {flood_time:?}; the open watch and the operator served",
            rss / 2
        );
        assert_eq!(refused, flood, "every new connection is refused");
        // Lifted: new connections are accepted again.
        s.hub.admission.memory.set_limit(0);
        let mut c = connect(&s).await;
        assert_eq!(get(&mut c, &alice, &pods(CLUSTER)).await.status, 200);
    });
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_connections_shed_total 200"),
        "{metrics}"
    );
    assert!(metrics.contains(r#"kubehub_hub_rejected_total{tenant="tenant-a",reason="memory"} 1"#));
    assert!(metrics.contains("kubehub_hub_resident_memory_bytes "));
    assert!(metrics.contains("kubehub_hub_memory_limit_bytes "));
}

/// Limits set in meta (`PUT /v1/limits/{tenant}`, what `kubehub ctl limit set` calls) reach a
/// hub that follows meta's feed; the time from meta's answer to the hub holding the record is
/// printed (the feed pushes each change as it is committed). Enforced at once: the tenant's
/// requests (to a cluster with no agent: 503 before, admitted) get 429 beyond the burst. The
/// limit cleared, they are admitted again.
#[test]
fn limits_set_in_meta_reach_the_hub() {
    use kubehub_meta::client::Client;
    use kubehub_meta::config::MetaConfig;
    use kubehub_meta::service::Meta;
    use serde_json::json;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nhub_url = \"https://localhost:1\"\n\
         [store]\nbackend = \"embedded\"\npath = \"{}\"\n",
        dir.path().join("admin.token").display(),
        dir.path().join("meta.redb").display(),
    );
    let (meta, _server) = rt.block_on(async {
        let meta = Meta::start(MetaConfig::parse(&text).unwrap())
            .await
            .unwrap();
        let server = kubehub_meta::server::start(meta.clone()).await.unwrap();
        (meta, server)
    });
    let url = format!("https://{}", _server.addr);
    let admin_token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let admin = Client::new(&url, meta.ca_pem(), Some(admin_token.trim().into()), None).unwrap();
    let call = |method: &str, path: &str, body: serde_json::Value| {
        rt.block_on(async {
            match method {
                "POST" => admin.post(path, &body).await,
                "PUT" => admin.put(path, &body).await,
                "GET" => admin.get(path).await,
                _ => admin.delete(path).await,
            }
        })
    };
    call("POST", "/v1/tenants", json!({"name": "t"})).unwrap();
    call("POST", "/v1/users", json!({"name": "alice", "tenant": "t"})).unwrap();
    call(
        "POST",
        "/v1/clusters",
        json!({"id": "edge-1", "tenant": "t"}),
    )
    .unwrap();
    call(
        "POST",
        "/v1/grants",
        json!({"name": "all", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
               "clusters": {"ids": ["edge-1"]},
               "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}),
    )
    .unwrap();
    // Validation: the field is named; an unknown tenant or user is refused.
    let e = call("PUT", "/v1/limits/t", json!({"burst": 0}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("burst"), "{e}");
    let e = call("PUT", "/v1/limits/nope", json!({"requestsPerSecond": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("tenant \"nope\" does not exist"), "{e}");
    let e = call("PUT", "/v1/limits/t/alice", json!({"concurrency": 1}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("concurrency"), "{e}");
    let e = call("GET", "/v1/limits/t", json!({}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");

    // The hub joins meta and follows its feed.
    let hd = dir.path().join("hub");
    std::fs::create_dir_all(&hd).unwrap();
    let toml = format!(
        "cores = 1\nimpersonate = false\n\
         [meta]\nurl = \"{url}\"\nstate_dir = \"state\"\nregister_interval_ms = 200\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 1000\n\
         [user_listener]\nlisten = \"127.0.0.1:0\"\n\
         [agent_listener]\nlisten = \"127.0.0.1:0\"\n"
    );
    std::fs::write(hd.join("hub.toml"), toml).unwrap();
    let cfg = kubehub_hub::config::HubConfig::load(&hd.join("hub.toml")).unwrap();
    let join = call(
        "POST",
        "/v1/hubs/join-token",
        json!({"id": "hub-l", "names": ["localhost", "127.0.0.1"]}),
    )
    .unwrap();
    let hub = kubehub_hub::server::join_and_start(cfg, Some(join["joinToken"].as_str().unwrap()))
        .unwrap();
    let kc = call(
        "POST",
        "/v1/kubeconfig",
        json!({"user": "alice", "clusters": ["edge-1"]}),
    )
    .unwrap();
    let token = kubehub_testkit::kubeconfig_token(kc["kubeconfig"].as_str().unwrap());
    let deadline = Instant::now() + SYNC;
    while hub
        .access
        .index
        .authenticate(Some(format!("Bearer {token}").as_bytes()), 0)
        .is_err()
    {
        assert!(Instant::now() < deadline, "the hub never got alice's token");
        std::thread::sleep(Duration::from_millis(10));
    }
    let ca = meta.ca_pem().to_owned();
    let statuses = |n: usize| -> Vec<u16> {
        rt.block_on(async {
            let roots = kubehub_pki::parse_roots(&ca).unwrap();
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(hub.user_addr).await.unwrap();
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(
                    get(&mut send, &token, "/clusters/edge-1/api/v1/pods/x")
                        .await
                        .status,
                );
            }
            out
        })
    };
    // No limit: admitted (and 503: no agent for the cluster).
    assert!(statuses(10).iter().all(|&s| s == 503));

    // Set through meta; timed until the hub holds it.
    let started = Instant::now();
    let stored = call(
        "PUT",
        "/v1/limits/t",
        json!({"requestsPerSecond": 1, "burst": 2, "concurrency": 8}),
    )
    .unwrap();
    let answered = started.elapsed();
    assert_eq!(
        stored,
        json!({"tenant": "t", "requestsPerSecond": 1, "burst": 2, "concurrency": 8})
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub
        .access
        .index
        .limits("t")
        .and_then(|l| l.tenant.clone())
        .is_none()
    {
        assert!(Instant::now() < deadline, "the limit never reached the hub");
        std::thread::sleep(Duration::from_millis(1));
    }
    let reached = started.elapsed();
    println!(
        "PUT /v1/limits/t answered in {answered:?}; the hub held the limit {reached:?} after the \
         call started ({:?} after meta's answer)",
        reached - answered
    );
    let got = statuses(10);
    let refused = got.iter().filter(|&&s| s == 429).count();
    assert!(
        refused >= 8,
        "burst 2 (the user's share: 1) then 1/s: {got:?}"
    );
    // Listed, read, and per user.
    let list = call("GET", "/v1/limits", json!({})).unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    call(
        "PUT",
        "/v1/limits/t/alice",
        json!({"requestsPerSecond": 1000, "burst": 1000}),
    )
    .unwrap();
    assert_eq!(
        call("GET", "/v1/limits/t/alice", json!({})).unwrap()["burst"],
        1000
    );
    // Cleared: the hub's defaults again (no limit).
    call("DELETE", "/v1/limits/t/alice", json!({})).unwrap();
    let cleared = call("DELETE", "/v1/limits/t", json!({})).unwrap();
    assert_eq!(cleared["burst"], 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.access.index.limits("t").is_some() {
        assert!(
            Instant::now() < deadline,
            "the clearing never reached the hub"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(1100));
    assert!(statuses(10).iter().all(|&s| s == 503));
    assert!(call("GET", "/v1/limits/t", json!({})).is_err());
}

/// A request another hub relays over a peer link is admitted once, by the hub the user
/// reached: the holder of the tunnel (here with a tight default, 1 request/s, burst 1, no
/// user buckets) does not admit it again. Straight to the holder, the same requests are
/// refused beyond its burst.
#[test]
fn a_relayed_request_is_admitted_by_the_hub_the_user_reached() {
    let (records, [alice, _, _, _]) = two_tenants();
    let s = stack(
        Fairness {
            requests_per_second: 1,
            burst: 1,
            user_share: 1.0,
            ..Fairness::default()
        },
        records,
    );
    let (other, _) = s.peer_hub("hub-c", Limits::default());
    let count = |addr| {
        s.rt.block_on(async {
            let mut c = connect_to(&s, addr).await;
            let mut ok = 0;
            for _ in 0..20 {
                ok += usize::from(get(&mut c, &alice, &pods(CLUSTER)).await.status == 200);
            }
            ok
        })
    };
    let via_peer = count(other.user_addr);
    let direct = count(s.hub.user_addr);
    println!("through the other hub: {via_peer}/20 served; straight to the holder: {direct}/20");
    assert_eq!(
        via_peer, 20,
        "the holder does not limit what another hub admitted"
    );
    assert!(direct <= 3, "the holder's own limit: {direct}");
    assert_eq!(
        other.peers.links(),
        ["hub-test"],
        "relayed over a peer link"
    );
}
