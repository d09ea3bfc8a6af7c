//! The HELLO / HELLO_ACK handshake, as pure functions.
//!
//! The agent sends HELLO as its first frame; the hub answers HELLO_ACK, or GOAWAY with
//! [`ErrorCode::VERSION_MISMATCH`] or [`ErrorCode::HANDSHAKE`] and closes. Identity checks
//! (the certificate against `cluster_id`) belong to the hub, which knows the certificate.

use crate::error::ErrorCode;
use crate::frame::{Capabilities, GoAway, Hello, HelloAck, Settings};
use crate::{validate_settings, PROTOCOL_VERSION};

/// What this side offers in the handshake.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Oldest version spoken.
    pub min_version: u16,
    /// Newest version spoken.
    pub max_version: u16,
    /// Capabilities.
    pub capabilities: Capabilities,
    /// What this side is willing to receive.
    pub settings: Settings,
}

impl Default for Offer {
    fn default() -> Self {
        Offer {
            min_version: PROTOCOL_VERSION,
            max_version: PROTOCOL_VERSION,
            capabilities: Capabilities(Capabilities::CACHE_SYNC.0 | Capabilities::UPGRADE.0),
            settings: Settings::default(),
        }
    }
}

/// The outcome of a handshake, as both sides then use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// The protocol version of the connection.
    pub version: u16,
    /// Capabilities both sides have.
    pub capabilities: Capabilities,
    /// What the agent receives.
    pub agent_settings: Settings,
    /// What the hub receives.
    pub hub_settings: Settings,
}

/// The hub's side: answers a HELLO with HELLO_ACK, or with the GOAWAY to send before closing.
pub fn accept(
    hello: &Hello,
    hub: &Offer,
    hub_id: &str,
    keepalive_ms: u32,
) -> Result<(HelloAck, Agreed), GoAway> {
    let version = hello.max_version.min(hub.max_version);
    if version < hello.min_version.max(hub.min_version) {
        return Err(GoAway {
            last_stream_id: 0,
            code: ErrorCode::VERSION_MISMATCH,
            message: format!(
                "agent speaks versions {}..={}, hub speaks {}..={}",
                hello.min_version, hello.max_version, hub.min_version, hub.max_version
            ),
        });
    }
    if let Err(reason) = validate_settings(&hello.settings) {
        return Err(GoAway {
            last_stream_id: 0,
            code: ErrorCode::HANDSHAKE,
            message: format!("invalid agent settings: {reason}"),
        });
    }
    if hello.cluster_id.is_empty() {
        return Err(GoAway {
            last_stream_id: 0,
            code: ErrorCode::HANDSHAKE,
            message: "empty cluster id".into(),
        });
    }
    let capabilities = hello.capabilities.intersect(hub.capabilities);
    let ack = HelloAck {
        version,
        capabilities,
        settings: hub.settings,
        keepalive_ms,
        hub_id: hub_id.to_owned(),
    };
    let agreed = Agreed {
        version,
        capabilities,
        agent_settings: hello.settings,
        hub_settings: hub.settings,
    };
    Ok((ack, agreed))
}

impl Offer {
    /// The dialling side's HELLO for this offer (`agent_id` and `cluster_id` are a peer
    /// link's dialling hub's id, §12).
    pub fn hello(
        &self,
        agent_id: String,
        cluster_id: String,
        software: String,
        labels: Vec<(String, String)>,
    ) -> Hello {
        Hello {
            min_version: self.min_version,
            max_version: self.max_version,
            capabilities: self.capabilities,
            settings: self.settings,
            agent_id,
            cluster_id,
            software,
            labels,
        }
    }
}

/// The agent's side: checks the hub's HELLO_ACK against what it offered.
pub fn confirm(agent: &Offer, ack: &HelloAck) -> Result<Agreed, &'static str> {
    if ack.version < agent.min_version || ack.version > agent.max_version {
        return Err("hub chose a version the agent did not offer");
    }
    if !agent.capabilities.contains(ack.capabilities) {
        return Err("hub enabled a capability the agent did not offer");
    }
    validate_settings(&ack.settings)?;
    Ok(Agreed {
        version: ack.version,
        capabilities: ack.capabilities,
        agent_settings: agent.settings,
        hub_settings: ack.settings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(min: u16, max: u16) -> Hello {
        Hello {
            min_version: min,
            max_version: max,
            capabilities: Capabilities(0b111),
            settings: Settings::default(),
            agent_id: "a1".into(),
            cluster_id: "edge-1".into(),
            software: "test".into(),
            labels: vec![("region".into(), "eu-1".into())],
        }
    }

    #[test]
    fn picks_highest_common_version_and_common_capabilities() {
        let hub = Offer {
            min_version: 1,
            max_version: 3,
            ..Offer::default()
        };
        let (ack, agreed) = accept(&hello(2, 5), &hub, "hub-0", 15_000).unwrap();
        assert_eq!(ack.version, 3);
        assert_eq!(ack.capabilities, Capabilities(0b11));
        assert_eq!(agreed.agent_settings, Settings::default());
        let agent = Offer {
            min_version: 2,
            max_version: 5,
            capabilities: Capabilities(0b111),
            settings: Settings::default(),
        };
        assert_eq!(confirm(&agent, &ack).unwrap(), agreed);
    }

    #[test]
    fn disjoint_versions_get_version_mismatch() {
        let hub = Offer::default();
        let err = accept(&hello(2, 4), &hub, "hub-0", 15_000).unwrap_err();
        assert_eq!(err.code, ErrorCode::VERSION_MISMATCH);
        assert!(err.message.contains("2..=4"), "{}", err.message);
    }

    #[test]
    fn bad_settings_and_empty_cluster_are_refused() {
        let mut h = hello(1, 1);
        h.settings.initial_sync_window = 1024;
        assert_eq!(
            accept(&h, &Offer::default(), "h", 1).unwrap_err().code,
            ErrorCode::HANDSHAKE
        );
        let mut h = hello(1, 1);
        h.cluster_id.clear();
        assert_eq!(
            accept(&h, &Offer::default(), "h", 1).unwrap_err().code,
            ErrorCode::HANDSHAKE
        );
    }

    #[test]
    fn agent_rejects_an_ack_it_did_not_ask_for() {
        let agent = Offer::default();
        let (mut ack, _) = accept(&hello(1, 1), &Offer::default(), "h", 1).unwrap();
        ack.version = 9;
        assert!(confirm(&agent, &ack).is_err());
        ack.version = 1;
        ack.capabilities = Capabilities(1 << 40);
        assert!(confirm(&agent, &ack).is_err());
    }
}
