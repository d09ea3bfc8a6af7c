//! Join tokens: the metaserver's side of enrollment. Pure logic: no IO, no clock (times are
//! unix seconds passed in), no HTTP.
//!
//! An operator asks for a token for one purpose (an agent of cluster X, or hub Y with its
//! names); [`issue`] returns the token text to hand over once and the [`JoinRecord`] to store
//! under [`record_key`] (`join/<id>`). The record keeps only the SHA-256 of the secret. When a
//! joiner presents the token with its certificate signing request, the metaserver parses it
//! ([`JoinToken::parse`]), loads the record by id, and [`check`]s it (secret, single use,
//! expiry; [`check_for`] when the request names what it wants to become), marks it used
//! ([`consume`] does both), and signs the request for [`Purpose::profile`]: the identity comes
//! from the record, never from the request.
//!
//! The token text is `khJ.<id>.<secret>.<CA hash>` ([`kubehub_pki::join`]); the CA hash lets
//! the joiner pin the CA before it sends the secret anywhere.

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use kubehub_pki::join::{JoinToken, JoinTokenError};

/// The store key of a token's record: `join/<id>`.
pub fn record_key(id: &str) -> String {
    format!("join/{id}")
}

/// What a join token enrolls its bearer as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", deny_unknown_fields)]
pub enum Purpose {
    /// The agent of a cluster (certificate CN = the cluster id).
    Agent {
        /// The cluster id.
        cluster: String,
    },
    /// A hub (certificate CN = the hub id, SANs = its names).
    Hub {
        /// The hub id.
        id: String,
        /// DNS names and IP addresses it is reached by.
        names: Vec<String>,
    },
}

impl Purpose {
    /// The identity the certificate gets: the cluster id or the hub id.
    pub fn identity(&self) -> &str {
        match self {
            Purpose::Agent { cluster } => cluster,
            Purpose::Hub { id, .. } => id,
        }
    }

    /// The certificate profile to sign the joiner's request with.
    pub fn profile(&self) -> kubehub_pki::Profile {
        match self {
            Purpose::Agent { cluster } => kubehub_pki::Profile::Agent {
                cluster: cluster.clone(),
            },
            Purpose::Hub { id, names } => kubehub_pki::Profile::Hub {
                id: id.clone(),
                names: names.clone(),
            },
        }
    }
}

impl std::fmt::Display for Purpose {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Purpose::Agent { cluster } => write!(f, "the agent of cluster {cluster}"),
            Purpose::Hub { id, .. } => write!(f, "hub {id}"),
        }
    }
}

/// A join token as the metaserver stores it (JSON, camelCase, under [`record_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRecord {
    /// The token's id (8 lowercase letters or digits).
    pub id: String,
    /// Lowercase hex SHA-256 of the token's secret.
    pub secret_hash: String,
    /// What the token enrolls its bearer as.
    pub purpose: Purpose,
    /// When it was issued, unix seconds.
    pub created: u64,
    /// When it stops being accepted, unix seconds.
    pub expires: u64,
    /// It has enrolled someone (a token is good for one enrollment).
    pub used: bool,
}

/// Why a join token was not accepted. Messages name the token by its id, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// The text is not a join token.
    #[error(transparent)]
    Token(#[from] JoinTokenError),
    /// The record is not this token's (looked up by the wrong id).
    #[error("join token {token} checked against the record of token {record}")]
    WrongRecord {
        /// The token's id.
        token: String,
        /// The record's id.
        record: String,
    },
    /// The secret is not the token's.
    #[error("join token {id}: wrong secret")]
    WrongSecret {
        /// The token's id.
        id: String,
    },
    /// The token has enrolled someone already.
    #[error("join token {id} has already been used (a join token enrolls once)")]
    AlreadyUsed {
        /// The token's id.
        id: String,
    },
    /// The token is past its expiry.
    #[error("join token {id} expired at {} ({}s ago)", rfc3339(*.expired), .now.saturating_sub(*.expired))]
    Expired {
        /// The token's id.
        id: String,
        /// When it expired, unix seconds.
        expired: u64,
        /// When it was presented, unix seconds.
        now: u64,
    },
    /// The token is for something else than what the request asks to become.
    #[error("join token {id} enrolls {token_for}, not {requested}")]
    WrongPurpose {
        /// The token's id.
        id: String,
        /// What the token is for.
        token_for: String,
        /// What was asked.
        requested: String,
    },
    /// A token that would expire at once, or never.
    #[error("a join token's lifetime must be between 1 second and 1 year, not {0:?}")]
    BadTtl(Duration),
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Equal, in a time that does not depend on where they differ (the stored and presented values
/// are hashes of secrets, so there is little to learn anyway).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The longest lifetime a token may have.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// A new join token for `purpose`, valid for `ttl` from `now` (unix seconds), pinning the CA
/// whose hash is `ca_hash` ([`kubehub_pki::Ca::cert_hash`]: `sha256:<hex>`, or the bare hex).
/// Returns the token text (give it to the joiner once; it is not kept) and the record to store.
pub fn issue(
    purpose: Purpose,
    ttl: Duration,
    ca_hash: &str,
    now: u64,
) -> Result<(String, JoinRecord), EnrollError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(EnrollError::BadTtl(ttl));
    }
    let token = JoinToken::generate(ca_hash)?;
    let record = JoinRecord {
        id: token.id.clone(),
        secret_hash: sha256_hex(&token.secret),
        purpose,
        created: now,
        expires: now.saturating_add(ttl.as_secs()),
        used: false,
    };
    Ok((token.encode(), record))
}

