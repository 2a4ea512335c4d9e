//! Paths with entries in the log that the state has not applied yet
//! (DESIGN.md, "Reads").
//!
//! An entry is *pending* on a node from when the node appends it to its log
//! until the node applies it (it was committed) or truncates it (a new
//! leader's log replaced it). A write is answered only after every member
//! of the replication set has received it, so a read that starts after the
//! answer finds the path here or finds the change applied: a read of a
//! pending path waits until what was pending when it started is resolved.
//! That is what makes local reads linearizable without a round trip.
//!
//! The leader also resolves new ops against the latest pending entry of a
//! path (compare-and-set and version numbers see uncommitted writes, which
//! will commit in order before the new one).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::record::{Change, Entry};

#[derive(Debug, Default)]
pub struct PendingPaths {
    /// revision → path, for every pending entry.
    by_revision: BTreeMap<u64, String>,
    /// path → its pending revisions in order, with the entry each leaves.
    by_path: HashMap<String, Vec<(u64, Entry)>>,
}

impl PendingPaths {
    /// Entries appended to the log.
    pub fn add<C: Borrow<Change>>(&mut self, changes: &[C]) {
        self.add_entries(changes, changes.iter().map(|c| Entry::of(c.borrow())));
    }

    /// [`PendingPaths::add`] with each change's [`Entry`] already made (the
    /// leader has them from deciding the batch: an entry's content digest
    /// hashes the whole value).
    pub fn add_entries<C: Borrow<Change>>(
        &mut self,
        changes: &[C],
        entries: impl IntoIterator<Item = Entry>,
    ) {
        for (change, entry) in changes.iter().map(Borrow::borrow).zip(entries) {
            self.by_revision
                .insert(change.revision, change.path.clone());
            self.by_path
                .entry(change.path.clone())
                .or_default()
                .push((change.revision, entry));
        }
    }

    /// The entry each change leaves, as made when it became pending (made
    /// again for one that is not: a fallback, which the log's invariants
    /// leave to no change). Pending entries are exactly the log's entries
    /// past the applied state: `add` on append, `truncated_after` with the
    /// log, `applied_through` after the store.
    pub fn entries_of<C: Borrow<Change>>(&self, changes: &[C]) -> Vec<Entry> {
        changes
            .iter()
            .map(Borrow::borrow)
            .map(|change| {
                self.by_path
                    .get(change.path.as_str())
                    .and_then(|pending| pending.iter().find(|(r, _)| *r == change.revision))
                    .map_or_else(|| Entry::of(change), |(_, entry)| entry.clone())
            })
            .collect()
    }

    /// The state applied everything through `revision`.
    pub fn applied_through(&mut self, revision: u64) {
        let kept = self.by_revision.split_off(&(revision + 1));
        let resolved = std::mem::replace(&mut self.by_revision, kept);
        for (_, path) in resolved {
            self.forget(&path, |r| r <= revision);
        }
    }

    /// The log dropped every entry after `revision`.
    pub fn truncated_after(&mut self, revision: u64) {
        for (_, path) in self.by_revision.split_off(&(revision + 1)) {
            self.forget(&path, |r| r > revision);
        }
    }

    fn forget(&mut self, path: &str, gone: impl Fn(u64) -> bool) {
        if let Some(revisions) = self.by_path.get_mut(path) {
            revisions.retain(|(r, _)| !gone(*r));
            if revisions.is_empty() {
                self.by_path.remove(path);
            }
        }
    }

    /// The entry the latest pending change of `path` leaves, if any.
    pub fn latest(&self, path: &str) -> Option<&Entry> {
        self.by_path.get(path)?.last().map(|(_, e)| e)
    }

    /// The highest pending revision of `path`: a read waits until nothing
    /// at or below it is pending for the path.
    pub fn highest(&self, path: &str) -> Option<u64> {
        self.by_path.get(path)?.last().map(|(r, _)| *r)
    }

    /// Whether an entry of `path` at or below `revision` is still pending.
    pub fn blocks(&self, path: &str, revision: u64) -> bool {
        self.by_path
            .get(path)
            .and_then(|revisions| revisions.first())
            .is_some_and(|(r, _)| *r <= revision)
    }

    /// The highest pending revision of any path under `prefix` (a folder
    /// listing waits on those).
    pub fn highest_under(&self, prefix: &str) -> Option<u64> {
        self.by_revision
            .iter()
            .rev()
            .find(|(_, path)| path.starts_with(prefix))
            .map(|(r, _)| *r)
    }

    /// Whether an entry under `prefix` at or below `revision` is pending.
    pub fn blocks_under(&self, prefix: &str, revision: u64) -> bool {
        self.by_revision
            .range(..=revision)
            .any(|(_, path)| path.starts_with(prefix))
    }

    pub fn len(&self) -> usize {
        self.by_revision.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_revision.is_empty()
    }
}

