//! The hub's index: authentication, tenants, grants, tokens, and how changes from the feed
//! take effect.

mod common;

use common::*;
use kubehub_access::model::{Subject, TokenRecord};
use kubehub_access::{
    policy, ApplyError, AuthnError, Decision, DenyReason, Index, Line, Record, RecordError,
    TokenError,
};

const ALLOW: Decision = Decision::Allow;
const fn deny(r: DenyReason) -> Decision {
    Decision::Deny(r)
}

struct World {
    index: Index,
    alice: String,       // acme, groups devs; edge-1 and edge-2
    alice_edge2: String, // acme; edge-2 only
    bob: String,         // acme; edge-1, edge-2 and globex's other-1
    carol: String,       // globex; other-1 and acme's edge-1
    expiring: String,    // alice; expires at NOW + 10
    records: Vec<Record>,
}

const GET_POD: (&str, &str) = ("GET", "/api/v1/namespaces/team-a/pods/p");
const GET_LOG: (&str, &str) = ("GET", "/api/v1/namespaces/team-a/pods/p/log");
const LIST_PODS: (&str, &str) = ("GET", "/api/v1/namespaces/team-a/pods");

fn world() -> World {
    let (alice, t1) = token("alice", "acme", &["edge-1", "edge-2"], 0);
    let (alice_edge2, t2) = token("alice", "acme", &["edge-2"], NOW + 3600);
    let (bob, t3) = token("bob", "acme", &["edge-1", "edge-2", "other-1"], 0);
    let (carol, t4) = token("carol", "globex", &["other-1", "edge-1"], 0);
    let (expiring, t5) = token("alice", "acme", &["edge-1"], NOW + 10);
    let records = vec![
        tenant("acme"),
        tenant("globex"),
        cluster("edge-1", "acme", &[("env", "prod")]),
        cluster("edge-2", "acme", &[("env", "dev")]),
        cluster("other-1", "globex", &[("env", "prod")]),
        user("alice", "acme", &["devs"]),
        user("bob", "acme", &[]),
        user("carol", "globex", &["devs"]),
        // alice: get pods in team-a on edge-1.
        grant(
            "acme",
            "alice-pods",
            user_subject("alice"),
            ids(&["edge-1"]),
            vec![in_namespaces(rule(&["get"], &[""], &["pods"]), &["team-a"])],
        ),
        // devs: logs on every prod cluster of acme.
        grant(
            "acme",
            "devs-logs",
            group_subject("devs"),
            with_labels(&[("env", "prod")]),
            vec![rule(&["get"], &[""], &["pods/log"])],
        ),
        // everyone in acme: list pods on edge-2.
        grant(
            "acme",
            "all-list",
            Subject::Tenant,
            ids(&["edge-2"]),
            vec![rule(&["list"], &[""], &["pods"])],
        ),
        // An acme grant naming globex's cluster: grants nothing there.
        grant(
            "acme",
            "bob-other",
            user_subject("bob"),
            ids(&["other-1"]),
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        t1,
        t2,
        t3,
        t4,
        t5,
    ];
    let index = Index::new();
    snapshot(&index, 10, records.clone());
    World {
        index,
        alice,
        alice_edge2,
        bob,
        carol,
        expiring,
        records,
    }
}

fn token_id(records: &[Record], user: &str, n: usize) -> String {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Token(t) if t.user == user => Some(t.id.clone()),
            _ => None,
        })
        .nth(n)
        .expect("the token")
}

fn check(w: &World, token: &str, cluster: &str, (method, target): (&str, &str)) -> Decision {
    let id = login(&w.index, token);
    decide(&w.index, &id, cluster, method, target)
}

