//! The operations console's actions against the parts built beside it (issue #14), end to
//! end: a ban made in the console takes effect on two hubs within a second and lifting it in
//! the console lifts it (contract 1: `/v1/bans`, the hubs' enforcement); draining a hub and
//! moving a cluster from the console (contract 5: `/v1/registry/hubs/{id}/drain`,
//! `/v1/registry/pins/{cluster}`); the Traffic page showing what the hubs served (contract 3:
//! each hub's `admin` in its registration, its `/traffic`).
#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kubehub_agent::{Agent, AgentConfig};
use kubehub_hub::config::HubConfig;
use kubehub_hub::server::Hub;
use kubehub_meta::client::Client;
use kubehub_meta::config::MetaConfig;
use kubehub_meta::service::Meta;
use kubehub_sim::{self as sim, Cluster, ClusterConfig, Router, SeedSpec, ServeOptions};
use kubehub_testkit::browser::Browser;
use serde_json::{json, Value};

const CLUSTER: &str = "edge-1";
const CONFIGMAPS: &str = "/clusters/edge-1/api/v1/namespaces/default/configmaps";
const SOON: Duration = Duration::from_secs(15);

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(&p, text).unwrap();
    p
}

/// Meta (embedded store) with its console, the simulator as edge-1, two hubs enrolled with
/// meta, edge-1's agent connected to both.
struct System {
    dir: tempfile::TempDir,
    meta: Meta,
    _meta_server: kubehub_meta::server::Server,
    meta_url: String,
    admin_token: String,
    admin: Client,
    sim_addr: std::net::SocketAddr,
    _sim: sim::Server,
    _cluster: Arc<Cluster>,
}

