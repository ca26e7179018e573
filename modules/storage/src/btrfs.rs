//! btrfs: subvolumes and qgroups through the kernel's ioctls
//! (include/uapi/linux/btrfs.h). Formatting is `btrfs_format`'s.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{io, sys, Result, StorageError};

const MAGIC: u8 = 0x94;
/// BTRFS_PATH_NAME_MAX + 1.
const NAME_LEN: usize = 4088;
const FIRST_FREE_OBJECTID: u64 = 256;
const QUOTA_TREE_OBJECTID: u64 = 8;
const QGROUP_INFO_KEY: u32 = 242;
const QGROUP_LIMIT_KEY: u32 = 244;
const QUOTA_CTL_ENABLE: u64 = 1;
const QGROUP_LIMIT_MAX_RFER: u64 = 1;

#[repr(C)]
pub struct VolArgs {
    fd: i64,
    name: [u8; NAME_LEN],
}

#[repr(C)]
pub struct QuotaCtlArgs {
    cmd: u64,
    status: u64,
}

#[repr(C)]
#[derive(Default)]
pub struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

#[repr(C)]
pub struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

#[repr(C)]
pub struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; 4080],
}

#[repr(C)]
#[derive(Default)]
pub struct SearchKey {
    tree_id: u64,
    min_objectid: u64,
    max_objectid: u64,
    min_offset: u64,
    max_offset: u64,
    min_transid: u64,
    max_transid: u64,
    min_type: u32,
    max_type: u32,
    nr_items: u32,
    unused: u32,
    unused1: u64,
    unused2: u64,
    unused3: u64,
    unused4: u64,
}

const SEARCH_BUF: usize = 4096 - std::mem::size_of::<SearchKey>();

#[repr(C)]
pub struct SearchArgs {
    key: SearchKey,
    buf: [u8; SEARCH_BUF],
}

nix::ioctl_none!(ioc_sync, MAGIC, 8);
nix::ioctl_write_ptr!(ioc_subvol_create, MAGIC, 14, VolArgs);
nix::ioctl_write_ptr!(ioc_snap_destroy, MAGIC, 15, VolArgs);
nix::ioctl_readwrite!(ioc_tree_search, MAGIC, 17, SearchArgs);
nix::ioctl_readwrite!(ioc_ino_lookup, MAGIC, 18, InoLookupArgs);
nix::ioctl_readwrite!(ioc_quota_ctl, MAGIC, 40, QuotaCtlArgs);
// The kernel declares QGROUP_LIMIT with _IOR although it reads the struct.
nix::ioctl_read!(ioc_qgroup_limit, MAGIC, 43, QgroupLimitArgs);
nix::ioctl_none!(ioc_quota_rescan_wait, MAGIC, 46);

fn vol_args(name: &str) -> Box<VolArgs> {
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; NAME_LEN],
    });
    let n = name.len().min(NAME_LEN - 1);
    args.name[..n].copy_from_slice(&name.as_bytes()[..n]);
    args
}

fn open_dir(path: &Path) -> Result<File> {
    File::open(path).map_err(io(path, "opening directory"))
}

/// Creates subvolume `name` in directory `parent`.
pub fn subvolume_create(parent: &Path, name: &str) -> Result<()> {
    let dir = open_dir(parent)?;
    let args = vol_args(name);
    // SAFETY: `args` is a valid, fully initialised btrfs_ioctl_vol_args.
    unsafe { ioc_subvol_create(dir.as_raw_fd(), &*args) }
        .map_err(sys(parent.join(name), "creating btrfs subvolume"))?;
    Ok(())
}

/// Deletes subvolume `name` in directory `parent`, with what it holds.
pub fn subvolume_delete(parent: &Path, name: &str) -> Result<()> {
    let dir = open_dir(parent)?;
    let args = vol_args(name);
    // SAFETY: as above.
    unsafe { ioc_snap_destroy(dir.as_raw_fd(), &*args) }
        .map_err(sys(parent.join(name), "deleting btrfs subvolume"))?;
    Ok(())
}

/// True when `path` is the root of a btrfs subvolume (inode 256).
pub fn is_subvolume(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .map(|m| m.is_dir() && m.ino() == FIRST_FREE_OBJECTID)
        .unwrap_or(false)
}

/// The subvolume id (= its level-0 qgroup id) of the subvolume at `path`.
pub fn subvolume_id(path: &Path) -> Result<u64> {
    let dir = open_dir(path)?;
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: FIRST_FREE_OBJECTID,
        name: [0; 4080],
    });
    // SAFETY: valid btrfs_ioctl_ino_lookup_args.
    unsafe { ioc_ino_lookup(dir.as_raw_fd(), &mut *args) }
        .map_err(sys(path, "looking up the subvolume id"))?;
    Ok(args.treeid)
}

