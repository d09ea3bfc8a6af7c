//! `reflector`: one resource type of the edge API server, list-watched for the hub's cache.
//!
//! What client-go's reflector does, with what KubeHub needs on top:
//!
//! * **List** (a snapshot): [`SyncOut::Begin`], [`SyncOut::Items`]…, [`SyncOut::End`]. Paged
//!   (`limit=page_size`, following `continue`), `resourceVersion` unset, so the list is a
//!   consistent read. Items are forwarded as the API server's JSON bytes, split out of the list
//!   body without being re-encoded; objects inside a list lack `kind` and `apiVersion` (the hub
//!   serves GETs from these bytes), so the reflector splices them in at the start of the
//!   object when missing, taken from the list's own `kind` (minus `List`) and `apiVersion`. A
//!   `continue` token that expires mid-list (410) makes the list start over without pages, as
//!   client-go's pager does.
//! * **Watch** from the list's version (`allowWatchBookmarks`, `timeoutSeconds` drawn from
//!   `[watch_timeout_min_s, watch_timeout_max_s]`): newline-delimited events parsed
//!   incrementally (an event may span chunks), each forwarded as a [`SyncOut::Event`] with the
//!   object's bytes exactly as received; bookmarks advance the version and are forwarded too,
//!   so the hub's version advances with the edge's. The watch ending (its timeout) → watch
//!   again from the last version; 410 Gone (HTTP or an ERROR event) or "too large resource
//!   version" → list again (a new snapshot). Failures (connection refused, 5xx, 429, timeouts,
//!   malformed answers) → retry after a full-jitter exponential backoff ([`crate::backoff`]),
//!   honouring `Retry-After` up to the backoff's ceiling.
//! * **Freshness** ([`ReflectorHandle::progress`], the hub's PROGRESS_REQUEST; KEP-2340's
//!   consistent reads from cache): a probe `GET <list path>?limit=1` (a consistent read) gives
//!   the edge's current version R. Once the reflector has sent everything up to R, it answers
//!   [`SyncOut::Progress`] with its version: at once if the watch is already there, or as soon
//!   as it gets there within `progress_grace_ms`. A quiet type in a busy cluster never gets
//!   there (nothing of this type changed while the cluster's version moved on, and bookmarks
//!   come about once a minute), so once the type's watch has been quiet for
//!   `progress_quiet_ms` (each event of the type restarts that period; never past the grace)
//!   the reflector confirms with a consistent list compared with what it holds: an event for exactly each difference (ADDED,
//!   MODIFIED where the version differs, DELETED with the last known object and the list's
//!   version), in version order, then the answer with the list's version. Watch events at or
//!   below a version already sent are skipped afterwards. Requests that arrive before a probe
//!   is sent share it; later ones wait for the next. If the API server fails, or a version is
//!   not a number (versions compare as integers, etcd revisions), the answer is `""`: the hub
//!   then forwards the reads it could not confirm.
//!
//! Everything goes into one ordered, bounded channel, so an answer always follows the events
//! it vouches for.
//!
//! ## Memory
//! Per type: one copy of every object (the reflector's model of what the hub holds, to answer
//! freshness checks and compute differences; each object in its own allocation, shared with
//! what is in flight towards the hub, so [`crate::SyncMetrics::object_bytes`] is exact), plus
//! at most: one list page (`page_size` objects, its body capped at 256 MiB), the output
//! channel's capacity in items (each a batch of at most `batch_bytes`, or one object), the
//! differences of one confirming list, and one partial watch line (capped at 16 MiB). When
//! the hub is slow, the channel fills and the reflector stops reading its watch (it awaits
//! room before it reads the next event), so the API server's watch buffer, not the agent,
//! absorbs the difference; kube-apiserver (and the simulator) end a watch that falls too far
//! behind, after which the reflector resumes from its version, or lists again (410).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Limited};
use kubehub_wire::{EventType, ResourceKey};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rand::Rng;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

pub use crate::config::ReflectorConfig;
use crate::upstream::{UpBody, UpstreamClient};
use crate::{Metrics, SyncEventLabel, SyncOutcomeLabel, SyncReasonLabel, SyncTypeLabel};

/// Largest list page body read (a page of `page_size` objects).
const MAX_LIST_BODY: usize = 256 * 1024 * 1024;
/// Largest error body read (a `Status`).
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Largest watch event line (one object; etcd's limit is 1.5 MiB).
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Freshness requests queued while one is being confirmed (the hub has at most two per type
/// outstanding); more are dropped with a warning.
const PROGRESS_QUEUE: usize = 64;
/// A watch that ends sooner than this without delivering anything counts as a failure (backoff),
/// not as a normal end (immediate re-watch): an API server that accepts and drops watches must
/// not be hammered.
const MIN_HEALTHY_WATCH: Duration = Duration::from_secs(1);

/// What a type's reflector emits, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOut {
    /// A (re)list starts: the hub replaces its copy of the type at the next [`SyncOut::End`].
    Begin,
    /// Objects of the snapshot in progress (each the JSON of one object with `kind` and
    /// `apiVersion`); at most `batch_bytes` in all, or one larger object; never empty.
    Items(Vec<Bytes>),
    /// The snapshot is complete and consistent at this version.
    End {
        /// The list's resourceVersion.
        resource_version: String,
    },
    /// A change after the snapshot (or a bookmark: the version moved on).
    Event {
        /// ADDED, MODIFIED, DELETED or BOOKMARK.
        kind: EventType,
        /// The event's version (for DELETED found by a confirming list: the list's).
        resource_version: String,
        /// The object as the API server sent it.
        object: Bytes,
    },
    /// The answer to freshness request `seq`: every change up to `resource_version` was
    /// emitted before this; `""`: could not confirm.
    Progress {
        /// The request's sequence number.
        seq: u32,
        /// The confirmed version, or `""`.
        resource_version: String,
    },
}

/// Why a call to the API server failed (each carries what was being done).
#[derive(Debug, thiserror::Error)]
pub enum ReflectorError {
    /// No connection, or it broke before the answer's head.
    #[error("{op}: {msg}")]
    Connect {
        /// What was being done.
        op: String,
        /// The client's error chain.
        msg: String,
    },
    /// No answer in time.
    #[error("{op}: no answer within {after:?}")]
    Timeout {
        /// What was being done.
        op: String,
        /// The deadline.
        after: Duration,
    },
    /// A `Status` error (HTTP, or a watch's ERROR event).
    #[error("{op}: {code} {reason}: {message}")]
    Status {
        /// What was being done.
        op: String,
        /// HTTP status code (the `Status`'s `code`).
        code: u16,
        /// The `Status`'s `reason`.
        reason: String,
        /// Its message.
        message: String,
        /// `Retry-After` (header or `details.retryAfterSeconds`).
        retry_after: Option<Duration>,
        /// A cause `ResourceVersionTooLarge`: the API server is behind the version asked for.
        too_large: bool,
    },
    /// The body could not be read.
    #[error("{op}: reading the answer: {msg}")]
    Body {
        /// What was being done.
        op: String,
        /// Why.
        msg: String,
    },
    /// The answer is not what the API returns.
    #[error("{op}: malformed answer: {msg}")]
    Malformed {
        /// What was being done.
        op: String,
        /// Why.
        msg: String,
    },
    /// A resourceVersion is not an integer, so versions cannot be compared.
    #[error("{op}: resourceVersion {rv:?} is not a number")]
    ResourceVersion {
        /// What was being done.
        op: String,
        /// The version.
        rv: String,
    },
    /// The receiver of the reflector's output is gone.
    #[error("the reflector's output channel is closed")]
    Closed,
}

impl ReflectorError {
    /// 410 Gone / Expired: the version asked for left the API server's history.
    pub fn is_gone(&self) -> bool {
        matches!(self, ReflectorError::Status { code: 410, .. })
    }

    /// The API server is behind the version asked for.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            ReflectorError::Status {
                too_large: true,
                ..
            }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ReflectorError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The `reason` label of [`crate::SyncMetrics::failures`].
    fn metric_reason(&self) -> &'static str {
        match self {
            ReflectorError::Connect { .. } | ReflectorError::Body { .. } => "connect",
            ReflectorError::Timeout { .. } => "timeout",
            ReflectorError::Status {
                too_large: true, ..
            } => "too_large",
            ReflectorError::Status { code: 429, .. } => "http_429",
            ReflectorError::Status { code, .. } if *code >= 500 => "http_5xx",
            ReflectorError::Status { .. } => "http_4xx",
            ReflectorError::Malformed { .. } | ReflectorError::ResourceVersion { .. } => {
                "malformed"
            }
            ReflectorError::Closed => "closed",
        }
    }
}

