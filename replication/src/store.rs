//! The redb store: one database file holding every path's latest entry, its
//! bounded version history, node metadata and the Merkle bucket digests.
//!
//! All of a batch's changes, the revision counter and the bucket digests
//! change in one durable write transaction, so after a crash the store is at
//! some batch boundary with digests that match its contents.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

mod batch;
mod feed;
mod history;
mod open;
mod paced_file;
mod prefix;
mod read;
mod replicated;
mod requests;
mod sync;
mod verify;

use batch::BatchTables;

pub use feed::{FEED_WINDOW, FeedEvent, FeedPage};
pub use open::{DEFAULT_CACHE_BYTES, RECORD_FORMAT};
pub use prefix::Under;
pub use read::Entries;
pub use replicated::ApplyError;
pub use requests::{REQUEST_WINDOW, RequestCursor};
pub use sync::{PathState, Snapshot};

use crate::merkle::MerkleBuckets;
use crate::record::{Applied, Change, ChangeKind, Entry, Meta, Op, OpError, OpKind};

/// path → [`Entry`] (latest state, tombstones included). The version
/// history is in `history::VERSION_SLOTS`.
const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
/// Node metadata: node id, last revision.
const NODE: TableDefinition<&str, &[u8]> = TableDefinition::new("node");
/// bucket index → XOR of the bucket's leaves. Absent = all zero.
const MERKLE: TableDefinition<u16, [u8; 32]> = TableDefinition::new("merkle");
/// (bucket, path) → (): which paths a Merkle bucket holds, so a sync moves
/// the differing buckets without scanning the store.
const BUCKET_PATHS: TableDefinition<(u16, &str), ()> = TableDefinition::new("bucket_paths");

const KEY_REVISION: &str = "revision";
/// The highest epoch this node promised (election), durable before any
/// grant or ack that relies on it leaves the node.
const KEY_PROMISED: &str = "promised_epoch";
/// The epoch of the last change in this store: with the revision, the
/// node's log position for vote restriction.
const KEY_LAST_EPOCH: &str = "last_epoch";
/// The revision of the last checkpoint (a durable transaction after
/// non-durable applies): informational, the position keys say the rest.
const KEY_CHECKPOINT: &str = "checkpoint";

/// Per-op results of a batch, and the changes it committed.
pub type BatchOutcome = (Vec<Result<Applied, OpError>>, Vec<Change>);

/// The database file's name inside `storage.bw.path`.
pub const DB_FILE: &str = "pika.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("storage error: {0}")]
    Storage(#[from] Box<redb::Error>),
    /// An install would move the state back: it only moves forward.
    #[error("refusing to move the state back from revision {at} to {to}")]
    Backwards { at: u64, to: u64 },
    /// A reopen after a disk error failed; the next one may succeed.
    #[error("the database is closed after a disk error and not reopened yet")]
    Closed,
    /// A transaction run off the protocol thread panicked (a bug, or redb
    /// on a failing disk): handled like a disk error.
    #[error("the transaction panicked: {0}")]
    Panicked(String),
    /// An entry names a version the history does not hold: the file is
    /// damaged (the latest version is never pruned).
    #[error("the latest version {version} of {path} is missing from the history")]
    Missing { path: String, version: u64 },
    #[error("cannot encode or decode the record under {key}: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: postcard::Error,
    },
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Storage(Box::new(e.into()))
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// One version in a path's history, without its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VersionInfo {
    pub version: u64,
    pub revision: u64,
    pub epoch: u64,
    pub created_at_ms: u64,
    pub deleted: bool,
    pub meta: Option<Meta>,
    pub size: u64,
    /// The token name that wrote this version, if access control was on.
    pub author: Option<String>,
}

/// One child of a folder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FolderChild {
    pub name: String,
    pub path: String,
    /// Present for files; folders have none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<Entry>,
}

pub struct Store {
    /// `None` only after a failed [`Store::reopen`]: every access then
    /// fails until a later reopen succeeds.
    db: RwLock<Option<Arc<Database>>>,
    /// Where the file is and how it was opened, for [`Store::reopen`];
    /// `None` in memory.
    file: Option<(PathBuf, usize)>,
    node_id: String,
    generation: AtomicU64,
    /// Reopens begun since open: a read that saw another count at its start
    /// may have read a state that went back (see [`Store::reopen`]).
    reopens: AtomicU64,
    /// The last committed revision, readable without a transaction.
    revision: AtomicU64,
    last_epoch: AtomicU64,
    promised: AtomicU64,
    /// Write transactions committed since open.
    commits: AtomicU64,
    history: u64,
    /// The published revision, for watchers.
    applied: tokio::sync::watch::Sender<u64>,
    /// A test fault: promise writes still to fail ([`Store::fail_next_promises`]).
    #[cfg(feature = "test-faults")]
    failing_promises: AtomicU64,
}

