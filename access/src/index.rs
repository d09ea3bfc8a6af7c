//! [`Index`]: the hub's in-memory access state, fed by the metaserver's change feed
//! ([`Line`]s), asked on every request who is calling ([`Index::authenticate`]) and whether
//! they may ([`Index::authorize`]).
//!
//! # Layout
//!
//! * Tokens: a [`DashMap`] from the token's SHA-256 to the [`Identity`] it authenticates, the
//!   user's groups and tenant copied in. An identity exists only while its token record, its
//!   user and the user's tenant all exist and agree on the tenant, so deleting a token, its
//!   user or its tenant makes it fail authentication at once; changing a user re-derives the
//!   identities of the user's tokens.
//! * Grants and clusters: an immutable table behind an [`ArcSwap`], one entry per tenant with
//!   the tenant's clusters and its grants indexed by subject (user name → grants, group →
//!   grants, the tenant-wide ones). A change of a grant, cluster or tenant rebuilds that
//!   tenant's entry (O(the tenant's grants and the clusters)) and swaps the table.
//! * Bans: a [`BanTable`] behind an [`ArcSwap`] (token, user, tenant and cluster bans in hash
//!   maps, client bans in a short list), rebuilt whenever a ban changes; see [`crate::ban`].
//! * The records themselves, behind a mutex taken only by [`Index::apply`] and
//!   [`Index::clusters_for`]: what entries are rebuilt from.
//!
//! Readers never wait for a writer. Authentication and an allowed authorization do not
//! allocate (`tests/alloc.rs` counts).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, UNIX_EPOCH};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::ban::{ActiveBan, Ban, BanTable};
use crate::model::{
    Cluster, Grant, Key, Limit, Record, RecordError, Rule, Subject, Tenant, TokenRecord, User,
};
use crate::policy::{discovery_rule, is_discovery, Attributes, Decision, DenyReason};
use crate::sync::Line;
use crate::token::{parse_hex, Token, TokenError};

/// Who a request is from: what a valid token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's id (`tokens/<id>`).
    pub token_id: String,
    /// The user name (what the edge sees).
    pub user: String,
    /// The user's tenant.
    pub tenant: String,
    /// The user's effective groups: their own, then `kubehub:tenant:<tenant>`.
    pub groups: Vec<String>,
    /// The clusters the token is bound to, sorted.
    pub clusters: Box<[String]>,
    /// When the token expires, Unix seconds; 0: never.
    pub expires: u64,
}

impl Identity {
    /// Whether the token may be used on the cluster.
    pub fn may_use(&self, cluster: &str) -> bool {
        self.clusters
            .binary_search_by(|c| c.as_str().cmp(cluster))
            .is_ok()
    }
}

/// Why a request is not authenticated (answered 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No `Authorization` header (or an empty one).
    #[error("no credentials: send the header Authorization: Bearer <token>")]
    Missing,
    /// An `Authorization` header that is not `Bearer <token>`.
    #[error("the Authorization header is not Bearer <token>")]
    NotBearer,
    /// A bearer token that is not a KubeHub token.
    #[error("{0}")]
    Malformed(TokenError),
    /// A KubeHub token that is not (or no longer) valid: never issued, revoked, or its user or
    /// tenant deleted.
    #[error("the token is unknown or has been revoked")]
    Unknown,
    /// The token expired.
    #[error("the token expired at {}", expiry_time(*at))]
    Expired {
        /// When, Unix seconds.
        at: u64,
    },
}

fn expiry_time(at: u64) -> String {
    kubehub_kapi::time::rfc3339(UNIX_EPOCH + Duration::from_secs(at))
}

/// Records a line could not apply (the line was applied without them, and the record under
/// each key removed: failing closed).
#[derive(Debug)]
pub struct ApplyError {
    /// What was refused, and why.
    pub rejected: Vec<RecordError>,
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} record(s) refused", self.rejected.len())?;
        for (i, e) in self.rejected.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApplyError {}

