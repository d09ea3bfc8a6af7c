//! A new user's everyday kubectl through the hub and the tunnel to a simulated edge cluster:
//! imperative `create` (protobuf bodies), `explain`, `describe` with events, rollouts,
//! `auth can-i` (answered by the hub from its grants), `diff`, server-side dry runs and cascading
//! deletes. Each command must print what it prints against a real cluster, and what it changes
//! must be what the edge holds afterwards.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use kubehub_testkit::stack as common;

use std::time::{Duration, Instant};

use kubehub_hub::config::Limits;
use kubehub_sim::ClusterConfig;
use serde_json::Value;

fn stack() -> common::Stack {
    common::start(ClusterConfig::default(), Limits::default())
}

/// The edge's copy of an object (not the hub's cache), as JSON.
fn edge(
    s: &common::Stack,
    group: &str,
    version: &str,
    resource: &str,
    name: &str,
) -> Option<Value> {
    let ty = s.cluster.type_index(group, version, resource).unwrap();
    s.cluster
        .get(ty, Some("default"), name)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

/// Names in `default` of one resource at the edge.
fn edge_names(s: &common::Stack, group: &str, version: &str, resource: &str) -> Vec<String> {
    let ty = s.cluster.type_index(group, version, resource).unwrap();
    s.cluster
        .keys(ty)
        .into_iter()
        .filter(|(ns, _)| ns == "default")
        .map(|(_, n)| n)
        .collect()
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn owned_by(v: &Value, uid: &Value) -> bool {
    v["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|o| o.iter().any(|r| &r["uid"] == uid))
}

/// `kubectl create` of the everyday kinds: kubectl sends these bodies as protobuf, the hub
/// carries them unchanged, and the edge stores what was asked for.
#[test]
fn create_configmap_secret_namespace_deployment_and_service() {
    let s = stack();
    let cases: [(&[&str], &str); 5] = [
        (
            &["create", "configmap", "c1", "--from-literal=a=b"],
            "configmap/c1 created",
        ),
        (
            &["create", "secret", "generic", "s1", "--from-literal=k=v"],
            "secret/s1 created",
        ),
        (&["create", "namespace", "n1"], "namespace/n1 created"),
        (
            &[
                "create",
                "deployment",
                "d1",
                "--image=nginx",
                "--replicas=2",
            ],
            "deployment.apps/d1 created",
        ),
        (
            &["create", "service", "clusterip", "svc1", "--tcp=80:8080"],
            "service/svc1 created",
        ),
    ];
    for (args, want) in cases {
        assert_eq!(s.ok(args).trim(), want, "{args:?}");
    }
    assert_eq!(
        edge(&s, "", "v1", "configmaps", "c1").unwrap()["data"]["a"],
        "b"
    );
    // "v" base64-encoded.
    assert_eq!(
        edge(&s, "", "v1", "secrets", "s1").unwrap()["data"]["k"],
        "dg=="
    );
    let ty = s.cluster.type_index("", "v1", "namespaces").unwrap();
    assert!(s.cluster.get(ty, None, "n1").is_ok());
    let svc = edge(&s, "", "v1", "services", "svc1").unwrap();
    assert_eq!(svc["spec"]["ports"][0]["port"], 80);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["selector"]["app"], "svc1");
    // The deployment got its replica set and pods at the edge, and the hub shows them.
    eventually("d1's pods running", || {
        s.ok(&["get", "deployment", "d1"]).contains("2/2")
    });
    let pods = s.ok(&["get", "pods", "-l", "app=d1", "--no-headers"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
    assert!(pods.lines().all(|l| l.contains("Running")), "{pods}");
    // A second create is kube-apiserver's AlreadyExists.
    let o = s.kubectl(&["create", "configmap", "c1", "--from-literal=a=c"]);
    assert!(!o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stderr).trim(),
        "error: failed to create configmap: configmaps \"c1\" already exists"
    );
}

/// `explain` reads the edge's OpenAPI v3 documents through the hub.
#[test]
fn explain_through_the_hub() {
    let s = stack();
    let out = s.ok(&["explain", "pods.spec"]);
    let head: Vec<&str> = out.lines().take(4).collect();
    assert_eq!(
        head[0].split_whitespace().collect::<Vec<_>>(),
        ["KIND:", "Pod"]
    );
    assert_eq!(
        head[1].split_whitespace().collect::<Vec<_>>(),
        ["VERSION:", "v1"]
    );
    assert_eq!(
        head[3].split_whitespace().collect::<Vec<_>>(),
        ["FIELD:", "spec", "<PodSpec>"]
    );
    assert!(
        out.contains("containers\t<[]Container> -required-"),
        "{out}"
    );
    let out = s.ok(&["explain", "deployment.spec.replicas"]);
    assert!(out.contains("GROUP:      apps"), "{out}");
    assert!(out.contains("FIELD: replicas <integer>"), "{out}");
}

/// `describe pod` shows the lifecycle events the edge's controllers wrote; `get events` lists
/// them; `describe deployment` shows the scaling.
#[test]
fn describe_shows_events_through_the_hub() {
    let s = stack();
    s.ok(&["create", "deployment", "web", "--image=nginx:1.27"]);
    eventually("web's pod", || {
        !s.ok(&["get", "pods", "-l", "app=web", "-o", "name"])
            .trim()
            .is_empty()
    });
    let pod = s.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
    let pod = pod.trim().trim_start_matches("pod/").to_owned();
    let mut out = String::new();
    eventually("the pod's Started event in describe", || {
        out = s.ok(&["describe", "pod", &pod]);
        out.contains("Started")
    });
    let events = &out[out.find("Events:").expect("an Events section")..];
    for (reason, message) in [
        (
            "Scheduled",
            format!("Successfully assigned default/{pod} to "),
        ),
        ("Pulling", "Pulling image \"nginx:1.27\"".to_owned()),
        (
            "Pulled",
            "Successfully pulled image \"nginx:1.27\"".to_owned(),
        ),
        ("Created", "Created container: nginx".to_owned()),
        ("Started", "Started container nginx".to_owned()),
    ] {
        let line = events
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} event in\n{events}"));
        assert!(line.contains(&message), "{line}");
    }
    let out = s.ok(&["describe", "deployment", "web"]);
    assert!(out.contains("ScalingReplicaSet"), "{out}");
    assert!(out.contains("Scaled up replica set web-"), "{out}");
    let all = s.ok(&["get", "events", "-A"]);
    assert!(
        all.lines()
            .any(|l| l.contains("Started") && l.contains(&format!("pod/{pod}"))),
        "{all}"
    );
    // events.k8s.io/v1 carries the same events.
    let v: Value = serde_json::from_str(&s.ok(&[
        "get",
        "events.v1.events.k8s.io",
        "-n",
        "default",
        "-o",
        "json",
    ]))
    .unwrap();
    assert!(
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Started" && e["regarding"]["name"] == pod.as_str()),
        "{v}"
    );
}

/// A rollout through the hub: status waits for it, history lists the revisions, undo goes back.
#[test]
fn rollout_status_history_and_undo() {
    let s = stack();
    s.ok(&[
        "create",
        "deployment",
        "d1",
        "--image=nginx:1.26",
        "--replicas=2",
    ]);
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(
        out.contains("deployment \"d1\" successfully rolled out"),
        "{out}"
    );
    s.ok(&["set", "image", "deployment/d1", "nginx=nginx:1.27"]);
    let out = s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    assert!(
        out.contains("deployment \"d1\" successfully rolled out"),
        "{out}"
    );
    let history = s.ok(&["rollout", "history", "deployment/d1"]);
    let revisions: Vec<&str> = history
        .lines()
        .skip_while(|l| !l.starts_with("REVISION"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(revisions, ["1", "2"], "{history}");
    let out = s.ok(&["rollout", "undo", "deployment/d1"]);
    assert_eq!(out.trim(), "deployment.apps/d1 rolled back");
    s.ok(&["rollout", "status", "deployment/d1", "--timeout=60s"]);
    let d = edge(&s, "apps", "v1", "deployments", "d1").unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );
    // Two replica sets, the old one (now revision 3) scaled back up, the other to zero.
    let uid = d["metadata"]["uid"].clone();
    let rss: Vec<Value> = edge_names(&s, "apps", "v1", "replicasets")
        .iter()
        .map(|n| edge(&s, "apps", "v1", "replicasets", n).unwrap())
        .filter(|rs| owned_by(rs, &uid))
        .collect();
    assert_eq!(rss.len(), 2);
    let mut replicas: Vec<(String, u64)> = rss
        .iter()
        .map(|rs| {
            (
                rs["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                rs["spec"]["replicas"].as_u64().unwrap(),
            )
        })
        .collect();
    replicas.sort();
    assert_eq!(
        replicas,
        [("nginx:1.26".to_owned(), 2), ("nginx:1.27".to_owned(), 0)]
    );
    let history = s.ok(&["rollout", "history", "deployment/d1"]);
    assert!(history.lines().any(|l| l.starts_with('3')), "{history}");
}

/// `auth can-i` through the hub is answered by the hub from the user's grants.
#[test]
fn auth_can_i_through_the_hub() {
    let s = stack();
    assert_eq!(s.ok(&["auth", "can-i", "list", "pods"]).trim(), "yes");
    assert_eq!(
        s.ok(&["auth", "can-i", "create", "deployments.apps"])
            .trim(),
        "yes"
    );
}

/// `diff` and server-side dry runs change nothing at the edge.
#[test]
fn diff_and_server_dry_run_change_nothing() {
    let s = stack();
    let file = s.path().join("cm.yaml");
    let write = |v: &str| {
        std::fs::write(
            &file,
            format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: dry\n  namespace: default\ndata:\n  v: \"{v}\"\n"),
        )
        .unwrap()
    };
    let f = file.to_str().unwrap();
    write("1");
    assert_eq!(
        s.ok(&["apply", "--dry-run=server", "-f", f]).trim(),
        "configmap/dry created (server dry run)"
    );
    assert!(edge(&s, "", "v1", "configmaps", "dry").is_none());
    // diff of an object that is not there: the whole object is new, exit code 1.
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("+  v: \"1\""),
        "{o:?}"
    );
    s.ok(&["apply", "-f", f]);
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    write("2");
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("-  v: \"1\"") && out.contains("+  v: \"2\""),
        "{out}"
    );
    assert_eq!(
        s.ok(&["apply", "--dry-run=server", "-f", f]).trim(),
        "configmap/dry configured (server dry run)"
    );
    assert_eq!(
        edge(&s, "", "v1", "configmaps", "dry").unwrap()["data"]["v"],
        "1"
    );
}

/// `delete deployment` cascades at the edge: its replica sets and pods go too; with
/// `--cascade=orphan` they stay, their owner reference removed.
#[test]
fn delete_deployment_cascades() {
    let s = stack();
    for name in ["gone", "orphans"] {
        s.ok(&[
            "create",
            "deployment",
            name,
            "--image=nginx",
            "--replicas=2",
        ]);
        s.ok(&[
            "rollout",
            "status",
            &format!("deployment/{name}"),
            "--timeout=60s",
        ]);
    }
    let uid = |name: &str| {
        edge(&s, "apps", "v1", "deployments", name).unwrap()["metadata"]["uid"].clone()
    };
    let (gone, orphans) = (uid("gone"), uid("orphans"));
    let rs_of = |owner: &Value| -> Vec<String> {
        edge_names(&s, "apps", "v1", "replicasets")
            .into_iter()
            .filter(|n| {
                edge(&s, "apps", "v1", "replicasets", n).is_some_and(|rs| owned_by(&rs, owner))
            })
            .collect()
    };
    let gone_rs = rs_of(&gone);
    assert_eq!(gone_rs.len(), 1);
    let orphan_rs = rs_of(&orphans);
    assert_eq!(orphan_rs.len(), 1);

    assert_eq!(
        s.ok(&["delete", "deployment", "gone"]).trim(),
        "deployment.apps \"gone\" deleted"
    );
    eventually("gone's replica set and pods deleted", || {
        edge(&s, "apps", "v1", "replicasets", &gone_rs[0]).is_none()
            && !edge_names(&s, "", "v1", "pods")
                .iter()
                .any(|p| p.starts_with("gone-"))
    });
    eventually("the hub's cache to drop gone's pods", || {
        s.ok(&["get", "pods", "-l", "app=gone", "-o", "name"])
            .trim()
            .is_empty()
    });

    s.ok(&["delete", "deployment", "orphans", "--cascade=orphan"]);
    eventually("orphans deleted", || {
        edge(&s, "apps", "v1", "deployments", "orphans").is_none()
    });
    let rs = edge(&s, "apps", "v1", "replicasets", &orphan_rs[0])
        .expect("the orphaned replica set stays");
    assert!(!owned_by(&rs, &orphans), "{rs}");
    let pods = s.ok(&["get", "pods", "-l", "app=orphans", "--no-headers"]);
    assert_eq!(pods.lines().count(), 2, "{pods}");
}

/// A client that accepts protobuf only gets the edge's protobuf, byte for byte: the hub's
/// cache answers in JSON, so such reads are forwarded and carried unchanged.
#[test]
fn protobuf_answers_are_carried_unchanged() {
    let s = stack();
    s.ok(&["create", "configmap", "pb", "--from-literal=a=b"]);
    let accept = "Accept: application/vnd.kubernetes.protobuf";
    let protobuf = |r: &common::Reply| {
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("content-type"),
            Some("application/vnd.kubernetes.protobuf")
        );
        // The Kubernetes protobuf envelope's magic number.
        assert_eq!(r.body[..4], *b"k8s\0");
    };
    let path = "/api/v1/namespaces/default/configmaps/pb";
    let via_hub = s.hub_get(path, &[accept]);
    protobuf(&via_hub);
    assert_eq!(via_hub.body, s.sim_get(path, &[accept]).body);
    // A list (its resourceVersion may move between two requests, so not compared).
    let list = s.hub_get(
        "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dpb",
        &[accept],
    );
    protobuf(&list);
    assert!(
        list.body.windows(4).any(|w| w == b"\x0a\x02pb"),
        "ObjectMeta.name (field 1) = pb"
    );
}
