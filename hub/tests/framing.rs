//! Request smuggling on the user listener, end to end (RFC 9112 §6.3): a request whose body
//! length is ambiguous is refused with a Kubernetes `Status`, the connection is closed, and
//! nothing hidden in its body is ever run as a request. A well-formed chunked request on the
//! same kind of connection is served, and keep-alive goes on after it.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::time::Duration;

use bytes::BytesMut;
use kubehub_hub::config::Limits;
use kubehub_hub::http::{BodyDecoder, BodyKind, BodyPart};
use kubehub_hub::metrics::CodeLabel;
use kubehub_sim::ClusterConfig;
use kubehub_testkit::stack::{self, Stack, TOKEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const CONFIGMAPS: &str = "/clusters/edge-1/api/v1/namespaces/default/configmaps";
const SECRETS: &str = "/clusters/edge-1/api/v1/namespaces/kube-system/secrets";
const WAIT: Duration = Duration::from_secs(10);

fn start() -> Stack {
    stack::start(ClusterConfig::default(), Limits::default())
}

/// One response as read off the connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// A raw HTTP/1.1 connection to the hub's user port over TLS.
struct Conn {
    tls: TlsStream<TcpStream>,
    buf: BytesMut,
}

impl Conn {
    async fn open(s: &Stack) -> Conn {
        let tls = tokio::time::timeout(WAIT, s.user_connection())
            .await
            .expect("TLS handshake with the hub timed out");
        Conn {
            tls,
            buf: BytesMut::new(),
        }
    }

    /// Sends `bytes` in one write.
    async fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// Reads more into the buffer: `Some(false)` at the end of the connection, `None` if
    /// nothing came within `WAIT`.
    async fn read_some(&mut self) -> Option<bool> {
        let mut b = [0u8; 16 * 1024];
        match tokio::time::timeout(WAIT, self.tls.read(&mut b)).await {
            Err(_) => None,
            Ok(Ok(0)) => Some(false),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&b[..n]);
                Some(true)
            }
            // A TCP close without close_notify is an end too.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Some(false),
            Ok(Err(e)) => panic!("read: {e}"),
        }
    }

    /// Reads more into the buffer; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        self.read_some().await.unwrap_or_else(|| {
            panic!(
                "nothing from the hub within {WAIT:?}; read so far: {:?}",
                String::from_utf8_lossy(&self.buf)
            )
        })
    }

    /// The next response (framed by its Content-Length, chunked, or the connection's end).
    async fn response(&mut self) -> Response {
        let (len, status, headers) = loop {
            let mut h = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut h);
            if let httparse::Status::Complete(len) = r.parse(&self.buf).unwrap() {
                let headers = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                break (len, r.code.unwrap(), headers);
            }
            assert!(
                self.fill().await,
                "the connection ended inside a response head: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
        };
        let _ = self.buf.split_to(len);
        let mut resp = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let kind = if resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
        {
            Some(BodyKind::Chunked)
        } else {
            resp.header("content-length")
                .map(|n| BodyKind::Length(n.parse().unwrap()))
        };
        let Some(kind) = kind else {
            while self.fill().await {}
            resp.body = self.buf.split().to_vec();
            return resp;
        };
        // The chunk syntax of a response is a request's: the hub's own decoder reads it.
        let mut dec = BodyDecoder::new(kind);
        loop {
            match dec.decode(&mut self.buf, usize::MAX).unwrap() {
                BodyPart::Data(d) => resp.body.extend_from_slice(&d),
                BodyPart::End => return resp,
                BodyPart::More => assert!(self.fill().await, "the connection ended mid-body"),
            }
        }
    }

    /// Asserts that the hub sends nothing more and closes the connection.
    async fn assert_closed_with_nothing_more(&mut self) {
        let closed = loop {
            match self.read_some().await {
                Some(true) => {}
                Some(false) => break true,
                None => break false,
            }
        };
        assert!(
            self.buf.is_empty(),
            "the hub answered something more (a smuggled request?): {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        assert!(closed, "the connection is still open after {WAIT:?}");
    }
}

/// A GET for every secret in kube-system: what a smuggler hides in a body.
fn smuggled_get() -> String {
    format!("GET {SECRETS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n")
}

/// The TE.CL layout: a chunked body whose one chunk is `inner`, sized so that its
/// size line is exactly 4 bytes (`xx\r\n`), sent with `Content-Length: 4`. A server framing by
/// the Content-Length takes the size line as the body and reads `inner` as the next request.
fn te_cl(inner: &str) -> (String, String) {
    assert!((16..256).contains(&inner.len()), "{}", inner.len());
    let body = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    ("Content-Length: 4".into(), body)
}

/// The classic layout (CL.TE): a Content-Length covering everything, so a proxy in front that
/// frames by it forwards one request; the chunked body ends at once, so a server framing by
/// Transfer-Encoding (the hub did, without closing) reads `inner` as a second request.
fn cl_te(inner: &str) -> (String, String) {
    let body = format!("0\r\n\r\n{inner}");
    (format!("Content-Length: {}", body.len()), body)
}

