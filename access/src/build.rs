//! Records in one line: for development snapshots (`[access] file`), tools and tests.
//!
//! Each builder makes a valid record with the common choices (no display name, no labels,
//! a grant for one user on clusters by id); build the struct yourself for anything else.

use crate::model::{ClusterSelector, Grant, Record, Rule, Subject, Tenant, TokenRecord, User};
use crate::Token;

/// A tenant record.
pub fn tenant(name: &str) -> Record {
    Record::Tenant(Tenant {
        name: name.into(),
        display_name: String::new(),
    })
}

/// A user record.
pub fn user(name: &str, tenant: &str, groups: &[&str]) -> Record {
    Record::User(User {
        name: name.into(),
        tenant: tenant.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        admin: false,
    })
}

/// A cluster record.
pub fn cluster(id: &str, tenant: &str) -> Record {
    Record::Cluster(crate::model::Cluster {
        id: id.into(),
        display_name: String::new(),
        tenant: tenant.into(),
        labels: Default::default(),
        environment: String::new(),
    })
}

/// A grant to one user on clusters by id.
pub fn grant(name: &str, tenant: &str, user: &str, clusters: &[&str], rules: Vec<Rule>) -> Record {
    Record::Grant(Grant {
        name: name.into(),
        tenant: tenant.into(),
        subject: Subject::User { name: user.into() },
        clusters: ClusterSelector {
            ids: clusters.iter().map(|c| c.to_string()).collect(),
            labels: Default::default(),
        },
        rules,
    })
}

/// A resource rule: `verbs` on `resources` of `groups`, in `namespaces` (empty: all), on
/// objects named `names` (empty: any).
pub fn rule(
    groups: &[&str],
    resources: &[&str],
    verbs: &[&str],
    namespaces: &[&str],
    names: &[&str],
) -> Rule {
    let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
    Rule {
        api_groups: v(groups),
        resources: v(resources),
        verbs: v(verbs),
        namespaces: v(namespaces),
        resource_names: v(names),
        non_resource_urls: Vec::new(),
    }
}

/// Every right: all verbs on all resources everywhere, and every non-resource path.
pub fn everything() -> Vec<Rule> {
    vec![
        rule(&["*"], &["*"], &["*"], &[], &[]),
        Rule {
            verbs: vec!["*".into()],
            non_resource_urls: vec!["*".into()],
            ..Rule::default()
        },
    ]
}

/// A token record for a token string.
pub fn token_record(
    token: &str,
    user: &str,
    tenant: &str,
    clusters: &[&str],
    expires: u64,
) -> Record {
    let t = Token::parse(token).expect("token_record takes a KubeHub token (khT.<id>.<secret>)");
    Record::Token(TokenRecord {
        id: t.id().into(),
        user: user.into(),
        tenant: tenant.into(),
        clusters: clusters.iter().map(|c| c.to_string()).collect(),
        hash: crate::token::hex(&t.hash()),
        created: 1,
        expires,
        description: String::new(),
    })
}

/// Issues a new token for `user` of `tenant` bound to `clusters` (expiring at `expires`, Unix
/// seconds; 0: never): the token to send, and the record for the access data.
pub fn mint(user: &str, tenant: &str, clusters: &[&str], expires: u64) -> (String, Record) {
    let (token, _, _) = Token::generate();
    let record = token_record(&token, user, tenant, clusters, expires);
    (token, record)
}

/// The snapshot line of `records` at `revision`.
pub fn snapshot(revision: i64, records: Vec<Record>) -> crate::Line {
    crate::Line::Snapshot { revision, records }
}
