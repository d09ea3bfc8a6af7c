//! Reading an exec's exit status off the session's bytes as they pass, for the audit log.
//!
//! The agent carries an upgraded connection's bytes without changing them, but the hub's
//! audit line should say how the command ended. Kubernetes puts that on the session's error
//! channel as a `Status` (v4 and later): `Success`, or `Failure` with reason
//! `NonZeroExitCode` and the code in a cause `ExitCode`. [`ExitObserver`] follows just enough
//! of the framing to find it:
//! * **WebSocket** (`v5.channel.k8s.io`, `v4.channel.k8s.io`, …): frame headers are read and
//!   payloads skipped, except messages whose first byte is the error channel (3), kept up
//!   to [`MAX_STATUS`] bytes.
//! * **SPDY/3.1** (kubectl's fallback): the client opens one SPDY stream per channel; the one
//!   whose `streamtype` header is `error` is found by decoding the client's control frames
//!   (all of them, in order: header blocks share one zlib context per direction), and the
//!   edge's DATA on that stream is kept. DATA on other streams is skipped without a copy.
//!
//! Only headers and the error channel are looked at; a session whose framing the observer
//! cannot follow (anything else, a malformed frame) is simply not observed any more — the
//! bytes still flow, the status is "unknown".

use bytes::BytesMut;
use kubehub_kapi::remotecommand::{read_exit_status, ExitOutcome};
use kubehub_kapi::spdy;

/// Most bytes of an error-channel message kept.
pub const MAX_STATUS: usize = 64 * 1024;

/// Follows one upgraded session (see the module docs).
#[derive(Debug)]
pub enum ExitObserver {
    /// A WebSocket channel protocol: frames from the edge.
    WebSocket(WsReader),
    /// SPDY: the client's control frames (to find the error stream), the edge's frames.
    Spdy {
        client: Box<SpdyReader>,
        edge: Box<SpdyReader>,
        error_stream: Option<u32>,
        status: Vec<u8>,
        done: bool,
    },
    /// Not observed (port-forward, an unknown protocol, or framing lost).
    Off,
}

impl ExitObserver {
    /// The observer for a session that switched with these response fields (`Upgrade`,
    /// `Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version`); `command` is true for exec and
    /// attach (port-forward has no exit status).
    pub fn new(upgrade: &str, subprotocol: Option<&str>, command: bool) -> ExitObserver {
        if !command {
            return ExitObserver::Off;
        }
        if upgrade.eq_ignore_ascii_case("websocket") {
            match subprotocol {
                Some(p) if p.contains("channel.k8s.io") && !p.contains("base64") => {
                    ExitObserver::WebSocket(WsReader::default())
                }
                _ => ExitObserver::Off,
            }
        } else if upgrade.to_ascii_uppercase().starts_with("SPDY/3") {
            ExitObserver::Spdy {
                client: Box::default(),
                edge: Box::default(),
                error_stream: None,
                status: Vec::new(),
                done: false,
            }
        } else {
            ExitObserver::Off
        }
    }

    /// Bytes the client sent to the edge.
    pub fn client_bytes(&mut self, bytes: &[u8]) {
        let ExitObserver::Spdy {
            client,
            error_stream,
            ..
        } = self
        else {
            return;
        };
        let ok = client.feed(bytes, &mut |event| {
            if let SpdyEvent::Control(spdy::Frame::SynStream {
                stream_id, headers, ..
            }) = event
            {
                if headers.get("streamtype") == Some("error") {
                    *error_stream = Some(stream_id);
                }
            }
        });
        if !ok {
            *self = ExitObserver::Off;
        }
    }

    /// Bytes the edge sent to the client.
    pub fn edge_bytes(&mut self, bytes: &[u8]) {
        let ok = match self {
            ExitObserver::WebSocket(ws) => ws.feed(bytes),
            ExitObserver::Spdy {
                edge,
                error_stream,
                status,
                done,
                ..
            } => {
                let want = *error_stream;
                edge.feed(bytes, &mut |event| {
                    if let SpdyEvent::Data {
                        stream_id,
                        data,
                        fin,
                    } = event
                    {
                        if Some(stream_id) == want && !*done {
                            let room = MAX_STATUS.saturating_sub(status.len());
                            status.extend_from_slice(&data[..data.len().min(room)]);
                            *done = fin;
                        }
                    }
                })
            }
            ExitObserver::Off => true,
        };
        if !ok {
            *self = ExitObserver::Off;
        }
    }