impl Store {
    /// The open database, or why there is none. Callers keep the handle
    /// for as long as their transaction lives (`let db = self.db()?; let
    /// txn = db.begin_read()?;`): redb transactions do not hold the
    /// database, and [`Store::reopen`] goes ahead only when no handle is
    /// left, so no transaction ever spans a reopen.
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| StoreError::Closed)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Reopens begun since this store was opened.
    pub fn reopens(&self) -> u64 {
        self.reopens.load(Ordering::Acquire)
    }

    /// This start's boot generation: it grows with every open (and
    /// reopen), and never goes back.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The last committed revision.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// Write transactions committed since this store was opened.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Resolves and applies a batch of ops in one durable transaction. Each op
    /// sees the effects of the ops before it; a refused op changes nothing.
    /// An `Err` means the transaction did not commit: no op in it took effect.
    pub fn execute(
        &self,
        ops: &[Op],
        epoch: u64,
        now_ms: u64,
    ) -> Result<Vec<Result<Applied, OpError>>, StoreError> {
        self.execute_then(ops, epoch, now_ms, |_| {})
            .map(|(results, _)| results)
    }

    /// Like [`Store::execute`], and also returns the changes. `before_commit`
    /// gets them once they are decided but before the transaction commits:
    /// a leader hands them to the fan-out there, so its followers' writes
    /// run while its own fsync does.
    pub fn execute_then(
        &self,
        ops: &[Op],
        epoch: u64,
        now_ms: u64,
        before_commit: impl FnOnce(&[Change]),
    ) -> Result<BatchOutcome, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write()?;
        let mut revision = self.revision();
        let mut results = Vec::with_capacity(ops.len());
        let mut changes = Vec::new();
        {
            // Opened once per batch, not per op: the tables live until commit.
            let mut tables = BatchTables::open(&txn)?;
            for op in ops {
                let current = tables.entry(op.path.as_str())?;
                match resolve(op, current.as_ref(), revision + 1, epoch, now_ms) {
                    Ok(change) => {
                        let entry = Entry::of(&change);
                        tables.write_change(&change, entry, current.as_ref(), self.history)?;
                        revision = change.revision;
                        results.push(Ok(Applied {
                            version: change.version,
                            revision: change.revision,
                            epoch: change.epoch,
                        }));
                        changes.push(change);
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
            tables.set_position(revision, (!changes.is_empty()).then_some(epoch))?;
        }
        before_commit(&changes);
        txn.commit()?;
        self.committed(revision, (!changes.is_empty()).then_some(epoch));
        Ok((results, changes))
    }

    /// After a sync: the position is the snapshot's, whatever it was before.
    fn reset_position(&self, revision: u64, epoch: u64) {
        self.last_epoch.store(epoch, Ordering::Release);
        self.revision.store(revision, Ordering::Release);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.applied.send_replace(revision);
    }

    /// Publishes a committed transaction's position to readers.
    fn committed(&self, revision: u64, epoch: Option<u64>) {
        if let Some(epoch) = epoch {
            self.last_epoch.store(epoch, Ordering::Release);
        }
        self.revision.store(revision, Ordering::Release);
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.applied.send_replace(revision);
    }

    /// Closes the database file, reporting any error instead of dropping it.
    pub fn close(self) -> Result<(), StoreError> {
        let slot = self.db.into_inner().unwrap_or_else(PoisonError::into_inner);
        match slot.map(Arc::try_unwrap) {
            None => Ok(()),
            Some(Ok(db)) => db
                .close()
                .map_err(|e| StoreError::Storage(Box::new(e.into()))),
            // Someone still holds it: it closes when they let go.
            Some(Err(_)) => Ok(()),
        }
    }
}

/// Decides what an op does to a path whose latest entry is `current`. Pure:
/// the same inputs always give the same change or the same refusal.
pub fn resolve(
    op: &Op,
    current: Option<&Entry>,
    revision: u64,
    epoch: u64,
    now_ms: u64,
) -> Result<Change, OpError> {
    let path = op.path.as_str();
    // A deleted or absent path is at "version 0" for compare-and-set.
    let live_version = current.filter(|e| !e.deleted).map_or(0, |e| e.version);
    if let Some(expected) = op.expected_version
        && expected != live_version
    {
        return Err(OpError::VersionMismatch {
            path: path.to_string(),
            expected,
            current: live_version,
        });
    }
    let kind = match &op.kind {
        OpKind::Put { meta, data } => ChangeKind::Put {
            meta: meta.clone(),
            data: data.clone(),
        },
        OpKind::Delete if live_version == 0 => return Err(OpError::NotFound(path.to_string())),
        OpKind::Delete => ChangeKind::Delete,
    };
    let live = current.filter(|e| !e.deleted);
    let created_revision = match (&kind, live) {
        (ChangeKind::Put { .. }, None) => revision,
        (_, Some(e)) => e.created_revision,
        (ChangeKind::Delete, None) => 0, // refused above
    };
    Ok(Change {
        revision,
        epoch,
        path: path.to_string(),
        // Versions keep counting across deletions, so (path, version) is
        // never reused and a tombstone has a place in the history.
        version: current.map_or(0, |e| e.version) + 1,
        created_at_ms: now_ms,
        created_revision,
        kind,
        request_id: op.request_id.clone(),
        author: op.author.clone(),
    })
}

fn encode<T: Serialize>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// The stored bucket digests as `txn` sees them.
fn buckets_in(txn: &redb::ReadTransaction) -> Result<MerkleBuckets, StoreError> {
    let mut buckets = MerkleBuckets::default();
    for item in txn.open_table(MERKLE)?.iter()? {
        let (index, digest) = item?;
        buckets.set(index.value(), digest.value());
    }
    Ok(buckets)
}

/// A counter kept under `key` in the node table (0 while absent: a new
/// store).
fn node_u64(
    node: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64, StoreError> {
    Ok(node.get(key)?.map_or(0, |v| read_u64(v.value())))
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(buf)
}
