//! The simulator as the real kubectl (/usr/bin/kubectl) sees it for everyday work: `explain`
//! (OpenAPI v3 with the Kubernetes schemas), field validation (`--validate`, i.e.
//! `fieldValidation`) and server-side dry runs (`--dry-run=server`, `kubectl diff`).

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use common::start;
use kubehub_sim::{ClusterConfig, SeedSpec};
use serde_json::Value;

async fn sim() -> common::Sim {
    start(ClusterConfig::default(), SeedSpec::default(), false, None).await
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stored(s: &common::Sim, group: &str, resource: &str, name: &str) -> Option<Value> {
    let ty = s.cluster.type_index(group, "v1", resource).unwrap();
    s.cluster
        .get(ty, Some("default"), name)
        .ok()
        .map(|b| serde_json::from_slice(&b).unwrap())
}

fn deployment(replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: shop\n  namespace: default\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: shop\n  template:\n    metadata:\n      labels:\n        app: shop\n    spec:\n      containers:\n      - name: shop\n        image: {image}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_prints_the_schemas_field_docs() {
    let s = sim().await;
    let pods = s.ok(&["explain", "pods"]);
    assert!(pods.contains("KIND:       Pod"), "{pods}");
    assert!(pods.contains("VERSION:    v1"), "{pods}");
    assert!(
        pods.contains("Pod is a collection of containers that can run on a host"),
        "{pods}"
    );
    assert!(pods.contains("spec\t<PodSpec>"), "{pods}");

    let spec = s.ok(&["explain", "pods.spec"]);
    assert!(spec.contains("FIELD: spec <PodSpec>"), "{spec}");
    assert!(
        spec.contains("containers\t<[]Container> -required-"),
        "{spec}"
    );
    assert!(
        spec.contains("List of containers belonging to the pod."),
        "{spec}"
    );

    let replicas = s.ok(&["explain", "deployment.spec.replicas"]);
    assert!(replicas.contains("GROUP:      apps"), "{replicas}");
    assert!(replicas.contains("FIELD: replicas <integer>"), "{replicas}");
    assert!(replicas.contains("Number of desired pods."), "{replicas}");

    let recursive = s.ok(&[
        "explain",
        "deployment.spec.template.spec.containers",
        "--recursive",
    ]);
    assert!(recursive.contains("livenessProbe\t<Probe>"), "{recursive}");
    // A field that is not there, as kubectl says it.
    let o = s.kubectl(&["explain", "pods.spec.nope"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("field \"nope\" does not exist"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_validates_fields_strictly_or_warns() {
    let s = sim().await;
    let file = s.path().join("pod.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: typo\n  namespace: default\nspec:\n  foo: 1\n  containers:\n  - name: c\n    image: nginx\n    imagePullPolicyy: Always\n",
    )
    .unwrap();
    // kubectl's default is --validate=strict: fieldValidation=Strict.
    let o = s.kubectl(&["apply", "-f", f]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(
            r#"Error from server (BadRequest): error when creating "#
        ) && stderr(&o).contains(
            r#"Pod in version "v1" cannot be handled as a Pod: strict decoding error: unknown field "spec.containers[0].imagePullPolicyy", unknown field "spec.foo""#
        ),
        "{}",
        stderr(&o)
    );
    assert!(stored(&s, "", "pods", "typo").is_none());

    // --validate=warn: stored without the unknown fields, one warning each.
    let o = s.kubectl(&["apply", "--validate=warn", "-f", f]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("pod/typo created"), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(
        err.contains(r#"Warning: unknown field "spec.foo""#)
            && err.contains(r#"Warning: unknown field "spec.containers[0].imagePullPolicyy""#),
        "{err}"
    );
    let pod = stored(&s, "", "pods", "typo").unwrap();
    assert!(pod["spec"].get("foo").is_none());
    assert!(pod["spec"]["containers"][0]
        .get("imagePullPolicyy")
        .is_none());
    assert_eq!(pod["spec"]["containers"][0]["image"], "nginx");

    // Applied again strictly: the patch carries the unknown fields and is refused.
    let o = s.kubectl(&["apply", "-f", f]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"error when patching"#)
            && stderr(&o).contains(r#"strict decoding error: unknown field "spec.containers[0].imagePullPolicyy", unknown field "spec.foo""#),
        "{}",
        stderr(&o)
    );

    // --validate=false: dropped silently.
    let cm = s.path().join("cm.yaml");
    std::fs::write(
        &cm,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: quiet\n  namespace: default\ndata:\n  a: b\nextra: 1\n",
    )
    .unwrap();
    let o = s.kubectl(&["create", "--validate=false", "-f", cm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Warning"), "{}", stderr(&o));
    let stored_cm = stored(&s, "", "configmaps", "quiet").unwrap();
    assert!(stored_cm.get("extra").is_none());
    assert_eq!(stored_cm["data"]["a"], "b");

    // A manifest without unknown fields is untouched by validation.
    let d = s.path().join("d.yaml");
    std::fs::write(&d, deployment(2, "shop:1")).unwrap();
    let o = s.kubectl(&["apply", "-f", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("Warning"), "{}", stderr(&o));

    // kubectl patch sends no fieldValidation: kube-apiserver's default, Warn, for every patch type.
    for (ty, patch) in [
        (
            "json",
            r#"[{"op":"add","path":"/spec/foo","value":1},{"op":"replace","path":"/spec/replicas","value":3}]"#,
        ),
        ("merge", r#"{"spec":{"foo":1,"replicas":4}}"#),
        ("strategic", r#"{"spec":{"foo":1,"replicas":5}}"#),
    ] {
        let o = s.kubectl(&[
            "patch",
            "deployment",
            "shop",
            "-n",
            "default",
            "--type",
            ty,
            "-p",
            patch,
        ]);
        assert!(o.status.success(), "{ty}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(r#"Warning: unknown field "spec.foo""#),
            "{ty}: {}",
            stderr(&o)
        );
        let dep = stored(&s, "apps", "deployments", "shop").unwrap();
        assert!(dep["spec"].get("foo").is_none(), "{ty}");
    }
    assert_eq!(
        stored(&s, "apps", "deployments", "shop").unwrap()["spec"]["replicas"],
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_dry_runs_and_diff_change_nothing() {
    let s = sim().await;
    let file = s.path().join("shop.yaml");
    let f = file.to_str().unwrap();
    std::fs::write(&file, deployment(2, "shop:1")).unwrap();

    // A dry-run create stores nothing.
    let out = s.ok(&["apply", "--dry-run=server", "-f", f]);
    assert!(
        out.contains("deployment.apps/shop created (server dry run)"),
        "{out}"
    );
    assert!(stored(&s, "apps", "deployments", "shop").is_none());
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("+  replicas: 2"), "{}", stdout(&o));
    assert!(stored(&s, "apps", "deployments", "shop").is_none());
    let created: Value =
        serde_json::from_str(&s.ok(&["create", "--dry-run=server", "-f", f, "-o", "json"]))
            .unwrap();
    assert_eq!(created["metadata"]["name"], "shop");
    assert!(created["metadata"]["uid"].is_string());
    assert!(created["metadata"].get("resourceVersion").is_none());
    assert!(stored(&s, "apps", "deployments", "shop").is_none());

    s.ok(&["apply", "-f", f]);
    let before = stored(&s, "apps", "deployments", "shop").unwrap();
    let rv = s.cluster.resource_version();

    // Unchanged: no difference.
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));

    std::fs::write(&file, deployment(3, "shop:2")).unwrap();
    let out = s.ok(&["apply", "--dry-run=server", "-f", f]);
    assert!(
        out.contains("deployment.apps/shop configured (server dry run)"),
        "{out}"
    );
    let o = s.kubectl(&["diff", "-f", f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let diff = stdout(&o);
    assert!(
        diff.contains("-  replicas: 2") && diff.contains("+  replicas: 3"),
        "{diff}"
    );
    assert!(diff.contains("+      - image: shop:2"), "{diff}");
    // A dry run writes nothing: the resourceVersion is the live one.
    assert!(!diff.contains("+  resourceVersion"), "{diff}");
    let o = s.kubectl(&["delete", "--dry-run=server", "-f", f]);
    assert!(stdout(&o).contains("(server dry run)"), "{}", stderr(&o));

    assert_eq!(stored(&s, "apps", "deployments", "shop").unwrap(), before);
    assert_eq!(s.cluster.resource_version(), rv);

    // An unknown dryRun value is refused as kube-apiserver refuses it.
    let cm = s.path().join("cm.json");
    std::fs::write(
        &cm,
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
    )
    .unwrap();
    let o = s.kubectl(&[
        "create",
        "--raw",
        "/api/v1/namespaces/default/configmaps?dryRun=Some",
        "-f",
        cm.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(r#"dryRun: Unsupported value: []string{\"Some\"}"#)
            || stderr(&o).contains(r#"dryRun: Unsupported value: []string{"Some"}"#),
        "{}",
        stderr(&o)
    );
    assert!(stored(&s, "", "configmaps", "x").is_none());
}
