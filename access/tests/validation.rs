//! Bad records are refused, naming the field and what is wrong with it.

mod common;

use common::*;
use kubehub_access::model::{Problem, Subject, TokenRecord, ValidationError};
use kubehub_access::{Record, RecordError, Rule};
use serde_json::{json, Value};

/// Kinds of problem, for the table (values and limits are checked in the messages test).
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum P {
    Required,
    TooLong,
    Syntax,
    Reserved,
    Conflict,
}

fn kind(p: &Problem) -> P {
    match p {
        Problem::Required => P::Required,
        Problem::TooLong { .. } => P::TooLong,
        Problem::Syntax { .. } => P::Syntax,
        Problem::Reserved { .. } => P::Reserved,
        Problem::Conflict(_) => P::Conflict,
    }
}

fn good_tenant() -> Value {
    json!({"kind": "Tenant", "name": "acme", "displayName": "ACME Corp."})
}
fn good_user() -> Value {
    json!({"kind": "User", "name": "alice@example.com", "tenant": "acme", "groups": ["devs", "oncall:eu"], "admin": true})
}
fn good_cluster() -> Value {
    json!({"kind": "Cluster", "id": "edge-1", "displayName": "Edge 1", "tenant": "acme",
           "labels": {"env": "prod", "topology.kubernetes.io/region": "eu-1"}, "environment": "prod"})
}
fn good_grant() -> Value {
    json!({"kind": "Grant", "name": "devs.read", "tenant": "acme",
    "subject": {"kind": "Group", "name": "devs"},
    "clusters": {"ids": ["edge-1"], "labels": {"env": "prod"}},
    "rules": [
        {"apiGroups": ["", "apps", "*"], "resources": ["pods", "pods/log", "pods/*", "*/scale", "*"],
         "verbs": ["get", "list", "*"], "namespaces": ["team-a", "*"], "resourceNames": ["web", "system:x"]},
        {"verbs": ["get", "head"], "nonResourceURLs": ["/metrics", "/logs/*", "*"]}
    ]})
}
fn good_token() -> Value {
    json!({"kind": "Token", "id": "abcdefghij01", "user": "alice@example.com", "tenant": "acme",
           "clusters": ["edge-1"], "hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
           "created": 100, "expires": 200, "description": "CI"})
}

/// `base` with the JSON pointer `at` set to `value` (a field is added if missing).
fn with(mut base: Value, at: &str, value: Value) -> Value {
    let (parent, last) = at.rsplit_once('/').expect("a pointer");
    match base
        .pointer_mut(parent)
        .expect("the parent exists in the good record")
    {
        Value::Object(fields) => {
            fields.insert(last.to_owned(), value);
        }
        Value::Array(items) => items[last.parse::<usize>().expect("an index")] = value,
        other => panic!("{other} has no {last}"),
    }
    base
}

fn validate(v: &Value) -> Result<(), ValidationError> {
    let record: Record = serde_json::from_value(v.clone()).expect("well-formed JSON");
    record.validate()
}

#[test]
fn good_records_validate_and_round_trip() {
    for v in [
        good_tenant(),
        good_user(),
        good_cluster(),
        good_grant(),
        good_token(),
    ] {
        assert_eq!(validate(&v), Ok(()), "{v}");
        let record: Record = serde_json::from_value(v.clone()).expect("a record");
        let bytes = serde_json::to_vec(&record).expect("serializes");
        assert_eq!(
            Record::parse(&record.key(), &bytes).expect("parses"),
            record
        );
    }
    // Optional fields may be left out.
    assert_eq!(validate(&json!({"kind": "Tenant", "name": "t"})), Ok(()));
    assert_eq!(
        validate(&json!({"kind": "User", "name": "u", "tenant": "t"})),
        Ok(())
    );
    assert_eq!(
        validate(&json!({"kind": "Cluster", "id": "c", "tenant": "t"})),
        Ok(())
    );
    // A user name of 253, a tenant of 63.
    assert_eq!(
        validate(&with(good_user(), "/name", json!("a".repeat(253)))),
        Ok(())
    );
    assert_eq!(
        validate(&with(good_tenant(), "/name", json!("a".repeat(63)))),
        Ok(())
    );
    // expires 0: never.
    assert_eq!(validate(&with(good_token(), "/expires", json!(0))), Ok(()));
}

