//! What the store holds and what a write is, independent of redb.
//!
//! An [`Op`] is a client's intent (put or delete a path, maybe guarded by an
//! expected version). The writer resolves it against the current state into a
//! [`Change`]: the op plus the version and revision it was given. Changes are
//! what get stored, and later what the leader ships to followers, so a follower
//! applies exactly the leader's decisions instead of re-deciding them.

use serde::{Deserialize, Serialize};

use crate::format::{ContentError, Format};
use crate::merkle::Digest;
use crate::path::ConfigPath;

/// Describes a config's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Meta {
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub description: String,
    /// An opaque number kept with the version for the client's own use
    /// (Consul's `flags`); pika never looks at it.
    #[serde(default)]
    pub flags: u64,
}

/// A write requested by a client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub path: ConfigPath,
    pub kind: OpKind,
    /// The version the client believes is current (0 = the path must not
    /// exist or be deleted). `None` writes unconditionally.
    pub expected_version: Option<u64>,
    /// The client's idempotency key: an op whose id was applied before is
    /// answered with that result instead of being applied again.
    pub request_id: Option<String>,
    /// Who asked for it: the name of the API token the node that received
    /// the request checked (`None` with access control off). Forwarded
    /// writes carry it to the leader, which records it on the version.
    pub author: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    // serde_bytes: one memcpy instead of a byte-at-a-time sequence; postcard
    // writes both as length + bytes, so stored records and the wire are
    // unchanged.
    Put {
        meta: Meta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Delete,
}

impl Op {
    /// A put whose content has been checked against its declared format.
    pub fn put(
        path: ConfigPath,
        meta: Meta,
        data: Vec<u8>,
        expected_version: Option<u64>,
    ) -> Result<Self, ContentError> {
        meta.format.validate(&data)?;
        Ok(Self {
            path,
            kind: OpKind::Put { meta, data },
            expected_version,
            request_id: None,
            author: None,
        })
    }

    pub fn delete(path: ConfigPath, expected_version: Option<u64>) -> Self {
        Self {
            path,
            kind: OpKind::Delete,
            expected_version,
            request_id: None,
            author: None,
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(self.path.as_str(), &self.kind)
    }

    /// The same op, carrying the client's idempotency key.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }

    /// The same op, recording who asked for it.
    pub fn with_author(mut self, author: Option<String>) -> Self {
        self.author = author;
        self
    }
}

/// Why an op was refused. The store is unchanged by a refused op.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum OpError {
    #[error("version mismatch on {path}: expected {expected}, current is {current}")]
    VersionMismatch {
        path: String,
        expected: u64,
        current: u64,
    },
    #[error("{0} does not exist")]
    NotFound(String),
    /// The request id was already used for a different write.
    #[error("request id {request_id} was already used for a different write (to {path})")]
    RequestIdReused { request_id: String, path: String },
}

/// What identifies a write for request-id reuse: its path and what it does
/// (not its guard). A put's op and the change it made give the same one.
pub type Fingerprint = [u8; 32];

fn fingerprint(path: &str, kind: &impl Serialize) -> Fingerprint {
    let mut hasher = blake3::Hasher::new();
    hasher.update(path.as_bytes());
    hasher.update(&[0]);
    // Straight into the hasher: the same bytes as `postcard::to_stdvec`,
    // without a copy of the value. Neither side can fail (a hasher takes
    // any bytes; these types always serialize).
    let _ = postcard::to_io(kind, &mut hasher);
    hasher.finalize().into()
}

/// A change as the log, its `Diff`s and the apply hold it: one allocation
/// from the leader's decision (or a follower's receipt) until the store
/// has it, shared instead of copied at each hand-over. A copy per hand-over
/// was an eighth of a follower's protocol thread at 64 clients
/// (`docs/benchmarks.md`, "Changes shared through the log").
pub type SharedChange = std::sync::Arc<Change>;

/// An op resolved to its place in history. Stored as the version record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub revision: u64,
    pub epoch: u64,
    pub path: String,
    pub version: u64,
    pub created_at_ms: u64,
    /// The revision of the path's first version since it was last created
    /// (Consul's `CreateIndex`): this change's own revision for a put on an
    /// absent or deleted path, carried over from the live version before
    /// it otherwise; a deletion keeps the value of the version it ends.
    pub created_revision: u64,
    pub kind: ChangeKind,
    /// The request id of the op that made this change, replicated with it
    /// so any later leader still recognises a retry.
    pub request_id: Option<String>,
    /// The op's author (see [`Op::author`]), kept with the version.
    pub author: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    // As in `OpKind`: same encoding, a memcpy to decode.
    Put {
        meta: Meta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    Delete,
}

impl Change {
    pub fn fingerprint(&self) -> Fingerprint {
        fingerprint(&self.path, &self.kind)
    }

    pub fn is_delete(&self) -> bool {
        matches!(self.kind, ChangeKind::Delete)
    }

    pub fn content_digest(&self) -> Digest {
        match &self.kind {
            ChangeKind::Put { data, .. } => *blake3::hash(data).as_bytes(),
            ChangeKind::Delete => crate::merkle::EMPTY,
        }
    }
}

/// The latest state of one path: what reads, listings and the Merkle leaf
/// need without loading the content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub version: u64,
    pub revision: u64,
    pub epoch: u64,
    pub created_at_ms: u64,
    /// See [`Change::created_revision`].
    pub created_revision: u64,
    pub deleted: bool,
    pub size: u64,
    pub format: Format,
    pub content: Digest,
}

impl Entry {
    pub fn of(change: &Change) -> Self {
        let (size, format) = match &change.kind {
            ChangeKind::Put { meta, data } => (data.len() as u64, meta.format),
            ChangeKind::Delete => (0, Format::default()),
        };
        Self {
            version: change.version,
            revision: change.revision,
            epoch: change.epoch,
            created_at_ms: change.created_at_ms,
            created_revision: change.created_revision,
            deleted: change.is_delete(),
            size,
            format,
            content: change.content_digest(),
        }
    }

    pub fn leaf(&self, path: &str) -> Digest {
        crate::merkle::leaf(path, self.version, self.deleted, &self.content)
    }
}

/// What a successful write returns to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    pub revision: u64,
    /// The leader term that committed it (0 on a standalone node). Fault
    /// campaigns use it to check that terms never acknowledge out of order.
    pub epoch: u64,
}
