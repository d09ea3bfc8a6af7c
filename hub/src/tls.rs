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
//! halves. They share the rustls state (one connection lives on one core) in a `RefCell` that
//! is never borrowed across an await. The socket's sending half sits behind an async lock, so
//! that the reader can send what rustls queues while it reads (a reply to the peer's key
//! update, a fatal alert) even when the writer is idle; every record leaves the socket in the
//! order rustls queued it, because rustls' queue is only ever drained by the lock's holder.
//!
//! Writes: one [`TlsWriter::write_all`] of any number of slices becomes full-size records
//! (rustls' `write_vectored` cuts a multi-slice payload into records of up to 16 KiB, copying
//! each slice once, as it encrypts) and one socket write of all of them (up to
//! [`MAX_SEND_PLAINTEXT`] of plaintext per socket write). See [`TlsWriter::write_all`].
//!
//! Reads: [`TlsReader::read`] is cancel-safe (see there): the socket read in flight belongs to
//! the reader, not to the `read` future, so `monoio::select!` may drop that future at will.
//!
//! Memory: the reader's ciphertext buffer starts at [`IDLE_READ_BUFFER`] bytes (an idle
//! connection parks one read in the kernel with it) and grows to a full record only while data
//! flows: a read that fills it is followed by a record-sized one, and a read that does not (the
//! socket had nothing more) by a small one again, so the read parked after a burst holds
//! [`IDLE_READ_BUFFER`], not a record. rustls' own ciphertext buffer (its deframer), which grows
//! towards a record while records arrive in pieces, is brought back to its minimum (4 KiB)
//! once everything received has been processed. The writer's ciphertext buffer lives only
//! while it writes: it is kept between writes only after a busy write and only up to
//! [`KEEP_WRITE_BUFFER`] (one record); a small write (a ping) or a large one releases it, so an
//! idle connection holds no write buffer.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{self, BufRead, IoSlice, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use monoio::buf::IoBuf;
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Splitable,
};
use monoio::net::TcpStream;
use rustls::pki_types::CertificateDer;

/// Ciphertext buffer of an idle connection.
pub const IDLE_READ_BUFFER: usize = 1024;
/// Ciphertext buffer while data flows: one TLS record and its overhead.
pub const BUSY_READ_BUFFER: usize = 16 * 1024 + 256;
/// Largest plaintext of a TLS record.
pub const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// Plaintext encrypted into one socket write at most: a larger batch goes out in several
/// writes of this much (so a writer holds at most this much ciphertext, plus record overhead,
/// at any time). A multiple of [`MAX_RECORD_PLAINTEXT`], so that only the last record of a
/// batch may be short.
pub const MAX_SEND_PLAINTEXT: usize = 256 * 1024;
/// The writer's ciphertext buffer is kept from one write to the next only up to this capacity
/// (one full record and its overhead, the size a stream of record-sized writes needs), and only
/// after a write of at least [`IDLE_READ_BUFFER`] bytes: an idle connection (whose last write
/// was a ping) holds none.
pub const KEEP_WRITE_BUFFER: usize = BUSY_READ_BUFFER;
/// Plaintext handed to rustls per call: its default buffer limit (64 KiB of queued records),
/// a multiple of the record size so that every record but a batch's last is full.
const FEED_PLAINTEXT: usize = 64 * 1024;
/// Record overhead allowed for when sizing the ciphertext buffer: header (5), TLS 1.3 content
/// type (1) and AEAD tag (16); TLS 1.2's explicit nonce (8) and tag (16) fit as well.
const RECORD_OVERHEAD: usize = 32;

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

/// Moves every record rustls has queued for the peer to the end of `out`.
fn take_tls(conn: &mut rustls::Connection, out: &mut Vec<u8>) -> io::Result<()> {
    while conn.wants_write() {
        conn.write_tls(out)?;
    }
    Ok(())
}

/// Sends whatever rustls has queued for the peer (during the handshake, on the whole socket).
async fn flush_tls<W: AsyncWriteRentExt>(
    conn: &mut rustls::Connection,
    wr: &mut W,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    take_tls(conn, out)?;
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
        let (rd, wr) = self.tcp.into_split();
        let shared = Rc::new(Shared {
            conn: RefCell::new(self.conn),
            send: tokio::sync::Mutex::new(SendSide {
                wr: Some(wr),
                out: Vec::new(),
            }),
            flush_scheduled: Cell::new(false),
            writer_gone: Cell::new(false),
            records: Cell::new(0),
            socket_writes: Cell::new(0),
        });
        (
            TlsReader {
                shared: shared.clone(),
                rd: Some(rd),
                buf: Vec::with_capacity(IDLE_READ_BUFFER),
                in_flight: None,
                eof: false,
            },
            TlsWriter { shared },
        )
    }
}

