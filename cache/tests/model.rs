//! The cache against a naive model (a `BTreeMap` per version and a `Vec` of every change):
//! random sequences of relists, watch events and progress, checked after every step — lists
//! under random filters, limits and continue tokens (pages keep reading the first page's
//! version while writes go on), exact lists of past versions, `changes_since`, cursors
//! (drained whole or one event at a time), snapshots held across writes, 410s outside the
//! window.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kubehub_cache::{
    ApplyError, ChangeKind, Cursor, Filter, ListRequest, ObjKey, Object, Snapshot, TypeCache,
};
use kubehub_kapi::query::{Version, VersionMatch};
use kubehub_kapi::resources::field_selectors;
use kubehub_kapi::selector::{FieldSelector, LabelSelector};
use proptest::prelude::*;

const NAMESPACES: [&str; 2] = ["a", "b"];

fn object(ns: usize, name: usize, label: usize, rv: u64) -> Object {
    let json = format!(
        r#"{{"kind":"ConfigMap","metadata":{{"name":"n{name}","namespace":"{}","resourceVersion":"{rv}","labels":{{"app":"x{label}"}}}},"data":{{"v":"{rv}"}}}}"#,
        NAMESPACES[ns]
    );
    Object::parse("", "configmaps", Bytes::from(json)).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    /// A relist: (ns, name, label, keep the current version if the key exists).
    Replace(Vec<(usize, usize, usize, bool)>, u64),
    /// A watch event: kind, ns, name, label, version bump.
    Apply(u8, usize, usize, usize, u64),
    /// A bookmark: version bump.
    Progress(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (
            prop::collection::vec((0..2usize, 0..6usize, 0..3usize, any::<bool>()), 0..8),
            0..3u64
        )
            .prop_map(|(v, b)| Op::Replace(v, b)),
        6 => (0..3u8, 0..2usize, 0..6usize, 0..3usize, 0..3u64)
            .prop_map(|(k, n, m, l, b)| Op::Apply(k, n, m, l, b)),
        1 => (0..3u64).prop_map(Op::Progress),
    ]
}

fn filters() -> Vec<Filter> {
    let f = |ns: Option<&str>, labels: &str, fields: &str| Filter {
        namespace: ns.map(str::to_owned),
        labels: LabelSelector::parse(labels).unwrap(),
        fields: FieldSelector::parse(fields, field_selectors("", "configmaps")).unwrap(),
    };
    vec![
        f(None, "", ""),
        f(Some("a"), "", ""),
        f(None, "app=x0", ""),
        f(Some("b"), "app in (x1,x2)", ""),
        f(None, "app!=x1", "metadata.name!=n2"),
    ]
}

/// The model's independent reading of a filter.
fn wants(f: &Filter, o: &Object) -> bool {
    f.matches(&o.key, &o.meta)
}

#[derive(Debug, Clone)]
struct MChange {
    rv: u64,
    kind: ChangeKind,
    key: ObjKey,
    object_rv: u64,
    /// The object the change carries (for a deletion: the event's object, or for a relist's,
    /// the last state).
    carried: Object,
    prev: Option<Object>,
}

#[derive(Default)]
struct Model {
    loaded: bool,
    rv: u64,
    oldest: u64,
    objs: BTreeMap<ObjKey, Object>,
    /// Every change ever; `dropped` of them have left the window.
    all: Vec<MChange>,
    dropped: usize,
    /// The contents after each version (the latest state at or below a version is that
    /// version's).
    states: BTreeMap<u64, BTreeMap<ObjKey, Object>>,
}

impl Model {
    fn kept(&self) -> &[MChange] {
        &self.all[self.dropped..]
    }

    fn record(&mut self, changes: Vec<MChange>, window: usize) {
        self.all.extend(changes);
        while self.all.len() - self.dropped > window {
            self.oldest = self.oldest.max(self.all[self.dropped].rv);
            self.dropped += 1;
        }
        self.states.insert(self.rv, self.objs.clone());
    }

    fn state_at(&self, rv: u64) -> &BTreeMap<ObjKey, Object> {
        self.states
            .range(..=rv)
            .next_back()
            .map(|(_, s)| s)
            .unwrap()
    }

