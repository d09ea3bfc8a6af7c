//! Who may reach which cluster, seen from clients: tenants isolated from each other on the
//! forward path and the cache path (watches included), namespace and resource-name grants,
//! subresources, `kubectl auth can-i`, tokens bound to one cluster without the path prefix,
//! every kind of bad token, revocation. simulator → agent → hub on loopback, real TLS, the
//! hub's access data a static file written by the test kit.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::time::Duration;

use kubehub_access::{Line, Record};
use kubehub_testkit::stack::{
    self as common, cluster, everything, grant, mint, rule, tenant, user, Reply, Stack,
    StackOptions, CLUSTER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SYNC: Duration = Duration::from_secs(20);
const JSON: &str = "Content-Type: application/json";
const PATCH: &str = "Content-Type: application/merge-patch+json";

fn stack(access: Vec<Record>) -> Stack {
    let s = common::start_opts(StackOptions {
        access: Some(access),
        ..StackOptions::default()
    });
    s.wait_synced("", "pods", SYNC);
    s.wait_synced("", "configmaps", SYNC);
    s
}

/// A namespace of the simulated cluster with pods, and one of its pods (seeding is
/// deterministic: every stack has it).
fn a_pod() -> (String, String) {
    let c = kubehub_sim::Cluster::new("probe", Default::default());
    kubehub_sim::seed(&c, &kubehub_sim::SeedSpec::default()).unwrap();
    let ty = c.type_index("", "v1", "pods").unwrap();
    c.keys(ty)
        .into_iter()
        .find(|(ns, _)| !ns.starts_with("kube-"))
        .expect("a seeded pod outside the system namespaces")
}

/// Requests the edge served whose line contains `marker`.
fn edge_saw(s: &Stack, marker: &str) -> Vec<String> {
    s.sim_log
        .lines()
        .into_iter()
        .filter(|l| l.contains(marker))
        .collect()
}

/// Opens a watch on a raw connection and reads its response head: (status, head).
fn open_watch(
    s: &Stack,
    token: &str,
    target: &str,
) -> (
    u16,
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    s.rt.block_on(async {
        let mut c = s.user_connection().await;
        let req =
            format!("GET {target} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {token}\r\n\r\n");
        c.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), c.read(&mut buf))
                .await
                .expect("a response head within 20 s")
                .unwrap();
            assert!(
                n > 0,
                "closed before a head: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&raw).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap();
        (status, head, c)
    })
}

