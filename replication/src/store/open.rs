//! Opening the database file: the formats this release reads (2 and 3
//! laid out again in the first open's transaction as 4; 1 and newer ones
//! refused, saying what to do), the node id minted at the first start, and
//! the start count (generation) raised at every open and reopen.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::{
    BUCKET_PATHS, DB_FILE, ENTRIES, KEY_LAST_EPOCH, KEY_PROMISED, KEY_REVISION, MERKLE, NODE,
    Store, StoreError, feed, history, node_u64, paced_file, read_u64, requests, sync,
};

const KEY_NODE_ID: &str = "node_id";
/// Boot counter: one more at every open, so a restarted node is told apart
/// from its previous incarnation (membership identity).
const KEY_GENERATION: &str = "boot_generation";
/// The format of this file, written at creation. Absent in files of
/// format 1.
const KEY_RECORD_FORMAT: &str = "record_format";
/// The encoding of a record (a change, an entry) here, in the log beside
/// it and in backups. Format 2 added `Meta::flags` and
/// `Change::created_revision` (the Consul API's `Flags` and `CreateIndex`);
/// postcard records of format 1 do not decode as format 2, so a file of
/// format 1 is refused at open.
pub const RECORD_FORMAT: u64 = 2;
/// The format of the file: format 2's records, with the version history in
/// slots (`history`, since format 3) and request ids in generations
/// (`requests`, since format 4). A file of format 2 or 3 is laid out again
/// at its first open; a release that reads an older format refuses a newer
/// file instead of missing its history or its request ids.
const STORE_FORMAT: u64 = 4;
/// Store format 3: the version history in slots, request ids in one table
/// pruned per write.
const SLOTS_FORMAT: u64 = 3;

/// redb's own default is 1 GiB, which a busy leader fills: its pages stay
/// cached after every commit. A config store's working set is far smaller,
/// and the OS page cache still holds the file.
pub const DEFAULT_CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) the database file at `path`, on a [`PacedFile`]
/// (checkpoints written back in steps).
///
/// [`PacedFile`]: paced_file::PacedFile
fn open_file(
    path: &Path,
    cache_bytes: usize,
) -> Result<Database, Box<dyn std::error::Error + Send + Sync>> {
    Ok(Database::builder()
        .set_cache_size(cache_bytes)
        .create_with_backend(paced_file::PacedFile::open(path)?)?)
}

