//! Backups: the committed state at one revision as one file, and a data
//! directory built back from it.
//!
//! A backup is written from one read snapshot of the store ([`Snapshot`]),
//! so it is the state at exactly one committed revision, and redb's MVCC
//! lets writes go on meanwhile. The file:
//!
//! ```text
//! "PIKABAK1"
//! frame: Header   (postcard, after a u32 little-endian length)
//! frame: Chunk    (the paths of whole Merkle buckets, with their kept history)
//! ...
//! u32 0           (end of frames)
//! blake3 of every byte before, 32 bytes
//! ```
//!
//! A restore reads the file twice: once to check the checksum and every
//! frame (so a corrupt or truncated file writes nothing), then to install
//! the chunks into a new store. It then checks the store's Merkle root
//! against the header's (so a backup of a damaged store, or a bug in the
//! install, is not taken for a good one), starts the log at the backup's
//! position and makes the node the only voter of a new voter set
//! ([`crate::recover`]). The data directory is new, so the node has a new
//! id: a restored copy never speaks for the node it was taken from.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::election::Position;
use crate::log::{LOG_DIR, LogOptions, ReplicatedLog};
use crate::merkle::{self, Digest};
use crate::recover::{self, Recovered};
use crate::store::{PathState, RECORD_FORMAT, Snapshot, Store, StoreError};

pub const MAGIC: &[u8; 8] = b"PIKABAK1";
/// A frame of a file being read is refused past this: a corrupt length
/// must not make a restore allocate without bound.
const MAX_FRAME: usize = 1 << 30;
/// A chunk closes once its paths pass this many bytes (whole buckets).
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub record_format: u64,
    pub revision: u64,
    pub epoch: u64,
    pub created_at_ms: u64,
    /// The node the backup was taken on.
    pub node_id: String,
    /// The store's Merkle root at `revision`.
    pub root: Digest,
}

#[derive(Serialize, Deserialize)]
struct Chunk {
    buckets: Vec<u16>,
    paths: Vec<PathState>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "not a pika backup (it does not start with {:?})",
        String::from_utf8_lossy(MAGIC)
    )]
    NotABackup,
    #[error("the backup is truncated: it ends {0}")]
    Truncated(&'static str),
    #[error("the backup is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the backup's checksum does not match its content: the file was changed or damaged after it was written"
    )]
    Checksum,
    #[error("{0} is not empty: restore into a new or empty directory")]
    NotEmpty(PathBuf),
    #[error("restoring into {dir}: {message}")]
    Restore { dir: PathBuf, message: String },
}

fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// The bytes of a backup of `snapshot`, in pieces of about a chunk, as an
/// iterator: the HTTP handler streams them as they come.
pub struct BackupStream {
    snapshot: Snapshot,
    header: Option<Header>,
    next_bucket: usize,
    hasher: blake3::Hasher,
    done: bool,
}

impl BackupStream {
    pub fn new(snapshot: Snapshot, node_id: &str, created_at_ms: u64) -> Self {
        let header = Header {
            record_format: RECORD_FORMAT,
            revision: snapshot.revision,
            epoch: snapshot.epoch,
            created_at_ms,
            node_id: node_id.to_string(),
            root: snapshot.merkle().root(),
        };
        Self {
            snapshot,
            header: Some(header),
            next_bucket: 0,
            hasher: blake3::Hasher::new(),
            done: false,
        }
    }

    pub fn revision(&self) -> u64 {
        self.snapshot.revision
    }

    fn piece(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        let mut out = Vec::new();
        if let Some(header) = self.header.take() {
            out.extend_from_slice(MAGIC);
            let encoded = postcard::to_allocvec(&header).map_err(|source| StoreError::Corrupt {
                key: "backup header".into(),
                source,
            })?;
            out.extend(frame(&encoded));
        } else if self.next_bucket < merkle::BUCKETS {
            let mut chunk = Chunk {
                buckets: Vec::new(),
                paths: Vec::new(),
            };
            let mut bytes = 0;
            while self.next_bucket < merkle::BUCKETS && bytes < CHUNK_BYTES {
                let bucket = self.next_bucket as u16;
                self.next_bucket += 1;
                let paths = self.snapshot.bucket_contents(&[bucket], None)?;
                bytes += paths.iter().map(PathState::size).sum::<usize>();
                chunk.buckets.push(bucket);
                chunk.paths.extend(paths);
            }
            let encoded = postcard::to_allocvec(&chunk).map_err(|source| StoreError::Corrupt {
                key: "backup chunk".into(),
                source,
            })?;
            out.extend(frame(&encoded));
        } else if !self.done {
            self.done = true;
            out.extend_from_slice(&0u32.to_le_bytes());
            self.hasher.update(&out);
            out.extend_from_slice(self.hasher.finalize().as_bytes());
            return Ok(Some(out));
        } else {
            return Ok(None);
        }
        self.hasher.update(&out);
        Ok(Some(out))
    }
}

