//! The frames of the tunnel protocol, as plain data.
//!
//! Each frame is a struct; [`Frame`] is the sum of them. Payloads and header fields are
//! [`Bytes`], so a decoded frame borrows (by reference count) the buffer it was read from.
//! The byte layout of every frame is in `wire/PROTOCOL.md`; encoding and decoding live in
//! [`crate::codec`].

use bytes::Bytes;

use crate::error::ErrorCode;

/// Length of the fixed frame header: length (4), type (1), flags (1), stream id (4).
pub const HEADER_LEN: usize = 10;

/// A stream identifier. 0 is the connection itself; streams opened by the agent (the side that
/// dials) are odd, streams opened by the hub (the side that accepts) are even.
pub type StreamId = u32;

/// Flag: this frame is the last one the sender sends on the stream.
pub const FLAG_END_STREAM: u8 = 0x1;
/// Flag: this PING is an answer.
pub const FLAG_ACK: u8 = 0x1;

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// Agent → hub: first frame of a connection.
    Hello = 0x00,
    /// Hub → agent: answer to HELLO.
    HelloAck = 0x01,
    /// Opens a stream with an HTTP request head.
    Request = 0x02,
    /// The HTTP response head of a stream.
    Response = 0x03,
    /// A chunk of body bytes.
    Data = 0x04,
    /// End of a stream's sending half, with trailers.
    End = 0x05,
    /// Abrupt termination of a stream.
    Reset = 0x06,
    /// Flow-control credit.
    WindowUpdate = 0x07,
    /// Liveness and round-trip time.
    Ping = 0x08,
    /// Graceful drain of the connection.
    GoAway = 0x09,
    /// Agent → hub: the resource types the edge cluster serves.
    Discovery = 0x0a,
    /// Opens (or restarts) a cache-sync stream for one resource type.
    SnapshotBegin = 0x0b,
    /// A batch of objects of a snapshot.
    SnapshotItems = 0x0c,
    /// A snapshot is complete as of a resourceVersion.
    SnapshotEnd = 0x0d,
    /// One watch event of a synced resource type.
    WatchEvent = 0x0e,
    /// Hub → agent: the complete set of resource types the hub wants synced.
    SyncRequest = 0x0f,
    /// Hub → agent, on a sync stream: how current is this stream?
    ProgressRequest = 0x10,
    /// Agent → hub, on a sync stream: every change up to a resourceVersion has been sent.
    Progress = 0x11,
}

impl FrameType {
    /// Every frame type, in type-byte order.
    pub const ALL: [FrameType; 18] = [
        FrameType::Hello,
        FrameType::HelloAck,
        FrameType::Request,
        FrameType::Response,
        FrameType::Data,
        FrameType::End,
        FrameType::Reset,
        FrameType::WindowUpdate,
        FrameType::Ping,
        FrameType::GoAway,
        FrameType::Discovery,
        FrameType::SnapshotBegin,
        FrameType::SnapshotItems,
        FrameType::SnapshotEnd,
        FrameType::WatchEvent,
        FrameType::SyncRequest,
        FrameType::ProgressRequest,
        FrameType::Progress,
    ];

