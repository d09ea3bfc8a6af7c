//! kubectl through the hub and the tunnel to a simulated edge cluster: the user's view.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use kubehub_testkit::stack as common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use kubehub_testkit::read_until;

use kubehub_hub::config::Limits;
use kubehub_sim::ClusterConfig;
use serde_json::Value;

fn stack() -> common::Stack {
    common::start(
        ClusterConfig {
            log_interval: Duration::from_millis(100),
            ..ClusterConfig::default()
        },
        Limits::default(),
    )
}

fn pods(s: &common::Stack) -> Vec<(String, String)> {
    let ty = s.cluster.type_index("", "v1", "pods").unwrap();
    s.cluster.keys(ty)
}

#[test]
fn get_list_yaml_and_raw() {
    let s = stack();
    let out = s.ok(&["get", "pods", "-A"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert_eq!(out.lines().count(), pods(&s).len() + 1, "{out}");
    let (ns, name) = pods(&s)[0].clone();
    let y = s.ok(&["get", "pod", &name, "-n", &ns, "-o", "yaml"]);
    assert!(
        y.contains("kind: Pod") && y.contains(&format!("name: {name}")),
        "{y}"
    );
    // `--raw` paths are server-relative: they carry the cluster prefix themselves.
    let v: Value =
        serde_json::from_str(&s.ok(&["get", "--raw", "/clusters/edge-1/version"])).unwrap();
    assert_eq!(v["minor"], "32");
    let raw = s.kubectl(&[
        "get",
        "--raw",
        "/clusters/edge-1/api/v1/namespaces/default/pods/nope",
    ]);
    assert!(!raw.status.success());
    assert!(String::from_utf8_lossy(&raw.stderr).contains("NotFound"));
    // Label selectors pass through.
    let ty = s.cluster.type_index("", "v1", "pods").unwrap();
    let pod: Value = serde_json::from_slice(&s.cluster.get(ty, Some(&ns), &name).unwrap()).unwrap();
    let app = pod["metadata"]["labels"]["app"].as_str().unwrap();
    let out = s.ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        &format!("app={app}"),
        "--no-headers",
    ]);
    assert!(
        out.lines().count() >= 1 && out.lines().all(|l| l.contains(app)),
        "{out}"
    );
}

#[test]
fn apply_create_update_and_delete() {
    let s = stack();
    let manifest = |image: &str| {
        format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  image: {image}\n")
    };
    let file = s.path().join("cm.yaml");
    std::fs::write(&file, manifest("v1")).unwrap();
    let f = file.to_str().unwrap();
    assert!(s
        .ok(&["apply", "-f", f])
        .contains("configmap/settings created"));
    std::fs::write(&file, manifest("v2")).unwrap();
    assert!(s
        .ok(&["apply", "-f", f])
        .contains("configmap/settings configured"));
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    let cm: Value =
        serde_json::from_slice(&s.cluster.get(ty, Some("default"), "settings").unwrap()).unwrap();
    assert_eq!(cm["data"]["image"], "v2");
    assert!(s
        .ok(&["delete", "configmap", "settings"])
        .contains("deleted"));
    assert!(s.cluster.get(ty, Some("default"), "settings").is_err());
}

/// Server-side apply through the hub, as a GitOps tool uses it: create, update, another
/// manager's conflict (kube-apiserver's message), and forcing it.
#[test]
fn server_side_apply_with_a_conflict_through_the_hub() {
    let s = stack();
    let file = s.path().join("ssa.yaml");
    let write = |v: &str| {
        std::fs::write(
            &file,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\n  namespace: default\ndata:\n  v: \"{v}\"\n"),
        )
        .unwrap()
    };
    let f = file.to_str().unwrap();
    write("1");
    assert!(s
        .ok(&["apply", "--server-side", "-f", f])
        .contains("configmap/ssa serverside-applied"));
    write("2");
    s.ok(&["apply", "--server-side", "-f", f]);
    write("3");
    let out = s.kubectl(&["apply", "--server-side", "--field-manager=flux", "-f", f]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"kubectl\" using v1: .data.v"),
        "{err}"
    );
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=flux",
        "--force-conflicts",
        "-f",
        f,
    ]);
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    let cm: Value =
        serde_json::from_slice(&s.cluster.get(ty, Some("default"), "ssa").unwrap()).unwrap();
    assert_eq!(cm["data"]["v"], "3");
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "flux");
}

#[test]
fn watch_sees_a_change_made_by_another_client() {
    let s = stack();
    let mut w = s
        .kubectl_cmd(&["get", "configmaps", "-n", "default", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    s.cluster
        .create(ty, Some("default"), serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "seen-through-hub"}}), false)
        .unwrap();
    let out = read_until(&mut w, Duration::from_secs(15), |o| {
        o.contains("seen-through-hub")
    });
    let _ = w.kill();
    assert!(out.contains("seen-through-hub"), "watch output: {out}");
}

