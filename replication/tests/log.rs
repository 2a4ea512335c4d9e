//! The replicated log on disk: what survives a reopen, what it refuses,
//! and what a torn or corrupted file does to it.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use pika_replication::election::Position;
use pika_replication::log::{LogError, LogOptions, ReplicatedLog};
use pika_replication::record::SharedChange;
use pika_replication::{Change, ChangeKind, Meta};

fn change(epoch: u64, revision: u64, bytes: usize) -> SharedChange {
    SharedChange::new(Change {
        revision,
        epoch,
        path: format!("app/{}.json", revision % 7),
        version: revision,
        created_at_ms: 1_700_000_000_000 + revision,
        created_revision: revision,
        kind: ChangeKind::Put {
            meta: Meta::default(),
            data: vec![b'x'; bytes],
        },
        request_id: Some(format!("req-{revision}")),
        author: None,
    })
}

fn changes(epoch: u64, revisions: std::ops::RangeInclusive<u64>) -> Vec<SharedChange> {
    revisions.map(|r| change(epoch, r, 100)).collect()
}

fn pos(epoch: u64, revision: u64) -> Position {
    Position { epoch, revision }
}

/// Options with `segment_bytes` segments and a cache of `cache_entries`
/// (1 MiB at most).
fn small(cache_entries: usize, segment_bytes: u64) -> LogOptions {
    LogOptions {
        cache_entries,
        cache_bytes: 1 << 20,
        segment_bytes,
        ..LogOptions::default()
    }
}

fn open(dir: &Path) -> ReplicatedLog {
    ReplicatedLog::open(dir, &LogOptions::default()).expect("open the log")
}

#[test]
fn flushed_entries_promise_and_commit_survive_a_reopen() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let written = changes(1, 1..=5);
    {
        let mut log = open(dir.path());
        assert_eq!(log.last(), Position::default());
        log.save_promise(1)?;
        log.append(&written[..3])?;
        log.append(&written[3..])?;
        log.save_commit(pos(1, 4))?;
        log.flush_blocking()?;
    }
    let log = open(dir.path());
    assert_eq!(log.last(), pos(1, 5));
    assert_eq!(log.committed(), pos(1, 4));
    assert_eq!(log.promised_epoch(), 1);
    assert_eq!(
        log.read(1, 5, usize::MAX)?,
        written,
        "entries come back byte for byte"
    );
    assert!(log.holds(pos(1, 3)) && !log.holds(pos(2, 3)));
    Ok(())
}

#[test]
fn appends_must_continue_the_log() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let mut log = open(dir.path());
    log.append(&changes(2, 1..=3))?;
    for bad in [change(2, 5, 1), change(2, 3, 1), change(1, 4, 1)] {
        let refused = log.append(std::slice::from_ref(&bad));
        assert!(
            matches!(refused, Err(LogError::Refused(_))),
            "({}, {}) after (2, 3): {refused:?}",
            bad.epoch,
            bad.revision
        );
    }
    assert_eq!(
        log.last(),
        pos(2, 3),
        "a refused append leaves nothing behind"
    );
    log.append(&[change(3, 4, 1)])?;
    assert_eq!(log.last(), pos(3, 4));
    Ok(())
}

#[test]
fn an_uncommitted_suffix_is_replaced_but_committed_entries_are_not() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=6))?;
        log.save_commit(pos(1, 3))?;
        assert!(matches!(log.truncate_after(2), Err(LogError::Refused(_))));
        log.truncate_after(4)?;
        assert_eq!(log.last(), pos(1, 4));
        // A new leader's entries take the place of the dropped ones.
        log.append(&changes(2, 5..=7))?;
        log.flush_blocking()?;
    }
    let log = open(dir.path());
    assert_eq!(log.last(), pos(2, 7));
    let epochs: Vec<(u64, u64)> = log
        .read(1, 7, usize::MAX)?
        .iter()
        .map(|c| (c.epoch, c.revision))
        .collect();
    assert_eq!(
        epochs,
        vec![(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6), (2, 7)]
    );
    Ok(())
}

