//! Encoding frames to bytes and decoding bytes to frames.
//!
//! * [`Decoder::decode`] takes frames off the front of a read buffer. It validates the 10-byte
//!   header (length against the negotiated maximum, type, flags, stream id rules) *before* it
//!   reserves room for or waits on the body, then splits the frame off the buffer without copying:
//!   payloads, object bytes and header fields of the decoded frame are [`Bytes`] slices of it.
//! * [`EncodeBuf`] encodes frames as a queue of chunks for vectored writes: header bytes and small
//!   fields are written into a scratch buffer, payload [`Bytes`] are queued as they are.
//!   [`encode`] is the simple form that copies everything into one contiguous buffer.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{DecodeError, ErrorCode};
use crate::frame::*;

/// Payloads shorter than this are copied next to their header rather than queued as their own
/// chunk: one more iovec costs more than copying a few dozen bytes.
const COPY_THRESHOLD: usize = 128;

/// Scratch space [`EncodeBuf`] reserves at a time for header bytes and small fields.
const SCRATCH_CHUNK: usize = 8 * 1024;
const SCRATCH_LOW_WATER: usize = 512;

/// Largest window increment and window size: 2^31 - 1.
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

// ---------------------------------------------------------------------------------------------
// Encoding

/// Where an encoder writes: small fields go to `put_slice`, payloads to `put_payload`.
trait Sink {
    fn put_slice(&mut self, b: &[u8]);
    fn put_payload(&mut self, b: &Bytes);
}

impl Sink for BytesMut {
    fn put_slice(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
    fn put_payload(&mut self, b: &Bytes) {
        self.extend_from_slice(b);
    }
}

/// Frames encoded as a queue of chunks, ready for a vectored write.
///
/// Encoding copies only header bytes and small fields (into a reusable scratch buffer); a payload
/// of [`COPY_THRESHOLD`] bytes or more is queued as the very `Bytes` the frame holds. Use
/// [`Buf::chunks_vectored`] to fill `IoSlice`s and [`Buf::advance`] after a (possibly partial)
/// write. The queue is bounded by the caller: it holds what was pushed and not yet written.
#[derive(Debug, Default)]
pub struct EncodeBuf {
    scratch: BytesMut,
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl EncodeBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `frame` at the end of the queue.
    pub fn push(&mut self, frame: &Frame) {
        // Header bytes of many frames share one scratch allocation; once every chunk cut from
        // it has been written and dropped, `reserve` reclaims it instead of allocating.
        if self.scratch.capacity() - self.scratch.len() < SCRATCH_LOW_WATER {
            self.scratch.reserve(SCRATCH_CHUNK);
        }
        encode_into(frame, self);
        self.flush_scratch();
    }

    /// Bytes queued and not yet written.
    pub fn len(&self) -> usize {
        self.remaining
    }

    /// Nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }

    /// Gives back the scratch allocation once everything queued has been written, so an
    /// idle connection holds no encode buffer. The next [`EncodeBuf::push`] allocates again.
    pub fn release_memory(&mut self) {
        if self.remaining == 0 {
            self.chunks = VecDeque::new();
            self.scratch = BytesMut::new();
        }
    }

    /// Number of chunks queued (what a full vectored write would need in iovecs).
    pub fn chunk_count(&self) -> usize {
        self.chunks.len()
    }

    /// The queued chunks, in order, as slices borrowed from the buffer (what
    /// [`Buf::chunks_vectored`] gives, without an `IoSlice` array to fill): for writers that
    /// take `&[&[u8]]`. [`Buf::advance`] by what was written.
    pub fn slices(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.chunks.iter().map(|c| &c[..])
    }

