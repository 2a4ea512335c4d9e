//! The leader's lease: heartbeat rounds answered by the voters, and the
//! lease extended by each round a quorum acked (module docs of [`super`]).

use std::time::Duration;

use super::{Action, Ballot, Election, ElectionMessage, KnownLeader, State};

impl Election {
    pub(super) fn on_heartbeat(
        &mut self,
        leader: &str,
        epoch: u64,
        round: u64,
        voters: u64,
        now: Duration,
    ) {
        self.highest_seen = self.highest_seen.max(epoch);
        if epoch < self.promised {
            // Fencing: a deposed leader learns it is deposed.
            self.send(
                leader,
                ElectionMessage::HeartbeatAck {
                    epoch,
                    round,
                    ok: false,
                    promised: self.promised,
                    replicas: self.replicas(),
                },
            );
            return;
        }
        if epoch > self.promised {
            self.promise(epoch);
        }
        self.joined |= voters != 0;
        match self.state {
            State::Leader { epoch: mine, .. } if mine < epoch => {
                self.step_down(mine, "a newer epoch has a leader")
            }
            State::Candidate(Ballot { epoch: mine, .. }) if mine <= epoch => self.end_campaign(),
            State::PreCandidate(_) => self.end_pre_vote(),
            _ => {}
        }
        let changed = self
            .leader
            .as_ref()
            .is_none_or(|l| l.id != leader || l.epoch != epoch);
        self.leader = Some(KnownLeader {
            id: leader.to_string(),
            epoch,
            heard_at: now,
        });
        if changed {
            self.actions.push(Action::Following {
                leader: leader.to_string(),
                epoch,
            });
        }
        self.send(
            leader,
            ElectionMessage::HeartbeatAck {
                epoch,
                round,
                ok: true,
                promised: self.promised,
                replicas: self.replicas(),
            },
        );
    }

    pub(super) fn on_ack(&mut self, from: &str, epoch: u64, round: u64, ok: bool, promised: u64) {
        self.highest_seen = self.highest_seen.max(promised);
        let State::Leader {
            epoch: mine,
            rounds,
            ..
        } = &mut self.state
        else {
            return;
        };
        if epoch != *mine {
            return;
        }
        if !ok {
            let mine = *mine;
            self.step_down(mine, "a quorum member promised a newer epoch");
            return;
        }
        if let Some((_, acks)) = rounds.get_mut(&round) {
            acks.insert(from.to_string());
            self.extend_lease(round);
        }
    }

    /// A round acked by a quorum extends the lease from its send time;
    /// it and every older round are then settled.
    pub(super) fn extend_lease(&mut self, round: u64) {
        let quorum = self.quorum.clone();
        let safe = self.config.safe_lease();
        let State::Leader {
            lease_until,
            rounds,
            ..
        } = &mut self.state
        else {
            return;
        };
        let Some((sent, acks)) = rounds.get(&round) else {
            return;
        };
        if quorum.is_met(acks) {
            *lease_until = (*lease_until).max(*sent + safe);
            rounds.retain(|r, _| *r > round);
        }
    }
}
