//! `serve`: a planned read answered from a snapshot of the cache.
//!
//! The read first becomes current enough ([`super::plan::Freshness`]): a confirmation from
//! the agent for most-recent reads (shared with every read waiting on the same cluster and
//! type), the cache reaching a version for `NotOlderThan`, nothing for `resourceVersion=0`.
//! When that cannot happen in `consistent_read_timeout_ms` the read is forwarded instead, so
//! the cache never answers with older data than the edge would.
//!
//! Then one snapshot answers it: a get looks one key up; a list (every page of it) reads one
//! version; a watch sends its initial events from the snapshot and follows the history from
//! there, a cursor per watcher over events encoded once for all of them.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use kubehub_cache::list::{decode_continue, CONTINUE_EXPIRED};
use kubehub_cache::watch::bookmark_line;
use kubehub_cache::{self as store, Filter, ListRequest, ObjKey, Render, Snapshot};
use kubehub_kapi::Status;
use kubehub_wire::{EventType, Fields};
use tracing::debug;

use super::plan::{Freshness, Plan, Read, HUB_TOKEN};
use super::{ClusterCache, TypeSlot};
use crate::config::Consistency;
use crate::metrics::{CacheLabel, OutcomeLabel};
use crate::proxy::respond::Responder;
use crate::proxy::{Conn, ProxyCtx};
use crate::registry::{Lookup, TunnelCmd};

/// How a read offered to the cache ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Served {
    /// Answered; whether the connection may carry another request.
    Done(bool),
    /// Not answered: forward it (the reason is counted).
    Forward(&'static str),
}

fn verb_of(read: &Read) -> &'static str {
    match read {
        Read::Get { .. } => "get",
        Read::List => "list",
        Read::Watch => "watch",
    }
}

/// Answers `plan` from `slot`, or says why it must be forwarded.
pub async fn serve(
    ctx: &ProxyCtx,
    conn: &mut Conn,
    out: &mut Responder<'_>,
    cluster: &str,
    cc: &ClusterCache,
    slot: Arc<TypeSlot>,
    plan: Plan,
) -> Served {
    let verb = verb_of(&plan.read);
    let count = |outcome: &'static str, reason: &'static str| {
        ctx.metrics
            .cache_reads
            .get_or_create(&CacheLabel {
                verb,
                outcome,
                reason,
            })
            .inc();
    };
    // Subscribed before the checks below: a sync stream ending after them still ends a watch.
    // (Only a watch needs it: gets and lists do not make the slot's channel exist.)
    let epoch = (plan.read == Read::Watch).then(|| slot.epoch());
    let decided = match ready(ctx, cluster, cc, &slot, &plan).await {
        Ok(warning) => filter_for(&slot, &plan).map(|f| (warning, f)),
        Err(reason) => Err(reason),
    };
    let (warning, filter) = match decided {
        Ok(d) => d,
        Err(reason) => {
            count("forward", reason);
            if plan.opts.continue_token.is_some() {
                // A page of a list the hub began cannot go to the edge (the token names the
                // hub's snapshot): kube-apiserver's answer for an expired token, on which
                // clients (client-go's pager) list again.
                return Served::Done(out.status(conn, &Status::expired(CONTINUE_EXPIRED)).await);
            }
            return Served::Forward(reason);
        }
    };
    let snap = slot.cache.snapshot();
    count(if warning.is_some() { "stale" } else { "hit" }, "");
    let mut fields: Fields = vec![(
        Bytes::from_static(b"Content-Type"),
        Bytes::from_static(b"application/json"),
    )];
    if let Some(w) = warning {
        fields.push((Bytes::from_static(b"Warning"), Bytes::from(w)));
    }
    fields.push((
        Bytes::from_static(b"X-Kubehub-Cache"),
        Bytes::from_static(b"hit"),
    ));
    let keep = match &plan.read {
        Read::Get { name } => get(conn, out, &slot, &snap, &plan, name, fields).await,
        Read::List => list(conn, out, &slot, &snap, &plan, &filter, fields).await,
        Read::Watch => {
            let w = Watch {
                slot: &slot,
                snap,
                plan: &plan,
                filter,
                epoch: epoch.unwrap_or_else(|| slot.epoch()),
            };
            watch(ctx, conn, out, w, fields).await
        }
    };
    Served::Done(keep)
}

