//! The hub's cache (`kubehub-cache`) on simulator pods (2-6 KB of JSON each):
//!
//! * `cache/get`: one object by key from a 10k snapshot (snapshot load included);
//! * `cache/list/{1k,10k}`: a whole list as the hub writes it (page + body slices), and
//!   `cache/list_selector/10k` with a label selector matching one deployment's pods;
//!   `cache/list_page_past/10k`: a 500-item page at a version 1,000 changes back (the
//!   consistent continuation of a paginated list while writes go on);
//! * `ingest/parse`: `Object::parse` of one pod; `ingest/apply/10k`: one MODIFIED event
//!   into a 10k cache (new snapshot published, history appended);
//! * `fanout/10k_watchers`: one change read by 10,000 watcher cursors (each: pending, the
//!   filter, the shared line).

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use kubehub_benches::{pod_objects, pods};
use kubehub_cache::{list_body, ChangeKind, Cursor, Filter, ListRequest, Object, TypeCache};
use kubehub_kapi::query::{Version, VersionMatch};
use kubehub_kapi::selector::LabelSelector;

fn pods_type() -> &'static kubehub_wire::ResourceType {
    match kubehub_kapi::resources::builtin()
        .iter()
        .find(|t| t.resource == "pods")
    {
        Some(t) => t,
        None => panic!("no pods type"),
    }
}

fn loaded(objects: Vec<Object>, window: usize) -> TypeCache {
    let cache = TypeCache::new(window);
    if let Err(e) = cache.replace(objects, 1) {
        panic!("{e}");
    }
    cache
}

fn all(version: Version) -> ListRequest {
    ListRequest {
        version,
        limit: None,
        continue_token: None,
    }
}

fn bench_reads(c: &mut Criterion, jsons: &[Bytes]) {
    let t = pods_type();
    let mut g = c.benchmark_group("cache");
    let big = loaded(pod_objects(jsons), 10_000);
    let keys: Vec<_> = big.snapshot().objects().map(|(k, _)| k.clone()).collect();
    let mut i = 0;
    g.bench_function("get", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(big.get(&keys[i]))
        })
    });
    for n in [1_000, 10_000] {
        let cache = loaded(pod_objects(&jsons[..n]), 10_000);
        let bytes: u64 = jsons[..n].iter().map(|j| j.len() as u64).sum();
        g.throughput(Throughput::Bytes(bytes));
        g.bench_function(format!("list/{}k", n / 1000), |b| {
            b.iter(|| {
                let snap = cache.snapshot();
                let page = match snap.list(&Filter::default(), &all(Version::MostRecent)) {
                    Ok(p) => p,
                    Err(e) => panic!("{e}"),
                };
                black_box(list_body(t, &page.list_meta(), &page.items))
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let app = match big.snapshot().objects().next() {
        Some((_, o)) => o.meta.label("app").unwrap_or("").to_owned(),
        None => String::new(),
    };
    let selector = Filter {
        labels: match LabelSelector::parse(&format!("app={app}")) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        },
        ..Filter::default()
    };
    g.bench_function("list_selector/10k", |b| {
        b.iter(|| {
            let snap = big.snapshot();
            match snap.list(&selector, &all(Version::MostRecent)) {
                Ok(p) => black_box(p.items.len()),
                Err(e) => panic!("{e}"),
            }
        })
    });
    // 1,000 modifications, then a 500-item page at the version before them.
    let objs = pod_objects(jsons);
    for (i, mut o) in pod_objects(&jsons[..1000]).into_iter().enumerate() {
        o.rv = 2 + i as u64;
        if let Err(e) = big.apply(ChangeKind::Modified, o) {
            panic!("{e}");
        }
    }
    drop(objs);
    let past = ListRequest {
        version: Version::At(1, VersionMatch::Exact),
        limit: Some(500),
        continue_token: None,
    };
    g.bench_function("list_page_past/10k", |b| {
        b.iter(|| {
            let snap = big.snapshot();
            match snap.list(&Filter::default(), &past) {
                Ok(p) => black_box(p.items.len()),
                Err(e) => panic!("{e}"),
            }
        })
    });
    g.finish();
}

fn bench_ingest(c: &mut Criterion, jsons: &[Bytes]) {
    let mut g = c.benchmark_group("ingest");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("parse", |b| {
        b.iter(|| {
            i = (i + 1) % jsons.len();
            black_box(Object::parse("", "pods", jsons[i].clone()))
        })
    });
    let cache = loaded(pod_objects(jsons), 10_000);
    let updates = pod_objects(&jsons[..1000]);
    let mut rv = 1;
    let mut j = 0;
    g.bench_function("apply/10k", |b| {
        b.iter_batched(
            || {
                rv += 1;
                j = (j + 1) % updates.len();
                let mut o = updates[j].clone();
                o.rv = rv;
                o
            },
            |o| cache.apply(ChangeKind::Modified, o),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_fanout(c: &mut Criterion, jsons: &[Bytes]) {
    const WATCHERS: usize = 10_000;
    let mut g = c.benchmark_group("fanout");
    g.throughput(Throughput::Elements(WATCHERS as u64));
    let cache = loaded(pod_objects(&jsons[..1000]), 10_000);
    let snap = cache.snapshot();
    // Half watch everything, half one namespace (most of them do not see the change).
    let ns = Filter {
        namespace: Some("nobody".into()),
        ..Filter::default()
    };
    let mut cursors: Vec<Cursor> = (0..WATCHERS)
        .map(|i| {
            let f = if i % 2 == 0 {
                Filter::default()
            } else {
                ns.clone()
            };
            Cursor::at_end(f, &snap)
        })
        .collect();
    drop(snap);
    let update = pod_objects(&jsons[..1]).remove(0);
    let mut rv = 1;
    g.bench_function("10k_watchers", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                rv += 1;
                let mut o = update.clone();
                o.rv = rv;
                if let Err(e) = cache.apply(ChangeKind::Modified, o) {
                    panic!("{e}");
                }
                let start = Instant::now();
                let snap = cache.snapshot();
                let mut bytes = 0;
                for cur in cursors.iter_mut() {
                    match cur.pending(&snap) {
                        Ok(p) => {
                            for (kind, change) in p {
                                bytes += change.line(kind).len();
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                black_box(bytes);
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let jsons = pods(10_000);
    bench_reads(c, &jsons);
    bench_ingest(c, &jsons);
    bench_fanout(c, &jsons);
}

criterion_group!(cache, benches);
criterion_main!(cache);
