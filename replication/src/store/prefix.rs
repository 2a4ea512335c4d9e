//! Reads of every path that starts with a string: the Consul API's
//! `?recurse` and `?keys`, whose prefix is any string, not only a folder.

use redb::ReadableDatabase;

use super::{ENTRIES, Store, StoreError, decode, history};
use crate::record::{Change, Entry};

/// The paths under a prefix as of one read transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Under<T> {
    /// Live paths in path order.
    pub live: Vec<T>,
    /// The highest revision of any path under the prefix, deleted ones
    /// included (their tombstones are kept): it moves with every change
    /// under the prefix, so a client that waits for it to move misses
    /// no deletion. 0 when nothing under it was ever written.
    pub index: u64,
}

impl<T> Under<T> {
    fn empty() -> Self {
        Self {
            live: Vec::new(),
            index: 0,
        }
    }
}

impl Store {
    /// The latest entry of every live path starting with `prefix`, of the
    /// paths `visible` keeps (the others count toward nothing, the index
    /// included: it tells nothing of what a caller may not see).
    pub fn entries_under(
        &self,
        prefix: &str,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Under<(String, Entry)>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let mut out = Under::empty();
        for item in entries.range(prefix..)? {
            let (key, value) = item?;
            let path = key.value();
            if !path.starts_with(prefix) {
                break; // keys sort, so the prefix's range has ended
            }
            if !visible(path) {
                continue;
            }
            let entry: Entry = decode(path, value.value())?;
            out.index = out.index.max(entry.revision);
            if !entry.deleted {
                out.live.push((path.to_string(), entry));
            }
        }
        Ok(out)
    }

    /// The latest version, with content, of every live path starting with
    /// `prefix` that `visible` keeps, all read in one transaction.
    pub fn latest_under(
        &self,
        prefix: &str,
        visible: impl Fn(&str) -> bool,
    ) -> Result<Under<Change>, StoreError> {
        let db = self.db()?;
        let txn = db.begin_read()?;
        let entries = txn.open_table(ENTRIES)?;
        let versions = txn.open_table(history::VERSION_SLOTS)?;
        let mut out = Under::empty();
        for item in entries.range(prefix..)? {
            let (key, value) = item?;
            let path = key.value();
            if !path.starts_with(prefix) {
                break;
            }
            if !visible(path) {
                continue;
            }
            let entry: Entry = decode(path, value.value())?;
            out.index = out.index.max(entry.revision);
            if entry.deleted {
                continue;
            }
            // The latest version is never pruned from the history.
            let change =
                history::read(&versions, path, entry.version, self.history)?.ok_or_else(|| {
                    StoreError::Missing {
                        path: path.to_string(),
                        version: entry.version,
                    }
                })?;
            out.live.push(change);
        }
        Ok(out)
    }
}
