//! The simulator's HTTP API: a request in, a response out, as kube-apiserver would answer it.
//!
//! Transport-free: [`handle`] takes an `http::Request` whose body has been read and returns an
//! `http::Response` whose body may stream (watch, `logs -f`). The server in [`super::server`]
//! puts it on sockets; the load harness can call it in-process.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use kubehub_cache::{
    concat, error_line, list_body, render_event, render_list, render_object, Filter, ListRequest,
    Render,
};
use kubehub_kapi::accept::negotiate;
use kubehub_kapi::path::{self, Endpoint, ResourcePath};
use kubehub_kapi::query::{IncludeObject, ListOptions, Query};
use kubehub_kapi::resources;
use kubehub_kapi::table::ListMeta;
use kubehub_kapi::Status;
use kubehub_wire::{ResourceType, Verbs};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::cluster::{Cluster, DeleteOptions, PatchType, WatchItem};
use super::openapi;
use super::validation;

/// A response body: whole, or streamed.
pub type Body = BoxBody<Bytes, Infallible>;

/// Largest request body accepted (kube-apiserver's limit is 3 MiB).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The version the simulator reports. `/usr/bin/kubectl` picks its bundled client by the
/// minor version, so this stays at a minor it bundles.
pub const VERSION: (&str, &str, &str) = ("1", "32", "v1.32.4-kubehub-sim");

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(code: u16, content_type: &str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(code: u16, body: impl Into<Bytes>) -> Response<Body> {
    respond(code, "application/json", full(body))
}

fn value_response(code: u16, v: &Value) -> Response<Body> {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

/// The Status error as a response.
pub fn status_response(s: &Status) -> Response<Body> {
    let mut r = json_response(s.code, s.to_json());
    if s.code == 503 || s.code == 504 || s.code == 429 {
        r.headers_mut()
            .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    }
    r
}

/// Answers one request against `cluster`.
pub async fn handle(cluster: &Arc<Cluster>, req: Request<Bytes>) -> Response<Body> {
    if !cluster.is_available() {
        return status_response(&Status::unavailable(
            "the simulated API server is restarting",
        ));
    }
    match route(cluster, req).await {
        Ok(r) => r,
        Err(s) => status_response(&s),
    }
}

fn header_str(req: &Request<Bytes>, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn route(cluster: &Arc<Cluster>, req: Request<Bytes>) -> Result<Response<Body>, Status> {
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let types = cluster.types();
    let get_only = |r: Value| {
        if req.method() == Method::GET {
            Ok(value_response(200, &r))
        } else {
            Err(Status::method_not_allowed())
        }
    };
    match path::parse(&path) {
        Endpoint::Version => get_only(json!({
            "major": VERSION.0, "minor": VERSION.1, "gitVersion": VERSION.2,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.6", "compiler": "gc",
            "platform": "linux/amd64",
        })),
        Endpoint::Health => Ok(respond(200, "text/plain; charset=utf-8", full("ok"))),
        Endpoint::CoreVersions => {
            let host = header_str(&req, header::HOST).unwrap_or("127.0.0.1");
            get_only(resources::api_versions(host))
        }
        Endpoint::Groups => get_only(resources::api_group_list(types)),
        Endpoint::Group(g) => resources::api_group(types, g)
            .map(get_only)
            .unwrap_or_else(|| Err(Status::no_such_resource())),
        Endpoint::Resources { group, version } => {
            resources::api_resource_list(types, group, version)
                .map(get_only)
                .unwrap_or_else(|| Err(Status::no_such_resource()))
        }
        Endpoint::OpenApiV3Index | Endpoint::OpenApiV3(_) | Endpoint::OpenApiV2 => {
            openapi::serve(&req, types)
        }
        Endpoint::Unknown => Err(Status::no_such_resource()),
        Endpoint::Resource(rp) => resource(cluster, &req, &query, rp).await,
    }
}

async fn resource(
    cluster: &Arc<Cluster>,
    req: &Request<Bytes>,
    query: &Query<'_>,
    rp: ResourcePath<'_>,
) -> Result<Response<Body>, Status> {
    let lookup = match rp.subresource {
        Some(sub) => format!("{}/{sub}", rp.resource),
        None => rp.resource.to_owned(),
    };
    let Some(ty) = cluster.type_index(rp.group, rp.version, &lookup) else {
        return Err(Status::no_such_resource());
    };
    let t = &cluster.types()[ty];
    // Scope: named objects of namespaced types need a namespace; cluster-scoped types have none.
    if (t.namespaced && rp.name.is_some() && rp.namespace.is_none())
        || (!t.namespaced && rp.namespace.is_some())
    {
        return Err(Status::no_such_resource());
    }
    let base = if rp.subresource.is_some() {
        cluster
            .type_index(rp.group, rp.version, rp.resource)
            .ok_or_else(Status::no_such_resource)?
    } else {
        ty
    };
    if t.group == "authorization.k8s.io" {
        return review(req, t);
    }
    let ns = rp.namespace;
    let dry_run = validation::dry_run(query, req.method())?;
    let allow = |v: Verbs| {
        if t.verbs.contains(v) {
            Ok(())
        } else {
            Err(Status::method_not_allowed())
        }
    };
    let method = req.method().clone();
    // Who a write is recorded for in `managedFields`.
    let manager = || {
        super::apply::manager_of(
            query.get("fieldManager"),
            header_str(req, header::USER_AGENT),
        )
    };
    match (rp.name, rp.subresource, method) {
        (None, None, Method::GET) => {
            let opts = ListOptions::from_query(query)?;
            let filter = Filter::for_request(t, ns, &opts)?;
            if opts.watch {
                allow(Verbs::WATCH)?;
                watch(cluster, req, ty, filter, opts)
            } else {
                allow(Verbs::LIST)?;
                list(cluster, req, ty, &filter, &opts)
            }
        }
        (None, None, Method::POST) => {
            allow(Verbs::CREATE)?;
            if t.namespaced && ns.is_none() {
                return Err(Status::method_not_allowed());
            }
            let mut body = json_body(req)?;
            let warnings = validation::check_object(t, &mut body, req.body(), query, req.method())?;
            let manager = manager();
            let now = kubehub_kapi::time::now_rfc3339();
            super::apply::track_write(None, &mut body, &manager, &now);
            let obj = cluster.create(ty, ns, body, dry_run)?;
            Ok(validation::with_warnings(
                json_response(201, obj),
                &warnings,
            ))
        }
        (None, None, Method::DELETE) => {
            allow(Verbs::DELETE_COLLECTION)?;
            let opts = ListOptions::from_query(query)?;
            let filter = Filter::for_request(t, ns, &opts)?;
            let dry_run = dry_run || validation::delete_dry_run(req.body())?;
            let items = cluster.delete_collection(ty, &filter, dry_run)?;
            let meta = ListMeta {
                resource_version: cluster.resource_version().to_string(),
                ..ListMeta::default()
            };
            Ok(json_response(200, concat(&list_body(t, &meta, &items))))
        }
        (Some(name), None, Method::GET) => {
            allow(Verbs::GET)?;
            let obj = cluster.get(ty, ns, name)?;
            single(req, t, &obj, query)
        }
        (Some(name), sub, Method::PUT) => {
            allow(Verbs::UPDATE)?;
            let mut body = json_body(req)?;
            let warnings = validation::check_object(t, &mut body, req.body(), query, req.method())?;
            if sub.is_none() {
                if let Ok(old) = cluster.get(base, ns, name) {
                    let old: Value = serde_json::from_slice(&old)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    let manager = manager();
                    let now = kubehub_kapi::time::now_rfc3339();
                    super::apply::track_write(Some(&old), &mut body, &manager, &now);
                }
            }
            let obj = cluster.update(base, ns, name, body, sub, dry_run)?;
            Ok(validation::with_warnings(
                json_response(200, obj),
                &warnings,
            ))
        }
        (Some(name), sub, Method::PATCH) => {
            allow(Verbs::PATCH)?;
            let ct = header_str(req, header::CONTENT_TYPE).unwrap_or("");
            if sub.is_none()
                && ct.split(';').next().map(str::trim) == Some(super::apply::CONTENT_TYPE)
            {
                let force = match query.get("force") {
                    None | Some("false") => false,
                    Some("true") => true,
                    Some(v) => {
                        return Err(Status::bad_request(format!("invalid force value {v:?}")))
                    }
                };
                let (code, obj) = super::apply::serve(
                    cluster,
                    base,
                    ns,
                    name,
                    req.body(),
                    query.get("fieldManager"),
                    force,
                    dry_run,
                    t,
                )?;
                return Ok(json_response(code, obj));
            }
            let Some(pt) = PatchType::from_content_type(ct) else {
                return Err(Status::unsupported_media_type(
                    ct,
                    &PatchType::CONTENT_TYPES,
                ));
            };
            let (stripped, warnings) =
                validation::check_patch(t, pt, req.body(), query, req.method())?;
            let body = stripped.as_deref().unwrap_or(req.body());
            let manager = manager();
            let obj = cluster.patch(base, ns, name, pt, body, sub, dry_run, Some(&manager))?;
            Ok(validation::with_warnings(
                json_response(200, obj),
                &warnings,
            ))
        }
        (Some(name), None, Method::DELETE) => {
            allow(Verbs::DELETE)?;
            let mut opts = delete_options(req.body())?;
            // Also a query parameter, as kube-apiserver reads DeleteOptions.
            if let Some(p) = query.get("propagationPolicy").filter(|p| !p.is_empty()) {
                let body = json!({ "propagationPolicy": p }).to_string();
                opts.propagation_policy = delete_options(body.as_bytes())?.propagation_policy;
            }
            let dry_run = dry_run || validation::delete_dry_run(req.body())?;
            let obj = cluster.delete(ty, ns, name, &opts, dry_run)?;
            Ok(json_response(200, obj))
        }
        (Some(name), Some("log"), Method::GET) => logs(cluster, base, ns, name, query),
        (Some(name), Some("status"), Method::GET) => {
            let obj = cluster.get(base, ns, name)?;
            single(req, t, &obj, query)
        }
        (Some(name), Some("scale"), Method::GET) => {
            let obj: Value = serde_json::from_slice(&cluster.get(base, ns, name)?)
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(value_response(200, &super::cluster::scale_of(&obj)))
        }
        _ => Err(Status::method_not_allowed()),
    }
}

/// `SelfSubjectAccessReview` and `SelfSubjectRulesReview`: the simulator has no RBAC, so every
/// user may do everything (as a cluster admin may), and says so. The review is answered, never
/// stored, as kube-apiserver does; kubectl sends it as protobuf, which is read too.
fn review(req: &Request<Bytes>, t: &ResourceType) -> Result<Response<Body>, Status> {
    use kubehub_kapi::review::{self, Review};
    if req.method() != Method::POST {
        return Err(Status::method_not_allowed());
    }
    let ct = header_str(req, header::CONTENT_TYPE).unwrap_or("application/json");
    let answer = match review::parse(&t.kind, ct, req.body())? {
        Review::Access(a) => review::access_answer(
            &a,
            true,
            "the simulator has no RBAC: every user may do everything",
        ),
        Review::Rules { namespace } => review::rules_answer(
            &namespace,
            json!([{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]),
            json!([{"verbs": ["*"], "nonResourceURLs": ["*"]}]),
        ),
    };
    Ok(value_response(201, &answer))
}

fn json_body(req: &Request<Bytes>) -> Result<Value, Status> {
    let ct = header_str(req, header::CONTENT_TYPE).unwrap_or("application/json");
    let media = ct.split(';').next().unwrap_or("").trim();
    if media == super::protobuf::MEDIA_TYPE {
        return super::protobuf::decode_body(ct, req.body());
    }
    if !matches!(media, "application/json" | "" | "*/*") {
        return Err(Status::unsupported_media_type(ct, &["application/json"]));
    }
    let v: Value = serde_json::from_slice(req.body()).map_err(|e| {
        Status::bad_request(format!(
            "the body of the request could not be decoded as JSON: {e}"
        ))
    })?;
    if !v.is_object() {
        return Err(Status::bad_request(
            "the body of the request must be a JSON object",
        ));
    }
    Ok(v)
}

fn delete_options(body: &[u8]) -> Result<DeleteOptions, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DeleteOptions::default());
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Status::bad_request(format!("error decoding DeleteOptions: {e}")))?;
    if let Some(p) = v["propagationPolicy"].as_str() {
        if !matches!(p, "Orphan" | "Background" | "Foreground") {
            return Err(Status::invalid("", "DeleteOptions", "", "propagationPolicy", &format!(
                "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            )));
        }
    }
    Ok(DeleteOptions {
        propagation_policy: match v["propagationPolicy"].as_str() {
            Some("Orphan") => Some(super::cluster::Propagation::Orphan),
            Some("Foreground") => Some(super::cluster::Propagation::Foreground),
            Some(_) => Some(super::cluster::Propagation::Background),
            None if v["orphanDependents"] == true => Some(super::cluster::Propagation::Orphan),
            None => None,
        },
        uid: v["preconditions"]["uid"].as_str().map(str::to_owned),
        resource_version: v["preconditions"]["resourceVersion"]
            .as_str()
            .map(str::to_owned),
    })
}

fn list(
    cluster: &Arc<Cluster>,
    req: &Request<Bytes>,
    ty: usize,
    filter: &Filter,
    opts: &ListOptions,
) -> Result<Response<Body>, Status> {
    let t = &cluster.types()[ty];
    let protobuf = super::protobuf::negotiate(header_str(req, header::ACCEPT))?;
    let wants = protobuf.unwrap_or(kubehub_kapi::accept::Wants::Json);
    let page = cluster.list(
        ty,
        filter,
        &ListRequest {
            version: opts.version,
            limit: opts.limit,
            continue_token: opts.continue_token.clone(),
        },
    )?;
    let render = Render::new(wants, opts.include_object);
    let body = render_list(t, render, &page.list_meta(), &page.items, SystemTime::now());
    if protobuf.is_none() {
        let pb = super::protobuf::encode_body(&concat(&body))?;
        return Ok(respond(200, super::protobuf::MEDIA_TYPE, full(pb)));
    }
    Ok(json_response(200, concat(&body)))
}

fn single(
    req: &Request<Bytes>,
    t: &ResourceType,
    obj: &Bytes,
    query: &Query<'_>,
) -> Result<Response<Body>, Status> {
    let Some(wants) = super::protobuf::negotiate(header_str(req, header::ACCEPT))? else {
        let pb = super::protobuf::encode_body(obj)?;
        return Ok(respond(200, super::protobuf::MEDIA_TYPE, full(pb)));
    };
    let include = ListOptions::from_query(query)
        .map(|o| o.include_object)
        .unwrap_or(IncludeObject::Metadata);
    let body = render_object(t, Render::new(wants, include), obj, SystemTime::now());
    Ok(json_response(200, body))
}

fn item_line(t: &ResourceType, render: Render, item: &WatchItem) -> Bytes {
    render_event(t, render, item.kind, &item.object, SystemTime::now()).to_bytes()
}

fn streaming(rx: mpsc::Receiver<Bytes>, content_type: &str) -> Response<Body> {
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    let mut r = respond(200, content_type, BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    r
}

fn watch(
    cluster: &Arc<Cluster>,
    req: &Request<Bytes>,
    ty: usize,
    filter: Filter,
    opts: ListOptions,
) -> Result<Response<Body>, Status> {
    let render = Render::new(
        negotiate(header_str(req, header::ACCEPT))?,
        opts.include_object,
    );
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let response = streaming(rx, "application/json");
    let start = match cluster.watch(ty, &filter, opts.version, opts.send_initial_events) {
        Ok(s) => s,
        Err(status) => {
            // As kube-apiserver: a 200 whose only event is an ERROR carrying the Status.
            let _ = tx.try_send(error_line(&status));
            return Ok(response);
        }
    };
    let timeout = Duration::from_secs(opts.timeout_seconds.unwrap_or(1800).max(1));
    let bookmarks = opts.allow_bookmarks;
    let cluster = cluster.clone();
    tokio::spawn(async move {
        let t = &cluster.types()[ty];
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut bm = tokio::time::interval(cluster.config().bookmark_interval);
        bm.tick().await; // the first tick is immediate
        for item in &start.initial {
            if tx.send(item_line(t, render, item)).await.is_err() {
                return;
            }
        }
        let mut live = start.live;
        let mut disconnect = start.disconnect;
        let mut seen_rv = start.start_rv;
        loop {
            tokio::select! {
                // Disconnection first: a watch told to end sends nothing more.
                biased;
                _ = disconnect.changed() => return,
                ev = live.recv() => match ev {
                    Ok(ev) => {
                        if ev.ty != ty {
                            seen_rv = ev.rv;
                            continue;
                        }
                        let delay = cluster.config().watch_delay;
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        seen_rv = ev.rv;
                        if let Some(kind) = ev.visible_to(&filter) {
                            let object = ev.event_object(kind);
                            let line = render_event(t, render, kind.into(), &object, SystemTime::now());
                            if tx.send(line.to_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::info!(cluster = cluster.name(), resource = %t.resource, "closing a watch that fell {n} events behind");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = bm.tick(), if bookmarks => {
                    let item = cluster.bookmark(ty, seen_rv, false);
                    if tx.send(item_line(t, render, &item)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(response)
}

fn logs(
    cluster: &Arc<Cluster>,
    pods: usize,
    ns: Option<&str>,
    name: &str,
    query: &Query<'_>,
) -> Result<Response<Body>, Status> {
    let pod: Value = serde_json::from_slice(&cluster.get(pods, ns, name)?).unwrap_or(Value::Null);
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| c["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let container = match query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().any(|x| x == c) => c.to_owned(),
        Some(c) => {
            return Err(Status::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None => match pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"]
            .as_str()
        {
            Some(d) if containers.iter().any(|x| x == d) => d.to_owned(),
            _ if containers.len() == 1 => containers[0].clone(),
            _ => {
                return Err(Status::bad_request(format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                )))
            }
        },
    };
    let follow = query.flag("follow")?;
    let timestamps = query.flag("timestamps")?;
    let tail = query.get("tailLines").and_then(|v| v.parse::<i64>().ok());
    let limit_bytes = query.number("limitBytes")?;
    const HISTORY: u64 = 20;
    let first = match tail {
        Some(n) if n >= 0 => HISTORY.saturating_sub(n as u64) + 1,
        _ => 1,
    };
    let ns = ns.unwrap_or("").to_owned();
    let name = name.to_owned();
    let line = move |i: u64| {
        let ts = kubehub_kapi::time::now_rfc3339();
        let body = format!("simulated log line {i} from {ns}/{name} container {container}\n");
        if timestamps {
            Bytes::from(format!("{ts} {body}"))
        } else {
            Bytes::from(body)
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let response = streaming(rx, "text/plain");
    let cluster = cluster.clone();
    let interval = cluster.config().log_interval;
    let (pod_ns, pod_name) = (
        ns_of(&pod),
        pod["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    );
    tokio::spawn(async move {
        let mut sent = 0u64;
        let budget = limit_bytes.unwrap_or(u64::MAX);
        let mut send = |b: Bytes| {
            let b = if sent + b.len() as u64 > budget {
                b.slice(..(budget - sent) as usize)
            } else {
                b
            };
            sent += b.len() as u64;
            b
        };
        for i in first..=HISTORY {
            let b = send(line(i));
            if b.is_empty() || tx.send(b).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut i = HISTORY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = tx.closed() => return,
            }
            // The stream ends when the pod goes away, as the kubelet's does.
            if cluster.get(pods, pod_ns.as_deref(), &pod_name).is_err() {
                return;
            }
            i += 1;
            let b = send(line(i));
            if b.is_empty() || tx.send(b).await.is_err() {
                return;
            }
        }
    });
    Ok(response)
}

fn ns_of(obj: &Value) -> Option<String> {
    obj["metadata"]["namespace"].as_str().map(str::to_owned)
}
