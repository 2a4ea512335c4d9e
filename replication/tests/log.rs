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

fn chunk_files(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    Ok(files)
}

#[test]
fn a_torn_record_at_the_tail_is_dropped_on_open() -> Result<(), LogError> {
    let dir = tempfile::tempdir()?;
    {
        let mut log = open(dir.path());
        log.append(&changes(1, 1..=3))?;
        log.flush_blocking()?;
    }
    // A crash in the middle of writing the next record: half a header.
    let last = chunk_files(dir.path())?
        .pop()
        .ok_or_else(|| std::io::Error::other("no chunk file"))?;
    let mut file = std::fs::OpenOptions::new().append(true).open(&last)?;
    file.write_all(&[0, 0, 0, 1, 7, 7])?;
    drop(file);
    let mut log = open(dir.path());
    assert_eq!(log.last(), pos(1, 3));
    log.append(&changes(1, 4..=4))?;
    log.flush_blocking()?;
    drop(log);
    assert_eq!(open(dir.path()).last(), pos(1, 4));
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
    let files = chunk_files(dir.path())?;
    let first = files
        .first()
        .ok_or_else(|| std::io::Error::other("no chunk file"))?;
    let len = std::fs::metadata(first)?.len();
    let mut file = std::fs::OpenOptions::new().write(true).open(first)?;
    file.seek(SeekFrom::Start(len / 2))?;
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
