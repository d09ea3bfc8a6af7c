//! `http`: HTTP/1.1 framing for the user listener: request heads (httparse, zero-copy field
//! slices), request bodies (Content-Length or chunked), and response heads and bodies.
//!
//! **Framing is never guessed** (RFC 9112 §6.3, request smuggling). A head whose body length is
//! ambiguous, or whose lines another parser could split differently, is refused, and the
//! caller closes the connection after the answer (`parse_head` and `BodyDecoder` empty the
//! buffer on an error, so nothing behind it can be read as a request). What is refused, and
//! with what, following Go's net/http (kube-apiserver's server) unless noted:
//!
//! | request | answer |
//! |---|---|
//! | `Content-Length` and `Transfer-Encoding`, any coding | 400 (Go frames by TE; RFC 9112 §6.3 allows refusing) |
//! | `Transfer-Encoding` not exactly one `chunked` field (`gzip, chunked`, `chunked, gzip`, `identity`, two fields …) | 501, as Go |
//! | `Transfer-Encoding` on HTTP/1.0 | 400 (RFC 9112 §6.1; Go ignores TE there) |
//! | `Content-Length` fields that differ, a list (`5, 6`), a sign, non-digits, empty, over 2^63-1 | 400, as Go (identical repeats are merged, as Go does) |
//! | obsolete line folding (a line starting with SP/HTAB) | 400 (httparse refuses it; Go unfolds it; RFC 9112 §5.2 allows either) |
//! | whitespace between a field name and its colon, NUL/CR/CTL in a field | 400 (httparse refuses them, as Go) |
//! | a bare LF as a line end (head, chunk lines, trailers) | 400 (Go refuses it in chunk lines only) |
//! | HTTP/1.1 without Host, two Hosts, an invalid Host | 400, as Go |
//! | chunk size line: empty, not hex, over 16 digits, bare LF, stray CR | 400, as Go |
//! | trailer lines that are not fields | 400 |
//!
//! Request targets: origin-form is served; absolute-form (`https://hub/clusters/x/api`, which
//! origin servers must accept, RFC 9112 §3.2.2) is served as its path and query; asterisk-form
//! (`OPTIONS *`) and authority-form (`CONNECT`) are 400, as the hub serves only
//! `/clusters/{cluster}/…`.

use bytes::{Buf, Bytes, BytesMut};
use kubehub_kapi::Status;
use kubehub_wire::Fields;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    /// Method token.
    pub method: Bytes,
    /// Request target (path and query).
    pub target: Bytes,
    /// HTTP/1.1 (true) or HTTP/1.0.
    pub http11: bool,
    /// Header fields as sent.
    pub fields: Fields,
    /// How the body is delimited.
    pub body: BodyKind,
    /// The client wants the connection kept open.
    pub keep_alive: bool,
}

impl RequestHead {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &v[..])
    }
}

/// Why a request head (or body) was refused. Whatever the variant, the connection is closed
/// after the answer: nothing after a refused head can be trusted to start a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head exceeds the configured limit (431).
    #[error("request header fields too large")]
    TooLarge,
    /// Not HTTP, or HTTP whose framing is ambiguous (400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A Transfer-Encoding other than a single `chunked` (501, as Go's net/http answers).
    #[error(
        "unsupported transfer encoding: only a single `Transfer-Encoding: chunked` is accepted"
    )]
    UnsupportedEncoding,
}

fn malformed(why: impl Into<String>) -> HeadError {
    HeadError::Malformed(why.into())
}

const MAX_HEADERS: usize = 128;

/// Takes a complete request head off the front of `buf`, if there is one.
///
/// On an error `buf` is emptied: the caller answers and closes the connection, and no byte
/// after a refused head (a body, or a request smuggled in one) may be read as a request.
pub fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    let res = parse_head_inner(buf, max);
    if res.is_err() {
        buf.clear();
    }
    res
}

