//! # kubehub-hub: the cloud-side proxy
//!
//! The hub terminates users' HTTPS (kubectl, client-go, kube-rs …), authenticates and
//! authorizes each request, and forwards it through the agent's tunnel ([`kubehub_wire`]);
//! later it answers reads from its sharded cache. Thread-per-core on monoio (io_uring).
//!
//! A request's path through the code follows the module names: `server` (accept) → `tls` →
//! `http` → `proxy` (`resolve → authenticate → authorize → route → backend → respond`), and
//! the backend is the cluster's `tunnel` (the cache, planned, will be a second backend).
//! `registry` says which core's tunnel serves which cluster.

pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tls;
pub mod tunnel;
