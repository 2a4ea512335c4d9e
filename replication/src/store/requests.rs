//! Request ids of applied changes, so that a retried op is applied once on
//! whichever node leads when the retry arrives (DESIGN.md, "Writes and
//! commit"; the committer asks [`Store::applied_requests`]).
//!
//! An id is remembered for [`REQUEST_WINDOW`] revisions after the change it
//! made. The ids live in two tables of generations: revision r belongs to
//! generation r / [`REQUEST_WINDOW`], kept in table `requests_{g % 2}`. The
//! first id of a new generation deletes its table (which held generation
//! g − 2, all of it older than the window by then) and starts it again. A
//! write adds one record and removes none. An id table pruned one id per
//! write, with a second table in revision order to know which, cost two
//! inserts and two removes: a fifth of an apply's time (`cargo bench -p
//! pika-replication --bench micro -- store_apply`: `behind_log/256` 4.03
//! → 3.11 ms).
//!
//! **Invariant**: the record of every id applied within the window is in
//! the table of its generation. Kept by [`record`], which only deletes the
//! table of a generation that is entirely outside the window of the
//! revision being written. Readers filter by revision ([`lookup`]), so an
//! id is answered for exactly the window, however long its table lives.
//!
//! [`Store::applied_requests`]: super::Store::applied_requests

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::{NODE, StoreError, read_u64};
use crate::record::Applied;

/// Request ids are remembered for this many revisions.
pub const REQUEST_WINDOW: u64 = 1 << 16;

type Requests = TableDefinition<'static, &'static str, (u64, u64, u64)>;

/// request id → (version, revision, epoch), for the even and the odd
/// generations.
pub(super) const TABLES: [Requests; 2] = [
    TableDefinition::new("requests_0"),
    TableDefinition::new("requests_1"),
];
/// The generation each table holds (node keys).
const KEY_GENERATION: [&str; 2] = ["requests_0_generation", "requests_1_generation"];

/// How store formats 2 and 3 kept them: one table pruned per write, and
/// its revision order. Moved at the first open ([`lay_out`]), then deleted.
const LEGACY: Requests = TableDefinition::new("requests");
const LEGACY_ORDER: TableDefinition<u64, &str> = TableDefinition::new("request_order");

fn generation(revision: u64) -> u64 {
    revision / REQUEST_WINDOW
}

/// Whether an id applied at `revision` is still remembered at `state`.
pub(super) fn in_window(revision: u64, state: u64) -> bool {
    revision + REQUEST_WINDOW >= state
}

/// Creates both tables (readers never meet a missing one).
pub(super) fn create(txn: &WriteTransaction) -> Result<(), StoreError> {
    for table in TABLES {
        txn.open_table(table)?;
    }
    Ok(())
}

/// Records the ids a transaction applied, `(id, applied)` in revision
/// order, deleting the table of a generation this transaction starts.
pub(super) fn record(
    txn: &WriteTransaction,
    node: &mut redb::Table<'_, &'static str, &'static [u8]>,
    ids: &[(String, Applied)],
) -> Result<(), StoreError> {
    let mut rest = ids;
    while let Some((_, first)) = rest.first() {
        let g = generation(first.revision);
        let n = rest
            .iter()
            .take_while(|(_, a)| generation(a.revision) == g)
            .count();
        let (these, after) = rest.split_at(n);
        rest = after;
        let parity = (g % 2) as usize;
        let held = node
            .get(KEY_GENERATION[parity])?
            .map(|v| read_u64(v.value()));
        if held != Some(g) {
            // It held generation g − 2 or older (or nothing): every id in
            // it was applied before (g − 1) · W, outside the window of any
            // revision of generation g.
            txn.delete_table(TABLES[parity])?;
            node.insert(KEY_GENERATION[parity], g.to_le_bytes().as_slice())?;
        }
        let mut table = txn.open_table(TABLES[parity])?;
        for (id, a) in these {
            table.insert(id.as_str(), (a.version, a.revision, a.epoch))?;
        }
    }
    Ok(())
}