impl Store {
    /// Opens (or creates) the store in directory `dir`, keeping at most
    /// `history` versions per path (at least 1), with the default cache.
    pub fn open(dir: &Path, history: u64) -> Result<Self, StoreError> {
        Self::open_with_cache(dir, history, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with redb's page cache bounded to `cache_bytes`.
    pub fn open_with_cache(
        dir: &Path,
        history: u64,
        cache_bytes: usize,
    ) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.into()))?;
        if dir.join(crate::backup::RESTORING).exists() {
            return Err(open_err(
                format!(
                    "a restore into this directory did not finish (its `{}` file is there): \
                     the state in it is partial; remove the directory and restore again",
                    crate::backup::RESTORING
                )
                .into(),
            ));
        }
        let db = open_file(&dir.join(DB_FILE), cache_bytes).map_err(open_err)?;
        let mut store = Self::init(db, history).map_err(|e| match e {
            StoreError::Open { source, .. } => open_err(source),
            other => other,
        })?;
        store.file = Some((dir.join(DB_FILE), cache_bytes));
        Ok(store)
    }

    /// Closes the database file and opens it again, after an I/O error
    /// (redb refuses every transaction after one until then). What was
    /// committed without durability is gone: the state is back at its last
    /// checkpoint, and the caller replays the log from there. Counts as a
    /// new start (the generation grows). Fails, to be tried again later,
    /// while anything still holds the old file open or the disk still
    /// fails; every access fails in between.
    pub fn reopen(&self) -> Result<(), StoreError> {
        // Before anything changes: reads that began earlier see the count
        // move and are refused instead of answered.
        self.reopens.fetch_add(1, Ordering::AcqRel);
        let Some((file, cache_bytes)) = &self.file else {
            // In memory there is no file to fail.
            return self.bump_generation();
        };
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: file.clone(),
            source,
        };
        // Taken out under the lock, closed and opened outside it: opening a
        // file redb must repair can take long, and meanwhile every access
        // fails at once (`Closed`) instead of blocking a runtime thread.
        let old = self
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(db) = old {
            match Arc::try_unwrap(db) {
                // Dropped here: redb releases the file.
                Ok(db) => drop(db),
                Err(shared) => {
                    *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(shared);
                    return Err(open_err("the database is still in use".into()));
                }
            }
        }
        let db = open_file(file, *cache_bytes).map_err(open_err)?;
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(db));
        self.load_counters()?;
        self.bump_generation()
    }

    /// One more start, made durable.
    fn bump_generation(&self) -> Result<(), StoreError> {
        self.store_generation(|stored| stored.saturating_add(1))
            .map(|_| ())
    }

    /// Raises this start's generation to at least `floor`, durably, so that
    /// later starts count on from there. A node raises it to the wall
    /// clock (`pika`'s `cluster.rs` says why); nothing else does, so the
    /// simulations' generations stay counts.
    pub fn raise_generation(&self, floor: u64) -> Result<u64, StoreError> {
        self.store_generation(|stored| stored.max(floor))
    }

    /// Replaces the stored generation with `next(stored)`, durably, and
    /// makes it this start's.
    fn store_generation(&self, next: impl FnOnce(u64) -> u64) -> Result<u64, StoreError> {
        let db = self.db()?;
        let txn = db.begin_write()?;
        let generation = {
            let mut node = txn.open_table(NODE)?;
            let generation = next(node_u64(&node, KEY_GENERATION)?);
            node.insert(KEY_GENERATION, generation.to_le_bytes().as_slice())?;
            generation
        };
        txn.commit()?;
        self.generation.store(generation, Ordering::Release);
        Ok(generation)
    }

    /// A store in memory: same tables and transactions, nothing on disk.
    /// For simulations, where a "crash" keeps the store and drops the rest.
    pub fn open_in_memory(history: u64) -> Result<Self, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Open {
                path: PathBuf::from(":memory:"),
                source: e.into(),
            })?;
        Self::init(db, history)
    }

    fn init(db: Database, history: u64) -> Result<Self, StoreError> {
        let open_err = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Open {
            path: PathBuf::new(),
            source,
        };
        // Create every table up front so read transactions never meet a
        // missing one, and mint the node id on first start.
        let txn = db.begin_write()?;
        let node_id = {
            txn.open_table(ENTRIES)?;
            txn.open_table(history::VERSION_SLOTS)?;
            txn.open_table(MERKLE)?;
            txn.open_table(BUCKET_PATHS)?;
            requests::create(&txn)?;
            txn.open_table(feed::FEED)?;
            // What a snapshot session staged before a crash: no session
            // survives a restart.
            txn.delete_table(sync::STAGED)?;
            let mut node = txn.open_table(NODE)?;
            let holds_data = node
                .get(KEY_REVISION)?
                .is_some_and(|v| read_u64(v.value()) > 0);
            let format = node.get(KEY_RECORD_FORMAT)?.map(|v| read_u64(v.value()));
            match format {
                Some(STORE_FORMAT) => {}
                // Its history (format 2) and its request ids (formats 2
                // and 3) are laid out below, in this transaction.
                Some(RECORD_FORMAT | SLOTS_FORMAT) => {
                    node.insert(KEY_RECORD_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())?;
                }
                None if !holds_data => {
                    node.insert(KEY_RECORD_FORMAT, STORE_FORMAT.to_le_bytes().as_slice())?;
                }
                Some(newer) if newer > STORE_FORMAT => {
                    return Err(open_err(
                        format!(
                            "the data was written by a newer pika, in store format {newer}, and \
                             this one reads formats {RECORD_FORMAT} to {STORE_FORMAT}; run the \
                             release that wrote it, or start this one on an empty data directory"
                        )
                        .into(),
                    ));
                }
                older => {
                    return Err(open_err(
                        format!(
                            "the data was written in record format {} and this pika reads formats \
                             {RECORD_FORMAT} to {STORE_FORMAT}; start this version on an empty \
                             data directory",
                            older.unwrap_or(1)
                        )
                        .into(),
                    ));
                }
            }
            let existing = node.get(KEY_NODE_ID)?.map(|v| v.value().to_vec());
            match existing {
                Some(id) => String::from_utf8_lossy(&id).into_owned(),
                None => {
                    let id = new_node_id().map_err(|e| open_err(e.to_string().into()))?;
                    node.insert(KEY_NODE_ID, id.as_bytes())?;
                    id
                }
            }
        };
        history::lay_out(&txn, history.max(1))?;
        let state = node_u64(&txn.open_table(NODE)?, KEY_REVISION)?;
        requests::lay_out(&txn, state)?;
        txn.commit()?;
        let store = Self {
            db: RwLock::new(Some(Arc::new(db))),
            file: None,
            node_id,
            generation: AtomicU64::new(0),
            reopens: AtomicU64::new(0),
            revision: AtomicU64::new(0),
            last_epoch: AtomicU64::new(0),
            promised: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            history: history.max(1),
            applied: tokio::sync::watch::Sender::new(0),
            #[cfg(feature = "test-faults")]
            failing_promises: AtomicU64::new(0),
        };
        store.load_counters()?;
        store.bump_generation()?;
        Ok(store)
    }

    /// Reads the counters kept beside the data (revision, last epoch,
    /// promise) into memory, as they are in the open file.
    fn load_counters(&self) -> Result<(), StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let node = txn.open_table(NODE)?;
        let read = |key: &str| node_u64(&node, key);
        let revision = read(KEY_REVISION)?;
        self.revision.store(revision, Ordering::Release);
        self.last_epoch
            .store(read(KEY_LAST_EPOCH)?, Ordering::Release);
        self.promised.store(read(KEY_PROMISED)?, Ordering::Release);
        self.applied.send_replace(revision);
        Ok(())
    }
}

fn new_node_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
