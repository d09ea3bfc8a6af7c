//! The pages: for each, the live section (read fresh for every render and pushed to open
//! pages when it changes) and the forms above it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write;
use std::time::Duration;

use serde_json::Value;

use super::data::{ClientTraffic, Data, HubTraffic, TenantTraffic};
use super::html::{button, bytes_rate, confirm_button, esc, rate, time, time_text};
use super::Page;

/// Top clients shown on the Traffic page.
const TOP_CLIENTS: usize = 20;

/// What rendering a page needs besides the data.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The signed-in operator's admin token (for the reads that go through the API).
    pub token: &'a str,
    /// Timeout of each hub's admin listener.
    pub hub_timeout: Duration,
}

fn failed(what: &str, e: &dyn std::fmt::Display) -> String {
    format!(
        "<p class=\"flash err\">Could not read {}: {}</p>",
        esc(what),
        esc(&e.to_string())
    )
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or_default()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "—".into()
    } else {
        esc(s)
    }
}

/// The live section of `page`.
pub async fn live(page: Page, data: &Data, ctx: Ctx<'_>) -> String {
    match page {
        Page::Hubs => hubs(data, ctx).await,
        Page::Clusters => clusters(data, ctx).await,
        Page::Tenants => tenants(data).await,
        Page::Traffic => traffic(data, ctx).await,
        Page::Bans => bans(data, ctx).await,
        Page::Canary => canary(data).await,
    }
}

/// The forms above the live section of `page`.
pub async fn forms(page: Page, data: &Data) -> String {
    match page {
        Page::Bans => BAN_FORM.to_owned(),
        Page::Clusters => MOVE_FORM.to_owned(),
        Page::Canary => canary_form(data).await,
        Page::Hubs | Page::Tenants | Page::Traffic => String::new(),
    }
}

// ---- hubs --------------------------------------------------------------------------------

async fn hubs(data: &Data, ctx: Ctx<'_>) -> String {
    let hubs = match data.hubs().await {
        Ok(h) => h,
        Err(e) => return failed("the hubs", &e),
    };
    if hubs.is_empty() {
        return "<p class=\"empty\">No hub is registered.</p>".into();
    }
    let ready = data.readiness(&hubs, ctx.hub_timeout).await;
    let mut out = String::from(
        "<table id=\"hubs\"><thead><tr><th>Hub</th><th>Version</th><th>Environment</th>\
<th>Zone</th><th class=\"num\">Agents</th><th class=\"num\">Streams</th>\
<th class=\"num\" title=\"of one core\">CPU</th><th>State</th><th>Health</th>\
<th>Last seen</th><th></th></tr></thead><tbody>",
    );
    for h in &hubs {
        let id = s(h, "id");
        let draining = h.get("draining").and_then(Value::as_bool).unwrap_or(false);
        let state = if draining {
            "<span class=\"badge warn\">draining</span>"
        } else {
            "<span class=\"badge ok\">serving</span>"
        };
        let health = match ready.get(id) {
            Some(Some(Ok(m))) => format!("<span class=\"badge ok\">{}</span>", esc(m)),
            Some(Some(Err(m))) => format!("<span class=\"badge bad\">{}</span>", esc(m)),
            _ => "<span class=\"badge\" title=\"the hub registered no admin listener\">registered</span>"
                .into(),
        };
        let action = if draining {
            button("drain", &[("hub", id), ("drain", "false")], "Undrain", "")
        } else {
            confirm_button(
                "drain",
                &[("hub", id), ("drain", "true")],
                "Drain",
                "warn",
                &format!("Drain hub {id}? Its agents move to other hubs."),
            )
        };
        let _ = write!(
            out,
            "<tr id=\"hub-{ide}\" data-hub=\"{ide}\"><td><b>{ide}</b><div class=\"sub\">{endpoint}</div></td>\
<td>{version}</td><td>{env}</td><td>{zone}</td><td class=\"num\">{agents}</td>\
<td class=\"num\">{streams}</td><td class=\"num\">{cpu}%</td><td>{state}</td><td>{health}</td>\
<td>{seen}</td><td>{action}</td></tr>",
            ide = esc(id),
            endpoint = esc(s(h, "endpoint")),
            version = or_dash(s(h, "version")),
            env = or_dash(s(h, "environment")),
            zone = or_dash(s(h, "zone")),
            agents = n(h, "agents"),
            streams = n(h, "streams"),
            cpu = n(h, "cpu") / 10,
            seen = time(n(h, "updated")),
        );
    }
    out.push_str("</tbody></table>");
    out
}

