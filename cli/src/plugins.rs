//! `kubehub ctl native` and `kubehub ctl host`: a cluster's agent plugins, through the hub,
//! with the kubeconfig the metaserver issued (`kubehub ctl kubeconfig`): its server URL
//! (`https://HUB/clusters/<id>`, or `https://HUB` for a token bound to one cluster), bearer
//! token and CA.
//!
//! * `kubehub ctl native --kubeconfig FILE [--context C] [CLUSTER] COMMAND [NAME=VALUE …]`:
//!   `POST /plugins/native/COMMAND` with the arguments; the command's stdout and stderr are
//!   copied to this process's as they arrive, and it exits with the command's exit code (124
//!   if it timed out, as `timeout(1)` does; 128 + N if a signal N killed it). A refusal (403,
//!   404, 422, …) prints the hub's or agent's message and exits 1.
//! * `kubehub ctl native --list [CLUSTER]`: the commands allowed there (`-o json`: as JSON).
//! * `kubehub ctl host [CLUSTER]`: the edge host's facts (JSON).
//!
//! CLUSTER, when given, replaces the cluster of the context's server URL (or is added to it).
//! The HTTP client is the same stack as the metaserver's client (hyper over rustls, the CA
//! trusted with `kubehub_enroll::verified_config`), one connection per call.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kubehub_kapi::plugin::{Exit, OutputError, OutputLine, OutputStream};
use serde_json::{json, Value};
use yaml_rust2::{Yaml, YamlLoader};

/// Where the hub is and how to talk to it: from a kubeconfig.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// The kubeconfig the metaserver issued (`kubehub ctl kubeconfig`).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: PathBuf,
    /// The context to use (default: the kubeconfig's current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// `kubehub ctl native`.
#[derive(Debug, Args)]
pub struct NativeArgs {
    /// The hub.
    #[command(flatten)]
    pub hub: HubArgs,
    /// List the commands allowed on the cluster instead of running one.
    #[arg(long)]
    pub list: bool,
    /// `[CLUSTER] COMMAND [NAME=VALUE ...]` (with --list: `[CLUSTER]`).
    #[arg(value_name = "[CLUSTER] COMMAND [NAME=VALUE]")]
    pub words: Vec<String>,
}

/// `kubehub ctl host`.
#[derive(Debug, Args)]
pub struct HostArgs {
    /// The hub.
    #[command(flatten)]
    pub hub: HubArgs,
    /// The cluster (default: the context's).
    pub cluster: Option<String>,
}

/// A failure: the exit code and what to say.
type Failure = (i32, String);

fn usage(m: impl Into<String>) -> Failure {
    (2, m.into())
}

fn fail(m: impl Into<String>) -> Failure {
    (1, m.into())
}

/// The hub, as a kubeconfig context describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    /// `host[:port]`.
    pub authority: String,
    /// The host (for TLS and connecting).
    pub host: String,
    /// The port.
    pub port: u16,
    /// The path in front of every request (`/clusters/<id>` or empty).
    pub prefix: String,
    /// The CA (PEM).
    pub ca_pem: String,
    /// The bearer token.
    pub token: String,
}

fn text<'a>(y: &'a Yaml, key: &str) -> Option<&'a str> {
    y[key].as_str().filter(|s| !s.is_empty())
}

/// The entry `name` of the list `list` (`clusters`, `users`, `contexts`): its inner map.
fn named<'a>(doc: &'a Yaml, list: &str, inner: &str, name: &str) -> Option<&'a Yaml> {
    doc[list]
        .as_vec()?
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| &e[inner])
}

