//! # kubehub-perf: load generator and edge cluster simulator
//!
//! Hosts the simulated Kubernetes API servers every test and benchmark of KubeHub runs against,
//! and the open-loop load generator (`kubehub-perf`) with HDR latency histograms.
//!
//! Status: the simulator issue (#3) and the perf issue build this crate; it holds nothing yet.
