//! The console's one way to the data: every read and every action of the console goes
//! through [`Data`].
//!
//! * Reads of what meta has always kept (hubs, agents, clusters, tenants, users, grants,
//!   tokens, the canary rule) call the service functions ([`Meta::hubs`], [`Meta::list`], …)
//!   as the admin.
//! * Actions, and the reads of the operations records (bans), are calls of meta's own HTTP API
//!   made in process ([`Data::call`]): the request goes through the same router, with the
//!   signed-in operator's admin token as its bearer token, so it gets exactly the API's
//!   validation, errors and audit, and nothing about an action is decided twice.
//! * Traffic comes from each hub's admin listener (`GET <admin>/traffic`, see [`Traffic`]),
//!   fetched here with a short timeout.
//!
//! Records are handed to the pages as JSON values (what the API answers), so fields a newer
//! hub or service adds (`admin` on a hub record, sync state on an agent record) are shown
//! without a change here.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::BodyExt;
use kubehub_access::model::{Cluster, Grant, Record, Tenant, TokenRecord, User};
use serde_json::Value;
use tower_service::Service;

use crate::error::MetaError;
use crate::service::{AgentRecord, Caller, CanaryRule, Meta};

/// The user agent of the console's in-process API calls (what an audit log shows).
pub const USER_AGENT: &str = "kubehub-console";
/// The most bytes read of one hub's `/traffic` answer.
const TRAFFIC_LIMIT: usize = 4 << 20;
/// Hubs asked at once.
const FAN_OUT: usize = 16;

/// A failed console action or read: the HTTP status and the message the API gave.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} ({code})")]
pub struct ApiError {
    /// HTTP status.
    pub code: u16,
    /// What the API said.
    pub message: String,
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> ApiError {
        ApiError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// Tenants with what belongs to each.
#[derive(Debug, Default)]
pub struct Tenants {
    /// By name.
    pub tenants: Vec<Tenant>,
    /// Every user.
    pub users: Vec<User>,
    /// Every grant.
    pub grants: Vec<Grant>,
    /// Every live token (the stored record: never the token itself).
    pub tokens: Vec<TokenRecord>,
}

/// One hub's `GET /traffic` answer, and its parts (the hubs' own type).
pub use kubehub_access::traffic::{ClientTraffic, TenantTraffic, TrafficSummary as Traffic};

/// What one hub's admin listener said, or why it said nothing.
#[derive(Debug, Clone)]
pub enum HubTraffic {
    /// It answered.
    Answered(Traffic),
    /// The hub registered no admin listener.
    NoAdmin,
    /// It did not answer in time, or not with traffic.
    Failed(String),
}

/// The console's data access.
#[derive(Clone)]
pub struct Data {
    meta: Meta,
    api: Router,
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Data").finish_non_exhaustive()
    }
}

fn to_values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .filter_map(|i| serde_json::to_value(i).ok())
        .collect()
}

impl Data {
    /// Over `meta`, acting through `api` (meta's API router, without the console).
    pub fn new(meta: Meta, api: Router) -> Data {
        Data { meta, api }
    }

