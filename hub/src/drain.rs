//! `drain`: why a hub drains, and the one switch every part of it follows.
//!
//! A hub drains when it is shutting down (SIGTERM: [`Drain::shutdown`]) or when an operator
//! drained it in meta (`POST /v1/registry/hubs/{id}/drain`, heard on the registry watch:
//! [`Drain::set_operator`]). Either way the same happens: `/readyz` answers 503 (load
//! balancers take the hub out), the hub registers `draining` (agents and other hubs move off
//! it), its tunnels send GOAWAY and end their streams after `drain_timeout_ms`, new agents are
//! refused, users' requests are forwarded to other hubs holding their clusters with
//! `Connection: close`, and the caches serve no stale reads. Only an operator's drain can be
//! lifted: the hub then takes agents and reports ready again; a shutdown is for good.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;
use tracing::info;

use crate::cache::Caches;

/// The drain switch (shared by every core and the meta client).
#[derive(Debug)]
pub struct Drain {
    tx: watch::Sender<bool>,
    shutdown: AtomicBool,
    operator: AtomicBool,
    caches: Arc<Caches>,
}

impl Drain {
    /// Not draining. Receivers see `true` while the hub drains; their `changed()` fails once
    /// the `Drain` is dropped (with the hub), which ends the tasks that wait on it.
    pub fn new(caches: Arc<Caches>) -> (Drain, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        let d = Drain {
            tx,
            shutdown: AtomicBool::new(false),
            operator: AtomicBool::new(false),
            caches,
        };
        (d, rx)
    }

    /// The hub is shutting down: drains for good.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
        self.update();
    }

    /// An operator drained this hub (`true`) or lifted the drain (`false`).
    pub fn set_operator(&self, on: bool) {
        if self.operator.swap(on, Ordering::AcqRel) != on {
            if on {
                info!("drained by an operator (meta): agents are sent away, users forwarded");
            } else {
                info!("an operator lifted the drain: taking agents again");
            }
            self.update();
        }
    }

    /// A receiver of the switch (see [`Drain::new`]).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Whether the hub is draining now.
    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    fn update(&self) {
        let on = self.shutdown.load(Ordering::Acquire) || self.operator.load(Ordering::Acquire);
        self.caches.set_draining(on);
        self.tx.send_if_modified(|v| std::mem::replace(v, on) != on);
    }
}
