//! The records of the access model, as the metaserver stores them and the sync feed carries
//! them: [`Tenant`], [`User`], [`Cluster`], [`Grant`] (with its [`Subject`],
//! [`ClusterSelector`] and [`Rule`]s) and [`TokenRecord`], summed up by [`Record`].
//!
//! Every record is JSON with camelCase field names; unknown fields are refused, so a typo
//! (`"namespace"` for `"namespaces"`) is an error rather than a rule that silently grants
//! more. `validate()` checks what serde cannot, and its [`ValidationError`] names the field
//! (as written in JSON: `rules[0].verbs[1]`) and says what is wrong with it.
//!
//! # Names
//!
//! | what | syntax | at most |
//! | --- | --- | --- |
//! | tenant name, cluster id, namespace, resource, subresource | DNS-1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?` | 63 |
//! | grant name, API group | DNS-1123 subdomain: labels joined by `.` | 253 |
//! | user name (global: unique across tenants) | `[a-z0-9]([-a-z0-9.@_]*[a-z0-9])?` (e-mail-like names fit) | 253 |
//! | group | visible ASCII (`!` to `~`), no spaces; a user's own groups may not start with `system:` or `kubehub:` | 253 |
//! | label key | Kubernetes': optional DNS-subdomain prefix and `/`, then a name of `[A-Za-z0-9_.-]` alphanumeric at both ends | 253 + 63 |
//! | label value, cluster environment | Kubernetes': empty, or `[A-Za-z0-9_.-]` alphanumeric at both ends | 63 |
//! | token id | exactly 12 of `[a-z0-9]` | 12 |
//! | resource name (in `resourceNames`) | anything non-empty without `/`, `%` or control characters, not `.`, `..` or `*` | 253 |
//! | display name | any text without control characters | 256 |
//! | token description | any text without control characters | 1024 |
//!
//! Cluster ids are labels because they are the CN of the agent's certificate (at most 64
//! characters) and a path segment of `/clusters/{id}/…`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::limits::Limit;

/// The group every user of a tenant is in, followed by the tenant's name: the edge sees the
/// user of tenant `acme` in group `kubehub:tenant:acme`.
pub const TENANT_GROUP_PREFIX: &str = "kubehub:tenant:";

/// Group prefixes a user record may not claim: `system:` is the edge API server's (a user in
/// `system:masters` would be the edge's cluster admin) and `kubehub:` is ours.
pub const RESERVED_GROUP_PREFIXES: [&str; 2] = ["system:", "kubehub:"];

/// The verbs a resource rule may name (besides `*`): kube-apiserver's request verbs.
/// `proxy` is the verb of the deprecated `/api/v1/proxy/…` paths.
pub const RESOURCE_VERBS: [&str; 9] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
];

/// The verbs a non-resource rule may name (besides `*`): the lower-cased HTTP methods, as
/// kube-apiserver names the verb of a non-resource request.
pub const NON_RESOURCE_VERBS: [&str; 7] =
    ["get", "head", "post", "put", "patch", "delete", "options"];

/// A tenant: the unit of isolation. Its users only ever reach its clusters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tenant {
    /// DNS-1123 label.
    pub name: String,
    /// Free text for people (may be empty).
    #[serde(default)]
    pub display_name: String,
}

/// A user. User names are global (unique across tenants); a user belongs to one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    /// The identity the edge sees (impersonated user name).
    pub name: String,
    /// The owning tenant.
    pub tenant: String,
    /// The user's groups (grants may name them as subjects; the edge sees them too).
    #[serde(default)]
    pub groups: Vec<String>,
    /// A tenant admin: may manage the tenant's records through the metaserver. It grants
    /// nothing on clusters by itself: access to clusters comes from grants only.
    #[serde(default)]
    pub admin: bool,
}

impl User {
    /// The groups the edge sees: the user's own (each once, in order), then
    /// `kubehub:tenant:<tenant>`.
    pub fn effective_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = Vec::with_capacity(self.groups.len() + 1);
        for g in &self.groups {
            if !groups.contains(g) {
                groups.push(g.clone());
            }
        }
        groups.push(tenant_group(&self.tenant));
        groups
    }
}

/// `kubehub:tenant:<tenant>`: the group every user of the tenant is in.
pub fn tenant_group(tenant: &str) -> String {
    format!("{TENANT_GROUP_PREFIX}{tenant}")
}

