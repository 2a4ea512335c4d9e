//! Merkle buckets: a digest of the whole store that is cheap to keep current
//! and cheap to compare.
//!
//! Every path falls into one of [`BUCKETS`] buckets by a prefix of
//! blake3(path). A bucket's digest is the XOR of the leaf hashes of its paths,
//! so a write updates it in O(1) (XOR out the old leaf, XOR in the new one)
//! inside the same transaction as the write, and the result does not depend
//! on the order in which changes arrived. Inner levels of the 16-ary tree are
//! computed on demand from the 4096 bucket digests: two nodes compare roots
//! first and descend only into subtrees that differ.

/// Number of buckets: 16^3, so the tree has three inner levels above them.
pub const BUCKETS: usize = 4096;
/// Children per inner node.
pub const FANOUT: usize = 16;

pub type Digest = [u8; 32];

/// The all-zero digest of an empty bucket.
pub const EMPTY: Digest = [0; 32];

/// The bucket a path belongs to: the first 12 bits of blake3(path).
pub fn bucket_of(path: &str) -> u16 {
    let h = blake3::hash(path.as_bytes());
    let b = h.as_bytes();
    (u16::from(b[0]) << 4) | (u16::from(b[1]) >> 4)
}

/// The leaf hash of a path at a version. `deleted` distinguishes a tombstone
/// from a put of identical bytes, so a deletion is visible in the digest.
pub fn leaf(path: &str, version: u64, deleted: bool, content: &Digest) -> Digest {
    let mut h = blake3::Hasher::new();
    // Length-prefix the path so no two (path, version) pairs share an encoding.
    h.update(&(path.len() as u64).to_le_bytes());
    h.update(path.as_bytes());
    h.update(&version.to_le_bytes());
    h.update(&[u8::from(deleted)]);
    h.update(content);
    *h.finalize().as_bytes()
}

pub fn xor_into(acc: &mut Digest, other: &Digest) {
    for (a, b) in acc.iter_mut().zip(other) {
        *a ^= b;
    }
}

/// All bucket digests of a store, with the tree computed over them.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleBuckets {
    buckets: Vec<Digest>,
}

impl Default for MerkleBuckets {
    fn default() -> Self {
        Self {
            buckets: vec![EMPTY; BUCKETS],
        }
    }
}

impl std::fmt::Debug for MerkleBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let non_empty = self.buckets.iter().filter(|d| **d != EMPTY).count();
        f.debug_struct("MerkleBuckets")
            .field("root", &hex(&self.root()))
            .field("non_empty", &non_empty)
            .finish()
    }
}

impl MerkleBuckets {
    pub fn bucket(&self, index: u16) -> &Digest {
        &self.buckets[usize::from(index)]
    }

    pub fn set(&mut self, index: u16, digest: Digest) {
        self.buckets[usize::from(index)] = digest;
    }

    /// XORs a leaf into (or, being its own inverse, out of) its bucket.
    pub fn toggle(&mut self, index: u16, leaf: &Digest) {
        xor_into(&mut self.buckets[usize::from(index)], leaf);
    }

    /// Digests of one tree level: level 0 is the root (1 node), level 3 the
    /// buckets (4096). An inner node hashes its 16 children in order.
    pub fn level(&self, level: u32) -> Vec<Digest> {
        let mut nodes = self.buckets.clone();
        for _ in level..3 {
            nodes = nodes
                .chunks(FANOUT)
                .map(|children| {
                    let mut h = blake3::Hasher::new();
                    for child in children {
                        h.update(child);
                    }
                    *h.finalize().as_bytes()
                })
                .collect();
        }
        nodes
    }

    pub fn root(&self) -> Digest {
        self.level(0)[0]
    }

    /// Indexes of buckets whose digests differ from `other`'s.
    pub fn differing(&self, other: &MerkleBuckets) -> Vec<u16> {
        (0..BUCKETS as u16)
            .filter(|&i| self.bucket(i) != other.bucket(i))
            .collect()
    }
}

pub fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_the_range() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000 {
            let b = bucket_of(&format!("p/{i}"));
            assert!(usize::from(b) < BUCKETS);
            seen.insert(b);
        }
        // 20k random paths over 4096 buckets leave (almost) none empty.
        assert!(seen.len() > 4000, "{}", seen.len());
    }

    #[test]
    fn toggling_is_order_independent_and_reversible() {
        let leaves: Vec<_> = (0..50u64).map(|v| leaf("a/b", v, false, &EMPTY)).collect();
        let mut forward = MerkleBuckets::default();
        let mut backward = MerkleBuckets::default();
        for l in &leaves {
            forward.toggle(7, l);
        }
        for l in leaves.iter().rev() {
            backward.toggle(7, l);
        }
        assert_eq!(forward.root(), backward.root());
        assert_ne!(forward.root(), MerkleBuckets::default().root());
        for l in &leaves {
            forward.toggle(7, l);
        }
        assert_eq!(forward, MerkleBuckets::default());
    }

    #[test]
    fn a_tombstone_differs_from_a_put() {
        assert_ne!(leaf("a", 2, true, &EMPTY), leaf("a", 2, false, &EMPTY));
        assert_ne!(leaf("ab", 1, false, &EMPTY), leaf("a", 1, false, &EMPTY));
    }

    #[test]
    fn levels_have_the_documented_widths() {
        let m = MerkleBuckets::default();
        assert_eq!(m.level(3).len(), 4096);
        assert_eq!(m.level(2).len(), 256);
        assert_eq!(m.level(1).len(), 16);
        assert_eq!(m.level(0).len(), 1);
    }
}
