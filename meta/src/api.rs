//! The metaserver's HTTPS JSON API (axum): decode, authenticate, call [`crate::service`],
//! encode. Every error is a JSON body `{"error": …, "code": …}` with a 4xx/5xx status.
//!
//! | Method and path | Who | What |
//! |---|---|---|
//! | `GET /healthz`, `GET /readyz` | anyone | liveness; readiness = the store answers |
//! | `GET /v1/ca` | anyone | the CA certificate (joiners pin it by hash) |
//! | `POST /v1/enroll` | a join token | `{token, csr}` → a certificate |
//! | `POST /v1/renew` | an agent's or hub's certificate | `{csr}` → a new certificate |
//! | `GET /v1/whoami` | any caller | who meta thinks you are |
//! | `POST/GET /v1/tenants`, `GET/DELETE /v1/tenants/{name}` | admin (tenant admins read their own) | tenants |
//! | `POST/GET /v1/users`, `GET/DELETE /v1/users/{name}` | admin, tenant admin | users |
//! | `POST/GET /v1/clusters`, `GET/DELETE /v1/clusters/{id}` | admin, tenant admin | clusters; POST answers a join token |
//! | `POST /v1/clusters/{id}/join-token` | admin, tenant admin | a new join token for the cluster's agent |
//! | `POST/GET /v1/grants`, `GET/DELETE /v1/grants/{tenant}/{name}` | admin, tenant admin | grants |
//! | `GET /v1/tokens?user=`, `DELETE /v1/tokens/{id}`, `DELETE /v1/tokens?user=` | admin, tenant admin, the user | tokens (never the token itself) |
//! | `POST /v1/kubeconfig` | admin, tenant admin, the user | a token and its kubeconfig |
//! | `POST /v1/hubs/join-token` | admin | `{id, names}` → a hub's join token |
//! | `GET /v1/sync?revision=N` | admin, hubs | the change feed ([`crate::feed`]) |
//! | `PUT /v1/registry/hubs/{id}` | that hub (admin) | hub heartbeat: a [`HubRecord`]; `{"ttl": s}` |
//! | `GET /v1/registry/hubs` | any caller | live hubs `{"items": [HubRecord]}`; an agent gets those it may use, `{"items": [...], "ineligible": ["hub-id", ...], "ineligibleEndpoints": ["host:port", ...]}` ([`kubehub_access::registry::eligibility`]) |
//! | `PUT /v1/registry/agents/{cluster}`, `GET /v1/registry/agents` | that agent (admin) / any caller | agent heartbeats, live agents |
//! | `GET /v1/registry/watch?revision=N` | admin, hubs | NDJSON [`RegistryLine`](kubehub_access::registry::RegistryLine)s: a snapshot (live hubs, live agents, the canary rule), then every change after it, a heartbeat at least every `sync.heartbeat_ms`; N resumes after revision N ([`crate::feed`]) |
//! | `POST /v1/bans` | admin | a ban (`{"target": {"token"\|"user"\|"tenant"\|"cluster": name} or {"client": {"userAgent"?, "source"?}}, "reason", "expiresAt"? \| "ttlSeconds"?}`) → 201 with the stored [`Ban`](kubehub_access::ban::Ban) ([`crate::bans`]) |
//! | `GET /v1/bans`, `GET/DELETE /v1/bans/{id}` | admin | bans in force `{"items": [Ban]}`; one ban; lift one (200 with it, 404 when unknown) |
//! | `PUT/GET/DELETE /v1/canary` | admin | the canary rule ([`CanaryRule`]: `{version, clusterLabels, tenants, percent}`); GET without one: 404 |
//! | `POST /v1/registry/hubs/{id}/drain`, `GET /v1/registry/drains` | admin | `{"drain": true, "reason": "..."}` drains a live hub (it drains as for a restart and keeps running; agents stop choosing it), `{"drain": false}` lifts it; the drains |
//! | `PUT/GET/DELETE /v1/registry/pins/{cluster}`, `GET /v1/registry/pins` | admin | `{"hub": "hub-2"}` or `{"hubs": [...]}` (and `reason`) moves the cluster's agent to those hubs (live ones; [`Pin`]); GET without one: 404; the pins |
//! | `/console/…` | the admin token, by a cookie | the operations console ([`crate::console`]): HTML pages |
//! | `PUT/GET/DELETE /v1/limits/{tenant}`, `…/{tenant}/{user}`; `GET /v1/limits?tenant=` | admin (GET: tenant admins, their tenant's) | traffic limits ([`Limit`](kubehub_access::model::Limit): `{requestsPerSecond, burst, concurrency, clusterRequestsPerSecond, clusterBurst}`, each optional); PUT answers the stored record, DELETE the cleared one; the list is `{"items": [...]}` |

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Extension, Json, Router};
use kubehub_access::model::Limit as TrafficLimit;
use kubehub_access::model::{Cluster, Grant, Record, Tenant, User};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::error::MetaError;
use crate::service::{AgentRecord, Caller, CanaryRule, HubRecord, KubeconfigRequest, Meta, Pin};

