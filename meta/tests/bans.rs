//! The bans API end to end over HTTPS, on both stores: what a ban looks like, bad targets
//! and bad times refused naming the field, admin only, lapsed bans hidden (and deleted),
//! lifting, and bans carried by the hubs' feed as `bans/<id>`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[macro_use]
mod common;

use common::{code, Harness, Kind};
use serde_json::{json, Value};

fn ids(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect()
}

both!(bans_are_made_listed_lapse_and_are_lifted);
async fn bans_are_made_listed_lapse_and_are_lifted(kind: Kind) {
    let h = Harness::new(kind, "[sync]\nheartbeat_ms = 200\n");
    let m = h.start().await;
    let c = &m.admin;
    c.post("/v1/tenants", &json!({"name": "acme"}))
        .await
        .unwrap();
    c.post("/v1/users", &json!({"name": "ann", "tenant": "acme"}))
        .await
        .unwrap();
    c.post("/v1/clusters", &json!({"id": "edge-1", "tenant": "acme"}))
        .await
        .unwrap();
    let mut feed = kubehub_meta::feed::start(m.meta.clone(), 0, "test".into());
    let recv = async |rx: &mut tokio::sync::mpsc::Receiver<bytes::Bytes>| loop {
        let b = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        if v["type"] != "heartbeat" {
            return v;
        }
    };
    assert_eq!(recv(&mut feed).await["type"], "snapshot");

    // Bad input: 400 for what is not JSON of this call, 422 naming the field.
    let bad = [
        (json!({"reason": "x"}), 400, "missing field `target`"),
        (
            json!({"target": {}, "reason": "x"}),
            422,
            "target: must be exactly one of",
        ),
        (
            json!({"target": {"user": "ann", "tenant": "acme"}, "reason": "x"}),
            422,
            "target: must be exactly one of",
        ),
        (
            json!({"target": {"pod": "x"}, "reason": "x"}),
            422,
            "target: \"pod\" is not a ban target",
        ),
        (
            json!({"target": {"user": 7}, "reason": "x"}),
            422,
            "target.user:",
        ),
        (
            json!({"target": {"user": "Ann!"}, "reason": "x"}),
            422,
            "target.user:",
        ),
        (
            json!({"target": {"user": "nobody"}, "reason": "x"}),
            422,
            "target.user: user \"nobody\" does not exist",
        ),
        (
            json!({"target": {"tenant": "nope"}, "reason": "x"}),
            422,
            "target.tenant: tenant \"nope\" does not exist",
        ),
        (
            json!({"target": {"cluster": "edge-9"}, "reason": "x"}),
            422,
            "target.cluster: cluster \"edge-9\" does not exist",
        ),
        (
            json!({"target": {"token": "short"}, "reason": "x"}),
            422,
            "target.token:",
        ),
        (
            json!({"target": {"token": "abcdefghij01"}, "reason": "x"}),
            422,
            "does not exist",
        ),
        (
            json!({"target": {"client": {}}, "reason": "x"}),
            422,
            "target.client: a client ban needs userAgent, source or both",
        ),
        (
            json!({"target": {"client": {"agent": "x"}}, "reason": "x"}),
            422,
            "unknown field `agent`",
        ),
        (
            json!({"target": {"client": {"source": "10.0.0.1/8"}}, "reason": "x"}),
            422,
            "target.client.source",
        ),
        (
            json!({"target": {"client": {"source": "not-an-ip"}}, "reason": "x"}),
            422,
            "target.client.source",
        ),
        (
            json!({"target": {"client": {"userAgent": ""}}, "reason": "x"}),
            422,
            "target.client.userAgent: is required",
        ),
        (
            json!({"target": {"user": "ann"}}),
            422,
            "reason: is required",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "  "}),
            422,
            "reason: is required",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "x", "ttlSeconds": 0}),
            422,
            "ttlSeconds: 0",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "x", "ttlSeconds": 5, "expiresAt": "2099-01-01T00:00:00Z"}),
            422,
            "not both",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "x", "expiresAt": "2001-01-01T00:00:00Z"}),
            422,
            "expiresAt: 2001-01-01T00:00:00Z is in the past",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "x", "expiresAt": "tomorrow"}),
            422,
            "expiresAt: \"tomorrow\" is not an RFC 3339 time",
        ),
        (
            json!({"target": {"user": "ann"}, "reason": "x", "colour": 1}),
            400,
            "unknown field `colour`",
        ),
    ];
    for (body, want_code, want) in bad {
        let (n, msg) = code(c.post("/v1/bans", &body).await);
        assert_eq!(n, want_code, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: {msg:?} should say {want:?}");
    }
    assert!(
        ids(&c.get("/v1/bans").await.unwrap()).is_empty(),
        "nothing was written"
    );

    // A user ban, as contract 1 shows it.
    let ban = c
        .post(
            "/v1/bans",
            &json!({"target": {"user": "ann"}, "reason": "scraping secrets"}),
        )
        .await
        .unwrap();
    let id = ban["id"].as_str().unwrap().to_owned();
    assert!(
        id.len() == 12
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
        "{id}"
    );
    assert_eq!(ban["target"], json!({"user": "ann"}));
    assert_eq!(ban["reason"], "scraping secrets");
    assert_eq!(ban["createdBy"], "admin");
    assert!(ban.get("expiresAt").is_none(), "{ban}");
    assert!(
        kubehub_access::ban::unix_ms(ban["createdAt"].as_str().unwrap()).is_some(),
        "{ban}"
    );
    let put = recv(&mut feed).await;
    assert_eq!(put["type"], "put");
    assert_eq!(put["record"]["kind"], "Ban");
    assert_eq!(put["record"]["id"], id.as_str());

    // A client ban, and one that lapses by itself.
    let client = c
        .post(
            "/v1/bans",
            &json!({"target": {"client": {"userAgent": "kubectl/*", "source": "10.0.0.0/8"}},
                    "reason": "old kubectl from the lab", "expiresAt": "2099-01-01T00:00:00Z"}),
        )
        .await
        .unwrap();
    assert_eq!(client["expiresAt"], "2099-01-01T00:00:00Z");
    let one = c
        .get(&format!("/v1/bans/{}", client["id"].as_str().unwrap()))
        .await
        .unwrap();
    assert_eq!(one, client);
    assert_eq!(code(c.get("/v1/bans/zzzzzzzzzzzz").await).0, 404);
    let short = c
        .post(
            "/v1/bans",
            &json!({"target": {"cluster": "edge-1"}, "reason": "maintenance", "ttlSeconds": 1}),
        )
        .await
        .unwrap();
    let short_id = short["id"].as_str().unwrap().to_owned();
    let listed = ids(&c.get("/v1/bans").await.unwrap());
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert!(listed.contains(&short_id));
    let started = Instant::now();
    loop {
        let listed = ids(&c.get("/v1/bans").await.unwrap());
        if !listed.contains(&short_id) {
            assert_eq!(listed.len(), 2);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a 1 s ban still listed after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Listing deleted it: the hubs hear of it too.
    let mut saw_delete = false;
    for _ in 0..4 {
        let l = recv(&mut feed).await;
        if l["type"] == "delete" && l["key"] == format!("bans/{short_id}") {
            saw_delete = true;
            break;
        }
    }
    assert!(saw_delete, "the lapsed ban is deleted from the store");

    // Only admins.
    c.post(
        "/v1/grants",
        &json!({"name": "read", "tenant": "acme", "subject": {"kind": "User", "name": "ann"},
                "clusters": {"ids": ["edge-1"]},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
    )
    .await
    .unwrap();
    let k = c
        .post(
            "/v1/kubeconfig",
            &json!({"user": "ann", "clusters": ["edge-1"]}),
        )
        .await
        .unwrap();
    let token = kubehub_testkit::kubeconfig_token(k["kubeconfig"].as_str().unwrap());
    let ann = m.as_token(&token);
    assert_eq!(code(ann.get("/v1/bans").await).0, 403);
    let (n, msg) = code(
        ann.post(
            "/v1/bans",
            &json!({"target": {"user": "ann"}, "reason": "x"}),
        )
        .await,
    );
    assert_eq!(n, 403, "{msg}");
    assert_eq!(code(ann.delete(&format!("/v1/bans/{id}")).await).0, 403);

    // Lifting: 404 when unknown, else the ban.
    let (n, msg) = code(c.delete("/v1/bans/zzzzzzzzzzzz").await);
    assert_eq!(n, 404, "{msg}");
    assert!(msg.contains("ban \"zzzzzzzzzzzz\" not found"), "{msg}");
    let lifted = c.delete(&format!("/v1/bans/{id}")).await.unwrap();
    assert_eq!(lifted["id"], id.as_str());
    assert_eq!(lifted["target"], json!({"user": "ann"}));
    assert_eq!(code(c.delete(&format!("/v1/bans/{id}")).await).0, 404);
    let listed = ids(&c.get("/v1/bans").await.unwrap());
    assert_eq!(listed, vec![client["id"].as_str().unwrap().to_owned()]);
    drop(feed);
    m.stop().await;
}