/// A running reflector: send it freshness requests; dropping it stops it.
#[derive(Debug)]
pub struct ReflectorHandle {
    requests: mpsc::Sender<u32>,
    task: tokio::task::JoinHandle<()>,
    resource: String,
}

impl ReflectorHandle {
    /// The hub asks whether its copy is current ([`SyncOut::Progress`] answers, with the same
    /// `seq`). Never blocks; if [`PROGRESS_QUEUE`] requests are already waiting (the hub sends
    /// at most two at a time), this one is dropped with a warning and the hub's own deadline
    /// applies.
    pub fn progress(&self, seq: u32) {
        if let Err(e) = self.requests.try_send(seq) {
            warn!(resource = %self.resource, seq, "freshness request not queued: {e}");
        }
    }

    /// The `resource` label of this type's metrics.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// Whether the reflector has stopped (its output channel closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ReflectorHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `group/version/resource` (`version/resource` for the core group): the `resource` label.
pub fn resource_label(key: &ResourceKey) -> String {
    if key.group.is_empty() {
        format!("{}/{}", key.version, key.resource)
    } else {
        format!("{}/{}/{}", key.group, key.version, key.resource)
    }
}

/// The list path of a type: `/api/v1/pods`, `/apis/apps/v1/deployments`.
pub fn list_path(key: &ResourceKey) -> String {
    if key.group.is_empty() {
        format!("/api/{}/{}", key.version, key.resource)
    } else {
        format!("/apis/{}/{}/{}", key.group, key.version, key.resource)
    }
}

/// Starts list-watching `key` on the edge API server (on the current tokio runtime), emitting
/// into `out` (bounded: when it is full, the reflector stops reading the API server). The
/// reflector ends when `out` closes or the handle is dropped. `cfg` is expected validated
/// ([`ReflectorConfig::validate`]).
pub fn spawn(
    upstream: UpstreamClient,
    key: ResourceKey,
    cfg: ReflectorConfig,
    metrics: Arc<Metrics>,
    out: mpsc::Sender<SyncOut>,
) -> ReflectorHandle {
    let resource = resource_label(&key);
    let (tx, rx) = mpsc::channel(PROGRESS_QUEUE);
    let span = tracing::info_span!("reflector", resource = %resource);
    let reflector = Reflector {
        api: Api {
            upstream,
            path: Arc::from(list_path(&key)),
            timeout: Duration::from_millis(cfg.request_timeout_ms),
        },
        m: TypeMetrics::new(metrics, resource.clone()),
        cfg,
        out,
        requests: rx,
        kept: HashMap::new(),
        kept_bytes: 0,
        epoch: 0,
        rv: String::new(),
        rv_n: None,
        synced: false,
        listing: false,
        attempt: 0,
        round: None,
    };
    let task = tokio::spawn(reflector.run().instrument(span));
    ReflectorHandle {
        requests: tx,
        task,
        resource,
    }
}

// ---------------------------------------------------------------------------------------------
// The API server, as the reflector calls it.

#[derive(Clone)]
struct Api {
    upstream: UpstreamClient,
    path: Arc<str>,
    timeout: Duration,
}

/// One list page, its items ready to forward.
#[derive(Debug)]
struct Page {
    resource_version: String,
    continue_token: Option<String>,
    items: Vec<Item>,
}

#[derive(Debug)]
struct Item {
    key: Key,
    rv: String,
    object: Bytes,
}

/// (namespace, name); namespace `""` for cluster-scoped objects.
type Key = (String, String);

fn empty_body() -> UpBody {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Percent-encodes a query parameter value (everything but RFC 3986's unreserved characters).
fn encode_query_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

impl Api {
    /// GET `path?query`: the answer's head if 200, else its `Status` as an error.
    async fn get(
        &self,
        query: &str,
        op: &str,
    ) -> Result<http::Response<crate::upstream::DownBody>, ReflectorError> {
        let path = format!("{}?{query}", self.path);
        let fields = [(
            Bytes::from_static(b"accept"),
            Bytes::from_static(b"application/json"),
        )];
        let send = self
            .upstream
            .send(b"GET", path.as_bytes(), &fields, empty_body());
        let resp = tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| ReflectorError::Timeout {
                op: op.to_owned(),
                after: self.timeout,
            })?
            .map_err(|msg| ReflectorError::Connect {
                op: op.to_owned(),
                msg,
            })?;
        if resp.status() == http::StatusCode::OK {
            return Ok(resp);
        }
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = tokio::time::timeout(
            self.timeout,
            Limited::new(resp.into_body(), MAX_ERROR_BODY).collect(),
        )
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|c| c.to_bytes())
        .unwrap_or_default();
        Err(status_error(op, code, &body, retry_after))
    }

    /// A whole answer body, within the deadline and `limit`.
    async fn get_body(&self, query: &str, op: &str, limit: usize) -> Result<Bytes, ReflectorError> {
        let fetch = async {
            let resp = self.get(query, op).await?;
            Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map(|c| c.to_bytes())
                .map_err(|e| ReflectorError::Body {
                    op: op.to_owned(),
                    msg: e.to_string(),
                })
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| ReflectorError::Timeout {
                op: op.to_owned(),
                after: self.timeout,
            })?
    }

    /// One page of a consistent list (`limit: None`: unpaginated).
    async fn list_page(
        &self,
        limit: Option<u32>,
        continue_token: Option<&str>,
    ) -> Result<Page, ReflectorError> {
        let mut query = String::new();
        if let Some(n) = limit {
            let _ = write!(query, "limit={n}");
        }
        if let Some(c) = continue_token {
            let _ = write!(query, "&continue={}", encode_query_value(c));
        }
        let op = match (limit, continue_token) {
            (None, _) => format!("list {} (unpaginated)", self.path),
            (Some(_), None) => format!("list {}", self.path),
            (Some(_), Some(_)) => format!("list {} (next page)", self.path),
        };
        let body = self.get_body(&query, &op, MAX_LIST_BODY).await?;
        parse_list(&body).map_err(|msg| ReflectorError::Malformed { op, msg })
    }

    /// The edge's current version: a consistent `limit=1` list.
    async fn probe(self) -> Result<u64, ReflectorError> {
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default, rename = "resourceVersion")]
            resource_version: String,
        }
        #[derive(Deserialize)]
        struct Probe {
            metadata: Meta,
        }
        let op = format!("freshness probe {}", self.path);
        let body = self.get_body("limit=1", &op, MAX_LIST_BODY).await?;
        let p: Probe = serde_json::from_slice(&body).map_err(|e| ReflectorError::Malformed {
            op: op.clone(),
            msg: e.to_string(),
        })?;
        parse_rv(&p.metadata.resource_version).ok_or(ReflectorError::ResourceVersion {
            op,
            rv: p.metadata.resource_version,
        })
    }

    /// Starts a watch from `rv`.
    async fn watch(
        &self,
        rv: &str,
        timeout_s: u64,
    ) -> Result<crate::upstream::DownBody, ReflectorError> {
        let query = format!(
            "watch=1&resourceVersion={}&allowWatchBookmarks=true&timeoutSeconds={timeout_s}",
            encode_query_value(rv)
        );
        let op = format!("watch {} from {rv}", self.path);
        Ok(self.get(&query, &op).await?.into_body())
    }
}