#[test]
fn the_commit_and_the_promise_never_move_back() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let mut log = open(dir.path());
    log.append(&changes(1, 1..=4))?;
    log.save_commit(pos(1, 3))?;
    log.save_commit(pos(1, 2))?;
    assert_eq!(log.committed(), pos(1, 3));
    assert!(matches!(
        log.save_commit(pos(1, 9)),
        Err(LogError::Refused(_))
    ));
    assert!(matches!(
        log.save_commit(pos(2, 4)),
        Err(LogError::Refused(_))
    ));
    log.save_promise(5)?;
    log.save_promise(4)?;
    assert_eq!(log.promised_epoch(), 5);
    Ok(())
}

#[test]
fn purge_forgets_a_prefix_and_can_start_the_log_at_a_later_position() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=10))?;
        log.save_commit(pos(1, 10))?;
        log.purge_through(pos(1, 6))?;
        assert_eq!(log.start(), pos(1, 6));
        assert_eq!(
            log.read(1, 10, usize::MAX)?.first().map(|c| c.revision),
            Some(7),
            "purged entries are gone"
        );
        assert!(log.holds(pos(1, 6)), "the start position is still known");
        assert!(matches!(
            log.purge_through(pos(2, 8)),
            Err(LogError::Refused(_))
        ));
        // A snapshot install at (3, 40): the log restarts there.
        log.purge_through(pos(3, 40))?;
        assert_eq!((log.start(), log.last()), (pos(3, 40), pos(3, 40)));
        assert!(log.read(1, 100, usize::MAX)?.is_empty());
        log.append(&changes(3, 41..=42))?;
        log.flush_blocking()?;
    }
    let log = open(dir.path());
    assert_eq!((log.start(), log.last()), (pos(3, 40), pos(3, 42)));
    assert_eq!(log.read(0, 100, usize::MAX)?.len(), 2);
    Ok(())
}

#[test]
fn reads_stop_at_the_byte_budget_but_always_make_progress() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let mut log = open(dir.path());
    let big: Vec<SharedChange> = (1..=10).map(|r| change(1, r, 1000)).collect();
    log.append(&big)?;
    let page = log.read(1, 10, 3500)?;
    assert_eq!(page.len(), 3, "3 entries of ~1 KiB fit in 3500 bytes");
    assert_eq!(log.read(4, 10, 10)?.len(), 1, "one entry even over budget");
    assert_eq!(
        log.read(8, 100, usize::MAX)?.len(),
        3,
        "clamped to the last entry"
    );
    Ok(())
}

fn segment_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    Ok(files)
}

/// Where `pattern` last occurs in `bytes`.
fn last_at(bytes: &[u8], pattern: &[u8]) -> Option<usize> {
    bytes.windows(pattern.len()).rposition(|w| w == pattern)
}

#[test]
fn a_torn_record_at_the_tail_is_dropped_on_open() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let mut torn = change(1, 4, 300);
    if let Some(c) = std::sync::Arc::get_mut(&mut torn)
        && let ChangeKind::Put { data, .. } = &mut c.kind
    {
        data.fill(b'z');
    }
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=3))?;
        log.flush_blocking()?;
        log.append(&[torn])?;
        log.flush_blocking()?;
    }
    // A crash in the middle of writing the last record: its second half
    // never reached the disk.
    let last = segment_files(dir.path())?
        .pop()
        .ok_or_else(|| std::io::Error::other("no segment file"))?;
    let bytes = std::fs::read(&last)?;
    let at = last_at(&bytes, &[b'z'; 300])
        .ok_or_else(|| std::io::Error::other("the last record is not in the segment"))?;
    let mut file = std::fs::OpenOptions::new().write(true).open(&last)?;
    file.seek(SeekFrom::Start(at as u64 + 150))?;
    file.write_all(&[0; 400])?;
    drop(file);
    let mut log = open(dir.path());
    assert_eq!(log.last(), pos(1, 3), "the torn entry is gone");
    log.append(&changes(1, 4..=4))?;
    log.flush_blocking()?;
    drop(log);
    let log = open(dir.path());
    assert_eq!(log.last(), pos(1, 4));
    assert_eq!(log.read(4, 4, usize::MAX)?, changes(1, 4..=4));
    Ok(())
}