// ---- clusters ----------------------------------------------------------------------------

const MOVE_FORM: &str = "<form method=\"post\" action=\"/console/actions/pin\" id=\"move\" class=\"panel\">\
<h2>Move a cluster</h2>\
<label>Cluster <input name=\"cluster\" required></label>\
<label>To hub <input name=\"hub\"></label>\
<button type=\"submit\">Move</button>\
<button type=\"submit\" formaction=\"/console/actions/unpin\" class=\"quiet\" formnovalidate>Unpin</button>\
<p class=\"hint\">Moving pins the cluster's agent to the hub; unpinning lets it choose again.</p></form>";

async fn clusters(data: &Data, ctx: Ctx<'_>) -> String {
    let (clusters, agents) = match (data.clusters().await, data.agents().await) {
        (Ok(c), Ok(a)) => (c, a),
        (Err(e), _) | (_, Err(e)) => return failed("the clusters", &e),
    };
    // Sync state and lag as the hubs holding each cluster's tunnels see them.
    let sync_states = match data.hubs().await {
        Ok(hubs) => data.sync_states(&hubs, ctx.hub_timeout).await,
        Err(_) => Default::default(),
    };
    let agents: HashMap<&str, &Value> = agents.iter().map(|a| (s(a, "cluster"), a)).collect();
    let mut ids: BTreeSet<&str> = clusters.iter().map(|c| c.id.as_str()).collect();
    ids.extend(agents.keys().copied());
    if ids.is_empty() {
        return "<p class=\"empty\">No cluster exists.</p>".into();
    }
    let by_id: HashMap<&str, _> = clusters.iter().map(|c| (c.id.as_str(), c)).collect();
    let mut out = String::from(
        "<table id=\"clusters\"><thead><tr><th>Cluster</th><th>Tenant</th><th>Environment</th>\
<th>Labels</th><th>Connected to</th><th>Agent</th><th>Sync</th><th>Last seen</th></tr></thead><tbody>",
    );
    for id in ids {
        let c = by_id.get(id);
        let a = agents.get(id);
        let tenant = c.map(|c| c.tenant.as_str()).unwrap_or_default();
        let labels = c
            .map(|c| crate::service::labels_text(&c.labels))
            .unwrap_or_default();
        let hubs = a
            .and_then(|a| a.get("hubs"))
            .and_then(Value::as_array)
            .map(|h| {
                h.iter()
                    .filter_map(Value::as_str)
                    .map(|h| format!("<span class=\"badge\">{}</span>", esc(h)))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "<span class=\"badge bad\">not connected</span>".into());
        // Sync state and lag: each holding hub's cache of the cluster (types synced, the
        // oldest confirmation of currency), or the agent being away.
        let sync = match sync_states.get(id) {
            Some(per_hub) if !per_hub.is_empty() => per_hub
                .iter()
                .map(|(hub, st)| {
                    let state = match st.agent_gone_ms {
                        Some(ms) => format!("agent away {ms} ms"),
                        None if st.types == 0 => "not cached".to_owned(),
                        None => format!("{}/{} synced", st.synced, st.types),
                    };
                    let lag = st
                        .lag_ms
                        .map(|l| format!(", confirmed {l} ms ago"))
                        .unwrap_or_default();
                    let bad = st.agent_gone_ms.is_some() || st.synced < st.types;
                    format!(
                        "<div class=\"{}\">{}: {}{}</div>",
                        if bad { "sub bad" } else { "sub" },
                        esc(hub),
                        esc(&state),
                        esc(&lag)
                    )
                })
                .collect::<Vec<_>>()
                .join(""),
            _ => "<span class=\"sub\" title=\"no hub that answered holds its tunnel\">—</span>"
                .into(),
        };
        let agent = a
            .map(|a| {
                format!(
                    "{}<div class=\"sub\">{}</div>",
                    or_dash(s(a, "version")),
                    esc(s(a, "agentId"))
                )
            })
            .unwrap_or_else(|| "—".into());
        let _ = write!(
            out,
            "<tr id=\"cluster-{ide}\" data-cluster=\"{ide}\"><td><b>{ide}</b>{gone}</td><td>{tenant}</td>\
<td>{env}</td><td>{labels}</td><td>{hubs}</td><td>{agent}</td><td>{sync}</td><td>{seen}</td></tr>",
            ide = esc(id),
            gone = if c.is_none() {
                " <span class=\"badge bad\">deleted</span>"
            } else {
                ""
            },
            tenant = or_dash(tenant),
            env = or_dash(c.map(|c| c.environment.as_str()).unwrap_or_default()),
            labels = or_dash(&labels),
            seen = time(a.map(|a| n(a, "updated")).unwrap_or_default()),
        );
    }
    out.push_str("</tbody></table>");
    out
}

// ---- tenants -----------------------------------------------------------------------------

async fn tenants(data: &Data) -> String {
    let t = match data.tenants().await {
        Ok(t) => t,
        Err(e) => return failed("the tenants", &e),
    };
    if t.tenants.is_empty() {
        return "<p class=\"empty\">No tenant exists.</p>".into();
    }
    let mut out = String::new();
    for tenant in &t.tenants {
        let name = tenant.name.as_str();
        let _ = write!(
            out,
            "<article class=\"tenant\" id=\"tenant-{ne}\" data-tenant=\"{ne}\"><h2>{ne} <small>{display}</small></h2>",
            ne = esc(name),
            display = esc(&tenant.display_name)
        );
        // Users.
        let users: Vec<_> = t.users.iter().filter(|u| u.tenant == name).collect();
        if users.is_empty() {
            out.push_str("<p class=\"empty\">No users.</p>");
        } else {
            out.push_str("<table class=\"users\"><thead><tr><th>User</th><th>Groups</th><th>Tenant admin</th></tr></thead><tbody>");
            for u in users {
                let _ = write!(
                    out,
                    "<tr data-user=\"{ue}\"><td>{ue}</td><td>{groups}</td><td>{admin}</td></tr>",
                    ue = esc(&u.name),
                    groups = or_dash(&u.groups.join(", ")),
                    admin = if u.admin { "yes" } else { "" }
                );
            }
            out.push_str("</tbody></table>");
        }
        // Grants.
        let grants: Vec<_> = t.grants.iter().filter(|g| g.tenant == name).collect();
        if !grants.is_empty() {
            out.push_str("<table class=\"grants\"><thead><tr><th>Grant</th><th>Subject</th><th>Clusters</th><th class=\"num\">Rules</th></tr></thead><tbody>");
            for g in grants {
                let subject = serde_json::to_value(&g.subject).unwrap_or_default();
                let who = format!("{} {}", s(&subject, "kind"), s(&subject, "name"));
                let mut clusters = g.clusters.ids.join(", ");
                let labels = crate::service::labels_text(&g.clusters.labels);
                if !labels.is_empty() {
                    if !clusters.is_empty() {
                        clusters.push_str("; ");
                    }
                    clusters.push_str(&labels);
                }
                let _ = write!(
                    out,
                    "<tr data-grant=\"{ge}\"><td>{ge}</td><td>{who}</td><td>{clusters}</td><td class=\"num\">{rules}</td></tr>",
                    ge = esc(&g.name),
                    who = esc(who.trim()),
                    clusters = or_dash(&clusters),
                    rules = g.rules.len()
                );
            }
            out.push_str("</tbody></table>");
        }
        // Tokens.
        let tokens: Vec<_> = t.tokens.iter().filter(|k| k.tenant == name).collect();
        if !tokens.is_empty() {
            out.push_str("<table class=\"tokens\"><thead><tr><th>Token</th><th>User</th><th>Clusters</th><th>Issued</th><th>Expires</th><th>Description</th><th></th></tr></thead><tbody>");
            for k in tokens {
                let _ = write!(
                    out,
                    "<tr id=\"token-{ie}\" data-token=\"{ie}\"><td><code>{ie}</code></td><td>{user}</td><td>{clusters}</td>\
<td>{created}</td><td>{expires}</td><td>{desc}</td><td>{revoke}</td></tr>",
                    ie = esc(&k.id),
                    user = esc(&k.user),
                    clusters = esc(&k.clusters.join(", ")),
                    created = time(k.created),
                    expires = if k.expires == 0 {
                        "never".into()
                    } else {
                        time(k.expires)
                    },
                    desc = esc(&k.description),
                    revoke = confirm_button(
                        "revoke",
                        &[("id", &k.id)],
                        "Revoke",
                        "danger",
                        &format!("Revoke token {} of {}? It stops working on every hub.", k.id, k.user),
                    ),
                );
            }
            out.push_str("</tbody></table>");
        }
        out.push_str("</article>");
    }
    out
}

// ---- traffic -----------------------------------------------------------------------------

#[derive(Default)]
struct Sum {
    rps: f64,
    eps: f64,
    p50: f64,
    p99: f64,
    bin: f64,
    bout: f64,
    watches: u64,
    rejected: f64,
}

fn tenant_row(out: &mut String, first: &str, tenant: &str, t: &Sum) {
    let _ = write!(
        out,
        "<tr data-tenant=\"{te}\">{first}<td>{te}</td><td class=\"num\">{rps}</td><td class=\"num\">{eps}</td>\
<td class=\"num\">{p50}</td><td class=\"num\">{p99}</td><td class=\"num\">{bin}</td><td class=\"num\">{bout}</td>\
<td class=\"num\">{watches}</td><td class=\"num\">{rej}</td></tr>",
        te = esc(tenant),
        rps = rate(t.rps),
        eps = rate(t.eps),
        p50 = rate(t.p50),
        p99 = rate(t.p99),
        bin = bytes_rate(t.bin),
        bout = bytes_rate(t.bout),
        watches = t.watches,
        rej = rate(t.rejected),
    );
}

const TENANT_HEAD: &str = "<th>Tenant</th><th class=\"num\">Requests/s</th><th class=\"num\">Errors/s</th>\
<th class=\"num\">p50 ms</th><th class=\"num\">p99 ms</th><th class=\"num\">In</th><th class=\"num\">Out</th>\
<th class=\"num\">Watches</th><th class=\"num\">Rejected/s</th>";

fn sum_of(t: &TenantTraffic) -> Sum {
    Sum {
        rps: t.requests_per_second,
        eps: t.errors_per_second,
        p50: t.p50_ms,
        p99: t.p99_ms,
        bin: t.bytes_in_per_second,
        bout: t.bytes_out_per_second,
        watches: t.watches,
        rejected: t.rejected_per_second,
    }
}

/// The Traffic page's section from the hubs' answers (pure: tested without hubs).
pub fn traffic_html(answers: &[(String, HubTraffic)]) -> String {
    if answers.is_empty() {
        return "<p class=\"empty\">No hub is registered.</p>".into();
    }
    let mut out = String::from(
        "<h2>Hubs asked</h2><table id=\"traffic-hubs\"><thead><tr><th>Hub</th><th>Answer</th></tr></thead><tbody>",
    );
    let mut fleet: BTreeMap<&str, Sum> = BTreeMap::new();
    let mut clients: HashMap<(&str, &str, &str), (f64, f64)> = HashMap::new();
    let mut per_hub = String::new();
    for (hub, answer) in answers {
        let status = match answer {
            HubTraffic::Answered(t) => format!(
                "<span class=\"badge ok\">answered</span> over {} s",
                t.window_seconds
            ),
            HubTraffic::NoAdmin => {
                "<span class=\"badge\">no admin listener registered</span>".into()
            }
            HubTraffic::Failed(e) => format!(
                "<span class=\"badge bad\">not answering</span> <span class=\"sub\">{}</span>",
                esc(e)
            ),
        };
        let _ = write!(
            out,
            "<tr data-hub=\"{he}\"><td>{he}</td><td>{status}</td></tr>",
            he = esc(hub)
        );
        let HubTraffic::Answered(t) = answer else {
            continue;
        };
        for tt in &t.tenants {
            let f = fleet.entry(tt.tenant.as_str()).or_default();
            f.rps += tt.requests_per_second;
            f.eps += tt.errors_per_second;
            f.p50 = f.p50.max(tt.p50_ms);
            f.p99 = f.p99.max(tt.p99_ms);
            f.bin += tt.bytes_in_per_second;
            f.bout += tt.bytes_out_per_second;
            f.watches += tt.watches;
            f.rejected += tt.rejected_per_second;
            tenant_row(
                &mut per_hub,
                &format!("<td>{}</td>", esc(hub)),
                &tt.tenant,
                &sum_of(tt),
            );
        }
        for ClientTraffic {
            tenant,
            client,
            source,
            requests_per_second,
            errors_per_second,
        } in &t.clients
        {
            let c = clients
                .entry((tenant.as_str(), client.as_str(), source.as_str()))
                .or_default();
            c.0 += requests_per_second;
            c.1 += errors_per_second;
        }
    }
    out.push_str("</tbody></table>");
    out.push_str("<h2>Tenants, all hubs</h2>");
    if fleet.is_empty() {
        out.push_str("<p class=\"empty\">No traffic reported.</p>");
    } else {
        let _ = write!(
            out,
            "<table id=\"traffic-tenants\"><thead><tr>{TENANT_HEAD}</tr></thead><tbody>"
        );
        for (tenant, f) in &fleet {
            tenant_row(&mut out, "", tenant, f);
        }
        out.push_str("</tbody></table><p class=\"hint\">Rates are summed over the hubs; latency is the worst hub's.</p>");
    }
    out.push_str("<h2>Top clients</h2>");
    if clients.is_empty() {
        out.push_str("<p class=\"empty\">No clients reported.</p>");
    } else {
        let mut top: Vec<_> = clients.into_iter().collect();
        top.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        top.truncate(TOP_CLIENTS);
        out.push_str("<table id=\"traffic-clients\"><thead><tr><th>Tenant</th><th>Client</th><th>Source</th><th class=\"num\">Requests/s</th><th class=\"num\">Errors/s</th></tr></thead><tbody>");
        for ((tenant, client, source), (rps, eps)) in top {
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
                esc(tenant),
                or_dash(client),
                or_dash(source),
                rate(rps),
                rate(eps)
            );
        }
        out.push_str("</tbody></table>");
    }
    if !per_hub.is_empty() {
        let _ = write!(
            out,
            "<h2>Tenants by hub</h2><table id=\"traffic-by-hub\"><thead><tr><th>Hub</th>{TENANT_HEAD}</tr></thead><tbody>{per_hub}</tbody></table>"
        );
    }
    out
}