/// Who the TLS layer says is on the other end: the verified client certificate's CN and
/// organizations, if one was presented, and the address it connected from.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<std::net::SocketAddr>,
    /// Common name.
    pub common_name: String,
    /// Organizations (groups).
    pub organizations: Vec<String>,
    /// Subject alternative names (DNS names and IP addresses, as text).
    pub names: Vec<String>,
}

impl IntoResponse for MetaError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if code.is_server_error() {
            tracing::warn!("request failed: {self}");
        }
        (code, Json(self.body())).into_response()
    }
}

/// A JSON body decoded with this API's errors: 413 beyond the limit, 400 naming the field
/// for malformed JSON or unknown fields.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = MetaError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let limit = req
            .extensions()
            .get::<Limit>()
            .map(|l| l.0)
            .unwrap_or(1 << 20);
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|_| MetaError::TooLarge(limit))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| {
            MetaError::BadRequest(format!("the body is not what this call takes: {e}"))
        })
    }
}

/// The body limit, for error messages.
#[derive(Debug, Clone, Copy)]
pub struct Limit(pub usize);

/// Establishes the caller: a bearer token (admin or user), else a client certificate issued
/// to a hub or an agent.
pub(crate) async fn caller(
    meta: &Meta,
    headers: &HeaderMap,
    peer: &Peer,
) -> Result<Caller, MetaError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| MetaError::Unauthorized("the Authorization header is not text".into()))?;
        let token = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .ok_or_else(|| {
                MetaError::Unauthorized("expected `Authorization: Bearer <token>`".into())
            })?
            .trim();
        if token.is_empty() {
            return Err(MetaError::Unauthorized("the bearer token is empty".into()));
        }
        return meta.authenticate(token).await;
    }
    if !peer.common_name.is_empty() {
        if peer
            .organizations
            .iter()
            .any(|o| o == kubehub_pki::HUBS_GROUP)
        {
            return Ok(Caller::Hub(peer.common_name.clone()));
        }
        if peer
            .organizations
            .iter()
            .any(|o| o == kubehub_pki::AGENTS_GROUP)
        {
            return Ok(Caller::Agent(peer.common_name.clone()));
        }
    }
    Err(MetaError::Unauthorized(
        "no credential: send `Authorization: Bearer <token>` or a certificate meta issued".into(),
    ))
}

/// A handler's caller, as an extractor.
#[derive(Debug)]
pub struct Who(pub Caller);

impl FromRequestParts<Meta> for Who {
    type Rejection = MetaError;

    async fn from_request_parts(parts: &mut Parts, meta: &Meta) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>().cloned().unwrap_or_default();
        caller(meta, &parts.headers, &peer).await.map(Who)
    }
}

/// The router: the API, and the operations console under `/console` ([`crate::console`],
/// unless `console.enabled = false`), which acts through the API's own routes.
pub fn router(meta: Meta) -> Router {
    let api = api_router(meta.clone());
    if meta.cfg.console.enabled {
        api.clone().merge(crate::console::router(meta, api))
    } else {
        api
    }
}