/// An edge cluster, owned by one tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cluster {
    /// DNS-1123 label; the CN of the agent's certificate and the `{id}` of `/clusters/{id}/`.
    pub id: String,
    /// Free text for people.
    #[serde(default)]
    pub display_name: String,
    /// The owning tenant.
    pub tenant: String,
    /// Kubernetes-style labels, for [`ClusterSelector`]s.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form environment tag (`prod`, `staging`, …) with label-value syntax; may be empty.
    #[serde(default)]
    pub environment: String,
}

/// Who a [`Grant`] is for. JSON: `{"kind":"User","name":"alice"}`, `{"kind":"Group","name":"devs"}`,
/// `{"kind":"Tenant"}`.
///
/// Only users of the grant's own tenant are ever matched, whatever the subject says.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "SubjectRepr", into = "SubjectRepr")]
pub enum Subject {
    /// The user of this name.
    User {
        /// The user name.
        name: String,
    },
    /// Every user (of the grant's tenant) in this group. `kubehub:tenant:<tenant>` is the
    /// same as [`Subject::Tenant`].
    Group {
        /// The group name.
        name: String,
    },
    /// Every user of the grant's tenant.
    Tenant,
}

/// [`Subject`] on the wire: `Tenant` as an empty struct variant so that serde refuses
/// `{"kind":"Tenant","name":"alice"}` (a unit variant would ignore the name, and a grant meant
/// for alice would be for everyone).
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum SubjectRepr {
    User { name: String },
    Group { name: String },
    Tenant {},
}

impl From<SubjectRepr> for Subject {
    fn from(s: SubjectRepr) -> Self {
        match s {
            SubjectRepr::User { name } => Subject::User { name },
            SubjectRepr::Group { name } => Subject::Group { name },
            SubjectRepr::Tenant {} => Subject::Tenant,
        }
    }
}

impl From<Subject> for SubjectRepr {
    fn from(s: Subject) -> Self {
        match s {
            Subject::User { name } => SubjectRepr::User { name },
            Subject::Group { name } => SubjectRepr::Group { name },
            Subject::Tenant => SubjectRepr::Tenant {},
        }
    }
}

/// Which clusters a [`Grant`] covers: those whose id is in `ids`, and, when `labels` is not
/// empty, those that have every one of these labels with these values. At least one of the
/// two must be given. Only clusters of the grant's own tenant are ever selected (see
/// [`Grant::selects`]), even when `ids` names another tenant's cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSelector {
    /// Cluster ids.
    #[serde(default)]
    pub ids: Vec<String>,
    /// Labels a cluster must all have (with equal values); empty: select by `ids` only.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a grant allows, in the shape of a Kubernetes RBAC `PolicyRule`. A request is allowed
