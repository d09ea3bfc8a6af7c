//! The hub's cache seen from clients: answers equal the edge API server's, cached reads do not
//! reach the edge, watches see the edge's events, writes are read back, and what happens when
//! the agent leaves. Every test runs simulator → agent → hub on loopback with real TLS.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kubehub_hub::config::{CacheConfig, Consistency};
use kubehub_sim::ClusterConfig;
use kubehub_testkit::stack::{self as common, Reply, StackOptions, CLUSTER, TOKEN};
use serde_json::Value;

const SYNC: Duration = Duration::from_secs(20);
const TABLE: &str = "Accept: application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
const METADATA: &str =
    "Accept: application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json";

fn stack(cache: CacheConfig) -> common::Stack {
    stack_with(cache, ClusterConfig::default())
}

fn stack_with(cache: CacheConfig, cluster: ClusterConfig) -> common::Stack {
    let s = common::start_opts(StackOptions {
        cache,
        cluster,
        ..StackOptions::default()
    });
    for r in ["pods", "configmaps", "namespaces"] {
        s.wait_synced("", r, SYNC);
    }
    s.wait_synced("apps", "deployments", SYNC);
    s
}

/// Requests the simulator served that were not the agent's own long-running watches and
/// freshness probes: what a cached read must not cause.
fn edge_reads(s: &common::Stack) -> Vec<String> {
    s.sim_log
        .lines()
        .into_iter()
        .filter(|l| !l.contains("watch=") && !l.contains("limit=1"))
        .collect()
}

/// A Table's AGE cells depend on the second each server rendered them: blank them.
fn without_age(mut v: Value) -> Value {
    let age = v["columnDefinitions"]
        .as_array()
        .and_then(|cols| cols.iter().position(|c| c["name"] == "Age"));
    if let (Some(i), Some(rows)) = (age, v["rows"].as_array_mut()) {
        for r in rows {
            r["cells"][i] = Value::Null;
        }
    }
    v
}

/// The hub's answer and the simulator's, compared as kube clients read them: same status,
/// same object or the same items in the same order.
fn same_answer(hub: &Reply, sim: &Reply, what: &str) {
    assert_eq!(hub.status, sim.status, "{what}: status");
    let (h, e) = (without_age(hub.json()), without_age(sim.json()));
    if h.get("items").is_some() || h.get("rows").is_some() {
        assert_eq!(h["kind"], e["kind"], "{what}: kind");
        assert_eq!(h["items"], e["items"], "{what}: items");
        assert_eq!(h["rows"], e["rows"], "{what}: rows");
        assert_eq!(
            h["metadata"]["remainingItemCount"], e["metadata"]["remainingItemCount"],
            "{what}: remainingItemCount"
        );
        assert_eq!(
            h["metadata"]["continue"].is_string(),
            e["metadata"]["continue"].is_string(),
            "{what}: continue"
        );
    } else {
        assert_eq!(h, e, "{what}");
    }
}

