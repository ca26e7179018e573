//! Debian's kernel package: downloaded once into the cache, unpacked, and
//! indexed with depmod so module dependencies can be resolved at build time.

use std::collections::BTreeMap;
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
    /// Modules built again from source (see `module_rebuild`): their
    /// modules.dep path -> the file that replaces Debian's.
    pub rebuilt: BTreeMap<String, PathBuf>,
}

impl UnpackedKernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.root.join(format!("boot/vmlinuz-{}", self.release))
    }
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
    /// The file of the module at `dep_path` (as modules.dep names it):
    /// Debian's, or its rebuild.
    pub fn module_file(&self, dep_path: &str) -> PathBuf {
        match self.rebuilt.get(dep_path) {
            Some(file) => file.clone(),
            None => self.modules_dir().join(dep_path),
        }
    }
}

/// Downloads (if not cached) and unpacks (if not done) the pinned kernel.
pub fn fetch(k: &Kernel, cache: &Path) -> Result<UnpackedKernel> {
    let deb = download(&k.package, &k.version, cache, "about 70 MB")?.ok_or_else(|| {
        Error::KernelUnavailable {
            spec: format!("{}={}", k.package, k.version),
            package: k.package.clone(),
        }
    })?;
    let root = cache.join(format!("kernel-{}-{}", k.release, k.version));
    let kernel = UnpackedKernel {
        deb: deb.clone(),
        root: root.clone(),
        release: k.release.clone(),
        rebuilt: BTreeMap::new(),
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

/// `package=version` from Debian's archive into `cache`, once: the path of
/// the .deb, or None when the archive does not have that version.
pub fn download(package: &str, version: &str, cache: &Path, size: &str) -> Result<Option<PathBuf>> {
    std::fs::create_dir_all(cache).map_err(io("creating", cache))?;
    if let Some(deb) = cached_deb(package, version, cache)? {
        tracing::info!("cached: {}", deb.display());
        return Ok(Some(deb));
    }
    let spec = format!("{package}={version}");
    tracing::info!("downloading {spec} with apt-get ({size}, once: out/cache keeps it)");
    if !apt_download(&spec, cache)? {
        tracing::info!("not found; apt lists may be stale: running apt-get update");
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        if !apt_download(&spec, cache)? {
            return Ok(None);
        }
    }
    cached_deb(package, version, cache)
}

/// The file `apt-get download` wrote for `package=version`, whatever its
/// architecture (`amd64`, `all`).
fn cached_deb(package: &str, version: &str, cache: &Path) -> Result<Option<PathBuf>> {
    // apt escapes an epoch's colon in file names.
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    for entry in std::fs::read_dir(cache).map_err(io("listing", cache))? {
        let entry = entry.map_err(io("listing", cache))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
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
