//! `tls`: a small TLS adapter over rustls for monoio's completion-based sockets.
//!
//! Why our own: the hub must see the agent's client certificate after the handshake, and must
//! read and write one connection at the same time (a tunnel reads frames while it writes
//! frames; an HTTP connection watches for the client going away while it streams a watch).
//! `monoio-rustls` gives neither without rebuilding the connection, which can lose bytes the
//! peer sent right after its Finished message.
//!
//! Shape: [`handshake`] drives rustls to completion on the whole socket, then
//! [`TlsStream::into_split`] gives a [`TlsReader`] and a [`TlsWriter`] over the socket's two
//! halves. They share the rustls state in an `Rc<RefCell<_>>` (one connection lives on one
//! core); a borrow is never held across an await.
//!
//! Memory: the reader's ciphertext buffer starts at [`IDLE_READ_BUFFER`] bytes (an idle
//! connection parks one read in the kernel with it) and grows to a full record only while data
//! flows.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable};
use monoio::net::TcpStream;
use rustls::pki_types::CertificateDer;

/// Ciphertext buffer of an idle connection.
pub const IDLE_READ_BUFFER: usize = 1024;
/// Ciphertext buffer while data flows: one TLS record and its overhead.
pub const BUSY_READ_BUFFER: usize = 16 * 1024 + 256;

/// Why a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// rustls refused the peer (bad certificate, protocol violation …).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The peer closed the connection during the handshake.
    #[error("peer closed the connection during the TLS handshake")]
    Eof,
}

/// A connection after the handshake, not yet split.
pub struct TlsStream {
    tcp: TcpStream,
    conn: rustls::Connection,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream").finish_non_exhaustive()
    }
}

/// Sends whatever rustls has queued for the peer.
async fn flush_tls<W: AsyncWriteRentExt>(
    conn: &mut rustls::Connection,
    wr: &mut W,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    if !out.is_empty() {
        let buf = std::mem::take(out);
        let (res, mut buf) = wr.write_all(buf).await;
        res?;
        buf.clear();
        *out = buf;
    }
    Ok(())
}

/// Runs the TLS handshake on `tcp` within `timeout`.
pub async fn handshake(
    mut tcp: TcpStream,
    mut conn: rustls::Connection,
    timeout: Duration,
) -> Result<TlsStream, TlsError> {
    let work = async {
        let mut out = Vec::new();
        let mut buf = vec![0u8; BUSY_READ_BUFFER];
        while conn.is_handshaking() {
            flush_tls(&mut conn, &mut tcp, &mut out).await?;
            if !conn.is_handshaking() {
                break;
            }
            if conn.wants_read() {
                let (res, b) = tcp.read(buf).await;
                buf = b;
                let n = res?;
                if n == 0 {
                    return Err(TlsError::Eof);
                }
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd)?;
                    if let Err(e) = conn.process_new_packets() {
                        // Tell the peer why (the alert is queued), then fail.
                        let _ = flush_tls(&mut conn, &mut tcp, &mut out).await;
                        return Err(TlsError::Tls(e));
                    }
                }
            }
        }
        // Session tickets and the like, queued at the end of the handshake.
        flush_tls(&mut conn, &mut tcp, &mut out).await?;
        Ok(())
    };
    match monoio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Ok(TlsStream { tcp, conn }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(TlsError::Timeout),
    }
}

impl TlsStream {
    /// The peer's certificate chain (the client's, on a server with client authentication).
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The protocol agreed by ALPN.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// Splits into a reader and a writer that may be used concurrently.
    pub fn into_split(self) -> (TlsReader, TlsWriter) {
        let shared = Rc::new(RefCell::new(self.conn));
        let (rd, wr) = self.tcp.into_split();
        (
            TlsReader {
                rd,
                conn: shared.clone(),
                buf: Some(Vec::with_capacity(IDLE_READ_BUFFER)),
                eof: false,
            },
            TlsWriter {
                wr,
                conn: shared,
                out: Vec::new(),
            },
        )
    }
}

/// The reading half: plaintext out of ciphertext in.
pub struct TlsReader {
    rd: OwnedReadHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    buf: Option<Vec<u8>>,
    eof: bool,
}

impl std::fmt::Debug for TlsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReader").field("eof", &self.eof).finish()
    }
}

/// What draining rustls' plaintext found.
enum Drained {
    /// This many bytes were appended.
    Bytes(usize),
    /// Nothing yet: more ciphertext is needed.
    Nothing,
    /// The peer closed (cleanly, or by dropping the connection).
    Eof,
}