impl Hub {
    /// Reads `path` (a kubeconfig): the context `context` (default: the current one), its
    /// cluster's server and CA, its user's token; `cluster` replaces the server's
    /// `/clusters/<id>` (or is added).
    pub fn from_kubeconfig(
        path: &Path,
        context: Option<&str>,
        cluster: Option<&str>,
    ) -> Result<Hub, String> {
        let file = path.display();
        let source = std::fs::read_to_string(path).map_err(|e| format!("reading {file}: {e}"))?;
        let docs = YamlLoader::load_from_str(&source).map_err(|e| format!("{file}: {e}"))?;
        let doc = docs
            .first()
            .ok_or_else(|| format!("{file}: not a kubeconfig"))?;
        let ctx_name = match context {
            Some(c) => c.to_owned(),
            None => text(doc, "current-context")
                .ok_or_else(|| format!("{file}: no current-context (name one with --context)"))?
                .to_owned(),
        };
        let ctx = named(doc, "contexts", "context", &ctx_name)
            .ok_or_else(|| format!("{file}: no context {ctx_name:?}"))?;
        let cluster_name = text(ctx, "cluster")
            .ok_or_else(|| format!("{file}: context {ctx_name:?} names no cluster"))?;
        let user_name = text(ctx, "user")
            .ok_or_else(|| format!("{file}: context {ctx_name:?} names no user"))?;
        let c = named(doc, "clusters", "cluster", cluster_name)
            .ok_or_else(|| format!("{file}: no cluster {cluster_name:?}"))?;
        let u = named(doc, "users", "user", user_name)
            .ok_or_else(|| format!("{file}: no user {user_name:?}"))?;
        let server = text(c, "server")
            .ok_or_else(|| format!("{file}: cluster {cluster_name:?} has no server"))?;
        let relative = |p: &str| path.parent().unwrap_or(Path::new(".")).join(p);
        let ca_pem = match (
            text(c, "certificate-authority-data"),
            text(c, "certificate-authority"),
        ) {
            (Some(data), _) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| {
                        format!("{file}: cluster {cluster_name:?}: certificate-authority-data: {e}")
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    format!("{file}: cluster {cluster_name:?}: certificate-authority-data is not PEM")
                })?
            }
            (None, Some(p)) => std::fs::read_to_string(relative(p))
                .map_err(|e| format!("reading certificate-authority {p}: {e}"))?,
            (None, None) => {
                return Err(format!(
                    "{file}: cluster {cluster_name:?} has no certificate-authority(-data): the hub's CA is needed"
                ))
            }
        };
        let token = match (text(u, "token"), text(u, "tokenFile")) {
            (Some(t), _) => t.trim().to_owned(),
            (None, Some(p)) => std::fs::read_to_string(relative(p))
                .map_err(|e| format!("reading tokenFile {p}: {e}"))?
                .trim()
                .to_owned(),
            (None, None) => {
                return Err(format!(
                    "{file}: user {user_name:?} has no token (kubehub ctl native needs a KubeHub token)"
                ))
            }
        };
        let uri: http::Uri = server
            .parse()
            .map_err(|e| format!("{file}: server {server:?}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("{file}: server {server:?} is not https://"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{file}: server {server:?} has no host"))?;
        let mut prefix = uri.path().trim_end_matches('/').to_owned();
        if let Some(id) = cluster {
            if id.is_empty() || id.contains(['/', '?', '#', '%']) {
                return Err(format!("cluster {id:?} is not a cluster id"));
            }
            let base = match prefix.rfind("/clusters/") {
                Some(at) if !prefix[at + "/clusters/".len()..].contains('/') => &prefix[..at],
                _ => prefix.as_str(),
            };
            prefix = format!("{base}/clusters/{id}");
        }
        Ok(Hub {
            authority: authority.as_str().to_owned(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: authority.port_u16().unwrap_or(443),
            prefix,
            ca_pem,
            token,
        })
    }

    /// Sends one request (`path` after the prefix) and returns the answer as soon as its head
    /// arrives; the body streams from the connection.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<Incoming>, String> {
        let url = format!("https://{}{}{path}", self.authority, self.prefix);
        let err = |what: &str, e: &dyn std::fmt::Display| format!("{url}: {what}: {e}");
        let tls = kubehub_enroll::verified_config(&self.ca_pem, None)
            .map_err(|e| err("the kubeconfig's CA", &e))?;
        let connect = async {
            let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
                .await
                .map_err(|e| err("connecting", &e))?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(self.host.clone())
                .map_err(|e| err("server name", &e))?;
            let stream = tokio_rustls::TlsConnector::from(tls as Arc<rustls::ClientConfig>)
                .connect(name, tcp)
                .await
                .map_err(|e| err("TLS", &e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| err("HTTP", &e))?;
            // Runs until the answer is read (or dropped).
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut req = http::Request::builder()
                .method(method)
                .uri(format!("{}{path}", self.prefix))
                .header(http::header::HOST, &self.authority)
                .header(
                    http::header::AUTHORIZATION,
                    format!("Bearer {}", self.token),
                )
                .header(http::header::ACCEPT, "application/json")
                .header(
                    http::header::USER_AGENT,
                    concat!("kubehub-ctl/", env!("CARGO_PKG_VERSION")),
                );
            if body.is_some() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Full::new(Bytes::from(body.unwrap_or_default())))
                .map_err(|e| err("request", &e))?;
            sender
                .send_request(req)
                .await
                .map_err(|e| err("request", &e))
        };
        tokio::time::timeout(Duration::from_secs(30), connect)
            .await
            .map_err(|_| format!("{url}: no answer within 30 s"))?
    }

    /// A whole JSON answer (at most 16 MiB), or the refusal's message.
    async fn get_json(&self, path: &str) -> Result<Value, Failure> {
        let resp = self
            .send(http::Method::GET, path, None)
            .await
            .map_err(fail)?;
        let status = resp.status();
        let bytes = read_all(resp.into_body(), 16 << 20).await.map_err(fail)?;
        if !status.is_success() {
            return Err(fail(refusal(status, &bytes)));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("the answer is not JSON: {e}")))
    }
}

