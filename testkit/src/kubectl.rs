//! Helpers for tests that drive real clients (kubectl) against the simulator or the hub.
//!
//! * [`Kubectl`]: kubectl with a kubeconfig and a discovery cache of its own; [`read_until`]
//!   reads what a streaming command (`get -w`, `logs -f`) prints.
//! * For exec, attach, cp and port-forward: the [`Transport`] kubectl carries them over,
//!   a command fed stdin bytes ([`Kubectl::run_with_input`]), kubectl on a pseudo-terminal
//!   ([`Kubectl::under_terminal`]), a port-forward that ends with its guard
//!   ([`Kubectl::port_forward`]), and a wait that gives up ([`wait_with_deadline`]).

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// How kubectl carries exec, attach, cp and port-forward: WebSocket (its default since 1.30)
/// or SPDY (its fallback), chosen with `KUBECTL_REMOTE_COMMAND_WEBSOCKETS` and
/// `KUBECTL_PORT_FORWARD_WEBSOCKETS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (`v5.channel.k8s.io`, `portforward.k8s.io` tunnelled).
    WebSocket,
    /// SPDY/3.1.
    Spdy,
}

impl Transport {
    /// Both, WebSocket first.
    pub const BOTH: [Transport; 2] = [Transport::WebSocket, Transport::Spdy];

    /// The environment that makes kubectl use this transport.
    pub fn env(self) -> [(&'static str, &'static str); 2] {
        let websockets = match self {
            Transport::WebSocket => "true",
            Transport::Spdy => "false",
        };
        [
            ("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets),
            ("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets),
        ]
    }
}

/// The kubectl the tests use.
pub const KUBECTL: &str = "/usr/bin/kubectl";

/// kubectl with a kubeconfig and a discovery cache of its own.
#[derive(Debug, Clone)]
pub struct Kubectl {
    /// The kubeconfig.
    pub kubeconfig: PathBuf,
    /// The `--cache-dir`.
    pub cache_dir: PathBuf,
}

impl Kubectl {
    /// kubectl for `kubeconfig`, caching discovery under `dir/cache`.
    pub fn new(kubeconfig: &Path, dir: &Path) -> Kubectl {
        Kubectl {
            kubeconfig: kubeconfig.to_owned(),
            cache_dir: dir.join("cache"),
        }
    }

    /// The command, ready for more arguments or redirections.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(KUBECTL);
        c.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .args(args)
            .env_remove("KUBECONFIG");
        c
    }

    /// Runs to completion. Panics if kubectl cannot be started.
    pub fn output(&self, args: &[&str]) -> Output {
        match self.cmd(args).output() {
            Ok(o) => o,
            Err(e) => panic!("running {KUBECTL}: {e}"),
        }
    }

    /// Runs and returns stdout; panics with the output if kubectl failed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts kubectl with stdout piped (stderr discarded).
    pub fn spawn(&self, args: &[&str]) -> Child {
        match self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => panic!("spawning {KUBECTL}: {e}"),
        }
    }

    /// [`Kubectl::cmd`] with `t` for exec, attach, cp and port-forward.
    pub fn cmd_over(&self, t: Transport, args: &[&str]) -> Command {
        let mut c = self.cmd(args);
        c.envs(t.env());
        c
    }

