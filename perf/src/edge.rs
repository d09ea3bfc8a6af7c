//! The edge side of cache measurements: a simulator whose request log can be read
//! (`sim`), realistic ConfigMaps created on it (`configmaps`), and waiting until the hub's
//! cache holds them (`wait-synced`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use kubehub_sim::{Cluster, ClusterConfig, RequestLog, Router, SeedSpec, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Options of `kubehub-perf sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Address of the API server (plain HTTP, as the agent's upstream in `kubehub demo`).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Address of the control listener: `GET /requests` answers the requests served since the
    /// last such call, one `METHOD URI` per line, and forgets them.
    #[arg(long, default_value = "127.0.0.1:6444")]
    control: SocketAddr,
    /// Seed of the RNG (as `kubehub sim --seed`).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signalled() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

/// `kubehub-perf sim`: `kubehub sim`'s default cluster (same seed, same content), no churn,
/// with a request log.
pub async fn sim(a: SimArgs) -> Result<(), String> {
    crate::init_logging("warn");
    let cluster = Cluster::new(
        "sim",
        ClusterConfig {
            seed: a.seed,
            ..ClusterConfig::default()
        },
    );
    kubehub_sim::seed(&cluster, &SeedSpec::default()).map_err(|e| e.to_string())?;
    let log = Arc::new(RequestLog::default());
    let server = kubehub_sim::serve(
        a.listen,
        Router::Single(cluster),
        ServeOptions {
            log: Some(log.clone()),
            ..ServeOptions::default()
        },
    )
    .await
    .map_err(|e| format!("listening on {}: {e}", a.listen))?;
    let control = tokio::net::TcpListener::bind(a.control)
        .await
        .map_err(|e| format!("listening on {}: {e}", a.control))?;
    println!(
        "simulated cluster serving at http://{}; request log at http://{}/requests",
        server.local_addr(),
        control.local_addr().map_err(|e| e.to_string())?
    );
    let serve_log = async {
        loop {
            let Ok((mut sock, _)) = control.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                // The request head is not read beyond its first bytes: every request here
                // gets the log.
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let lines = log.lines();
                log.clear();
                let mut body = lines.join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    };
    tokio::select! {
        _ = serve_log => {}
        _ = signalled() => {}
    }
    server.shutdown().await;
    Ok(())
}

/// Options of `kubehub-perf configmaps`.
#[derive(Debug, clap::Args)]
pub struct ConfigmapsArgs {
    /// Base URL of the API server (e.g. http://127.0.0.1:6443).
    #[arg(long)]
    pub url: String,
    /// Namespace to create and fill.
    #[arg(long)]
    pub namespace: String,
    /// ConfigMaps to create.
    #[arg(long)]
    pub count: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Bearer token.
    #[arg(long)]
    pub token: Option<String>,
    /// CA certificate (PEM) for https.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

type BodyClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A deterministic xorshift64 generator.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a>(&mut self, v: &[&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

/// ConfigMap `i` of a namespace, as an application's Helm chart would make it: the usual
/// labels and annotations, an `application.yaml` of 20 to 45 lines and a few plain keys;
/// 1.0 to 1.8 KB of JSON once the API server has added uid, resourceVersion and timestamps.
pub fn configmap_json(namespace: &str, i: usize) -> String {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0000_01b3));
    for _ in 0..4 {
        r.next();
    }
    let apps = [
        "checkout",
        "cart",
        "catalog",
        "payments",
        "search",
        "orders",
        "users",
        "inventory",
        "shipping",
        "gateway",
    ];
    let app = format!("{}-{i:05}", r.pick(&apps));
    let sections = [
        "server",
        "database",
        "cache",
        "messaging",
        "tracing",
        "auth",
        "http-client",
    ];
    let keys = [
        "host",
        "port",
        "timeout",
        "max-connections",
        "retries",
        "pool-size",
        "ttl",
        "endpoint",
        "enabled",
        "buffer-size",
        "keepalive",
        "idle-timeout",
    ];
    let hosts = [
        "postgres.data.svc.cluster.local",
        "redis-master.cache.svc.cluster.local",
        "kafka-0.kafka-headless.messaging.svc",
        "otel-collector.observability.svc:4317",
        "keycloak.auth.svc.cluster.local",
    ];
    let mut yaml = String::new();
    let lines = 20 + r.below(26) as usize;
    let mut n = 0;
    while n < lines {
        yaml.push_str(r.pick(&sections));
        yaml.push_str(":\\n");
        n += 1;
        // Distinct keys within a section.
        let first = r.below(keys.len() as u64) as usize;
        for j in 0..(2 + r.below(5) as usize) {
            let key = keys[(first + j) % keys.len()];
            let value = match key {
                "host" | "endpoint" => r.pick(&hosts).to_owned(),
                "enabled" | "keepalive" => ["true", "false"][r.below(2) as usize].to_owned(),
                "timeout" | "ttl" | "idle-timeout" => format!("{}s", 1 + r.below(300)),
                _ => (1 + r.below(65_535)).to_string(),
            };
            yaml.push_str(&format!("  {key}: {value}\\n"));
            n += 1;
        }
    }
    let level = r.pick(&["debug", "info", "warn"]);
    let flags: Vec<&str> = (0..1 + r.below(4))
        .map(|_| {
            r.pick(&[
                "new-checkout",
                "dark-mode",
                "fast-search",
                "beta-api",
                "v2-pricing",
            ])
        })
        .collect();
    format!(
        concat!(
            r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"{app}-config","namespace":"{ns}","#,
            r#""labels":{{"app.kubernetes.io/name":"{app}","app.kubernetes.io/instance":"{app}","app.kubernetes.io/part-of":"shop","#,
            r#""app.kubernetes.io/managed-by":"Helm","helm.sh/chart":"{app}-1.{minor}.{patch}"}},"#,
            r#""annotations":{{"meta.helm.sh/release-name":"{app}","meta.helm.sh/release-namespace":"{ns}"}}}},"#,
            r#""data":{{"application.yaml":"{yaml}","LOG_LEVEL":"{level}","FEATURE_FLAGS":"{flags}","REPLICA_HINT":"{replicas}"}}}}"#
        ),
        app = app,
        ns = namespace,
        minor = r.below(20),
        patch = r.below(10),
        yaml = yaml,
        level = level,
        flags = flags.join(","),
        replicas = 1 + r.below(8),
    )
}

fn body_client(ca: Option<&std::path::Path>, conns: usize) -> Result<BodyClient, String> {
    let roots = match ca {
        Some(ca) => kubehub_pki::load_roots(ca).map_err(|e| e.to_string())?,
        None => rustls::RootCertStore::empty(),
    };
    crate::https_client(roots, conns)
}

async fn post(
    client: &BodyClient,
    url: &str,
    token: Option<&str>,
    body: String,
) -> Result<(u16, Bytes), String> {
    let mut req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let a = crate::call::whole(client.request(req).await, &format!("POST {url}")).await?;
    Ok((a.status, a.body))
}

/// `kubehub-perf configmaps`.
pub async fn configmaps(a: ConfigmapsArgs) -> Result<(), String> {
    let client = body_client(a.ca.as_deref(), a.concurrency)?;
    let base = a.url.trim_end_matches('/').to_owned();
    let ns = format!(
        r#"{{"apiVersion":"v1","kind":"Namespace","metadata":{{"name":"{}"}}}}"#,
        a.namespace
    );
    let (st, b) = post(
        &client,
        &format!("{base}/api/v1/namespaces"),
        a.token.as_deref(),
        ns,
    )
    .await?;
    if st != 201 && st != 409 {
        return Err(format!(
            "creating namespace {}: {st} {}",
            a.namespace,
            String::from_utf8_lossy(&b)
        ));
    }
    let t = Instant::now();
    let url = Arc::new(format!(
        "{base}/api/v1/namespaces/{}/configmaps",
        a.namespace
    ));
    let slots = Arc::new(tokio::sync::Semaphore::new(a.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    for i in 0..a.count {
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (client, url, token) = (client.clone(), url.clone(), a.token.clone());
        let body = configmap_json(&a.namespace, i);
        sent += body.len() as u64;
        tasks.spawn(async move {
            let r = post(&client, &url, token.as_deref(), body).await;
            drop(permit);
            match r {
                Ok((201, _)) => Ok(()),
                Ok((st, b)) => Err(format!(
                    "creating configmap {i}: {st} {}",
                    String::from_utf8_lossy(&b)
                )),
                Err(e) => Err(e),
            }
        });
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| e.to_string())??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    println!(
        "created {} configmaps in namespace {} ({} B of JSON posted, {} B on average) in {:.1?}",
        a.count,
        a.namespace,
        sent,
        sent / a.count.max(1) as u64,
        t.elapsed()
    );
    Ok(())
}

/// Options of `kubehub-perf wait-synced`.
#[derive(Debug, clap::Args)]
pub struct WaitSyncedArgs {
    /// The hub's admin listener, e.g. http://127.0.0.1:9100.
    #[arg(long)]
    admin: String,
    /// The cluster.
    #[arg(long)]
    cluster: String,
    /// The type, as `/clusters` names it (e.g. v1/configmaps).
    #[arg(long = "type")]
    type_name: String,
    /// A list URL on the edge API server: the cache must hold as many objects as it lists.
    #[arg(long)]
    like: Option<String>,
    /// Seconds to wait at most.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

type PlainClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// GET a URL (plain HTTP or a CA-less https) and parse the answer as JSON.
pub async fn get_json(client: &PlainClient, url: &str) -> Result<serde_json::Value, String> {
    let body = get_bytes(client, url).await?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: {e}"))
}

/// GET a URL: the body of a 2xx answer, or what went wrong.
pub async fn get_bytes(client: &PlainClient, url: &str) -> Result<Bytes, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    crate::call::whole(client.get(uri).await, &format!("GET {url}"))
        .await?
        .ok(&format!("GET {url}"))
}

/// The per-type cache figures of one cluster in the hub's `/clusters`: (type, synced,
/// objects, bytes).
pub fn cache_types(clusters: &serde_json::Value, cluster: &str) -> Vec<(String, bool, u64, u64)> {
    clusters["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["cluster"] == cluster)
        .flat_map(|c| c["cache"]["types"].as_array().cloned().unwrap_or_default())
        .map(|t| {
            (
                t["type"].as_str().unwrap_or("").to_owned(),
                t["synced"].as_bool().unwrap_or(false),
                t["objects"].as_u64().unwrap_or(0),
                t["bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `kubehub-perf wait-synced`.
pub async fn wait_synced(a: WaitSyncedArgs) -> Result<(), String> {
    let client = crate::client(None, 2)?;
    let want = match &a.like {
        Some(url) => Some(
            get_json(&client, url).await?["items"]
                .as_array()
                .map(|v| v.len() as u64)
                .ok_or_else(|| format!("{url}: no items"))?,
        ),
        None => None,
    };
    let admin = format!("{}/clusters", a.admin.trim_end_matches('/'));
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    let mut last = None;
    loop {
        if let Ok(v) = get_json(&client, &admin).await {
            last = cache_types(&v, &a.cluster)
                .into_iter()
                .find(|t| t.0 == a.type_name);
            if let Some((_, true, objects, bytes)) = &last {
                if want.is_none_or(|w| w == *objects) {
                    println!(
                        "{} {}: synced, {objects} objects, {bytes} B of JSON ({} B per object)",
                        a.cluster,
                        a.type_name,
                        bytes / (*objects).max(1)
                    );
                    return Ok(());
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} {} not synced with {want:?} objects after {} s (last seen: {last:?})",
                a.cluster, a.type_name, a.timeout
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configmaps_are_json_of_realistic_size() {
        let mut sizes = Vec::new();
        for i in 0..200 {
            let s = configmap_json("ns", i);
            let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
            assert_eq!(v["kind"], "ConfigMap");
            assert!(v["data"]["application.yaml"]
                .as_str()
                .unwrap()
                .contains(":\n"));
            sizes.push(s.len());
        }
        assert_eq!(configmap_json("ns", 7), configmap_json("ns", 7));
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        // The API server adds ~200 bytes (uid, resourceVersion, creationTimestamp).
        assert!(*lo >= 850 && *hi <= 1850, "{lo}..{hi}");
    }
}
