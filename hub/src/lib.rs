//! # kubehub-hub: the cloud-side proxy
//!
//! The hub terminates users' HTTPS (kubectl, client-go, kube-rs …), authenticates and
//! authorizes each request, serves reads from its sharded cache when it can and forwards the
//! rest through the agent's tunnel ([`kubehub_wire`]). Thread-per-core on monoio.
//!
//! Status: the tunnel issue (#4) builds the proxy; today this crate carries the `kubehub`
//! command line ([`cli`]).

pub mod cli;
