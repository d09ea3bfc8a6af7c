//! The registry on both stores: heartbeats that change nothing write nothing (yet keep their
//! lease), the registry watch (snapshot, changes, expiries, resuming, heartbeats), the canary
//! rule's API, and the hubs an agent is told it may use. What heartbeats cost in store writes is
//! measured by `cargo run -p kubehub-meta --example heartbeat_writes` (perf/RESULTS.md).
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{code, Harness, Kind, Running};
use kubehub_access::registry::{CanaryRule, RegistryLine};
use kubehub_enroll::Lines;
use kubehub_meta::client::Client;
use kubehub_meta::service::{AgentRecord, Caller, HubRecord};
use serde_json::{json, Value};

const MAX_LINE: usize = 1 << 20;

async fn revision(m: &Running) -> i64 {
    m.meta.store.revision().await.unwrap()
}

/// The stored entry's `mod_revision` (None: absent).
async fn written_at(m: &Running, key: &str) -> Option<i64> {
    m.meta
        .store
        .get(key)
        .await
        .unwrap()
        .map(|kv| kv.mod_revision)
}

/// Waits until `key` is gone; returns how long that took.
async fn gone_after(m: &Running, key: &str, within: Duration) -> Duration {
    let start = Instant::now();
    while written_at(m, key).await.is_some() {
        assert!(
            start.elapsed() < within,
            "{key} still there after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

both!(heartbeats_that_change_nothing_write_nothing);
async fn heartbeats_that_change_nothing_write_nothing(kind: Kind) {
    let h = Harness::new(kind, "[registry]\nttl_s = 2\n");
    let m = h.start().await;
    let agent = json!({"agentId": "a", "hubs": ["h1"], "version": "1"});
    let hub = json!({"endpoint": "https://h1:8443", "agentEndpoint": "h1:8444", "zone": "z1",
                     "agents": 1, "streams": 5, "cpu": 120});
    m.admin.put("/v1/registry/agents/c1", &agent).await.unwrap();
    m.admin.put("/v1/registry/hubs/h1", &hub).await.unwrap();
    let before = revision(&m).await;
    let (agent_rev, hub_rev) = (
        written_at(&m, "registry/agents/c1").await.unwrap(),
        written_at(&m, "registry/hubs/h1").await.unwrap(),
    );
    // Identical heartbeats for longer than the TTL: the entries live on, nothing is written.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        m.admin.put("/v1/registry/agents/c1", &agent).await.unwrap();
        m.admin.put("/v1/registry/hubs/h1", &hub).await.unwrap();
    }
    assert_eq!(revision(&m).await, before, "no store write");
    assert_eq!(written_at(&m, "registry/agents/c1").await, Some(agent_rev));
    assert_eq!(written_at(&m, "registry/hubs/h1").await, Some(hub_rev));
    let live = m.admin.get("/v1/registry/agents").await.unwrap();
    assert_eq!(live["items"][0]["hubs"], json!(["h1"]), "{live}");
    // A change is written at once (for a hub, its load counts).
    let moved = json!({"agentId": "a", "hubs": ["h1", "h2"], "version": "1"});
    m.admin.put("/v1/registry/agents/c1", &moved).await.unwrap();
    assert_eq!(revision(&m).await, before + 1);
    let mut busier = hub.clone();
    busier["streams"] = json!(6);
    m.admin.put("/v1/registry/hubs/h1", &busier).await.unwrap();
    assert_eq!(revision(&m).await, before + 2);
    let live = m.admin.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(live["items"][0]["streams"], 6, "{live}");
    assert_eq!(live["items"][0]["zone"], "z1", "{live}");
    // The entries still expire a TTL after the last heartbeat (not after the last write).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    m.admin.put("/v1/registry/agents/c1", &moved).await.unwrap();
    let last = Instant::now();
    assert_eq!(
        revision(&m).await,
        before + 2,
        "that heartbeat wrote nothing"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        written_at(&m, "registry/agents/c1").await.is_some(),
        "kept alive by the last heartbeat, 1.2 s ago"
    );
    gone_after(&m, "registry/agents/c1", Duration::from_secs(6)).await;
    let lived = last.elapsed();
    assert!(
        lived >= Duration::from_millis(1500),
        "gone only {lived:?} after the last heartbeat (TTL 2 s)"
    );
    m.stop().await;
}

both!(unchanged_records_are_refreshed_every_refresh_s);
async fn unchanged_records_are_refreshed_every_refresh_s(kind: Kind) {
    let h = Harness::new(kind, "[registry]\nttl_s = 10\nrefresh_s = 2\n");
    let m = h.start().await;
    let agent = AgentRecord {
        agent_id: "a".into(),
        hubs: vec!["h1".into()],
        ..AgentRecord::default()
    };
    let beat = || m.meta.register_agent(&Caller::Admin, "c1", agent.clone());
    beat().await.unwrap();
    let first = m.meta.agents().await.unwrap()[0].updated;
    let r = revision(&m).await;
    beat().await.unwrap();
    assert_eq!(revision(&m).await, r, "within refresh_s: not written");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    beat().await.unwrap();
    assert_eq!(revision(&m).await, r + 1, "refresh_s later: written again");
    let refreshed = m.meta.agents().await.unwrap()[0].updated;
    assert!(refreshed >= first + 3, "updated {first} → {refreshed}");
    m.stop().await;

    // refresh_s = 0: every heartbeat writes (as before there was refresh_s).
    let h = Harness::new(kind, "[registry]\nttl_s = 10\nrefresh_s = 0\n");
    let m = h.start().await;
    let beat = || m.meta.register_agent(&Caller::Admin, "c1", agent.clone());
    beat().await.unwrap();
    let r = revision(&m).await;
    beat().await.unwrap();
    beat().await.unwrap();
    assert_eq!(revision(&m).await, r + 2);
    m.stop().await;
}

/// The next line of the watch within 10 s.
async fn line(w: &mut Lines<RegistryLine>) -> RegistryLine {
    tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("a line within 10 s")
        .unwrap()
        .expect("the watch goes on")
}

/// The next line that is not a heartbeat.
async fn change(w: &mut Lines<RegistryLine>) -> RegistryLine {
    loop {
        match line(w).await {
            RegistryLine::Heartbeat { .. } => {}
            l => return l,
        }
    }
}

fn hub_body(id: &str) -> Value {
    json!({"endpoint": format!("https://{id}:8443"), "agentEndpoint": format!("{id}:8444"),
           "version": "1.2.0", "zone": "z1"})
}

/// Heartbeats `hub` every 400 ms until the returned sender is dropped.
fn keep_beating(m: &Running, id: &'static str) -> tokio::sync::oneshot::Sender<()> {
    let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
    let meta = m.meta.clone();
    tokio::spawn(async move {
        let hub: HubRecord = serde_json::from_value(hub_body(id)).unwrap();
        loop {
            let _ = meta.register_hub(&Caller::Admin, id, hub.clone()).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(400)) => {}
                _ = &mut rx => return,
            }
        }
    });
    tx
}