fn assert_status(r: &Reply, code: u16, what: &str) {
    assert_eq!(
        r.status,
        code,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// Tenant B owns the stack's cluster; tenant A's alice holds a token naming it and a grant
/// of everything whose selector names it too. None of it reaches the cluster: every verb,
/// through the forward path and the cache path (watches included), is "not found", exactly as
/// for a cluster that does not exist; meanwhile bob (tenant B) is served from the cache.
#[test]
fn tenants_are_isolated_on_every_path() {
    let (alice, alice_token) = mint("alice", "tenant-a", &["edge-a", CLUSTER], 0);
    let (bob, bob_token) = mint("bob", "tenant-b", &[CLUSTER], 0);
    let s = stack(vec![
        tenant("tenant-a"),
        tenant("tenant-b"),
        user("alice", "tenant-a", &[]),
        user("bob", "tenant-b", &[]),
        cluster("edge-a", "tenant-a"),
        cluster(CLUSTER, "tenant-b"),
        grant(
            "sneaky",
            "tenant-a",
            "alice",
            &["edge-a", CLUSTER],
            everything(),
        ),
        grant("bob-admin", "tenant-b", "bob", &[CLUSTER], everything()),
        alice_token,
        bob_token,
    ]);
    let (ns, pod) = a_pod();
    let p = format!("/clusters/{CLUSTER}");
    // bob's reads are answered by the cache: the paths alice tries below are the cache's.
    let cached = [
        format!("{p}/api/v1/namespaces/default/configmaps?resourceVersion=0"),
        format!("{p}/api/v1/namespaces/default/configmaps/kube-root-ca.crt?resourceVersion=0"),
        format!("{p}/api/v1/pods?resourceVersion=0"),
    ];
    for path in &cached {
        let r = s.request_as(Some(&bob), "GET", path, &[], b"");
        assert_status(&r, 200, path);
        assert_eq!(r.header("x-kubehub-cache"), Some("hit"), "{path}");
    }
    let (code, head, _bobs_watch) = open_watch(
        &s,
        &bob,
        &format!("{p}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"),
    );
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-kubehub-cache: hit"),
        "{head}"
    );

    s.sim_log.clear();
    let not_found = format!("clusters \\\"{CLUSTER}\\\" not found");
    let attempts: Vec<(&str, String, &str, &str)> = vec![
        ("GET", cached[0].clone(), "", ""),
        ("GET", cached[1].clone(), "", ""),
        ("GET", cached[2].clone(), "", ""),
        (
            "GET",
            format!("{p}/api/v1/namespaces/default/configmaps"),
            "",
            "",
        ),
        (
            "GET",
            format!("{p}/api/v1/namespaces/{ns}/pods/{pod}/log"),
            "",
            "",
        ),
        ("GET", format!("{p}/api/v1/secrets"), "", ""),
        ("GET", format!("{p}/version"), "", ""),
        (
            "POST",
            format!("{p}/api/v1/namespaces/default/configmaps"),
            JSON,
            r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"alice-was-here"}}"#,
        ),
        (
            "PATCH",
            format!("{p}/api/v1/namespaces/default/configmaps/kube-root-ca.crt"),
            PATCH,
            r#"{"metadata":{"labels":{"alice":"was-here"}}}"#,
        ),
        (
            "DELETE",
            format!("{p}/api/v1/namespaces/default/configmaps/kube-root-ca.crt"),
            "",
            "",
        ),
        (
            "POST",
            format!("{p}/api/v1/namespaces/{ns}/pods/{pod}/exec?command=ls&stdout=true"),
            "",
            "",
        ),
        (
            "POST",
            format!("{p}/api/v1/namespaces/{ns}/pods/{pod}/portforward?ports=80"),
            "",
            "",
        ),
        (
            "POST",
            format!("{p}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"),
            JSON,
            r#"{"kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"verb":"get","resource":"pods"}}}"#,
        ),
    ];
    for (method, path, ctype, body) in &attempts {
        let headers: Vec<&str> = if ctype.is_empty() {
            vec![]
        } else {
            vec![*ctype]
        };
        let r = s.request_as(Some(&alice), method, path, &headers, body.as_bytes());
        assert_status(&r, 404, &format!("alice {method} {path}"));
        let text = String::from_utf8_lossy(&r.body);
        assert!(text.contains(&not_found), "{method} {path}: {text}");
        assert_eq!(r.header("x-kubehub-cache"), None, "{method} {path}");
    }
    let (code, head, _) = open_watch(
        &s,
        &alice,
        &format!("{p}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=0"),
    );
    assert_eq!(code, 404, "alice's watch: {head}");
    let (code, head, _) = open_watch(&s, &alice, &format!("{p}/api/v1/pods?watch=1"));
    assert_eq!(code, 404, "alice's watch: {head}");
    // Exactly the answer for a cluster that does not exist: nothing to learn from it.
    let r = s.request_as(
        Some(&alice),
        "GET",
        "/clusters/edge-zz/api/v1/pods",
        &[],
        b"",
    );
    assert_status(&r, 404, "a cluster nobody has");
    // kubectl says so too.
    s.kubeconfig_for("alice", &alice, Some(CLUSTER));
    let out = s
        .kubectl_as("alice")
        .output(&["get", "configmaps", "-n", "default"]);
    assert!(!out.status.success());
    // Nothing of it reached the edge, and nothing changed there.
    let leaked: Vec<String> = s
        .sim_log
        .lines()
        .into_iter()
        .filter(|l| !l.contains("watch=") && !l.contains("limit=1"))
        .collect();
    assert!(
        leaked.is_empty(),
        "alice's requests reached the edge: {leaked:?}"
    );
    let cm = s.cluster.type_index("", "v1", "configmaps").unwrap();
    assert!(s
        .cluster
        .get(cm, Some("default"), "alice-was-here")
        .is_err());
    assert!(s
        .cluster
        .get(cm, Some("default"), "kube-root-ca.crt")
        .is_ok());
    // And bob still works through the forward path.
    let r = s.request_as(Some(&bob), "GET", &format!("{p}/version"), &[], b"");
    assert_status(&r, 200, "bob /version");
}

