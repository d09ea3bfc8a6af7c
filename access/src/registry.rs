//! The registry of live hubs and agents, shared by the metaserver (which stores it under leases
//! and streams it) and the hubs (which keep a view of it to find who holds a cluster's tunnel).
//!
//! * [`HubRecord`], [`AgentRecord`]: what a hub's and an agent's heartbeat registers.
//! * [`CanaryRule`]: the one canary rule (which clusters get hubs of a new version).
//! * [`DrainMark`], [`Pin`]: an operator's instructions — drain a hub (it drains as for a
//!   restart but keeps running until the mark is lifted), move a cluster to chosen hubs.
//! * [`eligibility`]: which live hubs an agent may hold tunnels to.
//! * [`RegistryLine`]: the registry watch (`GET /v1/registry/watch?revision=N`), one JSON
//!   object a line:
//!
//! ```text
//! {"kind":"snapshot","revision":41,"hubs":[{"id":"hub-1",…}],"agents":[{"cluster":"edge-1",…}],"canary":null}
//! {"kind":"hub","revision":42,"hub":{"id":"hub-2","endpoint":"https://…",…}}
//! {"kind":"agent","revision":43,"agent":{"cluster":"edge-1","hubs":["hub-1","hub-2"],…}}
//! {"kind":"hubGone","revision":44,"id":"hub-2"}
//! {"kind":"agentGone","revision":45,"cluster":"edge-1"}
//! {"kind":"canary","revision":46,"rule":{"version":"1.3.0-rc1","percent":10,…}}
//! {"kind":"drain","revision":47,"hub":"hub-2","mark":{"hub":"hub-2","reason":"kernel update",…}}
//! {"kind":"heartbeat","revision":47}
//! ```
//!
//! `drain` lines (and a snapshot's `drains`) are sent only to readers that ask for them
//! (`?drains=true`): a reader of an older version refuses a line of a kind it does not know,
//! so a new meta must not send one to an old hub during a rolling upgrade.
//!
//! * [`RegistryView`]: what a reader keeps of the watch: hubs by id, the hubs each cluster's
//!   agent says it holds a tunnel to, the canary rule.
//!
//! The records ignore fields they do not know (meta and hubs of different versions read each
//! other's records during a rolling upgrade); a line of an unknown `kind` does not parse.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::{
    at, check_dns_label, check_each, check_labels, required_within, syntax, Check, Cluster,
    ValidationError,
};

/// A registered hub (leased: gone `registry.ttl_s` after its last heartbeat).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HubRecord {
    /// Hub id (set by meta from the path).
    #[serde(default)]
    pub id: String,
    /// User-facing URL (`https://host:port`).
    pub endpoint: String,
    /// Where agents (and peer hubs) dial (`host:port`).
    pub agent_endpoint: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Environment tag (agents of clusters of another environment do not use this hub).
    #[serde(default)]
    pub environment: String,
    /// Failure domain (a zone, a rack); empty: unknown. An agent holds its tunnels in
    /// different zones when it can.
    #[serde(default)]
    pub zone: String,
    /// Connected agents.
    #[serde(default)]
    pub agents: u64,
    /// Streams open (requests in flight, watches, sync streams).
    #[serde(default)]
    pub streams: u64,
    /// CPU load over the last interval, in permille of one core (2500: two and a half cores).
    #[serde(default)]
    pub cpu: u32,
    /// Draining (shutting down or restarting): agents move away, no new tunnels.
    #[serde(default)]
    pub draining: bool,
    /// The hub's admin listener (`http://host:port`; `""`: none): its `/traffic`, `/metrics`.
    #[serde(default)]
    pub admin: String,
    /// When the record last changed or was refreshed, unix seconds (set by meta).
    #[serde(default)]
    pub updated: u64,
}

