//! The monoio TLS adapter: mutual TLS handshakes expose the peer certificate, both halves work
//! at once, large transfers pass intact, bytes sent right after the handshake are not lost, and
//! a client without a certificate is refused. A batch write is full-size records in one socket
//! write; a read dropped half-way (`monoio::select!`) loses nothing; what the reader makes
//! rustls queue (key update replies, alerts) is sent without waiting for a write; a close is
//! seen at once. `bulk_transfer_throughput` prints a measurement.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use kubehub_hub::tls::{handshake, TlsError, TlsReader, TlsStream, TlsWriter};
use kubehub_pki::{self as pki, Ca, CertPem};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
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

/// A client with a certificate and a server that wants one.
struct Pki {
    scfg: Arc<rustls::ServerConfig>,
    ccfg: Arc<rustls::ClientConfig>,
}

fn pki() -> Pki {
    let ca = Ca::generate("test CA").unwrap();
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let client_cert = ca.issue_client("agent-edge-1", &["agents"]).unwrap();
    Pki {
        scfg: server_config(&ca, &server_cert),
        ccfg: client_config(&ca, Some(&client_cert)),
    }
}

/// A runtime on the epoll driver, whatever the kernel offers.
fn epoll_rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// A runtime on io_uring. The machines KubeHub is built and tested on have it (and the hub
/// uses it in production), so its absence is a test failure.
fn uring_rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    assert!(
        monoio::utils::detect_uring(),
        "io_uring is not available: the hub's io_uring paths cannot be tested here"
    );
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

/// Small deterministic pseudo-random numbers (xorshift64).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Which way bytes go through the relay.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToServer,
    ToClient,
}

/// A TCP relay between the client and the server that notes every TLS record going each way
/// (the raw ciphertext the peer's socket receives) and can tamper with them.
#[derive(Default)]
struct Tap {
    /// (content type, length) of each record the server sent, in order.
    to_client: RefCell<Vec<(u8, usize)>>,
    /// The same for the client's records.
    to_server: RefCell<Vec<(u8, usize)>>,
    /// Flip a byte of the next application-data record to the server.
    corrupt_to_server: Cell<bool>,
    /// Forward to the client in pieces of up to 700 bytes with pauses of up to 1.5 ms, so
    /// that records arrive a part at a time.
    dribble_to_client: Cell<bool>,
}

async fn pump(
    mut from: monoio::io::OwnedReadHalf<TcpStream>,
    mut to: monoio::io::OwnedWriteHalf<TcpStream>,
    tap: Rc<Tap>,
    dir: Dir,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + dir as u64);
    let mut head = Vec::with_capacity(5);
    let mut left = 0usize;
    let mut corrupt = false;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (res, b) = from.read(buf).await;
        buf = b;
        let n = match res {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut i = 0;
        while i < n {
            if left == 0 {
                head.push(buf[i]);
                i += 1;
                if head.len() == 5 {
                    left = usize::from(u16::from_be_bytes([head[3], head[4]]));
                    let list = match dir {
                        Dir::ToServer => &tap.to_server,
                        Dir::ToClient => &tap.to_client,
                    };
                    list.borrow_mut().push((head[0], left));
                    if dir == Dir::ToServer && head[0] == 0x17 && tap.corrupt_to_server.take() {
                        corrupt = true;
                    }
                    head.clear();
                }
            } else {
                if corrupt {
                    buf[i] ^= 0x55;
                    corrupt = false;
                }
                let take = left.min(n - i);
                i += take;
                left -= take;
            }
        }
        let mut at = 0;
        while at < n {
            let k = if dir == Dir::ToClient && tap.dribble_to_client.get() {
                (1 + rng.below(700) as usize).min(n - at)
            } else {
                n - at
            };
            let (r, _) = to.write_all(buf[at..at + k].to_vec()).await;
            if r.is_err() {
                return;
            }
            at += k;
            if at < n {
                monoio::time::sleep(Duration::from_micros(rng.below(1500))).await;
            }
        }
    }
    let _ = to.shutdown().await;
}

