//! The hub's hot path: authenticate + authorize, with 100,000 tokens and 10,000 grants over
//! 1,000 clusters (100 tenants × 10 clusters, 100 users and 100 grants each; 10 tokens a user).
//!
//! `cargo bench -p kubehub-access --bench authorize -- --warm-up-time 1 --measurement-time 3`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use kubehub_access::model::{
    Cluster, ClusterSelector, Grant, Rule, Subject, Tenant, TokenRecord, User,
};
use kubehub_access::{Attributes, Decision, Index, Line, Record, Token};
use kubehub_kapi::request_info::{request_info, RequestInfo};

const TENANTS: usize = 100;
const CLUSTERS_PER_TENANT: usize = 10;
const USERS_PER_TENANT: usize = 100;
const TOKENS_PER_USER: usize = 10;
const NOW: u64 = 1_750_000_000;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], namespaces: &[&str]) -> Rule {
    Rule {
        verbs: s(verbs),
        api_groups: s(groups),
        resources: s(resources),
        namespaces: s(namespaces),
        ..Rule::default()
    }
}

/// The records, and for some users (tenant, user index) one of their tokens.
fn world() -> (Vec<Record>, Vec<(String, usize, usize)>) {
    let mut records = Vec::new();
    let mut sample = Vec::new();
    for t in 0..TENANTS {
        let tenant = format!("tenant-{t}");
        records.push(Record::Tenant(Tenant {
            name: tenant.clone(),
            display_name: String::new(),
        }));
        for c in 0..CLUSTERS_PER_TENANT {
            let env = if c % 2 == 0 { "prod" } else { "dev" };
            records.push(Record::Cluster(Cluster {
                id: format!("t{t}-c{c}"),
                display_name: String::new(),
                tenant: tenant.clone(),
                labels: BTreeMap::from([("env".to_owned(), env.to_owned())]),
                environment: env.into(),
            }));
        }
        for u in 0..USERS_PER_TENANT {
            let name = format!("user-{t}-{u}@example.com");
            records.push(Record::User(User {
                name: name.clone(),
                tenant: tenant.clone(),
                groups: vec![format!("team-{}", u % 10), format!("team-{}", (u + 3) % 10)],
                admin: false,
            }));
            let clusters: Vec<String> = (0..CLUSTERS_PER_TENANT)
                .map(|c| format!("t{t}-c{c}"))
                .collect();
            for k in 0..TOKENS_PER_USER {
                let (token, id, hash) = Token::generate();
                if k == 0 && u % 7 == 0 {
                    sample.push((token, t, u));
                }
                records.push(Record::Token(TokenRecord {
                    id,
                    user: name.clone(),
                    tenant: tenant.clone(),
                    clusters: clusters.clone(),
                    hash,
                    created: NOW - 10,
                    expires: NOW + 86_400,
                    description: String::new(),
                }));
            }
        }
        // 100 grants: 60 for one user each, 30 for groups, 10 for the whole tenant.
        for g in 0..100 {
            let (subject, clusters, rules) = match g {
                0..60 => (
                    Subject::User {
                        name: format!("user-{t}-{g}@example.com"),
                    },
                    ClusterSelector {
                        ids: vec![format!("t{t}-c{}", g % CLUSTERS_PER_TENANT)],
                        labels: BTreeMap::new(),
                    },
                    vec![
                        rule(
                            &["get", "list", "watch"],
                            &[""],
                            &["pods", "pods/log"],
                            &[&format!("team-{}", g % 5)],
                        ),
                        rule(&["get"], &[""], &["configmaps"], &[]),
                    ],
                ),
                60..90 => (
                    Subject::Group {
                        name: format!("team-{}", g % 10),
                    },
                    ClusterSelector {
                        ids: Vec::new(),
                        labels: BTreeMap::from([("env".to_owned(), "prod".to_owned())]),
                    },
                    vec![rule(
                        &["get", "list", "update"],
                        &["apps"],
                        &["deployments", "deployments/scale"],
                        &["apps"],
                    )],
                ),
                _ => (
                    Subject::Tenant,
                    ClusterSelector {
                        ids: vec![format!("t{t}-c{}", g % CLUSTERS_PER_TENANT)],
                        labels: BTreeMap::new(),
                    },
                    vec![rule(&["list"], &[""], &["services"], &[])],
                ),
            };
            records.push(Record::Grant(Grant {
                name: format!("grant-{g}"),
                tenant: tenant.clone(),
                subject,
                clusters,
                rules,
            }));
        }
    }
    (records, sample)
}