#[test]
fn logs_follow_through_the_tunnel() {
    let s = stack();
    let (ns, name) = pods(&s)[0].clone();
    let ty = s.cluster.type_index("", "v1", "pods").unwrap();
    let pod: Value = serde_json::from_slice(&s.cluster.get(ty, Some(&ns), &name).unwrap()).unwrap();
    let c = pod["spec"]["containers"][0]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut f = s
        .kubectl_cmd(&["logs", "-f", &name, "-n", &ns, "-c", &c, "--tail", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = read_until(&mut f, Duration::from_secs(15), |o| o.contains("line 25 "));
    let _ = f.kill();
    assert!(
        out.lines().next().unwrap_or("").contains("line 20 "),
        "{out}"
    );
    assert!(out.contains("line 25 "), "{out}");
}

#[test]
fn agent_loss_ends_watches_and_gives_503_until_it_returns() {
    let mut s = stack();
    let mut w = s
        .kubectl_cmd(&["get", "pods", "-A", "-w"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = read_until(&mut w, Duration::from_secs(10), |o| o.contains("Running"));
    s.stop_agent();
    // The watch ends (kubectl exits) once the tunnel is gone.
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(st) = w.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = w.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        status.is_some(),
        "kubectl -w did not end after the agent left"
    );
    s.wait_connected(false, Duration::from_secs(5));
    // 503 with a Status and Retry-After (kubectl would retry it for ~10 s; curl shows it).
    // Secrets are not cached (cached types are served stale for a while instead: see
    // tests/cache.rs).
    let out = s.curl("/clusters/edge-1/api/v1/secrets");
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("Retry-After: 1"), "{out}");
    assert!(
        out.contains(r#""reason":"ServiceUnavailable""#) && out.contains("offline"),
        "{out}"
    );
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    assert!(s.ok(&["get", "pods", "-A"]).contains("Running"));
}

/// alice may do anything but delete: her grant lists every verb but the deletes.
#[test]
fn a_denied_request_is_a_kube_apiserver_forbidden_and_never_reaches_the_cluster() {
    use common::{default_access, grant, rule, StackOptions, CLUSTER, TENANT, USER};
    let mut access: Vec<_> = default_access()
        .into_iter()
        .filter(|r| !matches!(r, kubehub_access::Record::Grant(_)))
        .collect();
    let verbs = ["get", "list", "watch", "create", "update", "patch"];
    access.push(grant(
        "no-deletes",
        TENANT,
        USER,
        &[CLUSTER],
        vec![rule(&["*"], &["*"], &verbs, &[], &[])],
    ));
    let s = common::start_opts(StackOptions {
        access: Some(access),
        ..StackOptions::default()
    });
    let out = s.kubectl(&[
        "delete",
        "configmap",
        "-n",
        "kube-system",
        "kube-root-ca.crt",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "Error from server (Forbidden): configmaps \"kube-root-ca.crt\" is forbidden: User \"alice\" cannot delete resource \"configmaps\" in API group \"\" in the namespace \"kube-system\": no rule of your grants on this cluster allows this request"
        ),
        "{err}"
    );
    // Nothing reached the edge: the object is still there, and what is allowed still works.
    assert!(s
        .ok(&["get", "configmap", "-n", "kube-system"])
        .contains("kube-root-ca.crt"));
}

#[test]
fn the_agent_reports_the_edge_clusters_resource_types() {
    let s = stack();
    let deadline = Instant::now() + Duration::from_secs(10);
    let reported = loop {
        if let Some(t) = s.hub.registry.types(common::CLUSTER) {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no discovery report from the agent"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Exactly what the edge API server serves (the simulator's discovery), in its order,
    // subresources included; marked cached where the agent can list-watch them.
    let served = kubehub_kapi::resources::builtin();
    assert_eq!(reported.types.len(), served.len());
    for (got, want) in reported.types.iter().zip(served) {
        assert_eq!(
            (&got.group, &got.version, &got.resource, &got.kind),
            (&want.group, &want.version, &want.resource, &want.kind)
        );
        assert_eq!((got.namespaced, got.verbs), (want.namespaced, want.verbs));
        assert_eq!(got.short_names, want.short_names);
        assert_eq!(got.cached, want.cached, "{}", got.resource);
    }
    let pods = reported
        .types
        .iter()
        .find(|t| t.group.is_empty() && t.resource == "pods")
        .unwrap();
    assert!(pods.namespaced && pods.short_names == ["po"]);
    // SREs see it on the admin listener.
    let admin = s.curl_admin("/clusters");
    assert!(admin.starts_with("HTTP/1.1 200"), "{admin}");
    let body: Value = serde_json::from_str(admin.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["clusters"][0]["cluster"], common::CLUSTER);
    assert_eq!(body["clusters"][0]["agent"], "agent-test");
    let types: Vec<&str> = body["clusters"][0]["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        types.contains(&"v1/pods") && types.contains(&"apps/v1/deployments"),
        "{types:?}"
    );
    assert!(types.contains(&"v1/pods/log"), "{types:?}");
}
