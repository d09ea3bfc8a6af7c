//! # kubehub-testkit: what the tests of every KubeHub crate share (dev-only)
//!
//! * [`kubectl`]: the real kubectl with a kubeconfig and a discovery cache of its own, and a
//!   line reader for commands that stream (`get -w`, `logs -f`).
//! * [`stack`]: a whole KubeHub on loopback: simulator → agent → hub, real TLS, a kubeconfig.
//! * [`agent`]: a scripted agent that speaks the tunnel protocol by hand (HELLO, pings,
//!   arbitrary bytes), for tests and measurements that need a misbehaving or minimal agent.
//! * [`browser`]: headless Chromium driven through chromedriver (WebDriver), with screenshots
//!   written as test artifacts under the target directory.
//!
//! Only tests and the load harness depend on this crate; the product crates never do
//! (`tests/layout.rs` checks that).
#![allow(clippy::unwrap_used)] // test helpers: a failed set-up is a failed test

pub mod agent;
pub mod browser;
pub mod etcd;
pub mod kubectl;
pub mod procs;
pub mod stack;

pub use kubectl::{read_until, Kubectl, KUBECTL};

/// The `toml` example inside a module's `//!` documentation (`include_str!` of its source),
/// for tests that check the documented configuration file parses.
pub fn documented_toml(module_source: &str) -> String {
    module_source
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .map(|l| l.trim_start_matches("//!").strip_prefix(' ').unwrap_or(""))
        .skip_while(|l| !l.starts_with("```toml"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Runs the official Python client's script (`sim/tests/python/client.py`: list, watch,
/// create, patch, delete) against the cluster `kubeconfig` points at, and asserts it passed.
/// Blocking. The client comes from PyPI (`bash .ci/run` installs it).
pub fn run_python_client(kubeconfig: &std::path::Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../sim/tests/python/client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(kubeconfig)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'kubernetes'"),
        "the Python client is not installed: run `pip install kubernetes` (bash .ci/run does)"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python client script failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("python client: ok"), "{stdout}");
}

/// The bearer token in a kubeconfig meta issued (`users[0].user.token`).
pub fn kubeconfig_token(kubeconfig: &str) -> String {
    kubeconfig
        .lines()
        .find_map(|l| l.trim().strip_prefix("token: "))
        .unwrap_or_else(|| panic!("no token in the kubeconfig:\n{kubeconfig}"))
        .trim_matches('"')
        .to_owned()
}
