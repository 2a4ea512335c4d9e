//! Counters a node exports as metrics. Kept per membership instance (not in
//! a process-global registry) so several nodes in one test process each
//! count their own traffic.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    pub datagrams_in: AtomicU64,
    pub datagrams_out: AtomicU64,
    /// Datagram payload bytes (SWIM and heartbeats), before QUIC's
    /// overhead.
    pub datagram_bytes_in: AtomicU64,
    pub datagram_bytes_out: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    /// Stream bytes, frame headers included: what replication, sync,
    /// election and forwarding cost on the wire (before QUIC's overhead).
    pub frame_bytes_in: AtomicU64,
    pub frame_bytes_out: AtomicU64,
    /// Handshakes that failed admission: wrong or missing key, wrong prefix.
    pub handshakes_rejected: AtomicU64,
    /// Incoming connections refused because `MAX_HANDSHAKES` were in
    /// progress.
    pub handshakes_refused: AtomicU64,
    /// Datagrams dropped because they did not decode or foca refused them.
    pub malformed_dropped: AtomicU64,
    /// Datagrams read and not yet handled (a level, not a count).
    pub datagrams_queued: AtomicU64,
    /// Datagrams dropped because `MAX_QUEUED_DATAGRAMS` were waiting.
    pub datagrams_overflow: AtomicU64,
    /// Failed dials not recorded because `MAX_DIAL_RECORDS` were kept.
    pub dial_records_full: AtomicU64,
}

/// A copy of [`Stats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub datagram_bytes_in: u64,
    pub datagram_bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    pub frame_bytes_in: u64,
    pub frame_bytes_out: u64,
    pub handshakes_rejected: u64,
    pub handshakes_refused: u64,
    pub malformed_dropped: u64,
    pub datagrams_overflow: u64,
    pub dial_records_full: u64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            datagram_bytes_in: get(&self.datagram_bytes_in),
            datagram_bytes_out: get(&self.datagram_bytes_out),
            frames_in: get(&self.frames_in),
            frames_out: get(&self.frames_out),
            frame_bytes_in: get(&self.frame_bytes_in),
            frame_bytes_out: get(&self.frame_bytes_out),
            handshakes_rejected: get(&self.handshakes_rejected),
            handshakes_refused: get(&self.handshakes_refused),
            malformed_dropped: get(&self.malformed_dropped),
            datagrams_overflow: get(&self.datagrams_overflow),
            dial_records_full: get(&self.dial_records_full),
        }
    }
}
