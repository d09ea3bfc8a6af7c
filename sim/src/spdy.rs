//! A SPDY/3.1 session, server side, over any byte stream (an upgraded HTTP connection, or the
//! inside of a WebSocket tunnel): the kubelet's end of kubectl's SPDY transport.
//!
//! Frames are [`kubehub_kapi::spdy`]'s. Two tasks drive a session: a reader (decodes, answers
//! SYN_STREAM with SYN_REPLY and PING with PING, hands new streams to the consumer, routes DATA
//! to each stream's bounded channel) and a writer (encodes what the streams send, batching
//! frames into one socket write). Like Go's `spdystream` there is no flow control: a stream
//! whose consumer is slow stops the reader (TCP pushes back on the client); everything queued
//! is bounded (per stream [`STREAM_DEPTH`] chunks, [`WRITE_DEPTH`] frames towards the client).
//!
//! A session ends when the client closes the connection, or when the consumer calls
//! [`Session::close`]: the writer flushes and shuts its half down, and the reader keeps reading
//! (discarding) for a moment so that the client's last bytes do not turn the close into a
//! reset.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kubehub_kapi::spdy::{goaway, rst, Decoder, Encoder, Frame, Headers, MAX_FRAME_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Chunks queued per inbound stream before the reader waits for its consumer.
pub const STREAM_DEPTH: usize = 16;

/// Frames queued towards the client before senders wait.
pub const WRITE_DEPTH: usize = 32;

/// The largest DATA frame this side sends.
pub const MAX_DATA: usize = 64 * 1024;

/// The largest frame accepted from the client (kubectl sends at most 32 KiB per frame).
const MAX_INBOUND_FRAME: usize = 1024 * 1024;

/// The largest decompressed header block accepted.
const MAX_HEADER_BLOCK: usize = 64 * 1024;

/// How long a closing session keeps reading for the client's last bytes.
const LINGER: Duration = Duration::from_secs(5);

/// The stream was reset or the session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the SPDY session is closed")]
pub struct Closed;

/// Sends on one stream.
#[derive(Debug, Clone)]
pub struct StreamTx {
    id: u32,
    out: mpsc::Sender<Frame>,
}

impl StreamTx {
    #[cfg(test)]
    pub(crate) fn for_test(id: u32, out: mpsc::Sender<Frame>) -> StreamTx {
        StreamTx { id, out }
    }

    /// The stream's id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends bytes (as DATA frames of at most [`MAX_DATA`]).
    pub async fn send(&self, mut data: Bytes) -> Result<(), Closed> {
        while !data.is_empty() {
            let piece = data.split_to(data.len().min(MAX_DATA));
            self.out
                .send(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: piece,
                })
                .await
                .map_err(|_| Closed)?;
        }
        Ok(())
    }

    /// Half-closes the stream (an empty DATA frame with FIN).
    pub async fn finish(&self) -> Result<(), Closed> {
        self.out
            .send(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await
            .map_err(|_| Closed)
    }

    /// Aborts the stream (RST_STREAM).
    pub async fn reset(&self, status: u32) {
        let _ = self
            .out
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await;
    }
}

/// A stream the client opened.
#[derive(Debug)]
pub struct Stream {
    /// Its id.
    pub id: u32,
    /// The SYN_STREAM's headers.
    pub headers: Headers,
    /// What the client sends on it; ends at the client's FIN (or RST, or the session's end).
    pub rx: mpsc::Receiver<Bytes>,
    /// This side's half.
    pub tx: StreamTx,
}

/// A running session.
#[derive(Debug)]
pub struct Session {
    streams: mpsc::Receiver<Stream>,
    stop: watch::Sender<bool>,
    gone: watch::Receiver<bool>,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// Starts a session on `io` (on the current tokio runtime).
pub fn start<IO>(io: IO) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(io);
    let (out_tx, out_rx) = mpsc::channel(WRITE_DEPTH);
    let (streams_tx, streams) = mpsc::channel(16);
    let (stop, stop_rx) = watch::channel(false);
    let (gone_tx, gone) = watch::channel(false);
    let writer = tokio::spawn(write_loop(w, out_rx));
    let reader = tokio::spawn(async move {
        read_loop(r, out_tx, streams_tx, stop_rx).await;
        let _ = gone_tx.send(true);
    });
    Session {
        streams,
        stop,
        gone,
        reader,
        writer,
    }
}

