//! The operations console: web pages an SRE opens in a browser at `https://<meta>/console/`,
//! served by meta itself (no other server, nothing fetched at run time: the one stylesheet and
//! the one script are compiled into the binary).
//!
//! Pages (each a server-rendered HTML page whose data section updates live):
//!
//! | Page | Shows | Actions |
//! |---|---|---|
//! | `/console/hubs` | live hubs: version, environment, zone, agents, streams, CPU, draining, health (the hub's admin `/readyz`), last seen | drain, undrain |
//! | `/console/clusters` | clusters and their agents: tenant, environment, labels, the hubs the agent is connected to, sync state where the agent reports it, last seen | move (pin to a hub), unpin |
//! | `/console/tenants` | tenants with their users, grants and live tokens | revoke a token |
//! | `/console/traffic` | every hub's admin `/traffic` (requests/s, errors, latency, bytes, watches, rejections per tenant; top clients), and which hubs did not answer | — |
//! | `/console/bans` | bans in force | ban, lift |
//! | `/console/canary` | the canary rule | set, clear |
//!
//! **Sign-in.** The console takes the same credential as the admin API: one of the tokens in
//! `admin_token_file`. `POST /console/login` checks it and keeps it in the cookie
//! `kubehub_console` (`Secure; HttpOnly; SameSite=Strict; Path=/console`, no expiry: it ends
//! with the browser session; `POST /console/logout` clears it). Every console request checks
//! the cookie again, so removing a token from the file (and restarting meta) signs its
//! sessions out. A user's token, even a tenant admin's, is refused. Pages and actions answer
//! with `Cache-Control: no-store` and a `Content-Security-Policy` that allows only the
//! console's own script and stylesheet; a form posted from another origin is refused
//! (`SameSite=Strict`, and the `Origin` / `Sec-Fetch-Site` headers are checked).
//!
//! **Live updates.** Each page's script opens `GET /console/events?page=<page>`, a stream of
//! server-sent events: meta checks the store's revision every `console.refresh_ms` (and
//! renders again at least every `console.traffic_interval_ms`, for the traffic, the hubs'
//! health and bans that expire), and when the page's data section changed it sends the new
//! section as an `update` event, which the script swaps in. No page reload; forms sit outside
//! the live section so an update never disturbs typing.
//!
//! **Actions** are HTML forms posted to `/console/actions/<name>`; each is one call of meta's
//! own HTTP API made in process with the operator's admin token ([`data::Data::call`]): the
//! same validation, errors and audit as `kubehub ctl`. The page then shows what the API said
//! (success, or its error message), carried across the redirect in a short-lived cookie.
//!
//! | Action | API call |
//! |---|---|
//! | `ban` | `POST /v1/bans` `{target, reason, ttlSeconds?, expiresAt?}` |
//! | `unban` | `DELETE /v1/bans/{id}` |
//! | `revoke` | `DELETE /v1/tokens/{id}` |
//! | `drain` | `POST /v1/registry/hubs/{id}/drain` `{drain}` |
//! | `pin`, `unpin` | `PUT /v1/registry/pins/{cluster}` `{hub}`, `DELETE /v1/registry/pins/{cluster}` |
//! | `canary`, `canary-clear` | `PUT /v1/canary` `{version, clusterLabels, tenants, percent}`, `DELETE /v1/canary` |

pub mod data;
pub mod html;
pub mod pages;

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use self::data::{ApiError, Data};
use self::html::Flash;
use crate::service::Meta;

/// The session cookie (the admin token).
const SESSION: &str = "kubehub_console";
/// The cookie that carries an action's outcome across its redirect.
const FLASH: &str = "kubehub_console_flash";
/// Form bodies larger than this are refused.
const FORM_LIMIT: usize = 64 * 1024;
/// Update events buffered for one open page (a slow browser gets the latest later, not all).
const EVENTS_DEPTH: usize = 2;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// A console page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Hubs.
    Hubs,
    /// Clusters and agents.
    Clusters,
    /// Tenants, users, grants, tokens.
    Tenants,
    /// Traffic per tenant and client.
    Traffic,
    /// Bans.
    Bans,
    /// The canary rule.
    Canary,
}

impl Page {
    /// Every page, in the navigation's order.
    pub const ALL: [Page; 6] = [
        Page::Hubs,
        Page::Clusters,
        Page::Tenants,
        Page::Traffic,
        Page::Bans,
        Page::Canary,
    ];