    fn replace(&mut self, items: Vec<Object>, rv: u64, window: usize) -> Result<(), ApplyError> {
        let mut next = BTreeMap::new();
        for o in items {
            next.insert(o.key.clone(), o);
        }
        if !self.loaded {
            self.loaded = true;
            self.rv = rv;
            self.oldest = rv;
            self.objs = next;
            self.states.insert(rv, self.objs.clone());
            return Ok(());
        }
        if rv < self.rv {
            return Err(ApplyError::NotNewer {
                got: rv,
                current: self.rv,
            });
        }
        let mut keys: Vec<&ObjKey> = self.objs.keys().chain(next.keys()).collect();
        keys.sort();
        keys.dedup();
        let mut changes = Vec::new();
        for k in keys {
            let c = match (self.objs.get(k), next.get(k)) {
                (Some(was), None) => {
                    Some((ChangeKind::Deleted, Some(was.clone()), was.clone(), rv))
                }
                (None, Some(n)) => Some((ChangeKind::Added, None, n.clone(), n.rv)),
                (Some(was), Some(n)) if was.rv != n.rv => {
                    Some((ChangeKind::Modified, Some(was.clone()), n.clone(), n.rv))
                }
                _ => None,
            };
            if let Some((kind, prev, carried, object_rv)) = c {
                changes.push(MChange {
                    rv,
                    kind,
                    key: k.clone(),
                    object_rv,
                    carried,
                    prev,
                });
            }
        }
        if rv == self.rv && !changes.is_empty() {
            return Err(ApplyError::SameVersionDiffers { rv });
        }
        self.rv = rv;
        self.objs = next;
        self.record(changes, window);
        Ok(())
    }

    fn apply(&mut self, kind: ChangeKind, o: Object, window: usize) -> Result<(), ApplyError> {
        if !self.loaded {
            return Err(ApplyError::NotSynced);
        }
        if o.rv <= self.rv {
            return Err(ApplyError::NotNewer {
                got: o.rv,
                current: self.rv,
            });
        }
        self.rv = o.rv;
        let prev = self.objs.get(&o.key).cloned();
        let change = match (kind, prev) {
            (ChangeKind::Deleted, None) => None,
            (ChangeKind::Deleted, Some(p)) => {
                self.objs.remove(&o.key);
                Some((ChangeKind::Deleted, Some(p)))
            }
            (_, p) => {
                self.objs.insert(o.key.clone(), o.clone());
                let k = if p.is_some() {
                    ChangeKind::Modified
                } else {
                    ChangeKind::Added
                };
                Some((k, p))
            }
        };
        let changes = change
            .map(|(kind, prev)| MChange {
                rv: o.rv,
                kind,
                key: o.key.clone(),
                object_rv: o.rv,
                carried: o.clone(),
                prev,
            })
            .into_iter()
            .collect();
        self.record(changes, window);
        Ok(())
    }

    fn progress(&mut self, rv: u64) {
        if self.loaded && rv > self.rv {
            self.rv = rv;
            self.states.insert(rv, self.objs.clone());
        }
    }
}

/// The model's view of a change, as a watcher with `f` sees it: by the object it carries
/// and the one before.
fn model_event(f: &Filter, c: &MChange) -> Option<ChangeKind> {
    let before = c.prev.as_ref().is_some_and(|p| wants(f, p));
    let now = wants(f, &c.carried);
    match (c.kind, before, now) {
        (ChangeKind::Added, _, true) => Some(ChangeKind::Added),
        (ChangeKind::Added, _, false) => None,
        (ChangeKind::Deleted, b, n) => (b || n).then_some(ChangeKind::Deleted),
        (ChangeKind::Modified, true, true) => Some(ChangeKind::Modified),
        (ChangeKind::Modified, false, true) => Some(ChangeKind::Added),
        (ChangeKind::Modified, true, false) => Some(ChangeKind::Deleted),
        (ChangeKind::Modified, false, false) => None,
    }
}

fn summary(c: &kubehub_cache::Change) -> (u64, ChangeKind, ObjKey, u64, Option<Bytes>) {
    (
        c.rv,
        c.kind,
        c.key().clone(),
        c.object.rv,
        c.prev.as_ref().map(|p| p.json.clone()),
    )
}

fn model_summary(c: &MChange) -> (u64, ChangeKind, ObjKey, u64, Option<Bytes>) {
    (
        c.rv,
        c.kind,
        c.key.clone(),
        c.object_rv,
        c.prev.as_ref().map(|p| p.json.clone()),
    )
}

