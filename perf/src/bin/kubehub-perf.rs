//! `kubehub-perf`: KubeHub's load harness.
//!
//! `get` sends open-loop GETs of one URL (requests are scheduled at a constant rate regardless
//! of how fast answers come, and each latency is measured from the request's *scheduled* time,
//! so a stall shows up in the percentiles instead of silently lowering the rate: no
//! coordinated omission), with HDR percentiles and the CPU time per request of the server
//! processes named. The other subcommands start what they measure as processes.
//!
//! ```text
//! kubehub-perf get --url https://127.0.0.1:8443/clusters/demo/api/v1/namespaces/default/configmaps/x \
//!     --token T --ca ca.crt --rate 500 --duration 20 --connections 8 --cpu hub=PID
//! kubehub-perf idle-agents --hub-bin target/release/kubehub --count 1000
//! kubehub-perf bulk --kubehub target/release/kubehub --rounds 3
//! kubehub-perf cached-clusters --kubehub target/release/kubehub --count 1000
//! perf/cache-vs-peers.sh target/release/kubehub-perf target/release/kubehub   # sim, configmaps, wait-synced, get, summary
//! ```

use clap::{Parser, Subcommand};
use kubehub_perf::compare::{self, Kind};
use kubehub_perf::{
    bulk, clusters, edge, failover, fanout, fleet, get, hol, idle, peer_hop, scenario, summary,
};

#[derive(Debug, Parser)]
#[command(name = "kubehub-perf", version, about = "KubeHub's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Scenario `idle`: N simulated agents connect and sync a small inventory each; the
    /// hub's memory per agent (and its curve), the time to connect and sync them all.
    Idle(scenario::FleetOpts),
    /// Scenario `reconnect`: N agents connected and synced, the hub killed and restarted;
    /// the time until every agent is back and every cache synced.
    Reconnect(scenario::FleetOpts),
    /// Scenario `mixed`: 80% reads / 20% writes over N clusters, open loop, with edge churn
    /// and long watches open; latencies per operation, the hub's CPU per request.
    Mixed(scenario::MixedArgs),
    /// Scenario `cache-get`: a GET served from the hub's cache against nginx serving the same
    /// bytes as a static file over HTTPS, and the simulator directly; rounds alternate.
    CacheGet(compare::CompareArgs),
    /// Scenario `cache-list`: a LIST of a namespace served from the cache, same peers.
    CacheList(compare::CompareArgs),
    /// Scenario `forward`: an uncached GET through hub + tunnel + agent against nginx as a
    /// one-hop TLS proxy, the rathole stack (nginx + rathole server + client), and direct.
    Forward(compare::CompareArgs),
    /// Scenario `stream`: a multi-MB LIST forwarded, one stream and several at once, through
    /// the hub and the same peers as `forward`: MB/s and CPU per MB.
    Stream(compare::CompareArgs),
    /// Scenario `fanout`: one event to K watchers of the hub's cache; deliveries per second and
    /// the delivery latency of every watcher and of the last one, at rising event rates.
    Fanout(fanout::FanoutArgs),
    /// Scenario `hol`: one stalled stream among 1,000 busy ones on one tunnel; the busy
    /// requests' latency with and without it.
    Hol(hol::HolArgs),
    /// Scenario `peer-hop`: the same GETs (cached, forwarded) through the hub holding the
    /// tunnel and through a second hub that forwards them over a peer link; latencies and
    /// CPU per request of every process, the ratio of the two paths.
    PeerHop(peer_hop::PeerHopArgs),
    /// Scenario `failover`: three hubs, N agents with tunnels to two each, probes of every
    /// cluster through hub B; hub A killed: per cluster, the time until it answers again, and
    /// the requests that failed.
    Failover(failover::FailoverArgs),
    /// One fleet process of simulated agents (started by the scenarios).
    #[command(hide = true)]
    Fleet(fleet::FleetArgs),
    /// Open-loop GETs of one URL at a constant rate: HDR latency percentiles, and optionally
    /// the CPU time per request of server processes and what reached the edge meanwhile.
    Get(get::GetArgs),
    /// Memory of idle agent tunnels: starts `kubehub hub` as its own process, connects many
    /// minimal agents to it, and reports the hub's resident memory per tunnel.
    IdleAgents(idle::IdleArgs),
    /// Throughput of a multi-MB LIST and of many `logs -f` streams through hub + tunnel +
    /// agent vs directly from a TLS simulator, with CPU time per MB (per line) of each process;
    /// starts everything from the `kubehub` binary given, so older builds can be compared.
    Bulk(bulk::BulkArgs),
    /// A simulated edge API server (plain HTTP, `kubehub sim`'s default content, no churn)
    /// whose request log can be read and emptied on a control port: what reached the edge.
    Sim(edge::SimArgs),
    /// Creates a namespace and N realistic ConfigMaps (1.0-1.8 KB of JSON each) on an API server
    /// by POSTing JSON.
    Configmaps(edge::ConfigmapsArgs),
    /// Waits until the hub's cache holds a type for a cluster, synced, with as many objects as
    /// the edge lists (the hub's admin `/clusters`).
    WaitSynced(edge::WaitSyncedArgs),
    /// Medians over rounds of the JSON lines `get --record` wrote, with ratios against peers
    /// measured in the same rounds, as Markdown tables.
    Summary(summary::SummaryArgs),
    /// The hub's memory for many clusters with their types cached: one `kubehub sim
    /// --clusters N` process, one hub process, N real agents in this process.
    CachedClusters(clusters::ClustersArgs),
    /// Writes a development access file for a hub's `[access] file` (tenant `dev`, USER with
    /// every right on CLUSTERS) and prints the user's new token.
    AccessFile(AccessFileArgs),
}