/// A grant in one namespace reaches only that namespace, on the cache path and the forward
/// path; resource names limit to those names; `get` on pods is not `pods/log` nor exec.
#[test]
fn grants_limit_namespace_names_and_subresources() {
    let (carol, carol_token) = mint("carol", "tenant-a", &[CLUSTER], 0);
    let (ns, pod) = a_pod();
    let s = stack(vec![
        tenant("tenant-a"),
        user("carol", "tenant-a", &[]),
        cluster(CLUSTER, "tenant-a"),
        grant(
            "carol-ns",
            "tenant-a",
            "carol",
            &[CLUSTER],
            vec![
                rule(&[""], &["pods"], &["get", "list", "watch"], &[&ns], &[]),
                rule(
                    &[""],
                    &["configmaps"],
                    &["get", "list", "watch"],
                    &[],
                    &["kube-root-ca.crt"],
                ),
            ],
        ),
        carol_token,
    ]);
    let p = format!("/clusters/{CLUSTER}");
    let get = |path: &str| s.request_as(Some(&carol), "GET", &format!("{p}{path}"), &[], b"");
    // Her namespace: from the cache.
    for path in [
        format!("/api/v1/namespaces/{ns}/pods?resourceVersion=0"),
        format!("/api/v1/namespaces/{ns}/pods/{pod}?resourceVersion=0"),
        format!("/api/v1/namespaces/{ns}/pods"),
    ] {
        let r = get(&path);
        assert_status(&r, 200, &path);
        assert_eq!(r.header("x-kubehub-cache"), Some("hit"), "{path}");
    }
    let (code, head, _w) = open_watch(
        &s,
        &carol,
        &format!("{p}/api/v1/namespaces/{ns}/pods?watch=1&resourceVersion=0"),
    );
    assert_eq!(code, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-kubehub-cache: hit"),
        "{head}"
    );
    // Anywhere else: 403, cache or not, watch or not.
    s.sim_log.clear();
    for path in [
        "/api/v1/pods?resourceVersion=0".to_owned(),
        "/api/v1/pods".to_owned(),
        "/api/v1/namespaces/kube-system/pods?resourceVersion=0".to_owned(),
        format!("/api/v1/namespaces/{ns}/services"),
        format!("/api/v1/namespaces/{ns}/pods/{pod}/log"),
    ] {
        let r = get(&path);
        assert_status(&r, 403, &path);
        let msg = r.json()["message"].as_str().unwrap().to_owned();
        assert!(msg.contains("User \"carol\" cannot"), "{msg}");
        assert_eq!(r.header("x-kubehub-cache"), None, "{path}");
    }
    for path in [
        format!("{p}/api/v1/pods?watch=1"),
        format!("{p}/api/v1/namespaces/default/pods?watch=1&resourceVersion=0"),
    ] {
        let (code, head, _) = open_watch(&s, &carol, &path);
        assert_eq!(code, 403, "{path}: {head}");
    }
    for sub in [
        "exec?command=ls&stdout=true",
        "portforward?ports=80",
        "attach?stdout=true",
    ] {
        let path = format!("{p}/api/v1/namespaces/{ns}/pods/{pod}/{sub}");
        let r = s.request_as(Some(&carol), "POST", &path, &[], b"");
        assert_status(&r, 403, &path);
    }
    let r = s.request_as(
        Some(&carol),
        "DELETE",
        &format!("{p}/api/v1/namespaces/{ns}/pods/{pod}"),
        &[],
        b"",
    );
    assert_status(&r, 403, "delete");
    // Resource names: that config map, in any namespace, and nothing else; a list only when
    // it names it.
    let r = get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt?resourceVersion=0");
    assert_status(&r, 200, "the named config map");
    assert_eq!(r.header("x-kubehub-cache"), Some("hit"));
    let r = get("/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dkube-root-ca.crt&resourceVersion=0");
    assert_status(&r, 200, "a list naming it");
    let items = r.json()["items"].as_array().unwrap().len();
    assert_eq!(items, 1);
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    let (other_ns, other) = s
        .cluster
        .keys(ty)
        .into_iter()
        .find(|(_, n)| n != "kube-root-ca.crt")
        .unwrap();
    let r = get(&format!("/api/v1/namespaces/{other_ns}/configmaps/{other}"));
    assert_status(&r, 403, "another config map");
    let r = get("/api/v1/namespaces/default/configmaps?resourceVersion=0");
    assert_status(&r, 403, "a list of every name");
    let denied: Vec<String> = s
        .sim_log
        .lines()
        .into_iter()
        .filter(|l| !l.contains("watch=") && !l.contains("limit=1"))
        .collect();
    assert!(
        denied.is_empty(),
        "denied requests reached the edge: {denied:?}"
    );
    // kubectl reads her namespace (discovery is allowed to anyone with a grant).
    s.kubeconfig_for("carol", &carol, Some(CLUSTER));
    let k = s.kubectl_as("carol");
    assert!(k.ok(&["get", "pods", "-n", &ns]).contains(&pod));
    let out = k.output(&["get", "pods", "-A"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Error from server (Forbidden): pods is forbidden: User \"carol\" cannot list resource \"pods\" in API group \"\" at the cluster scope"),
        "{err}"
    );
    let out = k.output(&["logs", "-n", &ns, &pod]);
    assert!(!out.status.success(), "pods/log is not pods");
}