    /// How the command ended, as far as seen: `0`, the exit code, `error: <message>`, or
    /// `None` (not seen).
    pub fn exit(&self) -> Option<String> {
        let raw = match self {
            ExitObserver::WebSocket(ws) => ws.status.as_deref()?,
            // An error stream that ended empty is a success, as client-go reads it.
            ExitObserver::Spdy { status, done, .. } if *done || !status.is_empty() => status,
            _ => return None,
        };
        Some(describe(raw))
    }
}

/// The exit status the error channel's bytes say (client-go's reading: empty or `Success` is
/// 0; older protocols send plain text).
pub fn describe(raw: &[u8]) -> String {
    match read_exit_status(raw) {
        Ok(ExitOutcome::Success) => "0".into(),
        Ok(ExitOutcome::Exit(code)) => code.to_string(),
        Ok(ExitOutcome::Failure { message, .. }) => format!("error: {message}"),
        Err(_) => format!("error: {}", String::from_utf8_lossy(raw).trim()),
    }
}

/// WebSocket frames from the server (unmasked, but a mask is handled), following message
/// boundaries to keep the error channel's.
#[derive(Debug, Default)]
pub struct WsReader {
    head: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
    /// The current frame is a control frame (skipped whole).
    control: bool,
    fin: bool,
    /// Inside a data message: whether it is the error channel's, and whether its first byte
    /// (the channel) was read.
    in_message: bool,
    error_message: bool,
    channel_read: bool,
    mask: Option<[u8; 4]>,
    offset: u64,
    collecting: Vec<u8>,
    status: Option<Vec<u8>>,
}

impl WsReader {
    /// Follows `bytes`; `false` once the framing makes no sense.
    fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.left == 0 && !self.head_complete() {
                let take = self.head_needed().saturating_sub(self.head.len()).max(1);
                let take = take.min(bytes.len());
                self.head.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                if self.head_complete() && !self.start_frame() {
                    return false;
                }
                continue;
            }
            let take = (self.left.min(bytes.len() as u64)) as usize;
            let (payload, rest) = bytes.split_at(take);
            bytes = rest;
            self.payload(payload);
            self.left -= take as u64;
            if self.left == 0 {
                self.end_frame();
            }
        }
        true
    }

    /// Header bytes needed so far (2, then more once the length and mask bits are known).
    fn head_needed(&self) -> usize {
        if self.head.len() < 2 {
            return 2;
        }
        let ext = match self.head[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.head[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn head_complete(&self) -> bool {
        self.head.len() >= 2 && self.head.len() >= self.head_needed()
    }

    /// A whole frame header was read: what follows.
    fn start_frame(&mut self) -> bool {
        let h = std::mem::take(&mut self.head);
        let opcode = h[0] & 0x0f;
        self.fin = h[0] & 0x80 != 0;
        let (len, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            n => (u64::from(n), 2),
        };
        self.mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.offset = 0;
        self.left = len;
        self.control = opcode >= 8;
        match opcode {
            0 if !self.in_message => return false,
            1 | 2 if self.in_message => return false,
            1 | 2 => {
                self.in_message = true;
                self.channel_read = false;
                self.error_message = false;
                self.collecting.clear();
            }
            0 | 8..=10 => {}
            _ => return false,
        }
        if len == 0 {
            self.end_frame();
        }
        true
    }

    fn payload(&mut self, payload: &[u8]) {
        if self.control {
            return;
        }
        let mut p = payload;
        if !self.channel_read {
            if let Some(&first) = p.first() {
                let channel = match self.mask {
                    Some(m) => first ^ m[0],
                    None => first,
                };
                self.channel_read = true;
                self.error_message = channel == 3;
                self.offset += 1;
                p = &p[1..];
            }
        }
        if self.error_message {
            let room = MAX_STATUS.saturating_sub(self.collecting.len());
            let (base, mask) = (self.offset, self.mask);
            self.collecting
                .extend(p.iter().take(room).enumerate().map(|(i, &b)| match mask {
                    Some(m) => b ^ m[((base + i as u64) % 4) as usize],
                    None => b,
                }));
        }
        self.offset += p.len() as u64;
    }

    fn end_frame(&mut self) {
        if self.control || !self.fin {
            return;
        }
        self.in_message = false;
        if self.error_message && !self.collecting.is_empty() {
            self.status = Some(std::mem::take(&mut self.collecting));
        }
    }
}

/// What the SPDY reader hands out.
enum SpdyEvent<'a> {
    /// A control frame, decoded.
    Control(spdy::Frame),
    /// (Part of) a DATA frame's payload.
    Data {
        stream_id: u32,
        data: &'a [u8],
        fin: bool,
    },
}

/// SPDY frames in one direction: control frames decoded (in order, through one decoder:
/// header blocks share a zlib context), DATA payloads passed by reference, never copied.
pub struct SpdyReader {
    decoder: spdy::Decoder,
    /// A control frame being collected (header first).
    control: BytesMut,
    head: Vec<u8>,
    /// DATA frame in progress: its stream, bytes left, FIN.
    data: Option<(u32, usize, bool)>,
    control_left: usize,
}

impl Default for SpdyReader {
    fn default() -> Self {
        SpdyReader {
            decoder: spdy::Decoder::new(),
            control: BytesMut::new(),
            head: Vec::with_capacity(spdy::HEADER_LEN),
            data: None,
            control_left: 0,
        }
    }
}

impl std::fmt::Debug for SpdyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpdyReader").finish_non_exhaustive()
    }
}

