//! Bans: an operator's "stop serving this party, now", as the metaserver stores them (record
//! [`Ban`], key `bans/<id>`) and the hubs enforce them ([`BanTable`], inside the
//! [`crate::Index`]).
//!
//! A ban names exactly one target ([`BanTarget`]): a token (by id), a user, a tenant, a
//! cluster, or a client ([`ClientMatch`]: a user-agent glob and/or a source address range).
//! It has a reason (shown to the banned party in the 403 `Status`), and optionally an
//! expiry: from `expiresAt` on it no longer applies, on every hub by its own clock, without
//! any write to meta.
//!
//! # Matching
//!
//! * `userAgent`: a glob over the whole `User-Agent` field, `*` matching any run of
//!   characters (none included), ASCII case-insensitive: `kubectl/*` bans every kubectl,
//!   `*python*` every client whose agent says python. At most 256 characters.
//! * `source`: an IPv4 or IPv6 address (`192.0.2.7`, one address) or a CIDR range
//!   (`192.0.2.0/24`, `2001:db8::/32`; host bits must be zero). An IPv4-mapped IPv6 source
//!   (`::ffff:192.0.2.7`) matches as its IPv4 address.
//! * Both given: a request must match both.
//!
//! # Cost on the hub
//!
//! Token, user, tenant and cluster bans are hash lookups (one per kind) in a table behind an
//! `ArcSwap`, rebuilt whenever a ban changes; with no ban in force the check is one atomic
//! load and four empty-map probes. Client bans are a linear scan of the client bans in
//! force: each is a glob match over the user agent (O(pattern × agent) at worst, typically
//! one pass) and a masked address compare. Client bans are meant to be few (an operator's
//! emergency brake, not a firewall): the scan is bounded by [`MAX_CLIENT_BANS`], beyond which
//! meta refuses new client bans.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::index::Identity;
use crate::model::{
    at, check_dns_label, check_text, check_user_name, is_token_id, syntax, Check, Problem,
    ValidationError,
};

/// The most client bans (user agent / source) in force at once: the hub scans them on every
/// request, so meta refuses more.
pub const MAX_CLIENT_BANS: usize = 256;

/// The longest user-agent pattern.
pub const MAX_USER_AGENT_PATTERN: usize = 256;

/// The longest reason.
pub const MAX_REASON: usize = 1024;

/// A ban, as meta stores it, the sync feed carries it and `GET /v1/bans` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Ban {
    /// 12 characters of `[a-z0-9]`, chosen by meta.
    pub id: String,
    /// Who is banned.
    pub target: BanTarget,
    /// Why (required; the banned party reads it in the 403).
    pub reason: String,
    /// When it was made, RFC 3339.
    pub created_at: String,
    /// When it stops applying, RFC 3339; absent: until lifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Who made it (meta's name for the caller).
    #[serde(default)]
    pub created_by: String,
}

/// Who a ban is for: exactly one of these. JSON: `{"token": "<id>"}`, `{"user": "<name>"}`,
/// `{"tenant": "<name>"}`, `{"cluster": "<id>"}`, `{"client": {"userAgent": "…", "source":
/// "…"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BanTarget {
    /// A token, by id (`khT.<id>.…`).
    Token(String),
    /// A user (every token of theirs).
    User(String),
    /// A tenant (every user of it).
    Tenant(String),
    /// A cluster (every request to it, whoever asks).
    Cluster(String),
    /// A client, by what it sends.
    Client(ClientMatch),
}

/// A client: a user-agent glob and/or a source address range (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClientMatch {
    /// A glob over the whole `User-Agent` (`*` any run), ASCII case-insensitive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// An address or CIDR range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl fmt::Display for BanTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BanTarget::Token(t) => write!(f, "token {t}"),
            BanTarget::User(u) => write!(f, "user {u}"),
            BanTarget::Tenant(t) => write!(f, "tenant {t}"),
            BanTarget::Cluster(c) => write!(f, "cluster {c}"),
            BanTarget::Client(c) => {
                let mut parts = Vec::new();
                if let Some(ua) = &c.user_agent {
                    parts.push(format!("user-agent {ua:?}"));
                }
                if let Some(s) = &c.source {
                    parts.push(format!("source {s}"));
                }
                write!(f, "client {}", parts.join(" "))
            }
        }
    }
}

