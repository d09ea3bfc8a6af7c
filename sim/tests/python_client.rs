//! The simulator driven by the official Python client: list, watch, create, patch, delete.
//! The client comes from PyPI (`.ci/run` installs it); the script is `tests/python/client.py`.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use kubehub_sim::{ClusterConfig, SeedSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_kubernetes_client() {
    let s = common::start(ClusterConfig::default(), SeedSpec::default(), false, None).await;
    let kubeconfig = s.kubeconfig.clone();
    tokio::task::spawn_blocking(move || kubehub_testkit::run_python_client(&kubeconfig))
        .await
        .unwrap();
}