#[test]
fn cached_reads_answer_as_the_edge_does_without_reaching_it() {
    let s = stack(CacheConfig::default());
    let pods = s.sim_get("/api/v1/pods", &[]).json();
    let first = &pods["items"][0]["metadata"];
    let (ns, name) = (
        first["namespace"].as_str().unwrap(),
        first["name"].as_str().unwrap(),
    );
    let label = pods["items"][0]["metadata"]["labels"]
        .as_object()
        .and_then(|l| l.iter().next())
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .unwrap();
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("/api/v1/namespaces/{ns}/pods/{name}"), vec![]),
        (format!("/api/v1/namespaces/{ns}/pods/{name}"), vec![TABLE]),
        ("/api/v1/namespaces/default/pods/nope".into(), vec![]),
        ("/api/v1/pods".into(), vec![]),
        (format!("/api/v1/namespaces/{ns}/pods"), vec![]),
        (format!("/api/v1/pods?labelSelector={label}"), vec![]),
        (
            format!("/api/v1/pods?fieldSelector=metadata.namespace%3D{ns}"),
            vec![],
        ),
        (
            "/api/v1/pods?fieldSelector=status.phase%3DRunning".into(),
            vec![],
        ),
        ("/api/v1/pods?limit=3".into(), vec![]),
        ("/api/v1/pods".into(), vec![TABLE]),
        ("/api/v1/pods".into(), vec![METADATA]),
        ("/api/v1/namespaces".into(), vec![]),
        ("/apis/apps/v1/deployments".into(), vec![TABLE]),
        (
            "/api/v1/configmaps?labelSelector=nope%3Dnone".into(),
            vec![],
        ),
    ];
    // `resourceVersion=0`: whatever the cache holds; no confirmation, so nothing reaches the
    // edge at all. Without it: the same answers after a confirmation (a one-object probe).
    for rv in ["resourceVersion=0", ""] {
        s.sim_log.clear();
        for (path, headers) in &cases {
            let sep = if path.contains('?') { '&' } else { '?' };
            let p = if rv.is_empty() {
                path.clone()
            } else {
                format!("{path}{sep}{rv}")
            };
            let hub = s.hub_get(&p, headers);
            let sim = s.sim_get(path, headers);
            same_answer(&hub, &sim, &format!("{p} {headers:?}"));
            if hub.status == 200 {
                assert_eq!(hub.header("x-kubehub-cache"), Some("hit"), "{p}");
            }
        }
        let reached: Vec<String> = edge_reads(&s)
            .into_iter()
            // The test's own direct requests.
            .filter(|l| !cases.iter().any(|(p, _)| l.ends_with(p.as_str())))
            .collect();
        assert!(
            reached.is_empty(),
            "cached reads reached the edge: {reached:?}"
        );
    }
    // Paging: every page from the cache, together the whole list, as the edge pages it.
    let mut hub_items = Vec::new();
    let mut token = String::new();
    loop {
        let q = if token.is_empty() {
            "/api/v1/pods?limit=4".to_owned()
        } else {
            format!("/api/v1/pods?limit=4&continue={token}")
        };
        let page = s.hub_get(&q, &[]).json();
        hub_items.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["metadata"]["continue"].as_str() {
            Some(t) if !t.is_empty() => token = t.to_owned(),
            _ => break,
        }
    }
    assert_eq!(Value::Array(hub_items), pods["items"]);
    assert!(
        token.starts_with("kubehub."),
        "the hub's tokens are its own: {token}"
    );
    // A list the edge began (its first page forwarded) is continued by the edge.
    let first = s.sim_get("/api/v1/pods?limit=4", &[]).json();
    let edge_token = first["metadata"]["continue"].as_str().unwrap();
    let q = format!("/api/v1/pods?limit=4&continue={edge_token}");
    let (hub, edge) = (s.hub_get(&q, &[]), s.sim_get(&q, &[]));
    assert_eq!(hub.header("x-kubehub-cache"), None, "forwarded");
    same_answer(&hub, &edge, "a page of the edge's list");
    // A cluster-scoped type inside a namespace: the edge's answer, forwarded.
    let misplaced = "/api/v1/namespaces/default/nodes";
    let (hub, edge) = (s.hub_get(misplaced, &[]), s.sim_get(misplaced, &[]));
    assert_eq!(
        (hub.status, hub.header("x-kubehub-cache")),
        (edge.status, None)
    );
    // Forwarded, not cached: a subresource, an exact version.
    let log = s.hub_get(
        &format!("/api/v1/namespaces/{ns}/pods/{name}/log?tailLines=1"),
        &[],
    );
    assert_eq!(log.header("x-kubehub-cache"), None);
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_cache_reads_total{verb=\"get\",outcome=\"forward\",reason=\"subresource\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("outcome=\"hit\""), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "kubehub_hub_cache_objects{{resource=\"v1/pods\"}} {}",
            pods["items"].as_array().unwrap().len()
        )),
        "{metrics}"
    );
    // What SREs see per cluster and type on the admin listener.
    let admin = s.curl_admin("/clusters");
    let body: Value = serde_json::from_str(admin.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let types = body["clusters"][0]["cache"]["types"].as_array().unwrap();
    let pods_slot = types.iter().find(|t| t["type"] == "v1/pods").unwrap();
    assert_eq!(pods_slot["synced"], true);
    assert_eq!(
        pods_slot["objects"],
        pods["items"].as_array().unwrap().len()
    );
    assert!(pods_slot["bytes"].as_u64().unwrap() > 0);
    assert!(pods_slot["confirmedMsAgo"].is_u64(), "{pods_slot}");
    assert!(pods_slot["lagVersions"].is_u64(), "{pods_slot}");
    assert!(
        metrics.contains("kubehub_hub_cache_sync_lag_versions_count"),
        "{metrics}"
    );
}