impl System {
    async fn start() -> System {
        let dir = tempfile::tempdir().unwrap();
        let meta_toml = write(
            dir.path(),
            "meta.toml",
            "listen = \"127.0.0.1:0\"\nadmin_token_file = \"admin.token\"\n\
             [console]\nrefresh_ms = 100\n[store]\nbackend = \"embedded\"\npath = \"meta.redb\"\n",
        );
        let meta = Meta::start(MetaConfig::load(&meta_toml).unwrap())
            .await
            .unwrap();
        let server = kubehub_meta::server::start(meta.clone()).await.unwrap();
        let meta_url = format!("https://{}", server.addr);
        let admin_token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        let admin = Client::new(&meta_url, meta.ca_pem(), Some(admin_token.clone()), None).unwrap();
        let cluster = Cluster::new(CLUSTER, ClusterConfig::default());
        sim::seed(&cluster, &SeedSpec::default()).unwrap();
        let sim_server = sim::serve(
            "127.0.0.1:0".parse().unwrap(),
            Router::Single(cluster.clone()),
            ServeOptions::default(),
        )
        .await
        .unwrap();
        admin
            .post("/v1/tenants", &json!({"name": "t"}))
            .await
            .unwrap();
        admin
            .post("/v1/users", &json!({"name": "alice", "tenant": "t"}))
            .await
            .unwrap();
        admin
            .post("/v1/clusters", &json!({"id": CLUSTER, "tenant": "t"}))
            .await
            .unwrap();
        admin
            .post(
                "/v1/grants",
                &json!({"name": "configmaps", "tenant": "t", "subject": {"kind": "User", "name": "alice"},
                        "clusters": {"ids": [CLUSTER]},
                        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]}),
            )
            .await
            .unwrap();
        System {
            sim_addr: sim_server.local_addr(),
            _sim: sim_server,
            dir,
            meta,
            _meta_server: server,
            meta_url,
            admin_token,
            admin,
            _cluster: cluster,
        }
    }

    async fn hub(&self, id: &str) -> Hub {
        let join = self
            .admin
            .post(
                "/v1/hubs/join-token",
                &json!({"id": id, "names": ["localhost", "127.0.0.1"]}),
            )
            .await
            .unwrap();
        let toml = format!(
            "cores = 1\nimpersonate = false\n[meta]\nurl = \"{}\"\nstate_dir = \"state\"\n\
             register_interval_ms = 500\n[user_listener]\nlisten = \"127.0.0.1:0\"\n\
             [agent_listener]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            self.meta_url
        );
        let cfg = HubConfig::load(&write(&self.dir.path().join(id), "hub.toml", &toml)).unwrap();
        let token = join["joinToken"].as_str().unwrap().to_owned();
        let hub = tokio::task::spawn_blocking(move || {
            kubehub_hub::server::join_and_start(cfg, Some(&token)).unwrap()
        })
        .await
        .unwrap();
        wait(SOON, "the hub has access data", || {
            hub.access.index.revision() > 0
        })
        .await;
        hub
    }

    async fn agent(&self) -> Agent {
        let join = self
            .admin
            .post(&format!("/v1/clusters/{CLUSTER}/join-token"), &json!({}))
            .await
            .unwrap();
        let toml = format!(
            "[meta]\nurl = \"{}\"\nstate_dir = \"agent\"\nhubs_per_agent = 0\nhub_refresh_ms = 200\n\
             [upstream]\nurl = \"http://{}\"\n",
            self.meta_url, self.sim_addr
        );
        let cfg = AgentConfig::read(&write(self.dir.path(), "agent.toml", &toml)).unwrap();
        Agent::join_and_start(cfg, Some(join["joinToken"].as_str().unwrap()))
            .await
            .unwrap()
    }

    async fn alice_token(&self) -> String {
        let v = self
            .admin
            .post(
                "/v1/kubeconfig",
                &json!({"user": "alice", "clusters": [CLUSTER]}),
            )
            .await
            .unwrap();
        kubehub_testkit::kubeconfig_token(v["kubeconfig"].as_str().unwrap())
    }

    /// The system with two hubs and the agent, and alice's token, served on both hubs.
    async fn served() -> (System, [Hub; 2], Agent, String) {
        let s = System::start().await;
        let hubs = [s.hub("hub-a").await, s.hub("hub-b").await];
        let agent = s.agent().await;
        let token = s.alice_token().await;
        for h in &hubs {
            wait(SOON, "alice is served on every hub", || {
                get(h, &token, CONFIGMAPS).0 == 200
            })
            .await;
        }
        (s, hubs, agent, token)
    }

    /// Signs in to the console.
    async fn console(&self, name: &str) -> Browser {
        let b = Browser::start(name).await;
        b.client
            .goto(&format!("{}/console/login", self.meta_url))
            .await
            .unwrap();
        b.fill("#token", &self.admin_token).await;
        b.click("form#login button").await;
        b.wait_for("#live", SOON).await;
        b
    }
}

