//! A stateright model of pika's rev-2 replicated log (DESIGN.md: "The
//! replicated log", "Writes and commit", "Reads"), checked exhaustively by
//! BFS: every state reachable in at most `STEPS` = 14 actions.
//!
//! Modelled: 3 voters, Q = 2; the election of `model.rs` (persisted
//! promises, grants restricted on last log position, one leader per epoch);
//! per node a log of entries (an entry is the epoch that wrote it, revision
//! = index + 1), its durable prefix, the commit index it knows and the
//! revision its state has applied. A flush is a step of its own; a crash
//! (with its restart, one step) loses the non-durable tail. The leader
//! appends at most `MAX_WRITES` writes and sends each as `Append {epoch,
//! prev position, entry}`; followers append what continues their log,
//! replace a conflicting uncommitted suffix (Raft's log matching), and ack
//! `Received` at once and `Durable` after their flush. An entry commits when
//! (a) it is durable on Q nodes (the leader counting itself only after its
//! own flush) and (b) every member of the replication set has received it;
//! the leader then answers the writer, applies what it has flushed, and
//! sends `Commit`. The set starts as every other node; the leader drops a
//! member only while that member has no read permission from it. A follower
//! may read while bound to the lease holder, in its set and confirmed (it
//! acked, this epoch, holding the leader's log as it was at election); any
//! node serves a read only with nothing pending. The network loses and
//! reorders anything.
//!
//! Abstracted: time. A lease can run out at any moment (`Expire`), and a
//! binding lapses (`Unbind`) only while nobody holds a lease, as in
//! `model.rs`; lease renewal and periodic heartbeats are not steps (a binding
//! stands for hearing the leader within L, and the heartbeat a new leader
//! sends is its only one). One path: every entry touches it, so a read waits
//! while any log entry is not yet in the state. No batching (one entry per
//! write), no catch-up or snapshot (an entry a follower missed is never
//! resent: it rejects what follows and stays unconfirmed, until the leader
//! drops it), no learners or voter changes. `ack_timeout` is a `Revoke`
//! at any moment: the member gets no more permission, may still hold what
//! it was granted until that runs out (`Lapse`), and only then may leave
//! the set. The lock
//! record a new leader writes first is abstracted as the rule it exists
//! for: counting acks commits only an entry of the leader's own epoch, and
//! earlier entries commit with it (Raft §5.4.2). A crash is a step only
//! where it loses a non-durable tail: anywhere else it only takes abilities
//! away (a lease, as `Expire` does; grants, while quiet; read permission,
//! until confirmed again), so not crashing covers it.
//!
//! Where DESIGN.md is silent or ambiguous the model chooses (read the
//! other way, the first two fail: `model_choices_are_needed_to_depth_14`):
//! - "Pending" is every log entry not yet applied to the state. With
//!   DESIGN.md's "received but not yet known committed", a node that knows
//!   an entry committed before its own flush (a leader committing on two
//!   followers' flushes, a follower hearing `Commit` early) cannot apply it
//!   yet, and serves a read without it.
//! - Confirmation belongs to one life of the follower: `Received` acks
//!   carry a boot count, and a leader that sees a new boot starts the member
//!   over (confirmed again only once it acks the leader's log end as of
//!   then). `Received` is volatile, so a follower restarting with the
//!   leader's confirmation intact could read without a write the leader
//!   counted it as holding.
//! - The commit index a node knows is volatile: a restarted node knows its
//!   applied prefix is committed (checkpoint plus replay, DESIGN.md) and
//!   nothing beyond; its state is not rolled back.
//!
//! Read index (a learner fed in batches reads this way; here any follower
//! may, which changes nothing in the leader's answer): once per run a
//! follower begins a read, asks the node it is bound to for its commit
//! index, and may serve the read once it has applied through the answer. A
//! leader answers only while it leads, once its epoch has committed an
//! entry; the follower takes an answer only from the epoch it promised.
//!
//! Checked always: one leader per epoch, never two leases at once; a read
//! that may be served sees every acknowledged write; a read by read index
//! that may be served sees every write acknowledged before it began; no committed entry is
//! truncated or replaced, and all states are prefixes of one committed log;
//! every acknowledged write is durable on Q nodes; every lease holder's log
//! holds every acknowledged write; the state only moves forward and never
//! runs ahead of the node's durable log or known commit. Checked sometimes:
//! a leader and a follower each serve a read after a write is acknowledged,
//! and a follower serves one by read index.
//! Dropping either half of the commit rule (`Bug`) yields a counterexample,
//! and so does serving a read-index read before applying through the index.
//! (Answering a read index before the leader's epoch committed an entry
//! needs two elections with an acknowledged write between them and the
//! read: deeper than 14 steps. The replica simulation finds it.)

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model, Property};

