//! The `native` plugin: allow-listed commands run on the edge host (agent.toml
//! `[[plugins.native.commands]]`, documented in [`crate::config`]).
//!
//! * `GET /plugins/native`: the commands (`NativeCommandList`: name, description, argv
//!   template, arguments with their values or pattern, timeout).
//! * `GET /plugins/native/<command>`: one of them (`NativeCommand`).
//! * `POST /plugins/native/<command>` with `{"args": {"<name>": "<value>", …}}` (an empty body
//!   is no arguments; at most 64 KiB): every argument the command declares must be given, and
//!   admitted by its rule, else 422 `Invalid` naming it (`args.<name>`) and nothing runs. Then
//!   200 `application/x-ndjson`, one line per chunk of output as the process writes it:
//!   `{"stream":"stdout","data":"<base64>"}` or `"stderr"`, and last `{"exit":{"code":N}}`,
//!   `{"exit":{"signal":N}}` (killed by a signal) or `{"exit":{"signal":9,"timedOut":true}}`.
//!
//! How a command runs: the argv built from the template, each placeholder replaced by its
//! value as it is (no shell ever sees it: `;`, `|`, `$(…)`, backquotes are plain characters of
//! an argument); spawned directly, with an empty environment but a fixed `PATH`, in `/`, stdin
//! from `/dev/null`, as the configured user (uid and primary gid), in a process group of its
//! own. The group is killed (SIGKILL) on timeout, when the caller goes away (the hub resets
//! the stream: the answer is dropped) and once the command has exited (nothing it started
//! outlives it). Output goes through a bounded channel: a caller reading slowly slows the
//! command down (its pipes fill), never the agent's memory. At most `max_running` commands
//! run at once (429 beyond). Every run is logged: command, arguments, exit, duration (and the
//! user, when the hub impersonates).

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Limited, StreamBody};
use kubehub_kapi::plugin::{Exit, OutputLine, OutputStream};
use kubehub_kapi::Status;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Gid, Pid, Uid, User};
use regex::Regex;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use super::{json_response, status_response, user_of, Plugin, PluginFuture, API_GROUP};
use super::{route, Route};
use crate::config::{ArgRule, ConfigError, NativeCommand, NativeConfig, RunAs};
use crate::upstream::{DownBody, UpBody};

/// The plugin's name.
pub const NAME: &str = "native";
/// The only `PATH` a command sees.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The largest request body read.
pub const MAX_BODY: usize = 64 * 1024;
/// The largest argument value.
pub const MAX_VALUE: usize = 4096;
/// Bytes read from a pipe at a time (one output line carries at most this, base64-encoded).
const CHUNK: usize = 16 * 1024;
/// Output lines queued for the caller before the command's pipes are left to fill.
const QUEUE: usize = 8;

/// One piece of an argv element.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Arg(String),
}

/// What an argument admits.
#[derive(Debug, Clone)]
enum Rule {
    Values(Vec<String>),
    Pattern { source: String, re: Regex },
}

impl Rule {
    fn admits(&self, value: &str) -> bool {
        match self {
            Rule::Values(v) => v.iter().any(|x| x == value),
            Rule::Pattern { re, .. } => re.is_match(value),
        }
    }

    fn to_json(&self) -> Value {
        match self {
            Rule::Values(v) => json!({ "values": v }),
            Rule::Pattern { source, .. } => json!({ "pattern": source }),
        }
    }

    fn refusal(&self) -> String {
        match self {
            Rule::Values(v) => format!("must be one of: {}", v.join(", ")),
            Rule::Pattern { source, .. } => {
                format!("must match the pattern {source:?} (the whole value)")
            }
        }
    }
}

/// An allowed command, checked and compiled.
#[derive(Debug)]
struct Command {
    name: String,
    description: String,
    template: Vec<String>,
    argv: Vec<Vec<Piece>>,
    args: BTreeMap<String, Rule>,
    timeout: Duration,
    /// The user to run as: (configured as, uid, gid).
    user: Option<(String, Uid, Gid)>,
}

impl Command {
    fn to_json(&self) -> Value {
        let args: serde_json::Map<String, Value> = self
            .args
            .iter()
            .map(|(k, r)| (k.clone(), r.to_json()))
            .collect();
        json!({
            "name": self.name,
            "description": self.description,
            "argv": self.template,
            "args": args,
            "timeoutMs": self.timeout.as_millis() as u64,
        })
    }