/// by a rule when every part matches; an empty list means "any" only where said below.
///
/// **Resource rules** (`resources` not empty) match resource requests
/// (`/api/v1/…`, `/apis/{group}/{version}/…`):
/// * `verbs`: the request's verb is listed, or `*` is. Verbs are kube-apiserver's: `get`
///   `list` `watch` `create` `update` `patch` `delete` `deletecollection` (and `proxy`, the
///   deprecated proxy paths). A GET of one object is `get`, without a name `list` (or `watch`
///   with `watch=1`); a DELETE without a name is `deletecollection`.
/// * `apiGroups` (required): the request's group is listed (`""` is the core group), or `*` is.
/// * `resources`: `*` is every resource and every subresource. `pods` is the pods themselves
///   only, never a subresource: `get` on `pods` does **not** allow `pods/log`, `pods/exec`,
///   `pods/attach`, `pods/portforward` or `pods/status`, which must be named exactly
///   (`pods/exec`), or as `pods/*` (every subresource of pods, not pods themselves), or as
///   `*/scale` (that subresource of every resource), or `*/*` (every subresource of every
///   resource). An exec or attach is a `create` (POST) or `get` (websocket GET) on
///   `pods/exec` / `pods/attach`, a port-forward the same on `pods/portforward`.
/// * `namespaces`: empty or containing `*`: every namespace, cluster-scoped resources
///   (`nodes`, `namespaces`, …) and requests across all namespaces (`kubectl get pods -A`).
///   Otherwise only requests in one of the listed namespaces: a list or watch across all
///   namespaces and any cluster-scoped resource are denied. (As in kube-apiserver, the
///   namespace of `namespaces/{ns}` is `ns` itself, so a rule on `namespaces` in `ns` allows
///   reading the namespace object `ns`.)
/// * `resourceNames`: empty: any name and no name. Otherwise only requests that name one of
///   them: a request without a name (`list`, `watch`, `create`, `deletecollection`) is denied,
///   except a `list` or `watch` with a `fieldSelector` of `metadata.name=<one of them>`, whose
///   name kube-apiserver reads from the selector.
///
/// The agent's plugins are resource requests too, cluster-scoped, in API group
/// `plugins.kubehub.io` (`kubehub_kapi::plugin`): `create` on `native` with `resourceNames:
/// ["uptime"]` allows running the native command `uptime` and nothing else; `list` on
/// `native` lists the allowed commands, `get` on `native` describes one; `get` on `host`
/// reads the host's facts. A rule with `apiGroups: ["*"]` and `resources: ["*"]` covers them.
///
/// **Non-resource rules** (`nonResourceURLs` not empty) match non-resource requests (`/version`,
/// `/healthz`, `/metrics`, discovery `/api`, `/apis/apps/v1`, `/openapi/v2`, …), whose verb is
/// the lower-cased HTTP method (`get`, `head`, `post`, …):
/// * `verbs`: as above (`*` or the method).
/// * `nonResourceURLs`: the request path equals an entry, or an entry ends in `*` and the path
///   starts with what precedes it (`/healthz/*` allows `/healthz/etcd`, not `/healthz`), or the
///   entry is `*` (every path).
///
/// A rule is one or the other: a rule with `nonResourceURLs` must have no `resources`,
/// `apiGroups`, `namespaces` or `resourceNames`. A resource rule never matches a non-resource
/// request and the reverse. Rules only add: there is no deny rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// API groups: `""` (core), group names, or `*`.
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources and subresources: `pods`, `pods/log`, `pods/*`, `*/scale`, `*`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Verbs, or `*`.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// Namespaces; empty or `*`: all of them and cluster scope.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Object names; empty: any.
    #[serde(default)]
    pub resource_names: Vec<String>,
    /// Non-resource paths; a trailing `*` is a prefix. JSON name as in RBAC: `nonResourceURLs`.
    #[serde(default, rename = "nonResourceURLs")]
    pub non_resource_urls: Vec<String>,
}

/// Grants `subject` the `rules` on the clusters of `tenant` that `clusters` selects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Grant {
    /// DNS-1123 subdomain, unique within the tenant.
    pub name: String,
    /// The tenant the grant belongs to: it covers only this tenant's clusters and users.
    pub tenant: String,
    /// Who.
    pub subject: Subject,
    /// Where.
    pub clusters: ClusterSelector,
    /// What (at least one rule).
    pub rules: Vec<Rule>,
}

impl ClusterSelector {
    /// Whether the selector matches the cluster by id or labels (tenants not considered: see
    /// [`Grant::selects`]).
    pub fn matches(&self, cluster: &Cluster) -> bool {
        self.ids.contains(&cluster.id)
            || (!self.labels.is_empty()
                && self
                    .labels
                    .iter()
                    .all(|(k, v)| cluster.labels.get(k) == Some(v)))
    }
}

impl Grant {
    /// Whether the grant covers the cluster: the cluster is the grant's tenant's and the
    /// selector matches it.
    pub fn selects(&self, cluster: &Cluster) -> bool {
        cluster.tenant == self.tenant && self.clusters.matches(cluster)
    }

    /// Whether the subject is this user of the grant's tenant (with these effective groups).
    pub fn is_for(&self, user: &str, tenant: &str, groups: &[String]) -> bool {
        tenant == self.tenant
            && match &self.subject {
                Subject::User { name } => name == user,
                Subject::Group { name } => groups.iter().any(|g| g == name),
                Subject::Tenant => true,
            }
    }
}

