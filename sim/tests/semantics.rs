//! kube-apiserver semantics of the simulator, through its HTTP API in-process: status codes and
//! Status bodies, resourceVersion preconditions, pagination, exact reads, watch windows, 410.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use kubehub_sim::api::handle;
use kubehub_sim::{Cluster, ClusterConfig};
use serde_json::{json, Value};

struct Resp {
    code: u16,
    body: Value,
    content_type: String,
}

async fn call(c: &Arc<Cluster>, method: Method, uri: &str, ct: &str, body: &str) -> Resp {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", ct)
        .body(Bytes::from(body.to_owned()))
        .unwrap();
    let resp = handle(c, req).await;
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Resp {
        code,
        body,
        content_type,
    }
}

async fn get(c: &Arc<Cluster>, uri: &str) -> Resp {
    call(c, Method::GET, uri, "application/json", "").await
}

async fn post(c: &Arc<Cluster>, uri: &str, body: Value) -> Resp {
    call(c, Method::POST, uri, "application/json", &body.to_string()).await
}

fn pod(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}})
}

fn cluster() -> Arc<Cluster> {
    Cluster::new("t", ClusterConfig::default())
}

fn assert_status(r: &Resp, code: u16, reason: &str) {
    assert_eq!(r.code, code, "{}", r.body);
    assert_eq!(r.body["kind"], "Status", "{}", r.body);
    assert_eq!(r.body["code"], code);
    assert_eq!(r.body["reason"], reason, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
}

#[tokio::test]
async fn create_get_and_their_errors() {
    let c = cluster();
    let r = post(&c, "/api/v1/namespaces/default/pods", pod("a", json!({}))).await;
    assert_eq!(r.code, 201);
    assert_eq!(r.body["metadata"]["namespace"], "default");
    assert!(r.body["metadata"]["uid"].as_str().unwrap().len() == 36);
    assert!(r.body["metadata"]["creationTimestamp"].is_string());
    assert_eq!(r.body["status"]["phase"], "Running");

    assert_status(
        &post(&c, "/api/v1/namespaces/default/pods", pod("a", json!({}))).await,
        409,
        "AlreadyExists",
    );
    let r = get(&c, "/api/v1/namespaces/default/pods/zzz").await;
    assert_status(&r, 404, "NotFound");
    assert_eq!(r.body["message"], "pods \"zzz\" not found");
    assert_eq!(r.body["details"], json!({"name": "zzz", "kind": "pods"}));
    assert_status(
        &post(&c, "/api/v1/namespaces/nowhere/pods", pod("a", json!({}))).await,
        404,
        "NotFound",
    );
    assert_status(&get(&c, "/api/v1/widgets").await, 404, "NotFound");
    assert_status(
        &get(&c, "/apis/apps/v1/namespaces/default/deployments/x").await,
        404,
        "NotFound",
    );
    // Malformed JSON, wrong kind, name mismatch, namespace mismatch, bad names.
    let r = call(
        &c,
        Method::POST,
        "/api/v1/namespaces/default/pods",
        "application/json",
        "{nope",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = post(
        &c,
        "/api/v1/namespaces/default/pods",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}}),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let mut p = pod("b", json!({}));
    p["metadata"]["namespace"] = json!("kube-system");
    assert_status(
        &post(&c, "/api/v1/namespaces/default/pods", p).await,
        400,
        "BadRequest",
    );
    let r = post(
        &c,
        "/api/v1/namespaces/default/pods",
        pod("Bad_Name", json!({})),
    )
    .await;
    assert_status(&r, 422, "Invalid");
    assert_eq!(r.body["details"]["causes"][0]["field"], "metadata.name");
    let r = call(
        &c,
        Method::PUT,
        "/api/v1/namespaces/default/pods/other",
        "application/json",
        &pod("a", json!({})).to_string(),
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    assert_eq!(
        r.body["message"],
        "the name of the object (a) does not match the name on the URL (other)"
    );
    // Unsupported media types; protobuf is read (tests/protobuf.rs), "x" is not protobuf.
    let r = call(
        &c,
        Method::POST,
        "/api/v1/namespaces/default/pods",
        "application/xml",
        "x",
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    let r = call(
        &c,
        Method::POST,
        "/api/v1/namespaces/default/pods",
        "application/vnd.kubernetes.protobuf",
        "x",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/pods/a",
        "application/xml",
        "x",
    )
    .await;
    assert_status(&r, 415, "UnsupportedMediaType");
    // Server-side apply needs a field manager (the apply itself: tests/apply.rs).
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/pods/a",
        "application/apply-patch+yaml",
        "x",
    )
    .await;
    assert_status(&r, 422, "Invalid");
    // generateName.
    let mut g = pod("", json!({}));
    g["metadata"] = json!({"generateName": "web-"});
    let r = post(&c, "/api/v1/namespaces/default/pods", g).await;
    assert_eq!(r.code, 201);
    let name = r.body["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    // A method the resource does not have.
    let r = call(
        &c,
        Method::DELETE,
        "/api/v1/namespaces",
        "application/json",
        "",
    )
    .await;
    assert_status(&r, 405, "MethodNotAllowed");
}

#[tokio::test]
async fn updates_are_guarded_by_resource_version() {
    let c = cluster();
    let created = post(&c, "/api/v1/namespaces/default/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}, "data": {"a": "1"}})).await.body;
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut next = created.clone();
    next["data"]["a"] = json!("2");
    let r = call(
        &c,
        Method::PUT,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json",
        &next.to_string(),
    )
    .await;
    assert_eq!(r.code, 200);
    let rv2: u64 = r.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rv2 > rv);
    // The same stale body again: 409 Conflict.
    let r = call(
        &c,
        Method::PUT,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json",
        &next.to_string(),
    )
    .await;
    assert_status(&r, 409, "Conflict");
    assert!(r.body["message"]
        .as_str()
        .unwrap()
        .contains("the object has been modified"));
    // A no-op update changes nothing, not even the version.
    let current = r.body.clone();
    let _ = current;
    let fresh = get(&c, "/api/v1/namespaces/default/configmaps/cm")
        .await
        .body;
    let r = call(
        &c,
        Method::PUT,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json",
        &fresh.to_string(),
    )
    .await;
    assert_eq!(
        r.body["metadata"]["resourceVersion"],
        fresh["metadata"]["resourceVersion"]
    );
    // Merge patch and JSON patch; a failing JSON patch test is 422.
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/merge-patch+json",
        r#"{"data":{"b":"3"}}"#,
    )
    .await;
    assert_eq!(r.body["data"], json!({"a": "2", "b": "3"}));
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json-patch+json",
        r#"[{"op":"remove","path":"/data/a"}]"#,
    )
    .await;
    assert_eq!(r.body["data"], json!({"b": "3"}));
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json-patch+json",
        r#"[{"op":"test","path":"/data/b","value":"9"}]"#,
    )
    .await;
    assert_eq!(r.code, 422);
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/merge-patch+json",
        "[1,2]",
    )
    .await;
    assert_status(&r, 400, "BadRequest");
    // Delete with a stale precondition, then for real.
    let r = call(
        &c,
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json",
        r#"{"preconditions":{"resourceVersion":"1"}}"#,
    )
    .await;
    assert_status(&r, 409, "Conflict");
    let r = call(
        &c,
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/cm",
        "application/json",
        r#"{"propagationPolicy":"Background"}"#,
    )
    .await;
    assert_eq!(r.code, 200);
    assert_status(
        &get(&c, "/api/v1/namespaces/default/configmaps/cm").await,
        404,
        "NotFound",
    );
}

