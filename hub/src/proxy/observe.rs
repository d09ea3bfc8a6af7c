//! `observe`: the last phase of every request — one [`Record`] per request, filled in as the
//! request goes (who, which cluster, what, how much, the answer's code, who served it), and
//! [`Record::finish`]ed when it ends. One observation feeds three consumers:
//!
//! * the Prometheus metrics (per tenant, verb, resource, code, served-by; per cluster; per
//!   client kind; per source; bytes; watches; rejections: bounds in `crate::metrics`),
//! * the live traffic summary (`crate::traffic`, `/traffic` on the admin listener),
//! * the audit log (`kubehub-audit`): one `audit.k8s.io/v1` Event at `ResponseComplete`, and
//!   one at `ResponseStarted` as well for watches and exec/attach/port-forward sessions, at
//!   the level the `[audit]` policy gives the request.
//!
//! Every answer carries the request's `Audit-ID` (the client's own, if it sent one, else a new
//! UUID), and forwarded requests carry it to the edge so the edge's audit log names the same
//! id. The record lives on the request handler's stack (`Cell`s: one core, no locks). When
//! the request is identified, the core's handles of its series are found by borrowed names
//! (tenant; resource label; cluster) and kept in the record, so finishing hashes no label
//! strings, allocates nothing once the series exist, and costs a few atomic adds, the core's
//! own traffic shard and, with auditing on, one event queued to the writer thread. The
//! target is cloned into the record only when an audit event will name it.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use kubehub_access::Identity;
use kubehub_audit::event::{audit_id_of, BodyOf};
use kubehub_audit::policy::Subject;
use kubehub_audit::{Event, Level, ObjectRef, Policy, Sink, Stage, UserInfo};
use kubehub_kapi::request_info::RequestInfo;
use prometheus_client::metrics::counter::Counter;

use super::resolve::Target;
use crate::http::RequestHead;
use crate::metrics::{
    ClientLabel, ClusterLabel, Metrics, SourceLabel, TenantDirectionLabel, TenantLabel,
    TenantRequestLabel,
};
use crate::traffic::{Sample, Traffic};

/// Who answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedBy {
    /// The hub itself (a refusal, a review it decided, an error before forwarding).
    Hub,
    /// The cluster's cache on this hub.
    Cache,
    /// The cluster's tunnel (its agent and edge API server).
    Forward,
    /// Another hub holding the cluster's tunnel.
    Peer,
}

impl ServedBy {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedBy::Hub => "hub",
            ServedBy::Cache => "cache",
            ServedBy::Forward => "forward",
            ServedBy::Peer => "peer",
        }
    }
}

/// The family of a client, from its `User-Agent`: few values whatever clients send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKind {
    /// `kubectl/v1.<minor>…` (minor below 100).
    Kubectl(u8),
    /// `kubectl` of another version form.
    KubectlOther,
    /// A client-go program (`name/version (os/arch) kubernetes/commit`).
    ClientGo,
    /// kube-rs (`kube-rs/…`, or no `User-Agent`, which kube-rs sends by default).
    KubeRs,
    /// The Python client (`OpenAPI-Generator/…/python`, `python-requests/…`).
    Python,
    /// Go's default (`Go-http-client/…`).
    Go,
    /// curl.
    Curl,
    /// A browser.
    Browser,
    /// Anything else.
    Other,
}

