//! Recovery from losing a quorum for good (DESIGN.md, "Who votes"), the
//! way etcd's `--force-new-cluster` does it: one stopped node's data
//! becomes the start of a new voter set of one, which then grows back as
//! other nodes join as learners and are promoted.
//!
//! Offline: the node must be stopped (its store and log are locked while
//! it runs, and the open fails). Nothing is thrown away: the log's
//! entries past the commit index this node knew are kept and committed
//! with the new set, since some of them may have been acknowledged by the
//! leader that is gone. What is written, in one flush:
//! - the record `{prefix}/voters` = `{"voters": [this node]}` as the next
//!   entry of the log, in an epoch above every epoch this node has seen
//!   or promised;
//! - the commit index, through that entry;
//! - the promise of that epoch (in the store, where a running node keeps
//!   it), so that no candidate of an older epoch (an old voter coming
//!   back) can be granted by this node.
//!
//! At its next start the node sees a committed set of one, waits one
//! lease (as after any boot) and elects itself.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::election::Position;
use crate::format::Format;
use crate::log::{LOG_DIR, LogError, LogOptions, ReplicatedLog};
use crate::path::ConfigPath;
use crate::record::{Entry, Meta, Op};
use crate::replica::voters;
use crate::store::{self, DB_FILE, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error("{0} is not a pika data directory (no {DB_FILE} in it)")]
    NotADataDirectory(PathBuf),
    #[error(
        "cannot open the store in {dir} (is a pika node still running on it? stop it first): {source}"
    )]
    Store {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error(
        "cannot open the log in {dir} (is a pika node still running on it? stop it first): {source}"
    )]
    Log {
        dir: PathBuf,
        #[source]
        source: LogError,
    },
    #[error("writing the new voter set: {0}")]
    Write(String),
}

/// What [`force_new_voter_set`] did.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub node_id: String,
    /// The voter set the log held before (`None`: none).
    pub previous: Option<BTreeSet<String>>,
    /// The entry written: the new set's epoch and revision.
    pub at: Position,
    /// Entries past the old commit index that are now committed.
    pub committed_suffix: u64,
    /// The cluster id the new set carries (empty: none known).
    pub cluster: String,
}

/// Makes the stopped node whose data directory is `data_dir` the only
/// voter of a new voter set (module docs). `voters_path` is
/// `{cluster.prefix}/voters`.
pub fn force_new_voter_set(
    data_dir: &Path,
    voters_path: &str,
    history: u64,
) -> Result<Recovered, RecoverError> {
    if !data_dir.join(DB_FILE).is_file() {
        return Err(RecoverError::NotADataDirectory(data_dir.to_path_buf()));
    }
    let store = Store::open(data_dir, history).map_err(|source| RecoverError::Store {
        dir: data_dir.to_path_buf(),
        source,
    })?;
    let log_dir = data_dir.join(LOG_DIR);
    let mut log = ReplicatedLog::open(&log_dir, &LogOptions::default()).map_err(|source| {
        RecoverError::Log {
            dir: log_dir.clone(),
            source,
        }
    })?;
    new_voter_set(&store, &mut log, voters_path, None)
}

/// Appends to `log` a committed voter set of one, `store`'s node, in an
/// epoch above any the log has seen or promised, commits the log through
/// it and promises the epoch, in one flush (module docs). The log must
/// continue the store: it ends at or after the store's revision. The set
/// keeps the cluster id of the one before, or takes `new_cluster` (a
/// restore starts a new cluster).
pub fn new_voter_set(
    store: &Store,
    log: &mut ReplicatedLog,
    voters_path: &str,
    new_cluster: Option<&str>,
) -> Result<Recovered, RecoverError> {
    let write_err = |e: &dyn std::fmt::Display| RecoverError::Write(e.to_string());
    let last = log.last();
    if last.revision < store.revision() {
        return Err(RecoverError::Write(format!(
            "the log ends at revision {} but the state is at {}: the directory is damaged",
            last.revision,
            store.revision()
        )));
    }
    // The voter-set record's latest version: in the log above the state,
    // else in the state.
    let path = ConfigPath::new(voters_path.to_string()).map_err(|e| write_err(&e))?;
    let in_log = log
        .read(store.revision() + 1, last.revision, usize::MAX)
        .map_err(|e| write_err(&e))?
        .into_iter()
        .rev()
        .find(|c| c.path == voters_path);
    let (current, previous, cluster) = match in_log {
        Some(change) => (
            Some(Entry::of(&change)),
            voters::parse(&change),
            voters::parse_cluster(&change),
        ),
        None => {
            let record = store.get(voters_path, None).map_err(|e| write_err(&e))?;
            (
                store.entry(voters_path).map_err(|e| write_err(&e))?,
                record.as_ref().and_then(voters::parse),
                record.as_ref().and_then(voters::parse_cluster),
            )
        }
    };
    let cluster = match new_cluster {
        Some(id) => id.to_string(),
        None => cluster.unwrap_or_default(),
    };

    let me = store.node_id().to_string();
    // The promise a running node keeps is the store's (durable before any
    // grant); the log's own is kept too.
    let epoch = store
        .promised_epoch()
        .max(log.promised_epoch())
        .max(last.epoch)
        + 1;
    let revision = last.revision + 1;
    let meta = Meta {
        format: Format::Json,
        description: "pika voter set".into(),
        flags: 0,
    };
    let set = BTreeSet::from([me.clone()]);
    let op =
        Op::put(path, meta, voters::record(&set, &cluster), None).map_err(|e| write_err(&e))?;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut change = store::resolve(&op, current.as_ref(), revision, epoch, now_ms)
        .map_err(|e| write_err(&e))?;
    change.author = Some("pika recover --force-new-voter-set".into());
    let at = Position { epoch, revision };
    let committed_suffix = last.revision - log.committed().revision.max(store.revision());
    let log_err = |e: crate::log::LogError| write_err(&e);
    log.append(&[std::sync::Arc::new(change)])
        .map_err(log_err)?;
    log.save_promise(epoch).map_err(log_err)?;
    log.save_commit(at).map_err(log_err)?;
    log.flush_blocking().map_err(log_err)?;
    store.set_promised_epoch(epoch).map_err(|e| write_err(&e))?;
    tracing::warn!(node = %me, epoch, revision, ?previous, "forced a new voter set of one");
    Ok(Recovered {
        node_id: me,
        previous,
        at,
        committed_suffix,
        cluster,
    })
}