fn expected(state: &BTreeMap<ObjKey, Object>, f: &Filter) -> Vec<Bytes> {
    state
        .values()
        .filter(|o| wants(f, o))
        .map(|o| o.json.clone())
        .collect()
}

/// A paginated list in progress: its filter, page size, token, what it must add up to.
struct Paging {
    filter: usize,
    limit: u64,
    token: String,
    rv: u64,
    got: Vec<Bytes>,
}

/// A watcher: its cursor, the model position (index into `all`), and whether it has been
/// cut off.
struct Watcher {
    cursor: Cursor,
    filter: usize,
    seq: usize,
    one_at_a_time: bool,
}

fn list_all(snap: &Snapshot, f: &Filter, version: Version, limit: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut token = None;
    loop {
        let page = snap
            .list(
                f,
                &ListRequest {
                    version,
                    limit: Some(limit),
                    continue_token: token.clone(),
                },
            )
            .unwrap();
        out.extend(page.items);
        match page.continue_token {
            Some(t) => token = Some(t),
            None => return out,
        }
    }
}

fn run(ops: Vec<Op>, window: usize, seed: u64) {
    let cache = TypeCache::new(window);
    let mut m = Model::default();
    let fs = filters();
    let mut pagings: Vec<Paging> = Vec::new();
    let mut watchers: Vec<Watcher> = Vec::new();
    let mut held: Vec<(Arc<Snapshot>, Vec<Bytes>, u64)> = Vec::new();
    let mut pick = seed;
    let mut next = |n: usize| {
        pick = pick
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((pick >> 33) as usize) % n.max(1)
    };
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Replace(items, bump) => {
                let rv = if m.loaded { m.rv + bump } else { 1 + bump };
                let objs: Vec<Object> = items
                    .iter()
                    .map(|&(ns, name, label, keep)| {
                        let key = ObjKey::new(NAMESPACES[ns], &format!("n{name}"));
                        match m.objs.get(&key) {
                            // A version names one state: at the cache's own version an
                            // object can only be as it was.
                            Some(o) if keep || rv == m.rv => o.clone(),
                            _ => object(ns, name, label, rv),
                        }
                    })
                    .collect();
                let want = m.replace(objs.clone(), rv, window);
                assert_eq!(cache.replace(objs, rv), want, "step {step}");
            }
            Op::Apply(kind, ns, name, label, bump) => {
                let kind =
                    [ChangeKind::Added, ChangeKind::Modified, ChangeKind::Deleted][kind as usize];
                let o = object(ns, name, label, m.rv + bump);
                let want = m.apply(kind, o.clone(), window);
                assert_eq!(cache.apply(kind, o), want, "step {step}");
            }
            Op::Progress(bump) => {
                m.progress(m.rv + bump);
                cache.progress(m.rv);
            }
        }
        let snap = cache.snapshot();
        assert_eq!(snap.is_loaded(), m.loaded);
        if !m.loaded {
            continue;
        }
        assert_eq!((snap.rv(), snap.oldest()), (m.rv, m.oldest), "step {step}");
        let stats = snap.stats();
        assert_eq!(stats.objects, m.objs.len());
        assert_eq!(
            stats.bytes,
            m.objs.values().map(|o| o.json.len() as u64).sum::<u64>()
        );
        assert_eq!(stats.history, m.kept().len());
        for (k, o) in &m.objs {
            assert_eq!(snap.get(k).map(|x| x.json.clone()), Some(o.json.clone()));
        }

        // Whole lists, a page size at a time, at the current version.
        let fi = next(fs.len());
        let limit = 1 + next(4) as u64;
        assert_eq!(
            list_all(&snap, &fs[fi], Version::MostRecent, limit),
            expected(&m.objs, &fs[fi]),
            "step {step}"
        );
        // Exact lists of past versions; 410 before the window.
        let back = m.rv.saturating_sub(next(8) as u64);
        let exact = Version::At(back.max(1), VersionMatch::Exact);
        if back.max(1) < m.oldest {
            let err = snap
                .list(
                    &fs[fi],
                    &ListRequest {
                        version: exact,
                        limit: None,
                        continue_token: None,
                    },
                )
                .unwrap_err();
            assert_eq!(err.code, 410);
        } else {
            assert_eq!(
                list_all(&snap, &fs[fi], exact, limit),
                expected(m.state_at(back.max(1)), &fs[fi]),
                "exact list at {back}, step {step}"
            );
        }

        // Pagination across writes: one more page of each list in progress.
        pagings.retain_mut(|p| {
            let req = ListRequest {
                version: Version::MostRecent,
                limit: Some(p.limit),
                continue_token: Some(p.token.clone()),
            };
            match snap.list(&fs[p.filter], &req) {
                Err(e) => {
                    assert!(p.rv < m.oldest, "only an expired token fails: {e:?}");
                    assert_eq!((e.code, e.reason), (410, "Expired"));
                    false
                }
                Ok(page) => {
                    assert_eq!(page.resource_version, p.rv);
                    p.got.extend(page.items);
                    match page.continue_token {
                        Some(t) => {
                            p.token = t;
                            true
                        }
                        None => {
                            assert_eq!(p.got, expected(m.state_at(p.rv), &fs[p.filter]));
                            false
                        }
                    }
                }
            }
        });
        if pagings.len() < 3 {
            let filter = next(fs.len());
            let limit = 1 + next(2) as u64;
            let page = snap
                .list(
                    &fs[filter],
                    &ListRequest {
                        version: Version::MostRecent,
                        limit: Some(limit),
                        continue_token: None,
                    },
                )
                .unwrap();
            if let Some(token) = page.continue_token {
                pagings.push(Paging {
                    filter,
                    limit,
                    token,
                    rv: page.resource_version,
                    got: page.items,
                });
            }
        }

        // changes_since, inside and outside the window.
        for from in [
            m.oldest.saturating_sub(1),
            m.oldest,
            m.rv.saturating_sub(2),
            m.rv + 1,
        ] {
            let want: Vec<_> = m
                .kept()
                .iter()
                .filter(|c| c.rv > from)
                .map(model_summary)
                .collect();
            match snap.changes_since(from) {
                Ok(got) => {
                    assert!(from >= m.oldest);
                    assert_eq!(got.map(|c| summary(c)).collect::<Vec<_>>(), want);
                }
                Err(e) => {
                    assert!(from < m.oldest);
                    assert_eq!(e.code, 410);
                }
            }
        }

        // Watchers: the events their filters see, in order, or cut off.
        watchers.retain_mut(|w| {
            let f = &fs[w.filter];
            let mut got = Vec::new();
            loop {
                match w.cursor.pending(&snap) {
                    Err(_) => {
                        assert!(w.seq < m.dropped, "cut off only behind the window");
                        return false;
                    }
                    Ok(p) => {
                        let batch: Vec<_> = if w.one_at_a_time {
                            let one: Vec<_> = p.take(1).collect();
                            if let Some((_, c)) = one.first() {
                                // The cursor claims a version only once all of its changes
                                // (a relist records several at one) are delivered.
                                let group_last = snap
                                    .history()
                                    .rfind(|x| x.rv == c.rv)
                                    .is_some_and(|x| Arc::ptr_eq(x, c));
                                let last = snap.history().last().is_some_and(|x| Arc::ptr_eq(x, c));
                                match (group_last, last) {
                                    (_, true) => assert_eq!(w.cursor.rv(), snap.rv()),
                                    (true, false) => assert_eq!(w.cursor.rv(), c.rv),
                                    (false, _) => assert!(w.cursor.rv() < c.rv),
                                }
                            }
                            one.into_iter().map(|(k, c)| (k, summary(c))).collect()
                        } else {
                            p.map(|(k, c)| (k, summary(c))).collect()
                        };
                        if batch.is_empty() {
                            break;
                        }
                        got.extend(batch);
                    }
                }
            }
            assert!(
                w.seq >= m.dropped,
                "a watcher behind the window was not cut off"
            );
            let want: Vec<_> = m.all[w.seq..]
                .iter()
                .filter_map(|c| model_event(f, c).map(|k| (k, model_summary(c))))
                .collect();
            assert_eq!(got, want, "watcher with filter {}", w.filter);
            w.seq = m.all.len();
            assert!(w.cursor.is_caught_up(&snap));
            assert_eq!(w.cursor.rv(), m.rv);
            true
        });
        if watchers.len() < 4 {
            let filter = next(fs.len());
            let start = snap
                .watch(fs[filter].clone(), Version::MostRecent, false)
                .unwrap();
            assert!(start.initial_events);
            let initial: Vec<Bytes> = snap
                .initial_events(&fs[filter])
                .map(|o| o.json.clone())
                .collect();
            assert_eq!(initial, expected(&m.objs, &fs[filter]));
            watchers.push(Watcher {
                cursor: start.cursor,
                filter,
                seq: m.all.len(),
                one_at_a_time: next(2) == 0,
            });
        }
        // A watch from a past version replays exactly the model's changes since.
        let from = m.rv.saturating_sub(next(5) as u64);
        match snap.watch(
            fs[0].clone(),
            Version::At(from.max(1), VersionMatch::NotOlderThan),
            false,
        ) {
            Err(e) => {
                assert!(from.max(1) < m.oldest);
                assert_eq!(e.code, 410);
            }
            Ok(mut start) => {
                assert!(!start.initial_events);
                let got: Vec<_> = start
                    .cursor
                    .pending(&snap)
                    .unwrap()
                    .map(|(_, c)| summary(c))
                    .collect();
                let want: Vec<_> = m
                    .kept()
                    .iter()
                    .filter(|c| c.rv > from.max(1))
                    .map(model_summary)
                    .collect();
                assert_eq!(got, want);
            }
        }

        // Snapshots held across writes do not change.
        for (s, items, rv) in &held {
            assert_eq!(s.rv(), *rv);
            let all: Vec<Bytes> = s.objects().map(|(_, o)| o.json.clone()).collect();
            assert_eq!(&all, items);
        }
        if next(4) == 0 {
            held.truncate(2);
            held.push((snap.clone(), expected(&m.objs, &fs[0]), m.rv));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn cache_agrees_with_the_model(
        ops in prop::collection::vec(op(), 1..60),
        window in 1..12usize,
        seed in any::<u64>(),
    ) {
        run(ops, window, seed);
    }
}

