//! A log in memory for the deterministic simulation: the same contract as
//! [`ReplicatedLog`](super::ReplicatedLog), with flushes that complete when
//! the schedule says, and a "disk" that keeps only what a completed flush
//! covered, so a crash loses the unflushed tail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use super::{LogError, LogStore};
use crate::election::Position;
use crate::record::SharedChange;

#[derive(Debug, Clone, Default)]
struct Contents {
    start: Position,
    entries: Vec<SharedChange>,
    committed: Position,
}

impl Contents {
    fn last(&self) -> Position {
        self.entries.last().map_or(self.start, |c| Position {
            epoch: c.epoch,
            revision: c.revision,
        })
    }

    fn index(&self, revision: u64) -> Option<usize> {
        let first = self.start.revision + 1;
        (revision >= first && revision <= self.last().revision).then(|| (revision - first) as usize)
    }
}

/// What survives a crash: the contents as of the last completed flush.
#[derive(Debug, Clone, Default)]
pub struct MemDisk(Arc<Mutex<Contents>>);

impl MemDisk {
    fn get(&self) -> Contents {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set(&self, contents: Contents) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = contents;
    }
}

pub struct MemLog {
    now: Contents,
    disk: MemDisk,
    /// Flushes handed out and not completed: ticket and what each covers.
    flushing: VecDeque<(u64, Contents)>,
}

impl MemLog {
    /// Opens what `disk` holds (a fresh one is an empty log).
    pub fn open(disk: MemDisk) -> Self {
        Self {
            now: disk.get(),
            disk,
            flushing: VecDeque::new(),
        }
    }

    /// Fails the oldest flush in flight, as a full or failing disk would:
    /// returns its ticket. What it covered is not on the disk.
    pub fn fail_flush(&mut self) -> Option<u64> {
        self.flushing.pop_front().map(|(ticket, _)| ticket)
    }

    /// Completes the oldest flush in flight: returns its ticket.
    pub fn complete_flush(&mut self) -> Option<u64> {
        let (ticket, contents) = self.flushing.pop_front()?;
        self.disk.set(contents);
        Some(ticket)
    }
}

impl LogStore for MemLog {
    fn reopen(&mut self) -> Result<(), LogError> {
        *self = MemLog::open(self.disk.clone());
        Ok(())
    }

    fn start(&self) -> Position {
        self.now.start
    }

    fn last(&self) -> Position {
        self.now.last()
    }

    fn committed(&self) -> Position {
        self.now.committed
    }

    fn epoch_at(&self, revision: u64) -> Option<u64> {
        if revision == self.now.start.revision {
            return Some(self.now.start.epoch);
        }
        self.now.index(revision).map(|i| self.now.entries[i].epoch)
    }

    fn append(&mut self, changes: &[SharedChange]) -> Result<(), LogError> {
        super::check_continues(self.last(), changes)?;
        self.now.entries.extend_from_slice(changes);
        Ok(())
    }

    fn truncate_after(&mut self, revision: u64) -> Result<(), LogError> {
        if revision >= self.last().revision {
            return Ok(());
        }
        if revision < self.now.committed.revision || revision < self.now.start.revision {
            return Err(LogError::Refused(format!(
                "truncating after {revision} would drop committed entries"
            )));
        }
        let keep = (revision - self.now.start.revision) as usize;
        self.now.entries.truncate(keep);
        Ok(())
    }

    fn purge_through(&mut self, upto: Position) -> Result<(), LogError> {
        if upto.revision <= self.now.start.revision {
            return Ok(());
        }
        if upto.revision <= self.last().revision {
            if !self.holds(upto) {
                return Err(LogError::Refused(format!(
                    "purge through ({}, {}): the log holds another entry there",
                    upto.epoch, upto.revision
                )));
            }
            let drop = (upto.revision - self.now.start.revision) as usize;
            self.now.entries.drain(..drop);
        } else {
            self.now.entries.clear();
        }
        self.now.start = upto;
        Ok(())
    }

    fn save_commit(&mut self, upto: Position) -> Result<(), LogError> {
        if upto <= self.now.committed {
            return Ok(());
        }
        if !self.holds(upto) {
            return Err(LogError::Refused(format!(
                "commit ({}, {}) is not an entry of this log",
                upto.epoch, upto.revision
            )));
        }
        self.now.committed = upto;
        Ok(())
    }

    fn flush(&mut self, ticket: u64) -> Result<(), LogError> {
        self.flushing.push_back((ticket, self.now.clone()));
        Ok(())
    }

    fn read(&self, from: u64, to: u64, max_bytes: usize) -> Result<Vec<SharedChange>, LogError> {
        let from = from.max(self.now.start.revision + 1);
        let to = to.min(self.last().revision);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for revision in from..=to {
            let Some(i) = self.now.index(revision) else {
                break;
            };
            let change = &self.now.entries[i];
            let size = super::change_size(change);
            if !out.is_empty() && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            out.push(change.clone());
        }
        Ok(out)
    }
}
