//! Loop devices, mounts and temp dirs for the host tests, each undone by
//! Drop, also when a test fails. Needs root and losetup.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use nix::mount::{umount2, MntFlags};
use zeronode_storage::mounts::MountEntry;

pub const MIB: u64 = 1 << 20;

/// losetup --find races with itself; one attach at a time in a test binary.
static LOSETUP: Mutex<()> = Mutex::new(());

/// A sparse file attached to a loop device.
pub struct LoopDisk {
    pub file: PathBuf,
    pub dev: PathBuf,
}

impl LoopDisk {
    /// Attaches `file` (made `mib` MiB and sparse if it does not exist).
    pub fn new(file: &Path, mib: u64) -> LoopDisk {
        if !file.exists() {
            let f = std::fs::File::create(file).unwrap();
            f.set_len(mib * MIB).unwrap();
        }
        let _one = LOSETUP.lock().unwrap_or_else(|p| p.into_inner());
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(file)
            .output()
            .expect("losetup (util-linux) runs");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        LoopDisk {
            file: file.into(),
            dev,
        }
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        // Whatever order a test drops its guards in, the device's mounts
        // (pool and cache bind mount alike name it as source) go first.
        unmount_where(|m| Path::new(&m.source) == self.dev);
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Unmounts everything mounted under its directory when dropped (deepest
/// first), so a failing test leaves no mount behind. Holds the temp dir.
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn mnt_root(&self) -> PathBuf {
        self.path().join("mnt")
    }

    pub fn cache(&self) -> PathBuf {
        self.path().join("var/cache/zeronode")
    }

    /// Unmounts every mount under the directory, deepest first.
    pub fn unmount_all(&self) {
        let root = std::fs::canonicalize(self.path()).unwrap();
        unmount_where(|m| m.mount_point.starts_with(&root));
    }
}

/// Unmounts every mount `pick` chooses, deepest first.
pub fn unmount_where(pick: impl Fn(&MountEntry) -> bool) {
    // Bounded: a mount that refuses even a lazy unmount must not hang the test.
    for _ in 0..8 {
        let mut chosen: Vec<PathBuf> = zeronode_storage::mounts::mounts()
            .unwrap_or_default()
            .into_iter()
            .filter(|m| pick(m))
            .map(|m| m.mount_point)
            .collect();
        if chosen.is_empty() {
            return;
        }
        chosen.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in chosen {
            let _ = umount2(&p, MntFlags::empty()).or_else(|_| umount2(&p, MntFlags::MNT_DETACH));
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.unmount_all();
    }
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    h.finalize()
}

/// An ext4 filesystem with a file in it, made in `file` by mkfs.ext4.
pub fn make_ext4(file: &Path, mib: u64) {
    let f = std::fs::File::create(file).unwrap();
    f.set_len(mib * MIB).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"someone's data\n").unwrap();
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "olddata", "-d"])
        .arg(dir.path())
        .arg(file)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) runs");
    assert!(status.success());
}
