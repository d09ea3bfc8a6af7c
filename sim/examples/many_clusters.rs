//! Hosts many small simulated clusters in one process and reports the memory they take.
//!
//! `cargo run --release -p kubehub-sim --example many_clusters -- 1000`

use std::time::Instant;

use kubehub_sim::{seed, Cluster, ClusterConfig, SeedSpec};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1000);
    let spec = SeedSpec {
        namespaces: 1,
        deployments_per_namespace: 1,
        pods_per_deployment: 3,
        configmaps_per_namespace: 2,
        secrets_per_namespace: 1,
        nodes: 1,
    };
    let cfg = ClusterConfig {
        history_window: 1000,
        watch_buffer: 64,
        ..ClusterConfig::default()
    };
    let before = rss_kib();
    let t = Instant::now();
    let mut clusters = Vec::with_capacity(n);
    let mut objects = 0;
    for i in 0..n {
        let c = Cluster::new(
            format!("edge-{i}"),
            ClusterConfig {
                seed: i as u64,
                ..cfg.clone()
            },
        );
        objects += seed(&c, &spec).expect("seed");
        clusters.push(c);
    }
    let after = rss_kib();
    println!(
        "{n} clusters, {objects} seeded objects (+ system namespaces, service accounts, root CA config maps) in {:.2?}",
        t.elapsed()
    );
    println!(
        "RSS: {} MiB for all, {} KiB per cluster",
        (after - before) / 1024,
        (after - before) / n as u64
    );
}
