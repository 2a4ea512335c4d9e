//! Writing files back to the disk in steps.
//!
//! This disk's queue is shared by every file of every node on the machine,
//! and a log flush (the one each client write waits for) queues behind
//! whatever was handed to the disk before it. Two writers hand it a lot at
//! once: a checkpoint's `fdatasync` of the database file (every page the
//! applies dirtied since the last one: about 25 MB per node per second at
//! 9 000 writes/s) and the log's spare segment (16 MiB of zeros). So both
//! write back what they wrote every [`STEP`] bytes and wait for it before
//! they write more: at most one step of theirs is ahead of a log flush.
//! RocksDB's `bytes_per_sync` does the same for its files.
//!
//! Measured on the nodes' disk (`docs/benchmarks.md`, "Checkpoints written
//! back in steps"): three processes flushing a log about 1 000 times a
//! second beside one writing 25 MB of random pages and syncing them every
//! second spent 178–314 ms of every 3 s in flushes slower than 4 ms when the
//! 25 MB went to the disk in one `fdatasync`, 53–108 ms with a write-back
//! every MiB, and 20–58 ms every 256 KiB; the 25 MB took as long either
//! way.
//!
//! Durability is unchanged: `sync_file_range` promises nothing across a
//! crash (it writes no metadata and does not flush the disk's cache). What
//! must be durable is still synced with `fdatasync` by its owner.

use std::fs::File;

/// Bytes written before their write-back starts (and the writer waits for
/// it).
pub(crate) const STEP: u64 = 256 << 10;

/// Writes the dirty pages of `start..end` of `file` and waits until they
/// are written (not synced: see the module's doc).
#[cfg(target_os = "linux")]
pub(crate) fn write_back(file: &File, start: u64, end: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // A length of 0 would mean "to the end of the file".
    if end <= start {
        return Ok(());
    }
    let (Ok(offset), Ok(len)) = (i64::try_from(start), i64::try_from(end - start)) else {
        return Ok(());
    };
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor stays open while `file` is borrowed, and
    // `sync_file_range` touches no memory of this process.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the kernel writes back as it likes.
#[cfg(not(target_os = "linux"))]
pub(crate) fn write_back(_file: &File, _start: u64, _end: u64) -> std::io::Result<()> {
    Ok(())
}

/// Makes what `file` holds in the page cache durable, then drops its clean
/// pages from the cache, so that what is read next comes from the disk.
///
/// Why, at open: after a write-back that failed (EIO), Linux leaves the
/// pages it could not write marked clean, with the new bytes still in them.
/// A process that starts after such a failure would read those bytes back
/// as if they were on the disk, and a log would acknowledge entries as
/// durable that a power cut then takes away. Read from the disk, the lost
/// bytes show for what they are (a torn tail, or damage the open refuses).
#[cfg(target_os = "linux")]
pub(crate) fn read_from_disk(file: &File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    file.sync_data()?;
    // SAFETY: the descriptor stays open while `file` is borrowed, and
    // `posix_fadvise` touches no memory of this process.
    let result = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(result))
    }
}

/// Elsewhere: made durable only.
#[cfg(not(target_os = "linux"))]
pub(crate) fn read_from_disk(file: &File) -> std::io::Result<()> {
    file.sync_data()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    #[test]
    fn a_written_range_is_written_back_and_reads_the_same() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .expect("open");
        let data = vec![5u8; 3 * super::STEP as usize];
        file.write_all_at(&data, 0).expect("write");
        super::write_back(&file, 0, data.len() as u64).expect("write back");
        super::write_back(&file, 7, 7).expect("an empty range");
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, 0).expect("read");
        assert_eq!(back, data);
    }
}