#[test]
fn relist_records_the_difference() {
    let cache = TypeCache::new(100);
    cache
        .replace(
            vec![object(0, 1, 0, 5), object(0, 2, 0, 6), object(1, 3, 0, 7)],
            10,
        )
        .unwrap();
    assert_eq!(
        cache.snapshot().history().len(),
        0,
        "the first snapshot records nothing"
    );
    let mut cursor = Cursor::at_end(Filter::default(), &cache.snapshot());
    // n1 unchanged, n2 modified, b/n3 gone, n4 new.
    cache
        .replace(
            vec![object(0, 1, 0, 5), object(0, 2, 1, 12), object(0, 4, 0, 11)],
            12,
        )
        .unwrap();
    let snap = cache.snapshot();
    let got: Vec<(ChangeKind, String, u64)> = cursor
        .pending(&snap)
        .unwrap()
        .map(|(k, c)| (k, c.key().to_string(), c.object.rv))
        .collect();
    assert_eq!(
        got,
        [
            (ChangeKind::Modified, "a/n2".to_owned(), 12),
            (ChangeKind::Added, "a/n4".to_owned(), 11),
            (ChangeKind::Deleted, "b/n3".to_owned(), 12),
        ]
    );
    // The DELETED object carries the relist's version, as kube-apiserver's deletions do.
    let deleted = snap.history().last().unwrap();
    assert!(std::str::from_utf8(&deleted.object.json)
        .unwrap()
        .contains(r#""resourceVersion":"12""#));
    assert_eq!(cursor.rv(), 12);
    // Same version, different contents: refused, nothing changes.
    assert_eq!(
        cache.replace(vec![], 12),
        Err(ApplyError::SameVersionDiffers { rv: 12 })
    );
    assert_eq!(cache.snapshot().len(), 3);
    assert_eq!(
        cache.replace(vec![], 11),
        Err(ApplyError::NotNewer {
            got: 11,
            current: 12
        })
    );
}

#[test]
fn window_cuts_off_slow_watchers_and_old_versions() {
    let cache = TypeCache::new(3);
    cache.replace(vec![], 1).unwrap();
    let mut slow = Cursor::at_end(Filter::default(), &cache.snapshot());
    for rv in 2..=5 {
        cache
            .apply(ChangeKind::Added, object(0, rv as usize, 0, rv))
            .unwrap();
    }
    let snap = cache.snapshot();
    assert_eq!(snap.oldest(), 2);
    let cut = slow.pending(&snap).unwrap_err();
    assert_eq!((cut.delivered, cut.oldest), (1, 2));
    assert_eq!(snap.changes_since(1).err().unwrap().code, 410);
    assert_eq!(snap.changes_since(2).unwrap().len(), 3);
    assert_eq!(
        snap.watch(
            Filter::default(),
            Version::At(1, VersionMatch::NotOlderThan),
            false
        )
        .unwrap_err()
        .code,
        410
    );
    // Bookmarks move the version without a change; watchers learn it.
    let mut w = Cursor::at_end(Filter::default(), &snap);
    cache.progress(9);
    let snap = cache.snapshot();
    assert_eq!(w.pending(&snap).unwrap().count(), 0);
    assert_eq!(w.rv(), 9);
    assert_eq!(
        cache.apply(ChangeKind::Added, object(0, 1, 0, 9)),
        Err(ApplyError::NotNewer { got: 9, current: 9 })
    );
}

#[test]
fn watchers_are_woken_without_a_runtime() {
    let cache = Arc::new(TypeCache::new(10));
    let mut rx = cache.subscribe();
    assert!(!rx.has_changed().unwrap());
    cache.replace(vec![object(0, 1, 0, 3)], 3).unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 3);
    let writer = cache.clone();
    let t = std::thread::spawn(move || writer.apply(ChangeKind::Modified, object(0, 1, 1, 4)));
    t.join().unwrap().unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow(), 4);
}

