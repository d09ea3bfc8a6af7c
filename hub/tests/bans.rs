//! Bans on the hub, with the real kubectl (and the Python client and kube-rs) through the hub
//! and the agent to the simulator. The bans arrive as meta's feed carries them (a put of
//! `bans/<id>`, applied to the running hub's access data); what users see: a banned party's
//! next request is refused with 403 and the reason, its open watches and exec sessions end,
//! parties not named go on, lifting or expiry lets it back in, and a revoked token's watch
//! ends too. Across hubs (meta's feed to two hubs): `cli/tests/system.rs`.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::process::Child;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kubehub_access::ban::{rfc3339_ms, Ban, BanTarget, ClientMatch};
use kubehub_access::{Line, Record};
use kubehub_testkit::kubectl::Transport;
use kubehub_testkit::stack::{self as common, pod, Stack, CLUSTER, TOKEN, TOKEN_ID, USER};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A ban record as meta makes it.
fn ban(id: &str, target: BanTarget, reason: &str, ttl: Option<Duration>) -> Ban {
    let now = now_ms();
    Ban {
        id: id.into(),
        target,
        reason: reason.into(),
        created_at: rfc3339_ms(now),
        expires_at: ttl.map(|t| rfc3339_ms(now + t.as_millis() as u64)),
        created_by: "admin".into(),
    }
}

struct Feed {
    revision: i64,
}

impl Feed {
    /// Puts `b` on every hub (as meta's feed does).
    fn put(&mut self, hubs: &[&kubehub_hub::server::Hub], b: &Ban) {
        self.revision += 1;
        for h in hubs {
            h.access.apply(&Line::Put {
                revision: self.revision,
                record: Record::Ban(b.clone()),
            });
        }
    }

