//! What one rule allows, request by request, as kube-apiserver reads the requests.

mod common;

use common::{in_namespaces, info, named, rule, urls};
use kubehub_access::{Attributes, Rule};

/// (method, path?query, allowed).
type Case = (&'static str, &'static str, bool);

/// (why, rule, cases).
fn table() -> Vec<(&'static str, Rule, Vec<Case>)> {
    vec![
        (
            "get pods: the pods, never their subresources",
            rule(&["get"], &[""], &["pods"]),
            vec![
                ("GET", "/api/v1/namespaces/ns/pods/p", true),
                ("HEAD", "/api/v1/namespaces/ns/pods/p", true),
                ("GET", "/api/v1/namespaces/ns/pods/p/log", false),
                ("GET", "/api/v1/namespaces/ns/pods/p/status", false),
                ("GET", "/api/v1/namespaces/ns/pods/p/exec?command=sh", false),
                (
                    "POST",
                    "/api/v1/namespaces/ns/pods/p/exec?command=sh",
                    false,
                ),
                ("POST", "/api/v1/namespaces/ns/pods/p/attach", false),
                ("GET", "/api/v1/namespaces/ns/pods/p/portforward", false),
                ("POST", "/api/v1/namespaces/ns/pods/p/portforward", false),
                ("GET", "/api/v1/namespaces/ns/pods", false), // list
                ("GET", "/api/v1/namespaces/ns/pods?watch=1", false),
                ("DELETE", "/api/v1/namespaces/ns/pods/p", false),
                ("GET", "/apis/apps/v1/namespaces/ns/pods/p", false), // another group
                ("GET", "/api/v1/nodes/n", false),
                ("GET", "/api/v1/namespaces/ns/pods/p/proxy/x", false),
                ("GET", "/api/v1/proxy/namespaces/ns/pods/p", false), // verb proxy
                ("GET", "/api/v1", false),                            // discovery is not a resource
            ],
        ),
        (
            "pods/exec: exec by POST or websocket GET, nothing else",
            rule(&["create", "get"], &[""], &["pods/exec"]),
            vec![
                ("POST", "/api/v1/namespaces/ns/pods/p/exec?command=sh", true),
                ("GET", "/api/v1/namespaces/ns/pods/p/exec?command=sh", true),
                ("GET", "/api/v1/namespaces/ns/pods/p", false),
                ("POST", "/api/v1/namespaces/ns/pods/p/attach", false),
                ("GET", "/api/v1/namespaces/ns/pods/p/log", false),
            ],
        ),
        (
            "pods/log and pods/portforward named exactly",
            rule(&["get", "create"], &[""], &["pods/log", "pods/portforward"]),
            vec![
                ("GET", "/api/v1/namespaces/ns/pods/p/log?follow=true", true),
                ("POST", "/api/v1/namespaces/ns/pods/p/portforward", true),
                ("GET", "/api/v1/namespaces/ns/pods/p/exec", false),
                ("GET", "/api/v1/namespaces/ns/pods/p", false),
            ],
        ),
        (
            "pods/*: every subresource of pods, not pods",
            rule(&["get"], &[""], &["pods/*"]),
            vec![
                ("GET", "/api/v1/namespaces/ns/pods/p/log", true),
                ("GET", "/api/v1/namespaces/ns/pods/p/status", true),
                ("GET", "/api/v1/namespaces/ns/pods/p/exec", true),
                ("GET", "/api/v1/namespaces/ns/pods/p", false),
                ("GET", "/api/v1/namespaces/ns/services/s/status", false),
            ],
        ),
        (
            "*/scale: that subresource of every resource",
            rule(&["get", "update", "patch"], &["apps"], &["*/scale"]),
            vec![
                (
                    "PUT",
                    "/apis/apps/v1/namespaces/ns/deployments/d/scale",
                    true,
                ),
                (
                    "PATCH",
                    "/apis/apps/v1/namespaces/ns/statefulsets/s/scale",
                    true,
                ),
                ("PUT", "/apis/apps/v1/namespaces/ns/deployments/d", false),
                (
                    "GET",
                    "/apis/apps/v1/namespaces/ns/deployments/d/status",
                    false,
                ),
                (
                    "PUT",
                    "/api/v1/namespaces/ns/replicationcontrollers/r/scale",
                    false,
                ), // core
            ],
        ),
        (
            "* resources, verbs and groups: everything that is a resource request",
            rule(&["*"], &["*"], &["*"]),
            vec![
                ("POST", "/api/v1/namespaces/ns/pods/p/exec", true),
                ("DELETE", "/apis/apps/v1/namespaces/ns/deployments", true), // deletecollection
                ("GET", "/api/v1/nodes", true),
                ("GET", "/api/v1/pods?watch=true", true),
                ("OPTIONS", "/api/v1/pods", true), // the empty verb
                ("GET", "/metrics", false),        // non-resource
                ("GET", "/api", false),
            ],
        ),
        (
            "namespaced: only in those namespaces, never cluster-wide",
            in_namespaces(
                rule(&["get", "list", "watch"], &["", "apps"], &["*"]),
                &["team-a", "team-b"],
            ),
            vec![
                ("GET", "/api/v1/namespaces/team-a/pods", true),
                ("GET", "/api/v1/namespaces/team-b/pods/p/log", true),
                (
                    "GET",
                    "/apis/apps/v1/namespaces/team-a/deployments?watch=1",
                    true,
                ),
                ("GET", "/api/v1/namespaces/team-c/pods", false),
                ("GET", "/api/v1/pods", false), // all namespaces
                ("GET", "/api/v1/pods?watch=1", false), // all namespaces
                ("GET", "/api/v1/namespaces//pods", false), // the empty namespace is all
                ("GET", "/api/v1/nodes/n", false), // cluster-scoped
                ("GET", "/api/v1/namespaces", false), // list namespaces
                ("GET", "/api/v1/namespaces/team-a", true), // the namespace object itself
                ("GET", "/api/v1/namespaces/team-c", false),
            ],
        ),
        (
            "namespaces *: everywhere, cluster scope included",
            in_namespaces(rule(&["list"], &[""], &["pods", "nodes"]), &["*"]),
            vec![
                ("GET", "/api/v1/pods", true),
                ("GET", "/api/v1/namespaces/x/pods", true),
                ("GET", "/api/v1/nodes", true),
            ],
        ),
        (
            "resource names: only requests naming them",
            named(
                in_namespaces(
                    rule(
                        &[
                            "get",
                            "list",
                            "watch",
                            "create",
                            "delete",
                            "deletecollection",
                            "update",
                        ],
                        &[""],
                        &["configmaps"],
                    ),
                    &["ns"],
                ),
                &["web", "db"],
            ),
            vec![
                ("GET", "/api/v1/namespaces/ns/configmaps/web", true),
                ("PUT", "/api/v1/namespaces/ns/configmaps/db", true),
                ("DELETE", "/api/v1/namespaces/ns/configmaps/web", true),
                ("GET", "/api/v1/namespaces/ns/configmaps/other", false),
                ("GET", "/api/v1/namespaces/ns/configmaps", false), // list: no name
                ("GET", "/api/v1/namespaces/ns/configmaps?watch=1", false),
                ("POST", "/api/v1/namespaces/ns/configmaps", false), // create: no name
                ("DELETE", "/api/v1/namespaces/ns/configmaps", false), // deletecollection
                (
                    "GET",
                    "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Dweb",
                    true,
                ),
                (
                    "GET",
                    "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name=web&watch=1",
                    true,
                ),
                (
                    "GET",
                    "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Dother",
                    false,
                ),
                // More requirements only narrow the list further (kube-apiserver reads the name).
                (
                    "GET",
                    "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name%3Dweb,x%3Dy",
                    true,
                ),
                (
                    "GET",
                    "/api/v1/namespaces/ns/configmaps?fieldSelector=metadata.name!%3Dweb",
                    false,
                ),
                ("GET", "/api/v1/namespaces/other/configmaps/web", false),
            ],
        ),
        (
            "verbs: only those listed",
            rule(&["list", "watch"], &[""], &["pods"]),
            vec![
                ("GET", "/api/v1/namespaces/ns/pods", true),
                ("GET", "/api/v1/namespaces/ns/pods?watch=1", true),
                ("GET", "/api/v1/watch/namespaces/ns/pods", true),
                ("GET", "/api/v1/namespaces/ns/pods/p", false),
                ("POST", "/api/v1/namespaces/ns/pods", false),
                ("PATCH", "/api/v1/namespaces/ns/pods/p", false),
                ("DELETE", "/api/v1/namespaces/ns/pods", false),
            ],
        ),
        (
            "verb *: every verb",
            rule(&["*"], &[""], &["pods"]),
            vec![
                ("DELETE", "/api/v1/namespaces/ns/pods", true),
                ("PATCH", "/api/v1/namespaces/ns/pods/p", true),
                ("POST", "/api/v1/namespaces/ns/pods", true),
                ("POST", "/api/v1/namespaces/ns/pods/p/exec", false),
            ],
        ),
        (
            "api groups: core is \"\", others by name",
            rule(&["get"], &["apps"], &["deployments"]),
            vec![
                ("GET", "/apis/apps/v1/namespaces/ns/deployments/d", true),
                (
                    "GET",
                    "/apis/extensions/v1beta1/namespaces/ns/deployments/d",
                    false,
                ),
                ("GET", "/api/v1/namespaces/ns/deployments/d", false),
            ],
        ),
        (
            "non-resource URLs: exact, or a prefix with a trailing *",
            urls(&["get"], &["/metrics", "/logs/*"]),
            vec![
                ("GET", "/metrics", true),
                ("GET", "/logs/kube-apiserver.log", true),
                ("GET", "/logs/", true),
                ("GET", "/logs", false),
                ("GET", "/metrics/extra", false),
                ("POST", "/metrics", false),
                ("HEAD", "/metrics", false),
                ("GET", "/api/v1/namespaces/ns/pods", false), // resource request
                ("GET", "/version", false),
            ],
        ),
        (
            "non-resource URL *: every path, by the verbs listed",
            urls(&["get", "head"], &["*"]),
            vec![
                ("GET", "/anything/at/all", true),
                ("HEAD", "/healthz", true),
                ("POST", "/anything", false),
                ("GET", "/api/v1/pods", false),
            ],
        ),
    ]
}

#[test]
fn rules_allow_what_they_say_and_nothing_more() {
    let mut failures = Vec::new();
    for (why, rule, cases) in table() {
        assert_eq!(rule.validate(), Ok(()), "{why}: the rule is valid");
        for (method, target, want) in cases {
            let info = info(method, target);
            let got = rule.allows(&Attributes::from(&info));
            if got != want {
                failures.push(format!("{why}: {method} {target}: want {want}, got {got}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn namespace_applicability_for_rules_reviews() {
    let everywhere = rule(&["get"], &[""], &["pods"]);
    let star = in_namespaces(rule(&["get"], &[""], &["pods"]), &["*"]);
    let team = in_namespaces(rule(&["get"], &[""], &["pods"]), &["team"]);
    let non_resource = urls(&["get"], &["/metrics"]);
    for (r, ns, want) in [
        (&everywhere, "x", true),
        (&everywhere, "", true),
        (&star, "x", true),
        (&star, "", true),
        (&team, "team", true),
        (&team, "x", false),
        (&team, "", false),
        (&non_resource, "x", true),
        (&non_resource, "", true),
    ] {
        assert_eq!(r.applies_in_namespace(ns), want, "{r:?} in {ns:?}");
    }
}
