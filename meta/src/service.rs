//! The metaserver's operations, transport-free: who is calling ([`Caller`]), and what each
//! call does to the store. The HTTP layer ([`crate::api`]) only decodes, calls and encodes.
//!
//! Every write is one store transaction whose compares cover what it relied on (the tenant
//! exists, the name is free, the referenced clusters are still there), so nothing is ever
//! half-written and two replicas racing on one etcd cannot both win.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kubehub_access::model::{Cluster, Grant, Record, Subject, Tenant, TokenRecord, User};
use kubehub_access::registry::eligibility;
pub use kubehub_access::registry::{AgentRecord, CanaryRule, DrainMark, HubRecord, Pin};
use kubehub_access::{Index, Line, Token};
use kubehub_pki::Ca;
use serde::{Deserialize, Serialize};
use tracing::info;

mod limits;

use crate::config::MetaConfig;
use crate::enroll::{self, JoinRecord, JoinToken, Purpose};
use crate::error::{MetaError, Result};
use crate::store::{Backend, Compare, Kv, Op, Txn};

/// Access records live under this prefix (`access/tenants/a`, `access/grants/a/g`, …); the
/// hubs' change feed is a watch on it.
pub const ACCESS: &str = "access/";
const CA_CERT: &str = "ca/cert";
/// `marks/<tenant>`: rewritten by every creation of a user, cluster or grant in the tenant.
/// Deletions that checked "nothing refers to this" compare it, so a reference created between
/// their check and their write makes them fail instead of leaving it dangling.
const MARKS: &str = "marks/";
/// `usertokens/<user>/<id>`: every token of a user, written and deleted in the same
/// transactions as the token, so a user's tokens are found without reading everyone's.
const USER_TOKENS: &str = "usertokens/";
/// The most expired tokens one issuance clears away (a transaction's size is bounded).
const SWEEP: usize = 32;

/// `tombstones/clusters/<id>`: a deleted cluster's tenant, and until when its agents'
/// certificates may still be valid (see [`Meta::create_cluster`]).
const TOMBSTONES: &str = "tombstones/clusters/";

/// What a deleted cluster leaves behind.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tombstone {
    tenant: String,
    until: u64,
}
const CA_KEY: &str = "ca/key";
/// Everything the registry watch follows: the hubs, the agents and the canary rule (one store
/// watch on this prefix sees their changes in revision order).
pub const REGISTRY: &str = "registry/";
/// Registered hubs (leased).
pub const HUBS: &str = "registry/hubs/";
/// Registered agents (leased).
pub const AGENTS: &str = "registry/agents/";
/// The canary rule (one, not leased).
pub const CANARY: &str = "registry/canary";
/// Operators' drains of hubs, by hub id (not leased).
pub const DRAINS: &str = "registry/drains/";
/// Operators' pins of clusters to hubs, by cluster id (not leased).
pub const PINS: &str = "registry/pins/";

/// Who is calling, as established by the HTTP layer from a bearer token or a client
/// certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token: every right.
    Admin,
    /// A user, by a KubeHub token meta issued (and what that token covers).
    User(User, TokenScope),
    /// A hub, by its meta-issued certificate (CN = hub id).
    Hub(String),
    /// An agent, by its meta-issued certificate (CN = cluster id).
    Agent(String),
}

impl Caller {
    fn name(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::User(u, _) => format!("user {:?}", u.name),
            Caller::Hub(h) => format!("hub {h:?}"),
            Caller::Agent(c) => format!("the agent of cluster {c:?}"),
        }
    }

    /// Admin, or an admin of `tenant`.
    fn manages(&self, tenant: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::User(u, _) => u.admin && u.tenant == tenant,
            _ => false,
        }
    }

    fn must_manage(&self, tenant: &str) -> Result<()> {
        if self.manages(tenant) {
            Ok(())
        } else {
            Err(MetaError::Forbidden(format!(
                "{} may not manage tenant {tenant:?}",
                self.name()
            )))
        }
    }

    pub(crate) fn must_be_admin(&self) -> Result<()> {
        if *self == Caller::Admin {
            Ok(())
        } else {
            Err(MetaError::Forbidden(format!(
                "{} may not do this: it needs an admin token",
                self.name()
            )))
        }
    }

    /// The tenant a listing is limited to (None: all).
    fn scope(&self) -> Result<Option<&str>> {
        match self {
            Caller::Admin => Ok(None),
            Caller::User(u, _) => Ok(Some(&u.tenant)),
            _ => Err(MetaError::Forbidden(format!(
                "{} may not read tenants' records",
                self.name()
            ))),
        }
    }
}

/// What the token a user called with covers: a token can only mint tokens within it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenScope {
    /// The clusters it is bound to.
    pub clusters: Vec<String>,
    /// When it expires, unix seconds (0: never).
    pub expires: u64,
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key(record: &Record) -> String {
    format!("{ACCESS}{}", record.key())
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| MetaError::Internal(format!("encoding a record: {e}")))
}

fn decode(kv: &Kv) -> Result<Record> {
    let k = kv.key.strip_prefix(ACCESS).unwrap_or(&kv.key);
    Record::parse(k, &kv.value)
        .map_err(|e| MetaError::Internal(format!("stored record {}: {e}", kv.key)))
}

fn invalid(e: impl std::fmt::Display) -> MetaError {
    MetaError::Invalid(e.to_string())
}

/// A kubeconfig request.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KubeconfigRequest {
    /// For whom (default: the calling user).
    #[serde(default)]
    pub user: Option<String>,
    /// Clusters (default: every cluster the user has a grant on).
    #[serde(default)]
    pub clusters: Vec<String>,
    /// Token lifetime, seconds (default: `tokens.default_lifetime_s`).
    #[serde(default)]
    pub lifetime_s: Option<u64>,
    /// What the token is for.
    #[serde(default)]
    pub description: String,
    /// Revoke the user's other tokens in the same transaction.
    #[serde(default)]
    pub replace: bool,
}

/// An issued kubeconfig.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Issued {
    /// The kubeconfig, YAML.
    pub kubeconfig: String,
    /// The token's record (without the token).
    pub token: TokenRecord,
    /// Other live tokens the user holds.
    pub other_live_tokens: usize,
    /// Tokens revoked because `replace` was asked.
    pub revoked: usize,
}

/// The live hubs as one caller may use them (`GET /v1/registry/hubs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubChoice {
    /// The hubs (for an agent: those it may hold tunnels to).
    pub items: Vec<HubRecord>,
    /// For an agent: the ids of the other live hubs (it moves away from one it holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ineligible: Option<Vec<String>>,
    /// For an agent: the same hubs' agent endpoints (an agent that has only dialled a hub by
    /// its address, not yet seen its id in an answer, knows it by these).
    #[serde(
        default,
        rename = "ineligibleEndpoints",
        skip_serializing_if = "Option::is_none"
    )]
    pub ineligible_endpoints: Option<Vec<String>>,
}