async fn traffic(data: &Data, ctx: Ctx<'_>) -> String {
    let hubs = match data.hubs().await {
        Ok(h) => h,
        Err(e) => return failed("the hubs", &e),
    };
    traffic_html(&data.traffic(&hubs, ctx.hub_timeout).await)
}

// ---- bans --------------------------------------------------------------------------------

const BAN_FORM: &str = "<form method=\"post\" action=\"/console/actions/ban\" id=\"ban\" class=\"panel\">\
<h2>Ban</h2>\
<label>Who <select name=\"kind\" id=\"ban-kind\">\
<option value=\"token\">token (id)</option><option value=\"user\">user</option>\
<option value=\"tenant\">tenant</option><option value=\"cluster\">cluster</option>\
<option value=\"client\">client (user agent and/or source)</option></select></label>\
<label class=\"for-named\">Name or id <input name=\"value\" id=\"ban-value\"></label>\
<label class=\"for-client\">User agent <input name=\"userAgent\" id=\"ban-user-agent\" placeholder=\"python-requests/*\"></label>\
<label class=\"for-client\">Source <input name=\"source\" id=\"ban-source\" placeholder=\"203.0.113.0/24\"></label>\
<label>Reason <input name=\"reason\" id=\"ban-reason\" required></label>\
<label>For <input name=\"for\" id=\"ban-for\" placeholder=\"1h (empty: until lifted)\"></label>\
<label>or until <input name=\"until\" id=\"ban-until\" placeholder=\"2026-12-01T00:00:00Z\"></label>\
<button type=\"submit\" class=\"danger\">Ban</button></form>";