fn parse_head_inner(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max {
                Err(HeadError::TooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(explain_parse_error(buf, e)),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    // httparse accepts a bare LF as a line end; a proxy in front of the hub may not, and then
    // the two see different lines (RFC 9112 §2.2 allows refusing it).
    if has_bare_lf(&buf[..len]) {
        return Err(malformed(
            "a line of the request head ends in a bare LF: lines must end in CRLF",
        ));
    }
    let base = buf.as_ptr() as usize;
    let off = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let method = off(req.method.unwrap_or("").as_bytes());
    let target = off(req.path.unwrap_or("").as_bytes());
    let http11 = req.version == Some(1);
    let spans: Vec<((usize, usize), (usize, usize))> = req
        .headers
        .iter()
        .map(|h| (off(h.name.as_bytes()), off(h.value)))
        .collect();
    let head = buf.split_to(len).freeze();
    let slice = |(o, l): (usize, usize)| head.slice(o..o + l);
    let fields: Fields = spans
        .into_iter()
        .map(|(n, v)| (slice(n), slice(v)))
        .collect();
    let mut r = RequestHead {
        method: slice(method),
        target: origin_form(&slice(target))?,
        http11,
        fields,
        body: BodyKind::None,
        keep_alive: http11,
    };
    r.body = framing(&mut r)?;
    check_host(&r)?;
    if let Some(c) = r.header("connection") {
        let c = String::from_utf8_lossy(c).to_ascii_lowercase();
        if c.split(',').any(|t| t.trim() == "close") {
            r.keep_alive = false;
        } else if c.split(',').any(|t| t.trim() == "keep-alive") {
            r.keep_alive = true;
        }
    }
    Ok(Some(r))
}

/// Whether some LF in `bytes` is not preceded by a CR.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
}

/// A precise message for what httparse refused, where the cause is a known trick.
fn explain_parse_error(buf: &[u8], e: httparse::Error) -> HeadError {
    if e == httparse::Error::HeaderName {
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(buf.len(), |i| i + 2);
        for line in buf[..end].split(|&b| b == b'\n').skip(1) {
            if matches!(line.first(), Some(b' ' | b'\t')) {
                return malformed(
                    "a header line starts with whitespace: obsolete line folding is not accepted",
                );
            }
            if let Some(colon) = line.iter().position(|&b| b == b':') {
                if matches!(line[..colon].last(), Some(b' ' | b'\t')) {
                    return malformed("whitespace between a header field name and its colon");
                }
            }
        }
    }
    malformed(format!("invalid request head: {e}"))
}

/// The request target in origin form (`/path?query`).
///
/// * origin-form (`/clusters/x/api`) is taken as it is;
/// * absolute-form (`https://hub/clusters/x/api`), which RFC 9112 §3.2.2 requires servers to
///   accept, becomes its path and query (the authority is checked, then ignored, as the Host
///   field is: the hub serves whatever name it is reached by);
/// * asterisk-form (`OPTIONS *`) and authority-form (`CONNECT host:port`) are refused: the hub
///   serves only `/clusters/{cluster}/…` paths.
fn origin_form(target: &Bytes) -> Result<Bytes, HeadError> {
    if target.first() == Some(&b'/') {
        return Ok(target.clone());
    }
    if &target[..] == b"*" {
        return Err(malformed(
            "the asterisk-form request target (*) is not served: use /clusters/{cluster}/...",
        ));
    }
    let scheme = [&b"https://"[..], b"http://"]
        .into_iter()
        .find(|s| target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s));
    let Some(scheme) = scheme else {
        return Err(malformed(
            "request target must be a path (/clusters/...) or an absolute http(s) URI",
        ));
    };
    let rest = &target[scheme.len()..];
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    if authority.is_empty() {
        return Err(malformed("absolute-form request target without a host"));
    }
    if authority.contains(&b'@') {
        return Err(malformed("user information in the request target"));
    }
    if !authority.iter().all(|&b| valid_host_byte(b)) {
        return Err(malformed("invalid host in the request target"));
    }
    let path = scheme.len() + end;
    Ok(match target.get(path) {
        Some(b'/') => target.slice(path..),
        None => Bytes::from_static(b"/"),
        Some(_) => Bytes::from([&b"/"[..], &target[path..]].concat()),
    })
}

/// The bytes Go's net/http accepts in a Host (httpguts.ValidHostHeader).
fn valid_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!$%&'()*+,-.:;=[]_~".contains(&b)
}

/// RFC 9112 §3.2: HTTP/1.1 requests carry exactly one Host, and no request more than one;
/// its value must be a valid host (Go's net/http refuses all three with 400).
fn check_host(r: &RequestHead) -> Result<(), HeadError> {
    let mut hosts = r
        .fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"host"));
    match (hosts.next(), hosts.next()) {
        (None, _) if r.http11 => Err(malformed("missing required Host header")),
        (Some(_), Some(_)) => Err(malformed("too many Host headers")),
        (Some((_, v)), None) if !v.iter().all(|&b| valid_host_byte(b)) => {
            Err(malformed("malformed Host header"))
        }
        _ => Ok(()),
    }
}