#[test]
fn a_corrupted_record_before_the_tail_fails_the_open_naming_the_directory() -> Result<(), LogError>
{
    let dir = tempfile::tempdir()?;
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=20))?;
        log.flush_blocking()?;
    }
    let files = segment_files(dir.path())?;
    let first = files
        .first()
        .ok_or_else(|| std::io::Error::other("no segment file"))?;
    let bytes = std::fs::read(first)?;
    // Inside the value of the first entry: nineteen records follow it.
    let at = bytes
        .windows(100)
        .position(|w| w == [b'x'; 100])
        .ok_or_else(|| std::io::Error::other("no entry in the segment"))?;
    let mut file = std::fs::OpenOptions::new().write(true).open(first)?;
    file.seek(SeekFrom::Start(at as u64 + 10))?;
    file.write_all(b"not what was written")?;
    drop(file);
    match ReplicatedLog::open(dir.path(), &LogOptions::default()) {
        Err(e @ LogError::Open { .. }) => {
            assert!(
                e.to_string().contains(&dir.path().display().to_string()),
                "{e}"
            );
        }
        other => panic!("a checksum error must fail the open, got {other:?}"),
    }
    Ok(())
}

/// Writes entries 1..=60 in flushes of one into 4 KiB segments, so that
/// the log spans several files; returns the options and the segments.
fn rolled_log(dir: &Path) -> Result<(LogOptions, Vec<std::path::PathBuf>), LogError> {
    let options = small(8, 4096);
    let mut log = ReplicatedLog::open(dir, &options)?;
    for r in 1..=60 {
        log.append(&changes(1, r..=r))?;
        log.flush_blocking()?;
    }
    drop(log);
    let files = segment_files(dir)?;
    assert!(files.len() >= 3, "the log rolled over: {files:?}");
    Ok((options, files))
}

/// Overwrites the last 40 bytes of records in `path` with zeros: the bad
/// record a torn write (or bit rot in its last bytes) leaves.
fn tear_the_end_of(path: &Path) -> std::io::Result<()> {
    let bytes = std::fs::read(path)?;
    let end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .ok_or_else(|| std::io::Error::other("an empty segment"))?;
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.seek(SeekFrom::Start(end as u64 - 40))?;
    file.write_all(&[0; 41])
}

#[test]
fn a_bad_record_at_the_end_of_a_segment_that_others_follow_fails_the_open() -> Result<(), LogError>
{
    // Entries in later segments were flushed after the first segment was
    // synced whole: a bad record at its end is damage, and dropping what
    // follows would lose entries this node acknowledged as durable.
    let dir = tempfile::tempdir()?;
    let (options, files) = rolled_log(dir.path())?;
    tear_the_end_of(&files[0])?;
    match ReplicatedLog::open(dir.path(), &options) {
        Err(e @ LogError::Open { .. }) => {
            assert!(e.to_string().contains("damaged"), "{e}");
        }
        Err(other) => panic!("expected a refusal naming damage, got {other:?}"),
        Ok(log) => panic!(
            "a bad record before later segments must fail the open; it opened at {:?}",
            log.last()
        ),
    }
    assert_eq!(
        segment_files(dir.path())?,
        files,
        "a refused open deletes nothing"
    );
    Ok(())
}

#[test]
fn a_crash_in_a_roll_over_drops_the_torn_record_and_the_empty_segment_after_it()
-> Result<(), LogError> {
    // A flush that rolled over was cut short before the new segment got
    // anything: the full segment's last record is torn, the next holds
    // zeros.
    let dir = tempfile::tempdir()?;
    let (options, files) = rolled_log(dir.path())?;
    for later in &files[2..] {
        std::fs::remove_file(later)?;
    }
    let len = std::fs::metadata(&files[1])?.len();
    std::fs::write(&files[1], vec![0u8; len as usize])?;
    tear_the_end_of(&files[0])?;
    let log = ReplicatedLog::open(dir.path(), &options)?;
    let last = log.last().revision;
    assert!((1..60).contains(&last), "opened at {last}");
    assert_eq!(log.read(1, last, usize::MAX)?, changes(1, 1..=last));
    assert_eq!(segment_files(dir.path())?, files[..1].to_vec());
    Ok(())
}