/// `d` from now (a year at most: configured values are not trusted to be validated).
fn after(d: Duration) -> Instant {
    Instant::now() + d.min(Duration::from_secs(365 * 24 * 3600))
}

fn parse_rv(rv: &str) -> Option<u64> {
    rv.parse().ok()
}

/// The `Status` of an error answer (or a watch's ERROR event) as an error.
fn status_error(op: &str, code: u16, body: &[u8], retry_after: Option<Duration>) -> ReflectorError {
    #[derive(Deserialize, Default)]
    struct Cause {
        #[serde(default)]
        reason: String,
    }
    #[derive(Deserialize, Default)]
    struct Details {
        #[serde(default)]
        causes: Vec<Cause>,
        #[serde(default, rename = "retryAfterSeconds")]
        retry_after_seconds: Option<u64>,
    }
    #[derive(Deserialize, Default)]
    struct Status {
        #[serde(default)]
        code: u16,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        message: String,
        #[serde(default)]
        details: Option<Details>,
    }
    let s: Status = serde_json::from_slice(body).unwrap_or_default();
    let code = if s.code != 0 { s.code } else { code };
    let details = s.details.unwrap_or_default();
    let too_large = details
        .causes
        .iter()
        .any(|c| c.reason == "ResourceVersionTooLarge")
        || s.message.contains("Too large resource version");
    let message = if s.message.is_empty() {
        String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
    } else {
        s.message
    };
    ReflectorError::Status {
        op: op.to_owned(),
        code,
        reason: s.reason,
        message,
        retry_after: retry_after.or(details.retry_after_seconds.map(Duration::from_secs)),
        too_large,
    }
}

/// What the reflector reads of an object: whether it carries `kind` and `apiVersion`, and its
/// key and version.
#[derive(Deserialize)]
struct Head {
    #[serde(default)]
    kind: Option<IgnoredAny>,
    #[serde(default, rename = "apiVersion")]
    api_version: Option<IgnoredAny>,
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default, rename = "resourceVersion")]
    resource_version: Option<String>,
}

impl Head {
    fn parse(json: &str) -> Result<Head, String> {
        serde_json::from_str(json).map_err(|e| format!("object: {e}"))
    }

    /// Key and version (a change of an object without them cannot be followed).
    fn key_rv(self) -> Result<(Key, String), String> {
        let m = self.metadata.ok_or("object without metadata")?;
        let name = m
            .name
            .filter(|n| !n.is_empty())
            .ok_or("object without a name")?;
        let rv = m
            .resource_version
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("object {name:?} without a resourceVersion"))?;
        Ok(((m.namespace.unwrap_or_default(), name), rv))
    }
}

