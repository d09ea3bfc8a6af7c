//! Which level a request is audited at: the first rule that matches, else the default level
//! of writes (`Metadata` unless configured) or of reads (`None` unless configured).

use serde::{Deserialize, Serialize};

/// How much of a request is recorded (kube-apiserver's audit levels, in increasing order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Level {
    /// Not logged.
    #[default]
    None,
    /// Who, what, when, the answer's code: no bodies.
    Metadata,
    /// Metadata and the request body.
    Request,
    /// Metadata, the request body and the response body.
    RequestResponse,
}

pub(crate) fn default_write_level() -> Level {
    Level::Metadata
}

/// One rule: all its non-empty lists must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The level of requests it matches.
    pub level: Level,
    /// Verbs (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, …); empty: any.
    #[serde(default)]
    pub verbs: Vec<String>,
    /// `resource`, `group/resource`, `resource/subresource` or `group/resource/subresource`
    /// (`*` for any); empty: any.
    #[serde(default)]
    pub resources: Vec<String>,
    /// User names; empty: any.
    #[serde(default)]
    pub users: Vec<String>,
    /// Namespaces (`""`: cluster-scoped and all-namespace requests); empty: any.
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// What a rule is matched against.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// Kubernetes verb.
    pub verb: &'a str,
    /// API group (`""`: core).
    pub group: &'a str,
    /// Plural resource (`""`: a non-resource request).
    pub resource: &'a str,
    /// Subresource.
    pub subresource: &'a str,
    /// User name.
    pub user: &'a str,
    /// Namespace.
    pub namespace: &'a str,
}

impl Rule {
    fn matches(&self, s: &Subject<'_>) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&self.verbs, s.verb)
            && any(&self.users, s.user)
            && any(&self.namespaces, s.namespace)
            && (self.resources.is_empty() || self.resources.iter().any(|r| resource_matches(r, s)))
    }
}

fn resource_matches(pattern: &str, s: &Subject<'_>) -> bool {
    let sub = |p: &str| p == "*" || p == s.subresource;
    let mut parts = pattern.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("*"), None, None, None) => true,
        // `pods` is the resource itself, as in kube-apiserver's policies (not pods/exec).
        (Some(r), None, None, None) => r == s.resource && s.subresource.is_empty(),
        // `pods/exec` (core resource and subresource) or `apps/deployments`.
        (Some(a), Some(b), None, None) => {
            (a == s.resource && sub(b))
                || (a == s.group && b == s.resource && s.subresource.is_empty())
        }
        (Some(g), Some(r), Some(sr), None) => g == s.group && r == s.resource && sub(sr),
        _ => false,
    }
}

/// The audit policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// First match wins.
    pub rules: Vec<Rule>,
    /// Writes no rule matched.
    pub write_level: Level,
    /// Reads (`get`, `list`, `watch`) no rule matched.
    pub read_level: Level,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            write_level: Level::Metadata,
            read_level: Level::None,
        }
    }
}

impl Policy {
    /// The level of a request.
    pub fn level(&self, s: &Subject<'_>) -> Level {
        if let Some(r) = self.rules.iter().find(|r| r.matches(s)) {
            return r.level;
        }
        // exec, attach and port-forward are sessions on a pod, whatever the method (the
        // WebSocket form is a GET): writes.
        if is_read(s.verb) && !matches!(s.subresource, "exec" | "attach" | "portforward") {
            self.read_level
        } else {
            self.write_level
        }
    }
}

/// Whether a verb only reads.
pub fn is_read(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch" | "head" | "options")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s<'a>(verb: &'a str, group: &'a str, resource: &'a str, sub: &'a str) -> Subject<'a> {
        Subject {
            verb,
            group,
            resource,
            subresource: sub,
            user: "alice",
            namespace: "ns",
        }
    }

    #[test]
    fn first_match_wins_then_defaults_by_kind_of_verb() {
        let p = Policy {
            rules: vec![
                Rule {
                    level: Level::None,
                    verbs: vec!["get".into()],
                    resources: vec!["events".into()],
                    ..Default::default()
                },
                Rule {
                    level: Level::RequestResponse,
                    resources: vec!["apps/deployments".into(), "pods/exec".into()],
                    ..Default::default()
                },
                Rule {
                    level: Level::Request,
                    users: vec!["bob".into()],
                    ..Default::default()
                },
                Rule {
                    level: Level::Metadata,
                    verbs: vec!["get".into()],
                    namespaces: vec!["ns".into()],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        assert_eq!(p.level(&s("get", "", "events", "")), Level::None);
        assert_eq!(
            p.level(&s("create", "apps", "deployments", "")),
            Level::RequestResponse
        );
        assert_eq!(
            p.level(&s("create", "", "pods", "exec")),
            Level::RequestResponse
        );
        assert_eq!(p.level(&s("get", "", "pods", "")), Level::Metadata);
        assert_eq!(
            p.level(&s("list", "", "pods", "")),
            Level::None,
            "reads default to None"
        );
        assert_eq!(
            p.level(&s("delete", "", "pods", "")),
            Level::Metadata,
            "writes default to Metadata"
        );
        let mut bob = s("list", "", "pods", "");
        bob.user = "bob";
        assert_eq!(p.level(&bob), Level::Request);
        assert!(Level::RequestResponse > Level::Request && Level::Metadata > Level::None);
    }
}
