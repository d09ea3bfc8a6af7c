//! `cached-clusters`: the hub's memory for many clusters whose types it caches.
//!
//! It starts, as processes from the `kubehub` binary given: `kubehub sim --clusters N` (N
//! simulated clusters of `kubehub sim`'s default content in one process, plain HTTP, no
//! churn) and `kubehub hub` from a hub.toml it writes (default `[cache]`: every list+watch
//! type of core/v1 and apps/v1 but secrets). Then, in this process, one real agent
//! (`kubehub_agent::Agent`, its own certificate, TLS tunnel, reflectors) per cluster.
//!
//! 1. The hub's RSS with no agent (`start`).
//! 2. One agent connects and its types sync (so the per-core structures exist and the set of
//!    types is known); RSS again (`before`).
//! 3. The other N-1 agents connect, `--batch` at a time; it waits until the hub's `/metrics`
//!    counts N agents and N synced clusters for every cached type, plus 2 s; RSS (`after`).
//! 4. Only then `/clusters` is read (its JSON is MBs for 1,000 clusters and would move the
//!    hub's RSS): objects, JSON bytes and history entries held, summed over clusters.
//!
//! With `--no-cache` the hub runs with `[cache] enabled = false`: the same tunnels and
//! discovery without the cache, to tell the cache's share of the memory from the tunnels'.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::stack::{agent_toml, wait_agents, write_file, CacheMode, HubToml, Pki, Procs};
use crate::sys::{free_port, rss_kib};

/// Options of `kubehub-perf cached-clusters`.
#[derive(Debug, clap::Args)]
pub struct ClustersArgs {
    /// The `kubehub` binary (hub and simulator).
    #[arg(long, default_value = "target/release/kubehub")]
    kubehub: PathBuf,
    /// Working directory (certificates, configurations, logs).
    #[arg(long, default_value = "target/cached-clusters")]
    dir: PathBuf,
    /// Clusters, one agent each.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    hub_cores: usize,
    /// Agents started at once; then `--batch-pause-ms`.
    #[arg(long, default_value_t = 20)]
    batch: usize,
    /// Pause between batches of agents (ms).
    #[arg(long, default_value_t = 200)]
    batch_pause_ms: u64,
    /// Run the hub without its cache (`[cache] enabled = false`), for comparison.
    #[arg(long)]
    no_cache: bool,
    /// Seconds to wait for every cluster to sync.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Cache only these types (`[cache] types`, e.g. `v1/configmaps,apps/v1/deployments`);
    /// default: the hub's default set.
    #[arg(long, value_delimiter = ',')]
    cache_types: Vec<String>,
    /// The agents' `[sync] batch_bytes` (largest batch of snapshot objects per frame; the
    /// agent's default when not given).
    #[arg(long)]
    batch_bytes: Option<usize>,
    /// Extra arguments for `kubehub sim` (content per cluster: `--namespaces`, `--deployments`,
    /// `--pods-per-deployment`, `--configmaps`, `--nodes`); repeatable.
    #[arg(long = "sim-arg", allow_hyphen_values = true)]
    sim_args: Vec<String>,
}

