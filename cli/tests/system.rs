//! The whole system on loopback, wired the way an operator wires it: a metaserver on a real
//! etcd, hubs that enrolled with it and follow its access feed, an agent that joined with a
//! join token and finds its hubs in the registry, a simulated edge cluster. What users rely
//! on: a grant or a revocation reaches every hub within a second; a certificate is renewed
//! under an open watch; an agent whose hub dies moves to another hub.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubehub_agent::{Agent, AgentConfig};
use kubehub_hub::config::HubConfig;
use kubehub_hub::server::Hub;
use kubehub_meta::client::{Client, ClientError};
use kubehub_meta::config::MetaConfig;
use kubehub_meta::server::Server as MetaServer;
use kubehub_meta::service::Meta;
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions};
use kubehub_testkit::etcd::Etcd;
use serde_json::{json, Value};

const CLUSTER: &str = "edge-1";

struct System {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    _etcd: Etcd,
    meta: Meta,
    meta_server: Option<MetaServer>,
    meta_url: String,
    admin: Client,
    sim_addr: std::net::SocketAddr,
    _sim: sim::Server,
    cluster: Arc<Cluster>,
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

impl System {
    /// etcd, meta (with `meta_extra` in meta.toml), the simulator, and tenant `t` with cluster
    /// `edge-1` and user `alice`.
    fn start(meta_extra: &str) -> System {
        // `RUST_LOG=kubehub_agent=debug cargo test …` shows the logs.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let etcd = Etcd::start();
        let meta_toml = write(
            dir.path(),
            "meta.toml",
            &format!(
                "listen = \"127.0.0.1:0\"\nadmin_token_file = \"admin.token\"\n{meta_extra}\n[store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\n",
                etcd.endpoint
            ),
        );
        let cfg = MetaConfig::load(&meta_toml).unwrap();
        let (meta, server) = rt.block_on(async {
            let meta = Meta::start(cfg).await.unwrap();
            let server = kubehub_meta::server::start(meta.clone()).await.unwrap();
            (meta, server)
        });
        let meta_url = format!("https://{}", server.addr);
        write(dir.path(), "ca.crt", meta.ca_pem());
        let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
        let admin = Client::new(&meta_url, meta.ca_pem(), Some(token.trim().into()), None).unwrap();
        let cluster = Cluster::new(CLUSTER, ClusterConfig::default());
        sim::seed(&cluster, &SeedSpec::default()).unwrap();
        let sim_server = rt
            .block_on(sim::serve(
                "127.0.0.1:0".parse().unwrap(),
                Router::Single(cluster.clone()),
                ServeOptions::default(),
            ))
            .unwrap();
        let s = System {
            sim_addr: sim_server.local_addr(),
            _sim: sim_server,
            rt,
            dir,
            _etcd: etcd,
            meta,
            meta_server: Some(server),
            meta_url,
            admin,
            cluster,
        };
        s.call(|c| async move {
            c.post("/v1/tenants", &json!({"name": "t"})).await?;
            c.post("/v1/users", &json!({"name": "alice", "tenant": "t"})).await?;
            c.post("/v1/clusters", &json!({"id": CLUSTER, "tenant": "t"})).await?;
            c.post(
                "/v1/grants",
                &json!({"name": "configmaps", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
                        "clusters": {"ids": [CLUSTER]},
                        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}),
            )
            .await
        });
        s
    }

    fn call<F, Fut>(&self, f: F) -> Value
    where
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<Value, ClientError>>,
    {
        self.rt.block_on(f(self.admin.clone())).unwrap()
    }

    /// A hub enrolled with meta the way `kubehub hub --join` does it (a hub join token; its key
    /// and meta's certificate in its state directory) and following its feed.
    fn hub(&self, id: &str) -> Hub {
        self.hub_with(id, "")
    }

