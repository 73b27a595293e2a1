//! The leadership handle: whether this replica may write at this instant, and which writes
//! are still in flight. The election ([`crate::leader::LeaderElector`]) grants and revokes it; every
//! writer checks it immediately before each write. No I/O here.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Why a write gated by [`Leadership::write`] was not completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteLapsed {
    /// This replica did not lead when the write was due; nothing was sent.
    #[error("not writing: this replica does not lead")]
    NotLeading,
    /// The write did not finish within its budget (its timeout, or the time left before the
    /// renew deadline).
    #[error("the write did not finish within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    No,
    Until(Instant),
    Unbounded,
}

/// Whether this replica may write now: a handle every writer checks immediately before each
/// write. Leadership held through a lease ends by itself at the renew deadline, even if the task
/// renewing the lease is stuck in a hanging call. Writes made through [`Leadership::write`] are
/// counted while in flight, so a release can wait for them.
#[derive(Debug, Clone)]
pub struct Leadership {
    lead: watch::Receiver<Lead>,
    writes: Arc<watch::Sender<usize>>,
}

/// Grants and revokes [`Leadership`]; held by whoever runs the election.
#[derive(Debug)]
pub struct LeadershipSetter {
    lead: watch::Sender<Lead>,
    writes: Arc<watch::Sender<usize>>,
}

/// Counts one write as in flight until dropped.
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn enter(writes: &Arc<watch::Sender<usize>>) -> Self {
        writes.send_modify(|n| *n += 1);
        InFlight(writes.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Leadership {
    /// A handle that is not leading, and its setter.
    pub fn new() -> (LeadershipSetter, Leadership) {
        let (tx, rx) = watch::channel(Lead::No);
        let writes = Arc::new(watch::Sender::new(0));
        (
            LeadershipSetter {
                lead: tx,
                writes: writes.clone(),
            },
            Leadership { lead: rx, writes },
        )
    }

    /// Whether writes are allowed at this instant.
    pub fn is_leading(&self) -> bool {
        match *self.lead.borrow() {
            Lead::No => false,
            Lead::Until(t) => Instant::now() < t,
            Lead::Unbounded => true,
        }
    }

    /// How long a write starting now may take: `None` when not leading, else `max` capped at
    /// the time left before the renew deadline. A write bounded by it ends (on this side) before
    /// a standby could consider the lease expired, even if the API server hangs it.
    pub fn write_budget(&self, max: Duration) -> Option<Duration> {
        match *self.lead.borrow() {
            Lead::No => None,
            Lead::Until(t) => {
                let left = t.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| left.min(max))
            }
            Lead::Unbounded => Some(max),
        }
    }

    /// Runs the write `call` if this replica leads, bounded by [`Leadership::write_budget`],
    /// and counts it as in flight until it is answered or cut.
    pub async fn write<T>(
        &self,
        max: Duration,
        call: impl Future<Output = T>,
    ) -> Result<T, WriteLapsed> {
        // Counted before leadership is checked, and [`LeadershipSetter::drain`] reads the count
        // after leadership was revoked: a write either sees the revocation or is waited for.
        let _in_flight = InFlight::enter(&self.writes);
        let budget = self.write_budget(max).ok_or(WriteLapsed::NotLeading)?;
        tokio::time::timeout(budget, call)
            .await
            .map_err(|_| WriteLapsed::Timeout(budget))
    }

    /// Completes when leadership was granted, renewed or revoked; an error once the setter is
    /// gone. Expiry at the deadline is not announced: check [`Leadership::is_leading`].
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.lead.changed().await
    }
}

impl LeadershipSetter {
    /// Leading until `deadline` (extended by each renewal).
    pub fn lead_until(&self, deadline: Instant) {
        self.lead.send_replace(Lead::Until(deadline));
    }

    /// Leading without election (a single replica).
    pub fn lead_unbounded(&self) {
        self.lead.send_replace(Lead::Unbounded);
    }