/// The API's routes alone.
fn api_router(meta: Meta) -> Router {
    let limit = meta.cfg.max_body_bytes;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/ca", get(ca))
        .route("/v1/enroll", post(enroll))
        .route("/v1/renew", post(renew))
        .route("/v1/whoami", get(whoami))
        .route("/v1/tenants", post(create_tenant).get(list("tenants")))
        .route(
            "/v1/tenants/{name}",
            get(get_one("tenants")).delete(delete_one("tenants")),
        )
        .route("/v1/users", post(create_user).get(list("users")))
        .route(
            "/v1/users/{name}",
            get(get_one("users")).delete(delete_one("users")),
        )
        .route("/v1/clusters", post(create_cluster).get(list("clusters")))
        .route(
            "/v1/clusters/{name}",
            get(get_one("clusters")).delete(delete_one("clusters")),
        )
        .route("/v1/clusters/{name}/join-token", post(cluster_join_token))
        .route("/v1/grants", post(create_grant).get(list("grants")))
        .route(
            "/v1/grants/{tenant}/{name}",
            get(get_grant).delete(delete_grant),
        )
        .route("/v1/tokens", get(list("tokens")).delete(revoke_all))
        .route("/v1/tokens/{name}", delete(delete_one("tokens")))
        .route("/v1/kubeconfig", post(kubeconfig))
        .route("/v1/hubs/join-token", post(hub_join_token))
        .route("/v1/sync", get(sync))
        .route("/v1/registry/hubs", get(hubs))
        .route("/v1/registry/hubs/{id}", put(register_hub))
        .route("/v1/registry/agents", get(agents))
        .route("/v1/registry/agents/{cluster}", put(register_agent))
        .route("/v1/registry/watch", get(registry_watch))
        .route("/v1/registry/hubs/{id}/drain", post(drain_hub))
        .route("/v1/registry/drains", get(drains))
        .route("/v1/registry/pins", get(pins))
        .route(
            "/v1/registry/pins/{cluster}",
            get(get_pin).put(set_pin).delete(clear_pin),
        )
        .route(
            "/v1/canary",
            get(get_canary).put(set_canary).delete(clear_canary),
        )
        .route("/v1/bans", post(create_ban).get(list_bans))
        .route("/v1/bans/{id}", get(get_ban).delete(lift_ban))
        .route("/v1/limits", get(list_limits))
        .route(
            "/v1/limits/{tenant}",
            get(get_limit).put(set_limit).delete(clear_limit),
        )
        .route(
            "/v1/limits/{tenant}/{user}",
            get(get_user_limit)
                .put(set_user_limit)
                .delete(clear_user_limit),
        )
        .fallback(|| async { MetaError::NotFound("no such API path".into()) })
        .layer(axum::middleware::from_fn_with_state(
            meta.clone(),
            crate::audit::layer,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(Extension(Limit(limit)))
        .with_state(meta)
}

async fn readyz(State(meta): State<Meta>) -> Response {
    match meta.store.revision().await {
        Ok(rev) => (StatusCode::OK, format!("ok (store revision {rev})\n")).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}\n")).into_response(),
    }
}

async fn ca(State(meta): State<Meta>) -> Json<serde_json::Value> {
    Json(json!({ "ca": meta.ca_pem() }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollBody {
    token: String,
    csr: String,
}

async fn enroll(
    State(meta): State<Meta>,
    JsonBody(b): JsonBody<EnrollBody>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let e = meta.enroll(&b.token, &b.csr).await?;
    Ok(Json(json!(e)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    csr: String,
    #[serde(default)]
    names: Vec<String>,
}

async fn renew(
    State(meta): State<Meta>,
    peer: Option<Extension<Peer>>,
    JsonBody(b): JsonBody<RenewBody>,
) -> Result<Json<serde_json::Value>, MetaError> {
    // Renewal is by certificate only: a token cannot mint a certificate.
    let peer = peer.map(|Extension(p)| p).unwrap_or_default();
    if peer.common_name.is_empty() {
        return Err(MetaError::Unauthorized(
            "renewal needs the current certificate (mutual TLS); a bearer token cannot renew one"
                .into(),
        ));
    }
    let who = caller(&meta, &HeaderMap::new(), &peer).await?;
    // A hub renews for the names it was enrolled with (or fewer): changing them takes a new
    // hub join token from an admin.
    let names = if b.names.is_empty() {
        peer.names.clone()
    } else {
        if let Some(extra) = b.names.iter().find(|n| !peer.names.contains(n)) {
            return Err(MetaError::Forbidden(format!(
                "{extra:?} is not a name of the current certificate: a hub renews for the names \
                 it was enrolled with; a new name needs a new hub join token"
            )));
        }
        b.names
    };
    let e = meta.renew(&who, &b.csr, names).await?;
    Ok(Json(json!(e)))
}

async fn whoami(Who(who): Who) -> Json<serde_json::Value> {
    Json(match who {
        Caller::Admin => json!({"kind": "Admin"}),
        Caller::User(u, scope) => {
            json!({"kind": "User", "user": u, "tokenClusters": scope.clusters, "tokenExpires": scope.expires})
        }
        Caller::Hub(h) => json!({"kind": "Hub", "id": h}),
        Caller::Agent(c) => json!({"kind": "Agent", "cluster": c}),
    })
}

fn created(r: Record) -> Response {
    (StatusCode::CREATED, Json(r)).into_response()
}

async fn create_tenant(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(t): JsonBody<Tenant>,
) -> Result<Response, MetaError> {
    Ok(created(Record::Tenant(meta.create_tenant(&who, t).await?)))
}

async fn create_user(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(u): JsonBody<User>,
) -> Result<Response, MetaError> {
    Ok(created(Record::User(meta.create_user(&who, u).await?)))
}

async fn create_cluster(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(c): JsonBody<Cluster>,
) -> Result<Response, MetaError> {
    let (c, token) = meta.create_cluster(&who, c).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"cluster": c, "joinToken": token})),
    )
        .into_response())
}

async fn cluster_join_token(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let token = meta.cluster_join_token(&who, &id).await?;
    Ok(Json(json!({"cluster": id, "joinToken": token})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HubJoin {
    id: String,
    names: Vec<String>,
}

async fn hub_join_token(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(b): JsonBody<HubJoin>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let token = meta.hub_join_token(&who, &b.id, b.names).await?;
    Ok(Json(json!({"hub": b.id, "joinToken": token})))
}

async fn create_grant(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(g): JsonBody<Grant>,
) -> Result<Response, MetaError> {
    Ok(created(Record::Grant(meta.create_grant(&who, g).await?)))
}

type Handler = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

fn list(
    kind: &'static str,
) -> impl Fn(State<Meta>, Who, Query<HashMap<String, String>>) -> Handler + Clone + Send + 'static {
    move |State(meta), Who(who), Query(q)| {
        Box::pin(async move {
            let r = meta
                .list(
                    &who,
                    kind,
                    q.get("tenant").map(String::as_str),
                    q.get("user").map(String::as_str),
                )
                .await;
            match r {
                Ok(items) => Json(json!({ "items": items })).into_response(),
                Err(e) => e.into_response(),
            }
        })
    }
}

fn get_one(
    kind: &'static str,
) -> impl Fn(State<Meta>, Who, Path<String>) -> Handler + Clone + Send + 'static {
    move |State(meta), Who(who), Path(name)| {
        Box::pin(async move {
            match meta.get(&who, kind, &name).await {
                Ok(r) => Json(r).into_response(),
                Err(e) => e.into_response(),
            }
        })
    }
}

fn delete_one(
    kind: &'static str,
) -> impl Fn(State<Meta>, Who, Path<String>) -> Handler + Clone + Send + 'static {
    move |State(meta), Who(who), Path(name)| {
        Box::pin(async move {
            match meta.delete(&who, kind, &name).await {
                Ok(()) => StatusCode::NO_CONTENT.into_response(),
                Err(e) => e.into_response(),
            }
        })
    }
}

async fn get_grant(
    State(meta): State<Meta>,
    Who(who): Who,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<Json<Record>, MetaError> {
    Ok(Json(
        meta.get(&who, "grants", &format!("{tenant}/{name}"))
            .await?,
    ))
}

async fn delete_grant(
    State(meta): State<Meta>,
    Who(who): Who,
    Path((tenant, name)): Path<(String, String)>,
) -> Result<StatusCode, MetaError> {
    meta.delete(&who, "grants", &format!("{tenant}/{name}"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn revoke_all(
    State(meta): State<Meta>,
    Who(who): Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let user = q
        .get("user")
        .ok_or_else(|| MetaError::BadRequest("revoking all tokens needs ?user=NAME".into()))?;
    let n = meta.revoke_tokens(&who, user).await?;
    Ok(Json(json!({ "revoked": n })))
}

async fn kubeconfig(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(req): JsonBody<KubeconfigRequest>,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!(meta.kubeconfig(&who, req).await?)))
}

/// The start of a feed for a hub or an admin: who reads it and from which revision.
fn feed_reader(
    who: Caller,
    q: &HashMap<String, String>,
    what: &str,
) -> Result<(String, i64), MetaError> {
    let reader = match who {
        Caller::Admin => "admin".to_owned(),
        Caller::Hub(h) => h,
        other => {
            return Err(MetaError::Forbidden(format!(
                "{other:?} may not read {what}: hubs only"
            )))
        }
    };
    let revision = match q.get("revision") {
        None => 0,
        Some(r) => r
            .parse::<i64>()
            .map_err(|_| MetaError::BadRequest(format!("revision: {r:?} is not a number")))?,
    };
    Ok((reader, revision.max(0)))
}

/// A feed's lines as a streamed NDJSON answer.
fn ndjson(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Response {
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let body = Body::from_stream(tokio_stream::StreamExt::map(
        stream,
        Ok::<_, std::convert::Infallible>,
    ));
    ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn sync(
    State(meta): State<Meta>,
    Who(who): Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, MetaError> {
    let (hub, revision) = feed_reader(who, &q, "the change feed")?;
    Ok(ndjson(crate::feed::start(meta, revision, hub)))
}

async fn registry_watch(
    State(meta): State<Meta>,
    Who(who): Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, MetaError> {
    let (reader, revision) = feed_reader(who, &q, "the registry watch")?;
    let drains = match q.get("drains").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(MetaError::BadRequest(format!(
                "drains: {other:?} is not true or false"
            )))
        }
    };
    Ok(ndjson(crate::feed::start_registry(
        meta, revision, reader, drains,
    )))
}

/// `POST /v1/registry/hubs/{id}/drain`: exactly these fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    drain: bool,
    #[serde(default)]
    reason: String,
}

async fn drain_hub(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(id): Path<String>,
    JsonBody(b): JsonBody<DrainBody>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let mark = meta.drain_hub(&who, &id, b.drain, &b.reason).await?;
    Ok(Json(json!({"hub": id, "drain": b.drain, "mark": mark})))
}

async fn drains(
    State(meta): State<Meta>,
    Who(who): Who,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!({ "items": meta.drains(&who).await? })))
}

/// `PUT /v1/registry/pins/{cluster}`: `hub` (one) or `hubs` (several), and a reason.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinBody {
    #[serde(default)]
    hub: Option<String>,
    #[serde(default)]
    hubs: Option<Vec<String>>,
    #[serde(default)]
    reason: String,
}

async fn set_pin(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(cluster): Path<String>,
    JsonBody(b): JsonBody<PinBody>,
) -> Result<Json<Pin>, MetaError> {
    let hubs = match (b.hub, b.hubs) {
        (Some(h), None) => vec![h],
        (None, Some(hs)) => hs,
        _ => {
            return Err(MetaError::Invalid(
                "exactly one of hub (a hub id) and hubs (a list of them) is required".into(),
            ))
        }
    };
    let pin = Pin {
        cluster,
        hubs,
        reason: b.reason,
        ..Pin::default()
    };
    Ok(Json(meta.set_pin(&who, pin).await?))
}

async fn get_pin(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(cluster): Path<String>,
) -> Result<Json<Pin>, MetaError> {
    meta.pin(&who, &cluster)
        .await?
        .map(Json)
        .ok_or_else(|| MetaError::NotFound(format!("cluster {cluster:?} is not pinned")))
}

async fn clear_pin(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(cluster): Path<String>,
) -> Result<StatusCode, MetaError> {
    meta.clear_pin(&who, &cluster).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn pins(
    State(meta): State<Meta>,
    Who(who): Who,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!({ "items": meta.pins(&who).await? })))
}

