//! What replication needs of the store beyond local writes: the promised
//! epoch, the applied position, applying committed changes verbatim, and
//! checkpoints.
//!
//! In a cluster the store is the state applied *behind* the replicated log
//! (DESIGN.md, "The replicated log"): it holds committed changes only and
//! only moves forward. Applies are not durable on their own (the log is);
//! a checkpoint makes everything applied so far durable, and at start the
//! node replays committed entries after the checkpoint from its log.

use std::borrow::Borrow;
use std::sync::atomic::Ordering;

use super::{BatchTables, KEY_PROMISED, Store, StoreError};
use crate::election::Position;
use crate::record::{Change, Entry};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The changes do not continue this store's log: a sync is needed.
    #[error("gap in the log: expected revision {expected}, got {got}")]
    Gap { expected: u64, got: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// The highest epoch this node has promised.
    pub fn promised_epoch(&self) -> u64 {
        self.promised.load(Ordering::Acquire)
    }

    /// Durably records a promise. Returns once it is on disk: only then may
    /// the grant or ack that depends on it be sent.
    /// A test fault: the next `n` promise writes fail, as on a disk that
    /// stopped taking writes.
    #[cfg(feature = "test-faults")]
    pub fn fail_next_promises(&self, n: u64) {
        self.failing_promises.store(n, Ordering::Release);
    }

    pub fn set_promised_epoch(&self, epoch: u64) -> Result<(), StoreError> {
        #[cfg(feature = "test-faults")]
        if self
            .failing_promises
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Closed);
        }
        let db = self.db()?;
        let txn = db.begin_write()?;
        {
            let mut node = txn.open_table(super::NODE)?;
            node.insert(KEY_PROMISED, epoch.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        self.promised.fetch_max(epoch, Ordering::AcqRel);
        Ok(())
    }

    /// Where this store's state ends: the epoch and revision of the last
    /// change applied.
    pub fn position(&self) -> Position {
        Position {
            epoch: self.last_epoch.load(Ordering::Acquire),
            revision: self.revision(),
        }
    }

    /// Applies committed changes, in one durable transaction. They must
    /// continue the state exactly (first revision = current + 1, then
    /// consecutive); otherwise nothing is applied.
    pub fn apply(&self, changes: &[Change]) -> Result<(), ApplyError> {
        self.apply_with(changes, &[], redb::Durability::Immediate)
    }

    /// [`Store::apply`] without an fsync: for changes already durable in
    /// the node's log. After a crash the store is back at its last durable
    /// transaction (a checkpoint), and the log replays the rest.
    pub fn apply_behind_log(&self, changes: &[Change]) -> Result<(), ApplyError> {
        self.apply_with(changes, &[], redb::Durability::None)
    }

    /// [`Store::apply_behind_log`] with the [`Entry`] each change leaves
    /// already made: `entries[i]` is `Entry::of(&changes[i])` (made here
    /// for changes past the end of `entries`).
    pub fn apply_entries_behind_log<C: Borrow<Change>>(
        &self,
        changes: &[C],
        entries: &[Entry],
    ) -> Result<(), ApplyError> {
        self.apply_with(changes, entries, redb::Durability::None)
    }

    /// Makes everything applied so far durable and returns that position:
    /// the point the log may be purged up to.
    pub fn checkpoint(&self) -> Result<crate::election::Position, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write()?;
        let position = self.position();
        {
            let mut node = txn.open_table(super::NODE)?;
            node.insert(
                super::KEY_CHECKPOINT,
                position.revision.to_le_bytes().as_slice(),
            )?;
        }
        txn.commit()?;
        Ok(position)
    }

    fn apply_with<C: Borrow<Change>>(
        &self,
        changes: &[C],
        entries: &[Entry],
        durability: redb::Durability,
    ) -> Result<(), ApplyError> {
        let Some(last) = changes.last().map(Borrow::borrow) else {
            return Ok(());
        };
        let db = self.db()?;
        let mut txn = db.begin_write().map_err(StoreError::from)?;
        txn.set_durability(durability).map_err(StoreError::from)?;
        {
            let mut tables = BatchTables::open(&txn)?;
            // Read inside the transaction: the revision a writer that
            // committed just before left, even if it has not published it
            // to `Store::revision` yet.
            let first = tables.revision()? + 1;
            if let Some((expected, change)) = (first..)
                .zip(changes.iter().map(Borrow::borrow))
                .find(|(e, c): &(u64, &Change)| c.revision != *e)
            {
                return Err(ApplyError::Gap {
                    expected,
                    got: change.revision,
                });
            }
            for (i, change) in changes.iter().map(Borrow::borrow).enumerate() {
                let previous = tables.entry(&change.path)?;
                let entry = entries.get(i).cloned().unwrap_or_else(|| Entry::of(change));
                debug_assert_eq!(
                    entry,
                    Entry::of(change),
                    "a pending entry that is not its change's"
                );
                tables.write_change(change, entry, previous.as_ref(), self.history)?;
            }
            tables.set_position(last.revision, Some(last.epoch))?;
        }
        txn.commit().map_err(StoreError::from)?;
        self.committed(last.revision, Some(last.epoch));
        Ok(())
    }
}
