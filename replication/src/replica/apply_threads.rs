//! The threads that write committed entries to redb ([`ApplyThreads`]).
//!
//! Applying is behind the log by design: answers and acks leave before
//! it, and the leader decides ops against the state plus the pending
//! entries. Under load it is also a fifth of the machine's CPU (redb
//! B-tree inserts and page copies, at 64 clients on three nodes), and at
//! the same priority it takes that CPU from the threads a write waits
//! for: the protocol loop, the log's flushes, the network. So a job that
//! nobody waits for runs on `pika-apply-bg`, at a lower priority
//! ([`BEHIND_NICENESS`]): it runs when those threads leave a core free,
//! and entries gather meanwhile (one transaction then carries more of
//! them). A job that someone waits for runs on `pika-apply`, at the
//! node's own priority: a read of a pending path waits for the apply
//! (`SharedPending`), and a watch's next event for the state to move.
//! Sent to the thread behind too, such a job made a read right after a
//! write on a follower up to 70 % slower at the median under load, and
//! two to three times slower at p90 (`docs/benchmarks.md`, "Applies
//! nobody waits for yield the CPU").
//!
//! Invariant: one job at a time across both threads. The driver sends a
//! job only when none is in flight ([`ReplicaCore::begin_apply`] refuses
//! another until [`ReplicaCore::finish_apply`]), so each job continues
//! the state the previous one left, whichever thread ran it.
//!
//! [`ReplicaCore::begin_apply`]: super::ReplicaCore::begin_apply
//! [`ReplicaCore::finish_apply`]: super::ReplicaCore::finish_apply

use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedSender;

use super::ApplyJob;
use super::driver::{Applied, panic_message};
use crate::store::{Store, StoreError};

/// How much higher `pika-apply-bg`'s nice value is than the node's (at
/// most 19). From the default 0 to 10: a weight of 110 against 1 024, so
/// it takes about a tenth of a core that a busy write path also wants,
/// and all of an idle one. Raising a priority back needs a privilege, so
/// the thread keeps it.
pub(crate) const BEHIND_NICENESS: i32 = 10;

/// Where apply jobs go. Dropping it ends both threads, each after the
/// job it is on.
pub(crate) struct ApplyThreads {
    waited_on: Sender<ApplyJob>,
    behind: Sender<ApplyJob>,
}

impl ApplyThreads {
    /// Starts `pika-apply` and `pika-apply-bg`. Each reports every job
    /// it ran on `applied`: its last revision and how the store write went.
    pub(crate) fn start(
        store: &Arc<Store>,
        applied: &UnboundedSender<Applied>,
    ) -> std::io::Result<(ApplyThreads, [JoinHandle<()>; 2])> {
        let (waited_on, waited_on_thread) = spawn("pika-apply", None, store, applied)?;
        let (behind, behind_thread) =
            spawn("pika-apply-bg", Some(BEHIND_NICENESS), store, applied)?;
        Ok((
            ApplyThreads { waited_on, behind },
            [waited_on_thread, behind_thread],
        ))
    }

    /// Hands `job` to a thread: `pika-apply` when `someone_waits` (a
    /// reader of a pending path, a watcher), `pika-apply-bg`
    /// otherwise. The job comes back when that thread is gone.
    pub(crate) fn send(&self, job: ApplyJob, someone_waits: bool) -> Result<(), ApplyJob> {
        let thread = if someone_waits {
            &self.waited_on
        } else {
            &self.behind
        };
        thread.send(job).map_err(|e| e.0)
    }
}

fn spawn(
    name: &str,
    nicer_by: Option<i32>,
    store: &Arc<Store>,
    applied: &UnboundedSender<Applied>,
) -> std::io::Result<(Sender<ApplyJob>, JoinHandle<()>)> {
    let (jobs, job_rx) = std::sync::mpsc::channel::<ApplyJob>();
    let store = store.clone();
    let applied = applied.clone();
    let thread = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Some(by) = nicer_by {
                lower_priority(by);
            }
            // It ends once the protocol thread drops its sender, after the
            // job it is on.
            for job in job_rx {
                // The protocol waits for the answer: it must come even
                // from a store write that panicked.
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.write(&store)))
                        .unwrap_or_else(|panic| {
                            Err(StoreError::Panicked(panic_message(panic.as_ref())).into())
                        });
                if applied.send((job.last, result)).is_err() {
                    return;
                }
            }
        })?;
    Ok((jobs, thread))
}

/// Raises the calling thread's nice value by `by`, to at most 19 (on
/// Linux each thread has its own). A failure costs only speed: the thread
/// runs at the node's priority, as all of it did before.
fn lower_priority(by: i32) {
    let thread = rustix::thread::gettid();
    let lowered = rustix::process::getpriority_process(Some(thread))
        .and_then(|nice| rustix::process::setpriority_process(Some(thread), (nice + by).min(19)));
    if let Err(e) = lowered {
        tracing::debug!(error = %e, by, "could not lower the apply thread's priority");
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// The nice value in a `/proc/.../stat` (field 19).
    fn nice_in(stat: &str) -> i32 {
        // After the name in parentheses: state is field 3, nice 19.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        fields[16].parse().unwrap()
    }

    /// The nice values of this process's threads named `name`.
    fn nice_of(name: &str) -> Vec<i32> {
        let mut nice = Vec::new();
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
                continue;
            };
            if comm.trim_end() == name {
                nice.push(nice_in(&std::fs::read_to_string(dir.join("stat")).unwrap()));
            }
        }
        nice
    }

    #[test]
    fn jobs_nobody_waits_for_run_at_a_lower_priority_and_both_threads_report() {
        let store = Arc::new(Store::open_in_memory(20).unwrap());
        let (applied_tx, mut applied) = tokio::sync::mpsc::unbounded_channel();
        let (threads, handles) = ApplyThreads::start(&store, &applied_tx).unwrap();
        let job = |last| ApplyJob::entries(Vec::new(), Vec::new(), last);
        threads.send(job(1), true).unwrap();
        let (last, result) = applied.blocking_recv().unwrap();
        assert_eq!(last, 1);
        assert!(result.is_ok());
        threads.send(job(2), false).unwrap();
        let (last, result) = applied.blocking_recv().unwrap();
        assert_eq!(last, 2);
        assert!(result.is_ok());

        // Both threads are up and have set their priority by now: each
        // ran a job. They start at this thread's.
        let own = nice_in(&std::fs::read_to_string("/proc/thread-self/stat").unwrap());
        assert_eq!(nice_of("pika-apply"), vec![own]);
        assert_eq!(
            nice_of("pika-apply-bg"),
            vec![(own + BEHIND_NICENESS).min(19)]
        );

        drop(threads);
        for handle in handles {
            handle.join().unwrap();
        }
    }
}