    /// The name PROTOCOL.md and log lines use, e.g. `WINDOW_UPDATE`.
    pub fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::HelloAck => "HELLO_ACK",
            FrameType::Request => "REQUEST",
            FrameType::Response => "RESPONSE",
            FrameType::Data => "DATA",
            FrameType::End => "END",
            FrameType::Reset => "RESET",
            FrameType::WindowUpdate => "WINDOW_UPDATE",
            FrameType::Ping => "PING",
            FrameType::GoAway => "GOAWAY",
            FrameType::Discovery => "DISCOVERY",
            FrameType::SnapshotBegin => "SNAPSHOT_BEGIN",
            FrameType::SnapshotItems => "SNAPSHOT_ITEMS",
            FrameType::SnapshotEnd => "SNAPSHOT_END",
            FrameType::WatchEvent => "WATCH_EVENT",
            FrameType::SyncRequest => "SYNC_REQUEST",
            FrameType::ProgressRequest => "PROGRESS_REQUEST",
            FrameType::Progress => "PROGRESS",
        }
    }

    /// The type for a type byte, `None` if this version does not define it.
    pub fn from_u8(b: u8) -> Option<FrameType> {
        Self::ALL.get(b as usize).copied()
    }

    /// The flag bits this type defines; any other bit set is a protocol error.
    pub fn allowed_flags(self) -> u8 {
        match self {
            FrameType::Request | FrameType::Response | FrameType::Data => FLAG_END_STREAM,
            FrameType::Ping => FLAG_ACK,
            _ => 0,
        }
    }

    /// Where the type may appear: `Some(true)` on stream 0 only, `Some(false)` on non-zero
    /// streams only, `None` on both (WINDOW_UPDATE: 0 is the connection window).
    pub fn on_connection(self) -> Option<bool> {
        match self {
            FrameType::Hello
            | FrameType::HelloAck
            | FrameType::Ping
            | FrameType::GoAway
            | FrameType::Discovery
            | FrameType::SyncRequest => Some(true),
            FrameType::WindowUpdate => None,
            _ => Some(false),
        }
    }

    /// Whether frames of this type consume flow-control credit (their whole body length counts).
    pub fn is_flow_controlled(self) -> bool {
        matches!(
            self,
            FrameType::Data | FrameType::SnapshotItems | FrameType::WatchEvent
        )
    }
}

/// The settings each side announces in its handshake frame. They govern what the announcing
/// side is willing to *receive*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Largest frame body (bytes after the 10-byte header) the sender accepts.
    pub max_frame_size: u32,
    /// Most streams the peer may have open towards the sender at once.
    pub max_concurrent_streams: u32,
    /// Initial send window of every request stream (REQUEST-opened) towards the sender.
    pub initial_stream_window: u32,
    /// Initial send window of every cache-sync stream (SNAPSHOT_BEGIN-opened) towards the sender.
    pub initial_sync_window: u32,
    /// Initial connection-level send window towards the sender.
    pub initial_connection_window: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_frame_size: crate::DEFAULT_MAX_FRAME_SIZE,
            max_concurrent_streams: 1024,
            initial_stream_window: 256 * 1024,
            initial_sync_window: 4 * 1024 * 1024,
            initial_connection_window: 8 * 1024 * 1024,
        }
    }
}

/// Capability bits exchanged in the handshake; the hub answers with the intersection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The agent list-watches cacheable types and streams them on sync streams.
    pub const CACHE_SYNC: Capabilities = Capabilities(1 << 0);
    /// The agent can carry connection upgrades (exec, attach, port-forward) as raw DATA.
    pub const UPGRADE: Capabilities = Capabilities(1 << 1);
    /// The dialer is another hub (a peer link, PROTOCOL.md §12): it opens request streams that
    /// each carry one HTTP/1.1 exchange for a cluster the accepting hub holds.
    pub const PEER: Capabilities = Capabilities(1 << 2);

    /// Whether every bit of `other` is set in `self`.
    pub fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bits set in both.
    pub fn intersect(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }
}

/// HELLO: the agent's first frame. Stream 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Oldest protocol version the agent speaks.
    pub min_version: u16,
    /// Newest protocol version the agent speaks.
    pub max_version: u16,
    /// What the agent can do.
    pub capabilities: Capabilities,
    /// What the agent is willing to receive.
    pub settings: Settings,
    /// Stable identity of this agent instance (for logs and the registry).
    pub agent_id: String,
    /// The cluster the agent serves; the hub checks it against the client certificate.
    pub cluster_id: String,
    /// The agent's software version, for humans.
    pub software: String,
    /// The cluster's labels (name, value), from agent.toml; the hub picks the types it caches
    /// by them. Names are non-empty and unique; values may be empty.
    pub labels: Vec<(String, String)>,
}

/// HELLO_ACK: the hub's answer to HELLO. Stream 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloAck {
    /// The version chosen: the highest both sides speak.
    pub version: u16,
    /// The capabilities both sides have.
    pub capabilities: Capabilities,
    /// What the hub is willing to receive.
    pub settings: Settings,
    /// How often the agent should PING when the connection is idle, in milliseconds.
    pub keepalive_ms: u32,
    /// Identity of the hub replica, for logs.
    pub hub_id: String,
}