    /// Its path under `/console/`.
    pub fn slug(self) -> &'static str {
        match self {
            Page::Hubs => "hubs",
            Page::Clusters => "clusters",
            Page::Tenants => "tenants",
            Page::Traffic => "traffic",
            Page::Bans => "bans",
            Page::Canary => "canary",
        }
    }

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Page::Hubs => "Hubs",
            Page::Clusters => "Clusters",
            Page::Tenants => "Tenants",
            Page::Traffic => "Traffic",
            Page::Bans => "Bans",
            Page::Canary => "Canary",
        }
    }

    /// The page at `slug`.
    pub fn from_slug(slug: &str) -> Option<Page> {
        Page::ALL.into_iter().find(|p| p.slug() == slug)
    }
}

/// The console's state.
#[derive(Debug, Clone)]
struct Console {
    data: Data,
}

/// The console's routes (all under `/console`), acting through `api`, meta's API router.
pub fn router(meta: Meta, api: Router) -> Router {
    let console = Console {
        data: Data::new(meta, api),
    };
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/hubs") }))
        .route("/console/", get(|| async { Redirect::to("/console/hubs") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .route("/console/events", get(events))
        .route("/console/actions/{action}", post(action))
        .route("/console/{page}", get(page))
        .layer(axum::extract::DefaultBodyLimit::max(FORM_LIMIT))
        .with_state(console)
}

// ---- responses ---------------------------------------------------------------------------

/// Headers every console answer carries.
fn secure(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn html(code: StatusCode, body: String) -> Response {
    secure(
        (
            code,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn cookie(name: &str, value: &str, max_age: Option<u64>) -> String {
    let value: String = form_urlencoded::byte_serialize(value.as_bytes()).collect();
    let age = max_age
        .map(|a| format!("; Max-Age={a}"))
        .unwrap_or_default();
    format!("{name}={value}; Path=/console; Secure; HttpOnly; SameSite=Strict{age}")
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| {
            form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
}

fn see_other(to: &str, cookies: &[String]) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response();
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    secure(r)
}

// ---- sign-in -----------------------------------------------------------------------------

/// A signed-in operator: the admin token from the session cookie, checked.
struct Session(String);

/// Why a console request was not let in.
enum Refused {
    /// No session or a stale one: to the login page (or 401 for the event stream).
    SignIn,
    /// A form from another origin.
    CrossSite,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::SignIn => see_other("/console/login", &[cookie(SESSION, "", Some(0))]),
            Refused::CrossSite => html(
                StatusCode::FORBIDDEN,
                "a console form must be posted from the console itself\n".into(),
            ),
        }
    }
}

impl FromRequestParts<Console> for Session {
    type Rejection = Refused;

    async fn from_request_parts(parts: &mut Parts, c: &Console) -> Result<Self, Self::Rejection> {
        if parts.method == Method::POST && cross_site(&parts.headers) {
            return Err(Refused::CrossSite);
        }
        let token = cookie_value(&parts.headers, SESSION).ok_or(Refused::SignIn)?;
        c.data.is_admin(&token).await.map_err(|_| Refused::SignIn)?;
        Ok(Session(token))
    }
}

/// Whether a POST came from another site: `Sec-Fetch-Site` says so (browsers that send it),
/// or else `Origin` names another origin than `https://<Host>`.
fn cross_site(h: &HeaderMap) -> bool {
    if let Some(site) = h.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    match (
        h.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        h.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => origin != format!("https://{host}"),
        (Some(_), None) => true,
        _ => false,
    }
}

async fn login_page() -> Response {
    html(StatusCode::OK, html::login(None))
}

fn form(body: &Bytes) -> HashMap<String, String> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.trim().to_owned()))
        .collect()
}

async fn login(State(c): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    if cross_site(&headers) {
        return Refused::CrossSite.into_response();
    }
    let f = form(&body);
    let token = f.get("token").map(String::as_str).unwrap_or_default();
    if token.is_empty() {
        return html(
            StatusCode::BAD_REQUEST,
            html::login(Some("Enter an admin token.")),
        );
    }
    match c.data.is_admin(token).await {
        Ok(()) => {
            tracing::info!("console: an operator signed in");
            see_other("/console/hubs", &[cookie(SESSION, token, None)])
        }
        Err(e) => {
            tracing::info!("console: sign-in refused: {}", e.message);
            let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::UNAUTHORIZED);
            html(
                code,
                html::login(Some(&format!("Not signed in: {}", e.message))),
            )
        }
    }
}

async fn logout(headers: HeaderMap) -> Response {
    if cross_site(&headers) {
        return Refused::CrossSite.into_response();
    }
    see_other("/console/login", &[cookie(SESSION, "", Some(0))])
}

// ---- pages -------------------------------------------------------------------------------

async fn css() -> Response {
    secure(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response())
}

async fn js() -> Response {
    secure(
        (
            [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
            JS,
        )
            .into_response(),
    )
}

fn ctx<'a>(c: &Console, token: &'a str) -> pages::Ctx<'a> {
    pages::Ctx {
        token,
        hub_timeout: Duration::from_millis(c.data.meta().cfg.console.traffic_timeout_ms),
    }
}