/// A bearer token, as stored: only its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TokenRecord {
    /// The token's id: the 12 characters after `khT.` (see [`crate::token`]).
    pub id: String,
    /// The user the token authenticates.
    pub user: String,
    /// The user's tenant when the token was issued; the token fails authentication if the
    /// user is no longer in it.
    pub tenant: String,
    /// The clusters the token may be used on (not empty).
    pub clusters: Vec<String>,
    /// Lower-case hex SHA-256 of the whole token string (`khT.<id>.<secret>`).
    pub hash: String,
    /// When it was issued, Unix seconds.
    pub created: u64,
    /// When it stops working, Unix seconds; 0: never.
    pub expires: u64,
    /// Free text (what it is for).
    #[serde(default)]
    pub description: String,
}

/// Any record, as the metaserver stores it and the sync feed carries it: JSON tagged by `kind`
/// (`{"kind":"Grant","name":…}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Record {
    /// A tenant.
    Tenant(Tenant),
    /// A user.
    User(User),
    /// A cluster.
    Cluster(Cluster),
    /// A grant.
    Grant(Grant),
    /// A token.
    Token(TokenRecord),
    /// A ban ([`crate::ban`]).
    Ban(crate::ban::Ban),
    /// Traffic limits of a tenant or of one of its users.
    Limit(Limit),
}

/// A record's key, parsed: `tenants/<name>`, `users/<name>`, `clusters/<id>`,
/// `grants/<tenant>/<name>`, `tokens/<id>`, `bans/<id>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// `tenants/<name>`.
    Tenant(&'a str),
    /// `users/<name>`.
    User(&'a str),
    /// `clusters/<id>`.
    Cluster(&'a str),
    /// `grants/<tenant>/<name>`.
    Grant {
        /// The grant's tenant.
        tenant: &'a str,
        /// The grant's name.
        name: &'a str,
    },
    /// `tokens/<id>`.
    Token(&'a str),
    /// `bans/<id>`.
    Ban(&'a str),
    /// `limits/<tenant>` (`user: None`) or `limits/<tenant>/<user>`.
    Limit {
        /// The tenant.
        tenant: &'a str,
        /// The user, for a per-user override.
        user: Option<&'a str>,
    },
}

impl<'a> Key<'a> {
    /// Parses a key (only its shape: non-empty parts without further `/`).
    pub fn parse(key: &'a str) -> Result<Key<'a>, KeyError> {
        let bad = || KeyError(key.to_owned());
        let (kind, rest) = key.split_once('/').ok_or_else(bad)?;
        let part = |s: &'a str| (!s.is_empty() && !s.contains('/')).then_some(s);
        let k = match kind {
            "tenants" => part(rest).map(Key::Tenant),
            "users" => part(rest).map(Key::User),
            "clusters" => part(rest).map(Key::Cluster),
            "tokens" => part(rest).map(Key::Token),
            "bans" => part(rest).map(Key::Ban),
            "limits" => match rest.split_once('/') {
                None => part(rest).map(|t| Key::Limit {
                    tenant: t,
                    user: None,
                }),
                Some((t, u)) => part(t).zip(part(u)).map(|(t, u)| Key::Limit {
                    tenant: t,
                    user: Some(u),
                }),
            },
            "grants" => rest.split_once('/').and_then(|(t, n)| {
                Some(Key::Grant {
                    tenant: part(t)?,
                    name: part(n)?,
                })
            }),
            _ => None,
        };
        k.ok_or_else(bad)
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Tenant(n) => write!(f, "tenants/{n}"),
            Key::User(n) => write!(f, "users/{n}"),
            Key::Cluster(n) => write!(f, "clusters/{n}"),
            Key::Grant { tenant, name } => write!(f, "grants/{tenant}/{name}"),
            Key::Token(n) => write!(f, "tokens/{n}"),
            Key::Ban(n) => write!(f, "bans/{n}"),
            Key::Limit { tenant, user: None } => write!(f, "limits/{tenant}"),
            Key::Limit {
                tenant,
                user: Some(u),
            } => write!(f, "limits/{tenant}/{u}"),
        }
    }
}

/// A string that is not a record key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a record key (tenants/<name>, users/<name>, clusters/<id>, \
     grants/<tenant>/<name>, tokens/<id>, bans/<id>, limits/<tenant> or limits/<tenant>/<user>)"
)]
pub struct KeyError(pub String);

/// Why a stored record was refused by [`Record::parse`].
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key is not one.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The bytes are not a record's JSON.
    #[error("{key}: not a record: {source}")]
    Json {
        /// The key the bytes were stored under.
        key: String,
        /// What serde said.
        source: serde_json::Error,
    },
    /// The record belongs under another key.
    #[error("{key}: the record's key is {actual}")]
    KeyMismatch {
        /// The key the record was stored under.
        key: String,
        /// The record's own key.
        actual: String,
    },
    /// The record does not validate.
    #[error("{key}: {source}")]
    Invalid {
        /// The record's key.
        key: String,
        /// What is wrong.
        source: ValidationError,
    },
}

