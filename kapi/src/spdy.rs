//! SPDY/3.1 framing: the transport kubectl falls back to for exec, attach and port-forward
//! (and the one port-forward tunnels inside a WebSocket).
//!
//! Sans-IO, like the rest of the crate: [`Decoder::decode`] takes whole frames off the front of
//! a read buffer, [`Encoder::encode`] appends a frame to a write buffer. Header blocks are zlib
//! streams primed with SPDY's fixed dictionary ([`dictionary`]); each direction of a session is
//! **one** zlib stream (every header block is a sync-flushed continuation of it), so a session
//! needs one `Decoder` for what it reads and one `Encoder` for what it writes, each used for
//! every frame of its direction in order. That also makes the decoder usable passively: an
//! observer that feeds it the bytes of one direction from the start of a session gets that
//! direction's frames (starting mid-session cannot work: the zlib history is missing).
//!
//! What the codec checks: the version (3), every frame's length against its type and against
//! the decoder's limit *before* waiting for or reserving the body, stream ids (non-zero where
//! the frame needs one), header blocks (counts and lengths against the bytes present before
//! anything is allocated, lowercase non-empty names without duplicates, the decompressed size
//! against a limit). Decoding never panics; after an error the zlib context may be out of step,
//! so the session must end (SPDY's answer is a GOAWAY with `PROTOCOL_ERROR`).
//!
//! Flow control (WINDOW_UPDATE) is decoded and encoded but not enforced here: Go's
//! `moby/spdystream`, which kubectl and the kubelet use, never sends it nor honours it.
//!
//! Reference: <https://www.chromium.org/spdy/spdy-protocol/spdy-protocol-draft3-1>.

use std::sync::OnceLock;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The protocol version this codec speaks.
pub const VERSION: u16 = 3;

/// The largest length a frame header can express (24 bits).
pub const MAX_FRAME_LEN: usize = 0x00FF_FFFF;

/// The largest stream id (31 bits).
pub const MAX_STREAM_ID: u32 = 0x7FFF_FFFF;

/// Default limit of a decompressed header block.
pub const DEFAULT_MAX_HEADER_BLOCK: usize = 256 * 1024;

/// Length of every frame header.
pub const HEADER_LEN: usize = 8;

/// Control frame types.
pub mod frame_type {
    /// SYN_STREAM
    pub const SYN_STREAM: u16 = 1;
    /// SYN_REPLY
    pub const SYN_REPLY: u16 = 2;
    /// RST_STREAM
    pub const RST_STREAM: u16 = 3;
    /// SETTINGS
    pub const SETTINGS: u16 = 4;
    /// PING
    pub const PING: u16 = 6;
    /// GOAWAY
    pub const GOAWAY: u16 = 7;
    /// HEADERS
    pub const HEADERS: u16 = 8;
    /// WINDOW_UPDATE
    pub const WINDOW_UPDATE: u16 = 9;
}

/// Frame flags.
pub mod flags {
    /// FLAG_FIN: the sender's last frame on the stream.
    pub const FIN: u8 = 0x01;
    /// FLAG_UNIDIRECTIONAL (SYN_STREAM): the recipient may not send on the stream.
    pub const UNIDIRECTIONAL: u8 = 0x02;
    /// FLAG_SETTINGS_CLEAR_SETTINGS (SETTINGS).
    pub const CLEAR_SETTINGS: u8 = 0x01;
}

/// RST_STREAM status codes.
pub mod rst {
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INVALID_STREAM
    pub const INVALID_STREAM: u32 = 2;
    /// REFUSED_STREAM
    pub const REFUSED_STREAM: u32 = 3;
    /// UNSUPPORTED_VERSION
    pub const UNSUPPORTED_VERSION: u32 = 4;
    /// CANCEL
    pub const CANCEL: u32 = 5;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 6;
    /// FLOW_CONTROL_ERROR
    pub const FLOW_CONTROL_ERROR: u32 = 7;
    /// STREAM_IN_USE
    pub const STREAM_IN_USE: u32 = 8;
    /// STREAM_ALREADY_CLOSED
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
    /// FRAME_TOO_LARGE
    pub const FRAME_TOO_LARGE: u32 = 11;
}

/// GOAWAY status codes.
pub mod goaway {
    /// OK: a normal session teardown.
    pub const OK: u32 = 0;
    /// PROTOCOL_ERROR
    pub const PROTOCOL_ERROR: u32 = 1;
    /// INTERNAL_ERROR
    pub const INTERNAL_ERROR: u32 = 2;
}

