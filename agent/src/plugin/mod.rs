//! Plugins: what executes a request the hub forwarded. The request's path picks one:
//! `/plugins/<name>/…` goes to the plugin `<name>`, everything else to `kubernetes`, the edge
//! API server ([`UpstreamClient`]). A plugin answers an HTTP request as an edge would, with a
//! streamed body, so the tunnel streams every answer the same way.
//!
//! | plugin | requests | answer |
//! | --- | --- | --- |
//! | `kubernetes` | everything not under `/plugins/` | the edge API server's |
//! | [`native`] | `GET /plugins/native` | the allowed commands (`NativeCommandList`) |
//! | | `GET /plugins/native/<command>` | one of them (`NativeCommand`) |
//! | | `POST /plugins/native/<command>`, body `{"args": {"<name>": "<value>", …}}` | 200 `application/x-ndjson`, streamed while it runs: `{"stream":"stdout","data":"<base64>"}`, `{"stream":"stderr",…}`, last `{"exit":{"code":N}}`, `{"exit":{"signal":N}}` or `{"exit":{"signal":9,"timedOut":true}}` |
//! | [`host`] | `GET /plugins/host` | the host's facts (`HostFacts`: OS, kernel, CPU, memory, disks, network interfaces, uptime) |
//!
//! Errors are Kubernetes `Status` objects: a plugin that does not exist or is disabled, or a
//! command not in the allow-list, 404; an argument unknown, missing or not admitted, 422
//! `Invalid` naming it (`args.<name>`); a malformed body 400, one over 64 KiB 413; another
//! method 405; too many commands running 429 (`max_running`). Nothing runs unless the request
//! is valid.
//!
//! The hub authorizes these paths as resources of API group `plugins.kubehub.io` (version
//! `v1`, resource `<name>`, name the command, cluster-scoped; see the hub's `resolve`), so a
//! grant names them like any Kubernetes resource. Each plugin is configured in agent.toml
//! (`[plugins]`, [`crate::config::PluginsConfig`]).

pub mod host;
pub mod native;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use kubehub_kapi::Status;

use crate::config::PluginsConfig;
use crate::upstream::{DownBody, UpBody, UpstreamClient};

/// The API group the hub authorizes plugin requests in.
pub const API_GROUP: &str = kubehub_kapi::plugin::API_GROUP;
/// Its version.
pub const API_VERSION: &str = "plugins.kubehub.io/v1";

/// What a plugin's answer is: the response head and a streamed body, or why there is none
/// (for `kubernetes`: the API server could not be reached).
pub type PluginFuture =
    Pin<Box<dyn Future<Output = Result<Response<DownBody>, String>> + Send + 'static>>;

/// Something that answers forwarded requests.
pub trait Plugin: Send + Sync + 'static {
    /// Its name (the `<name>` of `/plugins/<name>`).
    fn name(&self) -> &'static str;

    /// Answers `request` (its URI is the path and query as the hub forwarded them, with the
    /// user's fields minus hop-by-hop ones, `Host` and `Authorization`).
    fn call(&self, request: Request<UpBody>) -> PluginFuture;
}

impl Plugin for UpstreamClient {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn call(&self, request: Request<UpBody>) -> PluginFuture {
        let client = self.clone();
        Box::pin(async move { client.call(request).await })
    }
}

/// The plugins of an agent, by name (`kubernetes` aside: it is the one the tunnel holds).
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Plugins {
    by_name: Arc<BTreeMap<&'static str, Arc<dyn Plugin>>>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The edge API server.
    Kubernetes,
    /// The plugin of this name (maybe not enabled), and the path's segments after it
    /// (percent-decoded).
    Plugin(String, Vec<String>),
}

/// Where the request for `path` (path and query, as forwarded) goes: `/plugins/<name>[/…]`
/// (decoded as the hub decodes it, so that both read the same name) to a plugin, anything else
/// (and a path that does not decode) to the edge API server.
pub fn route(path: &str) -> Route {
    let raw = path.split_once('?').map_or(path, |(p, _)| p);
    let Ok(decoded) = kubehub_kapi::request_info::decode_path(raw) else {
        return Route::Kubernetes;
    };
    match kubehub_kapi::plugin::split(&decoded) {
        Some((name, "")) => Route::Plugin(name.to_owned(), Vec::new()),
        Some((name, tail)) => Route::Plugin(
            name.to_owned(),
            tail.split('/').map(str::to_owned).collect(),
        ),
        None => Route::Kubernetes,
    }
}