impl Record {
    /// Where the record is stored: `tenants/<name>`, `users/<name>`, `clusters/<id>`,
    /// `grants/<tenant>/<name>` or `tokens/<id>`.
    pub fn key(&self) -> String {
        match self {
            Record::Tenant(t) => Key::Tenant(&t.name).to_string(),
            Record::User(u) => Key::User(&u.name).to_string(),
            Record::Cluster(c) => Key::Cluster(&c.id).to_string(),
            Record::Grant(g) => Key::Grant {
                tenant: &g.tenant,
                name: &g.name,
            }
            .to_string(),
            Record::Token(t) => Key::Token(&t.id).to_string(),
            Record::Ban(b) => Key::Ban(&b.id).to_string(),
            Record::Limit(l) => l.key().to_string(),
        }
    }

    /// Reads a stored record: the JSON must be a record, belong under `key`, and validate.
    pub fn parse(key: &str, json: &[u8]) -> Result<Record, RecordError> {
        Key::parse(key)?;
        let record: Record = serde_json::from_slice(json).map_err(|source| RecordError::Json {
            key: key.to_owned(),
            source,
        })?;
        let actual = record.key();
        if actual != key {
            return Err(RecordError::KeyMismatch {
                key: key.to_owned(),
                actual,
            });
        }
        record.validate().map_err(|source| RecordError::Invalid {
            key: key.to_owned(),
            source,
        })?;
        Ok(record)
    }

