//! `kubehub ctl`: the metaserver's command line. Every subcommand is one or two API calls
//! (meta/src/api.rs lists them); output is a table for people, or JSON with `-o json`.
//! Errors print meta's message and exit 1 (2 for usage errors). `native` and `host` talk to a
//! hub instead, with a user's kubeconfig (the cluster's agent plugins: `crate::plugins`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use kubehub_meta::client::Client;
use serde_json::{json, Value};

/// Options of `kubehub ctl`.
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The metaserver's URL.
    #[arg(long, env = "KUBEHUB_META", default_value = "https://127.0.0.1:7443")]
    pub meta: String,
    /// File holding the bearer token (an admin token, or a user's KubeHub token).
    #[arg(long, env = "KUBEHUB_META_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA that signed meta's certificate (PEM); required by every subcommand but `native`
    /// and `host`.
    #[arg(long, env = "KUBEHUB_META_CA")]
    pub ca: Option<PathBuf>,
    /// Output: `table` or `json`.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// `kubehub ctl` subcommands.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Tenants: `create NAME`, `list`, `delete NAME`.
    Tenant {
        #[command(subcommand)]
        op: NamedOp,
    },
    /// Users: `create NAME --tenant T [--group G] [--admin]`, `list`, `delete NAME`.
    User {
        #[command(subcommand)]
        op: UserOp,
    },
    /// Clusters: `add ID --tenant T [--label k=v]` (prints the agent's join token), `list`,
    /// `delete ID`, `join-token ID`.
    Cluster {
        #[command(subcommand)]
        op: ClusterOp,
    },
    /// Grants: `create NAME --tenant T (--user U | --group G | --whole-tenant) ...`, `list`,
    /// `delete TENANT/NAME`.
    Grant {
        #[command(subcommand)]
        op: GrantOp,
    },
    /// Tokens: `list [--user U]`, `revoke ID` or `revoke --user U` (all of them).
    Token {
        #[command(subcommand)]
        op: TokenOp,
    },
    /// Issue a token and print its kubeconfig (to stdout; notes go to stderr).
    Kubeconfig(KubeconfigArgs),
    /// A join token for a hub: `hub-join-token ID --name NAME...`.
    HubJoinToken {
        /// The hub's id.
        id: String,
        /// Names and addresses its certificate is for.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
    },
    /// Live hubs: endpoints, load (agents, streams, CPU in permille of one core), version,
    /// environment, zone, draining.
    Hubs,
    /// A hub: `drain ID [--reason R]` (it drains as for a restart and keeps running: agents
    /// move off, users are forwarded), `undrain ID`, `drains` (admin).
    Hub {
        #[command(subcommand)]
        op: HubOp,
    },
    /// The canary rule: `set --version V [--label k=v]... [--tenant T]... [--percent N]`,
    /// `show`, `clear` (admin). Agents of the chosen clusters move to hubs of that version, the
    /// others away from them; changing or clearing the rule moves them back.
    Canary {
        #[command(subcommand)]
        op: CanaryOp,
    },
    /// Bans (admin): `add (--token ID | --user U | --tenant T | --cluster C | --user-agent
    /// GLOB and/or --source CIDR) --reason TEXT [--for 1h | --until RFC3339]`, `list`, `lift
    /// ID`. Every hub refuses the banned party's new requests (403) and ends its open
    /// watches, logs and exec sessions within a second.
    Ban {
        #[command(subcommand)]
        op: BanOp,
    },
    /// Traffic limits (admin): `set TENANT [--user U] [--rps N] [--burst N] [--concurrency N]
    /// [--cluster-rps N] [--cluster-burst N]`, `show [TENANT] [--user U]`, `clear TENANT
    /// [--user U]`. Every hub enforces them within about a second.
    Limit {
        #[command(subcommand)]
        op: crate::ctl_limit::LimitOp,
    },
    /// Live agents.
    Agents,
    /// Who meta thinks you are.
    Whoami,
    /// Run an allow-listed command on a cluster's edge host, through the hub (`[CLUSTER]
    /// COMMAND [NAME=VALUE ...]`; `--list`: the allowed commands); exits with its exit code.
    Native(crate::plugins::NativeArgs),
    /// A cluster's edge host facts (OS, kernel, CPU, memory, disks, network), through the hub.
    Host(crate::plugins::HostArgs),
}

