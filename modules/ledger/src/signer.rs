//! The node key signs every entry hash and every tree head. The key lives
//! in the identity module; the ledger only needs something that signs a
//! 32-byte hash, so the daemon can sign through identity over D-Bus and
//! tests can sign with a key in memory.

use std::path::Path;

use ed25519_dalek::{Signer as _, SigningKey};

use crate::entry::Hash;

/// Why a signature could not be made.
#[derive(Debug, thiserror::Error)]
#[error("signing failed: {0}")]
pub struct SignError(pub String);

/// Signs 32-byte hashes with the node's ed25519 key.
pub trait Signer: Send + Sync {
    /// The node's ed25519 public key.
    fn public_key(&self) -> [u8; 32];

    /// An ed25519 signature over `hash` (the 32 bytes are the message).
    fn sign(&self, hash: &Hash) -> Result<[u8; 64], SignError>;

    /// Signs a whole group commit at once; a signer behind D-Bus overrides
    /// this to make one round trip a batch instead of one an entry.
    fn sign_batch(&self, hashes: &[Hash]) -> Result<Vec<[u8; 64]>, SignError> {
        hashes.iter().map(|h| self.sign(h)).collect()
    }

    /// True when the signatures this signer returns are valid by
    /// construction (it holds the key and signs in this process). The
    /// ledger checks any other signer's signatures before it chains them
    /// into later entries, since the audit then relies on the chain.
    fn signs_in_process(&self) -> bool {
        false
    }
}

/// Fewest signatures a batch spreads over the cores.
const PARALLEL_FROM: usize = 32;

/// A signer holding the ed25519 key in this process.
pub struct KeySigner {
    key: SigningKey,
}

impl KeySigner {
    /// A signer from a 32-byte ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        KeySigner {
            key: SigningKey::from_bytes(seed),
        }
    }

    /// Reads a key file holding the 32-byte seed, raw or as 64 hex digits.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let bytes = std::fs::read(path)
            .map_err(|e| SignError(format!("reading key file {}: {e}", path.display())))?;
        let seed = parse_seed(&bytes).ok_or_else(|| {
            SignError(format!(
                "key file {} holds {} bytes: expected a 32-byte seed or 64 hex digits",
                path.display(),
                bytes.len()
            ))
        })?;
        Ok(Self::from_seed(&seed))
    }
}

fn parse_seed(bytes: &[u8]) -> Option<[u8; 32]> {
    if bytes.len() == 32 {
        return bytes.try_into().ok();
    }
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.len() != 64 {
        return None;
    }
    let mut seed = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).ok()?;
        seed[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(seed)
}

impl Signer for KeySigner {
    fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    fn sign(&self, hash: &Hash) -> Result<[u8; 64], SignError> {
        Ok(self.key.sign(hash).to_bytes())
    }

    /// ed25519-dalek signs with the key whose public key the ledger
    /// records: nothing for the ledger to check.
    fn signs_in_process(&self) -> bool {
        true
    }

    /// Group commits are signed on every core: signing is most of the
    /// sealer's CPU time per entry, and a thread start (tens of µs) is
    /// repaid from a few dozen signatures on.
    fn sign_batch(&self, hashes: &[Hash]) -> Result<Vec<[u8; 64]>, SignError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sign_all = |part: &[Hash]| -> Vec<[u8; 64]> {
            part.iter().map(|h| self.key.sign(h).to_bytes()).collect()
        };
        if hashes.len() < PARALLEL_FROM || cores < 2 {
            return Ok(sign_all(hashes));
        }
        let chunk = hashes.len().div_ceil(cores);
        let (mine, rest) = hashes.split_at(chunk);
        std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .chunks(chunk)
                .map(|part| s.spawn(move || sign_all(part)))
                .collect();
            let mut out = sign_all(mine);
            for h in handles {
                let part = h
                    .join()
                    .map_err(|_| SignError("signing thread panicked".into()))?;
                out.extend(part);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_raw_or_hex_seeds() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("raw");
        let hex = dir.path().join("hex");
        std::fs::write(&raw, [7u8; 32]).unwrap();
        std::fs::write(&hex, format!("{}\n", "07".repeat(32))).unwrap();
        let a = KeySigner::from_file(&raw).unwrap();
        let b = KeySigner::from_file(&hex).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let bad = dir.path().join("bad");
        std::fs::write(&bad, b"short").unwrap();
        let err = KeySigner::from_file(&bad).err().unwrap().to_string();
        assert!(err.contains("5 bytes"), "{err}");
    }

    #[test]
    fn batches_sign_in_order() {
        let s = KeySigner::from_seed(&[2; 32]);
        let hashes: Vec<Hash> = (0..300u32)
            .map(|i| *blake3::hash(&i.to_be_bytes()).as_bytes())
            .collect();
        let sigs = s.sign_batch(&hashes).unwrap();
        assert_eq!(sigs.len(), 300);
        for (h, sig) in hashes.iter().zip(&sigs) {
            assert_eq!(*sig, s.sign(h).unwrap());
        }
    }

    #[test]
    fn signatures_verify() {
        let s = KeySigner::from_seed(&[1; 32]);
        let h = [3u8; 32];
        let sig = s.sign(&h).unwrap();
        crate::verifier::verify_signature(&s.public_key(), &h, &sig).unwrap();
    }
}
