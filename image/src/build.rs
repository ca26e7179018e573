//! The whole build: from zeronode.toml and the musl binaries to every
//! artifact in the output directory. Each step logs what it made and how big.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::ImageConfig;
use crate::cpio::{self, Entry, Kind};
use crate::kernel::{self, run};
use crate::{disk, modules, uki};

pub struct Inputs {
    pub config: PathBuf,
    pub services: PathBuf,
    /// Directory holding the static `zeronode-init` and `baseline-init`.
    pub bins: PathBuf,
    pub cache: PathBuf,
    pub out: PathBuf,
}

#[derive(Serialize)]
struct Manifest {
    kernel: String,
    git_commit: String,
    root_hash: String,
    cmdline: String,
    artifacts: Vec<Artifact>,
}

#[derive(Serialize)]
struct Artifact {
    name: String,
    size: u64,
    blake3: String,
}

pub fn build(inp: &Inputs) -> Result<()> {
    let cfg = ImageConfig::load(&inp.config)?;
    let (commit, epoch) = git_commit();
    let work = inp.out.join("build");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    std::fs::create_dir_all(&inp.out)?;

    let k = kernel::fetch(&cfg.kernel, &inp.cache)?;
    tracing::info!("kernel {} ready", k.release);

    // The system tree, then its squashfs.
    let sys = work.join("system");
    let n = modules::stage(&k, &cfg.system.modules, &sys)?;
    tracing::info!("system image: {n} kernel modules");
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "var",
        "tmp",
        "mnt",
        "root",
        "sbin",
        "usr/bin",
        "etc/zeronode/services",
    ] {
        std::fs::create_dir_all(sys.join(d))?;
    }
    copy_exec(
        &inp.bins.join("zeronode-init"),
        &sys.join("usr/bin/zeronode-init"),
    )?;
    std::os::unix::fs::symlink("../usr/bin/zeronode-init", sys.join("sbin/init"))?;
    // The kernel's request_module() runs /sbin/modprobe; PID 1's binary answers.
    std::os::unix::fs::symlink("../usr/bin/zeronode-init", sys.join("sbin/modprobe"))?;
    let etc = sys.join("etc");
    std::fs::write(etc.join("zeronode/modules-load"), lines(&cfg.system.load))?;
    std::fs::write(
        etc.join("zeronode/release"),
        format!(
            "NAME=ZeroNode\nVERSION={}\nGIT_COMMIT={commit}\nKERNEL={}\n",
            env!("CARGO_PKG_VERSION"),
            k.release
        ),
    )?;
    std::fs::write(etc.join("hostname"), "zeronode\n")?;
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n")?;
    std::fs::write(etc.join("group"), "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")?;
    let mut services = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&inp.services) {
        for e in entries
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        {
            std::fs::copy(e.path(), etc.join("zeronode/services").join(e.file_name()))?;
            services.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    services.sort();
    tracing::info!(
        "services: {}",
        if services.is_empty() {
            "none".into()
        } else {
            services.join(" ")
        }
    );
    normalize_modes(&sys)?;
    let system_img = work.join("system.img");
    run(Command::new("mksquashfs")
        .arg(&sys)
        .arg(&system_img)
        .args([
            "-noappend",
            "-all-root",
            "-no-xattrs",
            "-comp",
            "zstd",
            "-quiet",
            "-no-progress",
        ])
        .args([
            "-mkfs-time",
            &epoch.to_string(),
            "-all-time",
            &epoch.to_string(),
        ]))?;
    let system_bytes = std::fs::read(&system_img)?;
    let root_hash = blake3::hash(&system_bytes).to_hex().to_string();
    tracing::info!(
        "system.img: {} (blake3 {root_hash})",
        size(system_bytes.len() as u64)
    );

    // The initramfs: stage 1 and the image it verifies.
    let ird = work.join("initramfs");
    modules::stage(&k, &cfg.initramfs.modules, &ird)?;
    let mut entries = vec![
        Entry::dir("dev"),
        Entry::char_dev("dev/console", 0o600, 5, 1),
        Entry::dir("proc"),
        Entry::dir("sys"),
        Entry::dir("run"),
        Entry::dir("newroot"),
        Entry::dir("etc"),
        Entry::dir("etc/zeronode"),
        Entry::file(
            "etc/zeronode/modules-load",
            0o644,
            lines(&cfg.initramfs.modules).into_bytes(),
        ),
        Entry::file("init", 0o755, read(&inp.bins.join("zeronode-init"))?),
        Entry::file("system.img", 0o444, system_bytes),
    ];
    tree_entries(&ird, &ird, &mut entries)?;
    // Uncompressed: the bulk is the squashfs, compressed already; the kernel
    // unpacks a plain cpio fastest.
    let initramfs = inp.out.join("initramfs.img");
    write_cpio(&initramfs, &entries, epoch)?;

    let cmdline = std::iter::once("console=ttyS0,115200".to_string())
        .chain(std::iter::once(format!("zeronode.root_hash={root_hash}")))
        .chain(cfg.cmdline.extra.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(inp.out.join("cmdline"), format!("{cmdline}\n"))?;
    std::fs::copy(k.vmlinuz(), inp.out.join("vmlinuz"))?;
    std::fs::write(
        inp.out.join("boot.ipxe"),
        format!("#!ipxe\necho ZeroNode: loading kernel and initramfs\nkernel vmlinuz {cmdline}\ninitrd initramfs.img\nboot\n"),
    )?;

    // UEFI: the unified kernel image, and a USB stick image around it.
    let osrel = work.join("os-release");
    std::fs::write(
        &osrel,
        format!(
            "NAME=ZeroNode\nID=zeronode\nVERSION_ID={}\nBUILD_ID={commit}\n",
            env!("CARGO_PKG_VERSION")
        ),
    )?;
    let cmdline_file = work.join("cmdline");
    std::fs::write(&cmdline_file, &cmdline)?;
    let efi = inp.out.join("zeronode.efi");
    uki::build(&efi, &osrel, &cmdline_file, &k.vmlinuz(), &initramfs, epoch)?;
    let efi_bytes = std::fs::read(&efi)?;
    tracing::info!("zeronode.efi: {}", size(efi_bytes.len() as u64));
    let seed = blake3::hash(&efi_bytes);
    let volume_id = u32::from_le_bytes(seed.as_bytes()[..4].try_into().unwrap_or_default());
    let esp = disk::fat_image(&[("EFI/BOOT/BOOTX64.EFI", &efi_bytes)], volume_id)?;
    let img = inp.out.join("zeronode.img");
    std::fs::write(&img, disk::gpt_disk(&esp, seed.as_bytes()))?;
    let qcow2 = inp.out.join("zeronode.qcow2");
    let _ = std::fs::remove_file(&qcow2);
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&qcow2))?;

    // The trivial /init that the boot benchmark measures ours against.
    let baseline = vec![
        Entry::dir("dev"),
        Entry::char_dev("dev/console", 0o600, 5, 1),
        Entry::file("init", 0o755, read(&inp.bins.join("baseline-init"))?),
    ];
    write_cpio(&inp.out.join("baseline-initramfs.img"), &baseline, epoch)?;

    let mut artifacts = Vec::new();
    for name in [
        "vmlinuz",
        "initramfs.img",
        "zeronode.efi",
        "zeronode.img",
        "zeronode.qcow2",
        "boot.ipxe",
        "cmdline",
        "baseline-initramfs.img",
    ] {
        let bytes = read(&inp.out.join(name))?;
        artifacts.push(Artifact {
            name: name.into(),
            size: bytes.len() as u64,
            blake3: blake3::hash(&bytes).to_hex().to_string(),
        });
        tracing::info!("{name}: {}", size(bytes.len() as u64));
    }
    let manifest = Manifest {
        kernel: k.release.clone(),
        git_commit: commit,
        root_hash,
        cmdline,
        artifacts,
    };
    std::fs::write(
        inp.out.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)? + "\n",
    )?;
    std::fs::remove_dir_all(&work).ok();
    tracing::info!("artifacts in {}", inp.out.display());
    Ok(())
}

