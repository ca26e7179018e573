//! mount(2) through nix, and what /proc/self/mountinfo says is mounted.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{io, sys, Result};

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// Path of the mounted directory inside the filesystem (`/cache` for a
    /// bind mount of that subvolume).
    pub root: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
}

/// The current mounts, last mounted last.
pub fn mounts() -> Result<Vec<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(io("/proc/self/mountinfo", "reading"))?;
    Ok(parse_mountinfo(&text))
}

pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountEntry {
                root: unescape(l.get(3)?),
                mount_point: unescape(l.get(4)?).into(),
                fs_type: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topmost mount at exactly `path`, if any.
pub fn mounted_at(path: &Path) -> Result<Option<MountEntry>> {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.into());
    Ok(mounts()?.into_iter().rev().find(|m| m.mount_point == path))
}

/// Mounts the btrfs on `dev` at `target` (created if missing).
pub fn mount_btrfs(dev: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(io(target, "creating mount point"))?;
    mount(
        Some(dev),
        target,
        Some("btrfs"),
        MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(sys(dev, "mounting btrfs"))
}

/// Takes the mount at `target` out of the tree at once (MNT_DETACH): its
/// disk is gone, so a plain unmount would wait on files workloads hold.
pub fn detach(target: &Path) -> Result<()> {
    umount2(target, MntFlags::MNT_DETACH).map_err(sys(target, "unmounting"))
}

/// Bind-mounts `source` on `target` (created if missing).
pub fn bind(source: &Path, target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(io(target, "creating mount point"))?;
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(target, "bind-mounting the cache"))
}

/// Mounts a private tmpfs (mode 0700) on `target` (created if missing).
pub fn tmpfs(target: &Path) -> Result<()> {
    std::fs::create_dir_all(target).map_err(io(target, "creating mount point"))?;
    mount(
        Some("zn-cache"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some("mode=0700"),
    )
    .map_err(sys(target, "mounting tmpfs"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_lines() {
        let text = "22 1 0:21 / /proc rw,nosuid shared:12 - proc proc rw\n\
                    90 29 0:45 /cache /var/cache/zero\\040node rw,noatime - btrfs /dev/loop3 rw,ssd\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].mount_point, PathBuf::from("/var/cache/zero node"));
        assert_eq!(m[1].root, "/cache");
        assert_eq!(m[1].fs_type, "btrfs");
        assert_eq!(m[1].source, "/dev/loop3");
    }

    #[test]
    fn the_root_is_mounted() {
        assert!(mounted_at(Path::new("/")).unwrap().is_some());
    }
}
