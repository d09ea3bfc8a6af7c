//! The remote-command protocols of `pods/{name}/exec`, `attach` and `portforward`: what the
//! streams are called, how WebSocket messages are framed, what the error stream carries.
//!
//! kubectl 1.30+ speaks two transports for exec and attach:
//!
//! * **WebSocket**, subprotocol [`V5`] (`v5.channel.k8s.io`; [`V4`] is the same without the
//!   close signal): every binary message is `[channel][payload]` ([`channel`]); the client
//!   half-closes stdin with `[255, 0]` ([`channel::CLOSE`]).
//! * **SPDY/3.1** ([`crate::spdy`]), `X-Stream-Protocol-Version: v4.channel.k8s.io`: one SPDY
//!   stream per channel, named by the [`STREAM_TYPE`] header ([`StreamType`]).
//!
//! Either way the session ends with a `Status` on the error channel: `Success`, or `Failure`
//! with reason `NonZeroExitCode` and the exit code as the `ExitCode` cause ([`exit_status`];
//! [`read_exit_status`] reads one back, e.g. for an audit log). Terminal resizes are JSON
//! (`{"Width":80,"Height":24}`, [`TerminalSize`]).
//!
//! Port-forward uses SPDY only ([`PORT_FORWARD_V1`]), tunneled inside a WebSocket whose
//! subprotocol is [`SPDY_TUNNEL_PREFIX`] + the SPDY protocol when kubectl starts with
//! WebSockets. Per forwarded connection the client opens an `error` and a `data` stream with
//! the [`PORT`] and [`REQUEST_ID`] headers.

use serde_json::{json, Value};

use crate::status::{Cause, Details, Status};

/// `v5.channel.k8s.io`: v4 plus the CLOSE signal (WebSocket only).
pub const V5: &str = "v5.channel.k8s.io";
/// `v4.channel.k8s.io`: the error channel carries a JSON `Status`.
pub const V4: &str = "v4.channel.k8s.io";
/// `v3.channel.k8s.io`
pub const V3: &str = "v3.channel.k8s.io";
/// `v2.channel.k8s.io`
pub const V2: &str = "v2.channel.k8s.io";
/// `channel.k8s.io` (v1)
pub const V1: &str = "channel.k8s.io";
/// The SPDY protocol of port-forward.
pub const PORT_FORWARD_V1: &str = "portforward.k8s.io";
/// The prefix of a WebSocket subprotocol that tunnels SPDY (`SPDY/3.1+portforward.k8s.io`).
pub const SPDY_TUNNEL_PREFIX: &str = "SPDY/3.1+";
/// The `Upgrade` token of SPDY.
pub const SPDY_UPGRADE: &str = "SPDY/3.1";
/// The request and response header naming the stream protocol (SPDY upgrades).
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// The response header listing the server's protocols when none could be agreed.
pub const ACCEPTED_PROTOCOLS_HEADER: &str = "X-Accepted-Stream-Protocol-Versions";
/// The SPDY stream header naming a stream's role.
pub const STREAM_TYPE: &str = "streamtype";
/// The SPDY stream header naming the forwarded port.
pub const PORT: &str = "port";
/// The SPDY stream header pairing a forwarded connection's error and data streams.
pub const REQUEST_ID: &str = "requestid";
/// `Status.reason` of a command that exited non-zero.
pub const NON_ZERO_EXIT_CODE: &str = "NonZeroExitCode";
/// The cause type (`reason`) carrying the exit code.
pub const EXIT_CODE_CAUSE: &str = "ExitCode";

/// WebSocket channel numbers (the first byte of every binary message).
pub mod channel {
    /// Client to server: the process's stdin.
    pub const STDIN: u8 = 0;
    /// Server to client: stdout (with a TTY, everything).
    pub const STDOUT: u8 = 1;
    /// Server to client: stderr.
    pub const STDERR: u8 = 2;
    /// Server to client: the final `Status`.
    pub const ERROR: u8 = 3;
    /// Client to server: terminal size changes.
    pub const RESIZE: u8 = 4;
    /// v5: `[255, channel]` half-closes `channel` (the client closing stdin).
    pub const CLOSE: u8 = 255;
}

