//! The store's side of Merkle anti-entropy: a consistent snapshot to serve
//! digests and bucket contents from, and installing a leader's buckets.
//!
//! A follower's session stages the paths it receives in a table of their
//! own ([`Store::stage`]), answer by answer, and the install moves them
//! into the state in one transaction ([`Store::install_staged`]). So a
//! session holds one answer in memory at a time, not every differing
//! bucket: a follower rejoining a store of several GB needs no more
//! memory than its page cache (redb writes a transaction's pages out
//! beyond half of it).

use redb::{ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::requests::{self, RequestCursor, RequestIdsPart};
use super::{
    BUCKET_PATHS, BatchTables, ENTRIES, KEY_LAST_EPOCH, KEY_REVISION, NODE, Store, StoreError,
    decode, encode, history, node_u64,
};
use crate::merkle::{self, MerkleBuckets};
use crate::record::{Applied, Change, Entry};

/// One path as a bucket transfer carries it: its latest entry and the
/// version history the store keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathState {
    pub path: String,
    pub entry: Entry,
    pub versions: Vec<Change>,
}

impl PathState {
    /// About what it costs in a frame.
    pub fn size(&self) -> usize {
        self.path.len()
            + 64
            + self
                .versions
                .iter()
                .map(crate::log::change_size)
                .sum::<usize>()
    }
}

/// A read-only view of the store at one revision, held for the length of a
/// sync session so every answer comes from the same state.
pub struct Snapshot {
    txn: ReadTransaction,
    /// Keeps the database open while the snapshot lives (see
    /// [`Store::reopen`]): declared after `txn`, so dropped after it.
    _db: std::sync::Arc<redb::Database>,
    pub revision: u64,
    pub epoch: u64,
    buckets: MerkleBuckets,
    /// The slots the history is laid out in.
    history: u64,
}

/// (session, answer) → the answer's [`PathState`]s: what a snapshot
/// session received and has not installed yet, one record per answer (as
/// many B-tree inserts per path cost a rejoin seconds). An install takes
/// its own session's paths only,
/// so what another left (cut short, or before a crash) is never installed
/// as part of a later snapshot; each session also starts with the table
/// emptied ([`Store::clear_staged`]), so that is never kept either, and
/// the install empties it in its own transaction (and the store's open
/// too: no session survives a restart).
pub(super) const STAGED: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sync_staged");

