//! Volumes for workloads: a btrfs subvolume `volumes/<name>` on a pool,
//! its size limited by the subvolume's qgroup; and pool usage.

use std::path::{Path, PathBuf};

use nix::sys::statvfs::statvfs;

use crate::btrfs;
use crate::error::{io, sys, Result, StorageError};
use crate::node::Pool;
use crate::probe::MIB;

/// The directory of a pool that holds the volumes.
pub const VOLUMES_DIR: &str = "volumes";
/// The smallest volume: btrfs needs room for its own metadata.
pub const MIN_VOLUME_BYTES: u64 = MIB;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub pool: String,
    pub path: PathBuf,
    /// Bytes referenced by the volume (its qgroup's rfer).
    pub used: u64,
    /// Its size limit, 0 when it has none.
    pub limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub size: u64,
    pub used: u64,
    pub free: u64,
}

/// Size, used and free (available to writers) bytes of the filesystem at `path`.
pub fn usage(path: &Path) -> Result<Usage> {
    let st = statvfs(path).map_err(sys(path, "statvfs"))?;
    let frsize = st.fragment_size();
    let size = st.blocks() * frsize;
    let used = (st.blocks() - st.blocks_free()) * frsize;
    Ok(Usage {
        size,
        used,
        free: st.blocks_available() * frsize,
    })
}

/// Volume names: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn check_name(name: &str) -> Result<()> {
    let bad = |reason| StorageError::BadVolumeName {
        name: name.into(),
        reason,
    };
    if name.is_empty() || name.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if name.starts_with('.') {
        return Err(bad("must not start with a dot"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(bad("may hold only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

fn find(pools: &[Pool], name: &str) -> Option<(Pool, PathBuf)> {
    pools.iter().find_map(|p| {
        let path = p.mount_point.join(VOLUMES_DIR).join(name);
        btrfs::is_subvolume(&path).then(|| (p.clone(), path))
    })
}

/// Creates volume `name` limited to `size` bytes on the pool with the most
/// free space; returns its path.
pub fn create(pools: &[Pool], name: &str, size: u64) -> Result<PathBuf> {
    check_name(name)?;
    if pools.is_empty() {
        return Err(StorageError::NoPool);
    }
    if find(pools, name).is_some() {
        return Err(StorageError::VolumeExists(name.into()));
    }
    if size < MIN_VOLUME_BYTES {
        return Err(StorageError::BadSize {
            size,
            reason: format!("below the minimum of {MIN_VOLUME_BYTES}"),
        });
    }
    let mut best: Option<(&Pool, Usage)> = None;
    for p in pools {
        let u = usage(&p.mount_point)?;
        if best.is_none_or(|(_, b)| u.free > b.free) {
            best = Some((p, u));
        }
    }
    let Some((pool, u)) = best else {
        return Err(StorageError::NoPool);
    };
    if size > u.size {
        return Err(StorageError::BadSize {
            size,
            reason: format!(
                "larger than the biggest pool {} ({} bytes)",
                pool.label, u.size
            ),
        });
    }
    let dir = pool.mount_point.join(VOLUMES_DIR);
    std::fs::create_dir_all(&dir).map_err(io(&dir, "creating the volumes directory"))?;
    btrfs::quota_enable(&pool.mount_point)?;
    btrfs::subvolume_create(&dir, name)?;
    let path = dir.join(name);
    if let Err(e) = btrfs::qgroup_limit(&path, size) {
        // A volume without its limit must not stay behind.
        if let Err(undo) = btrfs::subvolume_delete(&dir, name) {
            tracing::error!("{}: removing after a failed limit: {undo}", path.display());
        }
        return Err(e);
    }
    tracing::info!("volume {name} created on {} ({size} bytes)", pool.label);
    Ok(path)
}

/// Deletes volume `name` and everything in it.
pub fn delete(pools: &[Pool], name: &str) -> Result<()> {
    check_name(name)?;
    let (pool, path) = find(pools, name).ok_or_else(|| StorageError::NoSuchVolume(name.into()))?;
    btrfs::subvolume_delete(&pool.mount_point.join(VOLUMES_DIR), name)?;
    tracing::info!(
        "volume {name} deleted from {} ({})",
        pool.label,
        path.display()
    );
    Ok(())
}

/// Every volume of every pool, with its usage and limit.
pub fn list(pools: &[Pool]) -> Result<Vec<Volume>> {
    let mut out = Vec::new();
    for p in pools {
        let dir = p.mount_point.join(VOLUMES_DIR);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        // Qgroup figures are updated at transaction commit.
        btrfs::sync(&p.mount_point)?;
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| btrfs::is_subvolume(&dir.join(n)))
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let id = btrfs::subvolume_id(&path)?;
            let (used, limit) = btrfs::qgroup_usage(&p.mount_point, id)?;
            out.push(Volume {
                name,
                pool: p.label.clone(),
                path,
                used,
                limit: limit.unwrap_or(0),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_names() {
        for good in ["a", "web-1", "db_data.v2", &"x".repeat(64)] {
            check_name(good).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "a b", "é", &"x".repeat(65)] {
            let e = check_name(bad).unwrap_err().to_string();
            assert!(e.contains("volume name"), "{e}");
        }
    }

    #[test]
    fn no_pool_no_volume() {
        assert!(matches!(
            create(&[], "v", 1 << 30),
            Err(StorageError::NoPool)
        ));
    }

    #[test]
    fn usage_of_root() {
        let u = usage(Path::new("/")).unwrap();
        assert!(u.size > 0 && u.used <= u.size && u.free <= u.size);
    }
}