#[test]
fn authentication_reads_bearer_khts_and_says_why_not() {
    let w = world();
    let ix = &w.index;
    let auth = |h: &[u8]| ix.authenticate(Some(h), NOW);
    let id = auth(&bearer(&w.alice)).expect("alice");
    assert_eq!((id.user.as_str(), id.tenant.as_str()), ("alice", "acme"));
    assert_eq!(id.groups, ["devs", "kubehub:tenant:acme"]);
    assert_eq!(&*id.clusters, ["edge-1", "edge-2"]);
    assert_eq!(id.token_id, token_id(&w.records, "alice", 0));
    // The scheme in any case, spaces around.
    for h in [
        format!("bearer {}", w.alice),
        format!("  BEARER   {}  ", w.alice),
    ] {
        assert_eq!(
            auth(h.as_bytes()).map(|i| i.user.clone()),
            Ok("alice".into())
        );
    }
    assert_eq!(ix.authenticate(None, NOW), Err(AuthnError::Missing));
    assert_eq!(auth(b""), Err(AuthnError::Missing));
    assert_eq!(auth(b"Basic YWxpY2U6cHc="), Err(AuthnError::NotBearer));
    assert_eq!(auth(w.alice.as_bytes()), Err(AuthnError::NotBearer));
    assert_eq!(auth(b"Bearer "), Err(AuthnError::NotBearer));
    assert_eq!(
        auth(b"Bearer eyJhbGciOiJSUzI1NiJ9.e30.x"),
        Err(AuthnError::Malformed(TokenError::Prefix))
    );
    // Right shape, never issued.
    let (stranger, _, _) = kubehub_access::Token::generate();
    assert_eq!(auth(&bearer(&stranger)), Err(AuthnError::Unknown));
    // A token's last character changed.
    let mut forged = w.alice.clone();
    let last = if forged.ends_with('A') { "B" } else { "A" };
    forged.replace_range(forged.len() - 1.., last);
    assert_eq!(auth(&bearer(&forged)), Err(AuthnError::Unknown));
    assert_eq!(ix.identity_count(), 5);
}

#[test]
fn expired_tokens_fail_and_say_when() {
    let w = world();
    let at = |now| w.index.authenticate(Some(&bearer(&w.expiring)), now);
    assert!(at(NOW + 9).is_ok());
    let e = at(NOW + 10).expect_err("expired at NOW + 10");
    assert_eq!(e, AuthnError::Expired { at: NOW + 10 });
    assert_eq!(e.to_string(), "the token expired at 2025-06-15T15:06:50Z");
    assert!(at(u64::MAX).is_err());
    // 0: never.
    assert!(w
        .index
        .authenticate(Some(&bearer(&w.alice)), u64::MAX)
        .is_ok());
    assert!(AuthnError::Unknown.to_string().contains("revoked"));
}

#[test]
fn user_grants_group_grants_and_tenant_grants() {
    let w = world();
    // User subject: alice gets pods in team-a on edge-1, not elsewhere.
    assert_eq!(check(&w, &w.alice, "edge-1", GET_POD), ALLOW);
    assert_eq!(
        check(
            &w,
            &w.alice,
            "edge-1",
            ("GET", "/api/v1/namespaces/team-b/pods/p")
        ),
        deny(DenyReason::NoRule)
    );
    assert_eq!(
        check(
            &w,
            &w.alice,
            "edge-1",
            ("DELETE", "/api/v1/namespaces/team-a/pods/p")
        ),
        deny(DenyReason::NoRule)
    );
    // get pods is not exec.
    assert_eq!(
        check(
            &w,
            &w.alice,
            "edge-1",
            ("POST", "/api/v1/namespaces/team-a/pods/p/exec")
        ),
        deny(DenyReason::NoRule)
    );
    // Group subject (devs, by label env=prod): logs on edge-1, for alice but not bob.
    assert_eq!(check(&w, &w.alice, "edge-1", GET_LOG), ALLOW);
    assert_eq!(
        check(&w, &w.bob, "edge-1", GET_LOG),
        deny(DenyReason::NoGrant)
    );
    // Tenant subject: every acme user lists pods on edge-2.
    assert_eq!(check(&w, &w.bob, "edge-2", LIST_PODS), ALLOW);
    assert_eq!(check(&w, &w.alice, "edge-2", LIST_PODS), ALLOW);
    assert_eq!(
        check(&w, &w.alice, "edge-2", GET_LOG),
        deny(DenyReason::NoRule)
    ); // edge-2 is dev
       // The tenant's group is the tenant subject too.
    put(
        &w.index,
        11,
        grant(
            "acme",
            "tenant-group",
            group_subject("kubehub:tenant:acme"),
            ids(&["edge-1"]),
            vec![rule(&["watch"], &[""], &["pods"])],
        ),
    );
    assert_eq!(
        check(&w, &w.bob, "edge-1", ("GET", "/api/v1/pods?watch=1")),
        ALLOW
    );
}

