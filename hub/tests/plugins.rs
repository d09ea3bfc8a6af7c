//! The agent's plugins through the hub (simulator → agent → hub on loopback, real TLS, the
//! hub's access data a static file): a user granted one native command runs it and reads its
//! output as it comes; without the grant, kube-apiserver's 403; the allow-list and argument
//! rules answered through the hub; host facts; a user hanging up kills the command.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::BTreeMap;
use std::time::Duration;

use kubehub_access::Record;
use kubehub_agent::config::{ArgRule, NativeCommand, PluginsConfig};
use kubehub_kapi::plugin::OutputLine;
use kubehub_testkit::stack::{
    self as common, default_access, grant, mint, rule, user, Reply, Stack, StackOptions, CLUSTER,
    TENANT, TOKEN,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const JSON: &str = "Content-Type: application/json";

fn command(name: &str, argv: &[&str], args: &[(&str, &str)], timeout_ms: u64) -> NativeCommand {
    NativeCommand {
        name: name.into(),
        description: format!("test command {name}"),
        argv: argv.iter().map(|a| a.to_string()).collect(),
        args: args
            .iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    ArgRule {
                        values: vec![],
                        pattern: Some(p.to_string()),
                    },
                )
            })
            .collect::<BTreeMap<_, _>>(),
        timeout_ms,
        user: None,
    }
}

fn plugins() -> PluginsConfig {
    let mut p = PluginsConfig::default();
    p.native.commands = vec![
        command("uptime", &["cat", "/proc/uptime"], &[], 10_000),
        command(
            "greet",
            &["echo", "hello", "{who}"],
            &[("who", "[a-z ;|$()`-]+")],
            10_000,
        ),
        command("linger", &["sh", "-c", "echo $$; sleep 300"], &[], 600_000),
    ];
    p
}

/// A stack whose agent serves the test plugins, with `extra` access records.
fn stack(extra: Vec<Record>) -> Stack {
    let mut access = default_access();
    access.extend(extra);
    let mut s = common::start_opts(StackOptions {
        access: Some(access),
        ..StackOptions::default()
    });
    s.stop_agent();
    s.wait_connected(false, Duration::from_secs(10));
    s.agent_cfg.plugins = plugins();
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    s
}

/// A command's NDJSON answer: stdout, stderr and the exit object.
fn decode(body: &[u8]) -> (String, String, Value) {
    let (out, err, exit) = kubehub_kapi::plugin::collect_output(body).unwrap();
    (
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
        serde_json::to_value(exit).unwrap(),
    )
}

fn assert_status(r: &Reply, code: u16, what: &str) {
    assert_eq!(
        r.status,
        code,
        "{what}: {}",
        String::from_utf8_lossy(&r.body)
    );
}

/// carol may run `uptime` and nothing else; dave may read pods only; alice may do anything.
#[test]
fn a_granted_user_runs_a_native_command_and_others_are_forbidden() {
    let (carol_token, carol) = mint("carol", TENANT, &[CLUSTER], 0);
    let (dave_token, dave) = mint("dave", TENANT, &[CLUSTER], 0);
    let s = stack(vec![
        user("carol", TENANT, &[]),
        user("dave", TENANT, &[]),
        grant(
            "carol-uptime",
            TENANT,
            "carol",
            &[CLUSTER],
            vec![rule(
                &["plugins.kubehub.io"],
                &["native"],
                &["create"],
                &[],
                &["uptime"],
            )],
        ),
        grant(
            "dave-pods",
            TENANT,
            "dave",
            &[CLUSTER],
            vec![rule(&[""], &["pods"], &["get", "list"], &[], &[])],
        ),
        carol,
        dave,
    ]);
    let uptime = format!("/clusters/{CLUSTER}/plugins/native/uptime");
    let r = s.request_as(Some(&carol_token), "POST", &uptime, &[JSON], b"{}");
    assert_status(&r, 200, "carol runs uptime");
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    assert_eq!(r.header("x-kubehub-cache"), None, "never from the cache");
    let (stdout, _, exit) = decode(&r.body);
    assert_eq!(exit, json!({"code": 0}));
    let fields: Vec<f64> = stdout
        .split_whitespace()
        .map(|f| f.parse().unwrap())
        .collect();
    assert_eq!(fields.len(), 2, "/proc/uptime: {stdout}");
    // Another command, the list, the host facts: not carol's.
    let greet = format!("/clusters/{CLUSTER}/plugins/native/greet");
    let body = br#"{"args":{"who":"carol"}}"#;
    let r = s.request_as(Some(&carol_token), "POST", &greet, &[JSON], body);
    assert_status(&r, 403, "carol runs greet");
    let message = r.json()["message"].as_str().unwrap().to_owned();
    assert!(
        message.starts_with(
            "native.plugins.kubehub.io \"greet\" is forbidden: User \"carol\" cannot create \
             resource \"native\" in API group \"plugins.kubehub.io\" at the cluster scope"
        ),
        "{message}"
    );
    for (method, path) in [
        ("GET", format!("/clusters/{CLUSTER}/plugins/native")),
        ("GET", format!("/clusters/{CLUSTER}/plugins/native/uptime")),
        ("GET", format!("/clusters/{CLUSTER}/plugins/host")),
    ] {
        let r = s.request_as(Some(&carol_token), method, &path, &[], b"");
        assert_status(&r, 403, &format!("carol {method} {path}"));
    }
    // dave has no plugin grant at all.
    let r = s.request_as(Some(&dave_token), "POST", &uptime, &[JSON], b"{}");
    assert_status(&r, 403, "dave runs uptime");
    assert!(r.json()["message"].as_str().unwrap().contains(
        "User \"dave\" cannot create resource \"native\" in API group \"plugins.kubehub.io\""
    ));
}