async fn hubs(
    State(meta): State<Meta>,
    Who(who): Who,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!(meta.hubs_for(&who).await?)))
}

/// `PUT /v1/canary`: exactly these fields (a typo is refused, not a rule that selects other
/// clusters than meant).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CanaryBody {
    version: String,
    #[serde(default)]
    cluster_labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    percent: i64,
}

async fn set_canary(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(b): JsonBody<CanaryBody>,
) -> Result<Json<CanaryRule>, MetaError> {
    let percent = u32::try_from(b.percent)
        .ok()
        .filter(|p| *p <= 100)
        .ok_or_else(|| {
            MetaError::Invalid(format!(
                "percent: {} is not 0 to 100 (a percentage of the clusters)",
                b.percent
            ))
        })?;
    let rule = CanaryRule {
        version: b.version,
        cluster_labels: b.cluster_labels,
        tenants: b.tenants,
        percent,
    };
    Ok(Json(meta.set_canary(&who, rule).await?))
}

async fn get_canary(
    State(meta): State<Meta>,
    Who(who): Who,
) -> Result<Json<CanaryRule>, MetaError> {
    meta.canary(&who)
        .await?
        .map(Json)
        .ok_or_else(|| MetaError::NotFound("no canary rule is set".into()))
}

async fn clear_canary(State(meta): State<Meta>, Who(who): Who) -> Result<StatusCode, MetaError> {
    meta.clear_canary(&who).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_ban(
    State(meta): State<Meta>,
    Who(who): Who,
    JsonBody(b): JsonBody<crate::bans::BanRequest>,
) -> Result<Response, MetaError> {
    let ban = meta.create_ban(&who, b).await?;
    Ok((StatusCode::CREATED, Json(ban)).into_response())
}

async fn list_bans(
    State(meta): State<Meta>,
    Who(who): Who,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!({ "items": meta.list_bans(&who).await? })))
}