    /// Validates the record (see each record's `validate`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Record::Tenant(t) => t.validate(),
            Record::User(u) => u.validate(),
            Record::Cluster(c) => c.validate(),
            Record::Grant(g) => g.validate(),
            Record::Token(t) => t.validate(),
            Record::Ban(b) => b.validate(),
            Record::Limit(l) => l.validate(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation

/// A field of a record that does not validate. Displays as `field: problem`, e.g.
/// `rules[0].verbs[1]: "gett" is not a verb: …`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// The field as written in JSON, with indices and keys: `name`, `rules[2].resources[0]`,
    /// `labels["tier"]`, `clusters.ids[1]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: Problem,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// Empty, but required.
    #[error("is required")]
    Required,
    /// Longer than allowed.
    #[error("is {len} characters long: at most {max} allowed")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not the syntax the field needs.
    #[error("{value:?} is not {expected}")]
    Syntax {
        /// The value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// A value reserved for KubeHub or the edge.
    #[error("{value:?} is reserved: {why}")]
    Reserved {
        /// The value.
        value: String,
        /// Why.
        why: &'static str,
    },
    /// Fields that do not go together, or a structural rule.
    #[error("{0}")]
    Conflict(&'static str),
}

const DNS_LABEL: &str = "a DNS-1123 label (lower-case letters, digits and '-', \
                         starting and ending with a letter or digit)";
const DNS_SUBDOMAIN: &str = "a DNS-1123 subdomain (DNS-1123 labels joined by '.')";
const USER_NAME: &str = "a user name (lower-case letters, digits, '-', '.', '@' and '_', \
                         starting and ending with a letter or digit)";
const GROUP_NAME: &str = "a group name (visible ASCII characters, no spaces)";
const LABEL_KEY: &str = "a label key (an optional DNS-1123 subdomain and '/', then letters, \
                         digits, '-', '_' and '.', starting and ending with a letter or digit)";
const LABEL_VALUE: &str = "a label value (empty, or letters, digits, '-', '_' and '.', \
                           starting and ending with a letter or digit)";
const TOKEN_ID: &str = "a token id (12 lower-case letters and digits)";
const HASH: &str = "a SHA-256 hash (64 lower-case hex digits)";
const TEXT: &str = "text without control characters";
const RESOURCE_VERB: &str = "a resource verb (get, list, watch, create, update, patch, delete, \
                             deletecollection, proxy) or *";
const NON_RESOURCE_VERB: &str = "a non-resource verb (a lower-case HTTP method: get, head, post, \
                                 put, patch, delete, options) or *";
const API_GROUP: &str = "an API group (\"\" for core, a DNS-1123 subdomain, or *)";
const RESOURCE: &str = "a resource (*, a resource such as pods, or resource/subresource \
                        where either side may be *: pods/log, pods/*, */scale)";
const NAMESPACE: &str = "a namespace (a DNS-1123 label) or *";
const RESOURCE_NAME: &str = "an object name (not empty, no '/', '%' or control characters, \
                             not '.' or '..'; not '*': leave resourceNames empty for any name)";
const URL: &str = "a non-resource URL (a path starting with '/', optionally ending in '*' for \
                   a prefix, or * alone)";

pub(crate) type Check = Result<(), Problem>;

pub(crate) fn at(check: Check, field: impl FnOnce() -> String) -> Result<(), ValidationError> {
    check.map_err(|problem| ValidationError {
        field: field(),
        problem,
    })
}

pub(crate) fn syntax(value: &str, expected: &'static str) -> Problem {
    Problem::Syntax {
        value: value.to_owned(),
        expected,
    }
}

pub(crate) fn required_within(v: &str, max: usize) -> Check {
    if v.is_empty() {
        Err(Problem::Required)
    } else if v.len() > max {
        Err(Problem::TooLong { len: v.len(), max })
    } else {
        Ok(())
    }
}

fn is_label_syntax(v: &str) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

fn is_subdomain_syntax(v: &str) -> bool {
    v.split('.').all(|l| l.len() <= 63 && is_label_syntax(l))
}

/// DNS-1123 label, at most 63.
pub(crate) fn check_dns_label(v: &str) -> Check {
    required_within(v, 63)?;
    if is_label_syntax(v) {
        Ok(())
    } else {
        Err(syntax(v, DNS_LABEL))
    }
}

fn check_dns_subdomain(v: &str) -> Check {
    required_within(v, 253)?;
    if is_subdomain_syntax(v) {
        Ok(())
    } else {
        Err(syntax(v, DNS_SUBDOMAIN))
    }
}

pub(crate) fn check_user_name(v: &str) -> Check {
    required_within(v, 253)?;
    let b = v.as_bytes();
    let end = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if end(&b[0])
        && end(&b[b.len() - 1])
        && b.iter()
            .all(|c| end(c) || matches!(c, b'-' | b'.' | b'@' | b'_'))
    {
        Ok(())
    } else {
        Err(syntax(v, USER_NAME))
    }
}

fn check_group_syntax(v: &str) -> Check {
    required_within(v, 253)?;
    if v.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(syntax(v, GROUP_NAME))
    }
}

fn check_own_group(v: &str) -> Check {
    check_group_syntax(v)?;
    if RESERVED_GROUP_PREFIXES.iter().any(|p| v.starts_with(p)) {
        return Err(Problem::Reserved {
            value: v.to_owned(),
            why: "groups starting with system: or kubehub: are the edge's and KubeHub's \
                  (every user is in kubehub:tenant:<tenant> already)",
        });
    }
    Ok(())
}

fn check_subject_group(v: &str) -> Check {
    check_group_syntax(v)?;
    if v.starts_with("system:") {
        return Err(Problem::Reserved {
            value: v.to_owned(),
            why: "no KubeHub user is in a system: group",
        });
    }
    Ok(())
}

fn is_label_value_syntax(v: &str) -> bool {
    let b = v.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

fn check_label_key(k: &str) -> Check {
    let (prefix, name) = match k.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| p.len() <= 253 && is_subdomain_syntax(p));
    if k.is_empty() {
        Err(Problem::Required)
    } else if prefix_ok && !name.is_empty() && is_label_value_syntax(name) {
        Ok(())
    } else {
        Err(syntax(k, LABEL_KEY))
    }
}

fn check_label_value(v: &str) -> Check {
    if v.len() > 63 {
        Err(Problem::TooLong {
            len: v.len(),
            max: 63,
        })
    } else if is_label_value_syntax(v) {
        Ok(())
    } else {
        Err(syntax(v, LABEL_VALUE))
    }
}

pub(crate) fn check_labels(
    labels: &BTreeMap<String, String>,
    field: &str,
) -> Result<(), ValidationError> {
    for (k, v) in labels {
        at(check_label_key(k), || format!("{field}[{k:?}] (key)"))?;
        at(check_label_value(v), || format!("{field}[{k:?}]"))?;
    }
    Ok(())
}

pub(crate) fn check_text(v: &str, max: usize) -> Check {
    if v.len() > max {
        Err(Problem::TooLong { len: v.len(), max })
    } else if v.chars().any(char::is_control) {
        Err(syntax(v, TEXT))
    } else {
        Ok(())
    }
}

pub(crate) fn is_token_id(v: &str) -> bool {
    v.len() == 12
        && v.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

pub(crate) fn check_each<T>(
    items: &[T],
    field: &str,
    mut check: impl FnMut(&T) -> Check,
) -> Result<(), ValidationError> {
    for (i, item) in items.iter().enumerate() {
        at(check(item), || format!("{field}[{i}]"))?;
    }
    Ok(())
}

impl Tenant {
    /// Checks the name (DNS-1123 label) and the display name (text).
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_dns_label(&self.name), || "name".into())?;
        at(check_text(&self.display_name, 256), || "displayName".into())
    }
}

impl User {
    /// Checks the name (user-name syntax), the tenant (DNS-1123 label) and the groups (group
    /// syntax, none reserved: see [`RESERVED_GROUP_PREFIXES`]).
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_user_name(&self.name), || "name".into())?;
        at(check_dns_label(&self.tenant), || "tenant".into())?;
        check_each(&self.groups, "groups", |g| check_own_group(g))
    }
}

