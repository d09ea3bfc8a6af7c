//! Architecture invariant: the product does not depend on the test tooling. The hub and the
//! agent libraries never pull in the simulator, the load harness, these test helpers or the
//! command line; the simulator stands alone; only the `kubehub` binary crate sees them all.
//! And the protocol crate depends on no async runtime, so the monoio hub and the tokio agent
//! drive the same engine and it stays fuzzable in isolation.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::process::Command;

/// The crates `package` depends on for building (not for its tests), by name.
fn normal_deps(package: &str) -> Vec<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "-p", package, "-e", "normal", "--prefix", "none"])
        .args(["--offline", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deps: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    assert!(
        deps.iter().any(|d| d == package),
        "unexpected output: {deps:?}"
    );
    deps
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    let deps = normal_deps(package);
    for f in forbidden {
        assert!(
            !deps.iter().any(|d| d == f),
            "{package} must not depend on {f}; it pulls in: {deps:?}"
        );
    }
}

const TOOLING: [&str; 4] = [
    "kubehub-sim",
    "kubehub-perf",
    "kubehub-testkit",
    "kubehub-cli",
];

#[test]
fn hub_and_agent_do_not_depend_on_test_tooling_or_the_command_line() {
    assert_free_of("kubehub-hub", &TOOLING);
    assert_free_of("kubehub-agent", &TOOLING);
    assert_free_of("kubehub-hub", &["kubehub-agent"]);
    assert_free_of("kubehub-agent", &["kubehub-hub", "monoio"]);
    // The enrollment client both share runs on tokio (the agent's runtime, the hub's meta
    // thread): never on the hub's cores.
    assert_free_of("kubehub-enroll", &["monoio", "kubehub-meta"]);
}

/// The hub's own HTTP and TLS (monoio, `http.rs`, `tls.rs`) carry every user request and
/// tunnel. hyper and the tokio TLS stack are in the hub only for its metaserver client
/// (`access/sync.rs`), on a thread of its own: no other module may use them. (The hub's
/// enrollment and renewal, `enroll.rs`, call `kubehub-enroll`, which uses them on that same
/// thread, or on a thread of its own for the join.)
#[test]
fn hyper_is_only_the_hubs_metaserver_client() {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hub/src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    assert!(
        files.len() > 10,
        "hub sources not found under {}",
        src.display()
    );
    let allowed = std::path::Path::new("access").join("sync.rs");
    for f in files {
        if f.ends_with(&allowed) {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for crate_name in [
            "hyper::",
            "hyper_util",
            "hyper_rustls",
            "tokio_rustls",
            "http_body_util",
        ] {
            assert!(
                !text.contains(crate_name),
                "{} uses {crate_name}: only the metaserver client (hub/src/access/sync.rs) may",
                f.display()
            );
        }
    }
}

#[test]
fn shared_crates_stand_alone() {
    for shared in [
        "kubehub-wire",
        "kubehub-kapi",
        "kubehub-pki",
        "kubehub-enroll",
        "kubehub-cache",
        "kubehub-meta",
    ] {
        assert_free_of(shared, &TOOLING);
        assert_free_of(shared, &["kubehub-hub", "kubehub-agent"]);
    }
    assert_free_of(
        "kubehub-sim",
        &[
            "kubehub-hub",
            "kubehub-agent",
            "kubehub-perf",
            "kubehub-testkit",
            "kubehub-cli",
        ],
    );
}

#[test]
fn wire_has_no_async_runtime_dependency() {
    let runtimes = [
        "tokio",
        "monoio",
        "async-std",
        "smol",
        "glommio",
        "futures-executor",
        "mio",
    ];
    assert_free_of("kubehub-wire", &runtimes);
    // The cache's store runs on whatever threads read it: tokio's sync primitives only.
    assert_free_of(
        "kubehub-cache",
        &["monoio", "async-std", "smol", "glommio", "mio"],
    );
}

#[test]
fn the_binary_crate_sees_every_piece() {
    let deps = normal_deps("kubehub-cli");
    for piece in [
        "kubehub-hub",
        "kubehub-agent",
        "kubehub-meta",
        "kubehub-sim",
        "kubehub-pki",
    ] {
        assert!(deps.iter().any(|d| d == piece), "kubehub-cli lacks {piece}");
    }
}
