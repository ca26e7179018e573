//! What a client needs to check the node without trusting it: pure
//! functions over bytes, no storage. The Merkle tree follows RFC 6962 /
//! RFC 9162 section 2.1 with blake3 as the hash:
//! `leaf = blake3(0x00 || entry_hash)`, `node = blake3(0x01 || left || right)`,
//! the root of the empty tree is `blake3("")`. Leaf `i` is the entry with
//! seq `i`; the leaf's data is the entry hash (blake3 of the entry body), so
//! the tree commits to every byte the entry signature covers.

use ed25519_dalek::{Signature, VerifyingKey};

use crate::entry::{self, DecodeError, Entry, Hash};

/// `blake3(0x00 || data)`.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x00]);
    h.update(entry_hash);
    *h.finalize().as_bytes()
}

/// `blake3(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&[0x01]);
    h.update(left);
    h.update(right);
    *h.finalize().as_bytes()
}

/// The root of the empty tree.
pub fn empty_root() -> Hash {
    *blake3::hash(&[]).as_bytes()
}

/// Why a proof or a signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("leaf index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("old size {old} is larger than new size {new}")]
    SizesReversed { old: u64, new: u64 },
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    #[error("proof does not lead to the expected root")]
    RootMismatch,
    #[error("signature does not verify with the node key")]
    BadSignature,
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("record does not decode: {0}")]
    Decode(#[from] DecodeError),
}

/// RFC 9162 2.1.3.2: checks that `entry_hash` is leaf `index` of the tree
/// of `size` leaves with root `root`.
pub fn verify_inclusion(
    entry_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut fnode = index;
    let mut snode = size - 1;
    let mut r = leaf_hash(entry_hash);
    for p in proof {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &r != root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 2.1.4.2: checks that the tree of `new_size` leaves with root
/// `new_root` extends the tree of `old_size` with root `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesReversed {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongLength);
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(ProofError::RootMismatch)
        };
    }
    if old_size == 0 {
        // Every tree extends the empty one.
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::WrongLength)
        };
    }
    if proof.is_empty() {
        return Err(ProofError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(ProofError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(ProofError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(ProofError::RootMismatch);
    }
    Ok(())
}

/// A signed tree head: the node's statement that its ledger held `size`
/// entries with Merkle root `root` at `time_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedTreeHead {
    pub size: u64,
    pub time_ms: u64,
    pub root: Hash,
    pub signature: [u8; 64],
}

/// The first byte of a tree head's signed bytes ('T'; entries start 'E').
pub const TREE_HEAD_TAG: u8 = 0x54;

impl SignedTreeHead {
    /// The signed bytes: `0x54 0x01 size(u64 BE) time(u64 BE) root(32)`.
    pub fn signed_bytes(size: u64, time_ms: u64, root: &Hash) -> [u8; 50] {
        let mut b = [0u8; 50];
        b[0] = TREE_HEAD_TAG;
        b[1] = 1;
        b[2..10].copy_from_slice(&size.to_be_bytes());
        b[10..18].copy_from_slice(&time_ms.to_be_bytes());
        b[18..50].copy_from_slice(root);
        b
    }

    /// What the node key signs: `blake3(signed_bytes)`.
    pub fn signed_hash(size: u64, time_ms: u64, root: &Hash) -> Hash {
        *blake3::hash(&Self::signed_bytes(size, time_ms, root)).as_bytes()
    }

    /// Checks the head's signature against the node's public key.
    pub fn verify(&self, public_key: &[u8; 32]) -> Result<(), ProofError> {
        let hash = Self::signed_hash(self.size, self.time_ms, &self.root);
        verify_signature(public_key, &hash, &self.signature)
    }
}

/// Checks an ed25519 signature over a 32-byte hash (strict verification:
/// no malleable signatures, no weak keys).
pub fn verify_signature(
    public_key: &[u8; 32],
    hash: &Hash,
    signature: &[u8; 64],
) -> Result<(), ProofError> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| ProofError::BadKey)?;
    let sig = Signature::from_bytes(signature);
    key.verify_strict(hash, &sig)
        .map_err(|_| ProofError::BadSignature)
}

/// Decodes a record a node returned, checks its signature, and gives the
/// entry with its hash: the first step before an inclusion proof.
pub fn verify_record(public_key: &[u8; 32], record: &[u8]) -> Result<(Entry, Hash), ProofError> {
    let (body, sig) = entry::split_record(record)?;
    let decoded = Entry::decode(record)?;
    let hash = entry::body_hash(body);
    verify_signature(public_key, &hash, sig)?;
    Ok((decoded, hash))
}

