//! Bans (admin): `POST /v1/bans`, `GET /v1/bans`, `DELETE /v1/bans/{id}`.
//!
//! A ban is an access record (`access/bans/<id>`, [`kubehub_access::ban::Ban`]), so it
//! reaches every hub through the sync feed like grants and tokens; hubs enforce it by
//! themselves, including its expiry (by their clock: no write is needed for a ban to lapse).
//! Meta deletes lapsed bans lazily (when bans are listed or made), so lists show only bans
//! in force; a sweeper on every replica also deletes them every [`SWEEP_INTERVAL`]. Every
//! ban action is logged on the `kubehub::audit` target.

use kubehub_access::ban::{rfc3339_ms, Ban, BanTarget, MAX_CLIENT_BANS};
use kubehub_access::model::Record;
use serde::Deserialize;
use tracing::info;

use crate::error::{MetaError, Result};
use crate::service::{Caller, Meta, ACCESS};
use crate::store::{Compare, Op, Txn};

/// How often each replica deletes lapsed bans (besides whenever bans are listed or made).
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// The body of `POST /v1/bans`: `{"target": T, "reason": "…", "expiresAt"?: RFC3339,
/// "ttlSeconds"?: N}` (at most one of the two expiries).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BanRequest {
    /// Exactly one of `{"token"}`, `{"user"}`, `{"tenant"}`, `{"cluster"}`, `{"client"}`.
    pub target: serde_json::Value,
    /// Why (required).
    #[serde(default)]
    pub reason: Option<String>,
    /// When it lapses.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// How long it lasts, seconds from now.
    #[serde(default)]
    pub ttl_seconds: Option<i64>,
}

const TARGETS: &str = "exactly one of {\"token\": id}, {\"user\": name}, {\"tenant\": name}, \
                       {\"cluster\": id}, {\"client\": {\"userAgent\": glob, \"source\": cidr}}";