/// The hub's access state. See the [module](self) documentation.
pub struct Index {
    table: ArcSwap<Table>,
    bans: ArcSwap<BanTable>,
    tokens: DashMap<[u8; 32], Arc<Identity>>,
    revision: AtomicI64,
    records: Mutex<Records>,
    /// Limit records by tenant (`limits/…`), republished whole on every change of one.
    limits: ArcSwap<HashMap<String, Arc<TenantLimits>>>,
    /// Bumped on every change of a limit record (readers cache what they derived from them).
    limits_generation: AtomicU64,
}

/// A tenant's limit records (`limits/<tenant>` and `limits/<tenant>/<user>`), as the hub's
/// `admit` phase reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// `limits/<tenant>`, if set.
    pub tenant: Option<Limit>,
    /// `limits/<tenant>/<user>`, by user.
    pub users: HashMap<String, Limit>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table = self.table.load();
        f.debug_struct("Index")
            .field("revision", &self.revision())
            .field("tenants", &table.tenants.len())
            .field("clusters", &table.clusters.len())
            .field("identities", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

/// What requests are decided with: per tenant, its clusters and grants.
#[derive(Clone, Default)]
struct Table {
    tenants: HashMap<String, Arc<TenantTable>>,
    clusters: HashMap<String, Arc<Cluster>>,
}

/// One tenant's clusters, and its grants indexed by subject.
struct TenantTable {
    clusters: HashMap<String, Arc<Cluster>>,
    /// The tenant's grants, each with its selector's ids sorted.
    grants: Vec<Grant>,
    by_user: HashMap<String, Box<[u32]>>,
    by_group: HashMap<String, Box<[u32]>>,
    everyone: Box<[u32]>,
}

impl TenantTable {
    fn build<'c>(
        tenant: &str,
        clusters: impl Iterator<Item = &'c Arc<Cluster>>,
        grants: Option<&BTreeMap<String, Grant>>,
    ) -> TenantTable {
        let clusters = clusters
            .filter(|c| c.tenant == tenant)
            .map(|c| (c.id.clone(), Arc::clone(c)))
            .collect();
        let mut by_user: HashMap<String, Vec<u32>> = HashMap::new();
        let mut by_group: HashMap<String, Vec<u32>> = HashMap::new();
        let mut everyone = Vec::new();
        let mut list = Vec::new();
        for (i, g) in grants.into_iter().flat_map(|g| g.values()).enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let mut g = g.clone();
            g.clusters.ids.sort();
            g.clusters.ids.dedup();
            match &g.subject {
                Subject::User { name } => by_user.entry(name.clone()).or_default().push(i),
                Subject::Group { name } => by_group.entry(name.clone()).or_default().push(i),
                Subject::Tenant => everyone.push(i),
            }
            list.push(g);
        }
        let boxed = |m: HashMap<String, Vec<u32>>| {
            m.into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect()
        };
        TenantTable {
            clusters,
            grants: list,
            by_user: boxed(by_user),
            by_group: boxed(by_group),
            everyone: everyone.into_boxed_slice(),
        }
    }

    /// The indices of the grants whose subject is this user (by name, group or tenant): the
    /// user's own first, then by group, then the tenant-wide ones. A grant has one subject, so
    /// it comes once unless `groups` repeats a group.
    fn candidates<'s>(
        &'s self,
        user: &str,
        groups: &'s [String],
    ) -> impl Iterator<Item = u32> + 's {
        let of = |list: Option<&'s Box<[u32]>>| list.map_or(&[][..], |l| &l[..]);
        of(self.by_user.get(user))
            .iter()
            .chain(
                groups
                    .iter()
                    .flat_map(move |g| of(self.by_group.get(g.as_str()))),
            )
            .chain(self.everyone.iter())
            .copied()
    }

    fn grant(&self, i: u32) -> &Grant {
        &self.grants[i as usize]
    }
}

/// Whether a grant of the tenant selects a cluster of the tenant (ids sorted by
/// [`TenantTable::build`]).
fn selects(grant: &Grant, cluster: &Cluster) -> bool {
    let sel = &grant.clusters;
    grant.tenant == cluster.tenant
        && (sel
            .ids
            .binary_search_by(|id| id.as_str().cmp(&cluster.id))
            .is_ok()
            || (!sel.labels.is_empty()
                && sel
                    .labels
                    .iter()
                    .all(|(k, v)| cluster.labels.get(k) == Some(v))))
}