/// An ordered list of HTTP header fields. Names keep the case they were sent with; values are
/// opaque bytes (no CR, LF or NUL).
pub type Fields = Vec<(Bytes, Bytes)>;

/// REQUEST: opens a stream carrying an HTTP request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The new stream's id (odd when the agent opens it, even when the hub does).
    pub stream_id: StreamId,
    /// No body follows.
    pub end_stream: bool,
    /// HTTP method token, e.g. `GET`.
    pub method: Bytes,
    /// Path and query as sent to the edge API server, e.g. `/api/v1/pods?watch=true`.
    pub path: Bytes,
    /// Header fields.
    pub fields: Fields,
}

/// RESPONSE: the HTTP response head of a stream; sent once, by the side that received REQUEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The stream.
    pub stream_id: StreamId,
    /// No body follows.
    pub end_stream: bool,
    /// HTTP status, 100..=999.
    pub status: u16,
    /// Header fields.
    pub fields: Fields,
}

/// DATA: body bytes of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// The stream.
    pub stream_id: StreamId,
    /// This is the last frame the sender sends on the stream.
    pub end_stream: bool,
    /// The bytes; a slice of the read buffer when decoded.
    pub payload: Bytes,
}

/// END: the sender's half of the stream is done; carries trailers (often none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    /// The stream.
    pub stream_id: StreamId,
    /// Trailer fields.
    pub trailers: Fields,
}

/// RESET: terminates a stream in both directions at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    /// The stream.
    pub stream_id: StreamId,
    /// Why.
    pub code: ErrorCode,
}

/// WINDOW_UPDATE: grants flow-control credit on a stream, or on the connection (stream 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUpdate {
    /// The stream, or 0 for the connection.
    pub stream_id: StreamId,
    /// Bytes of credit, 1..=2^31-1.
    pub increment: u32,
}

/// PING: liveness check; the receiver answers with the same opaque value and ACK set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// This is the answer.
    pub ack: bool,
    /// Echoed back unchanged (a send timestamp works well).
    pub opaque: u64,
}

/// GOAWAY: the sender accepts no new streams; streams above `last_stream_id` that the receiver
/// opened were not processed and may be retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Highest stream id opened by the receiver that the sender processed (or will).
    pub last_stream_id: StreamId,
    /// Why; NO_ERROR for a graceful drain.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// Verbs a resource type supports, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Verbs(pub u16);

impl Verbs {
    /// `get`
    pub const GET: Verbs = Verbs(1 << 0);
    /// `list`
    pub const LIST: Verbs = Verbs(1 << 1);
    /// `watch`
    pub const WATCH: Verbs = Verbs(1 << 2);
    /// `create`
    pub const CREATE: Verbs = Verbs(1 << 3);
    /// `update`
    pub const UPDATE: Verbs = Verbs(1 << 4);
    /// `patch`
    pub const PATCH: Verbs = Verbs(1 << 5);
    /// `delete`
    pub const DELETE: Verbs = Verbs(1 << 6);
    /// `deletecollection`
    pub const DELETE_COLLECTION: Verbs = Verbs(1 << 7);
    /// Every bit this version defines.
    pub const KNOWN: Verbs = Verbs(0xff);

    /// The Kubernetes names of the verbs, in bit order.
    pub const NAMES: [&'static str; 8] = [
        "get",
        "list",
        "watch",
        "create",
        "update",
        "patch",
        "delete",
        "deletecollection",
    ];

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Verbs) -> bool {
        self.0 & other.0 == other.0
    }

    /// The Kubernetes names of the verbs set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .iter()
            .enumerate()
            .filter(move |(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, n)| *n)
    }
}

