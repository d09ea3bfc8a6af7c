//! `kubehub ctl limit set|show|clear`: traffic limits of tenants and users
//! (`/v1/limits/{tenant}[/{user}]`; what each figure means: `kubehub_access::limits`).

use clap::Subcommand;
use kubehub_meta::client::Client;
use serde_json::{json, Value};

/// Limit operations.
#[derive(Debug, Subcommand)]
pub enum LimitOp {
    /// Set (replace) a tenant's limits, or with `--user` one user's bucket. Figures left out
    /// take the hubs' defaults (hub.toml `[limits.fairness]`); a rate of 0 is unlimited.
    Set {
        /// The tenant.
        tenant: String,
        /// A user of the tenant (a per-user override: --rps and --burst only).
        #[arg(long)]
        user: Option<String>,
        /// Sustained request weight per second, per hub (a GET weighs 1).
        #[arg(long)]
        rps: Option<u32>,
        /// Weight that may be spent at once.
        #[arg(long)]
        burst: Option<u32>,
        /// Seats: request weight in flight at once, per hub (tenant only).
        #[arg(long)]
        concurrency: Option<u32>,
        /// Per cluster of the tenant: forwarded request weight per second (tenant only).
        #[arg(long)]
        cluster_rps: Option<u32>,
        /// Per cluster of the tenant: the forward bucket's burst (tenant only).
        #[arg(long)]
        cluster_burst: Option<u32>,
    },
    /// Show the limits of one tenant (or `--user`), or every limit record without TENANT.
    Show {
        /// The tenant.
        tenant: Option<String>,
        /// A user of the tenant.
        #[arg(long, requires = "tenant")]
        user: Option<String>,
    },
    /// Clear a tenant's (or `--user`'s) limit record: the hubs' defaults apply again.
    Clear {
        /// The tenant.
        tenant: String,
        /// A user of the tenant.
        #[arg(long)]
        user: Option<String>,
    },
}

fn path(tenant: &str, user: &Option<String>) -> String {
    match user {
        Some(u) => format!("/v1/limits/{tenant}/{u}"),
        None => format!("/v1/limits/{tenant}"),
    }
}

fn figure(v: &Value, k: &str) -> String {
    v[k].as_u64()
        .map_or_else(|| "default".to_owned(), |n| n.to_string())
}

fn print_table(items: &[Value]) {
    let cols = [
        "requestsPerSecond",
        "burst",
        "concurrency",
        "clusterRequestsPerSecond",
        "clusterBurst",
    ];
    println!(
        "{:<24} {:<24} {:>10} {:>10} {:>12} {:>12} {:>14}",
        "TENANT", "USER", "RPS", "BURST", "CONCURRENCY", "CLUSTER RPS", "CLUSTER BURST"
    );
    for l in items {
        let f: Vec<String> = cols.iter().map(|k| figure(l, k)).collect();
        println!(
            "{:<24} {:<24} {:>10} {:>10} {:>12} {:>12} {:>14}",
            l["tenant"].as_str().unwrap_or(""),
            l["user"].as_str().unwrap_or("*"),
            f[0],
            f[1],
            f[2],
            f[3],
            f[4]
        );
    }
}

/// Runs one `ctl limit` operation.
pub async fn run(c: &Client, op: LimitOp, json_out: bool) -> Result<(), (i32, String)> {
    let fail = |e: kubehub_meta::client::ClientError| (1, e.to_string());
    let out = |v: &Value| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            print_table(std::slice::from_ref(v));
        }
    };
    match op {
        LimitOp::Set {
            tenant,
            user,
            rps,
            burst,
            concurrency,
            cluster_rps,
            cluster_burst,
        } => {
            let mut body = json!({});
            for (k, v) in [
                ("requestsPerSecond", rps),
                ("burst", burst),
                ("concurrency", concurrency),
                ("clusterRequestsPerSecond", cluster_rps),
                ("clusterBurst", cluster_burst),
            ] {
                if let Some(v) = v {
                    body[k] = json!(v);
                }
            }
            let v = c.put(&path(&tenant, &user), &body).await.map_err(fail)?;
            out(&v);
        }
        LimitOp::Show {
            tenant: Some(tenant),
            user,
        } => {
            let v = c.get(&path(&tenant, &user)).await.map_err(fail)?;
            out(&v);
        }
        LimitOp::Show { tenant: None, .. } => {
            let v = c.get("/v1/limits").await.map_err(fail)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                print_table(v["items"].as_array().map_or(&[][..], |a| &a[..]));
            }
        }
        LimitOp::Clear { tenant, user } => {
            let v = c.delete(&path(&tenant, &user)).await.map_err(fail)?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                println!(
                    "{} cleared: the hubs' defaults apply",
                    path(&tenant, &user).trim_start_matches("/v1/")
                );
            }
        }
    }
    Ok(())
}