/// What the reader and the writer share.
struct Shared {
    /// The rustls state; never borrowed across an await.
    conn: RefCell<rustls::Connection>,
    /// The socket's sending half. Whoever holds the lock is the only one to take records out
    /// of rustls, and sends them before letting go, so records leave in rustls' order.
    send: tokio::sync::Mutex<SendSide>,
    /// A task is on its way to send what the reader made rustls queue.
    flush_scheduled: Cell<bool>,
    /// The [`TlsWriter`] was dropped: the sending half goes once nothing is left to flush.
    writer_gone: Cell<bool>,
    /// TLS records and socket writes (system calls) since the split.
    records: Cell<u64>,
    socket_writes: Cell<u64>,
}

/// The sending half and its ciphertext buffer.
struct SendSide {
    /// `None` once closed (or the writer dropped): nothing more is sent.
    wr: Option<OwnedWriteHalf<TcpStream>>,
    /// Records taken out of rustls, not yet sent. Empty between writes.
    out: Vec<u8>,
}

/// Counts the records in `buf`, which holds whole records.
fn count_records(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while let [_, _, _, hi, lo, ..] = *buf {
        n += 1;
        let len = 5 + usize::from(u16::from_be_bytes([hi, lo]));
        buf = buf.get(len..).unwrap_or_default();
    }
    n
}

impl Shared {
    /// Sends `side.out` on the socket, as few writes as the kernel allows (one, normally).
    /// Afterwards `out` is empty, and keeps its memory only as [`KEEP_WRITE_BUFFER`] says.
    async fn send_out(&self, side: &mut SendSide) -> io::Result<()> {
        let len = side.out.len();
        if len == 0 {
            return Ok(());
        }
        let Some(wr) = side.wr.as_mut() else {
            side.out = Vec::new();
            return Err(closed());
        };
        self.records
            .set(self.records.get() + count_records(&side.out));
        let mut buf = std::mem::take(&mut side.out);
        let mut sent = 0;
        let mut res = Ok(());
        while sent < len {
            let (r, slice) = wr.write(buf.slice(sent..)).await;
            buf = slice.into_inner();
            self.socket_writes.set(self.socket_writes.get() + 1);
            match r {
                Ok(0) => res = Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => sent += n,
                Err(e) => res = Err(e),
            }
            if res.is_err() {
                break;
            }
        }
        buf.clear();
        if len >= IDLE_READ_BUFFER && buf.capacity() <= KEEP_WRITE_BUFFER {
            side.out = buf;
        }
        res
    }

    /// Sends everything rustls has queued (with the lock held by the caller).
    async fn flush_queued(&self, side: &mut SendSide) -> io::Result<()> {
        loop {
            take_tls(&mut self.conn.borrow_mut(), &mut side.out)?;
            if side.out.is_empty() {
                return Ok(());
            }
            self.send_out(side).await?;
        }
    }

    /// Has what rustls queued while the reader processed records sent, without waiting for
    /// (or by) the reader: by a task that takes the send lock, so after any write under way
    /// (which sends it anyway if it takes it out of rustls first).
    fn schedule_flush(self: &Rc<Self>) {
        if self.flush_scheduled.replace(true) {
            return;
        }
        let shared = self.clone();
        monoio::spawn(async move {
            let mut side = shared.send.lock().await;
            shared.flush_scheduled.set(false);
            if side.wr.is_some() {
                // A failure shows at the next write, or the reader sees the connection end.
                let _ = shared.flush_queued(&mut side).await;
            }
            if shared.writer_gone.get() {
                side.wr = None;
                side.out = Vec::new();
            }
        });
    }
}

fn closed() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "TLS connection closed for writing",
    )
}

/// What a finished socket read gives back: its result, its buffer, the socket half.
type ReadDone = (io::Result<usize>, Vec<u8>, OwnedReadHalf<TcpStream>);
/// A socket read that has been started, with everything it owns.
type ReadOp = Pin<Box<dyn Future<Output = ReadDone>>>;

/// The reading half: plaintext out of ciphertext in.
pub struct TlsReader {
    shared: Rc<Shared>,
    /// The socket's reading half while no read is in flight (else `in_flight` owns it).
    rd: Option<OwnedReadHalf<TcpStream>>,
    /// The ciphertext buffer while no read is in flight (else `in_flight` owns it).
    buf: Vec<u8>,
    /// The socket read under way, kept across cancelled [`TlsReader::read`] calls.
    in_flight: Option<ReadOp>,
    eof: bool,
}