/// Turns quota accounting on for the filesystem of `mnt` (a no-op when
/// it is on) and waits for the first rescan.
pub fn quota_enable(mnt: &Path) -> Result<()> {
    let dir = open_dir(mnt)?;
    let mut args = QuotaCtlArgs {
        cmd: QUOTA_CTL_ENABLE,
        status: 0,
    };
    // SAFETY: valid btrfs_ioctl_quota_ctl_args.
    unsafe { ioc_quota_ctl(dir.as_raw_fd(), &mut args) }
        .map_err(sys(mnt, "enabling btrfs quota"))?;
    // SAFETY: no argument.
    match unsafe { ioc_quota_rescan_wait(dir.as_raw_fd()) } {
        Ok(_) | Err(nix::Error::ENOENT) | Err(nix::Error::EINVAL) => Ok(()),
        Err(e) => Err(StorageError::Sys {
            path: mnt.into(),
            what: "waiting for the quota rescan",
            source: e,
        }),
    }
}

/// Limits the referenced bytes of the subvolume at `path` to `bytes`.
pub fn qgroup_limit(path: &Path, bytes: u64) -> Result<()> {
    let dir = open_dir(path)?;
    let mut args = QgroupLimitArgs {
        // 0: the subvolume `dir` belongs to.
        qgroupid: 0,
        lim: QgroupLimit {
            flags: QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            ..Default::default()
        },
    };
    // SAFETY: valid btrfs_ioctl_qgroup_limit_args.
    unsafe { ioc_qgroup_limit(dir.as_raw_fd(), &mut args) }
        .map_err(sys(path, "setting the qgroup limit"))?;
    Ok(())
}

/// Commits the filesystem's transaction, so qgroup figures are current.
pub fn sync(mnt: &Path) -> Result<()> {
    let dir = open_dir(mnt)?;
    // SAFETY: no argument.
    unsafe { ioc_sync(dir.as_raw_fd()) }.map_err(sys(mnt, "syncing btrfs"))?;
    Ok(())
}

/// Referenced bytes and limit (None: no limit) of qgroup 0/`id`, read from
/// the quota tree of the filesystem mounted at `mnt`.
pub fn qgroup_usage(mnt: &Path, id: u64) -> Result<(u64, Option<u64>)> {
    let dir = open_dir(mnt)?;
    let mut args = Box::new(SearchArgs {
        key: SearchKey {
            tree_id: QUOTA_TREE_OBJECTID,
            min_objectid: 0,
            max_objectid: 0,
            min_offset: id,
            max_offset: id,
            min_transid: 0,
            max_transid: u64::MAX,
            min_type: QGROUP_INFO_KEY,
            max_type: QGROUP_LIMIT_KEY,
            nr_items: 16,
            ..Default::default()
        },
        buf: [0; SEARCH_BUF],
    });
    // SAFETY: valid btrfs_ioctl_search_args.
    unsafe { ioc_tree_search(dir.as_raw_fd(), &mut *args) }
        .map_err(sys(mnt, "reading the quota tree"))?;
    let mut used = 0;
    let mut limit = None;
    let mut pos = 0usize;
    let u64_at = |b: &[u8], o: usize| -> u64 {
        b.get(o..o + 8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    for _ in 0..args.key.nr_items {
        // btrfs_ioctl_search_header: transid, objectid, offset (u64), type, len (u32).
        let Some(header) = args.buf.get(pos..pos + 32) else {
            break;
        };
        let offset = u64_at(header, 16);
        let kind = u32::from_le_bytes([header[24], header[25], header[26], header[27]]);
        let len = u32::from_le_bytes([header[28], header[29], header[30], header[31]]) as usize;
        let item = args.buf.get(pos + 32..pos + 32 + len).unwrap_or(&[]);
        if offset == id {
            match kind {
                // btrfs_qgroup_info_item: generation, rfer, ...
                QGROUP_INFO_KEY => used = u64_at(item, 8),
                // btrfs_qgroup_limit_item: flags, max_rfer, ...
                QGROUP_LIMIT_KEY if u64_at(item, 0) & QGROUP_LIMIT_MAX_RFER != 0 => {
                    limit = Some(u64_at(item, 8))
                }
                _ => {}
            }
        }
        pos += 32 + len;
    }
    Ok((used, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<VolArgs>(), 4096);
        assert_eq!(std::mem::size_of::<InoLookupArgs>(), 4096);
        assert_eq!(std::mem::size_of::<SearchKey>(), 104);
        assert_eq!(std::mem::size_of::<SearchArgs>(), 4096);
        assert_eq!(std::mem::size_of::<QgroupLimitArgs>(), 48);
    }
}
