//! Server-side apply against the simulator as GitOps tools and people use it: the real
//! `kubectl apply --server-side` (create, update, a conflict with another field manager and
//! `--force-conflicts`), and kube-rs's `Patch::Apply` with a field manager and a conflict.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use kubehub_sim::{ClusterConfig, SeedSpec};
use serde_json::{json, Value};

async fn sim() -> common::Sim {
    common::start(ClusterConfig::default(), SeedSpec::empty(), false, None).await
}

fn manifest(s: &common::Sim, name: &str, b: &str) -> std::path::PathBuf {
    let path = s.path().join(format!("{name}-{b}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: default\n  labels:\n    team: a\ndata:\n  a: \"1\"\n  b: \"{b}\"\n"
        ),
    )
    .unwrap();
    path
}

/// `data.b` of configmap c1.
fn data_b(s: &common::Sim) -> String {
    s.ok(&[
        "get",
        "configmap",
        "c1",
        "-n",
        "default",
        "-o",
        "jsonpath={.data.b}",
    ])
}

fn managers(s: &common::Sim, name: &str) -> Value {
    let out = s.ok(&[
        "get",
        "configmap",
        name,
        "-n",
        "default",
        "-o",
        "json",
        "--show-managed-fields",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["metadata"]["managedFields"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_creates_updates_conflicts_and_forces() {
    let s = sim().await;
    let first = manifest(&s, "c1", "2");
    let out = s.ok(&["apply", "--server-side", "-f", first.to_str().unwrap()]);
    assert_eq!(out.trim(), "configmap/c1 serverside-applied");
    let mf = managers(&s, "c1");
    assert_eq!(mf.as_array().unwrap().len(), 1, "{mf}");
    assert_eq!(mf[0]["manager"], "kubectl");
    assert_eq!(mf[0]["operation"], "Apply");
    assert_eq!(
        mf[0]["fieldsV1"],
        json!({"f:data": {"f:a": {}, "f:b": {}}, "f:metadata": {"f:labels": {"f:team": {}}}})
    );
    // The same manager changes b: applied.
    let second = manifest(&s, "c1", "3");
    s.ok(&["apply", "--server-side", "-f", second.to_str().unwrap()]);
    let b = data_b(&s);
    assert_eq!(b, "3");
    // Another manager changing b: kubectl's conflict message, and nothing changes.
    let third = manifest(&s, "c1", "4");
    let out = s.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=flux",
        "-f",
        third.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.b"),
        "{err}"
    );
    let b = data_b(&s);
    assert_eq!(b, "3", "a refused apply changes nothing");
    // Forced: flux takes b; a and the label, applied with the same values, are shared.
    s.ok(&[
        "apply",
        "--server-side",
        "--field-manager=flux",
        "--force-conflicts",
        "-f",
        third.to_str().unwrap(),
    ]);
    let b = data_b(&s);
    assert_eq!(b, "4");
    let mf = managers(&s, "c1");
    let owned = |m: &str| {
        mf.as_array()
            .unwrap()
            .iter()
            .find(|e| e["manager"] == m)
            .map(|e| e["fieldsV1"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(owned("kubectl")["f:data"], json!({"f:a": {}}), "{mf}");
    assert_eq!(
        owned("flux")["f:data"],
        json!({"f:a": {}, "f:b": {}}),
        "{mf}"
    );
}

/// What `kubectl create` set is owned by it (`Update`): an apply that changes it conflicts,
/// as against kube-apiserver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_conflicts_with_what_kubectl_create_set() {
    let s = sim().await;
    s.ok(&[
        "create",
        "configmap",
        "c1",
        "-n",
        "default",
        "--from-literal=b=1",
    ]);
    let mf = managers(&s, "c1");
    assert_eq!(mf[0]["manager"], "kubectl-create", "{mf}");
    assert_eq!(mf[0]["operation"], "Update");
    let m = manifest(&s, "c1", "2");
    let out = s.kubectl(&["apply", "--server-side", "-f", m.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"kubectl-create\" using v1: .data.b"),
        "{err}"
    );
    assert_eq!(data_b(&s), "1");
}

/// An apply configuration with a field the schema does not declare is refused whatever
/// `fieldValidation` says, in kube-apiserver's words, and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_with_an_undeclared_field_is_refused() {
    let s = sim().await;
    let path = s.path().join("typo.yaml");
    std::fs::write(
        &path,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: typo\n  namespace: default\nspec:\n  replica: 2\n  selector:\n    matchLabels: {app: typo}\n  template:\n    metadata:\n      labels: {app: typo}\n    spec:\n      containers:\n      - name: web\n        image: nginx\n",
    )
    .unwrap();
    let f = path.to_str().unwrap();
    for validate in ["--validate=strict", "--validate=false"] {
        let out = s.kubectl(&["apply", "--server-side", validate, "-f", f]);
        assert!(!out.status.success(), "{validate}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("failed to create typed patch object (default/typo; apps/v1, Kind=Deployment): .spec.replica: field not declared in schema"),
            "{validate}: {err}"
        );
    }
    let o = s.kubectl(&["get", "deployment", "typo", "-n", "default"]);
    assert!(!o.status.success(), "nothing was stored");
}

/// Patches are writes too: `kubectl label` and a client-side `kubectl apply` own what they set
/// (`Update`), an apply that changes it conflicts with them, and the applier keeps its own fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patches_record_their_manager_and_an_apply_conflicts_with_them() {
    let s = sim().await;
    let m = manifest(&s, "c1", "1");
    s.ok(&["apply", "--server-side", "-f", m.to_str().unwrap()]);
    s.ok(&[
        "label",
        "configmap",
        "c1",
        "-n",
        "default",
        "team=b",
        "--overwrite",
    ]);
    let mf = managers(&s, "c1");
    let label = mf
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl-label")
        .unwrap_or_else(|| panic!("no kubectl-label entry: {mf}"));
    assert_eq!(label["operation"], "Update");
    assert_eq!(
        label["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:team": {}}}})
    );
    // The applier lost the label to kubectl-label and kept the rest.
    let applier = mf
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl")
        .unwrap();
    assert!(
        applier["fieldsV1"]["f:metadata"]["f:labels"]
            .get("f:team")
            .is_none(),
        "{mf}"
    );
    assert!(applier["fieldsV1"]["f:data"].get("f:b").is_some(), "{mf}");
    // Applying team=a again conflicts with the label's manager.
    let out = s.kubectl(&["apply", "--server-side", "-f", m.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("conflict with \"kubectl-label\" using v1: .metadata.labels.team"),
        "{err}"
    );

    // A client-side apply (a strategic merge patch) is recorded as kubectl-client-side-apply.
    let m = manifest(&s, "c2", "1");
    s.ok(&["apply", "-f", m.to_str().unwrap()]);
    let m = manifest(&s, "c2", "2");
    s.ok(&["apply", "-f", m.to_str().unwrap()]);
    let mf = managers(&s, "c2");
    let csa = mf
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "kubectl-client-side-apply")
        .unwrap_or_else(|| panic!("no kubectl-client-side-apply entry: {mf}"));
    assert_eq!(csa["operation"], "Update");
    assert!(csa["fieldsV1"]["f:data"].get("f:b").is_some(), "{mf}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_patch_apply_with_a_field_manager_and_a_conflict() {
    let s = sim().await;
    let client = Client::try_from(Config::new(s.url.parse().unwrap())).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = |v: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c2"}, "data": {"k": v}});
    let created = cms
        .patch(
            "c2",
            &PatchParams::apply("operator"),
            &Patch::Apply(cm("1")),
        )
        .await
        .unwrap();
    assert_eq!(created.data.unwrap()["k"], "1");
    let mf = created.metadata.managed_fields.unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("operator"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));
    let e = cms
        .patch(
            "c2",
            &PatchParams::apply("intruder"),
            &Patch::Apply(cm("2")),
        )
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert_eq!(s.reason, "Conflict");
            assert!(
                s.message.contains("conflict with \"operator\""),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
    let forced = cms
        .patch(
            "c2",
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(cm("2")),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["k"], "2");
    // An apply without a field manager is refused as kube-apiserver refuses it.
    let e = cms
        .patch("c2", &PatchParams::default(), &Patch::Apply(cm("3")))
        .await
        .unwrap_err();
    match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains("fieldManager: Required value"),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
}
