//! The database file, written back in steps.
//!
//! A checkpoint (a durable redb commit, every `storage.checkpoint_interval`)
//! writes every page the applies dirtied since the last one, then syncs the
//! file. Left to the kernel, the `fdatasync` hands the disk all of those
//! pages at once, and log flushes queue behind them. So this file starts
//! the write-back of what redb wrote every [`crate::writeback::STEP`] bytes
//! and waits for it before redb goes on; the checkpoint's `fdatasync` then
//! finds little left to write. Why and what it measured:
//! [`crate::writeback`].
//!
//! A commit is durable when redb's `sync_data` (the `fdatasync`) returns,
//! as before. An error the write-back reports is returned to redb like a
//! failed write, which the store treats as any I/O error (the node stops
//! taking writes and reopens the file once the disk works).

use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// A redb [`StorageBackend`]: redb's own file backend, plus the stepped
/// write-back.
#[derive(Debug)]
pub(super) struct PacedFile {
    inner: FileBackend,
    /// The same file under a second descriptor, for `sync_file_range`
    /// (the backend keeps its own to itself).
    file: File,
    step: u64,
    /// [`crate::writeback::write_back`]; a recorder in tests.
    write_back: WriteBack,
    written: Mutex<Written>,
}

type WriteBack = fn(&File, u64, u64) -> std::io::Result<()>;

/// What redb wrote since the last write-back.
#[derive(Debug, Default)]
struct Written {
    bytes: u64,
    /// The span it lies in: `start..end`, empty while `bytes` is 0.
    start: u64,
    end: u64,
}

impl PacedFile {
    /// Opens (or creates) the file at `path` as redb's own `create` does.
    pub(super) fn open(path: &Path) -> std::io::Result<PacedFile> {
        Self::with_step(path, crate::writeback::STEP, crate::writeback::write_back)
    }

    fn with_step(path: &Path, step: u64, write_back: WriteBack) -> std::io::Result<PacedFile> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        // What a failed write-back left in the page cache is not on the
        // disk: read the file from the disk (`writeback::read_from_disk`).
        crate::writeback::read_from_disk(&file)?;
        let second = file.try_clone()?;
        let inner = FileBackend::new(file).map_err(std::io::Error::other)?;
        Ok(PacedFile {
            inner,
            file: second,
            step,
            write_back,
            written: Mutex::new(Written::default()),
        })
    }

    fn written(&self) -> std::sync::MutexGuard<'_, Written> {
        self.written.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StorageBackend for PacedFile {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.inner.sync_data()?;
        let mut written = self.written();
        written.bytes = 0;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.inner.write(offset, data)?;
        let mut written = self.written();
        let end = offset.saturating_add(data.len() as u64);
        if written.bytes == 0 {
            (written.start, written.end) = (offset, end);
        } else {
            written.start = written.start.min(offset);
            written.end = written.end.max(end);
        }
        written.bytes += data.len() as u64;
        if written.bytes >= self.step {
            // Under the lock: redb writes from one thread at a time anyway
            // (the one committing), and the next write waits for this one.
            (self.write_back)(&self.file, written.start, written.end)?;
            written.bytes = 0;
        }
        Ok(())
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static WRITTEN_BACK: std::cell::RefCell<Vec<(u64, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record(_: &File, start: u64, end: u64) -> std::io::Result<()> {
        WRITTEN_BACK.with(|w| w.borrow_mut().push((start, end)));
        Ok(())
    }

    fn written_back() -> Vec<(u64, u64)> {
        WRITTEN_BACK.with(|w| w.borrow().clone())
    }

    #[test]
    fn writes_are_written_back_every_step_and_a_sync_starts_the_count_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paced = PacedFile::with_step(&dir.path().join("f"), 16 << 10, record).expect("backend");
        let page = [7u8; 4096];
        // Out of order, as a commit's pages are: each step covers the span
        // its pages lie in.
        for i in [3u64, 0, 2, 1, 9, 4, 6, 5] {
            paced.write(i * 4096, &page).expect("write");
        }
        assert_eq!(written_back(), [(0, 4 * 4096), (4 * 4096, 10 * 4096)]);
        paced.write(20 * 4096, &page).expect("write");
        paced.sync_data().expect("sync");
        for i in 0..3u64 {
            paced.write(i * 4096, &page).expect("write");
        }
        assert_eq!(
            written_back().len(),
            2,
            "12 KiB since the sync: no step yet"
        );
        paced.write(3 * 4096, &page).expect("write");
        assert_eq!(written_back()[2], (0, 4 * 4096));
        let mut back = [0u8; 4096];
        paced.read(9 * 4096, &mut back).expect("read");
        assert_eq!(back, page);
    }

    #[test]
    fn a_failed_write_back_fails_the_write() {
        fn fail(_: &File, _: u64, _: u64) -> std::io::Result<()> {
            Err(std::io::Error::other("EIO"))
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let paced = PacedFile::with_step(&dir.path().join("f"), 8192, fail).expect("backend");
        paced
            .write(0, &[1u8; 4096])
            .expect("under a step: no write-back");
        assert!(paced.write(4096, &[1u8; 4096]).is_err());
    }

    #[test]
    fn a_database_on_it_keeps_what_was_committed_across_a_reopen() {
        const T: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("t");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let value = vec![3u8; 10_000];
        {
            let backend = PacedFile::with_step(&path, 64 << 10, crate::writeback::write_back)
                .expect("backend");
            let db = redb::Database::builder()
                .create_with_backend(backend)
                .expect("create");
            let txn = db.begin_write().expect("begin");
            {
                let mut t = txn.open_table(T).expect("table");
                for k in 0..200u64 {
                    t.insert(k, value.as_slice()).expect("insert");
                }
            }
            txn.commit().expect("commit");
        }
        let backend = PacedFile::open(&path).expect("backend");
        let db = redb::Database::builder()
            .create_with_backend(backend)
            .expect("reopen");
        let txn = redb::ReadableDatabase::begin_read(&db).expect("read");
        let t = txn.open_table(T).expect("table");
        for k in 0..200u64 {
            let got = t.get(k).expect("get").expect("present");
            assert_eq!(got.value(), value.as_slice(), "key {k}");
        }
    }
}
