//! Twin keys: an ed25519 seed in a file (64 hex digits), made fresh or
//! imported from a seed or a BIP39 mnemonic.
//!
//! A mnemonic maps to a key as ThreeFold's (Substrate-based) tools do for
//! ed25519: seed = the first 32 bytes of PBKDF2-HMAC-SHA512 over the
//! mnemonic's *entropy* with salt "mnemonic" (no passphrase), 2048 rounds.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::SigningKey;
use zeronode_deployment::hex;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: not a key file (64 hex digits of an ed25519 seed)")]
    BadFile(String),
    #[error("seed: not 64 hex digits")]
    BadSeed,
    #[error("mnemonic: {0}")]
    BadMnemonic(String),
    #[error("{0} exists; refusing to overwrite a key")]
    Exists(String),
    #[error("no randomness: {0}")]
    Random(String),
}

pub fn from_seed_hex(s: &str) -> Result<SigningKey, KeyError> {
    let seed = hex::decode_array::<32>(s.trim()).ok_or(KeyError::BadSeed)?;
    Ok(SigningKey::from_bytes(&seed))
}

pub fn from_mnemonic(words: &str) -> Result<SigningKey, KeyError> {
    let m = bip39::Mnemonic::parse_normalized(words.trim())
        .map_err(|e| KeyError::BadMnemonic(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed_from_entropy(&m.to_entropy())))
}

fn seed_from_entropy(entropy: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<sha2::Sha512>(entropy, b"mnemonic", 2048, &mut out);
    let mut seed = [0u8; 32];
    seed.copy_from_slice(&out[..32]);
    seed
}

/// A new key and its 24-word mnemonic.
pub fn generate() -> Result<(SigningKey, String), KeyError> {
    let mut entropy = [0u8; 32];
    getrandom::fill(&mut entropy).map_err(|e| KeyError::Random(e.to_string()))?;
    let m = bip39::Mnemonic::from_entropy(&entropy)
        .map_err(|e| KeyError::BadMnemonic(e.to_string()))?;
    Ok((
        SigningKey::from_bytes(&seed_from_entropy(&entropy)),
        m.to_string(),
    ))
}

pub fn public_hex(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io(name.clone(), e))?;
    from_seed_hex(&text).map_err(|_| KeyError::BadFile(name))
}

/// Writes the seed, mode 0600, never over an existing file.
pub fn save(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let name = path.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyError::Exists(name.clone())
            } else {
                KeyError::Io(name.clone(), e)
            }
        })?;
    writeln!(f, "{}", hex::encode(key.as_bytes()))
        .and_then(|_| f.sync_all())
        .map_err(|e| KeyError::Io(name, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mnemonic_round_trip_and_file() {
        let (k, words) = generate().unwrap();
        assert_eq!(words.split_whitespace().count(), 24);
        assert_eq!(from_mnemonic(&words).unwrap().to_bytes(), k.to_bytes());
        assert!(from_mnemonic("abandon abandon").is_err());
        // The all-zero entropy mnemonic maps to a fixed key (regression pin).
        let zero = bip39::Mnemonic::from_entropy(&[0u8; 16])
            .unwrap()
            .to_string();
        let a = from_mnemonic(&zero).unwrap();
        assert_eq!(a.to_bytes(), seed_from_entropy(&[0u8; 16]));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        save(&p, &k).unwrap();
        assert!(matches!(save(&p, &k), Err(KeyError::Exists(_))));
        assert_eq!(load(&p).unwrap().to_bytes(), k.to_bytes());
        assert_eq!(
            public_hex(
                &from_seed_hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
                    .unwrap()
            ),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }
}
