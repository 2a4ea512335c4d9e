//! `pika backup FILE` (from a node) and `pika restore FILE --data-dir DIR`
//! (offline): see `pika_replication::backup`.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pika_replication::backup::{self, BackupError};

use super::{Api, Failure, Outcome};

/// Exit code for a file that is not a whole, undamaged backup.
pub const DAMAGED: u8 = 8;

fn damaged(file: &Path, e: BackupError) -> Failure {
    let code = match e {
        BackupError::NotABackup
        | BackupError::Truncated(_)
        | BackupError::Corrupt(_)
        | BackupError::Checksum => DAMAGED,
        BackupError::NotEmpty(_) => 2,
        _ => 1,
    };
    Failure::new(code, format!("{}: {e}", file.display()))
}

/// Streams the node's backup into `file` (through `file.partial`, renamed
/// once checked), with a progress line on a terminal after a second.
pub fn backup(api: &Api, file: &Path) -> Outcome {
    let mut response = api
        .http
        .get(format!("{}/api/v1/backup", api.base))
        .send()
        .map_err(|e| api.unreachable(e))?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.bytes().unwrap_or_default();
        return Err(Failure::from_status(status, &body));
    }
    let revision = response
        .headers()
        .get("x-pika-backup-revision")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let io = |e: std::io::Error| Failure::new(1, format!("{}: {e}", partial.display()));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial).map_err(io)?);
    let started = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    let mut last_shown = Instant::now();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = std::fs::remove_file(&partial);
                return Err(Failure::new(
                    5,
                    format!("the backup stream broke after {received} bytes: {e}"),
                ));
            }
        };
        out.write_all(&buf[..n]).map_err(io)?;
        received += n as u64;
        if terminal
            && started.elapsed() > Duration::from_secs(1)
            && last_shown.elapsed() > Duration::from_millis(250)
        {
            last_shown = Instant::now();
            eprint!(
                "\r{:.1} MiB received ({:.1} MiB/s)   ",
                received as f64 / (1 << 20) as f64,
                received as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    if terminal && started.elapsed() > Duration::from_secs(1) {
        eprintln!();
    }
    out.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    if let Err(e) = backup::verify(&partial) {
        let _ = std::fs::remove_file(&partial);
        return Err(damaged(file, e));
    }
    std::fs::rename(&partial, file)
        .map_err(|e| Failure::new(1, format!("{}: {e}", file.display())))?;
    println!(
        "backup of revision {revision} written to {} ({received} bytes, checked)",
        file.display()
    );
    Ok(())
}

/// Builds a data directory from a backup: the first voter of a new voter
/// set, under a new node id.
pub fn restore(config_file: Option<PathBuf>, file: &Path, data_dir: &Path) -> Outcome {
    let (voters_path, history) = super::recover::offline_settings(config_file)?;
    let restored =
        backup::restore(file, data_dir, history, &voters_path).map_err(|e| damaged(file, e))?;
    println!(
        "restored revision {} ({} paths, taken on node {}) into {}; Merkle root checked",
        restored.header.revision,
        restored.paths,
        restored.header.node_id,
        data_dir.display()
    );
    println!(
        "node {} is the only voter of a new voter set: start it on this directory, then add \
         nodes on empty data directories",
        restored.voters.node_id
    );
    Ok(())
}
