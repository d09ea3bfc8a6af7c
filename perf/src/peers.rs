//! The peers KubeHub is measured against, started as processes on the same machine.
//!
//! Three stacks, all with the same user-facing front (HTTPS, TLS 1.3 only, a server
//! certificate for `127.0.0.1` and `localhost` from a [`kubehub_pki::Ca`], HTTP/1.1 keep-alive
//! up to 100,000 requests per connection, no access log):
//!
//! - [`nginx_static`]: nginx serving fixed bodies from files. The floor: what it costs to
//!   answer a request over TLS at all, with no proxying.
//! - [`nginx_proxy`]: nginx as a one-hop TLS-terminating reverse proxy to a plain-HTTP upstream
//!   (keep-alive connections to the upstream, no buffering so watches and logs stream). What a
//!   cloud-side proxy costs when the cluster is directly reachable.
//! - [`rathole_stack`]: what a user would assemble instead of KubeHub when the cluster is
//!   behind NAT: nginx (the TLS front, as in [`nginx_proxy`]) → a rathole server (cloud side,
//!   one service bound on a loopback port that nginx proxies to) ⇐ a rathole client (edge
//!   side) that dials the server over rathole's TLS transport (PKCS#12 identity on the server,
//!   the CA as `trusted_root` on the client) → the plain-HTTP upstream.
//!
//! Each start function writes its configuration, certificates and logs into the directory it
//! is given (one peer per directory), waits until the peer answers HTTPS (for the rathole
//! stack: until a request has gone through the whole chain), and returns a [`Peer`] whose
//! processes are stopped, and waited for, when it is dropped. [`Peer::pids`] lists every
//! process whose CPU time counts, nginx's workers included, for CPU-per-request figures.
//!
//! The binaries come from `perf/peers/install.sh`: nginx from `PATH` or `/usr/sbin/nginx`;
//! rathole 0.5.0 from env `RATHOLE`, `PATH` or `$HOME/.cargo/bin/rathole`; `openssl` (the
//! command) from `PATH`, to make rathole's PKCS#12 identity.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::free_port;

/// How long a peer may take to answer HTTPS after it was started.
const READY_WITHIN: Duration = Duration::from_secs(5);
/// How long the rathole stack may take until a request goes through the whole chain (the
/// client connects its control channel once the server listens; it retries after 1 s).
const CHAIN_READY_WITHIN: Duration = Duration::from_secs(10);
/// How long a stopped nginx may take to shut its workers down before it is killed.
const STOP_WITHIN: Duration = Duration::from_secs(3);
/// What to run when a binary is missing.
const INSTALL_HINT: &str = "run perf/peers/install.sh";
/// The token rathole's client and server share for the one service.
const RATHOLE_TOKEN: &str = "kubehub-perf-peer";
/// The password of rathole's PKCS#12 identity (on disk next to the key anyway).
const P12_PASSWORD: &str = "kubehub-perf";

/// The TLS material of a peer's front: a server certificate for `127.0.0.1` and `localhost`
/// and its key, and the CA that issued it (what clients trust, and rathole's client too).
#[derive(Clone)]
pub struct Tls {
    /// The server certificate, PEM.
    pub cert_pem: String,
    /// The server certificate's private key (PKCS#8), PEM.
    pub key_pem: String,
    /// The issuing CA's certificate, PEM.
    pub ca_pem: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .finish()
    }
}

impl Tls {
    /// A server certificate for `127.0.0.1` and `localhost` issued by `ca`.
    pub fn from_ca(ca: &kubehub_pki::Ca) -> Result<Tls, String> {
        let cert = ca
            .issue_server(&["127.0.0.1", "localhost"])
            .map_err(|e| format!("issuing the peers' server certificate: {e}"))?;
        Ok(Tls {
            cert_pem: cert.cert,
            key_pem: cert.key,
            ca_pem: ca.cert_pem(),
        })
    }

    /// A fresh CA and a server certificate for `127.0.0.1` and `localhost` from it.
    pub fn generate() -> Result<Tls, String> {
        let ca = kubehub_pki::Ca::generate("kubehub-perf peers CA")
            .map_err(|e| format!("generating the peers' CA: {e}"))?;
        Tls::from_ca(&ca)
    }

