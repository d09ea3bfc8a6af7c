//! What operators see of the traffic through a hub: the audit log (real kubectl's create,
//! reads at the levels the policy gives them, an exec session, a sink that cannot keep up),
//! the per-tenant metrics (tenant, verb, resource, code, served-by, client kind) and the
//! `/traffic` summary.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kubehub_hub::config::AuditConfig;
use kubehub_testkit::kubectl::Transport;
use kubehub_testkit::stack::{self as common, pod, Stack, StackOptions};

fn audited(dir: &Path, rules: &str) -> AuditConfig {
    let path = dir.join("audit.log");
    serde_json::from_str(&format!(
        r#"{{"enabled": true, "sink": "file", "path": {path:?}, "rules": {rules}}}"#
    ))
    .unwrap()
}

fn stack(audit: AuditConfig) -> Stack {
    common::start_opts(StackOptions {
        audit,
        ..Default::default()
    })
}

/// The audit log's events so far.
fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The first event matching `f`, waiting for the writer thread (a guard, not a timing test).
fn wait_event(
    path: &Path,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(e) = events(path).into_iter().find(|e| f(e)) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no audit event {what} in:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample whose line starts with `name{` and contains every `labels`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_create_through_kubectl_is_audited_and_counted_per_tenant_and_client() {
    let dir = tempfile::tempdir().unwrap();
    // Reads default to None; configmap gets are logged at Metadata.
    let s = stack(audited(
        dir.path(),
        r#"[{"level": "Metadata", "verbs": ["get"], "resources": ["configmaps"]}]"#,
    ));
    let log = dir.path().join("audit.log");
    let out = s.kubectl(&[
        "create",
        "configmap",
        "audited",
        "-n",
        "default",
        "--from-literal=a=b",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let create = wait_event(&log, "for the create", |e| e["verb"] == "create");
    assert_eq!(create["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(create["kind"], "Event");
    assert_eq!(create["level"], "Metadata");
    assert_eq!(create["stage"], "ResponseComplete");
    assert_eq!(create["user"]["username"], common::USER);
    assert!(create["user"]["groups"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("devs")));
    // The stack's hub does not impersonate: the edge saw the agent's credentials.
    assert!(create.get("impersonatedUser").is_none());
    assert_eq!(create["objectRef"]["resource"], "configmaps");
    assert_eq!(create["objectRef"]["namespace"], "default");
    assert_eq!(create["objectRef"]["apiVersion"], "v1");
    assert_eq!(create["responseStatus"]["code"], 201);
    assert_eq!(create["sourceIPs"][0], "127.0.0.1");
    assert!(create["userAgent"]
        .as_str()
        .unwrap()
        .starts_with("kubectl/v1.32"));
    assert!(create["requestURI"]
        .as_str()
        .unwrap()
        .starts_with("/clusters/edge-1/api/v1/namespaces/default/configmaps"));
    let a = &create["annotations"];
    assert_eq!(a["kubehub.io/tenant"], common::TENANT);
    assert_eq!(a["kubehub.io/cluster"], common::CLUSTER);
    assert_eq!(a["kubehub.io/hub"], "hub-test");
    assert_eq!(a["kubehub.io/served-by"], "forward");
    assert!(
        create.get("requestObject").is_none(),
        "Metadata carries no body"
    );
    assert_eq!(create["auditID"].as_str().unwrap().len(), 36);
    for t in ["requestReceivedTimestamp", "stageTimestamp"] {
        let v = create[t].as_str().unwrap();
        assert!(v.ends_with('Z') && v.contains('.'), "{t}: {v}");
    }

    // The client's Audit-ID is honoured and returned; reads follow the policy.
    let r = s.hub_get(
        "/api/v1/namespaces/default/configmaps/audited",
        &["Audit-ID: read-at-metadata"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("audit-id"), Some("read-at-metadata"));
    let r = s.hub_get(
        "/api/v1/namespaces/default/pods",
        &["Audit-ID: read-at-none"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("audit-id"), Some("read-at-none"));
    // Refusals carry one too (made up when the client sent none).
    let r = s.hub_get_cluster("not-mine", "/api/v1/pods");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("audit-id").unwrap().len(), 36);
    let read = wait_event(&log, "for the configmap get", |e| {
        e["auditID"] == "read-at-metadata"
    });
    assert_eq!(read["verb"], "get");
    assert_eq!(read["objectRef"]["name"], "audited");
    assert_eq!(read["responseStatus"]["code"], 200);
    // The pod list (a read with no rule: level None) leaves no event: the events are written
    // in order, so once a later request's event is there, its would be too.
    let r = s.hub_get(
        "/api/v1/namespaces/default/configmaps/audited",
        &["Audit-ID: after-the-list"],
    );
    assert_eq!(r.status, 200);
    wait_event(&log, "of the later read", |e| {
        e["auditID"] == "after-the-list"
    });
    assert!(
        !events(&log).iter().any(|e| e["auditID"] == "read-at-none"),
        "a read at level None is not logged"
    );

    // Metrics: tenant × verb × resource × code × served_by, and the client kinds.
    let m = s.curl_admin("/metrics");
    let tenant = format!("tenant=\"{}\"", common::TENANT);
    assert!(
        sample(
            &m,
            "kubehub_hub_tenant_requests_total",
            &[
                &tenant,
                "verb=\"create\"",
                "resource=\"configmaps\"",
                "code=\"201\"",
                "served_by=\"forward\""
            ],
        ) == Some(1.0),
        "{m}"
    );
    assert!(sample(
        &m,
        "kubehub_hub_client_requests_total",
        &[&tenant, "client=\"kubectl/v1.32\""]
    )
    .is_some_and(|v| v >= 1.0));
    assert!(
        sample(
            &m,
            "kubehub_hub_client_requests_total",
            &[&tenant, "client=\"curl\""]
        )
        .is_some_and(|v| v >= 2.0),
        "another client kind is told apart"
    );
    assert!(sample(
        &m,
        "kubehub_hub_rejected_total",
        &[&tenant, "reason=\"not_found\""]
    )
    .is_some_and(|v| v >= 1.0));
    assert!(sample(
        &m,
        "kubehub_hub_cluster_requests_total",
        &["cluster=\"edge-1\"", "class=\"2xx\""]
    )
    .is_some_and(|v| v >= 3.0));
    assert!(sample(
        &m,
        "kubehub_hub_tenant_bytes_total",
        &[&tenant, "direction=\"out\""]
    )
    .is_some_and(|v| v > 0.0));
    assert!(
        sample(&m, "kubehub_audit_events_total", &[]).is_some_and(|v| v >= 2.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "kubehub_audit_events_dropped_total", &[]),
        Some(0.0)
    );

    // A read the cache answers says so.
    s.wait_synced("", "pods", Duration::from_secs(20));
    assert_eq!(
        s.hub_get("/api/v1/namespaces/default/pods", &[]).status,
        200
    );
    let m = s.curl_admin("/metrics");
    assert!(
        sample(
            &m,
            "kubehub_hub_tenant_requests_total",
            &[
                &tenant,
                "verb=\"list\"",
                "resource=\"pods\"",
                "served_by=\"cache\""
            ],
        )
        .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // /traffic: the tenant, and kubectl among its clients.
    let body = s.curl_admin("/traffic");
    let json: serde_json::Value =
        serde_json::from_str(body.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["hub"], "hub-test");
    assert_eq!(json["windowSeconds"], 60);
    let t = json["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tenant"] == common::TENANT)
        .unwrap_or_else(|| panic!("{json}"));
    assert!(t["requestsPerSecond"].as_f64().unwrap() > 0.0);
    assert!(t["errorsPerSecond"].as_f64().unwrap() > 0.0, "the 404");
    assert!(t["rejectedPerSecond"].as_f64().unwrap() > 0.0);
    assert!(t["bytesOutPerSecond"].as_f64().unwrap() > 0.0);
    let kubectl = json["clients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["client"] == "kubectl/v1.32")
        .unwrap_or_else(|| panic!("{json}"));
    assert_eq!(kubectl["tenant"], common::TENANT);
    assert_eq!(kubectl["source"], "127.0.0.1");
}

#[test]
fn an_exec_session_is_audited_when_it_starts_and_when_it_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = stack(audited(dir.path(), "[]"));
    let log = dir.path().join("audit.log");
    let p = pod(&s);
    let out = s.k().run_with_input(
        Transport::WebSocket,
        &p.exec_args(&[], &["sh", "-c", "exit 3"]),
        b"",
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let is_exec = |e: &serde_json::Value| e["objectRef"]["subresource"] == "exec";
    let started = wait_event(&log, "ResponseStarted of the exec", |e| {
        is_exec(e) && e["stage"] == "ResponseStarted"
    });
    let done = wait_event(&log, "ResponseComplete of the exec", |e| {
        is_exec(e) && e["stage"] == "ResponseComplete"
    });
    assert_eq!(
        started["auditID"], done["auditID"],
        "one request, two stages"
    );
    assert_eq!(done["responseStatus"]["code"], 101);
    assert_eq!(done["objectRef"]["resource"], "pods");
    assert_eq!(done["objectRef"]["name"], p.name.as_str());
    assert_eq!(done["objectRef"]["namespace"], p.ns.as_str());
    assert_eq!(done["user"]["username"], common::USER);
    let a = &done["annotations"];
    assert_eq!(a["kubehub.io/session-end"], "closed");
    assert!(
        a["kubehub.io/exit-status"].as_str().unwrap().contains('3'),
        "{done}"
    );
    assert!(
        a["kubehub.io/bytes-to-client"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert!(done["requestURI"]
        .as_str()
        .unwrap()
        .contains("command=exit"));
}

/// Makes a FIFO nobody reads: opening it for writing blocks, as a dead log volume would.
fn fifo(dir: &Path) -> PathBuf {
    let path = dir.join("audit.log");
    let ok = std::process::Command::new("mkfifo")
        .arg(&path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo");
    path
}

#[test]
fn a_sink_that_cannot_keep_up_drops_and_counts_while_requests_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = fifo(dir.path());
    let mut cfg: AuditConfig = serde_json::from_str(&format!(
        r#"{{"enabled": true, "path": {path:?}, "queue": 4, "read_level": "Metadata"}}"#
    ))
    .unwrap();
    cfg.max_backups = 1;
    let s = stack(cfg);
    let n = 30;
    for _ in 0..n {
        let r = s.hub_get("/api/v1/namespaces/default/pods", &[]);
        assert_eq!(
            r.status, 200,
            "requests are answered while the sink is stuck"
        );
    }
    let m = s.curl_admin("/metrics");
    let dropped = sample(&m, "kubehub_audit_events_dropped_total", &[]).unwrap();
    // The writer holds one event (blocked opening the FIFO) and the queue four.
    assert!(dropped >= (n - 5) as f64, "dropped {dropped} of {n}:\n{m}");
    assert_eq!(sample(&m, "kubehub_audit_events_total", &[]), Some(0.0));
}
