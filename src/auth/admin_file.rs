//! The admin token of a standalone node that was given none: generated at
//! first start, kept in `admin.token` (mode 0600) in the data directory,
//! and read back at every later start. The token never goes to the log;
//! the file's path does.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The file's name inside `storage.bw.path`.
pub const FILE_NAME: &str = "admin.token";

pub fn path_in(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The token in `data_dir`'s `admin.token`, created first if there is none.
/// Returns the token and whether it was just created.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(String, bool)> {
    let path = path_in(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim().to_string();
            anyhow::ensure!(
                super::token::well_formed(&token),
                "{} does not hold a pika token (`pika_` + 64 lowercase hex); delete it to have \
                 a new one generated, or set auth.admin_token",
                path.display()
            );
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = super::token::generate().context("generating the admin token")?;
            write_private(&path, &token)
                .with_context(|| format!("writing the admin token to {}", path.display()))?;
            Ok((token, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Writes `token` to a new file only its owner can read. Fails if the file
/// appeared meanwhile rather than overwrite a token someone may be using.
fn write_private(path: &Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    file.sync_all()
}

/// The token in a node's `admin.token`, if the file exists and is readable
/// by this user (what the CLI falls back to).
pub fn read(data_dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path_in(data_dir)).ok()?;
    let token = text.trim();
    super::token::well_formed(token).then(|| token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_read_back() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let (token, created) = load_or_create(dir.path()).expect("created");
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path_in(dir.path()))
                .expect("the file exists")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (again, created) = load_or_create(dir.path()).expect("read back");
        assert!(!created);
        assert_eq!(again, token);
        assert_eq!(read(dir.path()), Some(token));
    }

    #[test]
    fn a_damaged_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(path_in(dir.path()), "not a token").expect("write");
        let e = load_or_create(dir.path()).expect_err("refused");
        assert!(e.to_string().contains("admin.token"), "{e}");
        assert_eq!(
            std::fs::read_to_string(path_in(dir.path())).expect("still there"),
            "not a token"
        );
    }
}