/// A registered agent (leased).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentRecord {
    /// Cluster id (set by meta from the agent's certificate).
    #[serde(default)]
    pub cluster: String,
    /// Agent id.
    #[serde(default)]
    pub agent_id: String,
    /// The hubs it has a tunnel up to (their ids; an address for a hub it knows no id of).
    #[serde(default)]
    pub hubs: Vec<String>,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// When the record last changed or was refreshed, unix seconds (set by meta).
    #[serde(default)]
    pub updated: u64,
}

/// The canary rule: the clusters it selects use hubs of `version`, the others hubs of any
/// other version (each falling back to every eligible hub when that leaves none).
///
/// A cluster is in the canary when it has every one of `clusterLabels` (if any are given), or
/// its tenant is listed in `tenants`, or its [`canary_bucket`] is below `percent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryRule {
    /// The hub version under test (`1.3.0-rc1`).
    pub version: String,
    /// Labels a cluster must all have (with equal values); empty: no cluster by labels.
    #[serde(default)]
    pub cluster_labels: BTreeMap<String, String>,
    /// Tenants whose clusters are all in.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// This percentage of all clusters, by hash of their id (0 to 100).
    #[serde(default)]
    pub percent: u32,
}

const VERSION: &str = "a version (letters, digits, '.', '+', '-' and '_', such as 1.3.0-rc1)";

fn check_version(v: &str) -> Check {
    required_within(v, 128)?;
    if v.bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'-' | b'_'))
    {
        Ok(())
    } else {
        Err(syntax(v, VERSION))
    }
}

impl CanaryRule {
    /// Checks the version, the labels, the tenants (DNS-1123 labels) and the percentage;
    /// errors name the field as written in JSON (`clusterLabels["tier"]`, `tenants[1]`).
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_version(&self.version), || "version".into())?;
        check_labels(&self.cluster_labels, "clusterLabels")?;
        check_each(&self.tenants, "tenants", |t| check_dns_label(t))?;
        at(
            if self.percent > 100 {
                Err(crate::model::Problem::Conflict(
                    "must be 0 to 100 (a percentage of the clusters)",
                ))
            } else {
                Ok(())
            },
            || "percent".into(),
        )
    }

    /// Whether `cluster` is in the canary.
    pub fn includes(&self, cluster: &Cluster) -> bool {
        let by_labels = !self.cluster_labels.is_empty()
            && self
                .cluster_labels
                .iter()
                .all(|(k, v)| cluster.labels.get(k) == Some(v));
        by_labels
            || self.tenants.contains(&cluster.tenant)
            || canary_bucket(&cluster.id) < u64::from(self.percent)
    }
}

/// An operator's drain of a hub (`registry/drains/<hub>`, not leased): the hub drains as for
/// a restart (not ready, GOAWAY to its agents, users' requests forwarded to other holders) but
/// keeps running until the mark is lifted; agents do not choose it meanwhile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainMark {
    /// The hub.
    pub hub: String,
    /// Why, for people.
    #[serde(default)]
    pub reason: String,
    /// Who asked (set by meta).
    #[serde(default)]
    pub by: String,
    /// Since when, unix seconds (set by meta).
    #[serde(default)]
    pub since: u64,
}

/// An operator's pin of a cluster (`registry/pins/<cluster>`, not leased): its agent holds its
/// tunnels to these hubs — those of them it may use ([`eligibility`]); when none of them is
/// usable (gone, draining, another environment) it chooses as if there were no pin.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pin {
    /// The cluster (set by meta from the path).
    #[serde(default)]
    pub cluster: String,
    /// The hubs, by id (at least one).
    pub hubs: Vec<String>,
    /// Why, for people.
    #[serde(default)]
    pub reason: String,
    /// Who asked (set by meta).
    #[serde(default)]
    pub by: String,
    /// Since when, unix seconds (set by meta).
    #[serde(default)]
    pub since: u64,
}

impl DrainMark {
    /// The hub id is a DNS-1123 label (hub ids are); the reason is text without control
    /// characters, at most 1024 characters.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(check_dns_label(&self.hub), || "hub".into())?;
        check_reason(&self.reason)
    }
}

