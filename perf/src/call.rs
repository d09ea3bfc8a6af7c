//! One HTTP exchange read whole, the way the scenarios talk to a simulator, a hub or a peer
//! outside the load they measure (set-up, checks, metrics).

use bytes::Bytes;
use http_body_util::BodyExt;

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// `Content-Type`, if any.
    pub content_type: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body if the status is 2xx, else an error naming `what` and the status.
    pub fn ok(self, what: &str) -> Result<Bytes, String> {
        if (200..300).contains(&self.status) {
            Ok(self.body)
        } else {
            Err(format!(
                "{what}: {} {}",
                self.status,
                String::from_utf8_lossy(&self.body[..self.body.len().min(300)])
            ))
        }
    }
}

/// Reads the answer to a request sent with a hyper client (`client.request(req).await`) whole;
/// errors name `what` (e.g. `GET http://…`).
pub async fn whole(
    sent: Result<http::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    what: &str,
) -> Result<Answer, String> {
    let resp = sent.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{what}: {e}"))?
        .to_bytes();
    Ok(Answer {
        status,
        content_type,
        body,
    })
}
