//! The store's conformance suite: every test in `both!` runs against the embedded backend (a
//! redb file in a temporary directory) and against a real etcd (a fresh server per test, from
//! `kubehub_testkit::etcd`, installed when missing: nothing is skipped). A few tests at the end
//! are about one backend only.
#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::time::{Duration, Instant};

use kubehub_meta::store::{
    Backend, BackendKind, Compare, Event, EventKind, Op, StoreConfig, StoreError, Txn, Watch,
};
use kubehub_testkit::etcd::Etcd as EtcdServer;

/// How long a watch may take to deliver what was written.
const WAIT: Duration = Duration::from_secs(10);
/// Lease TTL used by the lease tests (etcd's minimum is 2 s).
const TTL: i64 = 2;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Embedded,
    Etcd,
}

/// One backend under test: its configuration and what it runs on.
struct Harness {
    kind: Kind,
    config: StoreConfig,
    _dir: tempfile::TempDir,
    etcd: Option<EtcdServer>,
}

impl Harness {
    fn new(kind: Kind) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        match kind {
            Kind::Embedded => Harness {
                kind,
                config: StoreConfig::embedded(dir.path().join("store").join("meta.redb")),
                _dir: dir,
                etcd: None,
            },
            Kind::Etcd => {
                let etcd = tokio::task::block_in_place(EtcdServer::start);
                let mut config = StoreConfig::etcd(etcd.endpoints(), "/kubehub/");
                config.request_timeout_ms = 5_000;
                Harness {
                    kind,
                    config,
                    _dir: dir,
                    etcd: Some(etcd),
                }
            }
        }
    }

    async fn open(&self) -> Backend {
        Backend::open(&self.config).await.unwrap()
    }

    /// A second handle on the same data, as a second metaserver replica would have it: a new
    /// connection to the same etcd; for the embedded store (one process owns the file) a
    /// clone of the first handle.
    async fn second(&self, first: &Backend) -> Backend {
        match self.kind {
            Kind::Embedded => first.clone(),
            Kind::Etcd => self.open().await,
        }
    }

    /// Restarts the etcd server (the embedded store has no server: reopening is the restart).
    fn restart_server(&mut self) {
        if let Some(etcd) = &mut self.etcd {
            tokio::task::block_in_place(|| etcd.restart());
        }
    }
}

/// The next batch of `w`, within [`WAIT`].
async fn next(w: &mut Watch) -> Vec<Event> {
    match tokio::time::timeout(WAIT, w.next()).await {
        Ok(Ok(Some(batch))) => batch,
        Ok(Ok(None)) => panic!("the watch ended"),
        Ok(Err(e)) => panic!("the watch failed: {e}"),
        Err(_) => panic!("no event within {WAIT:?}"),
    }
}

/// Nothing arrives on `w` for `d`.
async fn quiet(w: &mut Watch, d: Duration) {
    if let Ok(r) = tokio::time::timeout(d, w.next()).await {
        panic!("expected no event, got {r:?}");
    }
}

/// (kind, key) of each event.
fn shape(batch: &[Event]) -> Vec<(EventKind, &str)> {
    batch.iter().map(|e| (e.kind, e.kv.key.as_str())).collect()
}

fn keys(kvs: &[kubehub_meta::store::Kv]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::new(super::Kind::Embedded)).await
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Harness::new(super::Kind::Etcd)).await
                }
            )*
        }
    };
}

both!(
    put_get_list_sorted,
    list_is_complete_and_consistent_across_pages,
    revisions_are_monotonic_and_shared_within_a_txn,
    compare_and_swap,
    delete_prefix,
    watch_from_now_sees_later_writes_in_order,
    watch_from_an_old_revision_replays,
    watch_from_a_compacted_revision_fails,
    lease_expiry_deletes_keys,
    lease_keep_alive_keeps_keys,
    lease_revoke_deletes_keys,
    restart_loses_nothing,
    two_handles_agree,
    concurrent_cas_has_exactly_one_winner,
);

