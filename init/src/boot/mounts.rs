//! The API filesystems PID 1 mounts before anything else runs.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("mounting {fstype} on {target}: {source}")]
pub struct MountError {
    pub fstype: String,
    pub target: PathBuf,
    pub source: nix::Error,
}

/// One mount as PID 1 wants it.
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

/// The kernel's interfaces, enough to read the command line and find devices.
pub const KERNEL_API: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
];

/// The writable places of the read-only system: stage 1 puts them on the
/// new root before switching to it.
pub const WRITABLE: &[Mount] = &[
    Mount {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    Mount {
        source: "tmp",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "var",
        target: "/var",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    // Mount points of the storage pools (/mnt/<pool>): the image is
    // read-only, so the directories need a writable place to be made in.
    Mount {
        source: "mnt",
        target: "/mnt",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755,size=1m",
    },
];

/// The rest of early boot, mounted once the final root is in place.
pub const SYSTEM: &[Mount] = &[
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
    },
];

/// Mounts what is not mounted yet, under `root` (`/` or the new root being
/// prepared). Returns the first error; the mounts before it stay.
pub fn mount_all(root: &Path, mounts: &[Mount]) -> Result<(), MountError> {
    for m in mounts {
        let target = root.join(m.target.trim_start_matches('/'));
        let err = |source| MountError {
            fstype: m.fstype.to_string(),
            target: target.clone(),
            source,
        };
        if is_mountpoint(&target) {
            continue;
        }
        match nix::unistd::mkdir(&target, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(e) => return Err(err(e)),
        }
        let data = (!m.data.is_empty()).then_some(m.data);
        mount(Some(m.source), &target, Some(m.fstype), m.flags, data).map_err(err)?;
    }
    Ok(())
}

/// True when `path` is the root of a mount: it sits on another device than
/// its parent. (Bind mounts of the same filesystem are not told apart, and
/// PID 1 makes none.)
pub fn is_mountpoint(path: &Path) -> bool {
    let parent = path.parent().unwrap_or(Path::new("/"));
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev() || m.ino() == p.ino(),
        _ => false,
    }
}

/// Mount points of the running system from /proc/self/mountinfo, in mount
/// order (a mount comes after the mounts it sits on).
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(parse_mountinfo(&text))
}

pub fn parse_mountinfo(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_order_and_escapes() {
        let text = "22 1 0:21 / / ro,relatime - squashfs /dev/loop0 ro\n\
                    23 22 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw\n\
                    40 22 0:33 / /mnt/my\\040pool rw - btrfs /dev/vdb rw\n";
        assert_eq!(
            parse_mountinfo(text),
            [
                PathBuf::from("/"),
                PathBuf::from("/dev"),
                PathBuf::from("/mnt/my pool")
            ]
        );
    }

    #[test]
    fn root_and_proc_are_mountpoints_and_a_plain_dir_is_not() {
        assert!(is_mountpoint(Path::new("/")));
        assert!(is_mountpoint(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("x")).unwrap();
        assert!(!is_mountpoint(&dir.path().join("x")));
        assert!(!is_mountpoint(&dir.path().join("missing")));
    }
}