#[test]
fn the_allow_list_and_host_facts_through_the_hub() {
    let (one_token, one) = mint("alice", TENANT, &[CLUSTER], 0);
    let s = stack(vec![one]);
    let base = format!("/clusters/{CLUSTER}/plugins");
    // The list.
    let r = s.request_as(Some(TOKEN), "GET", &format!("{base}/native"), &[], b"");
    assert_status(&r, 200, "list");
    let v = r.json();
    assert_eq!(v["kind"], "NativeCommandList");
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["greet", "linger", "uptime"]);
    // Shell metacharacters reach the program as plain characters.
    let who = "a; rm -rf $(id) `id` | b";
    let body = json!({"args": {"who": who}}).to_string();
    let r = s.request_as(
        Some(TOKEN),
        "POST",
        &format!("{base}/native/greet"),
        &[JSON],
        body.as_bytes(),
    );
    assert_status(&r, 200, "greet");
    assert_eq!(
        decode(&r.body),
        (format!("hello {who}\n"), String::new(), json!({"code": 0}))
    );
    // Refusals, with the agent's Status.
    let r = s.request_as(
        Some(TOKEN),
        "POST",
        &format!("{base}/native/greet"),
        &[JSON],
        br#"{"args":{"who":"UPPER"}}"#,
    );
    assert_status(&r, 422, "a value the pattern refuses");
    assert_eq!(r.json()["details"]["causes"][0]["field"], "args.who");
    let r = s.request_as(
        Some(TOKEN),
        "POST",
        &format!("{base}/native/rm"),
        &[JSON],
        b"{}",
    );
    assert_status(&r, 404, "a command not in the allow-list");
    let r = s.request_as(Some(TOKEN), "GET", &format!("{base}/nope"), &[], b"");
    assert_status(&r, 404, "a plugin that does not exist");
    // Host facts; without the cluster prefix with a token for one cluster.
    let r = s.request_as(Some(TOKEN), "GET", &format!("{base}/host"), &[], b"");
    assert_status(&r, 200, "host");
    let v = r.json();
    assert_eq!(v["kind"], "HostFacts");
    assert!(v["memory"]["totalBytes"].as_u64().unwrap() > 0);
    let r = s.request_as(Some(&one_token), "GET", "/plugins/host", &[], b"");
    assert_status(&r, 200, "host without the prefix");
    // The edge API server still answers everything else.
    let r = s.request_as(
        Some(TOKEN),
        "GET",
        &format!("/clusters/{CLUSTER}/version"),
        &[],
        b"",
    );
    assert_status(&r, 200, "version");
}

/// Output reaches the user while the command runs; the user hanging up kills it.
#[test]
fn output_streams_and_hanging_up_kills_the_command() {
    let s = stack(vec![]);
    let pid: i32 = s.rt.block_on(async {
        let mut c = s.user_connection().await;
        let req = format!(
            "POST /clusters/{CLUSTER}/plugins/native/linger HTTP/1.1\r\nHost: hub\r\n\
             Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n\
             Content-Length: 2\r\n\r\n{{}}"
        );
        c.write_all(req.as_bytes()).await.unwrap();
        // The command prints its pid, then sleeps: the line arrives before it ends.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        let line = loop {
            let n = tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf))
                .await
                .expect("output while the command runs")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&raw));
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw).into_owned();
            if let Some(l) = text.lines().find(|l| l.starts_with("{\"")) {
                if l.ends_with('}') {
                    break l.to_owned();
                }
            }
        };
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let OutputLine::Output { data, .. } = OutputLine::parse(line.as_bytes()).unwrap() else {
            panic!("output before the exit: {line}");
        };
        String::from_utf8(data).unwrap().trim().parse().unwrap()
        // The connection drops here: the user went away.
    });
    let mut gone = false;
    for _ in 0..1500 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its parent.
        if stat.is_empty()
            || stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z'))
        {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        gone,
        "the command (pid {pid}) still runs after the user went away"
    );
}