/// A watch through the hub and a watch on the simulator, from the same version, see the same
/// events in the same order while the cluster changes.
#[test]
fn watches_through_the_hub_see_the_edges_events() {
    let s = stack(CacheConfig::default());
    let rv = s.sim_get("/api/v1/configmaps", &[]).resource_version();
    let path = format!("/api/v1/configmaps?watch=1&resourceVersion={rv}");
    let hub = watch_lines(&s, &format!("/clusters/{CLUSTER}{path}"), true);
    let sim = watch_lines(&s, &path, false);
    // Watchers with a label selector see objects enter (ADDED) and leave (DELETED carrying
    // the object as it was, at the event's version) as kube-apiserver's watch cache sends.
    let selected = format!("{path}&labelSelector=x%3Dy");
    let hub_sel = watch_lines(&s, &format!("/clusters/{CLUSTER}{selected}"), true);
    let sim_sel = watch_lines(&s, &selected, false);
    let label = |s: &common::Stack, path: &str, x: &str| {
        let p = format!(r#"{{"metadata":{{"labels":{{"x":"{x}"}}}}}}"#);
        let r = s.hub_send("PATCH", path, "application/merge-patch+json", &p);
        assert_eq!(r.status, 200);
    };
    for i in 0..30 {
        let name = format!("w-{i}");
        create_configmap(&s, &name);
        let path = format!("/api/v1/namespaces/default/configmaps/{name}");
        if i % 3 == 0 {
            label(&s, &path, "y");
        }
        if i % 6 == 0 {
            label(&s, &path, "z");
        }
        if i % 5 == 0 {
            assert_eq!(
                s.hub_send("DELETE", &path, "application/json", "").status,
                200
            );
        }
    }
    let want = 30 + 10 + 5 + 6;
    let h = hub.take(want);
    let e = sim.take(want);
    assert_eq!(h, e, "the hub's watch and the edge's differ");
    let hs = hub_sel.take(16);
    assert_eq!(hs, sim_sel.take(16), "the selector watches differ");
    let left: Vec<_> = hs.iter().filter(|(t, _, _)| t == "DELETED").collect();
    assert_eq!(left.len(), 6, "{hs:?}");
    assert!(
        left.iter().all(|(_, _, n)| n.ends_with("#x=y")),
        "a DELETED for leaving the selector carries the object as it was: {left:?}"
    );
    // Resuming from a version inside the history gives the rest; outside it, 410.
    let mid = &h[want / 2];
    let resumed = watch_lines(
        &s,
        &format!(
            "/clusters/{CLUSTER}/api/v1/configmaps?watch=1&resourceVersion={}",
            mid.1
        ),
        true,
    )
    .take(want - want / 2 - 1);
    assert_eq!(resumed, h[want / 2 + 1..].to_vec());
}

#[test]
fn watch_from_before_the_history_window_is_410() {
    let s = stack(CacheConfig {
        history_window: 8,
        ..CacheConfig::default()
    });
    let before = s.sim_get("/api/v1/configmaps", &[]).resource_version();
    for i in 0..20 {
        create_configmap(&s, &format!("h-{i}"));
    }
    let r = s.hub_get(
        &format!("/api/v1/configmaps?watch=1&resourceVersion={before}&timeoutSeconds=1"),
        &[],
    );
    let line: Value =
        serde_json::from_slice(r.body.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["type"], "ERROR", "{line}");
    assert_eq!(line["object"]["code"], 410, "{line}");
}

/// (type, resourceVersion, name) of each event of a watch, read by a background thread.
struct Lines(
    std::sync::mpsc::Receiver<(String, String, String)>,
    std::process::Child,
);

impl Lines {
    fn take(&self, n: usize) -> Vec<(String, String, String)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.0.recv_timeout(left) {
                Ok(l) => out.push(l),
                Err(_) => panic!("only {} of {n} events: {out:?}", out.len()),
            }
        }
        out
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.1.kill();
        let _ = self.1.wait();
    }
}