    /// The metaserver.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// Whether `token` is an admin token (the console's credential).
    pub async fn is_admin(&self, token: &str) -> Result<(), ApiError> {
        match self.meta.authenticate(token).await {
            Ok(Caller::Admin) => Ok(()),
            Ok(_) => Err(ApiError {
                code: 403,
                message: "the console takes meta's admin token; this is a user's token".into(),
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// The store's revision: a page whose data may have changed when it moved.
    pub async fn revision(&self) -> Result<i64, ApiError> {
        Ok(self.meta.store.revision().await.map_err(MetaError::from)?)
    }

    // ---- reads through the service -------------------------------------------------------

    /// Live hubs (their registry records), by id.
    pub async fn hubs(&self) -> Result<Vec<Value>, ApiError> {
        let mut hubs = self.meta.hubs().await?;
        hubs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(to_values(&hubs))
    }

    /// Live agents (their registry records), by cluster.
    pub async fn agents(&self) -> Result<Vec<Value>, ApiError> {
        let mut agents: Vec<AgentRecord> = self.meta.agents().await?;
        agents.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        Ok(to_values(&agents))
    }

    /// Every cluster.
    pub async fn clusters(&self) -> Result<Vec<Cluster>, ApiError> {
        let records = self
            .meta
            .list(&Caller::Admin, "clusters", None, None)
            .await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r {
                Record::Cluster(c) => Some(c),
                _ => None,
            })
            .collect())
    }

    /// Tenants, users, grants and tokens.
    pub async fn tenants(&self) -> Result<Tenants, ApiError> {
        let mut out = Tenants::default();
        for kind in ["tenants", "users", "grants", "tokens"] {
            for r in self.meta.list(&Caller::Admin, kind, None, None).await? {
                match r {
                    Record::Tenant(t) => out.tenants.push(t),
                    Record::User(u) => out.users.push(u),
                    Record::Grant(g) => out.grants.push(g),
                    Record::Token(t) => out.tokens.push(t),
                    _ => {}
                }
            }
        }
        let now = crate::service::now();
        out.tokens.retain(|t| t.expires == 0 || t.expires > now);
        Ok(out)
    }

    /// The canary rule, if one is set.
    pub async fn canary(&self) -> Result<Option<CanaryRule>, ApiError> {
        Ok(self.meta.canary(&Caller::Admin).await?)
    }

    // ---- through the API -----------------------------------------------------------------

    /// Bans in force (`GET /v1/bans` → `{"items": [ban]}`).
    pub async fn bans(&self, token: &str) -> Result<Vec<Value>, ApiError> {
        let v = self.call(token, Method::GET, "/v1/bans", None).await?;
        Ok(v.get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Calls meta's own API in process as the operator whose admin token this is: `path`
    /// with the query, `body` as JSON. The answer's JSON (`null` for an empty one), or the
    /// API's error.
    pub async fn call(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApiError> {
        let internal = |m: String| ApiError {
            code: 500,
            message: m,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::USER_AGENT, USER_AGENT);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).map_err(|e| internal(e.to_string()))?)
            }
            None => Body::empty(),
        };
        let req = req.body(body).map_err(|e| internal(e.to_string()))?;
        let resp = match self.api.clone().call(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .map_err(|e| internal(format!("reading meta's answer: {e}")))?;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                Value::String(String::from_utf8_lossy(&bytes).trim().to_owned())
            })
        };
        if status.is_success() {
            return Ok(v);
        }
        // meta's errors are `{error, code}`; a Kubernetes `Status` says `message`.
        let message = v
            .get("error")
            .or_else(|| v.get("message"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| match &v {
                Value::String(s) if !s.is_empty() => s.clone(),
                _ => status
                    .canonical_reason()
                    .unwrap_or("request failed")
                    .to_owned(),
            });
        Err(ApiError {
            code: status.as_u16(),
            message,
        })
    }

    // ---- the hubs' admin listeners -------------------------------------------------------

    /// Every hub's `/traffic`, asked in parallel, each within `timeout`; by hub id.
    pub async fn traffic(&self, hubs: &[Value], timeout: Duration) -> Vec<(String, HubTraffic)> {
        traffic_of(hubs, timeout).await
    }

