//! # kubehub-sim: the edge API server simulator
//!
//! A faithful-where-it-shows imitation of kube-apiserver: no real API server can run on the
//! machines KubeHub is built and tested on, so every test, the demo and the load harness talk
//! to this one, served over HTTP(S) by `kubehub sim` or hosted in-process by the thousand.
//!
//! * [`store`]: objects, the resourceVersion counter, the event history (etcd + watch cache).
//! * [`cluster`]: the verbs, with kube-apiserver's semantics and errors.
//! * [`objects`]: names, uids, validation, defaulting, simulated controllers.
//! * [`patch`]: strategic merge patch.
//! * [`api`]: HTTP requests to responses (transport-free; watch and logs stream).
//! * [`openapi`]: the OpenAPI v3 documents `kubectl apply` needs.
//! * [`server`]: sockets, TLS, bearer token, one or many clusters per listener.
//! * [`seed`]: deterministic content and churn.

pub mod api;
pub mod cluster;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod seed;
pub mod server;
pub mod store;

pub use cluster::{Cluster, ClusterConfig};
pub use seed::{seed, Churn, SeedSpec};
pub use server::{serve, RequestLog, Router, ServeOptions, Server};