impl Cluster {
    /// Checks the id and tenant (DNS-1123 labels), display name, labels and environment.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_dns_label(&self.id), || "id".into())?;
        at(check_text(&self.display_name, 256), || "displayName".into())?;
        at(check_dns_label(&self.tenant), || "tenant".into())?;
        check_labels(&self.labels, "labels")?;
        at(check_label_value(&self.environment), || {
            "environment".into()
        })
    }
}

impl Subject {
    /// Checks the user or group name (a subject group may not start with `system:`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Subject::User { name } => at(check_user_name(name), || "subject.name".into()),
            Subject::Group { name } => at(check_subject_group(name), || "subject.name".into()),
            Subject::Tenant => Ok(()),
        }
    }
}

impl ClusterSelector {
    /// Checks that there are ids or labels, and their syntax.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.ids.is_empty() && self.labels.is_empty() {
            return at(
                Err(Problem::Conflict(
                    "a cluster selector needs ids, labels or both",
                )),
                || "clusters".into(),
            );
        }
        check_each(&self.ids, "clusters.ids", |id| check_dns_label(id))?;
        check_labels(&self.labels, "clusters.labels")
    }
}

fn check_resource(r: &str) -> Check {
    required_within(r, 127)?;
    let part = |p: &str| p == "*" || is_label_syntax(p) && p.len() <= 63;
    let ok = match r.split_once('/') {
        None => part(r),
        Some((res, sub)) => part(res) && part(sub),
    };
    if ok {
        Ok(())
    } else {
        Err(syntax(r, RESOURCE))
    }
}

fn check_api_group(g: &str) -> Check {
    if g.is_empty() || g == "*" {
        return Ok(());
    }
    check_dns_subdomain(g).map_err(|_| syntax(g, API_GROUP))
}

fn check_namespace(n: &str) -> Check {
    if n == "*" {
        return Ok(());
    }
    check_dns_label(n).map_err(|p| match p {
        Problem::Syntax { value, .. } => Problem::Syntax {
            value,
            expected: NAMESPACE,
        },
        p => p,
    })
}

fn check_resource_name(n: &str) -> Check {
    required_within(n, 253)?;
    if n == "*"
        || n == "."
        || n == ".."
        || n.contains(['/', '%'])
        || n.chars().any(char::is_control)
    {
        Err(syntax(n, RESOURCE_NAME))
    } else {
        Ok(())
    }
}

fn check_url(u: &str) -> Check {
    required_within(u, 1024)?;
    let body = u.strip_suffix('*').unwrap_or(u);
    if u == "*"
        || (body.starts_with('/')
            && !body.contains('*')
            && !body.contains('?')
            && !body.chars().any(|c| c.is_control() || c.is_whitespace()))
    {
        Ok(())
    } else {
        Err(syntax(u, URL))
    }
}