/// Why bytes could not be decoded, or a frame could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpdyError {
    /// A control frame of another SPDY version.
    #[error("unsupported SPDY version {0}")]
    UnsupportedVersion(u16),
    /// A frame longer than the decoder accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The frame's length field.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A control frame whose length does not fit its type.
    #[error("{kind} frame with invalid length {len}")]
    InvalidLength {
        /// The frame type's name.
        kind: &'static str,
        /// The length field.
        len: usize,
    },
    /// Stream id 0 on a frame that needs a stream.
    #[error("{0} frame on stream 0")]
    ZeroStreamId(&'static str),
    /// A WINDOW_UPDATE delta outside 1..=2^31-1.
    #[error("invalid WINDOW_UPDATE delta {0}")]
    InvalidWindowDelta(u32),
    /// A malformed (decompressed) header block.
    #[error("malformed header block: {0}")]
    MalformedHeaderBlock(&'static str),
    /// A header name that is empty or not lowercase.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// The same header name twice in a block.
    #[error("duplicate header {0:?}")]
    DuplicateHeader(String),
    /// A header block larger than the limit, once decompressed.
    #[error("header block exceeds {0} bytes")]
    HeaderBlockTooLarge(usize),
    /// The zlib stream of header blocks is corrupt (or out of step).
    #[error("header compression: {0}")]
    Compression(String),
    /// A frame that cannot be encoded (a field out of range).
    #[error("cannot encode: {0}")]
    Unencodable(&'static str),
}

/// A header block: names (lowercase) with their values, in order. A value that holds several
/// values separates them with NUL, as SPDY does on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    /// No headers.
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Adds `value` to `name` (lowercased): a new field, or one more NUL-separated value of an
    /// existing one.
    pub fn add(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        match self.fields.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => self.fields.push((name, value.to_owned())),
        }
    }

    /// Builder form of [`Headers::add`].
    pub fn with(mut self, name: &str, value: &str) -> Headers {
        self.add(name, value);
        self
    }

    /// The first value of `name` (matched case-insensitively).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }

    /// Every value of `name`.
    pub fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let name = name.to_ascii_lowercase();
        self.fields
            .iter()
            .filter(move |(n, _)| *n == name)
            .flat_map(|(_, v)| v.split('\0'))
    }

    /// Fields as on the wire: name and the (NUL-joined) value.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Entry flags (`FLAG_SETTINGS_PERSIST_VALUE` = 1, `FLAG_SETTINGS_PERSISTED` = 2).
    pub flags: u8,
    /// The setting's id (24 bits), e.g. 7 = INITIAL_WINDOW_SIZE.
    pub id: u32,
    /// Its value.
    pub value: u32,
}

/// A SPDY/3.1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Opens a stream.
    SynStream {
        /// The new stream.
        stream_id: u32,
        /// The stream it is associated with (0: none).
        associated_to: u32,
        /// Priority, 0 (highest) to 7.
        priority: u8,
        /// The credential slot (0: none).
        slot: u8,
        /// FLAG_FIN: the opener sends nothing more.
        fin: bool,
        /// FLAG_UNIDIRECTIONAL.
        unidirectional: bool,
        /// The request headers.
        headers: Headers,
    },
    /// Accepts a stream.
    SynReply {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// The reply headers.
        headers: Headers,
    },
    /// Aborts a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why ([`rst`]).
        status: u32,
    },
    /// Session settings.
    Settings {
        /// FLAG_SETTINGS_CLEAR_SETTINGS.
        clear: bool,
        /// The entries.
        entries: Vec<Setting>,
    },
    /// A ping, or the answer to one (same id).
    Ping {
        /// Odd from the client, even from the server.
        id: u32,
    },
    /// The sender stops accepting new streams.
    GoAway {
        /// The last stream the sender accepted.
        last_good_stream_id: u32,
        /// Why ([`goaway`]).
        status: u32,
    },
    /// More headers on a stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// The headers.
        headers: Headers,
    },
    /// Flow-control credit.
    WindowUpdate {
        /// The stream.
        stream_id: u32,
        /// Bytes of credit (1..=2^31-1).
        delta: u32,
    },
    /// Stream data.
    Data {
        /// The stream.
        stream_id: u32,
        /// FLAG_FIN.
        fin: bool,
        /// The payload (a slice of the read buffer when decoded).
        data: Bytes,
    },
    /// A control frame of a type this codec does not know (the spec says to ignore it).
    Unknown {
        /// Its type.
        kind: u16,
        /// Its flags.
        flags: u8,
        /// Its payload, as received.
        payload: Bytes,
    },
}

