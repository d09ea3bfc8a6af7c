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