/// Is `token` the token of `record`, unused and unexpired at `now` (unix seconds)? The secret
/// is checked first (in constant time), so that someone without it learns nothing of the
/// token's state.
pub fn check(record: &JoinRecord, token: &JoinToken, now: u64) -> Result<(), EnrollError> {
    if record.id != token.id {
        return Err(EnrollError::WrongRecord {
            token: token.id.clone(),
            record: record.id.clone(),
        });
    }
    if !same_bytes(
        sha256_hex(&token.secret).as_bytes(),
        record.secret_hash.as_bytes(),
    ) {
        return Err(EnrollError::WrongSecret {
            id: record.id.clone(),
        });
    }
    if record.used {
        return Err(EnrollError::AlreadyUsed {
            id: record.id.clone(),
        });
    }
    if now >= record.expires {
        return Err(EnrollError::Expired {
            id: record.id.clone(),
            expired: record.expires,
            now,
        });
    }
    Ok(())
}

/// Does the token of `record` enroll as `expected`? Agents: the same cluster. Hubs: the same
/// hub id (the names the certificate gets are the record's, whatever the request says). A
/// token for cluster X used to enroll as cluster Y, or an agent's token used by a hub, is
/// refused.
pub fn check_for(record: &JoinRecord, expected: &Purpose) -> Result<(), EnrollError> {
    let same = match (&record.purpose, expected) {
        (Purpose::Agent { cluster: a }, Purpose::Agent { cluster: b }) => a == b,
        (Purpose::Hub { id: a, .. }, Purpose::Hub { id: b, .. }) => a == b,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err(EnrollError::WrongPurpose {
            id: record.id.clone(),
            token_for: record.purpose.to_string(),
            requested: expected.to_string(),
        })
    }
}