    /// What the hubs' caches say of each cluster they hold (`GET <admin>/clusters`, in
    /// parallel, each within `timeout`): by cluster, per hub, its [`SyncState`]. Hubs that do
    /// not answer are left out.
    pub async fn sync_states(
        &self,
        hubs: &[Value],
        timeout: Duration,
    ) -> BTreeMap<String, Vec<(String, SyncState)>> {
        let asks: Vec<_> = admin_listeners(hubs)
            .into_iter()
            .filter(|(_, admin)| !admin.is_empty())
            .map(|(id, admin)| async move {
                let body = match fetch(&admin, "/clusters", timeout).await {
                    Ok((200, body)) => body,
                    _ => return Vec::new(),
                };
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                v.get("clusters")
                    .and_then(Value::as_array)
                    .map(|cs| {
                        cs.iter()
                            .filter_map(|c| {
                                let cluster = c.get("cluster")?.as_str()?.to_owned();
                                Some((cluster, id.clone(), SyncState::of(c.get("cache")?)))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        let all: Vec<Vec<(String, String, SyncState)>> =
            stream::iter(asks).buffer_unordered(FAN_OUT).collect().await;
        let mut out: BTreeMap<String, Vec<(String, SyncState)>> = BTreeMap::new();
        for (cluster, hub, st) in all.into_iter().flatten() {
            out.entry(cluster).or_default().push((hub, st));
        }
        for v in out.values_mut() {
            v.sort_by(|a, b| a.0.cmp(&b.0));
        }
        out
    }

    /// Every hub's readiness (`GET <admin>/readyz`), by hub id: `None` when the hub has no
    /// admin listener, else whether it said ready and what it said.
    pub async fn readiness(
        &self,
        hubs: &[Value],
        timeout: Duration,
    ) -> BTreeMap<String, Option<Result<String, String>>> {
        readiness_of(hubs, timeout).await
    }
}

/// A hub's cache of one cluster, from its `/clusters`: how many of the cached types are
/// synced, and how long ago the least recently confirmed one was confirmed current.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncState {
    /// Types synced.
    pub synced: usize,
    /// Types cached.
    pub types: usize,
    /// The oldest confirmation among the types, ms ago (`None`: none confirmed yet).
    pub lag_ms: Option<u64>,
    /// The agent has been away this long (ms), if it is away.
    pub agent_gone_ms: Option<u64>,
}

impl SyncState {
    fn of(cache: &Value) -> SyncState {
        let types = cache.get("types").and_then(Value::as_array);
        let all = types.map(Vec::len).unwrap_or(0);
        let synced = types
            .map(|t| t.iter().filter(|t| t["synced"] == true).count())
            .unwrap_or(0);
        let lag_ms = types.and_then(|t| {
            t.iter()
                .filter_map(|t| t.get("confirmedMsAgo").and_then(Value::as_u64))
                .max()
        });
        SyncState {
            synced,
            types: all,
            lag_ms,
            agent_gone_ms: cache.get("agentGoneMs").and_then(Value::as_u64),
        }
    }
}

/// [`Data::traffic`].
async fn traffic_of(hubs: &[Value], timeout: Duration) -> Vec<(String, HubTraffic)> {
    let asks: Vec<_> = admin_listeners(hubs)
        .into_iter()
        .map(|(id, admin)| async move {
            if admin.is_empty() {
                return (id, HubTraffic::NoAdmin);
            }
            let got = match fetch(&admin, "/traffic", timeout).await {
                Ok((200, body)) => serde_json::from_slice::<Traffic>(&body)
                    .map(HubTraffic::Answered)
                    .unwrap_or_else(|e| HubTraffic::Failed(format!("not traffic: {e}"))),
                Ok((code, _)) => HubTraffic::Failed(format!("answered {code}")),
                Err(e) => HubTraffic::Failed(e),
            };
            (id, got)
        })
        .collect();
    let mut out: Vec<_> = stream::iter(asks).buffer_unordered(FAN_OUT).collect().await;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// [`Data::readiness`].
async fn readiness_of(
    hubs: &[Value],
    timeout: Duration,
) -> BTreeMap<String, Option<Result<String, String>>> {
    let asks: Vec<_> = admin_listeners(hubs)
        .into_iter()
        .map(|(id, admin)| async move {
            if admin.is_empty() {
                return (id, None);
            }
            let r = match fetch(&admin, "/readyz", timeout).await {
                Ok((200, _)) => Ok("ready".to_owned()),
                Ok((code, body)) => Err(format!(
                    "not ready ({code}): {}",
                    String::from_utf8_lossy(&body[..body.len().min(200)]).trim()
                )),
                Err(e) => Err(e),
            };
            (id, Some(r))
        })
        .collect();
    stream::iter(asks).buffer_unordered(FAN_OUT).collect().await
}

/// Each hub's id and admin listener (`admin`, empty when it registered none).
fn admin_listeners(hubs: &[Value]) -> Vec<(String, String)> {
    hubs.iter()
        .map(|h| {
            let field = |k: &str| {
                h.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            (field("id"), field("admin"))
        })
        .collect()
}

/// `GET <admin><path>` of a hub's admin listener (`http://host:port`), within `timeout`: the
/// status and at most [`TRAFFIC_LIMIT`] bytes of body.
pub async fn fetch(admin: &str, path: &str, timeout: Duration) -> Result<(u16, Bytes), String> {
    let authority = admin
        .strip_prefix("http://")
        .ok_or_else(|| format!("the admin listener {admin:?} is not an http:// URL"))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "the admin listener {admin:?} is not http://host:port"
        ));
    }
    let ask = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .map_err(|e| format!("{authority}: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .uri(path)
            .header(header::HOST, authority)
            .header(header::USER_AGENT, USER_AGENT)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("{authority}: {e}"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), TRAFFIC_LIMIT)
            .collect()
            .await
            .map_err(|e| format!("{authority}: reading the answer: {e}"))?
            .to_bytes();
        Ok::<_, String>((status.as_u16(), body))
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer from {authority} within {} ms",
            timeout.as_millis()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake admin listener answering every request with `status` and `body`; or, with
    /// `silent`, accepting and never answering.
    async fn admin(status: u16, body: &'static str, silent: bool) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                if silent {
                    held.push(s);
                    continue;
                }
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let head = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    fn hub(id: &str, admin: &str) -> Value {
        serde_json::json!({"id": id, "admin": admin})
    }

    #[tokio::test]
    async fn the_hubs_traffic_is_fetched_and_silence_is_reported() {
        let answering = admin(
            200,
            r#"{"hub":"h1","windowSeconds":60,"tenants":[{"tenant":"acme","requestsPerSecond":12.5,"errorsPerSecond":0.5,"p50Ms":3,"p99Ms":40,"bytesInPerSecond":100,"bytesOutPerSecond":2000,"watches":4,"rejectedPerSecond":1}],"clients":[{"tenant":"acme","client":"kubectl/v1.32","source":"10.1.2.3","requestsPerSecond":12.5,"errorsPerSecond":0.5}]}"#,
            false,
        )
        .await;
        let silent = admin(200, "", true).await;
        let failing = admin(503, "not ready: no access data", false).await;
        let hubs = [
            hub("h1", &answering),
            hub("h2", &silent),
            hub("h3", ""),
            hub("h4", &failing),
            hub("h5", "https://h5:9090"),
        ];
        let timeout = Duration::from_millis(300);
        let got: BTreeMap<String, HubTraffic> =
            traffic_of(&hubs, timeout).await.into_iter().collect();
        match &got["h1"] {
            HubTraffic::Answered(t) => {
                assert_eq!((t.hub.as_str(), t.window_seconds), ("h1", 60));
                assert_eq!(t.tenants[0].watches, 4);
                assert_eq!(t.tenants[0].requests_per_second, 12.5);
                assert_eq!(t.clients[0].client, "kubectl/v1.32");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&got["h2"], HubTraffic::Failed(e) if e.contains("no answer") && e.contains("300 ms")),
            "{:?}",
            got["h2"]
        );
        assert!(matches!(&got["h3"], HubTraffic::NoAdmin), "{:?}", got["h3"]);
        assert!(
            matches!(&got["h4"], HubTraffic::Failed(e) if e.contains("503")),
            "{:?}",
            got["h4"]
        );
        assert!(
            matches!(&got["h5"], HubTraffic::Failed(e) if e.contains("http://")),
            "{:?}",
            got["h5"]
        );
        let ready = readiness_of(&hubs, timeout).await;
        assert_eq!(ready["h1"], Some(Ok("ready".to_owned())));
        assert!(matches!(&ready["h4"], Some(Err(e)) if e.contains("no access data")));
        assert!(matches!(&ready["h2"], Some(Err(_))));
        assert_eq!(ready["h3"], None);
    }
}
