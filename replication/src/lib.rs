//! pika's replicated state.
//!
//! Today this crate holds the single-node store: [`store::Store`] on redb with
//! [`merkle::MerkleBuckets`] kept in the same transaction as every write, and
//! [`commit::WriteQueue`], the group committer in front of it. Lease election,
//! write fan-out, forwarding and anti-entropy will live here too, as sans-IO
//! state machines driven by thin tokio tasks; they are not built yet.

pub mod commit;
pub mod format;
pub mod merkle;
pub mod path;
pub mod record;
pub mod store;

pub use commit::{BatchLimits, WriteError, WriteQueue};
pub use format::{ContentError, Format};
pub use path::{ConfigPath, PathError};
pub use record::{Applied, Change, ChangeKind, Entry, Meta, Op, OpError, OpKind};
pub use store::{Store, StoreError};
