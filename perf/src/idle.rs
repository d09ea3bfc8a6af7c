//! `idle-agents`: the hub's memory per idle tunnel.

use std::sync::Arc;
use std::time::Duration;

use crate::sys::{free_port, rss_kib};

use kubehub_pki::Ca;
use kubehub_testkit::agent::{client_tls, ScriptedAgent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Options of `kubehub-perf idle-agents`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// The `kubehub` binary.
    #[arg(long, default_value = "target/release/kubehub")]
    hub_bin: std::path::PathBuf,
    /// Working directory (certificates, hub.toml).
    #[arg(long, default_value = "target/idle-agents")]
    dir: std::path::PathBuf,
    /// Agents to connect.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Hub worker threads.
    #[arg(long, default_value_t = 2)]
    cores: usize,
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> Result<(), String> {
    std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
}

/// The smallest agent: HELLO, then only answers pings.
async fn agent(
    addr: std::net::SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    cluster: String,
) -> Result<(), String> {
    let mut a = ScriptedAgent::connect(addr, tls).await?;
    a.hello(&cluster, &cluster).await?;
    Err(a.idle().await)
}

async fn connected(admin: std::net::SocketAddr) -> Option<usize> {
    let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.ok()?;
    out.lines()
        .find(|l| l.starts_with("kubehub_hub_agents_connected "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

pub async fn run(a: IdleArgs) -> Result<(), String> {
    let dir = &a.dir;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let ca = Ca::generate("idle agents CA").map_err(|e| e.to_string())?;
    let hub = ca
        .issue_server(&["localhost", "127.0.0.1"])
        .map_err(|e| e.to_string())?;
    write(dir, "ca.crt", &ca.cert_pem())?;
    write(dir, "hub.crt", &hub.cert)?;
    write(dir, "hub.key", &hub.key)?;
    kubehub_hub::access::write_dev_file(&dir.join("access.json"), "perf", &["idle".into()])
        .map_err(|e| e.to_string())?;
    let (user, agents, admin) = (free_port()?, free_port()?, free_port()?);
    write(dir, "hub.toml", &format!(
        "cores = {}\n[access]\nfile = \"access.json\"\n[user_listener]\nlisten = \"127.0.0.1:{user}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\n[agent_listener]\nlisten = \"127.0.0.1:{agents}\"\ncert = \"hub.crt\"\nkey = \"hub.key\"\nclient_ca = \"ca.crt\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[limits]\nmax_connections = 1000000\n",
        a.cores
    ))?;
    let mut child = std::process::Command::new(&a.hub_bin)
        .args(["--log", "warn", "hub", "--config"])
        .arg(dir.join("hub.toml"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", a.hub_bin.display()))?;
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    let agent_addr: std::net::SocketAddr = format!("127.0.0.1:{agents}")
        .parse()
        .map_err(|e| format!("{e}"))?;
    for _ in 0..100 {
        if connected(admin_addr).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut configs = Vec::with_capacity(a.count + 1);
    for i in 0..=a.count {
        let c = ca
            .issue_agent(&format!("idle-{i}"))
            .map_err(|e| e.to_string())?;
        configs.push(client_tls(&ca.cert_pem(), &c)?);
    }
    // Warm the hub up with one tunnel so its per-core structures exist, then measure.
    let mut tasks = Vec::new();
    let first = configs.remove(0);
    tasks.push(tokio::spawn(agent(agent_addr, first, "idle-0".into())));
    while connected(admin_addr).await != Some(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(child.id())?;
    for (i, cfg) in configs.into_iter().enumerate() {
        tasks.push(tokio::spawn(agent(
            agent_addr,
            cfg,
            format!("idle-{}", i + 1),
        )));
        // Connect in small batches: a burst of simultaneous handshakes would measure the
        // allocator's high-water mark rather than what idle tunnels hold.
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let want = a.count + 1;
    let mut n = 0;
    for _ in 0..600 {
        n = connected(admin_addr).await.unwrap_or(0);
        if n >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(child.id())?;
    // SIGTERM, so a hub run under a profiler can write its report.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    for t in tasks {
        t.abort();
    }
    if n < want {
        return Err(format!("only {n} of {want} agents connected"));
    }
    let per = (after.saturating_sub(before)) as f64 / a.count as f64;
    println!(
        "idle tunnels: {} agents, hub RSS {} KiB -> {} KiB: {:.1} KiB per idle tunnel ({} cores)",
        a.count, before, after, per, a.cores
    );
    Ok(())
}
