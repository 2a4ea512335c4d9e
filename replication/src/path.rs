//! Config paths: the keys of the store.
//!
//! A path is a slash-separated name such as `team/app/prod.yaml`. The rules are
//! strict because paths travel everywhere (URLs, redb keys, Merkle leaves,
//! folder listings) and a path that means two things in two places is a bug
//! waiting to happen: no empty, `.` or `..` segments, no control characters,
//! at most [`ConfigPath::MAX_LEN`] bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A validated config path.
///
/// ```
/// use pika_replication::{ConfigPath, PathError};
///
/// assert_eq!(ConfigPath::new("team/app/prod.yaml").unwrap().as_str(), "team/app/prod.yaml");
/// assert_eq!(ConfigPath::new("team//prod.yaml"), Err(PathError::EmptySegment));
/// assert_eq!(ConfigPath::new("team/../etc"), Err(PathError::DotSegment));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigPath(String);

/// Why a string is not a valid config path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is {0} bytes long; the limit is 1024")]
    TooLong(usize),
    #[error("path has an empty segment (leading, trailing or doubled '/')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
    #[error("path has a control character at byte {0}")]
    ControlCharacter(usize),
}

impl ConfigPath {
    /// The longest path accepted, in bytes.
    pub const MAX_LEN: usize = 1024;

    pub fn new(path: impl Into<String>) -> Result<Self, PathError> {
        let path = path.into();
        if path.is_empty() {
            return Err(PathError::Empty);
        }
        if path.len() > Self::MAX_LEN {
            return Err(PathError::TooLong(path.len()));
        }
        if let Some((at, _)) = path.char_indices().find(|(_, c)| c.is_control()) {
            return Err(PathError::ControlCharacter(at));
        }
        for segment in path.split('/') {
            match segment {
                "" => return Err(PathError::EmptySegment),
                "." | ".." => return Err(PathError::DotSegment),
                _ => {}
            }
        }
        Ok(Self(path))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ConfigPath {
    type Error = PathError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ConfigPath> for String {
    fn from(value: ConfigPath) -> Self {
        value.0
    }
}

impl fmt::Display for ConfigPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates a folder prefix for listings: the empty string is the root,
/// otherwise it must be a valid path (a trailing '/' is tolerated).
pub fn folder_prefix(raw: &str) -> Result<String, PathError> {
    let trimmed = raw.strip_suffix('/').unwrap_or(raw);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    Ok(ConfigPath::new(trimmed)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in ["a", "team/app/prod.yaml", "x/.hidden", "ünï/cödé", "a..b/c"] {
            assert!(ConfigPath::new(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_each_rule() {
        assert_eq!(ConfigPath::new(""), Err(PathError::Empty));
        assert_eq!(ConfigPath::new("/a"), Err(PathError::EmptySegment));
        assert_eq!(ConfigPath::new("a/"), Err(PathError::EmptySegment));
        assert_eq!(ConfigPath::new("a//b"), Err(PathError::EmptySegment));
        assert_eq!(ConfigPath::new("a/./b"), Err(PathError::DotSegment));
        assert_eq!(ConfigPath::new("../etc"), Err(PathError::DotSegment));
        assert_eq!(ConfigPath::new("a\nb"), Err(PathError::ControlCharacter(1)));
        assert_eq!(
            ConfigPath::new("a".repeat(1025)),
            Err(PathError::TooLong(1025))
        );
        assert!(ConfigPath::new("a".repeat(1024)).is_ok());
    }

    #[test]
    fn folder_prefixes() {
        assert_eq!(folder_prefix("").as_deref(), Ok(""));
        assert_eq!(folder_prefix("/").as_deref(), Ok(""));
        assert_eq!(folder_prefix("team/").as_deref(), Ok("team"));
        assert!(folder_prefix("team//").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_valid_paths_round_trip(s in "\\PC{0,40}|[a/.]{0,12}") {
            if let Ok(p) = ConfigPath::new(s.clone()) {
                proptest::prop_assert_eq!(p.as_str(), s.as_str());
                proptest::prop_assert!(!p.as_str().split('/').any(|seg| seg.is_empty() || seg == "." || seg == ".."));
            }
        }
    }
}