async fn page(
    State(c): State<Console>,
    Session(token): Session,
    Path(slug): Path<String>,
    headers: HeaderMap,
) -> Response {
    let Some(page) = Page::from_slug(&slug) else {
        return html(
            StatusCode::NOT_FOUND,
            format!("no console page {:?}\n", html::esc(&slug)),
        );
    };
    let flash = cookie_value(&headers, FLASH).and_then(|v| {
        let (kind, m) = v.split_once(':')?;
        Some(match kind {
            "ok" => Flash::Ok(m.to_owned()),
            _ => Flash::Err(m.to_owned()),
        })
    });
    let (forms, live) = tokio::join!(
        pages::forms(page, &c.data),
        pages::live(page, &c.data, ctx(&c, &token))
    );
    let mut r = html(
        StatusCode::OK,
        html::layout(page, flash.as_ref(), &forms, &live),
    );
    if flash.is_some() {
        if let Ok(v) = HeaderValue::from_str(&cookie(FLASH, "", Some(0))) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

async fn events(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    // An event stream answers 401 rather than a redirect: the script says "signed out".
    let Some(token) = cookie_value(&headers, SESSION) else {
        return (StatusCode::UNAUTHORIZED, "not signed in\n").into_response();
    };
    if c.data.is_admin(&token).await.is_err() {
        return (StatusCode::UNAUTHORIZED, "not signed in\n").into_response();
    }
    let Some(page) = q.get("page").and_then(|p| Page::from_slug(p)) else {
        return (StatusCode::NOT_FOUND, "no such console page\n").into_response();
    };
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(EVENTS_DEPTH);
    tokio::spawn(push_updates(c, token, page, tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    secure(
        Sse::new(stream)
            .keep_alive(KeepAlive::default())
            .into_response(),
    )
}

/// Renders `page` whenever the store moved (checked every `refresh_ms`) or
/// `traffic_interval_ms` passed, and sends the section when it changed; ends when the
/// browser goes away.
async fn push_updates(
    c: Console,
    token: String,
    page: Page,
    tx: mpsc::Sender<Result<Event, Infallible>>,
) {
    let cfg = c.data.meta().cfg.console.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(cfg.refresh_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let every = Duration::from_millis(cfg.traffic_interval_ms);
    let mut seen_revision = None;
    let mut rendered_at: Option<Instant> = None;
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        let revision = c.data.revision().await.ok();
        let due = rendered_at.is_none_or(|t| t.elapsed() >= every);
        if !due && revision.is_some() && revision == seen_revision {
            continue;
        }
        seen_revision = revision;
        rendered_at = Some(Instant::now());
        let section = pages::live(page, &c.data, ctx(&c, &token)).await;
        if section == last {
            continue;
        }
        if tx
            .send(Ok(Event::default().event("update").data(&section)))
            .await
            .is_err()
        {
            return;
        }
        last = section;
    }
}

// ---- actions -----------------------------------------------------------------------------

fn seg(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn needs(f: &HashMap<String, String>, field: &str, what: &str) -> Result<String, ApiError> {
    match f.get(field).filter(|v| !v.is_empty()) {
        Some(v) => Ok(v.clone()),
        None => Err(ApiError {
            code: 400,
            message: format!("{field}: {what} is required"),
        }),
    }
}

/// The API call an action form makes: method, path, body, the page to go back to and what
/// to say when it worked.
fn plan(
    action: &str,
    f: &HashMap<String, String>,
) -> Result<(Method, String, Option<Value>, Page, String), ApiError> {
    let field = |k: &str| f.get(k).cloned().unwrap_or_default();
    Ok(match action {
        "ban" => {
            let kind = needs(f, "kind", "who to ban")?;
            let target = match kind.as_str() {
                "token" | "user" | "tenant" | "cluster" => {
                    json!({ kind.as_str(): needs(f, "value", "a name or an id")? })
                }
                "client" => {
                    let mut c = serde_json::Map::new();
                    for k in ["userAgent", "source"] {
                        if !field(k).is_empty() {
                            c.insert(k.into(), Value::String(field(k)));
                        }
                    }
                    json!({ "client": c })
                }
                other => {
                    return Err(ApiError {
                        code: 400,
                        message: format!(
                            "kind: {other:?} is not token, user, tenant, cluster or client"
                        ),
                    })
                }
            };
            let mut body = json!({ "target": target, "reason": field("reason") });
            if !field("for").is_empty() {
                let d = humantime::parse_duration(&field("for")).map_err(|e| ApiError {
                    code: 400,
                    message: format!(
                        "for: {:?} is not a duration such as 30m or 1h: {e}",
                        field("for")
                    ),
                })?;
                body["ttlSeconds"] = json!(d.as_secs());
            }
            if !field("until").is_empty() {
                body["expiresAt"] = json!(field("until"));
            }
            (
                Method::POST,
                "/v1/bans".into(),
                Some(body),
                Page::Bans,
                "Banned".into(),
            )
        }
        "unban" => {
            let id = needs(f, "id", "the ban's id")?;
            (
                Method::DELETE,
                format!("/v1/bans/{}", seg(&id)),
                None,
                Page::Bans,
                format!("Ban {id} lifted"),
            )
        }
        "revoke" => {
            let id = needs(f, "id", "the token's id")?;
            (
                Method::DELETE,
                format!("/v1/tokens/{}", seg(&id)),
                None,
                Page::Tenants,
                format!("Token {id} revoked"),
            )
        }
        "drain" => {
            let hub = needs(f, "hub", "the hub's id")?;
            let drain = field("drain") != "false";
            (
                Method::POST,
                format!("/v1/registry/hubs/{}/drain", seg(&hub)),
                Some(json!({ "drain": drain })),
                Page::Hubs,
                if drain {
                    format!("Hub {hub} is draining")
                } else {
                    format!("Hub {hub} is no longer draining")
                },
            )
        }
        "pin" => {
            let cluster = needs(f, "cluster", "the cluster's id")?;
            let hub = needs(f, "hub", "the hub to move it to")?;
            (
                Method::PUT,
                format!("/v1/registry/pins/{}", seg(&cluster)),
                Some(json!({ "hub": hub })),
                Page::Clusters,
                format!("Cluster {cluster} moved to hub {hub}"),
            )
        }
        "unpin" => {
            let cluster = needs(f, "cluster", "the cluster's id")?;
            (
                Method::DELETE,
                format!("/v1/registry/pins/{}", seg(&cluster)),
                None,
                Page::Clusters,
                format!("Cluster {cluster} unpinned"),
            )
        }
        "canary" => {
            let percent = match field("percent").as_str() {
                "" => 0,
                p => p.parse::<i64>().map_err(|_| ApiError {
                    code: 400,
                    message: format!("percent: {p:?} is not a whole number from 0 to 100"),
                })?,
            };
            let mut labels = serde_json::Map::new();
            for kv in list(&field("clusterLabels")) {
                let (k, v) = kv.split_once('=').ok_or_else(|| ApiError {
                    code: 400,
                    message: format!("clusterLabels: {kv:?} is not key=value"),
                })?;
                labels.insert(k.trim().to_owned(), Value::String(v.trim().to_owned()));
            }
            let body = json!({
                "version": field("version"),
                "clusterLabels": labels,
                "tenants": list(&field("tenants")),
                "percent": percent,
            });
            (
                Method::PUT,
                "/v1/canary".into(),
                Some(body),
                Page::Canary,
                "Canary rule set".into(),
            )
        }
        "canary-clear" => (
            Method::DELETE,
            "/v1/canary".into(),
            None,
            Page::Canary,
            "Canary rule cleared".into(),
        ),
        other => {
            return Err(ApiError {
                code: 404,
                message: format!("no console action {other:?}"),
            })
        }
    })
}

/// The page an action goes back to when it could not even be planned.
fn page_of(action: &str) -> Page {
    match action {
        "ban" | "unban" => Page::Bans,
        "revoke" => Page::Tenants,
        "drain" => Page::Hubs,
        "pin" | "unpin" => Page::Clusters,
        "canary" | "canary-clear" => Page::Canary,
        _ => Page::Hubs,
    }
}

async fn action(
    State(c): State<Console>,
    Session(token): Session,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let f = form(&body);
    let (page, flash) = match plan(&name, &f) {
        Err(e) => (page_of(&name), format!("err:{}", e.message)),
        Ok((method, path, body, page, said)) => {
            match c.data.call(&token, method.clone(), &path, body).await {
                Ok(answer) => {
                    tracing::info!(action = %name, %path, "console: action done");
                    let id = answer.get("id").and_then(Value::as_str);
                    let said = match (name.as_str(), id) {
                        ("ban", Some(id)) => format!("{said} (ban {id})"),
                        _ => said,
                    };
                    (page, format!("ok:{said}"))
                }
                Err(e) => {
                    tracing::info!(action = %name, %path, code = e.code, "console: action failed: {}", e.message);
                    (
                        page,
                        format!("err:{} ({} {method} {path})", e.message, e.code),
                    )
                }
            }
        }
    };
    see_other(
        &format!("/console/{}", page.slug()),
        &[cookie(FLASH, &flash, Some(60))],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn forms_become_the_api_calls_of_the_contracts() {
        let (m, p, b, page, _) = plan(
            "ban",
            &f(&[
                ("kind", "client"),
                ("userAgent", "python*"),
                ("source", ""),
                ("reason", "abuse"),
                ("for", "1h"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (m, p.as_str(), page),
            (Method::POST, "/v1/bans", Page::Bans)
        );
        assert_eq!(
            b.unwrap(),
            json!({"target": {"client": {"userAgent": "python*"}}, "reason": "abuse", "ttlSeconds": 3600})
        );
        let (_, _, b, _, _) = plan(
            "ban",
            &f(&[
                ("kind", "user"),
                ("value", "mallory"),
                ("reason", "r"),
                ("until", "2030-01-01T00:00:00Z"),
            ]),
        )
        .unwrap();
        assert_eq!(
            b.unwrap(),
            json!({"target": {"user": "mallory"}, "reason": "r", "expiresAt": "2030-01-01T00:00:00Z"})
        );
        let (m, p, b, ..) = plan("drain", &f(&[("hub", "hub/1"), ("drain", "true")])).unwrap();
        assert_eq!(
            (m, p.as_str()),
            (Method::POST, "/v1/registry/hubs/hub%2F1/drain")
        );
        assert_eq!(b.unwrap(), json!({"drain": true}));
        let (m, p, b, ..) = plan("pin", &f(&[("cluster", "edge-1"), ("hub", "hub-2")])).unwrap();
        assert_eq!((m, p.as_str()), (Method::PUT, "/v1/registry/pins/edge-1"));
        assert_eq!(b.unwrap(), json!({"hub": "hub-2"}));
        let (m, p, b, ..) = plan(
            "canary",
            &f(&[
                ("version", "1.3.0"),
                ("clusterLabels", "tier=canary, region = eu"),
                ("tenants", "a, b"),
                ("percent", "10"),
            ]),
        )
        .unwrap();
        assert_eq!((m, p.as_str()), (Method::PUT, "/v1/canary"));
        assert_eq!(
            b.unwrap(),
            json!({"version": "1.3.0", "clusterLabels": {"tier": "canary", "region": "eu"}, "tenants": ["a", "b"], "percent": 10})
        );
        let (m, p, ..) = plan("revoke", &f(&[("id", "abc")])).unwrap();
        assert_eq!((m, p.as_str()), (Method::DELETE, "/v1/tokens/abc"));
    }

    #[test]
    fn bad_forms_say_which_field() {
        let e = |a: &str, p: &[(&str, &str)]| plan(a, &f(p)).err().unwrap().message;
        assert!(e("ban", &[("kind", "user"), ("reason", "x")]).starts_with("value:"));
        assert!(e("ban", &[("kind", "planet"), ("value", "x")]).starts_with("kind:"));
        assert!(e("ban", &[("kind", "user"), ("value", "x"), ("for", "soon")]).starts_with("for:"));
        assert!(e("canary", &[("version", "1"), ("percent", "ten")]).starts_with("percent:"));
        assert!(e("canary", &[("version", "1"), ("clusterLabels", "tier")])
            .starts_with("clusterLabels:"));
        assert!(e("launch", &[]).contains("no console action"));
    }

    #[test]
    fn cookies_are_secure_and_read_back() {
        let c = cookie(SESSION, "khT.a b;c", None);
        assert!(c.contains("; Secure; HttpOnly; SameSite=Strict"), "{c}");
        assert!(!c.contains("Max-Age"));
        let mut h = HeaderMap::new();
        let value = c.split(';').next().unwrap().to_owned();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; {value}")).unwrap(),
        );
        assert_eq!(cookie_value(&h, SESSION).as_deref(), Some("khT.a b;c"));
    }

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        let h = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        assert!(!cross_site(&h(&[
            ("host", "meta:7443"),
            ("origin", "https://meta:7443")
        ])));
        assert!(!cross_site(&h(&[("host", "meta:7443")])));
        assert!(cross_site(&h(&[
            ("host", "meta:7443"),
            ("origin", "https://evil.example")
        ])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
    }
}