impl ClientKind {
    /// Reads a `User-Agent` value.
    pub fn of(ua: Option<&[u8]>) -> ClientKind {
        let Some(ua) = ua else {
            return ClientKind::KubeRs;
        };
        let lower = |p: &[u8]| ua.len() >= p.len() && ua[..p.len()].eq_ignore_ascii_case(p);
        let contains = |p: &[u8]| ua.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p));
        if lower(b"kubectl") {
            // kubectl/v1.32.4 (linux/amd64) kubernetes/...
            if let Some(rest) = ua.strip_prefix(b"kubectl/v1.") {
                let digits: Vec<u8> = rest
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .copied()
                    .collect();
                if (1..=2).contains(&digits.len()) {
                    let minor = digits.iter().fold(0u8, |m, d| m * 10 + (d - b'0'));
                    return ClientKind::Kubectl(minor);
                }
            }
            return ClientKind::KubectlOther;
        }
        if lower(b"kube-rs") || lower(b"kube/") {
            ClientKind::KubeRs
        } else if contains(b"python") {
            ClientKind::Python
        } else if lower(b"go-http-client") {
            ClientKind::Go
        } else if lower(b"curl/") {
            ClientKind::Curl
        } else if lower(b"mozilla/") {
            ClientKind::Browser
        } else if contains(b" kubernetes/") {
            ClientKind::ClientGo
        } else {
            ClientKind::Other
        }
    }

    /// The label value (`kubectl/v1.32`, `client-go`, …).
    pub fn label(self) -> &'static str {
        static KUBECTL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        match self {
            ClientKind::Kubectl(m) => KUBECTL
                .get_or_init(|| (0..100).map(|m| format!("kubectl/v1.{m}")).collect())
                .get(m as usize)
                .map_or("kubectl", String::as_str),
            ClientKind::KubectlOther => "kubectl",
            ClientKind::ClientGo => "client-go",
            ClientKind::KubeRs => "kube-rs",
            ClientKind::Python => "python",
            ClientKind::Go => "go",
            ClientKind::Curl => "curl",
            ClientKind::Browser => "browser",
            ClientKind::Other => "other",
        }
    }
}

/// A set of label values that admits the first `cap` distinct values and maps every later
/// one to `other` (shared by every core).
#[derive(Debug)]
pub struct Bounded {
    seen: DashMap<String, ()>,
    cap: usize,
}

impl Bounded {
    /// A set of at most `cap` values.
    pub fn new(cap: usize) -> Bounded {
        Bounded {
            seen: DashMap::new(),
            cap,
        }
    }

    /// `value` if admitted, else `"other"`.
    pub fn admit<'a>(&self, value: &'a str) -> &'a str {
        if self.seen.contains_key(value) {
            return value;
        }
        if self.seen.len() >= self.cap {
            return "other";
        }
        self.seen.insert(value.to_owned(), ());
        value
    }
}

/// The audit side of the observer.
#[derive(Debug, Clone)]
pub struct Audit {
    /// Where events go.
    pub sink: Sink,
    /// Which level each request gets.
    pub policy: Arc<Policy>,
    /// Largest body logged.
    pub max_body: usize,
}

/// What every request's observation feeds; one per core (its counter handles are the core's).
#[derive(Debug)]
pub struct Observer {
    /// The hub's metrics.
    pub metrics: Arc<Metrics>,
    /// The traffic summary.
    pub traffic: Arc<Traffic>,
    /// This core's shard of [`Observer::traffic`].
    core: usize,
    /// The audit log, when enabled.
    pub audit: Option<Audit>,
    /// This hub's id (`kubehub.io/hub`).
    pub hub: Arc<str>,
    /// Bounded label values shared by every core: resources, clusters, sources.
    pub bounds: Arc<Bounds>,
    /// The hub impersonates users at the edge (hub.toml `impersonate`): events name the
    /// impersonated user.
    pub impersonate: bool,
    tenants: RefCell<HashMap<Box<str>, Rc<TenantSeries>, Fast>>,
    clusters: RefCell<HashMap<Box<str>, Rc<ClusterSeries>, Fast>>,
    sources: RefCell<HashMap<IpAddr, Counter, Fast>>,
    /// Where a composed `resource` label (`group/resource/subresource`) is written to look
    /// it up, so the lookup allocates nothing.
    scratch: RefCell<String>,
}

/// The hasher of the per-core handle maps: foldhash, seeded per process.
type Fast = foldhash::fast::RandomState;

/// A core's handles of one tenant's series, found once per request by the tenant's name:
/// everything `finish` counts for the tenant is then a short scan or a cell, no hashing.
#[derive(Debug)]
struct TenantSeries {
    name: Box<str>,
    resources: RefCell<HashMap<Box<str>, Rc<ResourceSeries>, Fast>>,
    clients: RefCell<Vec<(ClientKind, Counter)>>,
    bytes_in: OnceCell<Counter>,
    bytes_out: OnceCell<Counter>,
}

