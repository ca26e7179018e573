//! `manifest.json`: what was built from what, and the blake3 and size of
//! every artifact, so a person or a test can check a download or a USB
//! stick against the build.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{io, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub kernel: String,
    pub kernel_package: String,
    pub git_commit: String,
    pub source_date_epoch: u64,
    /// blake3 of system.img, pinned on the command line.
    pub root_hash: String,
    /// blake3 of runtime.img (inside initramfs.img), pinned inside
    /// system.img; none for an image without a runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_hash: Option<String>,
    pub cmdline: String,
    pub initramfs_compression: String,
    /// blake3 of everything the build read (see `stamp`): equal inputs,
    /// nothing to redo.
    pub inputs: String,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    pub blake3: String,
}

impl Artifact {
    /// Hashes `dir/name`.
    pub fn of(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        let mut hasher = blake3::Hasher::new();
        let file = std::fs::File::open(&path).map_err(io("opening", &path))?;
        hasher.update_reader(file).map_err(io("hashing", &path))?;
        let size = std::fs::metadata(&path)
            .map_err(io("reading", &path))?
            .len();
        Ok(Artifact {
            name: name.into(),
            size,
            blake3: hasher.finalize().to_hex().to_string(),
        })
    }
}

impl Manifest {
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(self).unwrap_or_default() + "\n";
        std::fs::write(&path, text).map_err(io("writing", &path))
    }

    /// The manifest in `dir`, if there is a readable one.
    pub fn read(dir: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(dir.join("manifest.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Every artifact is still there with its recorded size and hash.
    pub fn intact(&self, dir: &Path) -> bool {
        self.artifacts
            .iter()
            .all(|a| Artifact::of(dir, &a.name).is_ok_and(|now| now == *a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_intact() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"abc").unwrap();
        let m = Manifest {
            name: "ZeroNode".into(),
            version: "0".into(),
            kernel: "k".into(),
            kernel_package: "p".into(),
            git_commit: "c".into(),
            source_date_epoch: 0,
            root_hash: "r".into(),
            runtime_hash: Some("t".into()),
            cmdline: "x".into(),
            initramfs_compression: "none".into(),
            inputs: "i".into(),
            artifacts: vec![Artifact::of(dir.path(), "a").unwrap()],
        };
        assert_eq!(
            m.artifacts[0].blake3,
            blake3::hash(b"abc").to_hex().to_string()
        );
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap(), m);
        assert!(m.intact(dir.path()));
        std::fs::write(dir.path().join("a"), b"abd").unwrap();
        assert!(!m.intact(dir.path()));
    }
}