    /// The argv for these argument values (already checked).
    fn argv(&self, values: &BTreeMap<String, String>) -> Vec<String> {
        self.argv
            .iter()
            .map(|pieces| {
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.as_str(),
                        Piece::Arg(a) => values.get(a).map_or("", String::as_str),
                    })
                    .collect()
            })
            .collect()
    }
}

/// The `native` plugin (cheap to clone).
#[derive(Debug, Clone)]
pub struct Native {
    commands: Arc<BTreeMap<String, Arc<Command>>>,
    running: Arc<Semaphore>,
    max_running: u32,
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_arg_name(s: &str) -> bool {
    let mut b = s.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
}

/// Splits an argv element into text and `{placeholders}` (`{{`, `}}`: literal braces).
fn parse_element(element: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = element.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => {
                            return Err(format!(
                                "{element:?}: `{{` without `}}` (write `{{{{` for a literal brace)"
                            ))
                        }
                    }
                }
                if !is_arg_name(&name) {
                    return Err(format!(
                        "{element:?}: placeholder {{{name}}} is not a name (letters, digits, `_`, `-`)"
                    ));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Arg(name));
            }
            '}' => {
                return Err(format!(
                    "{element:?}: `}}` without `{{` (write `}}}}` for a literal brace)"
                ))
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// Looks a user up (the system's user database, NSS included).
fn resolve_user(user: &RunAs) -> Result<(String, Uid, Gid), String> {
    let found = match user {
        RunAs::Uid(u) => User::from_uid(Uid::from_raw(*u)),
        RunAs::Name(n) => User::from_name(n),
    };
    match found {
        Ok(Some(u)) => Ok((user.to_string(), u.uid, u.gid)),
        Ok(None) => Err(format!("{user}: no such user")),
        Err(e) => Err(format!("{user}: looking it up: {e}")),
    }
}

fn compile_command(c: &NativeCommand) -> Result<Command, String> {
    if !is_dns_label(&c.name) {
        return Err("name: must be a DNS label (a-z, 0-9, `-`; at most 63)".into());
    }
    if c.argv.is_empty() || c.argv[0].is_empty() {
        return Err("argv: must name a program".into());
    }
    let mut argv = Vec::with_capacity(c.argv.len());
    for (i, element) in c.argv.iter().enumerate() {
        if element.contains('\0') {
            return Err(format!("argv[{i}]: contains a NUL byte"));
        }
        let pieces = parse_element(element).map_err(|e| format!("argv[{i}]: {e}"))?;
        if i == 0 && pieces.iter().any(|p| matches!(p, Piece::Arg(_))) {
            return Err("argv[0]: the program takes no placeholder".into());
        }
        for p in &pieces {
            if let Piece::Arg(a) = p {
                if !c.args.contains_key(a) {
                    return Err(format!(
                        "argv[{i}]: placeholder {{{a}}} is not declared (args.{a})"
                    ));
                }
            }
        }
        argv.push(pieces);
    }
    let mut args = BTreeMap::new();
    for (name, rule) in &c.args {
        let field = format!("args.{name}");
        if !is_arg_name(name) {
            return Err(format!("{field}: not a name (letters, digits, `_`, `-`)"));
        }
        let used = argv
            .iter()
            .flatten()
            .any(|p| matches!(p, Piece::Arg(a) if a == name));
        if !used {
            return Err(format!("{field}: declared but argv has no {{{name}}}"));
        }
        args.insert(
            name.clone(),
            compile_rule(rule).map_err(|e| format!("{field}.{e}"))?,
        );
    }
    if !(1..=86_400_000).contains(&c.timeout_ms) {
        return Err("timeout_ms: must be 1 to 86400000".into());
    }
    let user = c
        .user
        .as_ref()
        .map(resolve_user)
        .transpose()
        .map_err(|e| format!("user: {e}"))?;
    Ok(Command {
        name: c.name.clone(),
        description: c.description.clone(),
        template: c.argv.clone(),
        argv,
        args,
        timeout: Duration::from_millis(c.timeout_ms),
        user,
    })
}

fn compile_rule(rule: &ArgRule) -> Result<Rule, String> {
    match (&rule.values[..], &rule.pattern) {
        ([], None) | ([_, ..], Some(_)) => {
            Err("values: give either `values` (a list) or `pattern` (a regular expression)".into())
        }
        (values, None) => {
            if values
                .iter()
                .any(|v| v.contains('\0') || v.len() > MAX_VALUE)
            {
                return Err(format!(
                    "values: a value holds a NUL byte or is longer than {MAX_VALUE} bytes"
                ));
            }
            Ok(Rule::Values(values.to_vec()))
        }
        ([], Some(p)) => {
            let re = Regex::new(&format!("^(?:{p})$")).map_err(|e| format!("pattern: {e}"))?;
            Ok(Rule::Pattern {
                source: p.clone(),
                re,
            })
        }
    }
}

impl Native {
    /// Checks and compiles `[plugins.native]`; errors name the field
    /// (`plugins.native.commands[2] (journal).args.unit.pattern: …`).
    pub fn compile(cfg: &NativeConfig) -> Result<Native, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(format!("plugins.native.{m}"));
        if cfg.max_running == 0 {
            return Err(bad("max_running: must be at least 1".into()));
        }
        let mut commands = BTreeMap::new();
        for (i, c) in cfg.commands.iter().enumerate() {
            let cmd =
                compile_command(c).map_err(|e| bad(format!("commands[{i}] ({}).{e}", c.name)))?;
            if commands.insert(cmd.name.clone(), Arc::new(cmd)).is_some() {
                return Err(bad(format!(
                    "commands[{i}] ({}).name: another command has this name",
                    c.name
                )));
            }
        }
        let max_running = cfg.max_running.min(Semaphore::MAX_PERMITS as u32);
        Ok(Native {
            commands: Arc::new(commands),
            running: Arc::new(Semaphore::new(max_running as usize)),
            max_running,
        })
    }

    /// Commands to run as another user need an agent that can switch users (root).
    pub fn check_users(&self) -> Result<(), ConfigError> {
        let me = Uid::effective();
        for c in self.commands.values() {
            if let Some((name, uid, _)) = &c.user {
                if !me.is_root() && *uid != me {
                    return Err(ConfigError::Invalid(format!(
                        "plugins.native.commands ({}).user: {name} is not the agent's user \
                         (uid {me}) and the agent does not run as root, so it cannot switch to it",
                        c.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn list(&self) -> Response<DownBody> {
        let items: Vec<Value> = self.commands.values().map(|c| c.to_json()).collect();
        let body = json!({
            "kind": "NativeCommandList",
            "apiVersion": super::API_VERSION,
            "items": items,
        });
        json_response(200, serde_json::to_vec(&body).unwrap_or_default())
    }

    fn describe(&self, c: &Command) -> Response<DownBody> {
        let mut v = c.to_json();
        v["kind"] = json!("NativeCommand");
        v["apiVersion"] = json!(super::API_VERSION);
        json_response(200, serde_json::to_vec(&v).unwrap_or_default())
    }

    async fn answer(&self, request: Request<UpBody>) -> Response<DownBody> {
        let segments = match route(request.uri().path()) {
            Route::Plugin(_, segments) => segments,
            Route::Kubernetes => Vec::new(),
        };
        let method = request.method().clone();
        let read = method == Method::GET || method == Method::HEAD;
        match &segments[..] {
            [] if read => self.list(),
            [] => status_response(&Status::method_not_allowed()),
            [name] => {
                let Some(cmd) = self.commands.get(name).cloned() else {
                    return status_response(&Status::not_found(API_GROUP, NAME, name));
                };
                if read {
                    self.describe(&cmd)
                } else if method == Method::POST {
                    self.run(cmd, request).await
                } else {
                    status_response(&Status::method_not_allowed())
                }
            }
            _ => status_response(&Status::no_such_resource()),
        }
    }

    /// Checks the request's arguments, starts the command, and answers with its output as it
    /// comes.
    async fn run(&self, cmd: Arc<Command>, request: Request<UpBody>) -> Response<DownBody> {
        let user = user_of(&request);
        let values = match read_args(&cmd, request.into_body()).await {
            Ok(v) => v,
            Err(s) => return status_response(&s),
        };
        let Ok(permit) = self.running.clone().try_acquire_owned() else {
            warn!(command = %cmd.name, "native command refused: {} already running", self.max_running);
            return status_response(&Status::new(
                429,
                "TooManyRequests",
                format!(
                    "{} native commands are already running on this agent (max_running); try again later",
                    self.max_running
                ),
            ));
        };
        let argv = cmd.argv(&values);
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env_clear()
            .env("PATH", SAFE_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        if let Some((_, uid, gid)) = &cmd.user {
            if *uid != Uid::effective() {
                command.uid(uid.as_raw()).gid(gid.as_raw());
            }
        }
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(command = %cmd.name, ?argv, "native command did not start: {e}");
                return status_response(&Status::internal(format!(
                    "starting {:?} of native command {:?}: {e}",
                    argv[0], cmd.name
                )));
            }
        };
        info!(command = %cmd.name, args = ?values, user = user.as_deref().unwrap_or(""), pid = child.id(), "native command started");
        let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
        tokio::spawn(drive(cmd, child, tx, permit));
        let body = StreamBody::new(
            ReceiverStream::new(rx).map(|b| Ok::<_, std::io::Error>(hyper::body::Frame::data(b))),
        );
        let mut r = Response::new(BodyExt::boxed(body));
        let h = r.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/x-ndjson"),
        );
        h.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        r
    }
}

impl Plugin for Native {
    fn name(&self) -> &'static str {
        NAME
    }

    fn call(&self, request: Request<UpBody>) -> PluginFuture {
        let me = self.clone();
        Box::pin(async move { Ok(me.answer(request).await) })
    }
}

/// The request body: `{"args": {...}}` (empty: no arguments), read up to [`MAX_BODY`], each
/// argument checked against the command's rules.
async fn read_args(cmd: &Command, body: UpBody) -> Result<BTreeMap<String, String>, Status> {
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(Status::new(
                413,
                "RequestEntityTooLarge",
                format!("the request body is larger than {MAX_BODY} bytes"),
            ))
        }
        Err(e) => {
            return Err(Status::bad_request(format!(
                "reading the request body: {e}"
            )))
        }
    };
    let given: serde_json::Map<String, Value> = if bytes.iter().all(u8::is_ascii_whitespace) {
        serde_json::Map::new()
    } else {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Body {
            #[serde(default)]
            args: serde_json::Map<String, Value>,
        }
        serde_json::from_slice::<Body>(&bytes)
            .map_err(|e| {
                Status::bad_request(format!(
                    "the request body is not {{\"args\": {{\"<name>\": \"<value>\", …}}}}: {e}"
                ))
            })?
            .args
    };
    let invalid = |field: &str, message: &str| {
        Status::invalid(
            API_GROUP,
            NAME,
            &cmd.name,
            &format!("args.{field}"),
            message,
        )
    };
    let mut values = BTreeMap::new();
    for (name, value) in &given {
        let Some(rule) = cmd.args.get(name) else {
            let known: Vec<&str> = cmd.args.keys().map(String::as_str).collect();
            let takes = if known.is_empty() {
                "this command takes no arguments".to_owned()
            } else {
                format!("this command takes: {}", known.join(", "))
            };
            return Err(invalid(name, &format!("unknown argument; {takes}")));
        };
        let Value::String(value) = value else {
            return Err(invalid(name, "must be a string"));
        };
        if value.len() > MAX_VALUE || value.contains('\0') {
            return Err(invalid(
                name,
                &format!("must be at most {MAX_VALUE} bytes, without NUL"),
            ));
        }
        if !rule.admits(value) {
            return Err(invalid(name, &rule.refusal()));
        }
        values.insert(name.clone(), value.clone());
    }
    if let Some(missing) = cmd.args.keys().find(|k| !values.contains_key(*k)) {
        return Err(invalid(missing, "required"));
    }
    Ok(values)
}

/// The command's process group, killed when this is dropped (or [`Group::kill`]ed) unless
/// disarmed.
struct Group(Option<Pid>);

impl Group {
    fn kill(&mut self) {
        if let Some(pgid) = self.0.take() {
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Why output stopped flowing.
enum Stop {
    /// The deadline passed.
    Timeout,
    /// The caller went away.
    Gone,
}

/// Reads some bytes from a pipe still open; pending forever once it is closed.
async fn read_some<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut [u8],
) -> std::io::Result<usize> {
    match pipe {
        Some(p) => p.read(buf).await,
        None => std::future::pending().await,
    }
}

/// Sends one line, waiting while the caller is behind (unless the deadline passes first).
async fn send(
    tx: &mpsc::Sender<Bytes>,
    line: Bytes,
    deadline: tokio::time::Instant,
) -> Result<(), Stop> {
    tokio::select! {
        r = tx.send(line) => r.map_err(|_| Stop::Gone),
        _ = tokio::time::sleep_until(deadline) => Err(Stop::Timeout),
    }
}

/// Runs the command to its end: output to `tx` as it comes, then the exit line. Ends early
/// (killing the group) when the caller goes away.
async fn drive(
    cmd: Arc<Command>,
    mut child: tokio::process::Child,
    tx: mpsc::Sender<Bytes>,
    permit: OwnedSemaphorePermit,
) {
    let _permit = permit;
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + cmd.timeout;
    let mut group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let (mut out_buf, mut err_buf) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut status = None;
    let mut stop = None;
    while status.is_none() || stdout.is_some() || stderr.is_some() {
        let chunk = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                stop = Some(Stop::Timeout);
                break;
            }
            _ = tx.closed() => {
                stop = Some(Stop::Gone);
                break;
            }
            st = child.wait(), if status.is_none() => {
                status = Some(st);
                // Whatever it left running goes with it (and lets the pipes close).
                group.kill();
                continue;
            }
            r = read_some(&mut stdout, &mut out_buf) => match r {
                Ok(n) if n > 0 => (OutputStream::Stdout, out_buf[..n].to_vec()),
                _ => {
                    stdout = None;
                    continue;
                }
            },
            r = read_some(&mut stderr, &mut err_buf) => match r {
                Ok(n) if n > 0 => (OutputStream::Stderr, err_buf[..n].to_vec()),
                _ => {
                    stderr = None;
                    continue;
                }
            },
        };
        let (stream, data) = chunk;
        let l = Bytes::from(OutputLine::Output { stream, data }.to_line());
        if let Err(s) = send(&tx, l, deadline).await {
            stop = Some(s);
            break;
        }
    }
    let timed_out = match (&stop, &status) {
        (Some(Stop::Gone), _) => {
            group.kill();
            let _ = child.start_kill();
            let _ = child.wait().await;
            info!(command = %cmd.name, duration_ms = started.elapsed().as_millis() as u64, "native command killed: the caller went away");
            return;
        }
        // Exited, but something it started kept the pipes open past the deadline: the exit
        // is what happened.
        (Some(Stop::Timeout), Some(_)) => false,
        (Some(Stop::Timeout), None) => {
            group.kill();
            let _ = child.start_kill();
            status = Some(child.wait().await);
            true
        }
        (None, _) => false,
    };
    let unknown = |error: Option<String>| Exit {
        code: Some(-1),
        error,
        ..Exit::default()
    };
    let exit = match status {
        Some(Ok(st)) => match (st.code(), st.signal()) {
            (_, Some(sig)) if timed_out => Exit {
                signal: Some(sig),
                timed_out: true,
                ..Exit::default()
            },
            (Some(code), _) => Exit {
                code: Some(code),
                ..Exit::default()
            },
            (None, Some(sig)) => Exit {
                signal: Some(sig),
                ..Exit::default()
            },
            (None, None) => unknown(None),
        },
        Some(Err(e)) => {
            warn!(command = %cmd.name, "waiting for the native command: {e}");
            unknown(Some(e.to_string()))
        }
        None => unknown(None),
    };
    info!(command = %cmd.name, exit = ?exit, timed_out, duration_ms = started.elapsed().as_millis() as u64, "native command ended");
    let _ = tx.send(Bytes::from(OutputLine::Exit(exit).to_line())).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::PluginsConfig;

    fn config(toml_text: &str) -> Result<NativeConfig, ConfigError> {
        let p: PluginsConfig =
            toml::from_str(toml_text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        p.validate()?;
        Ok(p.native)
    }

    fn native(toml_text: &str) -> Native {
        let n = Native::compile(&config(toml_text).unwrap()).unwrap();
        n.check_users().unwrap();
        n
    }

    fn body(json: &str) -> UpBody {
        http_body_util::Full::new(Bytes::from(json.to_owned()))
            .map_err(|e| match e {})
            .boxed()
    }

    async fn call(n: &Native, method: &str, path: &str, json: &str) -> (u16, String, Vec<u8>) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(body(json))
            .unwrap();
        let r = n.call(req).await.unwrap();
        let code = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let bytes = r.into_body().collect().await.unwrap().to_bytes().to_vec();
        (code, ct, bytes)
    }

    /// A command's output: stdout, stderr (decoded, in order) and the exit object.
    fn decode(ndjson: &[u8]) -> (String, String, Value) {
        let (out, err, exit) = kubehub_kapi::plugin::collect_output(ndjson).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            serde_json::to_value(exit).unwrap(),
        )
    }

    const COMMANDS: &str = r#"
[native]
[[native.commands]]
name = "echo"
description = "prints its message"
argv = ["echo", "{msg}"]
args.msg = { pattern = "(?s).*" }

[[native.commands]]
name = "count"
argv = ["sh", "-c", "for i in 1 2 3; do echo out-$i; echo err-$i >&2; done; exit {code}", "{{literal}}-x"]
args.code = { values = ["0", "3"] }

[[native.commands]]
name = "touch"
argv = ["touch", "/tmp/kubehub-native-{name}"]
args.name = { pattern = "[a-z0-9]+" }

[[native.commands]]
name = "sleepy"
argv = ["sh", "-c", "sleep 300 & echo $!; sleep 300"]
timeout_ms = 1500

[[native.commands]]
name = "whoami"
argv = ["id", "-u"]
user = "nobody"

[[native.commands]]
name = "env"
argv = ["sh", "-c", "env; pwd; cat"]
"#;

    #[tokio::test]
    async fn an_allowed_command_runs_and_its_output_streams_in_order() {
        let n = native(COMMANDS);
        let (code, ct, out) = call(
            &n,
            "POST",
            "/plugins/native/count",
            r#"{"args":{"code":"3"}}"#,
        )
        .await;
        assert_eq!((code, ct.as_str()), (200, "application/x-ndjson"));
        let (stdout, stderr, exit) = decode(&out);
        assert_eq!(stdout, "out-1\nout-2\nout-3\n");
        assert_eq!(stderr, "err-1\nerr-2\nerr-3\n");
        assert_eq!(exit, json!({"code": 3}));
        let (_, _, out) = call(
            &n,
            "POST",
            "/plugins/native/count",
            r#"{"args":{"code":"0"}}"#,
        )
        .await;
        assert_eq!(decode(&out).2, json!({"code": 0}));
    }

    #[tokio::test]
    async fn the_list_and_one_command_describe_what_may_run() {
        let n = native(COMMANDS);
        let (code, _, out) = call(&n, "GET", "/plugins/native", "").await;
        assert_eq!(code, 200);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["kind"], "NativeCommandList");
        let names: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["count", "echo", "env", "sleepy", "touch", "whoami"]);
        let (code, _, out) = call(&n, "GET", "/plugins/native/count", "").await;
        assert_eq!(code, 200);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["args"]["code"], json!({"values": ["0", "3"]}));
        assert_eq!(v["timeoutMs"], 30_000);
        assert_eq!(v["argv"][3], "{{literal}}-x");
        let (code, _, _) = call(&n, "DELETE", "/plugins/native/count", "").await;
        assert_eq!(code, 405);
        let (code, _, _) = call(&n, "GET", "/plugins/native/count/more", "").await;
        assert_eq!(code, 404);
    }

    #[tokio::test]
    async fn disallowed_commands_and_arguments_are_refused_and_nothing_runs() {
        let n = native(COMMANDS);
        let id = format!("refused{}", std::process::id());
        let marker_path = format!("/tmp/kubehub-native-{id}");
        let marker = std::path::Path::new(&marker_path);
        let _ = std::fs::remove_file(marker);
        let status = |out: &[u8]| serde_json::from_slice::<Value>(out).unwrap();
        // Not in the allow-list.
        let (code, _, out) = call(&n, "POST", "/plugins/native/rm", r#"{"args":{}}"#).await;
        assert_eq!(code, 404);
        assert_eq!(
            status(&out)["message"],
            "native.plugins.kubehub.io \"rm\" not found"
        );
        // A value the rule does not admit, an unknown argument, a missing one, a non-string.
        for (body, field, why) in [
            (r#"{"args":{"name":"Refused"}}"#, "args.name", "must match"),
            (
                r#"{"args":{"name":"../refused"}}"#,
                "args.name",
                "must match",
            ),
            (
                r#"{"args":{"name":"refused","extra":"1"}}"#,
                "args.extra",
                "unknown argument; this command takes: name",
            ),
            (r#"{"args":{}}"#, "args.name", "required"),
            ("", "args.name", "required"),
            (r#"{"args":{"name":7}}"#, "args.name", "must be a string"),
        ] {
            let body = body.replace("\"refused\"", &format!("\"{id}\""));
            let (code, _, out) = call(&n, "POST", "/plugins/native/touch", &body).await;
            let s = status(&out);
            assert_eq!(
                (code, s["reason"].as_str()),
                (422, Some("Invalid")),
                "{body}: {s}"
            );
            let message = s["message"].as_str().unwrap();
            assert!(
                message.starts_with(&format!("native \"touch\" is invalid: {field}: "))
                    && message.contains(why),
                "{body}: {message}"
            );
            assert_eq!(s["details"]["causes"][0]["field"], field);
        }
        let (code, _, out) = call(
            &n,
            "POST",
            "/plugins/native/count",
            r#"{"args":{"code":"1"}}"#,
        )
        .await;
        assert_eq!(code, 422, "{}", String::from_utf8_lossy(&out));
        assert!(status(&out)["message"]
            .as_str()
            .unwrap()
            .contains("must be one of: 0, 3"));
        // Malformed bodies.
        for body in ["{", r#"{"argz":{}}"#, r#"{"args":["name"]}"#] {
            let (code, _, _) = call(&n, "POST", "/plugins/native/touch", body).await;
            assert_eq!(code, 400, "{body}");
        }
        let big = format!(r#"{{"args":{{"name":"{}"}}}}"#, "a".repeat(MAX_BODY));
        let (code, _, _) = call(&n, "POST", "/plugins/native/touch", &big).await;
        assert_eq!(code, 413);
        assert!(!marker.exists(), "nothing ran");
        // And the allowed one does run.
        let body = json!({"args": {"name": id}}).to_string();
        let (code, _, out) = call(&n, "POST", "/plugins/native/touch", &body).await;
        assert_eq!(code, 200);
        assert_eq!(decode(&out).2, json!({"code": 0}));
        assert!(marker.exists());
        let _ = std::fs::remove_file(marker);
    }

    #[tokio::test]
    async fn shell_metacharacters_in_arguments_are_plain_characters() {
        let n = native(COMMANDS);
        let canary = std::path::Path::new("/tmp/kubehub-native-canary");
        let _ = std::fs::remove_file(canary);
        for msg in [
            "; touch /tmp/kubehub-native-canary",
            "$(touch /tmp/kubehub-native-canary)",
            "`touch /tmp/kubehub-native-canary`",
            "| touch /tmp/kubehub-native-canary",
            "&& rm -rf / #",
            "a\nb > /tmp/kubehub-native-canary",
            "${PATH} $HOME * ~ 'quoted' \"double\"",
        ] {
            let body = json!({ "args": { "msg": msg } }).to_string();
            let (code, _, out) = call(&n, "POST", "/plugins/native/echo", &body).await;
            assert_eq!(code, 200, "{msg}");
            let (stdout, _, exit) = decode(&out);
            assert_eq!(
                stdout,
                format!("{msg}\n"),
                "echo got it as one literal argument"
            );
            assert_eq!(exit, json!({"code": 0}));
        }
        assert!(!canary.exists(), "no shell ran");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_process_and_its_children() {
        let n = native(COMMANDS);
        let (code, _, out) = call(&n, "POST", "/plugins/native/sleepy", "").await;
        assert_eq!(code, 200);
        let (stdout, _, exit) = decode(&out);
        assert_eq!(exit, json!({"signal": 9, "timedOut": true}));
        // The background `sleep` the command started is gone too.
        let pid: i32 = stdout.trim().parse().unwrap();
        gone(pid).await;
    }

    /// Waits (without a time bound the test asserts) until `pid` no longer exists.
    async fn gone(pid: i32) {
        for _ in 0..500 {
            match nix::sys::signal::kill(Pid::from_raw(pid), None) {
                Err(nix::errno::Errno::ESRCH) => return,
                _ => {
                    // Killed but not yet reaped by its new parent: a zombie counts as gone.
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    if stat.is_empty()
                        || stat
                            .rsplit(')')
                            .next()
                            .is_some_and(|s| s.trim_start().starts_with('Z'))
                    {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {pid} still runs");
    }

    #[tokio::test]
    async fn a_caller_going_away_kills_the_command() {
        let n = native(
            COMMANDS
                .replace("timeout_ms = 1500", "timeout_ms = 600000")
                .as_str(),
        );
        let req = Request::builder()
            .method("POST")
            .uri("/plugins/native/sleepy")
            .body(body(""))
            .unwrap();
        let r = n.call(req).await.unwrap();
        let mut b = r.into_body();
        let first = b.frame().await.unwrap().unwrap().into_data().unwrap();
        let OutputLine::Output { data, .. } = OutputLine::parse(&first).unwrap() else {
            panic!("output first");
        };
        let pid: i32 = String::from_utf8(data).unwrap().trim().parse().unwrap();
        drop(b);
        gone(pid).await;
        // Its slot is freed.
        for _ in 0..500 {
            if n.running.available_permits() == 16 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the command's slot is still taken");
    }

    #[tokio::test]
    async fn commands_run_as_their_user_with_a_clean_environment() {
        let n = native(COMMANDS);
        if Uid::effective().is_root() {
            let (_, _, out) = call(&n, "POST", "/plugins/native/whoami", "").await;
            let nobody = User::from_name("nobody").unwrap().unwrap().uid;
            assert_eq!(decode(&out).0.trim(), nobody.to_string());
        }
        let (_, _, out) = call(&n, "POST", "/plugins/native/env", "").await;
        let (stdout, _, exit) = decode(&out);
        assert_eq!(exit, json!({"code": 0}));
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
            .collect();
        assert_eq!(lines, [&format!("PATH={SAFE_PATH}")[..], "/"], "{stdout}");
    }

    #[test]
    fn configuration_errors_name_the_field() {
        let base = "[native]\n[[native.commands]]\n";
        for (cmd, want) in [
            ("name = \"Bad_Name\"\nargv = [\"true\"]", "plugins.native.commands[0] (Bad_Name).name: must be a DNS label"),
            ("name = \"a\"\nargv = []", "commands[0] (a).argv: must name a program"),
            ("name = \"a\"\nargv = [\"{prog}\"]\nargs.prog = { values = [\"ls\"] }", "commands[0] (a).argv[0]: the program takes no placeholder"),
            ("name = \"a\"\nargv = [\"echo\", \"{x}\"]", "commands[0] (a).argv[1]: placeholder {x} is not declared (args.x)"),
            ("name = \"a\"\nargv = [\"echo\", \"{x\"]\nargs.x = { values = [\"1\"] }", "commands[0] (a).argv[1]: \"{x\": `{` without `}`"),
            ("name = \"a\"\nargv = [\"echo\", \"x}\"]", "commands[0] (a).argv[1]: \"x}\": `}` without `{`"),
            ("name = \"a\"\nargv = [\"echo\"]\nargs.x = { values = [\"1\"] }", "commands[0] (a).args.x: declared but argv has no {x}"),
            ("name = \"a\"\nargv = [\"echo\", \"{x}\"]\nargs.x = {}", "commands[0] (a).args.x.values: give either"),
            ("name = \"a\"\nargv = [\"echo\", \"{x}\"]\nargs.x = { values = [\"1\"], pattern = \"1\" }", "commands[0] (a).args.x.values: give either"),
            ("name = \"a\"\nargv = [\"echo\", \"{x}\"]\nargs.x = { pattern = \"(\" }", "commands[0] (a).args.x.pattern: regex parse error"),
            ("name = \"a\"\nargv = [\"true\"]\ntimeout_ms = 0", "commands[0] (a).timeout_ms: must be 1 to 86400000"),
            ("name = \"a\"\nargv = [\"true\"]\nuser = \"no-such-user-kubehub\"", "commands[0] (a).user: \"no-such-user-kubehub\": no such user"),
            ("name = \"a\"\nargv = [\"true\"]\nuser = 4294967290", "commands[0] (a).user: uid 4294967290: no such user"),
            ("name = \"a\"\nargv = [\"true\"]\n[[native.commands]]\nname = \"a\"\nargv = [\"false\"]", "commands[1] (a).name: another command has this name"),
        ] {
            let e = config(&format!("{base}{cmd}\n")).unwrap_err().to_string();
            assert!(e.contains(want), "{cmd}\n  got: {e}\n  want: {want}");
        }
        assert!(config("[native]\nmax_running = 0\n")
            .unwrap_err()
            .to_string()
            .contains("plugins.native.max_running"));
        assert!(
            config(&format!(
                "{base}name = \"a\"\nargv = [\"true\"]\nshell = true\n"
            ))
            .is_err(),
            "unknown keys are refused"
        );
        // Numeric users are uids; `{{`/`}}` are braces.
        let ok = config(&format!(
            "{base}name = \"a\"\nargv = [\"echo\", \"{{{{x}}}}\"]\nuser = 0\n"
        ))
        .unwrap();
        assert_eq!(ok.commands[0].user, Some(RunAs::Uid(0)));
        assert_eq!(
            parse_element("{{x}}").unwrap(),
            vec![Piece::Text("{x}".into())]
        );
        assert_eq!(
            parse_element("--since=-{h}h").unwrap(),
            vec![
                Piece::Text("--since=-".into()),
                Piece::Arg("h".into()),
                Piece::Text("h".into())
            ]
        );
    }
}
