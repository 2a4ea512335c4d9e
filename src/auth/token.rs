//! API tokens: their secret form, their hash, and the records kept for them
//! in the replicated state.
//!
//! A token is `pika_` followed by 64 lowercase hex characters (32 random
//! bytes). It is shown once, when created; the store keeps only its
//! SHA-256, under the reserved `{prefix}/` namespace:
//! - `{prefix}/tokens/{sha256 hex}`: the [`TokenRecord`], found from the
//!   presented token with one point read per request;
//! - `{prefix}/token-names/{name}`: the hash again, so a name is taken once
//!   (created with compare-and-set at version 0) and revoked by name.
//!
//! Both go through the replicated writes like any config, so a token
//! created or revoked anywhere is in force on every node once its 201 or
//! 204 arrives: a read of a pending path waits for its commit.

use serde::{Deserialize, Serialize};

use super::scope::Scope;

pub const TOKEN_PREFIX: &str = "pika_";
const SECRET_HEX: usize = 64;

/// A token's SHA-256: what is stored and looked up.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        TokenHash(out)
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Compares in time independent of where the hashes differ.
    pub fn same_as(&self, other: &TokenHash) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({}…)", &self.hex()[..8])
    }
}

/// A fresh random token.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; SECRET_HEX / 2];
    getrandom::fill(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
}

/// Whether `token` has the shape of a pika token (`pika_` + 64 lowercase
/// hex). Anything else is refused before any lookup.
pub fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == SECRET_HEX && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// Names are path segments and labels: letters, digits, `.`, `_`, `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(format!(
            "token name {name:?} must be 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`"
        ));
    }
    if name == super::ADMIN_NAME {
        return Err(format!(
            "token name {name:?} is reserved for the configured admin token"
        ));
    }
    Ok(())
}

/// What the store keeps for a token (never the token itself).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    #[serde(default)]
    pub scopes: Vec<Scope>,
    #[serde(default)]
    pub admin: bool,
    /// Unix milliseconds after which the token is refused; `None`: never.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    /// The name of the token that created this one.
    #[serde(default)]
    pub created_by: Option<String>,
}

/// `{prefix}/token-names/{name}`: which hash a name stands for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NameRecord {
    pub hash: String,
}

/// Where the records live, under the reserved prefix.
#[derive(Clone, Debug)]
pub struct TokenPaths {
    prefix: String,
}

impl TokenPaths {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    pub fn by_hash(&self, hash: &TokenHash) -> String {
        format!("{}/tokens/{}", self.prefix, hash.hex())
    }

    pub fn by_hash_hex(&self, hex: &str) -> String {
        format!("{}/tokens/{hex}", self.prefix)
    }

    pub fn hashes_folder(&self) -> String {
        format!("{}/tokens", self.prefix)
    }

    pub fn by_name(&self, name: &str) -> String {
        format!("{}/token-names/{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate().expect("randomness");
        let b = generate().expect("randomness");
        assert!(well_formed(&a) && well_formed(&b));
        assert_ne!(a, b);
        assert!(!TokenHash::of(&a).same_as(&TokenHash::of(&b)));
        assert!(TokenHash::of(&a).same_as(&TokenHash::of(&a)));
    }

    #[test]
    fn malformed_tokens_are_recognised() {
        let good = format!("pika_{}", "a".repeat(64));
        assert!(well_formed(&good));
        for bad in [
            String::new(),
            "pika_".into(),
            format!("pika_{}", "a".repeat(63)),
            format!("pika_{}", "a".repeat(65)),
            format!("pika_{}", "A".repeat(64)),
            format!("PIKA_{}", "a".repeat(64)),
            format!("pika_{}g", "a".repeat(63)),
        ] {
            assert!(!well_formed(&bad), "{bad}");
        }
    }

    #[test]
    fn the_hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            TokenHash::of("abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
