//! The simulator driven by the real kubectl (/usr/bin/kubectl), as a person would use it.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::time::Duration;

use common::start;
use kubehub_sim::{ClusterConfig, SeedSpec};
use kubehub_testkit::read_until;
use serde_json::{json, Value};

async fn sim() -> common::Sim {
    start(ClusterConfig::default(), SeedSpec::default(), false, None).await
}

fn pod_names(s: &common::Sim, ns: &str) -> Vec<String> {
    let pods = s.cluster.type_index("", "v1", "pods").unwrap();
    s.cluster
        .keys(pods)
        .into_iter()
        .filter(|(n, _)| n == ns || ns.is_empty())
        .map(|(_, name)| name)
        .collect()
}

fn first_app_namespace(s: &common::Sim) -> String {
    let pods = s.cluster.type_index("", "v1", "pods").unwrap();
    s.cluster.keys(pods)[0].0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_namespaces_shows_kubectl_columns() {
    let s = sim().await;
    let out = s.ok(&["get", "pods", "-A"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    let all = pod_names(&s, "");
    assert_eq!(out.lines().count(), all.len() + 1, "{out}");
    for name in &all {
        let line = out.lines().find(|l| l.contains(name.as_str())).unwrap();
        assert!(line.contains("Running"), "{line}");
    }
    let wide = s.ok(&["get", "pods", "-A", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("NODE"));
    assert!(wide.contains("sim-node-"));
    let nodes = s.ok(&["get", "nodes"]);
    assert!(
        nodes.contains("Ready") && nodes.contains("v1.32.4"),
        "{nodes}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_as_yaml_and_json() {
    let s = sim().await;
    let ns = first_app_namespace(&s);
    let name = &pod_names(&s, &ns)[0];
    let v: Value =
        serde_json::from_str(&s.ok(&["get", "pod", name, "-n", &ns, "-o", "json"])).unwrap();
    assert_eq!(v["kind"], "Pod");
    assert_eq!(v["metadata"]["name"], name.as_str());
    assert!(v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .parse::<u64>()
        .is_ok());
    let y = s.ok(&["get", "pod", name, "-n", &ns, "-o", "yaml"]);
    assert!(
        y.contains("kind: Pod") && y.contains(&format!("name: {name}")),
        "{y}"
    );
    let list: Value =
        serde_json::from_str(&s.ok(&["get", "deployments", "-n", &ns, "-o", "json"])).unwrap();
    assert_eq!(list["kind"], "List");
    assert!(!list["items"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_creates_then_updates_with_a_strategic_merge_patch() {
    let s = sim().await;
    let manifest = |image: &str, extra_label: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n  namespace: default\n  labels:\n    app: shop\n{extra_label}spec:\n  replicas: 2\n  selector:\n    matchLabels:\n      app: shop\n  template:\n    metadata:\n      labels:\n        app: shop\n    spec:\n      containers:\n      - name: shop\n        image: {image}\n      - name: sidecar\n        image: envoy:1\n"
        )
    };
    let file = s.path().join("shop.yaml");
    std::fs::write(&file, manifest("shop:1", "")).unwrap();
    let f = file.to_str().unwrap();
    assert!(s
        .ok(&["apply", "-f", f])
        .contains("deployment.apps/shop created"));
    assert!(s.ok(&["apply", "-f", f]).contains("unchanged"));
    let deps = s.cluster.type_index("apps", "v1", "deployments").unwrap();
    let before: Value =
        serde_json::from_slice(&s.cluster.get(deps, Some("default"), "shop").unwrap()).unwrap();

    std::fs::write(&file, manifest("shop:2", "    tier: web\n")).unwrap();
    assert!(s
        .ok(&["apply", "-f", f])
        .contains("deployment.apps/shop configured"));
    let after: Value =
        serde_json::from_slice(&s.cluster.get(deps, Some("default"), "shop").unwrap()).unwrap();
    let cs = after["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(cs.len(), 2);
    assert_eq!(cs[0]["image"], "shop:2");
    assert_eq!(cs[1]["image"], "envoy:1");
    assert_eq!(
        after["metadata"]["labels"],
        json!({"app": "shop", "tier": "web"})
    );
    assert_eq!(after["metadata"]["uid"], before["metadata"]["uid"]);
    assert_eq!(after["metadata"]["generation"], 2);
    let rv = |v: &Value| {
        v["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(rv(&after) > rv(&before));
    assert!(
        after["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"]
            .as_str()
            .unwrap()
            .contains("shop:2")
    );
    let out = s.ok(&["get", "deploy", "shop"]);
    assert!(out.contains("2/2"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_then_not_found() {
    let s = sim().await;
    let ns = first_app_namespace(&s);
    let name = pod_names(&s, &ns)[0].clone();
    let out = s.ok(&["delete", "pod", &name, "-n", &ns]);
    assert!(out.contains(&format!("pod \"{name}\" deleted")), "{out}");
    let got = s.kubectl(&["get", "pod", &name, "-n", &ns]);
    assert!(!got.status.success());
    let err = String::from_utf8_lossy(&got.stderr);
    assert!(err.contains(&format!("pods \"{name}\" not found")), "{err}");
    assert!(!pod_names(&s, &ns).contains(&name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_and_field_selectors() {
    let s = sim().await;
    let pods = s.cluster.type_index("", "v1", "pods").unwrap();
    let all: Vec<Value> = s
        .cluster
        .keys(pods)
        .iter()
        .map(|(ns, n)| serde_json::from_slice(&s.cluster.get(pods, Some(ns), n).unwrap()).unwrap())
        .collect();
    let app = all[0]["metadata"]["labels"]["app"]
        .as_str()
        .unwrap()
        .to_owned();
    let want = all
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app.as_str())
        .count();
    let out = s.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        &format!("app={app}"),
        "--no-headers",
    ]);
    assert_eq!(out.lines().count(), want, "{out}");
    let out = s.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        &format!("app notin ({app}),tier"),
        "--no-headers",
    ]);
    assert_eq!(out.lines().count(), all.len() - want, "{out}");
    let node = all[0]["spec"]["nodeName"].as_str().unwrap();
    let want = all.iter().filter(|p| p["spec"]["nodeName"] == node).count();
    let out = s.ok(&[
        "get",
        "pods",
        "-A",
        "--field-selector",
        &format!("spec.nodeName={node},status.phase=Running"),
        "--no-headers",
    ]);
    assert_eq!(out.lines().count(), want, "{out}");
    let bad = s.kubectl(&["get", "pods", "-A", "--field-selector", "spec.color=blue"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not a known field selector"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_a_change_made_by_another_client() {
    let s = sim().await;
    let mut w = s.spawn(&["get", "pods", "-n", "default", "-w"]);
    // kubectl prints nothing for an empty namespace until the first event; give it time to
    // start watching, then create a pod as another client.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let file = s.path().join("p.yaml");
    std::fs::write(&file, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: watched\nspec:\n  containers:\n  - name: c\n    image: busybox\n").unwrap();
    s.ok(&["create", "-f", file.to_str().unwrap()]);
    let out = read_until(&mut w, Duration::from_secs(15), |o| o.contains("watched"));
    let _ = w.kill();
    assert!(
        out.contains("watched") && out.contains("Running"),
        "watch output: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_new_lines() {
    let cfg = ClusterConfig {
        log_interval: Duration::from_millis(100),
        ..ClusterConfig::default()
    };
    let s = start(cfg, SeedSpec::default(), false, None).await;
    let ns = first_app_namespace(&s);
    let name = pod_names(&s, &ns)[0].clone();
    let pods = s.cluster.type_index("", "v1", "pods").unwrap();
    let pod: Value =
        serde_json::from_slice(&s.cluster.get(pods, Some(&ns), &name).unwrap()).unwrap();
    let container = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut f = s.spawn(&[
        "logs", "-f", &name, "-n", &ns, "-c", &container, "--tail", "2",
    ]);
    let out = read_until(&mut f, Duration::from_secs(15), |o| o.contains("line 24 "));
    let _ = f.kill();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.len() >= 6, "{out}");
    assert!(
        lines[0].contains("line 19 ") && lines[1].contains("line 20 "),
        "--tail 2 then new lines: {out}"
    );
    assert!(out.contains("line 24 "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_requests() {
    let s = sim().await;
    let v: Value = serde_json::from_str(&s.ok(&["get", "--raw", "/version"])).unwrap();
    assert_eq!(v["minor"], "32");
    let v: Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/api/v1/namespaces?limit=2"])).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);
    assert!(v["metadata"]["continue"].is_string());
    let out = s.kubectl(&["get", "--raw", "/api/v1/namespaces/default/pods/nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("NotFound"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_bearer_token() {
    let s = start(
        ClusterConfig::default(),
        SeedSpec::default(),
        true,
        Some("s3cret"),
    )
    .await;
    assert!(s.url.starts_with("https://"));
    let out = s.ok(&["get", "ns"]);
    assert!(out.contains("kube-system"), "{out}");
    let wrong = s.kubectl(&["--token", "wrong", "get", "ns"]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("Unauthorized") || err.contains("must be logged in"),
        "{err}"
    );
}

/// The simulator has no RBAC: `kubectl auth can-i` says yes to everything (as to a cluster
/// admin), and the review objects are answered, never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_is_answered() {
    let s = sim().await;
    assert_eq!(
        s.ok(&["auth", "can-i", "delete", "pods", "-n", "default"])
            .trim(),
        "yes"
    );
    assert_eq!(
        s.ok(&["auth", "can-i", "create", "pods/exec"]).trim(),
        "yes"
    );
    let list = s.ok(&["auth", "can-i", "--list", "-n", "default"]);
    assert!(list.contains("*.*"), "{list}");
    let out = s.kubectl(&[
        "get",
        "--raw",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
    ]);
    assert!(!out.status.success(), "reviews cannot be listed");
}
