//! Enrollment and renewal against a fake metaserver (hyper over tokio-rustls, signing with
//! `kubehub_pki::Ca`) and, for renewal, a fake hub that records the client certificate of
//! every tunnel dial.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kubehub_agent::config::{AgentConfig, Meta, Upstream};
use kubehub_agent::enroll::{self, EnrollError};
use kubehub_agent::Agent;
use kubehub_pki::join::JoinToken;
use kubehub_pki::{Ca, Profile};

const CLUSTER: &str = "edge-7";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The metaserver's API as the agent sees it, with counters.
struct FakeMeta {
    addr: SocketAddr,
    /// The one valid join token.
    token: String,
    /// Calls to `/v1/enroll` (accepted or not).
    enroll_calls: AtomicUsize,
    /// Certificates issued by `/v1/renew` (DER).
    renewed: Mutex<Vec<Vec<u8>>>,
    /// Renewal requests to refuse with 503 before accepting.
    fail_renewals: AtomicUsize,
}

struct MetaState {
    ca: Ca,
    lifetime: Duration,
    hubs: Vec<String>,
    used: Mutex<bool>,
}

fn json(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

impl FakeMeta {
    /// Serves on loopback with a serving certificate from `ca`; issues certificates valid for
    /// `lifetime`, answering `hubs`.
    async fn start(ca: Ca, lifetime: Duration, hubs: Vec<String>) -> Arc<FakeMeta> {
        let token = JoinToken::generate(&ca.cert_hash()).unwrap().encode();
        let serving = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
        let roots = Arc::new(kubehub_pki::parse_roots(&ca.cert_pem()).unwrap());
        // Client certificates are optional (enroll has none), checked when present (renew).
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                .allow_unauthenticated()
                .build()
                .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                kubehub_pki::parse_certs(&serving.cert).unwrap(),
                kubehub_pki::parse_key(&serving.key).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let meta = Arc::new(FakeMeta {
            addr: listener.local_addr().unwrap(),
            token,
            enroll_calls: AtomicUsize::new(0),
            renewed: Mutex::new(Vec::new()),
            fail_renewals: AtomicUsize::new(0),
        });
        let state = Arc::new(MetaState {
            ca,
            lifetime,
            hubs,
            used: Mutex::new(false),
        });
        let m = meta.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, m, state) = (acceptor.clone(), m.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| kubehub_pki::cert_der_to_pem(c));
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (m, state, peer) = (m.clone(), state.clone(), peer.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await.unwrap().to_bytes();
                                let body: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                Ok::<_, std::convert::Infallible>(m.answer(
                                    &state,
                                    parts.method.as_str(),
                                    parts.uri.path(),
                                    &body,
                                    peer.as_deref(),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        meta
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn answer(
        &self,
        state: &MetaState,
        method: &str,
        path: &str,
        body: &serde_json::Value,
        peer: Option<&str>,
    ) -> Response<Full<Bytes>> {
        let ca = state.ca.cert_pem();
        let csr = body["csr"].as_str().unwrap_or_default();
        let issue = |cluster: &str| {
            state
                .ca
                .sign_csr(
                    csr,
                    &Profile::Agent {
                        cluster: cluster.into(),
                    },
                    state.lifetime,
                )
                .map_err(|e| e.to_string())
        };
        let refused = |e: String| json(400, serde_json::json!({ "error": e }));
        let issued = |cert: &str, identity: &str| {
            json(
                200,
                serde_json::json!({
                    "certificate": cert, "ca": ca, "identity": identity, "hubs": state.hubs
                }),
            )
        };
        match (method, path) {
            ("GET", "/v1/ca") => json(200, serde_json::json!({ "ca": ca })),
            ("POST", "/v1/enroll") => {
                self.enroll_calls.fetch_add(1, Ordering::SeqCst);
                if body["token"].as_str() != Some(self.token.as_str()) {
                    return json(
                        403,
                        serde_json::json!({"error": "join token: wrong secret"}),
                    );
                }
                let mut used = state.used.lock().unwrap();
                if *used {
                    return json(403, serde_json::json!({"error": "join token already used"}));
                }
                match issue(CLUSTER) {
                    Ok(cert) => {
                        *used = true;
                        issued(&cert, CLUSTER)
                    }
                    Err(e) => refused(e),
                }
            }
            ("POST", "/v1/renew") => {
                let Some(peer) = peer else {
                    return json(
                        401,
                        serde_json::json!({"error": "renewal needs a client certificate"}),
                    );
                };
                if self
                    .fail_renewals
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    return json(503, serde_json::json!({"error": "try again later"}));
                }
                let cn = kubehub_pki::cert_info(peer).unwrap().common_name;
                match issue(&cn) {
                    Ok(cert) => {
                        let der = kubehub_pki::parse_certs(&cert).unwrap().remove(0);
                        self.renewed.lock().unwrap().push(der.to_vec());
                        issued(&cert, &cn)
                    }
                    Err(e) => refused(e),
                }
            }
            _ => json(404, serde_json::json!({"error": "not found"})),
        }
    }
}

/// A hub that completes the TLS handshake (requiring a client certificate of `ca`), records
/// the certificate, and hangs up: the agent dials again and again.
async fn recording_hub(ca: &Ca) -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let serving = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let cfg = kubehub_pki::tunnel_server_config(
        kubehub_pki::parse_roots(&ca.cert_pem()).unwrap(),
        Arc::new(kubehub_pki::ReloadingCert::from_pem(&serving.cert, &serving.key).unwrap()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            if let Ok(tls) = acceptor.accept(tcp).await {
                if let Some(leaf) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                    s.lock().unwrap().push(leaf.to_vec());
                }
            }
        }
    });
    (addr, seen)
}