/// The records, as the feed gave them: what the table and identities are derived from.
#[derive(Default)]
struct Records {
    tenants: HashMap<String, Tenant>,
    users: HashMap<String, User>,
    clusters: HashMap<String, Cluster>,
    /// tenant → name → grant.
    grants: HashMap<String, BTreeMap<String, Grant>>,
    /// id → token.
    tokens: HashMap<String, TokenEntry>,
    /// user → ids of the user's tokens.
    tokens_by_user: HashMap<String, BTreeSet<String>>,
    /// id → ban.
    bans: HashMap<String, Ban>,
    /// tenant → its limit records.
    limits: HashMap<String, TenantLimits>,
}

struct TokenEntry {
    record: TokenRecord,
    hash: [u8; 32],
}

impl Records {
    fn put_token(&mut self, record: TokenRecord) -> Option<TokenEntry> {
        // Validated records have a hash that parses.
        let hash = parse_hex(&record.hash).unwrap_or_default();
        let (id, user) = (record.id.clone(), record.user.clone());
        let old = self.tokens.insert(id.clone(), TokenEntry { record, hash });
        if let Some(old) = &old {
            if old.record.user != user {
                self.forget_token_of(&old.record.user, &id);
            }
        }
        self.tokens_by_user.entry(user).or_default().insert(id);
        old
    }

    fn remove_token(&mut self, id: &str) -> Option<TokenEntry> {
        let old = self.tokens.remove(id)?;
        self.forget_token_of(&old.record.user, id);
        Some(old)
    }

    fn forget_token_of(&mut self, user: &str, id: &str) {
        if let Some(ids) = self.tokens_by_user.get_mut(user) {
            ids.remove(id);
            if ids.is_empty() {
                self.tokens_by_user.remove(user);
            }
        }
    }

    fn put(&mut self, record: Record) {
        match record {
            Record::Tenant(t) => {
                self.tenants.insert(t.name.clone(), t);
            }
            Record::User(u) => {
                self.users.insert(u.name.clone(), u);
            }
            Record::Cluster(c) => {
                self.clusters.insert(c.id.clone(), c);
            }
            Record::Grant(g) => {
                self.grants
                    .entry(g.tenant.clone())
                    .or_default()
                    .insert(g.name.clone(), g);
            }
            Record::Token(t) => {
                self.put_token(t);
            }
            Record::Ban(b) => {
                self.bans.insert(b.id.clone(), b);
            }
            Record::Limit(l) => {
                let entry = self.limits.entry(l.tenant.clone()).or_default();
                if l.user.is_empty() {
                    entry.tenant = Some(l);
                } else {
                    entry.users.insert(l.user.clone(), l);
                }
            }
        }
    }

    fn remove_limit(&mut self, tenant: &str, user: Option<&str>) -> bool {
        let Some(entry) = self.limits.get_mut(tenant) else {
            return false;
        };
        let removed = match user {
            None => entry.tenant.take().is_some(),
            Some(u) => entry.users.remove(u).is_some(),
        };
        if entry.tenant.is_none() && entry.users.is_empty() {
            self.limits.remove(tenant);
        }
        removed
    }

    /// The identity a token stands for, if its user and tenant exist and agree.
    fn derive(&self, entry: &TokenEntry) -> Option<Identity> {
        let user = self.users.get(&entry.record.user)?;
        if user.tenant != entry.record.tenant || !self.tenants.contains_key(&user.tenant) {
            return None;
        }
        let mut clusters = entry.record.clusters.clone();
        clusters.sort();
        clusters.dedup();
        Some(Identity {
            token_id: entry.record.id.clone(),
            user: user.name.clone(),
            tenant: user.tenant.clone(),
            groups: user.effective_groups(),
            clusters: clusters.into_boxed_slice(),
            expires: entry.record.expires,
        })
    }
}