/// [`PendingPaths`] shared between the protocol core (which changes it) and
/// readers (which wait on it): every change bumps a counter readers watch.
///
/// The shell lets committed entries gather before it applies them (one
/// redb transaction for many), so a reader that has to wait says so: it
/// counts itself in `readers` while it waits, and pings `wanted` when it
/// starts. While anyone waits, the shell applies after every step.
#[derive(Clone)]
pub struct SharedPending {
    paths: Arc<Mutex<PendingPaths>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
    readers: Arc<AtomicUsize>,
    wanted: Arc<tokio::sync::Notify>,
}

impl Default for SharedPending {
    fn default() -> Self {
        Self {
            paths: Arc::default(),
            changed: Arc::new(tokio::sync::watch::Sender::new(0)),
            readers: Arc::default(),
            wanted: Arc::default(),
        }
    }
}

/// One waiting reader, counted until it stops waiting (done, timed out or
/// dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(readers: &'a AtomicUsize) -> Self {
        readers.fetch_add(1, Ordering::AcqRel);
        Waiting(readers)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SharedPending {
    pub fn lock(&self) -> std::sync::MutexGuard<'_, PendingPaths> {
        self.paths.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes the set and wakes readers.
    pub fn update<T>(&self, f: impl FnOnce(&mut PendingPaths) -> T) -> T {
        let out = f(&mut self.lock());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        out
    }

    /// Resolves once `done` holds of the set, checked now and after every
    /// change. A reader that has to wait asks for an apply.
    pub async fn wait_until(&self, mut done: impl FnMut(&PendingPaths) -> bool) {
        // Subscribed before the first check: a change between the check and
        // the wait still wakes this reader.
        let mut changes = self.changed.subscribe();
        if done(&self.lock()) {
            return;
        }
        let _waiting = Waiting::new(&self.readers);
        self.wanted.notify_one();
        loop {
            if changes.changed().await.is_err() {
                return;
            }
            if done(&self.lock()) {
                return;
            }
        }
    }

    /// Whether a reader is waiting now: the shell then applies what is
    /// committed at once instead of letting it gather.
    pub fn readers_waiting(&self) -> bool {
        self.readers.load(Ordering::Acquire) > 0
    }

    /// Completes when a reader has started waiting since the last call
    /// (one ping is kept if nobody listens yet).
    pub async fn apply_wanted(&self) {
        self.wanted.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ChangeKind;

    fn change(revision: u64, path: &str) -> Change {
        Change {
            revision,
            epoch: 1,
            path: path.into(),
            version: revision,
            created_at_ms: 0,
            created_revision: 0,
            kind: ChangeKind::Delete,
            request_id: None,
            author: None,
        }
    }

    #[test]
    fn an_entry_is_pending_from_append_until_applied_or_truncated() {
        let mut p = PendingPaths::default();
        p.add(&[change(1, "a/x"), change(2, "b/y"), change(3, "a/x")]);
        assert_eq!(p.highest("a/x"), Some(3));
        assert!(p.blocks("a/x", 1) && p.blocks("a/x", 3));
        assert_eq!(p.latest("a/x").map(|e| e.version), Some(3));
        assert_eq!(p.highest_under("b/"), Some(2));
        p.applied_through(1);
        assert!(!p.blocks("a/x", 2), "revision 1 applied, 3 is later than 2");
        assert!(p.blocks("a/x", 3));
        p.truncated_after(2);
        assert_eq!(p.highest("a/x"), None, "revision 3 truncated");
        assert!(p.blocks_under("b/", 2));
        p.applied_through(2);
        assert!(p.is_empty());
        assert_eq!(p.highest_under(""), None);
    }

    #[tokio::test]
    async fn a_reader_that_has_to_wait_asks_for_an_apply_until_it_stops_waiting() {
        let shared = SharedPending::default();
        shared.wait_until(|p| !p.blocks("k", 1)).await;
        assert!(!shared.readers_waiting(), "nothing pending: no wait");
        shared.update(|p| p.add(&[change(1, "k")]));
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.wait_until(|p| !p.blocks("k", 1)).await })
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), shared.apply_wanted())
            .await
            .expect("the waiting reader pings the shell");
        assert!(shared.readers_waiting());
        shared.update(|p| p.applied_through(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader wakes")
            .expect("the reader task ends");
        assert!(!shared.readers_waiting(), "done: no longer counted");
        shared.update(|p| p.add(&[change(2, "k")]));
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(20),
            shared.wait_until(|p| !p.blocks("k", 2)),
        )
        .await;
        assert!(gave_up.is_err());
        assert!(!shared.readers_waiting(), "timed out: no longer counted");
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_when_its_revision_resolves() {
        let shared = SharedPending::default();
        shared.update(|p| p.add(&[change(5, "k")]));
        let reader = {
            let shared = shared.clone();
            tokio::spawn(async move { shared.wait_until(|p| !p.blocks("k", 5)).await })
        };
        tokio::task::yield_now().await;
        assert!(!reader.is_finished());
        shared.update(|p| p.add(&[change(6, "k")]));
        shared.update(|p| p.applied_through(5));
        tokio::time::timeout(std::time::Duration::from_secs(5), reader)
            .await
            .expect("the reader wakes")
            .expect("the reader task ends");
    }
}