/// How the body is delimited (RFC 9112 §6), refusing every ambiguous framing:
///
/// * Transfer-Encoding together with Content-Length: 400 (§6.3 allows refusing; the hub does,
///   whatever the coding, since one side of a proxy chain framing by one and the other side by
///   the other is request smuggling);
/// * Transfer-Encoding on HTTP/1.0: 400 (§6.1: the framing is faulty);
/// * Transfer-Encoding other than one field that is exactly `chunked` (case-insensitive), as
///   `gzip, chunked`, `chunked, gzip`, `identity` or two fields: 501, as Go's net/http;
/// * Content-Length: every field the same value (duplicates are merged into one, as Go does),
///   and that value only digits and at most 2^63-1; else 400.
fn framing(r: &mut RequestHead) -> Result<BodyKind, HeadError> {
    let values = |name: &str| -> Vec<&Bytes> {
        r.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
            .collect()
    };
    let te = values("transfer-encoding");
    let cl = values("content-length");
    if !te.is_empty() && !cl.is_empty() {
        return Err(malformed(
            "both Content-Length and Transfer-Encoding are present: the body's length is \
             ambiguous (request smuggling?), refused",
        ));
    }
    if !te.is_empty() {
        if !r.http11 {
            return Err(malformed(
                "Transfer-Encoding in an HTTP/1.0 request: its framing is faulty",
            ));
        }
        if te.len() != 1 || !te[0].eq_ignore_ascii_case(b"chunked") {
            return Err(HeadError::UnsupportedEncoding);
        }
        return Ok(BodyKind::Chunked);
    }
    let Some(&first) = cl.first() else {
        return Ok(BodyKind::None);
    };
    if cl.iter().any(|v| *v != first) {
        return Err(malformed(
            "several Content-Length fields with different values: the body's length is ambiguous",
        ));
    }
    let n = parse_content_length(first)?;
    if cl.len() > 1 {
        // Identical repeats are merged into one field, so one is forwarded.
        let mut seen = false;
        r.fields.retain(|(n, _)| {
            let cl = n.eq_ignore_ascii_case(b"content-length");
            let keep = !(cl && seen);
            seen |= cl;
            keep
        });
    }
    Ok(if n == 0 {
        BodyKind::None
    } else {
        BodyKind::Length(n)
    })
}

/// A Content-Length value: decimal digits only, at most 2^63-1 (Go's
/// `strconv.ParseUint(v, 10, 63)`; httparse has already trimmed the surrounding whitespace).
fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    if v.is_empty() {
        return Err(malformed("invalid empty Content-Length"));
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(malformed(
                "invalid Content-Length: it must be a single decimal number",
            ));
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| malformed("Content-Length out of range"))?;
    }
    Ok(n)
}

/// Incremental decoder of a request body.
///
/// After an error the decoder stays failed and the buffer is emptied: the caller answers and
/// closes the connection, reading nothing more from it as a request.
#[derive(Debug)]
pub struct BodyDecoder {
    state: BodyState,
}

#[derive(Debug, Clone, Copy)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Done,
    Failed,
}

/// What the decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyPart {
    /// Body bytes.
    Data(Bytes),
    /// Need more input.
    More,
    /// The body is complete.
    End,
}

/// The longest chunk size line (with extensions, without CRLF), as Go's `maxLineLength`.
const MAX_CHUNK_LINE: usize = 4096;
/// The longest trailer section.
const MAX_TRAILERS: usize = 8192;

impl BodyDecoder {
    /// A decoder for a body of this kind.
    pub fn new(kind: BodyKind) -> BodyDecoder {
        BodyDecoder {
            state: match kind {
                BodyKind::None | BodyKind::Length(0) => BodyState::Done,
                BodyKind::Length(n) => BodyState::Length(n),
                BodyKind::Chunked => BodyState::ChunkSize,
            },
        }
    }

    /// Takes the next piece (at most `max` bytes of data) off `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut, max: usize) -> Result<BodyPart, HeadError> {
        let res = self.decode_inner(buf, max);
        if res.is_err() {
            self.state = BodyState::Failed;
            buf.clear();
        }
        res
    }

    fn decode_inner(&mut self, buf: &mut BytesMut, max: usize) -> Result<BodyPart, HeadError> {
        loop {
            match self.state {
                BodyState::Failed => return Err(malformed("the request body was refused")),
                BodyState::Done => return Ok(BodyPart::End),
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(BodyPart::More);
                    }
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len())
                        .min(max);
                    let data = buf.split_to(n).freeze();
                    let left = left - n as u64;
                    self.state = match self.state {
                        BodyState::Length(_) if left == 0 => BodyState::Done,
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::ChunkDataEnd,
                        _ => BodyState::ChunkData(left),
                    };
                    return Ok(BodyPart::Data(data));
                }
                BodyState::ChunkSize => match chunk_size_line(buf)? {
                    Some((used, size)) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    None => return Ok(BodyPart::More),
                },
                BodyState::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(BodyPart::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    // Trailer fields are dropped, but they must be fields: a request hidden
                    // after the last chunk is refused, not skipped.
                    let mut fields = [httparse::EMPTY_HEADER; 64];
                    let parsed = match httparse::parse_headers(buf, &mut fields) {
                        Ok(httparse::Status::Complete((used, _))) => Ok(Some(used)),
                        Ok(httparse::Status::Partial) => Ok(None),
                        Err(e) => Err(e),
                    };
                    match parsed {
                        Ok(Some(used)) => {
                            if has_bare_lf(&buf[..used]) {
                                return Err(malformed("a trailer line ends in a bare LF"));
                            }
                            buf.advance(used);
                            self.state = BodyState::Done;
                        }
                        Ok(None) if buf.len() > MAX_TRAILERS => {
                            return Err(malformed("trailers too long"))
                        }
                        Ok(None) => return Ok(BodyPart::More),
                        Err(e) => return Err(malformed(format!("invalid trailer section: {e}"))),
                    }
                }
            }
        }
    }
}