const NODES: usize = 3;
const QUORUM: usize = 2;
const MAX_EPOCH: u8 = 3;
const MAX_WRITES: u8 = 2;

/// Every state reachable in at most this many actions is checked.
const STEPS: usize = 14;

const ONE_LEADER: &str = "one leader per epoch";
const ONE_LEASE: &str = "never two leases at once";
const READS_SEE_ACKED: &str = "a read that may be served sees every acknowledged write";
const NO_DIRTY: &str = "committed entries are never truncated or replaced";
const ACKED_DURABLE: &str = "acknowledged writes are durable on a quorum";
const LEADER_COMPLETE: &str = "acknowledged writes are in every lease holder's log";
const FORWARD: &str = "the state only moves forward, behind the durable log and commit";
const LEADER_READ: &str = "a leader serves a read after a write is acknowledged";
const FOLLOWER_READ: &str = "a follower serves a read after a write is acknowledged";
const INDEX_READS_SEE_ACKED: &str =
    "a read by read index sees every write acknowledged before it began";
const INDEX_READ: &str = "a follower serves a read by read index after a write is acknowledged";

/// A fault injected into the protocol, to show the properties can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bug {
    /// Commit without (b): a set member that never received the entry
    /// keeps reading.
    CommitWithoutSetReceipt,
    /// Commit without (a): received on Q counts, and the leader counts
    /// itself before its flush.
    CommitWithoutDurableQuorum,
    /// DESIGN.md's literal "pending": only entries beyond the known commit.
    PendingEndsAtCommit,
    /// The leader's confirmation of a follower outlives the follower's
    /// restart.
    ConfirmationSurvivesRestart,
    /// A member revoked for lagging past `ack_timeout` leaves the set at
    /// once, while the permission it was granted before may still run.
    DropRevokedAtOnce,
    /// A read by read index is served once the index is known, applied or
    /// not.
    IndexReadBeforeApply,
}

struct LogModel {
    bug: Option<Bug>,
}

/// What a lease holder tracks for its epoch, per node (its own slots
/// unused: it counts itself from its own log).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Leading {
    epoch: u8,
    /// The replication set.
    set: [bool; NODES],
    /// Highest `Received` from the member's current life.
    recv: [u8; NODES],
    /// Highest `Durable`; a flushed entry survives restarts.
    dur: [u8; NODES],
    /// The member's life (boot count) the leader's knowledge comes from;
    /// none before its first ack this epoch (unconfirmed until then).
    boot: [Option<u8>; NODES],
    /// The log length a member must ack to be confirmed: the log end at
    /// election, or when the leader saw the member restart.
    need: [u8; NODES],
    /// Members whose read permission the leader revoked (`ack_timeout`):
    /// it grants them no more.
    revoked: [bool; NODES],
    /// Of those, the ones that may still hold a permission granted before
    /// the revocation, with the life (boot) that holds it (a restart loses
    /// it): it runs out at some moment (`Lapse`), L·(1+drift) after the
    /// revocation in the real protocol.
    lingering: [Option<u8>; NODES],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Role {
    Follower,
    Candidate { epoch: u8, grants: u8 },
    Leader(Leading),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Node {
    /// Durable.
    promised: u8,
    role: Role,
    /// Whom this node is bound to (granted, or heard as leader).
    bound: Option<u8>,
    /// Restarted with a promise: grants nothing until its binding lapses.
    quiet: bool,
    /// Restarts so far (the node's life); durable.
    boot: u8,
    /// Entry epochs; revision = index + 1.
    log: Vec<u8>,
    /// Length of the flushed prefix of `log`.
    durable: u8,
    /// Length of the prefix known to equal the log of the leader of
    /// `promised` (volatile, and reset with each new promise).
    matched: u8,
    /// The commit index this node knows.
    commit: u8,
    /// Revision the state has applied: `log[..applied]`.
    applied: u8,
    /// A read by read index in progress (volatile).
    index_read: Option<IndexRead>,
}

/// A read by read index: how many writes were acknowledged when it began
/// (`State::acked[..acked]`), and the leader's answer once it came.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct IndexRead {
    acked: u8,
    index: Option<u8>,
}

impl Node {
    fn last(&self) -> (u8, u8) {
        (self.log.last().copied().unwrap_or(0), self.log.len() as u8)
    }

    /// The state takes only committed entries that are durable here, so it
    /// never runs ahead of the log.
    fn apply(&mut self) {
        self.applied = self.applied.max(self.commit.min(self.durable));
    }

