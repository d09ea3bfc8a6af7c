//! A client of meta's API, for `kubehub ctl` and tests: JSON in and out, bearer token or client
//! certificate, errors with meta's message; the canary rule's calls and the registry watch. It is the enrollment client hubs and agents use
//! ([`kubehub_enroll::MetaClient`]: one HTTPS request per call) with this crate's error type.

use std::sync::Arc;
use std::time::Duration;

use kubehub_access::registry::{CanaryRule, RegistryLine};
use kubehub_enroll::{EnrollError, Lines, MetaClient};
use serde_json::Value;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host[:port]`.
    #[error("{0}")]
    Url(String),
    /// TLS material could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// Meta could not be reached, or did not answer in time.
    #[error("{0}")]
    Connect(String),
    /// Meta answered with an error.
    #[error("meta answered {code}: {message}")]
    Api {
        /// HTTP status.
        code: u16,
        /// Meta's message.
        message: String,
    },
    /// The answer is not JSON.
    #[error("meta's answer is not JSON: {0}")]
    Body(String),
}

impl From<EnrollError> for ClientError {
    fn from(e: EnrollError) -> ClientError {
        match e {
            EnrollError::Refused {
                status, message, ..
            } => ClientError::Api {
                code: status,
                message,
            },
            EnrollError::BadAnswer { why, .. } => ClientError::Body(why),
            EnrollError::Config(m) => ClientError::Url(m),
            EnrollError::Pki(e) => ClientError::Tls(e.to_string()),
            e => ClientError::Connect(e.to_string()),
        }
    }
}

/// A client of one metaserver.
#[derive(Clone)]
pub struct Client {
    inner: MetaClient,
    tls: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({})", self.inner.url())
    }
}

impl Client {
    /// A client of `url` trusting `ca_pem`, authenticating with `token` (if any) and with a
    /// client certificate (if any: `(cert_pem, key_pem)`).
    pub fn new(
        url: &str,
        ca_pem: &str,
        token: Option<String>,
        client_cert: Option<(&str, &str)>,
    ) -> Result<Client, ClientError> {
        let mut inner = MetaClient::new(url, Duration::from_secs(30))?
            .with_user_agent(concat!("kubehub-ctl/", env!("CARGO_PKG_VERSION")));
        if let Some(t) = token {
            inner = inner.with_token(t);
        }
        let cert = client_cert
            .map(|(c, k)| kubehub_pki::ReloadingCert::from_pem(c, k).map(Arc::new))
            .transpose()
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let tls = kubehub_enroll::verified_config(ca_pem, cert)?;
        Ok(Client { inner, tls })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.call("GET", path, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("POST", path, Some(body)).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.call("PUT", path, Some(body)).await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.call("DELETE", path, None).await
    }

    /// `PUT /v1/canary`: sets the canary rule (admin); the rule as stored.
    pub async fn canary_set(&self, rule: &CanaryRule) -> Result<CanaryRule, ClientError> {
        let body = serde_json::to_value(rule).map_err(|e| ClientError::Body(e.to_string()))?;
        let v = self.put("/v1/canary", &body).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `GET /v1/canary`: the canary rule (admin); `None` when none is set.
    pub async fn canary_show(&self) -> Result<Option<CanaryRule>, ClientError> {
        match self.get("/v1/canary").await {
            Ok(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| ClientError::Body(e.to_string())),
            Err(ClientError::Api { code: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE /v1/canary`: clears the canary rule (admin; nothing happens when none is set).
    pub async fn canary_clear(&self) -> Result<(), ClientError> {
        self.delete("/v1/canary").await.map(|_| ())
    }

    /// `GET /v1/registry/watch?revision=N` (admin or a hub's certificate): the registry's
    /// lines as they come (a snapshot first unless `revision` can be resumed from). Lines may
    /// be up to `max_line` bytes (a snapshot carries every live agent: about 150 bytes each).
    pub async fn watch_registry(
        &self,
        revision: i64,
        max_line: usize,
    ) -> Result<Lines<RegistryLine>, ClientError> {
        let path = format!("/v1/registry/watch?revision={revision}");
        Ok(self.inner.lines(self.tls.clone(), &path, max_line).await?)
    }

    /// One call; the JSON answer (`null` for 204), or meta's error.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        Ok(self
            .inner
            .request(self.tls.clone(), method, path, body)
            .await?)
    }
}
