//! # kubehub-kapi: the Kubernetes API, as both ends of KubeHub need it
//!
//! Pieces of kube-apiserver's HTTP behaviour that the hub's cache (which answers reads like an
//! API server would) and the edge API server simulator (which *is* one, for tests and load)
//! both need, written once:
//!
//! * [`path`]: what an API path addresses (`/apis/apps/v1/namespaces/x/deployments/y/scale`).
//! * [`query`]: list and watch options from the query string.
//! * [`request_info`](mod@request_info): what a request asks for (verb, resource, namespace,
//!   name), read as kube-apiserver reads it for authorization and cache routing.
//! * [`selector`]: label and field selectors, parsed and matched as kube-apiserver does.
//! * [`status`]: `Status` error bodies shaped exactly as kube-apiserver shapes them.
//! * [`accept`]: content negotiation (plain JSON, `Table`, `PartialObjectMetadata`).
//! * [`table`]: server-side printing: the columns `kubectl get` shows for built-in kinds.
//! * [`resources`]: the built-in resource types and discovery documents.
//! * [`review`]: `SelfSubjectAccessReview` / `SelfSubjectRulesReview` bodies (JSON and
//!   protobuf, as kubectl sends them) and their answers.
//! * [`http`]: HTTP rules both proxies apply (hop-by-hop fields).
//! * [`kubeconfig`]: writing kubeconfig files.
//! * [`plugin`]: agent plugin paths (`/plugins/<name>/…`), as the hub authorizes them and
//!   the agent routes them.
//! * [`spdy`]: the SPDY/3.1 frame codec (kubectl's fallback transport for exec, attach and
//!   port-forward, and the one port-forward tunnels in a WebSocket).
//! * [`remotecommand`]: the exec/attach/port-forward protocols over it and over WebSocket:
//!   channels, stream types, the exit `Status`, terminal resizes.
//! * [`time`]: RFC 3339 timestamps and the "AGE" durations kubectl prints.
//!
//! Everything here is synchronous and runtime-free; objects are `serde_json::Value`s.

#![warn(missing_docs)]

pub mod accept;
pub mod http;
pub mod kubeconfig;
pub mod path;
pub mod plugin;
pub mod query;
pub mod remotecommand;
pub mod request_info;
pub mod resources;
pub mod review;
pub mod selector;
pub mod spdy;
pub mod status;
pub mod table;
pub mod time;

pub use request_info::{decode_path, request_info, RequestInfo, RequestInfoError, Verb};
pub use status::Status;
