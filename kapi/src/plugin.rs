//! Agent plugins as the hub and the agent both read their paths: `/plugins/<name>[/<object>]`
//! after the cluster prefix. The agent sends such a request to its plugin `<name>` instead of
//! the edge API server; the hub authorizes it as a resource request of API group
//! [`API_GROUP`], version [`VERSION`], cluster-scoped, resource `<name>`, name `<object>`
//! (a segment after it is the subresource):
//!
//! ```text
//! GET    /plugins/native               list    native
//! GET    /plugins/native/uptime        get     native, name uptime
//! POST   /plugins/native/uptime        create  native, name uptime
//! GET    /plugins/host                 get     host   (a singleton: the plugin is the object)
//! GET    /plugins/native/uptime/x      get     native/x, name uptime
//! ```
//!
//! Both sides read the same *decoded* path ([`crate::decode_path`]) with the same function
//! ([`split`]), so whatever the hub authorized as a plugin is what the agent runs, and
//! nothing reaches a plugin that the hub read as anything else.

use std::borrow::Cow;

use crate::request_info::{RequestInfo, Verb};

/// The API group of plugin requests.
pub const API_GROUP: &str = "plugins.kubehub.io";
/// Their version.
pub const VERSION: &str = "v1";
/// Plugins whose path `/plugins/<name>` is the one object they serve (read with `get`).
pub const SINGLETONS: [&str; 1] = ["host"];

/// A decoded path (without the query) under `/plugins/`: the plugin's name and what follows
/// it (without the leading `/`; trailing slashes removed). `None`: not a plugin path (the
/// name is empty).
pub fn split(decoded_path: &str) -> Option<(&str, &str)> {
    let rest = decoded_path
        .strip_prefix("/plugins/")?
        .trim_end_matches('/');
    let (name, tail) = rest.split_once('/').unwrap_or((rest, ""));
    (!name.is_empty()).then_some((name, tail))
}

/// What a plugin request asks, for authorization: `None` if `decoded_path` is not under
/// `/plugins/<name>` (see the module documentation).
pub fn request_info<'a>(method: &str, decoded_path: &'a str) -> Option<RequestInfo<'a>> {
    let (name, tail) = split(decoded_path)?;
    let (object, sub) = tail.split_once('/').unwrap_or((tail, ""));
    let subresource = sub.split('/').next().unwrap_or("");
    // `{name}/{object}/{subresource}/…`, as kube-apiserver's `Parts`.
    let parts = decoded_path
        .strip_prefix("/plugins/")
        .unwrap_or_default()
        .trim_end_matches('/');
    let verb = match method {
        "GET" | "HEAD" if object.is_empty() && !SINGLETONS.contains(&name) => Verb::List,
        "GET" | "HEAD" => Verb::Get,
        "POST" => Verb::Create,
        "PUT" => Verb::Update,
        "PATCH" => Verb::Patch,
        "DELETE" if object.is_empty() => Verb::DeleteCollection,
        "DELETE" => Verb::Delete,
        _ => Verb::Unknown,
    };
    Some(RequestInfo {
        is_resource_request: true,
        path: decoded_path,
        verb,
        api_prefix: "plugins",
        api_group: API_GROUP,
        api_version: VERSION,
        namespace: "",
        resource: name,
        subresource,
        name: Cow::Borrowed(object),
        parts,
        field_selector: Cow::Borrowed(""),
        label_selector: Cow::Borrowed(""),
    })
}

/// One line of a native command's answer (`application/x-ndjson`, one line per chunk of
/// output as the command produces it, the exit last): `{"stream":"stdout","data":"<base64>"}`,
/// `{"stream":"stderr",…}`, then `{"exit":{…}}` ([`Exit`]). The agent writes these, `kubehub
/// ctl native` and tests read them: the format lives here once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputLine {
    /// Bytes the command wrote.
    Output {
        /// Which of its outputs.
        stream: OutputStream,
        /// The bytes.
        data: Vec<u8>,
    },
    /// How it ended.
    Exit(Exit),
}

/// A command's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// How a native command ended: `{"code":N}`, `{"signal":N}`, `{"signal":9,"timedOut":true}`
/// (killed at its timeout), or `{"code":-1,"error":"…"}` (the agent lost track of it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    /// Its exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// The signal that ended it, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// It was killed at its timeout.
    #[serde(
        rename = "timedOut",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub timed_out: bool,
    /// Why its end is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Why an output line could not be read.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// Not JSON, or not a line of this format.
    #[error("an output line is not valid: {0}")]
    Line(String),
    /// A line after the exit line.
    #[error("output after the exit line")]
    AfterExit,
    /// The answer ended without an exit line (the connection was lost).
    #[error("the output ended before the command did (the connection was lost)")]
    NoExit,
}

impl OutputLine {
    /// The line as sent, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        use base64::Engine as _;
        let v = match self {
            OutputLine::Output { stream, data } => serde_json::json!({
                "stream": match stream {
                    OutputStream::Stdout => "stdout",
                    OutputStream::Stderr => "stderr",
                },
                "data": base64::engine::general_purpose::STANDARD.encode(data),
            }),
            OutputLine::Exit(exit) => serde_json::json!({ "exit": exit }),
        };
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        line
    }

    /// Reads one line (without or with its newline).
    pub fn parse(line: &[u8]) -> Result<OutputLine, OutputError> {
        use base64::Engine as _;
        let bad = |why: String| OutputError::Line(why);
        let v: serde_json::Value = serde_json::from_slice(line).map_err(|e| bad(e.to_string()))?;
        if let Some(exit) = v.get("exit") {
            let exit = serde_json::from_value(exit.clone()).map_err(|e| bad(e.to_string()))?;
            return Ok(OutputLine::Exit(exit));
        }
        let stream = match v["stream"].as_str() {
            Some("stdout") => OutputStream::Stdout,
            Some("stderr") => OutputStream::Stderr,
            other => return Err(bad(format!("unknown stream {other:?}"))),
        };
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["data"].as_str().unwrap_or(""))
            .map_err(|e| bad(format!("data: {e}")))?;
        Ok(OutputLine::Output { stream, data })
    }
}