/// `Bearer <token>` (scheme in any case, spaces around trimmed) → the token.
fn bearer(header: &[u8]) -> Result<&[u8], AuthnError> {
    let header = header.trim_ascii();
    if header.is_empty() {
        return Err(AuthnError::Missing);
    }
    let Some(space) = header.iter().position(|&b| b == b' ') else {
        return Err(AuthnError::NotBearer);
    };
    let (scheme, token) = header.split_at(space);
    let token = token.trim_ascii_start();
    if !scheme.eq_ignore_ascii_case(b"bearer") || token.is_empty() {
        return Err(AuthnError::NotBearer);
    }
    Ok(token)
}

impl Index {
    /// An empty index: nobody is authenticated until the first snapshot.
    pub fn new() -> Index {
        Index {
            table: ArcSwap::from_pointee(Table::default()),
            bans: ArcSwap::from_pointee(BanTable::default()),
            tokens: DashMap::new(),
            revision: AtomicI64::new(0),
            records: Mutex::new(Records::default()),
            limits: ArcSwap::from_pointee(HashMap::new()),
            limits_generation: AtomicU64::new(0),
        }
    }

    /// The limit records of a tenant (`None`: it has none). Does not allocate.
    pub fn limits(&self, tenant: &str) -> Option<Arc<TenantLimits>> {
        self.limits.load().get(tenant).cloned()
    }

    /// Every tenant's limit records.
    pub fn all_limits(&self) -> Arc<HashMap<String, Arc<TenantLimits>>> {
        self.limits.load_full()
    }

    /// Changes whenever a limit record changes (0 before any).
    pub fn limits_generation(&self) -> u64 {
        self.limits_generation.load(Ordering::Acquire)
    }