#[test]
fn segments_roll_over_and_the_purged_ones_are_deleted() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    // Small segments and a small cache: the log spans many files, and most
    // reads go to them.
    let options = small(8, 4096);
    {
        let mut log = ReplicatedLog::open(dir.path(), &options)?;
        for r in (1..=200).step_by(10) {
            log.append(&changes(1, r..=r + 9))?;
            log.flush_blocking()?;
        }
        assert!(segment_files(dir.path())?.len() > 5, "the log rolled over");
        assert_eq!(log.read(1, 200, usize::MAX)?, changes(1, 1..=200));
        log.save_commit(pos(1, 150))?;
        log.truncate_after(180)?;
        log.append(&changes(2, 181..=190))?;
        log.purge_through(pos(1, 120))?;
        log.flush_blocking()?;
    }
    let files = segment_files(dir.path())?;
    let log = ReplicatedLog::open(dir.path(), &options)?;
    assert_eq!(log.start(), pos(1, 120));
    assert_eq!(log.last(), pos(2, 190));
    assert_eq!(log.committed(), pos(1, 150));
    let mut expected = changes(1, 121..=180);
    expected.extend(changes(2, 181..=190));
    assert_eq!(log.read(0, 500, usize::MAX)?, expected);
    // The segments holding only purged entries are gone, oldest first.
    let first = files
        .first()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    assert_ne!(
        first, "segment-0000000001.log",
        "purged segments are deleted"
    );
    Ok(())
}

#[test]
fn a_second_process_cannot_open_the_log() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let _log = open(dir.path());
    match ReplicatedLog::open(dir.path(), &LogOptions::default()) {
        Err(LogError::Open { source, .. }) => {
            assert!(source.to_string().contains("in use"), "{source}")
        }
        other => panic!("a second open must fail, got {other:?}"),
    }
    Ok(())
}

/// What a log holds, kept in the plainest way, to check the files against.
#[derive(Debug, Default)]
struct Model {
    start: Position,
    entries: Vec<SharedChange>,
    committed: Position,
    promised: u64,
}

impl Model {
    fn last(&self) -> Position {
        self.entries
            .last()
            .map_or(self.start, |c| pos(c.epoch, c.revision))
    }
}

#[derive(Debug, Clone)]
enum LogOp {
    Append {
        count: u64,
        bytes: usize,
        new_epoch: bool,
    },
    /// Truncate after `last - back` (never below the commit or the start).
    Truncate {
        back: u64,
    },
    /// Commit `ahead` entries past the commit.
    Commit {
        ahead: u64,
    },
    /// Purge through `ahead` entries past the start (beyond the last: a
    /// snapshot install's jump).
    Purge {
        ahead: u64,
    },
    Promise,
    Flush,
    Reopen,
}