fn watch_lines(s: &common::Stack, path: &str, via_hub: bool) -> Lines {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "--max-time", "60"]);
    let url = if via_hub {
        cmd.arg("--cacert")
            .arg(s.path().join("ca.crt"))
            .args(["-H", &format!("Authorization: Bearer {TOKEN}")]);
        format!("https://127.0.0.1:{}{path}", s.hub.user_addr.port())
    } else {
        format!("http://{}{path}", s.sim_addr)
    };
    let mut child = cmd.arg(url).stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                return;
            };
            let m = &v["object"]["metadata"];
            let mut name = m["name"].as_str().unwrap_or("").to_owned();
            if let Some(x) = m["labels"]["x"].as_str() {
                name = format!("{name}#x={x}");
            }
            let ev = (
                v["type"].as_str().unwrap_or("").to_owned(),
                m["resourceVersion"].as_str().unwrap_or("").to_owned(),
                name,
            );
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    Lines(rx, child)
}

/// Creates a configmap in `default` through the hub (JSON: kubectl's imperative `create`
/// sends protobuf bodies).
fn create_configmap(s: &common::Stack, name: &str) {
    let r = s.hub_send(
        "POST",
        "/api/v1/namespaces/default/configmaps",
        "application/json",
        &format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}},"data":{{"v":"0"}}}}"#),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

