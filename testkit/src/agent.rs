//! A scripted agent: mutual TLS to a hub's agent listener, then frames written and read by
//! hand. Tests use it to send what a real agent never would (garbage, oversize frames, a
//! HELLO for another cluster); `kubehub-perf idle-agents` uses it as the smallest possible
//! agent, one that only answers pings.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use kubehub_pki::CertPem;
use kubehub_wire::{
    Capabilities, Decoder, EncodeBuf, Frame, GoAway, Hello, HelloAck, Ping, Settings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// TLS 1.3 towards a hub, trusting `ca_pem`, presenting `cert`.
pub fn client_tls(ca_pem: &str, cert: &CertPem) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(kubehub_pki::parse_certs(ca_pem).map_err(|e| e.to_string())?);
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(
        kubehub_pki::parse_certs(&cert.cert).map_err(|e| e.to_string())?,
        kubehub_pki::parse_key(&cert.key).map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    Ok(Arc::new(cfg))
}

/// A HELLO for `cluster` with default settings and no capabilities.
pub fn hello(cluster: &str, agent_id: &str) -> Frame {
    Frame::Hello(Hello {
        min_version: 1,
        max_version: 1,
        capabilities: Capabilities(0),
        settings: Settings::default(),
        agent_id: agent_id.into(),
        cluster_id: cluster.into(),
        software: "kubehub-testkit scripted agent".into(),
        labels: Vec::new(),
    })
}

/// The wire bytes of `frames`, in order.
pub fn encode(frames: &[Frame]) -> Vec<u8> {
    let mut eb = EncodeBuf::new();
    for f in frames {
        eb.push(f);
    }
    let mut v = Vec::with_capacity(eb.remaining());
    while eb.has_remaining() {
        let c = eb.chunk();
        let n = c.len();
        v.extend_from_slice(c);
        eb.advance(n);
    }
    v
}

/// One hand-driven agent connection.
#[derive(Debug)]
pub struct ScriptedAgent {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
    dec: Decoder,
}

impl ScriptedAgent {
    /// TCP (no Nagle) and the TLS handshake to `addr`, as `localhost`.
    pub async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> Result<Self, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        Ok(ScriptedAgent {
            tls,
            buf: BytesMut::with_capacity(1024),
            dec: Decoder::default(),
        })
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.tls.write_all(bytes).await.map_err(|e| e.to_string())?;
        self.tls.flush().await.map_err(|e| e.to_string())
    }

    /// Writes frames.
    pub async fn send_frames(&mut self, frames: &[Frame]) -> Result<(), String> {
        self.send(&encode(frames)).await
    }

    /// The next frame from the hub; `None` if the connection closed (or failed, or nothing
    /// came `within`) first.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        loop {
            if let Ok(Some(f)) = self.dec.decode(&mut self.buf) {
                return Some(f);
            }
            match tokio::time::timeout(within, self.tls.read_buf(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return None,
            }
        }
    }

    /// Says HELLO for `cluster` and returns the hub's HELLO_ACK (or its GOAWAY as an error).
    pub async fn hello(&mut self, cluster: &str, agent_id: &str) -> Result<HelloAck, String> {
        self.send_frames(&[hello(cluster, agent_id)]).await?;
        match self.next_frame(Duration::from_secs(10)).await {
            Some(Frame::HelloAck(a)) => {
                // What this side announced it receives (HELLO's default settings).
                self.dec
                    .set_max_frame_size(Settings::default().max_frame_size);
                Ok(a)
            }
            Some(Frame::GoAway(g)) => Err(goaway_text(&g)),
            Some(f) => Err(format!("expected HELLO_ACK, got {}", f.frame_type().name())),
            None => Err("the hub closed the connection".into()),
        }
    }

    /// Answers pings and ignores everything else until the hub goes away; returns why.
    pub async fn idle(&mut self) -> String {
        loop {
            match self.next_frame(Duration::from_secs(24 * 3600)).await {
                Some(Frame::Ping(p)) if !p.ack => {
                    let ack = Frame::Ping(Ping {
                        ack: true,
                        opaque: p.opaque,
                    });
                    if let Err(e) = self.send_frames(&[ack]).await {
                        return e;
                    }
                }
                Some(Frame::GoAway(g)) => return goaway_text(&g),
                Some(_) => {}
                None => return "the hub closed the connection".into(),
            }
        }
    }
}

fn goaway_text(g: &GoAway) -> String {
    format!("GOAWAY {}: {}", g.code, g.message)
}