/// A registry record whose `updated` meta sets: what [`Meta::heartbeat`] compares.
trait Heartbeat: Serialize + serde::de::DeserializeOwned + PartialEq {
    fn updated(&mut self) -> &mut u64;
}

impl Heartbeat for HubRecord {
    fn updated(&mut self) -> &mut u64 {
        &mut self.updated
    }
}

impl Heartbeat for AgentRecord {
    fn updated(&mut self) -> &mut u64 {
        &mut self.updated
    }
}

/// A certificate issued at enrollment or renewal.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrolled {
    /// The certificate, PEM.
    pub certificate: String,
    /// The CA, PEM.
    pub ca: String,
    /// Cluster id or hub id.
    pub identity: String,
    /// Agent endpoints of live hubs.
    pub hubs: Vec<String>,
}

/// The metaserver: configuration, store and CA.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Configuration.
    pub cfg: Arc<MetaConfig>,
    /// The store.
    pub store: Backend,
    ca: Arc<Ca>,
    ca_pem: Arc<str>,
    hub_ca_pem: Arc<str>,
    admin: Arc<Vec<[u8; 32]>>,
    /// The audit log (`[audit]`), when enabled.
    pub audit: Option<crate::audit::MetaAudit>,
}

impl Meta {
    /// Opens the store, loads (or creates, once across replicas) the CA, reads the admin
    /// tokens (creating the file with one token when it is missing).
    pub async fn start(cfg: MetaConfig) -> Result<Meta> {
        let store = Backend::open(&cfg.store).await?;
        let ca = load_or_create_ca(&store).await?;
        let ca_pem: Arc<str> = ca.cert_pem().into();
        let hub_ca_pem: Arc<str> = match &cfg.hub_ca_file {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| MetaError::Internal(format!("reading {}: {e}", p.display())))?
                .into(),
            None => ca_pem.clone(),
        };
        let admin = admin_tokens(&cfg.admin_token_file)?;
        let audit = crate::audit::MetaAudit::start(&cfg.audit)?;
        Ok(Meta {
            audit,
            cfg: Arc::new(cfg),
            store,
            ca: Arc::new(ca),
            ca_pem,
            hub_ca_pem,
            admin: Arc::new(admin),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA (meta issues its own serving certificate with it).
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    // ---- authentication --------------------------------------------------------------------

    /// The caller a bearer token names: an admin token, or a live user token.
    pub async fn authenticate(&self, bearer: &str) -> Result<Caller> {
        let hash = kubehub_access::token::hash(bearer.as_bytes());
        // Comparing hashes: equality timing says nothing about the token.
        if self.admin.contains(&hash) {
            return Ok(Caller::Admin);
        }
        let token = Token::parse(bearer).map_err(|e| {
            MetaError::Unauthorized(format!("not an admin token nor a KubeHub token: {e}"))
        })?;
        let unknown = || MetaError::Unauthorized("unknown or revoked token".into());
        let kv = self
            .store
            .get(&format!("{ACCESS}tokens/{}", token.id()))
            .await?
            .ok_or_else(unknown)?;
        let Record::Token(t) = decode(&kv)? else {
            return Err(unknown());
        };
        if t.hash != hex(&hash) {
            return Err(unknown());
        }
        if t.expires != 0 && t.expires <= now() {
            return Err(MetaError::Unauthorized(format!(
                "token {} expired at {} (unix)",
                t.id, t.expires
            )));
        }
        let user = self.get_user(&t.user).await.map_err(|_| unknown())?;
        if user.tenant != t.tenant {
            return Err(unknown());
        }
        Ok(Caller::User(
            user,
            TokenScope {
                clusters: t.clusters,
                expires: t.expires,
            },
        ))
    }

    // ---- reads -----------------------------------------------------------------------------

    async fn get_record(&self, k: &str) -> Result<Option<(Record, i64)>> {
        match self.store.get(&format!("{ACCESS}{k}")).await? {
            Some(kv) => Ok(Some((decode(&kv)?, kv.mod_revision))),
            None => Ok(None),
        }
    }

    async fn get_user(&self, name: &str) -> Result<User> {
        match self.get_record(&format!("users/{name}")).await? {
            Some((Record::User(u), _)) => Ok(u),
            _ => Err(MetaError::NotFound(format!("user {name:?} not found"))),
        }
    }

    async fn records(&self, kind: &str) -> Result<(Vec<(Record, i64)>, i64)> {
        let (kvs, rev) = self.store.list(&format!("{ACCESS}{kind}/")).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            out.push((decode(kv)?, kv.mod_revision));
        }
        Ok((out, rev))
    }

    /// A user's tokens with their revisions, through the `usertokens/` index.
    async fn user_tokens(&self, user: &str) -> Result<Vec<(TokenRecord, i64)>> {
        let (ids, _) = self.store.list(&format!("{USER_TOKENS}{user}/")).await?;
        let mut out = Vec::with_capacity(ids.len());
        for kv in ids {
            let id = kv.key.rsplit('/').next().unwrap_or_default();
            if let Some((Record::Token(t), rev)) = self.get_record(&format!("tokens/{id}")).await? {
                out.push((t, rev));
            }
        }
        Ok(out)
    }

    /// Records of one kind (`tenants`, `users`, `clusters`, `grants`, `tokens`) the caller may
    /// see, optionally of one tenant (and, for tokens, one user).
    pub async fn list(
        &self,
        caller: &Caller,
        kind: &str,
        tenant: Option<&str>,
        user: Option<&str>,
    ) -> Result<Vec<Record>> {
        if !matches!(kind, "tenants" | "users" | "clusters" | "grants" | "tokens") {
            return Err(MetaError::NotFound(format!("no such collection {kind:?}")));
        }
        let scope = caller.scope()?;
        let (records, _) = self.records(kind).await?;
        let mut out = Vec::new();
        for (r, _) in records {
            let t = tenant_of(&r);
            if scope.is_some_and(|s| s != t) || tenant.is_some_and(|w| w != t) {
                continue;
            }
            if let (Some(u), Record::Token(tok)) = (user, &r) {
                if tok.user != u {
                    continue;
                }
            }
            // A plain user sees its own tokens only, and not other users' records' secrets.
            if let (Caller::User(me, _), Record::Token(tok)) = (caller, &r) {
                if !me.admin && tok.user != me.name {
                    continue;
                }
            }
            out.push(r);
        }
        Ok(out)
    }

    /// One record by kind and name (`grants` names are `tenant/name`).
    pub async fn get(&self, caller: &Caller, kind: &str, name: &str) -> Result<Record> {
        let scope = caller.scope()?;
        let (r, _) = self
            .get_record(&format!("{kind}/{name}"))
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("{kind}/{name} not found")))?;
        if scope.is_some_and(|s| s != tenant_of(&r)) {
            return Err(MetaError::NotFound(format!("{kind}/{name} not found")));
        }
        Ok(r)
    }

    // ---- writes ----------------------------------------------------------------------------

    async fn commit(&self, txn: Txn, what: &str) -> Result<i64> {
        let r = self.store.txn(txn).await?;
        if r.succeeded {
            Ok(r.revision)
        } else {
            Err(MetaError::Conflict(format!(
                "{what}: a concurrent change got there first; read again and retry"
            )))
        }
    }

    async fn must_exist(&self, k: &str, what: &str) -> Result<(Record, i64)> {
        self.get_record(k)
            .await?
            .ok_or_else(|| MetaError::Invalid(format!("{what} does not exist")))
    }

    /// Creates a tenant (admin).
    pub async fn create_tenant(&self, caller: &Caller, t: Tenant) -> Result<Tenant> {
        caller.must_be_admin()?;
        let r = Record::Tenant(t.clone());
        r.validate().map_err(invalid)?;
        let k = key(&r);
        let txn = Txn::new()
            .when(Compare::absent(k.clone()))
            .then(Op::put(k, encode(&r)?));
        if !self.store.txn(txn).await?.succeeded {
            return Err(MetaError::Conflict(format!(
                "tenant {:?} already exists",
                t.name
            )));
        }
        info!(tenant = %t.name, "tenant created");
        Ok(t)
    }

    /// Creates a user in an existing tenant; user names are global.
    pub async fn create_user(&self, caller: &Caller, u: User) -> Result<User> {
        caller.must_manage(&u.tenant)?;
        let r = Record::User(u.clone());
        r.validate().map_err(invalid)?;
        let (_, trev) = self
            .must_exist(
                &format!("tenants/{}", u.tenant),
                &format!("tenant {:?}", u.tenant),
            )
            .await?;
        let k = key(&r);
        let txn = Txn::new()
            .when(Compare::mod_revision(
                format!("{ACCESS}tenants/{}", u.tenant),
                trev,
            ))
            .when(Compare::absent(k.clone()))
            .then(Op::put(k.clone(), encode(&r)?))
            .then(Op::put(format!("{MARKS}{}", u.tenant), Vec::new()));
        if !self.store.txn(txn).await?.succeeded {
            if self.store.get(&k).await?.is_some() {
                return Err(MetaError::Conflict(format!(
                    "user {:?} already exists (user names are unique across tenants)",
                    u.name
                )));
            }
            return Err(MetaError::Conflict(format!(
                "tenant {:?} changed while the user was being created; retry",
                u.tenant
            )));
        }
        info!(user = %u.name, tenant = %u.tenant, "user created");
        Ok(u)
    }

    /// Registers a cluster and returns its record with a join token for its agent.
    pub async fn create_cluster(&self, caller: &Caller, c: Cluster) -> Result<(Cluster, String)> {
        caller.must_manage(&c.tenant)?;
        let r = Record::Cluster(c.clone());
        r.validate().map_err(invalid)?;
        let (_, trev) = self
            .must_exist(
                &format!("tenants/{}", c.tenant),
                &format!("tenant {:?}", c.tenant),
            )
            .await?;
        // A deleted cluster's agents keep valid certificates for a while: until they expire,
        // its id cannot become another tenant's cluster (their agent would serve it).
        let tomb_key = format!("{TOMBSTONES}{}", c.id);
        let tomb = self.store.get(&tomb_key).await?;
        if let Some(kv) = &tomb {
            if let Ok(t) = serde_json::from_slice::<Tombstone>(&kv.value) {
                if t.tenant != c.tenant && t.until > now() {
                    return Err(MetaError::Conflict(format!(
                        "cluster id {:?} belonged to another tenant until recently, and \
                         certificates issued to its agent stay valid until {} (unix): pick \
                         another id",
                        c.id, t.until
                    )));
                }
            }
        }
        let (token, join) = enroll::issue(
            Purpose::Agent {
                cluster: c.id.clone(),
            },
            Duration::from_secs(self.cfg.certs.join_token_ttl_s),
            &self.ca.cert_hash(),
            now(),
        )
        .map_err(|e| MetaError::Internal(e.to_string()))?;
        let k = key(&r);
        let mut txn = Txn::new().when(Compare::mod_revision(
            tomb_key.clone(),
            tomb.as_ref().map_or(0, |kv| kv.mod_revision),
        ));
        if tomb.is_some() {
            txn = txn.then(Op::delete(tomb_key));
        }
        let txn = txn
            .when(Compare::mod_revision(
                format!("{ACCESS}tenants/{}", c.tenant),
                trev,
            ))
            .when(Compare::absent(k.clone()))
            .then(Op::put(k.clone(), encode(&r)?))
            .then(Op::put(enroll::record_key(&join.id), json(&join)?))
            .then(Op::put(format!("{MARKS}{}", c.tenant), Vec::new()));
        if !self.store.txn(txn).await?.succeeded {
            return Err(MetaError::Conflict(format!(
                "cluster {:?} already exists (or tenant {:?} changed); cluster ids are unique",
                c.id, c.tenant
            )));
        }
        info!(cluster = %c.id, tenant = %c.tenant, "cluster registered");
        Ok((c, token))
    }

    /// A new join token for an existing cluster's agent (the previous one may be lost or used).
    pub async fn cluster_join_token(&self, caller: &Caller, id: &str) -> Result<String> {
        let (r, _) = self
            .get_record(&format!("clusters/{id}"))
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("cluster {id:?} not found")))?;
        caller.must_manage(tenant_of(&r))?;
        self.join_token(Purpose::Agent {
            cluster: id.to_owned(),
        })
        .await
    }

    /// A join token for a hub (admin).
    pub async fn hub_join_token(
        &self,
        caller: &Caller,
        id: &str,
        names: Vec<String>,
    ) -> Result<String> {
        caller.must_be_admin()?;
        if id.is_empty() || names.is_empty() {
            return Err(MetaError::Invalid(
                "a hub join token needs the hub's id and at least one name".into(),
            ));
        }
        self.join_token(Purpose::Hub {
            id: id.to_owned(),
            names,
        })
        .await
    }

    async fn join_token(&self, purpose: Purpose) -> Result<String> {
        let (token, join) = enroll::issue(
            purpose,
            Duration::from_secs(self.cfg.certs.join_token_ttl_s),
            &self.ca.cert_hash(),
            now(),
        )
        .map_err(|e| MetaError::Internal(e.to_string()))?;
        let k = enroll::record_key(&join.id);
        self.commit(
            Txn::new()
                .when(Compare::absent(k.clone()))
                .then(Op::put(k, json(&join)?)),
            "join token",
        )
        .await?;
        Ok(token)
    }

    /// Creates a grant: its tenant exists, a user subject is a user of that tenant, every
    /// cluster id it names is a cluster of that tenant.
    pub async fn create_grant(&self, caller: &Caller, g: Grant) -> Result<Grant> {
        caller.must_manage(&g.tenant)?;
        let r = Record::Grant(g.clone());
        r.validate().map_err(invalid)?;
        let mut txn = Txn::new();
        let (_, trev) = self
            .must_exist(
                &format!("tenants/{}", g.tenant),
                &format!("tenant {:?}", g.tenant),
            )
            .await?;
        txn = txn.when(Compare::mod_revision(
            format!("{ACCESS}tenants/{}", g.tenant),
            trev,
        ));
        if let Subject::User { name } = &g.subject {
            let (u, rev) = self
                .must_exist(&format!("users/{name}"), &format!("subject: user {name:?}"))
                .await?;
            if tenant_of(&u) != g.tenant {
                return Err(MetaError::Invalid(format!(
                    "subject: user {name:?} is not in tenant {:?}",
                    g.tenant
                )));
            }
            txn = txn.when(Compare::mod_revision(format!("{ACCESS}users/{name}"), rev));
        }
        for (i, id) in g.clusters.ids.iter().enumerate() {
            let (c, rev) = self
                .must_exist(
                    &format!("clusters/{id}"),
                    &format!("clusters.ids[{i}]: cluster {id:?}"),
                )
                .await?;
            if tenant_of(&c) != g.tenant {
                return Err(MetaError::Invalid(format!(
                    "clusters.ids[{i}]: cluster {id:?} is not in tenant {:?}",
                    g.tenant
                )));
            }
            txn = txn.when(Compare::mod_revision(format!("{ACCESS}clusters/{id}"), rev));
        }
        let k = key(&r);
        txn = txn
            .when(Compare::absent(k.clone()))
            .then(Op::put(k.clone(), encode(&r)?))
            .then(Op::put(format!("{MARKS}{}", g.tenant), Vec::new()));
        if !self.store.txn(txn).await?.succeeded {
            if self.store.get(&k).await?.is_some() {
                return Err(MetaError::Conflict(format!(
                    "grant {:?} already exists in tenant {:?}",
                    g.name, g.tenant
                )));
            }
            return Err(MetaError::Conflict(
                "a record the grant refers to changed while it was being created; retry".into(),
            ));
        }
        info!(grant = %g.name, tenant = %g.tenant, "grant created");
        Ok(g)
    }

    /// Deletes a record. Refused (409, naming what still refers to it) while something
    /// does: a tenant with users, clusters or grants; a user or cluster named by a grant.
    /// Deleting a user revokes its tokens in the same transaction.
    pub async fn delete(&self, caller: &Caller, kind: &str, name: &str) -> Result<()> {
        let k = format!("{kind}/{name}");
        let (r, rev) = self
            .get_record(&k)
            .await?
            .ok_or_else(|| MetaError::NotFound(format!("{k} not found")))?;
        let tenant = tenant_of(&r).to_owned();
        match &r {
            Record::Tenant(_) => caller.must_be_admin()?,
            Record::Token(t) => {
                let own = matches!(caller, Caller::User(u, _) if u.name == t.user);
                if !own {
                    caller.must_manage(&tenant)?;
                }
            }
            _ => caller.must_manage(&tenant)?,
        }
        let mut txn = Txn::new().when(Compare::mod_revision(format!("{ACCESS}{k}"), rev));
        if matches!(r, Record::Tenant(_) | Record::User(_) | Record::Cluster(_)) {
            let mark = format!("{MARKS}{tenant}");
            let mark_rev = self.store.get(&mark).await?.map_or(0, |kv| kv.mod_revision);
            txn = txn.when(Compare::mod_revision(mark, mark_rev));
        }
        let mut blockers = Vec::new();
        match &r {
            Record::Tenant(t) => {
                txn = txn.then(Op::delete(format!("{MARKS}{}", t.name)));
                for op in self.limits_of(&t.name, None).await? {
                    txn = txn.then(op);
                }
                for kind in ["users", "clusters", "grants"] {
                    let (records, _) = self.records(kind).await?;
                    for (x, _) in records {
                        if tenant_of(&x) == t.name {
                            blockers.push(x.key());
                        }
                    }
                }
            }
            Record::User(u) => {
                let (grants, _) = self.records("grants").await?;
                for (g, _) in &grants {
                    if let Record::Grant(g) = g {
                        if g.tenant == u.tenant
                            && matches!(&g.subject, Subject::User { name } if *name == u.name)
                        {
                            blockers.push(Record::Grant(g.clone()).key());
                        }
                    }
                }
                for op in self.limits_of(&u.tenant, Some(&u.name)).await? {
                    txn = txn.then(op);
                }
                // Its tokens go first (they authenticate no one once the user is gone, but
                // they should not outlive it in the store).
                if blockers.is_empty() {
                    self.revoke_all(&u.name).await?;
                }
            }
            Record::Cluster(c) => {
                let (grants, _) = self.records("grants").await?;
                for (g, _) in &grants {
                    if let Record::Grant(g) = g {
                        if g.tenant == c.tenant && g.clusters.ids.contains(&c.id) {
                            blockers.push(Record::Grant(g.clone()).key());
                        }
                    }
                }
                txn = txn.then(Op::delete(format!("{AGENTS}{}", c.id)));
                // Its unused join tokens die with it; its agents' certificates stay valid until
                // they expire, so the id stays this tenant's until then (a tombstone).
                let (joins, _) = self.store.list("join/").await?;
                for kv in joins {
                    if let Ok(j) = serde_json::from_slice::<JoinRecord>(&kv.value) {
                        if matches!(&j.purpose, Purpose::Agent { cluster } if *cluster == c.id) {
                            txn = txn.then(Op::delete(kv.key));
                        }
                    }
                }
                let tomb = Tombstone {
                    tenant: c.tenant.clone(),
                    until: now() + self.cfg.certs.agent_lifetime_s,
                };
                txn = txn.then(Op::put(format!("{TOMBSTONES}{}", c.id), json(&tomb)?));
            }
            Record::Token(t) => {
                txn = txn.then(Op::delete(format!("{USER_TOKENS}{}/{}", t.user, t.id)));
            }
            Record::Grant(_) | Record::Ban(_) | Record::Limit(_) => {}
        }
        if !blockers.is_empty() {
            return Err(MetaError::Conflict(format!(
                "{k} is still referred to by: {}; delete those first",
                blockers.join(", ")
            )));
        }
        txn = txn.then(Op::delete(format!("{ACCESS}{k}")));
        self.commit(txn, &format!("deleting {k}")).await?;
        info!(record = %k, by = %caller.name(), "deleted");
        Ok(())
    }

    /// Revokes every token of `user`; returns how many.
    pub async fn revoke_tokens(&self, caller: &Caller, user: &str) -> Result<usize> {
        let u = self.get_user(user).await?;
        let own = matches!(caller, Caller::User(me, _) if me.name == u.name);
        if !own {
            caller.must_manage(&u.tenant)?;
        }
        let n = self.revoke_all(user).await?;
        info!(user, revoked = n, "tokens revoked");
        Ok(n)
    }

    /// Deletes every token of `user`, in transactions of a bounded size (etcd takes at most
    /// 128 operations in one).
    async fn revoke_all(&self, user: &str) -> Result<usize> {
        let tokens = self.user_tokens(user).await?;
        for chunk in tokens.chunks(SWEEP) {
            let mut txn = Txn::new();
            for (t, rev) in chunk {
                let k = format!("{ACCESS}tokens/{}", t.id);
                txn = txn
                    .when(Compare::mod_revision(k.clone(), *rev))
                    .then(Op::delete(k))
                    .then(Op::delete(format!("{USER_TOKENS}{user}/{}", t.id)));
            }
            self.commit(txn, "revoking tokens").await?;
        }
        Ok(tokens.len())
    }

    /// The access records of one tenant (and its users), as an index, to answer "which
    /// clusters may this user reach" with exactly the hub's rules.
    async fn tenant_index(&self, tenant: &str) -> Result<Index> {
        let mut records = Vec::new();
        let mut revision = 0;
        for kind in ["tenants", "users", "clusters", "grants"] {
            let (rs, rev) = self.records(kind).await?;
            revision = revision.max(rev);
            records.extend(
                rs.into_iter()
                    .map(|(r, _)| r)
                    .filter(|r| tenant_of(r) == tenant),
            );
        }
        let index = Index::new();
        index
            .apply(&Line::Snapshot { revision, records })
            .map_err(|e| MetaError::Internal(format!("building the tenant's index: {e}")))?;
        Ok(index)
    }

    /// Issues a token and the kubeconfig that carries it.
    pub async fn kubeconfig(&self, caller: &Caller, req: KubeconfigRequest) -> Result<Issued> {
        let name = match (&req.user, caller) {
            (Some(u), _) => u.clone(),
            (None, Caller::User(u, _)) => u.name.clone(),
            (None, _) => {
                return Err(MetaError::Invalid(
                    "user: required when the caller is not a user".into(),
                ))
            }
        };
        let (user, user_rev) = match self.get_record(&format!("users/{name}")).await? {
            Some((Record::User(u), rev)) => (u, rev),
            _ => return Err(MetaError::Invalid(format!("user: {name:?} does not exist"))),
        };
        let own = matches!(caller, Caller::User(me, _) if me.name == user.name);
        if !own {
            caller.must_manage(&user.tenant)?;
        }
        let lifetime = req.lifetime_s.unwrap_or(self.cfg.tokens.default_lifetime_s);
        if lifetime == 0 || lifetime > self.cfg.tokens.max_lifetime_s {
            return Err(MetaError::Invalid(format!(
                "lifetimeS: must be between 1 and {} seconds",
                self.cfg.tokens.max_lifetime_s
            )));
        }
        let index = self.tenant_index(&user.tenant).await?;
        let granted = index.clusters_for(&user.name);
        let clusters = if req.clusters.is_empty() {
            if granted.is_empty() {
                return Err(MetaError::Forbidden(format!(
                    "user {:?} has no grant on any cluster",
                    user.name
                )));
            }
            granted
        } else {
            for c in &req.clusters {
                if index.cluster(c).is_none() {
                    return Err(MetaError::Invalid(format!(
                        "clusters: {c:?} is not a cluster of tenant {:?}",
                        user.tenant
                    )));
                }
                if !granted.contains(c) {
                    return Err(MetaError::Forbidden(format!(
                        "user {:?} has no grant on cluster {c:?}",
                        user.name
                    )));
                }
            }
            req.clusters.clone()
        };
        let t_now = now();
        // A token mints only within itself: the clusters it covers, no later expiry (a token
        // handed to a CI job for one cluster does not become a key to everything).
        let (clusters, expires) = match caller {
            Caller::User(_, scope) => {
                let clusters: Vec<String> = if req.clusters.is_empty() {
                    clusters
                        .into_iter()
                        .filter(|c| scope.clusters.contains(c))
                        .collect()
                } else if let Some(c) = clusters.iter().find(|c| !scope.clusters.contains(c)) {
                    return Err(MetaError::Forbidden(format!(
                        "the token you called with does not cover cluster {c:?}: a token can \
                         only issue tokens for its own clusters"
                    )));
                } else {
                    clusters
                };
                if clusters.is_empty() {
                    return Err(MetaError::Forbidden(
                        "the token you called with covers none of these clusters".into(),
                    ));
                }
                let expires = match scope.expires {
                    0 => t_now + lifetime,
                    e => (t_now + lifetime).min(e),
                };
                (clusters, expires)
            }
            _ => (clusters, t_now + lifetime),
        };
        let mut live = Vec::new();
        let mut expired = Vec::new();
        for (t, rev) in self.user_tokens(&user.name).await? {
            if t.expires == 0 || t.expires > t_now {
                live.push((t, rev));
            } else if expired.len() < SWEEP {
                expired.push((t, rev));
            }
        }
        if !req.replace && live.len() >= self.cfg.tokens.max_per_user {
            return Err(MetaError::Conflict(format!(
                "user {:?} already holds {} live tokens (the most allowed); revoke old ones \
                 (`kubehub ctl token revoke --user {}`) or ask with replace",
                user.name,
                live.len(),
                user.name
            )));
        }
        let (token, id, hash) = Token::generate();
        let record = TokenRecord {
            id,
            user: user.name.clone(),
            tenant: user.tenant.clone(),
            clusters: clusters.clone(),
            hash,
            created: t_now,
            expires,
            description: req.description.clone(),
        };
        let r = Record::Token(record.clone());
        r.validate().map_err(invalid)?;
        let k = key(&r);
        // The user is still there, unchanged (a deletion racing this would leave an orphan).
        let mut txn = Txn::new()
            .when(Compare::mod_revision(
                format!("{ACCESS}users/{}", user.name),
                user_rev,
            ))
            .when(Compare::absent(k.clone()))
            .then(Op::put(k, encode(&r)?))
            .then(Op::put(
                format!("{USER_TOKENS}{}/{}", user.name, record.id),
                Vec::new(),
            ))
            // A user being deleted meanwhile (its tokens revoked first) must not be left
            // with this one: the deletion compares the tenant's mark.
            .then(Op::put(format!("{MARKS}{}", user.tenant), Vec::new()));
        // Expired tokens of the user are cleared away as it gets a new one.
        for (t, rev) in &expired {
            let k = format!("{ACCESS}tokens/{}", t.id);
            txn = txn
                .when(Compare::mod_revision(k.clone(), *rev))
                .then(Op::delete(k))
                .then(Op::delete(format!("{USER_TOKENS}{}/{}", user.name, t.id)));
        }
        let mut revoked = 0;
        if req.replace {
            for (t, rev) in &live {
                let k = format!("{ACCESS}tokens/{}", t.id);
                txn = txn
                    .then(Op::delete(format!("{USER_TOKENS}{}/{}", user.name, t.id)))
                    .when(Compare::mod_revision(k.clone(), *rev))
                    .then(Op::delete(k));
                revoked += 1;
            }
        }
        self.commit(txn, "issuing a token").await?;
        info!(user = %user.name, token = %record.id, clusters = ?clusters, "token issued");
        let server = self.hub_url().await?;
        Ok(Issued {
            kubeconfig: kubeconfig_yaml(&server, &self.hub_ca_pem, &user.name, &clusters, &token),
            other_live_tokens: if req.replace { 0 } else { live.len() },
            revoked,
            token: record,
        })
    }

    async fn hub_url(&self) -> Result<String> {
        if !self.cfg.hub_url.is_empty() {
            return Ok(self.cfg.hub_url.trim_end_matches('/').to_owned());
        }
        let hubs = self.hubs().await?;
        hubs.first()
            .map(|h| h.endpoint.trim_end_matches('/').to_owned())
            .ok_or_else(|| {
                MetaError::Conflict(
                    "no hub is registered and meta.toml sets no hub_url: nowhere to point a kubeconfig"
                        .into(),
                )
            })
    }

    // ---- registry --------------------------------------------------------------------------

    /// Records a heartbeat under a lease: the same lease is kept alive while it lives, a new
    /// one is granted when it expired. Any replica can do this (the lease id is in the key).
    ///
    /// A heartbeat that changes nothing writes nothing: when the stored record equals `record`
    /// but for `updated`, and was written less than `registry.refresh_s` ago, only its lease
    /// is kept alive (no store write, no watch event). So `updated` is when the record last
    /// changed or was refreshed, and the store sees about `registrations / refresh_s` writes
    /// a second plus the changes, instead of one per heartbeat.
    async fn heartbeat<T: Heartbeat>(&self, k: String, mut record: T) -> Result<()> {
        let t_now = now();
        *record.updated() = t_now;
        let mut lease = 0;
        if let Some(kv) = self.store.get(&k).await? {
            if kv.lease != 0 && self.store.lease_keep_alive(kv.lease).await.is_ok() {
                lease = kv.lease;
                if let Ok(mut stored) = serde_json::from_slice::<T>(&kv.value) {
                    let written = *stored.updated();
                    *stored.updated() = t_now;
                    let fresh = t_now.saturating_sub(written) < self.cfg.registry.refresh_s;
                    if fresh && stored == record {
                        return Ok(());
                    }
                }
            }
        }
        if lease == 0 {
            lease = self.store.lease_grant(self.cfg.registry.ttl_s).await?;
        }
        self.store
            .txn(Txn::new().then(Op::put_with_lease(k, json(&record)?, lease)))
            .await?;
        Ok(())
    }

    /// A hub's heartbeat (the hub itself or an admin).
    pub async fn register_hub(&self, caller: &Caller, id: &str, mut h: HubRecord) -> Result<()> {
        match caller {
            Caller::Admin => {}
            Caller::Hub(me) if me == id => {}
            _ => {
                return Err(MetaError::Forbidden(format!(
                    "{} may not register hub {id:?}",
                    caller.name()
                )))
            }
        }
        if id.is_empty() || h.agent_endpoint.is_empty() || !h.endpoint.starts_with("https://") {
            return Err(MetaError::Invalid(
                "a hub needs an id, an https:// endpoint and an agentEndpoint".into(),
            ));
        }
        h.id = id.to_owned();
        self.heartbeat(format!("{HUBS}{id}"), h).await
    }

    /// An agent's heartbeat (the agent of that cluster, or an admin).
    pub async fn register_agent(
        &self,
        caller: &Caller,
        cluster: &str,
        mut a: AgentRecord,
    ) -> Result<()> {
        match caller {
            Caller::Admin => {}
            Caller::Agent(me) if me == cluster => {}
            _ => {
                return Err(MetaError::Forbidden(format!(
                    "{} may not register the agent of cluster {cluster:?}",
                    caller.name()
                )))
            }
        }
        a.cluster = cluster.to_owned();
        self.heartbeat(format!("{AGENTS}{cluster}"), a).await
    }

    /// Live hubs, by id; a hub an operator drained says `draining` (before it heard of it).
    pub async fn hubs(&self) -> Result<Vec<HubRecord>> {
        let (kvs, _) = self.store.list(HUBS).await?;
        let mut hubs: Vec<HubRecord> = kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect();
        let drained: Vec<DrainMark> = self.list_registry(DRAINS).await?;
        for h in &mut hubs {
            h.draining |= drained.iter().any(|d| d.hub == h.id);
        }
        Ok(hubs)
    }

    /// Every value under a registry prefix that reads (one that does not is reported).
    async fn list_registry<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>> {
        let (kvs, _) = self.store.list(prefix).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| match serde_json::from_slice(&kv.value) {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(key = %kv.key, "a stored registry entry does not read ({e}): ignored");
                    None
                }
            })
            .collect())
    }

    /// The live hubs as `caller` may use them: for the agent of a cluster, the hubs it may
    /// hold tunnels to ([`eligibility`]: not draining, of the cluster's environment, by the
    /// canary rule) and the ids of the other live hubs; for anyone else every live hub.
    pub async fn hubs_for(&self, caller: &Caller) -> Result<HubChoice> {
        let hubs = self.hubs().await?;
        let Caller::Agent(cluster) = caller else {
            return Ok(HubChoice {
                items: hubs,
                ineligible: None,
                ineligible_endpoints: None,
            });
        };
        let cluster = self.agent_cluster(cluster).await?;
        let canary = self.canary_rule().await?;
        let pin = self.pin_of(&cluster.id).await?;
        let e = eligibility(&hubs, &cluster, canary.as_ref(), pin.as_ref());
        Ok(HubChoice {
            items: e.eligible.into_iter().cloned().collect(),
            ineligible: Some(e.ineligible.iter().map(|h| h.id.clone()).collect()),
            ineligible_endpoints: Some(
                e.ineligible
                    .iter()
                    .map(|h| h.agent_endpoint.clone())
                    .collect(),
            ),
        })
    }

    /// The cluster record of an agent's cluster (refused once the cluster is deleted).
    async fn agent_cluster(&self, id: &str) -> Result<Cluster> {
        match self.get_record(&format!("clusters/{id}")).await? {
            Some((Record::Cluster(c), _)) => Ok(c),
            _ => Err(MetaError::Forbidden(format!(
                "cluster {id:?} no longer exists: its agent has no hubs to use"
            ))),
        }
    }

    /// Live agents, by cluster.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>> {
        let (kvs, _) = self.store.list(AGENTS).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    // ---- canary ----------------------------------------------------------------------------

    /// The canary rule in the store (one that no longer reads is reported and ignored).
    async fn canary_rule(&self) -> Result<Option<CanaryRule>> {
        let Some(kv) = self.store.get(CANARY).await? else {
            return Ok(None);
        };
        match serde_json::from_slice(&kv.value) {
            Ok(rule) => Ok(Some(rule)),
            Err(e) => {
                tracing::warn!("the stored canary rule does not read ({e}): ignored");
                Ok(None)
            }
        }
    }

    /// Sets the canary rule (admin), replacing any.
    pub async fn set_canary(&self, caller: &Caller, rule: CanaryRule) -> Result<CanaryRule> {
        caller.must_be_admin()?;
        rule.validate().map_err(invalid)?;
        self.store.put(CANARY, json(&rule)?).await?;
        info!(version = %rule.version, percent = rule.percent, "canary rule set");
        Ok(rule)
    }

    /// The canary rule (admin), if one is set.
    pub async fn canary(&self, caller: &Caller) -> Result<Option<CanaryRule>> {
        caller.must_be_admin()?;
        self.canary_rule().await
    }

    /// Clears the canary rule (admin); nothing happens when none is set.
    pub async fn clear_canary(&self, caller: &Caller) -> Result<()> {
        caller.must_be_admin()?;
        if self.store.get(CANARY).await?.is_some() {
            self.store.delete(CANARY).await?;
            info!("canary rule cleared");
        }
        Ok(())
    }

    // ---- operators' drains and pins ---------------------------------------------------------

    /// Drains hub `hub` (admin; `drain: false` lifts it). The hub hears it on its registry
    /// watch and drains as for a restart without exiting; agents stop choosing it at once.
    /// Draining a hub that is not live is refused (a typo would drain nothing); lifting
    /// always works.
    pub async fn drain_hub(
        &self,
        caller: &Caller,
        hub: &str,
        drain: bool,
        reason: &str,
    ) -> Result<Option<DrainMark>> {
        caller.must_be_admin()?;
        let mut mark = DrainMark {
            hub: hub.to_owned(),
            reason: reason.to_owned(),
            by: caller.name(),
            since: now(),
        };
        mark.validate().map_err(invalid)?;
        let key = format!("{DRAINS}{hub}");
        if !drain {
            if self.store.get(&key).await?.is_some() {
                self.store.delete(&key).await?;
                info!(%hub, by = %caller.name(), "hub drain lifted");
            }
            return Ok(None);
        }
        if self.store.get(&format!("{HUBS}{hub}")).await?.is_none() {
            return Err(MetaError::NotFound(format!("no live hub {hub:?}")));
        }
        mark.since = now();
        self.store.put(&key, json(&mark)?).await?;
        info!(%hub, by = %mark.by, reason = %mark.reason, "hub drained by an operator");
        Ok(Some(mark))
    }

    /// The hubs operators drained (admin).
    pub async fn drains(&self, caller: &Caller) -> Result<Vec<DrainMark>> {
        caller.must_be_admin()?;
        self.list_registry(DRAINS).await
    }

    /// Pins cluster `cluster` to `hubs` (admin), replacing any pin: its agent moves its tunnels
    /// to them (as many of them as it keeps tunnels). The cluster must exist and each hub be
    /// live now.
    pub async fn set_pin(&self, caller: &Caller, mut pin: Pin) -> Result<Pin> {
        caller.must_be_admin()?;
        pin.validate().map_err(invalid)?;
        if self
            .get_record(&format!("clusters/{}", pin.cluster))
            .await?
            .is_none()
        {
            return Err(MetaError::NotFound(format!(
                "cluster {:?} not found",
                pin.cluster
            )));
        }
        for (i, h) in pin.hubs.iter().enumerate() {
            if self.store.get(&format!("{HUBS}{h}")).await?.is_none() {
                return Err(invalid(format!("hubs[{i}]: no live hub {h:?}")));
            }
        }
        pin.by = caller.name();
        pin.since = now();
        self.store
            .put(&format!("{PINS}{}", pin.cluster), json(&pin)?)
            .await?;
        info!(cluster = %pin.cluster, hubs = ?pin.hubs, by = %pin.by, "cluster pinned");
        Ok(pin)
    }

    /// A cluster's pin, if it has one.
    async fn pin_of(&self, cluster: &str) -> Result<Option<Pin>> {
        let Some(kv) = self.store.get(&format!("{PINS}{cluster}")).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&kv.value)
            .map_err(|e| tracing::warn!(%cluster, "the stored pin does not read ({e}): ignored"))
            .ok())
    }

    /// A cluster's pin (admin).
    pub async fn pin(&self, caller: &Caller, cluster: &str) -> Result<Option<Pin>> {
        caller.must_be_admin()?;
        self.pin_of(cluster).await
    }

    /// Every pin (admin).
    pub async fn pins(&self, caller: &Caller) -> Result<Vec<Pin>> {
        caller.must_be_admin()?;
        self.list_registry(PINS).await
    }

    /// Lifts a cluster's pin (admin); nothing happens when it has none.
    pub async fn clear_pin(&self, caller: &Caller, cluster: &str) -> Result<()> {
        caller.must_be_admin()?;
        let key = format!("{PINS}{cluster}");
        if self.store.get(&key).await?.is_some() {
            self.store.delete(&key).await?;
            info!(%cluster, by = %caller.name(), "cluster pin lifted");
        }
        Ok(())
    }

    // ---- enrollment ------------------------------------------------------------------------

    /// Redeems a join token for a certificate over the requester's CSR. The token is marked
    /// used in the same transaction that checks it was not (a token works once, even with two
    /// replicas racing).
    pub async fn enroll(&self, token: &str, csr: &str) -> Result<Enrolled> {
        let token = JoinToken::parse(token).map_err(|e| MetaError::Unauthorized(e.to_string()))?;
        let k = enroll::record_key(&token.id);
        let kv = self.store.get(&k).await?.ok_or_else(|| {
            MetaError::Unauthorized(format!("join token {} is not known", token.id))
        })?;
        let record: JoinRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| MetaError::Internal(format!("join record {k}: {e}")))?;
        let used = enroll::consume(&record, &token, now())
            .map_err(|e| MetaError::Unauthorized(e.to_string()))?;
        if let Purpose::Agent { cluster } = &record.purpose {
            if self
                .get_record(&format!("clusters/{cluster}"))
                .await?
                .is_none()
            {
                return Err(MetaError::Unauthorized(format!(
                    "join token {} is for cluster {cluster:?}, which no longer exists",
                    token.id
                )));
            }
        }
        let cert = self.sign(csr, &record.purpose)?;
        let txn = Txn::new()
            .when(Compare::mod_revision(k.clone(), kv.mod_revision))
            .then(Op::put(k, json(&used)?));
        if !self.store.txn(txn).await?.succeeded {
            return Err(MetaError::Unauthorized(format!(
                "join token {} has already been used",
                token.id
            )));
        }
        info!(identity = %record.purpose.identity(), "enrolled");
        self.enrolled(cert, &record.purpose).await
    }

    /// A new certificate for a caller holding a valid one (renewal before expiry).
    pub async fn renew(&self, caller: &Caller, csr: &str, names: Vec<String>) -> Result<Enrolled> {
        let purpose = match caller {
            Caller::Agent(c) => {
                if self.get_record(&format!("clusters/{c}")).await?.is_none() {
                    return Err(MetaError::Forbidden(format!(
                        "cluster {c:?} no longer exists: its agent cannot renew"
                    )));
                }
                Purpose::Agent { cluster: c.clone() }
            }
            Caller::Hub(h) => Purpose::Hub {
                id: h.clone(),
                names,
            },
            _ => {
                return Err(MetaError::Forbidden(
                    "renewal needs the current certificate of an agent or a hub (mutual TLS)"
                        .into(),
                ))
            }
        };
        let cert = self.sign(csr, &purpose)?;
        info!(identity = %purpose.identity(), "certificate renewed");
        self.enrolled(cert, &purpose).await
    }

    fn sign(&self, csr: &str, purpose: &Purpose) -> Result<String> {
        let lifetime = match purpose {
            Purpose::Agent { .. } => self.cfg.certs.agent_lifetime_s,
            Purpose::Hub { .. } => self.cfg.certs.hub_lifetime_s,
        };
        self.ca
            .sign_csr(csr, &purpose.profile(), Duration::from_secs(lifetime))
            .map_err(|e| MetaError::Invalid(format!("csr: {e}")))
    }

    /// The answer to an enrollment or renewal: with the hubs an agent may use (as
    /// [`Meta::hubs_for`] says), or every live hub for a hub.
    async fn enrolled(&self, certificate: String, purpose: &Purpose) -> Result<Enrolled> {
        let caller = match purpose {
            Purpose::Agent { cluster } => Caller::Agent(cluster.clone()),
            Purpose::Hub { id, .. } => Caller::Hub(id.clone()),
        };
        Ok(Enrolled {
            certificate,
            ca: self.ca_pem.to_string(),
            identity: purpose.identity().to_owned(),
            hubs: self
                .hubs_for(&caller)
                .await?
                .items
                .into_iter()
                .map(|h| h.agent_endpoint)
                .collect(),
        })
    }
}

