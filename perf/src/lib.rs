//! # kubehub-perf: the edge cluster simulator and the load generator
//!
//! Every test and benchmark of KubeHub needs edge clusters behind the agent, and no real
//! kube-apiserver can run here, so this crate carries a simulator of one ([`sim`]): served over
//! HTTP(S) by `kubehub sim`, or hosted in-process by the hundreds for load tests. The open-loop
//! load generator (`kubehub-perf`) arrives with the perf issue.

pub mod pki;
pub mod sim;
pub mod testkit;
