//! Stage 1: from the initramfs into the verified, read-only system image.
//!
//! The initramfs holds this binary, the few modules needed to mount the
//! image, and `/system.img` (squashfs). The image is hashed with blake3 and
//! must equal `zeronode.root_hash` from the command line, or the boot stops.
//! It is then mounted read-only as the new root with tmpfs on /run, /var,
//! /tmp and /mnt and a tmpfs overlay on /etc, and PID 1 carries on in it.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};
use thiserror::Error;

use super::kmod;
use super::loopdev::{self, Detach, LoopError};
use super::mounts::{self, MountError};
use super::{early_hash, early_modules, parallel_hash, runtime_image};
use zeronode_types::boot_config::{hex, BootConfig};

/// The system image inside the initramfs; its presence means "stage 1".
pub const SYSTEM_IMAGE: &str = "/system.img";
/// The workspace's programs (the modules' multicall binary), which come in
/// the initramfs rather than in the system image: bound read-only at the
/// same path in the new root (an empty directory in the image, where its
/// /usr/bin links point), so a module's pages are read from RAM as they
/// are instead of inflated from the squashfs at each page fault. The image
/// builder's `PROGRAMS_DIR`.
pub const PROGRAMS: &str = "/usr/lib/zeronode/programs";
const NEW_ROOT: &str = "/newroot";
/// Where the /etc overlay keeps its writable layer, inside the new /run.
const ETC_OVERLAY: &str = "run/zeronode/etc-overlay";