fn log_op() -> impl proptest::strategy::Strategy<Value = LogOp> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (1u64..12, 10usize..400, proptest::bool::weighted(0.2))
            .prop_map(|(count, bytes, new_epoch)| LogOp::Append { count, bytes, new_epoch }),
        1 => (0u64..15).prop_map(|back| LogOp::Truncate { back }),
        1 => (0u64..10).prop_map(|ahead| LogOp::Commit { ahead }),
        1 => (0u64..40).prop_map(|ahead| LogOp::Purge { ahead }),
        1 => Just(LogOp::Promise),
        2 => Just(LogOp::Flush),
        1 => Just(LogOp::Reopen),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Any run of appends, truncations, commits, purges and promises, over
    /// small segments and a small cache, reads back after every reopen as
    /// the plain model says: the state, every entry, and nothing else.
    #[test]
    fn the_log_reads_back_what_was_flushed_across_segments_and_reopens(
        ops in proptest::collection::vec(log_op(), 1..60)
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let options = LogOptions { cache_entries: 6, cache_bytes: 2048, segment_bytes: 2048, ..LogOptions::default() };
        let mut log = ReplicatedLog::open(dir.path(), &options).expect("open");
        let mut model = Model::default();
        for op in ops {
            match op {
                LogOp::Append { count, bytes, new_epoch } => {
                    let last = model.last();
                    let epoch = last.epoch.max(1) + u64::from(new_epoch);
                    let batch: Vec<_> = (last.revision + 1..=last.revision + count)
                        .map(|r| change(epoch, r, bytes))
                        .collect();
                    log.append(&batch).expect("append");
                    model.entries.extend(batch);
                }
                LogOp::Truncate { back } => {
                    let floor = model.committed.revision.max(model.start.revision);
                    let after = model.last().revision.saturating_sub(back).max(floor);
                    log.truncate_after(after).expect("truncate");
                    model.entries.retain(|c| c.revision <= after);
                }
                LogOp::Commit { ahead } => {
                    let to = (model.committed.revision.max(model.start.revision) + ahead)
                        .min(model.last().revision);
                    if let Some(c) = model.entries.iter().find(|c| c.revision == to) {
                        let p = pos(c.epoch, c.revision);
                        log.save_commit(p).expect("commit");
                        model.committed = model.committed.max(p);
                    }
                }
                LogOp::Purge { ahead } => {
                    let to = model.start.revision + ahead;
                    let p = match model.entries.iter().find(|c| c.revision == to) {
                        Some(c) => pos(c.epoch, c.revision),
                        None if to > model.last().revision => pos(model.last().epoch + 1, to),
                        None => continue,
                    };
                    log.purge_through(p).expect("purge");
                    model.entries.retain(|c| c.revision > p.revision);
                    model.start = p;
                }
                LogOp::Promise => {
                    model.promised += 1;
                    log.save_promise(model.promised).expect("promise");
                }
                LogOp::Flush => log.flush_blocking().expect("flush"),
                LogOp::Reopen => {
                    log.flush_blocking().expect("flush");
                    drop(log);
                    log = ReplicatedLog::open(dir.path(), &options).expect("reopen");
                }
            }
            proptest::prop_assert_eq!(log.start(), model.start);
            proptest::prop_assert_eq!(log.last(), model.last());
            proptest::prop_assert_eq!(log.committed(), model.committed);
            proptest::prop_assert_eq!(log.promised_epoch(), model.promised);
            let read = log.read(0, u64::MAX, usize::MAX).expect("read");
            proptest::prop_assert_eq!(&read, &model.entries);
        }
    }
}

#[test]
fn entries_of_a_flush_still_in_flight_are_read_from_memory() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let options = small(4, 1 << 20);
    let mut log = ReplicatedLog::open(dir.path(), &options)?;
    log.append(&changes(1, 1..=10))?;
    // The first flush's completion holds the sync thread, so the second
    // flush's records are not written while the log is read.
    let (release, hold) = std::sync::mpsc::channel::<()>();
    let (first_done, first) = std::sync::mpsc::channel();
    log.flush(pika_replication::log::FlushDone::new(move |r| {
        let _ = first_done.send(r);
        let _ = hold.recv();
    }))?;
    first.recv().map_err(std::io::Error::other)??;
    log.append(&changes(1, 11..=30))?;
    log.flush(pika_replication::log::FlushDone::new(|_| {}))?;
    let read = log.read(1, 30, usize::MAX);
    let _ = release.send(());
    assert_eq!(
        read?,
        changes(1, 1..=30),
        "the unwritten entries are still cached"
    );
    log.flush_blocking()?;
    assert_eq!(log.read(1, 30, usize::MAX)?, changes(1, 1..=30));
    Ok(())
}

#[test]
fn a_zeroed_record_frame_before_the_tail_fails_the_open() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=20))?;
        log.flush_blocking()?;
    }
    let first = segment_files(dir.path())?
        .into_iter()
        .next()
        .ok_or_else(|| std::io::Error::other("no segment file"))?;
    // The segment's header record is 8 + 57 bytes; the first entry's
    // frame follows it. Zeros there read like the segment's unwritten
    // space, but nineteen records follow.
    let mut file = std::fs::OpenOptions::new().write(true).open(&first)?;
    file.seek(SeekFrom::Start(65))?;
    file.write_all(&[0; 8])?;
    drop(file);
    match ReplicatedLog::open(dir.path(), &LogOptions::default()) {
        Err(e @ LogError::Open { .. }) => {
            assert!(e.to_string().contains("damaged"), "{e}");
        }
        Ok(log) => panic!(
            "a zeroed frame before records must fail the open, not end the log at {:?}",
            log.last()
        ),
        Err(other) => panic!("{other}"),
    }
    Ok(())
}