/// A client with a certificate meta issued: the agent of `cluster` (created in tenant `t`),
/// or hub `hub` when `cluster` is None.
async fn certified(m: &Running, cluster: Option<&str>, hub: &str) -> (Client, Value) {
    let token = match cluster {
        Some(c) => {
            let v = m
                .admin
                .post(&format!("/v1/clusters/{c}/join-token"), &json!({}))
                .await
                .unwrap();
            v["joinToken"].clone()
        }
        None => {
            let v = m
                .admin
                .post(
                    "/v1/hubs/join-token",
                    &json!({"id": hub, "names": ["127.0.0.1"]}),
                )
                .await
                .unwrap();
            v["joinToken"].clone()
        }
    };
    let (key, csr) = kubehub_pki::generate_key_and_csr("x", &[]).unwrap();
    let anon = Client::new(&m.url, m.meta.ca_pem(), None, None).unwrap();
    let got = anon
        .post("/v1/enroll", &json!({"token": token, "csr": csr}))
        .await
        .unwrap();
    let client = Client::new(
        &m.url,
        m.meta.ca_pem(),
        None,
        Some((got["certificate"].as_str().unwrap(), &key)),
    )
    .unwrap();
    (client, got)
}

/// Tenant `t`.
async fn tenant(m: &Running) {
    m.admin
        .post("/v1/tenants", &json!({"name": "t"}))
        .await
        .unwrap();
}

/// Cluster `id` of tenant `t`, with `extra` fields.
async fn cluster(m: &Running, id: &str, extra: Value) {
    let mut body = json!({"id": id, "tenant": "t"});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    m.admin.post("/v1/clusters", &body).await.unwrap();
}

