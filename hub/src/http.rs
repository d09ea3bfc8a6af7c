//! `http`: HTTP/1.1 framing for the user listener: request heads (httparse, zero-copy field
//! slices), request bodies (Content-Length or chunked), and response heads and bodies.

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

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// The head exceeds the configured limit (431).
    #[error("request header fields too large")]
    TooLarge,
    /// Not HTTP (400).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// A transfer coding other than chunked (501).
    #[error("unsupported transfer encoding")]
    UnsupportedEncoding,
}

const MAX_HEADERS: usize = 128;

/// Takes a complete request head off the front of `buf`, if there is one.
pub fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
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
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > max {
        return Err(HeadError::TooLarge);
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
        target: slice(target),
        http11,
        fields,
        body: BodyKind::None,
        keep_alive: http11,
    };
    if r.target.first() != Some(&b'/') {
        return Err(HeadError::Malformed(
            "request target must be an absolute path".into(),
        ));
    }
    if let Some(c) = r.header("connection") {
        let c = String::from_utf8_lossy(c).to_ascii_lowercase();
        if c.split(',').any(|t| t.trim() == "close") {
            r.keep_alive = false;
        } else if c.split(',').any(|t| t.trim() == "keep-alive") {
            r.keep_alive = true;
        }
    }
    if let Some(te) = r.header("transfer-encoding") {
        let te = String::from_utf8_lossy(te).to_ascii_lowercase();
        if te.trim() != "chunked" {
            return Err(HeadError::UnsupportedEncoding);
        }
        r.body = BodyKind::Chunked;
    } else if let Some(cl) = r.header("content-length") {
        let n: u64 = std::str::from_utf8(cl)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| HeadError::Malformed("invalid Content-Length".into()))?;
        if r.fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"content-length"))
            .count()
            > 1
        {
            return Err(HeadError::Malformed("repeated Content-Length".into()));
        }
        if n > 0 {
            r.body = BodyKind::Length(n);
        }
    }
    Ok(Some(r))
}

/// Incremental decoder of a request body.
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
        loop {
            match self.state {
                BodyState::Done => return Ok(BodyPart::End),
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(BodyPart::More);
                    }
                    let n = (left as usize).min(buf.len()).min(max);
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
                BodyState::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        self.state = if size == 0 {
                            BodyState::Trailers
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > 1024 => {
                        return Err(HeadError::Malformed("chunk size line too long".into()))
                    }
                    Ok(httparse::Status::Partial) => return Ok(BodyPart::More),
                    Err(_) => return Err(HeadError::Malformed("invalid chunk size".into())),
                },
                BodyState::ChunkDataEnd => {
                    if buf.len() < 2 {
                        return Ok(BodyPart::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(HeadError::Malformed("chunk not followed by CRLF".into()));
                    }
                    buf.advance(2);
                    self.state = BodyState::ChunkSize;
                }
                BodyState::Trailers => {
                    // Trailer fields are dropped; the body ends at the empty line.
                    match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            buf.advance(2);
                            self.state = BodyState::Done;
                        }
                        Some(i) => buf.advance(i + 2),
                        None if buf.len() > 8192 => {
                            return Err(HeadError::Malformed("trailers too long".into()))
                        }
                        None => return Ok(BodyPart::More),
                    }
                }
            }
        }
    }
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
) -> (Vec<u8>, Framing) {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(if http11 { b"HTTP/1.1 " } else { b"HTTP/1.0 " });
    out.extend_from_slice(status.to_string().as_bytes());
    out.push(b' ');
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
        if is_hop_by_hop(n) {
            continue;
        }
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
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

/// A complete response carrying a Kubernetes `Status`.
pub fn status_response(status: &Status, http11: bool, keep_alive: bool) -> Vec<u8> {
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
        fields.push((Bytes::from_static(b"Retry-After"), Bytes::from_static(b"1")));
    }
    let (mut out, _) = response_head(status.code, &fields, false, http11, keep_alive);
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
            &b"GET / HTTP/1.1\r\nConnection: close\r\nContent-Length: 3\r\n\r\n"[..],
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
        let (h, f) = response_head(200, &cl, false, true, true);
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
        let (h, f) = response_head(200, &hop, false, true, true);
        assert_eq!(f, Framing::Chunked);
        assert_eq!(h, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
        let s = status_response(&Status::unavailable("down"), true, true);
        let text = String::from_utf8(s).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Retry-After: 1\r\n"));
        assert!(text.ends_with(r#""code":503,"kind":"Status","message":"down","metadata":{},"reason":"ServiceUnavailable","status":"Failure"}"#));
    }
}