async fn put_get_list_sorted(h: Harness) {
    let s = h.open().await;
    for k in ["b", "a/2", "a/1", "c", "a"] {
        s.put(k, format!("v-{k}")).await.unwrap();
    }
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!(a.key, "a");
    assert_eq!(a.value, b"v-a");
    assert_eq!(a.create_revision, a.mod_revision);
    assert_eq!(a.lease, 0);
    assert_eq!(s.get("nope").await.unwrap(), None);

    let (all, rev) = s.list("").await.unwrap();
    assert_eq!(keys(&all), ["a", "a/1", "a/2", "b", "c"]);
    assert_eq!(rev, s.revision().await.unwrap());
    assert!(all.iter().all(|kv| kv.mod_revision <= rev));
    let (under_a, _) = s.list("a/").await.unwrap();
    assert_eq!(keys(&under_a), ["a/1", "a/2"]);
    assert!(s.list("zzz").await.unwrap().0.is_empty());

    // Overwriting keeps the creation revision.
    let r = s.put("a", "again").await.unwrap();
    let a2 = s.get("a").await.unwrap().unwrap();
    assert_eq!(
        (a2.create_revision, a2.mod_revision),
        (a.create_revision, r)
    );
    assert_eq!(a2.value, b"again");

    // Deleting, then creating again, starts a new life.
    s.delete("a").await.unwrap();
    assert_eq!(s.get("a").await.unwrap(), None);
    let r = s.put("a", "new").await.unwrap();
    assert_eq!(s.get("a").await.unwrap().unwrap().create_revision, r);

    assert!(matches!(
        s.get("").await,
        Err(StoreError::InvalidArgument(_))
    ));
    // Binary values survive.
    let bytes: Vec<u8> = (0..=255).collect();
    s.put("bin", bytes.clone()).await.unwrap();
    assert_eq!(s.get("bin").await.unwrap().unwrap().value, bytes);
}

/// More keys than one etcd page (1,000), in transactions of 100 (etcd allows 128 ops).
async fn list_is_complete_and_consistent_across_pages(h: Harness) {
    let s = h.open().await;
    let mut expected = Vec::new();
    for chunk in 0..25 {
        let mut txn = Txn::new();
        for i in 0..100 {
            let key = format!("many/{:05}", chunk * 100 + i);
            txn = txn.then(Op::put(key.clone(), "v"));
            expected.push(key);
        }
        s.txn(txn).await.unwrap();
    }
    s.put("many0", "outside the prefix").await.unwrap();
    let (kvs, rev) = s.list("many/").await.unwrap();
    assert_eq!(keys(&kvs), expected);
    assert!(kvs.iter().all(|kv| kv.mod_revision < rev));
    assert_eq!(s.list("").await.unwrap().0.len(), expected.len() + 1);
}

async fn revisions_are_monotonic_and_shared_within_a_txn(h: Harness) {
    let s = h.open().await;
    let r0 = s.revision().await.unwrap();
    let r1 = s.put("x", "1").await.unwrap();
    assert_eq!(r1, r0 + 1);
    let t = s
        .txn(
            Txn::new()
                .then(Op::put("a", "1"))
                .then(Op::put("b", "2"))
                .then(Op::delete("x")),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, r1 + 1, "one revision per transaction");
    for k in ["a", "b"] {
        assert_eq!(s.get(k).await.unwrap().unwrap().mod_revision, t.revision);
    }
    assert_eq!(s.revision().await.unwrap(), t.revision);

    // A transaction that changes nothing does not bump the revision.
    let t2 = s.txn(Txn::new().then(Op::delete("absent"))).await.unwrap();
    assert!(t2.succeeded);
    assert_eq!(t2.revision, t.revision);
    let t3 = s
        .txn(Txn::new().then(Op::delete_prefix("nothing/")))
        .await
        .unwrap();
    assert_eq!(t3.revision, t.revision);

    let mut last = t.revision;
    for i in 0..5 {
        let r = s.put(&format!("k{i}"), "v").await.unwrap();
        assert_eq!(r, last + 1);
        last = r;
    }
}

