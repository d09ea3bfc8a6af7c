//! `kubehub ctl native` and `kubehub ctl host` end to end: the `kubehub` binary with a user's
//! kubeconfig, against a hub whose agent serves plugins (simulator → agent → hub on loopback,
//! real TLS). What a user relies on: the command's output on stdout and stderr, its exit code
//! as ours (124 on timeout), refusals printed with the hub's or agent's message.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use kubehub_agent::config::{ArgRule, NativeCommand, PluginsConfig};
use kubehub_testkit::stack::{
    self as common, default_access, grant, mint, rule, user, Stack, StackOptions, CLUSTER, TENANT,
    TOKEN,
};

fn command(name: &str, argv: &[&str], args: &[(&str, ArgRule)], timeout_ms: u64) -> NativeCommand {
    NativeCommand {
        name: name.into(),
        description: format!("the {name} test command"),
        argv: argv.iter().map(|a| a.to_string()).collect(),
        args: args
            .iter()
            .map(|(n, r)| (n.to_string(), r.clone()))
            .collect::<BTreeMap<_, _>>(),
        timeout_ms,
        user: None,
    }
}

fn pattern(p: &str) -> ArgRule {
    ArgRule {
        values: vec![],
        pattern: Some(p.into()),
    }
}

fn stack() -> (Stack, String) {
    let (carol_token, carol) = mint("carol", TENANT, &[CLUSTER], 0);
    let mut access = default_access();
    access.extend([
        user("carol", TENANT, &[]),
        grant(
            "carol-pods",
            TENANT,
            "carol",
            &[CLUSTER],
            vec![rule(&[""], &["pods"], &["get", "list"], &[], &[])],
        ),
        carol,
    ]);
    let mut s = common::start_opts(StackOptions {
        access: Some(access),
        ..StackOptions::default()
    });
    s.stop_agent();
    s.wait_connected(false, Duration::from_secs(10));
    let mut plugins = PluginsConfig::default();
    plugins.native.commands = vec![
        // Arguments reach the script as positional parameters, never as script text.
        command(
            "talk",
            &[
                "sh",
                "-c",
                "echo \"out $1\"; echo \"err $1\" >&2; exit $2",
                "sh",
                "{msg}",
                "{code}",
            ],
            &[
                ("msg", pattern("(?s).*")),
                (
                    "code",
                    ArgRule {
                        values: vec!["0".into(), "3".into()],
                        pattern: None,
                    },
                ),
            ],
            10_000,
        ),
        command("slow", &["sleep", "30"], &[], 200),
    ];
    s.agent_cfg.plugins = plugins;
    s.start_agent();
    s.wait_connected(true, Duration::from_secs(10));
    (s, carol_token)
}

fn ctl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubehub"))
        .env_remove("KUBECONFIG")
        .env_remove("KUBEHUB_META_CA")
        .arg("ctl")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ctl_native_runs_a_command_through_the_hub() {
    let (s, carol_token) = stack();
    let kc = &s.kubeconfig;
    // Output on our stdout and stderr, its exit code ours; metacharacters stay literal.
    let out = ctl(kc, &["native", "talk", "msg=a; $(id) `id` | b", "code=3"]);
    assert_eq!(text(&out.stdout), "out a; $(id) `id` | b\n");
    assert_eq!(text(&out.stderr), "err a; $(id) `id` | b\n");
    assert_eq!(out.status.code(), Some(3));
    let out = ctl(kc, &["native", "talk", "msg=hi", "code=0"]);
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.code()),
        ("out hi\n", Some(0))
    );
    // A CLUSTER with a kubeconfig for the hub's root.
    let root = s.kubeconfig_for("root", TOKEN, None);
    let out = ctl(&root, &["native", CLUSTER, "talk", "msg=x", "code=0"]);
    assert_eq!(
        (text(&out.stdout).as_str(), out.status.code()),
        ("out x\n", Some(0)),
        "{}",
        text(&out.stderr)
    );
    // Timed out: 124, as timeout(1).
    let out = ctl(kc, &["native", "slow"]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("timed out"));
    // Refusals: the message, exit 1.
    let out = ctl(kc, &["native", "talk", "msg=x", "code=1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Invalid (422)") && err.contains("args.code: must be one of: 0, 3"),
        "{err}"
    );
    let out = ctl(kc, &["native", "rm", "path=/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("native.plugins.kubehub.io \"rm\" not found"),
        "{}",
        text(&out.stderr)
    );
    let carol = s.kubeconfig_for("carol", &carol_token, Some(CLUSTER));
    let out = ctl(&carol, &["native", "talk", "msg=x", "code=0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("Forbidden (403)")
            && err.contains("User \"carol\" cannot create resource \"native\" in API group \"plugins.kubehub.io\""),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Usage errors: 2.
    let out = ctl(kc, &["native"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn ctl_native_lists_and_ctl_host_prints_the_facts() {
    let (s, carol_token) = stack();
    let kc = &s.kubeconfig;
    let out = ctl(kc, &["native", "--list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("DESCRIPTION"),
        "{table}"
    );
    assert!(
        lines[1].starts_with("slow") && lines[1].contains("200ms"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("talk")
            && lines[2].contains("code=0|3")
            && lines[2].contains("the talk test command"),
        "{table}"
    );
    let out = ctl(kc, &["-o", "json", "native", "--list"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][1]["args"]["code"]["values"][1], "3");
    let out = ctl(kc, &["host"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["kind"], "HostFacts");
    assert!(v["cpu"]["count"].as_u64().unwrap() >= 1);
    let carol = s.kubeconfig_for("carol", &carol_token, Some(CLUSTER));
    let out = ctl(&carol, &["host"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr)
        .contains("cannot get resource \"host\" in API group \"plugins.kubehub.io\""));
}