/// Whether the cache may answer now: `Ok` with the `Warning` to attach when the agent is away
/// (within the grace period), after waiting for the freshness the plan asks for; `Err`: the
/// reason to forward instead.
async fn ready(
    ctx: &ProxyCtx,
    cluster: &str,
    cc: &ClusterCache,
    slot: &Arc<TypeSlot>,
    plan: &Plan,
) -> Result<Option<String>, &'static str> {
    let cfg = &ctx.caches.cfg;
    if slot.is_synced() {
        return current_enough(ctx, cluster, slot, plan)
            .await
            .map(|()| None);
    }
    let within_grace = ctx.caches.serves_stale()
        && cc
            .gone_for()
            .is_some_and(|g| g <= Duration::from_millis(cfg.stale_grace_ms));
    let snap = slot.cache.snapshot();
    if !within_grace || !snap.is_loaded() || plan.read == Read::Watch {
        return Err("not_synced");
    }
    // Stale is tolerable; older than the client already saw is not.
    if let Freshness::NotOlderThan(n) = plan.freshness {
        if snap.rv() < n {
            return Err("behind");
        }
    }
    let age = cc.gone_for().unwrap_or_default().as_secs();
    Ok(Some(format!(
        "299 - \"kubehub: the agent of cluster {cluster} is disconnected; this answer is from the hub's cache, last updated {age}s ago\""
    )))
}

/// Waits until the cache may answer with the freshness the plan asks for. `Err`: the reason
/// to forward instead.
async fn current_enough(
    ctx: &ProxyCtx,
    cluster: &str,
    slot: &Arc<TypeSlot>,
    plan: &Plan,
) -> Result<(), &'static str> {
    let cfg = &ctx.caches.cfg;
    let timeout = Duration::from_millis(cfg.consistent_read_timeout_ms);
    let needs_confirmation = match plan.freshness {
        Freshness::Current => true,
        // Read-your-writes: after a write through the hub, even "any" data must be newer.
        Freshness::Any => slot.freshness.written_since_confirmed(),
        Freshness::History => false,
        Freshness::NotOlderThan(n) => {
            let mut rx = slot.cache.subscribe();
            let reached = monoio::time::timeout(timeout, rx.wait_for(|rv| *rv >= n)).await;
            return match reached {
                Ok(Ok(_)) => Ok(()),
                _ => Err("behind"),
            };
        }
    };
    if !needs_confirmation {
        return Ok(());
    }
    let now = Instant::now();
    let recent = |outcome| {
        ctx.metrics
            .cache_freshness
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    };
    if cfg.consistency == Consistency::BoundedStaleness
        && slot
            .freshness
            .recently_confirmed(now, Duration::from_millis(cfg.max_staleness_ms))
    {
        recent("recent");
        return Ok(());
    }
    let joined = slot.freshness.join(now, timeout);
    if let Some(seq) = joined.send {
        let sent = match ctx.registry.lookup(cluster) {
            Lookup::Online(agent) => agent
                .tx
                .send(TunnelCmd::Progress {
                    slot: slot.clone(),
                    seq,
                })
                .await
                .is_ok(),
            _ => false,
        };
        if !sent {
            slot.freshness.fail_all();
        }
    }
    let outcome = monoio::time::timeout(timeout, joined.batch.outcome()).await;
    ctx.metrics
        .cache_freshness_wait
        .observe(now.elapsed().as_secs_f64());
    match outcome {
        Ok(super::freshness::Outcome::Confirmed(_)) => {
            recent("confirmed");
            Ok(())
        }
        Ok(super::freshness::Outcome::Unconfirmed) => {
            recent("unconfirmed");
            Err("unconfirmed")
        }
        Err(_) => {
            recent("timeout");
            debug!("no confirmation within {timeout:?}");
            Err("timeout")
        }
    }
}

