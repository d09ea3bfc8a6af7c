//! For random grants, tokens and requests, the index decides as a plain reading of the rules
//! does: every grant looked at, every rule spelled out, no index.

mod common;

use std::collections::BTreeMap;

use common::*;
use kubehub_access::model::{ClusterSelector, Grant, Rule, Subject};
use kubehub_access::{Attributes, Index, Line, Record};
use proptest::prelude::*;
use proptest::sample::{select, subsequence};

/// (id, tenant, labels).
type ClusterDef = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

const CLUSTERS: [ClusterDef; 4] = [
    ("c1", "t1", &[("env", "prod"), ("zone", "a")]),
    ("c2", "t1", &[("env", "dev"), ("zone", "a")]),
    ("c3", "t2", &[("env", "prod"), ("zone", "b")]),
    ("c4", "t1", &[]),
];
const USERS: [(&str, &str); 3] = [("u1", "t1"), ("u2", "t1"), ("u3", "t2")];
const DISCOVERY: [&str; 9] = [
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/version",
    "/openapi/*",
    "/healthz",
    "/livez",
    "/readyz",
];

fn strings(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(str::to_owned).collect()
}

fn resource_rule() -> impl Strategy<Value = Rule> {
    (
        subsequence(
            vec!["get", "list", "watch", "create", "delete", "patch", "*"],
            1..3,
        ),
        subsequence(vec!["", "apps", "*"], 1..3),
        subsequence(
            vec![
                "pods",
                "deployments",
                "nodes",
                "pods/log",
                "pods/exec",
                "pods/*",
                "*/scale",
                "*/*",
                "*",
            ],
            1..3,
        ),
        subsequence(vec!["a", "b", "*"], 0..2),
        subsequence(vec!["x", "y"], 0..2),
    )
        .prop_map(|(verbs, groups, resources, namespaces, names)| Rule {
            verbs: strings(verbs),
            api_groups: strings(groups),
            resources: strings(resources),
            namespaces: strings(namespaces),
            resource_names: strings(names),
            non_resource_urls: Vec::new(),
        })
}

fn non_resource_rule() -> impl Strategy<Value = Rule> {
    (
        subsequence(vec!["get", "post", "head", "*"], 1..3),
        subsequence(
            vec!["/metrics", "/logs/*", "*", "/api", "/healthz", "/openapi/*"],
            1..3,
        ),
    )
        .prop_map(|(verbs, urls)| Rule {
            verbs: strings(verbs),
            non_resource_urls: strings(urls),
            ..Rule::default()
        })
}

fn grant_strategy() -> impl Strategy<Value = Grant> {
    (
        select(vec!["t1", "t2"]),
        prop_oneof![
            select(vec!["u1", "u2", "u3", "nobody"]).prop_map(|n| Subject::User { name: n.into() }),
            select(vec!["g1", "g2", "kubehub:tenant:t1", "kubehub:tenant:t2"])
                .prop_map(|n| Subject::Group { name: n.into() }),
            Just(Subject::Tenant),
        ],
        subsequence(vec!["c1", "c2", "c3", "c4", "cx"], 0..3),
        subsequence(vec![("env", "prod"), ("env", "dev"), ("zone", "a")], 0..2),
        prop::collection::vec(
            prop_oneof![3 => resource_rule(), 1 => non_resource_rule()],
            1..4,
        ),
    )
        .prop_map(|(tenant, subject, ids, labels, rules)| {
            let mut sel = ClusterSelector {
                ids: strings(ids),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect::<BTreeMap<_, _>>(),
            };
            if sel.ids.is_empty() && sel.labels.is_empty() {
                sel.ids.push("c1".into());
            }
            Grant {
                name: String::new(),
                tenant: tenant.into(),
                subject,
                clusters: sel,
                rules,
            }
        })
}

