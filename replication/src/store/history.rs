//! A path's version history: its last `storage.history` versions, in slots.
//!
//! Version v of a path is kept in slot v % H, H being the history length
//! the file is laid out for (the node key `history_slots`). A path's
//! versions count up by one per change (`resolve`), so a new version takes
//! the slot of the one leaving the window: a write replaces one record,
//! where a table keyed by version inserts one and prunes another. In redb
//! each of those rebuilds a B-tree leaf of 1 KiB values, and the pruning
//! was a third of an apply's time (`cargo bench -p pika-replication --bench
//! micro -- store_apply`: 5.1 → 4.0 ms per 256 changes).
//!
//! **Invariant**, which every reader relies on: the records kept for a path
//! p hold versions in (latest(p) − H, latest(p)], latest(p) being the
//! version of p's entry. Kept by
//! - [`BatchTables::write_change`](super::BatchTables::write_change): a
//!   version that does not follow the previous one by exactly one clears
//!   the slots outside the window;
//! - installs, which clear them after adding what came, unless what came
//!   overwrote every slot that could hold one ([`BatchTables::put_versions`]);
//! - the open, which lays the history out again when the file was laid out
//!   for another H, or written by a release that kept it keyed by version
//!   ([`lay_out`]).

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::{BatchTables, ENTRIES, NODE, StoreError, decode, encode, read_u64};
use crate::record::{Change, Entry};

/// (path, version % H) → [`Change`].
pub(super) const VERSION_SLOTS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("version_slots");
/// (path, version) → [`Change`]: the history as store format 2 kept it.
/// Laid out in slots at the first open, then deleted.
const LEGACY_VERSIONS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("versions");
/// Where the slots of another H wait while they are laid out again.
const RELAYOUT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("version_slots_old");
/// The H the slots are laid out for.
const KEY_HISTORY_SLOTS: &str = "history_slots";

/// The record of `path` at `version`, if the history still keeps it.
pub(super) fn read(
    slots: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    path: &str,
    version: u64,
    history: u64,
) -> Result<Option<Change>, StoreError> {
    let Some(raw) = slots.get((path, version % history))? else {
        return Ok(None);
    };
    let change: Change = decode(path, raw.value())?;
    Ok((change.version == version).then_some(change))
}

/// Every version of `path` the history keeps, oldest first.
pub(super) fn read_all(
    slots: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    path: &str,
    history: u64,
) -> Result<Vec<Change>, StoreError> {
    let mut out = Vec::new();
    for item in slots.range((path, 0u64)..(path, history))? {
        let (_, raw) = item?;
        out.push(decode::<Change>(path, raw.value())?);
    }
    out.sort_unstable_by_key(|c| c.version);
    Ok(out)
}

impl BatchTables<'_> {
    /// Keeps `change` in its slot, in place of the version leaving the
    /// window. `previous` is the path's entry before it.
    pub(super) fn put_version(
        &mut self,
        change: &Change,
        previous: Option<&Entry>,
        history: u64,
    ) -> Result<(), StoreError> {
        let path = change.path.as_str();
        self.versions.insert(
            (path, change.version % history),
            encode(path, change)?.as_slice(),
        )?;
        if previous.map_or(0, |e| e.version) + 1 != change.version {
            self.keep_window(path, change.version, history)?;
        }
        Ok(())
    }

    /// Keeps the versions an install brought for `path`, whose entry is
    /// now at `latest` and was at `before` (0: absent, or cleared).
    pub(super) fn put_versions(
        &mut self,
        path: &str,
        versions: &[Change],
        before: u64,
        latest: u64,
        history: u64,
    ) -> Result<(), StoreError> {
        let mut sorted: Vec<&Change> = versions.iter().collect();
        sorted.sort_unstable_by_key(|c| c.version);
        for change in &sorted {
            self.versions.insert(
                (path, change.version % history),
                encode(path, change)?.as_slice(),
            )?;
        }
        // A run that continues the path's history up to `latest`, or that
        // is at least H long and ends there, overwrote every slot a version
        // outside the window could be in.
        let consecutive = sorted.windows(2).all(|w| w[0].version + 1 == w[1].version);
        let ends = sorted.last().is_some_and(|c| c.version == latest);
        let continues = sorted.first().is_some_and(|c| c.version == before + 1);
        if !(consecutive && ends && (continues || sorted.len() as u64 >= history)) {
            self.keep_window(path, latest, history)?;
        }
        Ok(())
    }

    /// Removes the records of `path` outside (latest − history, latest].
    fn keep_window(&mut self, path: &str, latest: u64, history: u64) -> Result<(), StoreError> {
        let floor = latest.saturating_sub(history);
        for change in read_all(&self.versions, path, history)? {
            if change.version <= floor || change.version > latest {
                self.versions.remove((path, change.version % history))?;
            }
        }
        Ok(())
    }

    /// Every record of `path` gone (a repair install replaces the path).
    pub(super) fn clear_versions(&mut self, path: &str) -> Result<(), StoreError> {
        self.versions
            .retain_in((path, 0u64)..(path, u64::MAX), |_, _| false)?;
        Ok(())
    }
}

