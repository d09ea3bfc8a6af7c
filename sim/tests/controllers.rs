//! The simulated controllers driven by the real kubectl (/usr/bin/kubectl), as a person uses a
//! cluster every day: Deployments get ReplicaSets and running pods, scale, roll out, show their
//! history and roll back; deletion cascades; pods and Deployments have events; `auth can-i`.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::time::{Duration, Instant};

use common::start;
use kubehub_sim::{ClusterConfig, SeedSpec};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(30);

async fn sim() -> common::Sim {
    start(ClusterConfig::default(), SeedSpec::default(), false, None).await
}

/// Applies a Deployment `name` (label `app: name`, one container `web`).
fn apply_deployment(s: &common::Sim, name: &str, image: &str, replicas: u32) {
    let yaml = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n"
    );
    let file = s.path().join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = s.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains(&format!("deployment.apps/{name}")), "{out}");
}

fn get_json(s: &common::Sim, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&s.ok(&all)).unwrap()
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

/// The pods labelled `app=<app>` in `default`.
fn pods(s: &common::Sim, app: &str) -> Vec<Value> {
    items(&get_json(
        s,
        &["get", "pods", "-n", "default", "-l", &format!("app={app}")],
    ))
}

fn replica_sets(s: &common::Sim, app: &str) -> Vec<Value> {
    items(&get_json(
        s,
        &["get", "rs", "-n", "default", "-l", &format!("app={app}")],
    ))
}

/// Polls `cond` until it holds, failing after [`PATIENCE`].
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running"
}

