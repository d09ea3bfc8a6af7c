//! The operations console end to end, in headless Chromium through WebDriver: signing in
//! (wrong and user tokens refused), every page showing meta's live data (a registered hub, an
//! agent, a tenant with its user and token), updates arriving without a reload, and the
//! actions taking effect in meta (the canary rule set and cleared, a token revoked, an
//! invalid rule refused with the API's message). Screenshots of every page are written under
//! `<target dir>/test-artifacts/console/`.
#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::time::Duration;

use common::{Harness, Kind};
use kubehub_meta::client::ClientError;
use kubehub_testkit::browser::Browser;
use serde_json::json;

/// A generous guard for things that happen within a second or two.
const SOON: Duration = Duration::from_secs(15);

/// Marks the page's window (a reload loses the mark).
async fn mark_page(b: &Browser) {
    b.client
        .execute("window.__notReloaded = true; return true;", vec![])
        .await
        .unwrap();
}

/// Whether the page still has [`mark_page`]'s mark.
async fn same_page(b: &Browser) -> bool {
    let v = b
        .client
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .unwrap();
    v == json!(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_and_acts_in_the_console() {
    let h = Harness::new(
        Kind::Embedded,
        "[registry]\nttl_s = 600\n[console]\nrefresh_ms = 100\ntraffic_interval_ms = 500\ntraffic_timeout_ms = 300\n",
    );
    let m = h.start().await;
    let c = &m.admin;
    let admin_token = std::fs::read_to_string(h.dir.path().join("admin.token")).unwrap();
    let admin_token = admin_token.trim();

    // What the console shows: a tenant with a user, a cluster, a grant, a token, a hub and the
    // cluster's agent connected to it.
    c.post(
        "/v1/tenants",
        &json!({"name": "acme", "displayName": "Acme <Corp>"}),
    )
    .await
    .unwrap();
    c.post(
        "/v1/users",
        &json!({"name": "alice", "tenant": "acme", "groups": ["devs"]}),
    )
    .await
    .unwrap();
    c.post(
        "/v1/clusters",
        &json!({"id": "edge-1", "tenant": "acme", "environment": "prod", "labels": {"tier": "gold"}}),
    )
    .await
    .unwrap();
    c.post(
        "/v1/grants",
        &json!({"name": "read", "tenant": "acme", "subject": {"kind": "User", "name": "alice"},
                "clusters": {"ids": ["edge-1"]},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]}),
    )
    .await
    .unwrap();
    let issued = c
        .post(
            "/v1/kubeconfig",
            &json!({"user": "alice", "description": "laptop"}),
        )
        .await
        .unwrap();
    let alice_token = kubehub_testkit::kubeconfig_token(issued["kubeconfig"].as_str().unwrap());
    let token_id = issued["token"]["id"].as_str().unwrap().to_owned();
    let hub = |id: &str| {
        json!({"endpoint": format!("https://{id}.example:8443"), "agentEndpoint": format!("{id}.example:8444"),
               "version": "1.2.0", "environment": "prod", "zone": "z1",
               "agents": 1, "streams": 7, "cpu": 250})
    };
    c.put("/v1/registry/hubs/hub-1", &hub("hub-1"))
        .await
        .unwrap();
    c.put(
        "/v1/registry/agents/edge-1",
        &json!({"agentId": "agent-a", "hubs": ["hub-1"], "version": "1.2.0"}),
    )
    .await
    .unwrap();

    let b = Browser::start("console").await;
    let url = |p: &str| format!("{}{p}", m.url);

    // Not signed in: every page leads to the login page.
    b.client.goto(&url("/console/tenants")).await.unwrap();
    b.wait_for("form#login", SOON).await;
    assert!(
        b.url().await.ends_with("/console/login"),
        "{}",
        b.url().await
    );
    b.screenshot("login").await;
    // A wrong token, and a user's token, are refused with a reason.
    b.fill("#token", "not-a-token").await;
    b.click("form#login button").await;
    b.wait_text("#flash", SOON, |t| t.contains("Not signed in"))
        .await;
    b.fill("#token", &alice_token).await;
    b.click("form#login button").await;
    // (The wait names what only the new answer says: the old one is on screen until then.)
    let said = b
        .wait_text("#flash", SOON, |t| t.contains("user's token"))
        .await;
    assert!(said.contains("admin token"), "{said}");
    // The admin token signs in, to the hubs.
    b.fill("#token", admin_token).await;
    b.click("form#login button").await;
    let row = b
        .wait_text("#hub-hub-1", SOON, |t| t.contains("hub-1"))
        .await;
    for shown in ["1.2.0", "prod", "z1", "serving", "25%"] {
        assert!(row.contains(shown), "{shown:?} in {row:?}");
    }
    b.wait_text("#live-status", SOON, |t| t == "live").await;

    // Live: a hub that registers now appears without a reload.
    mark_page(&b).await;
    c.put("/v1/registry/hubs/hub-2", &hub("hub-2"))
        .await
        .unwrap();
    b.wait_for("#hub-hub-2", SOON).await;
    assert!(same_page(&b).await, "the update came without a reload");
    b.screenshot("hubs").await;

    // Clusters: the cluster, its tenant, and the hub its agent is connected to.
    b.client.goto(&url("/console/clusters")).await.unwrap();
    let row = b
        .wait_text("#cluster-edge-1", SOON, |t| t.contains("hub-1"))
        .await;
    for shown in ["acme", "prod", "tier=gold", "1.2.0"] {
        assert!(row.contains(shown), "{shown:?} in {row:?}");
    }
    b.wait_for("form#move", SOON).await;
    b.screenshot("clusters").await;
    // The filter hides the rows that do not match, and shows them again.
    let shown = "return !document.querySelector('#cluster-edge-1').hidden;";
    b.fill("#filter", "no-such-cluster").await;
    assert_eq!(b.client.execute(shown, vec![]).await.unwrap(), json!(false));
    b.fill("#filter", "GOLD").await;
    assert_eq!(b.client.execute(shown, vec![]).await.unwrap(), json!(true));

    // Tenants: users, grants, tokens; a tenant created now appears live. Text from the data
    // is shown as text.
    b.client.goto(&url("/console/tenants")).await.unwrap();
    let tenant = b
        .wait_text("#tenant-acme", SOON, |t| t.contains("alice"))
        .await;
    assert!(tenant.contains("Acme <Corp>"), "escaped, shown: {tenant}");
    assert!(
        tenant.contains("read") && tenant.contains("laptop"),
        "{tenant}"
    );
    b.wait_for(&format!("#token-{token_id} button"), SOON).await;
    mark_page(&b).await;
    c.post("/v1/tenants", &json!({"name": "initech"}))
        .await
        .unwrap();
    b.wait_for("#tenant-initech", SOON).await;
    assert!(same_page(&b).await, "the update came without a reload");
    b.screenshot("tenants").await;

    // Revoking the token in the console revokes it in meta.
    let alice = m.as_token(&alice_token);
    alice.get("/v1/whoami").await.unwrap();
    // The console asks first: saying no revokes nothing; yes revokes it.
    b.click(&format!("#token-{token_id} button")).await;
    let asked = b.client.get_alert_text().await.unwrap();
    assert!(
        asked.contains(&token_id) && asked.contains("alice"),
        "{asked}"
    );
    b.client.dismiss_alert().await.unwrap();
    alice.get("/v1/whoami").await.unwrap();
    b.click(&format!("#token-{token_id} button")).await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", SOON, |t| t.contains("revoked")).await;
    match alice.get("/v1/whoami").await {
        Err(ClientError::Api { code: 401, .. }) => {}
        other => panic!("the revoked token still works: {other:?}"),
    }
    let tokens = c.get("/v1/tokens?user=alice").await.unwrap();
    assert_eq!(tokens["items"], json!([]), "{tokens}");
    assert!(
        b.client
            .find(fantoccini::Locator::Css(&format!("#token-{token_id}")))
            .await
            .is_err(),
        "the revoked token is no longer listed"
    );

    // Traffic: every hub is asked; these registered no admin listener, and the page says so.
    b.client.goto(&url("/console/traffic")).await.unwrap();
    let asked = b
        .wait_text("#traffic-hubs", SOON, |t| {
            t.contains("hub-1") && t.contains("hub-2")
        })
        .await;
    assert!(asked.contains("no admin listener registered"), "{asked}");
    b.screenshot("traffic").await;

    // Bans: the page and its form load (the bans API is contract 1).
    b.client.goto(&url("/console/bans")).await.unwrap();
    b.wait_for("form#ban", SOON).await;
    b.wait_for("#live", SOON).await;
    b.screenshot("bans").await;

    // Canary: an invalid rule is refused with the API's message and sets nothing; a valid one
    // is set in meta; clearing clears it.
    b.client.goto(&url("/console/canary")).await.unwrap();
    b.wait_for("#canary-none", SOON).await;
    b.fill("#canary-version-input", "1.3.0-rc1").await;
    b.fill("#canary-percent", "150").await;
    b.click("#canary-form button").await;
    let said = b.wait_text("#flash", SOON, |t| t.contains("percent")).await;
    assert!(said.contains("422"), "{said}");
    assert_eq!(c.canary_show().await.unwrap(), None);
    b.fill("#canary-version-input", "1.3.0-rc1").await;
    b.fill("#canary-percent", "10").await;
    b.click("#canary-form button").await;
    b.wait_text("#flash", SOON, |t| t.contains("Canary rule set"))
        .await;
    let rule = c.canary_show().await.unwrap().expect("the rule is set");
    assert_eq!((rule.version.as_str(), rule.percent), ("1.3.0-rc1", 10));
    b.wait_text("#canary-version", SOON, |t| t == "1.3.0-rc1")
        .await;
    b.screenshot("canary").await;
    b.click("#live form button").await;
    b.wait_text("#flash", SOON, |t| t.contains("cleared")).await;
    assert_eq!(c.canary_show().await.unwrap(), None);

    // Logging out ends the session.
    b.click("header form button").await;
    b.wait_for("form#login", SOON).await;
    b.client.goto(&url("/console/hubs")).await.unwrap();
    b.wait_for("form#login", SOON).await;
    b.client
        .goto(&url("/console/events?page=hubs"))
        .await
        .unwrap();
    let said = b.body_text().await;
    assert!(said.contains("not signed in"), "{said}");

    b.close().await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_can_be_turned_off() {
    let h = Harness::new(Kind::Embedded, "[console]\nenabled = false\n");
    let m = h.start().await;
    match m.admin.get("/console/hubs").await {
        Err(ClientError::Api { code: 404, message }) => {
            assert!(message.contains("no such API path"), "{message}")
        }
        other => panic!("the console answered: {other:?}"),
    }
    m.stop().await;
}