#[tokio::test]
async fn strategic_merge_patch_of_containers() {
    let c = cluster();
    let mut p = pod("p", json!({"app": "x"}));
    p["spec"]["containers"] = json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]);
    post(&c, "/api/v1/namespaces/default/pods", p).await;
    let patch = json!({"metadata": {"labels": {"v": "2"}}, "spec": {"containers": [{"name": "b", "image": "b:2"}]}});
    let r = call(
        &c,
        Method::PATCH,
        "/api/v1/namespaces/default/pods/p",
        "application/strategic-merge-patch+json",
        &patch.to_string(),
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let cs = r.body["spec"]["containers"].as_array().unwrap();
    assert_eq!(cs.len(), 2, "containers merge by name");
    assert_eq!(cs[0]["image"], "a:1");
    assert_eq!(cs[1]["image"], "b:2");
    assert_eq!(r.body["metadata"]["labels"], json!({"app": "x", "v": "2"}));
    assert_eq!(
        r.body["metadata"]["generation"], 2,
        "spec changes bump generation"
    );
}

#[tokio::test]
async fn pagination_is_consistent_and_expires() {
    let c = Cluster::new(
        "t",
        ClusterConfig {
            history_window: 50,
            ..ClusterConfig::default()
        },
    );
    for i in 0..10 {
        post(&c, "/api/v1/namespaces/default/configmaps", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i:02}")}})).await;
    }
    // 10 + kube-root-ca.crt in default.
    let p1 = get(&c, "/api/v1/namespaces/default/configmaps?limit=4")
        .await
        .body;
    assert_eq!(p1["items"].as_array().unwrap().len(), 4);
    assert_eq!(p1["metadata"]["remainingItemCount"], 7);
    let token = p1["metadata"]["continue"].as_str().unwrap().to_owned();
    // A write between pages is not visible in later pages (the list is at the first page's version).
    post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-05a"}}),
    )
    .await;
    call(
        &c,
        Method::DELETE,
        "/api/v1/namespaces/default/configmaps/cm-09",
        "application/json",
        "",
    )
    .await;
    let mut names: Vec<String> = p1["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    let mut cont = Some(token.clone());
    while let Some(t) = cont {
        let p = get(
            &c,
            &format!("/api/v1/namespaces/default/configmaps?limit=4&continue={t}"),
        )
        .await
        .body;
        assert_eq!(
            p["metadata"]["resourceVersion"],
            p1["metadata"]["resourceVersion"]
        );
        names.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_owned()),
        );
        cont = p["metadata"]["continue"].as_str().map(str::to_owned);
    }
    assert_eq!(names.len(), 11);
    assert!(names.contains(&"cm-09".to_owned()) && !names.contains(&"cm-05a".to_owned()));
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "lists come in key order");
    // Garbage tokens are 400; tokens whose version left the history are 410.
    assert_status(
        &get(
            &c,
            "/api/v1/namespaces/default/configmaps?limit=4&continue=!!",
        )
        .await,
        400,
        "BadRequest",
    );
    for i in 0..60 {
        call(
            &c,
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/cm-00",
            "application/merge-patch+json",
            &json!({"data": {"i": i.to_string()}}).to_string(),
        )
        .await;
    }
    let r = get(
        &c,
        &format!("/api/v1/namespaces/default/configmaps?limit=4&continue={token}"),
    )
    .await;
    assert_status(&r, 410, "Expired");
}