async fn get_ban(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Json<kubehub_access::ban::Ban>, MetaError> {
    Ok(Json(meta.get_ban(&who, &id).await?))
}

async fn lift_ban(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(id): Path<String>,
) -> Result<Json<kubehub_access::ban::Ban>, MetaError> {
    Ok(Json(meta.lift_ban(&who, &id).await?))
}

async fn agents(
    State(meta): State<Meta>,
    Who(_): Who,
) -> Result<Json<serde_json::Value>, MetaError> {
    Ok(Json(json!({ "items": meta.agents().await? })))
}

async fn register_hub(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(id): Path<String>,
    JsonBody(h): JsonBody<HubRecord>,
) -> Result<Json<serde_json::Value>, MetaError> {
    meta.register_hub(&who, &id, h).await?;
    Ok(Json(json!({ "ttl": meta.cfg.registry.ttl_s })))
}

async fn register_agent(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(cluster): Path<String>,
    JsonBody(a): JsonBody<AgentRecord>,
) -> Result<Json<serde_json::Value>, MetaError> {
    meta.register_agent(&who, &cluster, a).await?;
    Ok(Json(json!({ "ttl": meta.cfg.registry.ttl_s })))
}

/// `PUT /v1/limits/{tenant}[/{user}]`: the figures (tenant and user come from the path;
/// if the body names them too, they must agree).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LimitBody {
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    requests_per_second: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    cluster_requests_per_second: Option<u32>,
    #[serde(default)]
    cluster_burst: Option<u32>,
}