async fn read_all(body: Incoming, max: usize) -> Result<Bytes, String> {
    http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| format!("reading the answer: {e}"))
}

/// What to say about a refusal: the `Status` message, else the body's first line.
fn refusal(status: http::StatusCode, body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v["message"].is_string() => format!(
            "{} ({}): {}",
            v["reason"].as_str().unwrap_or(""),
            status.as_u16(),
            v["message"].as_str().unwrap_or("")
        ),
        _ => format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(512)]).trim()
        ),
    }
}

/// Percent-encodes a path segment (anything but unreserved characters).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What `kubehub ctl native`'s words say.
#[derive(Debug, Default, PartialEq, Eq)]
struct Words {
    cluster: Option<String>,
    command: Option<String>,
    args: BTreeMap<String, String>,
}

/// `[CLUSTER] COMMAND` and the `NAME=VALUE` arguments from the words.
fn parse_words(words: &[String], list: bool) -> Result<Words, Failure> {
    let plain = words.iter().take_while(|w| !w.contains('=')).count();
    let (cluster, command) = match (list, plain) {
        (true, 0) => (None, None),
        (true, 1) => (Some(words[0].clone()), None),
        (true, _) => return Err(usage("native --list takes at most a CLUSTER")),
        (false, 1) => (None, Some(words[0].clone())),
        (false, 2) => (Some(words[0].clone()), Some(words[1].clone())),
        (false, 0) => {
            return Err(usage(
                "native needs a COMMAND: [CLUSTER] COMMAND [NAME=VALUE ...]",
            ))
        }
        (false, _) => {
            return Err(usage(
                "native takes [CLUSTER] COMMAND then NAME=VALUE arguments",
            ))
        }
    };
    let mut args = BTreeMap::new();
    for w in &words[plain..] {
        let Some((name, value)) = w.split_once('=') else {
            return Err(usage(format!(
                "{w:?}: arguments are NAME=VALUE (after [CLUSTER] COMMAND)"
            )));
        };
        if list {
            return Err(usage("native --list takes no arguments"));
        }
        if args.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(usage(format!("argument {name} given twice")));
        }
    }
    Ok(Words {
        cluster,
        command,
        args,
    })
}

