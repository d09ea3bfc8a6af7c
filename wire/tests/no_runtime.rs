//! Architecture invariant: the protocol crate depends on no async runtime, so both the monoio
//! hub and the tokio agent use it unchanged and it stays fuzzable in isolation.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::process::Command;

const RUNTIMES: [&str; 7] = [
    "tokio",
    "monoio",
    "async-std",
    "smol",
    "glommio",
    "futures-executor",
    "mio",
];

#[test]
fn wire_has_no_async_runtime_dependency() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "kubehub-wire",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .args(["--offline", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"kubehub-wire"),
        "unexpected output: {tree}"
    );
    for rt in RUNTIMES {
        assert!(
            !crates.contains(&rt),
            "kubehub-wire must not depend on {rt}:\n{tree}"
        );
    }
}
