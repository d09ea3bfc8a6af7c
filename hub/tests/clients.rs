//! Kubernetes client libraries through the hub with its cache on: kube-rs's watcher and
//! reflector (list-then-watch and streaming lists) and the official Python client, against a
//! simulated cluster that keeps changing.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config};
use kubehub_hub::config::CacheConfig;
use kubehub_sim::Churn;
use kubehub_testkit::stack::{self as common, StackOptions};

fn stack() -> common::Stack {
    let s = common::start_opts(StackOptions {
        cache: CacheConfig::default(),
        ..StackOptions::default()
    });
    s.wait_synced("", "pods", Duration::from_secs(20));
    s
}

async fn client(s: &common::Stack) -> Client {
    let kc = Kubeconfig::read_from(&s.kubeconfig).unwrap();
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

/// (namespace/name → resourceVersion) of every pod the simulator holds.
fn edge_pods(s: &common::Stack) -> BTreeMap<String, String> {
    s.cluster
        .versions(s.cluster.type_index("", "v1", "pods").unwrap())
}

fn store_pods(r: &reflector::Store<Pod>) -> BTreeMap<String, String> {
    r.state()
        .iter()
        .map(|p| {
            let m = &p.metadata;
            (
                format!(
                    "{}/{}",
                    m.namespace.clone().unwrap_or_default(),
                    m.name.clone().unwrap_or_default()
                ),
                m.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// A kube-rs reflector through the hub follows the edge under churn, with the initial list
/// either listed (`resourceVersion=0`, then a watch) or streamed (`sendInitialEvents`).
#[test]
fn kube_rs_reflectors_through_the_hub_follow_the_edge() {
    let s = stack();
    s.rt.block_on(async {
        let c = client(&s).await;
        let api: kube::Api<Pod> = kube::Api::all(c);
        let mut stores = Vec::new();
        for cfg in [
            watcher::Config::default(),
            watcher::Config::default().streaming_lists(),
        ] {
            let (reader, writer) = reflector::store();
            let stream = reflector(writer, watcher(api.clone(), cfg))
                .applied_objects()
                .for_each(|_| async {});
            tokio::spawn(stream);
            stores.push(reader);
        }
        let churn = Churn::start(s.cluster.clone(), 50.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(churn);
        for (i, reader) in stores.iter().enumerate() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let (want, have) = (edge_pods(&s), store_pods(reader));
                if want == have {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "reflector {i} did not converge:\nedge  {want:?}\nstore {have:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let metrics = s.curl_admin("/metrics");
    for verb in ["list", "watch"] {
        assert!(
            metrics.contains(&format!(
                "kubehub_hub_cache_reads_total{{verb=\"{verb}\",outcome=\"hit\",reason=\"\"}}"
            )),
            "{verb} not served from the cache: {metrics}"
        );
    }
}

/// The official Python client's list, watch, create, patch and delete through the hub (the
/// simulator's own client script, pointed at the hub's kubeconfig).
#[test]
fn python_client_through_the_hub() {
    let s = stack();
    kubehub_testkit::run_python_client(&s.kubeconfig);
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics
            .contains("kubehub_hub_cache_reads_total{verb=\"watch\",outcome=\"hit\",reason=\"\"}"),
        "{metrics}"
    );
}