fn check_reason(reason: &str) -> Result<(), ValidationError> {
    at(
        if reason.chars().count() > 1024 || reason.chars().any(char::is_control) {
            Err(crate::model::Problem::Conflict(
                "must be at most 1024 characters, without control characters",
            ))
        } else {
            Ok(())
        },
        || "reason".into(),
    )
}

impl Pin {
    /// At least one hub, each a DNS-1123 label (hub ids are), none twice; the reason as a
    /// drain's.
    pub fn validate(&self) -> Result<(), ValidationError> {
        at(
            if self.hubs.is_empty() {
                Err(crate::model::Problem::Conflict(
                    "must name at least one hub",
                ))
            } else {
                Ok(())
            },
            || "hubs".into(),
        )?;
        check_each(&self.hubs, "hubs", |h| check_dns_label(h))?;
        for (i, h) in self.hubs.iter().enumerate() {
            if self.hubs[..i].contains(h) {
                return at(Err(crate::model::Problem::Conflict("named twice")), || {
                    format!("hubs[{i}]")
                });
            }
        }
        check_reason(&self.reason)
    }
}

/// A cluster's bucket for [`CanaryRule::percent`]: the 64-bit FNV-1a hash of its id, mod 100.
/// Stable across versions and platforms, so a percentage rollout only ever adds clusters as
/// it grows.
pub fn canary_bucket(cluster_id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cluster_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 100
}

/// Which live hubs an agent may use ([`eligibility`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Eligibility<'a> {
    /// The hubs it may hold tunnels to.
    pub eligible: Vec<&'a HubRecord>,
    /// The other live hubs (an agent holding a tunnel to one moves away).
    pub ineligible: Vec<&'a HubRecord>,
}

/// The live `hubs` the agent of `cluster` may use: not draining, of the cluster's
/// `environment` (an empty one matches only hubs with an empty one), and by the canary rule: a
/// cluster in it gets the hubs of `rule.version` (all of the others if none is of it), a
/// cluster not in it the hubs of any other version (all of them if that leaves none). A `pin`
/// narrows that to its hubs (when that leaves none, the pin is not followed).
pub fn eligibility<'a>(
    hubs: &'a [HubRecord],
    cluster: &Cluster,
    canary: Option<&CanaryRule>,
    pin: Option<&Pin>,
) -> Eligibility<'a> {
    let base: Vec<&HubRecord> = hubs
        .iter()
        .filter(|h| !h.draining && h.environment == cluster.environment)
        .collect();
    let eligible = match canary {
        None => base,
        Some(rule) => {
            let inside = rule.includes(cluster);
            let narrowed: Vec<&HubRecord> = base
                .iter()
                .copied()
                .filter(|h| (h.version == rule.version) == inside)
                .collect();
            if narrowed.is_empty() {
                base
            } else {
                narrowed
            }
        }
    };
    let eligible = match pin {
        None => eligible,
        Some(pin) => {
            let pinned: Vec<&HubRecord> = eligible
                .iter()
                .copied()
                .filter(|h| pin.hubs.contains(&h.id))
                .collect();
            if pinned.is_empty() {
                eligible
            } else {
                pinned
            }
        }
    };
    let ineligible = hubs
        .iter()
        .filter(|h| !eligible.iter().any(|e| std::ptr::eq(*e, *h)))
        .collect();
    Eligibility {
        eligible,
        ineligible,
    }
}

