//! The tables one write transaction changes, opened once per batch: a
//! change's version record, its path's latest entry, the watch feed, the
//! request id it carried and its Merkle leaf, and the position the batch
//! leaves the store at. Every writer of the store (a standalone batch, an
//! apply behind the log, a snapshot install) goes through these, so the
//! tables cannot drift apart.

use redb::{ReadableTable, WriteTransaction};

use super::{
    BUCKET_PATHS, ENTRIES, KEY_LAST_EPOCH, KEY_REVISION, MERKLE, NODE, StoreError, decode, encode,
    feed, history, requests,
};
use crate::merkle;
use crate::record::{Applied, Change, Entry};

/// The tables a batch writes, opened once for the whole batch.
pub(super) struct BatchTables<'txn> {
    txn: &'txn WriteTransaction,
    pub(super) entries: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(super) versions: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    pub(super) merkle: redb::Table<'txn, u16, [u8; 32]>,
    pub(super) node: redb::Table<'txn, &'static str, &'static [u8]>,
    pub(super) bucket_paths: redb::Table<'txn, (u16, &'static str), ()>,
    pub(super) feed: redb::Table<'txn, u64, &'static [u8]>,
    /// Request ids of the changes written, recorded with the position
    /// ([`requests::record`] may delete and reopen a table, which must not
    /// be open meanwhile).
    pub(super) request_ids: Vec<(String, Applied)>,
}

impl<'txn> BatchTables<'txn> {
    pub(super) fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
            txn,
            entries: txn.open_table(ENTRIES)?,
            versions: txn.open_table(history::VERSION_SLOTS)?,
            merkle: txn.open_table(MERKLE)?,
            node: txn.open_table(NODE)?,
            bucket_paths: txn.open_table(BUCKET_PATHS)?,
            feed: txn.open_table(feed::FEED)?,
            request_ids: Vec::new(),
        })
    }

    /// The revision the state is at, as this transaction sees it.
    pub(super) fn revision(&self) -> Result<u64, StoreError> {
        super::node_u64(&self.node, KEY_REVISION)
    }

    /// Records the log position this transaction leaves behind, with the
    /// request ids of its changes.
    pub(super) fn set_position(
        &mut self,
        revision: u64,
        epoch: Option<u64>,
    ) -> Result<(), StoreError> {
        requests::record(self.txn, &mut self.node, &self.request_ids)?;
        self.request_ids.clear();
        if revision > feed::FEED_WINDOW {
            self.feed
                .retain_in(..revision - feed::FEED_WINDOW, |_, _| false)?;
        }
        self.node
            .insert(KEY_REVISION, revision.to_le_bytes().as_slice())?;
        if let Some(epoch) = epoch {
            self.node
                .insert(KEY_LAST_EPOCH, epoch.to_le_bytes().as_slice())?;
        }
        Ok(())
    }

    /// The latest entry of `path` as this transaction sees it.
    pub(super) fn entry(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        let raw = self.entries.get(path)?;
        raw.map(|v| decode(path, v.value())).transpose()
    }

    /// Writes a resolved change: version record (in place of the one
    /// leaving the history), latest entry, Merkle bucket. The caller
    /// commits.
    pub(super) fn write_change(
        &mut self,
        change: &Change,
        entry: Entry,
        previous: Option<&Entry>,
        history: u64,
    ) -> Result<(), StoreError> {
        let path = change.path.as_str();

        self.put_version(change, previous, history)?;

        self.entries
            .insert(path, encode(path, &entry)?.as_slice())?;
        self.feed.insert(
            change.revision,
            encode(path, &feed::FeedRecord::of(change))?.as_slice(),
        )?;

        if let Some(id) = &change.request_id {
            self.request_ids.push((
                id.clone(),
                Applied {
                    version: change.version,
                    revision: change.revision,
                    epoch: change.epoch,
                },
            ));
        }
        self.replace_leaf(path, previous, &entry)
    }

    /// `path`'s Merkle leaf goes from `previous`'s (none: a new path) to
    /// `entry`'s, in its bucket's digest.
    pub(super) fn replace_leaf(
        &mut self,
        path: &str,
        previous: Option<&Entry>,
        entry: &Entry,
    ) -> Result<(), StoreError> {
        let bucket = merkle::bucket_of(path);
        if previous.is_none() {
            self.bucket_paths.insert((bucket, path), ())?;
        }
        let mut digest = self
            .merkle
            .get(bucket)?
            .map_or(merkle::EMPTY, |v| v.value());
        if let Some(previous) = previous {
            merkle::xor_into(&mut digest, &previous.leaf(path));
        }
        merkle::xor_into(&mut digest, &entry.leaf(path));
        if digest == merkle::EMPTY {
            self.merkle.remove(bucket)?;
        } else {
            self.merkle.insert(bucket, digest)?;
        }
        Ok(())
    }
}