    fn promise(&mut self, epoch: u8) {
        if epoch > self.promised {
            self.promised = epoch;
            self.matched = 0;
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Msg {
    Request {
        from: u8,
        to: u8,
        epoch: u8,
        last: (u8, u8),
    },
    Grant {
        from: u8,
        to: u8,
        epoch: u8,
    },
    /// `write`: one new entry of `epoch` after `prev` (epoch, length);
    /// without it, a heartbeat claiming the leader's log ends at `prev`.
    Append {
        from: u8,
        to: u8,
        epoch: u8,
        prev: (u8, u8),
        write: bool,
    },
    Received {
        from: u8,
        to: u8,
        epoch: u8,
        boot: u8,
        len: u8,
    },
    Durable {
        from: u8,
        to: u8,
        epoch: u8,
        len: u8,
    },
    Commit {
        from: u8,
        to: u8,
        epoch: u8,
        index: u8,
    },
    IndexAsk {
        to: u8,
        from: u8,
    },
    IndexAnswer {
        to: u8,
        epoch: u8,
        index: u8,
    },
}

impl Msg {
    fn to(&self) -> usize {
        match self {
            Msg::Request { to, .. }
            | Msg::Grant { to, .. }
            | Msg::Append { to, .. }
            | Msg::Received { to, .. }
            | Msg::Durable { to, .. }
            | Msg::Commit { to, .. }
            | Msg::IndexAsk { to, .. }
            | Msg::IndexAnswer { to, .. } => *to as usize,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    nodes: [Node; NODES],
    /// In flight; delivery removes a message, loss is never delivering it.
    net: BTreeSet<Msg>,
    writes: u8,
    /// Reads by read index begun (at most one per run).
    index_reads: u8,
    // Ghosts, read only by the properties.
    /// (epoch, leader) for every election won.
    leaders: Vec<(u8, u8)>,
    /// (revision, entry epoch) of every entry a leader committed: it
    /// answered the writer (entries of an earlier epoch commit with the
    /// leader's own, and are then visible to its reads just the same).
    acked: Vec<(u8, u8)>,
    /// The committed log: the longest log any leader committed.
    chosen: Vec<u8>,
    /// Some leader committed a log that is not a prefix of `chosen` or an
    /// extension of it.
    forked: bool,
    /// A follower replaced an entry it knew committed or had applied.
    truncated_committed: bool,
    /// The highest `applied` each node ever had.
    high: [u8; NODES],
}

impl State {
    fn send(&mut self, msg: Msg) {
        self.net.insert(msg);
    }

    fn lease_holder(&self) -> Option<(usize, &Leading)> {
        self.nodes
            .iter()
            .enumerate()
            .find_map(|(i, n)| match &n.role {
                Role::Leader(lead) => Some((i, lead)),
                _ => None,
            })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Campaign(u8),
    Write(u8),
    Flush(u8),
    /// The leader drops a member from its replication set.
    Drop {
        leader: u8,
        member: u8,
    },
    /// The leader revokes a member's read permission: it has not received
    /// an entry within `ack_timeout` (any moment, time being abstracted).
    Revoke {
        leader: u8,
        member: u8,
    },
    /// The permission a revoked member held runs out.
    Lapse {
        leader: u8,
        member: u8,
    },
    Expire(u8),
    Unbind(u8),
    /// Crash and restart.
    Crash(u8),
    /// A follower begins a read by read index.
    AskIndex(u8),
    Deliver(Msg),
}

impl LogModel {
    /// Whether `msg` can still have an effect: promises, acks, commit
    /// indexes and applied revisions only rise (within one life), and a
    /// node leads an epoch at most once.
    fn live(&self, s: &State, msg: &Msg) -> bool {
        let to = &s.nodes[msg.to()];
        let lead = match &to.role {
            Role::Leader(lead) => Some(lead),
            _ => None,
        };
        match *msg {
            Msg::Request { epoch, .. } => epoch > to.promised,
            Msg::Grant { from, epoch, .. } => matches!(
                to.role,
                Role::Candidate { epoch: e, grants } if e == epoch && grants & (1 << from) == 0
            ),
            Msg::Append { epoch, .. } => epoch >= to.promised,
            Msg::Commit { epoch, index, .. } => epoch >= to.promised && index > to.applied,
            Msg::Received {
                from,
                epoch,
                boot,
                len,
                ..
            } => lead.is_some_and(|lead| {
                let f = from as usize;
                lead.epoch == epoch
                    && match lead.boot[f] {
                        None => true,
                        Some(_) if self.has(Bug::ConfirmationSurvivesRestart) => len > lead.recv[f],
                        Some(b) => boot > b || (boot == b && len > lead.recv[f]),
                    }
            }),
            Msg::Durable {
                from, epoch, len, ..
            } => lead.is_some_and(|lead| lead.epoch == epoch && len > lead.dur[from as usize]),
            Msg::IndexAsk { .. } => lead.is_some(),
            Msg::IndexAnswer { epoch, .. } => {
                epoch == to.promised && to.index_read.as_ref().is_some_and(|r| r.index.is_none())
            }
        }
    }
}

fn others(i: usize) -> impl Iterator<Item = usize> {
    (0..NODES).filter(move |t| *t != i)
}

impl LogModel {
    fn has(&self, bug: Bug) -> bool {
        self.bug == Some(bug)
    }

    /// Read permission. The leader's word on the set and on confirmation
    /// reaches the follower at once: granting permission early only lets
    /// the model read more.
    fn may_read(&self, s: &State, i: usize) -> bool {
        let n = &s.nodes[i];
        if matches!(n.role, Role::Leader(_)) {
            return true;
        }
        let Some((l, lead)) = s.lease_holder() else {
            return false;
        };
        n.bound == Some(l as u8)
            && n.promised == lead.epoch
            && ((lead.set[i] && self.confirmed(lead, i, n) && !lead.revoked[i])
                || lead.lingering[i] == Some(n.boot))
    }

    /// Whether the leader may take member `f` out of its set: only once
    /// `f` can no longer read on its word.
    fn may_drop(&self, state: &State, lead: &Leading, f: usize) -> bool {
        lead.set[f]
            && (!self.may_read(state, f) || (self.has(Bug::DropRevokedAtOnce) && lead.revoked[f]))
    }

    fn confirmed(&self, lead: &Leading, i: usize, n: &Node) -> bool {
        lead.boot[i].is_some_and(|b| b == n.boot || self.has(Bug::ConfirmationSurvivesRestart))
            && lead.recv[i] >= lead.need[i]
    }

    fn pending(&self, n: &Node) -> bool {
        let done = if self.has(Bug::PendingEndsAtCommit) {
            n.commit
        } else {
            n.applied
        };
        n.log.len() > done as usize
    }

    fn serves_reads(&self, s: &State, i: usize) -> bool {
        self.may_read(s, i) && !self.pending(&s.nodes[i])
    }

    /// The read by read index node `i` may serve now, if any: the leader's
    /// answer came and the state has applied through it.
    fn serves_index_read<'a>(&self, s: &'a State, i: usize) -> Option<&'a IndexRead> {
        let n = &s.nodes[i];
        let read = n.index_read.as_ref()?;
        let index = read.index?;
        (n.applied >= index || self.has(Bug::IndexReadBeforeApply)).then_some(read)
    }

    /// Commits at leader `l` the longest prefix the rule allows, answers
    /// its writers, applies and tells the followers.
    fn try_commit(&self, s: &mut State, l: usize) {
        let n = &s.nodes[l];
        let Role::Leader(lead) = &n.role else {
            return;
        };
        let holds = |f: usize, i: u8| lead.recv[f].max(lead.dur[f]) >= i;
        let mut commit = n.commit;
        for i in (n.commit + 1..=n.log.len() as u8).rev() {
            // The leader's own entries are the suffix of its log.
            if n.log[i as usize - 1] != lead.epoch {
                break;
            }
            let durable = if self.has(Bug::CommitWithoutDurableQuorum) {
                1 + others(l).filter(|f| holds(*f, i)).count()
            } else {
                usize::from(n.durable >= i) + others(l).filter(|f| lead.dur[*f] >= i).count()
            };
            let received = self.has(Bug::CommitWithoutSetReceipt)
                || others(l).all(|f| !lead.set[f] || holds(f, i));
            if durable >= QUORUM && received {
                commit = i;
                break;
            }
        }
        if commit == n.commit {
            return;
        }
        let (epoch, before) = (lead.epoch, n.commit);
        let log = n.log[..commit as usize].to_vec();
        for rev in before + 1..=commit {
            let entry = (rev, log[rev as usize - 1]);
            if !s.acked.contains(&entry) {
                s.acked.push(entry);
            }
        }
        if log.starts_with(&s.chosen) {
            s.chosen = log;
        } else if !s.chosen.starts_with(&log) {
            s.forked = true;
        }
        let n = &mut s.nodes[l];
        n.commit = commit;
        n.apply();
        for to in others(l) {
            s.send(Msg::Commit {
                from: l as u8,
                to: to as u8,
                epoch,
                index: commit,
            });
        }
    }

    fn deliver(&self, s: &mut State, msg: Msg) {
        match msg {
            Msg::Request {
                from,
                to,
                epoch,
                last,
            } => {
                let v = &mut s.nodes[to as usize];
                let grant = epoch > v.promised
                    && !v.quiet
                    && v.bound.is_none_or(|b| b == from)
                    && !matches!(v.role, Role::Leader(_))
                    && last >= v.last();
                if grant {
                    v.promise(epoch);
                    v.bound = Some(from);
                    v.role = Role::Follower;
                    s.send(Msg::Grant {
                        from: to,
                        to: from,
                        epoch,
                    });
                }
            }
            Msg::Grant { from, to, epoch } => {
                let c = &mut s.nodes[to as usize];
                let Role::Candidate { epoch: e, grants } = c.role else {
                    return;
                };
                if e != epoch {
                    return;
                }
                let grants = grants | (1 << from);
                if (grants.count_ones() as usize) < QUORUM {
                    c.role = Role::Candidate { epoch, grants };
                    return;
                }
                let mut set = [true; NODES];
                set[to as usize] = false;
                let prev = c.last();
                c.role = Role::Leader(Leading {
                    epoch,
                    set,
                    recv: [0; NODES],
                    dur: [0; NODES],
                    boot: [None; NODES],
                    need: [prev.1; NODES],
                    revoked: [false; NODES],
                    lingering: [None; NODES],
                });
                s.leaders.push((epoch, to));
                for t in others(to as usize) {
                    s.send(Msg::Append {
                        from: to,
                        to: t as u8,
                        epoch,
                        prev,
                        write: false,
                    });
                }
            }
            Msg::Append {
                from,
                to,
                epoch,
                prev: (prev_epoch, prev_len),
                write,
            } => {
                let f = &mut s.nodes[to as usize];
                if epoch < f.promised {
                    return; // fenced
                }
                f.promise(epoch);
                f.bound = Some(from);
                f.role = Role::Follower;
                let at = prev_len as usize;
                if at > 0 && f.log.get(at - 1) != Some(&prev_epoch) {
                    return; // a gap or a mismatch: catch-up, not modelled
                }
                let len = if write {
                    match f.log.get(at) {
                        Some(e) if *e == epoch => {}
                        Some(_) => {
                            if prev_len < f.commit.max(f.applied) {
                                s.truncated_committed = true;
                            }
                            f.log.truncate(at);
                            f.durable = f.durable.min(prev_len);
                            f.log.push(epoch);
                        }
                        None => f.log.push(epoch),
                    }
                    prev_len + 1
                } else {
                    prev_len
                };
                f.matched = f.matched.max(len);
                let boot = f.boot;
                s.send(Msg::Received {
                    from: to,
                    to: from,
                    epoch,
                    boot,
                    len,
                });
            }
            Msg::Received {
                from,
                to,
                epoch,
                boot,
                len,
            } => {
                let ignore_boots = self.has(Bug::ConfirmationSurvivesRestart);
                let l = &mut s.nodes[to as usize];
                let log_end = l.log.len() as u8;
                let Role::Leader(lead) = &mut l.role else {
                    return;
                };
                let f = from as usize;
                if lead.epoch != epoch {
                    return;
                }
                match lead.boot[f] {
                    None => lead.boot[f] = Some(boot),
                    Some(_) if ignore_boots => {}
                    Some(b) if boot < b => return, // from a life that has ended
                    Some(b) if boot > b => {
                        // What it received before is gone with its memory:
                        // it starts over as a new member would.
                        lead.boot[f] = Some(boot);
                        lead.recv[f] = 0;
                        lead.need[f] = log_end;
                    }
                    Some(_) => {}
                }
                lead.recv[f] = lead.recv[f].max(len);
                self.try_commit(s, to as usize);
            }
            Msg::Durable {
                from,
                to,
                epoch,
                len,
            } => {
                let Role::Leader(lead) = &mut s.nodes[to as usize].role else {
                    return;
                };
                if lead.epoch != epoch {
                    return;
                }
                let f = from as usize;
                lead.dur[f] = lead.dur[f].max(len);
                self.try_commit(s, to as usize);
            }
            Msg::IndexAsk { to, from } => {
                let l = &s.nodes[to as usize];
                let Role::Leader(lead) = &l.role else {
                    return;
                };
                let epoch_committed = l.commit > 0 && l.log[l.commit as usize - 1] == lead.epoch;
                if epoch_committed {
                    let msg = Msg::IndexAnswer {
                        to: from,
                        epoch: lead.epoch,
                        index: l.commit,
                    };
                    s.send(msg);
                }
            }
            Msg::IndexAnswer { to, epoch, index } => {
                let f = &mut s.nodes[to as usize];
                if epoch != f.promised || matches!(f.role, Role::Leader(_)) {
                    return;
                }
                let Some(read) = f.index_read.as_mut().filter(|r| r.index.is_none()) else {
                    return;
                };
                read.index = Some(index);
                f.commit = f.commit.max(index.min(f.matched));
                f.apply();
            }
            Msg::Commit {
                to, epoch, index, ..
            } => {
                let f = &mut s.nodes[to as usize];
                if epoch != f.promised || matches!(f.role, Role::Leader(_)) {
                    return;
                }
                // Beyond `matched` this node's entries may not be the
                // leader's.
                f.commit = f.commit.max(index.min(f.matched));
                f.apply();
            }
        }
    }
}

impl Model for LogModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let node = Node {
            promised: 0,
            role: Role::Follower,
            bound: None,
            quiet: false,
            boot: 0,
            log: Vec::new(),
            durable: 0,
            matched: 0,
            commit: 0,
            applied: 0,
            index_read: None,
        };
        vec![State {
            nodes: [node.clone(), node.clone(), node],
            net: BTreeSet::new(),
            writes: 0,
            index_reads: 0,
            leaders: Vec::new(),
            acked: Vec::new(),
            chosen: Vec::new(),
            forked: false,
            truncated_committed: false,
            high: [0; NODES],
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        let any_lease = state.lease_holder().is_some();
        // The nodes are interchangeable until someone campaigns: let node 0
        // go first.
        let started = state.nodes.iter().any(|n| n.promised > 0);
        for (i, n) in state.nodes.iter().enumerate() {
            let id = i as u8;
            if (n.durable as usize) < n.log.len() {
                actions.push(Action::Crash(id));
                actions.push(Action::Flush(id));
            }
            match &n.role {
                Role::Follower
                    if n.bound.is_none()
                        && !n.quiet
                        && n.promised < MAX_EPOCH
                        && (started || i == 0) =>
                {
                    actions.push(Action::Campaign(id))
                }
                Role::Leader(lead) => {
                    actions.push(Action::Expire(id));
                    if state.writes < MAX_WRITES {
                        actions.push(Action::Write(id));
                    }
                    for f in others(i) {
                        let member = f as u8;
                        if self.may_drop(state, lead, f) {
                            actions.push(Action::Drop { leader: id, member });
                        }
                        if lead.set[f] && !lead.revoked[f] {
                            actions.push(Action::Revoke { leader: id, member });
                        }
                        if lead.lingering[f].is_some() {
                            actions.push(Action::Lapse { leader: id, member });
                        }
                    }
                }
                _ => {}
            }
            if (n.bound.is_some() || n.quiet) && !any_lease {
                actions.push(Action::Unbind(id));
            }
            if state.index_reads == 0
                && matches!(n.role, Role::Follower)
                && n.bound.is_some_and(|b| b != id)
            {
                actions.push(Action::AskIndex(id));
            }
        }
        for msg in &state.net {
            actions.push(Action::Deliver(msg.clone()));
        }
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut s = state.clone();
        match action {
            Action::Campaign(i) => {
                let n = &mut s.nodes[i as usize];
                let epoch = n.promised + 1;
                n.promise(epoch);
                n.bound = Some(i);
                n.role = Role::Candidate {
                    epoch,
                    grants: 1 << i,
                };
                let last = n.last();
                for to in others(i as usize) {
                    s.send(Msg::Request {
                        from: i,
                        to: to as u8,
                        epoch,
                        last,
                    });
                }
            }
            Action::Write(i) => {
                let n = &mut s.nodes[i as usize];
                let Role::Leader(lead) = &n.role else {
                    return None;
                };
                let epoch = lead.epoch;
                let prev = n.last();
                n.log.push(epoch);
                s.writes += 1;
                for to in others(i as usize) {
                    s.send(Msg::Append {
                        from: i,
                        to: to as u8,
                        epoch,
                        prev,
                        write: true,
                    });
                }
            }
            Action::Flush(i) => {
                let n = &mut s.nodes[i as usize];
                n.durable = n.log.len() as u8;
                n.apply();
                if matches!(n.role, Role::Leader(_)) {
                    self.try_commit(&mut s, i as usize);
                } else if let Some(to) = n.bound
                    && to != i
                    && n.matched > 0
                {
                    let msg = Msg::Durable {
                        from: i,
                        to,
                        epoch: n.promised,
                        len: n.matched.min(n.durable),
                    };
                    s.send(msg);
                }
            }
            Action::Drop { leader, member } => {
                let Role::Leader(lead) = &mut s.nodes[leader as usize].role else {
                    return None;
                };
                lead.set[member as usize] = false;
                self.try_commit(&mut s, leader as usize);
            }
            Action::Revoke { leader, member } => {
                let held = self
                    .may_read(&s, member as usize)
                    .then_some(s.nodes[member as usize].boot);
                let Role::Leader(lead) = &mut s.nodes[leader as usize].role else {
                    return None;
                };
                lead.revoked[member as usize] = true;
                lead.lingering[member as usize] = held;
            }
            Action::Lapse { leader, member } => {
                let Role::Leader(lead) = &mut s.nodes[leader as usize].role else {
                    return None;
                };
                lead.lingering[member as usize] = None;
            }
            Action::Expire(i) => s.nodes[i as usize].role = Role::Follower,
            Action::Unbind(i) => {
                let n = &mut s.nodes[i as usize];
                let bound_to = n.bound.take();
                n.quiet = false;
                // A binding lapses L after the grant, by when any lease the
                // candidate could win on it has run out (see model.rs).
                if let Some(c) = bound_to {
                    let c = &mut s.nodes[c as usize];
                    if matches!(c.role, Role::Candidate { .. }) {
                        c.role = Role::Follower;
                    }
                }
            }
            Action::AskIndex(i) => {
                let acked = s.acked.len() as u8;
                let n = &mut s.nodes[i as usize];
                let to = n.bound?;
                n.index_read = Some(IndexRead { acked, index: None });
                s.index_reads += 1;
                s.send(Msg::IndexAsk { to, from: i });
            }
            Action::Crash(i) => {
                let n = &mut s.nodes[i as usize];
                n.index_read = None;
                n.log.truncate(n.durable as usize);
                n.role = Role::Follower;
                // Keeping `bound` until `Unbind` is the quiet period after
                // a restart (see model.rs).
                n.quiet = true;
                n.boot += 1;
                n.matched = 0;
                n.commit = n.applied;
            }
            Action::Deliver(msg) => {
                s.net.remove(&msg);
                self.deliver(&mut s, msg.clone());
                // A delivery that changes nothing is a loss, which never
                // delivering already covers.
                s.net.insert(msg.clone());
                if s == *state {
                    return None;
                }
                s.net.remove(&msg);
            }
        }
        // A message that can no longer change anything only multiplies
        // states.
        let net = std::mem::take(&mut s.net);
        s.net = net.into_iter().filter(|m| self.live(&s, m)).collect();
        for (high, n) in s.high.iter_mut().zip(&s.nodes) {
            *high = (*high).max(n.applied);
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(ONE_LEADER, |_, s: &State| {
                s.leaders
                    .iter()
                    .all(|(e, l)| s.leaders.iter().all(|(e2, l2)| e != e2 || l == l2))
            }),
            Property::always(ONE_LEASE, |_, s: &State| {
                s.nodes
                    .iter()
                    .filter(|n| matches!(n.role, Role::Leader(_)))
                    .count()
                    <= 1
            }),
            Property::always(READS_SEE_ACKED, |m, s: &State| {
                (0..NODES).filter(|i| m.serves_reads(s, *i)).all(|i| {
                    let n = &s.nodes[i];
                    s.acked.iter().all(|(rev, e)| {
                        *rev <= n.applied && n.log.get(*rev as usize - 1) == Some(e)
                    })
                })
            }),
            Property::always(NO_DIRTY, |_, s: &State| {
                let prefix_of_chosen = |log: &[u8], len: u8| {
                    let len = len as usize;
                    len <= log.len() && s.chosen.get(..len) == Some(&log[..len])
                };
                !s.truncated_committed
                    && !s.forked
                    && s.nodes.iter().all(|n| {
                        prefix_of_chosen(&n.log, n.applied) && prefix_of_chosen(&n.log, n.commit)
                    })
            }),
            Property::always(ACKED_DURABLE, |_, s: &State| {
                s.acked.iter().all(|(rev, e)| {
                    s.nodes
                        .iter()
                        .filter(|n| n.durable >= *rev && n.log.get(*rev as usize - 1) == Some(e))
                        .count()
                        >= QUORUM
                })
            }),
            Property::always(LEADER_COMPLETE, |_, s: &State| {
                s.nodes
                    .iter()
                    .filter(|n| matches!(n.role, Role::Leader(_)))
                    .all(|n| {
                        s.acked
                            .iter()
                            .all(|(rev, e)| n.log.get(*rev as usize - 1) == Some(e))
                    })
            }),
            Property::always(FORWARD, |_, s: &State| {
                s.nodes.iter().zip(&s.high).all(|(n, high)| {
                    n.applied >= *high && n.applied <= n.commit && n.applied <= n.durable
                })
            }),
            Property::always(INDEX_READS_SEE_ACKED, |m, s: &State| {
                (0..NODES).all(|i| {
                    let n = &s.nodes[i];
                    m.serves_index_read(s, i).is_none_or(|read| {
                        s.acked[..read.acked as usize].iter().all(|(rev, e)| {
                            *rev <= n.applied && n.log.get(*rev as usize - 1) == Some(e)
                        })
                    })
                })
            }),
            Property::sometimes(INDEX_READ, |m, s: &State| {
                (0..NODES).any(|i| m.serves_index_read(s, i).is_some_and(|r| r.acked > 0))
            }),
            Property::sometimes(LEADER_READ, |m, s: &State| {
                !s.acked.is_empty()
                    && (0..NODES)
                        .any(|i| matches!(s.nodes[i].role, Role::Leader(_)) && m.serves_reads(s, i))
            }),
            Property::sometimes(FOLLOWER_READ, |m, s: &State| {
                !s.acked.is_empty()
                    && (0..NODES).any(|i| {
                        !matches!(s.nodes[i].role, Role::Leader(_)) && m.serves_reads(s, i)
                    })
            }),
        ]
    }
}

/// Checks every state within `steps` actions (stateright counts the initial
/// state as depth 1 and neither checks nor expands a state at the target
/// depth, hence `+ 2`), stopping early once `done` holds. One thread: with
/// more, stateright's BFS is not strictly level by level, and a state first
/// reached on a longer path is not expanded again from a shorter one, so
/// the depth bound could cut off states within it.
fn check(bug: Option<Bug>, steps: usize, done: HasDiscoveries) -> impl Checker<LogModel> {
    let started = Instant::now();
    let checker = LogModel { bug }
        .checker()
        .threads(1)
        .target_max_depth(steps + 2)
        .finish_when(done)
        .spawn_bfs()
        .join();
    eprintln!(
        "stateright ({bug:?}): {} states ({} unique) within {steps} steps, {:.1?}",
        checker.state_count(),
        checker.unique_state_count(),
        started.elapsed()
    );
    checker
}

/// Checks `bug` until `property` fails (exhaustively within `steps`
/// actions) and prints the counterexample.
fn counterexample(bug: Bug, steps: usize, property: &'static str) {
    let checker = check(
        Some(bug),
        steps,
        HasDiscoveries::AnyOf(BTreeSet::from([property])),
    );
    let Some(path) = checker.discovery(property) else {
        panic!("{bug:?}: no counterexample to \"{property}\" within {steps} steps");
    };
    let actions = path.into_actions();
    eprintln!(
        "{bug:?} breaks \"{property}\" in {} steps: {actions:#?}",
        actions.len()
    );
}

/// The rev-2 log keeps every invariant in every state within 14 actions
/// (about 5.8 million distinct states), and reaches a write acknowledged
/// and then read on a leader, on a follower, and by read index.
#[test]
fn replicated_log_holds_its_invariants_to_depth_14() {
    check(None, STEPS, HasDiscoveries::All).assert_properties();
}

/// Dropping (b) of the commit rule lets a confirmed set member that never
/// received a write serve a read without it (checked to depth 14, stopping
/// at the first counterexample).
#[test]
fn commit_without_set_receipt_breaks_reads_to_depth_14() {
    counterexample(Bug::CommitWithoutSetReceipt, STEPS, READS_SEE_ACKED);
}

/// Dropping (a) of the commit rule acknowledges a write that is durable
/// nowhere (checked to depth 14, stopping at the first counterexample).
#[test]
fn commit_without_durable_quorum_breaks_durability_to_depth_14() {
    counterexample(Bug::CommitWithoutDurableQuorum, STEPS, ACKED_DURABLE);
}

/// The two places where DESIGN.md is open and the model chooses, read the
/// other way, each serve a read without an acknowledged write: a leader
/// that committed before its own flush, and a follower that lost a
/// received write in a restart (checked to depth 14, stopping at the first
/// counterexample).
#[test]
fn model_choices_are_needed_to_depth_14() {
    counterexample(Bug::PendingEndsAtCommit, STEPS, READS_SEE_ACKED);
    counterexample(Bug::ConfirmationSurvivesRestart, STEPS, READS_SEE_ACKED);
}

/// A read by read index served before its node applied through the
/// leader's answer misses a write acknowledged before it began (checked to
/// depth 14, stopping at the first counterexample).
#[test]
fn read_index_before_the_apply_breaks_reads_to_depth_14() {
    counterexample(Bug::IndexReadBeforeApply, STEPS, INDEX_READS_SEE_ACKED);
}

/// A member revoked for lagging past `ack_timeout` that leaves the set
/// before the permission it already held has run out serves a read
/// without a write committed in its absence (checked to depth 14, stopping
/// at the first counterexample).
#[test]
fn dropping_a_revoked_member_at_once_breaks_reads_to_depth_14() {
    counterexample(Bug::DropRevokedAtOnce, STEPS, READS_SEE_ACKED);
}