/// A chunk size line: `(bytes used, size)`, `None` if incomplete. The rules are Go's
/// (`net/http/internal/chunked.go`): the line ends in CRLF (a bare LF or a CR elsewhere is
/// refused), trailing SP/HTAB is dropped, extensions after `;` are ignored, and the size is 1
/// to 16 hex digits (no sign, no `0x`, no space).
fn chunk_size_line(buf: &[u8]) -> Result<Option<(usize, u64)>, HeadError> {
    let window = &buf[..buf.len().min(MAX_CHUNK_LINE + 2)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_CHUNK_LINE + 1 {
            Err(malformed("chunk size line too long"))
        } else {
            Ok(None)
        };
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Err(malformed("a chunk size line ends in a bare LF"));
    };
    if line.contains(&b'\r') {
        return Err(malformed("a CR inside a chunk size line"));
    }
    let mut line = line;
    while let [rest @ .., b' ' | b'\t'] = line {
        line = rest;
    }
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    if digits.is_empty() {
        return Err(malformed("empty chunk size"));
    }
    if digits.len() > 16 {
        return Err(malformed("chunk size too large"));
    }
    let mut size: u64 = 0;
    for &b in digits {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return Err(malformed("invalid byte in chunk size")),
        };
        size = (size << 4) | u64::from(d);
    }
    Ok(Some((lf + 1, size)))
}

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Content-Length given by the upstream.
    Length,
    /// Chunked (HTTP/1.1 without a length).
    Chunked,
    /// Until the connection closes (HTTP/1.0 without a length).
    Close,
    /// No body allowed (HEAD, 1xx, 204, 304).
    Empty,
}

