//! # kubehub-meta: the metaserver
//!
//! Source of truth for tenants, users, clusters and grants; owns the CA, issues tokens and
//! kubeconfigs, and keeps the registry of hubs and agents (leases, discovery, failover). Backed
//! by etcd in production and by an embedded store by default.
//!
//! Status: a later issue builds this crate; it holds nothing yet.