    fn flush_scratch(&mut self) {
        if !self.scratch.is_empty() {
            let head = self.scratch.split().freeze();
            self.remaining += head.len();
            self.chunks.push_back(head);
        }
    }
}

impl Sink for EncodeBuf {
    fn put_slice(&mut self, b: &[u8]) {
        self.scratch.extend_from_slice(b);
    }
    fn put_payload(&mut self, b: &Bytes) {
        if b.len() < COPY_THRESHOLD {
            self.scratch.extend_from_slice(b);
        } else {
            self.flush_scratch();
            self.remaining += b.len();
            self.chunks.push_back(b.clone());
        }
    }
}

impl Buf for EncodeBuf {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map(|c| &c[..]).unwrap_or(&[])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of EncodeBuf");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in dst.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }
}

/// Encodes `frame` into one contiguous buffer (payloads are copied).
pub fn encode(frame: &Frame, dst: &mut BytesMut) {
    dst.reserve(HEADER_LEN + body_len(frame));
    encode_into(frame, dst);
}

fn put_u16<S: Sink>(s: &mut S, v: u16) {
    s.put_slice(&v.to_be_bytes());
}
fn put_u32<S: Sink>(s: &mut S, v: u32) {
    s.put_slice(&v.to_be_bytes());
}
fn put_u64<S: Sink>(s: &mut S, v: u64) {
    s.put_slice(&v.to_be_bytes());
}

/// A string or byte field with a 16-bit length. Longer values are a bug in the caller (every
/// producer validates lengths first); they are cut at 65,535 bytes rather than corrupting the
/// frame.
fn put_str16<S: Sink>(s: &mut S, b: &[u8]) {
    let n = b.len().min(u16::MAX as usize);
    debug_assert_eq!(n, b.len(), "16-bit length field overflow");
    put_u16(s, n as u16);
    s.put_slice(&b[..n]);
}

/// A list of (name, value) pairs with a 16-bit count: header fields, cluster labels.
fn put_pairs<S: Sink, N: AsRef<[u8]>, V: AsRef<[u8]>>(s: &mut S, pairs: &[(N, V)]) {
    let n = pairs.len().min(u16::MAX as usize);
    debug_assert_eq!(n, pairs.len(), "too many pairs in a 16-bit list");
    put_u16(s, n as u16);
    for (name, value) in &pairs[..n] {
        put_str16(s, name.as_ref());
        put_str16(s, value.as_ref());
    }
}

fn put_settings<S: Sink>(s: &mut S, st: &Settings) {
    put_u32(s, st.max_frame_size);
    put_u32(s, st.max_concurrent_streams);
    put_u32(s, st.initial_stream_window);
    put_u32(s, st.initial_sync_window);
    put_u32(s, st.initial_connection_window);
}

const SETTINGS_LEN: usize = 20;

fn str16_len(b: &[u8]) -> usize {
    2 + b.len().min(u16::MAX as usize)
}

fn pairs_len<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> usize {
    2 + pairs
        .iter()
        .take(u16::MAX as usize)
        .map(|(n, v)| str16_len(n.as_ref()) + str16_len(v.as_ref()))
        .sum::<usize>()
}

/// Length of the frame's body (everything after the 10-byte header).
pub fn body_len(frame: &Frame) -> usize {
    match frame {
        Frame::Hello(h) => {
            4 + 8
                + SETTINGS_LEN
                + str16_len(h.agent_id.as_bytes())
                + str16_len(h.cluster_id.as_bytes())
                + str16_len(h.software.as_bytes())
                + pairs_len(&h.labels)
        }
        Frame::HelloAck(h) => 2 + 8 + SETTINGS_LEN + 4 + str16_len(h.hub_id.as_bytes()),
        Frame::Request(r) => str16_len(&r.method) + str16_len(&r.path) + pairs_len(&r.fields),
        Frame::Response(r) => 2 + pairs_len(&r.fields),
        Frame::Data(d) => d.payload.len(),
        Frame::End(e) => pairs_len(&e.trailers),
        Frame::Reset(_) => 4,
        Frame::WindowUpdate(_) => 4,
        Frame::Ping(_) => 8,
        Frame::GoAway(g) => 8 + g.message.len(),
        Frame::Discovery(d) => 4 + d.resources.iter().map(resource_type_len).sum::<usize>(),
        Frame::SnapshotBegin(b) => resource_key_len(&b.resource),
        Frame::SnapshotItems(s) => 4 + s.items.iter().map(|i| 4 + i.len()).sum::<usize>(),
        Frame::SnapshotEnd(e) => str16_len(e.resource_version.as_bytes()),
        Frame::WatchEvent(w) => 1 + str16_len(w.resource_version.as_bytes()) + w.object.len(),
        Frame::SyncRequest(r) => 4 + r.resources.iter().map(resource_key_len).sum::<usize>(),
        Frame::ProgressRequest(_) => 4,
        Frame::Progress(p) => 4 + str16_len(p.resource_version.as_bytes()),
    }
}

fn put_resource_key<S: Sink>(s: &mut S, k: &ResourceKey) {
    put_str16(s, k.group.as_bytes());
    put_str16(s, k.version.as_bytes());
    put_str16(s, k.resource.as_bytes());
}

fn resource_key_len(k: &ResourceKey) -> usize {
    str16_len(k.group.as_bytes())
        + str16_len(k.version.as_bytes())
        + str16_len(k.resource.as_bytes())
}

fn str_list_len(list: &[String]) -> usize {
    1 + list
        .iter()
        .take(u8::MAX as usize)
        .map(|s| str16_len(s.as_bytes()))
        .sum::<usize>()
}

fn resource_type_len(r: &ResourceType) -> usize {
    1 + 2
        + [&r.group, &r.version, &r.resource, &r.kind, &r.singular]
            .iter()
            .map(|s| str16_len(s.as_bytes()))
            .sum::<usize>()
        + str_list_len(&r.short_names)
        + str_list_len(&r.categories)
}

fn put_str_list<S: Sink>(s: &mut S, list: &[String]) {
    let n = list.len().min(u8::MAX as usize);
    debug_assert_eq!(n, list.len(), "too many names in a list");
    s.put_slice(&[n as u8]);
    for item in &list[..n] {
        put_str16(s, item.as_bytes());
    }
}

const RESOURCE_NAMESPACED: u8 = 0x1;
const RESOURCE_CACHED: u8 = 0x2;

fn encode_into<S: Sink>(frame: &Frame, s: &mut S) {
    let len = body_len(frame);
    debug_assert!(len <= u32::MAX as usize);
    put_u32(s, len as u32);
    s.put_slice(&[frame.frame_type() as u8, frame.flags()]);
    put_u32(s, frame.stream_id());
    match frame {
        Frame::Hello(h) => {
            put_u16(s, h.min_version);
            put_u16(s, h.max_version);
            put_u64(s, h.capabilities.0);
            put_settings(s, &h.settings);
            put_str16(s, h.agent_id.as_bytes());
            put_str16(s, h.cluster_id.as_bytes());
            put_str16(s, h.software.as_bytes());
            put_pairs(s, &h.labels);
        }
        Frame::HelloAck(h) => {
            put_u16(s, h.version);
            put_u64(s, h.capabilities.0);
            put_settings(s, &h.settings);
            put_u32(s, h.keepalive_ms);
            put_str16(s, h.hub_id.as_bytes());
        }
        Frame::Request(r) => {
            put_str16(s, &r.method);
            put_str16(s, &r.path);
            put_pairs(s, &r.fields);
        }
        Frame::Response(r) => {
            put_u16(s, r.status);
            put_pairs(s, &r.fields);
        }
        Frame::Data(d) => s.put_payload(&d.payload),
        Frame::End(e) => put_pairs(s, &e.trailers),
        Frame::Reset(r) => put_u32(s, r.code.0),
        Frame::WindowUpdate(w) => put_u32(s, w.increment),
        Frame::Ping(p) => put_u64(s, p.opaque),
        Frame::GoAway(g) => {
            put_u32(s, g.last_stream_id);
            put_u32(s, g.code.0);
            s.put_slice(g.message.as_bytes());
        }
        Frame::Discovery(d) => {
            put_u32(s, d.resources.len() as u32);
            for r in &d.resources {
                let mut flags = 0;
                if r.namespaced {
                    flags |= RESOURCE_NAMESPACED;
                }
                if r.cached {
                    flags |= RESOURCE_CACHED;
                }
                s.put_slice(&[flags]);
                put_u16(s, r.verbs.0);
                for f in [&r.group, &r.version, &r.resource, &r.kind, &r.singular] {
                    put_str16(s, f.as_bytes());
                }
                put_str_list(s, &r.short_names);
                put_str_list(s, &r.categories);
            }
        }
        Frame::SnapshotBegin(b) => put_resource_key(s, &b.resource),
        Frame::SnapshotItems(items) => {
            put_u32(s, items.items.len() as u32);
            for item in &items.items {
                put_u32(s, item.len() as u32);
                s.put_payload(item);
            }
        }
        Frame::SnapshotEnd(e) => put_str16(s, e.resource_version.as_bytes()),
        Frame::WatchEvent(w) => {
            s.put_slice(&[w.event as u8]);
            put_str16(s, w.resource_version.as_bytes());
            s.put_payload(&w.object);
        }
        Frame::SyncRequest(r) => {
            put_u32(s, r.resources.len() as u32);
            for k in &r.resources {
                put_resource_key(s, k);
            }
        }
        Frame::ProgressRequest(p) => put_u32(s, p.seq),
        Frame::Progress(p) => {
            put_u32(s, p.seq);
            put_str16(s, p.resource_version.as_bytes());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// The fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Body length.
    pub len: u32,
    /// Frame type.
    pub ty: FrameType,
    /// Flags byte.
    pub flags: u8,
    /// Stream id.
    pub stream_id: StreamId,
}

impl FrameHeader {
    /// Parses and validates a header against `max_frame_size`. `src` must hold at least
    /// [`HEADER_LEN`] bytes.
    pub fn parse(src: &[u8], max_frame_size: u32) -> Result<FrameHeader, DecodeError> {
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let ty_byte = src[4];
        let flags = src[5];
        let stream_id = u32::from_be_bytes([src[6], src[7], src[8], src[9]]);
        if len > max_frame_size {
            return Err(DecodeError::FrameTooLarge {
                len,
                max: max_frame_size,
            });
        }
        let ty = FrameType::from_u8(ty_byte).ok_or(DecodeError::UnknownType(ty_byte))?;
        if flags & !ty.allowed_flags() != 0 {
            return Err(DecodeError::BadFlags { ty, flags });
        }
        if stream_id & 0x8000_0000 != 0 {
            return Err(DecodeError::ReservedBit(stream_id));
        }
        match (ty.on_connection(), stream_id) {
            (Some(true), s) if s != 0 => {
                return Err(DecodeError::BadStreamId {
                    ty,
                    stream: s,
                    rule: "connection frames must use stream 0",
                })
            }
            (Some(false), 0) => {
                return Err(DecodeError::BadStreamId {
                    ty,
                    stream: 0,
                    rule: "stream frames must not use stream 0",
                })
            }
            _ => {}
        }
        Ok(FrameHeader {
            len,
            ty,
            flags,
            stream_id,
        })
    }
}

/// Takes frames off the front of a read buffer.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame_size: u32,
}

impl Default for Decoder {
    /// A decoder for the handshake: frames up to [`crate::HANDSHAKE_MAX_FRAME_SIZE`].
    fn default() -> Self {
        Decoder::new(crate::HANDSHAKE_MAX_FRAME_SIZE)
    }
}

impl Decoder {
    /// A decoder that rejects frame bodies longer than `max_frame_size` bytes (capped at
    /// [`crate::MAX_FRAME_SIZE_LIMIT`]).
    pub fn new(max_frame_size: u32) -> Self {
        Decoder {
            max_frame_size: max_frame_size.min(crate::MAX_FRAME_SIZE_LIMIT),
        }
    }

    /// The current maximum.
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// Changes the maximum (after the handshake negotiated it).
    pub fn set_max_frame_size(&mut self, max: u32) {
        self.max_frame_size = max.min(crate::MAX_FRAME_SIZE_LIMIT);
    }

    /// Decodes the next frame off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame; in that case, once the
    /// header is known to be valid, `buf` has been given capacity for the rest of the frame, so
    /// the caller can read straight into it. On `Err` the connection must be closed: what
    /// follows in `buf` cannot be trusted.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = FrameHeader::parse(&buf[..HEADER_LEN], self.max_frame_size)?;
        let total = HEADER_LEN + header.len as usize;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        frame.advance(HEADER_LEN);
        parse_body(header, frame).map(Some)
    }
}

/// Decodes one complete frame held in `src` (header and body, nothing more).
pub fn decode_exact(src: Bytes, max_frame_size: u32) -> Result<Frame, DecodeError> {
    if src.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete {
            have: src.len(),
            need: HEADER_LEN,
        });
    }
    let header = FrameHeader::parse(&src[..HEADER_LEN], max_frame_size)?;
    let total = HEADER_LEN + header.len as usize;
    if src.len() < total {
        return Err(DecodeError::Incomplete {
            have: src.len(),
            need: total,
        });
    }
    if src.len() > total {
        return Err(DecodeError::TrailingBytes {
            ty: header.ty,
            extra: src.len() - total,
        });
    }
    parse_body(header, src.slice(HEADER_LEN..))
}

