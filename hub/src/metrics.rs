//! Prometheus metrics of the hub, served on the admin listener's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-request counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// HTTP status code.
    pub code: u16,
}

/// Labels of byte counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `to_agent` or `from_agent`.
    pub direction: &'static str,
}

/// The hub's metrics (shared by every core; all updates are atomic).
#[derive(Debug)]
pub struct Metrics {
    /// Agents connected.
    pub agents: Gauge,
    /// Streams open across tunnels.
    pub streams: Gauge,
    /// Tunnel payload bytes each way.
    pub tunnel_bytes: Family<DirectionLabel, Counter>,
    /// User requests by response code.
    pub requests: Family<CodeLabel, Counter>,
    /// Seconds from a request head to its response head.
    pub latency: Histogram,
    /// Tunnel connections refused (handshake, identity, protocol).
    pub tunnel_rejects: Counter,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The tunnel byte counter for `direction` (`to_agent`, `from_agent`), to keep and bump
    /// without a lookup per frame.
    pub fn bytes(&self, direction: &'static str) -> Counter {
        self.tunnel_bytes
            .get_or_create(&DirectionLabel { direction })
            .clone()
    }

    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kubehub_hub");
        let agents = Gauge::default();
        let streams = Gauge::default();
        let tunnel_bytes = Family::<DirectionLabel, Counter>::default();
        let requests = Family::<CodeLabel, Counter>::default();
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let tunnel_rejects = Counter::default();
        registry.register(
            "agents_connected",
            "Agents with an open tunnel",
            agents.clone(),
        );
        registry.register("streams_open", "Tunnel streams open", streams.clone());
        registry.register("tunnel_bytes", "Tunnel payload bytes", tunnel_bytes.clone());
        registry.register(
            "requests",
            "User requests by response code",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request head to its response head",
            latency.clone(),
        );
        registry.register(
            "tunnel_rejects",
            "Agent connections refused",
            tunnel_rejects.clone(),
        );
        Metrics {
            agents,
            streams,
            tunnel_bytes,
            requests,
            latency,
            tunnel_rejects,
            registry,
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