/// The request counters of one tenant and `resource` label, by verb, code and served-by
/// (a few each: a linear scan).
#[derive(Debug)]
struct ResourceSeries {
    label: Box<str>,
    counters: RefCell<Vec<(&'static str, u16, ServedBy, Counter)>>,
}

/// The request counters of one cluster, by code class.
#[derive(Debug)]
struct ClusterSeries {
    label: Box<str>,
    classes: [OnceCell<Counter>; 5],
}

/// Entries a per-core handle map holds before it starts over (the label values behind it are
/// bounded by [`Bounds`]; this bounds the raw values that map to them).
const COUNTER_CACHE: usize = 4096;

/// `map[key]` (looked up borrowed), made by `make` and entered under `own(key)` when absent;
/// the map starts over when full.
fn cached<K, Q, V>(
    map: &RefCell<HashMap<K, V, Fast>>,
    key: &Q,
    own: impl FnOnce(&Q) -> K,
    make: impl FnOnce() -> V,
) -> V
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
    V: Clone,
{
    if let Some(v) = map.borrow().get(key) {
        return v.clone();
    }
    let mut map = map.borrow_mut();
    if map.len() >= COUNTER_CACHE {
        map.clear();
    }
    let v = make();
    map.insert(own(key), v.clone());
    v
}

/// The bounded label sets (`[metrics]` in hub.toml).
#[derive(Debug)]
pub struct Bounds {
    /// `resource` values.
    pub resources: Bounded,
    /// `cluster` values.
    pub clusters: Bounded,
    /// `source` values.
    pub sources: Bounded,
}

impl Observer {
    /// The observer of one core: `traffic` and the core's index (its shard).
    pub fn new(
        metrics: Arc<Metrics>,
        (traffic, core): (Arc<Traffic>, usize),
        audit: Option<Audit>,
        hub: Arc<str>,
        bounds: Arc<Bounds>,
    ) -> Observer {
        Observer {
            metrics,
            traffic,
            core,
            audit,
            hub,
            bounds,
            impersonate: true,
            tenants: RefCell::default(),
            clusters: RefCell::default(),
            sources: RefCell::default(),
            scratch: RefCell::default(),
        }
    }

    fn tenant(&self, tenant: &str) -> Rc<TenantSeries> {
        cached(
            &self.tenants,
            tenant,
            |k: &str| Box::from(k),
            || {
                Rc::new(TenantSeries {
                    name: tenant.into(),
                    resources: RefCell::default(),
                    clients: RefCell::default(),
                    bytes_in: OnceCell::new(),
                    bytes_out: OnceCell::new(),
                })
            },
        )
    }

    /// The tenant's series of a resource request (`resource`: its label before bounding).
    fn resource(&self, t: &TenantSeries, resource: &str) -> Rc<ResourceSeries> {
        cached(
            &t.resources,
            resource,
            |k: &str| Box::from(k),
            || {
                Rc::new(ResourceSeries {
                    label: self.bounds.resources.admit(resource).into(),
                    counters: RefCell::default(),
                })
            },
        )
    }

    fn cluster(&self, cluster: &str) -> Rc<ClusterSeries> {
        cached(
            &self.clusters,
            cluster,
            |k: &str| Box::from(k),
            || {
                Rc::new(ClusterSeries {
                    label: self.bounds.clusters.admit(cluster).into(),
                    classes: Default::default(),
                })
            },
        )
    }

    fn request_counter(
        &self,
        t: &TenantSeries,
        r: &ResourceSeries,
        verb: &'static str,
        code: u16,
        by: ServedBy,
    ) -> Counter {
        let found = r
            .counters
            .borrow()
            .iter()
            .find(|(v, c, b, _)| *c == code && *b == by && *v == verb)
            .map(|(.., counter)| counter.clone());
        found.unwrap_or_else(|| {
            let label = TenantRequestLabel {
                tenant: t.name.to_string(),
                verb: verb.to_owned(),
                resource: r.label.to_string(),
                code,
                served_by: by.as_str(),
            };
            let c = self.metrics.tenant_requests.get_or_create(&label).clone();
            r.counters.borrow_mut().push((verb, code, by, c.clone()));
            c
        })
    }