impl Plugins {
    /// The plugins agent.toml enables. Fails on a configuration [`PluginsConfig::validate`]
    /// refuses, and on a command to run as another user when the agent cannot switch users
    /// (it does not run as root).
    pub fn from_config(cfg: &PluginsConfig) -> Result<Plugins, crate::config::ConfigError> {
        let mut by_name: BTreeMap<&'static str, Arc<dyn Plugin>> = BTreeMap::new();
        if cfg.native.enabled {
            let native = native::Native::compile(&cfg.native)?;
            native.check_users()?;
            by_name.insert(native::NAME, Arc::new(native));
        }
        if cfg.host.enabled {
            by_name.insert(host::NAME, Arc::new(host::Host));
        }
        Ok(Plugins {
            by_name: Arc::new(by_name),
        })
    }

    /// The names of the plugins enabled.
    pub fn names(&self) -> Vec<&'static str> {
        self.by_name.keys().copied().collect()
    }

    /// Answers a forwarded request (method, path and query, fields, body): a plugin's path
    /// by the plugin (404 if it is not enabled), anything else by `kubernetes`. An `Err` is
    /// the edge API server's failure; a plugin's failure is answered with a `Status` (500).
    pub async fn send(
        &self,
        kubernetes: &UpstreamClient,
        method: &[u8],
        path: &[u8],
        fields: &[(Bytes, Bytes)],
        body: UpBody,
    ) -> Result<Response<DownBody>, String> {
        let request = crate::upstream::request(method, path, fields, body)?;
        let name = match route(request.uri().path()) {
            Route::Kubernetes => return Plugin::call(kubernetes, request).await,
            Route::Plugin(name, _) => name,
        };
        let Some(plugin) = self.by_name.get(name.as_str()) else {
            return Ok(status_response(&Status::new(
                404,
                "NotFound",
                format!("plugin {name:?} is not enabled on the agent of this cluster"),
            )));
        };
        match plugin.call(request).await {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!(plugin = %name, "plugin failed: {e}");
                Ok(status_response(&Status::internal(format!(
                    "plugin {name:?}: {e}"
                ))))
            }
        }
    }
}

/// A whole JSON answer.
pub(crate) fn json_response(code: u16, body: Vec<u8>) -> Response<DownBody> {
    let len = body.len();
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::OK);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
    h.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

/// A `Status` answer.
pub(crate) fn status_response(s: &Status) -> Response<DownBody> {
    json_response(s.code, s.to_json())
}

/// The user the hub forwarded the request for, when it says (`Impersonate-User`, which the hub
/// sets with `impersonate = true` after removing any the user sent), for logs.
pub(crate) fn user_of<B>(request: &Request<B>) -> Option<String> {
    request
        .headers()
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_route_to_plugins_by_their_decoded_name() {
        assert_eq!(route("/api/v1/pods"), Route::Kubernetes);
        assert_eq!(route("/plugins"), Route::Kubernetes);
        assert_eq!(route("/plugins/"), Route::Kubernetes);
        assert_eq!(route("/pluginsx/native"), Route::Kubernetes);
        assert_eq!(
            route("/plugins/native"),
            Route::Plugin("native".into(), vec![])
        );
        assert_eq!(
            route("/plugins/native/"),
            Route::Plugin("native".into(), vec![])
        );
        assert_eq!(
            route("/plugins/native/uptime?x=1"),
            Route::Plugin("native".into(), vec!["uptime".into()])
        );
        // Decoded as the hub decodes it before authorizing.
        assert_eq!(
            route("/%70lugins/native/%75ptime"),
            Route::Plugin("native".into(), vec!["uptime".into()])
        );
        assert_eq!(
            route("/plugins/host/a/b"),
            Route::Plugin("host".into(), vec!["a".into(), "b".into()])
        );
        assert_eq!(route("/plugins/%zz"), Route::Kubernetes);
    }

    #[tokio::test]
    async fn unknown_or_disabled_plugins_are_not_found() {
        let mut cfg = PluginsConfig::default();
        cfg.native.enabled = false;
        let plugins = Plugins::from_config(&cfg).unwrap();
        assert_eq!(plugins.names(), vec!["host"]);
        let kubernetes = UpstreamClient::in_process(
            "unused",
            Arc::new(|_| Box::pin(async { Err("must not be called".to_owned()) })),
        );
        for path in ["/plugins/native", "/plugins/nope/x"] {
            let empty = http_body_util::Empty::<Bytes>::new()
                .map_err(|e| match e {})
                .boxed();
            let r = plugins
                .send(&kubernetes, b"GET", path.as_bytes(), &[], empty)
                .await
                .unwrap();
            assert_eq!(r.status(), 404, "{path}");
            let body = r.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["kind"], "Status");
            assert!(
                v["message"].as_str().unwrap().contains("not enabled"),
                "{v}"
            );
        }
        // Anything else is the edge API server's.
        let empty = http_body_util::Empty::<Bytes>::new()
            .map_err(|e| match e {})
            .boxed();
        let e = plugins
            .send(&kubernetes, b"GET", b"/api/v1/pods", &[], empty)
            .await
            .unwrap_err();
        assert_eq!(e, "must not be called");
    }
}
