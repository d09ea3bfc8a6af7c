//! Why enrolling or renewing failed.

use std::path::{Path, PathBuf};

use kubehub_pki::join::JoinTokenError;
use kubehub_pki::PkiError;

/// Why a hub or an agent could not enroll or renew (or call the metaserver).
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The join token is malformed.
    #[error("join token: {0}")]
    Token(#[from] JoinTokenError),
    /// The metaserver's CA is not the one the join token pins.
    #[error(
        "the metaserver's CA has hash {served}, but the join token pins {pinned}: refusing to \
         enroll (a wrong metaserver URL, a token from another metaserver, or someone in between)"
    )]
    CaPinMismatch {
        /// The hash in the token.
        pinned: String,
        /// The hash of the CA the metaserver sent.
        served: String,
    },
    /// The metaserver could not be reached or the exchange failed.
    #[error("{url}: {why}")]
    Meta {
        /// The URL called.
        url: String,
        /// What went wrong.
        why: String,
    },
    /// The metaserver answered with an error.
    #[error("{url} refused: HTTP {status}: {message}")]
    Refused {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The metaserver's `error`.
        message: String,
    },
    /// The metaserver's answer is not what the API says.
    #[error("{url}: unexpected answer: {why}")]
    BadAnswer {
        /// The URL called.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The certificate the metaserver issued cannot be used.
    #[error("the metaserver issued an unusable certificate: {0}")]
    BadCertificate(String),
    /// The configuration (or the certificate being renewed) names another identity than the
    /// one the metaserver enrolled.
    #[error("{what} is {configured:?}, but the metaserver enrolled this one as {enrolled:?}")]
    IdentityMismatch {
        /// Where the expected identity comes from (`agent.toml's cluster_id`, …).
        what: String,
        /// The identity expected.
        configured: String,
        /// The identity of the certificate.
        enrolled: String,
    },
    /// A file of the state directory could not be read or written.
    #[error("{path}: {why}")]
    State {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// No certificate and no join token.
    #[error("not enrolled: no certificate at {0}; start once with --join <token>")]
    NotEnrolled(PathBuf),
    /// The saved certificate expired and there is no join token.
    #[error("the certificate {path} expired at {when}; join again with a new token (--join)")]
    Expired {
        /// The certificate file.
        path: PathBuf,
        /// When it expired.
        when: String,
    },
    /// The configuration does not allow enrolling.
    #[error("{0}")]
    Config(String),
    /// A key, request or certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// An [`EnrollError::State`] for `path`.
pub(crate) fn state_err(path: &Path, why: impl std::fmt::Display) -> EnrollError {
    EnrollError::State {
        path: path.to_owned(),
        why: why.to_string(),
    }
}