/// The tenant a record belongs to (a tenant belongs to itself).
pub fn tenant_of(r: &Record) -> &str {
    match r {
        Record::Tenant(t) => &t.name,
        Record::User(u) => &u.tenant,
        Record::Cluster(c) => &c.tenant,
        Record::Grant(g) => &g.tenant,
        Record::Token(t) => &t.tenant,
        // Bans are not a tenant's records (admin only); a tenant ban names its tenant.
        Record::Ban(b) => match &b.target {
            kubehub_access::ban::BanTarget::Tenant(t) => t,
            _ => "",
        },
        Record::Limit(l) => &l.tenant,
    }
}

fn json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| MetaError::Internal(format!("encoding: {e}")))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn q(s: &str) -> String {
    serde_json::Value::String(s.to_owned()).to_string()
}

/// The kubeconfig: one cluster and context per cluster id, all with the same user (token).
pub fn kubeconfig_yaml(
    server: &str,
    ca_pem: &str,
    user: &str,
    clusters: &[String],
    token: &str,
) -> String {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for c in clusters {
        y += &format!(
            "- name: {}\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n",
            q(c),
            q(&format!("{server}/clusters/{c}")),
            q(&ca)
        );
    }
    y += "contexts:\n";
    for c in clusters {
        y += &format!(
            "- name: {}\n  context:\n    cluster: {}\n    user: {}\n",
            q(c),
            q(c),
            q(user)
        );
    }
    y += &format!(
        "current-context: {}\nusers:\n- name: {}\n  user:\n    token: {}\n",
        q(clusters.first().map(String::as_str).unwrap_or("")),
        q(user),
        q(token)
    );
    y
}