/// Runs `kubehub ctl native`; returns the exit code.
pub async fn native(args: NativeArgs, json_out: bool) -> Result<i32, Failure> {
    let Words {
        cluster,
        command,
        args: values,
    } = parse_words(&args.words, args.list)?;
    let hub = Hub::from_kubeconfig(
        &args.hub.kubeconfig,
        args.hub.context.as_deref(),
        cluster.as_deref(),
    )
    .map_err(usage)?;
    let Some(command) = command else {
        let v = hub.get_json("/plugins/native").await?;
        print_list(&v, json_out);
        return Ok(0);
    };
    let body = serde_json::to_vec(&json!({ "args": values })).unwrap_or_default();
    let resp = hub
        .send(
            http::Method::POST,
            &format!("/plugins/native/{}", segment(&command)),
            Some(body),
        )
        .await
        .map_err(fail)?;
    let status = resp.status();
    if status != http::StatusCode::OK {
        let bytes = read_all(resp.into_body(), 1 << 20).await.map_err(fail)?;
        return Err(fail(refusal(status, &bytes)));
    }
    relay(resp.into_body()).await
}

/// Copies the command's output to stdout and stderr as it comes; its exit code.
async fn relay(mut body: Incoming) -> Result<i32, Failure> {
    let mut pending: Vec<u8> = Vec::new();
    let mut exit: Option<Exit> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(format!("the output broke off: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let (stream, bytes) = match OutputLine::parse(&line).map_err(|e| fail(e.to_string()))? {
                OutputLine::Exit(e) => {
                    exit = Some(e);
                    continue;
                }
                OutputLine::Output { stream, data } => (stream, data),
            };
            let written = if stream == OutputStream::Stderr {
                let mut e = std::io::stderr().lock();
                e.write_all(&bytes).and_then(|_| e.flush())
            } else {
                let mut o = std::io::stdout().lock();
                o.write_all(&bytes).and_then(|_| o.flush())
            };
            if let Err(e) = written {
                return Err(fail(format!("writing the output: {e}")));
            }
        }
    }
    let exit = exit.ok_or_else(|| fail(OutputError::NoExit.to_string()))?;
    if exit.timed_out {
        return Err((124, "the command timed out and was killed".into()));
    }
    if let Some(code) = exit.code {
        return Ok(if (0..=255).contains(&code) { code } else { 1 });
    }
    if let Some(signal) = exit.signal {
        return Err((
            128 + signal,
            format!("the command was killed by signal {signal}"),
        ));
    }
    Err(fail(format!("unexpected exit line: {exit:?}")))
}