fn lines(items: &[String]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn copy_exec(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} (built for musl?)", from.display()))?;
    Ok(())
}

fn write_cpio(path: &Path, entries: &[Entry], epoch: u32) -> Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    let n = cpio::write(&mut file, entries, epoch)?;
    std::io::Write::flush(&mut file)?;
    tracing::info!(
        "{}: {}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        size(n)
    );
    Ok(())
}

/// Every file and directory under `dir` as cpio entries, paths relative to `root`.
fn tree_entries(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let path = e.path();
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            out.push(Entry::dir(&rel));
            tree_entries(root, &path, out)?;
        } else if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?.to_string_lossy().into_owned();
            out.push(Entry {
                path: rel,
                mode: 0o777,
                kind: Kind::Symlink(target),
            });
        } else {
            out.push(Entry::file(&rel, 0o644, read(&path)?));
        }
    }
    Ok(())
}

/// Modes from the umask of whoever builds would make builds differ: set
/// them. Directories 0755, executables 0755, other files 0644.
fn normalize_modes(dir: &Path) -> Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        let meta = std::fs::symlink_metadata(e.path())?;
        if meta.is_dir() {
            normalize_modes(&e.path())?;
        } else if meta.is_file() {
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

/// The commit being built and its time (the build's fixed timestamp).
fn git_commit() -> (String, u32) {
    let out = Command::new("git")
        .args(["log", "-1", "--format=%H %ct"])
        .output();
    let text = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match text.as_deref().and_then(|t| t.split_once(' ')) {
        Some((h, t)) => (h.to_string(), t.parse().unwrap_or(0)),
        None => ("unknown".into(), 0),
    }
}

pub fn size(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
}
