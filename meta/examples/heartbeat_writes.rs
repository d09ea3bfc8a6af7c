//! What agent heartbeats cost the metaserver's store, on the embedded store and on a real etcd
//! (Debian's `etcd`, started on 127.0.0.1): store writes per heartbeat before (`refresh_s = 0`:
//! every heartbeat writes) and after (`refresh_s` > 0: only changes and refreshes write).
//! A measurement, not a test: `cargo run -p kubehub-meta --example heartbeat_writes
//! [rounds|over-time]` (`KUBEHUB_AGENTS` sets the agents); figures in perf/RESULTS.md.
#![allow(clippy::unwrap_used)]

#[allow(unused_macros)]
#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Harness, Kind, Running};
use kubehub_meta::service::{AgentRecord, Caller};

async fn revision(m: &Running) -> i64 {
    m.meta.store.revision().await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    match std::env::args().nth(1).as_deref() {
        None | Some("rounds") => heartbeat_store_writes().await,
        Some("over-time") => heartbeat_store_writes_over_time().await,
        Some(other) => {
            eprintln!("heartbeat_writes: unknown measurement {other:?} (rounds | over-time)");
            std::process::exit(2);
        }
    }
}

/// Store writes made by agent heartbeats, before (`refresh_s = 0`: every heartbeat writes)
/// and after (`refresh_s = 60`): 10,000 agents (`KUBEHUB_AGENTS`) registered, then rounds in
/// which every agent heartbeats and 1% of them change their record. In-process (the service,
/// not HTTPS): what is measured is the store's work.
async fn heartbeat_store_writes() {
    let agents: usize = std::env::var("KUBEHUB_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    const ROUNDS: usize = 3;
    const WORKERS: usize = 64;
    println!("backend  refresh_s  heartbeats  store writes  writes/heartbeat  heartbeats/s");
    for kind in [Kind::Embedded, Kind::Etcd] {
        for refresh in [0, 60] {
            let h = Harness::new(
                kind,
                &format!("[registry]\nttl_s = 600\nrefresh_s = {refresh}\n"),
            );
            let m = h.start().await;
            let round = |r: usize| {
                let mut set = tokio::task::JoinSet::new();
                for w in 0..WORKERS {
                    let meta = m.meta.clone();
                    set.spawn(async move {
                        for i in (w..agents).step_by(WORKERS) {
                            // Round 0 registers; later rounds change 1% of the records.
                            let changed = r > 0 && i % 100 == r;
                            let a = AgentRecord {
                                agent_id: format!("a-{i}"),
                                hubs: vec![if changed {
                                    format!("hub-{r}")
                                } else {
                                    "hub-0".into()
                                }],
                                version: "1".into(),
                                ..AgentRecord::default()
                            };
                            meta.register_agent(&Caller::Admin, &format!("c-{i}"), a)
                                .await
                                .unwrap();
                        }
                    });
                }
                set.join_all()
            };
            round(0).await;
            let r0 = revision(&m).await;
            let start = Instant::now();
            for r in 1..=ROUNDS {
                round(r).await;
            }
            let took = start.elapsed().as_secs_f64();
            let writes = revision(&m).await - r0;
            let beats = agents * ROUNDS;
            println!(
                "{:<8} {refresh:>9} {beats:>11} {writes:>13} {:>17.3} {:>13.0}",
                format!("{kind:?}"),
                writes as f64 / beats as f64,
                beats as f64 / took
            );
            m.stop().await;
        }
    }
}

/// Store writes a second over time, refreshes included: 1,000 agents (`KUBEHUB_AGENTS`)
/// heartbeating every second for 15 s, unchanged, with `refresh_s` 0 (before) and 5 (after:
/// expect about agents / 5 writes a second). In-process, as above.
async fn heartbeat_store_writes_over_time() {
    let agents: usize = std::env::var("KUBEHUB_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    const WORKERS: usize = 32;
    const SECONDS: u64 = 15;
    println!("backend  refresh_s  agents  interval  heartbeats/s  store writes/s  expected");
    for kind in [Kind::Embedded, Kind::Etcd] {
        for refresh in [0u64, 5] {
            let h = Harness::new(
                kind,
                &format!("[registry]\nttl_s = 60\nrefresh_s = {refresh}\n"),
            );
            let m = h.start().await;
            let r0 = revision(&m).await;
            let start = tokio::time::Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for w in 0..WORKERS {
                let meta = m.meta.clone();
                set.spawn(async move {
                    let mut beats = 0u64;
                    let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
                    while start.elapsed() < Duration::from_secs(SECONDS) {
                        tick.tick().await;
                        for i in (w..agents).step_by(WORKERS) {
                            let a = AgentRecord {
                                agent_id: format!("a-{i}"),
                                hubs: vec!["hub-0".into()],
                                ..AgentRecord::default()
                            };
                            meta.register_agent(&Caller::Admin, &format!("c-{i}"), a)
                                .await
                                .unwrap();
                            beats += 1;
                        }
                    }
                    beats
                });
            }
            let beats: u64 = set.join_all().await.into_iter().sum();
            let took = start.elapsed().as_secs_f64();
            let writes = revision(&m).await - r0;
            let expected = if refresh == 0 {
                agents as f64
            } else {
                agents as f64 / refresh as f64
            };
            println!(
                "{:<8} {refresh:>9} {agents:>7} {:>9} {:>13.0} {:>15.0} {expected:>9.0}",
                format!("{kind:?}"),
                "1 s",
                beats as f64 / took,
                writes as f64 / took,
            );
            m.stop().await;
        }
    }
}