    /// The CA as a root store: what a client of the peers trusts (see
    /// [`crate::https_client`]).
    pub fn roots(&self) -> Result<rustls::RootCertStore, String> {
        kubehub_pki::parse_roots(&self.ca_pem).map_err(|e| format!("the peers' CA: {e}"))
    }
}

/// A running peer. Dropping it stops its processes (nginx gracefully with SIGTERM, so that its
/// master reaps the workers, then SIGKILL for whatever is left) and waits for them.
#[derive(Debug)]
pub struct Peer {
    /// What it is: `"nginx-static"`, `"nginx-proxy"` or `"nginx+rathole"`.
    pub label: &'static str,
    /// Its HTTPS base URL, `https://127.0.0.1:PORT`, without a trailing slash.
    pub url: String,
    /// Every process whose CPU time counts, labelled: `"nginx"` (the master first, then its
    /// workers), `"rathole-server"`, `"rathole-client"`.
    pub pids: Vec<(&'static str, u32)>,
    /// The log files of its processes (stderr and error logs), in the directory it was given.
    pub logs: Vec<PathBuf>,
    /// The directory with its configuration and logs.
    pub dir: PathBuf,
    /// Its processes, stopped in this order on drop (front first).
    procs: Vec<Proc>,
}

impl Peer {
    /// An error naming the first of its processes that has exited, and its log.
    pub fn check_alive(&mut self) -> Result<(), String> {
        for p in &mut self.procs {
            p.check_alive()?;
        }
        Ok(())
    }
}

/// One started process, stopped and waited for when dropped.
#[derive(Debug)]
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    /// nginx: stop with SIGTERM first (the master then stops and reaps its workers; killing
    /// only the master would leave them running, re-parented to init).
    graceful: bool,
    /// Processes it started (nginx workers), killed too if it does not stop them itself.
    children: Vec<u32>,
}