    fn cluster_counter(&self, c: &ClusterSeries, class: usize) -> Counter {
        const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        c.classes[class]
            .get_or_init(|| {
                let label = ClusterLabel {
                    cluster: c.label.to_string(),
                    class: CLASSES[class],
                };
                self.metrics.cluster_requests.get_or_create(&label).clone()
            })
            .clone()
    }

    fn client_counter(&self, t: &TenantSeries, client: ClientKind) -> Counter {
        let found = t
            .clients
            .borrow()
            .iter()
            .find(|(k, _)| *k == client)
            .map(|(_, c)| c.clone());
        found.unwrap_or_else(|| {
            let label = ClientLabel {
                tenant: t.name.to_string(),
                client: client.label().to_owned(),
            };
            let c = self.metrics.client_requests.get_or_create(&label).clone();
            t.clients.borrow_mut().push((client, c.clone()));
            c
        })
    }

    fn source_counter(&self, source: IpAddr) -> Counter {
        cached(
            &self.sources,
            &source,
            |s| *s,
            || {
                let text = source.to_string();
                let label = SourceLabel {
                    source: self.bounds.sources.admit(&text).to_owned(),
                };
                self.metrics.source_requests.get_or_create(&label).clone()
            },
        )
    }

    fn bytes_counter(&self, t: &TenantSeries, direction: &'static str) -> Counter {
        let cell = if direction == "in" {
            &t.bytes_in
        } else {
            &t.bytes_out
        };
        cell.get_or_init(|| {
            let label = TenantDirectionLabel {
                tenant: t.name.to_string(),
                direction,
            };
            self.metrics.tenant_bytes.get_or_create(&label).clone()
        })
        .clone()
    }
}

/// Who asked and what, as `finish` counts it: the handles found when the request was
/// identified; the target itself only when an audit event will name it.
#[derive(Debug)]
struct Who {
    identity: Arc<Identity>,
    tenant: Rc<TenantSeries>,
    resource: Rc<ResourceSeries>,
    verb: &'static str,
    cluster: Rc<ClusterSeries>,
    target: Option<Target>,
}

/// One request's observation, filled in along its path.
#[derive(Debug)]
pub struct Record {
    started: Instant,
    /// The request's audit id (sent back as `Audit-ID`).
    pub audit_id: String,
    /// The client's address (or, for a request from another hub, that hub's).
    pub source: IpAddr,
    /// The response code (0 until the head is written).
    pub code: Cell<u16>,
    /// Request body bytes.
    pub bytes_in: Cell<u64>,
    /// Response bytes written (head and body).
    pub bytes_out: Cell<u64>,
    /// Who answered.
    pub served_by: Cell<ServedBy>,
    /// When the response head was written.
    pub head_at: Cell<Option<Instant>>,
    /// Why it was refused (`unauthenticated`, `forbidden`, `not_found`, `limit`, `ban`, …).
    pub rejected: Cell<Option<&'static str>>,
    /// The failure's `Status` message and reason.
    failure: RefCell<Option<(String, String)>>,
    who: RefCell<Option<Who>>,
    /// The audit level the policy gave it (None until known).
    pub level: Cell<Level>,
    watching: Cell<bool>,
    long_running: Cell<bool>,
    started_event: Cell<bool>,
    request_body: RefCell<BytesMut>,
    response_body: RefCell<BytesMut>,
    annotations: RefCell<Vec<(&'static str, String)>>,
    request_uri: Bytes,
    user_agent: Option<Bytes>,
    client: ClientKind,
    via_peer: Option<String>,
}

impl Record {
    /// The record of a request whose head just arrived.
    pub fn new(head: &RequestHead, source: IpAddr, via_peer: Option<&str>) -> Record {
        let user_agent = head
            .fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(b"user-agent"))
            .map(|(_, v)| v.clone());
        Record {
            started: Instant::now(),
            audit_id: audit_id_of(head.header("audit-id")),
            source,
            code: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            served_by: Cell::new(ServedBy::Hub),
            head_at: Cell::new(None),
            rejected: Cell::new(None),
            failure: RefCell::new(None),
            who: RefCell::new(None),
            level: Cell::new(Level::None),
            watching: Cell::new(false),
            long_running: Cell::new(false),
            started_event: Cell::new(false),
            request_body: RefCell::new(BytesMut::new()),
            response_body: RefCell::new(BytesMut::new()),
            annotations: RefCell::new(Vec::new()),
            request_uri: head.target.clone(),
            client: ClientKind::of(user_agent.as_deref()),
            user_agent,
            via_peer: via_peer.map(str::to_owned),
        }
    }

