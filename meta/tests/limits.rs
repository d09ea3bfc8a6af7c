//! Traffic limits in meta (`/v1/limits`), on both stores: who may set and read them, bad
//! input named by field, and their deletion with their tenant. (That the feed carries them to
//! hubs, and how fast: `hub/tests/limits.rs`.)
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use common::{code, Harness, Kind};
use serde_json::json;

both!(limits_are_set_read_listed_and_cleared);
async fn limits_are_set_read_listed_and_cleared(kind: Kind) {
    let h = Harness::new(kind, "");
    let m = h.start().await;
    let c = &m.admin;
    c.post("/v1/tenants", &json!({"name": "t"})).await.unwrap();
    c.post("/v1/tenants", &json!({"name": "u"})).await.unwrap();
    c.post(
        "/v1/users",
        &json!({"name": "al", "tenant": "t", "admin": true}),
    )
    .await
    .unwrap();
    c.post("/v1/users", &json!({"name": "bo", "tenant": "u"}))
        .await
        .unwrap();

    // Bad input: 422 naming the field, 404 for unknown tenants and users.
    let (status, msg) = code(c.put("/v1/limits/t", &json!({"burst": 0})).await);
    assert_eq!(status, 422, "{msg}");
    assert!(msg.contains("burst"), "{msg}");
    let (status, msg) = code(c.put("/v1/limits/t", &json!({"rps": 3})).await);
    assert_eq!(status, 400, "{msg}");
    assert!(msg.contains("rps"), "{msg}");
    let (status, msg) = code(c.put("/v1/limits/t", &json!({"tenant": "u"})).await);
    assert_eq!(status, 422, "{msg}");
    let (status, msg) = code(c.put("/v1/limits/x", &json!({"burst": 1})).await);
    assert_eq!(status, 422, "{msg}");
    assert!(msg.contains("tenant \"x\" does not exist"), "{msg}");
    let (status, msg) = code(c.put("/v1/limits/t/bo", &json!({"burst": 1})).await);
    assert_eq!(status, 422, "{msg}");
    assert!(msg.contains("not a user of tenant"), "{msg}");
    let (status, _) = code(c.get("/v1/limits/t").await);
    assert_eq!(status, 404);

    // Set, read back, listed.
    let stored = c
        .put(
            "/v1/limits/t",
            &json!({"requestsPerSecond": 50, "burst": 100, "concurrency": 20, "clusterRequestsPerSecond": 0}),
        )
        .await
        .unwrap();
    assert_eq!(
        stored,
        json!({"tenant": "t", "requestsPerSecond": 50, "burst": 100, "concurrency": 20,
               "clusterRequestsPerSecond": 0})
    );
    assert_eq!(c.get("/v1/limits/t").await.unwrap(), stored);
    c.put("/v1/limits/t/al", &json!({"requestsPerSecond": 5}))
        .await
        .unwrap();
    c.put("/v1/limits/u", &json!({"burst": 7})).await.unwrap();
    let all = c.get("/v1/limits").await.unwrap();
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    let of_t = c.get("/v1/limits?tenant=t").await.unwrap();
    assert_eq!(of_t["items"].as_array().unwrap().len(), 2);

    // A tenant admin reads its own tenant's limits, sets none; other tenants' are hidden.
    let token = {
        c.post("/v1/clusters", &json!({"id": "c", "tenant": "t"}))
            .await
            .unwrap();
        c.post(
            "/v1/grants",
            &json!({"name": "g", "tenant": "t", "subject": {"kind": "User", "name": "al"},
                    "clusters": {"ids": ["c"]},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
        )
        .await
        .unwrap();
        let v = c
            .post("/v1/kubeconfig", &json!({"user": "al", "clusters": ["c"]}))
            .await
            .unwrap();
        kubehub_testkit::kubeconfig_token(v["kubeconfig"].as_str().unwrap())
    };
    let al = m.as_token(&token);
    assert_eq!(al.get("/v1/limits/t").await.unwrap(), stored);
    let mine = al.get("/v1/limits").await.unwrap();
    assert_eq!(mine["items"].as_array().unwrap().len(), 2);
    let (status, _) = code(al.get("/v1/limits/u").await);
    assert_eq!(status, 404);
    let (status, _) = code(al.put("/v1/limits/t", &json!({"burst": 1000})).await);
    assert_eq!(status, 403, "a tenant admin does not raise its own limits");

    // Cleared: answered with what was cleared; gone after.
    let cleared = c.delete("/v1/limits/t/al").await.unwrap();
    assert_eq!(cleared["requestsPerSecond"], 5);
    let (status, _) = code(c.delete("/v1/limits/t/al").await);
    assert_eq!(status, 404);

    // Deleting a tenant deletes its limit record with it.
    let (status, _) = code(c.delete("/v1/tenants/u").await);
    assert_eq!(status, 409, "user bo still refers to it");
    c.delete("/v1/users/bo").await.unwrap();
    c.delete("/v1/tenants/u").await.unwrap();
    let all = c.get("/v1/limits").await.unwrap();
    assert_eq!(all["items"], json!([stored]));
    m.stop().await;
}