#[test]
fn every_field_is_checked() {
    let long = |n: usize| json!("a".repeat(n));
    #[rustfmt::skip]
    let cases: Vec<(Value, &str, P)> = vec![
        (with(good_tenant(), "/name", json!("")), "name", P::Required),
        (with(good_tenant(), "/name", json!("Acme")), "name", P::Syntax),
        (with(good_tenant(), "/name", json!("-acme")), "name", P::Syntax),
        (with(good_tenant(), "/name", json!("ac.me")), "name", P::Syntax),
        (with(good_tenant(), "/name", long(64)), "name", P::TooLong),
        (with(good_tenant(), "/displayName", json!("a\nb")), "displayName", P::Syntax),
        (with(good_tenant(), "/displayName", long(257)), "displayName", P::TooLong),

        (with(good_user(), "/name", json!("")), "name", P::Required),
        (with(good_user(), "/name", json!("Alice")), "name", P::Syntax),
        (with(good_user(), "/name", json!("alice!")), "name", P::Syntax),
        (with(good_user(), "/name", json!("system:admin")), "name", P::Syntax),
        (with(good_user(), "/name", json!("alice.")), "name", P::Syntax),
        (with(good_user(), "/name", long(254)), "name", P::TooLong),
        (with(good_user(), "/tenant", json!("ACME")), "tenant", P::Syntax),
        (with(good_user(), "/groups/1", json!("system:masters")), "groups[1]", P::Reserved),
        (with(good_user(), "/groups/0", json!("kubehub:tenant:other")), "groups[0]", P::Reserved),
        (with(good_user(), "/groups/0", json!("two words")), "groups[0]", P::Syntax),
        (with(good_user(), "/groups/0", json!("")), "groups[0]", P::Required),

        (with(good_cluster(), "/id", json!("edge_1")), "id", P::Syntax),
        (with(good_cluster(), "/id", long(64)), "id", P::TooLong),
        (with(good_cluster(), "/tenant", json!("")), "tenant", P::Required),
        (with(good_cluster(), "/displayName", json!("\u{7}")), "displayName", P::Syntax),
        (with(good_cluster(), "/labels", json!({"bad key": "x"})), "labels[\"bad key\"] (key)", P::Syntax),
        (with(good_cluster(), "/labels", json!({"Bad.Prefix/x": "x"})), "labels[\"Bad.Prefix/x\"] (key)", P::Syntax),
        (with(good_cluster(), "/labels", json!({"env": "-prod"})), "labels[\"env\"]", P::Syntax),
        (with(good_cluster(), "/labels", json!({"env": "a".repeat(64)})), "labels[\"env\"]", P::TooLong),
        (with(good_cluster(), "/environment", json!("prod env")), "environment", P::Syntax),

        (with(good_grant(), "/name", json!("Devs")), "name", P::Syntax),
        (with(good_grant(), "/tenant", json!("a/b")), "tenant", P::Syntax),
        (with(good_grant(), "/subject", json!({"kind": "User", "name": "Alice"})), "subject.name", P::Syntax),
        (with(good_grant(), "/subject", json!({"kind": "Group", "name": "system:masters"})), "subject.name", P::Reserved),
        (with(good_grant(), "/subject", json!({"kind": "Group", "name": ""})), "subject.name", P::Required),
        (with(good_grant(), "/clusters", json!({})), "clusters", P::Conflict),
        (with(good_grant(), "/clusters", json!({"ids": ["Edge"]})), "clusters.ids[0]", P::Syntax),
        (with(good_grant(), "/clusters", json!({"labels": {"env": "a b"}})), "clusters.labels[\"env\"]", P::Syntax),
        (with(good_grant(), "/rules", json!([])), "rules", P::Required),
        (with(good_grant(), "/rules/0/verbs", json!([])), "rules[0].verbs", P::Required),
        (with(good_grant(), "/rules/0/verbs/1", json!("lists")), "rules[0].verbs[1]", P::Syntax),
        (with(good_grant(), "/rules/0/verbs/1", json!("post")), "rules[0].verbs[1]", P::Syntax),
        (with(good_grant(), "/rules/0/apiGroups", json!([])), "rules[0].apiGroups", P::Conflict),
        (with(good_grant(), "/rules/0/apiGroups/1", json!("Apps")), "rules[0].apiGroups[1]", P::Syntax),
        (with(good_grant(), "/rules/0/resources", json!([])), "rules[0].resources", P::Conflict),
        (with(good_grant(), "/rules/0/resources/0", json!("pods/")), "rules[0].resources[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resources/0", json!("pods/log/x")), "rules[0].resources[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resources/0", json!("Pods")), "rules[0].resources[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resources/0", json!("")), "rules[0].resources[0]", P::Required),
        (with(good_grant(), "/rules/0/namespaces/0", json!("")), "rules[0].namespaces[0]", P::Required),
        (with(good_grant(), "/rules/0/namespaces/0", json!("Team")), "rules[0].namespaces[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resourceNames/0", json!("*")), "rules[0].resourceNames[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resourceNames/0", json!("a/b")), "rules[0].resourceNames[0]", P::Syntax),
        (with(good_grant(), "/rules/0/resourceNames/0", json!("")), "rules[0].resourceNames[0]", P::Required),
        (with(good_grant(), "/rules/0/nonResourceURLs", json!(["/metrics"])), "rules[0].resources", P::Conflict),
        (with(good_grant(), "/rules/1/verbs/0", json!("list")), "rules[1].verbs[0]", P::Syntax),
        (with(good_grant(), "/rules/1/nonResourceURLs/0", json!("metrics")), "rules[1].nonResourceURLs[0]", P::Syntax),
        (with(good_grant(), "/rules/1/nonResourceURLs/0", json!("/a*b*")), "rules[1].nonResourceURLs[0]", P::Syntax),
        (with(good_grant(), "/rules/1/nonResourceURLs/0", json!("/a?b")), "rules[1].nonResourceURLs[0]", P::Syntax),
        (with(good_grant(), "/rules/1", json!({"verbs": ["get"], "nonResourceURLs": ["/x"], "apiGroups": [""]})), "rules[1].apiGroups", P::Conflict),
        (with(good_grant(), "/rules/1", json!({"verbs": ["get"], "nonResourceURLs": ["/x"], "namespaces": ["a"]})), "rules[1].namespaces", P::Conflict),
        (with(good_grant(), "/rules/1", json!({"verbs": ["get"], "nonResourceURLs": ["/x"], "resourceNames": ["a"]})), "rules[1].resourceNames", P::Conflict),
        (with(good_grant(), "/rules/1", json!({"verbs": ["get"]})), "rules[1].resources", P::Conflict),

        (with(good_token(), "/id", json!("ABCDEFGHIJ01")), "id", P::Syntax),
        (with(good_token(), "/id", json!("abc")), "id", P::Syntax),
        (with(good_token(), "/user", json!("")), "user", P::Required),
        (with(good_token(), "/tenant", json!("x_y")), "tenant", P::Syntax),
        (with(good_token(), "/clusters", json!([])), "clusters", P::Required),
        (with(good_token(), "/clusters/0", json!("Edge")), "clusters[0]", P::Syntax),
        (with(good_token(), "/hash", json!("BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD")), "hash", P::Syntax),
        (with(good_token(), "/hash", json!("ba7816bf")), "hash", P::Syntax),
        (with(good_token(), "/expires", json!(100)), "expires", P::Conflict),
        (with(good_token(), "/description", json!("a\u{0}")), "description", P::Syntax),
        (with(good_token(), "/description", long(1025)), "description", P::TooLong),
    ];
    let mut failures = Vec::new();
    for (record, field, problem) in cases {
        match validate(&record) {
            Err(e) if e.field == field && kind(&e.problem) == problem => {}
            other => failures.push(format!(
                "{record}\n  want {field}: {problem:?}\n  got  {other:?}"
            )),
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn messages_name_the_field_and_the_problem() {
    let cases = [
        (with(good_grant(), "/rules/0/verbs/1", json!("gett")),
         "rules[0].verbs[1]: \"gett\" is not a resource verb (get, list, watch, create, update, patch, delete, deletecollection, proxy) or *"),
        (with(good_tenant(), "/name", json!("a".repeat(64))),
         "name: is 64 characters long: at most 63 allowed"),
        (with(good_user(), "/groups/1", json!("system:masters")),
         "groups[1]: \"system:masters\" is reserved: groups starting with system: or kubehub: are the edge's and KubeHub's (every user is in kubehub:tenant:<tenant> already)"),
        (with(good_grant(), "/rules/1/verbs/0", json!("list")),
         "rules[1].verbs[0]: \"list\" is not a non-resource verb (a lower-case HTTP method: get, head, post, put, patch, delete, options) or *"),
        (with(good_grant(), "/rules/0/nonResourceURLs", json!(["/x"])),
         "rules[0].resources: a rule with nonResourceURLs must have no resources"),
        (with(good_grant(), "/clusters", json!({})),
         "clusters: a cluster selector needs ids, labels or both"),
        (with(good_token(), "/clusters", json!([])), "clusters: is required"),
    ];
    for (record, message) in cases {
        assert_eq!(
            validate(&record).map_err(|e| e.to_string()),
            Err(message.to_owned())
        );
    }
}

#[test]
fn json_is_strict() {
    let parse = |v: Value| serde_json::from_value::<Record>(v);
    // A typo is an error, not a field ignored (which would widen a rule).
    assert!(parse(with(
        good_grant(),
        "/rules/0",
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"], "namespace": ["a"]})
    ))
    .is_err());
    assert!(parse(json!({"kind": "Tenant", "name": "a", "owner": "x"})).is_err());
    assert!(parse(json!({"kind": "Tenants", "name": "a"})).is_err());
    // A tenant subject with a name is refused, not read as "everyone".
    assert!(parse(with(
        good_grant(),
        "/subject",
        json!({"kind": "Tenant", "name": "alice"})
    ))
    .is_err());
    assert!(parse(with(good_grant(), "/subject", json!({"kind": "Tenant"}))).is_ok());
    assert!(parse(with(good_grant(), "/subject", json!({"kind": "User"}))).is_err());
    // RBAC's spelling of nonResourceURLs.
    let rule: Rule = serde_json::from_value(json!({"verbs": ["get"], "nonResourceURLs": ["/x"]}))
        .expect("a rule");
    assert_eq!(rule.non_resource_urls, ["/x"]);
    assert!(
        serde_json::from_value::<Rule>(json!({"verbs": ["get"], "nonResourceUrls": ["/x"]}))
            .is_err()
    );
    // Subjects on the wire.
    for (s, j) in [
        (
            Subject::User {
                name: "alice".into(),
            },
            json!({"kind": "User", "name": "alice"}),
        ),
        (
            Subject::Group {
                name: "devs".into(),
            },
            json!({"kind": "Group", "name": "devs"}),
        ),
        (Subject::Tenant, json!({"kind": "Tenant"})),
    ] {
        assert_eq!(serde_json::to_value(&s).expect("serializes"), j);
    }
}

#[test]
fn keys_and_parse() {
    let cases = [
        (good_tenant(), "tenants/acme"),
        (good_user(), "users/alice@example.com"),
        (good_cluster(), "clusters/edge-1"),
        (good_grant(), "grants/acme/devs.read"),
        (good_token(), "tokens/abcdefghij01"),
    ];
    for (v, key) in cases {
        let record: Record = serde_json::from_value(v.clone()).expect("a record");
        assert_eq!(record.key(), key);
        let bytes = v.to_string();
        assert!(Record::parse(key, bytes.as_bytes()).is_ok());
    }
    let grant = good_grant().to_string();
    assert!(matches!(
        Record::parse("grants/acme/other", grant.as_bytes()),
        Err(RecordError::KeyMismatch { actual, .. }) if actual == "grants/acme/devs.read"
    ));
    assert!(matches!(
        Record::parse("grants/acme", grant.as_bytes()),
        Err(RecordError::Key(_))
    ));
    assert!(matches!(
        Record::parse("grant/acme/devs.read", grant.as_bytes()),
        Err(RecordError::Key(_))
    ));
    assert!(matches!(
        Record::parse("grants/acme/devs.read", b"{"),
        Err(RecordError::Json { .. })
    ));
    let bad = with(good_grant(), "/rules", json!([])).to_string();
    let e = Record::parse("grants/acme/devs.read", bad.as_bytes()).expect_err("invalid");
    assert_eq!(e.to_string(), "grants/acme/devs.read: rules: is required");
    // The typed key.
    use kubehub_access::Key;
    assert_eq!(
        Key::parse("grants/acme/x"),
        Ok(Key::Grant {
            tenant: "acme",
            name: "x"
        })
    );
    assert_eq!(
        Key::parse("tokens/abc").map(|k| k.to_string()),
        Ok("tokens/abc".to_owned())
    );
    for bad in [
        "",
        "tenants",
        "tenants/",
        "tenants/a/b",
        "grants/a/",
        "grants//b",
        "grants/a/b/c",
        "x/y",
    ] {
        assert!(Key::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn token_records_from_the_builder_validate() {
    let (_, record) = token("alice", "acme", &["edge-1"], 0);
    assert_eq!(record.validate(), Ok(()));
    let Record::Token(t) = record else {
        unreachable!()
    };
    let t = TokenRecord {
        created: 5,
        expires: 5,
        ..t
    };
    assert_eq!(t.validate().map_err(|e| e.field), Err("expires".to_owned()));
}

#[test]
fn effective_groups_add_the_tenant_group_once() {
    let Record::User(u) = user("alice", "acme", &["devs", "ops", "devs"]) else {
        unreachable!()
    };
    assert_eq!(u.effective_groups(), ["devs", "ops", "kubehub:tenant:acme"]);
    assert_eq!(
        kubehub_access::model::tenant_group("acme"),
        "kubehub:tenant:acme"
    );
}
