//! The system image: a squashfs of the staged system tree, made by Debian's
//! mksquashfs with everything that could vary between builds pinned (owner,
//! times, modes, xattrs), so the same tree gives the same bytes and the
//! same root hash.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::config::SquashfsCompression;
use crate::error::{io, run, Result};

/// Writes `image` from the tree at `root` in blocks of `block_kib` KiB,
/// every entry owned by root with mtime `epoch`.
pub fn make(
    root: &Path,
    image: &Path,
    comp: SquashfsCompression,
    block_kib: u32,
    epoch: u64,
) -> Result<()> {
    normalize_modes(root)?;
    if image.exists() {
        std::fs::remove_file(image).map_err(io("removing", image))?;
    }
    let comp = match comp {
        SquashfsCompression::Zstd => "zstd",
        SquashfsCompression::Xz => "xz",
    };
    let epoch = epoch.to_string();
    run(Command::new("mksquashfs")
        .arg(root)
        .arg(image)
        .args(["-noappend", "-all-root", "-no-xattrs", "-comp", comp])
        // zstd at level 19 (xz takes its own default level); the block
        // size is the declaration's (image/zeronode.toml says why).
        // No fragments: a file smaller than a block (most kernel modules,
        // every config file) then has its own block instead of a share of a
        // 512 KiB fragment block packed with others, so reading it
        // decompresses just it. With fragments, each module coldplug loaded
        // inflated a whole fragment block, again and again as the kernel
        // keeps only 3 of them cached; under TCG that decompression was CPU
        // the boot waits for (ready came earlier in 6 of 6 paired boots,
        // ~0.25 s). It costs the system image 0.2 MB.
        .args(["-b", &(block_kib * 1024).to_string(), "-no-fragments"])
        .args(if comp == "zstd" {
            &["-Xcompression-level", "19"][..]
        } else {
            &[]
        })
        .args(["-mkfs-time", &epoch, "-all-time", &epoch])
        .args(["-quiet", "-no-progress"]))
}

/// Modes from the umask of whoever builds would make builds differ: set
/// them. Directories 0755, executables 0755, other files 0644.
pub fn normalize_modes(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", dir))?;
    for e in std::fs::read_dir(dir).map_err(io("listing", dir))? {
        let path = e.map_err(io("listing", dir))?.path();
        let meta = std::fs::symlink_metadata(&path).map_err(io("reading", &path))?;
        if meta.is_dir() {
            normalize_modes(&path)?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two trees with the same content but different modes, creation order
    /// and mtimes give the same image.
    #[test]
    fn same_tree_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let make_tree = |name: &str, mode: u32, reverse: bool| {
            let root = dir.path().join(name);
            std::fs::create_dir_all(root.join("etc")).unwrap();
            let mut files = vec![("etc/a", "one\n"), ("etc/b", "two\n"), ("init", "x")];
            if reverse {
                files.reverse();
            }
            for (f, body) in files {
                std::fs::write(root.join(f), body).unwrap();
                std::fs::set_permissions(root.join(f), std::fs::Permissions::from_mode(mode))
                    .unwrap();
            }
            std::os::unix::fs::symlink("etc/a", root.join("link")).unwrap();
            root
        };
        let a = make_tree("a", 0o600, false);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let b = make_tree("b", 0o640, true);
        let (ia, ib) = (dir.path().join("a.img"), dir.path().join("b.img"));
        make(&a, &ia, SquashfsCompression::Zstd, 128, 0).unwrap();
        make(&b, &ib, SquashfsCompression::Zstd, 128, 0).unwrap();
        let image = std::fs::read(&ia).unwrap();
        assert!(image == std::fs::read(&ib).unwrap());
        assert_eq!(&image[..4], b"hsqs");
        // The superblock's block_size (u32 at 12) is the one asked for.
        assert_eq!(image[12..16], (128u32 * 1024).to_le_bytes());
    }
}