#[derive(Debug, Error)]
pub enum RootError {
    #[error("no zeronode.root_hash=<blake3 hex> on the kernel command line: refusing to boot an unverified system image")]
    NoPinnedHash,
    #[error(
        "system image {path} does not match the pinned hash: expected {expected}, found {actual}"
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("zeronode.root_hash pins a system image but the initramfs holds no {path}: it came incomplete or the kernel could not unpack all of it")]
    MissingImage { path: PathBuf },
    #[error("reading the system image {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("kernel modules for the system image: {0}")]
    Modules(#[from] kmod::KmodError),
    #[error("kernel module {module} failed to load: {reason}")]
    ModuleLoad { module: String, reason: String },
    #[error(transparent)]
    Loop(#[from] LoopError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> RootError {
    let what = what.into();
    move |source| RootError::Sys { what, source }
}

/// Whether stage 1 has a system image to enter at `image`. A pinned hash
/// without the image is a refusal: going on from an initramfs that lost it
/// (a truncated download, an archive the kernel gave up on) would run a
/// node with none of its system. Neither pin nor image: PID 1 runs from
/// the root it was started on.
pub fn has_system_image(image: &Path, cfg: &BootConfig) -> Result<bool, RootError> {
    match (image.exists(), cfg.root_hash) {
        (true, _) => Ok(true),
        (false, Some(_)) => Err(RootError::MissingImage { path: image.into() }),
        (false, None) => Ok(false),
    }
}

/// Checks the image against the pinned hash. A missing pin is a refusal too.
pub fn verify(path: &Path, cfg: &BootConfig) -> Result<(), RootError> {
    let expected = cfg.root_hash.ok_or(RootError::NoPinnedHash)?;
    let actual = parallel_hash::hash_path(path).map_err(|source| RootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check(path, expected, actual)
}

/// Checks the hash the early child computed against the pinned one.
fn verify_hashed(
    path: &Path,
    cfg: &BootConfig,
    hashing: early_hash::Hashing,
) -> Result<(), RootError> {
    let expected = cfg.root_hash.ok_or(RootError::NoPinnedHash)?;
    let hashed = hashing.finish().map_err(|source| RootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(
        "system image hashed in {} ms from PID 1's start",
        hashed.took.as_millis()
    );
    check(path, expected, hashed.hash)
}

fn check(path: &Path, expected: [u8; 32], actual: [u8; 32]) -> Result<(), RootError> {
    if actual != expected {
        return Err(RootError::HashMismatch {
            path: path.to_path_buf(),
            expected: hex(&expected),
            actual: hex(&actual),
        });
    }
    Ok(())
}

/// Verifies and mounts the system image and switches root into it; PID 1
/// then goes on as stage 2 in the same process. `hashing` is the image's
/// hash under way since PID 1 started ([`early_hash::start`]); without it
/// the image is hashed here.
pub fn enter_system_image(
    cfg: &BootConfig,
    hashing: Option<early_hash::Hashing>,
) -> Result<(), RootError> {
    let t = std::time::Instant::now();
    // First, while PID 1 has no other thread to fork beside.
    let early = early_modules::start(module_index);
    if let Some(hashing) = hashing {
        let prepared = module_index().and_then(prepare);
        tracing::debug!("stage 1 modules in {} ms", t.elapsed().as_millis());
        return verify_hashed(Path::new(SYSTEM_IMAGE), cfg, hashing)
            .and(prepared)
            .and_then(|()| switch(early));
    }
    // Hashing the image and loading the modules that mount it are
    // independent and each leaves the CPUs idle part of the time (module
    // loading waits in the kernel), so they overlap. The hash starts
    // first: until now PID 1 ran alone and the other CPU idled.
    let (verified, prepared) = std::thread::scope(|scope| {
        let hashing = scope.spawn(|| {
            let r = verify(Path::new(SYSTEM_IMAGE), cfg);
            tracing::debug!("system image hashed in {} ms", t.elapsed().as_millis());
            r
        });
        let prepared = module_index().and_then(prepare);
        tracing::debug!("stage 1 modules in {} ms", t.elapsed().as_millis());
        let verified = hashing.join().unwrap_or_else(|_| {
            Err(RootError::Read {
                path: SYSTEM_IMAGE.into(),
                source: io::Error::other("the hashing thread panicked"),
            })
        });
        (verified, prepared)
    });
    verified.and(prepared).and_then(|()| switch(early))
}

fn module_index() -> Result<kmod::ModuleIndex, RootError> {
    let release = nix::sys::utsname::uname().map_err(sys("uname"))?;
    let dir = Path::new("/lib/modules").join(release.release());
    Ok(kmod::ModuleIndex::load(&dir)?)
}

fn prepare(index: kmod::ModuleIndex) -> Result<(), RootError> {
    // async_probe also spares each module's init a wait for every pending
    // asynchronous probe in the system (async_synchronize_full).
    let mut loader = kmod::Loader::new(index).with_async_probe();
    let list = std::fs::read_to_string("/etc/zeronode/modules-load").unwrap_or_default();
    let mut report = kmod::LoadReport::default();
    loader.load_many(kmod::parse_load_list(&list), &mut report);
    match report.failed.into_iter().next() {
        Some((module, reason)) => Err(RootError::ModuleLoad { module, reason }),
        None => Ok(()),
    }
}

fn switch(early: Option<early_modules::Child>) -> Result<(), RootError> {
    let new_root = Path::new(NEW_ROOT);
    let device = loopdev::attach_read_only(Path::new(SYSTEM_IMAGE), Detach::WithLastUser)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID;
    mount(
        Some(&device.path),
        new_root,
        Some("squashfs"),
        ro,
        None::<&str>,
    )
    .map_err(sys(format!(
        "mounting {} (squashfs) on {NEW_ROOT}",
        device.path.display()
    )))?;
    drop(device);
    tracing::debug!("system image mounted on {NEW_ROOT}");

    bind_programs(new_root)?;
    // Writable places, then /etc as an overlay whose upper layer lives in /run.
    mounts::mount_all(new_root, mounts::WRITABLE)?;
    // Not needed on the way to ready: kept on a loop device for the
    // `runtime` service, which verifies and mounts it later.
    runtime_image::attach(new_root);
    let overlay = new_root.join(ETC_OVERLAY);
    for d in ["upper", "work"] {
        std::fs::create_dir_all(overlay.join(d)).map_err(|source| RootError::Read {
            path: overlay.join(d),
            source,
        })?;
    }
    let etc = new_root.join("etc");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        etc.display(),
        overlay.join("upper").display(),
        overlay.join("work").display()
    );
    mount(
        Some("overlay"),
        &etc,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(opts.as_str()),
    )
    .map_err(sys(format!("mounting the /etc overlay ({opts})")))?;

    for api in ["/dev", "/proc", "/sys"] {
        let target = new_root.join(&api[1..]);
        mount(
            Some(api),
            &target,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sys(format!("moving {api} to {}", target.display())))?;
    }

    // The initramfs is RAM nobody will read again (the image stays alive
    // through its loop device), unless the early module loader still reads
    // it: then that child frees it once done and told we left.
    if early.is_none() {
        free_initramfs();
    }

    nix::unistd::chdir(new_root).map_err(sys("chdir to the new root"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the new root onto /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot into the new root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    if let Some(child) = early {
        child.leave_initramfs();
    }
    // No exec of the image's /sbin/init: it is this very binary (the builder
    // puts the same bytes in both places), and executing it again from the
    // squashfs cost 0.2-0.4 s of decompressing pages under emulation. The
    // price is the initramfs copy staying in RAM while PID 1 maps it.
    Ok(())
}

/// Binds [`PROGRAMS`] of the initramfs at the same path under `new_root`,
/// read-only. An initramfs without programs has nothing to bind.
fn bind_programs(new_root: &Path) -> Result<(), RootError> {
    let source = Path::new(PROGRAMS);
    if !source.is_dir() {
        return Ok(());
    }
    let target = new_root.join(&PROGRAMS[1..]);
    let what = || format!("binding {PROGRAMS} into the system image");
    mount(
        Some(source),
        &target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(sys(what()))?;
    let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
    mount(
        None::<&str>,
        &target,
        None::<&str>,
        ro | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(sys(format!("{} read-only", what())))
}

/// Deletes what lies on the initramfs, which must be this process's root
/// still: everything on the root's device, not crossing into mounts, but
/// [`PROGRAMS`], which the new root holds bound.
pub(super) fn free_initramfs() {
    if let Ok(meta) = std::fs::metadata("/") {
        let bytes = remove_tree_on(Path::new("/"), meta.dev(), Path::new(PROGRAMS));
        tracing::debug!("initramfs freed: {} KiB of files", bytes / 1024);
    }
}

/// Deletes what lies on device `dev` under `dir`, not crossing into mounts
/// and leaving `keep` (and the directories above it). Returns the bytes of
/// the files it deleted.
fn remove_tree_on(dir: &Path, dev: u64, keep: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut freed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev || path == keep {
            continue;
        }
        if meta.is_dir() {
            freed += remove_tree_on(&path, dev, keep);
            let _ = std::fs::remove_dir(&path);
        } else if std::fs::remove_file(&path).is_ok() {
            freed += meta.len();
        }
    }
    freed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_pinned_image_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("system.img");
        std::fs::write(&img, vec![7u8; 3 << 20]).unwrap();
        let good = *blake3::hash(&vec![7u8; 3 << 20]).as_bytes();

        let mut cfg = BootConfig::default();
        assert!(matches!(verify(&img, &cfg), Err(RootError::NoPinnedHash)));
        cfg.root_hash = Some(good);
        verify(&img, &cfg).unwrap();

        let mut bytes = std::fs::read(&img).unwrap();
        bytes[2 << 20] ^= 1;
        std::fs::write(&img, bytes).unwrap();
        let err = verify(&img, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("does not match") && err.contains(&hex(&good)),
            "{err}"
        );
    }

    #[test]
    fn a_pinned_image_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("system.img");
        let mut cfg = BootConfig::default();
        // Started on a root of its own: nothing to enter, nothing pinned.
        assert!(!has_system_image(&img, &cfg).unwrap());
        cfg.root_hash = Some([1; 32]);
        let err = has_system_image(&img, &cfg).unwrap_err().to_string();
        assert!(
            err.contains("holds no") && err.contains(&img.display().to_string()),
            "{err}"
        );
        std::fs::write(&img, b"x").unwrap();
        assert!(has_system_image(&img, &cfg).unwrap());
    }

    #[test]
    fn freeing_the_initramfs_spares_the_bound_programs() {
        let root = tempfile::tempdir().unwrap();
        let programs = root.path().join("usr/lib/zeronode/programs");
        std::fs::create_dir_all(&programs).unwrap();
        std::fs::write(programs.join("zeronode"), b"binary").unwrap();
        std::fs::create_dir_all(root.path().join("lib/modules")).unwrap();
        std::fs::write(root.path().join("lib/modules/a.ko"), b"12345").unwrap();
        std::fs::write(root.path().join("usr/lib/other"), b"1234567").unwrap();
        std::fs::write(root.path().join("init"), b"123").unwrap();
        let dev = std::fs::metadata(root.path()).unwrap().dev();

        let freed = remove_tree_on(root.path(), dev, &programs);
        assert_eq!(freed, 5 + 7 + 3);
        assert_eq!(std::fs::read(programs.join("zeronode")).unwrap(), b"binary");
        let mut left: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["usr"], "only the way to the programs stays");
    }
}
