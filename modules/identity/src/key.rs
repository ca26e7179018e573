//! The node key: 32 random bytes (the ed25519 seed) in `<dir>/node.key`,
//! mode 0600, made once and kept. A key file that exists but is not a key
//! is an error, never replaced: a new key would be a new node.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::error::{io, Error, Result};
use crate::node_id::NodeId;

pub const KEY_FILE: &str = "node.key";

pub struct NodeKey {
    key: SigningKey,
    path: PathBuf,
    created: bool,
}

impl NodeKey {
    /// Reads the key in `dir`, or makes one there if there is none.
    pub fn load_or_create(dir: &Path) -> Result<NodeKey> {
        let path = dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let seed: [u8; 32] =
                    bytes.as_slice().try_into().map_err(|_| Error::BadKeyFile {
                        path: path.clone(),
                        reason: format!("{} bytes, a key has 32", bytes.len()),
                    })?;
                let mode = fs::metadata(&path)
                    .map_err(io("reading", &path))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        "{}: mode {:o}, tightening to 600",
                        path.display(),
                        mode & 0o777
                    );
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                        .map_err(io("setting the mode of", &path))?;
                }
                Ok(NodeKey {
                    key: SigningKey::from_bytes(&seed),
                    path,
                    created: false,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| Error::Random(e.to_string()))?;
                write_new(dir, &path, &seed)?;
                Ok(NodeKey {
                    key: SigningKey::from_bytes(&seed),
                    path,
                    created: true,
                })
            }
            Err(e) => Err(io("reading", &path)(e)),
        }
    }

    /// True when this run made the key (first boot, or an emptied cache).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    pub fn node_id(&self) -> NodeId {
        NodeId::from_key(self.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }
}

/// Writes the key so that a crash leaves either no key file or a whole one:
/// a temporary file, fsynced, renamed into place, directory fsynced.
fn write_new(dir: &Path, path: &Path, seed: &[u8; 32]) -> Result<()> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io("setting the mode of", dir))?;
    let tmp = dir.join(format!("{KEY_FILE}.new"));
    // Left by a crash before the rename: no node ever used it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing", &tmp)(e)),
        _ => {}
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(seed).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn made_once_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("identity");
        let first = NodeKey::load_or_create(&keys).unwrap();
        assert!(first.created());
        let mode = fs::metadata(first.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = NodeKey::load_or_create(&keys).unwrap();
        assert!(!again.created());
        assert_eq!(again.node_id(), first.node_id());
        let sig = again.sign(b"order");
        first.verifying_key().verify(b"order", &sig).unwrap();
    }

    #[test]
    fn a_damaged_key_is_refused_and_left_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, b"short").unwrap();
        let e = NodeKey::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("5 bytes") && e.contains("refusing"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"short");
    }

    #[test]
    fn a_loose_mode_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let key = NodeKey::load_or_create(dir.path()).unwrap();
        fs::set_permissions(key.path(), fs::Permissions::from_mode(0o644)).unwrap();
        let again = NodeKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.node_id(), key.node_id());
        let mode = fs::metadata(key.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_leftover_temporary_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("node.key.new"), b"half").unwrap();
        assert!(NodeKey::load_or_create(dir.path()).unwrap().created());
    }
}