impl Store {
    pub fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let (revision, epoch, buckets) = {
            let node = txn.open_table(NODE)?;
            let revision = node_u64(&node, KEY_REVISION)?;
            let epoch = node_u64(&node, KEY_LAST_EPOCH)?;
            (revision, epoch, super::buckets_in(&txn)?)
        };
        Ok(Snapshot {
            txn,
            _db: db,
            revision,
            epoch,
            buckets,
            history: self.history,
        })
    }

    /// Installs a leader's snapshot of `buckets` and moves the position to
    /// the snapshot's, in one durable transaction. Refused when `revision`
    /// is below this store's: the state only moves forward.
    ///
    /// With `since: None` (a repair), `paths` is everything the leader holds
    /// in those buckets, tombstones included, and replaces what this store
    /// has there: paths the leader does not have are removed. With
    /// `since: Some(a)` (catching up from a state at revision a, which is a
    /// prefix of the leader's), `paths` holds only the paths changed after
    /// a, each with only its versions after a: they are added to what is
    /// here, and the history is pruned as `apply` would.
    pub fn install(
        &self,
        buckets: &[u16],
        paths: &[PathState],
        revision: u64,
        epoch: u64,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        self.install_with_requests(buckets, paths, &[], revision, epoch, since)
    }

    /// [`Self::install`], with the request ids the leader's snapshot holds
    /// beside the paths' versions (`SyncAsk::Requests`): those of versions
    /// its history no longer keeps are remembered here too.
    pub fn install_with_requests(
        &self,
        buckets: &[u16],
        paths: &[PathState],
        requests: &[(String, Applied)],
        revision: u64,
        epoch: u64,
        since: Option<u64>,
    ) -> Result<(), StoreError> {
        let target = InstallTarget {
            buckets,
            requests,
            revision,
            epoch,
            since,
        };
        self.install_from(target, Source::Paths(paths)).map(|_| ())
    }

    /// Empties the staging table: a session starts from nothing staged
    /// (what an earlier one left, cut short or before a crash, is of
    /// another snapshot).
    pub fn clear_staged(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        // Nothing here needs to survive a crash: the next session clears
        // it again, and an install empties it durably.
        txn.set_durability(redb::Durability::None)?;
        txn.delete_table(STAGED)?;
        txn.commit()?;
        Ok(())
    }

    /// Keeps one answer's paths for `session`'s install (see the module's
    /// comment), after those staged before. The session takes each path
    /// once, so none is staged twice.
    pub fn stage(&self, session: u64, paths: &[PathState]) -> Result<(), StoreError> {
        let db = self.db()?;
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        {
            let mut staged = txn.open_table(STAGED)?;
            let next = staged
                .range((session, 0)..=(session, u64::MAX))?
                .next_back()
                .transpose()?
                .map_or(0, |(key, _)| key.value().1 + 1);
            let record = encode("a staged snapshot answer", &paths)?;
            staged.insert((session, next), record.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// [`Self::install_with_requests`] of the paths staged for `session`;
    /// empties the staging table in the same transaction and returns how
    /// many paths it installed.
    pub fn install_staged(
        &self,
        session: u64,
        buckets: &[u16],
        requests: &[(String, Applied)],
        revision: u64,
        epoch: u64,
        since: Option<u64>,
    ) -> Result<usize, StoreError> {
        let target = InstallTarget {
            buckets,
            requests,
            revision,
            epoch,
            since,
        };
        self.install_from(target, Source::Staged(session))
    }

    /// One install transaction of what `source` holds; returns how many
    /// paths it installed.
    fn install_from(
        &self,
        target: InstallTarget<'_>,
        source: Source<'_>,
    ) -> Result<usize, StoreError> {
        let (revision, epoch) = (target.revision, target.epoch);
        let db = self.db()?;
        let txn = db.begin_write()?;
        let installed = match source {
            Source::Paths(paths) => {
                let mut paths = paths.iter().cloned().map(Ok);
                self.install_in(&txn, target, &mut paths)?
            }
            Source::Staged(session) => {
                let staged = txn.open_table(STAGED)?;
                // One answer decoded at a time.
                let mut paths =
                    staged
                        .range((session, 0)..=(session, u64::MAX))?
                        .flat_map(|item| {
                            let answer = item.map_err(StoreError::from).and_then(|(_, value)| {
                                decode::<Vec<PathState>>("a staged snapshot answer", value.value())
                            });
                            match answer {
                                Ok(paths) => paths.into_iter().map(Ok).collect(),
                                Err(e) => vec![Err(e)],
                            }
                        });
                let installed = self.install_in(&txn, target, &mut paths)?;
                drop(paths);
                drop(staged);
                txn.delete_table(STAGED)?;
                installed
            }
        };
        txn.commit()?;
        self.reset_position(revision, epoch);
        Ok(installed)
    }

    /// The install itself, inside `txn`, of the paths `source` yields
    /// (see [`Self::install`] for what it does with them); returns how
    /// many there were.
    fn install_in(
        &self,
        txn: &redb::WriteTransaction,
        target: InstallTarget<'_>,
        source: &mut dyn Iterator<Item = Result<PathState, StoreError>>,
    ) -> Result<usize, StoreError> {
        let InstallTarget {
            buckets,
            requests,
            revision,
            epoch,
            since,
        } = target;
        let mut tables = BatchTables::open(txn)?;
        // Read inside the write transaction, not from the position kept in
        // memory (which moves only after an apply's commit): no apply can
        // slip in between the check and the install.
        let at = tables.revision()?;
        if revision < at {
            return Err(StoreError::Backwards { at, to: revision });
        }
        // The request ids of the versions that travel, kept as the paths
        // go by (only those inside the window: never more than it holds).
        let mut ids = InstalledIds::new(revision);
        let mut installed = 0usize;
        if since.is_some() {
            for state in source {
                let state = state?;
                self.add_path_state(&mut tables, &state)?;
                ids.add_versions(&state);
                installed += 1;
            }
        } else {
            for &bucket in buckets {
                let local: Vec<String> = tables
                    .bucket_paths
                    .range((bucket, "")..(bucket.saturating_add(1), ""))?
                    .map(|item| item.map(|(k, _)| k.value().1.to_string()))
                    .collect::<Result<_, _>>()?;
                for path in &local {
                    tables.entries.remove(path.as_str())?;
                    tables.clear_versions(path)?;
                    tables.bucket_paths.remove((bucket, path.as_str()))?;
                }
                tables.merkle.remove(bucket)?;
            }
            let mut digests = std::collections::BTreeMap::new();
            for state in source {
                let state = state?;
                let path = state.path.as_str();
                let bucket = merkle::bucket_of(path);
                // Whatever the path held here was cleared above.
                tables.put_path_state(&state, 0, self.history)?;
                tables.bucket_paths.insert((bucket, path), ())?;
                merkle::xor_into(
                    digests.entry(bucket).or_insert(merkle::EMPTY),
                    &state.entry.leaf(path),
                );
                ids.add_versions(&state);
                installed += 1;
            }
            for (bucket, digest) in digests {
                if digest != merkle::EMPTY {
                    tables.merkle.insert(bucket, digest)?;
                }
            }
        }
        // An install that changes nothing and moves nowhere (a repair that
        // found the buckets equal after all) leaves the feed as it is:
        // watchers missed nothing and need not list again.
        let moves = revision > at || installed > 0 || !buckets.is_empty();
        tables.request_ids = ids.finish(requests);
        tables.set_position(revision, Some(epoch))?;
        // The installed state came without its changes: watchers behind
        // this revision must list again (see `feed`).
        if moves {
            tables.node.insert(
                super::feed::KEY_FEED_FLOOR,
                revision.to_le_bytes().as_slice(),
            )?;
        }
        Ok(installed)
    }

    /// One changed path of an incremental install: its new entry, its new
    /// versions in the history, its bucket digest updated.
    fn add_path_state(
        &self,
        tables: &mut BatchTables,
        state: &PathState,
    ) -> Result<(), StoreError> {
        let path = state.path.as_str();
        let previous = tables.entry(path)?;
        let before = previous.as_ref().map_or(0, |e| e.version);
        tables.put_path_state(state, before, self.history)?;
        tables.replace_leaf(path, previous.as_ref(), &state.entry)?;
        Ok(())
    }
}

impl BatchTables<'_> {
    /// Writes a transferred path's entry and the versions that came with
    /// it; its entry was at version `before` here (0: none).
    fn put_path_state(
        &mut self,
        state: &PathState,
        before: u64,
        history: u64,
    ) -> Result<(), StoreError> {
        let path = state.path.as_str();
        self.entries
            .insert(path, encode(path, &state.entry)?.as_slice())?;
        self.put_versions(path, &state.versions, before, state.entry.version, history)
    }
}

impl Snapshot {
    pub fn merkle(&self) -> &MerkleBuckets {
        &self.buckets
    }

    /// The request ids applied after revision `after` and inside the
    /// window at this snapshot, from just after `from`, about `max_bytes`
    /// of them (see `requests::read_after`).
    pub fn request_ids(
        &self,
        after: u64,
        from: Option<&RequestCursor>,
        max_bytes: usize,
    ) -> Result<RequestIdsPart, StoreError> {
        let tables = [
            self.txn.open_table(requests::TABLES[0])?,
            self.txn.open_table(requests::TABLES[1])?,
        ];
        requests::read_after(&tables, self.revision, after, from, max_bytes)
    }

    /// What the snapshot holds in `buckets`: every path, or with
    /// `since: Some(a)` only the paths changed after revision a, each with
    /// only its versions after a.
    pub fn bucket_contents(
        &self,
        buckets: &[u16],
        since: Option<u64>,
    ) -> Result<Vec<PathState>, StoreError> {
        let index = self.txn.open_table(BUCKET_PATHS)?;
        let entries = self.txn.open_table(ENTRIES)?;
        let versions = self.txn.open_table(history::VERSION_SLOTS)?;
        let mut out = Vec::new();
        for &bucket in buckets {
            for item in index.range((bucket, "")..(bucket.saturating_add(1), ""))? {
                let (key, _) = item?;
                let path = key.value().1;
                let Some(raw) = entries.get(path)? else {
                    continue;
                };
                let entry: Entry = decode(path, raw.value())?;
                let after = since.unwrap_or(0);
                if since.is_some() && entry.revision <= after {
                    continue;
                }
                let mut kept = history::read_all(&versions, path, self.history)?;
                kept.retain(|change| change.revision > after || since.is_none());
                out.push(PathState {
                    path: path.to_string(),
                    entry,
                    versions: kept,
                });
            }
        }
        Ok(out)
    }
}

/// The paths an install takes: given, or those a session staged.
enum Source<'a> {
    Paths(&'a [PathState]),
    Staged(u64),
}

/// Where an install moves the state to, and what beside its paths.
struct InstallTarget<'a> {
    buckets: &'a [u16],
    requests: &'a [(String, Applied)],
    revision: u64,
    epoch: u64,
    since: Option<u64>,
}

