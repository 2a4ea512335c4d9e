//! The next segment, written with zeros before it is needed.
//!
//! A flush into blocks its file does not have yet (a sparse file's holes)
//! makes ext4 allocate them, and `fdatasync` then writes the inode as well:
//! a second synchronous I/O, and more CPU, per flush. Measured on the
//! nodes' disk, 2 000 writes of 22 KB (a 21-write batch) each followed by
//! `fdatasync`: into a sparse file p50 166–196 µs and 73–78 µs of CPU per
//! sync, into a file written with zeros beforehand 103–108 µs and 47 µs
//! (`docs/benchmarks.md`, "Segments written with zeros").
//!
//! So segments are written with zeros before records go in (DESIGN.md:
//! "preallocated and zero-filled"). A thread of the log's own
//! (`pika-log-spare`) writes the spare, `segment.spare`, once the active
//! segment is half full: under a temporary name, synced, then renamed, so
//! that a file under the spare's name is whole zeros on disk. Zeros synced
//! before the file becomes a segment also mean that no block of it can
//! show what a crash left of older data. The log's first segment waits for
//! its spare; a roll-over that finds none ready (the thread still writing
//! it, or it failed) creates a sparse segment as before: slower flushes,
//! the same records.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use super::segment;

/// The spare's name: not a segment's (`segment::list` skips it).
const SPARE: &str = "segment.spare";
/// Where the spare is written before it is whole.
const WRITING: &str = "segment.spare.tmp";
/// The longest the log's first segment waits for its spare before it
/// starts sparse.
const FIRST_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No spare, none asked for.
    Idle,
    /// Asked for; the thread writes it.
    Wanted,
    /// `segment.spare` is whole on disk.
    Ready,
    /// Writing the last one failed (logged); the next request tries again.
    Failed,
    /// The log is closing.
    Stopping,
}

struct Shared {
    dir: PathBuf,
    bytes: u64,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: State) {
        *self.state() = state;
        self.changed.notify_all();
    }
}

/// The spare segment and the thread that writes it.
pub(super) struct Spare {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// A spare was asked for since the last one was taken.
    asked: bool,
}

impl Spare {
    /// Starts the thread for the log in `dir`, whose segments are `bytes`
    /// long. A whole spare left by an earlier run is kept; a partly written
    /// one, or one of another size, is removed.
    pub(super) fn start(dir: &Path, bytes: u64) -> io::Result<Spare> {
        remove_if_present(&dir.join(WRITING))?;
        let spare = dir.join(SPARE);
        let state = match std::fs::metadata(&spare) {
            Ok(meta) if meta.len() == bytes => State::Ready,
            Ok(_) => {
                std::fs::remove_file(&spare)?;
                State::Idle
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => State::Idle,
            Err(e) => return Err(e),
        };
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            bytes,
            state: Mutex::new(state),
            changed: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("pika-log-spare".into())
                .spawn(move || run(&shared))?
        };
        Ok(Spare {
            shared,
            thread: Some(thread),
            asked: false,
        })
    }

    /// Asks for a spare, once per segment (the active one is half full).
    pub(super) fn want(&mut self) {
        if self.asked {
            return;
        }
        self.asked = true;
        let mut state = self.shared.state();
        if matches!(*state, State::Idle | State::Failed) {
            *state = State::Wanted;
            self.shared.changed.notify_all();
        }
    }

    /// Asks for a spare and waits until it is written (or failed, or
    /// [`FIRST_WAIT`] passed): for the log's first segment.
    pub(super) fn wait(&mut self) {
        self.want();
        let state = self.shared.state();
        let _ = self
            .shared
            .changed
            .wait_timeout_while(state, FIRST_WAIT, |s| *s == State::Wanted)
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Renames the spare to `target` (a new segment's path) and opens it,
    /// or `None` when no spare is ready.
    pub(super) fn take(&mut self, target: &Path) -> io::Result<Option<File>> {
        let mut state = self.shared.state();
        if *state != State::Ready {
            return Ok(None);
        }
        // A segment is never replaced: `rename` would do so silently.
        if target.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists already", target.display()),
            ));
        }
        std::fs::rename(self.shared.dir.join(SPARE), target)?;
        *state = State::Idle;
        self.asked = false;
        drop(state);
        segment::open(target).map(Some)
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.shared.set(State::Stopping);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The spare thread: writes a spare whenever one is wanted, until the log
/// closes.
fn run(shared: &Shared) {
    loop {
        {
            let state = shared.state();
            let state = shared
                .changed
                .wait_while(state, |s| !matches!(s, State::Wanted | State::Stopping))
                .unwrap_or_else(PoisonError::into_inner);
            if *state == State::Stopping {
                return;
            }
        }
        let result = write_spare(shared);
        let mut state = shared.state();
        if *state == State::Stopping {
            return;
        }
        *state = match result {
            Ok(()) => State::Ready,
            Err(e) => {
                tracing::warn!(dir = %shared.dir.display(), error = %e, "writing the log's next segment failed; it starts sparse");
                State::Failed
            }
        };
        shared.changed.notify_all();
    }
}

/// Writes `bytes` of zeros under the temporary name, syncs them, and gives
/// the file the spare's name.
fn write_spare(shared: &Shared) -> io::Result<()> {
    let writing = shared.dir.join(WRITING);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&writing)?;
    segment::write_zeros(&file, 0, shared.bytes, || {
        *shared.state() == State::Stopping
    })?;
    file.sync_data()?;
    std::fs::rename(&writing, shared.dir.join(SPARE))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
