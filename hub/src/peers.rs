//! `peers`: the other hubs, for clusters whose tunnels this hub does not hold.
//!
//! Users reach hubs through any load balancer, so every hub answers for every cluster. A
//! request for a cluster without a tunnel here goes to a hub that holds one (the directory:
//! meta's registry as a [`RegistryView`] — cluster → the hubs its agent is connected to, each
//! hub's agent listener, environment and state — kept current by the registry watch in
//! `crate::access::sync`), over a **peer link**: a connection to that
//! hub's agent listener with this hub's certificate, speaking the tunnel protocol
//! (`PROTOCOL.md` §12). Each forwarded request is one stream on it whose bytes are the
//! user's HTTP/1.1 exchange ([`crate::proxy::peer`]), so streams, flow control, cancellation
//! and upgrades (exec, port-forward) work across the hop exactly as on a direct tunnel, and a
//! stalled stream holds back no other.
//!
//! Links are opened on demand (one per hub pair that needs one; concurrent requests share a
//! dial) and closed after `peer_idle_timeout_ms` without a stream, so their number follows
//! the traffic, not hubs × hubs. A link that fails or says GOAWAY is forgotten; the next
//! request dials again or picks another holder.
//!
//! A holder that could not be dialled, or did not accept a stream within
//! `peer_accept_timeout_ms` (hung, overloaded), is **in back-off**: for 2 s, doubling to 30 s
//! while it keeps failing, it comes after the other holders (still tried when it is the only
//! one), so requests stop paying a dial or accept timeout each against a hub that is down but
//! still in the registry. After the back-off one request probes it; the others keep it last
//! until that probe succeeds (which clears it) or fails (a longer back-off).

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use kubehub_access::registry::{RegistryLine, RegistryView};
use kubehub_wire::handshake::{self, Offer};
use kubehub_wire::{Capabilities, Decoder, EncodeBuf, Frame};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::registry::TunnelCmd;
use crate::tunnel::TunnelCtx;

/// One hub a request may be forwarded to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its registry id.
    pub hub: String,
    /// Its agent listener, `host:port`.
    pub endpoint: String,
}

/// A link's entry: up, or being dialled (requests that need it meanwhile wait for the dial).
#[derive(Debug)]
enum LinkSlot {
    Up {
        tx: mpsc::Sender<TunnelCmd>,
        generation: u64,
    },
    Dialing(Vec<oneshot::Sender<Result<mpsc::Sender<TunnelCmd>, String>>>),
}

/// A link's key: the hub, and the dialling core's thread when links are per core.
type LinkKey = (String, Option<std::thread::ThreadId>);

/// The peer links of this hub and its directory, shared by every core.
#[derive(Debug)]
pub struct Peers {
    hub_id: String,
    environment: String,
    /// TLS for dialling (this hub's certificate; the CA agents' certificates come from);
    /// `None`: peering is off (no client CA configured).
    tls: Option<Arc<rustls::ClientConfig>>,
    dir: RwLock<RegistryView>,
    /// Links by (hub, the dialling core's thread when links are per core).
    links: DashMap<LinkKey, LinkSlot>,
    per_core: bool,
    next_generation: AtomicU64,
    idle: Duration,
    /// Holders that failed, by hub id.
    trouble: DashMap<String, Trouble>,
}

/// A holder that failed: tried after the other holders until `until`; then one request (the
/// probe) may try it first again, the others keep it last until the probe succeeds (the entry
/// goes) or fails (a longer back-off).
#[derive(Debug, Clone, Copy)]
struct Trouble {
    /// Failures in a row.
    failures: u32,
    /// End of the back-off.
    until: Instant,
    /// A probe was handed out; another may be after this (the first never reported).
    probe_until: Option<Instant>,
}

/// The first back-off of a holder that failed; doubled per failure in a row.
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
/// The longest back-off.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a probe may take (a dial's handshake timeout plus an accept) before another
/// request may probe instead.
const PROBE_GRACE: Duration = Duration::from_secs(20);