/// Connects a client to a server (through a relay that notes the records, if `tap` is given)
/// and does both handshakes: (client, server).
async fn connect(pki: &Pki, tap: Option<Rc<Tap>>) -> (TlsStream, TlsStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let scfg = pki.scfg.clone();
    let server = monoio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let conn = rustls::ServerConnection::new(scfg).unwrap();
        handshake(tcp, conn.into(), Duration::from_secs(5))
            .await
            .unwrap()
    });
    let target = match tap {
        None => addr,
        Some(tap) => {
            let relay = TcpListener::bind("127.0.0.1:0").unwrap();
            let relay_addr = relay.local_addr().unwrap();
            monoio::spawn(async move {
                let (down, _) = relay.accept().await.unwrap();
                let up = TcpStream::connect(addr).await.unwrap();
                down.set_nodelay(true).unwrap();
                up.set_nodelay(true).unwrap();
                let (down_rd, down_wr) = down.into_split();
                let (up_rd, up_wr) = up.into_split();
                monoio::spawn(pump(down_rd, up_wr, tap.clone(), Dir::ToServer));
                pump(up_rd, down_wr, tap, Dir::ToClient).await;
            });
            relay_addr
        }
    };
    let tcp = TcpStream::connect(target).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let conn =
        rustls::ClientConnection::new(pki.ccfg.clone(), ServerName::try_from("localhost").unwrap())
            .unwrap();
    let client = handshake(tcp, conn.into(), Duration::from_secs(5))
        .await
        .unwrap();
    (client, server.await)
}

/// Reads exactly `n` bytes; EOF before that fails the test.
async fn read_exact(rd: &mut TlsReader, n: usize) -> BytesMut {
    let mut buf = BytesMut::new();
    while buf.len() < n {
        let k = rd.read(&mut buf).await.unwrap();
        assert!(k > 0, "EOF after {} of {n} bytes", buf.len());
    }
    assert_eq!(buf.len(), n, "more bytes than were sent");
    buf
}

/// Sends `hi` and reads it: after this, every record the server sent before (its session
/// tickets) has passed the relay.
async fn settle(swr: &mut TlsWriter, crd: &mut TlsReader) {
    swr.write_all(&[b"hi"]).await.unwrap();
    assert_eq!(&read_exact(crd, 2).await[..], b"hi");
}

/// Batches of many slices, as the tunnel writer sends them, are full-size records (counted on
/// the wire, and by the writer) in one socket write per 256 KiB (or a few more if the kernel
/// takes less at once); the bytes arrive intact.
async fn batch_write_is_full_records(pki: Pki) {
    {
        let tap = Rc::new(Tap::default());
        let (client, server) = connect(&pki, Some(tap.clone())).await;
        let (mut crd, _cwr) = client.into_split();
        let (_srd, mut swr) = server.into_split();
        settle(&mut swr, &mut crd).await;

        let pattern = |n: usize, seed: usize| -> Vec<u8> {
            (0..n).map(|i| ((i * 31 + seed) % 251) as u8).collect()
        };
        let headers: Vec<Vec<u8>> = (0..64).map(|i| pattern(10, i)).collect();
        let frames = |payload: &[u8]| -> Vec<Vec<u8>> {
            headers
                .iter()
                .flat_map(|h| [h.clone(), payload.to_vec()])
                .collect()
        };
        let tiny: Vec<Vec<u8>> = (0..1000).map(|i| pattern(3, i)).collect();
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("64 frames of 10 B + 1 KiB", frames(&pattern(1024, 1))),
            (
                "64 frames of 10 B + 4086 B (256 KiB)",
                frames(&pattern(4086, 2)),
            ),
            ("one slice of 256 KiB", vec![pattern(256 * 1024, 3)]),
            (
                "64 frames of 10 B + 16374 B (1 MiB)",
                frames(&pattern(16374, 4)),
            ),
            ("1,000 slices of 3 B", tiny),
            ("one byte", vec![vec![42]]),
        ];
        for (name, parts) in cases {
            let slices: Vec<&[u8]> = parts.iter().map(|p| &p[..]).collect();
            let expected = parts.concat();
            let total = expected.len();
            let seen = tap.to_client.borrow().len();
            let (records, writes) = (swr.records_written(), swr.socket_writes());
            let (sent, got) = monoio::join!(swr.write_all(&slices), read_exact(&mut crd, total));
            sent.unwrap();
            assert!(got[..] == expected[..], "{name}: bytes differ");
            let new = tap.to_client.borrow()[seen..].to_vec();
            let full = total.div_ceil(16 * 1024);
            let writes = swr.socket_writes() - writes;
            println!(
                "{name}: {total} B in {} records, {writes} socket writes",
                new.len()
            );
            assert_eq!(new.len(), full, "{name}: records on the wire {new:?}");
            assert!(new.iter().all(|&(t, _)| t == 0x17), "{name}: {new:?}");
            // All but the last carry 16 KiB: 16,384 bytes, the content type, the 16-byte tag.
            assert!(
                new[..full - 1]
                    .iter()
                    .all(|&(_, len)| len == 16 * 1024 + 17),
                "{name}: {new:?}"
            );
            assert_eq!(swr.records_written() - records, full as u64, "{name}");
            // One socket write per 256 KiB, unless the kernel took less at once.
            let sends = total.div_ceil(256 * 1024) as u64;
            assert!(
                writes >= sends && writes <= 2 * sends + 2,
                "{name}: {writes} writes"
            );
        }
    }
}