fn info<'a>(method: &str, path: &'a str, query: &'a str) -> RequestInfo<'a> {
    request_info(method, path, query).expect("a request")
}

fn bench(c: &mut Criterion) {
    let started = Instant::now();
    let (records, sample) = world();
    let generated = started.elapsed();
    let n = records.len();
    let index = Index::new();
    let started = Instant::now();
    index
        .apply(&Line::Snapshot {
            revision: 1,
            records,
        })
        .expect("valid");
    eprintln!(
        "world: {n} records generated in {generated:?}, snapshot applied in {:?}; {} identities",
        started.elapsed(),
        index.identity_count()
    );

    // Users u with u % 7 == 0 and u < 60 have a user grant on cluster c{u % 10}, pods in team-{u % 5}.
    let allowed: Vec<(Vec<u8>, String, String)> = sample
        .iter()
        .filter(|(_, _, u)| *u < 60)
        .map(|(token, t, u)| {
            (
                format!("Bearer {token}").into_bytes(),
                format!("t{t}-c{}", u % 10),
                format!("team-{}", u % 5),
            )
        })
        .collect();
    let paths: Vec<String> = allowed
        .iter()
        .map(|(_, _, ns)| format!("/api/v1/namespaces/{ns}/pods/web-1"))
        .collect();
    let infos: Vec<RequestInfo<'_>> = paths.iter().map(|p| info("GET", p, "")).collect();
    eprintln!("{} sampled tokens with an allowing grant", allowed.len());

    let mut group = c.benchmark_group("hot path (100k tokens, 10k grants, 1k clusters)");
    let mut i = 0usize;
    group.bench_function("authenticate", |b| {
        b.iter(|| {
            i = (i + 1) % allowed.len();
            black_box(
                index
                    .authenticate(Some(black_box(&allowed[i].0)), NOW)
                    .is_ok(),
            )
        })
    });
    group.bench_function("authenticate + authorize, allowed (user grant)", |b| {
        b.iter(|| {
            i = (i + 1) % allowed.len();
            let (header, cluster, _) = &allowed[i];
            let id = index
                .authenticate(Some(black_box(header)), NOW)
                .expect("valid");
            let d = index.authorize(&id, cluster, &Attributes::from(&infos[i]));
            debug_assert_eq!(d, Decision::Allow);
            black_box(d)
        })
    });
    let scale = info(
        "PUT",
        "/apis/apps/v1/namespaces/apps/deployments/web/scale",
        "",
    );
    group.bench_function(
        "authenticate + authorize, allowed (group grant by label)",
        |b| {
            b.iter(|| {
                i = (i + 1) % allowed.len();
                let (header, _, _) = &allowed[i];
                let id = index
                    .authenticate(Some(black_box(header)), NOW)
                    .expect("valid");
                // c0 is prod in every tenant.
                let cluster = &id.clusters[0];
                black_box(index.authorize(&id, cluster, &Attributes::from(&scale)))
            })
        },
    );
    let discovery = info("GET", "/apis/apps/v1", "");
    group.bench_function("authenticate + authorize, discovery", |b| {
        b.iter(|| {
            i = (i + 1) % allowed.len();
            let (header, cluster, _) = &allowed[i];
            let id = index
                .authenticate(Some(black_box(header)), NOW)
                .expect("valid");
            black_box(index.authorize(&id, cluster, &Attributes::from(&discovery)))
        })
    });
    let secret = info("GET", "/api/v1/namespaces/kube-system/secrets/token", "");
    group.bench_function(
        "authenticate + authorize, denied (every grant of the user checked)",
        |b| {
            b.iter(|| {
                i = (i + 1) % allowed.len();
                let (header, cluster, _) = &allowed[i];
                let id = index
                    .authenticate(Some(black_box(header)), NOW)
                    .expect("valid");
                let d = index.authorize(&id, cluster, &Attributes::from(&secret));
                debug_assert!(!d.is_allowed());
                black_box(d)
            })
        },
    );
    let unknown = format!("Bearer {}", Token::generate().0).into_bytes();
    group.bench_function("authenticate, unknown token", |b| {
        b.iter(|| black_box(index.authenticate(Some(black_box(&unknown)), NOW).is_err()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