/// Why a request could not be given to a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// Peering is not configured.
    #[error("hub-to-hub forwarding is not configured on this hub")]
    Off,
    /// The dial or handshake failed.
    #[error("cannot reach hub {hub}: {why}")]
    Unreachable {
        /// The hub.
        hub: String,
        /// Why.
        why: String,
    },
}

impl Peers {
    /// Peers of hub `hub_id`, dialling with `tls` (`None`: no peering), closing links idle
    /// for `idle`.
    pub fn new(
        hub_id: &str,
        environment: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
        idle: Duration,
    ) -> Peers {
        Peers {
            hub_id: hub_id.to_owned(),
            environment: environment.to_owned(),
            tls,
            dir: RwLock::new(RegistryView::new()),
            links: DashMap::new(),
            per_core: false,
            next_generation: AtomicU64::new(0),
            idle,
            trouble: DashMap::new(),
        }
    }

    /// `hub` failed a dial or did not accept a stream in time: it is tried after the other
    /// holders for a while (doubling while it keeps failing).
    pub fn failed(&self, hub: &str) {
        let now = Instant::now();
        let mut e = self.trouble.entry(hub.to_owned()).or_insert(Trouble {
            failures: 0,
            until: now,
            probe_until: None,
        });
        let t = e.value_mut();
        t.failures = t.failures.saturating_add(1);
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << (t.failures - 1).min(16))
            .min(BACKOFF_MAX);
        t.until = now + backoff;
        t.probe_until = None;
    }

    /// `hub` took a stream: its back-off, if any, is over.
    pub fn succeeded(&self, hub: &str) {
        // A read first: the common case (no trouble) takes no write lock.
        if self.trouble.contains_key(hub) {
            self.trouble.remove(hub);
        }
    }

    /// Whether `hub` is in back-off now.
    pub fn in_backoff(&self, hub: &str) -> bool {
        self.trouble
            .get(hub)
            .is_some_and(|e| Instant::now() < e.value().until)
    }

    /// Whether a request should try `hub` after the other holders: in back-off, or past it
    /// while another request probes it. Past the back-off with no probe out, a request that
    /// would try it first anyway (`lead`: the first holder the registry names) is the probe
    /// (`false`, and the next callers get `true`); for any other it stays last.
    fn tried_last(&self, hub: &str, now: Instant, lead: bool) -> bool {
        let Some(mut e) = self.trouble.get_mut(hub) else {
            return false;
        };
        let t = e.value_mut();
        if !lead || now < t.until || t.probe_until.is_some_and(|p| now < p) {
            return true;
        }
        t.probe_until = Some(now + PROBE_GRACE);
        false
    }

    /// This hub's id.
    pub fn hub_id(&self) -> &str {
        &self.hub_id
    }

    /// How long a dialled link may stay without a stream.
    pub fn idle_timeout(&self) -> Duration {
        self.idle
    }

    /// Applies a line of meta's registry watch to the directory.
    pub fn apply(&self, line: &RegistryLine) {
        self.dir
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(line);
    }

    /// The registry revision the directory has reached (where a watch resumes).
    pub fn revision(&self) -> i64 {
        self.dir
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .revision()
    }

    /// Whether the registry says an operator drained this hub.
    pub fn drained_here(&self) -> bool {
        let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
        dir.drain(&self.hub_id).is_some()
    }

    /// The environment the registry gives `hub`, if it knows the hub.
    pub fn environment_of(&self, hub: &str) -> Option<String> {
        let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
        dir.hub(hub).map(|h| h.environment.clone())
    }

    /// The other live hubs holding `cluster`, in the order its agent registered them, hubs
    /// in back-off after them and hubs that are draining last (this hub, hubs of another
    /// environment and hubs without an agent endpoint left out).
    pub fn holders(&self, cluster: &str) -> Vec<Holder> {
        if self.tls.is_none() {
            return Vec::new();
        }
        let dir = self.dir.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut first = true;
        let mut out: Vec<((bool, bool), Holder)> = dir
            .holders(cluster)
            .iter()
            .filter(|h| **h != self.hub_id)
            .filter_map(|h| dir.hub(h))
            .filter(|h| h.environment == self.environment && !h.agent_endpoint.is_empty())
            .map(|h| {
                let lead = !h.draining && std::mem::take(&mut first);
                (
                    (h.draining, self.tried_last(&h.id, now, lead)),
                    Holder {
                        hub: h.id.clone(),
                        endpoint: h.agent_endpoint.clone(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(order, _)| *order);
        out.into_iter().map(|(_, h)| h).collect()
    }

    /// Each core dials its own link to a holder (`limits.peer_links_per_core`): more links
    /// (cores × holders), but a forwarded request never crosses cores on this hub.
    pub fn with_links_per_core(mut self, per_core: bool) -> Peers {
        self.per_core = per_core;
        self
    }

    /// Links up now (hub ids, once per link), for the admin listener and tests.
    pub fn links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .links
            .iter()
            .filter(|e| matches!(e.value(), LinkSlot::Up { .. }))
            .map(|e| e.key().0.clone())
            .collect();
        v.sort();
        v
    }

    /// Forgets link `generation` to `hub` (it closed, or was told to go away).
    pub(crate) fn unregister(&self, hub: &str, generation: u64) {
        self.links.retain(|k, slot| {
            !(k.0 == hub && matches!(slot, LinkSlot::Up { generation: g, .. } if *g == generation))
        });
    }

    fn key(&self, hub: &str) -> LinkKey {
        (
            hub.to_owned(),
            self.per_core.then(|| std::thread::current().id()),
        )
    }

    /// The command channel of the link to `holder`, dialling it on this core if there is
    /// none (one dial at a time per hub: concurrent callers wait for it).
    pub async fn link(
        &self,
        holder: &Holder,
        ctx: &Rc<TunnelCtx>,
    ) -> Result<mpsc::Sender<TunnelCmd>, PeerError> {
        let Some(tls) = &self.tls else {
            return Err(PeerError::Off);
        };
        let key = self.key(&holder.hub);
        let wait = match self.links.entry(key.clone()) {
            Entry::Occupied(mut e) => match e.get_mut() {
                LinkSlot::Up { tx, .. } if !tx.is_closed() => return Ok(tx.clone()),
                LinkSlot::Up { .. } => {
                    e.insert(LinkSlot::Dialing(Vec::new()));
                    None
                }
                LinkSlot::Dialing(waiters) => {
                    let (tx, rx) = oneshot::channel();
                    waiters.push(tx);
                    Some(rx)
                }
            },
            Entry::Vacant(v) => {
                v.insert(LinkSlot::Dialing(Vec::new()));
                None
            }
        };
        let unreachable = |why: String| PeerError::Unreachable {
            hub: holder.hub.clone(),
            why,
        };
        if let Some(rx) = wait {
            return match rx.await {
                Ok(r) => r.map_err(unreachable),
                Err(_) => Err(unreachable("the dial was abandoned".into())),
            };
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let dialled = dial(&self.hub_id, holder, tls.clone(), generation, ctx).await;
        let waiters = match self.links.remove(&key) {
            Some((_, LinkSlot::Dialing(w))) => w,
            _ => Vec::new(),
        };
        match &dialled {
            Ok(tx) => {
                info!(hub = %holder.hub, endpoint = %holder.endpoint, "peer link up");
                self.links.insert(
                    key,
                    LinkSlot::Up {
                        tx: tx.clone(),
                        generation,
                    },
                );
            }
            Err(e) => debug!(hub = %holder.hub, "peer link failed: {e}"),
        }
        for w in waiters {
            let _ = w.send(dialled.clone());
        }
        dialled.map_err(unreachable)
    }
}

/// Dials `holder`'s agent listener: TCP, TLS 1.3 with this hub's certificate, HELLO with the
/// PEER capability (cluster id = this hub's id, as its certificate says), HELLO_ACK; then the
/// link runs on this core ([`crate::tunnel::start_dialed`]).
async fn dial(
    hub_id: &str,
    holder: &Holder,
    tls: Arc<rustls::ClientConfig>,
    generation: u64,
    ctx: &Rc<TunnelCtx>,
) -> Result<mpsc::Sender<TunnelCmd>, String> {
    let deadline = ctx.limits.handshake_timeout();
    let host = holder
        .endpoint
        .rsplit_once(':')
        .map_or(holder.endpoint.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| format!("bad endpoint {:?}: {e}", holder.endpoint))?;
    let tcp = monoio::time::timeout(
        deadline,
        monoio::net::TcpStream::connect(holder.endpoint.as_str()),
    )
    .await
    .map_err(|_| "connect timed out".to_owned())?
    .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let conn = rustls::ClientConnection::new(tls, name).map_err(|e| format!("TLS: {e}"))?;
    let stream = crate::tls::handshake(tcp, conn.into(), deadline)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (mut rd, mut wr) = stream.into_split();
    let offer = Offer {
        capabilities: Capabilities::PEER,
        settings: ctx.limits.peer_settings(),
        ..Offer::default()
    };
    let hello = offer.hello(
        hub_id.to_owned(),
        hub_id.to_owned(),
        format!("kubehub-hub {}", env!("CARGO_PKG_VERSION")),
        Vec::new(),
    );
    let mut eb = EncodeBuf::new();
    eb.push(&Frame::Hello(hello));
    let parts: Vec<&[u8]> = eb.slices().collect();
    wr.write_all(&parts)
        .await
        .map_err(|e| format!("sending HELLO: {e}"))?;
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::default();
    let first = monoio::time::timeout(deadline, async {
        loop {
            if let Some(f) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                return Ok::<_, String>(f);
            }
            match rd.read(&mut buf).await {
                Ok(0) => return Err("closed before HELLO_ACK".to_owned()),
                Ok(_) => {}
                Err(e) => return Err(format!("reading HELLO_ACK: {e}")),
            }
        }
    })
    .await
    .map_err(|_| "no HELLO_ACK in time".to_owned())??;
    let ack = match first {
        Frame::HelloAck(a) => a,
        Frame::GoAway(g) => return Err(format!("refused ({}): {}", g.code, g.message)),
        f => return Err(format!("expected HELLO_ACK, got {}", f.frame_type().name())),
    };
    if !ack.capabilities.contains(Capabilities::PEER) {
        return Err("the hub does not accept peer links".into());
    }
    let agreed = handshake::confirm(&offer, &ack).map_err(str::to_owned)?;
    Ok(crate::tunnel::start_dialed(
        rd,
        wr,
        buf,
        &agreed,
        &holder.hub,
        generation,
        ctx,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubehub_access::registry::{AgentRecord, HubRecord};

    /// A client TLS configuration (peering on; nothing is dialled in these tests).
    fn client_tls() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
        )
    }

    fn hub(id: &str, env: &str, draining: bool) -> HubRecord {
        HubRecord {
            id: id.into(),
            endpoint: format!("https://{id}:8443"),
            agent_endpoint: format!("{id}:8444"),
            environment: env.into(),
            draining,
            ..HubRecord::default()
        }
    }

    #[test]
    fn holders_skip_this_hub_hubs_without_an_endpoint_and_other_environments() {
        let tls = client_tls();
        let p = Peers::new("hub-a", "prod", Some(tls), Duration::from_secs(60));
        let mut no_endpoint = hub("hub-e", "prod", false);
        no_endpoint.agent_endpoint.clear();
        p.apply(&RegistryLine::Snapshot {
            revision: 7,
            hubs: vec![
                hub("hub-a", "prod", false),
                hub("hub-b", "prod", true),
                hub("hub-c", "staging", false),
                hub("hub-d", "prod", false),
                no_endpoint,
            ],
            agents: vec![AgentRecord {
                cluster: "edge-1".into(),
                hubs: ["hub-a", "hub-b", "hub-c", "hub-d", "hub-e", "hub-gone"]
                    .map(String::from)
                    .to_vec(),
                ..AgentRecord::default()
            }],
            canary: None,
            drains: vec![],
        });
        let ids: Vec<String> = p.holders("edge-1").into_iter().map(|h| h.hub).collect();
        assert_eq!(ids, ["hub-d", "hub-b"], "the draining hub last");
        assert_eq!(p.holders("edge-1")[0].endpoint, "hub-d:8444");
        assert!(p.holders("edge-2").is_empty());
        assert_eq!(p.environment_of("hub-c").as_deref(), Some("staging"));
        assert_eq!(p.revision(), 7);
        p.apply(&RegistryLine::HubGone {
            revision: 8,
            id: "hub-d".into(),
        });
        let ids: Vec<String> = p.holders("edge-1").into_iter().map(|h| h.hub).collect();
        assert_eq!(ids, ["hub-b"]);
        let off = Peers::new("hub-a", "prod", None, Duration::from_secs(60));
        off.apply(&RegistryLine::Agent {
            revision: 1,
            agent: AgentRecord {
                cluster: "edge-1".into(),
                hubs: vec!["hub-b".into()],
                ..AgentRecord::default()
            },
        });
        assert!(off.holders("edge-1").is_empty(), "peering off: no holders");
    }

    #[test]
    fn holders_in_backoff_come_after_the_others_until_they_take_a_stream() {
        let tls = client_tls();
        let p = Peers::new("hub-a", "prod", Some(tls), Duration::from_secs(60));
        p.apply(&RegistryLine::Snapshot {
            revision: 1,
            hubs: vec![
                hub("hub-b", "prod", true),
                hub("hub-c", "prod", false),
                hub("hub-d", "prod", false),
            ],
            agents: vec![AgentRecord {
                cluster: "edge-1".into(),
                hubs: ["hub-b", "hub-c", "hub-d"].map(String::from).to_vec(),
                ..AgentRecord::default()
            }],
            canary: None,
            drains: vec![],
        });
        let order = || -> Vec<String> { p.holders("edge-1").into_iter().map(|h| h.hub).collect() };
        assert_eq!(order(), ["hub-c", "hub-d", "hub-b"]);
        p.failed("hub-c");
        assert!(p.in_backoff("hub-c"));
        assert_eq!(
            order(),
            ["hub-d", "hub-c", "hub-b"],
            "still tried, before draining hubs"
        );
        p.failed("hub-c");
        p.failed("hub-c");
        let until = p.trouble.get("hub-c").map(|e| e.value().until).unwrap();
        let left = until - Instant::now();
        assert!(
            left > Duration::from_secs(7) && left <= Duration::from_secs(8),
            "{left:?}"
        );
        for _ in 0..40 {
            p.failed("hub-c");
        }
        let until = p.trouble.get("hub-c").map(|e| e.value().until).unwrap();
        assert!(until - Instant::now() <= BACKOFF_MAX, "capped");
        // Past its back-off one request probes it (first again), the others keep it last.
        p.trouble.get_mut("hub-c").unwrap().until = Instant::now();
        assert!(!p.in_backoff("hub-c"));
        assert_eq!(order(), ["hub-c", "hub-d", "hub-b"], "the probe");
        assert_eq!(order(), ["hub-d", "hub-c", "hub-b"], "while it probes");
        // A request that would not try it first does not take the probe.
        p.failed("hub-d");
        p.trouble.get_mut("hub-d").unwrap().until = Instant::now();
        p.apply(&RegistryLine::Agent {
            revision: 2,
            agent: AgentRecord {
                cluster: "edge-2".into(),
                hubs: ["hub-c", "hub-d"].map(String::from).to_vec(),
                ..AgentRecord::default()
            },
        });
        let order2 = || -> Vec<String> { p.holders("edge-2").into_iter().map(|h| h.hub).collect() };
        assert_eq!(
            order2(),
            ["hub-c", "hub-d"],
            "hub-d stays last: no probe for edge-2"
        );
        assert_eq!(p.trouble.get("hub-d").unwrap().probe_until, None);
        p.succeeded("hub-d");
        // A failed probe: a longer back-off, no probe out.
        p.failed("hub-c");
        assert!(p.in_backoff("hub-c"));
        assert_eq!(order(), ["hub-d", "hub-c", "hub-b"]);
        p.succeeded("hub-c");
        assert!(!p.in_backoff("hub-c"));
        assert_eq!(order(), ["hub-c", "hub-d", "hub-b"]);
        assert_eq!(order(), ["hub-c", "hub-d", "hub-b"], "no trouble, no probe");
    }
}
