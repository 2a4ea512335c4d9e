//! Running a log's flushes: a flush is a [`SyncJob`] (the records to
//! write, then the files to sync), run one at a time and in order by the
//! [`Syncer`], on the log's sync thread or, for a follower's protocol
//! thread, on the thread that took it ([`HeldFlushes::run_here`]).
//!
//! Invariant: job n runs only once every job before it is done, on
//! whichever thread; after a failed job none runs (its completion reports
//! the failure), since later records would follow a hole or a torn one.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use super::FlushDone;
use super::segment;

/// Records for a segment, from `at`.
pub(super) struct Write {
    pub(super) file: Arc<File>,
    pub(super) at: u64,
    pub(super) bytes: Vec<u8>,
}

/// A flush for the sync thread: writes, then the files written synced in
/// order, then the directory, then segments no longer needed.
pub(super) struct SyncJob {
    /// This job's number: entries it writes are evicted from the cache
    /// only once it is done.
    pub(super) number: u64,
    pub(super) writes: Vec<Write>,
    /// The active segment, synced even when nothing new was written.
    pub(super) active: Arc<File>,
    pub(super) dir: Option<PathBuf>,
    pub(super) delete: Vec<PathBuf>,
    pub(super) done: FlushDone,
}

/// Runs flushes one at a time, in order: on the sync thread, or on the
/// thread that took them from the log ([`HeldFlushes::run_here`]) when
/// no earlier one is still on the sync thread.
#[derive(Default)]
pub(super) struct Syncer {
    /// The last flush whose writes are done: what the cache may forget,
    /// and what a flush run elsewhere must not overtake.
    written: AtomicU64,
    /// After a failed job nothing more is written: the records of later
    /// jobs would follow a hole or a torn record, and the log is reopened
    /// anyway.
    failed: AtomicBool,
    /// [`super::LogOptions::sync_delay_ms`].
    delay_ms: Arc<AtomicU64>,
}

impl Syncer {
    pub(super) fn new(delay_ms: Arc<AtomicU64>) -> Syncer {
        Syncer {
            delay_ms,
            ..Syncer::default()
        }
    }

    /// The last flush whose writes are done.
    pub(super) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// A job's writes, the syncs, then the directory, then the deletions,
    /// then the completion.
    pub(super) fn run(&self, job: SyncJob) {
        let result = if self.failed.load(Ordering::Acquire) {
            Err(io::Error::other("an earlier flush of the log failed"))
        } else {
            let delay = self.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                std::thread::sleep(std::time::Duration::from_millis(delay));
            }
            sync(&job)
        };
        match &result {
            Ok(()) => {
                self.written.fetch_max(job.number, Ordering::AcqRel);
            }
            Err(_) => self.failed.store(true, Ordering::Release),
        }
        job.done.call(result);
    }

    /// Every flush before `number` is done (or failed: then the failure
    /// is the sync thread's to report, in order).
    fn caught_up_to(&self, number: u64) -> bool {
        !self.failed.load(Ordering::Acquire) && self.written.load(Ordering::Acquire) + 1 == number
    }
}

/// Flushes taken from the log ([`super::ReplicatedLog::take_held`]). Dropped
/// without a run, they go to the sync thread.
pub struct HeldFlushes {
    pub(super) jobs: Vec<SyncJob>,
    pub(super) syncer: Arc<Syncer>,
    pub(super) thread: Option<mpsc::Sender<SyncJob>>,
}

impl HeldFlushes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Runs them on this thread, in order. A job that would overtake one
    /// still on the sync thread goes there instead, with those after it.
    pub fn run_here(mut self) {
        while let Some(job) = self.jobs.first() {
            if !self.syncer.caught_up_to(job.number) {
                break;
            }
            let job = self.jobs.remove(0);
            self.syncer.run(job);
        }
    }

    /// Hands them to the sync thread (as dropping them does).
    pub fn hand_off(self) {
        drop(self);
    }
}

impl Drop for HeldFlushes {
    /// What is left goes to the sync thread, in order.
    fn drop(&mut self) {
        for job in self.jobs.drain(..) {
            let unsent = match self.thread.as_ref() {
                Some(thread) => thread.send(job).err().map(|e| e.0),
                None => Some(job),
            };
            if let Some(job) = unsent {
                job.done
                    .call(Err(io::Error::other("the log's sync thread stopped")));
            }
        }
    }
}

fn sync(job: &SyncJob) -> io::Result<()> {
    // Invariant (the log's open relies on it, `replay.rs`): nothing is
    // written to a segment before everything written to the segments
    // before it is synced. A flush that rolls over syncs the full segment
    // before the new one's header, so a crash can tear only the last
    // segment holding anything; a bad record followed by a segment with
    // records in it is damage, never a crash's tail. The writes come in
    // log order, one segment after another, so each segment's run of
    // writes is synced once, at its end.
    for (i, w) in job.writes.iter().enumerate() {
        w.file.write_all_at(&w.bytes, w.at)?;
        let segment_done = job
            .writes
            .get(i + 1)
            .is_none_or(|next| !Arc::ptr_eq(&next.file, &w.file));
        if segment_done {
            w.file.sync_data()?;
        }
    }
    // The active segment, when nothing was written to it.
    if job
        .writes
        .last()
        .is_none_or(|w| !Arc::ptr_eq(&w.file, &job.active))
    {
        job.active.sync_data()?;
    }
    if let Some(dir) = &job.dir {
        segment::sync_dir(dir)?;
        // Oldest first, stopping at a failure: the segments left stay a
        // run of consecutive numbers.
        for path in &job.delete {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(segment = %path.display(), error = %e, "could not delete a log segment no longer needed");
                break;
            }
        }
        if !job.delete.is_empty() {
            segment::sync_dir(dir)?;
        }
    }
    Ok(())
}