/// Lays the history out in slots for `history`, when the file was laid out
/// for another H or written by store format 2 (keyed by version), keeping
/// of each path the versions inside its window. In the open's transaction:
/// a crash leaves the file as it was.
pub(super) fn lay_out(txn: &WriteTransaction, history: u64) -> Result<(), StoreError> {
    let laid_out = {
        let node = txn.open_table(NODE)?;
        node.get(KEY_HISTORY_SLOTS)?.map(|v| read_u64(v.value()))
    };
    if laid_out == Some(history) {
        return Ok(());
    }
    let legacy = txn
        .list_tables()?
        .any(|t| t.name() == LEGACY_VERSIONS.name());
    let source = if legacy {
        Some(LEGACY_VERSIONS)
    } else if laid_out.is_some() {
        txn.rename_table(VERSION_SLOTS, RELAYOUT)?;
        Some(RELAYOUT)
    } else {
        None
    };
    if let Some(source) = source {
        let moved = move_history(txn, source, history)?;
        txn.delete_table(source)?;
        tracing::info!(
            from = ?laid_out,
            to = history,
            records = moved,
            "the version history was laid out again"
        );
    }
    let mut node = txn.open_table(NODE)?;
    node.insert(KEY_HISTORY_SLOTS, history.to_le_bytes().as_slice())?;
    Ok(())
}

/// Copies the versions inside each path's window from `source` (keyed by
/// path first, as both layouts are) into the slots.
fn move_history(
    txn: &WriteTransaction,
    source: TableDefinition<(&str, u64), &[u8]>,
    history: u64,
) -> Result<u64, StoreError> {
    let old = txn.open_table(source)?;
    let entries = txn.open_table(ENTRIES)?;
    let mut slots = txn.open_table(VERSION_SLOTS)?;
    let mut moved = 0;
    let mut path: Option<String> = None;
    let mut versions: Vec<Change> = Vec::new();
    let mut flush = |path: &str, versions: &mut Vec<Change>| -> Result<(), StoreError> {
        let latest = match entries.get(path)? {
            Some(raw) => decode::<Entry>(path, raw.value())?.version,
            // History without an entry is nothing a reader could reach.
            None => 0,
        };
        let floor = latest.saturating_sub(history);
        for change in versions.drain(..) {
            if change.version > floor && change.version <= latest {
                slots.insert(
                    (path, change.version % history),
                    encode(path, &change)?.as_slice(),
                )?;
                moved += 1;
            }
        }
        Ok(())
    };
    for item in old.iter()? {
        let (key, raw) = item?;
        let p = key.value().0;
        if path.as_deref() != Some(p) {
            if let Some(done) = path.take() {
                flush(&done, &mut versions)?;
            }
            path = Some(p.to_string());
        }
        versions.push(decode(p, raw.value())?);
    }
    if let Some(done) = path {
        flush(&done, &mut versions)?;
    }
    Ok(moved)
}