async fn compare_and_swap(h: Harness) {
    let s = h.open().await;
    // Create only if absent.
    let create = |v: &'static str| {
        Txn::new()
            .when(Compare::absent("k"))
            .then(Op::put("k", v))
            .then(Op::put("side", v))
    };
    let t = s.txn(create("first")).await.unwrap();
    assert!(t.succeeded);
    let rev_after_create = s.revision().await.unwrap();
    let t = s.txn(create("second")).await.unwrap();
    assert!(!t.succeeded);
    assert_eq!(
        t.revision, rev_after_create,
        "a failed txn does not bump the revision"
    );
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"first");
    assert_eq!(s.get("side").await.unwrap().unwrap().value, b"first");

    // mod_revision compare: the current revision wins, a stale one loses, and a failed
    // transaction writes nothing at all.
    let k = s.get("k").await.unwrap().unwrap();
    let t = s
        .txn(
            Txn::new()
                .when(Compare::mod_revision("k", k.mod_revision))
                .then(Op::put("k", "updated")),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    let t = s
        .txn(
            Txn::new()
                .when(Compare::mod_revision("k", k.mod_revision))
                .then(Op::put("k", "stale"))
                .then(Op::put("fresh", "x"))
                .then(Op::delete("side")),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"updated");
    assert_eq!(s.get("fresh").await.unwrap(), None);
    assert!(s.get("side").await.unwrap().is_some());

    // Revision 0 means "absent"; Present; several compares must all hold.
    let t = s
        .txn(
            Txn::new()
                .when(Compare::mod_revision("new", 0))
                .then(Op::put("new", "1")),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    let t = s
        .txn(
            Txn::new()
                .when(Compare::mod_revision("new", 0))
                .then(Op::put("new", "2")),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    let t = s
        .txn(
            Txn::new()
                .when(Compare::present("new"))
                .when(Compare::absent("k"))
                .then(Op::put("both", "1")),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    let t = s
        .txn(
            Txn::new()
                .when(Compare::present("new"))
                .when(Compare::present("k"))
                .then(Op::put("both", "1")),
        )
        .await
        .unwrap();
    assert!(t.succeeded);

    // Rejected outright: one key twice, a put under a deleted prefix, an unknown lease.
    let before = s.revision().await.unwrap();
    for bad in [
        Txn::new().then(Op::put("d", "1")).then(Op::put("d", "2")),
        Txn::new()
            .then(Op::put("p/x", "1"))
            .then(Op::delete_prefix("p/")),
        Txn::new().then(Op::put("d", "1")).then(Op::delete("d")),
    ] {
        let r = s.txn(bad.clone()).await;
        assert!(
            matches!(r, Err(StoreError::InvalidArgument(_))),
            "{bad:?}: {r:?}"
        );
    }
    let r = s
        .txn(
            Txn::new()
                .then(Op::put("x", "1"))
                .then(Op::put_with_lease("y", "1", 12345)),
        )
        .await;
    assert!(matches!(r, Err(StoreError::LeaseNotFound(12345))), "{r:?}");
    assert_eq!(s.get("x").await.unwrap(), None);
    assert_eq!(s.revision().await.unwrap(), before);
}

async fn delete_prefix(h: Harness) {
    let s = h.open().await;
    for k in ["a/1", "a/2", "a/3/x", "ab", "b"] {
        s.put(k, "v").await.unwrap();
    }
    let mut w = s.watch("", 0).await.unwrap();
    let t = s
        .txn(Txn::new().then(Op::delete_prefix("a/")))
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(keys(&s.list("").await.unwrap().0), ["ab", "b"]);
    let batch = next(&mut w).await;
    assert_eq!(
        shape(&batch),
        [
            (EventKind::Delete, "a/1"),
            (EventKind::Delete, "a/2"),
            (EventKind::Delete, "a/3/x")
        ]
    );
    assert!(batch.iter().all(|e| e.kv.mod_revision == t.revision));
    // Everything.
    s.txn(Txn::new().then(Op::delete_prefix(""))).await.unwrap();
    assert!(s.list("").await.unwrap().0.is_empty());
}

async fn watch_from_now_sees_later_writes_in_order(h: Harness) {
    let s = h.open().await;
    s.put("w/before", "x").await.unwrap();
    let mut w = s.watch("w/", 0).await.unwrap();
    let r1 = s.put("w/1", "one").await.unwrap();
    s.put("other", "not watched").await.unwrap();
    let r2 = s
        .txn(
            Txn::new()
                .then(Op::put("w/2", "two"))
                .then(Op::put("w/3", "three")),
        )
        .await
        .unwrap()
        .revision;
    let r3 = s.delete("w/1").await.unwrap();

    let b1 = next(&mut w).await;
    assert_eq!(shape(&b1), [(EventKind::Put, "w/1")]);
    assert_eq!(b1[0].kv.value, b"one");
    assert_eq!(b1[0].kv.mod_revision, r1);
    assert_eq!(b1[0].kv.create_revision, r1);
    let b2 = next(&mut w).await;
    assert_eq!(
        shape(&b2),
        [(EventKind::Put, "w/2"), (EventKind::Put, "w/3")]
    );
    assert!(b2.iter().all(|e| e.kv.mod_revision == r2));
    let b3 = next(&mut w).await;
    assert_eq!(shape(&b3), [(EventKind::Delete, "w/1")]);
    assert_eq!(b3[0].kv.mod_revision, r3);
    assert_eq!(w.next_revision(), r3 + 1);
    quiet(&mut w, Duration::from_millis(300)).await;

    // Many writes, in order, nothing lost or repeated.
    let mut expected = Vec::new();
    for i in 0..200 {
        expected.push(s.put(&format!("w/n{i:03}"), "v").await.unwrap());
    }
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        seen.extend(next(&mut w).await.iter().map(|e| e.kv.mod_revision));
    }
    assert_eq!(seen, expected);
}

async fn watch_from_an_old_revision_replays(h: Harness) {
    let s = h.open().await;
    let r1 = s.put("k1", "1").await.unwrap();
    s.put("k2", "2").await.unwrap();
    s.delete("k1").await.unwrap();
    let mut w = s.watch("k", r1).await.unwrap();
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "k1")]);
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "k2")]);
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Delete, "k1")]);
    // ... and goes on live.
    s.put("k3", "3").await.unwrap();
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "k3")]);

    // List, then watch from the list's revision + 1: exactly the writes after the list.
    let (kvs, rev) = s.list("k").await.unwrap();
    assert_eq!(keys(&kvs), ["k2", "k3"]);
    s.put("k4", "4").await.unwrap();
    let mut w = s.watch("k", rev + 1).await.unwrap();
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "k4")]);
    quiet(&mut w, Duration::from_millis(300)).await;
}