    /// The request was authenticated and resolved: who and what. Decides the audit level,
    /// and finds the request's counter handles (so `finish` hashes no label strings).
    /// `info` is the target's request info (`None`: the path is not a Kubernetes request).
    pub fn identify(
        &self,
        obs: &Observer,
        identity: &Arc<Identity>,
        target: &Target,
        info: Option<&RequestInfo<'_>>,
    ) {
        let tenant = obs.tenant(&identity.tenant);
        let mut verb = "";
        let mut resource = None;
        if let Some(info) = info {
            if let Some(a) = &obs.audit {
                self.level.set(a.policy.level(&Subject {
                    verb: info.verb.as_str(),
                    group: info.api_group,
                    resource: info.resource,
                    subresource: info.subresource,
                    user: &identity.user,
                    namespace: info.namespace,
                }));
            }
            let long = matches!(info.verb, kubehub_kapi::request_info::Verb::Watch)
                || matches!(info.subresource, "exec" | "attach" | "portforward")
                || (info.subresource == "log" && target.path.contains("follow=true"));
            self.long_running.set(long);
            // (A non-resource request with an unusual method counts as "other".)
            verb = info.verb.as_static_str().unwrap_or("other");
            if info.is_resource_request {
                resource = Some(
                    if info.api_group.is_empty() && info.subresource.is_empty() {
                        obs.resource(&tenant, info.resource)
                    } else {
                        let mut label = obs.scratch.borrow_mut();
                        label.clear();
                        if !info.api_group.is_empty() {
                            label.push_str(info.api_group);
                            label.push('/');
                        }
                        label.push_str(info.resource);
                        if !info.subresource.is_empty() {
                            label.push('/');
                            label.push_str(info.subresource);
                        }
                        obs.resource(&tenant, &label)
                    },
                );
            }
        }
        *self.who.borrow_mut() = Some(Who {
            identity: identity.clone(),
            resource: resource.unwrap_or_else(|| obs.resource(&tenant, "")),
            tenant,
            verb,
            cluster: obs.cluster(&target.cluster),
            // Only an audit event names the target itself.
            target: (self.level.get() > Level::None).then(|| target.clone()),
        });
    }

    /// A watch was authorized: counted open until the request ends.
    pub fn watch_opened(&self, obs: &Observer, tenant: &str) {
        self.watching.set(true);
        self.long_running.set(true);
        obs.traffic.watch(obs.core, tenant, 1);
        obs.metrics
            .tenant_watches
            .get_or_create(&TenantLabel {
                tenant: tenant.to_owned(),
            })
            .inc();
    }

    /// The request is refused for `reason` (`unauthenticated`, `forbidden`, `not_found`,
    /// `limit`, `ban`, `overload`): counted once when it ends, in
    /// `kubehub_hub_rejected_total{tenant,reason}` and in `/traffic`'s `rejectedPerSecond`.
    /// (Fair sharing and bans call this on the request's record, `out.rec`.)
    pub fn reject(&self, reason: &'static str) {
        self.rejected.set(Some(reason));
    }

    /// The failure's `Status` (message and reason), for the audit event.
    pub fn failed(&self, message: &str, reason: &str) {
        *self.failure.borrow_mut() = Some((message.to_owned(), reason.to_owned()));
    }

    /// Whether request body bytes are wanted (level Request or above).
    pub fn wants_request_body(&self) -> bool {
        self.level.get() >= Level::Request
    }

