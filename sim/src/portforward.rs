//! `kubectl port-forward`: the kubelet's end of a port-forward SPDY session, and what listens
//! on a simulated pod's ports.
//!
//! Per forwarded connection kubectl opens two streams, `error` and `data`, paired by their
//! `requestid` header and naming the `port`. The simulator answers on the ports the pod's
//! containers declare (`spec.containers[].ports[].containerPort`, any protocol); a connection to
//! another port fails as a kubelet's does when nothing listens there (the reason is written on
//! the `error` stream, and kubectl reports it). On a declared port:
//!
//! * a connection whose first bytes are an HTTP/1.x request line gets HTTP/1.1 answers: `200`
//!   with a `text/plain` body naming the pod, the port, the method and the path (`HEAD`: no
//!   body); keep-alive as HTTP/1.1 has it (HTTP/1.0 and `Connection: close` close after the
//!   answer); request bodies with `Content-Length` are read and discarded; a malformed request
//!   gets `400`, a chunked body `501`, an oversized head `431`, each closing the connection;
//! * anything else is echoed back until the client half-closes.
//!
//! Connections are independent (a task each); a session serves any number of them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use kubehub_kapi::remotecommand::{StreamType, PORT, REQUEST_ID, STREAM_TYPE};
use kubehub_kapi::spdy::rst;
use tokio::sync::mpsc;

use super::spdy::{Session, Stream, StreamTx};

/// How long the first stream of a pair waits for the other.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

/// Pairs waiting for their second stream, at most.
const MAX_PENDING: usize = 256;

/// Forwarded connections one session serves at once; more are refused.
const MAX_CONNECTIONS: usize = 1024;

/// The longest request head answered.
const MAX_HEAD: usize = 16 * 1024;

/// The pod a session forwards to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod: String,
    /// Pod uid.
    pub uid: String,
    /// The ports its containers declare.
    pub ports: Vec<u16>,
}

struct Pending {
    error: Option<Stream>,
    data: Option<Stream>,
    since: Instant,
}

