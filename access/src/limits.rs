//! [`Limit`]: the traffic limits of a tenant (`limits/<tenant>`) or of one of its users
//! (`limits/<tenant>/<user>`), as the metaserver stores them and the sync feed carries them to
//! every hub, where the `admit` phase enforces them (`hub/src/proxy/admit.rs`).
//!
//! ```json
//! {"kind": "Limit", "tenant": "acme", "requestsPerSecond": 50, "burst": 100, "concurrency": 20,
//!  "clusterRequestsPerSecond": 20, "clusterBurst": 40}
//! {"kind": "Limit", "tenant": "acme", "user": "ci-bot", "requestsPerSecond": 5, "burst": 10}
//! ```
//!
//! Every figure is optional: a field left out takes the hub's default (hub.toml
//! `[limits.fairness]`); `0` for a rate means "no rate limit". Rates count request *weight*
//! (a GET weighs 1, a LIST, WATCH or exec more: hub.toml), per second, **per hub**: a tenant
//! reaching three hubs through a load balancer may use three times its rate.
//!
//! | field | applies to | meaning |
//! | --- | --- | --- |
//! | `requestsPerSecond`, `burst` | tenant, user | token bucket: sustained weight per second, and how much may be spent at once |
//! | `concurrency` | tenant | seats: the weight of requests in flight at once (more wait in the tenant's queues) |
//! | `clusterRequestsPerSecond`, `clusterBurst` | tenant | token bucket of each of the tenant's clusters for requests forwarded to the edge (protects small edge API servers) |
//!
//! A user record overrides the per-user bucket only (by default a user may spend
//! `user_share` of the tenant's rate: hub.toml); it cannot raise the tenant's own limits.

use serde::{Deserialize, Serialize};

use crate::model::{at, check_dns_label, check_user_name, Key, Problem, ValidationError};

/// The largest rate, burst or concurrency a record may set.
pub const MAX_FIGURE: u32 = 1_000_000;

/// Traffic limits of a tenant, or of one user of it (`user` set). See the
/// [module](self) documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limit {
    /// The tenant (DNS-1123 label).
    pub tenant: String,
    /// A user of the tenant, for a per-user override; empty: the tenant's record.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Sustained request weight per second on each hub (0: unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// Weight that may be spent at once (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Seats: request weight in flight at once on each hub (tenant only; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// Per cluster of the tenant: forwarded request weight per second (tenant only; 0:
    /// unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_requests_per_second: Option<u32>,
    /// Per cluster of the tenant: the forward bucket's burst (tenant only; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_burst: Option<u32>,
}