impl Frame {
    /// A SYN_STREAM opening `stream_id` with `headers`, as a client opens one (no association,
    /// priority 0, not finished, bidirectional).
    pub fn open(stream_id: u32, headers: Headers) -> Frame {
        Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            fin: false,
            unidirectional: false,
            headers,
        }
    }

    /// The stream a frame belongs to (0 for session frames).
    pub fn stream_id(&self) -> u32 {
        match self {
            Frame::SynStream { stream_id, .. }
            | Frame::SynReply { stream_id, .. }
            | Frame::RstStream { stream_id, .. }
            | Frame::Headers { stream_id, .. }
            | Frame::WindowUpdate { stream_id, .. }
            | Frame::Data { stream_id, .. } => *stream_id,
            _ => 0,
        }
    }

    /// Whether the frame carries FLAG_FIN.
    pub fn is_fin(&self) -> bool {
        match self {
            Frame::SynStream { fin, .. }
            | Frame::SynReply { fin, .. }
            | Frame::Headers { fin, .. }
            | Frame::Data { fin, .. } => *fin,
            _ => false,
        }
    }
}

// The dictionary of SPDY/3 (§2.6.10.1): length-prefixed header names and common values, then
// status lines, dates and content types run together.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,public",
    "privatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

/// The zlib dictionary of SPDY/3 header compression (1,423 bytes).
pub fn dictionary() -> &'static [u8] {
    static DICT: OnceLock<Vec<u8>> = OnceLock::new();
    DICT.get_or_init(|| {
        let mut d = Vec::with_capacity(1423);
        for w in DICTIONARY_WORDS {
            d.extend_from_slice(&(w.len() as u32).to_be_bytes());
            d.extend_from_slice(w.as_bytes());
        }
        d.extend_from_slice(DICTIONARY_TAIL.as_bytes());
        d
    })
}

fn zlib_error(e: impl std::fmt::Display) -> SpdyError {
    SpdyError::Compression(e.to_string())
}

/// Reads frames of one direction of a session.
pub struct Decoder {
    inflate: Decompress,
    max_frame_len: usize,
    max_header_block: usize,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("max_frame_len", &self.max_frame_len)
            .field("max_header_block", &self.max_header_block)
            .field("total_in", &self.inflate.total_in())
            .finish()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    /// A decoder accepting any frame length the format allows and header blocks up to
    /// [`DEFAULT_MAX_HEADER_BLOCK`].
    pub fn new() -> Decoder {
        Decoder::with_limits(MAX_FRAME_LEN, DEFAULT_MAX_HEADER_BLOCK)
    }

    /// A decoder with limits: frames longer than `max_frame_len` and header blocks that
    /// decompress to more than `max_header_block` bytes are errors.
    pub fn with_limits(max_frame_len: usize, max_header_block: usize) -> Decoder {
        Decoder {
            inflate: Decompress::new(true),
            max_frame_len: max_frame_len.min(MAX_FRAME_LEN),
            max_header_block,
        }
    }

    /// Takes the next whole frame off the front of `buf`: `Ok(None)` when more bytes are
    /// needed (nothing is consumed then). The frame header is validated before the body is
    /// waited for, so an oversized or malformed frame fails at once.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, SpdyError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let word = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let flags = buf[4];
        let len = (usize::from(buf[5]) << 16) | (usize::from(buf[6]) << 8) | usize::from(buf[7]);
        if len > self.max_frame_len {
            return Err(SpdyError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        let control = word & 0x8000_0000 != 0;
        if control {
            let version = ((word >> 16) & 0x7FFF) as u16;
            if version != VERSION {
                return Err(SpdyError::UnsupportedVersion(version));
            }
            check_control_length((word & 0xFFFF) as u16, len)?;
        } else if word & MAX_STREAM_ID == 0 {
            return Err(SpdyError::ZeroStreamId("DATA"));
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        let payload = buf.split_to(len).freeze();
        let fin = flags & flags::FIN != 0;
        if !control {
            return Ok(Some(Frame::Data {
                stream_id: word & MAX_STREAM_ID,
                fin,
                data: payload,
            }));
        }
        self.control((word & 0xFFFF) as u16, flags, payload)
            .map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, mut p: Bytes) -> Result<Frame, SpdyError> {
        let fin = flags & flags::FIN != 0;
        // Lengths were checked by `check_control_length`, so the fixed fields are present.
        Ok(match kind {
            frame_type::SYN_STREAM => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let associated_to = p.get_u32() & MAX_STREAM_ID;
                let priority = p.get_u8() >> 5;
                let slot = p.get_u8();
                nonzero(stream_id, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id,
                    associated_to,
                    priority,
                    slot,
                    fin,
                    unidirectional: flags & flags::UNIDIRECTIONAL != 0,
                    headers: self.header_block(&p)?,
                }
            }
            frame_type::SYN_REPLY => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                nonzero(stream_id, "SYN_REPLY")?;
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers: self.header_block(&p)?,
                }
            }
            frame_type::HEADERS => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                nonzero(stream_id, "HEADERS")?;
                Frame::Headers {
                    stream_id,
                    fin,
                    headers: self.header_block(&p)?,
                }
            }
            frame_type::RST_STREAM => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                nonzero(stream_id, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id,
                    status: p.get_u32(),
                }
            }
            frame_type::SETTINGS => {
                let n = p.get_u32() as usize;
                if n.checked_mul(8) != Some(p.len()) {
                    return Err(SpdyError::InvalidLength {
                        kind: "SETTINGS",
                        len: p.len() + 4,
                    });
                }
                let entries = (0..n)
                    .map(|_| {
                        let head = p.get_u32();
                        Setting {
                            flags: (head >> 24) as u8,
                            id: head & 0x00FF_FFFF,
                            value: p.get_u32(),
                        }
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & flags::CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            frame_type::PING => Frame::Ping { id: p.get_u32() },
            frame_type::GOAWAY => Frame::GoAway {
                last_good_stream_id: p.get_u32() & MAX_STREAM_ID,
                status: p.get_u32(),
            },
            frame_type::WINDOW_UPDATE => {
                let stream_id = p.get_u32() & MAX_STREAM_ID;
                let delta = p.get_u32() & MAX_STREAM_ID;
                if delta == 0 {
                    return Err(SpdyError::InvalidWindowDelta(delta));
                }
                Frame::WindowUpdate { stream_id, delta }
            }
            kind => Frame::Unknown {
                kind,
                flags,
                payload: p,
            },
        })
    }

