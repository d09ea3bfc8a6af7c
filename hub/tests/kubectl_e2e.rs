//! kubectl through the hub and the tunnel to a simulated edge cluster.

#![allow(clippy::unwrap_used)] // tests unwrap freely

mod common;

use kubehub_hub::config::Limits;
use kubehub_perf::sim::ClusterConfig;

#[test]
fn get_pods_through_the_hub() {
    let s = common::start(ClusterConfig::default(), Limits::default());
    let out = s.ok(&["get", "pods", "-A"]);
    assert!(out.lines().next().unwrap().contains("READY"), "{out}");
    assert!(out.contains("Running"), "{out}");
}
