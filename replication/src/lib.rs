//! pika's replicated state.
//!
//! Built:
//! - [`store::Store`] on redb, with [`merkle::MerkleBuckets`] kept in the same
//!   transaction as every write.
//! - [`commit::WriteQueue`], the group committer in front of the store.
//! - [`election::Election`], the sans-IO lease election, checked by a seeded
//!   fault simulation.
//!
//! Not built yet: the tokio driver that runs the election over membership,
//! write fan-out, forwarding and anti-entropy.

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

pub use commit::{BatchLimits, CommitPolicy, Reply, Standalone, WriteError, WriteQueue};
pub use format::{ContentError, Format};
pub use path::{ConfigPath, PathError};
pub use record::{Applied, Change, ChangeKind, Entry, Meta, Op, OpError, OpKind, SharedChange};
pub use store::{FeedEvent, FeedPage, Store, StoreError};