impl LimitBody {
    fn into_limit(self, tenant: String, user: Option<String>) -> Result<TrafficLimit, MetaError> {
        if self.tenant.as_ref().is_some_and(|t| *t != tenant) {
            return Err(MetaError::Invalid(format!(
                "tenant: the body says {:?}, the path {tenant:?}",
                self.tenant.unwrap_or_default()
            )));
        }
        if self.user.as_ref().is_some_and(|u| Some(u) != user.as_ref()) {
            return Err(MetaError::Invalid(format!(
                "user: the body says {:?}, the path {:?}",
                self.user.unwrap_or_default(),
                user.unwrap_or_default()
            )));
        }
        Ok(TrafficLimit {
            tenant,
            user: user.unwrap_or_default(),
            requests_per_second: self.requests_per_second,
            burst: self.burst,
            concurrency: self.concurrency,
            cluster_requests_per_second: self.cluster_requests_per_second,
            cluster_burst: self.cluster_burst,
        })
    }
}

async fn list_limits(
    State(meta): State<Meta>,
    Who(who): Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, MetaError> {
    let items = meta
        .limits(&who, q.get("tenant").map(String::as_str))
        .await?;
    Ok(Json(json!({ "items": items })))
}

async fn get_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(tenant): Path<String>,
) -> Result<Json<TrafficLimit>, MetaError> {
    Ok(Json(meta.limit(&who, &tenant, None).await?))
}

async fn get_user_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Json<TrafficLimit>, MetaError> {
    Ok(Json(meta.limit(&who, &tenant, Some(&user)).await?))
}

async fn set_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(tenant): Path<String>,
    JsonBody(b): JsonBody<LimitBody>,
) -> Result<Json<TrafficLimit>, MetaError> {
    let l = b.into_limit(tenant, None)?;
    Ok(Json(meta.set_limit(&who, l).await?))
}

async fn set_user_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path((tenant, user)): Path<(String, String)>,
    JsonBody(b): JsonBody<LimitBody>,
) -> Result<Json<TrafficLimit>, MetaError> {
    let l = b.into_limit(tenant, Some(user))?;
    Ok(Json(meta.set_limit(&who, l).await?))
}

async fn clear_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path(tenant): Path<String>,
) -> Result<Json<TrafficLimit>, MetaError> {
    Ok(Json(meta.clear_limit(&who, &tenant, None).await?))
}

async fn clear_user_limit(
    State(meta): State<Meta>,
    Who(who): Who,
    Path((tenant, user)): Path<(String, String)>,
) -> Result<Json<TrafficLimit>, MetaError> {
    Ok(Json(meta.clear_limit(&who, &tenant, Some(&user)).await?))
}