/// Bytes of `path` that have blocks on disk (a sparse file's holes have
/// none).
fn allocated(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.blocks() * 512)
}

#[test]
fn segments_are_written_with_zeros_before_records_go_in() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    let options = small(8, 64 << 10);
    let segment = |seq: u64| dir.path().join(format!("segment-{seq:010}.log"));
    let spare = dir.path().join("segment.spare");
    let mut log = ReplicatedLog::open(dir.path(), &options)?;
    // The first segment waited for its zeros.
    assert!(allocated(&segment(1))? >= 64 << 10, "segment 1 is sparse");
    // Past half of it, the next one is written ahead of need.
    let big = |r: u64| vec![change(1, r, 10 << 10)];
    for r in 1..=4 {
        log.append(&big(r))?;
    }
    log.flush_blocking()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !spare.exists() {
        assert!(std::time::Instant::now() < deadline, "no spare after 20 s");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for r in 5..=8 {
        log.append(&big(r))?;
    }
    log.flush_blocking()?;
    assert!(!spare.exists(), "the roll-over took the spare");
    assert!(allocated(&segment(2))? >= 64 << 10, "segment 2 is sparse");
    drop(log);
    // What was written reads back; a spare being written when a process
    // died is removed at the next open, a spare of another size too.
    std::fs::write(dir.path().join("segment.spare.tmp"), b"partial")?;
    std::fs::write(&spare, b"short")?;
    let log = ReplicatedLog::open(dir.path(), &options)?;
    assert_eq!(log.read(1, 8, usize::MAX)?.len(), 8);
    assert!(!dir.path().join("segment.spare.tmp").exists());
    assert!(!spare.exists() || std::fs::metadata(&spare)?.len() == 64 << 10);
    Ok(())
}

/// A follower's protocol thread runs its log's flushes itself
/// (`LogOptions::hold_flushes`): a held flush completes on the thread that runs it,
/// and one taken while an earlier flush is still on the sync thread
/// never completes before it.
#[test]
fn held_flushes_run_on_the_taking_thread_and_never_overtake_the_sync_thread() -> Result<(), LogError>
{
    use pika_replication::log::FlushDone;
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir()?;
    let done: Arc<Mutex<Vec<(u64, std::thread::ThreadId)>>> = Arc::default();
    let record = |n: u64| {
        let done = done.clone();
        FlushDone::new(move |r| {
            assert!(r.is_ok(), "flush {n}: {r:?}");
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((n, std::thread::current().id()));
        })
    };
    let here = std::thread::current().id();
    {
        let held = LogOptions {
            hold_flushes: true,
            ..LogOptions::default()
        };
        let mut log = ReplicatedLog::open(dir.path(), &held)?;
        log.append(&changes(1, 1..=3))?;
        log.flush(record(1))?;
        assert!(
            done.lock().unwrap_or_else(|e| e.into_inner()).is_empty(),
            "a held flush waits to be taken"
        );
        log.take_held().run_here();
        assert_eq!(
            *done.lock().unwrap_or_else(|e| e.into_inner()),
            vec![(1, here)],
            "it ran here, before run_here returned"
        );
        // One on the sync thread, the next taken at once: completions in order.
        let mut next = 2;
        for round in 0..20u64 {
            log.append(&changes(1, 4 + 2 * round..=4 + 2 * round))?;
            log.flush(record(next))?;
            log.take_held().hand_off();
            log.append(&changes(1, 5 + 2 * round..=5 + 2 * round))?;
            log.flush(record(next + 1))?;
            log.take_held().run_here();
            next += 2;
        }
        log.flush_blocking()?;
        let order: Vec<u64> = done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|d| d.0)
            .collect();
        assert_eq!(
            order,
            (1..next).collect::<Vec<_>>(),
            "flushes complete in order"
        );
    }
    let log = open(dir.path());
    assert_eq!(log.last(), pos(1, 43), "every held flush reached the disk");
    Ok(())
}