/// Splits a list body into its items (each its own allocation, with `kind` and `apiVersion`).
fn parse_list(body: &[u8]) -> Result<Page, String> {
    #[derive(Deserialize)]
    struct ListMeta {
        #[serde(default, rename = "resourceVersion")]
        resource_version: String,
        #[serde(default, rename = "continue")]
        continue_token: Option<String>,
    }
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(default)]
        kind: Option<String>,
        #[serde(default, rename = "apiVersion")]
        api_version: Option<String>,
        metadata: ListMeta,
        #[serde(borrow, default)]
        items: Option<Vec<&'a RawValue>>,
    }
    let list: List<'_> = serde_json::from_slice(body).map_err(|e| format!("list: {e}"))?;
    if list.metadata.resource_version.is_empty() {
        return Err("list without metadata.resourceVersion".into());
    }
    // `"kind":"Pod",` and `"apiVersion":"v1",`, JSON-quoted, made when first needed.
    let item_kind = list
        .kind
        .as_deref()
        .and_then(|k| k.strip_suffix("List"))
        .filter(|k| !k.is_empty());
    let mut kind_field: Option<String> = None;
    let mut version_field: Option<String> = None;
    let raw_items = list.items.unwrap_or_default();
    let mut items = Vec::with_capacity(raw_items.len());
    for raw in raw_items {
        let text = raw.get();
        let head = Head::parse(text)?;
        let (needs_kind, needs_version) = (head.kind.is_none(), head.api_version.is_none());
        let (key, rv) = head.key_rv()?;
        let object = if needs_kind || needs_version {
            let mut prefix = String::new();
            if needs_kind {
                let f = match &kind_field {
                    Some(f) => f,
                    None => {
                        let k = item_kind.ok_or_else(|| {
                            format!(
                                "items lack kind and the list's kind {:?} does not name it",
                                list.kind
                            )
                        })?;
                        kind_field.insert(format!("\"kind\":{}", json_string(k)))
                    }
                };
                prefix.push_str(f);
            }
            if needs_version {
                let f = match &version_field {
                    Some(f) => f,
                    None => {
                        let v = list
                            .api_version
                            .as_deref()
                            .filter(|v| !v.is_empty())
                            .ok_or("items lack apiVersion and so does the list")?;
                        version_field.insert(format!("\"apiVersion\":{}", json_string(v)))
                    }
                };
                if !prefix.is_empty() {
                    prefix.push(',');
                }
                prefix.push_str(f);
            }
            splice(text, &prefix)?
        } else {
            Bytes::copy_from_slice(text.as_bytes())
        };
        items.push(Item { key, rv, object });
    }
    Ok(Page {
        resource_version: list.metadata.resource_version,
        continue_token: list.metadata.continue_token.filter(|c| !c.is_empty()),
        items,
    })
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{` + `fields` + `,` + the rest of `object` (no comma for an empty object).
fn splice(object: &str, fields: &str) -> Result<Bytes, String> {
    let rest = object
        .strip_prefix('{')
        .ok_or("a list item is not an object")?;
    let mut out = BytesMut::with_capacity(object.len() + fields.len() + 2);
    out.extend_from_slice(b"{");
    out.extend_from_slice(fields.as_bytes());
    if !rest.trim_start().starts_with('}') {
        out.extend_from_slice(b",");
    }
    out.extend_from_slice(rest.as_bytes());
    Ok(out.freeze())
}

/// Pages of one list: follows `continue`; after an expired token, starts over unpaginated.
struct Pager {
    page_size: u32,
    paged: bool,
    next: Option<String>,
    done: bool,
}

enum PageOr {
    Page(Page),
    /// The continue token expired: the list starts over (unpaginated); discard what it gave.
    Restart,
}

impl Pager {
    fn new(page_size: u32) -> Pager {
        Pager {
            page_size,
            paged: true,
            next: None,
            done: false,
        }
    }

    async fn next(&mut self, api: &Api) -> Result<PageOr, ReflectorError> {
        let limit = self.paged.then_some(self.page_size);
        match api.list_page(limit, self.next.as_deref()).await {
            Ok(page) => {
                self.next = page.continue_token.clone().filter(|_| self.paged);
                self.done = self.next.is_none();
                Ok(PageOr::Page(page))
            }
            Err(e) if e.is_gone() && self.next.is_some() => {
                info!("the list's continue token expired ({e}); listing again without pages");
                self.paged = false;
                self.next = None;
                Ok(PageOr::Restart)
            }
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics of one type (cached handles; gauges are this reflector's share, removed when it
// ends, so two tunnels syncing the same type add up).

struct TypeMetrics {
    metrics: Arc<Metrics>,
    resource: String,
    received: Counter,
    events: [Counter; 4],
    objects: Gauge,
    object_bytes: Gauge,
    blocked: Gauge,
    my_objects: i64,
    my_bytes: i64,
    my_blocked: i64,
}

impl TypeMetrics {
    fn new(metrics: Arc<Metrics>, resource: String) -> TypeMetrics {
        let s = &metrics.sync;
        let tl = SyncTypeLabel {
            resource: resource.clone(),
        };
        let ev = |event| {
            s.events
                .get_or_create(&SyncEventLabel {
                    resource: resource.clone(),
                    event,
                })
                .clone()
        };
        let received = s.received.get_or_create(&tl).clone();
        let events = [ev("added"), ev("modified"), ev("deleted"), ev("bookmark")];
        let objects = s.objects.get_or_create(&tl).clone();
        let object_bytes = s.object_bytes.get_or_create(&tl).clone();
        let blocked = s.blocked.get_or_create(&tl).clone();
        TypeMetrics {
            received,
            events,
            objects,
            object_bytes,
            blocked,
            my_objects: 0,
            my_bytes: 0,
            my_blocked: 0,
            resource,
            metrics,
        }
    }

    fn reason(&self, reason: &'static str) -> SyncReasonLabel {
        SyncReasonLabel {
            resource: self.resource.clone(),
            reason,
        }
    }

    fn relist(&self, reason: &'static str) {
        self.metrics
            .sync
            .relists
            .get_or_create(&self.reason(reason))
            .inc();
    }

    fn watch_restart(&self, reason: &'static str) {
        self.metrics
            .sync
            .watch_restarts
            .get_or_create(&self.reason(reason))
            .inc();
    }

    fn failure(&self, reason: &'static str) {
        self.metrics
            .sync
            .failures
            .get_or_create(&self.reason(reason))
            .inc();
    }

    fn progress(&self, outcome: &'static str, n: usize) {
        self.metrics
            .sync
            .progress
            .get_or_create(&SyncOutcomeLabel {
                resource: self.resource.clone(),
                outcome,
            })
            .inc_by(n as u64);
    }

    fn event(&self, kind: EventType) {
        self.events[kind as usize].inc();
    }

    fn kept(&mut self, objects: usize, bytes: usize) {
        let (o, b) = (objects as i64, bytes as i64);
        self.objects.inc_by(o - self.my_objects);
        self.object_bytes.inc_by(b - self.my_bytes);
        (self.my_objects, self.my_bytes) = (o, b);
    }

    fn set_blocked(&mut self, on: bool) {
        let v = i64::from(on);
        self.blocked.inc_by(v - self.my_blocked);
        self.my_blocked = v;
    }
}

impl Drop for TypeMetrics {
    fn drop(&mut self) {
        self.kept(0, 0);
        self.set_blocked(false);
    }
}

// ---------------------------------------------------------------------------------------------
// The reflector.

struct Kept {
    rv: String,
    object: Bytes,
    /// The list (epoch) that last saw it.
    mark: u32,
}

type ProbeFuture = Pin<Box<dyn Future<Output = Result<u64, ReflectorError>> + Send>>;

/// The freshness confirmation in progress.
enum Round {
    /// The probe is out; `seqs` arrived before it was sent.
    Probing { seqs: Vec<u32>, probe: ProbeFuture },
    /// The edge is at `target`; waiting for the watch to get there until `deadline` (`None`:
    /// until the snapshot in progress ends), which each event of the type pushes back by the
    /// quiet period, never past `cap` (the probe's answer plus the grace).
    Waiting {
        seqs: Vec<u32>,
        target: u64,
        deadline: Option<Instant>,
        cap: Instant,
    },
}

/// What happened on the freshness side.
enum Progress {
    Request(u32),
    Probed(Result<u64, ReflectorError>),
    GraceOver,
}

/// Waits for the next freshness step (cancel-safe: the probe lives in `round`).
async fn next_progress(round: &mut Option<Round>, requests: &mut mpsc::Receiver<u32>) -> Progress {
    match round {
        None => match requests.recv().await {
            Some(seq) => Progress::Request(seq),
            None => std::future::pending().await,
        },
        Some(Round::Probing { probe, .. }) => Progress::Probed(probe.await),
        Some(Round::Waiting {
            deadline: Some(d), ..
        }) => {
            tokio::time::sleep_until(*d).await;
            Progress::GraceOver
        }
        Some(Round::Waiting { deadline: None, .. }) => std::future::pending().await,
    }
}

/// How a watch ended without an error.
enum WatchEnd {
    /// The API server ended it (its timeout): `events` lines had arrived.
    Closed { events: u64 },
    /// Nothing for longer than the watch's timeout plus the request timeout.
    Stalled,
}

struct Reflector {
    api: Api,
    cfg: ReflectorConfig,
    m: TypeMetrics,
    out: mpsc::Sender<SyncOut>,
    requests: mpsc::Receiver<u32>,
    /// What the hub holds (once `synced`): key → version and object.
    kept: HashMap<Key, Kept>,
    kept_bytes: usize,
    epoch: u32,
    /// The version of everything emitted so far.
    rv: String,
    /// It as a number (`None`: not one, or nothing yet).
    rv_n: Option<u64>,
    /// A snapshot completed and `kept` is what the hub holds.
    synced: bool,
    /// A snapshot is being emitted.
    listing: bool,
    /// Consecutive failures (the backoff's exponent).
    attempt: u32,
    round: Option<Round>,
}

impl Reflector {
    async fn run(mut self) {
        let mut reason = "initial";
        loop {
            match self.relist(reason).await {
                Ok(()) => {}
                Err(ReflectorError::Closed) => break,
                Err(e) => {
                    if self.backoff(&e).await.is_err() {
                        break;
                    }
                    continue;
                }
            }
            match self.watch_until_relist().await {
                Ok(r) => reason = r,
                Err(_) => break,
            }
        }
        debug!("output closed; reflector stops");
    }

    /// Emits one output, waiting for room (backpressure).
    async fn emit(&mut self, item: SyncOut) -> Result<(), ReflectorError> {
        let permit = match self.out.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => {
                self.m.set_blocked(true);
                let p = self.out.reserve().await;
                self.m.set_blocked(false);
                p.map_err(|_| ReflectorError::Closed)?
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(ReflectorError::Closed),
        };
        permit.send(item);
        Ok(())
    }

    /// Sleeps the backoff for `e` (answering freshness requests meanwhile).
    async fn backoff(&mut self, e: &ReflectorError) -> Result<(), ReflectorError> {
        self.m.failure(e.metric_reason());
        let max = Duration::from_millis(self.cfg.backoff_max_ms);
        let mut delay = crate::backoff(
            self.attempt,
            Duration::from_millis(self.cfg.backoff_initial_ms),
            max,
            &mut rand::rng(),
        );
        if let Some(ra) = e.retry_after() {
            delay = delay.max(ra.min(max));
        }
        self.attempt = self.attempt.saturating_add(1);
        warn!(attempt = self.attempt, "{e}; retrying in {delay:?}");
        let until = after(delay);
        self.serving(tokio::time::sleep_until(until)).await
    }

    /// Runs `fut` while answering freshness requests.
    async fn serving<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, ReflectorError> {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                biased;
                p = next_progress(&mut self.round, &mut self.requests) => self.on_progress(p).await?,
                v = &mut fut => return Ok(v),
                _ = self.out.closed() => return Err(ReflectorError::Closed),
            }
        }
    }

    // -- snapshots --------------------------------------------------------------------------

    /// A new snapshot: Begin, Items…, End.
    async fn relist(&mut self, reason: &'static str) -> Result<(), ReflectorError> {
        info!(reason, "listing (a new snapshot for the hub)");
        self.m.relist(reason);
        self.synced = false;
        self.listing = true;
        let r = self.snapshot().await;
        self.listing = false;
        if r.is_err() {
            // A round waiting for the snapshot's end is decided now ("" while unsynced).
            if let Some(Round::Waiting { deadline, .. }) = &mut self.round {
                deadline.get_or_insert_with(Instant::now);
            }
        }
        r?;
        self.attempt = 0;
        self.synced = true;
        self.advanced().await
    }

    async fn snapshot(&mut self) -> Result<(), ReflectorError> {
        let api = self.api.clone();
        let mut pager = Pager::new(self.cfg.page_size);
        'attempt: loop {
            self.epoch = self.epoch.wrapping_add(1);
            self.emit(SyncOut::Begin).await?;
            loop {
                let page = match self.serving(pager.next(&api)).await?? {
                    PageOr::Page(p) => p,
                    PageOr::Restart => continue 'attempt,
                };
                let mut batch = Vec::new();
                let mut size = 0usize;
                for item in page.items {
                    let len = item.object.len();
                    if !batch.is_empty() && size + len > self.cfg.batch_bytes {
                        self.emit(SyncOut::Items(std::mem::take(&mut batch)))
                            .await?;
                        size = 0;
                    }
                    size += len;
                    batch.push(item.object.clone());
                    self.keep(item.key, item.rv, item.object);
                }
                if !batch.is_empty() {
                    self.emit(SyncOut::Items(batch)).await?;
                }
                if pager.done {
                    let epoch = self.epoch;
                    let before = self.kept.len();
                    let mut freed = 0;
                    self.kept.retain(|_, k| {
                        let keep = k.mark == epoch;
                        if !keep {
                            freed += k.object.len();
                        }
                        keep
                    });
                    self.kept_bytes -= freed;
                    debug!(
                        objects = self.kept.len(),
                        dropped = before - self.kept.len(),
                        "snapshot complete at {}",
                        page.resource_version
                    );
                    self.m.kept(self.kept.len(), self.kept_bytes);
                    self.set_rv(page.resource_version.clone(), "list");
                    self.emit(SyncOut::End {
                        resource_version: page.resource_version,
                    })
                    .await?;
                    return Ok(());
                }
            }
        }
    }

    fn keep(&mut self, key: Key, rv: String, object: Bytes) {
        self.kept_bytes += object.len();
        let mark = self.epoch;
        if let Some(old) = self.kept.insert(key, Kept { rv, object, mark }) {
            self.kept_bytes -= old.object.len();
        }
    }

    fn set_rv(&mut self, rv: String, what: &str) {
        self.rv_n = parse_rv(&rv);
        if self.rv_n.is_none() {
            warn!("the {what}'s resourceVersion {rv:?} is not a number: freshness cannot be confirmed until one is");
        }
        self.rv = rv;
    }

    // -- watching ---------------------------------------------------------------------------

    /// Watches (again and again) until a new snapshot is needed; returns why.
    async fn watch_until_relist(&mut self) -> Result<&'static str, ReflectorError> {
        loop {
            let started = Instant::now();
            match self.watch_once().await {
                Ok(WatchEnd::Closed { events }) => {
                    self.m.watch_restart("closed");
                    if events == 0 && started.elapsed() < MIN_HEALTHY_WATCH {
                        let e = ReflectorError::Body {
                            op: format!("watch {} from {}", self.api.path, self.rv),
                            msg: "ended at once".into(),
                        };
                        self.backoff(&e).await?;
                    } else {
                        debug!(events, "watch ended; watching again from {}", self.rv);
                        self.attempt = 0;
                    }
                }
                Ok(WatchEnd::Stalled) => {
                    self.m.watch_restart("stalled");
                    info!(
                        "watch silent past its timeout; watching again from {}",
                        self.rv
                    );
                }
                Err(ReflectorError::Closed) => return Err(ReflectorError::Closed),
                Err(e) if e.is_gone() => {
                    info!("{e}: listing again");
                    return Ok("expired");
                }
                Err(e) if e.is_too_large() => {
                    self.m.failure("too_large");
                    info!("{e}: the API server is behind this version; listing again");
                    return Ok("too_large");
                }
                Err(e) => {
                    self.m.watch_restart("error");
                    self.backoff(&e).await?;
                }
            }
        }
    }

    /// One watch from the current version.
    async fn watch_once(&mut self) -> Result<WatchEnd, ReflectorError> {
        let (lo, hi) = (self.cfg.watch_timeout_min_s, self.cfg.watch_timeout_max_s);
        let timeout_s = rand::rng().random_range(lo..=hi.max(lo));
        let api = self.api.clone();
        let rv = self.rv.clone();
        let mut body = self.serving(api.watch(&rv, timeout_s)).await??;
        let deadline = after(Duration::from_secs(timeout_s).saturating_add(self.api.timeout));
        let mut buf = BytesMut::new();
        let mut scanned = 0usize;
        let mut events = 0u64;
        loop {
            tokio::select! {
                biased;
                p = next_progress(&mut self.round, &mut self.requests) => self.on_progress(p).await?,
                frame = body.frame() => {
                    let data = match frame {
                        None => return Ok(WatchEnd::Closed { events }),
                        Some(Err(e)) => {
                            return Err(ReflectorError::Body {
                                op: format!("watch {} from {rv}", self.api.path),
                                msg: e.to_string(),
                            })
                        }
                        Some(Ok(f)) => match f.into_data() {
                            Ok(d) => d,
                            Err(_) => continue, // trailers
                        },
                    };
                    buf.extend_from_slice(&data);
                    while let Some(i) = buf[scanned..].iter().position(|&b| b == b'\n') {
                        let line = buf.split_to(scanned + i + 1);
                        scanned = 0;
                        events += 1;
                        self.on_line(&line).await?;
                    }
                    scanned = buf.len();
                    if buf.len() > MAX_LINE {
                        return Err(ReflectorError::Malformed {
                            op: format!("watch {} from {rv}", self.api.path),
                            msg: format!("an event longer than {MAX_LINE} bytes"),
                        });
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return Ok(WatchEnd::Stalled),
                _ = self.out.closed() => return Err(ReflectorError::Closed),
            }
        }
    }

    /// One watch event line.
    async fn on_line(&mut self, line: &[u8]) -> Result<(), ReflectorError> {
        #[derive(Deserialize)]
        struct Line<'a> {
            #[serde(rename = "type")]
            kind: String,
            #[serde(borrow)]
            object: &'a RawValue,
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let path = self.api.path.clone();
        let malformed = |msg: String| ReflectorError::Malformed {
            op: format!("watch {path}"),
            msg,
        };
        let ev: Line<'_> =
            serde_json::from_slice(line).map_err(|e| malformed(format!("event: {e}")))?;
        let kind = match ev.kind.as_str() {
            "ADDED" => EventType::Added,
            "MODIFIED" => EventType::Modified,
            "DELETED" => EventType::Deleted,
            "BOOKMARK" => EventType::Bookmark,
            "ERROR" => {
                let op = format!("watch {} from {}", self.api.path, self.rv);
                return Err(status_error(&op, 500, ev.object.get().as_bytes(), None));
            }
            other => {
                warn!("watch event of unknown type {other:?} ignored");
                return Ok(());
            }
        };
        self.m.received.inc();
        let text = ev.object.get();
        let head = Head::parse(text).map_err(&malformed)?;
        let (key, rv) = if kind == EventType::Bookmark {
            let rv = head
                .metadata
                .and_then(|m| m.resource_version)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| malformed("a bookmark without a resourceVersion".into()))?;
            (None, rv)
        } else {
            let (key, rv) = head.key_rv().map_err(&malformed)?;
            (Some(key), rv)
        };
        let n = parse_rv(&rv);
        if let (Some(cur), Some(n)) = (self.rv_n, n) {
            if n <= cur {
                debug!(rv, "event at or below {cur} skipped (already sent)");
                return Ok(());
            }
        }
        let object = Bytes::copy_from_slice(text.as_bytes());
        self.emit(SyncOut::Event {
            kind,
            resource_version: rv.clone(),
            object: object.clone(),
        })
        .await?;
        self.m.event(kind);
        match (kind, key) {
            (EventType::Deleted, Some(key)) => {
                if let Some(old) = self.kept.remove(&key) {
                    self.kept_bytes -= old.object.len();
                }
            }
            (_, Some(key)) => self.keep(key, rv.clone(), object),
            (_, None) => {}
        }
        self.m.kept(self.kept.len(), self.kept_bytes);
        self.set_rv(rv, "watch event");
        self.advanced().await
    }

    // -- freshness --------------------------------------------------------------------------

    /// Starts a round for the requests queued, if any.
    fn start_round(&mut self) {
        let mut seqs = Vec::new();
        while let Ok(s) = self.requests.try_recv() {
            seqs.push(s);
        }
        if !seqs.is_empty() {
            self.probe(seqs);
        }
    }

    fn probe(&mut self, seqs: Vec<u32>) {
        debug!(?seqs, "freshness probe");
        self.round = Some(Round::Probing {
            seqs,
            probe: Box::pin(self.api.clone().probe()),
        });
    }

    async fn answer(
        &mut self,
        seqs: Vec<u32>,
        rv: String,
        outcome: &'static str,
    ) -> Result<(), ReflectorError> {
        debug!(?seqs, rv, outcome, "freshness answered");
        self.m.progress(outcome, seqs.len());
        for seq in seqs {
            self.emit(SyncOut::Progress {
                seq,
                resource_version: rv.clone(),
            })
            .await?;
        }
        self.start_round();
        Ok(())
    }

    async fn on_progress(&mut self, p: Progress) -> Result<(), ReflectorError> {
        match p {
            Progress::Request(seq) => {
                let mut seqs = vec![seq];
                while let Ok(s) = self.requests.try_recv() {
                    seqs.push(s);
                }
                self.probe(seqs);
                Ok(())
            }
            Progress::Probed(r) => {
                let Some(Round::Probing { seqs, .. }) = self.round.take() else {
                    return Ok(());
                };
                match r {
                    Err(e) => {
                        warn!("cannot confirm freshness: {e}");
                        self.answer(seqs, String::new(), "failed").await
                    }
                    Ok(target) if self.synced && self.rv_n.is_some_and(|n| n >= target) => {
                        let rv = self.rv.clone();
                        self.answer(seqs, rv, "immediate").await
                    }
                    Ok(target) => {
                        let cap = after(Duration::from_millis(self.cfg.progress_grace_ms));
                        let quiet = after(Duration::from_millis(self.cfg.progress_quiet_ms));
                        self.round = Some(Round::Waiting {
                            seqs,
                            target,
                            deadline: (!self.listing).then_some(quiet.min(cap)),
                            cap,
                        });
                        Ok(())
                    }
                }
            }
            Progress::GraceOver => {
                let Some(Round::Waiting {
                    seqs, target, cap, ..
                }) = self.round.take()
                else {
                    return Ok(());
                };
                if self.listing {
                    // Decided when the snapshot ends.
                    self.round = Some(Round::Waiting {
                        seqs,
                        target,
                        deadline: None,
                        cap,
                    });
                    return Ok(());
                }
                if !self.synced {
                    warn!("cannot confirm freshness: no snapshot (the API server is failing)");
                    return self.answer(seqs, String::new(), "failed").await;
                }
                if self.rv_n.is_none() {
                    warn!(
                        "cannot confirm freshness: resourceVersion {:?} is not a number",
                        self.rv
                    );
                    return self.answer(seqs, String::new(), "failed").await;
                }
                self.confirm_by_list(seqs, target).await
            }
        }
    }

    /// After the version advanced: answers a round waiting for it.
    async fn advanced(&mut self) -> Result<(), ReflectorError> {
        let Some(Round::Waiting {
            target,
            deadline,
            cap,
            ..
        }) = &mut self.round
        else {
            return Ok(());
        };
        if self.synced && self.rv_n.is_some_and(|n| n >= *target) {
            if let Some(Round::Waiting { seqs, .. }) = self.round.take() {
                let rv = self.rv.clone();
                return self.answer(seqs, rv, "watch").await;
            }
        } else if !self.listing {
            *deadline = Some(match deadline {
                // The snapshot that held the round ended: decide now.
                None => Instant::now(),
                // The type's watch is moving: another quiet period to get there.
                Some(_) => after(Duration::from_millis(self.cfg.progress_quiet_ms)).min(*cap),
            });
        }
        Ok(())
    }

    /// Confirms freshness with a consistent list compared with what the hub holds.
    async fn confirm_by_list(&mut self, seqs: Vec<u32>, target: u64) -> Result<(), ReflectorError> {
        match self.diff_relist().await {
            Ok(n) if n >= target => {
                let rv = self.rv.clone();
                self.answer(seqs, rv, "list").await
            }
            Ok(n) => {
                warn!("cannot confirm freshness: the list is at {n}, behind the probe's {target}");
                self.answer(seqs, String::new(), "failed").await
            }
            Err(ReflectorError::Closed) => Err(ReflectorError::Closed),
            Err(e) => {
                self.m.failure(e.metric_reason());
                warn!("cannot confirm freshness: {e}");
                self.answer(seqs, String::new(), "failed").await
            }
        }
    }

    /// Lists, sends the hub the differences from `kept`, and moves the version to the list's.
    /// Returns the list's version. On error nothing was emitted.
    ///
    /// Creations and changes go as events, in version order, each at its object's own version
    /// (one write per version: they never share one). Deletions have no version of their own
    /// (the list only shows the objects are gone), so they would all share the list's: several
    /// changes at one version, which a reader could see half applied. So when the list finds
    /// any deletion, the whole list goes as a snapshot instead (Begin, Items, End at the list's
    /// version), which the hub applies in one step and records as the difference.
    async fn diff_relist(&mut self) -> Result<u64, ReflectorError> {
        let api = self.api.clone();
        let mut pager = Pager::new(self.cfg.page_size);
        let mut changes: Vec<(u64, EventType, Item)> = Vec::new();
        let mut listed: Vec<Item> = Vec::new();
        let list_rv = 'attempt: loop {
            self.epoch = self.epoch.wrapping_add(1);
            let epoch = self.epoch;
            changes.clear();
            listed.clear();
            loop {
                let page = match pager.next(&api).await? {
                    PageOr::Page(p) => p,
                    PageOr::Restart => continue 'attempt,
                };
                for item in page.items {
                    listed.push(Item {
                        key: item.key.clone(),
                        rv: item.rv.clone(),
                        object: item.object.clone(),
                    });
                    let kind = match self.kept.get_mut(&item.key) {
                        Some(k) => {
                            k.mark = epoch;
                            if k.rv == item.rv {
                                continue;
                            }
                            EventType::Modified
                        }
                        None => EventType::Added,
                    };
                    let n = parse_rv(&item.rv).ok_or_else(|| ReflectorError::ResourceVersion {
                        op: format!("confirming list {}", api.path),
                        rv: item.rv.clone(),
                    })?;
                    changes.push((n, kind, item));
                }
                if pager.done {
                    break 'attempt page.resource_version;
                }
            }
        };
        let op = || format!("confirming list {}", api.path);
        let list_n = parse_rv(&list_rv).ok_or_else(|| ReflectorError::ResourceVersion {
            op: op(),
            rv: list_rv.clone(),
        })?;
        let epoch = self.epoch;
        let deleted = self.kept.values().filter(|k| k.mark != epoch).count();
        if deleted > 0 {
            info!(
                deleted,
                changed = changes.len(),
                "the confirming list at {list_rv} found deletions the watch had not delivered yet: sending it as a snapshot"
            );
            self.emit(SyncOut::Begin).await?;
            let mut batch = Vec::new();
            let mut size = 0usize;
            for item in &listed {
                if !batch.is_empty() && size + item.object.len() > self.cfg.batch_bytes {
                    self.emit(SyncOut::Items(std::mem::take(&mut batch)))
                        .await?;
                    size = 0;
                }
                size += item.object.len();
                batch.push(item.object.clone());
            }
            if !batch.is_empty() {
                self.emit(SyncOut::Items(batch)).await?;
            }
            self.emit(SyncOut::End {
                resource_version: list_rv.clone(),
            })
            .await?;
            self.m.relist("confirming");
            self.kept.retain(|_, k| k.mark == epoch);
            self.kept_bytes = self.kept.values().map(|k| k.object.len()).sum();
            for item in listed {
                self.keep(item.key, item.rv, item.object);
            }
        } else {
            changes.sort_by(|a, b| (a.0, &a.2.key).cmp(&(b.0, &b.2.key)));
            if !changes.is_empty() {
                info!(
                    changes = changes.len(),
                    "the confirming list at {list_rv} found changes the watch had not delivered yet"
                );
            }
            for (_, kind, item) in changes {
                self.emit(SyncOut::Event {
                    kind,
                    resource_version: item.rv.clone(),
                    object: item.object.clone(),
                })
                .await?;
                self.m.event(kind);
                self.keep(item.key, item.rv, item.object);
            }
        }
        self.m.kept(self.kept.len(), self.kept_bytes);
        if self.rv_n.is_none_or(|cur| list_n >= cur) {
            self.rv = list_rv;
            self.rv_n = Some(list_n);
        }
        Ok(list_n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn list_items_get_kind_and_api_version() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"42","continue":"abc"},
            "items":[{"metadata":{"name":"a","namespace":"ns","resourceVersion":"40"},"spec":{}},
                     {"kind":"Pod","apiVersion":"v1","metadata":{"name":"b","namespace":"ns","resourceVersion":"41"}}]}"#;
        let page = parse_list(body).unwrap();
        assert_eq!(page.resource_version, "42");
        assert_eq!(page.continue_token.as_deref(), Some("abc"));
        assert_eq!(page.items.len(), 2);
        assert_eq!(
            &page.items[0].object[..],
            br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"a","namespace":"ns","resourceVersion":"40"},"spec":{}}"#
        );
        assert_eq!(page.items[0].key, ("ns".into(), "a".into()));
        assert_eq!(page.items[0].rv, "40");
        // Already complete: the bytes as they were.
        assert_eq!(
            &page.items[1].object[..],
            br#"{"kind":"Pod","apiVersion":"v1","metadata":{"name":"b","namespace":"ns","resourceVersion":"41"}}"#
        );
        for item in &page.items {
            let v: serde_json::Value = serde_json::from_slice(&item.object).unwrap();
            assert_eq!(v["kind"], "Pod");
            assert_eq!(v["apiVersion"], "v1");
        }
    }

    #[test]
    fn splice_keeps_json_valid() {
        let b = splice("{}", "\"kind\":\"X\"").unwrap();
        assert_eq!(&b[..], br#"{"kind":"X"}"#);
        let b = splice("{ }", "\"kind\":\"X\"").unwrap();
        assert_eq!(&b[..], br#"{"kind":"X" }"#);
        assert!(splice("[]", "\"kind\":\"X\"").is_err());
        // Only the missing field, from a group's list; names JSON-quoted.
        let body = br#"{"kind":"DeploymentList","apiVersion":"apps/v1","metadata":{"resourceVersion":"7"},
            "items":[{"kind":"Deployment","metadata":{"name":"d","namespace":"n","resourceVersion":"5"}}]}"#;
        let page = parse_list(body).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&page.items[0].object).unwrap();
        assert_eq!(v["apiVersion"], "apps/v1");
        assert_eq!(v["kind"], "Deployment");
        assert!(page.continue_token.is_none());
    }

    #[test]
    fn malformed_lists_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"{}",
            b"[1]",
            br#"{"metadata":{}}"#,
            br#"{"metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"a","resourceVersion":"1"}}]}"#,
            br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"resourceVersion":"1"}}]}"#,
            br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[1]}"#,
        ] {
            assert!(parse_list(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
        let empty =
            parse_list(br#"{"kind":"PodList","metadata":{"resourceVersion":"9"},"items":null}"#)
                .unwrap();
        assert!(empty.items.is_empty());
    }

    #[test]
    fn status_errors_are_classified() {
        let gone = status_error(
            "w",
            200,
            br#"{"kind":"Status","code":410,"reason":"Expired","message":"too old resource version: 1 (5)"}"#,
            None,
        );
        assert!(gone.is_gone() && !gone.is_too_large());
        let big = status_error(
            "w",
            504,
            br#"{"code":504,"reason":"Timeout","message":"Too large resource version: 9, current: 3","details":{"causes":[{"reason":"ResourceVersionTooLarge"}],"retryAfterSeconds":1}}"#,
            None,
        );
        assert!(big.is_too_large());
        assert_eq!(big.retry_after(), Some(Duration::from_secs(1)));
        let junk = status_error("w", 503, b"<html>", Some(Duration::from_secs(2)));
        assert_eq!(junk.metric_reason(), "http_5xx");
        assert_eq!(junk.retry_after(), Some(Duration::from_secs(2)));
        assert!(junk.to_string().contains("<html>"));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode_query_value("eyJ2Ijo+/="), "eyJ2Ijo%2B%2F%3D");
        assert_eq!(encode_query_value("123"), "123");
    }

    #[test]
    fn paths_and_labels() {
        let core = ResourceKey {
            group: String::new(),
            version: "v1".into(),
            resource: "pods".into(),
        };
        let apps = ResourceKey {
            group: "apps".into(),
            version: "v1".into(),
            resource: "deployments".into(),
        };
        assert_eq!(list_path(&core), "/api/v1/pods");
        assert_eq!(list_path(&apps), "/apis/apps/v1/deployments");
        assert_eq!(resource_label(&core), "v1/pods");
        assert_eq!(resource_label(&apps), "apps/v1/deployments");
    }
}