#[test]
fn batch_write_is_full_records_in_few_socket_writes_epoll() {
    let pki = pki();
    epoll_rt().block_on(batch_write_is_full_records(pki));
}

#[test]
fn batch_write_is_full_records_in_few_socket_writes_io_uring() {
    let pki = pki();
    uring_rt().block_on(batch_write_is_full_records(pki));
}

/// Ready on its second poll: drops the other `select!` branch right after it started.
struct YieldOnce(bool);

impl Future for YieldOnce {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// The server sends 400 KB in pieces of random sizes with pauses, the relay passes them on a
/// few hundred bytes at a time; the client reads in `select!` against a timer (or a future
/// ready at once) that often wins, as proxy.rs and tunnel.rs do. What it reassembles must be
/// exactly what was sent, with no early end of file.
async fn cancelled_reads_lose_nothing(pki: Pki) {
    let tap = Rc::new(Tap::default());
    tap.dribble_to_client.set(true);
    let (client, server) = connect(&pki, Some(tap)).await;
    let (mut crd, _cwr) = client.into_split();
    let (_srd, mut swr) = server.into_split();
    let data: Vec<u8> = (0..400_000u32)
        .map(|i| (i % 241) as u8 ^ (i / 241) as u8)
        .collect();
    let sent = data.clone();
    let writer = monoio::spawn(async move {
        let mut rng = Rng(11);
        let mut at = 0;
        while at < sent.len() {
            let k = (1 + rng.below(20_000) as usize).min(sent.len() - at);
            let piece = &sent[at..at + k];
            let cut = rng.below(k as u64 + 1) as usize;
            swr.write_all(&[&piece[..cut], &piece[cut..]])
                .await
                .unwrap();
            at += k;
            monoio::time::sleep(Duration::from_micros(rng.below(3000))).await;
        }
        swr.close().await.unwrap();
        swr
    });
    let mut rng = Rng(7);
    let mut got = Vec::with_capacity(data.len());
    let (mut cancelled, mut reads) = (0u32, 0u32);
    loop {
        // A fresh buffer per attempt, as proxy.rs does: a dropped read must not have put
        // anything in it.
        let mut chunk = BytesMut::new();
        let read = if rng.below(4) == 0 {
            monoio::select! {
                r = crd.read(&mut chunk) => Some(r),
                _ = YieldOnce(false) => None,
            }
        } else {
            let wait = Duration::from_micros(rng.below(1500));
            monoio::select! {
                r = crd.read(&mut chunk) => Some(r),
                _ = monoio::time::sleep(wait) => None,
            }
        };
        match read {
            None => {
                cancelled += 1;
                assert!(chunk.is_empty(), "a dropped read appended bytes");
            }
            Some(r) => {
                let n = r.unwrap();
                if n == 0 {
                    break;
                }
                assert_eq!(n, chunk.len());
                got.extend_from_slice(&chunk);
                reads += 1;
            }
        }
    }
    println!("{reads} reads, {cancelled} dropped");
    assert_eq!(got.len(), data.len(), "early EOF, lost or repeated bytes");
    assert!(got == data, "bytes differ");
    assert!(cancelled >= 100, "only {cancelled} reads were dropped");
    writer.await;
}

#[test]
fn cancelled_reads_lose_nothing_epoll() {
    let pki = pki();
    epoll_rt().block_on(cancelled_reads_lose_nothing(pki));
}

#[test]
fn cancelled_reads_lose_nothing_io_uring() {
    let pki = pki();
    uring_rt().block_on(cancelled_reads_lose_nothing(pki));
}

/// A read that waits with nothing to read, dropped over and over, then the peer closes: the
/// reader sees the end, not a hang.
#[test]
fn cancelled_idle_reads_then_close_is_eof() {
    let pki = pki();
    rt().block_on(async move {
        let (client, server) = connect(&pki, None).await;
        let (mut crd, _cwr) = client.into_split();
        let (_srd, mut swr) = server.into_split();
        for _ in 0..50 {
            let mut chunk = BytesMut::new();
            monoio::select! {
                _ = crd.read(&mut chunk) => panic!("nothing was sent"),
                _ = monoio::time::sleep(Duration::from_micros(300)) => {}
            }
        }
        swr.write_all(&[b"last"]).await.unwrap();
        swr.close().await.unwrap();
        let mut buf = BytesMut::new();
        while crd.read(&mut buf).await.unwrap() > 0 {}
        assert_eq!(&buf[..], b"last");
    });
}

/// `close` (close_notify, then the socket's sending side shut) is seen as the end at once by a
/// reader already waiting, while the other direction still works; then the other side closes.
#[test]
fn close_is_seen_as_eof_promptly() {
    let pki = pki();
    rt().block_on(async move {
        let tap = Rc::new(Tap::default());
        let (client, server) = connect(&pki, Some(tap.clone())).await;
        let (mut crd, mut cwr) = client.into_split();
        let (mut srd, mut swr) = server.into_split();
        // The server waits in a read before the client closes.
        let waiting = monoio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut total = 0;
            loop {
                let n = srd.read(&mut buf).await.unwrap();
                if n == 0 {
                    return (Instant::now(), buf);
                }
                total += n;
                assert!(total <= 5);
            }
        });
        monoio::time::sleep(Duration::from_millis(20)).await;
        cwr.write_all(&[b"bye", b"!!"]).await.unwrap();
        let closed_at = Instant::now();
        cwr.close().await.unwrap();
        cwr.close().await.unwrap(); // closing twice is harmless
        assert!(cwr.write_all(&[b"late"]).await.is_err());
        let (eof_at, buf) = waiting.await;
        assert_eq!(&buf[..], b"bye!!");
        let took = eof_at - closed_at;
        assert!(took < Duration::from_millis(500), "EOF after {took:?}");
        // The close_notify went on the wire (an alert record: in TLS 1.3 it is sealed as
        // application data, so look at the count: "bye!!", then close_notify).
        assert!(tap.to_server.borrow().len() >= 2);
        // Half-closed: the server still sends, the client still reads.
        swr.write_all(&[b"still here"]).await.unwrap();
        assert_eq!(&read_exact(&mut crd, 10).await[..], b"still here");
        let start = Instant::now();
        swr.close().await.unwrap();
        let mut rest = BytesMut::new();
        assert_eq!(crd.read(&mut rest).await.unwrap(), 0);
        assert!(rest.is_empty());
        assert!(start.elapsed() < Duration::from_millis(500));
    });
}