#[test]
fn tenants_are_isolated_whatever_grants_name() {
    let w = world();
    // bob's acme grant names globex's other-1 and his token is bound to it: nothing.
    for req in [
        GET_POD,
        LIST_PODS,
        ("GET", "/api"),
        ("DELETE", "/api/v1/nodes/n"),
    ] {
        assert_eq!(
            check(&w, &w.bob, "other-1", req),
            deny(DenyReason::NoSuchCluster),
            "{req:?}"
        );
    }
    // carol (globex, also in a group called devs) has no globex grant, and acme's
    // devs grant is not hers, though her token names acme's edge-1.
    assert_eq!(
        check(&w, &w.carol, "other-1", GET_LOG),
        deny(DenyReason::NoGrant)
    );
    assert_eq!(
        check(&w, &w.carol, "edge-1", GET_LOG),
        deny(DenyReason::NoSuchCluster)
    );
    assert_eq!(w.index.clusters_for("bob"), ["edge-2"]);
    assert!(w.index.clusters_for("carol").is_empty());
    // A globex grant for carol on globex's cluster works; same on acme's does not.
    put(
        &w.index,
        11,
        grant(
            "globex",
            "g",
            Subject::Tenant,
            ids(&["other-1", "edge-1"]),
            vec![rule(&["get"], &[""], &["pods/log"])],
        ),
    );
    assert_eq!(check(&w, &w.carol, "other-1", GET_LOG), ALLOW);
    assert_eq!(
        check(&w, &w.carol, "edge-1", GET_LOG),
        deny(DenyReason::NoSuchCluster)
    );
    assert_eq!(w.index.clusters_for("carol"), ["other-1"]);
    // Unknown clusters read the same as another tenant's.
    let (ghost, record) = token("bob", "acme", &["ghost"], 0);
    put(&w.index, 12, record);
    assert_eq!(
        check(&w, &ghost, "ghost", ("GET", "/api")),
        deny(DenyReason::NoSuchCluster)
    );
    assert_eq!(
        check(&w, &w.bob, "ghost", ("GET", "/api")),
        deny(DenyReason::TokenNotForCluster)
    );
}

#[test]
fn tokens_only_work_on_their_clusters() {
    let w = world();
    // alice has a grant on edge-1, but this token is for edge-2 only.
    assert_eq!(
        check(&w, &w.alice_edge2, "edge-1", GET_POD),
        deny(DenyReason::TokenNotForCluster)
    );
    assert_eq!(
        check(&w, &w.alice_edge2, "edge-1", ("GET", "/version")),
        deny(DenyReason::TokenNotForCluster)
    );
    assert_eq!(check(&w, &w.alice_edge2, "edge-2", LIST_PODS), ALLOW);
    assert!(w
        .index
        .rules(&login(&w.index, &w.alice_edge2), "edge-1", "team-a")
        .is_empty());
}

#[test]
fn discovery_for_whoever_has_a_grant_on_the_cluster() {
    let w = world();
    for path in [
        "/api",
        "/api/v1",
        "/apis",
        "/apis/apps/v1",
        "/version",
        "/openapi/v3/apis/apps/v1",
        "/healthz",
        "/livez",
        "/readyz",
    ] {
        assert_eq!(check(&w, &w.bob, "edge-2", ("GET", path)), ALLOW, "{path}");
        // bob has no grant on edge-1: not even discovery.
        assert_eq!(
            check(&w, &w.bob, "edge-1", ("GET", path)),
            deny(DenyReason::NoGrant),
            "{path}"
        );
    }
    for req in [
        ("POST", "/api"),
        ("HEAD", "/version"),
        ("GET", "/metrics"),
        ("GET", "/openapi"),
        ("GET", "/logs/x"),
    ] {
        assert_eq!(
            check(&w, &w.bob, "edge-2", req),
            deny(DenyReason::NoRule),
            "{req:?}"
        );
    }
}

#[test]
fn deleting_a_token_revokes_it() {
    let w = world();
    let id = token_id(&w.records, "alice", 0);
    delete(&w.index, 11, &format!("tokens/{id}"));
    assert_eq!(
        w.index.authenticate(Some(&bearer(&w.alice)), NOW),
        Err(AuthnError::Unknown)
    );
    assert!(w
        .index
        .authenticate(Some(&bearer(&w.alice_edge2)), NOW)
        .is_ok());
    assert_eq!(w.index.revision(), 11);
}