async fn load_or_create_ca(store: &Backend) -> Result<Ca> {
    for _ in 0..3 {
        if let (Some(c), Some(k)) = (store.get(CA_CERT).await?, store.get(CA_KEY).await?) {
            let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
            return Ca::from_pem(&text(&c.value), &text(&k.value))
                .map_err(|e| MetaError::Internal(format!("the stored CA: {e}")));
        }
        let ca = Ca::generate("kubehub-ca").map_err(|e| MetaError::Internal(e.to_string()))?;
        let txn = Txn::new()
            .when(Compare::absent(CA_CERT))
            .when(Compare::absent(CA_KEY))
            .then(Op::put(CA_CERT, ca.cert_pem().into_bytes()))
            .then(Op::put(CA_KEY, ca.key_pem().into_bytes()));
        if store.txn(txn).await?.succeeded {
            info!("created the CA");
            return Ok(ca);
        }
        // Another replica created it first: read theirs.
    }
    Err(MetaError::Internal(
        "could not load or create the CA".into(),
    ))
}

/// Reads admin tokens (one per line, `#` comments); creates the file with a random token
/// (mode 0600) when it does not exist.
fn admin_tokens(path: &std::path::Path) -> Result<Vec<[u8; 32]>> {
    if !path.exists() {
        let (token, _, _) = Token::generate();
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        write_private(path, &format!("{token}\n"))
            .map_err(|e| MetaError::Internal(format!("writing {}: {e}", path.display())))?;
        info!(file = %path.display(), "wrote a new admin token");
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| MetaError::Internal(format!("reading {}: {e}", path.display())))?;
    let tokens: Vec<[u8; 32]> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| kubehub_access::token::hash(l.as_bytes()))
        .collect();
    if tokens.is_empty() {
        return Err(MetaError::Internal(format!(
            "{} holds no admin token",
            path.display()
        )));
    }
    Ok(tokens)
}

/// Writes a file only its owner can read.
pub fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// Labels as `k=v,k=v`.
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}