/// The role of a SPDY stream (`streamtype` header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamType {
    /// The final Status (exec) or error text (port-forward).
    Error,
    /// stdin
    Stdin,
    /// stdout
    Stdout,
    /// stderr
    Stderr,
    /// Terminal resizes.
    Resize,
    /// A forwarded connection's bytes (port-forward).
    Data,
}

impl StreamType {
    /// Reads a `streamtype` value.
    pub fn parse(v: &str) -> Option<StreamType> {
        Some(match v {
            "error" => StreamType::Error,
            "stdin" => StreamType::Stdin,
            "stdout" => StreamType::Stdout,
            "stderr" => StreamType::Stderr,
            "resize" => StreamType::Resize,
            "data" => StreamType::Data,
            _ => return None,
        })
    }

    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Error => "error",
            StreamType::Stdin => "stdin",
            StreamType::Stdout => "stdout",
            StreamType::Stderr => "stderr",
            StreamType::Resize => "resize",
            StreamType::Data => "data",
        }
    }

    /// The WebSocket channel carrying the same stream (none for port-forward's `data`).
    pub fn channel(self) -> Option<u8> {
        match self {
            StreamType::Stdin => Some(channel::STDIN),
            StreamType::Stdout => Some(channel::STDOUT),
            StreamType::Stderr => Some(channel::STDERR),
            StreamType::Error => Some(channel::ERROR),
            StreamType::Resize => Some(channel::RESIZE),
            StreamType::Data => None,
        }
    }
}

/// The first protocol of the client's list (comma-separated header values, in the client's
/// order of preference) that the server supports, as Kubernetes negotiates.
pub fn negotiate<'a, I, S>(client_values: I, server: &[&'a str]) -> Option<&'a str>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    client_values
        .into_iter()
        .flat_map(|v| {
            v.as_ref()
                .split(',')
                .map(|p| p.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find_map(|p| server.iter().copied().find(|s| *s == p))
}

/// A WebSocket message: channel byte, then the payload.
pub fn ws_message(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 1);
    m.push(channel);
    m.extend_from_slice(payload);
    m
}

/// A received WebSocket message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMessage<'a> {
    /// Data for a channel.
    Data(u8, &'a [u8]),
    /// v5: the sender half-closed this channel.
    Close(u8),
    /// An empty message (carries nothing).
    Empty,
}

/// Splits a binary WebSocket message. A message starting with 255 is a close signal only under
/// v5 (`v5` true); under v4 it is data for channel 255.
pub fn parse_ws_message(msg: &[u8], v5: bool) -> WsMessage<'_> {
    match msg {
        [] => WsMessage::Empty,
        [channel::CLOSE, ch, ..] if v5 => WsMessage::Close(*ch),
        [ch, rest @ ..] => WsMessage::Data(*ch, rest),
    }
}

