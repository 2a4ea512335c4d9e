//! A stateright model of one node's apply pipeline (`replica/apply.rs`,
//! `replica/driver.rs`): committed entries are written to the state by an
//! apply thread, one job at a time, while the protocol goes on. Checked
//! exhaustively by BFS: with at most `MAX_APPENDS` = 6 entries appended
//! over a run, every reachable state (158 893 of them; none needs more than
//! `STEPS` = 60 actions: a bound of 90 finds the same states).
//!
//! Modelled: the node's log (entries on two paths, each with its own id),
//! its durable prefix and the commit index it knows; the state (what the
//! store holds, a prefix of the log) and its last checkpoint; the pending
//! entries (everything above the revision the last finished apply or
//! install reached, as `PendingPaths` keeps them); the apply job in three
//! steps: `Begin` (what `ReplicaCore::begin_apply` takes), `Write` (the
//! store's transaction on the apply thread, which checks that the job
//! continues the state it finds) and `Finish` (`finish_apply`); and around
//! it, at any moment: appends, flushes, commits, truncation of the
//! uncommitted suffix, a snapshot session (start; its last answer plans an
//! install at the commit index, refused if the state moved since the start
//! or is ahead; the install is a job for the apply thread like an apply,
//! `replica/snapshot.rs`, written durably, and the log and durable end
//! move to it at its finish), a new leader while a session runs (it ends a
//! session still asking, not a planned install), checkpoints, a failing
//! disk with a recovery in place (the log back to its durable prefix, the
//! state to its checkpoint, the log started at the state when that is
//! ahead of it), and crashes (the same, as a new incarnation).
//!
//! Abstracted: the cluster. The commit index rises one entry at a time
//! and never over a truncation (the leader's commit rule), and every
//! entry in the log may already be acknowledged to its writer (a write is
//! answered once every set member received it: what this node has is all
//! it may need to show).
//!
//! Checked always:
//! - a read of a path with no pending entry, on a node that serves reads
//!   (no disk error, no snapshot session), sees every entry of that path
//!   in the log;
//! - the state is a prefix of the log, holds only committed entries
//!   durable in the log (while an install is written, entries through the
//!   install's revision: the log's durable end reaches it at the finish),
//!   and only moves forward within one incarnation;
//! - no store write fails for a gap (a job that does not continue the
//!   state: the node would stop on a disk error for nothing).
//!
//! Each guard the code keeps, dropped (`Bug`), yields a counterexample:
//! clearing the pending entries when the job begins instead of when it
//! finishes; starting a snapshot session while a job is in flight; a
//! recovery in place while one is; a new leader ending a planned install.

use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model, Property};

const PATHS: u8 = 2;
/// Entries appended over a run.
const MAX_APPENDS: u8 = 6;
/// Every state reachable in at most this many actions is checked: with
/// `MAX_APPENDS` = 6, that is every reachable state.
const STEPS: usize = 60;

const READS: &str = "a read of a path with nothing pending sees every entry of it in the log";
const STATE: &str = "the state is a committed, durable prefix of the log and only moves forward";
const NO_GAP: &str = "no store write fails for a gap";
const READ_AFTER_APPLY: &str = "a read is served after an apply on the apply thread";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// The job's entries stop being pending when it begins.
    PendingClearedAtBegin,
    /// A snapshot session starts while a job is in flight.
    SyncDuringApply,
    /// A recovery in place goes ahead while a job is in flight.
    RecoverDuringApply,
    /// A new leader ends a session whose install is planned (or being
    /// written), as it ends one still asking.
    NewLeaderEndsInstall,
}

struct ApplyModel {
    bug: Option<Bug>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Job {
    first: u8,
    last: u8,
    /// The entries, read from the log when the job began.
    entries: Vec<u8>,
    /// The store write's outcome once it ran: `true` for done.
    written: Option<bool>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    /// Entry ids; revision = index + 1; an entry's path is `id % PATHS`.
    log: Vec<u8>,
    durable: u8,
    commit: u8,
    /// What the store holds: entry ids, revision = index + 1.
    store: Vec<u8>,
    checkpoint: Vec<u8>,
    /// Entries above this revision are pending.
    pending_from: u8,
    job: Option<Job>,
    /// A snapshot session, and the state's revision when it started.
    syncing: Option<u8>,
    /// The session's install, planned at this revision (its last answer
    /// came): the session stays until the install's finish.
    install: Option<u8>,
    disk_error: bool,
    appended: u8,
    // Ghosts.
    /// The state's highest revision in this incarnation.
    high: u8,
    gap: bool,
    /// A read was served with an entry the apply thread wrote.
    read_after_apply: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Append,
    Flush,
    Commit,
    Truncate,
    Begin,
    Write,
    Finish,
    SyncStart,
    Install,
    NewLeader,
    Checkpoint,
    DiskFails,
    Recover,
    Crash,
}

impl State {
    fn pending(&self, path: u8) -> bool {
        self.log
            .iter()
            .skip(self.pending_from as usize)
            .any(|id| id % PATHS == path)
    }