fn print_list(v: &Value, json_out: bool) {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let rows: Vec<[String; 4]> = v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    let args = i["args"]
                        .as_object()
                        .map(|a| {
                            a.iter()
                                .map(|(k, r)| match (&r["values"], &r["pattern"]) {
                                    (Value::Array(vals), _) => format!(
                                        "{k}={}",
                                        vals.iter()
                                            .filter_map(Value::as_str)
                                            .collect::<Vec<_>>()
                                            .join("|")
                                    ),
                                    (_, Value::String(p)) => format!("{k}=/{p}/"),
                                    _ => k.clone(),
                                })
                                .collect::<Vec<_>>()
                                .join(" ")
                        })
                        .unwrap_or_default();
                    let timeout = i["timeoutMs"]
                        .as_u64()
                        .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
                        .unwrap_or_default();
                    [
                        i["name"].as_str().unwrap_or("").to_owned(),
                        args,
                        timeout,
                        i["description"].as_str().unwrap_or("").to_owned(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    let header = ["NAME", "ARGS", "TIMEOUT", "DESCRIPTION"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

/// Runs `kubehub ctl host`; returns the exit code.
pub async fn host(args: HostArgs) -> Result<i32, Failure> {
    let hub = Hub::from_kubeconfig(
        &args.hub.kubeconfig,
        args.hub.context.as_deref(),
        args.cluster.as_deref(),
    )
    .map_err(usage)?;
    let v = hub.get_json("/plugins/host").await?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const KUBECONFIG: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: "edge-1"
  cluster:
    server: "https://hub.example.com:8443/clusters/edge-1"
    certificate-authority-data: "Q0E="
- name: root
  cluster:
    server: https://10.0.0.1
    certificate-authority: ca.pem
contexts:
- name: "edge-1"
  context:
    cluster: "edge-1"
    user: "alice"
- name: root
  context:
    cluster: root
    user: bob
current-context: "edge-1"
users:
- name: "alice"
  user:
    token: "khT.a.b"
- name: bob
  user:
    tokenFile: token
"#;

    #[test]
    fn the_hub_comes_from_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        let kc = dir.path().join("kubeconfig");
        std::fs::write(&kc, KUBECONFIG).unwrap();
        std::fs::write(dir.path().join("ca.pem"), "CA2").unwrap();
        std::fs::write(dir.path().join("token"), "khT.b.c\n").unwrap();
        let h = Hub::from_kubeconfig(&kc, None, None).unwrap();
        assert_eq!(
            h,
            Hub {
                authority: "hub.example.com:8443".into(),
                host: "hub.example.com".into(),
                port: 8443,
                prefix: "/clusters/edge-1".into(),
                ca_pem: "CA".into(),
                token: "khT.a.b".into(),
            }
        );
        let h = Hub::from_kubeconfig(&kc, None, Some("edge-2")).unwrap();
        assert_eq!(h.prefix, "/clusters/edge-2");
        let h = Hub::from_kubeconfig(&kc, Some("root"), None).unwrap();
        assert_eq!(
            (
                h.prefix.as_str(),
                h.port,
                h.ca_pem.as_str(),
                h.token.as_str()
            ),
            ("", 443, "CA2", "khT.b.c")
        );
        let h = Hub::from_kubeconfig(&kc, Some("root"), Some("edge-3")).unwrap();
        assert_eq!(h.prefix, "/clusters/edge-3");
        let e = Hub::from_kubeconfig(&kc, Some("nope"), None).unwrap_err();
        assert!(e.contains("no context \"nope\""), "{e}");
        assert!(Hub::from_kubeconfig(&kc, None, Some("a/b")).is_err());
    }

    #[test]
    fn words_are_cluster_command_and_arguments() {
        let w = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let words = parse_words(&w(&["journal", "unit=kubelet", "lines=5=x"]), false).unwrap();
        assert_eq!(
            (words.cluster, words.command.as_deref()),
            (None, Some("journal"))
        );
        assert_eq!(words.args.get("lines").map(String::as_str), Some("5=x"));
        let words = parse_words(&w(&["edge-1", "uptime"]), false).unwrap();
        assert_eq!(
            words,
            Words {
                cluster: Some("edge-1".into()),
                command: Some("uptime".into()),
                args: BTreeMap::new(),
            }
        );
        assert!(parse_words(&w(&[]), false).is_err());
        assert!(parse_words(&w(&["a", "b", "c"]), false).is_err());
        assert!(parse_words(&w(&["a", "x=1", "y"]), false).is_err());
        assert!(parse_words(&w(&["a", "x=1", "x=2"]), false).is_err());
        let words = parse_words(&w(&["edge-1"]), true).unwrap();
        assert_eq!(
            (words.cluster.as_deref(), words.command),
            (Some("edge-1"), None)
        );
        assert!(parse_words(&w(&["a", "b"]), true).is_err());
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
    }
}