    /// [`System::hub`] with `meta_extra` in its `[meta]` section.
    fn hub_with(&self, id: &str, meta_extra: &str) -> Hub {
        let d = self.dir.path().join(id);
        let join = self.call(|c| {
            let id = id.to_owned();
            async move {
                c.post(
                    "/v1/hubs/join-token",
                    &json!({"id": id, "names": ["localhost", "127.0.0.1"]}),
                )
                .await
            }
        });
        let toml = format!(
            r#"cores = 1
impersonate = false
[meta]
url = "{meta}"
state_dir = "state"
register_interval_ms = 500
{meta_extra}
[user_listener]
listen = "127.0.0.1:0"
[agent_listener]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
"#,
            meta = self.meta_url,
        );
        let cfg = HubConfig::load(&write(&d, "hub.toml", &toml)).unwrap();
        let hub =
            kubehub_hub::server::join_and_start(cfg, Some(join["joinToken"].as_str().unwrap()))
                .unwrap();
        wait(Duration::from_secs(10), "the hub has access data", || {
            hub.access.index.revision() > 0
        });
        hub
    }

    /// An agent for `edge-1` that joins with a fresh join token and reads its hubs from the
    /// registry (`agent_extra` goes into its `[meta]` section).
    fn agent(&self, agent_extra: &str) -> Agent {
        let join = self.call(|c| async move {
            c.post(&format!("/v1/clusters/{CLUSTER}/join-token"), &json!({}))
                .await
        });
        let toml = format!(
            "[meta]\nurl = \"{}\"\nstate_dir = \"agent\"\n{agent_extra}\n[upstream]\nurl = \"http://{}\"\n",
            self.meta_url, self.sim_addr
        );
        let cfg = AgentConfig::read(&write(self.dir.path(), "agent.toml", &toml)).unwrap();
        self.rt
            .block_on(Agent::join_and_start(
                cfg,
                Some(join["joinToken"].as_str().unwrap()),
            ))
            .unwrap()
    }

    /// alice's token for edge-1, issued by meta.
    fn alice_token(&self) -> String {
        let v = self.call(|c| async move {
            c.post(
                "/v1/kubeconfig",
                &json!({"user": "alice", "clusters": [CLUSTER]}),
            )
            .await
        });
        kubehub_testkit::kubeconfig_token(v["kubeconfig"].as_str().unwrap())
    }