/// A terminal size, as the client's resize stream sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TerminalSize {
    /// Columns.
    #[serde(rename = "Width")]
    pub width: u16,
    /// Rows.
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Why a resize message could not be read.
#[derive(Debug, thiserror::Error)]
#[error("invalid resize message: {0}")]
pub struct ResizeError(#[from] serde_json::Error);

/// Reads one resize message (a JSON object; surrounding whitespace allowed).
pub fn parse_resize(msg: &[u8]) -> Result<TerminalSize, ResizeError> {
    Ok(serde_json::from_slice(msg)?)
}

/// Reads the resize messages of a SPDY resize stream, which are JSON objects one after another
/// (Go's `json.Encoder`), arriving in arbitrary pieces: appends `bytes` to `buf`, returns the
/// complete messages and keeps an incomplete tail in `buf`. `buf` never holds more than
/// `max_pending` bytes: a longer unfinished message is an error.
pub fn feed_resizes(
    buf: &mut Vec<u8>,
    bytes: &[u8],
    max_pending: usize,
) -> Result<Vec<TerminalSize>, ResizeError> {
    buf.extend_from_slice(bytes);
    let mut out = Vec::new();
    let mut it = serde_json::Deserializer::from_slice(buf).into_iter::<TerminalSize>();
    loop {
        match it.next() {
            Some(Ok(size)) => out.push(size),
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => return Err(ResizeError(e)),
            None => break,
        }
    }
    // Where the complete messages (and the whitespace after them) end.
    let consumed = it.byte_offset();
    buf.drain(..consumed);
    if buf.len() > max_pending {
        return Err(ResizeError(serde::de::Error::custom(
            "resize message too long",
        )));
    }
    Ok(out)
}

/// The `Status` that ends a session whose command exited with `code`: `Success` for 0, else a
/// `Failure` with reason `NonZeroExitCode` and the `ExitCode` cause, as the kubelet (and
/// kube-apiserver's stream translator) write it.
pub fn exit_status(code: i32) -> Value {
    if code == 0 {
        success_status()
    } else {
        non_zero_exit(code).to_value()
    }
}

/// `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success"}`.
pub fn success_status() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

/// The `NonZeroExitCode` failure for `code` (no HTTP code: it travels on the error stream).
pub fn non_zero_exit(code: i32) -> Status {
    let mut s = Status::new(
        0,
        NON_ZERO_EXIT_CODE,
        format!(
            "command terminated with non-zero exit code: command terminated with exit code {code}"
        ),
    );
    s.details = Some(Box::new(Details {
        causes: vec![Cause {
            reason: EXIT_CODE_CAUSE.into(),
            message: code.to_string(),
            field: String::new(),
        }],
        ..Details::default()
    }));
    s
}

/// How a session ended, read off its error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitOutcome {
    /// An empty error stream or a `Success` Status.
    Success,
    /// `NonZeroExitCode` with this code.
    Exit(i32),
    /// Any other failure, with its reason and message.
    Failure {
        /// `Status.reason`.
        reason: String,
        /// `Status.message`.
        message: String,
    },
}

/// Why an error stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ExitStatusError {
    /// Not a JSON Status.
    #[error("error stream is not a Status: {0}")]
    Json(#[from] serde_json::Error),
    /// `NonZeroExitCode` without a readable `ExitCode` cause.
    #[error("error stream protocol error: no exit code found in details")]
    NoExitCode,
    /// A `status` other than Success or Failure.
    #[error("error stream protocol error: unknown status {0:?}")]
    UnknownStatus(String),
}