    /// Decompresses one header block (continuing the direction's zlib stream) and parses it.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Headers, SpdyError> {
        if compressed.is_empty() {
            return Ok(Headers::new());
        }
        let raw = self.inflate_block(compressed)?;
        parse_header_block(&raw)
    }

    fn inflate_block(&mut self, input: &[u8]) -> Result<Vec<u8>, SpdyError> {
        let max = self.max_header_block;
        let mut out: Vec<u8> = Vec::with_capacity(input.len().saturating_mul(4).max(64).min(max));
        let mut pos = 0usize;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= max {
                    return Err(SpdyError::HeaderBlockTooLarge(max));
                }
                let more = out.len().max(64).min(max - out.len());
                out.reserve_exact(more);
            }
            let (before_in, before_out) = (self.inflate.total_in(), self.inflate.total_out());
            let result =
                self.inflate
                    .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - before_in) as usize;
            let produced = self.inflate.total_out() - before_out;
            pos = pos.saturating_add(consumed).min(input.len());
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(SpdyError::Compression(
                        "the header stream ended (a SPDY header stream never ends)".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(dictionary())
                        .map_err(zlib_error)?;
                    continue;
                }
                Err(e) => return Err(zlib_error(e)),
            }
            if pos >= input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if consumed == 0 && produced == 0 {
                return Err(SpdyError::Compression(
                    "the header block does not decompress".into(),
                ));
            }
        }
    }
}

fn nonzero(stream_id: u32, kind: &'static str) -> Result<(), SpdyError> {
    if stream_id == 0 {
        Err(SpdyError::ZeroStreamId(kind))
    } else {
        Ok(())
    }
}

/// Checks a control frame's length against its type, from the header alone.
fn check_control_length(kind: u16, len: usize) -> Result<(), SpdyError> {
    let (name, ok) = match kind {
        frame_type::SYN_STREAM => ("SYN_STREAM", len >= 10),
        frame_type::SYN_REPLY => ("SYN_REPLY", len >= 4),
        frame_type::HEADERS => ("HEADERS", len >= 4),
        frame_type::RST_STREAM => ("RST_STREAM", len == 8),
        frame_type::SETTINGS => ("SETTINGS", len >= 4 && (len - 4) % 8 == 0),
        frame_type::PING => ("PING", len == 4),
        frame_type::GOAWAY => ("GOAWAY", len == 8),
        frame_type::WINDOW_UPDATE => ("WINDOW_UPDATE", len == 8),
        _ => ("unknown", true),
    };
    if ok {
        Ok(())
    } else {
        Err(SpdyError::InvalidLength { kind: name, len })
    }
}

/// Parses a decompressed header block: a count, then length-prefixed names and values. Counts
/// and lengths are checked against the bytes present before anything is allocated for them.
pub fn parse_header_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut p = raw;
    let take_u32 = |p: &mut &[u8]| -> Result<usize, SpdyError> {
        if p.len() < 4 {
            return Err(SpdyError::MalformedHeaderBlock("truncated"));
        }
        let v = u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize;
        *p = &p[4..];
        Ok(v)
    };
    let take_str = |p: &mut &[u8], n: usize| -> Result<String, SpdyError> {
        if p.len() < n {
            return Err(SpdyError::MalformedHeaderBlock(
                "a length exceeds the block",
            ));
        }
        let (s, rest) = p.split_at(n);
        *p = rest;
        String::from_utf8(s.to_vec())
            .map_err(|_| SpdyError::MalformedHeaderBlock("a name or value is not UTF-8"))
    };
    let n = take_u32(&mut p)?;
    // Every pair takes at least 8 bytes (two lengths).
    if n > p.len() / 8 {
        return Err(SpdyError::MalformedHeaderBlock(
            "the count exceeds what the block can hold",
        ));
    }
    let mut fields: Vec<(String, String)> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = take_u32(&mut p)?;
        let name = take_str(&mut p, len)?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SpdyError::InvalidHeaderName(name));
        }
        if fields.iter().any(|(n, _)| *n == name) {
            return Err(SpdyError::DuplicateHeader(name));
        }
        let len = take_u32(&mut p)?;
        let value = take_str(&mut p, len)?;
        fields.push((name, value));
    }
    if !p.is_empty() {
        return Err(SpdyError::MalformedHeaderBlock(
            "bytes after the last header",
        ));
    }
    Ok(Headers { fields })
}