    /// The status code of GET `path` on `hub` with `token`.
    fn status(&self, hub: &Hub, token: &str, path: &str) -> u16 {
        let c = Client::new(
            &format!("https://127.0.0.1:{}", hub.user_addr.port()),
            self.meta.ca_pem(),
            Some(token.to_owned()),
            None,
        )
        .unwrap();
        match self.rt.block_on(c.get(path)) {
            Ok(_) => 200,
            Err(ClientError::Api { code, .. }) => code,
            Err(e) => panic!("{e}"),
        }
    }
}

fn wait(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

const PODS: &str = "/clusters/edge-1/api/v1/namespaces/default/pods";
const CONFIGMAPS: &str = "/clusters/edge-1/api/v1/namespaces/default/configmaps";

/// Two hubs following meta, the agent of edge-1 connected to both, and alice's token known to
/// both (it reads configmaps through either).
fn two_hubs_with_alice(s: &System) -> ([Hub; 2], Agent, String) {
    let hubs = [s.hub("hub-a"), s.hub("hub-b")];
    let agent = s.agent("hubs_per_agent = 0\nhub_refresh_ms = 200");
    for h in &hubs {
        wait(
            Duration::from_secs(15),
            "the agent is connected to every hub",
            || h.registry.connected() == 1,
        );
    }
    let token = s.alice_token();
    for h in &hubs {
        wait(Duration::from_secs(5), "the token is known", || {
            s.status(h, &token, CONFIGMAPS) == 200
        });
    }
    (hubs, agent, token)
}

#[test]
fn grants_and_revocations_reach_every_hub_within_a_second() {
    let s = System::start("");
    let (hubs, _agent, token) = two_hubs_with_alice(&s);
    for h in &hubs {
        assert_eq!(s.status(h, &token, PODS), 403, "no grant on pods yet");
    }
    // A new grant: allowed on both hubs within a second of meta's answer.
    s.call(|c| async move {
        c.post(
            "/v1/grants",
            &json!({"name": "pods", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
                    "clusters": {"ids": [CLUSTER]},
                    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}),
        )
        .await
    });
    let granted = Instant::now();
    for h in &hubs {
        wait(
            Duration::from_secs(1),
            "the new grant works on every hub",
            || s.status(h, &token, PODS) == 200,
        );
    }
    eprintln!("grant reached both hubs in {:?}", granted.elapsed());
    // Revocation: 401 on both hubs within a second.
    s.call(|c| async move { c.delete("/v1/tokens?user=alice").await });
    let revoked = Instant::now();
    for h in &hubs {
        wait(
            Duration::from_secs(1),
            "the revoked token is refused on every hub",
            || s.status(h, &token, CONFIGMAPS) == 401,
        );
    }
    eprintln!("revocation reached both hubs in {:?}", revoked.elapsed());
    // Meta goes away: the hubs keep serving with what they have, and say so.
    let token = s.alice_token();
    for h in &hubs {
        wait(Duration::from_secs(5), "the new token is known", || {
            s.status(h, &token, CONFIGMAPS) == 200
        });
    }
    let mut s = s;
    let server = s.meta_server.take().unwrap();
    s.rt.block_on(server.stop());
    for h in &hubs {
        let admin = h.admin_addr.unwrap();
        wait(Duration::from_secs(20), "readyz says meta is gone", || {
            let out = std::process::Command::new("curl")
                .args(["-s", &format!("http://{admin}/readyz")])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("disconnected")
        });
        assert_eq!(s.status(h, &token, CONFIGMAPS), 200, "still serving");
    }
}

#[test]
fn a_certificate_is_renewed_under_an_open_watch() {
    let s = System::start("[certs]\nagent_lifetime_s = 8\n");
    let hub = s.hub("hub-a");
    let _agent = s.agent("");
    wait(Duration::from_secs(15), "the agent is connected", || {
        hub.registry.connected() == 1
    });
    let cert_file = s.dir.path().join("agent/agent.crt");
    let first = std::fs::read_to_string(&cert_file).unwrap();
    let token = s.alice_token();
    // A watch through the hub, held open across the renewal.
    let mut watch = std::process::Command::new("curl")
        .args([
            "-sN",
            "--cacert",
            s.dir.path().join("ca.crt").to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            &format!(
                "https://127.0.0.1:{}{CONFIGMAPS}?watch=1&resourceVersion=0",
                hub.user_addr.port()
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait(
        Duration::from_secs(20),
        "the agent renewed its certificate",
        || std::fs::read_to_string(&cert_file).is_ok_and(|c| c != first),
    );
    let renewed = std::fs::read_to_string(&cert_file).unwrap();
    let (old, new) = (
        kubehub_pki::cert_info(&first).unwrap(),
        kubehub_pki::cert_info(&renewed).unwrap(),
    );
    assert_eq!(new.common_name, CLUSTER);
    assert!(new.not_after > old.not_after);
    // The watch still carries events after the renewal.
    let ty = s.cluster.type_index("", "v1", "configmaps").unwrap();
    s.cluster
        .create(
            ty,
            Some("default"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after-renewal"}}),
            false,
        )
        .unwrap();
    let out = kubehub_testkit::read_until(&mut watch, Duration::from_secs(10), |s| {
        s.contains("after-renewal")
    });
    assert!(out.contains("after-renewal"), "{out}");
    assert_eq!(hub.registry.connected(), 1, "the tunnel was not dropped");
    let _ = watch.kill();
}

#[test]
fn an_agent_whose_hub_dies_moves_to_another() {
    let s = System::start("[registry]\nttl_s = 2\n");
    let hubs = vec![("hub-a", s.hub("hub-a")), ("hub-b", s.hub("hub-b"))];
    let _agent = s.agent("hubs_per_agent = 1\nhub_refresh_ms = 300\nfailover_after_ms = 1000");
    wait(
        Duration::from_secs(15),
        "the agent is connected to one hub",
        || {
            hubs.iter()
                .map(|(_, h)| h.registry.connected())
                .sum::<usize>()
                == 1
        },
    );
    let (dead, alive): (Vec<_>, Vec<_>) = hubs
        .into_iter()
        .partition(|(_, h)| h.registry.connected() == 1);
    let ((dead_id, dead), (alive_id, alive)) = (
        dead.into_iter().next().unwrap(),
        alive.into_iter().next().unwrap(),
    );
    dead.shutdown(Duration::from_secs(1));
    drop(dead);
    // Its registry entry expires …
    wait(
        Duration::from_secs(10),
        "the dead hub leaves the registry",
        || {
            let v = s.call(|c| async move { c.get("/v1/registry/hubs").await });
            !v["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["id"] == dead_id)
        },
    );
    // … and the agent is on the other hub.
    wait(Duration::from_secs(15), "the agent moved", || {
        alive.registry.connected() == 1
    });
    wait(
        Duration::from_secs(10),
        "the agent's registry entry names its new hub",
        || {
            let v = s.call(|c| async move { c.get("/v1/registry/agents").await });
            v["items"][0]["hubs"].to_string().contains(alive_id)
        },
    );
}

/// Users reach any hub: a hub without the cluster's tunnel finds the hub that holds it in
/// meta's registry (its registry watch) and forwards over a peer link. When the agent moves
/// to another hub (its hub went away), the directories follow and requests work through every
/// remaining hub.
#[test]
fn any_hub_serves_any_cluster_through_the_registry() {
    let s = System::start("[registry]\nttl_s = 2\n");
    let hubs = [s.hub("hub-a"), s.hub("hub-b"), s.hub("hub-c")];
    let _agent = s.agent("hubs_per_agent = 1\nhub_refresh_ms = 300\nfailover_after_ms = 1000");
    wait(Duration::from_secs(15), "the agent on one hub", || {
        hubs.iter().map(|h| h.registry.connected()).sum::<usize>() == 1
    });
    let token = s.alice_token();
    for (i, hub) in hubs.iter().enumerate() {
        wait(
            Duration::from_secs(10),
            &format!("hub {i} serves edge-1"),
            || s.status(hub, &token, CONFIGMAPS) == 200,
        );
    }
    let holder = hubs
        .iter()
        .position(|h| h.registry.connected() == 1)
        .unwrap();
    for (i, hub) in hubs.iter().enumerate() {
        let links = hub.peers.links();
        if i == holder {
            assert!(links.is_empty(), "the holder forwards nothing: {links:?}");
        } else {
            assert_eq!(links.len(), 1, "one link, to the holder: {links:?}");
        }
    }
    // A user's grant is checked by the hub that serves the request, wherever it arrives.
    for hub in &hubs {
        assert_eq!(s.status(hub, &token, PODS), 403);
    }
    // The holder goes away: the agent moves to another hub, the registry says so, and both
    // remaining hubs serve edge-1 again.
    let [a, b, c] = hubs;
    let mut rest: Vec<Hub> = Vec::new();
    for (i, h) in [a, b, c].into_iter().enumerate() {
        if i == holder {
            h.shutdown(Duration::from_secs(1));
            drop(h);
        } else {
            rest.push(h);
        }
    }
    let gone = Instant::now();
    wait(Duration::from_secs(20), "the agent on another hub", || {
        rest.iter().map(|h| h.registry.connected()).sum::<usize>() == 1
    });
    for hub in &rest {
        wait(Duration::from_secs(10), "edge-1 served again", || {
            s.status(hub, &token, CONFIGMAPS) == 200
        });
    }
    eprintln!(
        "edge-1 answered through both remaining hubs {:?} after its hub went away",
        gone.elapsed()
    );
}

/// A canary: a rule in meta sends the chosen clusters' agents to hubs of the new version (and
/// the others away from them), users follow through any hub, and changing the rule moves the
/// agents back, without restarting anything.
#[test]
fn a_canary_rule_moves_the_chosen_agents_and_moves_them_back() {
    let s = System::start("[registry]\nttl_s = 2\n");
    let stable = s.hub("hub-stable");
    let canary = s.hub_with("hub-canary", "version = \"9.9.9-rc1\"");
    let _agent = s.agent("hubs_per_agent = 1\nhub_refresh_ms = 300\nfailover_after_ms = 1000");
    let on = |h: &Hub| h.registry.connected() == 1;
    wait(Duration::from_secs(15), "the agent on a hub", || {
        on(&stable) || on(&canary)
    });
    let token = s.alice_token();
    // Tenant t's clusters go to the canary.
    s.call(|c| async move {
        c.put(
            "/v1/canary",
            &json!({"version": "9.9.9-rc1", "tenants": ["t"]}),
        )
        .await
    });
    wait(
        Duration::from_secs(20),
        "the agent on the canary hub",
        || on(&canary) && !on(&stable),
    );
    // Users reach it through either hub.
    for hub in [&stable, &canary] {
        wait(Duration::from_secs(10), "edge-1 served", || {
            s.status(hub, &token, CONFIGMAPS) == 200
        });
    }
    // Rolled back: the rule now chooses no cluster, so the canary's version is for none.
    s.call(|c| async move {
        c.put("/v1/canary", &json!({"version": "9.9.9-rc1", "percent": 0}))
            .await
    });
    wait(
        Duration::from_secs(20),
        "the agent back on the stable hub",
        || on(&stable) && !on(&canary),
    );
    wait(
        Duration::from_secs(10),
        "edge-1 served through the canary hub",
        || s.status(&canary, &token, CONFIGMAPS) == 200,
    );
    // Hubs report their version in the registry.
    let v = s.call(|c| async move { c.get("/v1/registry/hubs").await });
    let versions: Vec<String> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            format!(
                "{}={}",
                h["id"].as_str().unwrap(),
                h["version"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        versions.contains(&"hub-canary=9.9.9-rc1".to_owned()),
        "{versions:?}"
    );
}

/// An operator moves a cluster to a chosen hub and drains a hub, through `kubehub ctl`,
/// without restarting anything: the agent follows the pin; the drained hub reports not ready,
/// its agent moves away, its users are still served (forwarded), and lifting the drain makes
/// it ready again. Mistakes (a hub that is not live, a cluster that does not exist) are
/// refused with what is wrong.
#[test]
fn an_operator_moves_a_cluster_and_drains_a_hub() {
    let s = System::start("[registry]\nttl_s = 2\n");
    let a = s.hub("hub-a");
    let b = s.hub("hub-b");
    let _agent = s.agent("hubs_per_agent = 1\nhub_refresh_ms = 300\nfailover_after_ms = 1000");
    let on = |h: &Hub| h.registry.connected() == 1;
    wait(Duration::from_secs(15), "the agent on a hub", || {
        on(&a) || on(&b)
    });
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubehub"))
            .arg("ctl")
            .args(args)
            .env("KUBEHUB_META", &s.meta_url)
            .env("KUBEHUB_META_CA", s.dir.path().join("ca.crt"))
            .env("KUBEHUB_META_TOKEN_FILE", s.dir.path().join("admin.token"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (here, there, there_id) = if on(&a) {
        (&a, &b, "hub-b")
    } else {
        (&b, &a, "hub-a")
    };
    let here_id = if there_id == "hub-a" {
        "hub-b"
    } else {
        "hub-a"
    };
    // Move: the agent leaves its hub for the pinned one.
    let (code, out, err) = ctl(&[
        "cluster",
        "move",
        CLUSTER,
        "--to",
        there_id,
        "--reason",
        "rebalance",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains(&format!("pinned to {there_id}")), "{out}");
    wait(
        Duration::from_secs(20),
        "the agent on the pinned hub",
        || on(there) && !on(here),
    );
    let (_, out, _) = ctl(&["cluster", "pins"]);
    assert!(out.contains(CLUSTER) && out.contains("rebalance"), "{out}");
    let token = s.alice_token();
    for h in [here, there] {
        wait(
            Duration::from_secs(10),
            "edge-1 served through both hubs",
            || s.status(h, &token, CONFIGMAPS) == 200,
        );
    }
    // Mistakes are refused, naming what is wrong; nothing changes.
    let (code, _, err) = ctl(&["cluster", "move", CLUSTER, "--to", "hub-nope"]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("hubs[0]") && err.contains("no live hub"),
        "{err}"
    );
    let (code, _, err) = ctl(&["cluster", "move", "no-such-cluster", "--to", there_id]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = ctl(&["hub", "drain", "hub-nope"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no live hub"), "{err}");
    // Lift the pin, then drain the hub the agent is on: the agent moves back, the drained hub
    // says it is not ready, and it still serves its users (through the other hub).
    let (code, _, err) = ctl(&["cluster", "unpin", CLUSTER]);
    assert_eq!(code, Some(0), "{err}");
    let (code, out, err) = ctl(&["hub", "drain", there_id, "--reason", "kernel update"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("drained"), "{out}");
    wait(
        Duration::from_secs(10),
        "the hub hears of its drain",
        || there.drain.is_draining(),
    );
    let readyz = |h: &Hub| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{}/readyz", h.admin_addr.unwrap()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(readyz(there), "503");
    assert_eq!(readyz(here), "200");
    wait(
        Duration::from_secs(20),
        "the agent off the drained hub",
        || on(here) && !on(there),
    );
    wait(
        Duration::from_secs(10),
        "served through the drained hub",
        || s.status(there, &token, CONFIGMAPS) == 200,
    );
    let (_, out, _) = ctl(&["hub", "drains"]);
    assert!(
        out.contains(there_id) && out.contains("kernel update"),
        "{out}"
    );
    let hubs = s.call(|c| async move { c.get("/v1/registry/hubs").await });
    let draining: Vec<(String, bool)> = hubs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["id"].as_str().unwrap().to_owned(),
                h["draining"].as_bool().unwrap(),
            )
        })
        .collect();
    assert!(
        draining.contains(&(there_id.to_owned(), true)),
        "{draining:?}"
    );
    assert!(
        draining.contains(&(here_id.to_owned(), false)),
        "{draining:?}"
    );
    // Lifted: ready again, and agents may choose it (the pin says so).
    let (code, _, err) = ctl(&["hub", "undrain", there_id]);
    assert_eq!(code, Some(0), "{err}");
    wait(Duration::from_secs(10), "the drain lifted", || {
        !there.drain.is_draining() && readyz(there) == "200"
    });
    let (code, _, err) = ctl(&["cluster", "move", CLUSTER, "--to", there_id]);
    assert_eq!(code, Some(0), "{err}");
    wait(
        Duration::from_secs(20),
        "the agent back on the undrained hub",
        || on(there) && !on(here),
    );
}

/// `kubehub ctl` against the system's meta, as the admin.
fn ctl(s: &System, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kubehub"))
        .arg("ctl")
        .args(["--meta", &s.meta_url])
        .arg("--ca")
        .arg(s.dir.path().join("ca.crt"))
        .arg("--token-file")
        .arg(s.dir.path().join("admin.token"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An operator bans a user with `kubehub ctl ban add`: both hubs following meta refuse the
/// user within a second (403 naming the reason) and end the user's open watches cleanly;
/// `ban list` shows it; `ban lift` lets the user back in; a user-agent ban for two seconds
/// refuses kubectl but not curl, and lifts by itself on both hubs.
#[test]
fn bans_reach_every_hub_within_a_second_and_end_open_watches() {
    let s = System::start("");
    let (hubs, _agent, token) = two_hubs_with_alice(&s);
    let ca = s.dir.path().join("ca.crt");
    let kubectl_for = |i: usize, h: &Hub| {
        let kc = kubehub_kapi::kubeconfig::Kubeconfig {
            name: CLUSTER.into(),
            server: format!(
                "https://127.0.0.1:{}/clusters/{CLUSTER}",
                h.user_addr.port()
            ),
            ca_pem: Some(s.meta.ca_pem().to_owned()),
            token: Some(token.clone()),
            ..Default::default()
        };
        let path = write(s.dir.path(), &format!("kubeconfig-{i}"), &kc.to_yaml());
        kubehub_testkit::Kubectl::new(&path, &s.dir.path().join(format!("kubectl-{i}")))
    };
    let kubectls = [kubectl_for(0, &hubs[0]), kubectl_for(1, &hubs[1])];
    for k in &kubectls {
        k.ok(&["get", "configmaps"]);
    }
    let curl_watch = |h: &Hub| {
        std::process::Command::new("curl")
            .args(["-sN", "--max-time", "60", "--cacert", ca.to_str().unwrap()])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!(
                "https://127.0.0.1:{}{CONFIGMAPS}?watch=1&resourceVersion=0",
                h.user_addr.port()
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Open watches: kubectl on hub-a, curl on both.
    let kubectl_watch = kubectls[0]
        .cmd(&["get", "configmaps", "-w"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut watches = vec![kubectl_watch, curl_watch(&hubs[0]), curl_watch(&hubs[1])];
    std::thread::sleep(Duration::from_millis(500));
    for w in &mut watches {
        assert!(w.try_wait().unwrap().is_none(), "the watches are open");
    }

    // Usage errors (exit 2) and meta's refusals (exit 1) say what is wrong.
    let out = ctl(&s, &["ban", "add", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("exactly one of --token"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&s, &["ban", "add", "--user", "nobody", "--reason", "x"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("target.user: user \"nobody\" does not exist"),
        "{}",
        text(&out.stderr)
    );
    let out = ctl(&s, &["ban", "lift", "zzzzzzzzzzzz"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not found"),
        "{}",
        text(&out.stderr)
    );

    // The ban.
    let out = ctl(
        &s,
        &[
            "ban",
            "add",
            "--user",
            "alice",
            "--reason",
            "leaked credentials",
        ],
    );
    let banned = Instant::now();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("user alice (leaked credentials)"), "{said}");
    let id = said.split_whitespace().nth(1).unwrap().to_owned();
    for h in &hubs {
        wait(
            Duration::from_secs(5),
            "the ban is enforced on every hub",
            || s.status(h, &token, CONFIGMAPS) == 403,
        );
    }
    eprintln!("the ban reached both hubs in {:?}", banned.elapsed());
    for (i, w) in watches.iter_mut().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = w.try_wait().unwrap() {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "watch {i} still open 10 s after the ban"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        eprintln!(
            "watch {i} ended {:?} after the ban: {status}",
            banned.elapsed()
        );
        assert!(
            status.success(),
            "watch {i} ended cleanly (as when the server ends it)"
        );
    }
    for k in &kubectls {
        let out = k.output(&["get", "configmaps"]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("banned: leaked credentials (ban {id})")),
            "{err}"
        );
    }
    let out = ctl(&s, &["ban", "list"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{table}"));
    for want in ["user alice", "leaked credentials", "never", "admin"] {
        assert!(row.contains(want), "{want} in {row}");
    }
    let out = ctl(&s, &["-o", "json", "ban", "list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"][0]["target"], json!({"user": "alice"}));

    // Lifted: back in on both hubs.
    let out = ctl(&s, &["ban", "lift", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("ban {id} lifted (user alice)")));
    for h in &hubs {
        wait(
            Duration::from_secs(5),
            "the lifted ban lets alice in",
            || s.status(h, &token, CONFIGMAPS) == 200,
        );
    }
    let out = ctl(&s, &["ban", "list"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "only the header: {}",
        text(&out.stdout)
    );

    // kubectl banned for two seconds: curl still served, and then kubectl again.
    let out = ctl(
        &s,
        &[
            "ban",
            "add",
            "--user-agent",
            "kubectl/*",
            "--reason",
            "old kubectl",
            "--for",
            "2s",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made = Instant::now();
    for k in &kubectls {
        wait(Duration::from_secs(5), "kubectl is refused", || {
            let out = k.output(&["get", "configmaps"]);
            !out.status.success() && text(&out.stderr).contains("banned: old kubectl")
        });
    }
    for h in &hubs {
        assert_eq!(
            s.status(h, &token, CONFIGMAPS),
            200,
            "another client is served"
        );
    }
    for k in &kubectls {
        wait(Duration::from_secs(15), "the ban lapses by itself", || {
            k.output(&["get", "configmaps"]).status.success()
        });
    }
    eprintln!(
        "a 2 s ban lapsed on both hubs {:?} after it was made",
        made.elapsed()
    );
    let out = ctl(&s, &["ban", "list"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "{}",
        text(&out.stdout)
    );
}