    /// Request body bytes passed on (counted; kept for the audit event when its level asks,
    /// up to `max` bytes and one byte more, which marks the body as too large).
    pub fn body_in(&self, data: &[u8], max: usize) {
        self.bytes_in.set(self.bytes_in.get() + data.len() as u64);
        if self.wants_request_body() {
            let mut b = self.request_body.borrow_mut();
            if b.len() <= max {
                let room = max + 1 - b.len();
                b.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }

    /// Response body bytes written (kept for level RequestResponse).
    pub fn body_out(&self, data: &[u8], max: usize) {
        if self.level.get() == Level::RequestResponse && !self.long_running.get() {
            let mut b = self.response_body.borrow_mut();
            if b.len() <= max {
                let room = max + 1 - b.len();
                b.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
    }

    /// An annotation for the audit event (exec sessions: how they ended, exit status, bytes).
    pub fn annotate(&self, key: &'static str, value: String) {
        self.annotations.borrow_mut().push((key, value));
    }

    /// The response head was written with `code`: for a long-running request, the
    /// `ResponseStarted` event.
    pub fn head_written(&self, obs: &Observer, code: u16) {
        self.code.set(code);
        if self.head_at.get().is_none() {
            self.head_at.set(Some(Instant::now()));
        }
        if self.long_running.get() && !self.started_event.get() {
            self.started_event.set(true);
            if let Some(a) = &obs.audit {
                if self.level.get() > Level::None {
                    a.sink.send(self.event(obs, a, Stage::ResponseStarted));
                }
            }
        }
    }

    fn event(&self, obs: &Observer, a: &Audit, stage: Stage) -> Event {
        let level = self.level.get();
        // When the head arrived, on the wall clock (the request path reads only the monotonic
        // one).
        let received = SystemTime::now()
            .checked_sub(self.started.elapsed())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut e = Event::new(level, self.audit_id.clone(), stage, received);
        e.request_uri = String::from_utf8_lossy(&self.request_uri).into_owned();
        e.source_ips = vec![self.source.to_string()];
        if let Some(ua) = &self.user_agent {
            e.user_agent = String::from_utf8_lossy(ua).into_owned();
        }
        let who = self.who.borrow();
        let tenant = who.as_ref().map_or("", |w| w.identity.tenant.as_str());
        if let Some(w) = who.as_ref() {
            let id = &w.identity;
            e.user = UserInfo {
                username: id.user.clone(),
                uid: id.token_id.clone(),
                groups: id.groups.clone(),
                extra: [("kubehub.io/tenant".to_owned(), vec![id.tenant.clone()])]
                    .into_iter()
                    .collect(),
            };
            // What the edge saw: the user (name and groups) when the hub impersonates it;
            // else the agent's own credentials, which the hub does not know.
            if obs.impersonate {
                e.impersonated_user = Some(UserInfo {
                    username: id.user.clone(),
                    groups: id.groups.clone(),
                    ..Default::default()
                });
            }
            if let Some(Ok(info)) = w.target.as_ref().map(Target::info) {
                e.verb = info.verb.as_str().to_owned();
                if info.is_resource_request {
                    e.object_ref = Some(ObjectRef {
                        resource: info.resource.to_owned(),
                        namespace: info.namespace.to_owned(),
                        name: info.name.to_string(),
                        api_group: info.api_group.to_owned(),
                        api_version: info.api_version.to_owned(),
                        subresource: info.subresource.to_owned(),
                    });
                }
            }
            if let Some(target) = &w.target {
                e.annotations
                    .insert("kubehub.io/cluster".into(), target.cluster.clone());
            }
        }
        if e.verb.is_empty() {
            e.verb = "unknown".into();
        }
        e.annotations
            .insert("kubehub.io/tenant".into(), tenant.to_owned());
        e.annotations
            .insert("kubehub.io/hub".into(), obs.hub.to_string());
        e.annotations.insert(
            "kubehub.io/served-by".into(),
            self.served_by.get().as_str().to_owned(),
        );
        if let Some(p) = &self.via_peer {
            e.annotations.insert("kubehub.io/via-hub".into(), p.clone());
        }
        for (k, v) in self.annotations.borrow().iter() {
            e.annotations.insert((*k).to_owned(), v.clone());
        }
        let code = match self.code.get() {
            0 => 499,
            c => c,
        };
        let failure = self.failure.borrow();
        let (message, reason) = failure
            .as_ref()
            .map_or(("", ""), |(m, r)| (m.as_str(), r.as_str()));
        e.respond(code, message, reason);
        if level >= Level::Request {
            e.body(BodyOf::Request, &self.request_body.borrow(), a.max_body);
        }
        if level == Level::RequestResponse && stage == Stage::ResponseComplete {
            e.body(BodyOf::Response, &self.response_body.borrow(), a.max_body);
        }
        e
    }

    /// The request ended: metrics, traffic, audit.
    pub fn finish(self, obs: &Observer) {
        let m = &obs.metrics;
        let now = Instant::now();
        let code = match self.code.get() {
            0 => 499,
            c => c,
        };
        let by = self.served_by.get();
        let who = self.who.borrow();
        // A request refused before it was identified counts under tenant "".
        let (tenant, resource, verb) = match who.as_ref() {
            Some(w) => (w.tenant.clone(), w.resource.clone(), w.verb),
            None => {
                let t = obs.tenant("");
                let r = obs.resource(&t, "");
                (t, r, "")
            }
        };
        obs.request_counter(&tenant, &resource, verb, code, by)
            .inc();
        if let Some(w) = who.as_ref() {
            let class = match code {
                100..=199 => 0,
                200..=299 => 1,
                300..=399 => 2,
                400..=499 => 3,
                _ => 4,
            };
            obs.cluster_counter(&w.cluster, class).inc();
        }
        obs.client_counter(&tenant, self.client).inc();
        obs.source_counter(self.source).inc();
        for (direction, n) in [("in", self.bytes_in.get()), ("out", self.bytes_out.get())] {
            if n > 0 {
                obs.bytes_counter(&tenant, direction).inc_by(n);
            }
        }
        if let Some(reason) = self.rejected.get() {
            m.rejected(&tenant.name, reason);
        }
        if self.watching.get() {
            obs.traffic.watch(obs.core, &tenant.name, -1);
            m.tenant_watches
                .get_or_create(&TenantLabel {
                    tenant: tenant.name.to_string(),
                })
                .dec();
        }
        let latency = (!self.long_running.get()).then(|| {
            self.head_at
                .get()
                .unwrap_or(now)
                .saturating_duration_since(self.started)
        });
        obs.traffic.record(
            obs.core,
            now,
            &Sample {
                tenant: &tenant.name,
                client: self.client.label(),
                source: self.source,
                error: code >= 400,
                rejected: self.rejected.get().is_some(),
                latency,
                bytes_in: self.bytes_in.get(),
                bytes_out: self.bytes_out.get(),
            },
        );
        drop(who);
        if let Some(a) = &obs.audit {
            // A request refused before its user was known (401) is audited at the level of
            // writes: who tried, from where, with what.
            if self.who.borrow().is_none() && self.rejected.get().is_some() {
                self.level.set(a.policy.write_level);
            }
            if self.level.get() > Level::None {
                a.sink.send(self.event(obs, a, Stage::ResponseComplete));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_kinds_are_few() {
        let k = |ua: &str| ClientKind::of(Some(ua.as_bytes())).label();
        assert_eq!(k("kubectl/v1.5.0"), "kubectl/v1.5");
        assert_eq!(
            k("kubectl/v1.32.4 (linux/amd64) kubernetes/abc"),
            "kubectl/v1.32"
        );
        assert_eq!(k("kubectl/v1.9999.4 (linux/amd64)"), "kubectl");
        assert_eq!(k("kubectl1.32/x"), "kubectl");
        assert_eq!(k("helm/v3.14.0 (linux/amd64) kubernetes/abc"), "client-go");
        assert_eq!(k("OpenAPI-Generator/29.0.0/python"), "python");
        assert_eq!(k("python-requests/2.31"), "python");
        assert_eq!(k("Go-http-client/1.1"), "go");
        assert_eq!(k("curl/8.5.0"), "curl");
        assert_eq!(k("Mozilla/5.0 (X11)"), "browser");
        assert_eq!(k("something"), "other");
        assert_eq!(ClientKind::of(None).label(), "kube-rs");
    }

    #[test]
    fn bounded_sets_admit_the_first_values_only() {
        let b = Bounded::new(2);
        assert_eq!(b.admit("a"), "a");
        assert_eq!(b.admit("b"), "b");
        assert_eq!(b.admit("c"), "other");
        assert_eq!(b.admit("a"), "a");
    }
}