/// After a write through the hub returns, reads through the hub see it (or something newer),
/// in every consistency mode, even when the edge's watch delivers changes late.
#[test]
fn reads_after_writes_through_the_hub_see_them() {
    for consistency in [Consistency::Probe, Consistency::BoundedStaleness] {
        let s = stack_with(
            CacheConfig {
                consistency,
                max_staleness_ms: 60_000,
                ..CacheConfig::default()
            },
            ClusterConfig {
                watch_delay: Duration::from_millis(300),
                ..ClusterConfig::default()
            },
        );
        for i in 0..6 {
            let name = format!("ryw-{i}");
            create_configmap(&s, &name);
            let got = s.hub_get(
                &format!("/api/v1/namespaces/default/configmaps/{name}"),
                &[],
            );
            assert_eq!(
                got.status, 200,
                "{consistency:?}: created {name} not found through the hub"
            );
            let patched = s.hub_send(
                "PATCH",
                &format!("/api/v1/namespaces/default/configmaps/{name}"),
                "application/merge-patch+json",
                r#"{"data":{"v":"1"}}"#,
            );
            assert_eq!(patched.status, 200);
            for rv in ["", "?resourceVersion=0"] {
                let list = s
                    .hub_get(&format!("/api/v1/namespaces/default/configmaps{rv}"), &[])
                    .json();
                let it = list["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["metadata"]["name"] == name.as_str())
                    .cloned()
                    .unwrap_or_else(|| panic!("{consistency:?} {rv}: {name} missing"));
                assert_eq!(it["data"]["v"], "1", "{consistency:?} {rv}: stale {name}");
            }
        }
    }
}

#[test]
fn kubectl_get_and_watch_are_served_from_the_cache() {
    let s = stack(CacheConfig::default());
    s.sim_log.clear();
    let out = s.ok(&["get", "pods", "-A"]);
    let header: Vec<&str> = out.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    assert!(out.contains("Running"), "{out}");
    // kubectl's discovery is forwarded; the list itself is not.
    let pods: Vec<String> = edge_reads(&s)
        .into_iter()
        .filter(|l| l.contains("/pods"))
        .collect();
    assert!(pods.is_empty(), "{pods:?}");
    // get -w: the initial rows come from the cache, then a change made meanwhile.
    let mut w = s
        .kubectl_cmd(&["get", "configmaps", "-n", "default", "-w"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = w.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    create_configmap(&s, "seen-by-watch");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen = l.starts_with("seen-by-watch");
        }
    }
    let _ = w.kill();
    let _ = w.wait();
    assert!(seen, "kubectl get -w did not show the new configmap");
}

/// The agent leaves: reads are served from the cache for the grace period, marked with a
/// warning; after it, 503. It comes back: the cache resyncs and serves again.
#[test]
fn agent_gone_stale_then_unavailable_then_resynced() {
    let mut s = stack(CacheConfig {
        stale_grace_ms: 2_000,
        ..CacheConfig::default()
    });
    let token = s.hub_get("/api/v1/pods?limit=2", &[]).json()["metadata"]["continue"]
        .as_str()
        .unwrap()
        .to_owned();
    s.stop_agent();
    s.wait_connected(false, Duration::from_secs(10));
    let stale = s.hub_get("/api/v1/pods", &[]);
    assert_eq!(stale.status, 200);
    assert!(
        stale
            .header("warning")
            .is_some_and(|w| w.contains("disconnected")),
        "{:?}",
        stale.headers
    );
    std::thread::sleep(Duration::from_millis(2_500));
    let gone = s.hub_get("/api/v1/pods", &[]);
    assert_eq!(gone.status, 503, "{}", String::from_utf8_lossy(&gone.body));
    // A list the hub began cannot be continued by the edge: 410 Expired, as kube-apiserver
    // answers an expired token (client-go's pager then lists again).
    let expired = s.hub_get(&format!("/api/v1/pods?limit=2&continue={token}"), &[]);
    assert_eq!(
        expired.status,
        410,
        "{}",
        String::from_utf8_lossy(&expired.body)
    );
    assert_eq!(expired.json()["reason"], "Expired");
    // Changed while the agent was away: seen once it is back.
    create_configmap_at_edge(&s, "while-away");
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    s.wait_synced("", "configmaps", SYNC);
    let got = s.hub_get("/api/v1/namespaces/default/configmaps/while-away", &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("x-kubehub-cache"), Some("hit"));
}

/// A watch of `default`'s configmaps from `rv`, as raw HTTP/1.1 for a hand-driven connection.
fn raw_watch_request(rv: &str) -> String {
    format!(
        "GET /clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv} HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    )
}

/// Reads a chunked watch response from a raw connection: its events' (type, version, name).
async fn read_events<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    want: usize,
) -> (Vec<(String, String, String)>, bool) {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    let mut body = Vec::new();
    let mut head_done = false;
    let mut events = Vec::new();
    let mut ended = false;
    let mut buf = vec![0u8; 64 * 1024];
    while events.len() < want && !ended {
        let n = match tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            _ => break,
        };
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if !head_done {
            let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            raw.drain(..i + 4);
            head_done = true;
        }
        // Chunks: size line, data, CRLF.
        while let Some(i) = raw.windows(2).position(|w| w == b"\r\n") {
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[..i]).unwrap().trim(), 16).unwrap();
            if raw.len() < i + 2 + size + 2 {
                break;
            }
            if size == 0 {
                ended = true;
                break;
            }
            body.extend_from_slice(&raw[i + 2..i + 2 + size]);
            raw.drain(..i + 2 + size + 2);
        }
        while let Some(nl) = body.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = body.drain(..=nl).collect();
            let v: Value = serde_json::from_slice(&line).unwrap();
            let m = &v["object"]["metadata"];
            events.push((
                v["type"].as_str().unwrap_or("").to_owned(),
                m["resourceVersion"].as_str().unwrap_or("").to_owned(),
                m["name"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    (events, ended)
}

/// A thousand watchers of one type, on raw TLS connections: every one gets the same events
/// in the same order.
#[test]
fn a_thousand_watchers_see_the_same_sequence() {
    use tokio::io::AsyncWriteExt;
    const WATCHERS: usize = 1000;
    const CHANGES: usize = 20;
    let s = stack(CacheConfig::default());
    let rv = s.hub_get("/api/v1/configmaps", &[]).resource_version();
    let request = raw_watch_request(&rv);
    let results = s.rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..WATCHERS {
            let mut c = s.user_connection().await;
            c.write_all(request.as_bytes()).await.unwrap();
            tasks.push(tokio::spawn(
                async move { read_events(&mut c, CHANGES).await.0 },
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hub = &s;
        tokio::task::block_in_place(|| {
            for i in 0..CHANGES {
                create_configmap(hub, &format!("k-{i}"));
            }
        });
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    let first = &results[0];
    assert_eq!(first.len(), CHANGES);
    for r in &results {
        assert_eq!(r, first, "watchers saw different sequences");
    }
}

/// Many watchers of one type get the same events in the same order; one that stops reading
/// falls behind the history window and is cut off, without holding the others back.
#[test]
fn fan_out_to_many_watchers_and_a_stalled_one_is_cut_off() {
    use tokio::io::AsyncWriteExt;
    // The stalled watcher's events must outgrow the socket buffers between it and the hub
    // (up to 4 MiB on the hub's side with Linux's defaults): 100 objects of 64 KiB.
    const WATCHERS: usize = 50;
    const CHANGES: usize = 100;
    let s = stack(CacheConfig {
        history_window: 30,
        ..CacheConfig::default()
    });
    let rv = s.hub_get("/api/v1/configmaps", &[]).resource_version();
    let request = raw_watch_request(&rv);
    let (results, stalled_events, stalled_ended) = s.rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..WATCHERS {
            let mut c = s.user_connection().await;
            c.write_all(request.as_bytes()).await.unwrap();
            tasks.push(tokio::spawn(async move { read_events(&mut c, CHANGES).await.0 }));
        }
        let mut stalled = s.user_connection_with(Some(4096)).await;
        stalled.write_all(request.as_bytes()).await.unwrap();
        // Every watcher is registered before the changes start.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let data = "x".repeat(64 * 1024);
        let hub = &s;
        let data = &data;
        tokio::task::block_in_place(|| {
            for i in 0..CHANGES {
                let body = format!(
                    r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"fan-{i}"}},"data":{{"x":"{data}"}}}}"#
                );
                let r = hub.hub_send("POST", "/api/v1/namespaces/default/configmaps", "application/json", &body);
                assert_eq!(r.status, 201);
            }
        });
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        // The stalled watcher reads at last: some events, then the end of the stream.
        let (ev, ended) = read_events(&mut stalled, CHANGES).await;
        (results, ev, ended)
    });
    let first = &results[0];
    assert_eq!(first.len(), CHANGES);
    assert!(first
        .iter()
        .all(|(t, _, n)| t == "ADDED" && n.starts_with("fan-")));
    for r in &results {
        assert_eq!(r, first, "watchers saw different sequences");
    }
    assert!(
        stalled_ended && stalled_events.len() < CHANGES,
        "the stalled watcher got {} of {CHANGES} events, ended: {stalled_ended}",
        stalled_events.len()
    );
    assert_eq!(stalled_events[..], first[..stalled_events.len()]);
    let metrics = s.curl_admin("/metrics");
    assert!(
        metrics.contains("kubehub_hub_cache_watchers_cut_total 1"),
        "{metrics}"
    );
}

