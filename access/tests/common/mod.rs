//! Builders shared by the integration tests: records, tokens, requests.

#![allow(dead_code)]

use std::collections::BTreeMap;

use kubehub_access::model::{
    Cluster, ClusterSelector, Grant, Rule, Subject, Tenant, TokenRecord, User,
};
use kubehub_access::{Attributes, Decision, Identity, Index, Line, Record, Token};
use kubehub_kapi::request_info::{request_info, RequestInfo};

pub const NOW: u64 = 1_750_000_000;

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn tenant(name: &str) -> Record {
    Record::Tenant(Tenant {
        name: name.into(),
        display_name: String::new(),
    })
}

pub fn user(name: &str, tenant: &str, groups: &[&str]) -> Record {
    Record::User(User {
        name: name.into(),
        tenant: tenant.into(),
        groups: strings(groups),
        admin: false,
    })
}

pub fn cluster(id: &str, tenant: &str, l: &[(&str, &str)]) -> Record {
    Record::Cluster(Cluster {
        id: id.into(),
        display_name: String::new(),
        tenant: tenant.into(),
        labels: labels(l),
        environment: String::new(),
    })
}

pub fn ids(ids: &[&str]) -> ClusterSelector {
    ClusterSelector {
        ids: strings(ids),
        labels: BTreeMap::new(),
    }
}

pub fn with_labels(l: &[(&str, &str)]) -> ClusterSelector {
    ClusterSelector {
        ids: Vec::new(),
        labels: labels(l),
    }
}

pub fn user_subject(name: &str) -> Subject {
    Subject::User { name: name.into() }
}

pub fn group_subject(name: &str) -> Subject {
    Subject::Group { name: name.into() }
}

pub fn grant(
    tenant: &str,
    name: &str,
    subject: Subject,
    clusters: ClusterSelector,
    rules: Vec<Rule>,
) -> Record {
    Record::Grant(Grant {
        name: name.into(),
        tenant: tenant.into(),
        subject,
        clusters,
        rules,
    })
}

/// A resource rule.
pub fn rule(verbs: &[&str], api_groups: &[&str], resources: &[&str]) -> Rule {
    Rule {
        verbs: strings(verbs),
        api_groups: strings(api_groups),
        resources: strings(resources),
        ..Rule::default()
    }
}

/// A non-resource rule.
pub fn urls(verbs: &[&str], urls: &[&str]) -> Rule {
    Rule {
        verbs: strings(verbs),
        non_resource_urls: strings(urls),
        ..Rule::default()
    }
}

pub fn in_namespaces(mut r: Rule, ns: &[&str]) -> Rule {
    r.namespaces = strings(ns);
    r
}

pub fn named(mut r: Rule, names: &[&str]) -> Rule {
    r.resource_names = strings(names);
    r
}

/// A new token for the user: the token string and its record.
pub fn token(user: &str, tenant: &str, clusters: &[&str], expires: u64) -> (String, Record) {
    let (token, id, hash) = Token::generate();
    let record = Record::Token(TokenRecord {
        id,
        user: user.into(),
        tenant: tenant.into(),
        clusters: strings(clusters),
        hash,
        created: NOW - 100,
        expires,
        description: String::new(),
    });
    (token, record)
}

/// The request as kube-apiserver reads it: `target` is the path and query.
pub fn info<'a>(method: &str, target: &'a str) -> RequestInfo<'a> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    request_info(method, path, query).expect("a request kube-apiserver reads")
}

pub fn snapshot(index: &Index, revision: i64, records: Vec<Record>) {
    index
        .apply(&Line::Snapshot { revision, records })
        .expect("every record is valid");
}

pub fn put(index: &Index, revision: i64, record: Record) {
    index
        .apply(&Line::Put { revision, record })
        .expect("the record is valid");
}

pub fn delete(index: &Index, revision: i64, key: &str) {
    index
        .apply(&Line::Delete {
            revision,
            key: key.into(),
        })
        .expect("a key");
}

pub fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

pub fn login(index: &Index, token: &str) -> std::sync::Arc<Identity> {
    index
        .authenticate(Some(&bearer(token)), NOW)
        .expect("the token authenticates")
}

pub fn decide(index: &Index, id: &Identity, cluster: &str, method: &str, target: &str) -> Decision {
    let info = info(method, target);
    index.authorize(id, cluster, &Attributes::from(&info))
}