fn post_head(framing: &str) -> String {
    format!(
        "POST {CONFIGMAPS} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\n{framing}\r\n\r\n"
    )
}

fn count(s: &Stack, code: u16) -> u64 {
    s.hub
        .metrics
        .requests
        .get_or_create(&CodeLabel { code })
        .get()
}

/// Sends one smuggling attempt (`fields` framing `body`, which hides a GET of every secret in
/// kube-system) on a fresh connection; asserts the one answer is a `Status` with `code` that
/// mentions `why`, that the connection then closes with nothing more, and that neither the
/// POST nor the hidden GET reached the cluster.
fn refused_and_closed(s: &Stack, fields: &str, body: &str, code: u16, why: &str) {
    let attempt = post_head(fields) + body;
    let resp = s.rt.block_on(async {
        let mut c = Conn::open(s).await;
        c.send(attempt.as_bytes()).await;
        let resp = c.response().await;
        c.assert_closed_with_nothing_more().await;
        resp
    });
    assert_eq!(resp.status, code, "{fields}: {resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let status = resp.json();
    assert_eq!(status["kind"], "Status", "{status}");
    assert_eq!(status["apiVersion"], "v1", "{status}");
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(status["code"], code, "{status}");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains(why), "{fields}: {message:?}");
    for served in [200, 201] {
        assert_eq!(count(s, served), 0, "{fields}: a request was served");
    }
}

#[test]
fn content_length_with_chunked_is_refused_and_the_hidden_request_never_runs() {
    let s = start();
    let why = "both Content-Length and Transfer-Encoding";
    let get = smuggled_get();
    // CL.TE: what the hub was open to when it framed by Transfer-Encoding and kept the
    // connection (the GET ran as a second request).
    let (cl, body) = cl_te(&get);
    refused_and_closed(
        &s,
        &format!("{cl}\r\nTransfer-Encoding: chunked"),
        &body,
        400,
        why,
    );
    // TE.CL: the GET inside the chunk, for a server that frames by Content-Length.
    let (te_cl_length, te_cl_body) = te_cl(&get);
    refused_and_closed(
        &s,
        &format!("{te_cl_length}\r\nTransfer-Encoding: chunked"),
        &te_cl_body,
        400,
        why,
    );
    // The other order, and an obfuscated coding next to a Content-Length.
    refused_and_closed(
        &s,
        &format!("Transfer-Encoding: chunked\r\n{cl}"),
        &body,
        400,
        why,
    );
    refused_and_closed(
        &s,
        &format!("{cl}\r\nTransfer-Encoding: xchunked"),
        &body,
        400,
        why,
    );
    assert_eq!(count(&s, 400), 4);
}

#[test]
fn two_transfer_encodings_are_refused_and_the_hidden_request_never_runs() {
    let s = start();
    let get = smuggled_get();
    // The chunked body ends at once and the GET follows: a server that honours the first
    // field frames by chunked and runs the GET; one that honours the last (an unknown
    // coding) does not. Go's net/http (kube-apiserver) answers 501 to anything but one
    // `chunked` field, and so does the hub, closing the connection.
    let (_, body) = cl_te(&get);
    for te in [
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: cow",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked, identity",
    ] {
        refused_and_closed(&s, te, &body, 501, "unsupported transfer encoding");
    }
    let (_, body) = te_cl(&get);
    refused_and_closed(
        &s,
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        &body,
        501,
        "unsupported transfer encoding",
    );
    assert_eq!(count(&s, 501), 4);
    // Whitespace before the colon hides the field from some parsers and not others: 400.
    let (cl, body) = cl_te(&get);
    refused_and_closed(
        &s,
        &format!("{cl}\r\nTransfer-Encoding : chunked"),
        &body,
        400,
        "colon",
    );
}

#[test]
fn a_well_formed_chunked_request_is_served_and_keep_alive_goes_on() {
    let s = start();
    let body = r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"framing-control"},"data":{"k":"v"}}"#;
    let (a, b) = body.split_at(20);
    let post = format!(
        "{}{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        post_head("Transfer-Encoding: chunked"),
        a.len(),
        b.len()
    );
    let get = format!(
        "GET {CONFIGMAPS}/framing-control HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    let (created, got, third) = s.rt.block_on(async {
        let mut c = Conn::open(&s).await;
        c.send(post.as_bytes()).await;
        let created = c.response().await;
        c.send(get.as_bytes()).await;
        let got = c.response().await;
        // Still open: a third request on the same connection is served too.
        c.send(get.as_bytes()).await;
        let third = c.response().await;
        (created, got, third)
    });
    assert_eq!(
        created.status,
        201,
        "{created:?}: {}",
        String::from_utf8_lossy(&created.body)
    );
    assert_ne!(created.header("connection"), Some("close"));
    assert_eq!(created.json()["metadata"]["name"], "framing-control");
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_ne!(got.header("connection"), Some("close"));
    let cm = got.json();
    assert_eq!(cm["kind"], "ConfigMap");
    assert_eq!(cm["data"]["k"], "v");
    assert_eq!(third.status, 200);
}