impl Proc {
    fn spawn(
        name: &'static str,
        mut cmd: Command,
        dir: &Path,
        log: PathBuf,
        graceful: bool,
    ) -> Result<Proc, String> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{name}: creating {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{name}: {}: {e}", log.display()))?;
        let child = cmd
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{name}: starting {:?}: {e}", cmd.get_program()))?;
        Ok(Proc {
            name,
            child,
            log,
            graceful,
            children: Vec::new(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!(
                "{} exited ({st}); see {}{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            )),
            Err(e) => Err(format!("{}: waiting: {e}", self.name)),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful && matches!(self.child.try_wait(), Ok(None)) && signal("TERM", self.pid())
        {
            let until = Instant::now() + STOP_WITHIN;
            while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if matches!(self.child.try_wait(), Ok(None)) {
            for pid in &self.children {
                let _ = signal("KILL", *pid);
            }
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Sends a signal with kill(1) (no unsafe code for kill(2) here); whether it was sent.
fn signal(sig: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The last lines of a log, for an error message ("" when empty or unreadable).
fn log_tail(log: &Path) -> String {
    let Ok(s) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(5)..];
    format!(":\n  {}", tail.join("\n  "))
}

// ---- finding the binaries --------------------------------------------------------------

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn in_path(name: &str) -> Option<PathBuf> {
    in_dirs(name, std::env::var_os("PATH"))
}

fn in_dirs(name: &str, path: Option<OsString>) -> Option<PathBuf> {
    std::env::split_paths(&path?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// nginx: from `PATH`, else `/usr/sbin/nginx`.
pub fn nginx_bin() -> Result<PathBuf, String> {
    in_path("nginx")
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| is_executable(p)))
        .ok_or_else(|| {
            format!("nginx not found (neither on PATH nor /usr/sbin/nginx): {INSTALL_HINT}")
        })
}

/// rathole: from env `RATHOLE` (which must then exist), else `PATH`, else
/// `$HOME/.cargo/bin/rathole`.
pub fn rathole_bin() -> Result<PathBuf, String> {
    find_rathole(
        std::env::var_os("RATHOLE"),
        std::env::var_os("PATH"),
        std::env::var_os("HOME"),
    )
}

fn find_rathole(
    rathole: Option<OsString>,
    path: Option<OsString>,
    home: Option<OsString>,
) -> Result<PathBuf, String> {
    if let Some(p) = rathole.filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(format!(
                "rathole not found at RATHOLE={}: {INSTALL_HINT}",
                p.display()
            ))
        };
    }
    in_dirs("rathole", path)
        .or_else(|| Some(Path::new(&home?).join(".cargo/bin/rathole")).filter(|p| is_executable(p)))
        .ok_or_else(|| {
            format!(
                "rathole not found (env RATHOLE, PATH, $HOME/.cargo/bin/rathole): {INSTALL_HINT}"
            )
        })
}

fn openssl_bin() -> Result<PathBuf, String> {
    in_path("openssl").ok_or_else(|| {
        format!("openssl (the command, for rathole's PKCS#12 identity) not found: {INSTALL_HINT}")
    })
}

// ---- nginx -------------------------------------------------------------------------------

/// Quotes a path or value for nginx's configuration (refusing what cannot be quoted).
fn quote(s: &str) -> Result<String, String> {
    if s.chars()
        .any(|c| c == '"' || c == '\\' || c == '$' || c.is_control())
    {
        return Err(format!("{s:?}: cannot go into nginx's configuration"));
    }
    Ok(format!("\"{s}\""))
}

fn path_str(p: &Path) -> Result<String, String> {
    quote(
        p.to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?,
    )
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// Whether this process runs as root (then nginx's workers must be told to stay root: as
/// `nobody` they could not read the files in `dir`).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// An absolute, existing `dir`.
fn prepare_dir(dir: &Path) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    dir.canonicalize()
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Writes nginx.conf with the common front around `http_extra` (upstream blocks) and
/// `locations`, starts nginx, waits until it answers HTTPS and has all its workers.
fn start_nginx(
    label: &'static str,
    dir: &Path,
    tls: &Tls,
    workers: usize,
    http_extra: &str,
    locations: &str,
    probe_path: &str,
) -> Result<Peer, String> {
    if workers == 0 {
        return Err(format!("{label}: 0 nginx workers"));
    }
    let bin = nginx_bin()?;
    let tmp = dir.join("nginx-tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
    let cert = dir.join("tls-cert.pem");
    let key = dir.join("tls-key.pem");
    write(&cert, tls.cert_pem.as_bytes())?;
    write_private(&key, tls.key_pem.as_bytes())?;
    let port = free_port()?;
    let error_log = dir.join("nginx-error.log");
    let user = if running_as_root() {
        "user root;\n"
    } else {
        ""
    };
    let q = |name: &str| path_str(&dir.join(name));
    let t = |name: &str| path_str(&tmp.join(name));
    let conf = format!(
        "# Written by kubehub-perf (perf/src/peers.rs): {label}.\n\
         {user}worker_processes {workers};\n\
         daemon off;\n\
         master_process on;\n\
         pid {pid};\n\
         lock_file {lock};\n\
         error_log {elog} warn;\n\
         events {{\n    worker_connections 4096;\n}}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   server_tokens off;\n\
         \x20   types {{}}\n\
         \x20   default_type application/octet-stream;\n\
         \x20   keepalive_requests 100000;\n\
         \x20   keepalive_timeout 300s;\n\
         \x20   client_max_body_size 0;\n\
         \x20   client_body_temp_path {t1};\n\
         \x20   proxy_temp_path {t2};\n\
         \x20   fastcgi_temp_path {t3};\n\
         \x20   uwsgi_temp_path {t4};\n\
         \x20   scgi_temp_path {t5};\n\
         {http_extra}\
         \x20   server {{\n\
         \x20       listen 127.0.0.1:{port} ssl;\n\
         \x20       server_name localhost 127.0.0.1;\n\
         \x20       ssl_protocols TLSv1.3;\n\
         \x20       ssl_certificate {cert};\n\
         \x20       ssl_certificate_key {key};\n\
         {locations}\
         \x20   }}\n\
         }}\n",
        pid = q("nginx.pid")?,
        lock = q("nginx.lock")?,
        elog = path_str(&error_log)?,
        t1 = t("client_body")?,
        t2 = t("proxy")?,
        t3 = t("fastcgi")?,
        t4 = t("uwsgi")?,
        t5 = t("scgi")?,
        cert = path_str(&cert)?,
        key = path_str(&key)?,
    );
    let conf_path = dir.join("nginx.conf");
    write(&conf_path, conf.as_bytes())?;

    let mut cmd = Command::new(&bin);
    cmd.arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(&conf_path);
    let mut proc = Proc::spawn("nginx", cmd, dir, error_log.clone(), true)?;
    let roots = tls.roots()?;
    wait_https(&mut proc, port, probe_path, &roots, READY_WITHIN)
        .map_err(|e| format!("{label}: {e}"))?;
    let master = proc.pid();
    let until = Instant::now() + READY_WITHIN;
    let worker_pids = loop {
        let kids = children(master);
        if kids.len() >= workers {
            break kids;
        }
        if Instant::now() >= until {
            return Err(format!(
                "{label}: nginx has {} of {workers} workers after {READY_WITHIN:?}; see {}{}",
                kids.len(),
                error_log.display(),
                log_tail(&error_log)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    proc.children = worker_pids.clone();
    let mut pids = vec![("nginx", master)];
    pids.extend(worker_pids.into_iter().map(|p| ("nginx", p)));
    Ok(Peer {
        label,
        url: format!("https://127.0.0.1:{port}"),
        pids,
        logs: vec![error_log],
        dir: dir.to_owned(),
        procs: vec![proc],
    })
}

/// The child processes of `pid`: from `/proc/PID/task/*/children`, or, on kernels without
/// it, by scanning every `/proc/N/stat` for the parent.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut have_children_file = false;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                have_children_file = true;
                out.extend(s.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    if !have_children_file {
        if let Ok(all) = std::fs::read_dir("/proc") {
            for e in all.flatten() {
                let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let ppid = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if ppid == Some(pid) {
                    out.push(n);
                }
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// A URL path nginx can match exactly and a file name can mirror: `/`-separated segments of
/// unreserved and a few sub-delimiter characters, no empty, `.` or `..` segments, no query,
/// no trailing `/` (nginx hands such URIs to its index module, not to a file).
fn check_url_path(path: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-._~:@+,=!*".contains(c);
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("{path:?}: a URL path must start with /"));
    };
    for seg in rest.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || !seg.chars().all(ok_char) {
            return Err(format!(
                "{path:?}: only /-separated segments of letters, digits and -._~:@+,=!* \
                 (no query, no trailing /, no empty, . or .. segments)"
            ));
        }
    }
    Ok(())
}

/// nginx serving `files` (URL path, body, Content-Type) over HTTPS with `workers` worker
/// processes; any other path is a 404.
///
/// Each body is written under `dir/www/` at a name mirroring its URL path plus `.body`
/// (`/api/v1` → `www/api/v1.body`, so that `/api/v1` and `/api/v1/pods` can both be served),
/// and served by an exact-match `location` with its own `default_type`, so the Content-Type
/// is exactly the one given.
pub fn nginx_static(
    dir: &Path,
    tls: &Tls,
    files: &[(&str, &[u8], &str)],
    workers: usize,
) -> Result<Peer, String> {
    let dir = prepare_dir(dir)?;
    let www = dir.join("www");
    let mut locations = String::new();
    for (path, body, content_type) in files {
        check_url_path(path)?;
        let file = www.join(format!("{}.body", path.trim_start_matches('/')));
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        write(&file, body)?;
        locations.push_str(&format!(
            "        location = {} {{\n            default_type {};\n            alias {};\n        }}\n",
            quote(path)?,
            quote(content_type)?,
            path_str(&file)?,
        ));
    }
    locations.push_str("        location / {\n            return 404;\n        }\n");
    let probe = files.first().map(|f| f.0).unwrap_or("/");
    start_nginx("nginx-static", &dir, tls, workers, "", &locations, probe)
}

/// The `upstream` block and the proxying `location /` of nginx in front of `upstream`.
fn proxy_conf(upstream: SocketAddr) -> (String, String) {
    let http_extra = format!(
        "    upstream backend {{\n        server {upstream};\n        keepalive 64;\n    }}\n"
    );
    let location = "        location / {\n\
                    \x20           proxy_pass http://backend;\n\
                    \x20           proxy_http_version 1.1;\n\
                    \x20           proxy_set_header Connection \"\";\n\
                    \x20           proxy_set_header Host $http_host;\n\
                    \x20           proxy_buffering off;\n\
                    \x20           proxy_request_buffering off;\n\
                    \x20           proxy_read_timeout 3600s;\n\
                    \x20           proxy_send_timeout 3600s;\n\
                    \x20       }\n"
        .to_owned();
    (http_extra, location)
}

/// nginx as an HTTPS reverse proxy to `upstream` (plain HTTP), with `workers` worker
/// processes: HTTP/1.1 keep-alive to the upstream (up to 64 idle connections per worker),
/// responses not buffered (watches and logs stream), an hour of read timeout.
pub fn nginx_proxy(
    dir: &Path,
    tls: &Tls,
    upstream: SocketAddr,
    workers: usize,
) -> Result<Peer, String> {
    let dir = prepare_dir(dir)?;
    let (http_extra, location) = proxy_conf(upstream);
    start_nginx(
        "nginx-proxy",
        &dir,
        tls,
        workers,
        &http_extra,
        &location,
        "/",
    )
}

// ---- rathole -----------------------------------------------------------------------------

/// nginx (the HTTPS front, as in [`nginx_proxy`], `workers` worker processes) → rathole
/// server → rathole client over rathole's TLS transport → `upstream` (plain HTTP).
///
/// Returns once a request has gone through the whole chain. rathole's processes use tokio's
/// default (one thread per core); `workers` is nginx's.
pub fn rathole_stack(
    dir: &Path,
    tls: &Tls,
    upstream: SocketAddr,
    workers: usize,
) -> Result<Peer, String> {
    const LABEL: &str = "nginx+rathole";
    let dir = prepare_dir(dir)?;
    let rathole = rathole_bin()?;
    let openssl = openssl_bin()?;

    // The server's PKCS#12 identity and the client's trusted root.
    let cert = dir.join("rathole-cert.pem");
    let key = dir.join("rathole-key.pem");
    let ca = dir.join("rathole-ca.pem");
    let p12 = dir.join("rathole-identity.p12");
    write(&cert, tls.cert_pem.as_bytes())?;
    write_private(&key, tls.key_pem.as_bytes())?;
    write(&ca, tls.ca_pem.as_bytes())?;
    let out = Command::new(&openssl)
        .args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12)
        .args(["-name", "rathole-server", "-passout"])
        .arg(format!("pass:{P12_PASSWORD}"))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{LABEL}: running {}: {e}", openssl.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{LABEL}: openssl pkcs12 -export failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }

    let control = free_port()?;
    let service = free_port()?;
    let toml_str = |p: &Path| -> Result<String, String> {
        let s = p
            .to_str()
            .ok_or_else(|| format!("{}: not UTF-8", p.display()))?;
        // TOML basic strings: escape what must be.
        Ok(format!(
            "\"{}\"",
            s.replace('\\', "\\\\").replace('"', "\\\"")
        ))
    };
    let server_conf = format!(
        "# Written by kubehub-perf (perf/src/peers.rs): the cloud side of {LABEL}.\n\
         [server]\n\
         bind_addr = \"127.0.0.1:{control}\"\n\
         \n\
         [server.transport]\n\
         type = \"tls\"\n\
         \n\
         [server.transport.tls]\n\
         pkcs12 = {p12}\n\
         pkcs12_password = \"{P12_PASSWORD}\"\n\
         \n\
         [server.services.kube]\n\
         token = \"{RATHOLE_TOKEN}\"\n\
         bind_addr = \"127.0.0.1:{service}\"\n",
        p12 = toml_str(&p12)?,
    );
    let client_conf = format!(
        "# Written by kubehub-perf (perf/src/peers.rs): the edge side of {LABEL}.\n\
         [client]\n\
         remote_addr = \"127.0.0.1:{control}\"\n\
         \n\
         [client.transport]\n\
         type = \"tls\"\n\
         \n\
         [client.transport.tls]\n\
         trusted_root = {ca}\n\
         hostname = \"localhost\"\n\
         \n\
         [client.services.kube]\n\
         token = \"{RATHOLE_TOKEN}\"\n\
         local_addr = \"{upstream}\"\n",
        ca = toml_str(&ca)?,
    );
    let server_toml = dir.join("rathole-server.toml");
    let client_toml = dir.join("rathole-client.toml");
    write(&server_toml, server_conf.as_bytes())?;
    write(&client_toml, client_conf.as_bytes())?;

    let rathole_cmd = |mode: &str, conf: &Path| {
        let mut c = Command::new(&rathole);
        // info: a few lines per control channel (not per request), among them the
        // "Listening at" that tells the server is up.
        c.arg(mode).arg(conf).env("RUST_LOG", "info");
        c
    };
    let server_log = dir.join("rathole-server.log");
    let client_log = dir.join("rathole-client.log");
    let mut server = Proc::spawn(
        "rathole-server",
        rathole_cmd("--server", &server_toml),
        &dir,
        server_log.clone(),
        false,
    )?;
    // Start the client once the server listens, else the client waits out a retry interval
    // (1 s). Told by the server's log: a TCP probe of the port would make it log a failed
    // TLS handshake.
    let listening = format!("Listening at 127.0.0.1:{control}");
    wait_until(&mut server, READY_WITHIN, || {
        std::fs::read_to_string(&server_log)
            .map(|l| l.lines().any(|l| l.trim_end().ends_with(&listening)))
            .unwrap_or(false)
    })
    .map_err(|e| format!("{LABEL}: rathole server not listening on 127.0.0.1:{control}: {e}"))?;
    let mut client = Proc::spawn(
        "rathole-client",
        rathole_cmd("--client", &client_toml),
        &dir,
        client_log.clone(),
        false,
    )?;
    // The service port opens once the client's control channel is up; a request through it
    // reaches the upstream.
    let service_addr = SocketAddr::from(([127, 0, 0, 1], service));
    let until = Instant::now() + CHAIN_READY_WITHIN;
    loop {
        server.check_alive()?;
        client.check_alive()?;
        let last = match http_get(service_addr, "/", None) {
            Ok(_) => break,
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(format!(
                "{LABEL}: no HTTP answer through rathole (127.0.0.1:{service} → {upstream}) \
                 within {CHAIN_READY_WITHIN:?} ({last}); see {}{} and {}{}",
                server_log.display(),
                log_tail(&server_log),
                client_log.display(),
                log_tail(&client_log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let (http_extra, location) = proxy_conf(service_addr);
    let mut peer = start_nginx(LABEL, &dir, tls, workers, &http_extra, &location, "/")?;
    // The whole chain, from the user's side: nginx must not answer 502/504 on its own.
    let roots = tls.roots()?;
    let front: u16 = peer
        .url
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("{LABEL}: no port in {}", peer.url))?;
    let status = https_get(front, "/", &roots)
        .map_err(|e| format!("{LABEL}: a request through the whole chain: {e}"))?;
    if status == 502 || status == 504 {
        return Err(format!(
            "{LABEL}: a request through the whole chain got {status} from nginx; see {}",
            dir.join("nginx-error.log").display()
        ));
    }
    peer.label = LABEL;
    peer.pids.push(("rathole-server", server.pid()));
    peer.pids.push(("rathole-client", client.pid()));
    peer.logs.push(server_log);
    peer.logs.push(client_log);
    // Stopped after nginx, the client before the server (else it logs the lost channels).
    peer.procs.push(client);
    peer.procs.push(server);
    Ok(peer)
}

// ---- readiness ----------------------------------------------------------------------------

/// Polls `ready` until it holds, failing when `proc` exits or `within` passes.
fn wait_until(
    proc: &mut Proc,
    within: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    let until = Instant::now() + within;
    loop {
        proc.check_alive()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() >= until {
            return Err(format!(
                "not ready within {within:?}; see {}{}",
                proc.log.display(),
                log_tail(&proc.log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until `port` answers an HTTPS GET of `path` (any status).
fn wait_https(
    proc: &mut Proc,
    port: u16,
    path: &str,
    roots: &rustls::RootCertStore,
    within: Duration,
) -> Result<(), String> {
    let until = Instant::now() + within;
    loop {
        proc.check_alive()?;
        let last = match https_get(port, path, roots) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= until {
            return Err(format!(
                "{} did not answer HTTPS on 127.0.0.1:{port} within {within:?} ({last}); see {}{}",
                proc.name,
                proc.log.display(),
                log_tail(&proc.log)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One HTTPS GET to `127.0.0.1:port` trusting `roots`; the response's status.
fn https_get(port: u16, path: &str, roots: &rustls::RootCertStore) -> Result<u16, String> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots.clone())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    http_get(SocketAddr::from(([127, 0, 0, 1], port)), path, Some(conn))
}

/// One HTTP/1.1 GET (over TLS with `tls`), reading up to the end of the response head; the
/// status.
fn http_get(
    addr: SocketAddr,
    path: &str,
    tls: Option<rustls::ClientConnection>,
) -> Result<u16, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    tcp.set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let mut stream: Box<dyn ReadWrite> = match tls {
        Some(conn) => Box::new(rustls::StreamOwned::new(conn, tcp)),
        None => Box::new(tcp),
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream
        .write_all(req.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("sending to {addr}: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        let n = stream
            .read(&mut buf)
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (
        parts.next(),
        parts.next().and_then(|s| s.parse::<u16>().ok()),
    ) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => Ok(status),
        _ if head.is_empty() => Err(format!("{addr} closed the connection without answering")),
        _ => Err(format!("{addr} answered {:?}, not HTTP/1.x", line.trim())),
    }
}

/// A blocking byte stream, TLS or not.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_paths() {
        for ok in [
            "/api",
            "/api/v1/namespaces/default/configmaps/x",
            "/version",
            "/a:b@c",
        ] {
            assert!(check_url_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "/", "/api/", "api", "/a//b", "/a/../b", "/a?x=1", "/a b", "/a\"b", "/$x",
        ] {
            assert!(check_url_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn finding_rathole() {
        let none = |r: Option<&str>, path: &str, home: &str| {
            find_rathole(r.map(Into::into), Some(path.into()), Some(home.into()))
        };
        let err = none(Some("/nonexistent/rathole"), "/usr/bin", "/nonexistent").unwrap_err();
        assert!(err.contains("RATHOLE=/nonexistent/rathole"), "{err}");
        assert!(err.contains("perf/peers/install.sh"), "{err}");
        let err = none(None, "/nonexistent", "/nonexistent").unwrap_err();
        assert!(err.contains("perf/peers/install.sh"), "{err}");
        // A directory on PATH holding an executable `rathole`, and $HOME/.cargo/bin.
        let d = std::env::temp_dir().join(format!("kubehub-perf-find-{}", std::process::id()));
        let bin = d.join(".cargo/bin");
        std::fs::create_dir_all(&bin).unwrap();
        let exe = bin.join("rathole");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let home = d.to_str().unwrap();
        assert_eq!(none(None, "/nonexistent", home).unwrap(), exe);
        assert_eq!(
            none(None, bin.to_str().unwrap(), "/nonexistent").unwrap(),
            exe
        );
        assert_eq!(none(Some(exe.to_str().unwrap()), "", "").unwrap(), exe);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("application/json").unwrap(), "\"application/json\"");
        assert!(quote("a\"b").is_err());
        assert!(quote("$host").is_err());
    }
}
