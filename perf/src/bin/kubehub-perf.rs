//! `kubehub-perf`: open-loop load against one URL, latencies in an HDR histogram.
//!
//! Requests are scheduled at a constant rate regardless of how fast answers come (open loop),
//! and each latency is measured from the request's *scheduled* time, so a stall shows up in
//! the percentiles instead of silently lowering the rate (no coordinated omission).
//!
//! ```text
//! kubehub-perf get --url https://127.0.0.1:8443/clusters/demo/api/v1/namespaces/default/configmaps/x \
//!     --token T --ca ca.crt --rate 500 --duration 20 --connections 8
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

#[derive(Debug, Parser)]
#[command(name = "kubehub-perf", version, about = "KubeHub's load generator")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Open-loop GETs of one URL.
    Get(GetArgs),
}

#[derive(Debug, clap::Args)]
struct GetArgs {
    /// The URL (http or https).
    #[arg(long)]
    url: String,
    /// Bearer token.
    #[arg(long)]
    token: Option<String>,
    /// CA certificate (PEM) for https.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Requests per second.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Seconds of load (after warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of warm-up, not recorded.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// A label for the output line.
    #[arg(long, default_value = "get")]
    label: String,
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

fn client(ca: Option<&std::path::Path>, conns: usize) -> Result<HttpClient, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        let pem = std::fs::read_to_string(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(c.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    let conn = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(conns)
        .build(conn))
}

async fn run_get(a: GetArgs) -> Result<(), String> {
    let client = client(a.ca.as_deref(), a.connections)?;
    let uri: http::Uri = a.url.parse().map_err(|e| format!("--url: {e}"))?;
    let token = a.token.clone();
    let period = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let total = Duration::from_secs(a.warmup + a.duration);
    let start = Instant::now();
    let record_from = start + Duration::from_secs(a.warmup);
    // A bounded number of requests in flight: beyond it, the schedule is behind and the
    // waiting shows in the latency of the requests that wait.
    let slots = Arc::new(tokio::sync::Semaphore::new(a.connections));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Duration, bool)>(10_000);
    let mut n = 0u64;
    loop {
        let scheduled = start + period.mul_f64(n as f64);
        if scheduled >= start + total {
            break;
        }
        tokio::time::sleep_until(scheduled.into()).await;
        n += 1;
        let permit = slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let (client, uri, token, tx) = (client.clone(), uri.clone(), token.clone(), tx.clone());
        tokio::spawn(async move {
            let mut req = http::Request::get(uri);
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let ok = match req.body(Empty::new()) {
                Ok(req) => match client.request(req).await {
                    Ok(resp) => {
                        let good = resp.status().is_success();
                        good && resp.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            let _ = tx.send((scheduled, scheduled.elapsed(), ok)).await;
            drop(permit);
        });
    }
    drop(tx);
    let mut hist =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| e.to_string())?;
    let (mut errors, mut recorded) = (0u64, 0u64);
    while let Some((scheduled, latency, ok)) = rx.recv().await {
        if scheduled < record_from {
            continue;
        }
        recorded += 1;
        if !ok {
            errors += 1;
        }
        let _ = hist.record(latency.as_micros().max(1) as u64);
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}: {} requests at {:.0}/s over {}s ({} errors): p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
        a.label,
        recorded,
        a.rate,
        a.duration,
        errors,
        us(0.5),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1000.0
    );
    if errors > 0 {
        return Err(format!("{errors} requests failed"));
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
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
    let res = match cli.command {
        Cmd::Get(a) => rt.block_on(run_get(a)),
    };
    if let Err(e) = res {
        eprintln!("kubehub-perf: {e}");
        std::process::exit(1);
    }
}