#[tokio::test]
async fn list_resource_version_semantics() {
    let c = Cluster::new(
        "t",
        ClusterConfig {
            history_window: 20,
            ..ClusterConfig::default()
        },
    );
    let a = post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}}),
    )
    .await
    .body;
    let rv_a = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        &c,
        "/api/v1/namespaces/default/configmaps",
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b"}}),
    )
    .await;
    // Exact: as of rv_a, b did not exist.
    let r = get(&c, &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv_a}&resourceVersionMatch=Exact")).await;
    let names: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "kube-root-ca.crt"]);
    assert_eq!(r.body["metadata"]["resourceVersion"], rv_a);
    // NotOlderThan: current data.
    let r = get(
        &c,
        &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv_a}"),
    )
    .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 3);
    // A version from the future: 504 with retry hints.
    let r = get(
        &c,
        "/api/v1/namespaces/default/configmaps?resourceVersion=999999",
    )
    .await;
    assert_status(&r, 504, "Timeout");
    assert_eq!(
        r.body["details"]["causes"][0]["reason"],
        "ResourceVersionTooLarge"
    );
    // Too old for Exact: 410.
    for i in 0..30 {
        call(
            &c,
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/a",
            "application/merge-patch+json",
            &json!({"data": {"i": i.to_string()}}).to_string(),
        )
        .await;
    }
    let r = get(&c, &format!("/api/v1/namespaces/default/configmaps?resourceVersion={rv_a}&resourceVersionMatch=Exact")).await;
    assert_status(&r, 410, "Expired");
}

