//! # kubehub-hub: the cloud-side proxy
//!
//! The hub terminates users' HTTPS (kubectl, client-go, kube-rs …), authenticates and
//! authorizes each request, and forwards it through the agent's tunnel ([`kubehub_wire`]);
//! and answers get / list / watch of the types it caches from what the agents stream north.
//! Thread-per-core on monoio (io_uring).
//!
//! A request's path through the code follows the module names: `server` (accept) → `tls` →
//! `http` → `proxy` (`authenticate → resolve → authorize → route → cache | backend →
//! respond`); the backend is the cluster's `tunnel`. `registry` says which core's tunnel
//! serves which cluster; `cache` holds what each tunnel's sync streams carried; `access`
//! holds who may reach which cluster (from the metaserver's sync feed, or a static file);
//! `bans` refuses banned parties and ends their running requests;
//! `enroll` is the hub's certificate from the metaserver (join token, renewal); `drain` is
//! why the hub drains (shutdown, or an operator's drain in meta) and the switch that says so.
//! Every request ends in `proxy::observe`: metrics, the live `traffic` summary and the audit
//! log.

pub mod access;
pub mod admission;
pub mod bans;
pub mod cache;
pub mod config;
pub mod drain;
pub mod enroll;
pub mod http;
pub mod metrics;
pub mod peers;
pub mod proxy;
pub mod registry;
pub mod server;
pub mod tls;
pub mod traffic;
pub mod tunnel;