/// Reads fields off a frame body; every slice it hands out shares the body's memory.
struct Reader {
    ty: FrameType,
    body: Bytes,
}

impl Reader {
    fn take(&mut self, n: usize, field: &'static str) -> Result<Bytes, DecodeError> {
        if self.body.len() < n {
            return Err(DecodeError::Truncated { ty: self.ty, field });
        }
        Ok(self.body.split_to(n))
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        if self.body.len() < N {
            return Err(DecodeError::Truncated { ty: self.ty, field });
        }
        let mut out = [0u8; N];
        self.body.copy_to_slice(&mut out);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn bytes16(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let n = self.u16(field)? as usize;
        self.take(n, field)
    }

    fn string16(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let b = self.bytes16(field)?;
        utf8(self.ty, field, b.to_vec())
    }

    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.body)
    }

    fn invalid(&self, field: &'static str, reason: &'static str) -> DecodeError {
        DecodeError::InvalidField {
            ty: self.ty,
            field,
            reason,
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                ty: self.ty,
                extra: self.body.len(),
            })
        }
    }
}

fn utf8(ty: FrameType, field: &'static str, v: Vec<u8>) -> Result<String, DecodeError> {
    String::from_utf8(v).map_err(|_| DecodeError::InvalidField {
        ty,
        field,
        reason: "not UTF-8",
    })
}