    /// Starts a long session over `t` (`args`: an exec whose command prints `started` and
    /// then waits, e.g. `sh -c "echo started; sleep 600"`) and returns once it printed
    /// `started`, so the session is open at the hub. Panics if it does not within 30 s.
    pub fn open_session(&self, t: Transport, args: &[&str]) -> Child {
        let mut child = self
            .cmd_over(t, args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {KUBECTL}: {e}"));
        let started = read_until(&mut child, Duration::from_secs(30), |o| {
            o.contains("started")
        });
        assert!(started.contains("started"), "{t:?}: {started}");
        child
    }

    /// [`Kubectl::output`] over `t`: runs to completion (stdin empty), stdout and stderr
    /// collected. Panics if kubectl cannot be started.
    pub fn output_over(&self, t: Transport, args: &[&str]) -> Output {
        self.cmd_over(t, args)
            .output()
            .unwrap_or_else(|e| panic!("running {KUBECTL}: {e}"))
    }

    /// Runs `args` over `t` with `input` on its stdin (`kubectl exec -i`, `attach -i`) and
    /// collects stdout and stderr. The input is written from a thread while the output is
    /// read, so a command that answers before it has read everything, or stops reading
    /// (`head`), blocks neither side; stdin is closed once all of it is written.
    pub fn run_with_input(&self, t: Transport, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .cmd_over(t, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {KUBECTL}: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            // A command that exits before reading it all closes the pipe: not an error here.
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// `kubectl ARGS` over `t` on a pseudo-terminal of its own, as a person's shell runs it
    /// (`script -qec`), with stdin, stdout and stderr piped: what the test writes to stdin is
    /// typed at the terminal, stdout is the screen (the terminal's echo, `\r\n` line ends).
    /// `script` exits with kubectl's status.
    pub fn under_terminal(&self, t: Transport, args: &[&str]) -> Command {
        let (kubeconfig, cache_dir) = (
            self.kubeconfig.to_string_lossy(),
            self.cache_dir.to_string_lossy(),
        );
        let words = [
            KUBECTL,
            "--kubeconfig",
            &kubeconfig,
            "--cache-dir",
            &cache_dir,
        ];
        let line: Vec<Cow<str>> = words.iter().chain(args).map(|w| shell_word(w)).collect();
        let mut c = Command::new("script");
        c.args(["-qec", &line.join(" "), "/dev/null"])
            .envs(t.env())
            .env_remove("KUBECONFIG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Starts `kubectl port-forward ARGS :REMOTE...` over `t` (`args`: the namespace, the
    /// target), each remote port on a local port kubectl picks, and waits (at most 30 s) until
    /// kubectl says it listens on all of them; panics if it exits or does not get there.
    ///
    /// kubectl's stdout and stderr go to a file ([`PortForward::log`]): it writes a line per
    /// forwarded connection, and into a pipe that is not read to the end it would block, or
    /// die once the pipe is dropped, resetting the connections it carries.
    pub fn port_forward(&self, t: Transport, args: &[&str], remote: &[u16]) -> PortForward {
        let log = tempfile::Builder::new()
            .prefix("kubectl-port-forward-")
            .suffix(".log")
            .tempfile()
            .unwrap();
        let specs: Vec<String> = remote.iter().map(|r| format!(":{r}")).collect();
        let mut all = vec!["port-forward"];
        all.extend_from_slice(args);
        all.extend(specs.iter().map(String::as_str));
        let child = self
            .cmd_over(t, &all)
            .stdin(Stdio::null())
            .stdout(log.as_file().try_clone().unwrap())
            .stderr(log.as_file().try_clone().unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {KUBECTL}: {e}"));
        // From here on a panic drops the guard, which kills kubectl and waits for it.
        let mut pf = PortForward {
            child,
            log,
            ports: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = pf.log();
            pf.ports = forwarding(&out);
            if remote
                .iter()
                .all(|r| pf.ports.iter().any(|(_, to)| to == r))
            {
                return pf;
            }
            if let Some(status) = pf.child.try_wait().unwrap() {
                panic!("kubectl {all:?} exited ({status}): {out}");
            }
            assert!(
                Instant::now() < deadline,
                "kubectl {all:?} did not listen within 30 s: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `kubectl port-forward` ([`Kubectl::port_forward`]). Dropping it kills kubectl
/// and waits for it.
#[derive(Debug)]
pub struct PortForward {
    child: Child,
    log: tempfile::NamedTempFile,
    /// (local, remote) for each port kubectl forwards.
    ports: Vec<(u16, u16)>,
}

impl PortForward {
    /// The local port kubectl forwards to `remote`. Panics if `remote` was not asked for.
    pub fn local(&self, remote: u16) -> u16 {
        match self.ports.iter().find(|(_, to)| *to == remote) {
            Some((local, _)) => *local,
            None => panic!("no port forwarded to {remote}: {:?}", self.ports),
        }
    }

    /// What kubectl has written so far, stdout and stderr.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log.path()).unwrap()).into_owned()
    }

    /// Waits at most `within` for kubectl to exit on its own; panics with its log if it is
    /// still forwarding then.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match exited_within(&mut self.child, within) {
            Some(status) => status,
            None => panic!(
                "kubectl port-forward still runs after {within:?}: {}",
                self.log()
            ),
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The (local, remote) ports of kubectl's complete `Forwarding from 127.0.0.1:L -> R` lines.
fn forwarding(log: &str) -> Vec<(u16, u16)> {
    log.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let (local, remote) = l
                .trim_end()
                .strip_prefix("Forwarding from 127.0.0.1:")?
                .split_once(" -> ")?;
            Some((local.parse().ok()?, remote.parse().ok()?))
        })
        .collect()
}

/// `w` as one word for `sh -c`: as it is when that is safe, else single-quoted.
fn shell_word(w: &str) -> Cow<'_, str> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c);
    if !w.is_empty() && w.chars().all(plain) {
        Cow::Borrowed(w)
    } else {
        Cow::Owned(format!("'{}'", w.replace('\'', r"'\''")))
    }
}

/// Waits at most `within` for `child` to exit and returns its output (what it piped and
/// nobody took: the pipes are read once it has exited, so what it writes meanwhile must fit
/// in them). If it is still running then, kills it, waits for it and panics with its output.
pub fn wait_with_deadline(mut child: Child, within: Duration) -> Output {
    if exited_within(&mut child, within).is_some() {
        return child.wait_with_output().unwrap();
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "still running after {within:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `child` until it exits (its status) or `within` passes (`None`).
fn exited_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads lines of a child's stdout (on a thread) until `pred` holds for the output so far or
/// `within` passes; returns the output.
pub fn read_until(child: &mut Child, within: Duration, pred: impl Fn(&str) -> bool) -> String {
    use std::io::BufRead;
    let Some(stdout) = child.stdout.take() else {
        return String::new();
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + within;
    let mut out = String::new();
    while !pred(&out) {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(l) => {
                out.push_str(&l);
                out.push('\n');
            }
            Err(_) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarding_lines_are_read_once_complete() {
        let log = "Forwarding from 127.0.0.1:41001 -> 8080\nForwarding from [::1]:41001 -> 8080\n\
                   Handling connection for 41001\nForwarding from 127.0.0.1:41002 -> 90";
        assert_eq!(forwarding(log), [(41001, 8080)]);
    }

    #[test]
    fn shell_words() {
        assert_eq!(shell_word("/tmp/.tmpX/kubeconfig"), "/tmp/.tmpX/kubeconfig");
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }
}
