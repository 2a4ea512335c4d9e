//! The change feed behind the watch API: one small record per revision,
//! written in the same transaction as the change, so a watcher on any node
//! reads exactly the changes that node applied, in revision order.
//!
//! The feed keeps the last [`FEED_WINDOW`] revisions. A Merkle sync installs
//! state without its individual changes, so it moves the feed's floor to the
//! installed revision: a watcher behind the floor is told so (it must list
//! again) instead of silently missing changes.

use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{NODE, Store, StoreError, decode, node_u64};
use crate::record::Change;

/// Revisions kept in the feed.
pub const FEED_WINDOW: u64 = 1 << 16;

/// revision → postcard [`FeedRecord`].
pub(super) const FEED: TableDefinition<u64, &[u8]> = TableDefinition::new("feed");
/// Revisions at or below this one are not all in the feed (set by a sync).
pub(super) const KEY_FEED_FLOOR: &str = "feed_floor";

/// What the feed stores per revision: the change without its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct FeedRecord {
    pub epoch: u64,
    pub path: String,
    pub version: u64,
    pub deleted: bool,
    pub author: Option<String>,
}

impl FeedRecord {
    pub(super) fn of(change: &Change) -> Self {
        Self {
            epoch: change.epoch,
            path: change.path.clone(),
            version: change.version,
            deleted: change.is_delete(),
            author: change.author.clone(),
        }
    }
}

/// One change as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FeedEvent {
    pub revision: u64,
    pub epoch: u64,
    pub path: String,
    pub version: u64,
    /// `"put"` or `"delete"`.
    pub op: &'static str,
    /// The token name that made the change, if access control was on.
    pub author: Option<String>,
}

/// A page of the feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedPage {
    /// Changes after the asked revision, in order (empty: nothing new yet).
    /// `through` is the last revision this page covers.
    Events {
        events: Vec<FeedEvent>,
        through: u64,
    },
    /// Some changes after the asked revision are no longer kept here: the
    /// oldest revision a watch can start from is `oldest`.
    Compacted { oldest: u64, current: u64 },
}

impl Store {
    /// Up to `limit` changes with a revision above `after`, read from one
    /// consistent snapshot.
    pub fn feed_after(&self, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let node = txn.open_table(NODE)?;
        let current = node_u64(&node, super::KEY_REVISION)?;
        let floor = node_u64(&node, KEY_FEED_FLOOR)?.max(current.saturating_sub(FEED_WINDOW));
        if after < floor {
            return Ok(FeedPage::Compacted {
                oldest: floor + 1,
                current,
            });
        }
        let feed = txn.open_table(FEED)?;
        let mut events = Vec::new();
        for item in feed.range(after + 1..=current)?.take(limit) {
            let (revision, raw) = item?;
            let revision = revision.value();
            let record: FeedRecord = decode("feed", raw.value())?;
            events.push(FeedEvent {
                revision,
                epoch: record.epoch,
                path: record.path,
                version: record.version,
                op: if record.deleted { "delete" } else { "put" },
                author: record.author,
            });
        }
        let through = if events.len() < limit {
            current.max(after)
        } else {
            events.last().map_or(after, |e| e.revision)
        };
        Ok(FeedPage::Events { events, through })
    }

    /// Waits on this to learn that the store's revision moved (a commit, an
    /// applied diff, or an installed sync).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// How many wait on [`Store::subscribe`] now: watches and blocking
    /// queries, which the shell serves promptly by applying sooner.
    pub fn watchers(&self) -> usize {
        self.applied.receiver_count()
    }
}