/// Reads the error stream of a v4/v5 session (all of its bytes), as client-go reads it.
pub fn read_exit_status(bytes: &[u8]) -> Result<ExitOutcome, ExitStatusError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(ExitOutcome::Success);
    }
    let v: Value = serde_json::from_slice(bytes)?;
    let text = |k: &str| v[k].as_str().unwrap_or("").to_owned();
    match v["status"].as_str() {
        Some("Success") => Ok(ExitOutcome::Success),
        Some("Failure") if v["reason"] == NON_ZERO_EXIT_CODE => v["details"]["causes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["reason"] == EXIT_CODE_CAUSE)
            .find_map(|c| c["message"].as_str()?.parse::<i32>().ok())
            .map(ExitOutcome::Exit)
            .ok_or(ExitStatusError::NoExitCode),
        Some("Failure") => Ok(ExitOutcome::Failure {
            reason: text("reason"),
            message: text("message"),
        }),
        other => Err(ExitStatusError::UnknownStatus(
            other.unwrap_or("").to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_statuses_are_shaped_like_the_kubelets() {
        assert_eq!(
            exit_status(0),
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        );
        assert_eq!(
            exit_status(3),
            json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "command terminated with non-zero exit code: command terminated with exit code 3",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}
            })
        );
    }

    #[test]
    fn exit_statuses_read_back() {
        let bytes = |v: Value| serde_json::to_vec(&v).unwrap();
        assert_eq!(read_exit_status(b"").unwrap(), ExitOutcome::Success);
        assert_eq!(
            read_exit_status(&bytes(exit_status(0))).unwrap(),
            ExitOutcome::Success
        );
        assert_eq!(
            read_exit_status(&bytes(exit_status(127))).unwrap(),
            ExitOutcome::Exit(127)
        );
        let internal = Status::internal("boom").to_json();
        assert_eq!(
            read_exit_status(&internal).unwrap(),
            ExitOutcome::Failure {
                reason: "InternalError".into(),
                message: "boom".into()
            }
        );
        assert!(matches!(
            read_exit_status(br#"{"status":"Failure","reason":"NonZeroExitCode"}"#),
            Err(ExitStatusError::NoExitCode)
        ));
        assert!(read_exit_status(b"{").is_err());
    }

    #[test]
    fn websocket_messages() {
        assert_eq!(ws_message(channel::STDOUT, b"hi"), b"\x01hi");
        assert_eq!(
            parse_ws_message(b"\x00abc", true),
            WsMessage::Data(0, b"abc")
        );
        assert_eq!(parse_ws_message(&[255, 0], true), WsMessage::Close(0));
        assert_eq!(
            parse_ws_message(&[255, 0], false),
            WsMessage::Data(255, &[0])
        );
        assert_eq!(parse_ws_message(b"", true), WsMessage::Empty);
    }

    #[test]
    fn negotiation_follows_the_clients_order() {
        assert_eq!(
            negotiate(["v5.channel.k8s.io, v4.channel.k8s.io"], &[V4, V5]),
            Some(V5)
        );
        assert_eq!(
            negotiate(["v3.channel.k8s.io", "v4.channel.k8s.io"], &[V4, V5]),
            Some(V4)
        );
        assert_eq!(negotiate(["channel.k8s.io"], &[V4, V5]), None);
        assert_eq!(negotiate(Vec::<String>::new(), &[V4]), None);
    }

    #[test]
    fn resizes_arrive_in_pieces() {
        let mut buf = Vec::new();
        assert_eq!(
            parse_resize(b"{\"Width\":80,\"Height\":24}\n").unwrap(),
            TerminalSize {
                width: 80,
                height: 24
            }
        );
        let got = feed_resizes(&mut buf, b"{\"Width\":80,\"Height\":24}\n{\"Wid", 64).unwrap();
        assert_eq!(got.len(), 1);
        let got = feed_resizes(&mut buf, b"th\":100,\"Height\":40}\n", 64).unwrap();
        assert_eq!(
            got,
            [TerminalSize {
                width: 100,
                height: 40
            }]
        );
        assert!(buf.iter().all(u8::is_ascii_whitespace));
        assert!(feed_resizes(&mut buf, b"{\"a\":1}", 64).is_err());
        let mut buf = Vec::new();
        assert!(feed_resizes(&mut buf, &[b' '; 10], 4).unwrap().is_empty());
        assert!(buf.is_empty());
        let mut buf = Vec::new();
        assert!(feed_resizes(&mut buf, b"{\"Width\":1000000000000", 8).is_err());
    }

    #[test]
    fn stream_types() {
        for t in [
            StreamType::Error,
            StreamType::Stdin,
            StreamType::Stdout,
            StreamType::Stderr,
            StreamType::Resize,
            StreamType::Data,
        ] {
            assert_eq!(StreamType::parse(t.as_str()), Some(t));
        }
        assert_eq!(StreamType::parse("bogus"), None);
        assert_eq!(StreamType::Error.channel(), Some(channel::ERROR));
    }
}
