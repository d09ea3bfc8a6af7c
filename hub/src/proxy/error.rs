//! `error`: everything that can end a request on the proxy path, and the one place that turns
//! it into an answer.
//!
//! The rule that matters most lives in [`ProxyError::status`]: **once a request may have
//! reached the agent, the hub never answers 503 with `Retry-After`.** client-go retries 503 and
//! 429 up to ten times; a retried `POST` or `PATCH` that had in fact been executed would run
//! twice (kubectl sees `AlreadyExists`, or worse, a second side effect). So the phase a
//! failure happened in is part of the error, and a lost tunnel after the request left is a 502.

use std::time::Duration;

use kubehub_kapi::Status;
use kubehub_wire::ErrorCode;

/// How far a request got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// The request never left the hub: a retry is safe.
    Hub,
    /// The request head was handed to the tunnel: the agent may have executed it.
    MaybeAgent,
}

/// Why a request was not (or not completely) answered.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No valid KubeHub bearer token (and why).
    #[error("unauthorized: {0}")]
    Unauthorized(kubehub_access::AuthnError),
    /// The path does not start with `/clusters/{id}`, and the token is not bound to exactly
    /// one cluster (the message says what to do).
    #[error("{0}")]
    NoCluster(String),
    /// This hub does not serve the cluster.
    #[error("cluster {0:?} is not served here")]
    UnknownCluster(String),
    /// The path cannot be read as a Kubernetes request (as kube-apiserver answers it).
    #[error("bad path: {}", .0.message)]
    BadPath(Box<Status>),
    /// The authorizer said no.
    #[error("forbidden: {}", .0.message)]
    Forbidden(Box<Status>),
    /// A ban in force (`crate::bans`): answered as `Forbidden` is (403), counted apart.
    #[error("banned: {}", .0.message)]
    Banned(Box<Status>),
    /// A body the hub reads itself (a review) is invalid (as kube-apiserver answers it).
    #[error("invalid: {}", .0.message)]
    Invalid(Box<Status>),
    /// The cluster's agent is not connected (or its tunnel closed while the request was
    /// being handed over).
    #[error("cluster {cluster:?} is offline: {why}")]
    Offline {
        /// The cluster.
        cluster: String,
        /// Why, for the user.
        why: &'static str,
    },
    /// The agent's concurrent stream limit is reached.
    #[error("too many concurrent requests to cluster {0:?}")]
    Busy(String),
    /// The request head cannot be carried through the tunnel (too large for a frame).
    #[error("the request cannot be forwarded: {0}")]
    Unforwardable(String),
    /// The request body could not be decoded.
    #[error("bad request body: {0}")]
    BadBody(String),
    /// A body the hub reads itself (a review) is larger than it reads.
    #[error("the request body is larger than {0} bytes, the most the hub reads of a review")]
    TooLarge(usize),
    /// The client stopped sending its request body.
    #[error("the request body stopped arriving for {0:?}")]
    BodyTimeout(Duration),
    /// No response head within the deadline.
    #[error("cluster {cluster:?} did not answer within {after:?}")]
    Timeout {
        /// The cluster.
        cluster: String,
        /// The deadline.
        after: Duration,
    },
    /// The agent reset the stream before answering.
    #[error("cluster {cluster:?}: the agent could not complete the request ({code})")]
    AgentReset {
        /// The cluster.
        cluster: String,
        /// The agent's code.
        code: ErrorCode,
    },
    /// The client closed its connection, or writing to it failed: nobody to answer.
    #[error("the client went away")]
    ClientGone,
    /// The admit phase refused it (a limit, or the memory ceiling): before anything left the
    /// hub, so 429 / 503 with `Retry-After`.
    #[error("{0}")]
    Admission(crate::admission::Denied),
}

impl ProxyError {
    /// What to answer, given how far the request got; `None` when nobody is left to answer.
    pub fn status(&self, reached: Reached) -> Option<Status> {
        let s = match self {
            ProxyError::Unauthorized(e) => super::authenticate::unauthorized(e),
            ProxyError::NoCluster(why) => Status::new(404, "NotFound", why.clone()),
            ProxyError::UnknownCluster(c) => Status::not_found("", "clusters", c),
            ProxyError::Forbidden(s)
            | ProxyError::Banned(s)
            | ProxyError::BadPath(s)
            | ProxyError::Invalid(s) => (**s).clone(),
            // The one rule: 503 (and its Retry-After) only while a retry cannot repeat work.
            ProxyError::Offline { cluster, why } => match reached {
                Reached::Hub => {
                    Status::unavailable(format!("cluster {cluster:?} is offline: {why}"))
                }
                Reached::MaybeAgent => Status::new(
                    502,
                    "BadGateway",
                    format!("cluster {cluster:?}: the tunnel closed before the agent answered"),
                ),
            },
            ProxyError::Busy(_) => Status::new(429, "TooManyRequests", self.to_string()),
            ProxyError::BadBody(_) | ProxyError::Unforwardable(_) => {
                Status::bad_request(self.to_string())
            }
            ProxyError::Timeout { .. } => Status::new(504, "Timeout", self.to_string()),
            ProxyError::BodyTimeout(_) => Status::new(408, "Timeout", self.to_string()),
            ProxyError::TooLarge(_) => Status::new(413, "RequestEntityTooLarge", self.to_string()),
            ProxyError::AgentReset { .. } => Status::new(502, "BadGateway", self.to_string()),
            ProxyError::ClientGone => return None,
            ProxyError::Admission(d) => {
                let mut s = match d {
                    crate::admission::Denied::Memory { .. } => {
                        Status::new(503, "ServiceUnavailable", d.to_string())
                    }
                    _ => Status::new(429, "TooManyRequests", d.to_string()),
                };
                s.details = Some(Box::new(kubehub_kapi::status::Details {
                    retry_after_seconds: Some(d.retry_after_secs()),
                    ..Default::default()
                }));
                s
            }
        };
        Some(s)
    }