/// The plan's selectors as a filter; selectors the cache does not know for this type are
/// left to the edge (which words any error).
fn filter_for(slot: &TypeSlot, plan: &Plan) -> Result<Filter, &'static str> {
    let t = &slot.info;
    let ns = (t.namespaced && !plan.namespace.is_empty()).then_some(plan.namespace.as_str());
    Filter::for_request(t, ns, &plan.opts).map_err(|_| "selector")
}

async fn write_whole(
    conn: &mut Conn,
    out: &mut Responder<'_>,
    status: u16,
    mut fields: Fields,
    body: &[Bytes],
) -> bool {
    let len: usize = body.iter().map(Bytes::len).sum();
    fields.push((
        Bytes::from_static(b"Content-Length"),
        Bytes::from(len.to_string()),
    ));
    out.whole(conn, status, &fields, body).await
}

fn render(plan: &Plan) -> Render {
    Render::new(plan.wants, plan.opts.include_object)
}

async fn get(
    conn: &mut Conn,
    out: &mut Responder<'_>,
    slot: &TypeSlot,
    snap: &Snapshot,
    plan: &Plan,
    name: &str,
    fields: Fields,
) -> bool {
    let t = &slot.info;
    let ns = if t.namespaced {
        plan.namespace.as_str()
    } else {
        ""
    };
    match snap.get(&ObjKey::new(ns, name)) {
        Some(obj) => {
            let body = store::render_object(t, render(plan), &obj.json, SystemTime::now());
            write_whole(conn, out, 200, fields, &[body]).await
        }
        None => {
            let s = Status::not_found(&t.group, store::base_resource(&t.resource), name);
            out.status(conn, &s).await
        }
    }
}

async fn list(
    conn: &mut Conn,
    out: &mut Responder<'_>,
    slot: &TypeSlot,
    snap: &Snapshot,
    plan: &Plan,
    filter: &Filter,
    fields: Fields,
) -> bool {
    let t = &slot.info;
    let token = plan
        .opts
        .continue_token
        .as_deref()
        .and_then(|t| t.strip_prefix(HUB_TOKEN));
    // A token from before the cache started over (the edge's versions went back) names a
    // version this cache never had.
    if let Some(Ok((rv, _))) = token.map(decode_continue) {
        if rv > snap.rv() {
            return out.status(conn, &Status::expired(CONTINUE_EXPIRED)).await;
        }
    }
    let req = ListRequest {
        version: plan.opts.version,
        limit: plan.opts.limit.filter(|l| *l > 0),
        continue_token: token.map(str::to_owned),
    };
    let mut page = match snap.list(filter, &req) {
        Ok(p) => p,
        Err(s) => return out.status(conn, &s).await,
    };
    page.continue_token = page.continue_token.map(|t| format!("{HUB_TOKEN}{t}"));
    let body = store::render_list(
        t,
        render(plan),
        &page.list_meta(),
        &page.items,
        SystemTime::now(),
    );
    write_whole(conn, out, 200, fields, &body).await
}

/// How often a watch with `allowWatchBookmarks` gets a bookmark (kube-apiserver: about a
/// minute).
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);

/// Events written per batch: a watcher catching up writes in slices this size, so one
/// watcher never holds a huge buffer.
const WATCH_BATCH: usize = 256;

/// What a watch is served from.
struct Watch<'a> {
    slot: &'a TypeSlot,
    snap: Arc<Snapshot>,
    plan: &'a Plan,
    filter: Filter,
    /// Subscribed before the read was admitted.
    epoch: tokio::sync::watch::Receiver<u64>,
}