const CIDR: &str = "an IP address or a CIDR range (192.0.2.7, 192.0.2.0/24, 2001:db8::/32) \
                    without host bits set";
const RFC3339: &str = "an RFC 3339 time (2026-11-27T10:00:00Z)";
const BAN_ID: &str = "a ban id (12 lower-case letters and digits)";
const TOKEN_ID: &str = "a token id (12 lower-case letters and digits: khT.<id>.…)";

/// An address range: an address and how many leading bits must match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CidrError(String);

fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn bits(ip: IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
        IpAddr::V6(a) => (u128::from(a), 128),
    }
}

fn mask(width: u8, prefix: u8) -> u128 {
    let host = width - prefix.min(width);
    let ones = if width == 32 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    if host >= 128 {
        0
    } else {
        ones & !((1u128 << host) - 1)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .parse()
            .map_err(|_| CidrError(format!("{a:?} is not an IP address")))?;
        let addr = unmapped(addr);
        let (value, width) = bits(addr);
        let prefix = match p {
            None => width,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= width => n,
                _ => {
                    return Err(CidrError(format!(
                        "/{p} is not a prefix length for {addr} (0 to {width})"
                    )))
                }
            },
        };
        if value & !mask(width, prefix) != 0 {
            let net = value & mask(width, prefix);
            let net = if width == 32 {
                IpAddr::from(u32::try_from(net).unwrap_or_default().to_be_bytes())
            } else {
                IpAddr::from(net.to_be_bytes())
            };
            return Err(CidrError(format!(
                "{s} has host bits set: did you mean {net}/{prefix}?"
            )));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmapped(ip);
        let (net, width) = bits(self.addr);
        let (v, w) = bits(ip);
        w == width && (v & mask(width, self.prefix)) == net
    }
}

/// Whether `text` matches the glob `pattern` as a whole (`*`: any run, possibly empty),
/// ASCII case-insensitive. Linear in practice (the classic two-pointer match with
/// backtracking to the last star).
pub fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while t < text.len() {
        if p < pattern.len() && pattern[p] != b'*' && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

fn check_time(v: &str) -> Check {
    if kubehub_kapi::time::parse_rfc3339(v).is_some() {
        Ok(())
    } else {
        Err(syntax(v, RFC3339))
    }
}

/// Unix milliseconds of an RFC 3339 time.
pub fn unix_ms(rfc3339: &str) -> Option<u64> {
    let t = kubehub_kapi::time::parse_rfc3339(rfc3339)?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    u64::try_from(d.as_millis()).ok()
}

/// RFC 3339 with milliseconds, UTC (what meta writes for `createdAt` and `expiresAt`).
pub fn rfc3339_ms(unix_ms: u64) -> String {
    humantime_ms(unix_ms)
}

fn humantime_ms(ms: u64) -> String {
    // kapi formats whole seconds; add the milliseconds by hand (".123Z").
    let secs = kubehub_kapi::time::rfc3339(UNIX_EPOCH + Duration::from_secs(ms / 1000));
    match ms % 1000 {
        0 => secs,
        frac => format!("{}.{frac:03}Z", secs.trim_end_matches('Z')),
    }
}

impl ClientMatch {
    fn validate(&self) -> Result<(), ValidationError> {
        if self.user_agent.is_none() && self.source.is_none() {
            return at(
                Err(Problem::Conflict(
                    "a client ban needs userAgent, source or both",
                )),
                || "target.client".into(),
            );
        }
        if let Some(ua) = &self.user_agent {
            at(
                if ua.is_empty() {
                    Err(Problem::Required)
                } else {
                    check_text(ua, MAX_USER_AGENT_PATTERN)
                },
                || "target.client.userAgent".into(),
            )?;
        }
        if let Some(s) = &self.source {
            at(
                s.parse::<Cidr>().map(|_| ()).map_err(|e| Problem::Syntax {
                    value: format!("{s} ({e})"),
                    expected: CIDR,
                }),
                || "target.client.source".into(),
            )?;
        }
        Ok(())
    }
}

impl BanTarget {
    /// Checks the named party's syntax (`target.token`, `target.user`, …).
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            BanTarget::Token(t) => at(
                if is_token_id(t) {
                    Ok(())
                } else {
                    Err(syntax(t, TOKEN_ID))
                },
                || "target.token".into(),
            ),
            BanTarget::User(u) => at(check_user_name(u), || "target.user".into()),
            BanTarget::Tenant(t) => at(check_dns_label(t), || "target.tenant".into()),
            BanTarget::Cluster(c) => at(check_dns_label(c), || "target.cluster".into()),
            BanTarget::Client(c) => c.validate(),
        }
    }
}