impl Rule {
    /// Checks that the rule is a resource rule or a non-resource rule (see [`Rule`]) and the
    /// syntax of every entry: verbs are known verbs for the kind of rule, resources and
    /// namespaces are names or `*`, resource names are names (not `*`), URLs are paths.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let conflict = |field: &'static str, why: &'static str| {
            at(Err(Problem::Conflict(why)), || field.into())
        };
        if self.verbs.is_empty() {
            return at(Err(Problem::Required), || "verbs".into());
        }
        if !self.non_resource_urls.is_empty() {
            if !self.resources.is_empty() {
                return conflict(
                    "resources",
                    "a rule with nonResourceURLs must have no resources",
                );
            }
            if !self.api_groups.is_empty() {
                return conflict(
                    "apiGroups",
                    "a rule with nonResourceURLs must have no apiGroups",
                );
            }
            if !self.namespaces.is_empty() {
                return conflict(
                    "namespaces",
                    "a rule with nonResourceURLs must have no namespaces",
                );
            }
            if !self.resource_names.is_empty() {
                return conflict(
                    "resourceNames",
                    "a rule with nonResourceURLs must have no resourceNames",
                );
            }
            check_each(&self.verbs, "verbs", |v| {
                if v == "*" || NON_RESOURCE_VERBS.contains(&v.as_str()) {
                    Ok(())
                } else {
                    Err(syntax(v, NON_RESOURCE_VERB))
                }
            })?;
            return check_each(&self.non_resource_urls, "nonResourceURLs", |u| check_url(u));
        }
        if self.resources.is_empty() {
            return conflict(
                "resources",
                "a rule needs resources (with apiGroups) or nonResourceURLs",
            );
        }
        if self.api_groups.is_empty() {
            return conflict(
                "apiGroups",
                "a resource rule needs apiGroups (\"\" is the core group, * every group)",
            );
        }
        check_each(&self.verbs, "verbs", |v| {
            if v == "*" || RESOURCE_VERBS.contains(&v.as_str()) {
                Ok(())
            } else {
                Err(syntax(v, RESOURCE_VERB))
            }
        })?;
        check_each(&self.api_groups, "apiGroups", |g| check_api_group(g))?;
        check_each(&self.resources, "resources", |r| check_resource(r))?;
        check_each(&self.namespaces, "namespaces", |n| check_namespace(n))?;
        check_each(&self.resource_names, "resourceNames", |n| {
            check_resource_name(n)
        })
    }
}

impl Grant {
    /// Checks the name (DNS-1123 subdomain), tenant, subject, cluster selector and every rule
    /// (at least one).
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_dns_subdomain(&self.name), || "name".into())?;
        at(check_dns_label(&self.tenant), || "tenant".into())?;
        self.subject.validate()?;
        self.clusters.validate()?;
        if self.rules.is_empty() {
            return at(Err(Problem::Required), || "rules".into());
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate().map_err(|e| ValidationError {
                field: format!("rules[{i}].{}", e.field),
                problem: e.problem,
            })?;
        }
        Ok(())
    }
}

impl TokenRecord {
    /// Checks the id, user, tenant, clusters (at least one), hash (64 lower-case hex digits),
    /// times (`expires` 0 or after `created`) and description.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(
            if is_token_id(&self.id) {
                Ok(())
            } else {
                Err(syntax(&self.id, TOKEN_ID))
            },
            || "id".into(),
        )?;
        at(check_user_name(&self.user), || "user".into())?;
        at(check_dns_label(&self.tenant), || "tenant".into())?;
        if self.clusters.is_empty() {
            return at(Err(Problem::Required), || "clusters".into());
        }
        check_each(&self.clusters, "clusters", |c| check_dns_label(c))?;
        at(
            if crate::token::parse_hex(&self.hash).is_some() {
                Ok(())
            } else {
                Err(syntax(&self.hash, HASH))
            },
            || "hash".into(),
        )?;
        if self.expires != 0 && self.expires <= self.created {
            return at(
                Err(Problem::Conflict(
                    "must be after created (or 0: never expires)",
                )),
                || "expires".into(),
            );
        }
        at(check_text(&self.description, 1024), || "description".into())
    }
}