impl Iterator for BackupStream {
    type Item = Result<Vec<u8>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.piece().transpose()
    }
}

/// Reads a backup frame by frame, hashing what it reads.
struct Reader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Reader<R> {
    fn exact(&mut self, buf: &mut [u8], at: &'static str) -> Result<(), BackupError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => BackupError::Truncated(at),
            _ => BackupError::Corrupt(format!("reading {at}: {e}")),
        })?;
        self.hasher.update(buf);
        Ok(())
    }

    /// The next frame's bytes, `None` at the end marker.
    fn frame(&mut self) -> Result<Option<Vec<u8>>, BackupError> {
        let mut len = [0u8; 4];
        self.exact(&mut len, "inside a frame's length")?;
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Ok(None);
        }
        if len > MAX_FRAME {
            return Err(BackupError::Corrupt(format!(
                "a frame claims {len} bytes (at most {MAX_FRAME})"
            )));
        }
        let mut bytes = vec![0u8; len];
        self.exact(&mut bytes, "inside a frame")?;
        Ok(Some(bytes))
    }

    /// Reads everything: the header, each chunk handed to `each`, and the
    /// checksum, which must match.
    fn read_all(
        mut self,
        mut each: impl FnMut(&Header, Chunk) -> Result<(), BackupError>,
    ) -> Result<Header, BackupError> {
        let mut magic = [0u8; 8];
        self.inner
            .read_exact(&mut magic)
            .map_err(|_| BackupError::NotABackup)?;
        if &magic != MAGIC {
            return Err(BackupError::NotABackup);
        }
        self.hasher.update(&magic);
        let first = self
            .frame()?
            .ok_or(BackupError::Corrupt("no header".into()))?;
        let header: Header = postcard::from_bytes(&first)
            .map_err(|e| BackupError::Corrupt(format!("the header does not decode: {e}")))?;
        if header.record_format != RECORD_FORMAT {
            return Err(BackupError::Corrupt(format!(
                "record format {} (this version reads {RECORD_FORMAT})",
                header.record_format
            )));
        }
        while let Some(bytes) = self.frame()? {
            let chunk: Chunk = postcard::from_bytes(&bytes)
                .map_err(|e| BackupError::Corrupt(format!("a chunk does not decode: {e}")))?;
            each(&header, chunk)?;
        }
        let expected = *self.hasher.finalize().as_bytes();
        let mut sum = [0u8; 32];
        self.inner
            .read_exact(&mut sum)
            .map_err(|_| BackupError::Truncated("before its checksum"))?;
        if sum != expected {
            return Err(BackupError::Checksum);
        }
        let mut rest = [0u8; 1];
        if matches!(self.inner.read(&mut rest), Ok(n) if n > 0) {
            return Err(BackupError::Corrupt("bytes after the checksum".into()));
        }
        Ok(header)
    }
}

fn open(file: &Path) -> Result<Reader<std::io::BufReader<std::fs::File>>, BackupError> {
    let f = std::fs::File::open(file).map_err(|source| BackupError::Io {
        path: file.to_path_buf(),
        source,
    })?;
    Ok(Reader {
        inner: std::io::BufReader::with_capacity(1 << 20, f),
        hasher: blake3::Hasher::new(),
    })
}

/// Checks a backup file end to end (checksum, every frame) and returns its
/// header.
pub fn verify(file: &Path) -> Result<Header, BackupError> {
    open(file)?.read_all(|_, _| Ok(()))
}

/// A file in a data directory while a restore builds it: a node refuses
/// to open a store beside it (`Store::open`), so that a restore killed
/// half way (its chunks are installed one transaction each) never serves a
/// partial state as a whole one. Removed, durably, once the restore ends.
pub const RESTORING: &str = "RESTORE_IN_PROGRESS";

