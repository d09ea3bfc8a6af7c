//! Traffic limits (`limits/<tenant>`, `limits/<tenant>/<user>`): set, read and cleared by
//! the admin (`PUT/GET/DELETE /v1/limits/{tenant}[/{user}]`, `GET /v1/limits`; tenant admins
//! may read their own tenant's). They live under `access/` like the other access records, so
//! the hubs' change feed carries them: a limit set here is enforced by every hub as soon as
//! the feed delivers it (`hub/tests/limits.rs` measures it).

use kubehub_access::model::{Limit, Record};

use super::{encode, invalid, key, Caller, Meta, ACCESS};
use crate::error::{MetaError, Result};
use crate::store::{Compare, Op, Txn};

impl Meta {
    /// Sets (creates or replaces) a limit record (admin). The tenant must exist, and for a
    /// per-user record the user must be one of the tenant's.
    pub async fn set_limit(&self, caller: &Caller, l: Limit) -> Result<Limit> {
        caller.must_be_admin()?;
        let r = Record::Limit(l.clone());
        r.validate().map_err(invalid)?;
        let (_, trev) = self
            .must_exist(
                &format!("tenants/{}", l.tenant),
                &format!("tenant {:?}", l.tenant),
            )
            .await?;
        let mut txn = Txn::new().when(Compare::mod_revision(
            format!("{ACCESS}tenants/{}", l.tenant),
            trev,
        ));
        if !l.user.is_empty() {
            let (u, urev) = self
                .must_exist(&format!("users/{}", l.user), &format!("user {:?}", l.user))
                .await?;
            if super::tenant_of(&u) != l.tenant {
                return Err(MetaError::Invalid(format!(
                    "user: {:?} is not a user of tenant {:?}",
                    l.user, l.tenant
                )));
            }
            txn = txn.when(Compare::mod_revision(
                format!("{ACCESS}users/{}", l.user),
                urev,
            ));
        }
        let k = key(&r);
        txn = txn.then(Op::put(k.clone(), encode(&r)?));
        self.commit(txn, &format!("setting {}", r.key())).await?;
        tracing::info!(limit = %r.key(), by = %caller.name(), "limit set");
        Ok(l)
    }

    /// One limit record (admin, or an admin of its tenant); 404 when none is set.
    pub async fn limit(&self, caller: &Caller, tenant: &str, user: Option<&str>) -> Result<Limit> {
        let k = limit_key(tenant, user);
        if !caller.manages(tenant) {
            return Err(MetaError::NotFound(format!("{k} not found")));
        }
        match self.get_record(&k).await? {
            Some((Record::Limit(l), _)) => Ok(l),
            _ => Err(MetaError::NotFound(format!(
                "{k} not found: the hubs' defaults apply (hub.toml [limits.fairness])"
            ))),
        }
    }

    /// Every limit record the caller may see (admin: all; a tenant admin: its tenant's),
    /// optionally of one tenant.
    pub async fn limits(&self, caller: &Caller, tenant: Option<&str>) -> Result<Vec<Limit>> {
        let scope = caller.scope()?;
        if let Caller::User(u, _) = caller {
            if !u.admin {
                return Err(MetaError::Forbidden(format!(
                    "{} may not read limits: an admin or a tenant admin may",
                    caller.name()
                )));
            }
        }
        let (records, _) = self.records("limits").await?;
        Ok(records
            .into_iter()
            .filter_map(|(r, _)| match r {
                Record::Limit(l) => Some(l),
                _ => None,
            })
            .filter(|l| scope.is_none_or(|s| s == l.tenant))
            .filter(|l| tenant.is_none_or(|t| t == l.tenant))
            .collect())
    }

    /// Clears a limit record (admin): the hubs' defaults apply again. 404 when none is set.
    pub async fn clear_limit(
        &self,
        caller: &Caller,
        tenant: &str,
        user: Option<&str>,
    ) -> Result<Limit> {
        caller.must_be_admin()?;
        let k = limit_key(tenant, user);
        let Some((Record::Limit(l), rev)) = self.get_record(&k).await? else {
            return Err(MetaError::NotFound(format!("{k} not found")));
        };
        let full = format!("{ACCESS}{k}");
        let txn = Txn::new()
            .when(Compare::mod_revision(full.clone(), rev))
            .then(Op::delete(full));
        self.commit(txn, &format!("clearing {k}")).await?;
        tracing::info!(limit = %k, by = %caller.name(), "limit cleared");
        Ok(l)
    }

    /// The deletes of the limit records that go with a tenant or a user being deleted.
    pub(super) async fn limits_of(&self, tenant: &str, user: Option<&str>) -> Result<Vec<Op>> {
        let (records, _) = self.records("limits").await?;
        Ok(records
            .into_iter()
            .filter_map(|(r, _)| match r {
                Record::Limit(l) if l.tenant == tenant && user.is_none_or(|u| u == l.user) => {
                    Some(Op::delete(key(&Record::Limit(l))))
                }
                _ => None,
            })
            .collect())
    }
}

fn limit_key(tenant: &str, user: Option<&str>) -> String {
    match user {
        Some(u) => format!("limits/{tenant}/{u}"),
        None => format!("limits/{tenant}"),
    }
}