/// Dropping the writer without `close` shuts the socket's sending side, as dropping a socket
/// half does: the peer sees the end (a truncation, reported as end of file).
#[test]
fn dropped_writer_is_seen_as_eof() {
    let pki = pki();
    rt().block_on(async move {
        let (client, server) = connect(&pki, None).await;
        let (_crd, mut cwr) = client.into_split();
        let (mut srd, _swr) = server.into_split();
        cwr.write_all(&[b"abc"]).await.unwrap();
        drop(cwr);
        let mut buf = BytesMut::new();
        let res = monoio::time::timeout(Duration::from_secs(2), async {
            while srd.read(&mut buf).await? > 0 {}
            std::io::Result::Ok(())
        })
        .await
        .expect("EOF in time");
        res.unwrap();
        assert_eq!(&buf[..], b"abc");
    });
}

/// The client asks for a key update; the server's reader processes it, and rustls' reply (a
/// key update of the server's own) goes out at once although the server writes nothing. Both
/// directions work afterwards, under the new keys.
#[test]
fn reader_sends_key_update_reply_without_a_write() {
    let pki = pki();
    rt().block_on(async move {
        let tap = Rc::new(Tap::default());
        let (client, server) = connect(&pki, Some(tap.clone())).await;
        let (mut crd, mut cwr) = client.into_split();
        let (mut srd, mut swr) = server.into_split();
        settle(&mut swr, &mut crd).await;
        let seen = tap.to_client.borrow().len();
        let server_records = swr.records_written();
        cwr.update_keys().await.unwrap();
        cwr.write_all(&[b"ping"]).await.unwrap();
        assert_eq!(&read_exact(&mut srd, 4).await[..], b"ping");
        let start = Instant::now();
        while tap.to_client.borrow().len() == seen {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "the key update reply was not sent"
            );
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(tap.to_client.borrow().len(), seen + 1);
        assert_eq!(swr.records_written(), server_records + 1);
        swr.write_all(&[b"pong"]).await.unwrap();
        assert_eq!(&read_exact(&mut crd, 4).await[..], b"pong");
        cwr.write_all(&[b"again"]).await.unwrap();
        assert_eq!(&read_exact(&mut srd, 5).await[..], b"again");
    });
}