/// RFC 9110 `tchar`: the characters of a method or header-name token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Validates the fields of a header list; see PROTOCOL.md, "Header fields".
fn read_fields(r: &mut Reader) -> Result<Fields, DecodeError> {
    let count = r.u16("field count")? as usize;
    // Each field takes at least 5 bytes (two lengths and a 1-byte name): never reserve more
    // entries than the body could hold.
    let mut fields = Vec::with_capacity(count.min(r.body.len() / 5));
    for _ in 0..count {
        let name = r.bytes16("field name")?;
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(r.invalid("field name", "not an HTTP token"));
        }
        let value = r.bytes16("field value")?;
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(r.invalid("field value", "contains CR, LF or NUL"));
        }
        fields.push((name, value));
    }
    Ok(fields)
}

fn read_settings(r: &mut Reader) -> Result<Settings, DecodeError> {
    let s = Settings {
        max_frame_size: r.u32("max_frame_size")?,
        max_concurrent_streams: r.u32("max_concurrent_streams")?,
        initial_stream_window: r.u32("initial_stream_window")?,
        initial_sync_window: r.u32("initial_sync_window")?,
        initial_connection_window: r.u32("initial_connection_window")?,
    };
    crate::validate_settings(&s).map_err(|reason| r.invalid("settings", reason))?;
    Ok(s)
}