async fn read_lines(resp: http::Response<kubehub_sim::api::Body>, n: usize) -> Vec<Value> {
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    while out.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("watch event in time")
            .expect("stream open")
            .unwrap();
        buf.extend_from_slice(&frame.into_data().unwrap());
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            out.push(serde_json::from_slice(&line).unwrap());
        }
    }
    out
}

fn watch_req(uri: &str) -> Request<Bytes> {
    Request::builder().uri(uri).body(Bytes::new()).unwrap()
}

#[tokio::test]
async fn watch_from_a_version_with_selectors_and_410() {
    let c = Cluster::new(
        "t",
        ClusterConfig {
            history_window: 30,
            ..ClusterConfig::default()
        },
    );
    let a = post(
        &c,
        "/api/v1/namespaces/default/pods",
        pod("a", json!({"app": "web"})),
    )
    .await
    .body;
    let rv_a = a["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    post(
        &c,
        "/api/v1/namespaces/default/pods",
        pod("b", json!({"app": "db"})),
    )
    .await;
    // From rv_a: the history after it (b's ADDED), then live events.
    let resp = handle(
        &c,
        watch_req(&format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv_a}"
        )),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let c2 = c.clone();
    tokio::spawn(async move {
        call(
            &c2,
            Method::PATCH,
            "/api/v1/namespaces/default/pods/a",
            "application/merge-patch+json",
            r#"{"metadata":{"labels":{"app":"db"}}}"#,
        )
        .await;
        call(
            &c2,
            Method::DELETE,
            "/api/v1/namespaces/default/pods/b",
            "application/json",
            "",
        )
        .await;
    });
    let ev = read_lines(resp, 3).await;
    let kinds: Vec<(&str, &str)> = ev
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["object"]["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(kinds, [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]);
    let del_rv: u64 = ev[2]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mod_rv: u64 = ev[1]["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        del_rv > mod_rv,
        "a DELETED event carries the deletion's version"
    );

    // A selector watch sees the relabelled pod leave as DELETED.
    let resp = handle(&c, watch_req(&format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv_a}&labelSelector=app%3Dweb"))).await;
    let ev = read_lines(resp, 1).await;
    assert_eq!(
        (
            ev[0]["type"].as_str(),
            ev[0]["object"]["metadata"]["name"].as_str()
        ),
        (Some("DELETED"), Some("a"))
    );

    // Unset resourceVersion: the current state as ADDED first.
    let resp = handle(&c, watch_req("/api/v1/namespaces/default/pods?watch=true")).await;
    let ev = read_lines(resp, 1).await;
    assert_eq!(ev[0]["type"], "ADDED");

    // Past the window: one ERROR event with a 410 Status.
    for i in 0..40 {
        call(
            &c,
            Method::PATCH,
            "/api/v1/namespaces/default/pods/a",
            "application/merge-patch+json",
            &json!({"metadata": {"annotations": {"i": i.to_string()}}}).to_string(),
        )
        .await;
    }
    let resp = handle(
        &c,
        watch_req(&format!(
            "/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv_a}"
        )),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let ev = read_lines(resp, 1).await;
    assert_eq!(ev[0]["type"], "ERROR");
    assert_eq!(ev[0]["object"]["code"], 410);
    assert_eq!(ev[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn bookmarks_and_watch_list() {
    let c = Cluster::new(
        "t",
        ClusterConfig {
            bookmark_interval: Duration::from_millis(100),
            ..ClusterConfig::default()
        },
    );
    post(&c, "/api/v1/namespaces/default/pods", pod("a", json!({}))).await;
    let rv = c.resource_version();
    let resp = handle(&c, watch_req(&format!("/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&allowWatchBookmarks=true"))).await;
    let ev = read_lines(resp, 1).await;
    assert_eq!(ev[0]["type"], "BOOKMARK");
    assert_eq!(ev[0]["object"]["kind"], "Pod");
    assert_eq!(
        ev[0]["object"]["metadata"]["resourceVersion"],
        rv.to_string()
    );
    // sendInitialEvents: the state, then a bookmark marking its end.
    let resp = handle(&c, watch_req("/api/v1/namespaces/default/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true")).await;
    let ev = read_lines(resp, 2).await;
    assert_eq!(ev[0]["type"], "ADDED");
    assert_eq!(ev[1]["type"], "BOOKMARK");
    assert_eq!(
        ev[1]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
}

#[tokio::test]
async fn tables_for_kubectl() {
    let c = cluster();
    post(&c, "/api/v1/namespaces/default/pods", pod("a", json!({}))).await;
    let req = Request::builder()
        .uri("/api/v1/pods?limit=500")
        .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
        .body(Bytes::new())
        .unwrap();
    let resp = handle(&c, req).await;
    let t: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(t["kind"], "Table");
    let cols: Vec<&str> = t["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == 0)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["Name", "Ready", "Status", "Restarts", "Age"]);
    assert_eq!(t["rows"][0]["cells"][1], "1/1");
    assert_eq!(t["rows"][0]["cells"][2], "Running");
    assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    // Protobuf only: the list in kube's protobuf envelope.
    let req = Request::builder()
        .uri("/api/v1/pods")
        .header("accept", "application/vnd.kubernetes.protobuf")
        .body(Bytes::new())
        .unwrap();
    let resp = handle(&c, req).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "application/vnd.kubernetes.protobuf"
    );
}

#[tokio::test]
async fn namespaces_cascade_and_discovery() {
    let c = cluster();
    post(
        &c,
        "/api/v1/namespaces",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
    )
    .await;
    // The namespace controllers' objects appear.
    assert_eq!(
        get(&c, "/api/v1/namespaces/team/serviceaccounts/default")
            .await
            .code,
        200
    );
    post(&c, "/api/v1/namespaces/team/pods", pod("p", json!({}))).await;
    let r = call(
        &c,
        Method::DELETE,
        "/api/v1/namespaces/team",
        "application/json",
        "",
    )
    .await;
    assert_eq!(r.code, 200);
    assert_status(
        &get(&c, "/api/v1/namespaces/team/pods/p").await,
        404,
        "NotFound",
    );
    assert_status(&get(&c, "/api/v1/namespaces/team").await, 404, "NotFound");
    let d = get(&c, "/apis/apps/v1").await.body;
    assert_eq!(d["kind"], "APIResourceList");
    let v = get(&c, "/version").await.body;
    assert_eq!(v["minor"], "32");
    // OpenAPI v2 as JSON; kubectl asks for it as protobuf only and gets 406.
    let v2 = get(&c, "/openapi/v2").await;
    assert_eq!(v2.code, 200);
    assert!(v2.body["definitions"]["io.k8s.api.core.v1.Pod"].is_object());
    let req = Request::builder()
        .uri("/openapi/v2")
        .header(
            "accept",
            "application/com.github.proto-openapi.spec.v2@v1.0+protobuf",
        )
        .body(Bytes::new())
        .unwrap();
    assert_eq!(handle(&c, req).await.status(), 406);
    assert!(get(&c, "/openapi/v3").await.body["paths"]["api/v1"].is_object());
}
