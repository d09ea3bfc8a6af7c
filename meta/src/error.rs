//! Every way a metaserver request can fail, and the HTTP answer for each: a status code and a
//! JSON body `{"error": "<message>", "code": <status>}` that says what to fix.

use crate::store::StoreError;

/// A failed metaserver operation.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The request is malformed (bad JSON, unknown fields, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// No credential, or one meta does not accept.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(String),
    /// It exists already, or something still refers to it.
    #[error("{0}")]
    Conflict(String),
    /// A field's value is not acceptable.
    #[error("{0}")]
    Invalid(String),
    /// The body is larger than `max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// The store could not be reached or answered with an error.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Something meta itself got wrong (a corrupt record, a certificate it could not sign).
    #[error("{0}")]
    Internal(String),
}

impl MetaError {
    /// The HTTP status code.
    pub fn code(&self) -> u16 {
        match self {
            MetaError::BadRequest(_) => 400,
            MetaError::Unauthorized(_) => 401,
            MetaError::Forbidden(_) => 403,
            MetaError::NotFound(_) => 404,
            MetaError::Conflict(_) => 409,
            MetaError::Invalid(_) => 422,
            MetaError::TooLarge(_) => 413,
            MetaError::Store(_) => 503,
            MetaError::Internal(_) => 500,
        }
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.to_string(), "code": self.code() })
    }
}

/// Results of metaserver operations.
pub type Result<T, E = MetaError> = std::result::Result<T, E>;
