//! Every scenario of `kubehub-perf`, run as a user runs it (the binary, `--smoke`: small N,
//! seconds), so that the harness never rots: each must exit 0 and leave its report (JSON,
//! Markdown, plots) with the figures its users read. No timing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn kubehub() -> PathBuf {
    kubehub_perf::stack::find_kubehub().unwrap()
}

/// Runs `kubehub-perf SCENARIO --smoke ARGS --out DIR`; returns report.json.
fn run(scenario: &str, args: &[&str]) -> (Value, PathBuf) {
    let out = tempfile::tempdir().unwrap().keep().join(scenario);
    let o = Command::new(env!("CARGO_BIN_EXE_kubehub-perf"))
        .arg(scenario)
        .arg("--smoke")
        .arg("--kubehub")
        .arg(kubehub())
        .arg("--out")
        .arg(&out)
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "kubehub-perf {scenario} failed ({}):\n{}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let json = std::fs::read(out.join("report.json")).unwrap();
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.starts_with(&format!("# kubehub-perf {scenario}")),
        "{md}"
    );
    // The Markdown the command prints is the summary it wrote.
    assert!(String::from_utf8_lossy(&o.stdout).contains(&format!("# kubehub-perf {scenario}")));
    (serde_json::from_slice(&json).unwrap(), out)
}

fn pngs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    v.sort();
    v
}

fn figure(r: &Value, target: &str, name: &str) -> f64 {
    r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["target"] == target)
        .find_map(|x| x["figures"][name].as_f64())
        .unwrap_or_else(|| panic!("no figure {name:?} for {target} in {r:#}"))
}