impl std::fmt::Debug for TlsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsReader")
            .field("eof", &self.eof)
            .field("reading", &self.in_flight.is_some())
            .finish()
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

/// A reader with nothing to give yet (`WouldBlock`), never end of file.
struct NothingYet;

impl io::Read for NothingYet {
    fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

/// Brings rustls' ciphertext buffer (its deframer) back to its minimum once it holds no
/// partial record. rustls grows that buffer towards a full record (16 KiB) while a record
/// arrives in pieces and shrinks it back (to 4 KiB) only at the start of the next
/// `read_tls`: after a burst the buffer would stay at its largest for as long as the
/// connection is quiet. A `read_tls` from a reader that has nothing yet (`WouldBlock`) runs
/// that shrink and changes nothing else (it is not an end of file; with a partial record
/// buffered it only makes the room the next read would make anyway).
fn shrink_deframer(conn: &mut rustls::Connection) {
    let _ = conn.read_tls(&mut NothingYet);
}

/// Starts a socket read that owns its half and buffer, so it can outlive a `read` call.
fn start_read(mut rd: OwnedReadHalf<TcpStream>, buf: Vec<u8>) -> ReadOp {
    Box::pin(async move {
        let (res, buf) = rd.read(buf).await;
        (res, buf, rd)
    })
}

impl TlsReader {
    /// Appends decrypted bytes to `dst`; `Ok(0)` means the peer closed the connection (with
    /// close_notify, or by closing the socket).
    ///
    /// **Cancel safety.** Dropping the returned future at any await point (as
    /// `monoio::select!` does with the branch that lost) loses no plaintext and no ciphertext,
    /// and the next call goes on where this one stopped:
    /// * the future appends to `dst` only in the same poll in which it completes, so a future
    ///   that was dropped has appended nothing (and a completed one owns nothing);
    /// * decrypted bytes not yet handed out stay in rustls, which is reached only
    ///   synchronously;
    /// * the socket read that was in flight belongs to the reader, not to the future (the
    ///   read, its buffer and the socket half are one boxed operation stored in `self`): it is
    ///   not cancelled but resumed by the next call, which takes whatever the kernel put in
    ///   its buffer. So nothing relies on how io_uring cancellation races with completion: an
    ///   in-flight read is never cancelled while the reader lives (it is when the reader is
    ///   dropped, with the connection). With the epoll driver the same holds trivially (a read
    ///   takes bytes from the socket only in the poll that returns them).
    ///
    /// Records rustls queues while reading (a reply to the peer's key update, the alert for a
    /// bad record) are sent by a short task, even if the writer is idle.
    pub async fn read(&mut self, dst: &mut BytesMut) -> io::Result<usize> {
        loop {
            match drain(&mut self.shared.conn.borrow_mut(), dst)? {
                Drained::Bytes(n) => return Ok(n),
                Drained::Eof => return Ok(0),
                Drained::Nothing if self.eof => return Ok(0),
                Drained::Nothing => {}
            }
            let op = match &mut self.in_flight {
                Some(op) => op,
                slot @ None => {
                    let rd = self.rd.take().ok_or_else(|| {
                        io::Error::new(io::ErrorKind::BrokenPipe, "TLS reader lost its socket")
                    })?;
                    let mut buf = std::mem::take(&mut self.buf);
                    buf.clear();
                    slot.insert(start_read(rd, buf))
                }
            };
            // The only await: if the future is dropped here, `in_flight` keeps the read.
            let (res, buf, rd) = op.await;
            self.in_flight = None;
            self.rd = Some(rd);
            let n = match res {
                Ok(n) => n,
                Err(e) => {
                    self.buf = buf;
                    return Err(e);
                }
            };
            let full = n == buf.capacity();
            let processed = self.process(&buf[..n], dst);
            // A record-sized buffer while data flows (the last read filled the buffer: more is
            // probably waiting), a small one as soon as a read found the socket drained: the
            // next read may wait for a long time (an idle tunnel, a keep-alive connection), and
            // the buffer it waits with is held all that time.
            self.buf = if full && buf.capacity() < BUSY_READ_BUFFER {
                Vec::with_capacity(BUSY_READ_BUFFER)
            } else if !full && buf.capacity() > IDLE_READ_BUFFER {
                Vec::with_capacity(IDLE_READ_BUFFER)
            } else {
                buf
            };
            let got = processed?;
            if got > 0 {
                return Ok(got);
            }
        }
    }

