//! # kubehub-meta: the metaserver
//!
//! Source of truth for tenants, users, clusters and grants; owns the CA, issues tokens and
//! kubeconfigs, enrolls agents and hubs, and keeps the registry of hubs and agents under
//! leases (with the canary rule: which clusters use hubs of a new version). Backed by etcd in
//! production and by an embedded store (a redb file) by default.
//!
//! * [`store`]: the versioned key-value store everything is kept in (embedded or etcd), in
//!   etcd's shape: revisions, transactions with compares, watches, leases.
//! * [`service`]: the operations (who may do what to which record), each one transaction.
//! * [`feed`]: change feeds, a snapshot then every change then heartbeats: the hubs' access
//!   feed (`/v1/sync`) and the registry watch (`/v1/registry/watch`: hubs, agents, canary).
//! * [`bans`]: bans of tokens, users, tenants, clusters and clients (access records the hubs
//!   enforce, expiry included).
//! * [`enroll`]: join tokens (one-time, CA-pinned) for agents and hubs.
//! * [`api`] and [`server`]: the HTTPS JSON API (axum over rustls).
//! * [`client`]: the API's client, used by `kubehub ctl`.
//! * [`console`]: the operations console (`/console/`), web pages for an SRE.
//! * [`config`]: what `meta.toml` may say.

pub mod api;
pub mod audit;
pub mod bans;
pub mod client;
pub mod config;
pub mod console;
pub mod enroll;
pub mod error;
pub mod feed;
pub mod server;
pub mod service;
pub mod store;