    fn publish_limits(&self, records: &Records) {
        let table = records
            .limits
            .iter()
            .map(|(t, l)| (t.clone(), Arc::new(l.clone())))
            .collect();
        self.limits.store(Arc::new(table));
        self.limits_generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The revision of the last line applied (0 before any).
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// How many tokens currently authenticate someone.
    pub fn identity_count(&self) -> usize {
        self.tokens.len()
    }

    /// Whether any ban is held (the request path reads no clock without one).
    pub fn has_bans(&self) -> bool {
        !self.bans.load().is_empty()
    }

    /// A ban in force at `now_ms` (Unix milliseconds) on a client with this `User-Agent` and
    /// source address ([`crate::ban`]: a scan of the client bans). Does not allocate.
    pub fn client_ban(
        &self,
        user_agent: &[u8],
        source: Option<std::net::IpAddr>,
        now_ms: u64,
    ) -> Option<Arc<ActiveBan>> {
        let bans = self.bans.load();
        if bans.is_empty() {
            return None;
        }
        bans.client(user_agent, source, now_ms)
    }

    /// A ban in force at `now_ms` on the identity's token, user or tenant (hash lookups).
    pub fn identity_ban(&self, id: &Identity, now_ms: u64) -> Option<Arc<ActiveBan>> {
        let bans = self.bans.load();
        if bans.is_empty() {
            return None;
        }
        bans.identity(id, now_ms)
    }

    /// A ban in force at `now_ms` on the cluster (a hash lookup).
    pub fn cluster_ban(&self, cluster: &str, now_ms: u64) -> Option<Arc<ActiveBan>> {
        let bans = self.bans.load();
        if bans.is_empty() {
            return None;
        }
        bans.cluster(cluster, now_ms)
    }

    /// Every ban held (in force or not; expired ones stay until meta deletes them).
    pub fn bans(&self) -> Vec<Ban> {
        let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Ban> = records.bans.values().cloned().collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// The cluster record with this id (of any tenant).
    pub fn cluster(&self, id: &str) -> Option<Arc<Cluster>> {
        self.table.load().clusters.get(id).cloned()
    }

    /// Applies one line of the feed: a snapshot replaces everything, a put creates or
    /// replaces a record, a delete removes one (deleting a key that is not there does
    /// nothing), a heartbeat only moves the revision.
    ///
    /// Records that do not validate, and deletes of strings that are not keys, are refused
    /// and returned in the error; the rest of the line is applied. A refused put removes
    /// whatever was stored under its key (an access record we cannot read grants nothing).
    pub fn apply(&self, line: &Line) -> Result<(), ApplyError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rejected = Vec::new();
        match line {
            Line::Snapshot { records: all, .. } => {
                let mut fresh = Records::default();
                for r in all {
                    match r.validate() {
                        Ok(()) => fresh.put(r.clone()),
                        Err(source) => rejected.push(RecordError::Invalid {
                            key: r.key(),
                            source,
                        }),
                    }
                }
                *records = fresh;
                self.rebuild_all(&records);
                self.publish_limits(&records);
            }
            Line::Put { record, .. } => match record.validate() {
                Ok(()) => self.put(&mut records, record.clone()),
                Err(source) => {
                    let key = record.key();
                    if let Ok(k) = Key::parse(&key) {
                        self.delete(&mut records, k);
                    }
                    rejected.push(RecordError::Invalid { key, source });
                }
            },
            Line::Delete { key, .. } => match Key::parse(key) {
                Ok(k) => self.delete(&mut records, k),
                Err(e) => rejected.push(RecordError::Key(e)),
            },
            Line::Heartbeat { .. } => {}
        }
        self.revision.store(line.revision(), Ordering::Release);
        if rejected.is_empty() {
            Ok(())
        } else {
            Err(ApplyError { rejected })
        }
    }

    fn rebuild_all(&self, records: &Records) {
        let clusters: HashMap<String, Arc<Cluster>> = records
            .clusters
            .iter()
            .map(|(id, c)| (id.clone(), Arc::new(c.clone())))
            .collect();
        let mut by_tenant: HashMap<&str, Vec<&Arc<Cluster>>> = HashMap::new();
        for c in clusters.values() {
            by_tenant.entry(c.tenant.as_str()).or_default().push(c);
        }
        let tenants = records
            .tenants
            .keys()
            .map(|t| {
                let cs = by_tenant.get(t.as_str()).map_or(&[][..], |v| &v[..]);
                let table = TenantTable::build(t, cs.iter().copied(), records.grants.get(t));
                (t.clone(), Arc::new(table))
            })
            .collect();
        self.table.store(Arc::new(Table { tenants, clusters }));
        self.rebuild_bans(records);

        let mut live = HashSet::with_capacity(records.tokens.len());
        for entry in records.tokens.values() {
            if let Some(identity) = records.derive(entry) {
                self.tokens.insert(entry.hash, Arc::new(identity));
                live.insert(entry.hash);
            }
        }
        self.tokens.retain(|hash, _| live.contains(hash));
    }

    /// Rebuilds the entries of these tenants (after `change` updates the table's clusters).
    fn rebuild_tenants(
        &self,
        records: &Records,
        tenants: &[&str],
        change: impl FnOnce(&mut Table),
    ) {
        let mut table = Table::clone(&self.table.load());
        change(&mut table);
        for &t in tenants {
            if records.tenants.contains_key(t) {
                let tt = TenantTable::build(t, table.clusters.values(), records.grants.get(t));
                table.tenants.insert(t.to_owned(), Arc::new(tt));
            } else {
                table.tenants.remove(t);
            }
        }
        self.table.store(Arc::new(table));
    }

    fn rebuild_bans(&self, records: &Records) {
        self.bans
            .store(Arc::new(BanTable::build(records.bans.values())));
    }

    /// Re-derives the identity of one token (after it, its user or its tenant changed).
    fn refresh_token(&self, records: &Records, id: &str) {
        let Some(entry) = records.tokens.get(id) else {
            return;
        };
        match records.derive(entry) {
            Some(identity) => {
                self.tokens.insert(entry.hash, Arc::new(identity));
            }
            None => self.forget_identity(&entry.hash, id),
        }
    }

    fn refresh_tokens_of(&self, records: &Records, user: &str) {
        if let Some(ids) = records.tokens_by_user.get(user) {
            for id in ids {
                self.refresh_token(records, id);
            }
        }
    }

    fn refresh_tenant_users(&self, records: &Records, tenant: &str) {
        for u in records.users.values().filter(|u| u.tenant == tenant) {
            self.refresh_tokens_of(records, &u.name);
        }
    }

    fn forget_identity(&self, hash: &[u8; 32], token_id: &str) {
        self.tokens.remove_if(hash, |_, i| i.token_id == token_id);
    }

    fn put(&self, records: &mut Records, record: Record) {
        match record {
            Record::Tenant(t) => {
                let name = t.name.clone();
                records.tenants.insert(name.clone(), t);
                self.rebuild_tenants(records, &[&name], |_| {});
                self.refresh_tenant_users(records, &name);
            }
            Record::User(u) => {
                let name = u.name.clone();
                records.users.insert(name.clone(), u);
                self.refresh_tokens_of(records, &name);
            }
            Record::Cluster(c) => {
                let new = Arc::new(c.clone());
                let old = records.clusters.insert(c.id.clone(), c);
                let mut tenants = vec![new.tenant.as_str()];
                if let Some(old) = &old {
                    if old.tenant != new.tenant {
                        tenants.push(&old.tenant);
                    }
                }
                self.rebuild_tenants(records, &tenants, |t| {
                    t.clusters.insert(new.id.clone(), Arc::clone(&new));
                });
            }
            Record::Grant(g) => {
                let tenant = g.tenant.clone();
                records.put(Record::Grant(g));
                self.rebuild_tenants(records, &[&tenant], |_| {});
            }
            Record::Token(t) => {
                let id = t.id.clone();
                if let Some(old) = records.put_token(t) {
                    if old.hash != records.tokens[&id].hash {
                        self.forget_identity(&old.hash, &id);
                    }
                }
                self.refresh_token(records, &id);
            }
            Record::Ban(b) => {
                records.bans.insert(b.id.clone(), b);
                self.rebuild_bans(records);
            }
            Record::Limit(l) => {
                records.put(Record::Limit(l));
                self.publish_limits(records);
            }
        }
    }

    fn delete(&self, records: &mut Records, key: Key<'_>) {
        match key {
            Key::Tenant(name) => {
                if records.tenants.remove(name).is_some() {
                    self.rebuild_tenants(records, &[name], |_| {});
                    self.refresh_tenant_users(records, name);
                }
            }
            Key::User(name) => {
                if records.users.remove(name).is_some() {
                    self.refresh_tokens_of(records, name);
                }
            }
            Key::Cluster(id) => {
                if let Some(old) = records.clusters.remove(id) {
                    self.rebuild_tenants(records, &[&old.tenant], |t| {
                        t.clusters.remove(id);
                    });
                }
            }
            Key::Grant { tenant, name } => {
                let removed = records
                    .grants
                    .get_mut(tenant)
                    .and_then(|g| g.remove(name))
                    .is_some();
                if records.grants.get(tenant).is_some_and(BTreeMap::is_empty) {
                    records.grants.remove(tenant);
                }
                if removed {
                    self.rebuild_tenants(records, &[tenant], |_| {});
                }
            }
            Key::Token(id) => {
                if let Some(old) = records.remove_token(id) {
                    self.forget_identity(&old.hash, id);
                }
            }
            Key::Ban(id) => {
                if records.bans.remove(id).is_some() {
                    self.rebuild_bans(records);
                }
            }
            Key::Limit { tenant, user } => {
                if records.remove_limit(tenant, user) {
                    self.publish_limits(records);
                }
            }
        }
    }

    /// Who the request is from: reads `Authorization: Bearer khT.…` (the scheme in any case),
    /// hashes the token and looks the hash up. Fails when the header is missing or not a
    /// bearer token, the token is not a KubeHub token, no valid token has this hash (never
    /// issued, revoked, or its user or tenant deleted), or the token has expired
    /// (`now_unix >= expires`). Does not allocate.
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        now_unix: u64,
    ) -> Result<Arc<Identity>, AuthnError> {
        let token = bearer(authorization.ok_or(AuthnError::Missing)?)?;
        let token = Token::parse_bytes(token).map_err(AuthnError::Malformed)?;
        let identity = self
            .tokens
            .get(&token.hash())
            .map(|e| Arc::clone(e.value()))
            .ok_or(AuthnError::Unknown)?;
        if identity.token_id != token.id() {
            return Err(AuthnError::Unknown);
        }
        if identity.expires != 0 && now_unix >= identity.expires {
            return Err(AuthnError::Expired {
                at: identity.expires,
            });
        }
        Ok(identity)
    }