#[derive(Debug, clap::Args)]
struct AccessFileArgs {
    /// Where to write it.
    #[arg(long)]
    out: std::path::PathBuf,
    /// The user.
    #[arg(long, default_value = "perf")]
    user: String,
    /// The clusters (repeat).
    #[arg(long = "cluster", required = true)]
    clusters: Vec<String>,
}

fn main() {
    let cli = Cli::parse();
    // A fleet process builds its own runtime (its thread count is an option).
    let cli = match cli.command {
        Cmd::Fleet(a) => {
            kubehub_perf::init_logging("error");
            if let Err(e) = fleet::run_fleet(a) {
                eprintln!("kubehub-perf fleet: {e}");
                std::process::exit(1);
            }
            return;
        }
        command => Cli { command },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kubehub-perf: {e}");
            std::process::exit(1);
        }
    };
    let report = |r: Result<kubehub_perf::report::Report, String>| {
        r.map(|r| {
            print!("{}", kubehub_perf::summary::markdown(&r, &[]));
        })
    };
    let res = match cli.command {
        Cmd::Idle(a) => report(rt.block_on(scenario::idle(a))),
        Cmd::Reconnect(a) => report(rt.block_on(scenario::reconnect(a))),
        Cmd::Mixed(a) => report(rt.block_on(scenario::mixed(a))),
        Cmd::CacheGet(a) => report(rt.block_on(compare::run(Kind::CacheGet, a))),
        Cmd::CacheList(a) => report(rt.block_on(compare::run(Kind::CacheList, a))),
        Cmd::Forward(a) => report(rt.block_on(compare::run(Kind::Forward, a))),
        Cmd::Stream(a) => report(rt.block_on(compare::run(Kind::Stream, a))),
        Cmd::Fanout(a) => report(rt.block_on(async {
            let mut r = kubehub_perf::report::Report::new("fanout");
            let out = a.out_dir();
            fanout::run(a, &mut r).await?;
            r.write(&out)?;
            Ok(r)
        })),
        Cmd::Hol(a) => report(rt.block_on(async {
            let mut r = kubehub_perf::report::Report::new("hol");
            let out = a.out_dir();
            hol::run(a, &mut r).await?;
            r.write(&out)?;
            Ok(r)
        })),
        Cmd::PeerHop(a) => report(rt.block_on(peer_hop::run(a))),
        Cmd::Failover(a) => report(rt.block_on(failover::run(a))),
        Cmd::Fleet(_) => Ok(()),
        Cmd::Get(a) => rt.block_on(get::run(a)),
        Cmd::IdleAgents(a) => rt.block_on(idle::run(a)),
        Cmd::Bulk(a) => rt.block_on(bulk::run(a)),
        Cmd::Sim(a) => rt.block_on(edge::sim(a)),
        Cmd::Configmaps(a) => rt.block_on(edge::configmaps(a)),
        Cmd::WaitSynced(a) => rt.block_on(edge::wait_synced(a)),
        Cmd::Summary(a) => summary::run(a),
        Cmd::CachedClusters(a) => rt.block_on(clusters::run(a)),
        Cmd::AccessFile(a) => kubehub_hub::access::write_dev_file(&a.out, &a.user, &a.clusters)
            .map(|token| println!("{token}"))
            .map_err(|e| format!("writing {}: {e}", a.out.display())),
    };
    if let Err(e) = res {
        eprintln!("kubehub-perf: {e}");
        std::process::exit(1);
    }
}