/// What [`restore`] built.
#[derive(Debug)]
pub struct Restored {
    pub header: Header,
    pub paths: usize,
    pub voters: Recovered,
}

/// Builds the data directory `data_dir` (absent or empty) from the backup
/// `file` (module docs). On any failure after the file was checked, what
/// it wrote is removed again (and `data_dir` itself, if it made it).
pub fn restore(
    file: &Path,
    data_dir: &Path,
    history: u64,
    voters_path: &str,
) -> Result<Restored, BackupError> {
    verify(file)?;
    if let Ok(mut entries) = std::fs::read_dir(data_dir)
        && entries.next().is_some()
    {
        return Err(BackupError::NotEmpty(data_dir.to_path_buf()));
    }
    let existed = data_dir.exists();
    let result = build(file, data_dir, history, voters_path);
    if result.is_err() {
        // Leave things as they were: an empty directory the caller made
        // (a mount point, say) stays, emptied again; one this made goes.
        if existed {
            if let Ok(entries) = std::fs::read_dir(data_dir) {
                for entry in entries.flatten() {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    result
}

fn build(
    file: &Path,
    data_dir: &Path,
    history: u64,
    voters_path: &str,
) -> Result<Restored, BackupError> {
    let failed = |message: String| BackupError::Restore {
        dir: data_dir.to_path_buf(),
        message,
    };
    let store = Store::open(data_dir, history).map_err(|e| failed(e.to_string()))?;
    let marker = data_dir.join(RESTORING);
    write_durably(&marker, b"a restore is building this directory\n")
        .map_err(|e| failed(format!("marking the directory as being restored: {e}")))?;
    let mut paths = 0;
    let header = open(file)?.read_all(|header, chunk| {
        paths += chunk.paths.len();
        store
            .install(
                &chunk.buckets,
                &chunk.paths,
                header.revision,
                header.epoch,
                None,
            )
            .map_err(|e| failed(format!("installing a chunk: {e}")))
    })?;
    let root = store
        .recompute_merkle()
        .map_err(|e| failed(e.to_string()))?
        .root();
    if root != header.root {
        return Err(failed(
            "the restored state's Merkle root differs from the backup's: the backup does not \
             hold the state it names"
                .into(),
        ));
    }
    let mut log = ReplicatedLog::open(&data_dir.join(LOG_DIR), &LogOptions::default())
        .map_err(|e| failed(e.to_string()))?;
    log.purge_through(Position {
        epoch: header.epoch,
        revision: header.revision,
    })
    .map_err(|e| failed(e.to_string()))?;
    // A new cluster: a fresh id, from the new node's random id and now.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = blake3::hash(format!("{}/{now}/{}", store.node_id(), header.revision).as_bytes());
    let cluster: String = seed.as_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let voters = recover::new_voter_set(&store, &mut log, voters_path, Some(&cluster))
        .map_err(|e| failed(e.to_string()))?;
    drop(log);
    store.close().map_err(|e| failed(e.to_string()))?;
    std::fs::remove_file(&marker)
        .and_then(|()| crate::log::segment::sync_dir(data_dir))
        .map_err(|e| failed(format!("removing the restore's marker: {e}")))?;
    Ok(Restored {
        header,
        paths,
        voters,
    })
}

/// Writes a whole backup of `store` to `file` (tests, and tools that hold
/// the store); returns the revision backed up.
pub fn write_file(store: &Store, file: &Path, created_at_ms: u64) -> Result<u64, BackupError> {
    let io = |source| BackupError::Io {
        path: file.to_path_buf(),
        source,
    };
    let snapshot = store
        .snapshot()
        .map_err(|e| BackupError::Corrupt(e.to_string()))?;
    let stream = BackupStream::new(snapshot, store.node_id(), created_at_ms);
    let revision = stream.revision();
    let mut out = std::io::BufWriter::new(std::fs::File::create(file).map_err(io)?);
    for piece in stream {
        let piece = piece.map_err(|e| BackupError::Corrupt(e.to_string()))?;
        out.write_all(&piece).map_err(io)?;
    }
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    Ok(revision)
}

/// Writes `file` and makes it and its name durable.
fn write_durably(file: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(file)?;
    f.write_all(content)?;
    f.sync_all()?;
    match file.parent() {
        Some(dir) => crate::log::segment::sync_dir(dir),
        None => Ok(()),
    }
}