fn names(v: &[Value]) -> Vec<String> {
    let mut n: Vec<String> = v
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    n.sort();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_gets_a_replica_set_and_running_pods_and_scales() {
    let s = sim().await;
    apply_deployment(&s, "d1", "nginx:1.26", 2);
    eventually("two running pods", || {
        let p = pods(&s, "d1");
        p.len() == 2 && p.iter().all(running)
    });
    let d = get_json(&s, &["get", "deployment", "d1"]);
    let rss = replica_sets(&s, "d1");
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert_eq!(rs["metadata"]["name"], format!("d1-{hash}"));
    assert_eq!(
        rs["spec"]["selector"]["matchLabels"]["pod-template-hash"],
        hash
    );
    let owner = &rs["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "Deployment");
    assert_eq!(owner["uid"], d["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    let ann = &rs["metadata"]["annotations"];
    assert_eq!(ann["deployment.kubernetes.io/revision"], "1");
    assert_eq!(ann["deployment.kubernetes.io/desired-replicas"], "2");
    assert_eq!(ann["deployment.kubernetes.io/max-replicas"], "3");
    for p in pods(&s, "d1") {
        let o = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (o["kind"].as_str(), &o["uid"]),
            (Some("ReplicaSet"), &rs["metadata"]["uid"])
        );
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
    }
    let out = s.ok(&["get", "deploy", "d1"]);
    assert!(out.contains("2/2"), "{out}");
    let out = s.ok(&["get", "rs"]);
    assert!(out.contains(&format!("d1-{hash}")), "{out}");

    assert!(s
        .ok(&["scale", "deployment", "d1", "--replicas=4"])
        .contains("scaled"));
    eventually("four running pods", || {
        let p = pods(&s, "d1");
        p.len() == 4 && p.iter().all(running)
    });
    let out = s.ok(&["get", "deploy", "d1"]);
    assert!(out.contains("4/4"), "{out}");
    s.ok(&["scale", "deployment", "d1", "--replicas=1"]);
    eventually("one pod", || pods(&s, "d1").len() == 1);
    assert_eq!(replica_sets(&s, "d1")[0]["status"]["replicas"], 1);

    // A deleted pod is replaced by its ReplicaSet.
    let before = names(&pods(&s, "d1"));
    s.ok(&["delete", "pod", &before[0]]);
    eventually("a replacement pod", || {
        let p = pods(&s, "d1");
        p.len() == 1 && names(&p) != before && p.iter().all(running)
    });
}

/// `kubectl create deployment` sends a protobuf body: this one depends on the simulator
/// decoding protobuf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_deployment() {
    let s = sim().await;
    let out = s.ok(&["create", "deployment", "d1", "--image=nginx"]);
    assert!(out.contains("deployment.apps/d1 created"), "{out}");
    eventually("a running pod", || {
        let p = pods(&s, "d1");
        p.len() == 1 && p.iter().all(running)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_image_rolls_out_and_undo_rolls_back() {
    let s = sim().await;
    apply_deployment(&s, "d1", "nginx:1.26", 2);
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");

    s.ok(&["set", "image", "deployment/d1", "web=nginx:1.27"]);
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(
        out.contains("deployment \"d1\" successfully rolled out"),
        "{out}"
    );
    s.ok(&[
        "annotate",
        "deployment/d1",
        "kubernetes.io/change-cause=image 1.27",
    ]);
    let image = |p: &Value| {
        p["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    eventually("pods of the new image", || {
        let p = pods(&s, "d1");
        p.len() == 2 && p.iter().all(|p| image(p) == "nginx:1.27")
    });
    // The old ReplicaSet is kept, scaled to 0.
    let rss = replica_sets(&s, "d1");
    assert_eq!(rss.len(), 2, "{rss:?}");
    let rev = |r: &Value| {
        r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let old = rss.iter().find(|r| rev(r) == "1").unwrap();
    assert_eq!(old["spec"]["replicas"], 0);
    let new = rss.iter().find(|r| rev(r) == "2").unwrap();
    assert_eq!(new["spec"]["replicas"], 2);
    let d = get_json(&s, &["get", "deployment", "d1"]);
    assert_eq!(
        d["status"]["observedGeneration"],
        d["metadata"]["generation"]
    );
    assert_eq!(d["status"]["updatedReplicas"], 2);
    assert_eq!(d["status"]["availableReplicas"], 2);
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    let reasons: Vec<&str> = d["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["MinimumReplicasAvailable", "NewReplicaSetAvailable"]
    );

    let history = s.ok(&["rollout", "history", "deployment/d1"]);
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 2, "{history}");
    assert_eq!(rows[0], ["1", "<none>"], "{history}");
    assert_eq!(rows[1], ["2", "image", "1.27"], "{history}");

    let out = s.ok(&["rollout", "undo", "deployment/d1"]);
    assert!(out.contains("rolled back"), "{out}");
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    eventually("pods of the first image", || {
        let p = pods(&s, "d1");
        p.len() == 2 && p.iter().all(|p| image(p) == "nginx:1.26")
    });
    let d = get_json(&s, &["get", "deployment", "d1"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    // The first ReplicaSet is back, as revision 3.
    let rss = replica_sets(&s, "d1");
    assert_eq!(rss.len(), 2, "{rss:?}");
    let back = rss.iter().find(|r| rev(r) == "3").unwrap();
    assert_eq!(back["metadata"]["name"], old["metadata"]["name"]);
    assert_eq!(back["spec"]["replicas"], 2);
    let history = s.ok(&["rollout", "history", "deployment/d1"]);
    assert!(
        history.contains("\n2 ") && history.contains("\n3 "),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_and_deployments_have_events() {
    let s = sim().await;
    apply_deployment(&s, "d1", "nginx:1.26", 1);
    eventually("a pod", || pods(&s, "d1").len() == 1);
    let pod = names(&pods(&s, "d1")).remove(0);
    let out = s.ok(&["describe", "pod", &pod]);
    let events = out.split("Events:").nth(1).unwrap_or("");
    for (reason, from, message) in [
        (
            "Scheduled",
            "default-scheduler",
            format!("Successfully assigned default/{pod} to "),
        ),
        (
            "Pulling",
            "kubelet",
            "Pulling image \"nginx:1.26\"".to_owned(),
        ),
        (
            "Pulled",
            "kubelet",
            "Successfully pulled image \"nginx:1.26\"".to_owned(),
        ),
        ("Created", "kubelet", "Created container".to_owned()),
        ("Started", "kubelet", "Started container web".to_owned()),
    ] {
        let line = events
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} event in\n{out}"));
        assert!(line.contains(from) && line.contains(&message), "{line}");
    }
    let out = s.ok(&["describe", "deployment", "d1"]);
    assert!(out.contains("ScalingReplicaSet"), "{out}");
    assert!(out.contains("Scaled up replica set d1-"), "{out}");
    let out = s.ok(&["describe", "rs", "-l", "app=d1"]);
    assert!(out.contains(&format!("Created pod: {pod}")), "{out}");

    let all = s.ok(&["get", "events", "-A"]);
    let header: Vec<&str> = all.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[..2], ["NAMESPACE", "LAST"], "{all}");
    assert!(
        all.contains(&format!("pod/{pod}")) && all.contains("Started"),
        "{all}"
    );
    // The same events through events.k8s.io/v1.
    let v1 = get_json(&s, &["get", "events.v1.events.k8s.io", "-n", "default"]);
    assert!(
        items(&v1)
            .iter()
            .any(|e| e["reason"] == "Scheduled" && e["regarding"]["name"] == pod.as_str()),
        "{v1}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_bounded_per_namespace() {
    let cfg = ClusterConfig {
        events_per_namespace: 20,
        ..ClusterConfig::default()
    };
    let s = start(cfg, SeedSpec::empty(), false, None).await;
    apply_deployment(&s, "d1", "nginx:1.26", 5);
    eventually("five pods", || pods(&s, "d1").len() == 5);
    let events = s.cluster.type_index("", "v1", "events").unwrap();
    let n = s.cluster.keys(events).len();
    assert_eq!(n, 20, "the newest 20 kept");
    let names = s.cluster.keys(events);
    assert!(names.iter().all(|(ns, _)| ns == "default"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_cascades_as_asked() {
    let s = sim().await;
    // Background (kubectl's default): the ReplicaSets and pods go too.
    apply_deployment(&s, "d1", "nginx:1.26", 2);
    s.ok(&["set", "image", "deployment/d1", "web=nginx:1.27"]);
    eventually("two ReplicaSets", || replica_sets(&s, "d1").len() == 2);
    let out = s.ok(&["delete", "deployment", "d1"]);
    assert!(out.contains("deployment.apps \"d1\" deleted"), "{out}");
    eventually("no ReplicaSets or pods left", || {
        replica_sets(&s, "d1").is_empty() && pods(&s, "d1").is_empty()
    });

    // Orphan: they stay, without the owner reference.
    apply_deployment(&s, "d2", "nginx:1.26", 2);
    eventually("two pods", || pods(&s, "d2").len() == 2);
    s.ok(&["delete", "deployment", "d2", "--cascade=orphan"]);
    let missing = s.kubectl(&["get", "deployment", "d2"]);
    assert!(!missing.status.success());
    let rss = replica_sets(&s, "d2");
    assert_eq!(rss.len(), 1);
    assert!(
        rss[0]["metadata"]["ownerReferences"].is_null(),
        "{:?}",
        rss[0]
    );
    let left = names(&pods(&s, "d2"));
    assert_eq!(left.len(), 2);
    // The orphaned ReplicaSet still keeps its pods.
    s.ok(&["delete", "pod", &left[0]]);
    eventually("a replacement", || {
        let p = names(&pods(&s, "d2"));
        p.len() == 2 && !p.contains(&left[0])
    });
    // Deleting the ReplicaSet now takes its pods.
    let rs = rss[0]["metadata"]["name"].as_str().unwrap();
    s.ok(&["delete", "rs", rs]);
    eventually("no pods left", || pods(&s, "d2").is_empty());

    // Foreground: dependents first, then the owner.
    apply_deployment(&s, "d3", "nginx:1.26", 2);
    eventually("two pods", || pods(&s, "d3").len() == 2);
    s.ok(&["delete", "deployment", "d3", "--cascade=foreground"]);
    assert!(replica_sets(&s, "d3").is_empty() && pods(&s, "d3").is_empty());
    assert!(!s.kubectl(&["get", "deployment", "d3"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_can_i_says_yes() {
    let s = sim().await;
    assert_eq!(s.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    assert_eq!(
        s.ok(&["auth", "can-i", "create", "deployments", "-n", "default"])
            .trim(),
        "yes"
    );
}

/// Seeded Deployments come out of the same controllers: their ReplicaSets and pods are what a
/// Deployment created at run time gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_deployments_are_consistent() {
    let s = sim().await;
    let deps = items(&get_json(&s, &["get", "deployments", "-A"]));
    assert!(!deps.is_empty());
    for d in deps {
        let ns = d["metadata"]["namespace"].as_str().unwrap();
        let app = d["metadata"]["name"].as_str().unwrap();
        let rss = items(&get_json(
            &s,
            &["get", "rs", "-n", ns, "-l", &format!("app={app}")],
        ));
        assert_eq!(rss.len(), 1);
        assert_eq!(
            rss[0]["metadata"]["ownerReferences"][0]["uid"],
            d["metadata"]["uid"]
        );
        let hash = rss[0]["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .unwrap();
        assert_eq!(rss[0]["metadata"]["name"], format!("{app}-{hash}"));
        assert_eq!(d["status"]["availableReplicas"], d["spec"]["replicas"]);
        let p = items(&get_json(
            &s,
            &[
                "get",
                "pods",
                "-n",
                ns,
                "-l",
                &format!("pod-template-hash={hash}"),
            ],
        ));
        assert_eq!(p.len() as u64, d["spec"]["replicas"].as_u64().unwrap());
    }
    // Seeding records no events.
    let events = s.cluster.type_index("", "v1", "events").unwrap();
    assert_eq!(s.cluster.count(events), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_rolls_out_when_resumed() {
    let s = sim().await;
    apply_deployment(&s, "d1", "nginx:1.26", 2);
    s.ok(&["rollout", "pause", "deployment/d1"]);
    s.ok(&["set", "image", "deployment/d1", "web=nginx:1.27"]);
    s.ok(&["scale", "deployment", "d1", "--replicas=3"]);
    eventually("three pods", || pods(&s, "d1").len() == 3);
    assert_eq!(replica_sets(&s, "d1").len(), 1, "nothing rolled out");
    s.ok(&["rollout", "resume", "deployment/d1"]);
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(out.contains("successfully rolled out"), "{out}");
    eventually("three pods of the new image", || {
        let p = pods(&s, "d1");
        p.len() == 3
            && p.iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.27")
    });
    assert_eq!(replica_sets(&s, "d1").len(), 2);
}

/// What kubectl sends to find an object's events, in both APIs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_by_field_selector() {
    let s = sim().await;
    apply_deployment(&s, "d1", "nginx:1.26", 1);
    eventually("a pod", || pods(&s, "d1").len() == 1);
    let pod = &pods(&s, "d1")[0];
    let (name, uid) = (
        pod["metadata"]["name"].as_str().unwrap(),
        pod["metadata"]["uid"].as_str().unwrap(),
    );
    let core = get_json(
        &s,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={name},involvedObject.namespace=default,involvedObject.uid={uid},involvedObject.kind=Pod"),
        ],
    );
    let reasons: Vec<String> = items(&core)
        .iter()
        .map(|e| e["reason"].as_str().unwrap().to_owned())
        .collect();
    for r in ["Scheduled", "Pulling", "Pulled", "Created", "Started"] {
        assert!(reasons.iter().any(|x| x == r), "{reasons:?}");
    }
    let v1 = get_json(
        &s,
        &[
            "get",
            "events.v1.events.k8s.io",
            "--field-selector",
            &format!("regarding.name={name},reason=Started"),
        ],
    );
    assert_eq!(items(&v1).len(), 1, "{v1}");
}

/// DeleteOptions as a query parameter, and the deprecated `orphanDependents`, in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_options_in_the_query_and_orphan_dependents() {
    use http::{Method, Request};
    let c = kubehub_sim::Cluster::new("t", ClusterConfig::default());
    let deps = c.type_index("apps", "v1", "deployments").unwrap();
    let rss = c.type_index("apps", "v1", "replicasets").unwrap();
    for name in ["q", "o", "b"] {
        let d = serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}});
        c.create(deps, Some("default"), d, false).unwrap();
    }
    assert_eq!(c.count(rss), 3);
    let delete = |uri: &str, body: &str| {
        Request::builder()
            .method(Method::DELETE)
            .uri(uri)
            .header("content-type", "application/json")
            .body(bytes::Bytes::from(body.to_owned()))
            .unwrap()
    };
    let base = "/apis/apps/v1/namespaces/default/deployments";
    let r = kubehub_sim::api::handle(
        &c,
        delete(&format!("{base}/q?propagationPolicy=Orphan"), ""),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = kubehub_sim::api::handle(
        &c,
        delete(&format!("{base}/o"), r#"{"orphanDependents":true}"#),
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = kubehub_sim::api::handle(&c, delete(&format!("{base}/b"), "")).await;
    assert_eq!(r.status(), 200);
    let left: Vec<String> = c.keys(rss).into_iter().map(|(_, n)| n).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .all(|n| n.starts_with("q-") || n.starts_with("o-")),
        "{left:?}"
    );
    let r = kubehub_sim::api::handle(
        &c,
        delete(&format!("{base}/x?propagationPolicy=Sideways"), ""),
    )
    .await;
    assert_eq!(r.status(), 422);
}
