//! The metaserver's API end to end over HTTPS, on both stores: the model's rules and bad input,
//! kubeconfig issuance and tokens, the hubs' change feed, enrollment, the registry's leases,
//! restarts, and two replicas on one etcd.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[macro_use]
mod common;

use common::{code, Harness, Kind};
use kubehub_meta::client::{Client, ClientError};
use serde_json::{json, Value};

/// Tenant `t`, users, clusters `t-c1`, `t-c2` (label tier=gold on c1), grant on c1 for `user`.
async fn seed(c: &Client, t: &str, user: &str) {
    c.post("/v1/tenants", &json!({"name": t})).await.unwrap();
    c.post(
        "/v1/users",
        &json!({"name": user, "tenant": t, "groups": ["devs"]}),
    )
    .await
    .unwrap();
    for (id, labels) in [
        (format!("{t}-c1"), json!({"tier": "gold"})),
        (format!("{t}-c2"), json!({})),
    ] {
        c.post(
            "/v1/clusters",
            &json!({"id": id, "tenant": t, "labels": labels}),
        )
        .await
        .unwrap();
    }
    c.post(
        "/v1/grants",
        &json!({"name": "read", "tenant": t, "subject": {"kind": "User", "name": user},
                "clusters": {"ids": [format!("{t}-c1")]},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await
    .unwrap();
}

both!(bad_input_gets_a_clear_4xx_and_writes_nothing);
async fn bad_input_gets_a_clear_4xx_and_writes_nothing(kind: Kind) {
    let h = Harness::new(kind, "max_body_bytes = 4096");
    let m = h.start().await;
    let c = &m.admin;
    seed(c, "a", "alice").await;
    seed(c, "b", "bob").await;
    let (n, msg) = code(c.post("/v1/tenants", &json!({"name": "a"})).await);
    assert_eq!((n, msg.contains("already exists")), (409, true), "{msg}");
    let (n, msg) = code(
        c.post("/v1/tenants", &json!({"name": "x", "colour": "red"}))
            .await,
    );
    assert_eq!(n, 400);
    assert!(msg.contains("unknown field `colour`"), "{msg}");
    let (n, msg) = code(
        c.call("POST", "/v1/tenants", Some(&json!("not an object")))
            .await,
    );
    assert_eq!(n, 400, "{msg}");
    let (n, msg) = code(c.post("/v1/tenants", &json!({"name": "Not_A_Name"})).await);
    assert_eq!(n, 422, "{msg}");
    assert!(msg.contains("name"), "{msg}");
    let (n, msg) = code(
        c.post("/v1/users", &json!({"name": "carol", "tenant": "nope"}))
            .await,
    );
    assert_eq!(n, 422, "{msg}");
    assert!(msg.contains("tenant \"nope\" does not exist"), "{msg}");
    let (n, msg) = code(
        c.post("/v1/users", &json!({"name": "alice", "tenant": "b"}))
            .await,
    );
    assert_eq!(n, 409, "user names are global: {msg}");
    let grant = |clusters: Value, subject: Value| {
        json!({"name": "g2", "tenant": "a", "subject": subject, "clusters": clusters,
               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    };
    let alice = json!({"kind": "User", "name": "alice"});
    let (n, msg) = code(
        c.post(
            "/v1/grants",
            &grant(json!({"ids": ["ghost"]}), alice.clone()),
        )
        .await,
    );
    assert_eq!(n, 422, "{msg}");
    assert!(msg.contains("ghost"), "{msg}");
    let (n, msg) = code(
        c.post(
            "/v1/grants",
            &grant(json!({"ids": ["b-c1"]}), alice.clone()),
        )
        .await,
    );
    assert_eq!(n, 422, "another tenant's cluster: {msg}");
    let (n, msg) = code(
        c.post(
            "/v1/grants",
            &grant(
                json!({"ids": ["a-c1"]}),
                json!({"kind": "User", "name": "bob"}),
            ),
        )
        .await,
    );
    assert_eq!(n, 422, "another tenant's user: {msg}");
    let big = "x".repeat(8192);
    let (n, _) = code(
        c.post("/v1/tenants", &json!({"name": "big", "displayName": big}))
            .await,
    );
    assert_eq!(n, 413);
    // Dangling references: refused while something refers to the record.
    let (n, msg) = code(c.delete("/v1/clusters/a-c1").await);
    assert_eq!(n, 409, "{msg}");
    assert!(msg.contains("grants/a/read"), "{msg}");
    let (n, msg) = code(c.delete("/v1/users/alice").await);
    assert_eq!(n, 409, "{msg}");
    let (n, msg) = code(c.delete("/v1/tenants/a").await);
    assert_eq!(n, 409, "{msg}");
    // Credentials.
    let anon = Client::new(&m.url, m.meta.ca_pem(), None, None).unwrap();
    let (n, msg) = code(anon.get("/v1/tenants").await);
    assert_eq!(n, 401, "{msg}");
    for bad in [
        "",
        "nonsense",
        "khT.aaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb",
    ] {
        let (n, msg) = code(m.as_token(bad).get("/v1/tenants").await);
        assert_eq!(n, 401, "{bad:?}: {msg}");
    }
    // Nothing above was written: the records are exactly what seed made.
    let users = c.get("/v1/users").await.unwrap();
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    let grants = c.get("/v1/grants").await.unwrap();
    assert_eq!(grants["items"].as_array().unwrap().len(), 2);
    // In order, deletes succeed.
    c.delete("/v1/grants/a/read").await.unwrap();
    c.delete("/v1/clusters/a-c1").await.unwrap();
    c.delete("/v1/clusters/a-c2").await.unwrap();
    c.delete("/v1/users/alice").await.unwrap();
    c.delete("/v1/tenants/a").await.unwrap();
    assert_eq!(code(c.get("/v1/tenants/a").await).0, 404);
    m.stop().await;
}

both!(a_deleted_clusters_id_and_join_tokens_are_not_reused);
async fn a_deleted_clusters_id_and_join_tokens_are_not_reused(kind: Kind) {
    let h = Harness::new(kind, "");
    let m = h.start().await;
    let c = &m.admin;
    seed(c, "a", "alice").await;
    seed(c, "b", "bob").await;
    let spare = c
        .post("/v1/clusters/a-c2/join-token", &json!({}))
        .await
        .unwrap();
    c.delete("/v1/clusters/a-c2").await.unwrap();
    // Its unused join token died with it.
    let (_key, csr) = kubehub_pki::generate_key_and_csr("x", &[]).unwrap();
    let anon = Client::new(&m.url, m.meta.ca_pem(), None, None).unwrap();
    let (n, msg) = code(
        anon.post(
            "/v1/enroll",
            &json!({"token": spare["joinToken"], "csr": csr}),
        )
        .await,
    );
    assert_eq!(n, 401, "{msg}");
    // Another tenant cannot take the id while the old agent's certificate may be valid …
    let (n, msg) = code(
        c.post("/v1/clusters", &json!({"id": "a-c2", "tenant": "b"}))
            .await,
    );
    assert_eq!(n, 409, "{msg}");
    assert!(msg.contains("pick another id"), "{msg}");
    // … its own tenant can.
    c.post("/v1/clusters", &json!({"id": "a-c2", "tenant": "a"}))
        .await
        .unwrap();
    m.stop().await;
}

both!(kubeconfigs_and_tokens);
async fn kubeconfigs_and_tokens(kind: Kind) {
    let h = Harness::new(
        kind,
        "[tokens]\nmax_per_user = 3\nmax_lifetime_s = 86400\ndefault_lifetime_s = 3600\n",
    );
    let m = h.start().await;
    let c = &m.admin;
    seed(c, "a", "alice").await;
    let v = c
        .post("/v1/kubeconfig", &json!({"user": "alice"}))
        .await
        .unwrap();
    let kc = v["kubeconfig"].as_str().unwrap();
    assert!(
        kc.contains("server: \"https://hub.example:8443/clusters/a-c1\""),
        "{kc}"
    );
    assert!(!kc.contains("a-c2"), "only granted clusters: {kc}");
    let token = kubehub_testkit::kubeconfig_token(kc);
    assert!(token.starts_with("khT."));
    let t = &v["token"];
    let lifetime = t["expires"].as_u64().unwrap() - t["created"].as_u64().unwrap();
    assert_eq!(lifetime, 3600, "default lifetime");
    assert!(t.get("hash").is_some() && !v.to_string().contains(&format!("\"{token}\"\n")));
    // The user's own token works on meta: whoami, and a kubeconfig for themselves.
    let alice = m.as_token(&token);
    let who = alice.get("/v1/whoami").await.unwrap();
    assert_eq!(who["user"]["name"], "alice");
    let v2 = alice.post("/v1/kubeconfig", &json!({})).await.unwrap();
    assert_eq!(v2["otherLiveTokens"], 1, "asking again says so");
    // No grant, too long, someone else's tenant.
    let (n, msg) = code(
        alice
            .post("/v1/kubeconfig", &json!({"clusters": ["a-c2"]}))
            .await,
    );
    assert_eq!(n, 403, "{msg}");
    let (n, msg) = code(
        alice
            .post("/v1/kubeconfig", &json!({"lifetimeS": 86401}))
            .await,
    );
    assert_eq!(n, 422, "{msg}");
    let (n, _) = code(alice.post("/v1/tenants", &json!({"name": "mine"})).await);
    assert_eq!(n, 403);
    // A token mints only within itself: granted a-c2 too, alice's a-c1 token still cannot
    // issue a token for a-c2, nor one that outlives it.
    c.post(
        "/v1/grants",
        &json!({"name": "c2", "tenant": "a", "subject": {"kind": "User", "name": "alice"},
                "clusters": {"ids": ["a-c2"]},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    )
    .await
    .unwrap();
    let (n, msg) = code(
        alice
            .post("/v1/kubeconfig", &json!({"clusters": ["a-c2"]}))
            .await,
    );
    assert_eq!(n, 403, "{msg}");
    assert!(msg.contains("does not cover"), "{msg}");
    let v4 = alice
        .post("/v1/kubeconfig", &json!({"lifetimeS": 86400}))
        .await
        .unwrap();
    assert_eq!(
        v4["token"]["clusters"],
        json!(["a-c1"]),
        "only what the caller covers"
    );
    assert!(
        v4["token"]["expires"].as_u64().unwrap() <= t["expires"].as_u64().unwrap(),
        "no later than the caller's token"
    );
    c.delete(&format!(
        "/v1/tokens/{}",
        v4["token"]["id"].as_str().unwrap()
    ))
    .await
    .unwrap();
    c.delete("/v1/grants/a/c2").await.unwrap();
    // The limit: a third token is fine, a fourth is refused until old ones go.
    alice.post("/v1/kubeconfig", &json!({})).await.unwrap();
    let (n, msg) = code(alice.post("/v1/kubeconfig", &json!({})).await);
    assert_eq!(n, 409, "{msg}");
    assert!(msg.contains("revoke"), "{msg}");
    let list = c.get("/v1/tokens?user=alice").await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    // Replace: one live token afterwards.
    let v3 = alice
        .post("/v1/kubeconfig", &json!({"replace": true}))
        .await
        .unwrap();
    assert_eq!(v3["revoked"], 3);
    assert_eq!(
        code(alice.get("/v1/whoami").await).0,
        401,
        "the old token was revoked"
    );
    let list = c.get("/v1/tokens?user=alice").await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let r = c.delete("/v1/tokens?user=alice").await.unwrap();
    assert_eq!(r["revoked"], 1);
    assert_eq!(
        c.get("/v1/tokens?user=alice").await.unwrap()["items"],
        json!([])
    );
    // Expired tokens are cleared away when the user gets a new one.
    c.post("/v1/kubeconfig", &json!({"user": "alice", "lifetimeS": 1}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let fresh = c
        .post("/v1/kubeconfig", &json!({"user": "alice"}))
        .await
        .unwrap();
    let list = c.get("/v1/tokens?user=alice").await.unwrap();
    let ids: Vec<&Value> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["id"])
        .collect();
    assert_eq!(ids, [&fresh["token"]["id"]], "only the live token is left");
    // Deleting the user revokes its tokens.
    c.delete("/v1/grants/a/read").await.unwrap();
    c.delete("/v1/users/alice").await.unwrap();
    assert_eq!(c.get("/v1/tokens").await.unwrap()["items"], json!([]));
    m.stop().await;
}

both!(the_feed_carries_a_snapshot_then_every_change);
async fn the_feed_carries_a_snapshot_then_every_change(kind: Kind) {
    let h = Harness::new(kind, "[sync]\nheartbeat_ms = 200\n");
    let m = h.start().await;
    seed(&m.admin, "a", "alice").await;
    let mut rx = kubehub_meta::feed::start(m.meta.clone(), 0, "test".into());
    let next = |rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>| {
        let line = rx.try_recv().ok();
        line.map(|b| serde_json::from_slice::<Value>(&b).unwrap())
    };
    let recv = async |rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>| {
        let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        serde_json::from_slice::<Value>(&b).unwrap()
    };
    let snap = recv(&mut rx).await;
    assert_eq!(snap["type"], "snapshot");
    let kinds: Vec<&str> = snap["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.iter().filter(|k| **k == "Cluster").count(), 2);
    assert!(kinds.contains(&"Grant") && kinds.contains(&"User") && kinds.contains(&"Tenant"));
    let rev = snap["revision"].as_i64().unwrap();
    let _ = next(&mut rx);
    let started = Instant::now();
    m.admin
        .post("/v1/tenants", &json!({"name": "later"}))
        .await
        .unwrap();
    let put = loop {
        let l = recv(&mut rx).await;
        if l["type"] != "heartbeat" {
            break l;
        }
    };
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a change reaches the feed within 1 s"
    );
    assert_eq!(put["type"], "put");
    assert_eq!(put["record"]["name"], "later");
    assert!(put["revision"].as_i64().unwrap() > rev);
    // Heartbeats while nothing changes.
    let hb = recv(&mut rx).await;
    assert_eq!(hb["type"], "heartbeat");
    m.admin.delete("/v1/tenants/later").await.unwrap();
    let del = loop {
        let l = recv(&mut rx).await;
        if l["type"] != "heartbeat" {
            break l;
        }
    };
    assert_eq!(del["type"], "delete");
    assert_eq!(del["key"], "tenants/later");
    // A hub ahead of the store (a restored backup, another meta) gets a snapshot.
    let mut ahead = kubehub_meta::feed::start(m.meta.clone(), rev + 1_000_000, "ahead".into());
    assert_eq!(recv(&mut ahead).await["type"], "snapshot");
    drop(ahead);
    // Resuming from a revision replays what came after it, without a snapshot.
    let mut rx2 = kubehub_meta::feed::start(m.meta.clone(), rev, "resume".into());
    let first = recv(&mut rx2).await;
    assert_eq!(first["type"], "put", "{first}");
    assert_eq!(first["record"]["name"], "later");
    drop(rx);
    drop(rx2);
    m.stop().await;
}

both!(enrollment_with_a_join_token);
async fn enrollment_with_a_join_token(kind: Kind) {
    let h = Harness::new(kind, "[certs]\njoin_token_ttl_s = 2\n");
    let m = h.start().await;
    seed(&m.admin, "a", "alice").await;
    let anon = Client::new(&m.url, m.meta.ca_pem(), None, None).unwrap();
    let ca = anon.get("/v1/ca").await.unwrap();
    assert_eq!(ca["ca"].as_str().unwrap(), m.meta.ca_pem());
    let v = m
        .admin
        .post("/v1/clusters/a-c2/join-token", &json!({}))
        .await
        .unwrap();
    let token = v["joinToken"].as_str().unwrap().to_owned();
    let pin = kubehub_pki::join::JoinToken::parse(&token).unwrap();
    assert_eq!(format!("sha256:{}", pin.ca_hash), m.meta.ca().cert_hash());
    let (_key, csr) = kubehub_pki::generate_key_and_csr("someone-else", &[]).unwrap();
    let got = anon
        .post("/v1/enroll", &json!({"token": token, "csr": csr}))
        .await
        .unwrap();
    let cert = got["certificate"].as_str().unwrap();
    let info = kubehub_pki::cert_info(cert).unwrap();
    assert_eq!(
        info.common_name, "a-c2",
        "the identity comes from the token, not the CSR"
    );
    assert!(info
        .organizations
        .contains(&kubehub_pki::AGENTS_GROUP.to_owned()));
    kubehub_pki::verify_client_cert(m.meta.ca_pem(), cert).unwrap();
    // Twice: refused.
    let (n, msg) = code(
        anon.post("/v1/enroll", &json!({"token": token, "csr": csr}))
            .await,
    );
    assert_eq!(n, 401);
    assert!(msg.contains("already been used"), "{msg}");
    // Expired.
    let v = m
        .admin
        .post("/v1/clusters/a-c1/join-token", &json!({}))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let (n, msg) = code(
        anon.post("/v1/enroll", &json!({"token": v["joinToken"], "csr": csr}))
            .await,
    );
    assert_eq!(n, 401);
    assert!(msg.contains("expired"), "{msg}");
    // Garbage.
    let (n, _) = code(
        anon.post("/v1/enroll", &json!({"token": "khJ.nope", "csr": csr}))
            .await,
    );
    assert_eq!(n, 401);
    // Renewal over mutual TLS with the issued certificate.
    let (key2, csr2) = kubehub_pki::generate_key_and_csr("x", &[]).unwrap();
    let _ = key2;
    let (key, csr) = kubehub_pki::generate_key_and_csr("x", &[]).unwrap();
    let v = m
        .admin
        .post("/v1/clusters/a-c1/join-token", &json!({}))
        .await
        .unwrap();
    let got = anon
        .post("/v1/enroll", &json!({"token": v["joinToken"], "csr": csr}))
        .await
        .unwrap();
    let agent = Client::new(
        &m.url,
        m.meta.ca_pem(),
        None,
        Some((got["certificate"].as_str().unwrap(), &key)),
    )
    .unwrap();
    let renewed = agent
        .post("/v1/renew", &json!({"csr": csr2}))
        .await
        .unwrap();
    assert_eq!(
        kubehub_pki::cert_info(renewed["certificate"].as_str().unwrap())
            .unwrap()
            .common_name,
        "a-c1"
    );
    let (n, msg) = code(m.admin.post("/v1/renew", &json!({"csr": csr2})).await);
    assert_eq!(n, 401, "a token cannot mint a certificate");
    assert!(msg.contains("mutual TLS"), "{msg}");
    // The agent may register itself, and no other cluster.
    agent
        .put(
            "/v1/registry/agents/a-c1",
            &json!({"agentId": "x", "hubs": ["h1"]}),
        )
        .await
        .unwrap();
    let (n, _) = code(agent.put("/v1/registry/agents/a-c2", &json!({})).await);
    assert_eq!(n, 403);
    // A hub renews for the names it was enrolled with, never more.
    let v = m
        .admin
        .post(
            "/v1/hubs/join-token",
            &json!({"id": "hub-1", "names": ["hub-1.example", "127.0.0.1"]}),
        )
        .await
        .unwrap();
    let (hkey, hcsr) = kubehub_pki::generate_key_and_csr("hub-1", &[]).unwrap();
    let got = anon
        .post("/v1/enroll", &json!({"token": v["joinToken"], "csr": hcsr}))
        .await
        .unwrap();
    let hub = Client::new(
        &m.url,
        m.meta.ca_pem(),
        None,
        Some((got["certificate"].as_str().unwrap(), &hkey)),
    )
    .unwrap();
    let (n, msg) = code(
        hub.post(
            "/v1/renew",
            &json!({"csr": hcsr, "names": ["evil.example"]}),
        )
        .await,
    );
    assert_eq!(n, 403, "{msg}");
    let renewed = hub.post("/v1/renew", &json!({"csr": hcsr})).await.unwrap();
    let info = kubehub_pki::cert_info(renewed["certificate"].as_str().unwrap()).unwrap();
    assert_eq!(info.common_name, "hub-1");
    assert_eq!(info.names, ["hub-1.example", "127.0.0.1"]);
    m.stop().await;
}

both!(registry_entries_expire_with_their_lease);
async fn registry_entries_expire_with_their_lease(kind: Kind) {
    let h = Harness::new(kind, "[registry]\nttl_s = 2\n");
    let m = h.start().await;
    let hub = json!({"endpoint": "https://h1:8443", "agentEndpoint": "h1:8444", "agents": 3});
    for _ in 0..3 {
        m.admin.put("/v1/registry/hubs/h1", &hub).await.unwrap();
        m.admin.put("/v1/registry/hubs/h2", &hub).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let live = m.admin.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(
        live["items"].as_array().unwrap().len(),
        2,
        "heartbeats keep both: {live}"
    );
    // h2 stops; h1 keeps going.
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        m.admin.put("/v1/registry/hubs/h1", &hub).await.unwrap();
        let live = m.admin.get("/v1/registry/hubs").await.unwrap();
        let ids: Vec<&str> = live["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap())
            .collect();
        if ids == ["h1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "h2 should be gone after its ttl: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (n, _) = code(
        m.admin
            .put(
                "/v1/registry/hubs/h3",
                &json!({"endpoint": "http://x", "agentEndpoint": ""}),
            )
            .await,
    );
    assert_eq!(n, 422);
    m.stop().await;
}

async fn everything(c: &Client) -> Vec<Value> {
    let mut out = Vec::new();
    for k in ["tenants", "users", "clusters", "grants", "tokens"] {
        out.push(c.get(&format!("/v1/{k}")).await.unwrap());
    }
    out
}

both!(a_restart_loses_nothing);
async fn a_restart_loses_nothing(kind: Kind) {
    let mut h = Harness::new(kind, "");
    let m = h.start().await;
    seed(&m.admin, "a", "alice").await;
    let kc = m
        .admin
        .post("/v1/kubeconfig", &json!({"user": "alice"}))
        .await
        .unwrap();
    let ca = m.meta.ca_pem().to_owned();
    let before = everything(&m.admin).await;
    m.stop().await;
    if let Some(e) = &mut h.etcd {
        tokio::task::block_in_place(|| e.restart());
    }
    let m = h.start().await;
    assert_eq!(m.meta.ca_pem(), ca, "the same CA after a restart");
    let after = everything(&m.admin).await;
    assert_eq!(before, after);
    let token = kubehub_testkit::kubeconfig_token(kc["kubeconfig"].as_str().unwrap());
    assert_eq!(
        m.as_token(&token).get("/v1/whoami").await.unwrap()["user"]["name"],
        "alice",
        "an issued token still works"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_etcd_agree() {
    let h = Harness::new(Kind::Etcd, "");
    let a = h.start().await;
    let b = h.start().await;
    assert_eq!(a.meta.ca_pem(), b.meta.ca_pem(), "one CA for every replica");
    a.admin
        .post("/v1/tenants", &json!({"name": "t"}))
        .await
        .unwrap();
    let on_b = b.admin.get("/v1/tenants/t").await.unwrap();
    assert_eq!(on_b["name"], "t");
    // Racing creations of one name: exactly one wins, on whichever replica.
    let mut wins = 0;
    for i in 0..10 {
        let body = json!({"name": format!("u{i}"), "tenant": "t"});
        let (ra, rb) = tokio::join!(
            a.admin.post("/v1/users", &body),
            b.admin.post("/v1/users", &body)
        );
        for r in [ra, rb] {
            match r {
                Ok(_) => wins += 1,
                Err(ClientError::Api { code: 409, .. }) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
    assert_eq!(wins, 10);
    // A token issued by one replica authenticates on the other.
    seed(&b.admin, "s", "sam").await;
    let kc = a
        .admin
        .post("/v1/kubeconfig", &json!({"user": "sam"}))
        .await
        .unwrap();
    let token = kubehub_testkit::kubeconfig_token(kc["kubeconfig"].as_str().unwrap());
    assert_eq!(
        b.as_token(&token).get("/v1/whoami").await.unwrap()["user"]["name"],
        "sam"
    );
    a.stop().await;
    b.stop().await;
}

/// Every mutating call is an audit event (here: a grant created and deleted, the tenant and
/// user before it), with who asked, what, the answer's code and, at level Request, the body;
/// reads are not audited.
async fn mutations_are_audited(kind: Kind) {
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("meta-audit.log");
    let h = Harness::new(
        kind,
        &format!(
            "[audit]\nenabled = true\npath = {:?}\nwrite_level = \"Request\"\n",
            log
        ),
    );
    let m = h.start().await;
    seed(&m.admin, "acme", "alice").await;
    m.admin.get("/v1/grants").await.unwrap();
    m.admin.delete("/v1/grants/acme/read").await.unwrap();
    let events = |path: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let all = loop {
        let all = events(&log);
        if all.iter().any(|e| e["verb"] == "delete") {
            break all;
        }
        assert!(Instant::now() < deadline, "no delete event in {all:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let create = all
        .iter()
        .find(|e| e["verb"] == "create" && e["objectRef"]["resource"] == "grants")
        .unwrap_or_else(|| panic!("{all:?}"));
    assert_eq!(create["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(create["level"], "Request");
    assert_eq!(create["user"]["username"], "admin");
    assert_eq!(create["objectRef"]["apiGroup"], "meta.kubehub.io");
    assert_eq!(create["requestURI"], "/v1/grants");
    assert_eq!(create["sourceIPs"][0], "127.0.0.1");
    let code = create["responseStatus"]["code"].as_u64().unwrap();
    assert!((200..300).contains(&code), "{create}");
    assert_eq!(create["requestObject"]["name"], "read");
    assert!(
        create.get("responseObject").is_none(),
        "responses are never logged"
    );
    let delete = all.iter().find(|e| e["verb"] == "delete").unwrap();
    assert_eq!(delete["objectRef"]["resource"], "grants");
    assert_eq!(delete["objectRef"]["name"], "acme/read");
    assert!(
        all.iter().any(|e| e["objectRef"]["resource"] == "tenants"),
        "the tenant's creation too"
    );
    assert!(
        !all.iter().any(|e| e["verb"] == "get"),
        "reads are not audited"
    );
    assert_eq!(m.meta.audit.as_ref().unwrap().counters().dropped.get(), 0);
    m.stop().await;
}
both!(mutations_are_audited);
