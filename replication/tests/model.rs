//! A stateright model of pika's election and replication, checked
//! exhaustively to a fixed depth: 3 nodes, a network that loses and
//! reorders anything, crashes and restarts.
//!
//! The model is the protocol, abstracted: time is not a number but an
//! assumption. A leader's lease can run out at any moment (`Expire`), and a
//! node's promise not to grant anyone else (after granting, or hearing a
//! leader) can lapse (`Unbind`) only while no node holds a lease; when it
//! lapses, the campaign it granted is too old to win. The drift bound in
//! DESIGN.md is what makes that ordering true of real clocks. A
//! write is acknowledged by a quorum (the real leader waits for every
//! follower in its set, which is stronger). A follower whose log diverges
//! from the leader's takes the leader's entry in place of its own (what a
//! Merkle sync does).
//!
//! A node may lose its data (`Wipe`, at most one per run, the fault model):
//! it comes back with an empty log and no promise under a new id, which is
//! not in the voter set (DESIGN.md, "Who votes"): a learner, whose grants
//! and acks count for nothing. The voter set is the three original ids,
//! already committed (how a cluster gets and changes one is checked by the
//! replica simulation).
//!
//! Invariants, as in the simulation: one leader per epoch; never two valid
//! leases at once; every acknowledged write is in the log of every node
//! that holds a lease. Counting a wiped node's grants and acks as a
//! voter's breaks the last one (a counterexample is found).

use std::collections::BTreeMap;

use stateright::{Checker, Model, Property};

const NODES: usize = 3;
const QUORUM: usize = 2;
const MAX_EPOCH: u8 = 3;
const MAX_LOG: usize = 2;

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Follower,
    Candidate { epoch: u8, grants: u8 },
    Leader { epoch: u8, acks: [u8; NODES] },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Node {
    up: bool,
    promised: u8,
    role: Role,
    /// Whom this node is bound to (granted, or heard as leader).
    bound: Option<u8>,
    /// Restarted: grants nothing until L has passed (its binding lapses).
    quiet: bool,
    /// Entry epochs; revision = index + 1. Durable.
    log: Vec<u8>,
    /// In the voter set: false after a wipe (a new id).
    voter: bool,
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
    Heartbeat {
        from: u8,
        to: u8,
        epoch: u8,
    },
    Append {
        from: u8,
        to: u8,
        epoch: u8,
        prev: u8,
        entry: u8,
    },
    Ack {
        from: u8,
        to: u8,
        epoch: u8,
        len: u8,
    },
}

impl Msg {
    fn from(&self) -> usize {
        match self {
            Msg::Request { from, .. }
            | Msg::Grant { from, .. }
            | Msg::Heartbeat { from, .. }
            | Msg::Append { from, .. }
            | Msg::Ack { from, .. } => *from as usize,
        }
    }