/// Serializes a header block (before compression).
pub fn write_header_block(headers: &Headers, out: &mut Vec<u8>) -> Result<(), SpdyError> {
    let len32 = |n: usize| u32::try_from(n).map_err(|_| SpdyError::Unencodable("header too long"));
    out.extend_from_slice(&len32(headers.len())?.to_be_bytes());
    for (name, value) in headers.iter() {
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(SpdyError::InvalidHeaderName(name.to_owned()));
        }
        out.extend_from_slice(&len32(name.len())?.to_be_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&len32(value.len())?.to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    Ok(())
}

/// Writes frames of one direction of a session.
pub struct Encoder {
    deflate: Compress,
    primed: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("total_out", &self.deflate.total_out())
            .finish()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Encoder::new()
    }
}

impl Encoder {
    /// A new direction (a fresh zlib stream).
    pub fn new() -> Encoder {
        Encoder {
            deflate: Compress::new(Compression::default(), true),
            primed: false,
        }
    }

    /// Appends `frame` to `out`. On error nothing is appended (but header compression may have
    /// advanced, so the session should end).
    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) -> Result<(), SpdyError> {
        match frame {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                check_stream_id(*stream_id)?;
                let len = frame_len(data.len())?;
                out.reserve(HEADER_LEN + data.len());
                out.put_u32(*stream_id);
                put_flags_len(out, u8::from(*fin) * flags::FIN, len);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                slot,
                fin,
                unidirectional,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                if *associated_to > MAX_STREAM_ID {
                    return Err(SpdyError::Unencodable("associated stream id out of range"));
                }
                if *priority > 7 {
                    return Err(SpdyError::Unencodable("priority out of range"));
                }
                let block = self.compress(headers)?;
                let f = (u8::from(*fin) * flags::FIN)
                    | (u8::from(*unidirectional) * flags::UNIDIRECTIONAL);
                control_header(out, frame_type::SYN_STREAM, f, 10 + block.len())?;
                out.put_u32(*stream_id);
                out.put_u32(*associated_to);
                out.put_u8(priority << 5);
                out.put_u8(*slot);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                check_stream_id(*stream_id)?;
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    frame_type::SYN_REPLY
                } else {
                    frame_type::HEADERS
                };
                let block = self.compress(headers)?;
                control_header(out, kind, u8::from(*fin) * flags::FIN, 4 + block.len())?;
                out.put_u32(*stream_id);
                out.put_slice(&block);
            }
            Frame::RstStream { stream_id, status } => {
                check_stream_id(*stream_id)?;
                control_header(out, frame_type::RST_STREAM, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*status);
            }
            Frame::Settings { clear, entries } => {
                let len = entries
                    .len()
                    .checked_mul(8)
                    .and_then(|n| n.checked_add(4))
                    .ok_or(SpdyError::Unencodable("too many settings"))?;
                if entries.iter().any(|e| e.id > 0x00FF_FFFF) {
                    return Err(SpdyError::Unencodable("setting id out of range"));
                }
                control_header(
                    out,
                    frame_type::SETTINGS,
                    u8::from(*clear) * flags::CLEAR_SETTINGS,
                    len,
                )?;
                out.put_u32(entries.len() as u32);
                for e in entries {
                    out.put_u32((u32::from(e.flags) << 24) | e.id);
                    out.put_u32(e.value);
                }
            }
            Frame::Ping { id } => {
                control_header(out, frame_type::PING, 0, 4)?;
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                if *last_good_stream_id > MAX_STREAM_ID {
                    return Err(SpdyError::Unencodable("stream id out of range"));
                }
                control_header(out, frame_type::GOAWAY, 0, 8)?;
                out.put_u32(*last_good_stream_id);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream_id, delta } => {
                if *stream_id > MAX_STREAM_ID {
                    return Err(SpdyError::Unencodable("stream id out of range"));
                }
                if *delta == 0 || *delta > MAX_STREAM_ID {
                    return Err(SpdyError::InvalidWindowDelta(*delta));
                }
                control_header(out, frame_type::WINDOW_UPDATE, 0, 8)?;
                out.put_u32(*stream_id);
                out.put_u32(*delta);
            }
            Frame::Unknown {
                kind,
                flags,
                payload,
            } => {
                control_header(out, *kind, *flags, payload.len())?;
                out.put_slice(payload);
            }
        }
        Ok(())
    }

    /// Serializes and compresses a header block, continuing this direction's zlib stream with
    /// a sync flush (so the peer can decompress it without what follows).
    fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = Vec::with_capacity(64);
        write_header_block(headers, &mut raw)?;
        if !self.primed {
            self.deflate
                .set_dictionary(dictionary())
                .map_err(zlib_error)?;
            self.primed = true;
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut pos = 0usize;
        loop {
            if out.capacity() - out.len() < 16 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = self.deflate.total_in();
            let before_out = self.deflate.total_out();
            let status = self
                .deflate
                .compress_vec(&raw[pos..], &mut out, FlushCompress::Sync)
                .map_err(zlib_error)?;
            pos += (self.deflate.total_in() - before_in) as usize;
            let produced = self.deflate.total_out() - before_out;
            // The flush is complete once zlib stops short of the end of the output buffer.
            if pos >= raw.len() && out.len() < out.capacity() {
                break;
            }
            if status == Status::BufError && produced == 0 {
                break;
            }
        }
        Ok(out)
    }
}