    fn serves_reads(&self) -> bool {
        !self.disk_error && self.syncing.is_none()
    }

    /// A read of `path` sees every entry of it in the log.
    fn read_sees_log(&self, path: u8) -> bool {
        self.log
            .iter()
            .enumerate()
            .filter(|(_, id)| *id % PATHS == path)
            .all(|(i, id)| self.store.get(i) == Some(id))
    }

    /// The log back to its durable prefix and the state to its checkpoint,
    /// as a reopen after a disk error or a restart leaves them.
    fn reopen(&mut self) {
        self.log.truncate(self.durable as usize);
        self.store = self.checkpoint.clone();
        // The checkpoint holds committed entries of this log.
        self.commit = self.store.len() as u8;
        self.pending_from = self.commit;
        self.syncing = None;
        self.install = None;
        // An install written just before: the state is ahead of the log,
        // which starts there (`ReplicaCore::open_log`; what it held below
        // is the state's).
        if self.store.len() > self.log.len() {
            self.log = self.store.clone();
            self.durable = self.log.len() as u8;
        }
        self.disk_error = false;
        self.high = self.commit;
    }
}

impl ApplyModel {
    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }
}

impl Model for ApplyModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            log: Vec::new(),
            durable: 0,
            commit: 0,
            store: Vec::new(),
            checkpoint: Vec::new(),
            pending_from: 0,
            job: None,
            syncing: None,
            install: None,
            disk_error: false,
            appended: 0,
            high: 0,
            gap: false,
            read_after_apply: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let len = s.log.len() as u8;
        if s.appended < MAX_APPENDS && s.syncing.is_none() && !s.disk_error {
            actions.push(Action::Append);
        }
        if s.durable < len && !s.disk_error {
            actions.push(Action::Flush);
        }
        if s.commit < len && !s.disk_error {
            actions.push(Action::Commit);
        }
        if s.commit < len && !s.disk_error {
            actions.push(Action::Truncate);
        }
        let install_waits = s.install.is_some() && s.job.is_none();
        if s.job.is_none() && (s.syncing.is_none() || install_waits) && !s.disk_error {
            actions.push(Action::Begin);
        }
        match &s.job {
            Some(Job { written: None, .. }) => actions.push(Action::Write),
            Some(Job {
                written: Some(_), ..
            }) => actions.push(Action::Finish),
            None => {}
        }
        if s.syncing.is_none()
            && !s.disk_error
            && (s.job.is_none() || self.has(Bug::SyncDuringApply))
        {
            actions.push(Action::SyncStart);
        }
        if s.syncing.is_some() && s.install.is_none() {
            actions.push(Action::Install);
        }
        if s.syncing.is_some() {
            actions.push(Action::NewLeader);
        }
        if s.job.is_none() {
            actions.push(Action::Checkpoint);
        }
        if !s.disk_error {
            actions.push(Action::DiskFails);
        } else if s.job.is_none() || self.has(Bug::RecoverDuringApply) {
            actions.push(Action::Recover);
        }
        actions.push(Action::Crash);
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut s = state.clone();
        match action {
            Action::Append => {
                s.log.push(s.appended);
                s.appended += 1;
            }
            Action::Flush => s.durable = s.log.len() as u8,
            Action::Commit => s.commit += 1,
            Action::Truncate => {
                s.log.truncate(s.commit as usize);
                s.durable = s.durable.min(s.commit);
            }
            Action::Begin if s.install.is_some() => {
                // `begin_install`: the planned install, written whole.
                let at = s.install?;
                s.job = Some(Job {
                    first: 1,
                    last: at,
                    entries: s.log.get(..at as usize)?.to_vec(),
                    written: None,
                });
            }
            Action::Begin => {
                // `begin_apply`: what is committed and durable here.
                let target = s.commit.min(s.durable);
                let first = s.store.len() as u8 + 1;
                if target < first {
                    return None;
                }
                s.job = Some(Job {
                    first,
                    last: target,
                    entries: s.log[first as usize - 1..target as usize].to_vec(),
                    written: None,
                });
                if self.has(Bug::PendingClearedAtBegin) {
                    s.pending_from = s.pending_from.max(target);
                }
            }
            Action::Write if s.install.is_some() => {
                // `Store::install_staged`: one durable transaction, refused
                // below the state.
                let job = s.job.as_mut()?;
                let ok = s.store.len() <= job.entries.len();
                if ok {
                    s.store = job.entries.clone();
                    s.checkpoint = s.store.clone();
                }
                job.written = Some(ok);
            }
            Action::Write => {
                let job = s.job.as_mut()?;
                // `Store::apply_with` reads the state's revision inside its
                // transaction and refuses a job that does not continue it.
                let ok = s.store.len() as u8 + 1 == job.first;
                if ok {
                    s.store.extend_from_slice(&job.entries);
                }
                job.written = Some(ok);
            }
            Action::Finish if s.install.is_some() => {
                // `ReplicaCore::installed`: the log and its durable end
                // start at the install; the session ends.
                let job = s.job.take()?;
                s.syncing = None;
                s.install = None;
                if job.written != Some(true) {
                    s.gap = true;
                    return Some(s);
                }
                s.pending_from = s.pending_from.max(job.last);
                s.durable = s.durable.max(job.last);
            }
            Action::Finish => {
                let job = s.job.take()?;
                if job.written == Some(true) {
                    s.pending_from = s.pending_from.max(job.last);
                    if s.serves_reads() {
                        s.read_after_apply = true;
                    }
                } else {
                    s.gap = true;
                    s.disk_error = true;
                }
            }
            Action::SyncStart => s.syncing = Some(s.store.len() as u8),
            Action::Install => {
                // The session's last answer (`plan_install`).
                let since = s.syncing?;
                let at = s.commit;
                // Refused: the state moved since the session started, or
                // the snapshot is older than the state.
                if since as usize != s.store.len() || (at as usize) < s.store.len() {
                    s.syncing = None;
                    return Some(s);
                }
                s.install = Some(at);
            }
            Action::NewLeader => {
                if s.install.is_none() || self.has(Bug::NewLeaderEndsInstall) {
                    s.syncing = None;
                    s.install = None;
                }
            }
            Action::Checkpoint => s.checkpoint = s.store.clone(),
            Action::DiskFails => s.disk_error = true,
            Action::Recover => s.reopen(),
            Action::Crash => {
                s.reopen();
                s.job = None;
            }
        }
        s.high = s.high.max(s.store.len() as u8);
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(READS, |_, s: &State| {
                !s.serves_reads() || (0..PATHS).all(|p| s.pending(p) || s.read_sees_log(p))
            }),
            Property::always(STATE, |_, s: &State| {
                let n = s.store.len();
                let durable = match s.install {
                    Some(at) if s.job.is_some() => s.durable.max(at),
                    _ => s.durable,
                };
                n as u8 >= s.high
                    && n <= s.commit as usize
                    && n <= durable as usize
                    && s.log.get(..n) == Some(&s.store[..])
            }),
            Property::always(NO_GAP, |_, s: &State| !s.gap),
            Property::sometimes(READ_AFTER_APPLY, |_, s: &State| {
                s.read_after_apply && s.serves_reads()
            }),
        ]
    }
}

