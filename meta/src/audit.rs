//! The audit log of the metaserver: one `audit.k8s.io/v1` Event (the hub's type, from
//! `kubehub-audit`) for every mutating API request — tenants, users, clusters, grants,
//! tokens, kubeconfigs, bans, limits, the canary rule, hub drains and cluster pins,
//! enrollment and renewal. Reads and registry heartbeats (`PUT /v1/registry/hubs|agents/…`,
//! every few seconds from every hub and agent) are not audited.
//!
//! An axum middleware ([`layer`]) around the whole router: it reads the caller as the
//! handlers do, lets the request through, and records the answer's code. `objectRef` names
//! the API's own resources (`apiGroup: meta.kubehub.io`, `resource`: the first path segment
//! after `/v1/`, `name`: the rest). The policy's rules apply (verbs, resources, users);
//! request bodies are logged at level `Request` and above, except where they hold secrets
//! (enrollment, renewal, kubeconfigs, join tokens: Metadata at most); responses never (they
//! carry tokens). Every answer carries the request's `Audit-ID`.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use kubehub_audit::event::{audit_id_of, BodyOf};
use kubehub_audit::policy::Subject;
use kubehub_audit::sink::SinkCounters;
use kubehub_audit::{AuditConfig, Event, Level, ObjectRef, Policy, Sink, Stage, UserInfo};

use crate::api::Peer;
use crate::error::MetaError;
use crate::service::{Caller, Meta};

/// The API group audit events give meta's resources.
pub const API_GROUP: &str = "meta.kubehub.io";

/// The metaserver's audit log: its sink and policy.
#[derive(Debug, Clone)]
pub struct MetaAudit {
    sink: Sink,
    policy: Arc<Policy>,
    max_body: usize,
}

impl MetaAudit {
    /// Starts the writer for `[audit]` (`None` when disabled).
    pub fn start(cfg: &AuditConfig) -> Result<Option<MetaAudit>, MetaError> {
        if !cfg.enabled {
            return Ok(None);
        }
        let sink = Sink::start(cfg, SinkCounters::default())
            .map_err(|e| MetaError::Internal(e.to_string()))?;
        Ok(Some(MetaAudit {
            sink,
            policy: Arc::new(cfg.policy()),
            max_body: cfg.max_body_bytes,
        }))
    }

    /// Events written and dropped so far.
    pub fn counters(&self) -> &SinkCounters {
        self.sink.counters()
    }
}

/// The Kubernetes verb of a method.
fn verb(m: &Method) -> &'static str {
    match *m {
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "get",
    }
}

/// Paths whose bodies hold secrets (join tokens, CSRs with join tokens, issued tokens).
fn secret_bodies(path: &str) -> bool {
    path.starts_with("/v1/enroll")
        || path.starts_with("/v1/renew")
        || path.starts_with("/v1/kubeconfig")
        || path.ends_with("/join-token")
}

fn user_of(c: &Caller) -> UserInfo {
    match c {
        Caller::Admin => UserInfo {
            username: "admin".into(),
            groups: vec!["kubehub:admins".into()],
            ..Default::default()
        },
        Caller::User(u, _) => UserInfo {
            username: u.name.clone(),
            groups: u.groups.clone(),
            extra: [("kubehub.io/tenant".to_owned(), vec![u.tenant.clone()])]
                .into_iter()
                .collect(),
            ..Default::default()
        },
        Caller::Hub(h) => UserInfo {
            username: format!("hub:{h}"),
            groups: vec![kubehub_pki::HUBS_GROUP.into()],
            ..Default::default()
        },
        Caller::Agent(c) => UserInfo {
            username: format!("agent:{c}"),
            groups: vec![kubehub_pki::AGENTS_GROUP.into()],
            ..Default::default()
        },
    }
}

/// The middleware: audits mutating requests, and returns `Audit-ID` on every answer.
pub async fn layer(State(meta): State<Meta>, req: Request, next: Next) -> Response {
    let audit_id = audit_id_of(req.headers().get("audit-id").map(HeaderValue::as_bytes));
    let path = req.uri().path().to_owned();
    let heartbeat = req.method() == Method::PUT
        && path.starts_with("/v1/registry/")
        && (path.starts_with("/v1/registry/hubs/") || path.starts_with("/v1/registry/agents/"))
        && !path.ends_with("/drain");
    let audited = meta.audit.clone().filter(|_| {
        !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) && !heartbeat
    });
    let Some(audit) = audited else {
        let mut resp = next.run(req).await;
        set_id(&mut resp, &audit_id);
        return resp;
    };
    let received = SystemTime::now();
    let peer = req.extensions().get::<Peer>().cloned().unwrap_or_default();
    let caller = crate::api::caller(&meta, req.headers(), &peer).await.ok();
    let method = req.method().clone();
    let uri = req.uri().to_string();
    let user_agent = req
        .headers()
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let rest = path.strip_prefix("/v1/").unwrap_or(&path);
    let (resource, name) = rest.split_once('/').unwrap_or((rest, ""));
    let (resource, name) = (resource.to_owned(), name.to_owned());
    let user = caller.as_ref().map(user_of).unwrap_or_default();
    let mut level = audit.policy.level(&Subject {
        verb: verb(&method),
        group: API_GROUP,
        resource: &resource,
        subresource: "",
        user: &user.username,
        namespace: "",
    });
    if secret_bodies(&path) || level == Level::RequestResponse {
        level = level.min(if secret_bodies(&path) {
            Level::Metadata
        } else {
            Level::Request
        });
    }
    if level == Level::None {
        let mut resp = next.run(req).await;
        set_id(&mut resp, &audit_id);
        return resp;
    }
    // The body is read here (within the API's body limit) to be logged, then handed on.
    let (req, body) = if level >= Level::Request {
        let limit = meta.cfg.max_body_bytes;
        let (parts, body) = req.into_parts();
        match axum::body::to_bytes(body, limit).await {
            Ok(b) => (Request::from_parts(parts, Body::from(b.clone())), Some(b)),
            Err(_) => {
                let mut resp = MetaError::TooLarge(limit).into_response();
                set_id(&mut resp, &audit_id);
                return resp;
            }
        }
    } else {
        (req, None)
    };
    let mut resp = next.run(req).await;
    set_id(&mut resp, &audit_id);
    let mut e = Event::new(level, audit_id, Stage::ResponseComplete, received);
    e.request_uri = uri;
    e.verb = verb(&method).to_owned();
    e.user = user;
    e.user_agent = user_agent;
    if let Some(a) = peer.addr {
        e.source_ips = vec![a.ip().to_string()];
    }
    e.object_ref = Some(ObjectRef {
        resource,
        name,
        api_group: API_GROUP.into(),
        api_version: "v1".into(),
        ..Default::default()
    });
    let code = resp.status().as_u16();
    let reason = resp.status().canonical_reason().unwrap_or_default();
    e.respond(code, reason, reason);
    if let Some(b) = body {
        e.body(BodyOf::Request, &b, audit.max_body);
    }
    e.annotations
        .insert("kubehub.io/component".into(), "meta".into());
    audit.sink.send(e);
    resp
}

fn set_id(resp: &mut Response, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("audit-id", v);
    }
}
