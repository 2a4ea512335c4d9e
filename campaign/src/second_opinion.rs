//! A second opinion on each path's history: stateright's
//! `LinearizabilityTester`, written independently of our checker
//! (`linearizability.rs`), against its own statement of pika's versioned
//! register. The campaign runs both on every path and fails the round when
//! they disagree, printing the history: a bug in either checker then shows
//! up as a disagreement instead of a silent pass.
//!
//! The history becomes a sequence of events in time order (at equal times
//! invocations first: operations that touch are concurrent, as our
//! checker treats them), each operation on a thread of its own. An
//! operation whose outcome is unknown is invoked and never returns
//! (stateright may then place it anywhere after its invocation, or leave
//! it out); a read whose outcome is unknown constrains nothing and is left
//! out.

use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

use crate::linearizability::{Call, Operation, Outcome};

/// Histories longer than this are not given to stateright: its search has
/// no memoisation and is exponential in the number of overlapping
/// operations. (Ours refuses above the same size.)
pub const MAX_OPERATIONS: usize = crate::linearizability::MAX_OPERATIONS;

/// Nor histories with more writes of unknown outcome than this: each may
/// be placed at any point after its invocation or nowhere, and without
/// memoisation the search multiplies with every one.
pub const MAX_UNKNOWN: usize = 6;

/// pika's register as the HTTP API describes it: a put makes version n+1
/// hold its value; a delete of a live value makes version n+1 a tombstone,
/// of an absent one answers not found; `expected_version` (0 = absent)
/// must equal the live version or the write answers a conflict; a read
/// answers the live value and version, or not found.
#[derive(Clone, Debug, Default)]
struct VersionedRegister {
    version: u64,
    live: Option<String>,
}

impl SequentialSpec for VersionedRegister {
    type Op = Call;
    type Ret = Outcome;

    fn invoke(&mut self, op: &Call) -> Outcome {
        let live_version = if self.live.is_some() { self.version } else { 0 };
        match op {
            Call::Read => match &self.live {
                None => Outcome::NotFound,
                Some(value) => Outcome::Value {
                    value: value.clone(),
                    version: self.version,
                },
            },
            Call::Put { expected, .. } | Call::Delete { expected }
                if expected.is_some_and(|e| e != live_version) =>
            {
                Outcome::Conflict
            }
            Call::Delete { .. } if self.live.is_none() => Outcome::NotFound,
            Call::Put { value, .. } => {
                self.version += 1;
                self.live = Some(value.clone());
                Outcome::Written {
                    version: self.version,
                }
            }
            Call::Delete { .. } => {
                self.version += 1;
                self.live = None;
                Outcome::Written {
                    version: self.version,
                }
            }
        }
    }
}

/// stateright's verdict on one path's history: `Some(true)` linearizable,
/// `Some(false)` not, `None` when the history is too long to ask or has
/// too many unknown outcomes.
pub fn linearizable(history: &[Operation]) -> Option<bool> {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| !(o.call == Call::Read && o.outcome == Outcome::Unknown))
        .collect();
    let unknown = ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
    if ops.len() > MAX_OPERATIONS || unknown > MAX_UNKNOWN {
        return None;
    }
    // (time, 0 = invoke / 1 = return, operation index)
    let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoked, 0, i));
        if op.outcome != Outcome::Unknown
            && let Some(returned) = op.returned
        {
            events.push((returned, 1, i));
        }
    }
    events.sort_unstable();
    // A client is a thread (few threads keep stateright's search, which
    // tries each thread's next operation in turn, narrow). An unknown
    // operation stays in flight on a thread of its own while its client
    // goes on; the round's final reads (no client: `usize::MAX`) overlap,
    // so each gets its own thread too.
    let thread = |i: usize| match (&ops[i].outcome, ops[i].client) {
        (Outcome::Unknown, _) => (1u8, i),
        (_, usize::MAX) => (2u8, i),
        (_, client) => (0u8, client),
    };
    let mut tester = LinearizabilityTester::new(VersionedRegister::default());
    for (_, kind, i) in events {
        let step = if kind == 0 {
            tester.on_invoke(thread(i), ops[i].call.clone()).map(|_| ())
        } else {
            tester
                .on_return(thread(i), ops[i].outcome.clone())
                .map(|_| ())
        };
        // An invalid history (a client with two operations in flight)
        // is a harness bug, not a verdict on pika.
        if let Err(e) = step {
            panic!("the history cannot be given to stateright: {e}");
        }
    }
    Some(tester.is_consistent())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linearizability::tests::{op, put, value};

    #[test]
    fn agrees_a_stale_read_after_an_acknowledged_write_is_not_linearizable() {
        let write = op(0, put("a"), 0, 1, Outcome::Written { version: 1 });
        let fresh = op(1, Call::Read, 2, 3, value("a", 1));
        let stale = op(1, Call::Read, 2, 3, Outcome::NotFound);
        assert_eq!(linearizable(&[write.clone(), fresh]), Some(true));
        assert_eq!(linearizable(&[write, stale]), Some(false));
    }

    #[test]
    fn an_unknown_write_may_take_effect_or_not_but_not_before_its_invocation() {
        let unknown = Operation {
            client: 0,
            call: put("a"),
            invoked: 5,
            returned: None,
            outcome: Outcome::Unknown,
            epoch: None,
        };
        let later = op(0, Call::Read, 6, 7, value("a", 1));
        let missing = op(0, Call::Read, 8, 9, Outcome::NotFound);
        let before = op(1, Call::Read, 1, 2, value("a", 1));
        assert_eq!(linearizable(&[unknown.clone(), later]), Some(true));
        assert_eq!(linearizable(&[unknown.clone(), missing]), Some(true));
        assert_eq!(linearizable(&[unknown, before]), Some(false));
    }

    #[test]
    fn touching_operations_are_concurrent() {
        let write = op(0, put("a"), 0, 5, Outcome::Written { version: 1 });
        let read = op(1, Call::Read, 5, 6, Outcome::NotFound);
        assert_eq!(linearizable(&[write, read]), Some(true));
    }

    #[test]
    fn compare_and_set_and_deletes_follow_the_live_version() {
        let first = op(0, put("a"), 0, 1, Outcome::Written { version: 1 });
        let gone = op(
            0,
            Call::Delete { expected: Some(1) },
            2,
            3,
            Outcome::Written { version: 2 },
        );
        let create = Call::Put {
            value: "b".into(),
            expected: Some(0),
        };
        let again = op(0, create.clone(), 4, 5, Outcome::Written { version: 3 });
        let refused = op(0, create, 4, 5, Outcome::Conflict);
        assert_eq!(
            linearizable(&[first.clone(), gone.clone(), again]),
            Some(true)
        );
        assert_eq!(linearizable(&[first, gone, refused]), Some(false));
    }
}