both!(the_registry_watch_streams_every_change);
async fn the_registry_watch_streams_every_change(kind: Kind) {
    let h = Harness::new(kind, "[registry]\nttl_s = 2\n[sync]\nheartbeat_ms = 200\n");
    let m = h.start().await;
    tenant(&m).await;
    cluster(&m, "t-c1", json!({})).await;
    let h1 = keep_beating(&m, "h1");
    m.admin
        .put(
            "/v1/registry/agents/t-c1",
            &json!({"agentId": "a", "hubs": ["h1"]}),
        )
        .await
        .unwrap();
    let rule = CanaryRule {
        version: "1.3.0".into(),
        percent: 10,
        ..CanaryRule::default()
    };
    m.admin.canary_set(&rule).await.unwrap();

    // Read by a hub's certificate; agents and users may not.
    let (hub, _) = certified(&m, None, "h9").await;
    let mut w = hub.watch_registry(0, MAX_LINE).await.unwrap();
    let RegistryLine::Snapshot {
        revision: snap,
        hubs,
        agents,
        canary,
        ..
    } = line(&mut w).await
    else {
        panic!("a snapshot first");
    };
    assert_eq!(
        hubs.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(),
        ["h1"]
    );
    assert_eq!(hubs[0].zone, "z1");
    assert_eq!(agents.len(), 1);
    assert_eq!(
        (agents[0].cluster.as_str(), &agents[0].hubs),
        ("t-c1", &vec!["h1".to_owned()])
    );
    assert_eq!(canary, Some(rule.clone()));
    assert_eq!(snap, revision(&m).await);
    let (agent, _) = certified(&m, Some("t-c1"), "").await;
    let refused = agent.watch_registry(0, MAX_LINE).await.err().unwrap();
    assert!(refused.to_string().contains("403"), "{refused}");

    // A hub registers, the agent's hubs change, the canary rule is cleared: one line each,
    // in revision order.
    let h2 = keep_beating(&m, "h2");
    let l = change(&mut w).await;
    let RegistryLine::Hub { revision: r1, hub } = &l else {
        panic!("{l:?}")
    };
    assert_eq!(
        (hub.id.as_str(), hub.agent_endpoint.as_str()),
        ("h2", "h2:8444")
    );
    assert!(*r1 > snap);
    m.admin
        .put(
            "/v1/registry/agents/t-c1",
            &json!({"agentId": "a", "hubs": ["h1", "h2"]}),
        )
        .await
        .unwrap();
    let l = change(&mut w).await;
    let RegistryLine::Agent {
        revision: r2,
        agent,
    } = &l
    else {
        panic!("{l:?}")
    };
    assert_eq!(agent.hubs, ["h1", "h2"]);
    assert!(r2 > r1);
    m.admin.canary_clear().await.unwrap();
    let l = change(&mut w).await;
    assert!(
        matches!(&l, RegistryLine::Canary { rule: None, revision } if revision > r2),
        "{l:?}"
    );
    // Quiet: heartbeats at the last revision (the heartbeats of h1 and h2 write nothing).
    let hb = line(&mut w).await;
    assert_eq!(
        hb,
        RegistryLine::Heartbeat {
            revision: l.revision()
        }
    );
    // h2 stops and the agent stops: their leases expire.
    drop(h2);
    let mut gone = Vec::new();
    while gone.len() < 2 {
        match change(&mut w).await {
            RegistryLine::HubGone { id, .. } => gone.push(format!("hub {id}")),
            RegistryLine::AgentGone { cluster, .. } => gone.push(format!("agent {cluster}")),
            other => panic!("{other:?}"),
        }
    }
    gone.sort();
    assert_eq!(gone, ["agent t-c1", "hub h2"]);

    // Resuming after the snapshot's revision replays what came after it, without a snapshot.
    let mut again = m.admin.watch_registry(snap, MAX_LINE).await.unwrap();
    let l = change(&mut again).await;
    assert!(
        matches!(&l, RegistryLine::Hub { hub, .. } if hub.id == "h2"),
        "{l:?}"
    );
    // From a revision the store has not reached: a snapshot (of h1 alone now).
    let mut ahead = m
        .admin
        .watch_registry(snap + 1_000_000, MAX_LINE)
        .await
        .unwrap();
    let l = line(&mut ahead).await;
    assert!(
        matches!(&l, RegistryLine::Snapshot { hubs, agents, canary: None, .. }
            if hubs.len() == 1 && agents.is_empty()),
        "{l:?}"
    );
    drop(h1);
    m.stop().await;
}