/// What the op with each id did, if it was applied within the window of
/// `state` (the revision the reading transaction sees).
pub(super) fn lookup(
    tables: &[impl ReadableTable<&'static str, (u64, u64, u64)>; 2],
    state: u64,
    ids: &[&str],
) -> Result<Vec<Option<Applied>>, StoreError> {
    ids.iter()
        .map(|id| {
            let mut found: Option<Applied> = None;
            for table in tables {
                if let Some(v) = table.get(*id)? {
                    let (version, revision, epoch) = v.value();
                    if in_window(revision, state) && found.is_none_or(|f| f.revision < revision) {
                        found = Some(Applied {
                            version,
                            revision,
                            epoch,
                        });
                    }
                }
            }
            Ok(found)
        })
        .collect()
}

/// Where an answer of request ids for a snapshot install stopped: the
/// table (0 or 1) and the last id sent from it.
pub type RequestCursor = (u8, String);

/// Some of the request ids an install asks for, and where to go on from
/// (`None`: that was the last of them).
pub type RequestIdsPart = (Vec<(String, Applied)>, Option<RequestCursor>);

/// The ids applied after revision `after` and inside the window of
/// `state` (the snapshot's revision), for a snapshot install: table by
/// table in key order, from just after `from`, stopping once `max_bytes`
/// of ids are gathered (at least one, when any is left). Returns where to
/// go on, `None` once every id was read.
pub(super) fn read_after(
    tables: &[impl ReadableTable<&'static str, (u64, u64, u64)>; 2],
    state: u64,
    after: u64,
    from: Option<&RequestCursor>,
    max_bytes: usize,
) -> Result<RequestIdsPart, StoreError> {
    use std::ops::Bound;
    let mut out: Vec<(String, Applied)> = Vec::new();
    let mut bytes = 0usize;
    let first = from.map_or(0, |(t, _)| usize::from(*t));
    let mut last: Option<RequestCursor> = None;
    for (t, table) in tables.iter().enumerate().skip(first) {
        let start = match from {
            Some((ft, key)) if usize::from(*ft) == t => Bound::Excluded(key.as_str()),
            _ => Bound::Unbounded,
        };
        for item in table.range::<&str>((start, Bound::Unbounded))? {
            let (id, v) = item?;
            let (version, revision, epoch) = v.value();
            if revision <= after || revision > state || !in_window(revision, state) {
                continue;
            }
            let id = id.value().to_string();
            // The id, three numbers and their framing.
            let size = id.len() + 32;
            if !out.is_empty() && bytes + size > max_bytes {
                return Ok((out, last));
            }
            bytes += size;
            last = Some((t as u8, id.clone()));
            out.push((
                id,
                Applied {
                    version,
                    revision,
                    epoch,
                },
            ));
        }
    }
    Ok((out, None))
}

/// Moves the ids of a file written by store format 2 or 3 into the
/// generation tables, in the open's transaction; those still inside the
/// window of the state's revision `state` are kept.
pub(super) fn lay_out(txn: &WriteTransaction, state: u64) -> Result<(), StoreError> {
    let legacy = txn.list_tables()?.any(|t| t.name() == LEGACY.name());
    if legacy {
        let mut kept: Vec<(String, Applied)> = {
            let old = txn.open_table(LEGACY)?;
            old.iter()?
                .map(|item| {
                    item.map(|(id, v)| {
                        let (version, revision, epoch) = v.value();
                        (
                            id.value().to_string(),
                            Applied {
                                version,
                                revision,
                                epoch,
                            },
                        )
                    })
                })
                .filter(|item| {
                    item.as_ref()
                        .map_or(true, |(_, a)| in_window(a.revision, state))
                })
                .collect::<Result<_, _>>()?
        };
        kept.sort_by_key(|(_, a)| a.revision);
        let mut node = txn.open_table(NODE)?;
        record(txn, &mut node, &kept)?;
        txn.delete_table(LEGACY)?;
        tracing::info!(
            kept = kept.len(),
            "request ids moved to their generation tables"
        );
    }
    if txn.list_tables()?.any(|t| t.name() == LEGACY_ORDER.name()) {
        txn.delete_table(LEGACY_ORDER)?;
    }
    Ok(())
}
