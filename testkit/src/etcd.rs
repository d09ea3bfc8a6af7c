//! A throwaway etcd server for tests: its own loopback ports and temporary data directory,
//! stopped when dropped (and when the test process dies: a watchdog shell stops it once the
//! pipe from this process closes).
//!
//! The `etcd` binary comes from `PATH`; when it is missing, Debian's `etcd-server` package is
//! installed (`apt-get`, with `sudo` unless root), as `bash .ci/run` does.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a starting etcd may take to report healthy.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping etcd may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// `sh -c WATCHDOG ETCD ARGS...` runs `ETCD ARGS...`, stops it (TERM, then KILL after 5 s)
/// when its stdin closes, and exits when etcd does.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null &
pid=$!
(
    read -r _ <&3
    kill -TERM "$pid"
    i=0
    while kill -0 "$pid"; do
        if [ "$i" -ge 50 ]; then kill -KILL "$pid"; break; fi
        sleep 0.1
        i=$((i + 1))
    done
) >/dev/null 2>&1 &
wait "$pid""#;

/// A running etcd (single member, plain HTTP on loopback).
#[derive(Debug)]
pub struct Etcd {
    /// The client URL, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    client_port: u16,
    peer_port: u16,
    dir: tempfile::TempDir,
    process: Option<(Child, ChildStdin)>,
}

impl Etcd {
    /// Starts a fresh etcd and waits until it is healthy. Panics, saying why, when it cannot.
    pub fn start() -> Etcd {
        let binary = etcd_binary();
        let mut last_failure = String::new();
        // A port picked free may be taken before etcd binds it: try a few pairs.
        for _ in 0..3 {
            let (client_port, peer_port) = free_ports();
            let mut etcd = Etcd {
                endpoint: format!("http://127.0.0.1:{client_port}"),
                client_port,
                peer_port,
                dir: tempfile::tempdir().expect("temporary directory for etcd"),
                process: None,
            };
            match etcd.launch(&binary) {
                Ok(()) => return etcd,
                Err(e) => last_failure = e,
            }
        }
        panic!("etcd ({}) did not start: {last_failure}", binary.display());
    }

    /// The client URLs (one), for a store configuration's `endpoints`.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }

    /// Whether the server is running (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the server (gracefully, then by force) and waits until it has exited. Its data
    /// directory stays, for [`Etcd::restart`].
    pub fn stop(&mut self) {
        let Some((mut child, stdin)) = self.process.take() else {
            return;
        };
        drop(stdin); // the watchdog stops etcd
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
            }
        }
    }

    /// Stops the server and starts it again on the same ports and data: what was committed
    /// is still there. Waits until it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        let binary = etcd_binary();
        if let Err(e) = self.launch(&binary) {
            panic!("etcd ({}) did not restart: {e}", binary.display());
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts the process and waits for `/health`.
    fn launch(&mut self, binary: &Path) -> Result<(), String> {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("etcd log file: {e}"))?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(binary)
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg(format!("--initial-cluster=t={peer}"))
            .args(["--initial-cluster-state", "new"])
            .args(["--logger=zap", "--log-level=error"])
            .stdin(Stdio::piped())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("spawn sh for etcd: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        self.process = Some((child, stdin));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if healthy(self.client_port) {
                return Ok(());
            }
            let exited = match &mut self.process {
                Some((child, _)) => child.try_wait().ok().flatten(),
                None => None,
            };
            if exited.is_some() || Instant::now() >= deadline {
                self.stop();
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                let why = match exited {
                    Some(status) => format!("it exited ({status})"),
                    None => format!("not healthy within {START_TIMEOUT:?}"),
                };
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!("{why}; its log ends:\n{}", tail.join("\n")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two ports free on loopback now.
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    let b = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    (
        a.local_addr().expect("port").port(),
        b.local_addr().expect("port").port(),
    )
}

/// `GET /health` answers `{"health":"true"...}`.
fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request =
        format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.replace(' ', "").contains(r#""health":"true""#)
}

/// The etcd binary: from `PATH` (or `/usr/bin`), installed with apt when missing. Once per
/// process.
fn etcd_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(found) = find_etcd() {
                return found;
            }
            install_etcd_server();
            find_etcd().unwrap_or_else(|| {
                panic!(
                    "etcd is not installed and installing Debian's etcd-server did not provide \
                     it: install etcd (`apt-get install -y etcd-server`) or put `etcd` on PATH"
                )
            })
        })
        .clone()
}

fn find_etcd() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// `apt-get install -y etcd-server` (after `apt-get update` if the first try fails), with
/// `sudo` unless root.
fn install_etcd_server() {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt = |args: &[&str]| {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("-n").arg("apt-get");
            c
        };
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
    };
    eprintln!("etcd not found: installing Debian's etcd-server (apt-get install -y etcd-server)");
    let install = ["install", "-y", "-qq", "etcd-server"];
    let first = apt(&install);
    if first.as_ref().is_ok_and(|o| o.status.success()) {
        return;
    }
    let _ = apt(&["update", "-qq"]);
    match apt(&install) {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "etcd is needed and `apt-get install -y etcd-server` failed ({}): {}\n\
             install etcd yourself (or run `bash .ci/run`, which does)",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "etcd is needed and apt-get could not be run ({e}): install etcd yourself \
             (`apt-get install -y etcd-server`)"
        ),
    }
}