/// create / list / delete by name.
#[derive(Debug, Subcommand)]
pub enum NamedOp {
    /// Create.
    Create {
        /// Name.
        name: String,
        /// Display name.
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List.
    List,
    /// Delete.
    Delete {
        /// Name.
        name: String,
    },
}

/// User operations.
#[derive(Debug, Subcommand)]
pub enum UserOp {
    /// Create a user (user names are unique across tenants).
    Create {
        /// Name.
        name: String,
        /// Tenant.
        #[arg(long)]
        tenant: String,
        /// Groups (repeat).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// A tenant admin.
        #[arg(long)]
        admin: bool,
    },
    /// List (optionally of one tenant).
    List {
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete (revokes the user's tokens).
    Delete {
        /// Name.
        name: String,
    },
}

/// Cluster operations.
#[derive(Debug, Subcommand)]
pub enum ClusterOp {
    /// Register a cluster; prints the one-time join token for its agent.
    Add {
        /// Cluster id.
        id: String,
        /// Owning tenant.
        #[arg(long)]
        tenant: String,
        /// Labels `k=v` (repeat).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Environment.
        #[arg(long, default_value = "")]
        env: String,
        /// Display name.
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// List.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete.
    Delete {
        /// Cluster id.
        id: String,
    },
    /// A new join token for the cluster's agent.
    JoinToken {
        /// Cluster id.
        id: String,
    },
    /// Move the cluster's agent to these hubs (a pin, until `unpin`; admin).
    Move {
        /// Cluster id.
        id: String,
        /// Hub ids (repeat, or comma-separated).
        #[arg(long = "to", required = true, value_delimiter = ',')]
        hubs: Vec<String>,
        /// Why, for the other operators.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a cluster's pin: its agent chooses its hubs as usual again.
    Unpin {
        /// Cluster id.
        id: String,
    },
    /// The pinned clusters.
    Pins,
}

/// Operators' drains of hubs.
#[derive(Debug, Subcommand)]
pub enum HubOp {
    /// Drain a live hub: /readyz 503, GOAWAY to its agents (they move to other hubs), users'
    /// requests forwarded; it keeps running until `undrain`.
    Drain {
        /// Hub id.
        id: String,
        /// Why, for the other operators.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a drain: the hub reports ready and takes agents again.
    Undrain {
        /// Hub id.
        id: String,
    },
    /// The drained hubs.
    Drains,
}

/// Grant operations.
#[derive(Debug, Subcommand)]
pub enum GrantOp {
    /// Create a grant with one rule (or any grant from a JSON file with --file).
    Create(Box<GrantArgs>),
    /// List.
    List {
        /// Tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Delete `TENANT/NAME`.
    Delete {
        /// `tenant/name`.
        name: String,
    },
}

/// A grant from flags.
#[derive(Debug, Args)]
pub struct GrantArgs {
    /// Grant name (omit with --file).
    pub name: Option<String>,
    /// The whole grant as JSON (the API's shape); other flags are ignored.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Subject: a user.
    #[arg(long)]
    pub user: Option<String>,
    /// Subject: a group.
    #[arg(long)]
    pub group: Option<String>,
    /// Subject: every user of the tenant.
    #[arg(long)]
    pub whole_tenant: bool,
    /// Clusters by id (repeat).
    #[arg(long = "cluster")]
    pub clusters: Vec<String>,
    /// Clusters by label `k=v` (repeat; all must match).
    #[arg(long = "cluster-label")]
    pub cluster_labels: Vec<String>,
    /// Verbs, comma-separated (`get,list,watch`, `*`).
    #[arg(long, value_delimiter = ',', default_value = "get,list,watch")]
    pub verbs: Vec<String>,
    /// API groups, comma-separated (`""` is core; default: core and apps).
    #[arg(long, value_delimiter = ',', default_value = ",apps")]
    pub api_groups: Vec<String>,
    /// Resources, comma-separated (`pods`, `pods/log`, `*`).
    #[arg(long, value_delimiter = ',', default_value = "*")]
    pub resources: Vec<String>,
    /// Namespaces, comma-separated (default: all, and cluster-scoped resources).
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Resource names, comma-separated (default: any).
    #[arg(long, value_delimiter = ',')]
    pub names: Vec<String>,
}

/// Token operations.
#[derive(Debug, Subcommand)]
pub enum TokenOp {
    /// List tokens (never the tokens themselves).
    List {
        /// Only this user's.
        #[arg(long)]
        user: Option<String>,
    },
    /// Revoke one token, or every token of a user.
    Revoke {
        /// Token id.
        id: Option<String>,
        /// Every token of this user.
        #[arg(long)]
        user: Option<String>,
    },
}

/// `kubehub ctl kubeconfig`.
#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// For whom (default: the caller, when the caller is a user).
    #[arg(long)]
    pub user: Option<String>,
    /// Clusters (repeat; default: every cluster the user has a grant on).
    #[arg(long = "cluster")]
    pub clusters: Vec<String>,
    /// Token lifetime (`24h`, `90m`); default: meta's `tokens.default_lifetime_s`.
    #[arg(long)]
    pub lifetime: Option<humantime::Duration>,
    /// What the token is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Revoke the user's other tokens.
    #[arg(long)]
    pub replace: bool,
}

/// Ban operations.
#[derive(Debug, Subcommand)]
pub enum BanOp {
    /// Ban one party (exactly one of --token, --user, --tenant, --cluster, or a client:
    /// --user-agent and/or --source).
    Add(BanArgs),
    /// The bans in force.
    List,
    /// Lift a ban.
    Lift {
        /// The ban's id (as `ban list` shows it).
        id: String,
    },
}

/// `kubehub ctl ban add`.
#[derive(Debug, Args)]
pub struct BanArgs {
    /// A token, by id (the 12 characters after `khT.`).
    #[arg(long)]
    pub token: Option<String>,
    /// A user (all of their tokens).
    #[arg(long)]
    pub user: Option<String>,
    /// A tenant (all of its users).
    #[arg(long)]
    pub tenant: Option<String>,
    /// A cluster (every request to it).
    #[arg(long)]
    pub cluster: Option<String>,
    /// A client by User-Agent: a glob over the whole field, `*` any run, case-insensitive
    /// (`kubectl/*`).
    #[arg(long)]
    pub user_agent: Option<String>,
    /// A client by source address: an IP or a CIDR range (`203.0.113.0/24`).
    #[arg(long)]
    pub source: Option<String>,
    /// Why (required; the banned party reads it).
    #[arg(long)]
    pub reason: String,
    /// How long (`30m`, `1h`, `7d`); default: until lifted.
    #[arg(long = "for", conflicts_with = "until")]
    pub for_: Option<humantime::Duration>,
    /// Until when (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
}

fn ban_body(b: &BanArgs) -> Result<Value, String> {
    let mut targets = Vec::new();
    for (k, v) in [
        ("token", &b.token),
        ("user", &b.user),
        ("tenant", &b.tenant),
        ("cluster", &b.cluster),
    ] {
        if let Some(v) = v {
            targets.push(json!({ k: v }));
        }
    }
    if b.user_agent.is_some() || b.source.is_some() {
        let mut client = serde_json::Map::new();
        if let Some(ua) = &b.user_agent {
            client.insert("userAgent".into(), json!(ua));
        }
        if let Some(s) = &b.source {
            client.insert("source".into(), json!(s));
        }
        targets.push(json!({ "client": client }));
    }
    let target = match targets.len() {
        1 => targets.remove(0),
        _ => {
            return Err("ban add needs exactly one of --token, --user, --tenant, --cluster, or                         a client (--user-agent and/or --source)"
                .into())
        }
    };
    let mut body = json!({"target": target, "reason": b.reason});
    if let Some(d) = b.for_ {
        body["ttlSeconds"] = json!(std::time::Duration::from(d).as_secs().max(1));
    }
    if let Some(u) = &b.until {
        body["expiresAt"] = json!(u);
    }
    Ok(body)
}

/// A ban's target as one short phrase for the table (`user alice`, `client ua=kubectl/*`).
fn ban_target_text(t: &Value) -> String {
    let Some((kind, v)) = t.as_object().and_then(|o| o.iter().next()) else {
        return t.to_string();
    };
    match v {
        Value::String(s) => format!("{kind} {s}"),
        Value::Object(o) => {
            let mut parts = Vec::new();
            if let Some(ua) = o.get("userAgent").and_then(Value::as_str) {
                parts.push(format!("ua={ua}"));
            }
            if let Some(s) = o.get("source").and_then(Value::as_str) {
                parts.push(format!("source={s}"));
            }
            format!("{kind} {}", parts.join(" "))
        }
        other => format!("{kind} {other}"),
    }
}

/// Canary rule operations.
#[derive(Debug, Subcommand)]
pub enum CanaryOp {
    /// Set (replace) the rule: clusters with all these labels, of these tenants, or this
    /// percentage of all clusters use hubs of VERSION; the others hubs of other versions.
    #[command(disable_version_flag = true)]
    Set {
        /// The hub version under test.
        #[arg(long)]
        version: String,
        /// A label the clusters must have (`k=v`; repeat: all of them).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// A tenant whose clusters are all in (repeat).
        #[arg(long = "tenant")]
        tenants: Vec<String>,
        /// This percentage of all clusters (0-100), by hash of their id.
        #[arg(long, default_value_t = 0)]
        percent: u32,
    },
    /// Show the rule (exit 1, "no canary rule is set", when there is none).
    Show,
    /// Clear the rule.
    Clear,
}

fn labels(list: &[String]) -> Result<BTreeMap<String, String>, String> {
    list.iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| format!("label {l:?}: expected key=value"))
        })
        .collect()
}

/// `12s ago` for a unix time in the past.
fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(unix))
}

/// RFC 3339 for a unix time (`never` for 0).
fn when(unix: u64) -> String {
    if unix == 0 {
        return "never".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix))
        .to_string()
}