/// The request ids an install brings that are inside the window at
/// `revision`, in revision order (as [`super::requests::record`] takes
/// them): those of the versions that travel, and the `requests` that the
/// leader's snapshot holds for changes its history no longer keeps (a
/// path changed more than `storage.history` times inside the window). A
/// node that caught up by snapshot and then leads answers a retry of any
/// of them instead of applying it again. Ids past `revision` are not of
/// this snapshot and are dropped.
struct InstalledIds {
    revision: u64,
    ids: Vec<(String, Applied)>,
}

impl InstalledIds {
    fn new(revision: u64) -> Self {
        InstalledIds {
            revision,
            ids: Vec::new(),
        }
    }

    fn keeps(&self, applied: &Applied) -> bool {
        applied.revision <= self.revision && requests::in_window(applied.revision, self.revision)
    }

    fn add_versions(&mut self, state: &PathState) {
        for change in &state.versions {
            let Some(id) = &change.request_id else {
                continue;
            };
            let applied = Applied {
                version: change.version,
                revision: change.revision,
                epoch: change.epoch,
            };
            if self.keeps(&applied) {
                self.ids.push((id.clone(), applied));
            }
        }
    }

    fn finish(mut self, requests: &[(String, Applied)]) -> Vec<(String, Applied)> {
        for (id, applied) in requests {
            if self.keeps(applied) {
                self.ids.push((id.clone(), *applied));
            }
        }
        self.ids
            .sort_unstable_by(|(x, a), (y, b)| (a.revision, x).cmp(&(b.revision, y)));
        self.ids.dedup();
        self.ids
    }
}