/// A ban's target (`{"token": id}`, `{"client": {"userAgent", "source"}}`, …) as text.
pub fn target_text(t: &Value) -> String {
    let Some(obj) = t.as_object() else {
        return t.to_string();
    };
    obj.iter()
        .map(|(kind, v)| match v {
            Value::String(s) => format!("{kind} {s}"),
            Value::Object(o) => {
                let parts: Vec<String> = o
                    .iter()
                    .map(|(k, v)| format!("{k} {}", v.as_str().unwrap_or_default()))
                    .collect();
                format!("{kind}: {}", parts.join(", "))
            }
            other => format!("{kind} {other}"),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn bans(data: &Data, ctx: Ctx<'_>) -> String {
    let bans = match data.bans(ctx.token).await {
        Ok(b) => b,
        Err(e) => return failed("the bans", &e),
    };
    if bans.is_empty() {
        return "<p class=\"empty\">No ban is in force.</p>".into();
    }
    let mut out = String::from(
        "<table id=\"bans\"><thead><tr><th>Ban</th><th>Target</th><th>Reason</th><th>Since</th>\
<th>Expires</th><th>By</th><th></th></tr></thead><tbody>",
    );
    for b in &bans {
        let id = s(b, "id");
        let expires = s(b, "expiresAt");
        let _ = write!(
            out,
            "<tr id=\"ban-{ie}\" data-ban=\"{ie}\"><td><code>{ie}</code></td><td>{target}</td><td>{reason}</td>\
<td>{since}</td><td>{expires}</td><td>{by}</td><td>{lift}</td></tr>",
            ie = esc(id),
            target = esc(&target_text(b.get("target").unwrap_or(&Value::Null))),
            reason = esc(s(b, "reason")),
            since = time_text(s(b, "createdAt")),
            expires = if expires.is_empty() {
                "when lifted".into()
            } else {
                time_text(expires)
            },
            by = or_dash(s(b, "createdBy")),
            lift = button("unban", &[("id", id)], "Lift", ""),
        );
    }
    out.push_str("</tbody></table>");
    out
}

// ---- canary ------------------------------------------------------------------------------

async fn canary(data: &Data) -> String {
    let rule = match data.canary().await {
        Ok(r) => r,
        Err(e) => return failed("the canary rule", &e),
    };
    let Some(r) = rule else {
        return "<p class=\"empty\" id=\"canary-none\">No canary rule is set: clusters use hubs of any version.</p>".into();
    };
    format!(
        "<dl id=\"canary\"><dt>Version</dt><dd id=\"canary-version\">{}</dd>\
<dt>Cluster labels</dt><dd>{}</dd><dt>Tenants</dt><dd>{}</dd><dt>Percent of clusters</dt><dd>{}%</dd></dl>{}",
        esc(&r.version),
        or_dash(&crate::service::labels_text(&r.cluster_labels)),
        or_dash(&r.tenants.join(", ")),
        r.percent,
        button("canary-clear", &[], "Clear the rule", "warn"),
    )
}

async fn canary_form(data: &Data) -> String {
    let r = data.canary().await.ok().flatten().unwrap_or_default();
    format!(
        "<form method=\"post\" action=\"/console/actions/canary\" id=\"canary-form\" class=\"panel\">\
<h2>Set the canary rule</h2>\
<label>Hub version <input name=\"version\" id=\"canary-version-input\" value=\"{}\" required></label>\
<label>Cluster labels <input name=\"clusterLabels\" value=\"{}\" placeholder=\"tier=canary,region=eu\"></label>\
<label>Tenants <input name=\"tenants\" value=\"{}\" placeholder=\"acme, initech\"></label>\
<label>Percent <input name=\"percent\" id=\"canary-percent\" value=\"{}\" inputmode=\"numeric\"></label>\
<button type=\"submit\">Set</button></form>",
        esc(&r.version),
        esc(&crate::service::labels_text(&r.cluster_labels)),
        esc(&r.tenants.join(", ")),
        r.percent
    )
}

#[cfg(test)]
mod tests {
    use super::super::data::Traffic;
    use super::*;

    fn tt(tenant: &str, rps: f64, p99: f64) -> TenantTraffic {
        TenantTraffic {
            tenant: tenant.into(),
            requests_per_second: rps,
            p99_ms: p99,
            ..Default::default()
        }
    }

    #[test]
    fn traffic_sums_hubs_and_says_which_did_not_answer() {
        let ct = |c: &str, rps: f64| ClientTraffic {
            tenant: "acme".into(),
            client: c.into(),
            source: "10.0.0.1".into(),
            requests_per_second: rps,
            errors_per_second: 0.0,
        };
        let answers = vec![
            (
                "hub-1".to_owned(),
                HubTraffic::Answered(Traffic {
                    hub: "hub-1".into(),
                    window_seconds: 60,
                    tenants: vec![tt("acme", 10.0, 30.0), tt("<evil>", 1.0, 1.0)],
                    clients: vec![ct("kubectl/v1.32", 6.0), ct("python", 4.0)],
                }),
            ),
            (
                "hub-2".to_owned(),
                HubTraffic::Answered(Traffic {
                    hub: "hub-2".into(),
                    window_seconds: 60,
                    tenants: vec![tt("acme", 5.0, 80.0)],
                    clients: vec![ct("python", 5.0)],
                }),
            ),
            (
                "hub-3".to_owned(),
                HubTraffic::Failed("no answer within 1000 ms".into()),
            ),
            ("hub-4".to_owned(), HubTraffic::NoAdmin),
        ];
        let html = traffic_html(&answers);
        // acme over both hubs: 15 req/s, p99 the worst hub's.
        let fleet = html.split("traffic-tenants").nth(1).unwrap();
        let acme = fleet.split("data-tenant=\"acme\"").nth(1).unwrap();
        assert!(acme.contains(">15<") && acme.contains(">80<"), "{acme}");
        // python over both hubs (9) ranks above kubectl (6).
        let clients = html.split("traffic-clients").nth(1).unwrap();
        assert!(
            clients.find("python").unwrap() < clients.find("kubectl/v1.32").unwrap(),
            "{clients}"
        );
        assert!(html.contains("not answering") && html.contains("no answer within 1000 ms"));
        assert!(html.contains("no admin listener registered"));
        assert!(!html.contains("<evil>") && html.contains("&lt;evil&gt;"));
    }

    #[test]
    fn ban_targets_read_as_text() {
        assert_eq!(
            target_text(&serde_json::json!({"token": "abc"})),
            "token abc"
        );
        assert_eq!(
            target_text(
                &serde_json::json!({"client": {"userAgent": "python*", "source": "10.0.0.0/8"}})
            ),
            "client: source 10.0.0.0/8, userAgent python*"
        );
    }
}
