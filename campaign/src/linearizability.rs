//! A linearizability checker for one pika path, in the style of Wing & Gong
//! with Lowe's memoisation (as in Porcupine and Knossos).
//!
//! The model is pika's versioned register. A put makes version n+1 live. A
//! delete makes version n+1 a tombstone. `expected_version` guards both
//! against the live version, where 0 means absent or deleted. A read sees
//! the live value and version, or "not found".
//!
//! An operation whose outcome the client never learned (a timeout, a 503
//! after the leader lost its lease, a dropped connection) may have taken
//! effect at any point after its invocation, or never. The checker tries
//! both.
//!
//! Reads are checked against what the API promises for them (DESIGN.md,
//! "Reads"): [`check`] requires the writes (puts, deletes, compare-and-set)
//! to be linearizable and every default read to miss no write acknowledged
//! before it began, and to return only data some write put there.
//! [`check_strict`] also requires the reads to be linearizable: what
//! pika's local reads promise since they serve committed entries only and
//! wait on pending ones (the campaign's default).

use std::collections::HashSet;

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Call {
    Put {
        value: String,
        expected: Option<u64>,
    },
    Delete {
        expected: Option<u64>,
    },
    Read,
}

/// What the client learned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A put or delete applied as this version.
    Written { version: u64 },
    /// `expected_version` did not match.
    Conflict,
    /// Delete of an absent path, or read of one.
    NotFound,
    /// A read's answer.
    Value { value: String, version: u64 },
    /// No answer: it may or may not have happened.
    Unknown,
}

/// One operation of a history, with times on one clock (the harness's).
#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    pub call: Call,
    pub invoked: u64,
    /// `None` for an operation that never returned.
    pub returned: Option<u64>,
    pub outcome: Outcome,
    /// For an acknowledged write: the leader term that acknowledged it.
    pub epoch: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct Register {
    version: u64,
    value: Option<String>,
}

impl Register {
    fn live_version(&self) -> u64 {
        if self.value.is_some() {
            self.version
        } else {
            0
        }
    }

    /// Applies `call`; returns the new state and what a client would see.
    fn step(&self, call: &Call) -> (Register, Outcome) {
        let guard_fails =
            |expected: &Option<u64>| expected.is_some_and(|e| e != self.live_version());
        match call {
            Call::Read => match &self.value {
                Some(v) => (
                    self.clone(),
                    Outcome::Value {
                        value: v.clone(),
                        version: self.version,
                    },
                ),
                None => (self.clone(), Outcome::NotFound),
            },
            Call::Put { expected, .. } if guard_fails(expected) => {
                (self.clone(), Outcome::Conflict)
            }
            Call::Put { value, .. } => {
                let next = Register {
                    version: self.version + 1,
                    value: Some(value.clone()),
                };
                let outcome = Outcome::Written {
                    version: next.version,
                };
                (next, outcome)
            }
            Call::Delete { expected } if guard_fails(expected) => (self.clone(), Outcome::Conflict),
            Call::Delete { .. } if self.value.is_none() => (self.clone(), Outcome::NotFound),
            Call::Delete { .. } => {
                let next = Register {
                    version: self.version + 1,
                    value: None,
                };
                let outcome = Outcome::Written {
                    version: next.version,
                };
                (next, outcome)
            }
        }
    }
}

/// Why a history is not linearizable: the operations that could not be
/// placed, for the report.
#[derive(Debug, Clone)]
pub struct Violation {
    pub operations: Vec<Operation>,
}

/// Histories longer than this per path are refused: the search is
/// exponential in the worst case, and the harness spreads its clients over
/// enough paths to stay below it.
pub const MAX_OPERATIONS: usize = 128;

/// Across the whole history: a write acknowledged in a newer term never
/// finished before one acknowledged in an older term began. Otherwise two
/// leaders acknowledged writes in overlapping lease periods (or out of
/// order), which the lease protocol forbids.
pub fn check_terms(history: &[Operation]) -> Result<(), Violation> {
    let acked: Vec<&Operation> = history
        .iter()
        .filter(|o| {
            matches!(o.outcome, Outcome::Written { .. })
                && o.epoch.is_some()
                && o.returned.is_some()
        })
        .collect();
    for older in &acked {
        for newer in &acked {
            if newer.epoch > older.epoch && newer.returned.is_some_and(|r| r < older.invoked) {
                return Err(Violation {
                    operations: vec![(*newer).clone(), (*older).clone()],
                });
            }
        }
    }
    Ok(())
}