async fn get_text(client: &crate::HttpClient, url: &str) -> Result<String, String> {
    let body = crate::edge::get_bytes(client, url).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// `kubehub-perf cached-clusters`.
pub async fn run(a: ClustersArgs) -> Result<(), String> {
    crate::init_logging("error");
    let n = a.count.max(1);
    let dir = std::path::absolute(&a.dir).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("agents")).map_err(|e| e.to_string())?;
    let bin = std::path::absolute(&a.kubehub).map_err(|e| e.to_string())?;

    // Certificates: one CA, the hub's, one per agent (CN = cluster id).
    let pki = Pki::write(&dir, "cached clusters CA")?;
    let names: Vec<String> = (0..n).map(|i| format!("sim-{i}")).collect();
    kubehub_hub::access::write_dev_file(&dir.join("access.json"), "perf", &names)
        .map_err(|e| e.to_string())?;
    let (user, agents, admin, sim) = (free_port()?, free_port()?, free_port()?, free_port()?);
    let hub = HubToml {
        id: "hub-cached".into(),
        cores: a.hub_cores,
        clusters: names.clone(),
        user_port: user,
        agent_port: agents,
        admin_port: admin,
        cache: if a.no_cache {
            CacheMode::Disabled
        } else {
            CacheMode::Types(a.cache_types.clone())
        },
        limits: Vec::new(),
        agent_cert: None,
        registry: None,
    };
    write_file(&dir, "hub.toml", &hub.render())?;
    let t = Instant::now();
    for name in &names {
        pki.write_agent(
            &dir,
            name,
            &format!("agents/{name}.crt"),
            &format!("agents/{name}.key"),
        )?;
        write_file(
            &dir,
            &format!("agents/{name}.toml"),
            &agent_toml(
                name,
                agents,
                ("../ca.crt", &format!("{name}.crt"), &format!("{name}.key")),
                &format!("http://127.0.0.1:{sim}/clusters/{name}"),
                &a.batch_bytes
                    .map(|b| format!("[sync]\nbatch_bytes = {b}\n"))
                    .unwrap_or_default(),
            ),
        )?;
    }
    eprintln!(
        "{n} agent certificates and configurations written in {:.1?}",
        t.elapsed()
    );

    let mut procs = Procs::default();
    let mut sim_args: Vec<String> = vec![
        "sim".into(),
        "--listen".into(),
        format!("127.0.0.1:{sim}"),
        "--dir".into(),
        "sim".into(),
        "--clusters".into(),
        n.to_string(),
        "--churn".into(),
        "0".into(),
    ];
    sim_args.extend(a.sim_args.iter().cloned());
    let sim_pid = procs.start(
        "sim",
        &bin,
        &dir,
        &sim_args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let hub_pid = procs.start("hub", &bin, &dir, &["hub", "--config", "hub.toml"])?;
    let client = crate::client(None, 4)?;
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    let last_cluster = format!(
        "http://127.0.0.1:{sim}/clusters/{}/api/v1/namespaces",
        names[n - 1]
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while get_text(&client, &metrics).await.is_err()
        || get_text(&client, &last_cluster).await.is_err()
    {
        procs.check_alive()?;
        if Instant::now() > deadline {
            return Err("hub or simulator not ready after 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_kib = rss_kib(hub_pid)?;
    let sim_kib = rss_kib(sim_pid)?;
    let me_kib = rss_kib(std::process::id())?;

    let start_agent = |name: &String| -> Result<kubehub_agent::Agent, String> {
        let cfg = kubehub_agent::AgentConfig::load(&dir.join(format!("agents/{name}.toml")))
            .map_err(|e| e.to_string())?;
        kubehub_agent::Agent::start(cfg).map_err(|e| format!("agent {name}: {e}"))
    };
    let timeout = Duration::from_secs(a.timeout);
    let cache = !a.no_cache;
    let mut running = vec![start_agent(&names[0])?];
    let types = wait_agents(&client, &metrics, 1, (cache, 0), timeout, &mut procs).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before_kib = rss_kib(hub_pid)?;
    let t = Instant::now();
    for (i, name) in names.iter().enumerate().skip(1) {
        running.push(start_agent(name)?);
        if i % a.batch.max(1) == 0 {
            tokio::time::sleep(Duration::from_millis(a.batch_pause_ms)).await;
        }
    }
    wait_agents(&client, &metrics, n as u64, (cache, 0), timeout, &mut procs).await?;
    let took = t.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_kib = rss_kib(hub_pid)?;
    let sim_after_kib = rss_kib(sim_pid)?;
    let me_after_kib = rss_kib(std::process::id())?;

    // Now the totals (reading /clusters allocates in the hub: after the RSS).
    let v: serde_json::Value = serde_json::from_str(
        &get_text(&client, &format!("http://127.0.0.1:{admin}/clusters")).await?,
    )
    .map_err(|e| format!("/clusters: {e}"))?;
    let (mut objects, mut bytes, mut history, mut synced, mut listed) = (0u64, 0u64, 0u64, 0, 0);
    let mut first_objects = (0u64, 0u64);
    for c in v["clusters"].as_array().into_iter().flatten() {
        listed += 1;
        let ts = c["cache"]["types"].as_array().cloned().unwrap_or_default();
        if !ts.is_empty() && ts.iter().all(|t| t["synced"] == true) {
            synced += 1;
        }
        let (o, b): (u64, u64) = ts.iter().fold((0, 0), |(o, b), t| {
            (
                o + t["objects"].as_u64().unwrap_or(0),
                b + t["bytes"].as_u64().unwrap_or(0),
            )
        });
        history += ts
            .iter()
            .map(|t| t["history"].as_u64().unwrap_or(0))
            .sum::<u64>();
        if c["cluster"] == names[0].as_str() {
            first_objects = (o, b);
        }
        objects += o;
        bytes += b;
    }
    let after_clusters_kib = rss_kib(hub_pid)?;

    let added = after_kib.saturating_sub(before_kib) as f64 * 1024.0;
    let others = (n - 1).max(1) as f64;
    let (objs_added, bytes_added) = (
        objects.saturating_sub(first_objects.0) as f64,
        bytes.saturating_sub(first_objects.1) as f64,
    );
    println!(
        "cached clusters: {n} clusters ({}), {types} cached types each, {synced} of {listed} fully synced; the last {} agents connected and synced in {:.1} s",
        if cache { "cache on" } else { "cache off" },
        n - 1,
        took.as_secs_f64()
    );
    println!(
        "hub RSS: {start_kib} KiB with no agent, {before_kib} KiB with 1 cluster synced, {after_kib} KiB with {n} ({after_clusters_kib} KiB after serving /clusters)"
    );
    println!(
        "per cluster (the last {}): {:.1} KiB of RSS",
        n - 1,
        added / 1024.0 / others
    );
    println!(
        "held: {objects} objects, {bytes} B of JSON ({:.0} B per object, {:.1} KiB per cluster), {history} history entries",
        bytes as f64 / objects.max(1) as f64,
        bytes as f64 / 1024.0 / n as f64
    );
    if cache && objs_added > 0.0 {
        println!(
            "RSS added per object: {:.0} B = JSON {:.0} B + {:.0} B beyond the JSON (everything else per cluster included: tunnel, registry, {types} type slots)",
            added / objs_added,
            bytes_added / objs_added,
            (added - bytes_added) / objs_added
        );
    }
    println!(
        "simulator RSS {sim_kib} -> {sim_after_kib} KiB; this process (agents) {me_kib} -> {me_after_kib} KiB"
    );
    for agent in running {
        agent.stop().await;
    }
    drop(procs);
    Ok(())
}