fn check_stream_id(id: u32) -> Result<(), SpdyError> {
    if id == 0 || id > MAX_STREAM_ID {
        Err(SpdyError::Unencodable("stream id out of range"))
    } else {
        Ok(())
    }
}

fn frame_len(len: usize) -> Result<u32, SpdyError> {
    if len > MAX_FRAME_LEN {
        Err(SpdyError::Unencodable("frame longer than 2^24-1 bytes"))
    } else {
        Ok(len as u32)
    }
}

fn put_flags_len(out: &mut BytesMut, flags: u8, len: u32) {
    out.put_u32((u32::from(flags) << 24) | len);
}

fn control_header(out: &mut BytesMut, kind: u16, flags: u8, len: usize) -> Result<(), SpdyError> {
    let len = frame_len(len)?;
    out.reserve(HEADER_LEN + len as usize);
    out.put_u32(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind));
    put_flags_len(out, flags, len);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut buf).unwrap();
        }
        let mut dec = Decoder::new();
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn dictionary_is_spdy3s() {
        let d = dictionary();
        assert_eq!(d.len(), 1423);
        // The Adler-32 a zlib stream primed with the dictionary names in its header (DICTID);
        // Go's zlib reader refuses a stream whose DICTID differs from its dictionary's.
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(c.set_dictionary(d).unwrap(), 0xe3c6_a7c2);
    }

    #[test]
    fn frames_round_trip_with_one_compression_context() {
        let h = Headers::new()
            .with("streamtype", "error")
            .with("port", "8080")
            .with("requestid", "0");
        let frames = vec![
            Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: h.clone(),
            },
            Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new(),
            },
            Frame::SynStream {
                stream_id: 3,
                associated_to: 0,
                priority: 7,
                slot: 0,
                fin: true,
                unidirectional: true,
                headers: h.clone().with("streamtype", "data"),
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"),
            },
            Frame::Data {
                stream_id: 3,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Ping { id: 1 },
            Frame::Settings {
                clear: true,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                }],
            },
            Frame::WindowUpdate {
                stream_id: 3,
                delta: 1024,
            },
            Frame::Headers {
                stream_id: 3,
                fin: true,
                headers: Headers::new().with("x-a", "b"),
            },
            Frame::RstStream {
                stream_id: 3,
                status: rst::CANCEL,
            },
            Frame::GoAway {
                last_good_stream_id: 3,
                status: goaway::OK,
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn multiple_values_are_nul_separated() {
        let h = Headers::new()
            .with("X-Stream-Protocol-Version", "v4.channel.k8s.io")
            .with("x-stream-protocol-version", "v3.channel.k8s.io");
        assert_eq!(h.len(), 1);
        assert_eq!(
            h.values("x-stream-protocol-version").collect::<Vec<_>>(),
            ["v4.channel.k8s.io", "v3.channel.k8s.io"]
        );
        let mut raw = Vec::new();
        write_header_block(&h, &mut raw).unwrap();
        assert_eq!(parse_header_block(&raw).unwrap(), h);
    }

    #[test]
    fn data_frame_layout_is_pinned() {
        let mut buf = BytesMut::new();
        Encoder::new()
            .encode(
                &Frame::Data {
                    stream_id: 5,
                    fin: true,
                    data: Bytes::from_static(b"hi"),
                },
                &mut buf,
            )
            .unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 5, 1, 0, 0, 2, b'h', b'i']);
        let mut buf = BytesMut::new();
        Encoder::new()
            .encode(&Frame::Ping { id: 7 }, &mut buf)
            .unwrap();
        assert_eq!(&buf[..], &[0x80, 3, 0, 6, 0, 0, 0, 4, 0, 0, 0, 7]);
    }

    #[test]
    fn partial_input_waits_and_consumes_nothing() {
        let mut enc = Encoder::new();
        let mut whole = BytesMut::new();
        enc.encode(
            &Frame::SynStream {
                stream_id: 1,
                associated_to: 0,
                priority: 0,
                slot: 0,
                fin: false,
                unidirectional: false,
                headers: Headers::new().with("streamtype", "stdout"),
            },
            &mut whole,
        )
        .unwrap();
        let mut dec = Decoder::new();
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(dec.decode(&mut part).unwrap(), None);
            assert_eq!(part.len(), cut);
        }
        let mut all = whole.clone();
        assert!(matches!(
            dec.decode(&mut all).unwrap(),
            Some(Frame::SynStream { stream_id: 1, .. })
        ));
    }

    #[test]
    fn oversized_frames_fail_from_the_header_alone() {
        let mut dec = Decoder::with_limits(1024, 1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 1, 0, 0x10, 0, 0][..]);
        assert_eq!(
            dec.decode(&mut buf),
            Err(SpdyError::FrameTooLarge {
                len: 0x100000,
                max: 1024
            })
        );
    }

    #[test]
    fn malformed_frames_are_typed_errors() {
        let cases: Vec<(Vec<u8>, SpdyError)> = vec![
            (
                vec![0x80, 2, 0, 1, 0, 0, 0, 10, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
                SpdyError::UnsupportedVersion(2),
            ),
            (
                vec![0x80, 3, 0, 6, 0, 0, 0, 5, 0, 0, 0, 1, 0],
                SpdyError::InvalidLength {
                    kind: "PING",
                    len: 5,
                },
            ),
            (
                vec![0x80, 3, 0, 1, 0, 0, 0, 4, 0, 0, 0, 1],
                SpdyError::InvalidLength {
                    kind: "SYN_STREAM",
                    len: 4,
                },
            ),
            (
                vec![0, 0, 0, 0, 0, 0, 0, 1, 9],
                SpdyError::ZeroStreamId("DATA"),
            ),
            (
                vec![0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1],
                SpdyError::ZeroStreamId("RST_STREAM"),
            ),
            (
                vec![0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0],
                SpdyError::InvalidWindowDelta(0),
            ),
            (
                vec![
                    0x80, 3, 0, 4, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 7, 0, 0, 0, 1,
                ],
                SpdyError::InvalidLength {
                    kind: "SETTINGS",
                    len: 12,
                },
            ),
        ];
        for (bytes, want) in cases {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(Decoder::new().decode(&mut buf), Err(want), "{bytes:?}");
        }
    }

    #[test]
    fn garbage_header_blocks_are_errors() {
        // A SYN_REPLY whose header block is not a zlib stream.
        let mut buf = BytesMut::from(&[0x80, 3, 0, 2, 0, 0, 0, 8, 0, 0, 0, 1, 1, 2, 3, 4][..]);
        assert!(matches!(
            Decoder::new().decode(&mut buf),
            Err(SpdyError::Compression(_))
        ));
    }

    #[test]
    fn header_block_checks() {
        let block = |parts: &[&[u8]]| parts.concat();
        // A count no block of this size can hold: refused before allocating.
        assert!(matches!(
            parse_header_block(&block(&[&[0xff, 0xff, 0xff, 0xff], &[0; 8]])),
            Err(SpdyError::MalformedHeaderBlock(_))
        ));
        // A name length past the end.
        assert!(matches!(
            parse_header_block(&block(&[&[0, 0, 0, 1], &[0, 0, 0, 200], &[0; 8]])),
            Err(SpdyError::MalformedHeaderBlock(_))
        ));
        let pair = |n: &[u8], v: &[u8]| {
            block(&[
                &(n.len() as u32).to_be_bytes(),
                n,
                &(v.len() as u32).to_be_bytes(),
                v,
            ])
        };
        assert!(matches!(
            parse_header_block(&block(&[&[0, 0, 0, 1], &pair(b"Port", b"1")])),
            Err(SpdyError::InvalidHeaderName(_))
        ));
        assert!(matches!(
            parse_header_block(&block(&[&[0, 0, 0, 1], &pair(b"", b"1")])),
            Err(SpdyError::InvalidHeaderName(_))
        ));
        assert!(matches!(
            parse_header_block(&block(&[
                &[0, 0, 0, 2],
                &pair(b"port", b"1"),
                &pair(b"port", b"2")
            ])),
            Err(SpdyError::DuplicateHeader(_))
        ));
        assert!(matches!(
            parse_header_block(&block(&[&[0, 0, 0, 1], &pair(b"port", b"1"), &[0]])),
            Err(SpdyError::MalformedHeaderBlock(_))
        ));
        let ok = parse_header_block(&block(&[&[0, 0, 0, 1], &pair(b"port", b"80")])).unwrap();
        assert_eq!(ok.get("port"), Some("80"));
    }

    #[test]
    fn header_blocks_beyond_the_limit_are_refused() {
        let big = "x".repeat(4096);
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        enc.encode(
            &Frame::SynReply {
                stream_id: 1,
                fin: false,
                headers: Headers::new().with("a", &big),
            },
            &mut buf,
        )
        .unwrap();
        let mut dec = Decoder::with_limits(MAX_FRAME_LEN, 1024);
        assert_eq!(
            dec.decode(&mut buf),
            Err(SpdyError::HeaderBlockTooLarge(1024))
        );
    }

    fn arb_headers() -> impl Strategy<Value = Headers> {
        prop::collection::vec(("[a-z][a-z0-9-]{0,12}", "[ -~]{0,40}"), 0..6).prop_map(|kv| {
            let mut h = Headers::new();
            for (k, v) in kv {
                if h.get(&k).is_none() {
                    h.add(&k, &v);
                }
            }
            h
        })
    }

    fn arb_frame() -> impl Strategy<Value = Frame> {
        let id = 1..=MAX_STREAM_ID;
        prop_oneof![
            (
                id.clone(),
                0..=MAX_STREAM_ID,
                0u8..8,
                any::<u8>(),
                any::<bool>(),
                any::<bool>(),
                arb_headers()
            )
                .prop_map(
                    |(stream_id, associated_to, priority, slot, fin, uni, headers)| {
                        Frame::SynStream {
                            stream_id,
                            associated_to,
                            priority,
                            slot,
                            fin,
                            unidirectional: uni,
                            headers,
                        }
                    }
                ),
            (id.clone(), any::<bool>(), arb_headers()).prop_map(|(stream_id, fin, headers)| {
                Frame::SynReply {
                    stream_id,
                    fin,
                    headers,
                }
            }),
            (id.clone(), any::<bool>(), arb_headers()).prop_map(|(stream_id, fin, headers)| {
                Frame::Headers {
                    stream_id,
                    fin,
                    headers,
                }
            }),
            (id.clone(), any::<u32>())
                .prop_map(|(stream_id, status)| Frame::RstStream { stream_id, status }),
            (
                any::<bool>(),
                prop::collection::vec((any::<u8>(), 0u32..0x0100_0000, any::<u32>()), 0..4)
            )
                .prop_map(|(clear, e)| Frame::Settings {
                    clear,
                    entries: e
                        .into_iter()
                        .map(|(flags, id, value)| Setting { flags, id, value })
                        .collect(),
                }),
            any::<u32>().prop_map(|id| Frame::Ping { id }),
            (0..=MAX_STREAM_ID, any::<u32>()).prop_map(|(l, status)| Frame::GoAway {
                last_good_stream_id: l,
                status
            }),
            (0..=MAX_STREAM_ID, 1..=MAX_STREAM_ID)
                .prop_map(|(stream_id, delta)| Frame::WindowUpdate { stream_id, delta }),
            (
                id,
                any::<bool>(),
                prop::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(stream_id, fin, d)| Frame::Data {
                    stream_id,
                    fin,
                    data: Bytes::from(d),
                }),
        ]
    }

    proptest! {
        #[test]
        fn any_frame_sequence_round_trips(frames in prop::collection::vec(arb_frame(), 1..20)) {
            prop_assert_eq!(roundtrip(&frames), frames);
        }

        #[test]
        fn round_trips_whatever_the_read_boundaries(
            frames in prop::collection::vec(arb_frame(), 1..10),
            cuts in prop::collection::vec(1usize..64, 1..50),
        ) {
            let mut enc = Encoder::new();
            let mut wire = BytesMut::new();
            for f in &frames {
                enc.encode(f, &mut wire).unwrap();
            }
            let mut dec = Decoder::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            let mut cuts = cuts.into_iter().cycle();
            while !wire.is_empty() {
                let n = cuts.next().unwrap_or(1).min(wire.len());
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut dec = Decoder::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }

        #[test]
        fn corrupted_streams_never_panic(
            frames in prop::collection::vec(arb_frame(), 1..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let mut enc = Encoder::new();
            let mut wire = BytesMut::new();
            for f in &frames {
                enc.encode(f, &mut wire).unwrap();
            }
            let mut bytes = wire.to_vec();
            for (i, x) in flips {
                let i = i.index(bytes.len());
                bytes[i] ^= x;
            }
            let mut dec = Decoder::new();
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
        }
    }
}