/// One line of the registry watch (module documentation). Revisions are the metaserver
/// store's: they only grow within one watch, and one store transaction may give several
/// lines of the same revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RegistryLine {
    /// Everything live as of `revision`: replaces whatever the reader had.
    Snapshot {
        /// The store's revision.
        revision: i64,
        /// Live hubs.
        hubs: Vec<HubRecord>,
        /// Live agents.
        agents: Vec<AgentRecord>,
        /// The canary rule, if one is set.
        canary: Option<CanaryRule>,
        /// Hubs drained by an operator (only for readers that ask: module documentation).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        drains: Vec<DrainMark>,
    },
    /// A hub registered or its record changed.
    Hub {
        /// The change's revision.
        revision: i64,
        /// The record, whole.
        hub: HubRecord,
    },
    /// A hub's record was deleted (its lease expired).
    HubGone {
        /// The change's revision.
        revision: i64,
        /// The hub's id.
        id: String,
    },
    /// An agent registered or its record changed.
    Agent {
        /// The change's revision.
        revision: i64,
        /// The record, whole.
        agent: AgentRecord,
    },
    /// An agent's record was deleted (its lease expired).
    AgentGone {
        /// The change's revision.
        revision: i64,
        /// The agent's cluster.
        cluster: String,
    },
    /// The canary rule was set (`Some`) or cleared (`None`).
    Canary {
        /// The change's revision.
        revision: i64,
        /// The rule.
        rule: Option<CanaryRule>,
    },
    /// An operator drained hub `hub` (`Some`) or lifted the drain (`None`); only for readers
    /// that ask.
    Drain {
        /// The change's revision.
        revision: i64,
        /// The hub.
        hub: String,
        /// The mark.
        mark: Option<DrainMark>,
    },
    /// Nothing changed up to `revision`.
    Heartbeat {
        /// The revision the watch has delivered everything up to.
        revision: i64,
    },
}

impl RegistryLine {
    /// The line's revision.
    pub fn revision(&self) -> i64 {
        match self {
            RegistryLine::Snapshot { revision, .. }
            | RegistryLine::Hub { revision, .. }
            | RegistryLine::HubGone { revision, .. }
            | RegistryLine::Agent { revision, .. }
            | RegistryLine::AgentGone { revision, .. }
            | RegistryLine::Canary { revision, .. }
            | RegistryLine::Drain { revision, .. }
            | RegistryLine::Heartbeat { revision } => *revision,
        }
    }

    /// Reads one line (a trailing `\n` or `\r\n` is fine).
    pub fn parse(line: &[u8]) -> Result<RegistryLine, serde_json::Error> {
        serde_json::from_slice(line)
    }

    /// The line as JSON followed by `\n`.
    pub fn to_line(&self) -> String {
        // Plain data with string keys: serializing cannot fail.
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// What a reader of the registry watch keeps: hubs by id, the hubs each cluster's agent holds
/// a tunnel to (as its record says: ids of hubs that may since have gone or be draining; look
/// them up with [`RegistryView::hub`]), and the canary rule. Apply every line in order;
/// applying a line twice changes nothing, so a watch resumed a little early is harmless.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryView {
    revision: i64,
    hubs: BTreeMap<String, HubRecord>,
    holders: HashMap<String, Vec<String>>,
    canary: Option<CanaryRule>,
    drains: BTreeMap<String, DrainMark>,
}

impl RegistryView {
    /// An empty view (revision 0: watch from the start, which begins with a snapshot).
    pub fn new() -> RegistryView {
        RegistryView::default()
    }

    /// Applies one line.
    pub fn apply(&mut self, line: &RegistryLine) {
        match line {
            RegistryLine::Snapshot {
                hubs,
                agents,
                canary,
                drains,
                ..
            } => {
                self.drains = drains.iter().map(|d| (d.hub.clone(), d.clone())).collect();
                self.hubs = hubs.iter().map(|h| (h.id.clone(), h.clone())).collect();
                self.holders = agents
                    .iter()
                    .map(|a| (a.cluster.clone(), a.hubs.clone()))
                    .collect();
                self.canary.clone_from(canary);
            }
            RegistryLine::Hub { hub, .. } => {
                self.hubs.insert(hub.id.clone(), hub.clone());
            }
            RegistryLine::HubGone { id, .. } => {
                self.hubs.remove(id);
            }
            RegistryLine::Agent { agent, .. } => {
                self.holders
                    .insert(agent.cluster.clone(), agent.hubs.clone());
            }
            RegistryLine::AgentGone { cluster, .. } => {
                self.holders.remove(cluster);
            }
            RegistryLine::Canary { rule, .. } => self.canary.clone_from(rule),
            RegistryLine::Drain { hub, mark, .. } => match mark {
                Some(m) => {
                    self.drains.insert(hub.clone(), m.clone());
                }
                None => {
                    self.drains.remove(hub);
                }
            },
            RegistryLine::Heartbeat { .. } => {}
        }
        self.revision = self.revision.max(line.revision());
    }

