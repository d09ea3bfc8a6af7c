//! # kubehub-wire: the tunnel protocol between the edge agent and the hub
//!
//! One TLS connection per agent carries many concurrent streams: forwarded Kubernetes API
//! requests (each a stream with an HTTP request head, a response head and bodies both ways) and
//! cache-sync streams (a snapshot of one resource type, then its watch events). This crate is
//! the protocol and nothing else. It is *sans-IO*: bytes in, frames out, and state machines that
//! say what may be sent and received next. It depends on no async runtime (an architecture
//! invariant, checked by `testkit/tests/layout.rs`), so the monoio hub and the tokio
//! agent share it unchanged, and it can be fuzzed and property-tested in isolation.
//!
//! * [`frame`]: the frames as plain data.
//! * [`codec`]: encoding (header-only, payloads handed through for vectored writes) and
//!   decoding (length checked before allocation, payloads as zero-copy [`bytes::Bytes`] slices).
//! * [`session`]: per-connection state: stream ids, per-stream state machines and flow control.
//! * [`handshake`]: HELLO / HELLO_ACK negotiation.
//! * [`conn`]: the connection engine both ends drive after the handshake: one [`Connection`]
//!   per tunnel owns the session, the decoder, the stream table and send buffers, the control
//!   frames still to send (never dropped, bounded by coalescing), keepalive and drain; the
//!   driver feeds it bytes and the time and pulls bytes, events and its next deadline.
//!
//! The byte layout and the rules are written down in `wire/PROTOCOL.md`, next to this code.

#![warn(missing_docs)]

pub mod codec;
pub mod conn;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod session;

pub use codec::{decode_exact, encode, Decoder, EncodeBuf, FrameHeader, MAX_WINDOW};
pub use conn::{CloseReason, ConnConfig, Connection, Event, OpenError, ResetOrigin, StreamGone};
pub use error::{DecodeError, ErrorCode};
pub use frame::*;
pub use session::{Role, Session, SessionError, StreamKind, StreamState};

/// The protocol version this crate speaks (and the only one so far).
pub const PROTOCOL_VERSION: u16 = 1;

/// Every receiver accepts frames up to this size before the handshake has negotiated a
/// maximum, and no side may announce a smaller maximum.
pub const HANDSHAKE_MAX_FRAME_SIZE: u32 = 16 * 1024;

/// The maximum frame size announced when nothing else is configured: room for the largest
/// object etcd stores by default (1.5 MiB) in one WATCH_EVENT.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 2 * 1024 * 1024;

/// No side may announce a maximum frame size above this (16 MiB).
pub const MAX_FRAME_SIZE_LIMIT: u32 = 16 * 1024 * 1024;

/// Checks settings a peer announced (or we are about to announce).
///
/// Rules: `max_frame_size` within
/// [`HANDSHAKE_MAX_FRAME_SIZE`]..=[`MAX_FRAME_SIZE_LIMIT`]; windows at most [`MAX_WINDOW`];
/// the sync and connection windows at least `max_frame_size` (otherwise a sender could hold an
/// object it is never allowed to send); at least one concurrent stream.
pub fn validate_settings(s: &Settings) -> Result<(), &'static str> {
    if s.max_frame_size < HANDSHAKE_MAX_FRAME_SIZE || s.max_frame_size > MAX_FRAME_SIZE_LIMIT {
        return Err("max_frame_size outside 16 KiB..=16 MiB");
    }
    if s.initial_stream_window > MAX_WINDOW
        || s.initial_sync_window > MAX_WINDOW
        || s.initial_connection_window > MAX_WINDOW
    {
        return Err("window above 2^31-1");
    }
    if s.initial_sync_window < s.max_frame_size || s.initial_connection_window < s.max_frame_size {
        return Err("sync and connection windows must be at least max_frame_size");
    }
    if s.max_concurrent_streams == 0 {
        return Err("max_concurrent_streams is 0");
    }
    Ok(())
}