/// A whole answer read at once: stdout, stderr and the exit.
pub fn collect_output(ndjson: &[u8]) -> Result<(Vec<u8>, Vec<u8>, Exit), OutputError> {
    let (mut out, mut err, mut exit) = (Vec::new(), Vec::new(), None);
    for line in ndjson.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        if exit.is_some() {
            return Err(OutputError::AfterExit);
        }
        match OutputLine::parse(line)? {
            OutputLine::Output {
                stream: OutputStream::Stdout,
                data,
            } => out.extend(data),
            OutputLine::Output {
                stream: OutputStream::Stderr,
                data,
            } => err.extend(data),
            OutputLine::Exit(e) => exit = Some(e),
        }
    }
    Ok((out, err, exit.ok_or(OutputError::NoExit)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_paths_split_into_name_and_rest() {
        assert_eq!(split("/plugins/native"), Some(("native", "")));
        assert_eq!(split("/plugins/native/"), Some(("native", "")));
        assert_eq!(split("/plugins/native/uptime"), Some(("native", "uptime")));
        assert_eq!(split("/plugins/native/a/b/"), Some(("native", "a/b")));
        assert_eq!(split("/plugins/"), None);
        assert_eq!(split("/plugins"), None);
        assert_eq!(split("/plugins//x"), None);
        assert_eq!(split("/api/v1/plugins/x"), None);
        assert_eq!(split("//plugins/x"), None);
    }

    #[test]
    fn plugin_requests_are_cluster_scoped_resources_of_their_group() {
        let info = |m: &str, p: &'static str| request_info(m, p).unwrap();
        let i = info("POST", "/plugins/native/uptime");
        assert!(i.is_resource_request);
        assert_eq!(
            (
                i.verb.as_str(),
                i.api_group,
                i.api_version,
                i.resource,
                &*i.name,
                i.subresource,
                i.namespace,
                i.parts
            ),
            (
                "create",
                "plugins.kubehub.io",
                "v1",
                "native",
                "uptime",
                "",
                "",
                "native/uptime"
            )
        );
        let verbs = [
            ("GET", "/plugins/native", "list", ""),
            ("HEAD", "/plugins/native/", "list", ""),
            ("GET", "/plugins/native/uptime", "get", "uptime"),
            ("GET", "/plugins/host", "get", ""),
            ("POST", "/plugins/host", "create", ""),
            ("PUT", "/plugins/native/uptime", "update", "uptime"),
            ("PATCH", "/plugins/native/uptime", "patch", "uptime"),
            ("DELETE", "/plugins/native/uptime", "delete", "uptime"),
            ("DELETE", "/plugins/native", "deletecollection", ""),
            ("OPTIONS", "/plugins/native", "", ""),
            ("get", "/plugins/native", "", ""),
        ];
        for (method, path, verb, name) in verbs {
            let i = info(method, path);
            assert_eq!((i.verb.as_str(), &*i.name), (verb, name), "{method} {path}");
        }
        let i = info("GET", "/plugins/native/uptime/logs/x/");
        assert_eq!(
            (i.resource, &*i.name, i.subresource, i.parts),
            ("native", "uptime", "logs", "native/uptime/logs/x")
        );
        assert!(request_info("GET", "/plugins/").is_none());
        assert!(request_info("GET", "/apis/plugins.kubehub.io/v1/native").is_none());
    }

    #[test]
    fn output_lines_round_trip_and_answers_are_collected() {
        let lines = [
            OutputLine::Output {
                stream: OutputStream::Stdout,
                data: b"hi\n\x00\xff".to_vec(),
            },
            OutputLine::Output {
                stream: OutputStream::Stderr,
                data: b"oops\n".to_vec(),
            },
            OutputLine::Exit(Exit {
                signal: Some(9),
                timed_out: true,
                ..Exit::default()
            }),
        ];
        let mut all = Vec::new();
        for l in &lines {
            let text = l.to_line();
            assert_eq!(&OutputLine::parse(&text).unwrap(), l);
            all.extend(text);
        }
        assert!(String::from_utf8_lossy(&all)
            .ends_with("{\"exit\":{\"signal\":9,\"timedOut\":true}}\n"));
        let (out, err, exit) = collect_output(&all).unwrap();
        assert_eq!((&out[..], &err[..]), (&b"hi\n\x00\xff"[..], &b"oops\n"[..]));
        assert_eq!(exit.signal, Some(9));
        let ok = OutputLine::Exit(Exit {
            code: Some(0),
            ..Exit::default()
        })
        .to_line();
        assert_eq!(ok, b"{\"exit\":{\"code\":0}}\n");
        all.extend(ok);
        assert!(matches!(collect_output(&all), Err(OutputError::AfterExit)));
        assert!(matches!(collect_output(b""), Err(OutputError::NoExit)));
        assert!(matches!(
            OutputLine::parse(b"{\"stream\":\"stdin\"}"),
            Err(OutputError::Line(_))
        ));
    }
}