/// One resource type the edge cluster serves (an entry of an APIResourceList).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Plural resource name, e.g. `pods` (subresources like `pods/log` included).
    pub resource: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// Namespaced (true) or cluster-scoped.
    pub namespaced: bool,
    /// The agent list-watches this type and streams it on a sync stream.
    pub cached: bool,
    /// Supported verbs.
    pub verbs: Verbs,
    /// Short names, e.g. `po`.
    pub short_names: Vec<String>,
    /// Categories, e.g. `all`.
    pub categories: Vec<String>,
}

/// DISCOVERY: the full list of resource types the edge cluster serves; replaces any earlier
/// report. Stream 0, agent → hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// The resource types.
    pub resources: Vec<ResourceType>,
}

/// Names a resource type: the type of a sync stream (SNAPSHOT_BEGIN), an entry of SYNC_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    /// API group, empty for the core group.
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name.
    pub resource: String,
}

/// SNAPSHOT_BEGIN: opens a sync stream for one resource type, or restarts the snapshot on an
/// open one (after the agent relisted, for example on 410 Gone). The receiver discards what it
/// holds for the type once the matching SNAPSHOT_END arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotBegin {
    /// The sync stream.
    pub stream_id: StreamId,
    /// The resource type this stream carries.
    pub resource: ResourceKey,
}

/// SNAPSHOT_ITEMS: a batch of objects (each one JSON-encoded Kubernetes object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotItems {
    /// The sync stream.
    pub stream_id: StreamId,
    /// The objects; slices of the read buffer when decoded.
    pub items: Vec<Bytes>,
}

/// SNAPSHOT_END: the snapshot is complete and consistent as of `resource_version`; watch events
/// after it follow on the same stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEnd {
    /// The sync stream.
    pub stream_id: StreamId,
    /// The list's resourceVersion.
    pub resource_version: String,
}

/// The type of a watch event, as in the Kubernetes watch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventType {
    /// `ADDED`
    Added = 0,
    /// `MODIFIED`
    Modified = 1,
    /// `DELETED`
    Deleted = 2,
    /// `BOOKMARK`: only the resourceVersion moved; the object carries just metadata.
    Bookmark = 3,
}

impl EventType {
    /// The type for its byte, `None` if undefined.
    pub fn from_u8(b: u8) -> Option<EventType> {
        Some(match b {
            0 => EventType::Added,
            1 => EventType::Modified,
            2 => EventType::Deleted,
            3 => EventType::Bookmark,
            _ => return None,
        })
    }

    /// The Kubernetes name, e.g. `ADDED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
            EventType::Bookmark => "BOOKMARK",
        }
    }
}

/// WATCH_EVENT: one change of a synced resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The sync stream.
    pub stream_id: StreamId,
    /// What happened.
    pub event: EventType,
    /// The object's resourceVersion after the event (the bookmark's for BOOKMARK).
    pub resource_version: String,
    /// The JSON-encoded object; a slice of the read buffer when decoded.
    pub object: Bytes,
}

/// SYNC_REQUEST: the complete set of resource types the hub wants synced from now on; replaces
/// any earlier set. Stream 0, hub → agent, only with [`Capabilities::CACHE_SYNC`]. The agent
/// opens a sync stream for each type it can list and watch, ends the sync streams of types no
/// longer in the set, and ignores types it does not serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRequest {
    /// The resource types (a key listed twice counts once).
    pub resources: Vec<ResourceKey>,
}

/// PROGRESS_REQUEST: the receiver of a sync stream (the hub) asks its opener (the agent) to
/// confirm how current the stream is; answered with a [`Progress`] carrying the same `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressRequest {
    /// The sync stream.
    pub stream_id: StreamId,
    /// Echoed in the answer. Requests on a stream should carry increasing numbers: the engine
    /// replaces a request not yet sent with a later one, whose answer answers both.
    pub seq: u32,
}

/// PROGRESS: every change of the stream's type up to `resource_version` has been sent on the
/// stream before this frame. Only outside a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// The sync stream.
    pub stream_id: StreamId,
    /// The `seq` of the [`ProgressRequest`] answered; 0 when unsolicited.
    pub seq: u32,
    /// The resourceVersion up to which the stream is complete; empty when the agent could not
    /// confirm (the reads it was asked for stay unconfirmed).
    pub resource_version: String,
}