pub use kubehub_kapi::http::is_hop_by_hop;

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// A response head with the upstream's end-to-end fields; returns the framing used.
pub fn response_head(
    status: u16,
    fields: &Fields,
    head_request: bool,
    http11: bool,
    keep_alive: bool,
    audit_id: &[u8],
) -> (Vec<u8>, Framing) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(if http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    // (Formatted in place: no string allocated per answer.)
    let _ = std::io::Write::write_fmt(&mut out, format_args!("{status} "));
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    let has_length = fields
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(b"content-length"));
    let framing = if head_request || status < 200 || status == 204 || status == 304 {
        Framing::Empty
    } else if has_length {
        Framing::Length
    } else if http11 {
        Framing::Chunked
    } else {
        Framing::Close
    };
    for (n, v) in fields {
        // The request's audit id is the hub's to say (the edge's is the same when it honours
        // the forwarded one).
        if is_hop_by_hop(n) || (!audit_id.is_empty() && n.eq_ignore_ascii_case(b"audit-id")) {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if !audit_id.is_empty() {
        out.extend_from_slice(b"Audit-ID: ");
        out.extend_from_slice(audit_id);
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    if !keep_alive || framing == Framing::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    (out, framing)
}

/// The `101 Switching Protocols` head of an upgraded connection, with the edge's fields as
/// they came (`Connection: Upgrade`, `Upgrade`, `Sec-WebSocket-Accept`,
/// `Sec-WebSocket-Protocol`, `X-Stream-Protocol-Version`, …): what follows is not HTTP, so
/// only body framing fields are left out.
pub fn switching_protocols_head(fields: &Fields) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
    for (n, v) in fields {
        if n.eq_ignore_ascii_case(b"content-length")
            || n.eq_ignore_ascii_case(b"transfer-encoding")
            || n.eq_ignore_ascii_case(b"keep-alive")
        {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// The protocol a request asks to switch to: its `Upgrade` field, when `Connection` lists
/// `upgrade` (RFC 9110 §7.8; both are needed, as a server reads them).
pub fn upgrade_of(head: &RequestHead) -> Option<&[u8]> {
    let listed = head
        .fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    let value = head.header("upgrade")?.trim_ascii();
    (listed && !value.is_empty() && head.http11).then_some(value)
}

/// A complete response carrying a Kubernetes `Status`.
pub fn status_response(
    status: &Status,
    http11: bool,
    keep_alive: bool,
    audit_id: &[u8],
) -> Vec<u8> {
    let body = status.to_json();
    let mut fields: Fields = vec![
        (
            Bytes::from_static(b"Content-Type"),
            Bytes::from_static(b"application/json"),
        ),
        (
            Bytes::from_static(b"Content-Length"),
            Bytes::from(body.len().to_string()),
        ),
    ];
    if matches!(status.code, 429 | 503) {
        // client-go retries these up to 10 times, waiting Retry-After seconds each time.
        let after = status
            .details
            .as_ref()
            .and_then(|d| d.retry_after_seconds)
            .filter(|&s| s > 1);
        fields.push((
            Bytes::from_static(b"Retry-After"),
            after.map_or(Bytes::from_static(b"1"), |s| Bytes::from(s.to_string())),
        ));
    }
    let (mut out, _) = response_head(status.code, &fields, false, http11, keep_alive, audit_id);
    out.extend_from_slice(&body);
    out
}

/// The size line of a chunk (`<hex>\r\n`), written into `buf` without allocating.
pub fn chunk_header(len: usize, buf: &mut [u8; 20]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 18;
    buf[18] = b'\r';
    buf[19] = b'\n';
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_with_zero_copy_fields() {
        let mut buf = BytesMut::from(
            &b"GET /clusters/a/api?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer t\r\n\r\nNEXT"
                [..],
        );
        let h = parse_head(&mut buf, 4096).unwrap().unwrap();
        assert_eq!(&h.method[..], b"GET");
        assert_eq!(&h.target[..], b"/clusters/a/api?x=1");
        assert!(h.http11 && h.keep_alive);
        assert_eq!(h.header("authorization"), Some(&b"Bearer t"[..]));
        assert_eq!(h.body, BodyKind::None);
        assert_eq!(&buf[..], b"NEXT", "the rest stays for the next request");
        let mut partial = BytesMut::from(&b"GET / HTTP/1.1\r\nHost:"[..]);
        assert!(parse_head(&mut partial, 4096).unwrap().is_none());
        let mut huge = BytesMut::from(
            &b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"[..],
        );
        assert_eq!(parse_head(&mut huge, 20).unwrap_err(), HeadError::TooLarge);
        let mut bad = BytesMut::from(&b"\x16\x03\x01garbage\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut bad, 4096),
            Err(HeadError::Malformed(_))
        ));
        let mut te = BytesMut::from(&b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&mut te, 4096).unwrap_err(),
            HeadError::UnsupportedEncoding
        );
        let mut close = BytesMut::from(
            &b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 3\r\n\r\n"[..],
        );
        let h = parse_head(&mut close, 4096).unwrap().unwrap();
        assert!(!h.keep_alive);
        assert_eq!(h.body, BodyKind::Length(3));
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        for split in 1..wire.len() {
            let mut dec = BodyDecoder::new(BodyKind::Chunked);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut fed = 0;
            loop {
                match dec.decode(&mut buf, 4).unwrap() {
                    BodyPart::Data(d) => out.extend_from_slice(&d),
                    BodyPart::End => break,
                    BodyPart::More => {
                        let n = split.min(wire.len() - fed);
                        buf.extend_from_slice(&wire[fed..fed + n]);
                        fed += n;
                    }
                }
            }
            assert_eq!(out, b"hello world", "split {split}");
            let rest = [&buf[..], &wire[fed..]].concat();
            assert_eq!(rest, b"NEXT");
        }
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        assert!(dec.decode(&mut BytesMut::from(&b"zz\r\n"[..]), 10).is_err());
    }

    /// Parses `raw` expecting a refusal; checks that nothing is left in the buffer to be read
    /// as a next request.
    fn refused(raw: &[u8]) -> HeadError {
        let mut buf = BytesMut::from(raw);
        let e = match parse_head(&mut buf, 16384) {
            Err(e) => e,
            Ok(h) => panic!("{:?} was accepted: {h:?}", String::from_utf8_lossy(raw)),
        };
        assert!(buf.is_empty(), "bytes left after a refused head: {buf:?}");
        e
    }

    /// A refusal with 400 whose message contains `why`.
    fn bad(raw: &[u8], why: &str) {
        match refused(raw) {
            HeadError::Malformed(m) => assert!(
                m.contains(why),
                "{:?}: {m:?} does not say {why:?}",
                String::from_utf8_lossy(raw)
            ),
            e => panic!("{:?}: {e:?}, not 400", String::from_utf8_lossy(raw)),
        }
    }

    fn accepted(raw: &[u8]) -> (RequestHead, BytesMut) {
        let mut buf = BytesMut::from(raw);
        let h = parse_head(&mut buf, 16384)
            .unwrap_or_else(|e| panic!("{:?}: {e}", String::from_utf8_lossy(raw)))
            .unwrap();
        (h, buf)
    }

    const SMUGGLED: &str =
        "GET /clusters/a/api/v1/namespaces/kube-system/secrets HTTP/1.1\r\nHost: h\r\n\r\n";

    #[test]
    fn content_length_with_transfer_encoding_is_refused() {
        let chunked = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
        for (a, b) in [
            ("Content-Length: 4", "Transfer-Encoding: chunked"),
            ("Transfer-Encoding: chunked", "Content-Length: 4"),
            ("Content-Length: 0", "Transfer-Encoding: chunked"),
            ("Content-Length: 4", "Transfer-Encoding: gzip"),
            ("Content-Length: 4", "Transfer-Encoding: identity"),
            ("content-length: 4", "transfer-encoding: CHUNKED"),
        ] {
            let raw =
                format!("POST /clusters/a/api HTTP/1.1\r\nHost: h\r\n{a}\r\n{b}\r\n\r\n{chunked}");
            bad(raw.as_bytes(), "both Content-Length and Transfer-Encoding");
        }
    }

    #[test]
    fn transfer_encodings_other_than_one_chunked_are_501_as_in_go() {
        for te in [
            "Transfer-Encoding: gzip",
            "Transfer-Encoding: gzip, chunked",
            "Transfer-Encoding: chunked, gzip",
            "Transfer-Encoding: identity",
            "Transfer-Encoding: xchunked",
            "Transfer-Encoding: chunkedx",
            "Transfer-Encoding: chunked, chunked",
            "Transfer-Encoding: chunked;q=1",
            "Transfer-Encoding: \"chunked\"",
            "Transfer-Encoding:",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x",
        ] {
            let raw = format!("POST / HTTP/1.1\r\nHost: h\r\n{te}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
            assert_eq!(
                refused(raw.as_bytes()),
                HeadError::UnsupportedEncoding,
                "{te}"
            );
        }
        for te in ["chunked", "Chunked", "CHUNKED", "  chunked \t"] {
            let raw =
                format!("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n\r\n0\r\n\r\n");
            let (h, rest) = accepted(raw.as_bytes());
            assert_eq!(h.body, BodyKind::Chunked, "{te}");
            assert_eq!(&rest[..], b"0\r\n\r\n");
        }
        bad(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "HTTP/1.0",
        );
    }

    #[test]
    fn content_length_must_be_one_unambiguous_number() {
        let with = |cl: &str| format!("POST / HTTP/1.1\r\nHost: h\r\n{cl}\r\n\r\nhello");
        for (cl, why) in [
            ("Content-Length: 5\r\nContent-Length: 6", "different values"),
            (
                "Content-Length: 5\r\nContent-Length: 05",
                "different values",
            ),
            ("Content-Length: 5, 6", "decimal"),
            ("Content-Length: 5, 5", "decimal"),
            ("Content-Length: 5,5", "decimal"),
            ("Content-Length: +5", "decimal"),
            ("Content-Length: -5", "decimal"),
            ("Content-Length: 5 6", "decimal"),
            ("Content-Length: 5\t6", "decimal"),
            ("Content-Length: 0x5", "decimal"),
            ("Content-Length: 5a", "decimal"),
            ("Content-Length: 5.0", "decimal"),
            ("Content-Length: \u{0665}", "decimal"),
            ("Content-Length:", "empty"),
            ("Content-Length: 9223372036854775808", "range"),
            ("Content-Length: 18446744073709551616", "range"),
            ("Content-Length: 99999999999999999999999999", "range"),
        ] {
            bad(with(cl).as_bytes(), why);
        }
        for (cl, want) in [
            ("Content-Length: 5", BodyKind::Length(5)),
            ("Content-Length:  5 \t", BodyKind::Length(5)),
            ("Content-Length: 005", BodyKind::Length(5)),
            ("Content-Length: 0", BodyKind::None),
            (
                "Content-Length: 9223372036854775807",
                BodyKind::Length(i64::MAX as u64),
            ),
        ] {
            assert_eq!(accepted(with(cl).as_bytes()).0.body, want, "{cl}");
        }
        // Identical repeats are accepted, as Go does, and merged into one field.
        let (h, rest) =
            accepted(with("Content-Length: 5\r\nX-A: 1\r\ncontent-length: 5").as_bytes());
        assert_eq!(h.body, BodyKind::Length(5));
        let names: Vec<&[u8]> = h.fields.iter().map(|(n, _)| &n[..]).collect();
        assert_eq!(names, [&b"Host"[..], b"Content-Length", b"X-A"]);
        assert_eq!(&rest[..], b"hello");
    }

    #[test]
    fn obsolete_line_folding_is_refused() {
        bad(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n",
            "line folding",
        );
        bad(
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\n\tb\r\n\r\n",
            "line folding",
        );
        bad(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n 5\r\n\r\nhello",
            "line folding",
        );
        bad(b"GET / HTTP/1.1\r\n Host: h\r\n\r\n", "line folding");
    }

    #[test]
    fn whitespace_before_a_colon_is_refused() {
        bad(
            b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length : 5\r\n\r\nhello",
            "colon",
        );
        bad(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding\t: chunked\r\nContent-Length: 5\r\n\r\nhello",
            "colon",
        );
        bad(b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", "colon");
    }

    #[test]
    fn host_is_required_once_on_http11() {
        bad(
            b"GET /clusters/a/api HTTP/1.1\r\n\r\n",
            "missing required Host",
        );
        bad(
            b"GET /clusters/a/api HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "too many Host",
        );
        bad(
            b"GET /clusters/a/api HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
            "too many Host",
        );
        bad(
            b"GET /clusters/a/api HTTP/1.1\r\nHost: a/b\r\n\r\n",
            "malformed Host",
        );
        bad(
            b"GET /clusters/a/api HTTP/1.1\r\nHost: a b\r\n\r\n",
            "malformed Host",
        );
        accepted(b"GET /clusters/a/api HTTP/1.0\r\n\r\n");
        accepted(b"GET /clusters/a/api HTTP/1.1\r\nHost:\r\n\r\n");
        accepted(b"GET /clusters/a/api HTTP/1.1\r\nHost: [::1]:6443\r\n\r\n");
    }

    #[test]
    fn bare_lf_and_control_bytes_are_refused() {
        for raw in [
            &b"GET / HTTP/1.1\nHost: h\n\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\nX-A: 1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\n",
            b"\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: h\r\nX-A: 1\nContent-Length: 5\r\n\r\nhello",
        ] {
            bad(raw, "bare LF");
        }
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x01b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x7fb\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nX-\x00A: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\n\rX-A: a\r\n\r\n",
            b"GET /\x00 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /a\rb HTTP/1.1\r\nHost: h\r\n\r\n",
        ] {
            bad(raw, "invalid request head");
        }
        // One empty line before the request line is ignored (RFC 9112 §2.2).
        accepted(b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
    }

    #[test]
    fn request_target_forms() {
        for (target, want) in [
            ("/clusters/a/api?x=1", "/clusters/a/api?x=1"),
            ("https://hub/clusters/a/api?x=1", "/clusters/a/api?x=1"),
            ("http://hub:6443/clusters/a/api", "/clusters/a/api"),
            ("HTTPS://[::1]:6443/clusters/a/api", "/clusters/a/api"),
            ("https://hub", "/"),
            ("https://hub?x=1", "/?x=1"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: other\r\n\r\nNEXT");
            let (h, rest) = accepted(raw.as_bytes());
            assert_eq!(String::from_utf8_lossy(&h.target), want, "{target}");
            assert_eq!(&rest[..], b"NEXT");
        }
        for (target, why) in [
            ("*", "asterisk"),
            ("hub:443", "absolute http(s) URI"),
            ("clusters/a/api", "absolute http(s) URI"),
            ("ftp://hub/clusters/a/api", "absolute http(s) URI"),
            ("https:///clusters/a/api", "without a host"),
            ("https://alice:pw@hub/clusters/a/api", "user information"),
            ("https://hub\"/clusters/a/api", "invalid host"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: hub\r\n\r\n");
            bad(raw.as_bytes(), why);
        }
        bad(b"OPTIONS * HTTP/1.1\r\nHost: hub\r\n\r\n", "asterisk");
        bad(
            b"CONNECT hub:443 HTTP/1.1\r\nHost: hub:443\r\n\r\n",
            "absolute",
        );
    }

    /// Decodes all of `wire` as one chunked body: the data, or the error; and what is left.
    fn dechunk(wire: &[u8]) -> (Result<Vec<u8>, HeadError>, BytesMut) {
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let mut buf = BytesMut::from(wire);
        let mut out = Vec::new();
        loop {
            match dec.decode(&mut buf, 1 << 20) {
                Ok(BodyPart::Data(d)) => out.extend_from_slice(&d),
                Ok(BodyPart::End) => return (Ok(out), buf),
                Ok(BodyPart::More) => panic!("{:?} is incomplete", String::from_utf8_lossy(wire)),
                Err(e) => {
                    assert!(buf.is_empty(), "bytes left after a refused body");
                    assert!(
                        dec.decode(&mut BytesMut::from(&b"0\r\n\r\n"[..]), 10)
                            .is_err(),
                        "a refused body stays refused"
                    );
                    return (Err(e), buf);
                }
            }
        }
    }

    fn bad_chunks(wire: &[u8], why: &str) {
        match dechunk(wire).0 {
            Err(HeadError::Malformed(m)) => assert!(
                m.contains(why),
                "{:?}: {m:?} does not say {why:?}",
                String::from_utf8_lossy(wire)
            ),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(wire)),
        }
    }

    #[test]
    fn chunk_size_lines_follow_go() {
        let long = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(5000));
        for (wire, why) in [
            (&b"\r\nhello\r\n0\r\n\r\n"[..], "empty chunk size"),
            (b";ext\r\n\r\n", "empty chunk size"),
            (b"5\nhello\r\n0\r\n\r\n", "bare LF"),
            (b"5;a\nhello\r\n0\r\n\r\n", "bare LF"),
            (b"0\n\r\n", "bare LF"),
            (b"5\r\rhello\r\n0\r\n\r\n", "CR inside"),
            (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "CR inside"),
            (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b"+5\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b"-5\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b" 5\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b"5 ;a\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b"5 5\r\nhello\r\n0\r\n\r\n", "invalid byte"),
            (b"g\r\n", "invalid byte"),
            (b"10000000000000000\r\n", "too large"),
            (long.as_bytes(), "too long"),
            (b"5\r\nhelloX\r\n0\r\n\r\n", "CRLF"),
        ] {
            bad_chunks(wire, why);
        }
        for wire in [
            &b"5\r\nhello\r\n0\r\n\r\nNEXT"[..],
            b"5 \t\r\nhello\r\n0\r\n\r\nNEXT",
            b"5;name=value;x=\"y z\"\r\nhello\r\n0;e\r\n\r\nNEXT",
            b"0000000000000005\r\nhello\r\n00\r\n\r\nNEXT",
            b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\nNEXT",
        ] {
            let (out, rest) = dechunk(wire);
            assert_eq!(
                out.unwrap(),
                b"hello",
                "{:?}",
                String::from_utf8_lossy(wire)
            );
            assert_eq!(&rest[..], b"NEXT");
        }
        let (out, _) = dechunk(b"A\r\n0123456789\r\n0\r\n\r\n");
        assert_eq!(out.unwrap(), b"0123456789");
    }

    #[test]
    fn trailers_must_be_fields() {
        let (out, rest) = dechunk(b"0\r\nX-A: 1\r\nX-B: 2\r\n\r\nNEXT");
        assert_eq!(out.unwrap(), b"");
        assert_eq!(&rest[..], b"NEXT", "trailers are dropped, the rest stays");
        // A request hidden where trailers go is refused, not skipped.
        let hidden = format!("0\r\n{SMUGGLED}");
        bad_chunks(hidden.as_bytes(), "invalid trailer section");
        let hidden = format!("0\r\n\n{SMUGGLED}");
        bad_chunks(hidden.as_bytes(), "bare LF");
        bad_chunks(b"0\r\nX-A: 1\nX-B: 2\r\n\r\n", "bare LF");
        bad_chunks(b"0\r\nX-A: 1\r\n folded\r\n\r\n", "invalid trailer section");
        bad_chunks(b"0\r\nX-A : 1\r\n\r\n", "invalid trailer section");
        bad_chunks(b"0\r\nX-A: \x001\r\n\r\n", "invalid trailer section");
        let mut dec = BodyDecoder::new(BodyKind::Chunked);
        let mut buf = BytesMut::from(format!("0\r\nX: {}", "a".repeat(9000)).as_bytes());
        assert!(dec.decode(&mut buf, 10).is_err(), "trailers are bounded");
    }

    #[test]
    fn chunk_headers() {
        let mut b = [0u8; 20];
        assert_eq!(chunk_header(0, &mut b), b"0\r\n");
        assert_eq!(chunk_header(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_header(16384, &mut b), b"4000\r\n");
        assert_eq!(chunk_header(usize::MAX, &mut b), b"ffffffffffffffff\r\n");
    }

    #[test]
    fn response_framing() {
        let cl: Fields = vec![(
            Bytes::from_static(b"Content-Length"),
            Bytes::from_static(b"2"),
        )];
        let (h, f) = response_head(200, &cl, false, true, true, b"");
        assert_eq!(f, Framing::Length);
        assert_eq!(h, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
        let hop: Fields = vec![
            (
                Bytes::from_static(b"Transfer-Encoding"),
                Bytes::from_static(b"chunked"),
            ),
            (
                Bytes::from_static(b"Content-Type"),
                Bytes::from_static(b"application/json"),
            ),
        ];
        let (h, f) = response_head(200, &hop, false, true, true, b"");
        assert_eq!(f, Framing::Chunked);
        assert_eq!(h, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let s = status_response(&Status::unavailable("down"), true, true, b"");
        let text = String::from_utf8(s).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.ends_with(r#""code":503,"kind":"Status","message":"down","metadata":{},"reason":"ServiceUnavailable","status":"Failure"}"#));
    }
}
