//! `discovery`: what the edge cluster serves, read from its API server's discovery documents
//! (`/api`, `/api/{v}`, `/apis`, `/apis/{group}/{version}`) and reported to the hub in a
//! DISCOVERY frame, once a tunnel is up and again every `discovery_interval_ms` (custom
//! resource types come and go). The hub decides from it which types it can cache.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use kubehub_kapi::resources::{
    group_version_path, parse_api_group_list, parse_api_resource_list, parse_api_versions,
};
use kubehub_wire::{Discovery, ResourceType};
use serde_json::Value;

use crate::upstream::UpstreamClient;

/// Largest discovery document read (a cluster with many CRDs has large group lists, but not
/// this large).
const MAX_DOCUMENT: usize = 8 * 1024 * 1024;
/// Deadline for one document.
const DOCUMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The API server could not be asked, or answered with an error.
    #[error("GET {path}: {why}")]
    Fetch {
        /// The document.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// A document did not read as discovery.
    #[error("GET {path}: {source}")]
    Document {
        /// The document.
        path: String,
        /// Why.
        source: kubehub_kapi::resources::DiscoveryError,
    },
}

async fn get_json(upstream: &UpstreamClient, path: &str) -> Result<Value, DiscoveryError> {
    let fail = |why: String| DiscoveryError::Fetch {
        path: path.to_owned(),
        why,
    };
    let accept = [(
        Bytes::from_static(b"Accept"),
        Bytes::from_static(b"application/json"),
    )];
    let body = http_body_util::Empty::<Bytes>::new()
        .map_err(|e| match e {})
        .boxed();
    let work = async {
        let resp = upstream
            .send(b"GET", path.as_bytes(), &accept, body)
            .await
            .map_err(fail)?;
        let status = resp.status();
        let limited = http_body_util::Limited::new(resp.into_body(), MAX_DOCUMENT);
        let bytes = limited
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(fail(format!(
                "{status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| fail(format!("not JSON: {e}")))
    };
    tokio::time::timeout(DOCUMENT_TIMEOUT, work)
        .await
        .map_err(|_| fail(format!("no answer within {DOCUMENT_TIMEOUT:?}")))?
}

fn document(path: &str) -> impl Fn(kubehub_kapi::resources::DiscoveryError) -> DiscoveryError + '_ {
    move |source| DiscoveryError::Document {
        path: path.to_owned(),
        source,
    }
}

/// Reads every resource type the edge API server serves, core group first, then the named
/// groups in the server's order, every served version of each.
pub async fn discover(upstream: &UpstreamClient) -> Result<Discovery, DiscoveryError> {
    let mut group_versions: Vec<(String, String)> = Vec::new();
    for v in parse_api_versions(&get_json(upstream, "/api").await?).map_err(document("/api"))? {
        group_versions.push((String::new(), v));
    }
    let groups =
        parse_api_group_list(&get_json(upstream, "/apis").await?).map_err(document("/apis"))?;
    for (g, versions) in groups {
        for v in versions {
            group_versions.push((g.clone(), v));
        }
    }
    let mut resources: Vec<ResourceType> = Vec::new();
    for (g, v) in group_versions {
        let path = group_version_path(&g, &v);
        let doc = get_json(upstream, &path).await?;
        resources.extend(parse_api_resource_list(&doc).map_err(document(&path))?);
    }
    // What this agent can list-watch for the hub's cache (the hub picks from these).
    let list_watch =
        kubehub_wire::Verbs(kubehub_wire::Verbs::LIST.0 | kubehub_wire::Verbs::WATCH.0);
    for t in &mut resources {
        t.cached = !t.resource.contains('/') && t.verbs.contains(list_watch);
    }
    Ok(Discovery { resources })
}