#[test]
fn a_late_first_subscriber_starts_from_the_current_version() {
    // The wake-up channel is made by the first subscriber: one that comes after updates
    // were published sees the version they reached (nothing to wait for), then every later
    // update, from any thread.
    let cache = Arc::new(TypeCache::new(10));
    cache.replace(vec![object(0, 1, 0, 3)], 3).unwrap();
    cache
        .apply(ChangeKind::Modified, object(0, 1, 1, 5))
        .unwrap();
    let mut rx = cache.subscribe();
    assert_eq!(*rx.borrow(), 5);
    assert!(!rx.has_changed().unwrap());
    let mut second = cache.subscribe();
    let writer = cache.clone();
    let t = std::thread::spawn(move || writer.progress(8));
    t.join().unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), 8);
    assert_eq!(*second.borrow_and_update(), 8);
    // Subscribing while a writer publishes: the receiver ends at the writer's last version.
    let writer = cache.clone();
    let t = std::thread::spawn(move || {
        for rv in 9..200 {
            writer.progress(rv);
        }
    });
    let fresh = TypeCache::new(4);
    fresh.replace(Vec::new(), 1).unwrap();
    let racing = Arc::new(fresh);
    let w2 = racing.clone();
    let t2 = std::thread::spawn(move || {
        for rv in 2..200 {
            w2.progress(rv);
        }
    });
    let rx2 = racing.subscribe();
    t.join().unwrap();
    t2.join().unwrap();
    assert_eq!(*rx2.borrow(), 199);
    assert_eq!(racing.snapshot().rv(), 199);
}

#[test]
fn reset_starts_over_when_versions_go_backwards() {
    let cache = TypeCache::new(8);
    cache.replace(vec![object(0, 1, 0, 5)], 10).unwrap();
    cache.apply(ChangeKind::Added, object(0, 2, 0, 11)).unwrap();
    let mut watcher = Cursor::at_end(Filter::default(), &cache.snapshot());
    // A relist at an older version is refused: a version must never name two states.
    assert_eq!(
        cache.replace(vec![object(0, 3, 0, 2)], 3),
        Err(ApplyError::NotNewer {
            got: 3,
            current: 11
        })
    );
    cache.reset();
    assert!(!cache.snapshot().is_loaded());
    cache.replace(vec![object(0, 3, 0, 2)], 3).unwrap();
    let snap = cache.snapshot();
    assert_eq!((snap.rv(), snap.len()), (3, 1));
    assert!(snap.get(&ObjKey::new(NAMESPACES[0], "n3")).is_some());
    // Nobody carries on across the reset as if the history continued.
    assert!(watcher.pending(&snap).is_err());
}
