//! A [`Stack`] from the `kubehub` binary: a cached GET through the hub, then the hub killed
//! and started again, the agent back, the GET again.
//!
//! The binary is not built here: `$KUBEHUB_BIN`, else `kubehub` in the target directory this
//! test was built into (`cargo build -p kubehub-cli`; `cargo test --workspace` builds it).
//! Missing, it is a failure, not a skip.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use kubehub_perf::stack::{find_kubehub, CacheMode, Stack, StackOptions, Stop};

async fn get(stack: &Stack, path: &str) -> (u16, Option<String>, Bytes) {
    let client = stack.client::<Empty<Bytes>>(1).unwrap();
    let req = http::Request::get(format!("{}{path}", stack.cluster_url()))
        .header("authorization", format!("Bearer {}", stack.token))
        .body(Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let cache = resp
        .headers()
        .get("x-kubehub-cache")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, cache, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_get_then_hub_restart() {
    let bin = find_kubehub().unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(format!("kubehub-perf-stack-{}", std::process::id()));
    let mut opts = StackOptions::new(&bin, &dir);
    opts.cache = CacheMode::Types(vec!["v1/configmaps".into()]);
    opts.hub_cores = 1;
    opts.sim_args = ["--namespaces", "1", "--configmaps", "2"]
        .map(String::from)
        .to_vec();
    let mut stack = Stack::start(&opts).await.unwrap();
    assert!(
        stack.pid("hub").is_some() && stack.pid("agent").is_some() && stack.pid("sim").is_some()
    );
    assert!(!stack.hub_url.ends_with('/'));

    // A ConfigMap the simulator seeded, listed on the simulator itself.
    let sim = kubehub_perf::client(None, 1).unwrap();
    let list: serde_json::Value =
        kubehub_perf::edge::get_json(&sim, &format!("{}/api/v1/configmaps", stack.sim_url()))
            .await
            .unwrap();
    let item = list["items"]
        .as_array()
        .and_then(|i| {
            i.iter()
                .find(|o| o["metadata"]["name"] != "kube-root-ca.crt")
        })
        .unwrap_or_else(|| panic!("no ConfigMap on the simulator: {list}"));
    let path = format!(
        "/api/v1/namespaces/{}/configmaps/{}?resourceVersion=0",
        item["metadata"]["namespace"].as_str().unwrap(),
        item["metadata"]["name"].as_str().unwrap()
    );
    let (status, cache, body) = get(&stack, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(cache.as_deref(), Some("hit"));

    let old = stack.pid("hub").unwrap();
    let back = stack.restart_hub(Stop::Kill).await.unwrap();
    let new = stack.pid("hub").unwrap();
    assert_ne!(old, new);
    assert!(back < Duration::from_secs(60), "{back:?}");
    stack.check_alive().unwrap();
    let (status, cache, body) = get(&stack, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(cache.as_deref(), Some("hit"));

    // A graceful stop too.
    stack.restart_hub(Stop::Term).await.unwrap();
    let (status, _, _) = get(&stack, &path).await;
    assert_eq!(status, 200);
    drop(stack);
    let _ = std::fs::remove_dir_all(&dir);
}
