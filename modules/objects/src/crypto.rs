//! The owner's key and the authenticated encryption of stripes and metadata
//! (XChaCha20-Poly1305: its 192-bit nonces can be drawn at random without
//! counting). Separate subkeys for stripes and metadata are derived from the
//! owner key with blake3's key derivation, so one never decrypts the other.

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::{Error, Result};

pub const KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 24;
pub const TAG_LEN: usize = 16;
/// The per-object part of a stripe nonce; the stripe index fills the rest.
pub const OBJECT_NONCE_LEN: usize = 16;

const STRIPE_CONTEXT: &str = "zeronode-objects 2026-11 stripe key v1";
const METADATA_CONTEXT: &str = "zeronode-objects 2026-11 metadata key v1";

/// The owner's secret. Debug never shows it.
#[derive(Clone)]
pub struct OwnerKey {
    stripe: XChaCha20Poly1305,
    metadata: XChaCha20Poly1305,
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerKey(<hidden>)")
    }
}

impl OwnerKey {
    pub fn from_bytes(key: &[u8; KEY_LEN]) -> Self {
        let stripe = blake3::derive_key(STRIPE_CONTEXT, key);
        let metadata = blake3::derive_key(METADATA_CONTEXT, key);
        Self {
            stripe: XChaCha20Poly1305::new(&stripe.into()),
            metadata: XChaCha20Poly1305::new(&metadata.into()),
        }
    }

    /// A key file holds 32 raw bytes or 64 hex digits (surrounding whitespace allowed).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() == KEY_LEN {
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(bytes);
            return Ok(Self::from_bytes(&key));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::Key("expected 32 raw bytes or 64 hex digits".into()))?
            .trim();
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(text, &mut key).map_err(|_| {
            Error::Key(format!(
                "expected 32 raw bytes or 64 hex digits, found {} bytes",
                bytes.len()
            ))
        })?;
        Ok(Self::from_bytes(&key))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by others: chmod 600 it");
            }
        }
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            action: "read key file",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_file_bytes(&bytes).map_err(|e| Error::Key(format!("{}: {e}", path.display())))
    }

    /// A fresh random key, in the hex form a key file holds.
    pub fn generate_hex() -> Result<String> {
        let mut key = [0u8; KEY_LEN];
        random(&mut key)?;
        Ok(hex::encode(key))
    }

    pub(crate) fn seal_stripe(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        self.stripe
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::Key("stripe encryption failed".into()))
    }

    /// None when the tag does not verify.
    pub(crate) fn open_stripe(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        self.stripe
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }

    pub(crate) fn seal_metadata(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        plain: &[u8],
    ) -> Result<Vec<u8>> {
        self.metadata
            .encrypt(XNonce::from_slice(nonce), Payload { msg: plain, aad })
            .map_err(|_| Error::Key("metadata encryption failed".into()))
    }

    pub(crate) fn open_metadata(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        self.metadata
            .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
            .ok()
    }
}

/// Fills `buf` from the operating system's random source.
pub fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| Error::Key(format!("no randomness from the OS: {e}")))
}

/// The nonce of one stripe: the object's random part then the stripe index,
/// so no two stripes of any object share a nonce.
pub fn stripe_nonce(object_nonce: &[u8; OBJECT_NONCE_LEN], stripe: u64) -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    nonce[..OBJECT_NONCE_LEN].copy_from_slice(object_nonce);
    nonce[OBJECT_NONCE_LEN..].copy_from_slice(&stripe.to_le_bytes());
    nonce
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_in_both_forms_give_the_same_key() {
        let raw = [5u8; 32];
        let from_raw = OwnerKey::from_file_bytes(&raw).unwrap();
        let from_hex =
            OwnerKey::from_file_bytes(format!("{}\n", hex::encode(raw)).as_bytes()).unwrap();
        let nonce = [1u8; NONCE_LEN];
        let sealed = from_raw.seal_stripe(&nonce, b"aad", b"hello").unwrap();
        assert_eq!(
            from_hex.open_stripe(&nonce, b"aad", &sealed).unwrap(),
            b"hello"
        );
        assert!(from_hex.open_stripe(&nonce, b"other", &sealed).is_none());
        // Subkeys differ: a stripe does not open as metadata.
        assert!(from_hex.open_metadata(&nonce, b"aad", &sealed).is_none());
        assert!(!format!("{from_raw:?}").contains('5'));
    }

    #[test]
    fn bad_key_files_are_refused() {
        for bad in [
            &b""[..],
            b"abc",
            &[0u8; 31],
            &[0u8; 33],
            "zz".repeat(32).as_bytes(),
        ] {
            assert!(OwnerKey::from_file_bytes(bad).is_err());
        }
    }
}