/// Moves all plaintext rustls holds into `dst`.
fn drain(conn: &mut rustls::Connection, dst: &mut BytesMut) -> io::Result<Drained> {
    let mut total = 0;
    let mut reader = conn.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) if total == 0 => return Ok(Drained::Eof),
            Ok([]) => return Ok(Drained::Bytes(total)),
            Ok(chunk) => {
                let n = chunk.len();
                dst.extend_from_slice(chunk);
                reader.consume(n);
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Ok(if total > 0 {
                    Drained::Bytes(total)
                } else {
                    Drained::Nothing
                })
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Ok(if total > 0 {
                    Drained::Bytes(total)
                } else {
                    Drained::Eof
                })
            }
            Err(e) => return Err(e),
        }
    }
}

impl TlsReader {
    /// Appends decrypted bytes to `dst`; `Ok(0)` means the peer closed the connection.
    pub async fn read(&mut self, dst: &mut BytesMut) -> io::Result<usize> {
        loop {
            match drain(&mut self.conn.borrow_mut(), dst)? {
                Drained::Bytes(n) => return Ok(n),
                Drained::Eof => return Ok(0),
                Drained::Nothing if self.eof => return Ok(0),
                Drained::Nothing => {}
            }
            // Read ciphertext: a small buffer when nothing was pending, a record-sized one
            // once data flows.
            let mut buf = self.buf.take().unwrap_or_default();
            buf.clear();
            let (res, b) = self.rd.read(buf).await;
            let mut buf = b;
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    self.buf = Some(buf);
                    return Err(e);
                }
            };
            let full = n == buf.capacity();
            let mut got = 0;
            {
                let mut conn = self.conn.borrow_mut();
                if n == 0 {
                    self.eof = true;
                    // Tell rustls: it decides between a clean close and a truncation.
                    let _ = conn.read_tls(&mut io::empty());
                } else {
                    let mut rd = &buf[..n];
                    while !rd.is_empty() {
                        conn.read_tls(&mut rd)?;
                        conn.process_new_packets()
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                        // Keep rustls' plaintext buffer from filling up.
                        match drain(&mut conn, dst)? {
                            Drained::Bytes(k) => got += k,
                            Drained::Eof => self.eof = true,
                            Drained::Nothing => {}
                        }
                    }
                }
            }
            if full && buf.capacity() < BUSY_READ_BUFFER {
                buf = Vec::with_capacity(BUSY_READ_BUFFER);
            } else if !full && n < IDLE_READ_BUFFER && buf.capacity() > IDLE_READ_BUFFER {
                buf = Vec::with_capacity(IDLE_READ_BUFFER);
            }
            self.buf = Some(buf);
            if got > 0 {
                return Ok(got);
            }
        }
    }
}

/// The writing half: plaintext in, records out.
pub struct TlsWriter {
    wr: OwnedWriteHalf<TcpStream>,
    conn: Rc<RefCell<rustls::Connection>>,
    out: Vec<u8>,
}

impl std::fmt::Debug for TlsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWriter").finish_non_exhaustive()
    }
}

impl TlsWriter {
    /// Encrypts and sends `chunks`, in order. The chunks are handed to rustls as they are (it
    /// copies them into records as it encrypts).
    pub async fn write_all(&mut self, chunks: &[&[u8]]) -> io::Result<()> {
        for chunk in chunks {
            let mut rest: &[u8] = chunk;
            while !rest.is_empty() {
                {
                    let mut conn = self.conn.borrow_mut();
                    let n = conn.writer().write(rest)?;
                    rest = &rest[n..];
                    while conn.wants_write() {
                        conn.write_tls(&mut self.out)?;
                    }
                }
                self.send().await?;
            }
        }
        // Anything else rustls queued (a reply to a key update, say).
        self.flush().await
    }

    /// Sends records rustls has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        {
            let mut conn = self.conn.borrow_mut();
            while conn.wants_write() {
                conn.write_tls(&mut self.out)?;
            }
        }
        self.send().await
    }

    async fn send(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.out);
        let (res, mut buf) = self.wr.write_all(buf).await;
        buf.clear();
        if buf.capacity() > BUSY_READ_BUFFER * 4 {
            buf = Vec::new();
        }
        self.out = buf;
        res.map(|_| ())
    }

    /// Sends close_notify and shuts the socket's sending side, so the peer sees the end even
    /// while the reading half is still open.
    pub async fn close(&mut self) -> io::Result<()> {
        self.conn.borrow_mut().send_close_notify();
        let flushed = self.flush().await;
        let shut = monoio::io::AsyncWriteRent::shutdown(&mut self.wr).await;
        flushed.and(shut)
    }
}
