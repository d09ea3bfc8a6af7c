//! The `admit` phase's cost on the hub's hot path, for a request with no limit pressure (the
//! common case): what `hub/src/proxy/admit.rs` adds to every request, through
//! `kubehub_hub::admission::Admission` and the access index's limit records:
//!
//! * `admit/none`: the phase absent (the index's limits generation read only): the "before".
//! * `admit/default`: hub.toml's defaults (no rate limit; seats: one compare-and-swap taken
//!   and given back), no limit record for the tenant.
//! * `admit/limited`: the tenant has a limit record (rate, burst, seats: a GCRA bucket for
//!   the user and one for the tenant, each one compare-and-swap) and never runs out.
//! * `admit/exempt`: an operator (hub.toml `exempt_users`).
//! * `admit/cluster`: the per-cluster forward bucket and in-flight count.
//!
//! Single-threaded: the atomics are uncontended here (on a busy hub several cores share a
//! tenant's counters; the figures are the floor).
//!
//! `cargo bench -p kubehub-benches --bench admit -- --warm-up-time 1 --measurement-time 3`

#![allow(clippy::unwrap_used)] // a benchmark: a failure is a bug in the setup

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kubehub_access::model::Limit;
use kubehub_access::{Index, Line, Record};
use kubehub_hub::admission::{Admission, Admit};
use kubehub_hub::config::Fairness;
use kubehub_hub::metrics::Metrics;

fn index_with_limit() -> Index {
    let index = Index::new();
    let limit = |tenant: &str| {
        Record::Limit(Limit {
            tenant: tenant.into(),
            requests_per_second: Some(1_000_000),
            burst: Some(1_000_000),
            concurrency: Some(1000),
            cluster_requests_per_second: Some(1_000_000),
            cluster_burst: Some(1_000_000),
            ..Limit::default()
        })
    };
    index
        .apply(&Line::Snapshot {
            revision: 1,
            records: (0..1000).map(|i| limit(&format!("tenant-{i}"))).collect(),
        })
        .unwrap();
    index
}

fn admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("admit");
    let index = index_with_limit();
    let a = Admission::new(Fairness::default(), 0, Arc::new(Metrics::new()));
    let exempt = Admission::new(
        Fairness {
            exempt_users: vec!["ops".into()],
            ..Fairness::default()
        },
        0,
        Arc::new(Metrics::new()),
    );
    let groups = vec!["kubehub:tenant:tenant-7".to_owned()];
    g.bench_function("none", |b| {
        b.iter(|| black_box(index.limits_generation()));
    });
    let run = |a: &Admission, tenant: &str, user: &str| {
        let generation = index.limits_generation();
        let limits = index.limits(tenant);
        match a.admit(tenant, user, 1, limits.as_deref(), generation) {
            Ok(Admit::Now(seat)) => drop(black_box(seat)),
            other => panic!("no pressure: {other:?}"),
        }
    };
    g.bench_function("default", |b| {
        b.iter(|| run(&a, "tenant-without-record", "alice"))
    });
    // The loop runs faster than any rate a record may set (1,000,000/s): requests go round
    // 1,000 tenants with a user each, so that no bucket runs dry.
    let names: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("tenant-{i}"), format!("user-{i}")))
        .collect();
    let mut i = 0;
    g.bench_function("limited", |b| {
        b.iter(|| {
            let (t, u) = &names[i % names.len()];
            i += 1;
            run(&a, t, u)
        })
    });
    g.bench_function("exempt", |b| {
        b.iter(|| black_box(exempt.exempt(black_box("ops"), &groups)))
    });
    let limited_cluster = Admission::new(
        Fairness {
            cluster_requests_per_second: 1_000_000,
            cluster_burst: 1_000_000,
            cluster_concurrency: 1000,
            ..Fairness::default()
        },
        0,
        Arc::new(Metrics::new()),
    );
    let clusters: Vec<String> = (0..1000).map(|i| format!("edge-{i}")).collect();
    let mut i = 0;
    g.bench_function("cluster", |b| {
        b.iter(|| {
            let (t, _) = &names[i % names.len()];
            let c = &clusters[i % clusters.len()];
            i += 1;
            let limits = index.limits(t);
            let slot = limited_cluster
                .forward(t, c, 1, limits.as_deref(), index.limits_generation())
                .unwrap();
            drop(black_box(slot));
        })
    });
    g.finish();
}

criterion_group!(benches, admit);
criterion_main!(benches);
