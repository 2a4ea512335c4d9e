//! The membership state machine, sans IO: foca's SWIM plus the member table
//! that the status API and replication read.
//!
//! Everything comes in as a call with the current time ([`Swim::datagram`],
//! [`Swim::timer`], [`Swim::tick`], [`Swim::discovered`]) and everything that
//! must happen goes out as an [`Action`] (send a datagram, schedule a timer,
//! report an event). The tokio driver in `transport` does the IO; tests drive
//! this directly with a fake clock.
//!
//! Two sources decide a member's state, and the worse one wins:
//! - foca, whose probes and indirect probes mark members suspect and down and
//!   spread that news;
//! - contact: every member sends a [`Heartbeat`] to every live member each
//!   `heartbeat_interval`, so a member unheard of for `heartbeat_timeout` is
//!   down (DESIGN.md: "a peer unheard of for heartbeat_timeout is down") no
//!   matter where foca's probe rotation happens to be.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use foca::{AccumulatingRuntime, Foca, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;

use crate::datagram::{self, Datagram, DatagramError, Heartbeat};
use crate::identity::{MemberMeta, PeerId};

/// foca packets must fit in one QUIC datagram; 1200 bytes is the smallest
/// path MTU QUIC allows, less its own overhead and our 2-byte header.
const MAX_SWIM_PACKET: usize = 1100;

/// The knobs of the state machine; the node maps `cluster.*` onto these.
#[derive(Debug, Clone)]
pub struct SwimConfig {
    /// SWIM probe period, and how often each member sends a heartbeat.
    pub heartbeat_interval: Duration,
    /// A member unheard of for this long is down.
    pub heartbeat_timeout: Duration,
    /// The cluster size the operator expects (`replicas`); tunes how many
    /// times foca retransmits each update.
    pub expected_members: u32,
}

impl SwimConfig {
    /// No heartbeat for this long makes a member suspect: two missed
    /// heartbeats, but never less than half the timeout, so a busy machine
    /// does not flap its peers between alive and suspect.
    fn suspect_after(&self) -> Duration {
        (self.heartbeat_interval * 2).max(self.heartbeat_timeout / 2)
    }

    fn foca(&self) -> foca::Config {
        let size = NonZeroU32::new(self.expected_members.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.heartbeat_interval;
        config.probe_rtt = self.heartbeat_interval / 2;
        config.suspect_to_down_after = self
            .heartbeat_timeout
            .saturating_sub(self.heartbeat_interval)
            .max(self.heartbeat_interval);
        config.max_packet_size = NonZeroUsize::new(MAX_SWIM_PACKET).unwrap_or(NonZeroUsize::MIN);
        if let Some(gossip) = config.periodic_gossip.as_mut() {
            gossip.frequency = self.heartbeat_interval;
        }
        config
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    Alive,
    Suspect,
    Down,
}

/// One row of the member table as the outside sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: PeerId,
    pub meta: Option<MemberMeta>,
    pub state: MemberState,
    /// Time since this node last heard from the member; zero for self.
    pub last_seen: Duration,
    pub is_self: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A member became alive (first contact, or back from suspect/down).
    Up(PeerId),
    Suspect(PeerId),
    Down(PeerId),
    /// A new incarnation (restart, or a new node at the same address) took
    /// over an address.
    Replaced {
        old: PeerId,
        new: PeerId,
    },
    /// A member's metadata changed.
    Meta(PeerId, MemberMeta),
    /// A down member whose address left DNS was dropped from the table.
    Forgotten(PeerId),
}

#[derive(Debug)]
pub enum Action {
    Send {
        to: SocketAddr,
        datagram: Vec<u8>,
    },
    Schedule {
        after: Duration,
        timer: Timer<PeerId>,
    },
    Event(MembershipEvent),
}

/// Why an incoming datagram was not used. The driver counts and drops it.
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    #[error(transparent)]
    Malformed(#[from] DatagramError),
    #[error("SWIM packet refused: {0}")]
    Swim(String),
}

struct Record {
    id: PeerId,
    meta: Option<MemberMeta>,
    /// What foca last said; `None` until foca knows the member.
    foca_state: Option<foca::State>,
    last_contact: Instant,
    /// The state last reported in an event, so each change is reported once.
    reported: Option<MemberState>,
}

type SwimFoca = Foca<PeerId, PostcardCodec, SmallRng, NoCustomBroadcast>;

pub struct Swim {
    foca: SwimFoca,
    runtime: AccumulatingRuntime<PeerId>,
    config: SwimConfig,
    meta: MemberMeta,
    members: BTreeMap<SocketAddr, Record>,
    /// Peer addresses from the last discovery, own address excluded.
    discovered: BTreeSet<SocketAddr>,
    next_heartbeat: Instant,
    /// When discovered members that are not alive are next announced to.
    next_reannounce: Instant,
    actions: Vec<Action>,
}

impl Swim {
    /// `seed` feeds foca's member selection; the driver takes it from the OS,
    /// simulations fix it.
    pub fn new(me: PeerId, meta: MemberMeta, config: SwimConfig, seed: u64, now: Instant) -> Swim {
        let foca = Foca::new(
            me,
            config.foca(),
            SmallRng::seed_from_u64(seed),
            PostcardCodec,
        );
        Swim {
            foca,
            runtime: AccumulatingRuntime::new(),
            config,
            meta,
            members: BTreeMap::new(),
            discovered: BTreeSet::new(),
            next_heartbeat: now,
            next_reannounce: now,
            actions: Vec::new(),
        }
    }

