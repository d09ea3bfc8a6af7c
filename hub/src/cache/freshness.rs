//! `freshness`: is the cache current for one cluster and type? The hub's equivalent of
//! kube-apiserver's consistent reads from its watch cache (KEP-2340).
//!
//! A read that must be current (resourceVersion unset, or any read after a write through the
//! hub) asks the agent to confirm the sync stream: a PROGRESS_REQUEST, answered by PROGRESS
//! once every change up to the edge's current resourceVersion was sent (the agent's reflector
//! probes its API server, see `agent/src/reflector.rs`). Because the answer travels on the
//! sync stream behind the events it vouches for, the cache holds them by the time the answer
//! is applied.
//!
//! Requests are shared: at most one is in flight per cluster and type, and reads arriving
//! meanwhile join the *next* one (a confirmation requested before a read arrived proves
//! nothing about writes that completed before the read). So a burst of reads costs at most
//! two round trips to the agent, whatever its size.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::watch;

/// What a confirmation said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stream carried every change up to this resourceVersion.
    Confirmed(u64),
    /// The agent could not confirm (its API server failed, or the tunnel went away).
    Unconfirmed,
}

/// One confirmation that reads wait on.
#[derive(Debug)]
pub struct Batch {
    tx: watch::Sender<Option<Outcome>>,
}

impl Batch {
    fn new() -> Arc<Batch> {
        Arc::new(Batch {
            tx: watch::channel(None).0,
        })
    }

    /// Waits for the outcome (without a deadline: callers bound it).
    pub async fn outcome(&self) -> Outcome {
        let mut rx = self.tx.subscribe();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(Outcome::Unconfirmed),
            Err(_) => Outcome::Unconfirmed,
        };
        outcome
    }

    fn resolve(&self, o: Outcome) {
        self.tx.send_replace(Some(o));
    }
}

#[derive(Debug, Default)]
struct State {
    next_seq: u32,
    /// The request the agent has: its sequence number, when it was sent, and who waits.
    in_flight: Option<(u32, Instant, Arc<Batch>)>,
    /// Reads that arrived after `in_flight` was sent: they go out together next.
    pending: Option<Arc<Batch>>,
    /// When the newest confirmed request was sent (the cache was current as of then).
    confirmed_at: Option<Instant>,
    /// When a write through the hub last completed on this type.
    last_write: Option<Instant>,
}

/// The confirmations of one cluster and type.
#[derive(Debug, Default)]
pub struct Freshness {
    st: Mutex<State>,
}

/// What a read must do after [`Freshness::join`].
#[derive(Debug)]
pub struct Joined {
    /// Wait on this.
    pub batch: Arc<Batch>,
    /// Send a PROGRESS_REQUEST with this sequence number (the read that created the batch
    /// does it; the others only wait).
    pub send: Option<u32>,
}

impl Freshness {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few fields updated whole: a panic elsewhere cannot leave it torn.
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_seq(st: &mut State) -> u32 {
        st.next_seq = st.next_seq.wrapping_add(1).max(1);
        st.next_seq
    }

    /// A read that needs confirmation joins the next one. A request in flight for longer
    /// than `give_up` is taken as lost (its stream ended unseen, or the agent never
    /// answered): its readers are told and a new one starts.
    pub fn join(&self, now: Instant, give_up: std::time::Duration) -> Joined {
        let mut st = self.lock();
        if st
            .in_flight
            .as_ref()
            .is_some_and(|(_, sent, _)| now.saturating_duration_since(*sent) > give_up)
        {
            if let Some((_, _, b)) = st.in_flight.take() {
                b.resolve(Outcome::Unconfirmed);
            }
        }
        if st.in_flight.is_none() {
            if let Some(b) = st.pending.take() {
                // Its request was never sent (the one before it was lost): this read sends it.
                let seq = Self::take_seq(&mut st);
                st.in_flight = Some((seq, now, b.clone()));
                return Joined {
                    batch: b,
                    send: Some(seq),
                };
            }
        }
        if let Some(b) = &st.pending {
            return Joined {
                batch: b.clone(),
                send: None,
            };
        }
        let batch = Batch::new();
        if st.in_flight.is_some() {
            st.pending = Some(batch.clone());
            return Joined { batch, send: None };
        }
        let seq = Self::take_seq(&mut st);
        st.in_flight = Some((seq, now, batch.clone()));
        Joined {
            batch,
            send: Some(seq),
        }
    }

    /// The agent answered `seq`. Returns the sequence number of the next request to send,
    /// if reads are waiting for one.
    pub fn answered(&self, seq: u32, outcome: Outcome, now: Instant) -> Option<u32> {
        let mut st = self.lock();
        match &st.in_flight {
            Some((s, _, _)) if *s == seq => {}
            // An answer to a request this state no longer tracks (sent on an earlier tunnel,
            // or unsolicited): nothing waits on it.
            _ => return None,
        }
        let (_, sent, batch) = st.in_flight.take()?;
        if matches!(outcome, Outcome::Confirmed(_)) {
            st.confirmed_at = Some(st.confirmed_at.map_or(sent, |c| c.max(sent)));
        }
        batch.resolve(outcome);
        let next = st.pending.take()?;
        let seq = Self::take_seq(&mut st);
        st.in_flight = Some((seq, now, next));
        Some(seq)
    }

