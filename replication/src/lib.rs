//! pika's replicated state (`docs/architecture.md` has the whole picture):
//!
//! - [`log`]: the durable replicated log, one record per leader batch.
//! - [`replica`]: the protocol (sans-IO core: election, log replication,
//!   commit, catch-up, snapshot install, verification) and the threads that
//!   drive it over [`peers`].
//! - [`store::Store`]: redb, applied behind the log, with
//!   [`merkle::MerkleBuckets`] kept in the same transaction as every change.
//! - [`commit::WriteQueue`]: the group committer in front of both.
//! - [`election::Election`]: the lease election the core runs.

pub mod backup;
pub mod commit;
pub mod dice;
pub mod election;
pub mod fanout;
pub mod format;
pub mod log;
pub mod merkle;
pub mod path;
pub mod peers;
pub mod pending;
pub mod quorum;
pub mod record;
pub mod recover;
pub mod replica;
pub mod store;
pub mod sync;
pub mod wire;
mod writeback;

pub use commit::{BatchLimits, CommitPolicy, Reply, Standalone, WriteError, WriteQueue};
pub use format::{ContentError, Format};
pub use path::{ConfigPath, PathError};
pub use record::{Applied, Change, ChangeKind, Entry, Meta, Op, OpError, OpKind, SharedChange};
pub use store::{FeedEvent, FeedPage, Store, StoreError};
