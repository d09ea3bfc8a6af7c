//! How the agent chooses its hubs: rendezvous hashing (deterministic, even, minimal moves),
//! the chooser's failover rules, and end to end with a real metaserver's registry and two
//! hubs that accept the agent's tunnel: the agent dials the hub rendezvous picks, moves to
//! the other when that one dies, does not move back when it returns, and registers itself
//! with the hub it is connected to.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kubehub_agent::config::{Meta as MetaSection, Upstream};
use kubehub_agent::hubs::{rank, weight, Candidate, Chooser, Plan, TunnelState};
use kubehub_agent::{Agent, AgentConfig};
use kubehub_meta::client::Client;
use kubehub_meta::config::MetaConfig;
use kubehub_meta::service::Meta;
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::{Decoder, EncodeBuf, ErrorCode, Frame, GoAway, Ping, Settings};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

// ---- rendezvous hashing ------------------------------------------------------------------

fn hubs(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("hub-{i}.example.com:8444"))
        .collect()
}

fn top<'a>(cluster: &str, hubs: &'a [String]) -> &'a str {
    rank(cluster, hubs.iter().map(String::as_str))[0]
}

#[test]
fn rendezvous_order_is_deterministic_and_independent_of_input_order() {
    let hs = hubs(5);
    let mut reversed = hs.clone();
    reversed.reverse();
    for c in ["edge-1", "edge-2", "a", ""] {
        let a = rank(c, hs.iter().map(String::as_str));
        let b = rank(c, reversed.iter().map(String::as_str));
        assert_eq!(a, b, "{c}");
        assert_eq!(a.len(), 5, "every hub ranked once");
    }
    // Duplicates are ranked once.
    let dup = ["h:1", "h:2", "h:1"];
    assert_eq!(rank("c", dup).len(), 2);
    // Pinned (FNV-1a and fmix64, checked independently): agents built from other versions of
    // this code agree on the order.
    assert_eq!(
        weight("edge-1", "hub-1.example.com:8444"),
        0x71ad_36a5_f008_5394
    );
    assert_ne!(
        weight("edge-1", "hub-1.example.com:8444"),
        weight("edge-1hub-1.example.com:8444", ""),
        "the separator keeps (cluster, hub) pairs apart"
    );
}

#[test]
fn clusters_spread_evenly_over_hubs() {
    let hs = hubs(5);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for i in 0..1000 {
        *counts.entry(top(&format!("cluster-{i}"), &hs)).or_default() += 1;
    }
    assert_eq!(counts.len(), 5, "{counts:?}");
    for (hub, n) in &counts {
        // 200 expected; the binomial standard deviation is about 13.
        assert!((140..=260).contains(n), "{hub}: {n} of 1000 ({counts:?})");
    }
    // So do second choices (what a failover spreads over).
    let mut second: HashMap<&str, usize> = HashMap::new();
    for i in 0..1000 {
        let r = rank(&format!("cluster-{i}"), hs.iter().map(String::as_str));
        *second.entry(r[1]).or_default() += 1;
    }
    for (hub, n) in &second {
        assert!(
            (140..=260).contains(n),
            "second choice {hub}: {n} ({second:?})"
        );
    }
}

#[test]
fn removing_or_adding_a_hub_moves_only_its_share() {
    let hs = hubs(5);
    let gone = hs[2].clone();
    let fewer: Vec<String> = hs.iter().filter(|h| **h != gone).cloned().collect();
    let mut moved = 0;
    for i in 0..1000 {
        let c = format!("cluster-{i}");
        let before = top(&c, &hs);
        let after = top(&c, &fewer);
        if before == gone {
            moved += 1;
            let r = rank(&c, hs.iter().map(String::as_str));
            assert_eq!(after, r[1], "{c} moves to its second choice");
        } else {
            assert_eq!(before, after, "{c} was not on the removed hub: it stays");
        }
    }
    assert!((140..=260).contains(&moved), "{moved} moved");
    // A sixth hub takes about a sixth, and only clusters moving to it move.
    let more = hubs(6);
    let mut taken = 0;
    for i in 0..1000 {
        let c = format!("cluster-{i}");
        let (before, after) = (top(&c, &hs), top(&c, &more));
        if before != after {
            assert_eq!(after, more[5], "{c}");
            taken += 1;
        }
    }
    assert!((110..=230).contains(&taken), "{taken} moved to the new hub");
}

// ---- the chooser ---------------------------------------------------------------------------

const FAILOVER: Duration = Duration::from_secs(10);

fn up(h: &str) -> (String, TunnelState) {
    (h.to_owned(), TunnelState::Up)
}

fn failing(h: &str, since: Instant) -> (String, TunnelState) {
    (h.to_owned(), TunnelState::Failing { since })
}

/// A plan; hubs dropped are failovers (so the dials are spread).
fn plan(dial: &[&str], drop: &[&str]) -> Plan {
    Plan {
        dial: dial.iter().map(|s| s.to_string()).collect(),
        drop: drop.iter().map(|s| s.to_string()).collect(),
        spread: !drop.is_empty(),
        moving: Vec::new(),
    }
}