fn read_str_list(r: &mut Reader, field: &'static str) -> Result<Vec<String>, DecodeError> {
    let n = r.u8(field)? as usize;
    let mut out = Vec::with_capacity(n.min(r.body.len() / 2));
    for _ in 0..n {
        out.push(r.string16(field)?);
    }
    Ok(out)
}

/// Cluster labels: a 16-bit count of (name, value) pairs; names non-empty and unique.
fn read_labels(r: &mut Reader) -> Result<Vec<(String, String)>, DecodeError> {
    let count = r.u16("label count")? as usize;
    // A label takes at least 5 bytes (two lengths and a 1-byte name).
    let mut labels = Vec::with_capacity(count.min(r.body.len() / 5));
    for _ in 0..count {
        let name = r.string16("label name")?;
        if name.is_empty() {
            return Err(r.invalid("label name", "empty"));
        }
        labels.push((name, r.string16("label value")?));
    }
    let mut names = std::collections::HashSet::with_capacity(labels.len());
    if !labels.iter().all(|(name, _)| names.insert(name.as_str())) {
        return Err(r.invalid("label name", "repeated"));
    }
    Ok(labels)
}

fn read_resource_key(r: &mut Reader) -> Result<ResourceKey, DecodeError> {
    let key = ResourceKey {
        group: r.string16("group")?,
        version: r.string16("version")?,
        resource: r.string16("resource")?,
    };
    if key.version.is_empty() || key.resource.is_empty() {
        return Err(r.invalid("resource", "empty version or resource name"));
    }
    Ok(key)
}

