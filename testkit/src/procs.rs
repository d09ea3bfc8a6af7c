//! Real processes for tests that run KubeHub as an operator does (`kubehub meta`, `hub`,
//! `agent`, `sim`, each its own process): started, signalled (`SIGTERM`, `kill -9`) and
//! waited for by their own process id, their stdout and stderr in a log file each, and never
//! left behind.
//!
//! Each process runs under a small `sh` watchdog (as [`crate::etcd`]'s etcd does): the shell
//! starts it, reports its pid, kills it (`SIGKILL`) once the pipe from the test process closes
//! — a test that panics, or a test binary killed by a timeout, leaves nothing running — and
//! exits with its status when it exits. Signals go to the process itself, never to the shell.

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `sh -c WATCHDOG PROGRAM ARGS...`: runs `PROGRAM ARGS...` with stdout and stderr appended to
/// `$KUBEHUB_PROC_LOG`, prints its pid, kills it when this shell's stdin closes, and exits
/// with its status.
const WATCHDOG: &str = r#"exec 3<&0
"$0" "$@" </dev/null 3<&- >>"$KUBEHUB_PROC_LOG" 2>&1 &
pid=$!
echo "$pid"
( read -r _ <&3; kill -KILL "$pid" ) >/dev/null 2>&1 &
guard=$!
wait "$pid"
status=$?
kill "$guard" >/dev/null 2>&1
exit "$status""#;

/// A running (or exited) process started by [`Proc::start`].
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: u32,
    shell: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

impl Proc {
    /// Starts `program args...` in `dir` with `env` added, its stdout and stderr appended to
    /// `dir/NAME.log`. Panics when it cannot be started.
    pub fn start(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        std::fs::create_dir_all(dir).unwrap();
        let log = dir.join(format!("{name}.log"));
        let shell_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .env("KUBEHUB_PROC_LOG", &log)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The shell's own words ("Killed") go to the log too.
            .stderr(shell_log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({}): {e}", program.display()));
        let stdin = shell.stdin.take();
        let mut line = String::new();
        let stdout = shell.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let pid = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}: the watchdog did not report a pid: {line:?}"));
        Proc {
            name: name.to_owned(),
            pid,
            shell,
            stdin,
            log,
            exit: None,
        }
    }

    /// The name it was started with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (the program's, not the watchdog's).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log file (stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let mut bytes = Vec::new();
            let _ = f.read_to_end(&mut bytes);
            s = String::from_utf8_lossy(&bytes).into_owned();
        }
        s
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits at most `within` for a log line containing `needle` and returns that line.
    /// Panics (with the log's end) if the process exits first or the time passes.
    pub fn wait_for_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_owned();
            }
            if let Some(st) = self.exited() {
                panic!(
                    "{} exited ({st}) before logging {needle:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail(30)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log {needle:?} within {within:?}; its log ends:\n{}",
                self.name,
                self.log_tail(30)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Its exit status if it has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.shell.try_wait().unwrap();
        }
        self.exit
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.exited().is_none()
    }

    /// Sends it `signal` (a `kill -s` name: `TERM`, `KILL`, `STOP`, …). Panics if it has
    /// exited already.
    pub fn signal(&mut self, signal: &str) {
        assert!(
            self.is_running(),
            "{} is not running: cannot send SIG{signal}",
            self.name
        );
        let st = Command::new("kill")
            .args(["-s", signal, &self.pid.to_string()])
            .status()
            .unwrap();
        assert!(
            st.success(),
            "kill -s {signal} {} ({}) failed",
            self.pid,
            self.name
        );
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill9(&mut self) {
        self.signal("KILL");
        let st = self.wait_exit(Duration::from_secs(10));
        assert!(st.is_some(), "{} survived SIGKILL", self.name);
    }

    /// Waits at most `within` for it to exit; its status, or `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.exited() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Closing the pipe makes the watchdog kill the process; the shell then exits.
        drop(self.stdin.take());
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            let _ = self.shell.kill();
            let _ = self.shell.wait();
        }
    }
}

/// A loopback port free now (another process may take it before it is used).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 10 ms until it holds; panics naming `what` if it does not within `within`.
/// Returns how long it took.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    let deadline = start + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// `GET path` over plain HTTP/1.1 (an admin listener's `/readyz`, `/metrics`, …): the status
/// and body, or why it failed (connection refused, timeout). `timeout` bounds the connect and
/// each read.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: a server that reads the head with one read sees all of it.
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((code, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_the_process_and_its_status_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let script =
            "trap 'echo got TERM; exit 3' TERM; echo started; while :; do sleep 0.05; done";
        let mut p = Proc::start("t", dir.path(), Path::new("sh"), &["-c", script], &[]);
        p.wait_for_line("started", Duration::from_secs(10));
        assert!(p.is_running());
        p.signal("TERM");
        let st = p.wait_exit(Duration::from_secs(10)).expect("exited");
        assert_eq!(st.code(), Some(3));
        assert!(p.log().contains("got TERM"), "{}", p.log());

        let mut p = Proc::start("k", dir.path(), Path::new("sleep"), &["30"], &[]);
        p.kill9();
        assert!(!p.exited().unwrap().success());
    }

    #[test]
    fn a_dropped_process_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let p = Proc::start("s", dir.path(), Path::new("sleep"), &["30"], &[]);
        let pid = p.pid();
        let stat = format!("/proc/{pid}/stat");
        assert!(Path::new(&stat).exists());
        let started = Instant::now();
        drop(p);
        assert!(started.elapsed() < Duration::from_secs(5));
        // Gone (or, at worst, another process by now: its start time would differ).
        assert!(!std::fs::read_to_string(&stat).is_ok_and(|s| s.contains("(sleep)")));
    }
}