async fn wait(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// GET `path` on `hub` with `token`: the status and the body.
fn get(hub: &Hub, token: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args([
            "-sk",
            "-m",
            "5",
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-w",
            "\n%{http_code}",
            &format!("https://127.0.0.1:{}{path}", hub.user_addr.port()),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_made_in_the_console_takes_effect_on_every_hub() {
    let (s, hubs, _agent, token) = System::served().await;

    // Ban alice in the console.
    let b = s.console("console-bans").await;
    b.client
        .goto(&format!("{}/console/bans", s.meta_url))
        .await
        .unwrap();
    b.wait_for("form#ban", SOON).await;
    b.click("#ban-kind option[value=user]").await;
    b.fill("#ban-value", "alice").await;
    b.fill("#ban-reason", "abusive client").await;
    b.fill("#ban-for", "1h").await;
    b.click("form#ban button").await;
    let said = b.wait_text("#flash", SOON, |t| t.contains("Banned")).await;
    let banned = Instant::now();
    // Every hub refuses alice within a second, saying why.
    for h in &hubs {
        wait(
            Duration::from_secs(1),
            "the ban is enforced on every hub",
            || {
                let (code, body) = get(h, &token, CONFIGMAPS);
                code == 403 && body.contains("banned: abusive client")
            },
        )
        .await;
    }
    eprintln!("{said}: enforced on both hubs in {:?}", banned.elapsed());
    // The console lists it, live; meta too.
    let row = b
        .wait_text("#bans", SOON, |t| t.contains("abusive client"))
        .await;
    assert!(row.contains("alice"), "{row}");
    let listed = s.admin.get("/v1/bans").await.unwrap();
    let id = listed["items"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(listed["items"][0]["target"], json!({"user": "alice"}));
    assert!(listed["items"][0].get("expiresAt").is_some(), "{listed}");
    b.screenshot("bans-in-force").await;

    // Lifting it in the console lifts it on every hub.
    b.click(&format!("#ban-{id} button")).await;
    b.wait_text("#flash", SOON, |t| t.contains("lifted")).await;
    for h in &hubs {
        wait(
            Duration::from_secs(1),
            "the lifted ban is lifted on every hub",
            || get(h, &token, CONFIGMAPS).0 == 200,
        )
        .await;
    }
    assert_eq!(s.admin.get("/v1/bans").await.unwrap()["items"], json!([]));
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_are_drained_and_clusters_moved_from_the_console() {
    let s = System::start().await;
    let _hubs = [s.hub("hub-a").await, s.hub("hub-b").await];
    let _agent = s.agent().await;
    let b = s.console("console-drain").await;
    b.wait_for("#hub-hub-b", SOON).await;
    b.click("#hub-hub-b button").await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("#flash", SOON, |t| t.contains("draining"))
        .await;
    let draining = |hubs: &Value| {
        hubs["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h["id"] == "hub-b" && h["draining"] == true)
    };
    let deadline = Instant::now() + SOON;
    while !draining(&s.admin.get("/v1/registry/hubs").await.unwrap()) {
        assert!(Instant::now() < deadline, "hub-b is not draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.wait_text("#hub-hub-b", SOON, |t| t.contains("draining"))
        .await;
    b.screenshot("hub-draining").await;
    b.click("#hub-hub-b button").await;
    b.wait_text("#flash", SOON, |t| t.contains("no longer draining"))
        .await;

    // Move edge-1 to hub-a: its agent ends up connected to hub-a.
    b.client
        .goto(&format!("{}/console/clusters", s.meta_url))
        .await
        .unwrap();
    b.fill("form#move input[name=cluster]", CLUSTER).await;
    b.fill("form#move input[name=hub]", "hub-a").await;
    b.click("form#move button[type=submit]").await;
    b.wait_text("#flash", SOON, |t| t.contains("moved to hub hub-a"))
        .await;
    b.wait_text("#cluster-edge-1", SOON, |t| t.contains("hub-a"))
        .await;
    // Its sync state, as the hub holding its tunnel sees its cache: every cached type synced
    // ("hub-a: 3/3 synced, confirmed … ms ago").
    fn all_synced(line: &str) -> bool {
        line.split_once("hub-a: ")
            .and_then(|(_, r)| r.split_once(" synced"))
            .and_then(|(n, _)| n.split_once('/'))
            .is_some_and(|(done, all)| done == all && all.parse::<usize>().is_ok_and(|n| n > 0))
    }
    b.wait_text("#cluster-edge-1", SOON, |t| t.lines().any(all_synced))
        .await;
    b.screenshot("cluster-moved").await;
    let _ = &s.meta;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_traffic_page_shows_what_every_hub_served() {
    let (s, hubs, _agent, token) = System::served().await;
    for h in &hubs {
        for _ in 0..20 {
            assert_eq!(get(h, &token, CONFIGMAPS).0, 200);
        }
    }
    let b = s.console("console-traffic").await;
    b.client
        .goto(&format!("{}/console/traffic", s.meta_url))
        .await
        .unwrap();
    let asked = b
        .wait_text("#traffic-hubs", SOON, |t| {
            t.matches("answered").count() == 2
        })
        .await;
    assert!(
        asked.contains("hub-a") && asked.contains("hub-b"),
        "{asked}"
    );
    b.wait_for("#traffic-tenants tr[data-tenant=t]", SOON).await;
    b.wait_text("#traffic-clients", SOON, |t| t.contains("127.0.0.1"))
        .await;
    b.screenshot("traffic-served").await;
    b.close().await;
}