/// Serves a port-forward session until the client goes away.
pub async fn serve(mut session: Session, target: Target) {
    let target = Arc::new(target);
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(stream) = session.next_stream().await {
        while tasks.try_join_next().is_some() {}
        let ty = stream.headers.get(STREAM_TYPE).and_then(StreamType::parse);
        let Some(request) = stream.headers.get(REQUEST_ID).map(str::to_owned) else {
            tracing::debug!("port-forward stream {} without a request id", stream.id);
            stream.tx.reset(rst::PROTOCOL_ERROR).await;
            continue;
        };
        pending.retain(|_, p| p.since.elapsed() < PAIR_TIMEOUT);
        if !pending.contains_key(&request) && pending.len() >= MAX_PENDING {
            stream.tx.reset(rst::REFUSED_STREAM).await;
            continue;
        }
        let slot = pending.entry(request.clone()).or_insert_with(|| Pending {
            error: None,
            data: None,
            since: Instant::now(),
        });
        match ty {
            Some(StreamType::Error) if slot.error.is_none() => slot.error = Some(stream),
            Some(StreamType::Data) if slot.data.is_none() => slot.data = Some(stream),
            _ => {
                stream.tx.reset(rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if slot.error.is_some() && slot.data.is_some() {
            if let Some(Pending {
                error: Some(error),
                data: Some(data),
                ..
            }) = pending.remove(&request)
            {
                if tasks.len() >= MAX_CONNECTIONS {
                    let _ = error
                        .tx
                        .send(Bytes::from_static(b"too many forwarded connections"))
                        .await;
                    let _ = error.tx.finish().await;
                    data.tx.reset(rst::REFUSED_STREAM).await;
                    continue;
                }
                tasks.spawn(forward(target.clone(), error, data));
            }
        }
    }
    drop(pending);
    // The client is gone: connections see their streams end and finish.
    while tasks.join_next().await.is_some() {}
    session.close().await;
}

async fn forward(target: Arc<Target>, error: Stream, data: Stream) {
    let port = data.headers.get(PORT).and_then(|p| p.parse::<u16>().ok());
    let Stream { rx, tx, .. } = data;
    match port {
        Some(port) if target.ports.contains(&port) => {
            respond(rx, &tx, &target, port).await;
        }
        Some(port) => {
            let msg = format!(
                "failed to connect to localhost:{port} inside namespace \"/var/run/netns/cni-{uid}\", IPv4: dial tcp4 127.0.0.1:{port}: connect: connection refused IPv6 dial tcp6 [::1]:{port}: connect: connection refused ",
                uid = target.uid
            );
            let _ = error.tx.send(Bytes::from(msg)).await;
        }
        None => {
            let raw = data.headers.get(PORT).unwrap_or("");
            let _ = error
                .tx
                .send(Bytes::from(format!("invalid port {raw:?}")))
                .await;
        }
    }
    let _ = tx.finish().await;
    let _ = error.tx.finish().await;
}

const METHODS: [&str; 9] = [
    "GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE ",
];

enum Kind {
    Http,
    Other,
    Undecided,
}

fn classify(b: &[u8]) -> Kind {
    for m in METHODS {
        let m = m.as_bytes();
        if b.starts_with(m) {
            return Kind::Http;
        }
        if m.starts_with(b) {
            return Kind::Undecided;
        }
    }
    Kind::Other
}

/// What listens on a declared port.
async fn respond(mut rx: mpsc::Receiver<Bytes>, tx: &StreamTx, target: &Target, port: u16) {
    let mut buf = BytesMut::new();
    loop {
        match rx.recv().await {
            None => return,
            Some(b) => buf.extend_from_slice(&b),
        }
        match classify(&buf) {
            Kind::Undecided => continue,
            Kind::Http => return http(rx, tx, buf, target, port).await,
            Kind::Other => break,
        }
    }
    // Echo.
    if tx.send(buf.freeze()).await.is_err() {
        return;
    }
    while let Some(b) = rx.recv().await {
        if tx.send(b).await.is_err() {
            return;
        }
    }
}

struct Head {
    method: String,
    path: String,
    keep_alive: bool,
    content_length: u64,
    chunked: bool,
}

enum Parsed {
    Complete(Head, usize),
    Partial,
    Invalid,
}

fn parse_head(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let n = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Invalid,
    };
    let mut keep_alive = req.version == Some(1);
    let mut content_length = 0u64;
    let mut chunked = false;
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value).to_ascii_lowercase();
        if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                match token {
                    "close" => keep_alive = false,
                    "keep-alive" => keep_alive = true,
                    _ => {}
                }
            }
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse() {
                Ok(n) => content_length = n,
                Err(_) => return Parsed::Invalid,
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    Parsed::Complete(
        Head {
            method: req.method.unwrap_or("GET").to_owned(),
            path: req.path.unwrap_or("/").to_owned(),
            keep_alive,
            content_length,
            chunked,
        },
        n,
    )
}

fn answer(code: u16, reason: &str, body: &str, keep_alive: bool, head_only: bool) -> Bytes {
    let mut s = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !keep_alive {
        s.push_str("Connection: close\r\n");
    }
    s.push_str("\r\n");
    if !head_only {
        s.push_str(body);
    }
    Bytes::from(s)
}

async fn http(
    mut rx: mpsc::Receiver<Bytes>,
    tx: &StreamTx,
    mut buf: BytesMut,
    target: &Target,
    port: u16,
) {
    loop {
        // The request head.
        let (head, n) = loop {
            match parse_head(&buf) {
                Parsed::Complete(h, n) => break (h, n),
                Parsed::Invalid => {
                    let _ = tx
                        .send(answer(400, "Bad Request", "bad request\n", false, false))
                        .await;
                    return;
                }
                Parsed::Partial if buf.len() > MAX_HEAD => {
                    let _ = tx
                        .send(answer(
                            431,
                            "Request Header Fields Too Large",
                            "request head too large\n",
                            false,
                            false,
                        ))
                        .await;
                    return;
                }
                Parsed::Partial => match rx.recv().await {
                    Some(b) => buf.extend_from_slice(&b),
                    // The client half-closed between requests (or mid-head): done.
                    None => return,
                },
            }
        };
        buf.advance(n);
        if head.chunked {
            let _ = tx
                .send(answer(
                    501,
                    "Not Implemented",
                    "chunked request bodies are not supported\n",
                    false,
                    false,
                ))
                .await;
            return;
        }
        // The body, read and discarded.
        let mut left = head.content_length;
        while left > 0 {
            if buf.is_empty() {
                match rx.recv().await {
                    Some(b) => buf.extend_from_slice(&b),
                    None => return,
                }
            }
            let take = (buf.len() as u64).min(left) as usize;
            buf.advance(take);
            left -= take as u64;
        }
        let body = format!(
            "pod {}/{} port {port}: {} {}\n",
            target.namespace, target.pod, head.method, head.path
        );
        let head_only = head.method == "HEAD";
        if tx
            .send(answer(200, "OK", &body, head.keep_alive, head_only))
            .await
            .is_err()
            || !head.keep_alive
        {
            return;
        }
        if buf.is_empty() {
            match rx.recv().await {
                Some(b) => buf.extend_from_slice(&b),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            namespace: "shop".into(),
            pod: "web-0".into(),
            uid: "u".into(),
            ports: vec![8080],
        }
    }

    async fn collect(mut rx: mpsc::Receiver<kubehub_kapi::spdy::Frame>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(f) = rx.recv().await {
            if let kubehub_kapi::spdy::Frame::Data { data, .. } = f {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    async fn exchange(input: &[&[u8]]) -> String {
        let (out_tx, out_rx) = mpsc::channel(64);
        let tx = StreamTx::for_test(1, out_tx);
        let (in_tx, in_rx) = mpsc::channel(64);
        for chunk in input {
            in_tx.send(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        drop(in_tx);
        respond(in_rx, &tx, &target(), 8080).await;
        drop(tx);
        String::from_utf8(collect(out_rx).await).unwrap()
    }

    #[tokio::test]
    async fn http_keep_alive_and_close() {
        let out = exchange(&[
            b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz",
            b"HEAD /c HTTP/1.1\r\nConnection: close\r\n\r\nGET /never HTTP/1.1\r\n\r\n",
        ])
        .await;
        let answers: Vec<&str> = out.split("HTTP/1.1 ").filter(|s| !s.is_empty()).collect();
        assert_eq!(answers.len(), 3, "{out}");
        assert!(
            answers[0].starts_with("200 OK\r\n")
                && answers[0].ends_with("pod shop/web-0 port 8080: GET /a\n"),
            "{out}"
        );
        assert!(
            answers[1].ends_with("pod shop/web-0 port 8080: POST /b\n"),
            "{out}"
        );
        assert!(
            answers[2].contains("Connection: close\r\n") && answers[2].ends_with("\r\n\r\n"),
            "{out}"
        );
        // HTTP/1.0 closes after one answer.
        let out = exchange(&[b"GET / HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n"]).await;
        assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
        let out = exchange(&[b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n"]).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }

    #[tokio::test]
    async fn anything_else_is_echoed() {
        assert_eq!(
            exchange(&[b"GE", b"Tx hello", b" world"]).await,
            "GETx hello world"
        );
        assert_eq!(exchange(&[b"\x00\x01binary"]).await, "\x00\x01binary");
    }
}