    /// May `id` do `attrs` on `cluster`? Denied when the token is not bound to the cluster,
    /// when the cluster is not one of the identity's tenant's (or does not exist); allowed
    /// when a grant of the tenant whose subject is the user (by name, one of the user's
    /// effective groups, or the whole tenant) selects the cluster and has a rule that allows
    /// the request, or when such a grant exists and the request is a discovery `get`
    /// ([`crate::policy::DISCOVERY_URLS`]). Does not allocate.
    pub fn authorize(&self, id: &Identity, cluster: &str, attrs: &Attributes<'_>) -> Decision {
        if !id.may_use(cluster) {
            return Decision::Deny(DenyReason::TokenNotForCluster);
        }
        let table = self.table.load();
        let Some(tenant) = table.tenants.get(id.tenant.as_str()) else {
            return Decision::Deny(DenyReason::NoSuchCluster);
        };
        let Some(c) = tenant.clusters.get(cluster) else {
            return Decision::Deny(DenyReason::NoSuchCluster);
        };
        let discovery = is_discovery(attrs);
        let mut covered = false;
        for i in tenant.candidates(&id.user, &id.groups) {
            let grant = tenant.grant(i);
            if !selects(grant, c) {
                continue;
            }
            if discovery || grant.rules.iter().any(|r| r.allows(attrs)) {
                return Decision::Allow;
            }
            covered = true;
        }
        Decision::Deny(if covered {
            DenyReason::NoRule
        } else {
            DenyReason::NoGrant
        })
    }