async fn watch(
    ctx: &ProxyCtx,
    conn: &mut Conn,
    out: &mut Responder<'_>,
    w: Watch<'_>,
    fields: Fields,
) -> bool {
    let Watch {
        slot,
        snap,
        plan,
        filter,
        mut epoch,
    } = w;
    let t = &slot.info;
    let opts = &plan.opts;
    let how = render(plan);
    if !slot.is_synced() {
        // The stream ended between the admission and now: the client re-watches.
        return out.start(conn, 200, &fields).await && out.finish(conn).await;
    }
    let mut rv_rx = slot.cache.subscribe();
    let start = match snap.watch(filter, opts.version, opts.send_initial_events) {
        Ok(s) => s,
        Err(status) => {
            // As kube-apiserver: a 200 whose only event is an ERROR with the Status.
            if !out.start(conn, 200, &fields).await {
                return false;
            }
            return out.chunk(conn, &[store::error_line(&status)]).await && out.finish(conn).await;
        }
    };
    let mut cursor = start.cursor;
    if !out.start(conn, 200, &fields).await {
        return false;
    }
    if start.initial_events {
        let now = SystemTime::now();
        let objs: Vec<&Arc<store::Object>> = snap.initial_events(cursor.filter()).collect();
        for batch in objs.chunks(WATCH_BATCH) {
            let mut parts = Vec::with_capacity(batch.len() * 3);
            for o in batch {
                parts.extend(store::render_event(t, how, EventType::Added, &o.json, now).parts());
            }
            if !out.chunk(conn, &parts).await {
                return false;
            }
        }
    }
    if start.initial_events_end {
        let line = bookmark_line(t, cursor.rv(), true);
        if !out.chunk(conn, &line.parts()).await {
            return false;
        }
    }
    drop(snap);
    ctx.metrics.cache_watchers.inc();
    let timeout = Duration::from_secs(opts.timeout_seconds.unwrap_or(1800).max(1));
    let deadline = Instant::now() + timeout;
    let mut next_bookmark = Instant::now() + BOOKMARK_EVERY;
    let keep = 'watch: loop {
        // Everything the cache has that this watcher has not had yet, in batches.
        loop {
            let snap = slot.cache.snapshot();
            let now = SystemTime::now();
            let mut parts = Vec::new();
            match cursor.pending(&snap) {
                Ok(pending) => {
                    for (kind, change) in pending.take(WATCH_BATCH) {
                        let line = match how {
                            Render::Json => change.line(kind),
                            _ => {
                                let object = change.event_object(kind);
                                store::render_event(t, how, kind.into(), &object, now)
                            }
                        };
                        parts.extend(line.parts());
                    }
                }
                Err(cut) => {
                    // Fell behind the history window: end the watch; the client resumes from
                    // its last version and relists on 410.
                    debug!("{cut}");
                    ctx.metrics.cache_watchers_cut.inc();
                    break 'watch out.finish(conn).await;
                }
            }
            if parts.is_empty() {
                break;
            }
            if !out.chunk(conn, &parts).await {
                break 'watch false;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            break out.finish(conn).await;
        }
        if opts.allow_bookmarks && now >= next_bookmark {
            let line = bookmark_line(t, cursor.rv(), false);
            if !out.chunk(conn, &line.parts()).await {
                break false;
            }
            next_bookmark = now + BOOKMARK_EVERY;
        }
        let wake = if opts.allow_bookmarks {
            deadline.min(next_bookmark)
        } else {
            deadline
        };
        monoio::select! {
            r = rv_rx.changed() => {
                if r.is_err() {
                    break out.finish(conn).await;
                }
            }
            // The sync stream ended (agent gone, resync failed): clients relist.
            _ = epoch.changed() => break out.finish(conn).await,
            more = conn.read_more() => {
                if !more {
                    // Ended by a ban or revocation: as when the API server ends a watch.
                    if conn.stopped() {
                        break out.finish(conn).await;
                    }
                    break false;
                }
            }
            _ = monoio::time::sleep(wake.saturating_duration_since(now)) => {}
        }
    };
    ctx.metrics.cache_watchers.dec();
    keep
}