/// A request, as `Attributes` with static strings.
fn request() -> impl Strategy<Value = Attributes<'static>> {
    let resource = (
        select(vec![
            "get", "list", "watch", "create", "delete", "patch", "update", "",
        ]),
        select(vec!["", "apps", "batch"]),
        select(vec!["pods", "deployments", "nodes"]),
        select(vec!["", "", "log", "exec", "scale", "status"]),
        select(vec!["", "a", "b", "c"]),
        select(vec!["", "x", "y", "z"]),
    )
        .prop_map(
            |(verb, api_group, resource, subresource, namespace, name)| Attributes {
                verb,
                api_group,
                resource,
                subresource,
                namespace,
                name,
                path: "/api/v1/whatever",
                is_resource_request: true,
            },
        );
    let non_resource = (
        select(vec!["get", "post", "head"]),
        select(vec![
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps/v1",
            "/version",
            "/metrics",
            "/logs/x",
            "/logs",
            "/healthz",
            "/healthz/etcd",
            "/openapi/v2",
            "/openapi",
            "/x",
        ]),
    )
        .prop_map(|(verb, path)| Attributes {
            verb,
            path,
            ..Attributes::default()
        });
    prop_oneof![3 => resource, 1 => non_resource]
}

#[derive(Debug, Clone)]
struct Case {
    groups: Vec<Vec<&'static str>>,
    grants: Vec<Grant>,
    bound: Vec<Vec<&'static str>>,
    requests: Vec<Attributes<'static>>,
    as_puts: bool,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    let groups = prop::collection::vec(subsequence(vec!["g1", "g2"], 0..3), 3);
    let bound = prop::collection::vec(subsequence(vec!["c1", "c2", "c3", "c4", "cx"], 1..4), 3);
    (
        groups,
        prop::collection::vec(grant_strategy(), 0..10),
        bound,
        prop::collection::vec(request(), 1..24),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(groups, mut grants, bound, requests, as_puts, seed)| {
            for (i, g) in grants.iter_mut().enumerate() {
                g.name = format!("g{i}");
            }
            Case {
                groups,
                grants,
                bound,
                requests,
                as_puts,
                seed,
            }
        })
}

// ---- The reference: the semantics, read plainly. ----

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == v)
}

fn reference_rule(r: &Rule, a: &Attributes<'_>) -> bool {
    let verb_ok = has(&r.verbs, "*") || has(&r.verbs, a.verb);
    if !a.is_resource_request {
        let url_ok = r.non_resource_urls.iter().any(|u| {
            u == "*" || u == a.path || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1]))
        });
        return verb_ok && url_ok;
    }
    if r.resources.is_empty() {
        return false;
    }
    let group_ok = has(&r.api_groups, "*") || has(&r.api_groups, a.api_group);
    let resource_ok = if a.subresource.is_empty() {
        has(&r.resources, "*") || has(&r.resources, a.resource)
    } else {
        has(&r.resources, "*")
            || has(&r.resources, &format!("{}/{}", a.resource, a.subresource))
            || has(&r.resources, &format!("{}/*", a.resource))
            || has(&r.resources, &format!("*/{}", a.subresource))
            || has(&r.resources, "*/*")
    };
    let ns_ok = r.namespaces.is_empty()
        || has(&r.namespaces, "*")
        || (!a.namespace.is_empty() && has(&r.namespaces, a.namespace));
    let name_ok =
        r.resource_names.is_empty() || (!a.name.is_empty() && has(&r.resource_names, a.name));
    verb_ok && group_ok && resource_ok && ns_ok && name_ok
}

