//! # kubehub-hub: the cloud-side proxy
//!
//! The hub terminates users' HTTPS (kubectl, client-go, kube-rs …), authenticates and
//! authorizes each request, and forwards it through the agent's tunnel ([`kubehub_wire`]);
//! later it answers reads from its sharded cache. Thread-per-core on monoio (io_uring).
//!
//! A request's path through the code follows the module names:
//! `accept → tls → http → auth → route → tunnel` (and `cache`, to come).

pub mod auth;
pub mod config;
pub mod http;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod server;
pub mod tls;
pub mod tunnel;