    pub fn me(&self) -> &PeerId {
        self.foca.identity()
    }

    pub fn meta(&self) -> &MemberMeta {
        &self.meta
    }

    /// Takes every pending action, oldest first.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// A datagram arrived over an authenticated connection from `from`.
    pub fn datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) -> Result<(), Rejected> {
        let result = match datagram::decode(bytes)? {
            Datagram::Swim(packet) => {
                // Any packet over the peer's connection is contact with
                // whoever holds that address; identities change through
                // heartbeats and foca's own updates.
                if let Some(record) = self.members.get_mut(&from) {
                    record.last_contact = now;
                }
                self.foca
                    .handle_data(packet, &mut self.runtime)
                    .map_err(|e| Rejected::Swim(e.to_string()))
            }
            Datagram::Heartbeat(Heartbeat { from: id, meta }) => {
                if id.addr == from {
                    let addr = id.addr;
                    self.heard_from(id, Some(meta), now);
                    // A heartbeat touches foca not at all and the table at
                    // one row: re-reading every member (`flush`) for each
                    // of the n heartbeats a round brings would cost every
                    // node O(n²) per round. Time passing is seen at `tick`.
                    self.report_change(addr, now);
                    return Ok(());
                } else {
                    Err(Rejected::Swim(format!(
                        "heartbeat from {from} claims address {}",
                        id.addr
                    )))
                }
            }
        };
        self.flush(now);
        result
    }

    /// A timer that an earlier [`Action::Schedule`] asked for has fired.
    pub fn timer(&mut self, timer: Timer<PeerId>, now: Instant) {
        if let Err(e) = self.foca.handle_timer(timer, &mut self.runtime) {
            tracing::debug!(error = %e, "foca timer");
        }
        self.flush(now);
    }