    /// The rules `id` has on `cluster` that can apply in `namespace` (`""`: cluster scope),
    /// for a `SelfSubjectRulesReview`: the resource rules of the grants covering the cluster
    /// whose namespaces include `namespace` (or are all), every non-resource rule, and the
    /// discovery rule when any grant covers the cluster. Rules are returned as written
    /// (`namespaces` included). Empty when the token is not bound to the cluster or the
    /// cluster is not the tenant's.
    pub fn rules(&self, id: &Identity, cluster: &str, namespace: &str) -> Vec<Rule> {
        let mut out = Vec::new();
        if !id.may_use(cluster) {
            return out;
        }
        let table = self.table.load();
        let Some(tenant) = table.tenants.get(id.tenant.as_str()) else {
            return out;
        };
        let Some(c) = tenant.clusters.get(cluster) else {
            return out;
        };
        let mut seen = HashSet::new();
        let mut covered = false;
        for i in tenant.candidates(&id.user, &id.groups) {
            let grant = tenant.grant(i);
            if !seen.insert(i) || !selects(grant, c) {
                continue;
            }
            covered = true;
            out.extend(
                grant
                    .rules
                    .iter()
                    .filter(|r| r.applies_in_namespace(namespace))
                    .cloned(),
            );
        }
        if covered {
            out.push(discovery_rule());
        }
        out
    }

    /// The ids of the clusters (of the user's tenant) where the user has any grant, sorted:
    /// what a kubeconfig for the user should list. Empty for an unknown user.
    pub fn clusters_for(&self, user: &str) -> Vec<String> {
        let (tenant, groups) = {
            let records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
            match records.users.get(user) {
                Some(u) => (u.tenant.clone(), u.effective_groups()),
                None => return Vec::new(),
            }
        };
        let table = self.table.load();
        let Some(t) = table.tenants.get(&tenant) else {
            return Vec::new();
        };
        let mut out: Vec<String> = t
            .clusters
            .values()
            .filter(|c| t.candidates(user, &groups).any(|i| selects(t.grant(i), c)))
            .map(|c| c.id.clone())
            .collect();
        out.sort();
        out
    }
}