    /// Not leading: new writes are refused from now on; those in flight go on (see
    /// [`LeadershipSetter::drain`]).
    pub fn stop(&self) {
        self.lead.send_replace(Lead::No);
    }

    /// The renew deadline leadership is granted until, when it is bounded.
    pub fn deadline(&self) -> Option<Instant> {
        match *self.lead.borrow() {
            Lead::Until(t) => Some(t),
            Lead::No | Lead::Unbounded => None,
        }
    }

    /// Writes started through [`Leadership::write`] and not yet answered or cut.
    pub fn writes_in_flight(&self) -> usize {
        *self.writes.borrow()
    }

    /// Waits at most `within` until no write is in flight; the number still in flight after.
    /// Call it after [`LeadershipSetter::stop`], so no new write starts meanwhile.
    pub async fn drain(&self, within: Duration) -> usize {
        let mut writes = self.writes.subscribe();
        let idle = async move { writes.wait_for(|n| *n == 0).await.is_ok() };
        match tokio::time::timeout(within, idle).await {
            Ok(true) => 0,
            _ => self.writes_in_flight(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write may take at most its own timeout, and never past the renew deadline; without
    /// leadership nothing is sent.
    #[tokio::test]
    async fn writes_end_before_the_renew_deadline() {
        let (set, lead) = Leadership::new();
        let max = Duration::from_secs(8);
        assert_eq!(lead.write_budget(max), None);
        assert_eq!(
            lead.write(max, async { 1 }).await,
            Err(WriteLapsed::NotLeading)
        );
        set.lead_unbounded();
        assert_eq!(lead.write_budget(max), Some(max));
        set.lead_until(Instant::now() + Duration::from_millis(200));
        let budget = lead.write_budget(max).unwrap_or(max);
        assert!(budget <= Duration::from_millis(200), "{budget:?}");
        let started = Instant::now();
        let hung = lead.write(max, std::future::pending::<()>()).await;
        assert!(matches!(hung, Err(WriteLapsed::Timeout(_))), "{hung:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(!lead.is_leading());
        assert_eq!(lead.write_budget(max), None);
    }

    /// A release waits for the writes in flight: a write that started before leadership was
    /// revoked is answered before the drain returns, and none starts after.
    #[tokio::test]
    async fn drain_waits_for_writes_in_flight_and_refuses_new_ones() {
        let (set, lead) = Leadership::new();
        set.lead_until(Instant::now() + Duration::from_secs(10));
        let (answer, answered) = tokio::sync::oneshot::channel::<()>();
        let writer = lead.clone();
        let write = tokio::spawn(async move {
            writer
                .write(Duration::from_secs(8), async {
                    let _ = answered.await;
                    Instant::now()
                })
                .await
        });
        while set.writes_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        set.stop();
        assert_eq!(
            lead.write(Duration::from_secs(8), async {}).await,
            Err(WriteLapsed::NotLeading)
        );
        assert_eq!(set.drain(Duration::from_millis(50)).await, 1);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = answer.send(());
        });
        assert_eq!(set.drain(Duration::from_secs(5)).await, 0);
        let done = Instant::now();
        let landed = write.await.ok().and_then(Result::ok);
        assert!(landed.is_some_and(|t| t <= done), "{landed:?}");
    }

    /// A write cut at the renew deadline is no longer in flight: the drain does not wait past it.
    #[tokio::test]
    async fn drain_ends_with_writes_cut_at_their_deadline() {
        let (set, lead) = Leadership::new();
        set.lead_until(Instant::now() + Duration::from_millis(200));
        let writer = lead.clone();
        let write = tokio::spawn(async move {
            writer
                .write(Duration::from_secs(8), std::future::pending::<()>())
                .await
        });
        while set.writes_in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        set.stop();
        let started = Instant::now();
        assert_eq!(set.drain(Duration::from_secs(5)).await, 0);
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(write.await, Ok(Err(WriteLapsed::Timeout(_)))));
    }
}