impl Limit {
    /// `limits/<tenant>` or `limits/<tenant>/<user>`.
    pub fn key(&self) -> Key<'_> {
        Key::Limit {
            tenant: &self.tenant,
            user: (!self.user.is_empty()).then_some(self.user.as_str()),
        }
    }

    /// Checks the tenant (DNS-1123 label), the user (user-name syntax), the ranges (rates
    /// 0..=1,000,000; burst and concurrency 1..=1,000,000) and that a user record sets only
    /// its own bucket.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_dns_label(&self.tenant), || "tenant".into())?;
        if !self.user.is_empty() {
            at(check_user_name(&self.user), || "user".into())?;
            for (field, set) in [
                ("concurrency", self.concurrency.is_some()),
                (
                    "clusterRequestsPerSecond",
                    self.cluster_requests_per_second.is_some(),
                ),
                ("clusterBurst", self.cluster_burst.is_some()),
            ] {
                if set {
                    return at(
                        Err(Problem::Conflict(
                            "applies to a tenant's record only (a user record sets \
                             requestsPerSecond and burst)",
                        )),
                        || field.into(),
                    );
                }
            }
        }
        let range = |v: Option<u32>, min: u32, field: &'static str| match v {
            Some(v) if v < min || v > MAX_FIGURE => at(
                Err(Problem::Conflict(if min == 0 {
                    "must be between 0 (unlimited) and 1000000"
                } else {
                    "must be between 1 and 1000000"
                })),
                || field.into(),
            ),
            _ => Ok(()),
        };
        range(self.requests_per_second, 0, "requestsPerSecond")?;
        range(self.burst, 1, "burst")?;
        range(self.concurrency, 1, "concurrency")?;
        range(
            self.cluster_requests_per_second,
            0,
            "clusterRequestsPerSecond",
        )?;
        range(self.cluster_burst, 1, "clusterBurst")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Record;

    #[test]
    fn keys_round_trip_and_records_validate() {
        let t = Limit {
            tenant: "acme".into(),
            requests_per_second: Some(10),
            burst: Some(20),
            concurrency: Some(4),
            ..Limit::default()
        };
        let r = Record::Limit(t.clone());
        assert_eq!(r.key(), "limits/acme");
        assert_eq!(Key::parse("limits/acme").unwrap(), t.key());
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"Limit","tenant":"acme","requestsPerSecond":10,"burst":20,"concurrency":4}"#
        );
        assert_eq!(Record::parse("limits/acme", json.as_bytes()).unwrap(), r);
        let u = Limit {
            tenant: "acme".into(),
            user: "bob@acme.io".into(),
            requests_per_second: Some(0),
            ..Limit::default()
        };
        assert_eq!(Record::Limit(u.clone()).key(), "limits/acme/bob@acme.io");
        assert_eq!(Key::parse("limits/acme/bob@acme.io").unwrap(), u.key());
        u.validate().unwrap();
        assert!(Key::parse("limits/").is_err());
        assert!(Key::parse("limits/a/b/c").is_err());
    }

    #[test]
    fn the_index_keeps_limits_by_tenant_and_says_when_they_change() {
        use crate::{Index, Line};
        let index = Index::new();
        let rec = |user: &str, rps: u32| {
            Record::Limit(Limit {
                tenant: "acme".into(),
                user: user.into(),
                requests_per_second: Some(rps),
                ..Limit::default()
            })
        };
        assert!(index.limits("acme").is_none());
        let g0 = index.limits_generation();
        index
            .apply(&Line::Snapshot {
                revision: 1,
                records: vec![rec("", 10), rec("bob", 2)],
            })
            .unwrap();
        let l = index.limits("acme").unwrap();
        assert_eq!(l.tenant.as_ref().unwrap().requests_per_second, Some(10));
        assert_eq!(l.users["bob"].requests_per_second, Some(2));
        let g1 = index.limits_generation();
        assert_ne!(g0, g1);
        index
            .apply(&Line::Put {
                revision: 2,
                record: rec("", 20),
            })
            .unwrap();
        assert_eq!(
            index
                .limits("acme")
                .unwrap()
                .tenant
                .as_ref()
                .unwrap()
                .requests_per_second,
            Some(20)
        );
        assert_ne!(index.limits_generation(), g1);
        for (rev, key) in [(3, "limits/acme"), (4, "limits/acme/bob")] {
            index
                .apply(&Line::Delete {
                    revision: rev,
                    key: key.into(),
                })
                .unwrap();
        }
        assert!(
            index.limits("acme").is_none(),
            "nothing left for the tenant"
        );
        // A record that does not validate is refused and removes what was there.
        index
            .apply(&Line::Put {
                revision: 5,
                record: rec("", 1),
            })
            .unwrap();
        let bad = Record::Limit(Limit {
            tenant: "acme".into(),
            burst: Some(0),
            ..Limit::default()
        });
        assert!(index
            .apply(&Line::Put {
                revision: 6,
                record: bad,
            })
            .is_err());
        assert!(
            index.limits("acme").is_none(),
            "failing closed: the hub's defaults"
        );
    }

    #[test]
    fn invalid_records_name_the_field() {
        let bad = |l: Limit| l.validate().unwrap_err().field;
        let base = Limit {
            tenant: "acme".into(),
            ..Limit::default()
        };
        assert_eq!(
            bad(Limit {
                burst: Some(0),
                ..base.clone()
            }),
            "burst"
        );
        assert_eq!(
            bad(Limit {
                requests_per_second: Some(MAX_FIGURE + 1),
                ..base.clone()
            }),
            "requestsPerSecond"
        );
        assert_eq!(
            bad(Limit {
                user: "bob".into(),
                concurrency: Some(3),
                ..base.clone()
            }),
            "concurrency"
        );
        assert_eq!(
            bad(Limit {
                tenant: "Acme".into(),
                ..base.clone()
            }),
            "tenant"
        );
        assert!(
            serde_json::from_str::<Record>(r#"{"kind":"Limit","tenant":"acme","rps":3}"#).is_err()
        );
    }
}
