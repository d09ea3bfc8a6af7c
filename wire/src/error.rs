//! Error codes carried on the wire and the typed errors of decoding.

use std::fmt;

use crate::frame::FrameType;

/// A 32-bit error code carried by RESET and GOAWAY frames.
///
/// Unknown codes are preserved as they are (a newer peer may send codes this version does not
/// know); treat any unknown code like [`ErrorCode::INTERNAL`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// Graceful close; not an error.
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    /// The peer broke a rule of this protocol.
    pub const PROTOCOL: ErrorCode = ErrorCode(0x1);
    /// The sender hit an unexpected internal failure.
    pub const INTERNAL: ErrorCode = ErrorCode(0x2);
    /// The peer sent more than its flow-control window allowed, or overflowed a window.
    pub const FLOW_CONTROL: ErrorCode = ErrorCode(0x3);
    /// A frame arrived on a stream that was already closed.
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x4);
    /// A frame was larger than the negotiated maximum or had an invalid size.
    pub const FRAME_SIZE: ErrorCode = ErrorCode(0x5);
    /// The stream was refused before any processing (safe to retry elsewhere).
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x6);
    /// The stream is no longer needed (for example the user went away).
    pub const CANCEL: ErrorCode = ErrorCode(0x7);
    /// No protocol version is supported by both sides.
    pub const VERSION_MISMATCH: ErrorCode = ErrorCode(0x8);
    /// The peer's identity does not allow what it asked for (for example a certificate that does
    /// not match the cluster id claimed in HELLO).
    pub const UNAUTHORIZED: ErrorCode = ErrorCode(0x9);
    /// The peer opened more streams than allowed or is otherwise generating excessive load.
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xa);
    /// The agent could not reach its edge API server for this stream.
    pub const UPSTREAM: ErrorCode = ErrorCode(0xb);
    /// The HELLO handshake did not complete in time or was malformed.
    pub const HANDSHAKE: ErrorCode = ErrorCode(0xc);

    /// The symbolic name of a known code, `None` for unknown ones.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0x0 => "NO_ERROR",
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "STREAM_CLOSED",
            0x5 => "FRAME_SIZE_ERROR",
            0x6 => "REFUSED_STREAM",
            0x7 => "CANCEL",
            0x8 => "VERSION_MISMATCH",
            0x9 => "UNAUTHORIZED",
            0xa => "ENHANCE_YOUR_CALM",
            0xb => "UPSTREAM_ERROR",
            0xc => "HANDSHAKE_ERROR",
            _ => return None,
        })
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "UNKNOWN_ERROR(0x{:x})", self.0),
        }
    }
}

/// Why bytes from the peer could not be decoded into a frame.
///
/// Every decode error is a connection error: the byte stream can no longer be trusted, so the
/// receiver sends GOAWAY with [`DecodeError::code`] (where it still can) and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The length field exceeds the receiver's negotiated maximum; detected from the header
    /// alone, before any memory is reserved for the body.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The length announced by the header.
        len: u32,
        /// The receiver's maximum.
        max: u32,
    },
    /// The type byte names no frame type of this protocol version.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    /// Flag bits were set that the frame type does not define.
    #[error("invalid flags 0x{flags:02x} on a {ty:?} frame")]
    BadFlags {
        /// The frame type.
        ty: FrameType,
        /// The flags byte as received.
        flags: u8,
    },
    /// The reserved high bit of the stream id was set.
    #[error("reserved bit set in stream id 0x{0:08x}")]
    ReservedBit(u32),
    /// A connection-level frame carried a stream id, or a stream frame carried stream id 0.
    #[error("{ty:?} frame on stream {stream} ({rule})")]
    BadStreamId {
        /// The frame type.
        ty: FrameType,
        /// The stream id as received.
        stream: u32,
        /// Which rule was broken.
        rule: &'static str,
    },
    /// The body ended before a field it announced.
    #[error("{ty:?} frame truncated while reading {field}")]
    Truncated {
        /// The frame type.
        ty: FrameType,
        /// The field being read.
        field: &'static str,
    },
    /// A buffer handed to [`crate::codec::decode_exact`] ends before the frame it starts.
    #[error("incomplete frame: {have} of {need} bytes")]
    Incomplete {
        /// Bytes present.
        have: usize,
        /// Bytes the header announces (or the header's own length).
        need: usize,
    },
    /// The body carried bytes after its last field.
    #[error("{ty:?} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// The frame type.
        ty: FrameType,
        /// How many bytes were left over.
        extra: usize,
    },
    /// A field held a value outside its domain (a bad HTTP token, invalid UTF-8, a zero window
    /// increment, an unknown event type, …).
    #[error("{ty:?} frame has an invalid {field}: {reason}")]
    InvalidField {
        /// The frame type.
        ty: FrameType,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl DecodeError {
    /// The error code to put in the GOAWAY frame that answers this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_SIZE,
            _ => ErrorCode::PROTOCOL,
        }
    }
}