impl SpdyReader {
    /// Follows `bytes`; `false` once the framing makes no sense.
    fn feed(&mut self, mut bytes: &[u8], on: &mut dyn FnMut(SpdyEvent<'_>)) -> bool {
        while !bytes.is_empty() {
            if let Some((stream_id, left, fin)) = self.data {
                let take = left.min(bytes.len());
                let last = take == left;
                on(SpdyEvent::Data {
                    stream_id,
                    data: &bytes[..take],
                    fin: fin && last,
                });
                bytes = &bytes[take..];
                self.data = if last {
                    None
                } else {
                    Some((stream_id, left - take, fin))
                };
                continue;
            }
            if self.control_left > 0 {
                let take = self.control_left.min(bytes.len());
                self.control.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                self.control_left -= take;
                if self.control_left == 0 && !self.decode_control(on) {
                    return false;
                }
                continue;
            }
            let take = (spdy::HEADER_LEN - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.head.len() < spdy::HEADER_LEN {
                continue;
            }
            let h = std::mem::take(&mut self.head);
            let len = usize::from(h[5]) << 16 | usize::from(h[6]) << 8 | usize::from(h[7]);
            if h[0] & 0x80 == 0 {
                let stream_id = u32::from_be_bytes([h[0] & 0x7f, h[1], h[2], h[3]]);
                let fin = h[4] & spdy::flags::FIN != 0;
                if len == 0 {
                    on(SpdyEvent::Data {
                        stream_id,
                        data: &[],
                        fin,
                    });
                } else {
                    self.data = Some((stream_id, len, fin));
                }
            } else {
                if len > spdy::DEFAULT_MAX_HEADER_BLOCK {
                    return false;
                }
                self.control.clear();
                self.control.extend_from_slice(&h);
                self.control_left = len;
                if len == 0 && !self.decode_control(on) {
                    return false;
                }
            }
        }
        true
    }

    fn decode_control(&mut self, on: &mut dyn FnMut(SpdyEvent<'_>)) -> bool {
        match self.decoder.decode(&mut self.control) {
            Ok(Some(frame)) => {
                on(SpdyEvent::Control(frame));
                true
            }
            Ok(None) | Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws_frame(opcode: u8, fin: bool, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    const EXIT_3: &str = r#"{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: error executing command [sh -c exit 3], exit code 3","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"3"}]}}"#;

    /// A WebSocket session: stdout (large, fragmented), a ping, then the error channel; fed
    /// in pieces of every size, the status is found.
    #[test]
    fn websocket_exit_status_is_found_across_any_split() {
        let mut stream = Vec::new();
        let mut out = vec![1u8];
        out.extend(std::iter::repeat_n(b'x', 70_000));
        stream.extend(ws_frame(2, false, &out[..30_000], None));
        stream.extend(ws_frame(9, true, b"ping", None));
        stream.extend(ws_frame(0, true, &out[30_000..], None));
        let mut err = vec![3u8];
        err.extend_from_slice(EXIT_3.as_bytes());
        stream.extend(ws_frame(2, true, &err, Some([1, 2, 3, 4])));
        stream.extend(ws_frame(8, true, &[3, 232], None));
        for piece in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut o = ExitObserver::new("websocket", Some("v5.channel.k8s.io"), true);
            for chunk in stream.chunks(piece) {
                o.edge_bytes(chunk);
            }
            assert_eq!(o.exit().as_deref(), Some("3"), "pieces of {piece}");
        }
        let mut ok = ExitObserver::new("websocket", Some("v4.channel.k8s.io"), true);
        let mut err = vec![3u8];
        err.extend_from_slice(br#"{"metadata":{},"status":"Success"}"#);
        ok.edge_bytes(&ws_frame(2, true, &err, None));
        assert_eq!(ok.exit().as_deref(), Some("0"));
        // No error channel yet: unknown.
        let mut none = ExitObserver::new("websocket", Some("v5.channel.k8s.io"), true);
        none.edge_bytes(&ws_frame(2, true, b"\x01hi", None));
        assert_eq!(none.exit(), None);
        // Port-forward is not observed.
        let mut pf = ExitObserver::new("websocket", Some("SPDY/3.1+portforward.k8s.io"), true);
        pf.edge_bytes(&ws_frame(2, true, &err, None));
        assert_eq!(pf.exit(), None);
        // Garbage turns observation off, never panics.
        let mut bad = ExitObserver::new("websocket", Some("v5.channel.k8s.io"), true);
        bad.edge_bytes(&[0x83, 0x00, 1, 2, 3]);
        assert!(matches!(bad, ExitObserver::Off));
    }

    /// A SPDY session: the client opens stdout and error streams (compressed headers), the
    /// edge sends stdout DATA, then the status on the error stream.
    #[test]
    fn spdy_exit_status_is_found_on_the_error_stream() {
        let mut client = spdy::Encoder::new();
        let mut edge = spdy::Encoder::new();
        let mut c = BytesMut::new();
        let mut e = BytesMut::new();
        for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
            let f = spdy::Frame::open(id, spdy::Headers::new().with("streamtype", kind));
            client.encode(&f, &mut c).unwrap();
            let reply = spdy::Frame::SynReply {
                stream_id: id,
                fin: false,
                headers: spdy::Headers::new(),
            };
            edge.encode(&reply, &mut e).unwrap();
        }
        let data = |stream_id, data: &[u8], fin| spdy::Frame::Data {
            stream_id,
            fin,
            data: bytes::Bytes::copy_from_slice(data),
        };
        edge.encode(&data(3, &[b'y'; 100_000], false), &mut e)
            .unwrap();
        edge.encode(&data(1, EXIT_3.as_bytes(), true), &mut e)
            .unwrap();
        for piece in [1, 5, 8, 9, 1000, e.len()] {
            let mut o = ExitObserver::new("SPDY/3.1", None, true);
            for chunk in c.chunks(piece) {
                o.client_bytes(chunk);
            }
            for chunk in e.chunks(piece) {
                o.edge_bytes(chunk);
            }
            assert_eq!(o.exit().as_deref(), Some("3"), "pieces of {piece}");
        }
    }

    #[test]
    fn statuses_are_described() {
        assert_eq!(describe(EXIT_3.as_bytes()), "3");
        assert_eq!(
            describe(
                br#"{"status":"Failure","message":"container not found","reason":"BadRequest"}"#
            ),
            "error: container not found"
        );
        assert_eq!(
            describe(b"exec failed: no such file\n"),
            "error: exec failed: no such file"
        );
    }
}