/// `kubectl auth can-i` answers what KubeHub decides: "no" (with KubeHub's reason) without
/// asking the edge; "yes" only after the edge agreed (the simulator has no RBAC).
#[test]
fn can_i_tells_the_truth() {
    let (dave, dave_token) = mint("dave", "tenant-a", &[CLUSTER], 0);
    let s = stack(vec![
        tenant("tenant-a"),
        user("dave", "tenant-a", &["readers"]),
        cluster(CLUSTER, "tenant-a"),
        grant(
            "dave-default",
            "tenant-a",
            "dave",
            &[CLUSTER],
            vec![
                rule(
                    &[""],
                    &["pods", "pods/log"],
                    &["get", "list", "watch"],
                    &["default"],
                    &[],
                ),
                rule(&["apps"], &["deployments"], &["*"], &["default"], &[]),
                rule(&[""], &["configmaps"], &["get"], &[], &["kube-root-ca.crt"]),
            ],
        ),
        dave_token,
    ]);
    s.kubeconfig_for("dave", &dave, Some(CLUSTER));
    let k = s.kubectl_as("dave");
    let can_i = |args: &[&str]| {
        let mut all = vec!["auth", "can-i"];
        all.extend_from_slice(args);
        let out = k.output(&all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let yes: &[&[&str]] = &[
        &["list", "pods", "-n", "default"],
        &["get", "pods/log", "-n", "default"],
        &["delete", "deployments.apps", "-n", "default"],
        &["get", "configmaps/kube-root-ca.crt", "-n", "kube-system"],
        &["get", "/version"],
    ];
    for args in yes {
        s.sim_log.clear();
        let (ok, out, err) = can_i(args);
        assert!(ok && out == "yes", "{args:?}: {out} {err}");
        assert_eq!(
            edge_saw(&s, "selfsubjectaccessreviews").len(),
            1,
            "{args:?}: a yes is the edge's too"
        );
    }
    let no: &[&[&str]] = &[
        &["list", "pods", "-A"],
        &["list", "pods", "-n", "kube-system"],
        &["create", "pods", "-n", "default"],
        &["create", "pods", "--subresource=exec", "-n", "default"],
        &["get", "configmaps/other", "-n", "default"],
        &["list", "secrets", "-n", "default"],
        &["get", "/metrics"],
    ];
    for args in no {
        s.sim_log.clear();
        let (ok, out, err) = can_i(args);
        assert!(
            !ok && out.starts_with("no - KubeHub: "),
            "{args:?}: {out} {err}"
        );
        assert!(
            edge_saw(&s, "selfsubjectaccessreviews").is_empty(),
            "{args:?}: a no never reaches the edge"
        );
    }
    // --list: the hub's rules for the namespace.
    let (ok, out, err) = can_i(&["--list", "-n", "default"]);
    assert!(ok, "{out} {err}");
    let line = |resource: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(resource))
            .unwrap_or_else(|| panic!("{resource} in {out}"))
            .to_owned()
    };
    assert!(line("pods").contains("[get list watch]"), "{out}");
    assert!(line("deployments.apps").contains("[*]"), "{out}");
    assert!(line("configmaps").contains("[kube-root-ca.crt]"), "{out}");
    assert!(!out.contains("secrets"), "{out}");
    let (_, out, _) = can_i(&["--list", "-n", "kube-system"]);
    assert!(!out.contains("pods "), "{out}");
    // JSON reviews (client-go with JSON), answered the same way.
    let ssar = format!("/clusters/{CLUSTER}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
    let r = s.request_as(
        Some(&dave),
        "POST",
        &ssar,
        &[JSON],
        br#"{"apiVersion":"authorization.k8s.io/v1","kind":"SelfSubjectAccessReview","spec":{"resourceAttributes":{"verb":"list","resource":"secrets","namespace":"default"}}}"#,
    );
    assert_status(&r, 201, "a JSON review");
    let v = r.json();
    assert_eq!(v["status"]["allowed"], false);
    assert!(v["status"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("KubeHub: "));
    // A review beyond 64 KiB is not read.
    let big = format!(
        r#"{{"kind":"SelfSubjectAccessReview","metadata":{{"annotations":{{"pad":"{}"}}}},"spec":{{}}}}"#,
        "x".repeat(70_000)
    );
    let r = s.request_as(Some(&dave), "POST", &ssar, &[JSON], big.as_bytes());
    assert_status(&r, 413, "a huge review");
    // Malformed: kube-apiserver's 422.
    let r = s.request_as(Some(&dave), "POST", &ssar, &[JSON], br#"{"spec":{}}"#);
    assert_status(&r, 422, "a review asking nothing");
}

/// A token bound to one cluster works without the `/clusters/{id}` prefix (kubeconfig server
/// = the hub's root); one bound to several is told to use the prefix.
#[test]
fn a_single_cluster_token_needs_no_prefix() {
    let (erin, erin_token) = mint("erin", common::TENANT, &[CLUSTER], 0);
    let mut access = common::default_access();
    access.push(user("erin", common::TENANT, &[]));
    access.push(grant(
        "erin",
        common::TENANT,
        "erin",
        &[CLUSTER],
        everything(),
    ));
    access.push(erin_token);
    let s = stack(access);
    s.kubeconfig_for("erin", &erin, None);
    let k = s.kubectl_as("erin");
    let v: serde_json::Value = serde_json::from_str(&k.ok(&["get", "--raw", "/version"])).unwrap();
    assert_eq!(v["minor"], "32");
    assert!(k
        .ok(&["get", "configmaps", "-n", "kube-system"])
        .contains("kube-root-ca.crt"));
    let r = s.request_as(
        Some(&erin),
        "GET",
        "/api/v1/namespaces/default/configmaps?resourceVersion=0",
        &[],
        b"",
    );
    assert_status(&r, 200, "unprefixed list");
    assert_eq!(r.header("x-kubehub-cache"), Some("hit"));
    // The prefix still works for it.
    let r = s.request_as(
        Some(&erin),
        "GET",
        &format!("/clusters/{CLUSTER}/version"),
        &[],
        b"",
    );
    assert_status(&r, 200, "prefixed");
    // alice's token is for two clusters.
    let r = s.request_as(Some(common::TOKEN), "GET", "/version", &[], b"");
    assert_status(&r, 404, "unprefixed with a two-cluster token");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("/clusters/<id>/") && msg.contains("edge-1, edge-silent"),
        "{msg}"
    );
}

/// Every bad token is a 401 `Status` saying what is wrong with it; a revoked token stops at
/// once for new requests.
#[test]
fn bad_tokens_are_told_why_and_revocation_is_immediate() {
    let (frank, frank_token) = mint("frank", common::TENANT, &[CLUSTER], 0);
    let (old, old_token) = mint("frank", common::TENANT, &[CLUSTER], 2);
    let mut access = common::default_access();
    access.push(user("frank", common::TENANT, &[]));
    access.push(grant(
        "frank",
        common::TENANT,
        "frank",
        &[CLUSTER],
        everything(),
    ));
    access.push(frank_token.clone());
    access.push(old_token);
    let s = stack(access);
    let path = format!("/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps");
    let unauthorized = |token: Option<&str>, want: &str| {
        let r = s.request_as(token, "GET", &path, &[], b"");
        assert_status(&r, 401, want);
        let v = r.json();
        assert_eq!(
            (v["kind"].as_str(), v["reason"].as_str()),
            (Some("Status"), Some("Unauthorized"))
        );
        let msg = v["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(want), "{token:?}: {msg}");
    };
    unauthorized(None, "no credentials");
    unauthorized(Some(""), "Bearer <token>");
    unauthorized(Some("alice-token"), "not a KubeHub token");
    unauthorized(Some("eyJhbGciOiJSUzI1NiJ9.e30.sig"), "not a KubeHub token");
    unauthorized(Some(&frank[..frank.len() - 5]), "not a KubeHub token");
    let last = frank.chars().last().unwrap();
    let forged = format!(
        "{}{}",
        &frank[..frank.len() - 1],
        if last == 'A' { 'B' } else { 'A' }
    );
    unauthorized(Some(&forged), "unknown or has been revoked");
    // Another token's id with frank's secret.
    let swapped = format!("khT.{}{}", common::TOKEN_ID, &frank[16..]);
    unauthorized(Some(&swapped), "unknown or has been revoked");
    unauthorized(Some(&old), "expired at 1970-01-01T00:00:02Z");
    let r = s.request_as(
        None,
        "GET",
        &path,
        &["Authorization: Basic ZnJhbms6cHc="],
        b"",
    );
    assert_status(&r, 401, "basic auth");
    s.kubeconfig_for("old", &old, Some(CLUSTER));
    let out = s.kubectl_as("old").output(&["get", "pods"]);
    assert!(!out.status.success());

    // Revocation: frank's open watch, then his token is deleted (as meta's feed deletes it).
    let r = s.request_as(Some(&frank), "GET", &path, &[], b"");
    assert_status(&r, 200, "frank before");
    let (code, _, mut watch) = open_watch(&s, &frank, &format!("{path}?watch=1&resourceVersion=0"));
    assert_eq!(code, 200);
    let Record::Token(t) = &frank_token else {
        unreachable!()
    };
    s.apply_access(&Line::Delete {
        revision: 2,
        key: format!("tokens/{}", t.id),
    });
    unauthorized(Some(&frank), "unknown or has been revoked");
    // A watch opened before ends too (`bans`: a revoked token's running requests end), as
    // when the server ends a watch: the terminating chunk, then the connection closes.
    let ended = s.rt.block_on(async {
        let mut got = Vec::new();
        let mut buf = [0u8; 16384];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, watch.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
                Ok(_) => break true,
                Err(_) => break false,
            }
        }
        .then_some(got)
    });
    let got = ended.expect("the revoked token's watch ends within 10 s");
    assert!(
        got.ends_with(b"0\r\n\r\n"),
        "a clean end: {}",
        String::from_utf8_lossy(&got)
    );
    // Removing a grant takes effect as fast: alice loses edge-1.
    s.apply_access(&Line::Delete {
        revision: 3,
        key: format!("grants/{}/alice-admin", common::TENANT),
    });
    let r = s.hub_get(
        "/api/v1/namespaces/default/configmaps?resourceVersion=0",
        &[],
    );
    assert_status(&r, 403, "alice without her grant");
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .ends_with("no grant gives you access to this cluster"));
}

/// The admin listener: ready with a static file, saying which; metrics of the refusals.
#[test]
fn readiness_and_metrics_name_the_access_source() {
    let s = common::start(Default::default(), Default::default());
    let ready = s.curl_admin("/readyz?verbose");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(
        ready.contains("access: static file") && ready.contains("(revision 1)"),
        "{ready}"
    );
    let _ = s.request_as(Some("nope"), "GET", "/clusters/edge-1/api", &[], b"");
    let _ = s.request_as(Some(common::TOKEN), "GET", "/clusters/edge-9/api", &[], b"");
    let m = s.curl_admin("/metrics");
    for want in [
        "kubehub_hub_access_revision 1",
        "kubehub_hub_meta_connected 1",
        "kubehub_hub_unauthenticated_total{reason=\"malformed\"} 1",
        "kubehub_hub_denied_total{reason=\"not_found\"} 1",
    ] {
        assert!(m.contains(want), "{want} in {m}");
    }
}