/// The edge API server restarts and compacts its history while changes happen: the agent's
/// watch cannot resume (410), it relists, and a watch through the hub that stayed open sees
/// the changes as events, none lost or repeated.
#[test]
fn edge_restart_with_compaction_resyncs_and_watchers_see_the_difference() {
    let s = stack(CacheConfig::default());
    let rv = s.hub_get("/api/v1/configmaps", &[]).resource_version();
    let watch = watch_lines(
        &s,
        &format!(
            "/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
        ),
        true,
    );
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    // "Restart": watches dropped, requests refused, history compacted, changes meanwhile.
    s.cluster.set_available(false);
    s.cluster.disconnect_watchers();
    let mut made = Vec::new();
    for i in 0..5 {
        let name = format!("during-{i}");
        let obj = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
        s.cluster.create(ty, Some("default"), obj, false).unwrap();
        made.push(name);
    }
    s.cluster.compact_history();
    std::thread::sleep(Duration::from_millis(300));
    s.cluster.set_available(true);
    let got = watch.take(made.len());
    let names: Vec<&str> = got.iter().map(|(_, _, n)| n.as_str()).collect();
    assert!(got.iter().all(|(t, _, _)| t == "ADDED"), "{got:?}");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(sorted, made, "every change once");
    // And reads agree with the edge again.
    let hub = s.hub_get("/api/v1/namespaces/default/configmaps", &[]);
    let sim = s.sim_get("/api/v1/namespaces/default/configmaps", &[]);
    same_answer(&hub, &sim, "after the resync");
    // Nothing more arrives (no duplicates).
    assert!(watch.0.recv_timeout(Duration::from_millis(500)).is_err());
}