fn reference(c: &Case, user: usize, cluster: &str, a: &Attributes<'_>) -> bool {
    let (name, tenant) = USERS[user];
    if !c.bound[user].contains(&cluster) {
        return false;
    }
    let Some((id, cluster_tenant, labels)) = CLUSTERS.iter().find(|(id, _, _)| *id == cluster)
    else {
        return false;
    };
    if *cluster_tenant != tenant {
        return false;
    }
    let tenant_group = format!("kubehub:tenant:{tenant}");
    let mut covered = false;
    for g in &c.grants {
        if g.tenant != tenant {
            continue;
        }
        let for_user = match &g.subject {
            Subject::User { name: n } => n == name,
            Subject::Group { name: n } => {
                c.groups[user].contains(&n.as_str()) || *n == tenant_group
            }
            Subject::Tenant => true,
        };
        let selected = g.clusters.ids.iter().any(|i| i == id)
            || (!g.clusters.labels.is_empty()
                && g.clusters
                    .labels
                    .iter()
                    .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)));
        if !for_user || !selected {
            continue;
        }
        covered = true;
        if g.rules.iter().any(|r| reference_rule(r, a)) {
            return true;
        }
    }
    let discovery = !a.is_resource_request
        && a.verb == "get"
        && DISCOVERY
            .iter()
            .any(|u| *u == a.path || (u.ends_with('*') && a.path.starts_with(&u[..u.len() - 1])));
    covered && discovery
}

/// The world as records; the tokens as strings, one per user.
fn records(c: &Case) -> (Vec<Record>, Vec<String>) {
    let mut out = vec![tenant("t1"), tenant("t2")];
    for (id, t, l) in CLUSTERS {
        out.push(cluster(id, t, l));
    }
    let mut tokens = Vec::new();
    for (i, (name, t)) in USERS.iter().enumerate() {
        out.push(user(name, t, &c.groups[i]));
        let (tok, rec) = token(name, t, &c.bound[i], 0);
        tokens.push(tok);
        out.push(rec);
    }
    out.extend(c.grants.iter().cloned().map(Record::Grant));
    (out, tokens)
}

fn feed(index: &Index, c: &Case, mut records: Vec<Record>) {
    if !c.as_puts {
        index
            .apply(&Line::Snapshot {
                revision: 1,
                records,
            })
            .expect("valid records");
        return;
    }
    // Puts in a random order, with a grant for everyone put and deleted on the way.
    let mut seed = c.seed | 1;
    for i in (1..records.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        records.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    let extra = grant(
        "t1",
        "extra",
        kubehub_access::Subject::Tenant,
        ids(&["c1", "c2", "c4"]),
        vec![rule(&["*"], &["*"], &["*"])],
    );
    let mid = records.len() / 2;
    records.insert(mid, extra);
    for (i, record) in records.into_iter().enumerate() {
        index
            .apply(&Line::Put {
                revision: i as i64 + 1,
                record,
            })
            .expect("valid records");
    }
    index
        .apply(&Line::Delete {
            revision: 1000,
            key: "grants/t1/extra".into(),
        })
        .expect("a key");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn authorize_agrees_with_the_reference(c in case()) {
        let (records, tokens) = records(&c);
        for r in &records {
            prop_assert_eq!(r.validate(), Ok(()));
        }
        let index = Index::new();
        feed(&index, &c, records);
        for (u, token) in tokens.iter().enumerate() {
            let id = index.authenticate(Some(&bearer(token)), NOW).expect("every user's token is valid");
            for cluster in ["c1", "c2", "c3", "c4", "cx"] {
                for a in &c.requests {
                    let want = reference(&c, u, cluster, a);
                    let got = index.authorize(&id, cluster, a);
                    prop_assert_eq!(got.is_allowed(), want, "{} on {}: {:?} → {:?}", USERS[u].0, cluster, a, got);
                    // The rules review says the same.
                    let by_rules = index.rules(&id, cluster, a.namespace).iter().any(|r| r.allows(a));
                    prop_assert_eq!(by_rules, want, "rules({}, {}, {:?})", USERS[u].0, cluster, a.namespace);
                }
                let listed = index.clusters_for(USERS[u].0).contains(&cluster.to_owned());
                let discovery = Attributes { verb: "get", path: "/api", ..Attributes::default() };
                let bound = c.bound[u].clone();
                let unbound = Case { bound: vec![vec!["c1", "c2", "c3", "c4", "cx"]; 3], groups: c.groups.clone(), grants: c.grants.clone(), requests: Vec::new(), as_puts: false, seed: 0 };
                prop_assert_eq!(listed, reference(&unbound, u, cluster, &discovery), "clusters_for({}) and {} (bound to {:?})", USERS[u].0, cluster, bound);
            }
        }
    }
}