    /// The highest revision applied: resume the watch from here.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The hubs the agent of `cluster` registered a tunnel to (empty: none, or no agent).
    pub fn holders(&self, cluster: &str) -> &[String] {
        self.holders.get(cluster).map_or(&[], Vec::as_slice)
    }

    /// A live hub by id.
    pub fn hub(&self, id: &str) -> Option<&HubRecord> {
        self.hubs.get(id)
    }

    /// The live hubs, by id.
    pub fn hubs(&self) -> impl Iterator<Item = &HubRecord> {
        self.hubs.values()
    }

    /// The canary rule.
    pub fn canary(&self) -> Option<&CanaryRule> {
        self.canary.as_ref()
    }

    /// An operator's drain of `hub`, if there is one.
    pub fn drain(&self, hub: &str) -> Option<&DrainMark> {
        self.drains.get(hub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(id: &str, version: &str) -> HubRecord {
        HubRecord {
            id: id.into(),
            endpoint: format!("https://{id}:8443"),
            agent_endpoint: format!("{id}:8444"),
            version: version.into(),
            ..HubRecord::default()
        }
    }

    fn cluster(id: &str, tenant: &str, labels: &[(&str, &str)]) -> Cluster {
        Cluster {
            id: id.into(),
            display_name: String::new(),
            tenant: tenant.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            environment: String::new(),
        }
    }

    #[test]
    fn lines_look_as_documented_and_round_trip() {
        let lines = [
            (
                RegistryLine::HubGone {
                    revision: 44,
                    id: "hub-2".into(),
                },
                r#"{"kind":"hubGone","revision":44,"id":"hub-2"}"#,
            ),
            (
                RegistryLine::AgentGone {
                    revision: 45,
                    cluster: "edge-1".into(),
                },
                r#"{"kind":"agentGone","revision":45,"cluster":"edge-1"}"#,
            ),
            (
                RegistryLine::Canary {
                    revision: 46,
                    rule: None,
                },
                r#"{"kind":"canary","revision":46,"rule":null}"#,
            ),
            (
                RegistryLine::Heartbeat { revision: 46 },
                r#"{"kind":"heartbeat","revision":46}"#,
            ),
            (
                RegistryLine::Snapshot {
                    revision: 41,
                    hubs: vec![],
                    agents: vec![AgentRecord {
                        cluster: "edge-1".into(),
                        hubs: vec!["hub-1".into()],
                        ..AgentRecord::default()
                    }],
                    canary: None,
                    drains: vec![],
                },
                r#"{"kind":"snapshot","revision":41,"hubs":[],"agents":[{"cluster":"edge-1","agentId":"","hubs":["hub-1"],"version":"","updated":0}],"canary":null}"#,
            ),
        ];
        for (line, json) in lines {
            assert_eq!(line.to_line(), format!("{json}\n"));
            assert_eq!(
                RegistryLine::parse(format!("{json}\r\n").as_bytes()).ok(),
                Some(line)
            );
        }
        let h = RegistryLine::Hub {
            revision: 42,
            hub: hub("hub-2", "1.2.0"),
        };
        let text = h.to_line();
        assert!(
            text.starts_with(r#"{"kind":"hub","revision":42,"hub":{"id":"hub-2","#),
            "{text}"
        );
        assert!(text.contains(r#""agentEndpoint":"hub-2:8444""#), "{text}");
        assert!(text.contains(r#""zone":"","agents":0,"streams":0,"cpu":0,"draining":false"#));
        // Where meta's console fetches the hub's /traffic.
        assert!(text.contains(r#""draining":false,"admin":"""#), "{text}");
        // A newer meta's extra fields are ignored; an unknown kind is not a line.
        let newer = r#"{"kind":"hub","revision":1,"hub":{"id":"h","endpoint":"https://h","agentEndpoint":"h:1","colour":"red"}}"#;
        assert!(RegistryLine::parse(newer.as_bytes()).is_ok());
        assert!(RegistryLine::parse(br#"{"kind":"compact","revision":1}"#).is_err());
        // An old hub's heartbeat (no zone, load or draining) reads with the defaults.
        let old: HubRecord = serde_json::from_str(
            r#"{"endpoint":"https://h","agentEndpoint":"h:1","version":"1","environment":"","agents":3}"#,
        )
        .unwrap();
        assert_eq!(
            (old.agents, old.zone.as_str(), old.draining),
            (3, "", false)
        );
    }

    #[test]
    fn the_view_follows_the_lines() {
        let mut v = RegistryView::new();
        assert_eq!(v.holders("edge-1"), &[] as &[String]);
        let agent = |c: &str, hubs: &[&str]| AgentRecord {
            cluster: c.into(),
            hubs: hubs.iter().map(|h| (*h).into()).collect(),
            ..AgentRecord::default()
        };
        v.apply(&RegistryLine::Snapshot {
            revision: 10,
            hubs: vec![hub("hub-1", "1"), hub("hub-2", "1")],
            agents: vec![agent("edge-1", &["hub-1"]), agent("edge-2", &["hub-2"])],
            canary: None,
            drains: vec![],
        });
        assert_eq!(v.revision(), 10);
        assert_eq!(v.holders("edge-1"), ["hub-1"]);
        assert_eq!(v.hubs().count(), 2);
        v.apply(&RegistryLine::Agent {
            revision: 11,
            agent: agent("edge-1", &["hub-1", "hub-2"]),
        });
        assert_eq!(v.holders("edge-1"), ["hub-1", "hub-2"]);
        v.apply(&RegistryLine::HubGone {
            revision: 12,
            id: "hub-2".into(),
        });
        assert!(v.hub("hub-2").is_none() && v.hub("hub-1").is_some());
        // Holders are as the agent said: hub-2 stays listed until the agent registers again.
        assert_eq!(v.holders("edge-1"), ["hub-1", "hub-2"]);
        v.apply(&RegistryLine::AgentGone {
            revision: 13,
            cluster: "edge-2".into(),
        });
        assert!(v.holders("edge-2").is_empty());
        let rule = CanaryRule {
            version: "2".into(),
            percent: 5,
            ..CanaryRule::default()
        };
        v.apply(&RegistryLine::Canary {
            revision: 14,
            rule: Some(rule.clone()),
        });
        assert_eq!(v.canary(), Some(&rule));
        // Replaying a line is harmless; heartbeats only move the revision.
        let mut again = v.clone();
        again.apply(&RegistryLine::HubGone {
            revision: 12,
            id: "hub-2".into(),
        });
        assert_eq!(again, v);
        v.apply(&RegistryLine::Heartbeat { revision: 20 });
        assert_eq!(v.revision(), 20);
        // A snapshot replaces everything.
        v.apply(&RegistryLine::Snapshot {
            revision: 30,
            hubs: vec![hub("hub-3", "1")],
            agents: vec![],
            canary: None,
            drains: vec![],
        });
        assert_eq!(
            v.hubs().map(|h| h.id.as_str()).collect::<Vec<_>>(),
            ["hub-3"]
        );
        assert!(v.holders("edge-1").is_empty() && v.canary().is_none());
    }

    #[test]
    fn canary_membership_and_validation() {
        let rule = CanaryRule {
            version: "1.3.0-rc1".into(),
            cluster_labels: [("tier".to_owned(), "canary".to_owned())].into(),
            tenants: vec!["t1".into()],
            percent: 0,
        };
        rule.validate().unwrap();
        assert!(rule.includes(&cluster("a", "t9", &[("tier", "canary"), ("x", "y")])));
        assert!(!rule.includes(&cluster("a", "t9", &[("tier", "gold")])));
        assert!(rule.includes(&cluster("a", "t1", &[])));
        // Empty labels select nobody by labels.
        let by_percent = |p| CanaryRule {
            version: "2".into(),
            percent: p,
            ..CanaryRule::default()
        };
        assert!(!by_percent(0).includes(&cluster("a", "t", &[])));
        assert!(by_percent(100).includes(&cluster("a", "t", &[])));
        // About `percent` of the clusters, and growing the percentage only adds clusters.
        let ids: Vec<String> = (0..10_000).map(|i| format!("cluster-{i}")).collect();
        let count = |p| {
            ids.iter()
                .filter(|id| by_percent(p).includes(&cluster(id, "t", &[])))
                .count()
        };
        let (ten, twenty) = (count(10), count(20));
        assert!((800..=1200).contains(&ten), "{ten}");
        assert!((1700..=2300).contains(&twenty), "{twenty}");
        for id in &ids {
            let c = cluster(id, "t", &[]);
            assert!(!by_percent(10).includes(&c) || by_percent(20).includes(&c));
        }
        // Pinned (FNV-1a 64 of "edge-1" is 0xf1d7a8b4352bc316, computed independently):
        // metas of other versions put a cluster in the same bucket.
        assert_eq!(canary_bucket("edge-1"), 0xf1d7_a8b4_352b_c316 % 100);
        assert_eq!(canary_bucket("edge-1"), 2);
        assert_eq!(canary_bucket(""), 37);
        for (bad, field) in [
            (
                CanaryRule {
                    version: String::new(),
                    ..rule.clone()
                },
                "version",
            ),
            (
                CanaryRule {
                    version: "1 3".into(),
                    ..rule.clone()
                },
                "version",
            ),
            (
                CanaryRule {
                    percent: 101,
                    ..rule.clone()
                },
                "percent",
            ),
            (
                CanaryRule {
                    tenants: vec!["ok".into(), "Not_A_Label".into()],
                    ..rule.clone()
                },
                "tenants[1]",
            ),
            (
                CanaryRule {
                    cluster_labels: [("bad key!".to_owned(), "v".to_owned())].into(),
                    ..rule.clone()
                },
                "clusterLabels[\"bad key!\"] (key)",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field, "{bad:?}");
        }
    }

    #[test]
    fn eligible_hubs_by_draining_environment_and_canary() {
        let mut hubs = vec![
            hub("a", "1.2"),
            hub("b", "1.2"),
            hub("c", "1.3"),
            hub("d", "1.2"),
            hub("e", "1.2"),
        ];
        hubs[3].draining = true;
        hubs[4].environment = "staging".into();
        fn ids<'a>(e: &Eligibility<'a>) -> (Vec<&'a str>, Vec<&'a str>) {
            let names = |v: &[&'a HubRecord]| v.iter().map(|h| h.id.as_str()).collect();
            (names(&e.eligible), names(&e.ineligible))
        }
        let plain = cluster("x", "t", &[]);
        assert_eq!(
            ids(&eligibility(&hubs, &plain, None, None)),
            (vec!["a", "b", "c"], vec!["d", "e"])
        );
        let mut staging = plain.clone();
        staging.environment = "staging".into();
        assert_eq!(
            ids(&eligibility(&hubs, &staging, None, None)),
            (vec!["e"], vec!["a", "b", "c", "d"])
        );
        let rule = CanaryRule {
            version: "1.3".into(),
            tenants: vec!["canary".into()],
            ..CanaryRule::default()
        };
        let inside = cluster("x", "canary", &[]);
        assert_eq!(
            ids(&eligibility(&hubs, &inside, Some(&rule), None)),
            (vec!["c"], vec!["a", "b", "d", "e"])
        );
        assert_eq!(
            ids(&eligibility(&hubs, &plain, Some(&rule), None)),
            (vec!["a", "b"], vec!["c", "d", "e"])
        );
        // No hub of the canary's version (or only it): every eligible hub.
        let none = CanaryRule {
            version: "9".into(),
            ..rule.clone()
        };
        assert_eq!(
            ids(&eligibility(&hubs, &inside, Some(&none), None)),
            (vec!["a", "b", "c"], vec!["d", "e"])
        );
        let only_new: Vec<HubRecord> = vec![hub("c", "1.3")];
        assert_eq!(
            ids(&eligibility(&only_new, &plain, Some(&rule), None)),
            (vec!["c"], vec![])
        );
        // A pin narrows to its hubs among the eligible ones; with none usable it is not
        // followed (a draining hub, another environment, a hub that is gone).
        let pin = |hubs: &[&str]| Pin {
            cluster: "x".into(),
            hubs: hubs.iter().map(|h| (*h).to_owned()).collect(),
            ..Pin::default()
        };
        assert_eq!(
            ids(&eligibility(&hubs, &plain, None, Some(&pin(&["b"])))),
            (vec!["b"], vec!["a", "c", "d", "e"])
        );
        assert_eq!(
            ids(&eligibility(&hubs, &plain, None, Some(&pin(&["c", "a"])))),
            (vec!["a", "c"], vec!["b", "d", "e"])
        );
        assert_eq!(
            ids(&eligibility(
                &hubs,
                &plain,
                None,
                Some(&pin(&["d", "e", "gone"]))
            )),
            (vec!["a", "b", "c"], vec!["d", "e"])
        );
        // With the canary: the pin narrows what the canary leaves.
        assert_eq!(
            ids(&eligibility(
                &hubs,
                &plain,
                Some(&rule),
                Some(&pin(&["c", "b"]))
            )),
            (vec!["b"], vec!["a", "c", "d", "e"])
        );
        // Validation names the field.
        assert_eq!(
            pin(&[])
                .validate()
                .unwrap_err()
                .to_string()
                .split(':')
                .next(),
            Some("hubs")
        );
        let twice = pin(&["a", "a"]).validate().unwrap_err().to_string();
        assert!(twice.starts_with("hubs[1]"), "{twice}");
        let bad = pin(&["Not_A_Hub"]).validate().unwrap_err().to_string();
        assert!(bad.starts_with("hubs[0]"), "{bad}");
        assert!(pin(&["a", "b"]).validate().is_ok());
    }

    #[test]
    fn drains_are_kept_by_the_view() {
        let mut v = RegistryView::new();
        let mark = DrainMark {
            hub: "hub-1".into(),
            reason: "kernel update".into(),
            by: "admin".into(),
            since: 5,
        };
        v.apply(&RegistryLine::Snapshot {
            revision: 3,
            hubs: vec![],
            agents: vec![],
            canary: None,
            drains: vec![mark.clone()],
        });
        assert_eq!(v.drain("hub-1"), Some(&mark));
        let line = RegistryLine::Drain {
            revision: 4,
            hub: "hub-1".into(),
            mark: None,
        };
        assert_eq!(
            line.to_line(),
            "{\"kind\":\"drain\",\"revision\":4,\"hub\":\"hub-1\",\"mark\":null}\n"
        );
        v.apply(&line);
        assert!(v.drain("hub-1").is_none());
        v.apply(&RegistryLine::Drain {
            revision: 5,
            hub: "hub-2".into(),
            mark: Some(DrainMark {
                hub: "hub-2".into(),
                ..DrainMark::default()
            }),
        });
        assert!(v.drain("hub-2").is_some());
        assert_eq!(v.revision(), 5);
    }
}