/// A consistent read while the edge's watch lags behind: the agent confirms with a list
/// diffed against what it holds, and the differences (creations, changes, deletions — several
/// at one version) reach the cache before the read is served.
#[test]
fn a_lagging_watch_is_caught_up_by_a_diffed_list_before_a_consistent_read() {
    let s = stack_with(
        CacheConfig::default(),
        ClusterConfig {
            watch_delay: Duration::from_secs(3),
            ..ClusterConfig::default()
        },
    );
    for i in 0..3 {
        create_configmap(&s, &format!("lag-{i}"));
    }
    // Wait until the cache has them (the watch delivers 3 s late).
    let deadline = Instant::now() + Duration::from_secs(20);
    while s
        .hub_get(
            "/api/v1/namespaces/default/configmaps/lag-2?resourceVersion=0",
            &[],
        )
        .status
        != 200
    {
        assert!(Instant::now() < deadline, "lag-2 never reached the cache");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Straight to the edge: two deletions and a change the hub has not heard of.
    for name in ["lag-0", "lag-1"] {
        let out = Command::new("curl")
            .args(["-sS", "-X", "DELETE"])
            .arg(format!(
                "http://{}/api/v1/namespaces/default/configmaps/{name}",
                s.sim_addr
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let list = s.hub_get("/api/v1/namespaces/default/configmaps", &[]);
    assert_eq!(list.header("x-kubehub-cache"), Some("hit"));
    let names: Vec<String> = list.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&"lag-2".to_owned()), "{names:?}");
    assert!(
        !names.contains(&"lag-0".to_owned()) && !names.contains(&"lag-1".to_owned()),
        "deleted at the edge before the read, still listed: {names:?}"
    );
    let direct = s.sim_get("/api/v1/namespaces/default/configmaps", &[]);
    same_answer(&list, &direct, "after the confirmation");
    // The stream survived the confirmation (nothing was refused).
    s.wait_synced("", "configmaps", Duration::from_millis(10));
    std::thread::sleep(Duration::from_secs(4)); // the late watch events arrive and are skipped
    s.wait_synced("", "configmaps", Duration::from_millis(10));
    let again = s.hub_get("/api/v1/namespaces/default/configmaps", &[]);
    same_answer(&again, &direct, "after the late events");
    // A watch from a version the lagging cache has not reached yet (the client listed at
    // the edge) never replays changes at or below that version.
    create_configmap_at_edge(&s, "lag-3");
    let n: u64 = s
        .sim_get("/api/v1/namespaces/default/configmaps", &[])
        .resource_version()
        .parse()
        .unwrap();
    let w = watch_lines(
        &s,
        &format!("/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={n}&timeoutSeconds=8"),
        true,
    );
    create_configmap_at_edge(&s, "lag-4");
    let got = w.take(1);
    assert_eq!(got[0].2, "lag-4", "{got:?}");
    assert!(got[0].1.parse::<u64>().unwrap() > n);
}

fn create_configmap_at_edge(s: &common::Stack, name: &str) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
        ])
        .arg(format!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{name}"}}}}"#
        ))
        .arg(format!(
            "http://{}/api/v1/namespaces/default/configmaps",
            s.sim_addr
        ))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(name));
}