/// A record damaged on the way fails the server's read, and the server's alert reaches the
/// client at once (the client's read fails with it, rather than waiting or seeing a plain end).
#[test]
fn reader_sends_alert_for_a_bad_record() {
    let pki = pki();
    rt().block_on(async move {
        let tap = Rc::new(Tap::default());
        let (client, server) = connect(&pki, Some(tap.clone())).await;
        let (mut crd, mut cwr) = client.into_split();
        let (mut srd, mut swr) = server.into_split();
        settle(&mut swr, &mut crd).await;
        tap.corrupt_to_server.set(true);
        cwr.write_all(&[b"damaged"]).await.unwrap();
        let mut buf = BytesMut::new();
        let err = srd.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
        assert!(buf.is_empty());
        // The server gives up on the connection at once: the alert still goes out.
        drop((srd, swr));
        let res = monoio::time::timeout(Duration::from_secs(2), crd.read(&mut buf))
            .await
            .expect("the client hears of it in time");
        let err = res.unwrap_err();
        assert!(err.to_string().contains("BadRecordMac"), "{err}");
    });
}

/// Bulk transfer through the adapter, sender and receiver on two threads (one runtime each):
/// batches of 64 frames (a 10-byte header slice and a payload slice each), as the tunnel writer
/// sends them. Prints throughput (a measurement, not an assertion). Size: `TLS_BENCH_MIB`
/// (default 8 MiB per shape; `TLS_BENCH_MIB=256 cargo test --release -p kubehub-hub --test tls
/// -- --nocapture bulk_transfer_throughput` for the recorded numbers).
#[test]
fn bulk_transfer_throughput() {
    let mib: usize = std::env::var("TLS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let ca = Ca::generate("test CA").unwrap();
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let client_cert = ca.issue_client("agent-bench", &["agents"]).unwrap();
    for payload in [1024usize, 16 * 1024] {
        let scfg = server_config(&ca, &server_cert);
        let ccfg = client_config(&ca, Some(&client_cert));
        let frames_per_batch = 64;
        let batch_bytes = frames_per_batch * (10 + payload);
        let batches = (mib * 1024 * 1024).div_ceil(batch_bytes);
        let total = batches * batch_bytes;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            rt().block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                let (tcp, _) = listener.accept().await.unwrap();
                let conn = rustls::ServerConnection::new(scfg).unwrap();
                let tls = handshake(tcp, conn.into(), Duration::from_secs(5))
                    .await
                    .unwrap();
                let (mut rd, mut wr) = tls.into_split();
                let mut buf = BytesMut::with_capacity(64 * 1024);
                let mut got = 0usize;
                loop {
                    buf.clear();
                    let n = rd.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                wr.close().await.unwrap();
                got
            })
        });
        let (elapsed, stats) = rt().block_on(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let conn =
                rustls::ClientConnection::new(ccfg, ServerName::try_from("localhost").unwrap())
                    .unwrap();
            let tls = handshake(tcp, conn.into(), Duration::from_secs(5))
                .await
                .unwrap();
            let (mut rd, mut wr) = tls.into_split();
            let body: Vec<u8> = (0..payload).map(|i| (i % 251) as u8).collect();
            let headers: Vec<[u8; 10]> = (0..frames_per_batch)
                .map(|i| [0, 0, payload as u8, 0, 0, 0, 0, 0, 1, i as u8])
                .collect();
            let start = std::time::Instant::now();
            for _ in 0..batches {
                let mut parts: Vec<&[u8]> = Vec::with_capacity(2 * frames_per_batch);
                for h in &headers {
                    parts.push(h);
                    parts.push(&body);
                }
                wr.write_all(&parts).await.unwrap();
            }
            wr.close().await.unwrap();
            // Until the receiver is through (its close_notify): also reads its session
            // tickets, so that closing this socket does not reset the connection.
            let mut rest = BytesMut::new();
            while rd.read(&mut rest).await.unwrap() > 0 {}
            (start.elapsed(), writer_stats(&wr))
        });
        let got = server.join().unwrap();
        assert_eq!(got, total);
        let mbs = total as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64();
        println!(
            "bulk: {} MiB in batches of 64 x (10 B + {} B): {:.3} s, {:.0} MiB/s{}",
            total / (1024 * 1024),
            payload,
            elapsed.as_secs_f64(),
            mbs,
            stats
        );
    }
}

fn writer_stats(wr: &TlsWriter) -> String {
    format!(
        ", {} records, {} socket writes",
        wr.records_written(),
        wr.socket_writes()
    )
}