#[test]
fn replacing_a_token_record_replaces_its_hash_and_clusters() {
    let w = world();
    let old = w
        .records
        .iter()
        .find_map(|r| match r {
            Record::Token(t) if t.user == "bob" => Some(t.clone()),
            _ => None,
        })
        .expect("bob's token");
    let (new_token, new_id, new_hash) = kubehub_access::Token::generate();
    let _ = new_id;
    // Same id, new hash (reissued), fewer clusters.
    put(
        &w.index,
        11,
        Record::Token(TokenRecord {
            hash: new_hash,
            clusters: vec!["edge-2".into()],
            ..old.clone()
        }),
    );
    assert_eq!(
        w.index.authenticate(Some(&bearer(&w.bob)), NOW),
        Err(AuthnError::Unknown)
    );
    // The new token string carries another id than the record: refused.
    assert_eq!(
        w.index.authenticate(Some(&bearer(&new_token)), NOW),
        Err(AuthnError::Unknown)
    );
    // Same hash, fewer clusters: takes effect.
    put(
        &w.index,
        12,
        Record::Token(TokenRecord {
            clusters: vec!["edge-2".into()],
            ..old
        }),
    );
    let id = login(&w.index, &w.bob);
    assert_eq!(&*id.clusters, ["edge-2"]);
    assert_eq!(
        decide(&w.index, &id, "edge-1", "GET", "/api"),
        deny(DenyReason::TokenNotForCluster)
    );
}

#[test]
fn users_and_tenants_carry_their_tokens() {
    let w = world();
    // bob joins devs: his tokens pick it up at once.
    put(&w.index, 11, user("bob", "acme", &["devs"]));
    assert_eq!(check(&w, &w.bob, "edge-1", GET_LOG), ALLOW);
    put(&w.index, 12, user("bob", "acme", &[]));
    assert_eq!(
        check(&w, &w.bob, "edge-1", GET_LOG),
        deny(DenyReason::NoGrant)
    );
    // Deleting alice: her tokens fail; an identity taken before is still decided by grants
    // (the hub authenticates every request, so it does not outlive the request).
    delete(&w.index, 13, "users/alice");
    for t in [&w.alice, &w.alice_edge2, &w.expiring] {
        assert_eq!(
            w.index.authenticate(Some(&bearer(t)), NOW),
            Err(AuthnError::Unknown)
        );
    }
    assert!(w.index.clusters_for("alice").is_empty());
    // Re-created (the token records are still stored): valid again.
    put(&w.index, 14, user("alice", "acme", &[]));
    assert!(w.index.authenticate(Some(&bearer(&w.alice)), NOW).is_ok());
    // Moved to another tenant: tokens issued in acme fail.
    put(&w.index, 15, user("alice", "globex", &[]));
    assert_eq!(
        w.index.authenticate(Some(&bearer(&w.alice)), NOW),
        Err(AuthnError::Unknown)
    );
    // Deleting a tenant: its users' tokens fail, its grants are gone.
    delete(&w.index, 16, "tenants/acme");
    assert_eq!(
        w.index.authenticate(Some(&bearer(&w.bob)), NOW),
        Err(AuthnError::Unknown)
    );
    assert!(w.index.authenticate(Some(&bearer(&w.carol)), NOW).is_ok());
    put(&w.index, 17, tenant("acme"));
    assert_eq!(check(&w, &w.bob, "edge-2", LIST_PODS), ALLOW);
    assert_eq!(w.index.identity_count(), 2); // bob, carol
}

#[test]
fn grant_and_cluster_changes_take_effect() {
    let w = world();
    assert_eq!(check(&w, &w.alice, "edge-1", GET_POD), ALLOW);
    delete(&w.index, 11, "grants/acme/alice-pods");
    assert_eq!(
        check(&w, &w.alice, "edge-1", GET_POD),
        deny(DenyReason::NoRule)
    );
    // edge-1 relabelled dev: the devs grant (env=prod) no longer covers it.
    assert_eq!(check(&w, &w.alice, "edge-1", GET_LOG), ALLOW);
    put(&w.index, 12, cluster("edge-1", "acme", &[("env", "dev")]));
    assert_eq!(
        check(&w, &w.alice, "edge-1", GET_LOG),
        deny(DenyReason::NoGrant)
    );
    assert_eq!(
        w.index.cluster("edge-1").map(|c| c.labels["env"].clone()),
        Some("dev".into())
    );
    // edge-2 moved to globex: acme users lose it.
    put(&w.index, 13, cluster("edge-2", "globex", &[]));
    assert_eq!(
        check(&w, &w.bob, "edge-2", LIST_PODS),
        deny(DenyReason::NoSuchCluster)
    );
    // And deleted.
    delete(&w.index, 14, "clusters/edge-2");
    assert!(w.index.cluster("edge-2").is_none());
    assert_eq!(
        check(&w, &w.bob, "edge-2", LIST_PODS),
        deny(DenyReason::NoSuchCluster)
    );
    // Deleting what is not there is fine.
    delete(&w.index, 15, "grants/acme/nothing");
    delete(&w.index, 16, "tokens/aaaaaaaaaaaa");
}