async fn watch_from_a_compacted_revision_fails(h: Harness) {
    let s = h.open().await;
    let r1 = s.put("a", "1").await.unwrap();
    s.put("b", "2").await.unwrap();
    let r3 = s.put("c", "3").await.unwrap();
    s.compact(r3).await.unwrap();
    s.compact(r3).await.unwrap(); // again: nothing happens
    assert!(matches!(
        s.compact(r3 + 100).await,
        Err(StoreError::InvalidArgument(_))
    ));

    let mut w = s.watch("", r1).await.unwrap();
    match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
        Err(StoreError::Compacted {
            requested,
            compacted,
        }) => {
            assert_eq!(requested, r1);
            assert_eq!(compacted, r3);
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // The compaction revision itself can still be watched.
    let mut w = s.watch("", r3).await.unwrap();
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "c")]);
}

async fn lease_expiry_deletes_keys(h: Harness) {
    let s = h.open().await;
    let lease = s.lease_grant(TTL).await.unwrap();
    assert_ne!(lease, 0);
    s.txn(
        Txn::new()
            .then(Op::put_with_lease("reg/hub-1", "addr", lease))
            .then(Op::put("reg/static", "stays")),
    )
    .await
    .unwrap();
    assert_eq!(s.get("reg/hub-1").await.unwrap().unwrap().lease, lease);
    let mut w = s.watch("reg/", 0).await.unwrap();
    let started = Instant::now();
    let batch = next(&mut w).await;
    let waited = started.elapsed();
    assert_eq!(shape(&batch), [(EventKind::Delete, "reg/hub-1")]);
    assert!(
        waited < Duration::from_secs(TTL as u64 + 3),
        "deleted after {waited:?}"
    );
    assert_eq!(s.get("reg/hub-1").await.unwrap(), None);
    assert!(s.get("reg/static").await.unwrap().is_some());
    assert!(matches!(
        s.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(id)) if id == lease
    ));
    let r = s
        .txn(Txn::new().then(Op::put_with_lease("late", "x", lease)))
        .await;
    assert!(matches!(r, Err(StoreError::LeaseNotFound(_))), "{r:?}");
}