    /// Called often (a few times per heartbeat interval): sends heartbeats
    /// when due and re-evaluates every member's state.
    pub fn tick(&mut self, now: Instant) {
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval;
            self.send_heartbeats(now);
        }
        // After a partition both sides hold each other down, and neither
        // heartbeats nor foca probe a down member, so without this they
        // would meet again only at the next discovery round
        // (`refresh_interval`, 30 s by default). Announcing is what lets
        // foca tell a member it was declared down, so it renews its
        // identity and rejoins.
        if now >= self.next_reannounce {
            self.next_reannounce = now + self.config.heartbeat_interval * 2;
            self.announce_to_unreachable(now);
        }
        self.flush(now);
    }

    /// Announces to every discovered address whose member is missing or
    /// not alive.
    fn announce_to_unreachable(&mut self, now: Instant) {
        let targets: Vec<SocketAddr> = self
            .discovered
            .iter()
            .copied()
            .filter(|addr| {
                self.members
                    .get(addr)
                    .is_none_or(|r| self.state_of(r, now) != MemberState::Alive)
            })
            .collect();
        for addr in targets {
            if let Err(e) = self
                .foca
                .announce(PeerId::placeholder(addr), &mut self.runtime)
            {
                tracing::debug!(%addr, error = %e, "foca announce");
            }
        }
    }

    /// The result of a discovery round: every peer address the cluster name
    /// resolves to now. New or not-alive addresses are announced to; down
    /// members whose address left DNS are forgotten.
    pub fn discovered(&mut self, addrs: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        let own = self.me().addr;
        self.discovered = addrs.into_iter().filter(|a| *a != own).collect();
        self.announce_to_unreachable(now);
        let forgotten: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(addr, r)| {
                !self.discovered.contains(addr) && self.state_of(r, now) == MemberState::Down
            })
            .map(|(addr, _)| *addr)
            .collect();
        for addr in forgotten {
            if let Some(record) = self.members.remove(&addr) {
                self.actions
                    .push(Action::Event(MembershipEvent::Forgotten(record.id)));
            }
        }
        self.flush(now);
    }

    /// Replaces this node's metadata; it reaches the others with the next
    /// heartbeat.
    pub fn set_meta(&mut self, meta: MemberMeta) {
        self.meta = meta;
    }

    /// Self first, then every known member by address.
    pub fn members(&self, now: Instant) -> Vec<MemberView> {
        let me = MemberView {
            id: self.me().clone(),
            meta: Some(self.meta.clone()),
            state: MemberState::Alive,
            last_seen: Duration::ZERO,
            is_self: true,
        };
        std::iter::once(me)
            .chain(self.members.values().map(|r| MemberView {
                id: r.id.clone(),
                meta: r.meta.clone(),
                state: self.state_of(r, now),
                last_seen: now.saturating_duration_since(r.last_contact),
                is_self: false,
            }))
            .collect()
    }

    fn state_of(&self, record: &Record, now: Instant) -> MemberState {
        let silent = now.saturating_duration_since(record.last_contact);
        if record.foca_state == Some(foca::State::Down) || silent > self.config.heartbeat_timeout {
            MemberState::Down
        } else if record.foca_state == Some(foca::State::Suspect)
            || silent > self.config.suspect_after()
        {
            MemberState::Suspect
        } else {
            MemberState::Alive
        }
    }

    fn send_heartbeats(&mut self, now: Instant) {
        let targets: Vec<SocketAddr> = self
            .members
            .iter()
            .filter(|(_, r)| self.state_of(r, now) != MemberState::Down)
            .map(|(addr, _)| *addr)
            .collect();
        self.send_heartbeat_to(targets);
    }

    fn send_heartbeat_to(&mut self, targets: impl IntoIterator<Item = SocketAddr>) {
        let heartbeat = Heartbeat {
            from: self.me().clone(),
            meta: self.meta.clone(),
        };
        let bytes = match datagram::encode_heartbeat(&heartbeat) {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::error!(error = %e, "encoding heartbeat");
                return;
            }
        };
        for to in targets {
            self.actions.push(Action::Send {
                to,
                datagram: bytes.clone(),
            });
        }
    }

    /// Direct word from `id` (a heartbeat), or foca vouching for it.
    fn heard_from(&mut self, id: PeerId, meta: Option<MemberMeta>, now: Instant) {
        if id.addr == self.me().addr {
            return;
        }
        let replace = match self.members.get(&id.addr) {
            None => true,
            Some(r) if r.id == id => false,
            // A restart at the same address: the newer boot wins at once.
            Some(r) if r.id.node_id == id.node_id => id.is_newer_than(&r.id),
            // A different node at the address (a data directory wiped, or
            // another pod given the address): the newer generation wins at
            // once too, and the older never takes the slot back, so two
            // live claimants cannot swap it back and forth. Generations
            // follow the start time (`MembershipConfig::generation`), so
            // the newer is the process there now. Waiting for the old
            // entry to go quiet waited for good: the new process answers
            // the probes addressed to it. An older claimant still gets the
            // slot once the entry has gone quiet.
            Some(r) => id.is_newer_than(&r.id) || self.state_of(r, now) == MemberState::Down,
        };
        if replace {
            let old = self.members.insert(
                id.addr,
                Record {
                    id: id.clone(),
                    meta: None,
                    foca_state: None,
                    last_contact: now,
                    reported: None,
                },
            );
            // Introduce ourselves at once rather than at the next round, so
            // a new member learns our metadata within a round trip.
            self.send_heartbeat_to([id.addr]);
            if let Some(old) = old {
                tracing::info!(old = ?old.id, new = ?id, "member replaced");
                self.actions.push(Action::Event(MembershipEvent::Replaced {
                    old: old.id,
                    new: id.clone(),
                }));
            }
        }
        let Some(record) = self.members.get_mut(&id.addr) else {
            return;
        };
        if record.id != id {
            return; // a stale incarnation's word counts for nothing
        }
        record.last_contact = now;
        if let Some(meta) = meta
            && record.meta.as_ref() != Some(&meta)
        {
            record.meta = Some(meta.clone());
            self.actions
                .push(Action::Event(MembershipEvent::Meta(id, meta)));
        }
    }

    /// Moves foca's output into actions, folds its notifications and member
    /// states into the table, and reports state changes.
    fn flush(&mut self, now: Instant) {
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(id) | OwnedNotification::Rename(_, id) => {
                    self.heard_from(id, None, now);
                }
                OwnedNotification::MemberDown(id) => {
                    if let Some(r) = self.members.get_mut(&id.addr)
                        && r.id == id
                    {
                        r.foca_state = Some(foca::State::Down);
                    }
                }
                OwnedNotification::Rejoin(id) => {
                    tracing::warn!(
                        ?id,
                        "declared down by the cluster; rejoined as a renewed identity"
                    );
                }
                OwnedNotification::Defunct => {
                    tracing::warn!("the cluster declared this node down");
                }
                OwnedNotification::Idle => tracing::debug!("no live members known"),
                OwnedNotification::Active => tracing::debug!("joined: live members known"),
            }
        }
        for member in self.foca.iter_membership_state() {
            if let Some(r) = self.members.get_mut(&member.id().addr)
                && &r.id == member.id()
            {
                r.foca_state = Some(member.state());
            }
        }
        while let Some((to, packet)) = self.runtime.to_send() {
            self.actions.push(Action::Send {
                to: to.addr,
                datagram: datagram::encode_swim(&packet),
            });
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            self.actions.push(Action::Schedule { after, timer });
        }
        self.report_changes(now);
    }

    fn report_changes(&mut self, now: Instant) {
        let addrs: Vec<SocketAddr> = self.members.keys().copied().collect();
        for addr in addrs {
            self.report_change(addr, now);
        }
    }

    /// Reports the member at `addr` if its state is not the one last
    /// reported.
    fn report_change(&mut self, addr: SocketAddr, now: Instant) {
        let Some(state) = self.members.get(&addr).map(|r| self.state_of(r, now)) else {
            return;
        };
        let Some(record) = self.members.get_mut(&addr) else {
            return;
        };
        if record.reported == Some(state) {
            return;
        }
        record.reported = Some(state);
        let id = record.id.clone();
        tracing::info!(member = %id.addr, node_id = %id.node_id, generation = id.generation, ?state, "member state");
        self.actions.push(Action::Event(match state {
            MemberState::Alive => MembershipEvent::Up(id),
            MemberState::Suspect => MembershipEvent::Suspect(id),
            MemberState::Down => MembershipEvent::Down(id),
        }));
    }
}
