//! `authenticate`: who is asking. The request's `Authorization: Bearer khT.…` token, looked up
//! by its SHA-256 in the access index ([`kubehub_access::Index::authenticate`]; fed by the
//! metaserver or a static file, see [`crate::access`]). The answer is the token's
//! [`Identity`]: user, tenant, effective groups, the clusters the token is bound to. It is
//! the first phase: a token bound to one cluster may leave the `/clusters/{id}` prefix out,
//! so the cluster is resolved from it.
//!
//! A refusal is kube-apiserver's 401 (`Status`, reason `Unauthorized`) saying which of these
//! it was: no token, not a bearer token, not a KubeHub token, unknown or revoked, expired at
//! a time. The lookup does not allocate.

use std::sync::Arc;

use kubehub_access::{AuthnError, Identity, Index};
use kubehub_kapi::Status;

use super::error::ProxyError;
use crate::http::RequestHead;
use crate::metrics::{Metrics, ReasonLabel};

/// The authenticate phase: the identity the request's bearer token stands for, or 401.
pub fn authenticate(
    index: &Index,
    metrics: &Metrics,
    head: &RequestHead,
) -> Result<Arc<Identity>, ProxyError> {
    index
        .authenticate(head.header("authorization"), crate::access::unix_now())
        .map_err(|e| {
            metrics
                .unauthenticated
                .get_or_create(&ReasonLabel { reason: reason(&e) })
                .inc();
            ProxyError::Unauthorized(e)
        })
}

/// The metric label of a refusal.
fn reason(e: &AuthnError) -> &'static str {
    match e {
        AuthnError::Missing => "missing",
        AuthnError::NotBearer => "not_bearer",
        AuthnError::Malformed(_) => "malformed",
        AuthnError::Unknown => "unknown",
        AuthnError::Expired { .. } => "expired",
    }
}

/// The 401 for a refusal.
pub fn unauthorized(e: &AuthnError) -> Status {
    Status::new(401, "Unauthorized", format!("Unauthorized: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(auth: Option<&str>) -> RequestHead {
        let mut raw = String::from("GET /clusters/edge-1/api HTTP/1.1\r\nHost: hub\r\n");
        if let Some(a) = auth {
            raw.push_str(&format!("Authorization: {a}\r\n"));
        }
        raw.push_str("\r\n");
        let mut buf = bytes::BytesMut::from(raw.as_bytes());
        crate::http::parse_head(&mut buf, 4096).unwrap().unwrap()
    }

    #[test]
    fn every_refusal_says_why() {
        use kubehub_access::build::{mint, snapshot, tenant, user};
        let (token, live) = mint("alice", "acme", &["edge-1"], 0);
        let (expired, old) = mint("alice", "acme", &["edge-1"], 1_000_000_000);
        let index = Index::new();
        index
            .apply(&snapshot(
                1,
                vec![tenant("acme"), user("alice", "acme", &[]), live, old],
            ))
            .unwrap();
        let m = Metrics::new();
        let ok = authenticate(&index, &m, &head(Some(&format!("Bearer {token}")))).unwrap();
        assert_eq!(
            (ok.user.as_str(), &*ok.clusters),
            ("alice", &["edge-1".to_owned()][..])
        );
        let message = |auth: Option<&str>| {
            let e = authenticate(&index, &m, &head(auth)).unwrap_err();
            let s = e.status(super::super::error::Reached::Hub).unwrap();
            assert_eq!((s.code, s.reason), (401, "Unauthorized"));
            s.message
        };
        assert!(message(None).contains("no credentials"));
        assert!(message(Some("Basic YWxpY2U6cHc=")).contains("not Bearer"));
        assert!(message(Some("Bearer alice-token")).contains("not a KubeHub token"));
        assert!(message(Some(&format!("Bearer {}", &token[..20]))).contains("not a KubeHub token"));
        let forged = format!(
            "{}{}",
            &token[..token.len() - 1],
            if token.ends_with('A') { 'B' } else { 'A' }
        );
        assert!(message(Some(&format!("Bearer {forged}"))).contains("unknown or has been revoked"));
        assert!(
            message(Some(&format!("Bearer {expired}"))).contains("expired at 2001-09-09T01:46:40Z")
        );
        let text = m.encode();
        assert!(
            text.contains("kubehub_hub_unauthenticated_total{reason=\"expired\"} 1"),
            "{text}"
        );
    }
}