/// Hubs `a` and `b` in `cluster`'s rendezvous order.
fn ordered_pair(cluster: &str) -> (String, String) {
    let r = rank(cluster, ["x:1", "y:1"]);
    (r[0].to_owned(), r[1].to_owned())
}

#[test]
fn one_hub_per_agent_fails_over_and_does_not_flap_back() {
    let c = "edge-1";
    let (a, b) = ordered_pair(c);
    let live = vec![a.clone(), b.clone()];
    let mut ch = Chooser::new(c, 1, FAILOVER);
    let t0 = Instant::now();
    assert_eq!(
        ch.plan(&live, &[], t0),
        plan(&[&a], &[]),
        "the first in rendezvous order"
    );
    // Failing, but not for long enough: retried, nothing else.
    let held = [failing(&a, t0)];
    assert_eq!(ch.plan(&live, &held, t0 + FAILOVER / 2), Plan::default());
    assert_eq!(
        ch.next_deadline(&held, t0 + FAILOVER / 2),
        Some(t0 + FAILOVER)
    );
    // Failing for failover_after: the next hub.
    let t1 = t0 + FAILOVER;
    assert_eq!(ch.plan(&live, &held, t1), plan(&[&b], &[&a]));
    // `a` comes back while the tunnel to `b` is up: no flapping.
    let held = [up(&b)];
    assert_eq!(ch.plan(&live, &held, t1 + FAILOVER * 100), Plan::default());
    assert_eq!(ch.next_deadline(&held, t1), None);
}

#[test]
fn a_failing_hub_gone_from_the_registry_is_left_at_once() {
    let c = "edge-2";
    let (a, b) = ordered_pair(c);
    let mut ch = Chooser::new(c, 1, FAILOVER);
    let t0 = Instant::now();
    let held = [failing(&a, t0)];
    assert_eq!(
        ch.plan(
            &[a.clone(), b.clone()],
            &held,
            t0 + Duration::from_millis(1)
        ),
        Plan::default()
    );
    assert_eq!(
        ch.plan(
            std::slice::from_ref(&b),
            &held,
            t0 + Duration::from_millis(2)
        ),
        plan(&[&b], &[&a])
    );
}

#[test]
fn a_healthy_tunnel_to_a_hub_gone_from_the_registry_is_kept() {
    let c = "edge-3";
    let (a, b) = ordered_pair(c);
    let mut ch = Chooser::new(c, 1, FAILOVER);
    let t0 = Instant::now();
    assert_eq!(
        ch.plan(std::slice::from_ref(&b), &[up(&a)], t0),
        Plan::default()
    );
    // Once it fails, it is not dialled again: it is not live.
    assert_eq!(
        ch.plan(std::slice::from_ref(&b), &[failing(&a, t0)], t0),
        plan(&[&b], &[&a])
    );
}

#[test]
fn the_only_hub_is_retried_and_hubs_given_up_rotate() {
    let c = "edge-4";
    let (a, b) = ordered_pair(c);
    let mut ch = Chooser::new(c, 1, FAILOVER);
    let t0 = Instant::now();
    // Nothing else to go to: keep retrying the one hub.
    assert_eq!(
        ch.plan(
            std::slice::from_ref(&a),
            &[failing(&a, t0)],
            t0 + FAILOVER * 3
        ),
        Plan::default()
    );
    // Two hubs, both failing in turn: each failover goes to the one given up longest ago.
    let live = vec![a.clone(), b.clone()];
    let t1 = t0 + FAILOVER * 3;
    assert_eq!(ch.plan(&live, &[failing(&a, t0)], t1), plan(&[&b], &[&a]));
    let t2 = t1 + FAILOVER;
    assert_eq!(ch.plan(&live, &[failing(&b, t1)], t2), plan(&[&a], &[&b]));
    let t3 = t2 + FAILOVER;
    assert_eq!(ch.plan(&live, &[failing(&a, t2)], t3), plan(&[&b], &[&a]));
}

#[test]
fn hubs_given_up_lately_are_skipped() {
    let c = "edge-5";
    let live: Vec<String> = rank(c, ["p:1", "q:1", "r:1"])
        .into_iter()
        .map(str::to_owned)
        .collect();
    let (first, second, third) = (&live[0], &live[1], &live[2]);
    let mut ch = Chooser::new(c, 1, FAILOVER);
    let t0 = Instant::now();
    assert_eq!(
        ch.plan(&live, &[failing(first, t0)], t0 + FAILOVER),
        plan(&[second], &[first])
    );
    // The second fails too: the third, not the first (given up a moment ago).
    let t1 = t0 + FAILOVER * 2;
    assert_eq!(
        ch.plan(&live, &[failing(second, t0 + FAILOVER)], t1),
        plan(&[third], &[second])
    );
    // Long after, a failover goes by rendezvous order again.
    let t2 = t1 + FAILOVER * 60;
    assert_eq!(
        ch.plan(&live, &[failing(third, t1)], t2),
        plan(&[first], &[third])
    );
}