/// Checks one path's history against pika's promises: linearizable writes,
/// and reads that never miss an acknowledged write nor invent data.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let writes: Vec<Operation> = history
        .iter()
        .filter(|o| o.call != Call::Read)
        .cloned()
        .collect();
    check_strict(&writes)?;
    check_reads(history)
}

/// Every read that returned saw at least the newest write acknowledged
/// before the read was invoked, and its data came from a put.
fn check_reads(history: &[Operation]) -> Result<(), Violation> {
    let violation = |read: &Operation, why: &Operation| Violation {
        operations: vec![why.clone(), read.clone()],
    };
    for read in history.iter().filter(|o| o.call == Call::Read) {
        let (Some(done), outcome) = (read.returned, &read.outcome) else {
            continue;
        };
        // The newest write acknowledged before this read began.
        let floor = history
            .iter()
            .filter(|w| w.call != Call::Read && w.returned.is_some_and(|r| r < read.invoked))
            .filter_map(|w| match w.outcome {
                Outcome::Written { version } => Some((version, w)),
                _ => None,
            })
            .max_by_key(|(v, _)| *v);
        match outcome {
            Outcome::Value { value, version } => {
                if let Some((v, w)) = floor
                    && *version < v
                {
                    return Err(violation(read, w));
                }
                // Some put wrote this value as this version (or may have).
                // A put still in flight when the read began may have been
                // applied by a leader that lost its lease before acking it,
                // then vanished and been applied again by the next leader
                // as a later version (the forwarder retries with the same
                // request id): a read in between shows the first version.
                let sourced = history.iter().any(|w| {
                    matches!(&w.call, Call::Put { value: pv, .. } if pv == value)
                        && w.invoked < done
                        && match w.outcome {
                            Outcome::Written { version: wv } => {
                                wv == *version
                                    || (*version < wv
                                        && w.returned.is_none_or(|r| r > read.invoked))
                            }
                            Outcome::Unknown => true,
                            _ => false,
                        }
                });
                if !sourced {
                    // Show every put of this value, whatever its outcome:
                    // the likely culprit is one reported as failed.
                    let mut operations: Vec<Operation> = history
                        .iter()
                        .filter(|w| matches!(&w.call, Call::Put { value: pv, .. } if pv == value))
                        .cloned()
                        .collect();
                    operations.push(read.clone());
                    return Err(Violation { operations });
                }
            }
            Outcome::NotFound => {
                // Absent is fine unless the newest acknowledged write was a
                // put and no delete could have come after it.
                if let Some((v, w)) = floor
                    && matches!(w.call, Call::Put { .. })
                {
                    let later_delete = history.iter().any(|d| {
                        matches!(d.call, Call::Delete { .. })
                            && d.invoked < done
                            && match d.outcome {
                                Outcome::Written { version } => version > v,
                                Outcome::Unknown => true,
                                _ => false,
                            }
                    });
                    if !later_delete {
                        return Err(violation(read, w));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks one path's whole history, reads included, for linearizability.
pub fn check_strict(history: &[Operation]) -> Result<(), Violation> {
    if history.len() > MAX_OPERATIONS {
        return Err(Violation {
            operations: history.to_vec(),
        });
    }
    // Reads whose outcome is unknown constrain nothing.
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| !(o.call == Call::Read && o.outcome == Outcome::Unknown))
        .collect();
    let mut done = vec![false; ops.len()];
    let mut seen = HashSet::new();
    if search(&ops, &mut done, &Register::default(), &mut seen) {
        Ok(())
    } else {
        Err(Violation {
            operations: ops.into_iter().cloned().collect(),
        })
    }
}

fn returned(op: &Operation) -> u64 {
    match op.outcome {
        Outcome::Unknown => u64::MAX,
        _ => op.returned.unwrap_or(u64::MAX),
    }
}

fn search(
    ops: &[&Operation],
    done: &mut Vec<bool>,
    state: &Register,
    seen: &mut HashSet<(Vec<bool>, Register)>,
) -> bool {
    // Every operation with a known outcome must be placed; unknown ones
    // may be left out (they never happened).
    if ops
        .iter()
        .zip(done.iter())
        .all(|(o, d)| *d || o.outcome == Outcome::Unknown)
    {
        return true;
    }
    if !seen.insert((done.clone(), state.clone())) {
        return false;
    }
    // Only an operation invoked before every pending known operation
    // returned can come next.
    let horizon = ops
        .iter()
        .zip(done.iter())
        .filter(|(_, d)| !**d)
        .map(|(o, _)| returned(o))
        .min()
        .unwrap_or(u64::MAX);
    for i in 0..ops.len() {
        if done[i] || ops[i].invoked > horizon {
            continue;
        }
        let (next, outcome) = state.step(&ops[i].call);
        let fits = ops[i].outcome == Outcome::Unknown || ops[i].outcome == outcome;
        if !fits {
            continue;
        }
        done[i] = true;
        if search(ops, done, &next, seen) {
            return true;
        }
        done[i] = false;
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Test histories, shared with `second_opinion`'s tests.
    pub(crate) fn op(
        client: usize,
        call: Call,
        invoked: u64,
        returned: u64,
        outcome: Outcome,
    ) -> Operation {
        Operation {
            client,
            call,
            invoked,
            returned: Some(returned),
            outcome,
            epoch: None,
        }
    }

    pub(crate) fn put(v: &str) -> Call {
        Call::Put {
            value: v.into(),
            expected: None,
        }
    }

    pub(crate) fn value(v: &str, version: u64) -> Outcome {
        Outcome::Value {
            value: v.into(),
            version,
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = [
            op(0, put("a"), 0, 1, Outcome::Written { version: 1 }),
            op(1, Call::Read, 2, 3, value("a", 1)),
            op(
                0,
                Call::Delete { expected: Some(1) },
                4,
                5,
                Outcome::Written { version: 2 },
            ),
            op(1, Call::Read, 6, 7, Outcome::NotFound),
            op(
                0,
                Call::Put {
                    value: "b".into(),
                    expected: Some(0),
                },
                8,
                9,
                Outcome::Written { version: 3 },
            ),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn a_read_that_misses_an_acknowledged_write_is_caught() {
        // The write returned at 1; a read invoked at 2 still saw nothing.
        let h = [
            op(0, put("a"), 0, 1, Outcome::Written { version: 1 }),
            op(1, Call::Read, 2, 3, Outcome::NotFound),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let h = [
            op(0, put("a"), 0, 10, Outcome::Written { version: 2 }),
            op(1, put("b"), 1, 9, Outcome::Written { version: 1 }),
            op(2, Call::Read, 2, 8, value("b", 1)),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let happened = [
            Operation {
                client: 0,
                call: put("a"),
                invoked: 0,
                returned: None,
                outcome: Outcome::Unknown,
                epoch: None,
            },
            op(1, Call::Read, 5, 6, value("a", 1)),
        ];
        assert!(check(&happened).is_ok());
        let did_not = [
            happened[0].clone(),
            op(1, Call::Read, 5, 6, Outcome::NotFound),
        ];
        assert!(check(&did_not).is_ok());
        // But it cannot take effect before it was invoked.
        let too_early = [
            op(1, Call::Read, 0, 1, value("a", 1)),
            Operation {
                invoked: 2,
                ..happened[0].clone()
            },
        ];
        assert!(check(&too_early).is_err());
    }

    #[test]
    fn two_acknowledged_writes_cannot_share_a_version() {
        let h = [
            op(0, put("a"), 0, 1, Outcome::Written { version: 1 }),
            op(1, put("b"), 2, 3, Outcome::Written { version: 1 }),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn compare_and_set_conflicts_must_be_justified() {
        let justified = [
            op(0, put("a"), 0, 1, Outcome::Written { version: 1 }),
            op(
                1,
                Call::Put {
                    value: "b".into(),
                    expected: Some(0),
                },
                2,
                3,
                Outcome::Conflict,
            ),
        ];
        assert!(check(&justified).is_ok());
        let unjustified = [op(
            1,
            Call::Put {
                value: "b".into(),
                expected: Some(0),
            },
            0,
            1,
            Outcome::Conflict,
        )];
        assert!(check(&unjustified).is_err());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            3 => (0u8..4, proptest::option::of(0u64..4)).prop_map(|(v, e)| Call::Put { value: format!("v{v}"), expected: e }),
            1 => proptest::option::of(0u64..4).prop_map(|e| Call::Delete { expected: e }),
            3 => Just(Call::Read),
        ]
    }

    proptest! {
        /// Any execution of the model, whose operations each take effect at
        /// some instant inside their own interval, is linearizable — however
        /// much the intervals overlap, and whatever unknown outcomes hide.
        #[test]
        fn real_executions_pass(
            calls in proptest::collection::vec((call(), 0u64..5, 0u64..5, any::<bool>()), 1..14),
        ) {
            let mut state = Register::default();
            let mut history = Vec::new();
            for (i, (call, before, after, hide)) in calls.into_iter().enumerate() {
                let at = 10 * i as u64 + 5; // the linearization point
                let (next, outcome) = state.step(&call);
                state = next;
                history.push(Operation {
                    client: i,
                    call,
                    invoked: at - before,
                    returned: Some(at + after),
                    outcome: if hide { Outcome::Unknown } else { outcome },
                    epoch: None,
                });
            }
            prop_assert!(check(&history).is_ok());
            prop_assert!(check_strict(&history).is_ok());
        }
    }
}

#[cfg(test)]
mod read_mode {
    use super::*;

    fn op(call: Call, invoked: u64, returned: u64, outcome: Outcome) -> Operation {
        Operation {
            client: 0,
            call,
            invoked,
            returned: Some(returned),
            outcome,
            epoch: None,
        }
    }

    #[test]
    fn a_default_read_may_show_a_write_not_yet_acknowledged_but_the_strict_check_refuses_it_vanishing()
     {
        // A write whose ack never came was seen by one read, then not by a
        // later one (it never took effect elsewhere): allowed for default
        // reads, not linearizable.
        let put = Operation {
            client: 1,
            call: Call::Put {
                value: "x".into(),
                expected: None,
            },
            invoked: 0,
            returned: None,
            outcome: Outcome::Unknown,
            epoch: None,
        };
        let h = [
            put,
            op(
                Call::Read,
                1,
                2,
                Outcome::Value {
                    value: "x".into(),
                    version: 1,
                },
            ),
            op(Call::Read, 3, 4, Outcome::NotFound),
        ];
        assert!(check(&h).is_ok());
        assert!(check_strict(&h).is_err());
    }

    #[test]
    fn a_default_read_may_show_a_put_at_the_version_of_an_attempt_that_vanished() {
        // Campaign seed 30010 (5 nodes, minority partition), versions
        // shifted down by 4: a put reached the old leader, which applied it
        // as version 1 and lost its lease before acking; a read on its side
        // saw it. The new leader never had it, gave version 1 to another
        // put, and applied the retry as 2.
        let put = |value: &str, invoked, returned, version| {
            op(
                Call::Put {
                    value: value.into(),
                    expected: None,
                },
                invoked,
                returned,
                Outcome::Written { version },
            )
        };
        let read = |invoked, returned, version| {
            op(
                Call::Read,
                invoked,
                returned,
                Outcome::Value {
                    value: "3.28".into(),
                    version,
                },
            )
        };
        let h = [
            put("3.28", 10, 100, 2),
            read(20, 21, 1),
            op(Call::Read, 30, 31, Outcome::NotFound),
            put("1.36", 40, 90, 1),
        ];
        assert!(check(&h).is_ok());
        // Once the put has returned, its version is settled: a read that
        // began later and shows another version invented it.
        let h = [put("3.28", 10, 15, 2), read(20, 21, 1)];
        assert!(check(&h).is_err());
        // Nor can an attempt that vanished have had a later version.
        let h = [put("3.28", 10, 100, 1), read(20, 21, 2)];
        assert!(check(&h).is_err());
    }

    #[test]
    fn a_default_read_must_not_miss_an_acknowledged_write_or_invent_data() {
        let acked = op(
            Call::Put {
                value: "x".into(),
                expected: None,
            },
            0,
            1,
            Outcome::Written { version: 1 },
        );
        assert!(check(&[acked.clone(), op(Call::Read, 2, 3, Outcome::NotFound)]).is_err());
        let invented = op(
            Call::Read,
            2,
            3,
            Outcome::Value {
                value: "y".into(),
                version: 1,
            },
        );
        assert!(check(&[acked, invented]).is_err());
    }
}

#[cfg(test)]
mod terms {
    use super::*;

    fn acked(invoked: u64, returned: u64, epoch: u64) -> Operation {
        Operation {
            client: 0,
            call: Call::Delete { expected: None },
            invoked,
            returned: Some(returned),
            outcome: Outcome::Written { version: 1 },
            epoch: Some(epoch),
        }
    }

    #[test]
    fn a_newer_term_may_not_finish_acknowledging_before_an_older_term_starts() {
        assert!(check_terms(&[acked(0, 1, 1), acked(2, 3, 2)]).is_ok());
        assert!(
            check_terms(&[acked(0, 5, 2), acked(1, 3, 1)]).is_ok(),
            "overlapping requests say nothing"
        );
        assert!(check_terms(&[acked(0, 1, 2), acked(2, 3, 1)]).is_err());
    }
}