fn enrolling_config(meta_url: &str, state_dir: &Path) -> AgentConfig {
    let mut meta = Meta::new(meta_url, state_dir);
    meta.renew = false;
    meta.request_timeout_ms = 10_000;
    AgentConfig::enrolling(
        meta,
        Upstream {
            url: "http://127.0.0.1:1".into(),
            ca: None,
            token: None,
            token_file: None,
            client_cert: None,
            client_key: None,
        },
    )
}

fn der_of(pem: &str) -> Vec<u8> {
    kubehub_pki::parse_certs(pem).unwrap().remove(0).to_vec()
}

#[tokio::test]
async fn join_writes_the_state_and_later_starts_reuse_it() {
    let ca = Ca::generate("meta CA").unwrap();
    let ca_pem = ca.cert_pem();
    let hubs = vec!["127.0.0.1:1".to_owned()];
    let meta = FakeMeta::start(ca, Duration::from_secs(3600), hubs.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    // Not enrolled, no token: a clear refusal.
    let mut cfg = enrolling_config(&meta.url(), &state);
    let e = enroll::prepare(&mut cfg, None).await.unwrap_err();
    assert!(matches!(e, EnrollError::NotEnrolled(_)), "{e}");
    assert!(e.to_string().contains("--join"), "{e}");

    // Join.
    let mut cfg = enrolling_config(&meta.url(), &state);
    enroll::prepare(&mut cfg, Some(&meta.token)).await.unwrap();
    assert_eq!(cfg.cluster_id, CLUSTER);
    assert_eq!(cfg.hubs, hubs);
    assert_eq!(meta.enroll_calls.load(Ordering::SeqCst), 1);

    let cert = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let key = std::fs::read_to_string(state.join("agent.key")).unwrap();
    let info = kubehub_pki::cert_info(&cert).unwrap();
    assert_eq!(
        info.common_name, CLUSTER,
        "the metaserver decides the identity"
    );
    assert_eq!(
        info.organizations,
        vec![kubehub_pki::AGENTS_GROUP.to_owned()]
    );
    kubehub_pki::verify_client_cert(&ca_pem, &cert).unwrap();
    kubehub_pki::ReloadingClientCert::from_pem(&cert, &key).unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("ca.crt")).unwrap(),
        ca_pem
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(state.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("agent.key"), 0o600, "the key is private");
        assert_eq!(
            std::fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
    let enrollment: enroll::Enrollment =
        serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).unwrap()).unwrap();
    assert_eq!(enrollment.identity, CLUSTER);
    assert_eq!(enrollment.hubs, hubs);

    // A later start reuses the saved certificate: no token, no call to /v1/enroll; a token
    // given anyway is not spent.
    for token in [None, Some(meta.token.as_str())] {
        let mut again = enrolling_config(&meta.url(), &state);
        enroll::prepare(&mut again, token).await.unwrap();
        assert_eq!(again.cluster_id, CLUSTER);
        assert_eq!(again.hubs, hubs);
    }
    assert_eq!(meta.enroll_calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        std::fs::read_to_string(state.join("agent.crt")).unwrap(),
        cert
    );

    // agent.toml naming another cluster than the enrolled one is refused.
    let mut other = enrolling_config(&meta.url(), &state);
    other.cluster_id = "edge-8".into();
    let e = enroll::prepare(&mut other, None).await.unwrap_err();
    assert!(
        e.to_string().contains("edge-8") && e.to_string().contains(CLUSTER),
        "{e}"
    );

    // The agent starts from the state directory and reports when its certificate expires.
    let agent = Agent::join_and_start(enrolling_config(&meta.url(), &state), None)
        .await
        .unwrap();
    assert_eq!(
        agent.metrics.cert.expiry.get(),
        info.not_after
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    );
    assert!(agent
        .metrics
        .encode()
        .contains("kubehub_agent_cert_expiry_seconds"));
    agent.stop().await;
}

