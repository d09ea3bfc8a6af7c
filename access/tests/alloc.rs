//! The hot path does not allocate: the ban checks, authenticate, then authorize, counted by a global
//! allocator (this test binary only). Allocations are counted per thread, so the test
//! harness's other threads do not disturb the count.

#![allow(unsafe_code)] // a counting global allocator

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use kubehub_access::ban::{Ban, BanTarget, ClientMatch};
use kubehub_access::model::Subject;
use kubehub_access::{AuthnError, Decision, DenyReason, Index};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts (a const-initialised
// thread local without a destructor, which never allocates itself).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: `ptr` came from this allocator with `layout`; same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn authenticate_and_authorize_do_not_allocate() {
    let (alice, t1) = token("alice", "acme", &["edge-1", "edge-2"], NOW + 3600);
    let (bob, t2) = token("bob", "acme", &["edge-1"], 0);
    let index = Index::new();
    let mut records = vec![
        tenant("acme"),
        cluster("edge-1", "acme", &[("env", "prod")]),
        cluster("edge-2", "acme", &[]),
        user("alice", "acme", &["devs", "oncall"]),
        user("bob", "acme", &[]),
        grant(
            "acme",
            "pods",
            user_subject("alice"),
            ids(&["edge-2", "edge-1"]),
            vec![in_namespaces(
                rule(&["get", "list"], &[""], &["pods", "pods/log"]),
                &["team-a"],
            )],
        ),
        grant(
            "acme",
            "devs",
            group_subject("oncall"),
            with_labels(&[("env", "prod")]),
            vec![named(
                rule(&["*"], &["apps"], &["deployments/scale"]),
                &["web"],
            )],
        ),
        grant(
            "acme",
            "all",
            Subject::Tenant,
            ids(&["edge-2"]),
            vec![urls(&["get"], &["/metrics"])],
        ),
        t1,
        t2,
    ];
    // Many other grants, so the tables are not trivially small.
    for i in 0..200 {
        records.push(grant(
            "acme",
            &format!("g{i}"),
            group_subject(&format!("team-{i}")),
            ids(&["edge-1"]),
            vec![rule(&["get"], &[""], &["configmaps"])],
        ));
    }
    // Bans (checked on every request): bob's, another cluster's, a client's.
    let ban = |id: &str, target: BanTarget| {
        kubehub_access::Record::Ban(Ban {
            id: id.into(),
            target,
            reason: "r".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: None,
            created_by: "admin".into(),
        })
    };
    records.push(ban("ban000000bob", BanTarget::User("bob".into())));
    records.push(ban("ban00000edge", BanTarget::Cluster("edge-9".into())));
    records.push(ban(
        "ban000client",
        BanTarget::Client(ClientMatch {
            user_agent: Some("evil/*".into()),
            source: Some("10.0.0.0/8".into()),
        }),
    ));
    snapshot(&index, 1, records);
    let source: Option<std::net::IpAddr> = Some("10.1.2.3".parse().unwrap());
    let now_ms = NOW * 1000;

    let alice_header = bearer(&alice);
    let bob_header = bearer(&bob);
    let forged = bearer(&format!("{}x", &alice[..alice.len() - 1]));
    let requests = [
        ("edge-1", "GET", "/api/v1/namespaces/team-a/pods/p"),
        (
            "edge-1",
            "GET",
            "/api/v1/namespaces/team-a/pods?fieldSelector=metadata.name%3Dp",
        ),
        ("edge-1", "GET", "/api/v1/namespaces/team-a/pods/p/log"),
        (
            "edge-1",
            "PATCH",
            "/apis/apps/v1/namespaces/x/deployments/web/scale",
        ),
        ("edge-2", "GET", "/metrics"),
        ("edge-2", "GET", "/apis/apps/v1"), // discovery
    ];
    let infos: Vec<_> = requests.iter().map(|(c, m, t)| (*c, info(m, t))).collect();
    let attrs: Vec<_> = infos
        .iter()
        .map(|(c, i)| (*c, kubehub_access::Attributes::from(i)))
        .collect();
    let denied = [
        (
            "edge-1",
            info("POST", "/api/v1/namespaces/team-a/pods/p/exec"),
            DenyReason::NoRule,
        ),
        (
            "edge-2",
            info("DELETE", "/api/v1/namespaces/team-a/pods/p"),
            DenyReason::NoRule,
        ),
        (
            "edge-3",
            info("GET", "/api"),
            DenyReason::TokenNotForCluster,
        ),
    ];
    let denied: Vec<_> = denied
        .iter()
        .map(|(c, i, r)| (*c, kubehub_access::Attributes::from(i), *r))
        .collect();

    let run = || {
        let id = index.authenticate(Some(&alice_header), NOW).expect("alice");
        assert!(index
            .client_ban(b"kubectl/v1.32.4", source, now_ms)
            .is_none());
        assert!(index.client_ban(b"evil/2", source, now_ms).is_some());
        assert!(index.identity_ban(&id, now_ms).is_none());
        assert!(index.cluster_ban("edge-1", now_ms).is_none());
        for (cluster, a) in &attrs {
            assert_eq!(
                index.authorize(&id, cluster, a),
                Decision::Allow,
                "{cluster} {a:?}"
            );
        }
        for (cluster, a, reason) in &denied {
            assert_eq!(
                index.authorize(&id, cluster, a),
                Decision::Deny(*reason),
                "{cluster} {a:?}"
            );
        }
        let bob = index.authenticate(Some(&bob_header), NOW).expect("bob");
        assert!(index.identity_ban(&bob, now_ms).is_some());
        assert_eq!(
            index.authorize(&bob, "edge-1", &attrs[0].1),
            Decision::Deny(DenyReason::NoGrant)
        );
        assert_eq!(
            index.authenticate(Some(&forged), NOW).err(),
            Some(AuthnError::Unknown)
        );
        assert!(index.authenticate(Some(&alice_header), NOW + 3600).is_err());
        assert!(index.authenticate(Some(b"Basic x"), NOW).is_err());
    };
    run(); // warm up (per-thread state of the table's ArcSwap)
    let before = allocations();
    for _ in 0..1000 {
        run();
    }
    let after = allocations();
    assert_eq!(after - before, 0, "allocations on the hot path");

    // The counter counts: a rules review allocates.
    let id = index.authenticate(Some(&alice_header), NOW).expect("alice");
    let before = allocations();
    assert!(!index.rules(&id, "edge-1", "team-a").is_empty());
    assert!(allocations() > before);
}