    /// Feeds `ciphertext` (empty: end of file) to rustls; returns the plaintext bytes it
    /// appended to `dst`. Synchronous: nothing here can be cancelled half-way.
    fn process(&mut self, ciphertext: &[u8], dst: &mut BytesMut) -> io::Result<usize> {
        let mut got = 0;
        let mut conn = self.shared.conn.borrow_mut();
        let res = if ciphertext.is_empty() {
            self.eof = true;
            // Tell rustls: it decides between a clean close and a truncation.
            let _ = conn.read_tls(&mut io::empty());
            Ok(())
        } else {
            let mut rd = ciphertext;
            let mut res = Ok(());
            while !rd.is_empty() {
                if let Err(e) = conn.read_tls(&mut rd) {
                    res = Err(e);
                    break;
                }
                if let Err(e) = conn.process_new_packets() {
                    res = Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    break;
                }
                // Keep rustls' plaintext buffer from filling up.
                match drain(&mut conn, dst) {
                    Ok(Drained::Bytes(k)) => got += k,
                    Ok(Drained::Eof) => self.eof = true,
                    Ok(Drained::Nothing) => {}
                    Err(e) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            res
        };
        // rustls keeps its reply to a key update aside until the next record it sends; an
        // empty write moves it into the send queue (and sends no record of its own).
        if !conn.is_handshaking() {
            let _ = conn.writer().write(&[]);
        }
        if res.is_ok() && !self.eof {
            shrink_deframer(&mut conn);
        }
        let queued = conn.wants_write();
        drop(conn);
        if queued {
            self.shared.schedule_flush();
        }
        res.map(|()| got)
    }
}

/// The writing half: plaintext in, records out.
pub struct TlsWriter {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for TlsWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsWriter")
            .field("records_written", &self.records_written())
            .field("socket_writes", &self.socket_writes())
            .finish_non_exhaustive()
    }
}

/// Collects into `window` up to `max` bytes of `chunks`, starting `skip` bytes into chunk
/// `idx`.
fn window<'a>(chunks: &[&'a [u8]], idx: usize, skip: usize, max: usize, w: &mut Vec<IoSlice<'a>>) {
    w.clear();
    let mut room = max;
    let mut skip = skip;
    for chunk in chunks.iter().skip(idx) {
        if room == 0 {
            break;
        }
        let rest = chunk.get(skip..).unwrap_or_default();
        skip = 0;
        let take = rest.len().min(room);
        if take > 0 {
            w.push(IoSlice::new(&rest[..take]));
            room -= take;
        }
    }
}

/// Moves the position (`idx`, `skip`) in `chunks` on by `n` bytes.
fn advance(chunks: &[&[u8]], idx: &mut usize, skip: &mut usize, mut n: usize) {
    while n > 0 {
        let Some(chunk) = chunks.get(*idx) else {
            return;
        };
        let left = chunk.len() - *skip;
        if n < left {
            *skip += n;
            return;
        }
        n -= left;
        *idx += 1;
        *skip = 0;
    }
}

impl TlsWriter {
    /// Encrypts and sends `chunks`, in order, as one batch: rustls cuts the batch (not each
    /// chunk) into records, so a batch of `L` bytes is `ceil(L / 16 KiB)` records (every one
    /// full but the last), copying each chunk once as it encrypts; all the records go out in
    /// one socket write (more only if the kernel takes less, or if the batch exceeds
    /// [`MAX_SEND_PLAINTEXT`], which is sent in writes of that much). Records rustls had
    /// queued on its own (a key update reply, say) go out first, in the same write.
    ///
    /// Not cancel-safe (as any stream's `write_all`): if the future is dropped, part of the
    /// batch may have been sent; the connection should then be given up.
    pub async fn write_all(&mut self, chunks: &[&[u8]]) -> io::Result<()> {
        let mut side = self.shared.send.lock().await;
        if side.wr.is_none() {
            return Err(closed());
        }
        let mut remaining: usize = chunks.iter().map(|c| c.len()).sum();
        let (mut idx, mut skip) = (0, 0);
        let mut iov = Vec::with_capacity(chunks.len().min(64));
        loop {
            {
                let mut conn = self.shared.conn.borrow_mut();
                let batch = remaining.min(MAX_SEND_PLAINTEXT);
                let records = batch.div_ceil(MAX_RECORD_PLAINTEXT);
                side.out.reserve(batch + records * RECORD_OVERHEAD);
                take_tls(&mut conn, &mut side.out)?;
                let mut fed = 0;
                while fed < batch {
                    window(chunks, idx, skip, FEED_PLAINTEXT.min(batch - fed), &mut iov);
                    let n = conn.writer().write_vectored(&iov)?;
                    advance(chunks, &mut idx, &mut skip, n);
                    fed += n;
                    remaining -= n;
                    take_tls(&mut conn, &mut side.out)?;
                    if n == 0 {
                        break;
                    }
                }
            }
            if side.out.is_empty() {
                if remaining > 0 {
                    // rustls takes nothing and has nothing to send: it will not move on.
                    return Err(io::ErrorKind::WriteZero.into());
                }
                return Ok(());
            }
            self.shared.send_out(&mut side).await?;
        }
    }