/// Any frame of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Frame {
    Hello(Hello),
    HelloAck(HelloAck),
    Request(Request),
    Response(Response),
    Data(Data),
    End(End),
    Reset(Reset),
    WindowUpdate(WindowUpdate),
    Ping(Ping),
    GoAway(GoAway),
    Discovery(Discovery),
    SnapshotBegin(SnapshotBegin),
    SnapshotItems(SnapshotItems),
    SnapshotEnd(SnapshotEnd),
    WatchEvent(WatchEvent),
    SyncRequest(SyncRequest),
    ProgressRequest(ProgressRequest),
    Progress(Progress),
}

impl Frame {
    /// The frame's type byte.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::HelloAck(_) => FrameType::HelloAck,
            Frame::Request(_) => FrameType::Request,
            Frame::Response(_) => FrameType::Response,
            Frame::Data(_) => FrameType::Data,
            Frame::End(_) => FrameType::End,
            Frame::Reset(_) => FrameType::Reset,
            Frame::WindowUpdate(_) => FrameType::WindowUpdate,
            Frame::Ping(_) => FrameType::Ping,
            Frame::GoAway(_) => FrameType::GoAway,
            Frame::Discovery(_) => FrameType::Discovery,
            Frame::SnapshotBegin(_) => FrameType::SnapshotBegin,
            Frame::SnapshotItems(_) => FrameType::SnapshotItems,
            Frame::SnapshotEnd(_) => FrameType::SnapshotEnd,
            Frame::WatchEvent(_) => FrameType::WatchEvent,
            Frame::SyncRequest(_) => FrameType::SyncRequest,
            Frame::ProgressRequest(_) => FrameType::ProgressRequest,
            Frame::Progress(_) => FrameType::Progress,
        }
    }

    /// The stream the frame belongs to (0 for connection-level frames).
    pub fn stream_id(&self) -> StreamId {
        match self {
            Frame::Hello(_)
            | Frame::HelloAck(_)
            | Frame::Ping(_)
            | Frame::GoAway(_)
            | Frame::Discovery(_)
            | Frame::SyncRequest(_) => 0,
            Frame::Request(f) => f.stream_id,
            Frame::Response(f) => f.stream_id,
            Frame::Data(f) => f.stream_id,
            Frame::End(f) => f.stream_id,
            Frame::Reset(f) => f.stream_id,
            Frame::WindowUpdate(f) => f.stream_id,
            Frame::SnapshotBegin(f) => f.stream_id,
            Frame::SnapshotItems(f) => f.stream_id,
            Frame::SnapshotEnd(f) => f.stream_id,
            Frame::WatchEvent(f) => f.stream_id,
            Frame::ProgressRequest(f) => f.stream_id,
            Frame::Progress(f) => f.stream_id,
        }
    }

    /// The flags byte the frame encodes with.
    pub fn flags(&self) -> u8 {
        match self {
            Frame::Ping(p) if p.ack => FLAG_ACK,
            _ if self.ends_stream() && !matches!(self, Frame::End(_)) => FLAG_END_STREAM,
            _ => 0,
        }
    }

    /// Whether this frame ends the sender's half of its stream (END_STREAM flag or END frame).
    pub fn ends_stream(&self) -> bool {
        match self {
            Frame::End(_) => true,
            Frame::Request(f) => f.end_stream,
            Frame::Response(f) => f.end_stream,
            Frame::Data(f) => f.end_stream,
            _ => false,
        }
    }
}

macro_rules! impl_from {
    ($($v:ident),*) => {$(
        impl From<$v> for Frame {
            fn from(f: $v) -> Frame { Frame::$v(f) }
        }
    )*};
}
impl_from!(
    Hello,
    HelloAck,
    Request,
    Response,
    Data,
    End,
    Reset,
    WindowUpdate,
    Ping,
    GoAway,
    Discovery,
    SnapshotBegin,
    SnapshotItems,
    SnapshotEnd,
    WatchEvent,
    SyncRequest,
    ProgressRequest,
    Progress
);
