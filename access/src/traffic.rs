//! The traffic summary a hub serves on its admin listener (`GET /traffic`) and meta's console
//! reads from every hub: one type for both ends, so the two cannot drift apart. Fields a
//! reader does not find take their defaults (a hub of another version may send fewer).

use serde::{Deserialize, Serialize};

/// `GET /traffic`: the last `window_seconds` at one hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TrafficSummary {
    /// The hub's id.
    pub hub: String,
    /// The window the rates are over.
    pub window_seconds: u64,
    /// Tenants with traffic in the window, busiest first.
    pub tenants: Vec<TenantTraffic>,
    /// The busiest clients (at most 20 by default).
    pub clients: Vec<ClientTraffic>,
}

/// One tenant's traffic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct TenantTraffic {
    /// Tenant (`""`: unauthenticated requests).
    pub tenant: String,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Answers with 4xx/5xx per second.
    pub errors_per_second: f64,
    /// Median time to the response head (ms; long-running requests excluded).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Request body bytes per second.
    pub bytes_in_per_second: f64,
    /// Response bytes per second.
    pub bytes_out_per_second: f64,
    /// Watches open now.
    pub watches: u64,
    /// Refusals (authentication, authorization, limits, bans) per second.
    pub rejected_per_second: f64,
}

/// One client's traffic: a user-agent family from one source address, of one tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ClientTraffic {
    /// Tenant.
    pub tenant: String,
    /// User-agent family (`kubectl/v1.32`, `client-go`, …).
    pub client: String,
    /// Source IP address.
    pub source: String,
    /// Requests per second.
    pub requests_per_second: f64,
    /// Errors per second.
    pub errors_per_second: f64,
}
