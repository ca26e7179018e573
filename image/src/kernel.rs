//! Debian's kernel package: downloaded once into the cache, unpacked, and
//! indexed with depmod so module dependencies can be resolved at build time.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::Kernel;

pub struct UnpackedKernel {
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

/// Downloads (if not cached) and unpacks (if not done) the pinned kernel.
pub fn fetch(k: &Kernel, cache: &Path) -> Result<UnpackedKernel> {
    std::fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
    let deb = cache.join(format!(
        "{}_{}_amd64.deb",
        k.package,
        k.version.replace(':', "%3a")
    ));
    if !deb.exists() {
        tracing::info!("downloading {}={} with apt-get", k.package, k.version);
        let spec = format!("{}={}", k.package, k.version);
        let mut ok = apt_download(&spec, cache)?;
        if !ok {
            tracing::info!("apt lists look stale; running apt-get update");
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            ok = apt_download(&spec, cache)?;
        }
        if !ok || !deb.exists() {
            bail!(
                "the pinned kernel {spec} cannot be downloaded from Debian's archive (it may have been superseded): \
                 pick one that `apt-cache policy 'linux-image-6.1.0-*-amd64'` lists and update [kernel] in image/zeronode.toml"
            );
        }
    }
    let root = cache.join(format!("kernel-{}-{}", k.release, k.version));
    let done = root.join(".unpacked");
    if !done.exists() {
        tracing::info!("unpacking {}", deb.display());
        let _ = std::fs::remove_dir_all(&root);
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let kernel = UnpackedKernel {
            root: root.clone(),
            release: k.release.clone(),
        };
        if !kernel.vmlinuz().exists() {
            bail!(
                "{} holds no {}: is kernel.release right?",
                deb.display(),
                kernel.vmlinuz().display()
            );
        }
        depmod(&root, &k.release)?;
        std::fs::write(&done, b"").with_context(|| format!("writing {}", done.display()))?;
    }
    Ok(UnpackedKernel {
        root,
        release: k.release.clone(),
    })
}

fn apt_download(spec: &str, dir: &Path) -> Result<bool> {
    let status = Command::new("apt-get")
        .args(["download", "-qq", spec])
        .current_dir(dir)
        .status()
        .context("running apt-get download")?;
    Ok(status.success())
}

/// Writes modules.dep, modules.alias, modules.softdep... for a tree rooted at `base`.
pub fn depmod(base: &Path, release: &str) -> Result<()> {
    run(Command::new("depmod").arg("-b").arg(base).arg(release))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