/// Where a proof builder reads complete subtree hashes: the subtree at
/// `level` and `index` covers leaves `index << level .. (index + 1) << level`.
pub trait NodeSource {
    type Error;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;
}

/// Largest power of two strictly below `n` (n >= 2).
fn split_point(n: u64) -> u64 {
    1u64 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of leaves `start..end`, from stored complete
/// subtrees: O(log n) reads, since only the right edge is incomplete.
pub fn subtree_hash<S: NodeSource>(src: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start % n == 0 {
        return src.node(n.trailing_zeros() as u8, start >> n.trailing_zeros());
    }
    let k = split_point(n);
    let left = subtree_hash(src, start, start + k)?;
    let right = subtree_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// RFC 6962 2.1.1 PATH(index, D[0:size]). The caller checks index < size.
pub fn inclusion_path<S: NodeSource>(
    src: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, S::Error> {
    let mut path = Vec::with_capacity(64);
    path_rec(src, index, 0, size, &mut path)?;
    Ok(path)
}

fn path_rec<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path_rec(src, m, start, start + k, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        path_rec(src, m - k, start + k, end, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 6962 2.1.2 PROOF(old, D[0:new]). The caller checks 0 < old <= new.
pub fn consistency_path<S: NodeSource>(src: &S, old: u64, new: u64) -> Result<Vec<Hash>, S::Error> {
    let mut path = Vec::with_capacity(64);
    if old == 0 || old >= new {
        return Ok(path);
    }
    subproof(src, old, 0, new, true, &mut path)?;
    Ok(path)
}

fn subproof<S: NodeSource>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), S::Error> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, whole, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// A tree held in memory from its entry hashes: the reference the stored
/// tree is tested against, and what an auditor with an export can use.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// levels[l][i] = complete subtree hash at level l, index i.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, entry_hash: &Hash) {
        let mut h = leaf_hash(entry_hash);
        let mut level = 0;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(h);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            h = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
    }

    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    pub fn root(&self) -> Hash {
        self.root_at(self.size())
    }

    /// The root of the first `size` leaves (size <= self.size()).
    pub fn root_at(&self, size: u64) -> Hash {
        match subtree_hash(self, 0, size) {
            Ok(h) => h,
            Err(never) => match never {},
        }
    }
}

impl NodeSource for MemoryTree {
    type Error = std::convert::Infallible;
    fn node(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        // Callers only ask for complete subtrees of leaves pushed already.
        Ok(self.levels[level as usize][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6962's MTH written out naively, to check the stored version.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaf_hash(&leaves[0]),
            n => {
                let k = split_point(n as u64) as usize;
                node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    fn hashes(n: u64) -> Vec<Hash> {
        (0..n)
            .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
            .collect()
    }

    #[test]
    fn roots_match_the_rfc_definition() {
        let hs = hashes(70);
        let mut t = MemoryTree::new();
        assert_eq!(t.root(), empty_root());
        for (i, h) in hs.iter().enumerate() {
            t.push(h);
            assert_eq!(t.root(), naive_root(&hs[..=i]), "size {}", i + 1);
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_wrong_ones_fail() {
        let hs = hashes(40);
        let mut t = MemoryTree::new();
        hs.iter().for_each(|h| t.push(h));
        for size in 1..=40u64 {
            let root = t.root_at(size);
            for i in 0..size {
                let p = inclusion_path(&t, i, size).unwrap();
                verify_inclusion(&hs[i as usize], i, size, &p, &root).unwrap();
                let wrong = hs[((i + 1) % 40) as usize];
                assert!(verify_inclusion(&wrong, i, size, &p, &root).is_err());
                if size > 1 {
                    assert!(
                        verify_inclusion(&hs[i as usize], (i + 1) % size, size, &p, &root).is_err()
                    );
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_forks_fail() {
        let hs = hashes(33);
        let mut t = MemoryTree::new();
        hs.iter().for_each(|h| t.push(h));
        // A fork: same first 10 leaves, then different history.
        let mut fork = MemoryTree::new();
        for (i, h) in hs.iter().enumerate() {
            if i < 10 {
                fork.push(h);
            } else {
                fork.push(&[0xee; 32]);
            }
        }
        for new in 1..=33u64 {
            for old in 0..=new {
                let p = consistency_path(&t, old, new).unwrap();
                verify_consistency(old, new, &t.root_at(old), &t.root_at(new), &p).unwrap();
                if old > 10 && old < new {
                    // The forked node claims its old head; this node's proof
                    // cannot link it to the new head.
                    assert!(
                        verify_consistency(old, new, &fork.root_at(old), &t.root_at(new), &p)
                            .is_err()
                    );
                }
            }
        }
    }
}