    fn delete(&mut self, hubs: &[&kubehub_hub::server::Hub], key: String) {
        self.revision += 1;
        for h in hubs {
            h.access.apply(&Line::Delete {
                revision: self.revision,
                key: key.clone(),
            });
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Waits for `child` to exit within `within` of `since` (else panics); how long after
/// `since` it had, and how it exited.
fn ends_within(
    child: &mut Child,
    since: Instant,
    within: Duration,
    what: &str,
) -> (Duration, std::process::ExitStatus) {
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return (since.elapsed(), st);
        }
        if since.elapsed() > within {
            let _ = child.kill();
            panic!("{what}: still running {within:?} after the ban");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `cmd` with its output in files under `dir` (named `name`), so that nothing it
/// writes later can block it or break its pipe.
fn spawn_logged(mut cmd: std::process::Command, dir: &std::path::Path, name: &str) -> Child {
    let out = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
    let err = std::fs::File::create(dir.join(format!("{name}.err"))).unwrap();
    cmd.stdout(out).stderr(err).spawn().unwrap()
}

fn output_of(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(format!("{name}.out"))).unwrap_or_default()
}

/// Waits until the hub counts `n` running requests a ban would end (the requests are open
/// at the hub, not only started by kubectl).
fn wait_running(s: &Stack, n: usize) {
    let want = format!("kubehub_hub_streams_running {n}\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = s.curl_admin("/metrics");
        if m.contains(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "not {n} running requests: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn refused(s: &Stack, args: &[&str], want: &str) {
    let out = s.kubectl(args);
    assert!(!out.status.success(), "{args:?} should be refused");
    let err = text(&out.stderr);
    assert!(
        err.contains("Error from server (Forbidden)") && err.contains(want),
        "{args:?}: {err}"
    );
}

/// A user ban: the next kubectl is refused naming the reason; the open `get -w` (served by
/// the cache) and an exec session end at once; lifting the ban lets the user back in.
#[test]
fn a_ban_refuses_new_requests_and_ends_open_watches_and_sessions() {
    let s = common::start(Default::default(), Default::default());
    let p = pod(&s);
    let k = s.k();
    s.ok(&["get", "pods", "-A"]);
    let d = s.path();
    let mut watch = spawn_logged(k.cmd(&["get", "pods", "-A", "-w"]), d, "watch");
    let mut sessions: Vec<Child> = Transport::BOTH
        .iter()
        .map(|t| {
            k.open_session(
                *t,
                &p.exec_args(&[], &["sh", "-c", "echo started; sleep 600"]),
            )
        })
        .collect();
    let mut log = spawn_logged(
        k.cmd(&["logs", "-f", "-n", &p.ns, &p.name, "-c", &p.container]),
        d,
        "log",
    );
    // The watch, the sessions (WebSocket and SPDY) and the log stream are open at the hub.
    wait_running(&s, 4);
    assert!(output_of(d, "watch").contains(&p.name));

    let mut feed = Feed { revision: 1 };
    let b = ban(
        "ban000alice1",
        BanTarget::User(USER.into()),
        "abusing the API",
        None,
    );
    feed.put(&[&s.hub], &b);
    let at = Instant::now();
    let (took, status) = ends_within(&mut watch, at, Duration::from_secs(10), "kubectl get -w");
    eprintln!("the banned user's watch ended {took:?} after the ban ({status})");
    assert!(
        status.success(),
        "the watch ends as when the server ends it"
    );
    for (t, session) in Transport::BOTH.iter().zip(&mut sessions) {
        let (took, status) = ends_within(session, at, Duration::from_secs(10), "kubectl exec");
        eprintln!("the banned user's exec session ({t:?}) ended {took:?} after the ban ({status})");
        // Over SPDY kubectl takes a dropped connection for the end of the session (as with
        // kube-apiserver); over WebSocket it reports the error.
        if *t == Transport::WebSocket {
            assert!(!status.success(), "the session is cut, not a success");
        }
    }
    let (took, status) = ends_within(&mut log, at, Duration::from_secs(10), "kubectl logs -f");
    eprintln!("the banned user's logs -f ended {took:?} after the ban ({status})");
    wait_running(&s, 0);
    refused(
        &s,
        &["get", "pods"],
        "banned: abusing the API (ban ban000alice1)",
    );
    let r = s.hub_get("/api/v1/namespaces/default/pods", &[]);
    assert_eq!(r.status, 403);
    let v = r.json();
    assert_eq!(v["kind"], "Status");
    assert_eq!(v["reason"], "Forbidden");
    assert_eq!(v["code"], 403);
    assert_eq!(v["message"], "banned: abusing the API (ban ban000alice1)");
    let held = s.curl_admin("/bans");
    let body = held.split("\r\n\r\n").nth(1).unwrap();
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["bans"][0]["id"], "ban000alice1", "{v}");
    assert_eq!(v["bans"][0]["inForce"], true, "{v}");
    assert_eq!(v["streamsRunning"], 0, "{v}");
    let m = s.curl_admin("/metrics");
    for want in [
        "kubehub_hub_streams_ended_total{reason=\"banned\"}",
        "kubehub_hub_denied_total{reason=\"banned\"}",
        // Counted as a ban, not as an authorization refusal.
        ",reason=\"ban\"}",
        "kubehub_hub_sessions_total{kind=\"exec\",end=\"banned\"} 2",
    ] {
        assert!(m.contains(want), "{want} in {m}");
    }

    feed.delete(&[&s.hub], "bans/ban000alice1".into());
    s.ok(&["get", "pods", "-A"]);
}

/// Each kind of target refuses whom it names and no one else; an expiring ban lifts by
/// itself; a revoked token's open watch ends.
#[test]
fn tokens_clients_sources_and_clusters_are_banned_and_bans_expire() {
    let (bob_token, access) = common::access_with_user("bob", common::everything());
    let s = common::start_opts(common::StackOptions {
        access: Some(access),
        ..Default::default()
    });
    s.kubeconfig_for("bob", &bob_token, Some(CLUSTER));
    let bob = s.kubectl_as("bob");
    let hubs = [&s.hub];
    let mut feed = Feed { revision: 1 };
    s.ok(&["get", "pods", "-A"]);

    // A user: the other user of the same tenant goes on, with an open watch.
    let mut bobs_watch = spawn_logged(bob.cmd(&["get", "pods", "-A", "-w"]), s.path(), "bob");
    wait_running(&s, 1);
    feed.put(
        &hubs,
        &ban("ban000alice2", BanTarget::User(USER.into()), "noisy", None),
    );
    refused(&s, &["get", "pods"], "banned: noisy");
    bob.ok(&["get", "pods"]);
    assert!(
        bobs_watch.try_wait().unwrap().is_none(),
        "bob's watch goes on"
    );
    wait_running(&s, 1);
    let _ = bobs_watch.kill();
    let _ = bobs_watch.wait();
    feed.delete(&hubs, "bans/ban000alice2".into());
    wait_running(&s, 0);

    // The token.
    let b = ban(
        "ban000token1",
        BanTarget::Token(TOKEN_ID.into()),
        "stolen laptop",
        None,
    );
    feed.put(&hubs, &b);
    refused(
        &s,
        &["get", "pods"],
        "banned: stolen laptop (ban ban000token1)",
    );
    feed.delete(&hubs, "bans/ban000token1".into());
    s.ok(&["get", "pods"]);

    // kubectl by its user agent: the Python client and kube-rs go on.
    let b = ban(
        "ban000kubect",
        BanTarget::Client(ClientMatch {
            user_agent: Some("kubectl/*".into()),
            source: None,
        }),
        "old kubectl",
        None,
    );
    feed.put(&hubs, &b);
    refused(&s, &["get", "pods"], "banned: old kubectl");
    kubehub_testkit::run_python_client(&s.kubeconfig);
    let pods = s.rt.block_on(async {
        let kc = kube::config::Kubeconfig::read_from(&s.kubeconfig).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        let c = kube::Client::try_from(cfg).unwrap();
        let api: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::all(c);
        api.list(&Default::default()).await.map(|l| l.items.len())
    });
    assert!(pods.unwrap() > 0, "kube-rs is not banned");
    feed.delete(&hubs, "bans/ban000kubect".into());
    s.ok(&["get", "pods"]);

    // By source address: another range bans nobody here, loopback's bans everyone.
    let by_source = |id: &str, cidr: &str| {
        ban(
            id,
            BanTarget::Client(ClientMatch {
                user_agent: None,
                source: Some(cidr.into()),
            }),
            "scanner",
            None,
        )
    };
    feed.put(&hubs, &by_source("ban000src010", "10.0.0.0/8"));
    s.ok(&["get", "pods"]);
    feed.put(&hubs, &by_source("ban000src127", "127.0.0.0/8"));
    refused(&s, &["get", "pods"], "banned: scanner (ban ban000src127)");
    let r = s.request_as(None, "GET", "/clusters/edge-1/api", &[], b"");
    assert_eq!(r.status, 403, "a client ban holds before authentication");
    feed.delete(&hubs, "bans/ban000src127".into());
    feed.delete(&hubs, "bans/ban000src010".into());
    s.ok(&["get", "pods"]);

    // The cluster, whoever asks; the user's other cluster is not banned.
    feed.put(
        &hubs,
        &ban(
            "ban000edge01",
            BanTarget::Cluster(CLUSTER.into()),
            "edge overloaded",
            None,
        ),
    );
    refused(&s, &["get", "pods"], "banned: edge overloaded");
    let r = s.hub_get_cluster("edge-silent", "/api");
    assert_ne!(
        r.status,
        403,
        "edge-silent is not banned: {}",
        text(&r.body)
    );
    feed.delete(&hubs, "bans/ban000edge01".into());

    // The tenant.
    feed.put(
        &hubs,
        &ban(
            "ban000tenant",
            BanTarget::Tenant(common::TENANT.into()),
            "unpaid",
            None,
        ),
    );
    refused(&s, &["get", "pods"], "banned: unpaid");
    feed.delete(&hubs, "bans/ban000tenant".into());

    // Expiry: the hub lifts it by its clock, nothing more arrives.
    let b = ban(
        "ban000expire",
        BanTarget::User(USER.into()),
        "cooling off",
        Some(Duration::from_millis(1500)),
    );
    feed.put(&hubs, &b);
    let made = Instant::now();
    refused(&s, &["get", "pods"], "banned: cooling off");
    let deadline = made + Duration::from_secs(15);
    while !s.kubectl(&["get", "pods"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "a 1.5 s ban still refused after 15 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("a 1.5 s ban lapsed {:?} after it was made", made.elapsed());

    // Revocation: the token's open watch ends as a ban's does.
    let mut watch = spawn_logged(
        s.k().cmd(&["get", "configmaps", "-A", "-w"]),
        s.path(),
        "revoked",
    );
    wait_running(&s, 1);
    feed.delete(&hubs, format!("tokens/{TOKEN_ID}"));
    let at = Instant::now();
    let (took, status) = ends_within(
        &mut watch,
        at,
        Duration::from_secs(10),
        "the revoked token's watch",
    );
    eprintln!("a revoked token's watch ended {took:?} after the revocation ({status})");
    let r = s.request_as(Some(TOKEN), "GET", "/clusters/edge-1/api", &[], b"");
    assert_eq!(r.status, 401);
    let m = s.curl_admin("/metrics");
    assert!(
        m.contains("kubehub_hub_streams_ended_total{reason=\"revoked\"} 1"),
        "{m}"
    );
}

/// A request that reaches the cluster through another hub (the holder of its tunnel): the
/// relaying hub refuses new banned requests, and the holder ends the open watch, whose clean
/// end reaches the user through the relay.
#[test]
fn a_ban_ends_a_watch_relayed_through_another_hub() {
    let s = common::start(Default::default(), Default::default());
    let (peer, kubeconfig) = s.peer_hub("hub-peer", Default::default());
    let k = kubehub_testkit::Kubectl::new(&kubeconfig, &s.path().join("peer-cache"));
    k.ok(&["get", "pods", "-A"]);
    let mut watch = spawn_logged(k.cmd(&["get", "pods", "-A", "-w"]), s.path(), "relayed");
    // Entered at the holder (this stack's hub), not at the hub relaying it.
    wait_running(&s, 1);
    let mut feed = Feed { revision: 1 };
    feed.put(
        &[&s.hub, &peer],
        &ban(
            "ban000peer01",
            BanTarget::User(USER.into()),
            "relay abuse",
            None,
        ),
    );
    let at = Instant::now();
    let (took, status) = ends_within(&mut watch, at, Duration::from_secs(10), "the relayed watch");
    eprintln!("a relayed watch ended {took:?} after the ban ({status})");
    assert!(status.success(), "a clean end through the relay");
    let out = k.output(&["get", "pods"]);
    assert!(
        text(&out.stderr).contains("banned: relay abuse"),
        "{}",
        text(&out.stderr)
    );
}