/// client-go's streaming list: the initial objects as ADDED events, then a bookmark marked
/// `k8s.io/initial-events-end`, the same through the hub as from the edge.
#[test]
fn watch_list_sends_initial_events_then_the_end_bookmark() {
    let s = stack(CacheConfig::default());
    let q = "/api/v1/namespaces/kube-system/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1";
    let lines = |r: Reply| -> Vec<Value> {
        r.body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    };
    let hub = lines(s.hub_get(q, &[]));
    let edge = lines(s.sim_get(q, &[]));
    let summary = |v: &[Value]| -> Vec<(String, String)> {
        v.iter()
            .map(|e| {
                (
                    e["type"].as_str().unwrap().to_owned(),
                    e["object"]["metadata"]["name"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                )
            })
            .collect()
    };
    assert_eq!(summary(&hub), summary(&edge));
    let end = hub.last().unwrap();
    assert_eq!(end["type"], "BOOKMARK");
    assert_eq!(
        end["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
        "true"
    );
    assert!(hub.len() > 1, "initial events: {hub:?}");
}

/// A watch ended by the agent leaving resumes, once it is back, from the last version its
/// client saw: the changes made meanwhile arrive once each.
#[test]
fn watches_resume_after_the_agent_returns() {
    let mut s = stack(CacheConfig::default());
    let rv = s
        .hub_get("/api/v1/namespaces/default/configmaps", &[])
        .resource_version();
    let path = |rv: &str| {
        format!(
            "/clusters/{CLUSTER}/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={rv}"
        )
    };
    let w = watch_lines(&s, &path(&rv), true);
    create_configmap(&s, "before-0");
    let seen = w.take(1);
    s.stop_agent();
    s.wait_connected(false, Duration::from_secs(10));
    // The watch ends (its client would re-watch): the stream closes, nothing more comes.
    assert!(matches!(
        w.0.recv_timeout(Duration::from_secs(10)),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    ));
    create_configmap_at_edge(&s, "away-0");
    create_configmap_at_edge(&s, "away-1");
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    s.wait_synced("", "configmaps", SYNC);
    let resumed = watch_lines(&s, &path(&seen[0].1), true);
    let got = resumed.take(2);
    let names: Vec<&str> = got.iter().map(|(_, _, n)| n.as_str()).collect();
    assert_eq!(names, ["away-0", "away-1"], "{got:?}");
    assert!(resumed.0.recv_timeout(Duration::from_millis(500)).is_err());
}