fn table(items: &Value, columns: &[(&str, &str)]) {
    let rows: Vec<Vec<String>> = items
        .as_array()
        .map(|a| {
            a.iter()
                .map(|it| {
                    columns
                        .iter()
                        .map(|(_, path)| {
                            let v = path.split('.').fold(it, |v, k| &v[k]);
                            match v {
                                Value::String(s) => s.clone(),
                                Value::Null => String::new(),
                                Value::Number(n) if path.ends_with("updated") => {
                                    ago(n.as_u64().unwrap_or(0))
                                }
                                Value::Number(n) if path.ends_with("expires") => {
                                    when(n.as_u64().unwrap_or(0))
                                }
                                Value::Array(a) => a
                                    .iter()
                                    .map(|x| x.as_str().map(str::to_owned).unwrap_or(x.to_string()))
                                    .collect::<Vec<_>>()
                                    .join(","),
                                Value::Object(o) => o
                                    .iter()
                                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                                    .collect::<Vec<_>>()
                                    .join(","),
                                other => other.to_string(),
                            }
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut widths: Vec<usize> = columns.iter().map(|(h, _)| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("   ").trim_end());
    };
    line(columns.iter().map(|(h, _)| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// Runs `kubehub ctl`; returns the exit code.
pub fn run(args: CtlArgs) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub ctl: {e}");
            return 1;
        }
    };
    let json_out = args.output == "json";
    let result = match args.command {
        CtlCommand::Native(n) => rt.block_on(crate::plugins::native(n, json_out)),
        CtlCommand::Host(h) => rt.block_on(crate::plugins::host(h)),
        _ => rt.block_on(ctl(args)).map(|()| 0),
    };
    match result {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("kubehub ctl: {msg}");
            code
        }
    }
}

async fn ctl(args: CtlArgs) -> Result<(), (i32, String)> {
    let usage = |m: String| (2, m);
    let fail = |e: kubehub_meta::client::ClientError| (1, e.to_string());
    let ca_path = args
        .ca
        .as_ref()
        .ok_or_else(|| usage("--ca (or KUBEHUB_META_CA) is required: meta's CA".into()))?;
    let ca = std::fs::read_to_string(ca_path)
        .map_err(|e| usage(format!("reading --ca {}: {e}", ca_path.display())))?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| usage(format!("reading --token-file {}: {e}", p.display())))?
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .ok_or_else(|| usage(format!("{} holds no token", p.display())))?
                .to_owned(),
        ),
        None => std::env::var("KUBEHUB_META_TOKEN").ok(),
    };
    let c = Client::new(&args.meta, &ca, token, None).map_err(|e| usage(e.to_string()))?;
    let json_out = args.output == "json";
    let show = |v: &Value, columns: &[(&str, &str)]| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            table(&v["items"], columns);
        }
    };
    let done = |v: &Value, what: String| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            println!("{what}");
        }
    };
    let q =
        |k: &str, v: &Option<String>| v.as_ref().map(|v| format!("?{k}={v}")).unwrap_or_default();
    match args.command {
        CtlCommand::Tenant { op } => match op {
            NamedOp::Create { name, display_name } => {
                let v = c
                    .post(
                        "/v1/tenants",
                        &json!({"name": name, "displayName": display_name}),
                    )
                    .await
                    .map_err(fail)?;
                done(&v, format!("tenant {name} created"));
            }
            NamedOp::List => {
                let v = c.get("/v1/tenants").await.map_err(fail)?;
                show(&v, &[("NAME", "name"), ("DISPLAY NAME", "displayName")]);
            }
            NamedOp::Delete { name } => {
                c.delete(&format!("/v1/tenants/{name}"))
                    .await
                    .map_err(fail)?;
                println!("tenant {name} deleted");
            }
        },
        CtlCommand::User { op } => match op {
            UserOp::Create {
                name,
                tenant,
                groups,
                admin,
            } => {
                let v = c
                    .post(
                        "/v1/users",
                        &json!({"name": name, "tenant": tenant, "groups": groups, "admin": admin}),
                    )
                    .await
                    .map_err(fail)?;
                done(&v, format!("user {name} created in tenant {tenant}"));
            }
            UserOp::List { tenant } => {
                let v = c
                    .get(&format!("/v1/users{}", q("tenant", &tenant)))
                    .await
                    .map_err(fail)?;
                show(
                    &v,
                    &[
                        ("NAME", "name"),
                        ("TENANT", "tenant"),
                        ("GROUPS", "groups"),
                        ("ADMIN", "admin"),
                    ],
                );
            }
            UserOp::Delete { name } => {
                c.delete(&format!("/v1/users/{name}")).await.map_err(fail)?;
                println!("user {name} deleted (and its tokens revoked)");
            }
        },
        CtlCommand::Cluster { op } => match op {
            ClusterOp::Add {
                id,
                tenant,
                labels: l,
                env,
                display_name,
            } => {
                let v = c
                    .post(
                        "/v1/clusters",
                        &json!({"id": id, "tenant": tenant, "labels": labels(&l).map_err(usage)?,
                                "environment": env, "displayName": display_name}),
                    )
                    .await
                    .map_err(fail)?;
                if json_out {
                    done(&v, String::new());
                } else {
                    eprintln!("cluster {id} registered in tenant {tenant}; its agent joins with:");
                    eprintln!(
                        "  kubehub agent --join <token> --meta {} --state-dir DIR",
                        args.meta
                    );
                    println!("{}", v["joinToken"].as_str().unwrap_or(""));
                }
            }
            ClusterOp::List { tenant } => {
                let v = c
                    .get(&format!("/v1/clusters{}", q("tenant", &tenant)))
                    .await
                    .map_err(fail)?;
                show(
                    &v,
                    &[
                        ("ID", "id"),
                        ("TENANT", "tenant"),
                        ("ENVIRONMENT", "environment"),
                        ("LABELS", "labels"),
                    ],
                );
            }
            ClusterOp::Delete { id } => {
                c.delete(&format!("/v1/clusters/{id}"))
                    .await
                    .map_err(fail)?;
                println!("cluster {id} deleted");
            }
            ClusterOp::JoinToken { id } => {
                let v = c
                    .post(&format!("/v1/clusters/{id}/join-token"), &json!({}))
                    .await
                    .map_err(fail)?;
                println!("{}", v["joinToken"].as_str().unwrap_or(""));
            }
            ClusterOp::Move { id, hubs, reason } => {
                let v = c
                    .put(
                        &format!("/v1/registry/pins/{id}"),
                        &json!({"hubs": hubs, "reason": reason}),
                    )
                    .await
                    .map_err(fail)?;
                println!(
                    "cluster {id} pinned to {}: its agent moves there",
                    v["hubs"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(","))
                        .unwrap_or_default()
                );
            }
            ClusterOp::Unpin { id } => {
                c.delete(&format!("/v1/registry/pins/{id}"))
                    .await
                    .map_err(fail)?;
                println!("cluster {id} unpinned");
            }
            ClusterOp::Pins => {
                let v = c.get("/v1/registry/pins").await.map_err(fail)?;
                show(
                    &v,
                    &[
                        ("CLUSTER", "cluster"),
                        ("HUBS", "hubs"),
                        ("BY", "by"),
                        ("REASON", "reason"),
                    ],
                );
            }
        },
        CtlCommand::Hub { op } => match op {
            HubOp::Drain { id, reason } => {
                c.post(
                    &format!("/v1/registry/hubs/{id}/drain"),
                    &json!({"drain": true, "reason": reason}),
                )
                .await
                .map_err(fail)?;
                println!("hub {id} drained: its agents move to other hubs");
            }
            HubOp::Undrain { id } => {
                c.post(
                    &format!("/v1/registry/hubs/{id}/drain"),
                    &json!({"drain": false}),
                )
                .await
                .map_err(fail)?;
                println!("hub {id} undrained");
            }
            HubOp::Drains => {
                let v = c.get("/v1/registry/drains").await.map_err(fail)?;
                show(&v, &[("HUB", "hub"), ("BY", "by"), ("REASON", "reason")]);
            }
        },
        CtlCommand::Grant { op } => match op {
            GrantOp::Create(g) => {
                let body = match &g.file {
                    Some(p) => {
                        let text = std::fs::read_to_string(p)
                            .map_err(|e| usage(format!("reading {}: {e}", p.display())))?;
                        serde_json::from_str(&text)
                            .map_err(|e| usage(format!("{}: {e}", p.display())))?
                    }
                    None => grant_body(&g).map_err(usage)?,
                };
                let v = c.post("/v1/grants", &body).await.map_err(fail)?;
                done(
                    &v,
                    format!(
                        "grant {}/{} created",
                        v["tenant"].as_str().unwrap_or(""),
                        v["name"].as_str().unwrap_or("")
                    ),
                );
            }
            GrantOp::List { tenant } => {
                let v = c
                    .get(&format!("/v1/grants{}", q("tenant", &tenant)))
                    .await
                    .map_err(fail)?;
                if json_out {
                    show(&v, &[]);
                } else {
                    let rows: Vec<Value> = v["items"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|g| {
                            json!({
                                "name": g["name"], "tenant": g["tenant"],
                                "subject": format!("{}:{}", g["subject"]["kind"].as_str().unwrap_or(""),
                                                   g["subject"]["name"].as_str().unwrap_or("*")),
                                "clusters": if g["clusters"]["ids"].as_array().is_some_and(|a| !a.is_empty()) {
                                    g["clusters"]["ids"].clone() } else { g["clusters"]["labels"].clone() },
                                "rules": g["rules"].as_array().map_or(0, Vec::len),
                            })
                        })
                        .collect();
                    table(
                        &Value::Array(rows),
                        &[
                            ("NAME", "name"),
                            ("TENANT", "tenant"),
                            ("SUBJECT", "subject"),
                            ("CLUSTERS", "clusters"),
                            ("RULES", "rules"),
                        ],
                    );
                }
            }
            GrantOp::Delete { name } => {
                if !name.contains('/') {
                    return Err(usage("grant delete takes TENANT/NAME".into()));
                }
                c.delete(&format!("/v1/grants/{name}"))
                    .await
                    .map_err(fail)?;
                println!("grant {name} deleted");
            }
        },
        CtlCommand::Token { op } => match op {
            TokenOp::List { user } => {
                let v = c
                    .get(&format!("/v1/tokens{}", q("user", &user)))
                    .await
                    .map_err(fail)?;
                show(
                    &v,
                    &[
                        ("ID", "id"),
                        ("USER", "user"),
                        ("CLUSTERS", "clusters"),
                        ("EXPIRES", "expires"),
                        ("DESCRIPTION", "description"),
                    ],
                );
            }
            TokenOp::Revoke {
                id: Some(id),
                user: None,
            } => {
                c.delete(&format!("/v1/tokens/{id}")).await.map_err(fail)?;
                println!("token {id} revoked");
            }
            TokenOp::Revoke {
                id: None,
                user: Some(user),
            } => {
                let v = c
                    .delete(&format!("/v1/tokens?user={user}"))
                    .await
                    .map_err(fail)?;
                println!("{} tokens of {user} revoked", v["revoked"]);
            }
            TokenOp::Revoke { .. } => {
                return Err(usage(
                    "token revoke takes a token id or --user NAME (not both)".into(),
                ))
            }
        },
        CtlCommand::Kubeconfig(k) => {
            let mut body = json!({
                "clusters": k.clusters, "description": k.description, "replace": k.replace,
            });
            if let Some(u) = &k.user {
                body["user"] = json!(u);
            }
            if let Some(l) = k.lifetime {
                body["lifetimeS"] = json!(std::time::Duration::from(l).as_secs());
            }
            let v = c.post("/v1/kubeconfig", &body).await.map_err(fail)?;
            print!("{}", v["kubeconfig"].as_str().unwrap_or(""));
            let t = &v["token"];
            eprintln!(
                "token {} for {} on {} expires {}",
                t["id"].as_str().unwrap_or(""),
                t["user"].as_str().unwrap_or(""),
                t["clusters"],
                when(t["expires"].as_u64().unwrap_or(0))
            );
            let others = v["otherLiveTokens"].as_u64().unwrap_or(0);
            if others > 0 {
                eprintln!(
                    "note: {} now holds {} other live token(s); list them with `kubehub ctl token list --user {}` and revoke old ones with `kubehub ctl token revoke`",
                    t["user"].as_str().unwrap_or(""),
                    others,
                    t["user"].as_str().unwrap_or("")
                );
            }
            if v["revoked"].as_u64().unwrap_or(0) > 0 {
                eprintln!("revoked {} older token(s)", v["revoked"]);
            }
        }
        CtlCommand::HubJoinToken { id, names } => {
            let v = c
                .post("/v1/hubs/join-token", &json!({"id": id, "names": names}))
                .await
                .map_err(fail)?;
            println!("{}", v["joinToken"].as_str().unwrap_or(""));
        }
        CtlCommand::Hubs => {
            let v = c.get("/v1/registry/hubs").await.map_err(fail)?;
            show(
                &v,
                &[
                    ("ID", "id"),
                    ("ENDPOINT", "endpoint"),
                    ("AGENT ENDPOINT", "agentEndpoint"),
                    ("AGENTS", "agents"),
                    ("STREAMS", "streams"),
                    ("CPU", "cpu"),
                    ("VERSION", "version"),
                    ("ENVIRONMENT", "environment"),
                    ("ZONE", "zone"),
                    ("DRAINING", "draining"),
                    ("UPDATED", "updated"),
                ],
            );
        }
        CtlCommand::Canary { op } => match op {
            CanaryOp::Set {
                version,
                labels: l,
                tenants,
                percent,
            } => {
                let rule = kubehub_access::registry::CanaryRule {
                    version,
                    cluster_labels: labels(&l).map_err(usage)?,
                    tenants,
                    percent,
                };
                let stored = c.canary_set(&rule).await.map_err(fail)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(&stored).unwrap_or_default()
                );
            }
            CanaryOp::Show => match c.canary_show().await.map_err(fail)? {
                Some(rule) => println!(
                    "{}",
                    serde_json::to_string_pretty(&rule).unwrap_or_default()
                ),
                None => return Err((1, "no canary rule is set".into())),
            },
            CanaryOp::Clear => c.canary_clear().await.map_err(fail)?,
        },
        CtlCommand::Ban { op } => match op {
            BanOp::Add(b) => {
                let body = ban_body(&b).map_err(usage)?;
                let v = c.post("/v1/bans", &body).await.map_err(fail)?;
                done(
                    &v,
                    format!(
                        "ban {} made: {} ({}), until {}",
                        v["id"].as_str().unwrap_or(""),
                        ban_target_text(&v["target"]),
                        v["reason"].as_str().unwrap_or(""),
                        v["expiresAt"].as_str().unwrap_or("lifted")
                    ),
                );
            }
            BanOp::List => {
                let mut v = c.get("/v1/bans").await.map_err(fail)?;
                // The table shows the target as a phrase and a missing expiry as "never";
                // JSON is the API's answer as it came.
                if !json_out {
                    if let Some(items) = v["items"].as_array_mut() {
                        for it in items {
                            it["targetText"] = json!(ban_target_text(&it["target"]));
                            if it["expiresAt"].is_null() {
                                it["expiresAt"] = json!("never");
                            }
                        }
                    }
                }
                show(
                    &v,
                    &[
                        ("ID", "id"),
                        ("TARGET", "targetText"),
                        ("REASON", "reason"),
                        ("CREATED", "createdAt"),
                        ("EXPIRES", "expiresAt"),
                        ("BY", "createdBy"),
                    ],
                );
            }
            BanOp::Lift { id } => {
                let v = c.delete(&format!("/v1/bans/{id}")).await.map_err(fail)?;
                done(
                    &v,
                    format!("ban {id} lifted ({})", ban_target_text(&v["target"])),
                );
            }
        },
        CtlCommand::Limit { op } => crate::ctl_limit::run(&c, op, json_out).await?,
        CtlCommand::Agents => {
            let v = c.get("/v1/registry/agents").await.map_err(fail)?;
            show(
                &v,
                &[
                    ("CLUSTER", "cluster"),
                    ("AGENT", "agentId"),
                    ("HUBS", "hubs"),
                    ("VERSION", "version"),
                    ("SEEN", "updated"),
                ],
            );
        }
        CtlCommand::Whoami => {
            let v = c.get("/v1/whoami").await.map_err(fail)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        }
        // Not meta's: `run` sends them to the hub.
        CtlCommand::Native(_) | CtlCommand::Host(_) => {
            return Err(usage("native and host talk to a hub".into()))
        }
    }
    Ok(())
}

fn grant_body(g: &GrantArgs) -> Result<Value, String> {
    let name = g
        .name
        .as_ref()
        .ok_or("grant create needs a NAME (or --file)")?;
    let tenant = g.tenant.as_ref().ok_or("grant create needs --tenant")?;
    let subject = match (&g.user, &g.group, g.whole_tenant) {
        (Some(u), None, false) => json!({"kind": "User", "name": u}),
        (None, Some(gr), false) => json!({"kind": "Group", "name": gr}),
        (None, None, true) => json!({"kind": "Tenant"}),
        _ => {
            return Err("grant create needs exactly one of --user, --group, --whole-tenant".into())
        }
    };
    Ok(json!({
        "name": name,
        "tenant": tenant,
        "subject": subject,
        "clusters": {"ids": g.clusters, "labels": labels(&g.cluster_labels)?},
        "rules": [{
            "apiGroups": g.api_groups,
            "resources": g.resources,
            "verbs": g.verbs,
            "namespaces": g.namespaces,
            "resourceNames": g.names,
        }],
    }))
}
