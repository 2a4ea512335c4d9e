//! Reads of the applied state, each in one read transaction of its own
//! (so each sees one revision): entries, versions, folders, request ids
//! and the Merkle buckets. The write paths are in [`super::batch`].

use redb::{ReadableDatabase, ReadableTable};

use super::{
    ENTRIES, FolderChild, KEY_REVISION, NODE, Store, StoreError, VersionInfo, buckets_in, decode,
    feed, history, node_u64, requests,
};
use crate::merkle::{self, MerkleBuckets};
use crate::record::{Applied, Change, ChangeKind, Entry};

impl Store {
    /// What the op with this request id did, if it was applied within the
    /// last [`super::REQUEST_WINDOW`] revisions (here or, replicated, elsewhere).
    pub fn applied_request(&self, request_id: &str) -> Result<Option<Applied>, StoreError> {
        Ok(self.applied_requests(&[request_id])?.pop().flatten())
    }

    /// [`Store::applied_request`] for a whole batch, in one read transaction.
    pub fn applied_requests(
        &self,
        request_ids: &[&str],
    ) -> Result<Vec<Option<Applied>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let state = node_u64(&txn.open_table(NODE)?, KEY_REVISION)?;
        let tables = [
            txn.open_table(requests::TABLES[0])?,
            txn.open_table(requests::TABLES[1])?,
        ];
        requests::lookup(&tables, state, request_ids)
    }

    /// The changes made at these revisions, where the watch feed and the
    /// version history still have them: what a stored request id did.
    pub fn changes_at(&self, revisions: &[u64]) -> Result<Vec<Option<Change>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let feed = txn.open_table(feed::FEED)?;
        let versions = txn.open_table(history::VERSION_SLOTS)?;
        revisions
            .iter()
            .map(|revision| {
                let Some(raw) = feed.get(*revision)? else {
                    return Ok(None);
                };
                let record: feed::FeedRecord = decode("feed", raw.value())?;
                history::read(&versions, &record.path, record.version, self.history)
            })
            .collect()
    }

    /// The latest entry of a path, tombstones included.
    pub fn entry(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        self.entries()?.get(path)
    }

    /// The latest entries as of now, for looking up many paths against one
    /// state: a read transaction and its table opened once, where
    /// [`Store::entry`] opens both per path (a third of the leader's
    /// batch decision at 64 clients).
    pub fn entries(&self) -> Result<Entries, StoreError> {
        let txn = self.db()?.begin_read()?;
        Ok(Entries(txn.open_table(ENTRIES)?))
    }

    /// A version of a path (the latest when `version` is `None`), tombstones
    /// included; `None` when the path or that version is unknown or pruned.
    pub fn get(&self, path: &str, version: Option<u64>) -> Result<Option<Change>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let version = match version {
            Some(v) => v,
            None => {
                let entries = txn.open_table(ENTRIES)?;
                let raw = entries.get(path)?;
                match raw {
                    Some(v) => decode::<Entry>(path, v.value())?.version,
                    None => return Ok(None),
                }
            }
        };
        let versions = txn.open_table(history::VERSION_SLOTS)?;
        history::read(&versions, path, version, self.history)
    }

    /// The retained history of a path, oldest first; `None` if it never existed.
    pub fn versions(&self, path: &str) -> Result<Option<Vec<VersionInfo>>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let versions = txn.open_table(history::VERSION_SLOTS)?;
        let mut out = Vec::new();
        for change in history::read_all(&versions, path, self.history)? {
            let (meta, size) = match change.kind {
                ChangeKind::Put { meta, data } => (Some(meta), data.len() as u64),
                ChangeKind::Delete => (None, 0),
            };
            out.push(VersionInfo {
                version: change.version,
                revision: change.revision,
                epoch: change.epoch,
                created_at_ms: change.created_at_ms,
                deleted: meta.is_none(),
                meta,
                size,
                author: change.author,
            });
        }
        Ok((!out.is_empty()).then_some(out))
    }

    /// The live children of a folder ("" is the root), sorted by name. A
    /// folder is listed if it holds at least one live file.
    pub fn list_folder(&self, folder: &str) -> Result<Vec<FolderChild>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        // Keys under "a/b/" sort contiguously, between "a/b/" and "a/b0".
        let (start, end) = if folder.is_empty() {
            (String::new(), None)
        } else {
            (format!("{folder}/"), Some(format!("{folder}0")))
        };
        let range = match &end {
            Some(end) => entries.range(start.as_str()..end.as_str())?,
            None => entries.range(start.as_str()..)?,
        };
        // Keyed by (name, is_file): a file and a folder may share a name.
        let mut children = std::collections::BTreeMap::new();
        for item in range {
            let (key, value) = item?;
            let path = key.value();
            let entry: Entry = decode(path, value.value())?;
            if entry.deleted {
                continue;
            }
            let rest = &path[start.len()..];
            let child = match rest.split_once('/') {
                Some((name, _)) => FolderChild {
                    name: name.to_string(),
                    path: format!("{start}{name}"),
                    file: None,
                },
                None => FolderChild {
                    name: rest.to_string(),
                    path: path.to_string(),
                    file: Some(entry),
                },
            };
            children
                .entry((child.name.clone(), child.file.is_some()))
                .or_insert(child);
        }
        Ok(children.into_values().collect())
    }

    /// The stored (incrementally maintained) bucket digests.
    pub fn merkle(&self) -> Result<MerkleBuckets, StoreError> {
        let db = self.db()?;
        buckets_in(&db.begin_read()?)
    }

    /// Bucket digests recomputed from every entry: what [`Store::merkle`]
    /// must equal. O(store); for checks and tests, not the write path.
    pub fn recompute_merkle(&self) -> Result<MerkleBuckets, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut buckets = MerkleBuckets::default();
        for item in entries.iter()? {
            let (key, value) = item?;
            let path = key.value();
            let entry: Entry = decode(path, value.value())?;
            buckets.toggle(merkle::bucket_of(path), &entry.leaf(path));
        }
        Ok(buckets)
    }
}

/// The latest entries at the state a read transaction saw when it began
/// ([`Store::entries`]).
pub struct Entries(redb::ReadOnlyTable<&'static str, &'static [u8]>);

impl Entries {
    /// The latest entry of `path` in that state, tombstones included.
    pub fn get(&self, path: &str) -> Result<Option<Entry>, StoreError> {
        let raw = self.0.get(path)?;
        raw.map(|v| decode(path, v.value())).transpose()
    }
}