both!(the_canary_rule_is_set_shown_and_cleared_by_admins);
async fn the_canary_rule_is_set_shown_and_cleared_by_admins(kind: Kind) {
    let h = Harness::new(kind, "");
    let m = h.start().await;
    assert_eq!(m.admin.canary_show().await.unwrap(), None);
    let (n, msg) = code(m.admin.get("/v1/canary").await);
    assert_eq!(n, 404, "{msg}");
    let good = json!({"version": "1.3.0-rc1", "clusterLabels": {"tier": "canary"},
                      "tenants": ["t1"], "percent": 10});
    for (change, status, field) in [
        (json!({"version": null}), 400, "version"),
        (json!({"version": "1 3"}), 422, "version"),
        (json!({"percent": 101}), 422, "percent"),
        (json!({"percent": -1}), 422, "percent"),
        (
            json!({"tenants": ["t1", "Not_A_Tenant"]}),
            422,
            "tenants[1]",
        ),
        (
            json!({"clusterLabels": {"bad key!": "x"}}),
            422,
            "clusterLabels",
        ),
        (json!({"percentage": 5}), 400, "percentage"),
    ] {
        let mut body = good.clone();
        for (k, v) in change.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        let (n, msg) = code(m.admin.put("/v1/canary", &body).await);
        assert_eq!(n, status, "{body}: {msg}");
        assert!(msg.contains(field), "{body}: {msg}");
    }
    assert_eq!(
        m.admin.canary_show().await.unwrap(),
        None,
        "nothing written"
    );
    // Admins only.
    let (hub, _) = certified(&m, None, "h1").await;
    let (n, _) = code(hub.put("/v1/canary", &good).await);
    assert_eq!(n, 403);
    let (n, _) = code(hub.get("/v1/canary").await);
    assert_eq!(n, 403);
    let rule: CanaryRule = serde_json::from_value(good.clone()).unwrap();
    assert_eq!(m.admin.canary_set(&rule).await.unwrap(), rule);
    assert_eq!(m.admin.canary_show().await.unwrap(), Some(rule.clone()));
    assert_eq!(m.admin.get("/v1/canary").await.unwrap(), good);
    m.admin.canary_clear().await.unwrap();
    assert_eq!(m.admin.canary_show().await.unwrap(), None);
    m.admin.canary_clear().await.unwrap();
    m.stop().await;
}

fn ids(v: &Value) -> Vec<&str> {
    let mut out: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().or_else(|| h["id"].as_str()).unwrap())
        .collect();
    out.sort();
    out
}

both!(an_agent_is_told_the_hubs_it_may_use);
async fn an_agent_is_told_the_hubs_it_may_use(kind: Kind) {
    let h = Harness::new(kind, "[registry]\nttl_s = 30\n");
    let m = h.start().await;
    tenant(&m).await;
    cluster(&m, "t-plain", json!({})).await;
    cluster(&m, "t-canary", json!({"labels": {"tier": "canary"}})).await;
    cluster(&m, "t-prod", json!({"environment": "prod"})).await;
    for (id, extra) in [
        ("h1", json!({})),
        ("h2", json!({"version": "2"})),
        ("h3", json!({"draining": true})),
        ("h4", json!({"environment": "prod"})),
    ] {
        let mut body = hub_body(id);
        body["version"] = json!("1");
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        m.admin
            .put(&format!("/v1/registry/hubs/{id}"), &body)
            .await
            .unwrap();
    }
    let all = m.admin.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&all["items"]), ["h1", "h2", "h3", "h4"]);
    assert!(all.get("ineligible").is_none(), "{all}");

    let (plain, _) = certified(&m, Some("t-plain"), "").await;
    let (prod, _) = certified(&m, Some("t-prod"), "").await;
    let v = plain.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h1", "h2"], "no canary yet: {v}");
    assert_eq!(ids(&v["ineligible"]), ["h3", "h4"]);
    // Their agent endpoints too, for an agent that dialled one before it learned its id.
    let endpoints: Vec<&str> = v["ineligibleEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(endpoints.len(), 2, "{v}");
    for (id, e) in ["h3", "h4"].iter().zip(&endpoints) {
        let hub = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["id"] == *id)
            .unwrap();
        assert_eq!(hub["agentEndpoint"].as_str(), Some(*e), "{v}");
    }
    let v = prod.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h4"], "{v}");
    assert_eq!(ids(&v["ineligible"]), ["h1", "h2", "h3"]);

    m.admin
        .put(
            "/v1/canary",
            &json!({"version": "2", "clusterLabels": {"tier": "canary"}}),
        )
        .await
        .unwrap();
    let v = plain.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h1"], "{v}");
    assert_eq!(ids(&v["ineligible"]), ["h2", "h3", "h4"]);
    // The canary cluster's enrollment already names only the canary's hubs.
    let (canary, enrolled) = certified(&m, Some("t-canary"), "").await;
    assert_eq!(enrolled["hubs"], json!(["h2:8444"]), "{enrolled}");
    let v = canary.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h2"], "{v}");
    assert_eq!(ids(&v["ineligible"]), ["h1", "h3", "h4"]);
    // A prod cluster has no hub of the canary's version in its environment: all of its own.
    let v = prod.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h4"], "{v}");
    // A hub (and anyone but an agent) gets every live hub.
    let (hub, _) = certified(&m, None, "h1").await;
    let v = hub.get("/v1/registry/hubs").await.unwrap();
    assert_eq!(ids(&v["items"]), ["h1", "h2", "h3", "h4"]);
    // A deleted cluster's agent is told so.
    m.admin.delete("/v1/clusters/t-plain").await.unwrap();
    let (n, msg) = code(plain.get("/v1/registry/hubs").await);
    assert_eq!(n, 403, "{msg}");
    m.stop().await;
}