fn parse_body(h: FrameHeader, body: Bytes) -> Result<Frame, DecodeError> {
    let mut r = Reader { ty: h.ty, body };
    let end_stream = h.flags & FLAG_END_STREAM != 0;
    let frame = match h.ty {
        FrameType::Hello => {
            let min_version = r.u16("min_version")?;
            let max_version = r.u16("max_version")?;
            if min_version == 0 || min_version > max_version {
                return Err(r.invalid("version range", "empty or starts at 0"));
            }
            Frame::Hello(Hello {
                min_version,
                max_version,
                capabilities: Capabilities(r.u64("capabilities")?),
                settings: read_settings(&mut r)?,
                agent_id: r.string16("agent_id")?,
                cluster_id: r.string16("cluster_id")?,
                software: r.string16("software")?,
                labels: read_labels(&mut r)?,
            })
        }
        FrameType::HelloAck => {
            let version = r.u16("version")?;
            if version == 0 {
                return Err(r.invalid("version", "0 is not a version"));
            }
            Frame::HelloAck(HelloAck {
                version,
                capabilities: Capabilities(r.u64("capabilities")?),
                settings: read_settings(&mut r)?,
                keepalive_ms: r.u32("keepalive_ms")?,
                hub_id: r.string16("hub_id")?,
            })
        }
        FrameType::Request => {
            let method = r.bytes16("method")?;
            if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
                return Err(r.invalid("method", "not an HTTP token"));
            }
            let path = r.bytes16("path")?;
            if path.first() != Some(&b'/') || !path.iter().all(|&b| (0x21..0x7f).contains(&b)) {
                return Err(r.invalid("path", "must start with / and be visible ASCII"));
            }
            Frame::Request(Request {
                stream_id: h.stream_id,
                end_stream,
                method,
                path,
                fields: read_fields(&mut r)?,
            })
        }
        FrameType::Response => {
            let status = r.u16("status")?;
            if !(100..=999).contains(&status) {
                return Err(r.invalid("status", "outside 100..=999"));
            }
            Frame::Response(Response {
                stream_id: h.stream_id,
                end_stream,
                status,
                fields: read_fields(&mut r)?,
            })
        }
        FrameType::Data => Frame::Data(Data {
            stream_id: h.stream_id,
            end_stream,
            payload: r.rest(),
        }),
        FrameType::End => Frame::End(End {
            stream_id: h.stream_id,
            trailers: read_fields(&mut r)?,
        }),
        FrameType::Reset => Frame::Reset(Reset {
            stream_id: h.stream_id,
            code: ErrorCode(r.u32("error code")?),
        }),
        FrameType::WindowUpdate => {
            let increment = r.u32("increment")?;
            if increment == 0 || increment > MAX_WINDOW {
                return Err(r.invalid("increment", "must be 1..=2^31-1"));
            }
            Frame::WindowUpdate(WindowUpdate {
                stream_id: h.stream_id,
                increment,
            })
        }
        FrameType::Ping => Frame::Ping(Ping {
            ack: h.flags & FLAG_ACK != 0,
            opaque: r.u64("opaque")?,
        }),
        FrameType::GoAway => {
            let last_stream_id = r.u32("last_stream_id")?;
            if last_stream_id & 0x8000_0000 != 0 {
                return Err(r.invalid("last_stream_id", "reserved bit set"));
            }
            let code = ErrorCode(r.u32("error code")?);
            let message = utf8(h.ty, "message", r.rest().to_vec())?;
            Frame::GoAway(GoAway {
                last_stream_id,
                code,
                message,
            })
        }
        FrameType::Discovery => {
            let count = r.u32("resource count")? as usize;
            // An entry takes at least 15 bytes.
            let mut resources = Vec::with_capacity(count.min(r.body.len() / 15));
            for _ in 0..count {
                let flags = r.u8("resource flags")?;
                if flags & !(RESOURCE_NAMESPACED | RESOURCE_CACHED) != 0 {
                    return Err(r.invalid("resource flags", "undefined bit set"));
                }
                let verbs = Verbs(r.u16("verbs")?);
                if !Verbs::KNOWN.contains(verbs) {
                    return Err(r.invalid("verbs", "undefined bit set"));
                }
                let group = r.string16("group")?;
                let version = r.string16("version")?;
                let resource = r.string16("resource")?;
                let kind = r.string16("kind")?;
                if version.is_empty() || resource.is_empty() || kind.is_empty() {
                    return Err(r.invalid("resource", "empty version, resource or kind"));
                }
                resources.push(ResourceType {
                    group,
                    version,
                    resource,
                    kind,
                    singular: r.string16("singular")?,
                    namespaced: flags & RESOURCE_NAMESPACED != 0,
                    cached: flags & RESOURCE_CACHED != 0,
                    verbs,
                    short_names: read_str_list(&mut r, "short names")?,
                    categories: read_str_list(&mut r, "categories")?,
                });
            }
            Frame::Discovery(Discovery { resources })
        }
        FrameType::SnapshotBegin => Frame::SnapshotBegin(SnapshotBegin {
            stream_id: h.stream_id,
            resource: read_resource_key(&mut r)?,
        }),
        FrameType::SnapshotItems => {
            let count = r.u32("item count")? as usize;
            let mut items = Vec::with_capacity(count.min(r.body.len() / 4));
            for _ in 0..count {
                let n = r.u32("item length")? as usize;
                items.push(r.take(n, "item")?);
            }
            Frame::SnapshotItems(SnapshotItems {
                stream_id: h.stream_id,
                items,
            })
        }
        FrameType::SnapshotEnd => Frame::SnapshotEnd(SnapshotEnd {
            stream_id: h.stream_id,
            resource_version: r.string16("resource_version")?,
        }),
        FrameType::WatchEvent => {
            let b = r.u8("event type")?;
            let event = EventType::from_u8(b).ok_or(r.invalid("event type", "undefined"))?;
            Frame::WatchEvent(WatchEvent {
                stream_id: h.stream_id,
                event,
                resource_version: r.string16("resource_version")?,
                object: r.rest(),
            })
        }
        FrameType::SyncRequest => {
            let count = r.u32("resource count")? as usize;
            // A key takes at least 8 bytes (three lengths, a version and a resource).
            let mut resources = Vec::with_capacity(count.min(r.body.len() / 8));
            for _ in 0..count {
                resources.push(read_resource_key(&mut r)?);
            }
            Frame::SyncRequest(SyncRequest { resources })
        }
        FrameType::ProgressRequest => Frame::ProgressRequest(ProgressRequest {
            stream_id: h.stream_id,
            seq: r.u32("seq")?,
        }),
        FrameType::Progress => Frame::Progress(Progress {
            stream_id: h.stream_id,
            seq: r.u32("seq")?,
            resource_version: r.string16("resource_version")?,
        }),
    };
    r.finish()?;
    Ok(frame)
}