impl Ban {
    /// Checks the id, target, reason (required text), times (`expiresAt` after `createdAt`)
    /// and `createdBy`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(
            if is_token_id(&self.id) {
                Ok(())
            } else {
                Err(syntax(&self.id, BAN_ID))
            },
            || "id".into(),
        )?;
        self.target.validate()?;
        at(
            if self.reason.trim().is_empty() {
                Err(Problem::Required)
            } else {
                check_text(&self.reason, MAX_REASON)
            },
            || "reason".into(),
        )?;
        at(check_time(&self.created_at), || "createdAt".into())?;
        if let Some(e) = &self.expires_at {
            at(check_time(e), || "expiresAt".into())?;
            if unix_ms(e) <= unix_ms(&self.created_at) {
                return at(Err(Problem::Conflict("must be after createdAt")), || {
                    "expiresAt".into()
                });
            }
        }
        at(check_text(&self.created_by, 256), || "createdBy".into())
    }

    /// When it stops applying, Unix milliseconds (`None`: never).
    pub fn expires_ms(&self) -> Option<u64> {
        self.expires_at.as_deref().and_then(unix_ms)
    }

    /// Whether it applies at `now_ms` (Unix milliseconds).
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.expires_ms().is_none_or(|e| now_ms < e)
    }
}

/// A ban as the hub holds it: the record and what matching needs, parsed once.
#[derive(Debug)]
pub struct ActiveBan {
    /// The record.
    pub ban: Ban,
    expires_ms: Option<u64>,
    user_agent: Option<Box<[u8]>>,
    source: Option<Cidr>,
}

impl ActiveBan {
    fn new(ban: Ban) -> ActiveBan {
        let (user_agent, source) = match &ban.target {
            BanTarget::Client(c) => (
                c.user_agent.as_ref().map(|u| u.as_bytes().into()),
                c.source.as_deref().and_then(|s| s.parse().ok()),
            ),
            _ => (None, None),
        };
        ActiveBan {
            expires_ms: ban.expires_ms(),
            ban,
            user_agent,
            source,
        }
    }