    fn to(&self) -> usize {
        match self {
            Msg::Request { to, .. }
            | Msg::Grant { to, .. }
            | Msg::Heartbeat { to, .. }
            | Msg::Append { to, .. }
            | Msg::Ack { to, .. } => *to as usize,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct State {
    nodes: Vec<Node>,
    /// In-flight messages (a set: a duplicate is as good as the original).
    net: BTreeMap<Msg, ()>,
    /// (epoch, leader) for every election won.
    leaders: Vec<(u8, u8)>,
    /// (revision, entry epoch) of every acknowledged write.
    acked: Vec<(u8, u8)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    Campaign(u8),
    Write(u8),
    Expire(u8),
    Unbind(u8),
    Crash(u8),
    Restart(u8),
    /// The node's data directory is lost; it restarts under a new id.
    Wipe(u8),
    Deliver(Msg),
}

struct Pika {
    /// The bug the check must catch: a wiped node's word counts.
    learners_vote: bool,
}

fn last(node: &Node) -> (u8, u8) {
    (node.log.last().copied().unwrap_or(0), node.log.len() as u8)
}

fn any_lease(state: &State) -> bool {
    state
        .nodes
        .iter()
        .any(|n| n.up && matches!(n.role, Role::Leader { .. }))
}

impl State {
    fn send(&mut self, msg: Msg) {
        self.net.insert(msg, ());
    }
}

impl Model for Pika {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let node = Node {
            up: true,
            promised: 0,
            role: Role::Follower,
            bound: None,
            quiet: false,
            log: Vec::new(),
            voter: true,
        };
        vec![State {
            nodes: vec![node; NODES],
            net: BTreeMap::new(),
            leaders: Vec::new(),
            acked: Vec::new(),
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        for (i, n) in state.nodes.iter().enumerate() {
            let i = i as u8;
            if !n.up {
                actions.push(Action::Restart(i));
                continue;
            }
            actions.push(Action::Crash(i));
            if state.nodes.iter().all(|n| n.voter) {
                actions.push(Action::Wipe(i));
            }
            match n.role {
                Role::Follower
                    if n.bound.is_none()
                        && !n.quiet
                        && n.promised < MAX_EPOCH
                        && (n.voter || self.learners_vote) =>
                {
                    actions.push(Action::Campaign(i))
                }
                Role::Leader { .. } => {
                    actions.push(Action::Expire(i));
                    if n.log.len() < MAX_LOG {
                        actions.push(Action::Write(i));
                    }
                }
                _ => {}
            }
            if (n.bound.is_some() || n.quiet) && !any_lease(state) {
                actions.push(Action::Unbind(i));
            }
        }
        // Loss needs no action of its own: for safety, a message lost is a
        // message never delivered, and every path where it stays in flight
        // is explored.
        for msg in state.net.keys() {
            actions.push(Action::Deliver(msg.clone()));
        }
    }

    fn next_state(&self, state: &State, action: Action) -> Option<State> {
        let mut s = state.clone();
        match action {
            Action::Campaign(i) => {
                let n = &mut s.nodes[i as usize];
                let epoch = n.promised + 1;
                n.promised = epoch;
                n.bound = Some(i);
                n.role = Role::Candidate {
                    epoch,
                    grants: 1 << i,
                };
                let l = last(n);
                for to in (0..NODES as u8).filter(|t| *t != i) {
                    s.send(Msg::Request {
                        from: i,
                        to,
                        epoch,
                        last: l,
                    });
                }
            }
            Action::Write(i) => {
                let n = &mut s.nodes[i as usize];
                let Role::Leader {
                    epoch,
                    ref mut acks,
                } = n.role
                else {
                    return None;
                };
                let prev = n.log.len() as u8;
                n.log.push(epoch);
                acks[i as usize] = n.log.len() as u8;
                for to in (0..NODES as u8).filter(|t| *t != i) {
                    s.send(Msg::Append {
                        from: i,
                        to,
                        epoch,
                        prev,
                        entry: epoch,
                    });
                }
            }
            Action::Expire(i) => s.nodes[i as usize].role = Role::Follower,
            Action::Unbind(i) => {
                let n = &mut s.nodes[i as usize];
                let bound_to = n.bound.take();
                n.quiet = false;
                // A binding lapses L after the grant; the candidate's lease
                // clock started before it asked, so by now any lease it
                // could win on that grant has already run out: its
                // campaign is over (pika's `maybe_win` refuses a lease that
                // ends before it starts).
                if let Some(c) = bound_to {
                    let c = &mut s.nodes[c as usize];
                    if matches!(c.role, Role::Candidate { .. }) {
                        c.role = Role::Follower;
                    }
                }
            }
            Action::Crash(i) => {
                let n = &mut s.nodes[i as usize];
                n.up = false;
                n.role = Role::Follower;
                // The binding itself is volatile, but a restarted node is
                // quiet for L: keeping `bound` until `Unbind` models
                // exactly that (and ages out what it granted).
            }
            Action::Wipe(i) => {
                let n = &mut s.nodes[i as usize];
                *n = Node {
                    up: true,
                    promised: 0,
                    role: Role::Follower,
                    // Quiet for L after boot, like any start.
                    bound: None,
                    quiet: true,
                    log: Vec::new(),
                    voter: false,
                };
                // Its old incarnation's messages went over connections
                // bound to the old id: none reaches or speaks for it.
                s.net
                    .retain(|m, _| m.to() != i as usize && m.from() != i as usize);
            }
            Action::Restart(i) => {
                let n = &mut s.nodes[i as usize];
                n.up = true;
                // Every boot is quiet for L (election step 6), whatever
                // the node promised.
                n.quiet = true;
            }
            Action::Deliver(msg) => {
                s.net.remove(&msg);
                if !s.nodes[msg.to()].up {
                    return Some(s);
                }
                deliver(&mut s, msg, self.learners_vote);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("one leader per epoch", |_, s: &State| {
                s.leaders
                    .iter()
                    .all(|(e, l)| s.leaders.iter().all(|(e2, l2)| e != e2 || l == l2))
            }),
            Property::always("never two leases at once", |_, s: &State| {
                s.nodes
                    .iter()
                    .filter(|n| n.up && matches!(n.role, Role::Leader { .. }))
                    .count()
                    <= 1
            }),
            Property::always(
                "acknowledged writes are in every lease holder's log",
                |_, s: &State| {
                    s.nodes
                        .iter()
                        .filter(|n| n.up && matches!(n.role, Role::Leader { .. }))
                        .all(|n| {
                            s.acked
                                .iter()
                                .all(|(rev, e)| n.log.get(*rev as usize - 1) == Some(e))
                        })
                },
            ),
            Property::sometimes("a write is acknowledged", |_, s: &State| {
                !s.acked.is_empty()
            }),
        ]
    }
}

fn deliver(s: &mut State, msg: Msg, learners_vote: bool) {
    match msg {
        Msg::Request {
            from,
            to,
            epoch,
            last: l,
        } => {
            let v = &mut s.nodes[to as usize];
            let leading = matches!(v.role, Role::Leader { .. });
            let grant = epoch > v.promised
                && !v.quiet
                && v.bound.is_none_or(|b| b == from)
                && !leading
                && l >= last(v);
            if grant {
                v.promised = epoch;
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
            // Only voters' grants count.
            if !s.nodes[from as usize].voter && !learners_vote {
                return;
            }
            let c = &mut s.nodes[to as usize];
            if let Role::Candidate { epoch: e, grants } = c.role
                && e == epoch
            {
                let grants = grants | (1 << from);
                if grants.count_ones() as usize >= QUORUM {
                    let mut acks = [0; NODES];
                    acks[to as usize] = c.log.len() as u8;
                    c.role = Role::Leader { epoch, acks };
                    s.leaders.push((epoch, to));
                    for t in (0..NODES as u8).filter(|t| *t != to) {
                        s.send(Msg::Heartbeat {
                            from: to,
                            to: t,
                            epoch,
                        });
                    }
                } else {
                    c.role = Role::Candidate { epoch, grants };
                }
            }
        }
        Msg::Heartbeat { from, to, epoch } => {
            let f = &mut s.nodes[to as usize];
            if epoch >= f.promised {
                f.promised = epoch;
                f.bound = Some(from);
                if !matches!(f.role, Role::Leader { epoch: e, .. } if e == epoch) {
                    f.role = Role::Follower;
                }
            }
        }
        Msg::Append {
            from,
            to,
            epoch,
            prev,
            entry,
        } => {
            let f = &mut s.nodes[to as usize];
            if epoch < f.promised || (prev as usize) > f.log.len() {
                return; // fenced, or a gap (repaired later by sync)
            }
            f.promised = epoch;
            f.bound = Some(from);
            f.role = Role::Follower;
            // A diverging suffix is replaced by the leader's (sync).
            f.log.truncate(prev as usize);
            f.log.push(entry);
            let len = f.log.len() as u8;
            s.send(Msg::Ack {
                from: to,
                to: from,
                epoch,
                len,
            });
        }
        Msg::Ack {
            from,
            to,
            epoch,
            len,
        } => {
            let l = &mut s.nodes[to as usize];
            let Role::Leader {
                epoch: e,
                ref mut acks,
            } = l.role
            else {
                return;
            };
            if e != epoch {
                return;
            }
            acks[from as usize] = acks[from as usize].max(len);
            let log = l.log.clone();
            let acks = *acks;
            let voters: Vec<bool> = s.nodes.iter().map(|n| n.voter || learners_vote).collect();
            for rev in 1..=log.len() as u8 {
                // Durable on a quorum of voters.
                let have = (0..NODES).filter(|j| voters[*j] && acks[*j] >= rev).count();
                let entry = (rev, log[rev as usize - 1]);
                if have >= QUORUM && !s.acked.contains(&entry) {
                    s.acked.push(entry);
                }
            }
        }
    }
}

#[test]
fn election_and_replication_hold_their_invariants_to_depth_14() {
    let checker = Pika {
        learners_vote: false,
    }
    .checker()
    .threads(2)
    .target_max_depth(14)
    .spawn_bfs()
    .join();
    eprintln!(
        "stateright: {} states ({} unique) to depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    checker.assert_properties();
}

/// The deliberate bug: a wiped node (a learner under a new id) votes. It
/// grants a candidate that lacks a write it held before the wipe, and that
/// candidate leads without it.
#[test]
fn a_wiped_node_that_votes_loses_an_acknowledged_write() {
    let property = "acknowledged writes are in every lease holder's log";
    let checker = Pika {
        learners_vote: true,
    }
    .checker()
    .threads(2)
    .target_max_depth(14)
    .finish_when(stateright::HasDiscoveries::AnyOf(
        std::collections::BTreeSet::from([property]),
    ))
    .spawn_bfs()
    .join();
    let Some(path) = checker.discovery(property) else {
        panic!("no counterexample to \"{property}\" within 14 actions");
    };
    eprintln!(
        "learners voting breaks \"{property}\": {:#?}",
        path.into_actions()
    );
}