#[test]
fn a_snapshot_replaces_everything() {
    let w = world();
    snapshot(&w.index, 20, vec![tenant("acme"), user("bob", "acme", &[])]);
    assert_eq!(w.index.identity_count(), 0);
    assert_eq!(
        w.index.authenticate(Some(&bearer(&w.bob)), NOW),
        Err(AuthnError::Unknown)
    );
    assert!(w.index.cluster("edge-1").is_none());
    assert_eq!(w.index.revision(), 20);
    snapshot(&w.index, 21, w.records.clone());
    assert_eq!(check(&w, &w.bob, "edge-2", LIST_PODS), ALLOW);
    w.index
        .apply(&Line::Heartbeat { revision: 22 })
        .expect("a heartbeat");
    assert_eq!(w.index.revision(), 22);
}

#[test]
fn invalid_records_are_refused_and_fail_closed() {
    let w = world();
    assert_eq!(check(&w, &w.alice, "edge-1", GET_POD), ALLOW);
    // A put of alice's grant with a typo in a verb: refused, and the grant is gone.
    let bad = grant(
        "acme",
        "alice-pods",
        user_subject("alice"),
        ids(&["edge-1"]),
        vec![rule(&["gett"], &[""], &["pods"])],
    );
    let e: ApplyError = w
        .index
        .apply(&Line::Put {
            revision: 11,
            record: bad.clone(),
        })
        .expect_err("refused");
    assert_eq!(e.rejected.len(), 1);
    assert!(
        matches!(&e.rejected[0], RecordError::Invalid { key, source } if key == "grants/acme/alice-pods" && source.field == "rules[0].verbs[0]")
    );
    assert_eq!(
        e.to_string(),
        "1 record(s) refused: grants/acme/alice-pods: rules[0].verbs[0]: \"gett\" is not a resource \
         verb (get, list, watch, create, update, patch, delete, deletecollection, proxy) or *"
    );
    assert_eq!(
        check(&w, &w.alice, "edge-1", GET_POD),
        deny(DenyReason::NoRule)
    );
    assert_eq!(w.index.revision(), 11);
    // In a snapshot: the rest applies.
    let mut records = w.records.clone();
    records.push(bad);
    let e = w
        .index
        .apply(&Line::Snapshot {
            revision: 12,
            records,
        })
        .expect_err("one refused");
    assert_eq!(e.rejected.len(), 1);
    assert_eq!(check(&w, &w.bob, "edge-2", LIST_PODS), ALLOW);
    // A delete of something that is not a key.
    let e = w
        .index
        .apply(&Line::Delete {
            revision: 13,
            key: "grants/acme".into(),
        })
        .expect_err("not a key");
    assert!(matches!(e.rejected[0], RecordError::Key(_)));
}

#[test]
fn rules_for_a_namespace_include_discovery() {
    let w = world();
    let alice = login(&w.index, &w.alice);
    let pods_in_team_a = in_namespaces(rule(&["get"], &[""], &["pods"]), &["team-a"]);
    let logs = rule(&["get"], &[""], &["pods/log"]);
    let rules = w.index.rules(&alice, "edge-1", "team-a");
    assert_eq!(
        rules,
        vec![pods_in_team_a, logs.clone(), policy::discovery_rule()]
    );
    let rules = w.index.rules(&alice, "edge-1", "team-b");
    assert_eq!(rules, vec![logs.clone(), policy::discovery_rule()]);
    let rules = w.index.rules(&alice, "edge-1", "");
    assert_eq!(rules, vec![logs, policy::discovery_rule()]);
    let bob = login(&w.index, &w.bob);
    assert!(w.index.rules(&bob, "edge-1", "team-a").is_empty());
    assert!(w.index.rules(&bob, "other-1", "team-a").is_empty());
}

#[test]
fn clusters_for_lists_where_the_user_has_grants() {
    let w = world();
    assert_eq!(w.index.clusters_for("alice"), ["edge-1", "edge-2"]);
    assert_eq!(w.index.clusters_for("bob"), ["edge-2"]);
    assert!(w.index.clusters_for("nobody").is_empty());
    delete(&w.index, 11, "grants/acme/all-list");
    assert_eq!(w.index.clusters_for("alice"), ["edge-1"]);
    assert!(w.index.clusters_for("bob").is_empty());
}

#[test]
fn deny_reasons_read_well() {
    assert_eq!(
        DenyReason::NoSuchCluster.to_string(),
        "no such cluster in your tenant"
    );
    assert!(!Decision::Deny(DenyReason::NoGrant).is_allowed());
    assert!(Decision::Allow.is_allowed());
}