/// Targets measured, with the successful requests of their first operation.
fn targets(r: &Value) -> Vec<(String, u64)> {
    r["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["target"].as_str().unwrap().to_owned(),
                x["ops"][0]["ok"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[test]
fn idle_reports_memory_per_agent_and_its_curve() {
    let (r, out) = run("idle", &["--agents", "8"]);
    assert_eq!(figure(&r, "kubehub", "agents"), 8.0);
    assert!(figure(&r, "kubehub", "hub KiB per agent") > 0.0);
    assert!(figure(&r, "kubehub", "fleet KiB per agent") > 0.0);
    assert_eq!(pngs(&out), ["rss-per-agent.png"]);
}

#[test]
fn reconnect_brings_every_agent_back_after_a_hub_kill() {
    let (r, out) = run("reconnect", &["--agents", "8"]);
    let back = figure(&r, "kubehub", "seconds until every agent was back");
    let synced = figure(&r, "kubehub", "seconds until every cache was synced");
    assert!(back > 0.0 && synced >= back, "{r:#}");
    assert_eq!(pngs(&out), ["reconnect.png"]);
}

#[test]
fn mixed_load_reads_and_writes_over_the_fleet() {
    let (r, out) = run("mixed", &["--agents", "6"]);
    let ops: Vec<String> = r["runs"][0]["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    for op in ["get", "list", "write"] {
        assert!(ops.iter().any(|o| o == op), "{op} missing from {ops:?}");
    }
    let hub = &r["runs"][0]["procs"][0];
    assert_eq!(hub["name"], "hub");
    assert!(hub["cpu_us_per_request"].as_f64().unwrap() > 0.0);
    assert!(pngs(&out).contains(&"latency-write.png".to_owned()));
}

#[test]
fn cache_get_against_nginx_static_and_direct() {
    let (r, out) = run("cache-get", &[]);
    let t = targets(&r);
    for want in ["kubehub", "kubehub-rv0", "nginx-static", "direct"] {
        assert!(
            t.iter().any(|(n, ok)| n == want && *ok > 0),
            "{want} not measured: {t:?}"
        );
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(md.contains("| kubehub | nginx-static |"), "{md}");
    for t in ["kubehub", "nginx-static"] {
        assert!(figure(&r, t, "max answers/s (closed loop)") > 0.0);
    }
    assert!(pngs(&out).contains(&"latency-get.png".to_owned()));
}

#[test]
fn cache_list_against_nginx_static() {
    let (r, _) = run("cache-list", &["--targets", "kubehub,nginx-static"]);
    let mut names: Vec<String> = targets(&r).into_iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    assert_eq!(names, ["kubehub", "nginx-static"], "{r:#}");
}

#[test]
fn forward_against_nginx_proxy_and_the_rathole_stack() {
    let (r, _) = run("forward", &[]);
    let t = targets(&r);
    for want in ["kubehub", "nginx-proxy", "nginx+rathole", "direct"] {
        assert!(
            t.iter().any(|(n, ok)| n == want && *ok > 0),
            "{want} not measured: {t:?}"
        );
    }
    let notes = r["notes"].to_string();
    assert!(notes.contains("hub alone / nginx one-hop proxy"), "{notes}");
    assert!(notes.contains("hub + agent / nginx + rathole"), "{notes}");
}

#[test]
fn stream_measures_throughput_per_path() {
    let (r, _) = run("stream", &["--targets", "kubehub,nginx+rathole"]);
    assert!(figure(&r, "kubehub", "one stream: MB/s") > 0.0);
    assert!(figure(&r, "nginx+rathole", "parallel streams: MB/s") > 0.0);
}

#[test]
fn fanout_delivers_every_event_to_every_watcher() {
    let (r, _) = run("fanout", &[]);
    let run0 = &r["runs"][0];
    assert!(
        run0["figures"]["deliveries/s"].as_f64().unwrap() > 0.0,
        "{r:#}"
    );
    let ops: Vec<&str> = run0["ops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        ops.contains(&"delivery") && ops.contains(&"last-watcher"),
        "{ops:?}"
    );
}

#[test]
fn hol_measures_busy_streams_with_and_without_a_stalled_one() {
    let (r, _) = run("hol", &[]);
    let t = targets(&r);
    assert!(t.iter().any(|(n, ok)| n == "kubehub" && *ok > 0), "{t:?}");
    assert!(
        t.iter().any(|(n, ok)| n == "kubehub+stall" && *ok > 0),
        "{t:?}"
    );
}

#[test]
fn peer_hop_measures_both_paths_and_their_ratio() {
    let (r, out) = run("peer-hop", &[]);
    let t = targets(&r);
    for want in ["a-rv0", "c-rv0", "a-fwd", "c-fwd"] {
        assert!(
            t.iter().any(|(n, ok)| n == want && *ok > 0),
            "{want} not measured: {t:?}"
        );
    }
    // Every process of both paths is counted; the forwarding hub works on the C path only.
    let procs: Vec<&str> = r["runs"][1]["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in ["hub-a", "hub-c", "agent", "sim"] {
        assert!(procs.contains(&p), "{p} missing from {procs:?}");
    }
    assert!(figure(&r, "c-fwd", "CPU per request ÷ the A path's, same round") > 0.0);
    let notes = r["notes"].to_string();
    assert!(notes.contains("kubehub_hub_peer_links 1"), "{notes}");
    assert!(pngs(&out).contains(&"latency-get.png".to_owned()));
}

#[test]
fn failover_answers_every_cluster_through_the_hub_that_stays() {
    let (r, out) = run("failover", &["--agents", "12"]);
    assert_eq!(figure(&r, "set-up", "agents"), 12.0);
    assert_eq!(figure(&r, "failover", "all: clusters"), 12.0);
    assert_eq!(
        figure(&r, "failover", "all: clusters never answered again"),
        0.0
    );
    for g in ["b-holds", "a-first", "c-first"] {
        assert!(
            figure(&r, "failover", &format!("{g}: clusters")) > 0.0,
            "{g}"
        );
    }
    assert!(
        pngs(&out).contains(&"recovered.png".to_owned()),
        "{:?}",
        pngs(&out)
    );
}
