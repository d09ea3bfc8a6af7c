//! # kubehub-sim: the edge API server simulator
//!
//! A faithful-where-it-shows imitation of kube-apiserver: no real API server can run on the
//! machines KubeHub is built and tested on, so every test, the demo and the load harness talk
//! to this one, served over HTTP(S) by `kubehub sim` or hosted in-process by the thousand.
//!
//! * [`store`]: objects, the resourceVersion counter, the event history (etcd + watch cache).
//! * [`cluster`]: the verbs, with kube-apiserver's semantics and errors.
//! * [`objects`]: names, uids, validation, defaulting, the status of running pods.
//! * [`controllers`]: Deployments, ReplicaSets, the garbage collector and the events they
//!   record, acting right after each write.
//! * [`patch`]: strategic merge patch.
//! * [`api`]: HTTP requests to responses (transport-free; watch and logs stream).
//! * [`openapi`]: the OpenAPI v3 and v2 documents, with the Kubernetes schemas.
//! * [`validation`]: `fieldValidation` (unknown fields, by those schemas) and `dryRun`.
//! * [`server`]: sockets, TLS, bearer token, one or many clusters per listener.
//! * [`seed`]: deterministic content and churn.
//! * [`kubelet`]: `pods/{name}/exec`, `attach` and `portforward`: validation, the WebSocket
//!   and SPDY transports kubectl speaks, per-pod container state.
//! * [`shell`]: the commands a simulated container runs (a tiny shell, `cat`, `tar`, …).
//! * [`vfs`]: a container's in-memory filesystem.
//! * [`spdy`]: a SPDY/3.1 session (server side) over any byte stream.
//! * [`portforward`]: what answers on a forwarded pod port.
//! * [`protobuf`]: kube's protobuf encoding, read from and written as the stored JSON.

pub mod api;
pub mod apply;
pub mod cluster;
pub mod controllers;
pub mod kubelet;
pub mod objects;
pub mod openapi;
pub mod patch;
pub mod portforward;
pub mod protobuf;
pub mod seed;
pub mod server;
pub mod shell;
pub mod spdy;
pub mod store;
pub mod validation;
pub mod vfs;

pub use cluster::{Cluster, ClusterConfig};
pub use seed::{seed, Churn, SeedSpec};
pub use server::{serve, RequestLog, Router, ServeOptions, Server};