/// [`check`], then the record marked used: store it back (with a compare-and-swap on the old
/// record, so that two enrollments racing on one token cannot both win).
pub fn consume(
    record: &JoinRecord,
    token: &JoinToken,
    now: u64,
) -> Result<JoinRecord, EnrollError> {
    check(record, token, now)?;
    Ok(JoinRecord {
        used: true,
        ..record.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_750_000_000;
    const HASH: &str = "sha256:00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    fn agent(cluster: &str) -> Purpose {
        Purpose::Agent {
            cluster: cluster.into(),
        }
    }

    #[test]
    fn issued_tokens_parse_and_check() {
        let (text, record) = issue(agent("edge-1"), Duration::from_secs(3600), HASH, NOW).unwrap();
        let token = JoinToken::parse(&text).unwrap();
        assert_eq!(token.id, record.id);
        assert_eq!(token.ca_pin(), HASH);
        assert_eq!(record.created, NOW);
        assert_eq!(record.expires, NOW + 3600);
        assert!(!record.used);
        assert_eq!(record.secret_hash.len(), 64);
        assert_eq!(record.secret_hash, sha256_hex(&token.secret));
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains(&token.secret), "the record keeps no secret");
        assert_eq!(record_key(&record.id), format!("join/{}", record.id));
        check(&record, &token, NOW).unwrap();
        check(&record, &token, NOW + 3599).unwrap();
        check_for(&record, &agent("edge-1")).unwrap();
        assert_eq!(record.purpose.identity(), "edge-1");
        assert_eq!(
            record.purpose.profile(),
            kubehub_pki::Profile::Agent {
                cluster: "edge-1".into()
            }
        );
        // Two tokens differ.
        let (other, _) = issue(agent("edge-1"), Duration::from_secs(3600), HASH, NOW).unwrap();
        assert_ne!(other, text);
        // The bare hex works as well as sha256:<hex>.
        let (bare, _) = issue(agent("e"), Duration::from_secs(60), &HASH[7..], NOW).unwrap();
        assert_eq!(JoinToken::parse(&bare).unwrap().ca_pin(), HASH);
    }

    #[test]
    fn refusals_are_distinct_and_name_no_secret() {
        let (text, record) = issue(agent("edge-1"), Duration::from_secs(600), HASH, NOW).unwrap();
        let token = JoinToken::parse(&text).unwrap();

        let mut wrong = token.clone();
        wrong.secret = "0000000000000000".into();
        let e = check(&record, &wrong, NOW).unwrap_err();
        assert_eq!(
            e,
            EnrollError::WrongSecret {
                id: record.id.clone()
            }
        );
        assert!(e.to_string().contains("wrong secret"), "{e}");

        let used = consume(&record, &token, NOW).unwrap();
        assert!(used.used);
        let e = check(&used, &token, NOW).unwrap_err();
        assert!(matches!(e, EnrollError::AlreadyUsed { .. }), "{e}");
        assert!(e.to_string().contains("already been used"), "{e}");
        // Without the secret, a used token looks like any wrong one.
        assert!(matches!(
            check(&used, &wrong, NOW),
            Err(EnrollError::WrongSecret { .. })
        ));

        let e = check(&record, &token, NOW + 600).unwrap_err();
        assert_eq!(
            e,
            EnrollError::Expired {
                id: record.id.clone(),
                expired: NOW + 600,
                now: NOW + 600
            }
        );
        let e = check(&record, &token, NOW + 700).unwrap_err().to_string();
        assert!(
            e.contains("expired at 2025-06-15T15:16:40Z") && e.contains("100s ago"),
            "{e}"
        );

        let mut other_id = token.clone();
        other_id.id = "zzzzzzzz".into();
        assert!(matches!(
            check(&record, &other_id, NOW),
            Err(EnrollError::WrongRecord { .. })
        ));

        for e in [
            check(&record, &wrong, NOW).unwrap_err(),
            check(&used, &token, NOW).unwrap_err(),
            check(&record, &token, NOW + 700).unwrap_err(),
        ] {
            assert!(!e.to_string().contains(&token.secret), "{e}");
        }
    }

    #[test]
    fn a_token_enrolls_only_as_what_it_was_issued_for() {
        let (_, record) = issue(agent("edge-x"), Duration::from_secs(60), HASH, NOW).unwrap();
        let e = check_for(&record, &agent("edge-y")).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "join token {} enrolls the agent of cluster edge-x, not the agent of cluster edge-y",
                record.id
            )
        );
        let hub = Purpose::Hub {
            id: "edge-x".into(),
            names: vec!["h".into()],
        };
        assert!(
            check_for(&record, &hub).is_err(),
            "an agent's token is no hub's"
        );

        let (_, hub_record) = issue(hub.clone(), Duration::from_secs(60), HASH, NOW).unwrap();
        let same_id = Purpose::Hub {
            id: "edge-x".into(),
            names: vec!["other".into()],
        };
        check_for(&hub_record, &same_id).unwrap();
        assert!(check_for(&hub_record, &agent("edge-x")).is_err());
        assert_eq!(
            hub_record.purpose.profile(),
            kubehub_pki::Profile::Hub {
                id: "edge-x".into(),
                names: vec!["h".into()]
            }
        );
    }

    #[test]
    fn records_are_camel_case_json_and_strict() {
        let record = JoinRecord {
            id: "abcd1234".into(),
            secret_hash: "ff".repeat(32),
            purpose: Purpose::Hub {
                id: "hub-1".into(),
                names: vec!["hub-1.example.com".into()],
            },
            created: 1,
            expires: 2,
            used: false,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "abcd1234",
                "secretHash": "ff".repeat(32),
                "purpose": {"kind": "hub", "id": "hub-1", "names": ["hub-1.example.com"]},
                "created": 1,
                "expires": 2,
                "used": false
            })
        );
        let back: JoinRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
        let agent_json = serde_json::to_value(agent("edge-1")).unwrap();
        assert_eq!(
            agent_json,
            serde_json::json!({"kind": "agent", "cluster": "edge-1"})
        );

        let extra = serde_json::json!({
            "id": "abcd1234", "secretHash": "x", "purpose": {"kind": "agent", "cluster": "c"},
            "created": 1, "expires": 2, "used": false, "typo": 1
        });
        assert!(serde_json::from_value::<JoinRecord>(extra).is_err());
        let extra_in_purpose = serde_json::json!({"kind": "agent", "cluster": "c", "names": []});
        assert!(serde_json::from_value::<Purpose>(extra_in_purpose).is_err());
    }

    #[test]
    fn lifetimes_and_hashes_are_checked() {
        for ttl in [Duration::ZERO, Duration::from_millis(999), MAX_TTL * 2] {
            assert_eq!(
                issue(agent("e"), ttl, HASH, NOW).unwrap_err(),
                EnrollError::BadTtl(ttl)
            );
        }
        let e = issue(agent("e"), Duration::from_secs(60), "sha256:abc", NOW).unwrap_err();
        assert!(
            matches!(e, EnrollError::Token(JoinTokenError::BadShape(_))),
            "{e}"
        );
        assert_eq!(
            JoinToken::parse("Bearer abc").map_err(EnrollError::from),
            Err(EnrollError::Token(JoinTokenError::NotAJoinToken))
        );
    }
}
