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
use kubehub_agent::hubs::{rank, weight, Chooser, Plan, TunnelState};
use kubehub_agent::{Agent, AgentConfig};
use kubehub_meta::client::Client;
use kubehub_meta::config::MetaConfig;
use kubehub_meta::service::Meta;
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::{Decoder, EncodeBuf, Frame, Ping, Settings};
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

fn plan(dial: &[&str], drop: &[&str]) -> Plan {
    Plan {
        dial: dial.iter().map(|s| s.to_string()).collect(),
        drop: drop.iter().map(|s| s.to_string()).collect(),
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
                tokio::spawn(async move {
                    tokio::select! {
                        _ = serve(acceptor, tcp, &hub_id, &acc, &opn) => {}
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
        })
    }

    /// Registers the hub with meta every 400 ms while `beating`.
    fn heartbeat(&self, admin: Arc<Client>) {
        let (id, addr, beating) = (self.id.clone(), self.addr, self.beating.clone());
        tokio::spawn(async move {
            let body = json!({"endpoint": format!("https://{id}.example.com:8443"),
                              "agentEndpoint": addr.to_string(), "version": "test"});
            while beating.load(Ordering::SeqCst) {
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
        match tls.read_buf(&mut buf).await {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_follows_the_registry_and_fails_over() {
    const CLUSTER: &str = "t-edge";
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
    let admin =
        Arc::new(Client::new(&url, meta.ca_pem(), Some(token.trim().to_owned()), None).unwrap());

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
        .post("/v1/clusters", &json!({"id": CLUSTER, "tenant": "t"}))
        .await
        .unwrap();
    let join = created["joinToken"].as_str().unwrap().to_owned();
    let mut section = MetaSection::new(url.clone(), dir.path().join("agent-state"));
    section.renew = false;
    section.request_timeout_ms = 5_000;
    section.hub_refresh_ms = 300;
    section.register_interval_ms = 300;
    section.failover_after_ms = 1_500;
    let mut cfg = AgentConfig::enrolling(
        section,
        Upstream {
            url: "http://127.0.0.1:1".into(),
            ca: None,
            token: None,
            token_file: None,
            client_cert: None,
            client_key: None,
        },
    );
    cfg.reconnect.initial_ms = 100;
    cfg.reconnect.max_ms = 500;
    cfg.limits.connect_timeout_ms = 2_000;
    let agent = Agent::join_and_start(cfg, Some(&join)).await.unwrap();

    // It dials the hub rendezvous picks, and only that one.
    let addrs = [h1.addr.to_string(), h2.addr.to_string()];
    let first = rank(CLUSTER, addrs.iter().map(String::as_str))[0].to_owned();
    let (chosen, other) = if first == addrs[0] {
        (&h1, &h2)
    } else {
        (&h2, &h1)
    };
    eventually(
        "a tunnel to the chosen hub",
        Duration::from_secs(30),
        || {
            let open = chosen.open.load(Ordering::SeqCst);
            async move { (open == 1).then_some(()).ok_or(format!("{open} open")) }
        },
    )
    .await;
    eventually(
        "registered with the chosen hub",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            let want = vec![chosen.id.clone()];
            async move {
                let got = registered_hubs(&admin, CLUSTER).await?;
                (got == want).then_some(()).ok_or(format!("{got:?}"))
            }
        },
    )
    .await;
    eventually(
        "the registry's hubs counted",
        Duration::from_secs(30),
        || {
            let text = agent.metrics.encode();
            async move {
                text.contains("kubehub_agent_hubs_known 2")
                    .then_some(())
                    .ok_or(text)
            }
        },
    )
    .await;
    assert_eq!(
        other.accepted.load(Ordering::SeqCst),
        0,
        "one hub per agent: the other is not dialled"
    );
    assert_eq!(agent.metrics.hub_switches.get(), 0);

    // The chosen hub dies (connections closed, heartbeats stopped: its lease expires). The
    // agent moves to the other one and says so in the registry.
    chosen.kill();
    eventually("a tunnel to the other hub", Duration::from_secs(40), || {
        let open = other.open.load(Ordering::SeqCst);
        async move { (open == 1).then_some(()).ok_or(format!("{open} open")) }
    })
    .await;
    eventually(
        "registered with the other hub",
        Duration::from_secs(30),
        || {
            let admin = admin.clone();
            let want = vec![other.id.clone()];
            async move {
                let got = registered_hubs(&admin, CLUSTER).await?;
                (got == want).then_some(()).ok_or(format!("{got:?}"))
            }
        },
    )
    .await;
    assert!(agent.metrics.hub_switches.get() >= 1);
    assert!(agent
        .metrics
        .encode()
        .contains("kubehub_agent_hub_switches_total"));

    eventually(
        "the dead hub's lease expired",
        Duration::from_secs(30),
        || {
            let text = agent.metrics.encode();
            async move {
                text.contains("kubehub_agent_hubs_known 1")
                    .then_some(())
                    .ok_or(text)
            }
        },
    )
    .await;

    // The first hub returns at the same address: the healthy tunnel stays where it is.
    let back = FakeHub::start(meta.ca(), &chosen.id, chosen.addr)
        .await
        .expect("the first hub binds its old address again");
    back.heartbeat(admin.clone());
    eventually("the hub registered again", Duration::from_secs(20), || {
        let text = agent.metrics.encode();
        async move {
            text.contains("kubehub_agent_hubs_known 2")
                .then_some(())
                .ok_or(text)
        }
    })
    .await;
    // Several registry reads later, nothing moved.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(back.accepted.load(Ordering::SeqCst), 0, "no flapping back");
    assert_eq!(other.open.load(Ordering::SeqCst), 1);

    agent.stop().await;
    back.kill();
    other.kill();
    server.stop().await;
}