/// Reads a ban's target, naming the field in every error.
pub fn parse_target(v: &serde_json::Value) -> Result<BanTarget> {
    let obj = v
        .as_object()
        .filter(|o| o.len() == 1)
        .ok_or_else(|| MetaError::Invalid(format!("target: must be {TARGETS}; got {v}")))?;
    let Some((kind, _)) = obj.iter().next() else {
        return Err(MetaError::Invalid(format!("target: must be {TARGETS}")));
    };
    if !matches!(
        kind.as_str(),
        "token" | "user" | "tenant" | "cluster" | "client"
    ) {
        return Err(MetaError::Invalid(format!(
            "target: {kind:?} is not a ban target: it must be {TARGETS}"
        )));
    }
    serde_json::from_value(v.clone()).map_err(|e| MetaError::Invalid(format!("target.{kind}: {e}")))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Meta {
    /// Every stored ban with its revision (lapsed ones included).
    async fn stored_bans(&self) -> Result<Vec<(Ban, i64)>> {
        let (kvs, _) = self.store.list(&format!("{ACCESS}bans/")).await?;
        let mut out = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            let k = kv.key.strip_prefix(ACCESS).unwrap_or(&kv.key);
            match Record::parse(k, &kv.value) {
                Ok(Record::Ban(b)) => out.push((b, kv.mod_revision)),
                Ok(_) | Err(_) => {
                    tracing::warn!(key = %kv.key, "a stored ban does not read: ignored");
                }
            }
        }
        Ok(out)
    }

    /// Deletes lapsed bans (each only if unchanged since read); returns those in force.
    async fn bans_in_force(&self) -> Result<Vec<Ban>> {
        let now = now_ms();
        let mut live = Vec::new();
        for (b, rev) in self.stored_bans().await? {
            if b.in_force(now) {
                live.push(b);
                continue;
            }
            let k = format!("{ACCESS}bans/{}", b.id);
            let txn = Txn::new()
                .when(Compare::mod_revision(k.clone(), rev))
                .then(Op::delete(k));
            if self.store.txn(txn).await?.succeeded {
                info!(target: "kubehub::audit", ban = %b.id, banned = %b.target, "ban expired");
            }
        }
        live.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        Ok(live)
    }

    /// Deletes lapsed bans; returns how many bans are in force.
    pub async fn sweep_bans(&self) -> Result<usize> {
        Ok(self.bans_in_force().await?.len())
    }

    /// One ban in force (admin); 404 when unknown or lapsed.
    pub async fn get_ban(&self, caller: &Caller, id: &str) -> Result<Ban> {
        caller.must_be_admin()?;
        self.bans_in_force()
            .await?
            .into_iter()
            .find(|b| b.id == id)
            .ok_or_else(|| MetaError::NotFound(format!("ban {id:?} not found")))
    }

    /// Bans in force (admin).
    pub async fn list_bans(&self, caller: &Caller) -> Result<Vec<Ban>> {
        caller.must_be_admin()?;
        self.bans_in_force().await
    }

    /// Makes a ban (admin): the target must exist (a token, user, tenant or cluster; a
    /// client ban names no record), the reason is required, the expiry in the future.
    pub async fn create_ban(&self, caller: &Caller, req: BanRequest) -> Result<Ban> {
        caller.must_be_admin()?;
        let target = parse_target(&req.target)?;
        let reason = req.reason.unwrap_or_default();
        let now = now_ms();
        let expires_at = match (req.expires_at, req.ttl_seconds) {
            (Some(_), Some(_)) => {
                return Err(MetaError::Invalid(
                    "expiresAt: give expiresAt or ttlSeconds, not both".into(),
                ))
            }
            (None, Some(ttl)) => {
                let ttl = u64::try_from(ttl).ok().filter(|t| *t > 0).ok_or_else(|| {
                    MetaError::Invalid(format!("ttlSeconds: {ttl} is not a positive number"))
                })?;
                Some(rfc3339_ms(now.saturating_add(ttl.saturating_mul(1000))))
            }
            (Some(t), None) => {
                let at = kubehub_access::ban::unix_ms(&t).ok_or_else(|| {
                    MetaError::Invalid(format!(
                        "expiresAt: {t:?} is not an RFC 3339 time (2026-11-27T10:00:00Z)"
                    ))
                })?;
                if at <= now {
                    return Err(MetaError::Invalid(format!("expiresAt: {t} is in the past")));
                }
                Some(t)
            }
            (None, None) => None,
        };
        let ban = Ban {
            id: kubehub_access::token::new_id(),
            target,
            reason,
            created_at: rfc3339_ms(now),
            expires_at,
            created_by: caller_name(caller),
        };
        let record = Record::Ban(ban.clone());
        record
            .validate()
            .map_err(|e| MetaError::Invalid(e.to_string()))?;
        let mut txn = Txn::new();
        let named = match &ban.target {
            BanTarget::Token(id) => Some(("tokens", id, "target.token: token")),
            BanTarget::User(u) => Some(("users", u, "target.user: user")),
            BanTarget::Tenant(t) => Some(("tenants", t, "target.tenant: tenant")),
            BanTarget::Cluster(c) => Some(("clusters", c, "target.cluster: cluster")),
            BanTarget::Client(_) => None,
        };
        if let Some((kind, name, what)) = named {
            let k = format!("{ACCESS}{kind}/{name}");
            let kv = self
                .store
                .get(&k)
                .await?
                .ok_or_else(|| MetaError::Invalid(format!("{what} {name:?} does not exist")))?;
            txn = txn.when(Compare::mod_revision(k, kv.mod_revision));
        } else {
            let clients = self
                .bans_in_force()
                .await?
                .iter()
                .filter(|b| matches!(b.target, BanTarget::Client(_)))
                .count();
            if clients >= MAX_CLIENT_BANS {
                return Err(MetaError::Conflict(format!(
                    "{clients} client bans are in force, the most there may be (every hub \
                     scans them on every request): lift some first"
                )));
            }
        }
        let k = format!("{ACCESS}bans/{}", ban.id);
        let value = serde_json::to_vec(&record)
            .map_err(|e| MetaError::Internal(format!("encoding a ban: {e}")))?;
        txn = txn.when(Compare::absent(k.clone())).then(Op::put(k, value));
        if !self.store.txn(txn).await?.succeeded {
            return Err(MetaError::Conflict(format!(
                "the ban's target ({}) changed while the ban was being made; retry",
                ban.target
            )));
        }
        info!(
            target: "kubehub::audit",
            ban = %ban.id,
            banned = %ban.target,
            reason = %ban.reason,
            expires = ban.expires_at.as_deref().unwrap_or("never"),
            by = %ban.created_by,
            "ban made"
        );
        Ok(ban)
    }

    /// Lifts a ban (admin): deletes it and returns it; 404 when unknown.
    pub async fn lift_ban(&self, caller: &Caller, id: &str) -> Result<Ban> {
        caller.must_be_admin()?;
        let k = format!("{ACCESS}bans/{id}");
        let unknown = || MetaError::NotFound(format!("ban {id:?} not found"));
        let kv = self.store.get(&k).await?.ok_or_else(unknown)?;
        let Ok(Record::Ban(ban)) = Record::parse(&format!("bans/{id}"), &kv.value) else {
            return Err(unknown());
        };
        let txn = Txn::new()
            .when(Compare::mod_revision(k.clone(), kv.mod_revision))
            .then(Op::delete(k));
        if !self.store.txn(txn).await?.succeeded {
            return Err(unknown());
        }
        info!(
            target: "kubehub::audit",
            ban = %ban.id,
            banned = %ban.target,
            by = %caller_name(caller),
            "ban lifted"
        );
        Ok(ban)
    }
}

/// `createdBy`: who made a ban, as meta knows them.
fn caller_name(caller: &Caller) -> String {
    match caller {
        Caller::Admin => "admin".into(),
        Caller::User(u, _) => format!("user:{}", u.name),
        Caller::Hub(h) => format!("hub:{h}"),
        Caller::Agent(c) => format!("agent:{c}"),
    }
}