/// Checks every state within `steps` actions, one thread so that the BFS
/// goes level by level (see `log_model.rs`), stopping early once `done`
/// holds.
fn check(bug: Option<Bug>, done: HasDiscoveries) -> impl Checker<ApplyModel> {
    let started = Instant::now();
    let checker = ApplyModel { bug }
        .checker()
        .threads(1)
        .target_max_depth(STEPS + 2)
        .finish_when(done)
        .spawn_bfs()
        .join();
    eprintln!(
        "stateright apply ({bug:?}): {} states ({} unique) within {STEPS} steps, {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed()
    );
    checker
}

/// Checks `bug` until one of `properties` fails and prints the
/// counterexample.
fn counterexample(bug: Bug, properties: &[&'static str]) {
    let checker = check(
        Some(bug),
        HasDiscoveries::AnyOf(properties.iter().copied().collect()),
    );
    let Some((property, path)) = properties
        .iter()
        .find_map(|p| checker.discovery(p).map(|path| (p, path)))
    else {
        panic!("{bug:?}: no counterexample to {properties:?} within {STEPS} steps");
    };
    let actions = path.into_actions();
    eprintln!(
        "{bug:?} breaks \"{property}\" in {} steps: {actions:?}",
        actions.len()
    );
}

/// The apply pipeline keeps every invariant in every reachable state, and
/// serves a read after an apply on the apply thread.
#[test]
fn apply_thread_holds_its_invariants_in_every_reachable_state() {
    check(None, HasDiscoveries::All).assert_properties();
}

/// Entries that stop being pending before the store holds them let a read
/// miss them.
#[test]
fn clearing_pending_at_begin_breaks_reads() {
    counterexample(Bug::PendingClearedAtBegin, &[READS]);
}

/// An install while a job is in flight leaves the job a state it does not
/// continue.
#[test]
fn a_snapshot_during_an_apply_breaks_the_job() {
    counterexample(Bug::SyncDuringApply, &[NO_GAP]);
}

/// A new leader that ends a session whose install is being written: the
/// written state is taken for an apply of entries, and the log's durable
/// end is left behind it.
#[test]
fn a_new_leader_ending_a_planned_install_breaks_the_state() {
    counterexample(Bug::NewLeaderEndsInstall, &[STATE, NO_GAP]);
}

/// A recovery in place while a job is in flight does too, or worse: the
/// job lands on a state whose log has dropped its entries (and in the
/// code the store would reopen under a running transaction).
#[test]
fn a_recovery_during_an_apply_breaks_the_job() {
    counterexample(Bug::RecoverDuringApply, &[NO_GAP, STATE]);
}
