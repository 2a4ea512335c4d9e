//! Where a follower's log flush runs ([`FlushPlacement`]).
//!
//! On the protocol thread a flush saves two thread hand-overs per batch
//! (writes spread over three nodes +10 % under `wrk`, `docs/benchmarks.md`,
//! "A follower syncs its own log"). But while it syncs, the thread takes
//! no `Diff`, and a leader commits only once every member of its
//! replication set has *received* a batch: a follower whose disk stalls
//! would hold every write up for as long as its sync lasts, where on the
//! sync thread its receipts keep flowing and a durable quorum forms
//! without it. So a disk that stalls sends the follower's flushes to the
//! sync thread for [`SLOW_SYNC_BACKOFF`]: it costs writes a few hundred
//! milliseconds, not every sync's length.
//!
//! A stall is when the syncs slower than [`SLOW_SYNC`] that ended within
//! the last [`STALL_WINDOW`] took more than [`STALL_BUDGET`] between them:
//! one sync of 300 ms, or ten of 25 ms in a second. Single syncs of
//! 20–45 ms are ordinary on a shared disk, and they come in clusters while
//! the nodes' checkpoints write back: at 64 clients on three nodes, a
//! follower's sync took that long about once in 8 s, and three of them
//! fell within one second once in 23 s. Handing off at the first (as this
//! did at first), or at the third within a second, put every follower
//! back on the sync thread within seconds of the load starting: the syncs
//! on the protocol thread never ran under load. Sans IO: the driver
//! brings the time.

use std::time::{Duration, Instant};

/// A sync this slow is not the disk's usual pace (100–300 µs here, a few
/// ms at the tail under load), and counts toward a stall.
pub(crate) const SLOW_SYNC: Duration = Duration::from_millis(20);

/// Slow syncs that ended this long ago or less count toward a stall ...
pub(crate) const STALL_WINDOW: Duration = Duration::from_secs(1);

/// ... when, between them, they took more than this.
pub(crate) const STALL_BUDGET: Duration = Duration::from_millis(200);

/// How long flushes stay on the sync thread after a stall.
pub(crate) const SLOW_SYNC_BACKOFF: Duration = Duration::from_secs(30);

/// Slow syncs remembered: this many of them take at least
/// `SLOW_SYNC · REMEMBERED`, the budget, so no older one can matter.
const REMEMBERED: usize = (STALL_BUDGET.as_millis() / SLOW_SYNC.as_millis()) as usize;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushPlacement {
    /// Flushes go to the sync thread until then.
    hand_off_until: Option<Instant>,
    /// The last slow syncs: when each ended and how long it took, oldest
    /// first.
    slow: [Option<(Instant, Duration)>; REMEMBERED],
}

impl FlushPlacement {
    /// Whether the flushes a step produced run on the protocol thread: on
    /// a follower (a leader's protocol thread takes acks meanwhile), unless
    /// its disk stalled lately.
    pub(crate) fn here(&self, following: bool, now: Instant) -> bool {
        following && self.hand_off_until.is_none_or(|until| now >= until)
    }

    /// A flush run on the protocol thread took `took`, ending at `now`.
    /// Returns whether that makes a stall (the caller says so in the log).
    pub(crate) fn ran(&mut self, took: Duration, now: Instant) -> bool {
        if took <= SLOW_SYNC {
            return false;
        }
        self.slow.rotate_left(1);
        if let Some(last) = self.slow.last_mut() {
            *last = Some((now, took));
        }
        let window_start = now.checked_sub(STALL_WINDOW);
        let within: Duration = self
            .slow
            .iter()
            .flatten()
            .filter(|(at, _)| window_start.is_none_or(|start| *at >= start))
            .map(|(_, took)| *took)
            .sum();
        let stalled = within > STALL_BUDGET;
        if stalled {
            self.hand_off_until = Some(now + SLOW_SYNC_BACKOFF);
            self.slow = Default::default();
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLOW: Duration = Duration::from_millis(30);

    #[test]
    fn one_stalled_sync_hands_flushes_to_the_sync_thread_for_a_while() {
        let t0 = Instant::now();
        let mut p = FlushPlacement::default();
        assert!(p.here(true, t0), "a follower syncs on its protocol thread");
        assert!(!p.here(false, t0), "a leader never does");
        assert!(!p.ran(Duration::from_micros(300), t0));
        assert!(p.here(true, t0), "a usual sync changes nothing");
        let stalled_at = t0 + Duration::from_secs(1);
        assert!(p.ran(Duration::from_millis(300), stalled_at));
        assert!(!p.here(true, stalled_at), "after a stall: the sync thread");
        assert!(!p.here(
            true,
            stalled_at + SLOW_SYNC_BACKOFF - Duration::from_millis(1)
        ));
        assert!(
            p.here(true, stalled_at + SLOW_SYNC_BACKOFF),
            "and back once the backoff is over"
        );
    }

    #[test]
    fn slow_syncs_hand_off_once_they_take_the_budget_within_the_window() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // A cluster of slow syncs every second, as checkpoints make them.
        let mut p = FlushPlacement::default();
        for second in 0..10 {
            for i in 0..5 {
                let now = at(1_000 * second + 100 * i);
                assert!(!p.ran(SLOW, now), "second {second}, slow sync {i}");
                assert!(p.here(true, now));
            }
        }
        // Seven of 30 ms within a second: 210 ms, over the budget.
        let mut p = FlushPlacement::default();
        for i in 0..6 {
            assert!(!p.ran(SLOW, at(20_000 + 100 * i)), "slow sync {i}");
        }
        assert!(p.here(true, at(20_500)), "180 ms are not yet a stall");
        assert!(p.ran(SLOW, at(20_900)));
        assert!(!p.here(true, at(20_900)));
        // After the backoff the count starts again.
        let back = at(20_900) + SLOW_SYNC_BACKOFF;
        assert!(p.here(true, back));
        assert!(
            !p.ran(SLOW, back),
            "the slow syncs before the stall do not count"
        );
        // Fast syncs in between change nothing; older slow ones drop out.
        let mut p = FlushPlacement::default();
        assert!(!p.ran(Duration::from_millis(150), at(40_000)));
        assert!(!p.ran(Duration::from_micros(200), at(40_100)));
        assert!(!p.ran(Duration::from_millis(40), at(40_999)), "190 ms");
        assert!(
            !p.ran(Duration::from_millis(40), at(41_001)),
            "the first has dropped out: 80 ms"
        );
        assert!(p.ran(Duration::from_millis(150), at(41_100)), "230 ms");
    }
}
