//! The simulator driven by the official Python client: list, watch, create, patch, delete.
//! The client comes from PyPI (`.ci/run` installs it); the script is `tests/python/client.py`.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use kubehub_sim::{ClusterConfig, SeedSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client() {
    let s = common::start(ClusterConfig::default(), SeedSpec::default(), false, None).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/client.py");
    let kubeconfig = s.kubeconfig.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .arg(script)
            .arg(kubeconfig)
            .output()
            .expect("run python3")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes'"),
        "the Python client is not installed: run `pip install kubernetes` (bash .ci/run does)"
    );
    assert!(
        out.status.success(),
        "python client script failed:\n{}\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
