//! What a token may do: scopes of the form `path glob : operations`.
//!
//! A glob is matched segment by segment (segments are what `/` separates):
//! - `**` as a whole segment matches any number of segments, none included;
//! - `*` inside a segment matches any run of characters within that segment
//!   (`*` alone is exactly one segment, `*.json` one segment ending in
//!   `.json`);
//! - anything else matches itself.
//!
//! So `app/**` covers `app/x` and `app/a/b/c`, `app/*` only `app/x`, and
//! `**/*.yaml` every YAML file anywhere. Operations are `read`, `write`
//! and `delete`, comma separated.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One kind of access a scope grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Read,
    Write,
    Delete,
}

impl Operation {
    const ALL: [Operation; 3] = [Operation::Read, Operation::Write, Operation::Delete];

    fn bit(self) -> u8 {
        match self {
            Operation::Read => 1,
            Operation::Write => 2,
            Operation::Delete => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::Delete => "delete",
        }
    }
}

/// `glob:operations`, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    glob: Vec<String>,
    operations: u8,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("scope {scope:?}: {reason}")]
pub struct ScopeError {
    scope: String,
    reason: String,
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(raw: &str) -> Result<Self, ScopeError> {
        let fail = |reason: &str| ScopeError {
            scope: raw.to_string(),
            reason: reason.to_string(),
        };
        let (glob, ops) = raw
            .rsplit_once(':')
            .ok_or_else(|| fail("expected `path glob:operations`, e.g. `app/**:read,write`"))?;
        let glob = glob.trim().trim_matches('/');
        if glob.is_empty() {
            return Err(fail("the path glob is empty (use `**` for everything)"));
        }
        let segments: Vec<String> = glob.split('/').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(fail("the path glob has an empty segment (`//`)"));
        }
        if segments.iter().any(|s| s.contains("**") && s != "**") {
            return Err(fail("`**` must be a whole segment, as in `app/**`"));
        }
        let mut operations = 0;
        for op in ops.split(',').map(str::trim) {
            let found = Operation::ALL
                .into_iter()
                .find(|o| o.name() == op)
                .ok_or_else(|| {
                    fail(&format!(
                        "unknown operation {op:?}: use read, write, delete (comma separated)"
                    ))
                })?;
            operations |= found.bit();
        }
        Ok(Scope {
            glob: segments,
            operations,
        })
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<&str> = Operation::ALL
            .into_iter()
            .filter(|o| self.allows(*o))
            .map(Operation::name)
            .collect();
        write!(f, "{}:{}", self.glob.join("/"), ops.join(","))
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

impl Scope {
    /// Every operation on every path.
    pub fn everything() -> Self {
        Scope {
            glob: vec!["**".into()],
            operations: 7,
        }
    }

    pub fn allows(&self, op: Operation) -> bool {
        self.operations & op.bit() != 0
    }

    /// Whether this scope grants `op` on `path`.
    pub fn grants(&self, op: Operation, path: &str) -> bool {
        self.allows(op) && matches(&self.glob, &segments(path), false)
    }

    /// Whether this scope may let its holder read something under `folder`
    /// ("" is the root): what a folder listing shows.
    pub fn reads_under(&self, folder: &str) -> bool {
        self.allows(Operation::Read) && matches(&self.glob, &segments(folder), true)
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// Matches a glob against path segments. With `prefix`, the path is a
/// folder and the glob only has to fit some path below it.
fn matches(glob: &[String], path: &[&str], prefix: bool) -> bool {
    match glob.split_first() {
        None => path.is_empty(),
        Some((first, rest)) if first == "**" => {
            // Zero segments, or one more and try again.
            matches(rest, path, prefix) || (!path.is_empty() && matches(glob, &path[1..], prefix))
        }
        Some((first, rest)) => match path.split_first() {
            None => prefix,
            Some((segment, path)) => segment_matches(first, segment) && matches(rest, path, prefix),
        },
    }
}

/// `*` within one segment: any run of characters.
fn segment_matches(pattern: &str, segment: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(head) = parts.next() else {
        return pattern == segment;
    };
    let Some(mut rest) = segment.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*` at all: the head is the pattern
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(s: &str) -> Scope {
        s.parse().expect("a valid scope")
    }

    #[test]
    fn globs_match_by_segment() {
        let cases = [
            ("app/**:read", "app/x", true),
            ("app/**:read", "app/a/b/c.json", true),
            ("app/**:read", "app", true),
            ("app/**:read", "apps/x", false),
            ("app/*:read", "app/x", true),
            ("app/*:read", "app/a/b", false),
            ("**/*.yaml:read", "a/b/c.yaml", true),
            ("**/*.yaml:read", "c.yaml", true),
            ("**/*.yaml:read", "a/c.json", false),
            ("svc-*/db.*:read", "svc-pay/db.toml", true),
            ("svc-*/db.*:read", "svc-pay/cache.toml", false),
            ("a*b*c:read", "abc", true),
            ("a*b*c:read", "axxbyyc", true),
            ("a*b*c:read", "axxbyy", false),
            ("a*a:read", "a", false),
            ("**:read", "anything/at/all", true),
        ];
        for (s, path, want) in cases {
            assert_eq!(
                scope(s).grants(Operation::Read, path),
                want,
                "{s} on {path}"
            );
        }
    }

    #[test]
    fn operations_are_granted_one_by_one() {
        let s = scope("app/**:read,delete");
        assert!(s.grants(Operation::Read, "app/x"));
        assert!(s.grants(Operation::Delete, "app/x"));
        assert!(!s.grants(Operation::Write, "app/x"));
        assert_eq!(s.to_string(), "app/**:read,delete");
    }

    #[test]
    fn folders_are_listed_when_something_below_may_be_read() {
        let s = scope("team/app/*.json:read");
        assert!(s.reads_under(""));
        assert!(s.reads_under("team"));
        assert!(s.reads_under("team/app"));
        assert!(!s.reads_under("other"));
        assert!(!s.reads_under("team/db"));
        assert!(!scope("team/**:write").reads_under("team"));
    }

    #[test]
    fn bad_scopes_say_what_is_wrong() {
        for bad in [
            "app/**",
            ":read",
            "app//x:read",
            "app/x**:read",
            "app:fly",
            "app:",
        ] {
            let e = bad.parse::<Scope>().expect_err(bad);
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
