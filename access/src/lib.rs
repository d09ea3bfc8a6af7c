//! KubeHub's access model: who may do what on which edge cluster.
//!
//! Shared by the metaserver, which stores the records, issues tokens and answers "can I", and
//! the hub, which decides every request in memory on the hot path. Pure data: no IO, no async.
//!
//! * [`model`]: the records ([`Tenant`], [`User`], [`Cluster`], [`Grant`], [`TokenRecord`],
//!   summed up as [`Record`] with its key), their JSON, and their validation.
//! * [`ban`]: bans of a token, user, tenant, cluster or client ([`ban::Ban`], key
//!   `bans/<id>`), and the table the hub checks every request against.
//! * [`limits`]: [`model::Limit`], the traffic limits of a tenant or one of its users
//!   (`limits/<tenant>[/<user>]`), carried to hubs like the other records and kept by the
//!   [`Index`] per tenant ([`Index::limits`]) for the hub's `admit` phase.
//! * [`token`]: bearer tokens `khT.<id>.<secret>`; only their SHA-256 is stored.
//! * [`sync`]: the change feed from the metaserver to the hubs ([`Line`]: snapshot, put,
//!   delete, heartbeat; one JSON object a line).
//! * [`registry`]: the registry of live hubs and agents ([`registry::HubRecord`],
//!   [`registry::AgentRecord`]), the canary rule and which hubs an agent may use, and the
//!   registry watch's lines ([`registry::RegistryLine`]) with the view a reader keeps of them.
//! * [`policy`]: what a request asks ([`Attributes`], from kapi's `RequestInfo`), when a
//!   [`Rule`] allows it, the discovery rule, the [`Decision`].
//! * [`index`]: [`Index`], the hub's state fed by the change feed: [`Index::authenticate`]
//!   (token → [`Identity`]) and [`Index::authorize`] (identity × cluster × request →
//!   decision), neither of which allocates on success.
//!
//! # The model
//!
//! A **tenant** owns **clusters** and **users** (user names are global). A user is seen by the
//! edge as their name, in their groups plus `kubehub:tenant:<tenant>`. A **grant** of a tenant
//! gives a **subject** (a user, a group, or every user of the tenant) **rules** on the
//! tenant's clusters a **selector** picks (by id or labels). Tenants are isolated by
//! construction: a user only reaches clusters of their own tenant, and only through grants of
//! their tenant, whatever ids a grant names. A **token** authenticates one user and is bound
//! to a set of clusters; it stops working when it expires, is deleted, or its user or tenant
//! is deleted.
//!
//! A request is allowed when the token is bound to the cluster, the cluster is the user's
//! tenant's, and a grant for the user covering the cluster has a rule allowing the request.
//! Anyone with a grant covering a cluster may also `get` the discovery paths there (`/api`,
//! `/apis/…`, `/version`, `/openapi/…`, `/healthz`, `/livez`, `/readyz`). Nothing else is
//! allowed; there are no deny rules.
//!
//! # Rules in short (the details: [`Rule`])
//!
//! Rules read as Kubernetes RBAC `PolicyRule`s, with namespaces added:
//! * `verbs`: kube verbs (`get list watch create update patch delete deletecollection`), or
//!   `*`; for non-resource rules the lower-cased HTTP method.
//! * `apiGroups`: `""` (core), a group, or `*`.
//! * `resources`: `*` is everything including subresources; `pods` never includes a
//!   subresource: `pods/log`, `pods/exec`, `pods/attach`, `pods/portforward` must be named (or
//!   `pods/*`, or `*/exec`).
//! * `namespaces`: empty or `*`: everywhere, cluster-scoped resources and all-namespace lists
//!   included; otherwise only requests in those namespaces.
//! * `resourceNames`: empty: any; otherwise only requests naming one of them (a list or watch
//!   names one through a `metadata.name=` field selector; a create never does).
//! * `nonResourceURLs`: paths of non-resource requests, a trailing `*` making a prefix; such a
//!   rule has none of the above but verbs.

pub mod ban;
pub mod build;
pub mod index;
pub mod limits;
pub mod model;
pub mod policy;
pub mod registry;
pub mod sync;
pub mod token;
pub mod traffic;

pub use index::{ApplyError, AuthnError, Identity, Index};
pub use model::{
    Cluster, ClusterSelector, Grant, Key, Problem, Record, RecordError, Rule, Subject, Tenant,
    TokenRecord, User, ValidationError,
};
pub use policy::{Attributes, Decision, DenyReason};
pub use sync::Line;
pub use token::{Token, TokenError};