async fn lease_keep_alive_keeps_keys(h: Harness) {
    let s = h.open().await;
    let lease = s.lease_grant(TTL).await.unwrap();
    s.txn(Txn::new().then(Op::put_with_lease("alive", "x", lease)))
        .await
        .unwrap();
    let mut w = s.watch("alive", 0).await.unwrap();
    // Renewed every 0.5 s, it outlives its TTL.
    let until = Instant::now() + Duration::from_millis(TTL as u64 * 1000 + 1000);
    while Instant::now() < until {
        let ttl = s.lease_keep_alive(lease).await.unwrap();
        assert!((1..=TTL + 1).contains(&ttl), "ttl {ttl}");
        quiet(&mut w, Duration::from_millis(500)).await;
    }
    assert!(s.get("alive").await.unwrap().is_some());
    // Moving the key to no lease detaches it: revoking no longer deletes it.
    s.put("alive", "y").await.unwrap();
    s.lease_revoke(lease).await.unwrap();
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "alive")]);
    quiet(&mut w, Duration::from_millis(300)).await;
    assert!(s.get("alive").await.unwrap().is_some());
}

async fn lease_revoke_deletes_keys(h: Harness) {
    let s = h.open().await;
    let lease = s.lease_grant(60).await.unwrap();
    let other = s.lease_grant(60).await.unwrap();
    s.txn(
        Txn::new()
            .then(Op::put_with_lease("l/a", "1", lease))
            .then(Op::put_with_lease("l/b", "2", lease))
            .then(Op::put_with_lease("l/c", "3", other)),
    )
    .await
    .unwrap();
    let mut w = s.watch("l/", 0).await.unwrap();
    s.lease_revoke(lease).await.unwrap();
    let batch = next(&mut w).await;
    assert_eq!(
        shape(&batch),
        [(EventKind::Delete, "l/a"), (EventKind::Delete, "l/b")]
    );
    assert_eq!(batch[0].kv.mod_revision, batch[1].kv.mod_revision);
    assert_eq!(keys(&s.list("l/").await.unwrap().0), ["l/c"]);
    assert!(matches!(
        s.lease_revoke(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        s.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert_eq!(s.lease_keep_alive(other).await.unwrap(), 60);
    assert!(matches!(
        s.lease_grant(0).await,
        Err(StoreError::InvalidArgument(_))
    ));
}

async fn restart_loses_nothing(mut h: Harness) {
    let s = h.open().await;
    for i in 0..50 {
        s.put(&format!("p/{i:02}"), format!("v{i}")).await.unwrap();
    }
    s.txn(
        Txn::new()
            .then(Op::delete_prefix("p/1"))
            .then(Op::put("p/x", "x")),
    )
    .await
    .unwrap();
    let (before, rev) = s.list("").await.unwrap();
    assert_eq!(before.len(), 41);
    drop(s);

    h.restart_server();
    let s = h.open().await;
    let (after, rev2) = s.list("").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(rev2, rev);
    // It goes on from where it was: revisions, watches, compare-and-swap.
    let mut w = s.watch("p/", 0).await.unwrap();
    let p00 = s.get("p/00").await.unwrap().unwrap();
    let t = s
        .txn(
            Txn::new()
                .when(Compare::mod_revision("p/00", p00.mod_revision))
                .then(Op::put("p/00", "changed")),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, rev + 1);
    assert_eq!(shape(&next(&mut w).await), [(EventKind::Put, "p/00")]);
}

async fn two_handles_agree(h: Harness) {
    let a = h.open().await;
    let b = h.second(&a).await;
    let mut wb = b.watch("shared/", 0).await.unwrap();
    a.put("shared/x", "from a").await.unwrap();
    assert_eq!(b.get("shared/x").await.unwrap().unwrap().value, b"from a");
    assert_eq!(shape(&next(&mut wb).await), [(EventKind::Put, "shared/x")]);

    // Both read the same revision and both try to update: exactly one wins.
    let seen_a = a.get("shared/x").await.unwrap().unwrap().mod_revision;
    let seen_b = b.get("shared/x").await.unwrap().unwrap().mod_revision;
    assert_eq!(seen_a, seen_b);
    let update = |v: &'static str| {
        Txn::new()
            .when(Compare::mod_revision("shared/x", seen_a))
            .then(Op::put("shared/x", v))
    };
    let ta = a.txn(update("a wins")).await.unwrap();
    let tb = b.txn(update("b wins")).await.unwrap();
    assert!(ta.succeeded);
    assert!(!tb.succeeded);
    assert_eq!(b.get("shared/x").await.unwrap().unwrap().value, b"a wins");
    assert_eq!(a.revision().await.unwrap(), b.revision().await.unwrap());
    let batch = next(&mut wb).await;
    assert_eq!(batch[0].kv.value, b"a wins");
    // A lease granted by one is renewed and revoked by the other.
    let lease = a.lease_grant(30).await.unwrap();
    a.txn(Txn::new().then(Op::put_with_lease("shared/reg", "r", lease)))
        .await
        .unwrap();
    assert_eq!(next(&mut wb).await[0].kv.lease, lease);
    b.lease_keep_alive(lease).await.unwrap();
    b.lease_revoke(lease).await.unwrap();
    assert_eq!(
        shape(&next(&mut wb).await),
        [(EventKind::Delete, "shared/reg")]
    );
}

async fn concurrent_cas_has_exactly_one_winner(h: Harness) {
    let a = h.open().await;
    let b = h.second(&a).await;
    let handles = [a, b];
    // Many tasks race to create the same key.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = handles[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let t = s
                .txn(
                    Txn::new()
                        .when(Compare::absent("leader"))
                        .then(Op::put("leader", format!("task-{i}"))),
                )
                .await
                .unwrap();
            (i, t.succeeded)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let leader = handles[0].get("leader").await.unwrap().unwrap();
    assert_eq!(leader.value, format!("task-{}", winners[0]).into_bytes());

    // Read-modify-write increments with retries: none lost.
    handles[0].put("counter", "0").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = handles[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..5 {
                loop {
                    let kv = s.get("counter").await.unwrap().unwrap();
                    let n: u64 = String::from_utf8(kv.value).unwrap().parse().unwrap();
                    let t = s
                        .txn(
                            Txn::new()
                                .when(Compare::mod_revision("counter", kv.mod_revision))
                                .then(Op::put("counter", (n + 1).to_string())),
                        )
                        .await
                        .unwrap();
                    if t.succeeded {
                        break;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let kv = handles[1].get("counter").await.unwrap().unwrap();
    assert_eq!(kv.value, b"40");
}

// --- one backend only ---------------------------------------------------------------------

/// The embedded store keeps a bounded history: a watch from before it, or a watcher that
/// stopped reading while more than that was written, gets Compacted (not unbounded memory).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::embedded(dir.path().join("meta.redb"));
    config.watch_history = 8;
    let s = Backend::open(&config).await.unwrap();
    let mut slow = s.watch("", 0).await.unwrap();
    let first = s.put("k00", "v").await.unwrap();
    let mut revs = vec![first];
    for i in 1..20 {
        revs.push(s.put(&format!("k{i:02}"), "v").await.unwrap());
    }
    let err = s.watch("", first).await.unwrap().next().await.unwrap_err();
    assert!(
        matches!(err, StoreError::Compacted { requested, compacted } if requested == first && compacted == revs[12]),
        "{err}"
    );
    let err = slow.next().await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
    // What is still held replays.
    let mut w = s.watch("", revs[15]).await.unwrap();
    assert_eq!(next(&mut w).await[0].kv.key, "k15");
    // A transaction larger than the history is still delivered whole.
    let mut big = Txn::new();
    for i in 0..20 {
        big = big.then(Op::put(format!("big/{i:02}"), "v"));
    }
    let mut w = s.watch("big/", 0).await.unwrap();
    s.txn(big).await.unwrap();
    assert_eq!(next(&mut w).await.len(), 20);
}

/// Reopening the embedded file deletes the keys that still carried leases (their owner is
/// gone), as one write; everything else is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reopen_deletes_leased_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig::embedded(dir.path().join("meta.redb"));
    let s = Backend::open(&config).await.unwrap();
    let lease = s.lease_grant(3600).await.unwrap();
    s.txn(
        Txn::new()
            .then(Op::put_with_lease("reg/a", "1", lease))
            .then(Op::put_with_lease("reg/b", "1", lease))
            .then(Op::put("keep", "1")),
    )
    .await
    .unwrap();
    let rev = s.revision().await.unwrap();
    drop(s);
    let s = Backend::open(&config).await.unwrap();
    assert_eq!(keys(&s.list("").await.unwrap().0), ["keep"]);
    assert_eq!(s.revision().await.unwrap(), rev + 1);
    assert!(matches!(
        s.lease_keep_alive(lease).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    // A watch from before the reopen cannot be served: the history is not persisted.
    let err = s.watch("", rev).await.unwrap().next().await.unwrap_err();
    assert!(matches!(err, StoreError::Compacted { .. }), "{err}");
}

/// Two etcd prefixes on one etcd do not see each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_prefixes_are_isolated() {
    let etcd = tokio::task::block_in_place(EtcdServer::start);
    let a = Backend::open(&StoreConfig::etcd(etcd.endpoints(), "/one/"))
        .await
        .unwrap();
    let b = Backend::open(&StoreConfig::etcd(etcd.endpoints(), "/one-more/"))
        .await
        .unwrap();
    let mut wb = b.watch("", 0).await.unwrap();
    a.put("k", "a").await.unwrap();
    b.put("k", "b").await.unwrap();
    assert_eq!(a.get("k").await.unwrap().unwrap().value, b"a");
    assert_eq!(keys(&a.list("").await.unwrap().0), ["k"]);
    let batch = next(&mut wb).await;
    assert_eq!(batch[0].kv.value, b"b");
    a.txn(Txn::new().then(Op::delete_prefix(""))).await.unwrap();
    assert_eq!(keys(&b.list("").await.unwrap().0), ["k"]);
    quiet(&mut wb, Duration::from_millis(300)).await;
}

/// A handle that lived through an etcd restart works again once etcd is back; a watch broken
/// by the restart says where to resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_handle_survives_a_server_restart() {
    let mut h = Harness::new(Kind::Etcd);
    let s = h.open().await;
    s.put("k", "1").await.unwrap();
    let mut w = s.watch("", 0).await.unwrap();
    h.restart_server();
    let deadline = Instant::now() + Duration::from_secs(15);
    let rev = loop {
        match s.put("k", "2").await {
            Ok(rev) => break rev,
            Err(StoreError::Unavailable { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("after the restart: {e}"),
        }
    };
    assert_eq!(s.get("k").await.unwrap().unwrap().value, b"2");
    // The old watch either carried on or failed; from next_revision() nothing is missed.
    let from = match tokio::time::timeout(WAIT, w.next()).await.unwrap() {
        Ok(Some(batch)) => batch[0].kv.mod_revision,
        Ok(None) => panic!("watch ended"),
        Err(_) => w.next_revision(),
    };
    let mut w = s.watch("", from).await.unwrap();
    loop {
        let batch = next(&mut w).await;
        assert!(batch[0].kv.mod_revision <= rev);
        if batch[0].kv.mod_revision == rev {
            break;
        }
    }
}

/// An etcd that cannot be reached is reported at open, within the timeouts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_is_unavailable() {
    let mut config = StoreConfig::etcd(vec!["http://127.0.0.1:9".into()], "/kubehub/");
    config.dial_timeout_ms = 500;
    config.request_timeout_ms = 1_000;
    let started = Instant::now();
    let err = Backend::open(&config).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let config = StoreConfig {
        endpoints: vec![],
        ..config
    };
    assert!(matches!(
        Backend::open(&config).await,
        Err(StoreError::Config(_))
    ));
}

/// The `[store]` example in the module documentation parses, with its defaults; unknown
/// fields are rejected.
#[test]
fn documented_config_parses() {
    let text = kubehub_testkit::documented_toml(include_str!("../src/store/mod.rs"));
    let table: toml::Table = toml::from_str(&text).unwrap();
    let store: StoreConfig = table["store"].clone().try_into().unwrap();
    assert_eq!(store, StoreConfig::default());
    assert_eq!(store.backend, BackendKind::Embedded);
    let etcd: StoreConfig =
        toml::from_str("backend = \"etcd\"\nendpoints = [\"http://10.0.0.1:2379\"]").unwrap();
    assert_eq!(etcd.backend, BackendKind::Etcd);
    assert_eq!(etcd.prefix, "/kubehub/");
    assert!(toml::from_str::<StoreConfig>("bakend = \"etcd\"").is_err());
    assert!(toml::from_str::<StoreConfig>("backend = \"sqlite\"").is_err());
}

#[test]
fn handles_can_be_shared_across_tasks() {
    fn shared<T: Clone + Send + Sync + std::fmt::Debug + 'static>() {}
    fn sendable<T: Send + std::fmt::Debug + 'static>() {}
    shared::<Backend>();
    sendable::<Watch>();
    sendable::<StoreError>();
}