impl Session {
    /// The next stream the client opens; `None` once the client has gone.
    pub async fn next_stream(&mut self) -> Option<Stream> {
        self.streams.recv().await
    }

    /// Resolves when the client's side of the connection has ended (EOF, error, or a protocol
    /// error that ended the session).
    pub fn gone(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut gone = self.gone.clone();
        async move {
            let _ = gone.wait_for(|g| *g).await;
        }
    }

    /// Ends the session once everything sent so far is written. Every [`StreamTx`] must have
    /// been dropped (or the writer waits for them up to the linger time).
    pub async fn close(self) {
        let Session {
            streams,
            stop,
            gone: _,
            mut reader,
            mut writer,
        } = self;
        drop(streams);
        let _ = stop.send(true);
        if tokio::time::timeout(LINGER, &mut writer).await.is_err() {
            writer.abort();
        }
        if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
            reader.abort();
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Frame>) {
    let mut enc = Encoder::new();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    while let Some(frame) = rx.recv().await {
        if let Err(e) = enc.encode(&frame, &mut buf) {
            tracing::warn!("SPDY: cannot encode a frame: {e}");
            break;
        }
        while buf.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(f) => {
                    if let Err(e) = enc.encode(&f, &mut buf) {
                        tracing::warn!("SPDY: cannot encode a frame: {e}");
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = w.shutdown().await;
}

async fn read_loop<R: AsyncRead + Unpin>(
    mut r: R,
    out: mpsc::Sender<Frame>,
    streams_tx: mpsc::Sender<Stream>,
    mut stop: watch::Receiver<bool>,
) {
    let mut dec = Decoder::with_limits(MAX_INBOUND_FRAME.min(MAX_FRAME_LEN), MAX_HEADER_BLOCK);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut inbound: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut accepting = true;
    let mut last_id = 0u32;
    loop {
        loop {
            let frame = match dec.decode(&mut buf) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("SPDY: protocol error from the client: {e}");
                    let _ = out
                        .send(Frame::GoAway {
                            last_good_stream_id: last_id,
                            status: goaway::PROTOCOL_ERROR,
                        })
                        .await;
                    return;
                }
            };
            match frame {
                Frame::SynStream {
                    stream_id,
                    fin,
                    headers,
                    ..
                } => {
                    if !accepting {
                        reset(&out, stream_id, rst::REFUSED_STREAM).await;
                        continue;
                    }
                    if stream_id <= last_id || stream_id % 2 == 0 {
                        reset(&out, stream_id, rst::PROTOCOL_ERROR).await;
                        continue;
                    }
                    last_id = stream_id;
                    // The reply goes out before anything the consumer writes on the stream.
                    if out
                        .send(Frame::SynReply {
                            stream_id,
                            fin: false,
                            headers: Headers::new(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let (tx, rx) = mpsc::channel(STREAM_DEPTH);
                    if !fin {
                        inbound.insert(stream_id, tx);
                    }
                    let stream = Stream {
                        id: stream_id,
                        headers,
                        rx,
                        tx: StreamTx {
                            id: stream_id,
                            out: out.clone(),
                        },
                    };
                    if streams_tx.send(stream).await.is_err() {
                        inbound.remove(&stream_id);
                        reset(&out, stream_id, rst::REFUSED_STREAM).await;
                    }
                }
                Frame::Data {
                    stream_id,
                    fin,
                    data,
                } => {
                    if let Some(tx) = inbound.get(&stream_id) {
                        // A consumer that dropped its receiver does not want the bytes.
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            inbound.remove(&stream_id);
                        }
                    }
                    if fin {
                        inbound.remove(&stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => {
                    inbound.remove(&stream_id);
                }
                Frame::Ping { id } => {
                    // Odd ids are the client's pings; even ones would answer ours (none sent).
                    if id % 2 == 1 && out.send(Frame::Ping { id }).await.is_err() {
                        return;
                    }
                }
                Frame::GoAway { .. } => accepting = false,
                Frame::SynReply { .. }
                | Frame::Settings { .. }
                | Frame::Headers { .. }
                | Frame::WindowUpdate { .. }
                | Frame::Unknown { .. } => {}
            }
        }
        if buf.capacity() - buf.len() < 8 * 1024 {
            buf.reserve(16 * 1024);
        }
        tokio::select! {
            n = r.read_buf(&mut buf) => match n {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                // Closing: let the writer finish (this task holds a sender), then read what
                // the client still sends until it hangs up, so the close is not a reset.
                drop(out);
                drop(inbound);
                drop(streams_tx);
                let mut sink = vec![0u8; 16 * 1024];
                let _ = tokio::time::timeout(LINGER, async {
                    while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                return;
            }
        }
    }
}

async fn reset(out: &mpsc::Sender<Frame>, stream_id: u32, status: u32) {
    let _ = out.send(Frame::RstStream { stream_id, status }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client end: encodes frames into the pipe, decodes what the session answers.
    struct Client {
        enc: Encoder,
        dec: Decoder,
        io: tokio::io::DuplexStream,
        buf: BytesMut,
    }

    impl Client {
        async fn send(&mut self, f: Frame) {
            let mut b = BytesMut::new();
            self.enc.encode(&f, &mut b).unwrap();
            self.io.write_all(&b).await.unwrap();
        }

        async fn recv(&mut self) -> Option<Frame> {
            loop {
                if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        }
    }

    fn syn(id: u32, ty: &str) -> Frame {
        Frame::open(id, Headers::new().with("streamtype", ty))
    }

    #[tokio::test]
    async fn streams_replies_pings_and_data() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let mut session = start(a);
        let mut c = Client {
            enc: Encoder::new(),
            dec: Decoder::new(),
            io: b,
            buf: BytesMut::new(),
        };
        c.send(syn(1, "stdin")).await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::SynReply { stream_id: 1, .. })
        ));
        let mut s = session.next_stream().await.unwrap();
        assert_eq!(s.headers.get("streamtype"), Some("stdin"));
        c.send(Frame::Ping { id: 1 }).await;
        assert_eq!(c.recv().await, Some(Frame::Ping { id: 1 }));
        c.send(Frame::Data {
            stream_id: 1,
            fin: true,
            data: Bytes::from_static(b"hello"),
        })
        .await;
        assert_eq!(&s.rx.recv().await.unwrap()[..], b"hello");
        assert!(s.rx.recv().await.is_none());
        let big = Bytes::from(vec![7u8; 200 * 1024]);
        s.tx.send(big.clone()).await.unwrap();
        s.tx.finish().await.unwrap();
        let mut got = Vec::new();
        loop {
            match c.recv().await.unwrap() {
                Frame::Data { data, fin, .. } => {
                    assert!(data.len() <= MAX_DATA);
                    got.extend_from_slice(&data);
                    if fin {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, big);
        // A stream id that goes backwards is refused.
        c.send(syn(1, "stdout")).await;
        assert!(matches!(
            c.recv().await,
            Some(Frame::RstStream {
                stream_id: 1,
                status: rst::PROTOCOL_ERROR
            })
        ));
        drop(s);
        let gone = session.gone();
        drop(c);
        gone.await;
        assert!(session.next_stream().await.is_none());
        session.close().await;
    }

    #[tokio::test]
    async fn garbage_ends_the_session_with_goaway() {
        let (a, mut b) = tokio::io::duplex(1024);
        let session = start(a);
        b.write_all(&[0x80, 9, 0, 1, 0, 0, 0, 0]).await.unwrap();
        let mut buf = BytesMut::new();
        let mut dec = Decoder::new();
        loop {
            if let Some(f) = dec.decode(&mut buf).unwrap() {
                assert!(matches!(
                    f,
                    Frame::GoAway {
                        status: goaway::PROTOCOL_ERROR,
                        ..
                    }
                ));
                break;
            }
            assert!(b.read_buf(&mut buf).await.unwrap() > 0);
        }
        session.gone().await;
        session.close().await;
    }
}
