//! Where a follower's log flush runs ([`FlushPlacement`]).
//!
//! On the protocol thread a flush saves two thread hand-overs per batch
//! (writes spread over three nodes +10 % under `wrk`, `docs/benchmarks.md`,
//! "A follower syncs its own log"). But while it syncs, the thread takes
//! no `Diff`, and a leader commits only once every member of its
//! replication set has *received* a batch: a follower whose disk stalls
//! would hold every write up for as long as its sync lasts, where on the
//! sync thread its receipts keep flowing and a durable quorum forms
//! without it. So one sync slower than [`SLOW_SYNC`] sends the follower's
//! flushes to the sync thread for [`SLOW_SYNC_BACKOFF`]: a stalling disk
//! costs writes one slow sync, not every one. Sans IO: the driver brings
//! the time.

use std::time::{Duration, Instant};

/// A sync this slow is not the disk's usual pace (100–300 µs here, a few
/// ms at the tail under load).
pub(crate) const SLOW_SYNC: Duration = Duration::from_millis(20);

/// How long flushes stay on the sync thread after a slow one.
pub(crate) const SLOW_SYNC_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushPlacement {
    /// Flushes go to the sync thread until then.
    hand_off_until: Option<Instant>,
}

impl FlushPlacement {
    /// Whether the flushes a step produced run on the protocol thread: on
    /// a follower (a leader's protocol thread takes acks meanwhile), unless
    /// a recent sync was slow.
    pub(crate) fn here(&self, following: bool, now: Instant) -> bool {
        following && self.hand_off_until.is_none_or(|until| now >= until)
    }

    /// A flush run on the protocol thread took `took`. Returns whether it
    /// was slow (the caller says so in the log).
    pub(crate) fn ran(&mut self, took: Duration, now: Instant) -> bool {
        let slow = took > SLOW_SYNC;
        if slow {
            self.hand_off_until = Some(now + SLOW_SYNC_BACKOFF);
        }
        slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn followers_sync_here_until_a_slow_sync_then_on_the_sync_thread_for_a_while() {
        let t0 = Instant::now();
        let mut p = FlushPlacement::default();
        assert!(p.here(true, t0), "a follower syncs on its protocol thread");
        assert!(!p.here(false, t0), "a leader never does");
        assert!(!p.ran(Duration::from_micros(300), t0));
        assert!(p.here(true, t0), "a usual sync changes nothing");
        let slow_at = t0 + Duration::from_secs(1);
        assert!(p.ran(SLOW_SYNC + Duration::from_millis(1), slow_at));
        assert!(!p.here(true, slow_at), "after a slow sync: the sync thread");
        assert!(!p.here(true, slow_at + SLOW_SYNC_BACKOFF - Duration::from_millis(1)));
        assert!(
            p.here(true, slow_at + SLOW_SYNC_BACKOFF),
            "and back once the backoff is over"
        );
    }
}