    /// Sends records rustls has queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        let mut side = self.shared.send.lock().await;
        if side.wr.is_none() {
            return Ok(());
        }
        self.shared.flush_queued(&mut side).await
    }

    /// Sends close_notify and shuts the socket's sending side, so the peer sees the end even
    /// while the reading half is still open. Closing again does nothing.
    pub async fn close(&mut self) -> io::Result<()> {
        let mut side = self.shared.send.lock().await;
        if side.wr.is_none() {
            return Ok(());
        }
        self.shared.conn.borrow_mut().send_close_notify();
        let flushed = self.shared.flush_queued(&mut side).await;
        let shut = match side.wr.take() {
            Some(mut wr) => wr.shutdown().await,
            None => Ok(()),
        };
        side.out = Vec::new();
        flushed.and(shut)
    }

    /// Ends the connection without close_notify: the peer sees the stream cut short (TLS
    /// reports an unexpected EOF), as when a session broke rather than ended. Closing after
    /// this does nothing.
    pub async fn abort(&mut self) {
        let mut side = self.shared.send.lock().await;
        if let Some(mut wr) = side.wr.take() {
            let _ = wr.shutdown().await;
        }
        side.out = Vec::new();
    }

    /// Sends a TLS 1.3 key update and asks the peer to update its keys too.
    pub async fn update_keys(&mut self) -> io::Result<()> {
        let mut side = self.shared.send.lock().await;
        if side.wr.is_none() {
            return Err(closed());
        }
        self.shared
            .conn
            .borrow_mut()
            .refresh_traffic_keys()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.shared.flush_queued(&mut side).await
    }

    /// TLS records sent on this connection since the split (by the writer, and for the
    /// reader: key update replies, alerts).
    pub fn records_written(&self) -> u64 {
        self.shared.records.get()
    }

    /// Socket writes (system calls) made since the split.
    pub fn socket_writes(&self) -> u64 {
        self.shared.socket_writes.get()
    }
}

impl Drop for TlsWriter {
    /// As when the socket's sending half is dropped: the peer sees the end of the stream
    /// (without close_notify). If the reader has records on their way (the alert for a bad
    /// record, say), the task that sends them shuts the half afterwards.
    fn drop(&mut self) {
        self.shared.writer_gone.set(true);
        if self.shared.flush_scheduled.get() {
            return;
        }
        if let Ok(mut side) = self.shared.send.try_lock() {
            side.wr = None;
            side.out = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]], idx: usize, skip: usize, max: usize) -> Vec<u8> {
        let mut w = Vec::new();
        window(chunks, idx, skip, max, &mut w);
        w.iter().flat_map(|s| s.iter().copied()).collect()
    }

    #[test]
    fn windows_walk_the_slices_in_order() {
        let a = [1u8, 2, 3];
        let b: [u8; 0] = [];
        let c = [4u8, 5, 6, 7];
        let chunks: [&[u8]; 3] = [&a, &b, &c];
        let (mut idx, mut skip) = (0, 0);
        let mut seen = Vec::new();
        for max in [2, 2, 1, 5] {
            let got = collect(&chunks, idx, skip, max);
            advance(&chunks, &mut idx, &mut skip, got.len());
            seen.extend(got);
        }
        assert_eq!(seen, [1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(collect(&chunks, idx, skip, 10), Vec::<u8>::new());
        assert_eq!(collect(&chunks, 0, 1, 3), [2, 3, 4]);
    }

    #[test]
    fn records_are_counted_by_their_headers() {
        let mut buf = Vec::new();
        for len in [0usize, 3, 300] {
            buf.extend_from_slice(&[0x17, 3, 3]);
            buf.extend_from_slice(&(len as u16).to_be_bytes());
            buf.extend(std::iter::repeat_n(0u8, len));
        }
        assert_eq!(count_records(&buf), 3);
        assert_eq!(count_records(&[]), 0);
        assert_eq!(count_records(&buf[..4]), 0);
    }
}
