//! The Grafana dashboard (`ops/grafana/kubehub.json`) and the Prometheus alerting rules
//! (`ops/prometheus/alerts.yaml`) stay honest: both parse, the alerts the operators rely on
//! are there, and every metric they name exists on a live hub's (or agent's) `/metrics`.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use kubehub_testkit::stack::{self as common, StackOptions};
use serde::Deserialize;

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct Dashboard {
    title: String,
    uid: String,
    panels: Vec<Panel>,
    templating: Templating,
}

#[derive(Debug, Deserialize)]
struct Templating {
    list: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Panel {
    title: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    expr: String,
}

/// The `kubehub_…` metric names in a PromQL expression.
fn names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("kubehub_") {
        let start = i + at;
        let before_ok =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if before_ok {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// The metric families an exposition declares (`# TYPE <name> …`).
fn families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Whether `name` (a sample name: `_total`, `_bucket`, … suffixes allowed) is of a family.
fn exists(families: &BTreeSet<String>, name: &str) -> bool {
    if families.contains(name) {
        return true;
    }
    ["_total", "_bucket", "_sum", "_count", "_created", "_info"]
        .iter()
        .any(|s| {
            name.strip_suffix(s)
                .is_some_and(|base| families.contains(base))
        })
}

#[test]
fn dashboard_and_alerts_parse_and_name_only_metrics_that_exist() {
    let rules_text = std::fs::read(repo_file("ops/prometheus/alerts.yaml")).unwrap();
    let rules_json = kubehub_sim::apply::parse_body(&rules_text)
        .unwrap_or_else(|s| panic!("alerts.yaml is not YAML: {}", s.message));
    let rules: RuleFile = serde_json::from_value(rules_json).unwrap();
    let alerts: Vec<&AlertRule> = rules.groups.iter().flat_map(|g| &g.rules).collect();
    assert!(rules.groups.iter().all(|g| !g.name.is_empty()));
    for a in &alerts {
        assert!(
            a.labels.contains_key("severity"),
            "{}: no severity",
            a.alert
        );
        assert!(
            a.annotations.contains_key("summary"),
            "{}: no summary",
            a.alert
        );
        assert!(a
            .for_
            .as_deref()
            .is_none_or(|f| f.ends_with('m') || f.ends_with('s')));
    }
    // The alerts issue #14 asks for.
    for want in [
        "HubDown",
        "Flapping",
        "SyncLag",
        "RejectionsRising",
        "CertificateExpiresSoon",
        "MemoryNearLimit",
    ] {
        assert!(
            alerts.iter().any(|a| a.alert.contains(want)),
            "no alert for {want}"
        );
    }

    let dash: Dashboard =
        serde_json::from_slice(&std::fs::read(repo_file("ops/grafana/kubehub.json")).unwrap())
            .unwrap();
    assert_eq!(dash.title, "KubeHub");
    assert!(!dash.uid.is_empty());
    let graphs: Vec<&Panel> = dash.panels.iter().filter(|p| p.kind != "row").collect();
    assert!(graphs.len() >= 20, "{} panels", graphs.len());
    assert!(graphs
        .iter()
        .all(|p| !p.targets.is_empty() && !p.title.is_empty()));

    let mut referenced: BTreeMap<String, String> = BTreeMap::new();
    for a in &alerts {
        for n in names_in(&a.expr) {
            referenced.insert(n, format!("alert {}", a.alert));
        }
    }
    for p in &graphs {
        for t in &p.targets {
            for n in names_in(&t.expr) {
                referenced.insert(n, format!("panel {:?}", p.title));
            }
        }
    }
    for v in &dash.templating.list {
        for n in names_in(v["query"].as_str().unwrap_or_default()) {
            referenced.insert(n, format!("variable {}", v["name"]));
        }
    }
    assert!(referenced.len() >= 20, "{referenced:?}");

    // A live hub and its agent: what they expose.
    let s = common::start_opts(StackOptions::default());
    s.wait_connected(true, std::time::Duration::from_secs(20));
    let hub = s.curl_admin("/metrics");
    let agent = s.agent.as_ref().unwrap().metrics.encode();
    // Each family is declared once: Prometheus refuses a scrape that declares one twice.
    for text in [&hub, &agent] {
        let mut seen = BTreeSet::new();
        for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let name = l.split_whitespace().next().unwrap_or_default();
            assert!(seen.insert(name.to_owned()), "{name} declared twice");
        }
    }
    let mut known = families(&hub);
    known.extend(families(&agent));
    let missing: Vec<String> = referenced
        .iter()
        .filter(|(n, _)| !exists(&known, n))
        .map(|(n, w)| format!("{n} (in {w})"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics named in ops/ that no hub or agent exposes: {missing:?}"
    );
    // The check can fail: a name that does not exist is caught.
    assert!(!exists(&known, "kubehub_hub_no_such_metric_total"));
    assert!(exists(&known, "kubehub_hub_tenant_requests_total"));
    assert!(exists(
        &known,
        "kubehub_hub_request_duration_seconds_bucket"
    ));
}
