//! The monoio TLS adapter: mutual TLS handshakes expose the peer certificate, both halves work
//! at once, large transfers pass intact, bytes sent right after the handshake are not lost, and
//! a client without a certificate is refused.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use kubehub_hub::tls::{handshake, TlsError};
use kubehub_pki::{self as pki, Ca, CertPem};
use monoio::net::{TcpListener, TcpStream};
use rustls::pki_types::ServerName;

fn rt() -> monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
> {
    monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(ca: &Ca, server: &CertPem) -> Arc<rustls::ServerConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(pki::parse_certs(&ca.cert_pem()).unwrap());
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                pki::parse_certs(&server.cert).unwrap(),
                pki::parse_key(&server.key).unwrap(),
            )
            .unwrap(),
    )
}

fn client_config(ca: &Ca, client: Option<&CertPem>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(pki::parse_certs(&ca.cert_pem()).unwrap());
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match client {
        Some(c) => b
            .with_client_auth_cert(
                pki::parse_certs(&c.cert).unwrap(),
                pki::parse_key(&c.key).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// Whether the DER certificate carries `name` (the subject CN is stored as plain UTF-8).
fn der_contains(cert: &[u8], name: &str) -> bool {
    cert.windows(name.len()).any(|w| w == name.as_bytes())
}

#[test]
fn mutual_tls_full_duplex_and_large_transfers() {
    let ca = Ca::generate("test CA").unwrap();
    let server_cert = ca.issue_server(&["localhost", "127.0.0.1"]).unwrap();
    let client_cert = ca.issue_client("agent-edge-7", &["agents"]).unwrap();
    let scfg = server_config(&ca, &server_cert);
    let ccfg = client_config(&ca, Some(&client_cert));
    rt().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = monoio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let conn = rustls::ServerConnection::new(scfg).unwrap();
            let tls = handshake(tcp, conn.into(), Duration::from_secs(5))
                .await
                .unwrap();
            let peer = tls.peer_certificates().unwrap()[0].to_vec();
            let (mut rd, mut wr) = tls.into_split();
            // Echo in one task while reading in this one: full duplex over one rustls state.
            let (tx, mut rx) = tokio::sync::mpsc::channel::<BytesMut>(16);
            let echo = monoio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    wr.write_all(&[&chunk]).await.unwrap();
                }
                wr.close().await.unwrap();
            });
            let mut total = 0;
            loop {
                let mut buf = BytesMut::new();
                let n = rd.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                total += n;
                tx.send(buf).await.unwrap();
            }
            drop(tx);
            echo.await;
            (peer, total)
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let conn = rustls::ClientConnection::new(ccfg, ServerName::try_from("localhost").unwrap())
            .unwrap();
        let tls = handshake(tcp, conn.into(), Duration::from_secs(5))
            .await
            .unwrap();
        let (mut rd, mut wr) = tls.into_split();
        // 1 MiB of patterned data, sent right after the handshake, echoed back.
        let data: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = monoio::spawn(async move {
            for piece in sent.chunks(50_000) {
                wr.write_all(&[&piece[..10], &piece[10..]]).await.unwrap();
            }
            wr.close().await.unwrap();
        });
        let mut back = BytesMut::new();
        while rd.read(&mut back).await.unwrap() > 0 {}
        writer.await;
        assert_eq!(back.len(), data.len());
        assert!(back[..] == data[..], "echoed bytes differ");
        let (peer, total) = server.await;
        assert_eq!(total, data.len());
        assert!(
            der_contains(&peer, "agent-edge-7"),
            "the server sees the client certificate"
        );
    });
}

#[test]
fn client_without_certificate_is_refused() {
    let ca = Ca::generate("test CA").unwrap();
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let scfg = server_config(&ca, &server_cert);
    let ccfg = client_config(&ca, None);
    rt().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = monoio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let conn = rustls::ServerConnection::new(scfg).unwrap();
            handshake(tcp, conn.into(), Duration::from_secs(5))
                .await
                .map(|_| ())
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let conn = rustls::ClientConnection::new(ccfg, ServerName::try_from("localhost").unwrap())
            .unwrap();
        // TLS 1.3: the client finishes its side; the server refuses.
        let client = handshake(tcp, conn.into(), Duration::from_secs(5)).await;
        let res = server.await;
        assert!(matches!(res, Err(TlsError::Tls(_))), "{res:?}");
        if let Ok(tls) = client {
            let (mut rd, _wr) = tls.into_split();
            let mut buf = BytesMut::new();
            assert!(rd.read(&mut buf).await.is_err() || buf.is_empty());
        }
    });
}

#[test]
fn silent_peer_times_out() {
    let ca = Ca::generate("test CA").unwrap();
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let scfg = server_config(&ca, &server_cert);
    rt().block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _idle = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let conn = rustls::ServerConnection::new(scfg).unwrap();
        let res = handshake(tcp, conn.into(), Duration::from_millis(200)).await;
        assert!(matches!(res, Err(TlsError::Timeout)), "{res:?}");
    });
}