    /// The request `seq` could not be sent (the stream is gone): its readers are told, and
    /// so are those waiting for the next one.
    pub fn fail_all(&self) {
        let mut st = self.lock();
        if let Some((_, _, b)) = st.in_flight.take() {
            b.resolve(Outcome::Unconfirmed);
        }
        if let Some(b) = st.pending.take() {
            b.resolve(Outcome::Unconfirmed);
        }
    }

    /// A write through the hub completed: later reads may not be served from a confirmation
    /// older than it.
    pub fn wrote(&self, now: Instant) {
        let mut st = self.lock();
        st.last_write = Some(st.last_write.map_or(now, |w| w.max(now)));
    }

    /// Whether a confirmation requested at most `max_age` ago, and after the last write
    /// through the hub, covers a read arriving `now`.
    pub fn recently_confirmed(&self, now: Instant, max_age: std::time::Duration) -> bool {
        let st = self.lock();
        match st.confirmed_at {
            Some(c) => {
                now.saturating_duration_since(c) <= max_age && st.last_write.is_none_or(|w| w < c)
            }
            None => false,
        }
    }

    /// How long ago the newest confirmation was requested.
    pub fn confirmed_age(&self, now: Instant) -> Option<std::time::Duration> {
        self.lock()
            .confirmed_at
            .map(|c| now.saturating_duration_since(c))
    }

    /// Whether a write through the hub completed after the last confirmation.
    pub fn written_since_confirmed(&self) -> bool {
        let st = self.lock();
        match (st.last_write, st.confirmed_at) {
            (Some(w), Some(c)) => w >= c,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const GIVE_UP: Duration = Duration::from_secs(3);

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn one_request_in_flight_and_later_reads_wait_for_the_next() {
        let f = Freshness::default();
        let t0 = Instant::now();
        let a = f.join(t0, GIVE_UP);
        let seq1 = a.send.expect("the first read sends");
        // Arrived after the request went out: must not share its answer.
        let b = f.join(t0, GIVE_UP);
        let c = f.join(t0, GIVE_UP);
        assert!(b.send.is_none() && c.send.is_none());
        assert!(Arc::ptr_eq(&b.batch, &c.batch));
        assert!(!Arc::ptr_eq(&a.batch, &b.batch));
        let seq2 = f
            .answered(seq1, Outcome::Confirmed(10), t0)
            .expect("the waiting batch goes out next");
        assert_ne!(seq1, seq2);
        assert_eq!(block_on(a.batch.outcome()), Outcome::Confirmed(10));
        // b and c still wait: their own request is in flight now.
        assert!(b.batch.tx.borrow().is_none());
        assert_eq!(f.answered(seq2, Outcome::Confirmed(12), t0), None);
        assert_eq!(block_on(c.batch.outcome()), Outcome::Confirmed(12));
        // A stale answer changes nothing.
        assert_eq!(f.answered(seq1, Outcome::Confirmed(1), t0), None);
    }

    #[test]
    fn a_lost_request_is_given_up_and_the_next_read_starts_over() {
        let f = Freshness::default();
        let t0 = Instant::now();
        let a = f.join(t0, GIVE_UP);
        assert!(a.send.is_some());
        let b = f.join(t0, GIVE_UP);
        assert!(b.send.is_none(), "waits for the next request");
        // Nobody ever answers a: past the give-up time the next read sends afresh.
        let later = t0 + GIVE_UP * 2;
        let c = f.join(later, GIVE_UP);
        assert_eq!(block_on(a.batch.outcome()), Outcome::Unconfirmed);
        assert!(c.send.is_some(), "the waiting batch's request goes out");
        assert!(Arc::ptr_eq(&b.batch, &c.batch));
    }

    #[test]
    fn failures_release_every_waiter() {
        let f = Freshness::default();
        let t0 = Instant::now();
        let a = f.join(t0, GIVE_UP);
        let b = f.join(t0, GIVE_UP);
        f.fail_all();
        assert_eq!(block_on(a.batch.outcome()), Outcome::Unconfirmed);
        assert_eq!(block_on(b.batch.outcome()), Outcome::Unconfirmed);
        // And the next read starts afresh.
        assert!(f.join(t0, GIVE_UP).send.is_some());
    }

    #[test]
    fn writes_invalidate_confirmations_requested_before_them() {
        let f = Freshness::default();
        let t0 = Instant::now();
        let max = Duration::from_secs(1);
        assert!(!f.recently_confirmed(t0, max));
        let a = f.join(t0, GIVE_UP);
        f.answered(a.send.unwrap_or(0), Outcome::Confirmed(5), t0);
        assert!(f.recently_confirmed(t0 + Duration::from_millis(10), max));
        assert!(!f.recently_confirmed(t0 + Duration::from_secs(2), max));
        f.wrote(t0 + Duration::from_millis(5));
        assert!(f.written_since_confirmed());
        assert!(!f.recently_confirmed(t0 + Duration::from_millis(10), max));
        // A confirmation requested after the write counts again.
        let t1 = t0 + Duration::from_millis(20);
        let b = f.join(t1, GIVE_UP);
        f.answered(b.send.unwrap_or(0), Outcome::Confirmed(9), t1);
        assert!(f.recently_confirmed(t1, max));
        assert!(!f.written_since_confirmed());
        // An unconfirmed answer confirms nothing.
        let c = f.join(t1 + max * 3, GIVE_UP);
        f.answered(c.send.unwrap_or(0), Outcome::Unconfirmed, t1 + max * 3);
        assert!(!f.recently_confirmed(t1 + max * 3, max));
    }
}