    /// Whether it applies at `now_ms`.
    pub fn in_force(&self, now_ms: u64) -> bool {
        self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// The message a banned request's 403 carries: `banned: <reason> (ban <id>, until <t>)`.
    pub fn message(&self) -> String {
        match &self.ban.expires_at {
            Some(t) => format!(
                "banned: {} (ban {}, until {t})",
                self.ban.reason, self.ban.id
            ),
            None => format!("banned: {} (ban {})", self.ban.reason, self.ban.id),
        }
    }

    fn matches_client(&self, user_agent: &[u8], source: Option<IpAddr>) -> bool {
        self.user_agent
            .as_deref()
            .is_none_or(|p| glob_matches(p, user_agent))
            && self
                .source
                .is_none_or(|c| source.is_some_and(|ip| c.contains(ip)))
    }
}

type ByName = HashMap<String, Box<[Arc<ActiveBan>]>>;

/// Every ban the hub holds, indexed for the per-request check. Expired bans stay in it
/// until meta deletes them, and are skipped by the clock.
#[derive(Debug, Default)]
pub struct BanTable {
    tokens: ByName,
    users: ByName,
    tenants: ByName,
    clusters: ByName,
    clients: Box<[Arc<ActiveBan>]>,
    len: usize,
}

fn first_in_force(map: &ByName, key: &str, now_ms: u64) -> Option<Arc<ActiveBan>> {
    map.get(key)?
        .iter()
        .find(|b| b.in_force(now_ms))
        .map(Arc::clone)
}

impl BanTable {
    /// The table of `bans`.
    pub fn build<'b>(bans: impl Iterator<Item = &'b Ban>) -> BanTable {
        let mut t = BanTable::default();
        let mut maps: [HashMap<String, Vec<Arc<ActiveBan>>>; 4] = Default::default();
        let mut clients = Vec::new();
        for b in bans {
            let a = Arc::new(ActiveBan::new(b.clone()));
            t.len += 1;
            let (i, name) = match &b.target {
                BanTarget::Token(n) => (0, n),
                BanTarget::User(n) => (1, n),
                BanTarget::Tenant(n) => (2, n),
                BanTarget::Cluster(n) => (3, n),
                BanTarget::Client(_) => {
                    clients.push(a);
                    continue;
                }
            };
            maps[i].entry(name.clone()).or_default().push(a);
        }
        let [tokens, users, tenants, clusters] =
            maps.map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect());
        t.tokens = tokens;
        t.users = users;
        t.tenants = tenants;
        t.clusters = clusters;
        t.clients = clients.into();
        t
    }

    /// How many bans it holds (in force or not).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A client ban in force that matches the user agent and source address.
    pub fn client(
        &self,
        user_agent: &[u8],
        source: Option<IpAddr>,
        now_ms: u64,
    ) -> Option<Arc<ActiveBan>> {
        self.clients
            .iter()
            .find(|b| b.in_force(now_ms) && b.matches_client(user_agent, source))
            .map(Arc::clone)
    }

    /// A ban in force on the identity's token, user or tenant.
    pub fn identity(&self, id: &Identity, now_ms: u64) -> Option<Arc<ActiveBan>> {
        first_in_force(&self.tokens, &id.token_id, now_ms)
            .or_else(|| first_in_force(&self.users, &id.user, now_ms))
            .or_else(|| first_in_force(&self.tenants, &id.tenant, now_ms))
    }

    /// A ban in force on the cluster.
    pub fn cluster(&self, cluster: &str, now_ms: u64) -> Option<Arc<ActiveBan>> {
        first_in_force(&self.clusters, cluster, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_agents_case_insensitively() {
        let m = |p: &str, t: &str| glob_matches(p.as_bytes(), t.as_bytes());
        assert!(m(
            "kubectl/*",
            "kubectl/v1.32.4 (linux/amd64) kubernetes/abc"
        ));
        assert!(m("KUBECTL/*", "kubectl/v1.32.4"));
        assert!(!m("kubectl/*", "python-requests/2.31"));
        assert!(m("*python*", "OpenAPI-Generator/29.0.0/python"));
        assert!(m("*", ""));
        assert!(!m("a", ""));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("exact", "Exact"));
        assert!(!m("exact", "exactly"));
    }

    #[test]
    fn cidrs_parse_and_contain() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        let e = "10.1.2.3/16".parse::<Cidr>().unwrap_err().to_string();
        assert!(e.contains("did you mean 10.1.0.0/16"), "{e}");
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nope".parse::<Cidr>().is_err());
    }

    fn ban(id: &str, target: BanTarget, expires_at: Option<&str>) -> Ban {
        Ban {
            id: id.into(),
            target,
            reason: "r".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: expires_at.map(str::to_owned),
            created_by: "admin".into(),
        }
    }

    #[test]
    fn the_index_finds_bans_in_force_by_every_kind_of_target() {
        use crate::{build, Index, Line, Record};
        let (tok, rec) = build::mint("ann", "acme", &["edge"], 0);
        let index = Index::new();
        let t0 = unix_ms("2026-06-01T00:00:00Z").unwrap();
        let records = vec![
            build::tenant("acme"),
            build::user("ann", "acme", &[]),
            build::cluster("edge", "acme"),
            rec,
            Record::Ban(ban("b00000000001", BanTarget::User("ann".into()), None)),
            Record::Ban(ban(
                "b00000000002",
                BanTarget::Cluster("edge".into()),
                Some("2026-06-01T00:00:01.500Z"),
            )),
            Record::Ban(ban(
                "b00000000003",
                BanTarget::Client(ClientMatch {
                    user_agent: Some("kubectl/*".into()),
                    source: Some("10.0.0.0/8".into()),
                }),
                None,
            )),
        ];
        index.apply(&build::snapshot(1, records)).unwrap();
        let id = index
            .authenticate(Some(format!("Bearer {tok}").as_bytes()), 0)
            .unwrap();
        assert_eq!(index.identity_ban(&id, t0).unwrap().ban.id, "b00000000001");
        assert_eq!(
            index.cluster_ban("edge", t0).unwrap().ban.id,
            "b00000000002"
        );
        assert!(
            index.cluster_ban("edge", t0 + 1500).is_none(),
            "lapsed by the clock"
        );
        assert!(index.cluster_ban("other", t0).is_none());
        let lab = Some("10.1.2.3".parse().unwrap());
        assert!(index.client_ban(b"kubectl/v1.32.4", lab, t0).is_some());
        assert!(index
            .client_ban(b"kubectl/v1.32.4", Some("192.0.2.1".parse().unwrap()), t0)
            .is_none());
        assert!(
            index.client_ban(b"python/3", lab, t0).is_none(),
            "both must match"
        );
        assert!(index.client_ban(b"kubectl/v1.32.4", None, t0).is_none());
        assert_eq!(
            index.identity_ban(&id, t0).unwrap().message(),
            "banned: r (ban b00000000001)"
        );
        index
            .apply(&Line::Delete {
                revision: 2,
                key: "bans/b00000000001".into(),
            })
            .unwrap();
        assert!(index.identity_ban(&id, t0).is_none(), "lifted");
        index
            .apply(&Line::Put {
                revision: 3,
                record: Record::Ban(ban("b00000000004", BanTarget::Tenant("acme".into()), None)),
            })
            .unwrap();
        assert_eq!(index.identity_ban(&id, t0).unwrap().ban.id, "b00000000004");
        assert_eq!(index.bans().len(), 3);
        // A ban that does not validate is refused and removes what was under its key.
        let mut bad = ban("b00000000004", BanTarget::Tenant("acme".into()), None);
        bad.reason.clear();
        assert!(index
            .apply(&Line::Put {
                revision: 4,
                record: Record::Ban(bad),
            })
            .is_err());
        assert!(index.identity_ban(&id, t0).is_none());
    }

    #[test]
    fn bans_validate_naming_the_field() {
        let field = |b: Ban| b.validate().unwrap_err().field;
        assert_eq!(field(ban("short", BanTarget::User("a".into()), None)), "id");
        assert_eq!(
            field(ban("b00000000001", BanTarget::Token("x".into()), None)),
            "target.token"
        );
        assert_eq!(
            field(ban(
                "b00000000001",
                BanTarget::Client(ClientMatch::default()),
                None
            )),
            "target.client"
        );
        assert_eq!(
            field(ban(
                "b00000000001",
                BanTarget::User("a".into()),
                Some("2025-01-01T00:00:00Z")
            )),
            "expiresAt"
        );
        let json = r#"{"id":"b00000000001","target":{"client":{"userAgent":"kubectl/*"}},"reason":"r","createdAt":"2026-01-01T00:00:00Z","createdBy":"admin"}"#;
        let b: Ban = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            json,
            "the wire shape round-trips"
        );
        assert!(serde_json::from_str::<BanTarget>(r#"{"user":"a","tenant":"b"}"#).is_err());
    }

    #[test]
    fn times_keep_milliseconds() {
        let t = rfc3339_ms(1_700_000_000_250);
        assert_eq!(t, "2023-11-14T22:13:20.250Z");
        assert_eq!(unix_ms(&t), Some(1_700_000_000_250));
        assert_eq!(rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20Z");
    }
}