    /// Short label for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::NoCluster(_) | ProxyError::UnknownCluster(_) => "not_found",
            ProxyError::Forbidden(_) => "forbidden",
            ProxyError::Banned(_) => "banned",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::Invalid(_) => "invalid",
            ProxyError::Offline { .. } => "offline",
            ProxyError::Busy(_) => "busy",
            ProxyError::BadBody(_) => "bad_body",
            ProxyError::TooLarge(_) => "too_large",
            ProxyError::Unforwardable(_) => "unforwardable",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::BodyTimeout(_) => "body_timeout",
            ProxyError::AgentReset { .. } => "agent_reset",
            ProxyError::ClientGone => "client_gone",
            ProxyError::Admission(crate::admission::Denied::Memory { .. }) => "overloaded",
            ProxyError::Admission(_) => "throttled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offline() -> ProxyError {
        ProxyError::Offline {
            cluster: "edge-1".into(),
            why: "its agent disconnected",
        }
    }

    #[test]
    fn retryable_answers_only_before_the_request_left_the_hub() {
        let before = offline().status(Reached::Hub).unwrap();
        assert_eq!(before.code, 503, "a retry is safe: client-go may repeat it");
        let after = offline().status(Reached::MaybeAgent).unwrap();
        assert_eq!(after.code, 502, "the agent may have run it: no retry");
        // No error at all answers 503 or 429 once the request may have reached the agent,
        // except Busy, which can only happen before the stream opened.
        let reset = ProxyError::AgentReset {
            cluster: "edge-1".into(),
            code: ErrorCode::UPSTREAM,
        };
        assert_eq!(reset.status(Reached::MaybeAgent).unwrap().code, 502);
        let timeout = ProxyError::Timeout {
            cluster: "edge-1".into(),
            after: Duration::from_secs(60),
        };
        assert_eq!(timeout.status(Reached::MaybeAgent).unwrap().code, 504);
        assert!(ProxyError::ClientGone.status(Reached::Hub).is_none());
    }

    #[test]
    fn admission_refusals_are_429_or_503_with_retry_after() {
        use crate::admission::Denied;
        let rate = ProxyError::Admission(Denied::Rate {
            whose: "tenant \"acme\"".into(),
            reason: "tenant_rate",
            rate: 50,
            burst: 100,
            retry_after: Duration::from_millis(2300),
        })
        .status(Reached::Hub)
        .unwrap();
        assert_eq!((rate.code, rate.reason), (429, "TooManyRequests"));
        assert!(rate
            .message
            .contains("tenant \"acme\" is over its rate limit of 50"));
        assert_eq!(rate.details.as_ref().unwrap().retry_after_seconds, Some(3));
        let head = crate::http::status_response(&rate, true, true, b"");
        assert!(String::from_utf8_lossy(&head).contains("Retry-After: 3\r\n"));
        let memory = ProxyError::Admission(Denied::Memory { rss: 2, limit: 1 })
            .status(Reached::Hub)
            .unwrap();
        assert_eq!((memory.code, memory.reason), (503, "ServiceUnavailable"));
        assert!(memory.message.contains("over its memory ceiling"));
    }

    #[test]
    fn answers_are_kubernetes_statuses() {
        let unauthorized = ProxyError::Unauthorized(kubehub_access::AuthnError::Unknown)
            .status(Reached::Hub)
            .unwrap();
        assert_eq!(
            (unauthorized.code, unauthorized.reason),
            (401, "Unauthorized")
        );
        assert_eq!(
            ProxyError::TooLarge(65536)
                .status(Reached::Hub)
                .unwrap()
                .code,
            413
        );
        let nf = ProxyError::UnknownCluster("x".into())
            .status(Reached::Hub)
            .unwrap();
        assert_eq!((nf.code, nf.reason), (404, "NotFound"));
        assert_eq!(
            ProxyError::Busy("x".into())
                .status(Reached::Hub)
                .unwrap()
                .code,
            429
        );
    }
}
