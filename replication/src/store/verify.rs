//! The Merkle buckets at a revision the state has moved past: for a
//! follower that applied beyond the revision its leader verifies at
//! (DESIGN.md, "Catch-up, snapshots and verification").
//!
//! A bucket's digest is the XOR of its paths' leaves, so the buckets at C
//! follow from the buckets at S > C and the changes in (C, S]: every path
//! those changes touched swaps its leaf at S for its leaf at C. A path's
//! versions count up by one per change, deletions included (`resolve`),
//! so its entry at C is the version just before its first change after C
//! (none for version 1), which the version history holds unless the path
//! changed more than `storage.history` times since. Without it, or
//! without every change in (C, S], there is no answer, and the
//! verification is skipped as before.

use redb::ReadableDatabase;

use super::{ENTRIES, KEY_REVISION, NODE, Store, StoreError, decode, history, node_u64};
use crate::merkle::{self, MerkleBuckets};
use crate::record::{Entry, SharedChange};

impl Store {
    /// The bucket digests as they were before `changes`, the changes
    /// applied last, in revision order, through the state's revision.
    /// `None` when they do not end at the state's revision, do not follow
    /// each other, or the history lacks a version needed.
    pub fn merkle_before(
        &self,
        changes: &[SharedChange],
    ) -> Result<Option<MerkleBuckets>, StoreError> {
        let (Some(first), Some(last)) = (changes.first(), changes.last()) else {
            return self.merkle().map(Some);
        };
        if last.revision - first.revision + 1 != changes.len() as u64 {
            return Ok(None);
        }
        let db = self.db()?;
        let txn = db.begin_read()?;
        if node_u64(&txn.open_table(NODE)?, KEY_REVISION)? != last.revision {
            return Ok(None);
        }
        let entries = txn.open_table(ENTRIES)?;
        let slots = txn.open_table(history::VERSION_SLOTS)?;
        let mut buckets = super::buckets_in(&txn)?;
        let mut seen = std::collections::HashSet::new();
        for change in changes {
            let path = change.path.as_str();
            if !seen.insert(path) {
                continue;
            }
            let Some(raw) = entries.get(path)? else {
                return Ok(None);
            };
            let now: Entry = decode(path, raw.value())?;
            let then = match change.version {
                0 | 1 => None,
                v => match history::read(&slots, path, v - 1, self.history)? {
                    Some(before) => Some(Entry::of(&before)),
                    None => return Ok(None),
                },
            };
            let bucket = merkle::bucket_of(path);
            buckets.toggle(bucket, &now.leaf(path));
            if let Some(then) = then {
                buckets.toggle(bucket, &then.leaf(path));
            }
        }
        Ok(Some(buckets))
    }
}

impl Store {
    /// A test fault: rewrites the data of `path`'s latest version, as a bug
    /// that applied another value would leave it. Its entry, version record
    /// and Merkle leaf agree with one another and with no other node's; the
    /// revision does not move. The next verification finds it, and a
    /// snapshot of the differing buckets repairs it. Returns false (and
    /// changes nothing) when the path's latest version is not a put.
    #[cfg(feature = "test-faults")]
    pub fn diverge(&self, path: &str, data: Vec<u8>) -> Result<bool, StoreError> {
        use crate::record::ChangeKind;
        let db = self.db()?;
        let txn = db.begin_write()?;
        {
            let mut tables = super::BatchTables::open(&txn)?;
            let Some(previous) = tables.entry(path)? else {
                return Ok(false);
            };
            let Some(mut change) =
                history::read(&tables.versions, path, previous.version, self.history)?
            else {
                return Ok(false);
            };
            let ChangeKind::Put { data: old, .. } = &mut change.kind else {
                return Ok(false);
            };
            *old = data;
            change.request_id = None;
            let entry = Entry::of(&change);
            tables.write_change(&change, entry, Some(&previous), self.history)?;
        }
        txn.commit()?;
        Ok(true)
    }
}