#[test]
fn several_or_all_hubs_per_agent() {
    let c = "edge-6";
    let live: Vec<String> = ["p:1", "q:1", "r:1"].map(str::to_owned).to_vec();
    let order = rank(c, live.iter().map(String::as_str));
    let t0 = Instant::now();
    let mut two = Chooser::new(c, 2, FAILOVER);
    assert_eq!(two.plan(&live, &[], t0), plan(&order[..2], &[]));
    // One of them fails over to the third.
    let held = [up(order[0]), failing(order[1], t0)];
    assert_eq!(
        two.plan(&live, &held, t0 + FAILOVER),
        plan(&[order[2]], &[order[1]])
    );
    // More wanted than live: all of them.
    let mut nine = Chooser::new(c, 9, FAILOVER);
    assert_eq!(nine.plan(&live, &[], t0).dial.len(), 3);

    // 0: every live hub, a new one too; a failing hub that left the registry is dropped, a
    // healthy one kept.
    let mut all = Chooser::new(c, 0, FAILOVER);
    assert_eq!(all.plan(&live, &[], t0), plan(&order, &[]));
    let held: Vec<_> = live.iter().map(|h| up(h)).collect();
    let mut more = live.clone();
    more.push("s:1".into());
    assert_eq!(all.plan(&more, &held, t0), plan(&["s:1"], &[]));
    let held = [up("p:1"), failing("q:1", t0), up("r:1"), up("s:1")];
    let fewer: Vec<String> = ["s:1", "r:1"].map(str::to_owned).to_vec();
    assert_eq!(all.plan(&fewer, &held, t0), plan(&[], &["q:1"]));
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn zoned(hubs: &[(&str, &str)]) -> Vec<Candidate> {
    hubs.iter()
        .map(|(e, z)| Candidate {
            endpoint: (*e).to_owned(),
            zone: (*z).to_owned(),
            agents: 0,
        })
        .collect()
}

#[test]
fn two_hubs_in_two_zones_while_there_are_two() {
    let c = "edge-z";
    let eps = ["p:1", "q:1", "r:1", "s:1"];
    let order = rank(c, eps);
    // The first two in rendezvous order share a zone; the others are in another.
    let live = zoned(&[
        (order[0], "z1"),
        (order[1], "z1"),
        (order[2], "z2"),
        (order[3], "z2"),
    ]);
    let t0 = Instant::now();
    let mut ch = Chooser::new(c, 2, FAILOVER);
    assert_eq!(
        ch.plan_registry(&live, &[], &[], t0).dial,
        strings(&[order[0], order[2]]),
        "the first, then the first of another zone"
    );
    // One zone only: filled up in rendezvous order.
    let one = zoned(&[(order[0], "z1"), (order[1], "z1"), (order[2], "z1")]);
    assert_eq!(
        Chooser::new(c, 2, FAILOVER)
            .plan_registry(&one, &[], &[], t0)
            .dial,
        strings(&[order[0], order[1]])
    );
    // Three wanted, two zones: one of each, then the next in order.
    assert_eq!(
        Chooser::new(c, 3, FAILOVER)
            .plan_registry(&live, &[], &[], t0)
            .dial,
        strings(&[order[0], order[2], order[1]])
    );
    // Unknown (empty) zones never conflict.
    let unknown = zoned(&[(order[0], ""), (order[1], ""), (order[2], "z2")]);
    assert_eq!(
        Chooser::new(c, 2, FAILOVER)
            .plan_registry(&unknown, &[], &[], t0)
            .dial,
        strings(&[order[0], order[1]])
    );
    // A failover keeps the zones apart: the tunnel kept in z1 and the one failing in z2 is
    // replaced by the other z2 hub, not the z1 one ranked before it.
    let held = [up(order[0]), failing(order[2], t0)];
    assert_eq!(
        ch.plan_registry(&live, &[], &held, t0 + FAILOVER),
        plan(&[order[3]], &[order[2]])
    );
}

#[test]
fn a_healthy_tunnel_to_an_ineligible_hub_moves_after_a_delay_new_before_old() {
    let c = "edge-7";
    let (a, b) = ordered_pair(c);
    let delay = Duration::from_millis(500);
    let live = zoned(&[(&b, "")]);
    let ineligible = strings(&[&a]);
    for seed in 0..20 {
        let mut ch = Chooser::new(c, 1, FAILOVER)
            .with_moves(6, delay)
            .with_seed(seed);
        let t0 = Instant::now();
        let held = [up(&a)];
        let mut p = ch.plan_registry(&live, &ineligible, &held, t0);
        let mut at = t0;
        if p.moving.is_empty() {
            // Not yet: the move is due within the delay.
            assert_eq!(p, Plan::default());
            at = ch.next_deadline(&held, t0).expect("a move is due");
            assert!(at > t0 && at <= t0 + delay, "{:?}", at - t0);
            p = ch.plan_registry(&live, &ineligible, &held, at);
        }
        assert_eq!(
            p,
            Plan {
                dial: strings(&[&b]),
                drop: vec![],
                spread: false,
                moving: strings(&[&a]),
            },
            "seed {seed}: the next hub dialled at once, the old one kept"
        );
        // While the new tunnel is not up, the old one stays.
        let held = [up(&a), failing(&b, at)];
        assert_eq!(
            ch.plan_registry(&live, &ineligible, &held, at),
            Plan::default()
        );
        // Once it is, the old one goes.
        let held = [up(&a), up(&b)];
        assert_eq!(
            ch.plan_registry(&live, &ineligible, &held, at),
            Plan {
                drop: strings(&[&a]),
                ..Plan::default()
            }
        );
        assert_eq!(
            ch.plan_registry(&live, &ineligible, &[up(&b)], at),
            Plan::default()
        );
    }
}

#[test]
fn ineligible_moves_wait_for_somewhere_to_go_and_are_cancelled_by_eligibility() {
    let c = "edge-8";
    let (a, b) = ordered_pair(c);
    let t0 = Instant::now();
    let ineligible = strings(&[&a]);
    let mut ch = Chooser::new(c, 1, FAILOVER).with_moves(6, Duration::from_millis(500));
    let held = [up(&a)];
    // Nothing else offered: stay.
    for i in 0..5 {
        let t = t0 + Duration::from_secs(i);
        assert_eq!(
            ch.plan_registry(&[], &ineligible, &held, t),
            Plan::default()
        );
    }
    // Eligible again before the move was due: nothing moves, ever.
    let mut ch = Chooser::new(c, 1, FAILOVER)
        .with_moves(6, Duration::from_secs(3600))
        .with_seed(7);
    let live = zoned(&[(&b, "")]);
    let p = ch.plan_registry(&live, &ineligible, &held, t0);
    if p.moving.is_empty() {
        let both = zoned(&[(&a, ""), (&b, "")]);
        for i in 0..5 {
            let t = t0 + Duration::from_secs(3600 * i);
            assert_eq!(ch.plan_registry(&both, &[], &held, t), Plan::default());
        }
        assert_eq!(ch.next_deadline(&held, t0), None);
    }
    // A failing tunnel to an ineligible hub is given up at once (as a hub gone from the
    // registry), as a failover.
    let mut ch = Chooser::new(c, 1, FAILOVER);
    assert_eq!(
        ch.plan_registry(&live, &ineligible, &[failing(&a, t0)], t0),
        plan(&[&b], &[&a])
    );
}

#[test]
fn voluntary_moves_are_rate_limited() {
    let c = "edge-9";
    let t0 = Instant::now();
    let held_hubs = ["a:1", "b:1", "c:1"];
    let held: Vec<_> = held_hubs.iter().map(|h| up(h)).collect();
    let live = zoned(&[("d:1", ""), ("e:1", ""), ("f:1", "")]);
    let ineligible = strings(&held_hubs);
    let mut ch = Chooser::new(c, 3, FAILOVER).with_moves(2, Duration::ZERO);
    let p = ch.plan_registry(&live, &ineligible, &held, t0);
    assert_eq!(p.moving.len(), 2, "{p:?}");
    assert_eq!(p.dial.len(), 2, "{p:?}");
    let started: Vec<&str> = p.moving.iter().map(String::as_str).collect();
    let third = held_hubs.iter().find(|h| !started.contains(h)).unwrap();
    let mut held2 = held.clone();
    held2.extend(p.dial.iter().map(|h| up(h)));
    // The two moves complete; the third waits for the minute to pass.
    let p2 = ch.plan_registry(&live, &ineligible, &held2, t0 + Duration::from_secs(1));
    assert_eq!(p2.drop.len(), 2, "{p2:?}");
    assert!(p2.moving.is_empty());
    let held3: Vec<_> = held2
        .iter()
        .filter(|(h, _)| !p2.drop.contains(h))
        .cloned()
        .collect();
    assert_eq!(
        ch.next_deadline(&held3, t0 + Duration::from_secs(1)),
        Some(t0 + Duration::from_secs(60))
    );
    let p3 = ch.plan_registry(&live, &ineligible, &held3, t0 + Duration::from_secs(60));
    assert_eq!(p3.moving, strings(&[third]), "{p3:?}");
    assert_eq!(p3.dial.len(), 1);
    // 0 a minute: never.
    let mut never = Chooser::new(c, 3, FAILOVER).with_moves(0, Duration::ZERO);
    for i in 0..3 {
        let t = t0 + Duration::from_secs(120 * i);
        assert_eq!(
            never.plan_registry(&live, &ineligible, &held, t),
            Plan::default()
        );
    }
}

#[test]
fn a_draining_hub_is_given_up_at_once_and_the_next_dialled_without_delay() {
    let c = "edge-10";
    let (a, b) = ordered_pair(c);
    let both = zoned(&[(&a, ""), (&b, "")]);
    let t0 = Instant::now();
    let mut ch = Chooser::new(c, 1, FAILOVER);
    assert_eq!(
        ch.plan_registry(&both, &[], &[(a.clone(), TunnelState::Draining)], t0),
        Plan {
            dial: strings(&[&b]),
            drop: strings(&[&a]),
            spread: false,
            moving: vec![],
        }
    );
    // With two hubs per agent, the other tunnel stays and a third hub is dialled.
    let three = zoned(&[("p:1", ""), ("q:1", ""), ("r:1", "")]);
    let order = rank(c, ["p:1", "q:1", "r:1"]);
    let mut two = Chooser::new(c, 2, FAILOVER);
    let held = [up(order[0]), (order[1].to_owned(), TunnelState::Draining)];
    assert_eq!(
        two.plan_registry(&three, &[], &held, t0),
        Plan {
            dial: strings(&[order[2]]),
            drop: strings(&[order[1]]),
            spread: false,
            moving: vec![],
        }
    );
    // Nowhere else to go: the draining tunnel is kept (it reconnects with the backoff).
    let only = zoned(&[(&a, "")]);
    let mut ch = Chooser::new(c, 1, FAILOVER);
    assert_eq!(
        ch.plan_registry(&only, &[], &[(a.clone(), TunnelState::Draining)], t0),
        Plan::default()
    );
    assert_eq!(
        ch.next_deadline(&[(a.clone(), TunnelState::Draining)], t0),
        None
    );
}

#[test]
fn an_overloaded_hub_sheds_agents_slowly() {
    let c = "edge-11";
    let live = |a: u64| {
        vec![
            Candidate {
                endpoint: "a:1".into(),
                zone: String::new(),
                agents: a,
            },
            Candidate {
                endpoint: "b:1".into(),
                zone: String::new(),
                agents: 100,
            },
            Candidate {
                endpoint: "c:1".into(),
                zone: String::new(),
                agents: 100,
            },
        ]
    };
    let t0 = Instant::now();
    let held = [up("a:1")];
    // At most 1.25 × the mean: never.
    for seed in 0..200 {
        let mut ch = Chooser::new(c, 1, FAILOVER).with_seed(seed);
        assert!(!ch.rebalance(&live(140), &held, t0));
    }
    // 300 against a mean of 166.7: p = (300 - 166.7) / 300 / 10 = 4.4% a refresh.
    let n = 20_000;
    let moved = (0..n)
        .filter(|seed| {
            Chooser::new(c, 1, FAILOVER)
                .with_seed(*seed)
                .rebalance(&live(300), &held, t0)
        })
        .count();
    let share = moved as f64 / n as f64;
    assert!((0.038..0.051).contains(&share), "{share}");
    // A move goes to the first lighter hub in rendezvous order, new tunnel before old.
    let mut ch = Chooser::new(c, 1, FAILOVER).with_seed(1);
    let mut tries = 0;
    while !ch.rebalance(&live(300), &held, t0) {
        tries += 1;
        assert!(tries < 1000);
    }
    let target = rank(c, ["b:1", "c:1"])[0];
    let p = ch.plan_registry(&live(300), &[], &held, t0);
    assert_eq!(p.dial, strings(&[target]), "{p:?}");
    assert!(p.drop.is_empty());
    let p = ch.plan_registry(&live(300), &[], &[up("a:1"), up(target)], t0);
    assert_eq!(p.drop, strings(&["a:1"]));
    // The move keeps the tunnels in different zones: from a (z1) with b (z2) held, to d (z3),
    // whatever the rendezvous order of c (z2) and d.
    let zones = vec![
        Candidate {
            endpoint: "a:1".into(),
            zone: "z1".into(),
            agents: 300,
        },
        Candidate {
            endpoint: "b:1".into(),
            zone: "z2".into(),
            agents: 100,
        },
        Candidate {
            endpoint: "c:1".into(),
            zone: "z2".into(),
            agents: 100,
        },
        Candidate {
            endpoint: "d:1".into(),
            zone: "z3".into(),
            agents: 100,
        },
    ];
    let held2 = [up("a:1"), up("b:1")];
    let mut ch = Chooser::new(c, 2, FAILOVER).with_seed(3);
    let mut tries = 0;
    while !ch.rebalance(&zones, &held2, t0) {
        tries += 1;
        assert!(tries < 1000);
    }
    assert_eq!(
        ch.plan_registry(&zones, &[], &held2, t0).dial,
        strings(&["d:1"])
    );
    // No lighter hub to go to: no move.
    let even = vec![
        Candidate {
            endpoint: "a:1".into(),
            zone: String::new(),
            agents: 300,
        },
        Candidate {
            endpoint: "b:1".into(),
            zone: String::new(),
            agents: 10,
        },
    ];
    for seed in 0..200 {
        let mut ch = Chooser::new(c, 2, FAILOVER).with_seed(seed);
        assert!(!ch.rebalance(&even, &[up("a:1"), up("b:1")], t0));
    }
    // A move that would only shift the imbalance: none. One agent alone on one of three hubs
    // (1 against a mean of 1/3) stays where it is, as do two agents on a hub beside one with one.
    let small = |counts: [u64; 3]| -> Vec<Candidate> {
        ["a:1", "b:1", "c:1"]
            .iter()
            .zip(counts)
            .map(|(e, n)| Candidate {
                endpoint: (*e).into(),
                zone: String::new(),
                agents: n,
            })
            .collect()
    };
    for seed in 0..500 {
        let mut ch = Chooser::new(c, 1, FAILOVER).with_seed(seed);
        assert!(!ch.rebalance(&small([1, 0, 0]), &held, t0), "seed {seed}");
        assert!(!ch.rebalance(&small([2, 1, 1]), &held, t0), "seed {seed}");
    }
    // Two more than a lighter hub: it may move.
    let mut ch = Chooser::new(c, 1, FAILOVER).with_seed(1);
    let mut tries = 0;
    while !ch.rebalance(&small([3, 1, 1]), &held, t0) {
        tries += 1;
        assert!(tries < 1000);
    }
}

// ---- end to end ----------------------------------------------------------------------------

/// A hub that accepts the agent's tunnel (mutual TLS against meta's CA, HELLO → HELLO_ACK,
/// pings answered) and counts connections; `stop` closes its listener and connections.
struct FakeHub {
    id: String,
    addr: SocketAddr,
    /// Tunnels accepted (HELLO answered).
    accepted: Arc<AtomicUsize>,
    /// Tunnels open now.
    open: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    /// Registry heartbeats go on while this is true.
    beating: Arc<AtomicBool>,
    /// The heartbeats say the hub drains.
    draining: Arc<AtomicBool>,
    /// Set: every tunnel gets GOAWAY NO_ERROR (a draining hub), then closes when the agent
    /// closes it.
    goaway: watch::Sender<bool>,
}

impl FakeHub {
    async fn start(ca: &kubehub_pki::Ca, id: &str, addr: SocketAddr) -> std::io::Result<FakeHub> {
        // SO_REUSEADDR: a hub coming back binds its old address even while connections of
        // its previous life linger in TIME_WAIT.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let listener = socket.listen(64)?;
        let addr = listener.local_addr()?;
        let cert = ca.issue_server(&["127.0.0.1", "localhost"]).unwrap();
        let cfg = kubehub_pki::tunnel_server_config(
            kubehub_pki::parse_roots(&ca.cert_pem()).unwrap(),
            Arc::new(kubehub_pki::ReloadingCert::from_pem(&cert.cert, &cert.key).unwrap()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let (stop, stopped) = watch::channel(false);
        let (goaway, goaway_rx) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, opn, hub_id) = (accepted.clone(), open.clone(), id.to_owned());
        let mut stop_rx = stopped.clone();
        tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                    _ = stop_rx.changed() => return,
                };
                let (acceptor, acc, opn, hub_id) =
                    (acceptor.clone(), acc.clone(), opn.clone(), hub_id.clone());
                let mut stop_conn = stopped.clone();
                let goaway = goaway_rx.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(acceptor, tcp, &hub_id, &acc, &opn, goaway) => {}
                        _ = stop_conn.changed() => {}
                    }
                });
            }
        });
        Ok(FakeHub {
            id: id.to_owned(),
            addr,
            accepted,
            open,
            stop,
            beating: Arc::new(AtomicBool::new(true)),
            draining: Arc::new(AtomicBool::new(false)),
            goaway,
        })
    }

    /// Registers the hub with meta every 400 ms while `beating`.
    fn heartbeat(&self, admin: Arc<Client>) {
        let (id, addr, beating) = (self.id.clone(), self.addr, self.beating.clone());
        let draining = self.draining.clone();
        tokio::spawn(async move {
            while beating.load(Ordering::SeqCst) {
                let body = json!({"endpoint": format!("https://{id}.example.com:8443"),
                                  "agentEndpoint": addr.to_string(), "version": "test",
                                  "draining": draining.load(Ordering::SeqCst)});
                let _ = admin.put(&format!("/v1/registry/hubs/{id}"), &body).await;
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
    }

    fn kill(&self) {
        self.beating.store(false, Ordering::SeqCst);
        let _ = self.stop.send(true);
    }
}

/// Decrements a counter when dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn write_frames<W: AsyncWriteExt + Unpin>(w: &mut W, frames: &[Frame]) -> bool {
    let mut eb = EncodeBuf::new();
    for f in frames {
        eb.push(f);
    }
    let mut v = Vec::new();
    while bytes::Buf::has_remaining(&eb) {
        let c = bytes::Buf::chunk(&eb).to_vec();
        bytes::Buf::advance(&mut eb, c.len());
        v.extend_from_slice(&c);
    }
    w.write_all(&v).await.is_ok() && w.flush().await.is_ok()
}

async fn serve(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    hub_id: &str,
    accepted: &AtomicUsize,
    open: &Arc<AtomicUsize>,
    mut goaway: watch::Receiver<bool>,
) {
    let Ok(mut tls) = acceptor.accept(tcp).await else {
        return;
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut dec = Decoder::default();
    let hello = loop {
        match dec.decode(&mut buf) {
            Ok(Some(Frame::Hello(h))) => break h,
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {}
        }
        match tls.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    };
    let Ok((ack, _)) = handshake::accept(&hello, &Offer::default(), hub_id, 1000) else {
        return;
    };
    if !write_frames(&mut tls, &[Frame::HelloAck(ack)]).await {
        return;
    }
    dec.set_max_frame_size(Settings::default().max_frame_size);
    accepted.fetch_add(1, Ordering::SeqCst);
    open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(open.clone());
    let mut said_goaway = false;
    loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(Frame::Ping(p))) if !p.ack => {
                    let pong = Frame::Ping(Ping {
                        ack: true,
                        opaque: p.opaque,
                    });
                    if !write_frames(&mut tls, &[pong]).await {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let read = tokio::select! {
            r = tls.read_buf(&mut buf) => r,
            r = goaway.changed(), if !said_goaway => {
                said_goaway = true;
                let set = r.is_ok() && *goaway.borrow();
                if set {
                    let g = Frame::GoAway(GoAway {
                        last_stream_id: 0,
                        code: ErrorCode::NO_ERROR,
                        message: "draining".into(),
                    });
                    if !write_frames(&mut tls, &[g]).await {
                        return;
                    }
                }
                // Until the agent closes the tunnel.
                tls.read_buf(&mut buf).await
            }
        };
        match read {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The hubs the registry says the agent of `cluster` is connected to.
async fn registered_hubs(admin: &Client, cluster: &str) -> Result<Vec<String>, String> {
    let v: Value = admin
        .get("/v1/registry/agents")
        .await
        .map_err(|e| e.to_string())?;
    let items = v["items"].as_array().cloned().unwrap_or_default();
    let entry = items
        .iter()
        .find(|a| a["cluster"] == cluster)
        .ok_or_else(|| format!("no entry for {cluster}: {v}"))?;
    Ok(entry["hubs"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// A metaserver (embedded store, registry TTL 2 s), two registered fake hubs, and the agent
/// of `cluster`, enrolled with a join token, reading the registry every 300 ms.
struct World {
    _dir: tempfile::TempDir,
    meta: Meta,
    server: kubehub_meta::server::Server,
    admin: Arc<Client>,
    h1: FakeHub,
    h2: FakeHub,
    agent: Agent,
}

impl World {
    async fn start(cluster: &str, hubs_per_agent: u32, failover_after_ms: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "listen = \"127.0.0.1:0\"\nadmin_token_file = \"{}\"\nhub_url = \"https://hub.example:8443\"\n\
             [registry]\nttl_s = 2\n[store]\nbackend = \"embedded\"\npath = \"{}\"\n",
            dir.path().join("admin.token").display(),
            dir.path().join("meta.redb").display(),
        );
        let meta = Meta::start(MetaConfig::parse(&text).unwrap())
            .await
            .unwrap();
        let server = kubehub_meta::server::start(meta.clone()).await.unwrap();
        let url = format!("https://{}", server.addr);
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let admin = Arc::new(
            Client::new(&url, meta.ca_pem(), Some(token.trim().to_owned()), None).unwrap(),
        );

        // Two hubs, registered.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let h1 = FakeHub::start(meta.ca(), "hub-1", any).await.unwrap();
        let h2 = FakeHub::start(meta.ca(), "hub-2", any).await.unwrap();
        h1.heartbeat(admin.clone());
        h2.heartbeat(admin.clone());
        eventually("both hubs registered", Duration::from_secs(20), || {
            let admin = admin.clone();
            async move {
                let v = admin
                    .get("/v1/registry/hubs")
                    .await
                    .map_err(|e| e.to_string())?;
                let n = v["items"].as_array().map_or(0, Vec::len);
                (n == 2).then_some(()).ok_or(format!("{v}"))
            }
        })
        .await;

        // The cluster and its agent, enrolled with a join token.
        admin
            .post("/v1/tenants", &json!({"name": "t"}))
            .await
            .unwrap();
        let created = admin
            .post("/v1/clusters", &json!({"id": cluster, "tenant": "t"}))
            .await
            .unwrap();
        let join = created["joinToken"].as_str().unwrap().to_owned();
        let mut section = MetaSection::new(url.clone(), dir.path().join("agent-state"));
        section.renew = false;
        section.request_timeout_ms = 5_000;
        section.hub_refresh_ms = 300;
        section.register_interval_ms = 300;
        section.failover_after_ms = failover_after_ms;
        section.hubs_per_agent = hubs_per_agent;
        let mut cfg = AgentConfig::enrolling(section, Upstream::at("http://127.0.0.1:1"));
        cfg.reconnect.initial_ms = 100;
        cfg.reconnect.max_ms = 500;
        cfg.limits.connect_timeout_ms = 2_000;
        let agent = Agent::join_and_start(cfg, Some(&join)).await.unwrap();
        World {
            _dir: dir,
            meta,
            server,
            admin,
            h1,
            h2,
            agent,
        }
    }

    /// [`World::start`] with one hub per agent, once the agent has a tunnel to the hub
    /// rendezvous ranks first and has registered it.
    async fn connected(cluster: &str, failover_after_ms: u64) -> World {
        let w = World::start(cluster, 1, failover_after_ms).await;
        let (chosen, _) = w.chosen_and_other(cluster);
        open_on(
            chosen,
            1,
            "a tunnel to the chosen hub",
            Duration::from_secs(30),
        )
        .await;
        registered_with(&w.admin, cluster, chosen, "registered with the chosen hub").await;
        w
    }

    /// The hub rendezvous ranks first for `cluster`, and the other.
    fn chosen_and_other(&self, cluster: &str) -> (&FakeHub, &FakeHub) {
        let addrs = [self.h1.addr.to_string(), self.h2.addr.to_string()];
        let first = rank(cluster, addrs.iter().map(String::as_str))[0].to_owned();
        if first == addrs[0] {
            (&self.h1, &self.h2)
        } else {
            (&self.h2, &self.h1)
        }
    }

    async fn stop(self) {
        self.agent.stop().await;
        self.h1.kill();
        self.h2.kill();
        self.server.stop().await;
    }
}

/// Waits until `hub` has `n` tunnels open.
async fn open_on(hub: &FakeHub, n: usize, what: &str, within: Duration) {
    eventually(what, within, || {
        let open = hub.open.load(Ordering::SeqCst);
        async move { (open == n).then_some(()).ok_or(format!("{open} open")) }
    })
    .await;
}

/// Waits until the registry says the agent of `cluster` holds tunnels to `hub` only.
async fn registered_with(admin: &Arc<Client>, cluster: &str, hub: &FakeHub, what: &str) {
    eventually(what, Duration::from_secs(30), || {
        let admin = admin.clone();
        let want = vec![hub.id.clone()];
        let cluster = cluster.to_owned();
        async move {
            let got = registered_hubs(&admin, &cluster).await?;
            (got == want).then_some(()).ok_or(format!("{got:?}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_registry_and_fails_over() {
    const CLUSTER: &str = "t-edge";
    let w = World::start(CLUSTER, 1, 1_500).await;
    let (admin, agent, meta) = (&w.admin, &w.agent, &w.meta);
    let (chosen, other) = w.chosen_and_other(CLUSTER);
    // It dials the hub rendezvous picks, and only that one.
    open_on(
        chosen,
        1,
        "a tunnel to the chosen hub",
        Duration::from_secs(30),
    )
    .await;
    registered_with(admin, CLUSTER, chosen, "registered with the chosen hub").await;
    known(agent, 2, "the registry's hubs counted").await;
    assert_eq!(
        other.accepted.load(Ordering::SeqCst),
        0,
        "one hub per agent: the other is not dialled"
    );
    assert_eq!(agent.metrics.hub_switches.get(), 0);

    // The chosen hub dies (connections closed, heartbeats stopped: its lease expires). The
    // agent moves to the other one and says so in the registry.
    chosen.kill();
    open_on(
        other,
        1,
        "a tunnel to the other hub",
        Duration::from_secs(40),
    )
    .await;
    registered_with(admin, CLUSTER, other, "registered with the other hub").await;
    assert!(agent.metrics.hub_switches.get() >= 1);
    assert!(agent
        .metrics
        .encode()
        .contains("kubehub_agent_hub_switches_total"));
    known(agent, 1, "the dead hub's lease expired").await;

    // The first hub returns at the same address: the healthy tunnel stays where it is.
    let back = FakeHub::start(meta.ca(), &chosen.id, chosen.addr)
        .await
        .expect("the first hub binds its old address again");
    back.heartbeat(admin.clone());
    known(agent, 2, "the hub registered again").await;
    // Several registry reads later, nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(back.accepted.load(Ordering::SeqCst), 0, "no flapping back");
    assert_eq!(other.open.load(Ordering::SeqCst), 1);
    assert_eq!(agent.metrics.hub_moves.get(), 0);

    back.kill();
    w.stop().await;
}

/// Waits until the agent's registry answers offer `n` hubs.
async fn known(agent: &Agent, n: usize, what: &str) {
    eventually(what, Duration::from_secs(30), || {
        let text = agent.metrics.encode();
        async move {
            text.contains(&format!("kubehub_agent_hubs_known {n}\n"))
                .then_some(())
                .ok_or(text)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_the_registry_says_drains_is_left_new_tunnel_first() {
    const CLUSTER: &str = "t-drain";
    // A long failover_after: what moves the agent is the registry, not a failure.
    let w = World::connected(CLUSTER, 600_000).await;
    let (chosen, other) = w.chosen_and_other(CLUSTER);
    // The chosen hub says it drains: meta lists it as ineligible; the agent dials the other
    // and closes the first once the new tunnel is up.
    chosen.draining.store(true, Ordering::SeqCst);
    open_on(
        other,
        1,
        "a tunnel to the other hub",
        Duration::from_secs(20),
    )
    .await;
    open_on(
        chosen,
        0,
        "the first tunnel closed",
        Duration::from_secs(20),
    )
    .await;
    registered_with(&w.admin, CLUSTER, other, "registered with the other hub").await;
    assert_eq!(w.agent.metrics.hub_moves.get(), 1);
    assert_eq!(
        chosen.accepted.load(Ordering::SeqCst),
        1,
        "not dialled again"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_no_error_moves_the_agent_at_once() {
    const CLUSTER: &str = "t-goaway";
    let w = World::connected(CLUSTER, 600_000).await;
    let (chosen, other) = w.chosen_and_other(CLUSTER);
    // The chosen hub sends GOAWAY NO_ERROR (a restart) but stays registered and reachable:
    // the agent goes to the other hub at once, and does not come back.
    let sent = Instant::now();
    let _ = chosen.goaway.send(true);
    open_on(
        other,
        1,
        "a tunnel to the other hub",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "moved {:?} after GOAWAY",
        sent.elapsed()
    );
    registered_with(&w.admin, CLUSTER, other, "registered with the other hub").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        chosen.accepted.load(Ordering::SeqCst),
        1,
        "not dialled again"
    );
    assert_eq!(chosen.open.load(Ordering::SeqCst), 0);
    assert!(w.agent.metrics.hub_switches.get() >= 1);
    w.stop().await;
}
