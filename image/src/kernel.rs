//! Debian's kernel package: downloaded once into the cache, unpacked, and
//! indexed with depmod so module dependencies can be resolved at build time.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::config::Kernel;
use crate::error::{io, run, Error, Result};

pub struct UnpackedKernel {
    /// The downloaded package.
    pub deb: PathBuf,
    /// Root of the unpacked package (holds boot/ and lib/modules/).
    pub root: PathBuf,
    pub release: String,
}

impl UnpackedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
}

/// The cache file name `apt-get download` writes for `k`.
pub fn deb_path(k: &Kernel, cache: &Path) -> PathBuf {
    // apt escapes an epoch's colon in file names.
    cache.join(format!(
        "{}_{}_amd64.deb",
        k.package,
        k.version.replace(':', "%3a")
    ))
}

/// Downloads (if not cached) and unpacks (if not done) the pinned kernel.
pub fn fetch(k: &Kernel, cache: &Path) -> Result<UnpackedKernel> {
    std::fs::create_dir_all(cache).map_err(io("creating", cache))?;
    let deb = deb_path(k, cache);
    if deb.exists() {
        tracing::info!("kernel package cached: {}", deb.display());
    } else {
        let spec = format!("{}={}", k.package, k.version);
        tracing::info!("downloading {spec} with apt-get (about 70 MB, once: out/cache keeps it)");
        let mut ok = apt_download(&spec, cache)?;
        if !ok {
            tracing::info!("not found; apt lists may be stale: running apt-get update");
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            ok = apt_download(&spec, cache)?;
        }
        if !ok || !deb.exists() {
            return Err(Error::KernelUnavailable {
                spec,
                package: k.package.clone(),
            });
        }
    }
    let root = cache.join(format!("kernel-{}-{}", k.release, k.version));
    let kernel = UnpackedKernel {
        deb: deb.clone(),
        root: root.clone(),
        release: k.release.clone(),
    };
    // Written last: a build interrupted while unpacking starts over.
    let done = root.join(".unpacked");
    if !done.exists() {
        tracing::info!("unpacking {}", deb.display());
        if root.exists() {
            std::fs::remove_dir_all(&root).map_err(io("removing", &root))?;
        }
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        if !kernel.vmlinuz().exists() {
            return Err(Error::KernelLayout {
                deb,
                vmlinuz: kernel.vmlinuz(),
            });
        }
        depmod(&root, &k.release)?;
        std::fs::write(&done, b"").map_err(io("writing", &done))?;
    }
    Ok(kernel)
}

fn apt_download(spec: &str, dir: &Path) -> Result<bool> {
    let status = Command::new("apt-get")
        .args(["download", "-q", spec])
        .current_dir(dir)
        .status()
        .map_err(|source| Error::Spawn {
            command: "apt-get download".into(),
            source,
        })?;
    Ok(status.success())
}

/// Writes modules.dep, modules.alias, modules.softdep... for a tree rooted at `base`.
pub fn depmod(base: &Path, release: &str) -> Result<()> {
    run(Command::new("depmod").arg("-b").arg(base).arg(release))
}
