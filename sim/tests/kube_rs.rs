//! The simulator driven by kube-rs: typed list and CRUD, and a watcher/reflector that follows
//! churn and recovers from 410 Gone by relisting.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Client, Config};
use kubehub_sim::{Churn, ClusterConfig, SeedSpec};
use serde_json::json;

async fn client(s: &common::Sim) -> Client {
    Client::try_from(Config::new(s.url.parse().unwrap())).unwrap()
}

/// (namespace/name → resourceVersion) of every pod in the cluster.
fn server_pods(s: &common::Sim) -> BTreeMap<String, String> {
    s.cluster
        .versions(s.cluster.type_index("", "v1", "pods").unwrap())
}

fn store_pods(r: &reflector::Store<Pod>) -> BTreeMap<String, String> {
    r.state()
        .iter()
        .map(|p| {
            (
                format!(
                    "{}/{}",
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default()
                ),
                p.metadata.resource_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

async fn converge(s: &common::Sim, reader: &reflector::Store<Pod>, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let (want, have) = (server_pods(s), store_pods(reader));
        if want == have {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "reflector did not converge:\nserver {want:?}\nstore  {have:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_list_and_crud() {
    let s = common::start(ClusterConfig::default(), SeedSpec::default(), false, None).await;
    let c = client(&s).await;
    let pods: Api<Pod> = Api::all(c.clone());
    let list = pods.list(&ListParams::default().limit(3)).await.unwrap();
    assert_eq!(list.items.len(), 3);
    assert!(list.metadata.continue_.is_some());
    let all = pods.list(&ListParams::default()).await.unwrap();
    assert_eq!(all.items.len(), server_pods(&s).len());
    assert!(all
        .items
        .iter()
        .all(|p| p.status.as_ref().unwrap().phase.as_deref() == Some("Running")));

    let deps: Api<Deployment> = Api::all(c.clone());
    assert!(!deps
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());

    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "k"}, "data": {"a": "1"}})).unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.uid.is_some());
    let err = cms.create(&PostParams::default(), &cm).await.unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "AlreadyExists")),
        e => panic!("expected 409, got {e}"),
    }
    let patched = cms
        .patch(
            "k",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    // A stale replace is a 409 Conflict.
    let err = cms
        .replace("k", &PostParams::default(), &created)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409),
        "{err}"
    );
    cms.delete("k", &DeleteParams::default()).await.unwrap();
    assert!(cms.get_opt("k").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflector_follows_churn_and_recovers_from_410() {
    let cfg = ClusterConfig {
        history_window: 50,
        ..ClusterConfig::default()
    };
    let spec = SeedSpec {
        namespaces: 2,
        deployments_per_namespace: 2,
        pods_per_deployment: 3,
        ..SeedSpec::default()
    };
    let s = common::start(cfg, spec, false, None).await;
    let pods: Api<Pod> = Api::all(client(&s).await);
    let (reader, writer) = reflector::store();
    let inits = Arc::new(AtomicUsize::new(0));
    let counted = inits.clone();
    let stream = reflector(writer, watcher(pods, watcher::Config::default()))
        .map(move |e| {
            if let Ok(watcher::Event::Init) = e {
                counted.fetch_add(1, Ordering::SeqCst);
            }
            e
        })
        .default_backoff()
        .applied_objects();
    let task = tokio::spawn(async move {
        futures_util::pin_mut!(stream);
        while stream.next().await.is_some() {}
    });
    tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
    converge(&s, &reader, Duration::from_secs(10)).await;
    assert_eq!(inits.load(Ordering::SeqCst), 1);

    // Churn: updates, deletes and creates at 100 writes/s for two seconds.
    let churn = Churn::start(s.cluster.clone(), 100.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(churn);
    converge(&s, &reader, Duration::from_secs(10)).await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1,
        "no relist needed while the watch kept up"
    );

    // An API server restart with a compaction while it was down: the watch ends, re-watches
    // get 503 until it is back, and then 410 (the watcher's resourceVersion is gone), so the
    // watcher must relist.
    s.cluster.set_available(false);
    s.cluster.disconnect_watchers();
    for _ in 0..5 {
        kubehub_sim::seed::churn_once(&s.cluster).unwrap();
    }
    s.cluster.compact_history();
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.cluster.set_available(true);
    converge(&s, &reader, Duration::from_secs(15)).await;
    assert_eq!(
        inits.load(Ordering::SeqCst),
        2,
        "the watcher relisted after 410"
    );
    task.abort();
}