#[tokio::test]
async fn a_token_pinning_another_ca_is_refused_and_nothing_is_written() {
    let ca = Ca::generate("meta CA").unwrap();
    let served = ca.cert_hash();
    let meta = FakeMeta::start(ca, Duration::from_secs(3600), vec!["127.0.0.1:1".into()]).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");

    let other = Ca::generate("someone else's CA").unwrap();
    let mut token = JoinToken::parse(&meta.token).unwrap();
    token.ca_hash = JoinToken::generate(&other.cert_hash()).unwrap().ca_hash;
    let mut cfg = enrolling_config(&meta.url(), &state);
    let e = enroll::prepare(&mut cfg, Some(&token.encode()))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, EnrollError::CaPinMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&served) && msg.contains(&other.cert_hash()),
        "names both hashes: {msg}"
    );
    assert!(!state.exists(), "nothing written");
    assert_eq!(
        meta.enroll_calls.load(Ordering::SeqCst),
        0,
        "the secret never left the agent"
    );

    // A malformed token fails before any call.
    let e = enroll::prepare(&mut cfg, Some("hello")).await.unwrap_err();
    assert!(e.to_string().contains("not a KubeHub join token"), "{e}");

    // The right CA but a wrong secret: the metaserver's refusal, and nothing written.
    let mut wrong = JoinToken::parse(&meta.token).unwrap();
    wrong.secret = "0000000000000000".into();
    let e = enroll::prepare(&mut cfg, Some(&wrong.encode()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, EnrollError::Refused { status: 403, message, .. } if message.contains("wrong secret")),
        "{e}"
    );
    assert!(!state.exists(), "nothing written");
}

#[tokio::test]
async fn renewal_swaps_the_certificate_of_a_running_agent() {
    let ca = Ca::generate("meta CA").unwrap();
    let (hub, seen) = recording_hub(&ca).await;
    let meta = FakeMeta::start(ca, Duration::from_secs(6), vec![hub.to_string()]).await;
    // The first renewal attempt is refused: the agent retries.
    meta.fail_renewals.store(1, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut cfg = enrolling_config(&meta.url(), &state);
    let m = cfg.meta.as_mut().unwrap();
    m.renew = true;
    m.retry_initial_ms = 100;
    m.retry_max_ms = 500;
    cfg.reconnect.initial_ms = 50;
    cfg.reconnect.max_ms = 200;
    let agent = Agent::join_and_start(cfg, Some(&meta.token)).await.unwrap();
    let enrolled = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let enrolled_key = std::fs::read_to_string(state.join("agent.key")).unwrap();

    // Tunnel dials present the enrolled certificate, until a renewed one replaces it
    // (6 s certificates are renewed 4.2 to 5.4 s into their life).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let renewed: HashSet<Vec<u8>> = meta.renewed.lock().unwrap().iter().cloned().collect();
        let dials = seen.lock().unwrap().clone();
        if dials.iter().any(|d| renewed.contains(d)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dial presented a renewed certificate ({} dials, {} renewals)",
            dials.len(),
            renewed.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dials = seen.lock().unwrap().clone();
    assert_eq!(
        dials[0],
        der_of(&enrolled),
        "the first dials used the enrolled certificate"
    );

    // The files hold a renewed certificate (same identity, new key), and it is the one the
    // agent dials with now.
    let cert = std::fs::read_to_string(state.join("agent.crt")).unwrap();
    let key = std::fs::read_to_string(state.join("agent.key")).unwrap();
    assert_ne!(cert, enrolled);
    assert_ne!(key, enrolled_key, "a renewal makes a new key");
    assert_eq!(kubehub_pki::cert_info(&cert).unwrap().common_name, CLUSTER);
    kubehub_pki::ReloadingClientCert::from_pem(&cert, &key).unwrap();
    assert!(meta
        .renewed
        .lock()
        .unwrap()
        .contains(&agent.client_cert.current().cert[0].to_vec()));
    assert!(agent.metrics.cert.renewals.get() >= 1);
    assert!(
        agent.metrics.cert.failures.get() >= 1,
        "the refused attempt was counted and retried"
    );
    let text = agent.metrics.encode();
    assert!(text.contains("kubehub_agent_cert_renewals_total"), "{text}");
    assert!(
        text.contains("kubehub_agent_cert_renewal_failures_total"),
        "{text}"
    );
    assert_eq!(
        meta.enroll_calls.load(Ordering::SeqCst),
        1,
        "renewal never joins again"
    );
    agent.stop().await;
}
