//! The whole build: from zeronode.toml and the musl binaries to every
//! artifact in the output directory. Each step logs what it made, how big,
//! and how long it took. A build whose inputs all hash the same as the last
//! one's (manifest.json's `inputs`) does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::config::{ImageConfig, PROGRAMS_DIR, RUNTIME_HASH_FILE, RUNTIME_MOUNT};
use crate::cpio::{self, Entry};
use crate::error::{io, run, Result};
use crate::kernel::{self, UnpackedKernel};
use crate::manifest::{Artifact, Manifest};
use crate::module_rebuild;
use crate::{compress, elf, fat, gpt, kmod, pvh, squashfs, uki};

pub struct Inputs {
    pub config: PathBuf,
    pub services: PathBuf,
    /// Directory holding the static `zeronode-init`, `baseline-init` and the
    /// config's `programs`.
    pub bins: PathBuf,
    pub cache: PathBuf,
    pub out: PathBuf,
    /// Build even if the inputs are unchanged.
    pub force: bool,
}

/// The artifacts in manifest order.
pub const ARTIFACTS: &[&str] = &[
    "vmlinuz",
    "vmlinux",
    "initramfs.img",
    "cmdline",
    "boot.ipxe",
    "zeronode.efi",
    "zeronode.img",
    "zeronode.qcow2",
    "baseline-initramfs.img",
];

/// What the build is made from, read up front so it can be hashed.
struct Sources {
    cfg: ImageConfig,
    config_text: Vec<u8>,
    kernel: UnpackedKernel,
    init: Vec<u8>,
    /// The config's `programs`: name and bytes.
    programs: Vec<(String, Vec<u8>)>,
    baseline: Vec<u8>,
    services: Vec<(String, Vec<u8>)>,
    debian: elf::Closure,
    /// The runtime binaries' closure, less what `debian` holds.
    runtime: elf::Closure,
    git: GitInfo,
    epoch: u64,
}

pub fn build(inp: &Inputs) -> Result<Manifest> {
    let started = Instant::now();
    let cfg = ImageConfig::load(&inp.config)?;
    let config_text = std::fs::read(&inp.config).map_err(io("reading", &inp.config))?;
    let git = git_info(inp.config.parent().unwrap_or(Path::new(".")));
    let epoch = source_date_epoch(&git);
    tracing::info!(
        "ZeroNode {} at {}, timestamps {epoch}",
        cfg.release.version,
        git.describe()
    );

    let mut kernel = kernel::fetch(&cfg.kernel, &inp.cache)?;
    module_rebuild::rebuild_all(&cfg.kernel, &inp.cache, &mut kernel)?;
    let init = read(&inp.bins.join("zeronode-init"))?;
    let programs = cfg
        .system
        .programs
        .iter()
        .map(|name| Ok((name.clone(), read(&inp.bins.join(name))?)))
        .collect::<Result<Vec<_>>>()?;
    let baseline = read(&inp.bins.join("baseline-init"))?;
    let services = service_files(&inp.services)?;
    let debian = elf::closure(Path::new("/"), &cfg.system.binaries)?;
    let mut runtime = elf::closure(Path::new("/"), &cfg.runtime.binaries)?;
    runtime.retain(|path, _| !debian.contains_key(path));
    let src = Sources {
        cfg,
        config_text,
        kernel,
        init,
        programs,
        baseline,
        services,
        debian,
        runtime,
        git,
        epoch,
    };

    let inputs = inputs_digest(&src)?;
    if !inp.force {
        if let Some(m) = Manifest::read(&inp.out) {
            if m.inputs == inputs && m.artifacts.len() == ARTIFACTS.len() && m.intact(&inp.out) {
                tracing::info!(
                    "up to date: inputs unchanged ({}), artifacts intact in {}",
                    &inputs[..16],
                    inp.out.display()
                );
                return Ok(m);
            }
        }
    }
    std::fs::create_dir_all(&inp.out).map_err(io("creating", &inp.out))?;
    // Stale outputs must not pass for new ones if this build fails.
    let _ = std::fs::remove_file(inp.out.join("manifest.json"));
    let work = inp.out.join(".build");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
    }
    std::fs::create_dir_all(&work).map_err(io("creating", &work))?;

    let (root_hash, runtime_hash) = step("system image", || system_image(&src, inp, &work))?;
    let initramfs = inp.out.join("initramfs.img");
    step("initramfs", || initramfs_image(&src, &work, &initramfs))?;

    let cmdline = std::iter::once("console=ttyS0,115200".to_string())
        .chain(std::iter::once(format!("zeronode.root_hash={root_hash}")))
        .chain(src.cfg.cmdline.extra.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    write(&inp.out.join("cmdline"), format!("{cmdline}\n").as_bytes())?;
    let vmlinuz = inp.out.join("vmlinuz");
    std::fs::copy(src.kernel.vmlinuz(), &vmlinuz).map_err(io("copying", src.kernel.vmlinuz()))?;
    step("kernel ELF for direct boot", || {
        let bzimage = std::fs::read(&vmlinuz).map_err(io("reading", &vmlinuz))?;
        write(&inp.out.join("vmlinux"), &pvh::vmlinux(&bzimage)?)
    })?;
    write(
        &inp.out.join("boot.ipxe"),
        format!(
            "#!ipxe\necho {} {}: loading kernel and initramfs\nkernel vmlinuz {cmdline}\ninitrd initramfs.img\nboot\n",
            src.cfg.release.name, src.cfg.release.version
        )
        .as_bytes(),
    )?;

    step("UEFI images", || {
        uefi_images(&src, &work, &inp.out, &cmdline)
    })?;
    step("baseline initramfs", || {
        let entries = vec![
            Entry::dir("dev"),
            Entry::char_dev("dev/console", 0o600, 5, 1),
            Entry::file("init", 0o755, src.baseline.clone()),
        ];
        write_cpio(&inp.out.join("baseline-initramfs.img"), &entries, &[], &src)
    })?;

    let mut artifacts = Vec::new();
    for name in ARTIFACTS {
        let a = Artifact::of(&inp.out, name)?;
        tracing::info!("  {name:<24} {:>10}  {}", size(a.size), &a.blake3[..16]);
        artifacts.push(a);
    }
    let manifest = Manifest {
        name: src.cfg.release.name.clone(),
        version: src.cfg.release.version.clone(),
        kernel: src.kernel.release.clone(),
        kernel_package: format!("{}={}", src.cfg.kernel.package, src.cfg.kernel.version),
        git_commit: src.git.describe(),
        source_date_epoch: src.epoch,
        root_hash,
        runtime_hash,
        cmdline,
        initramfs_compression: format!("{:?}", src.cfg.initramfs.compression).to_lowercase(),
        inputs,
        artifacts,
    };
    manifest.write(&inp.out)?;
    std::fs::remove_dir_all(&work).map_err(io("removing", &work))?;
    tracing::info!(
        "artifacts in {} ({:.1} s)",
        inp.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// Stages the runtime binaries' files and makes runtime.img, linking each
/// file's path in the system tree `sys` to it under RUNTIME_MOUNT; returns
/// its blake3 hex, or None when the image declares no runtime.
fn runtime_image(src: &Sources, work: &Path, sys: &Path) -> Result<Option<String>> {
    if src.runtime.is_empty() {
        return Ok(None);
    }
    let tree = work.join("runtime");
    elf::install_behind(&src.runtime, &tree, sys, RUNTIME_MOUNT)?;
    tracing::info!(
        "  {} runtime binaries, {} files with their libraries",
        src.cfg.runtime.binaries.len(),
        src.runtime.len()
    );
    squashfs_image(src, &tree, work, "runtime.img", src.cfg.runtime.block_kib).map(Some)
}

/// Stages the system tree and makes system.img (and runtime.img, whose
/// hash the system image holds); returns their blake3 hex.
fn system_image(src: &Sources, inp: &Inputs, work: &Path) -> Result<(String, Option<String>)> {
    let sys = work.join("system");
    let modules = kmod::stage(
        &src.kernel,
        &src.cfg.system.modules,
        &[],
        &src.cfg.kernel,
        &sys,
    )?;
    tracing::info!("  {} kernel modules with their dependencies", modules.len());
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
        std::fs::create_dir_all(sys.join(d)).map_err(io("creating", sys.join(d)))?;
    }
    write(&sys.join("usr/bin/zeronode-init"), &src.init)?;
    make_executable(&sys.join("usr/bin/zeronode-init"))?;
    // The programs themselves are in the initramfs (see initramfs_image).
    let programs = sys.join(PROGRAMS_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&programs).map_err(io("creating", &programs))?;
    for (name, _) in &src.programs {
        let target = format!("..{}/{name}", PROGRAMS_DIR.trim_start_matches("/usr"));
        symlink(&target, &sys.join("usr/bin").join(name))?;
    }
    for name in &src.cfg.system.multicall {
        symlink(crate::config::MULTICALL, &sys.join("usr/bin").join(name))?;
    }
    symlink("../usr/bin/zeronode-init", &sys.join("sbin/init"))?;
    // The kernel's request_module() runs /sbin/modprobe; PID 1's binary answers.
    symlink("../usr/bin/zeronode-init", &sys.join("sbin/modprobe"))?;
    let etc = sys.join("etc");
    write(
        &etc.join("zeronode/modules-load"),
        lines(&src.cfg.system.load).as_bytes(),
    )?;
    write(
        &etc.join("zeronode/release"),
        format!(
            "NAME={}\nVERSION={}\nGIT_COMMIT={}\nKERNEL={}\n",
            src.cfg.release.name,
            src.cfg.release.version,
            src.git.describe(),
            src.kernel.release
        )
        .as_bytes(),
    )?;
    write(&etc.join("hostname"), b"zeronode\n")?;
    write(
        &etc.join("passwd"),
        b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )?;
    write(
        &etc.join("group"),
        b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
    )?;
    for (name, body) in &src.services {
        write(&etc.join("zeronode/services").join(name), body)?;
    }
    for f in &src.cfg.system.files {
        let path = sys.join(f.path.trim_start_matches('/'));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        write(&path, f.text.as_bytes())?;
    }
    let names: Vec<&str> = src.services.iter().map(|(n, _)| n.as_str()).collect();
    tracing::info!(
        "  services from {}: {}",
        inp.services.display(),
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    );
    if !src.debian.is_empty() {
        elf::install(&src.debian, &sys)?;
        tracing::info!(
            "  {} Debian binaries, {} files with their libraries",
            src.cfg.system.binaries.len(),
            src.debian.len()
        );
    }
    let runtime_hash = runtime_image(src, work, &sys)?;
    if let Some(hash) = &runtime_hash {
        let mount = sys.join(RUNTIME_MOUNT.trim_start_matches('/'));
        std::fs::create_dir_all(&mount).map_err(io("creating", &mount))?;
        write(
            &sys.join(RUNTIME_HASH_FILE.trim_start_matches('/')),
            format!("{hash}\n").as_bytes(),
        )?;
    }
    let block_kib = src.cfg.system.block_kib;
    let root_hash = squashfs_image(src, &sys, work, "system.img", block_kib)?;
    Ok((root_hash, runtime_hash))
}

/// Makes `work/name` from `tree` as the declaration says; returns its blake3 hex.
fn squashfs_image(
    src: &Sources,
    tree: &Path,
    work: &Path,
    name: &str,
    block_kib: u32,
) -> Result<String> {
    squashfs::make(
        tree,
        &work.join(name),
        src.cfg.system.compression,
        block_kib,
        src.epoch,
    )?;
    let a = Artifact::of(work, name)?;
    tracing::info!("  {name} {} blake3 {}", size(a.size), a.blake3);
    Ok(a.blake3)
}

/// Stage 1: PID 1, /dev/console, the modules to mount the system image,
/// and the image itself.
fn initramfs_image(src: &Sources, work: &Path, out: &Path) -> Result<()> {
    let stage1 = work.join("initramfs");
    let wanted = [&src.cfg.initramfs.modules[..], &src.cfg.initramfs.early[..]].concat();
    kmod::stage(
        &src.kernel,
        &wanted,
        &src.cfg.initramfs.soft_left_out,
        &src.cfg.kernel,
        &stage1,
    )?;
    let image = work.join("system.img");
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
            lines(&src.cfg.initramfs.modules).into_bytes(),
        ),
        Entry::file(
            "etc/zeronode/modules-early",
            0o644,
            lines(&src.cfg.initramfs.early).into_bytes(),
        ),
        Entry::file("init", 0o755, src.init.clone()),
    ];
    entries.extend(cpio::tree_entries(&stage1)?);
    // The workspace's programs (the modules' multicall binary) are read
    // from RAM as they are, where the squashfs would inflate each page a
    // module touches (zstd, ~0.3 s of CPU under TCG for all of it), and the
    // system image is smaller to hash. PID 1 binds this directory into the
    // new root; the kernel's unpack of the initramfs overlaps its own start,
    // and 10.6 MB more in it did not move /init (mean +2 ms, 10 paired boots).
    let mut dir = String::new();
    for part in PROGRAMS_DIR.trim_start_matches('/').split('/') {
        dir = if dir.is_empty() {
            part.into()
        } else {
            format!("{dir}/{part}")
        };
        entries.push(Entry::dir(&dir));
    }
    for (name, bytes) in &src.programs {
        entries.push(Entry::file(&format!("{dir}/{name}"), 0o755, bytes.clone()));
    }
    // The squashfs images are compressed already: stored, not compressed again.
    let mut stored = vec![Entry::file("system.img", 0o444, read(&image)?)];
    if !src.runtime.is_empty() {
        stored.push(Entry::file(
            "runtime.img",
            0o444,
            read(&work.join("runtime.img"))?,
        ));
    }
    write_cpio(out, &entries, &stored, src)
}

/// The UKI, the USB stick image around it, and its qcow2.
fn uefi_images(src: &Sources, work: &Path, out: &Path, cmdline: &str) -> Result<()> {
    let osrel = work.join("os-release");
    write(
        &osrel,
        format!(
            "NAME={}\nID=zeronode\nVERSION_ID={}\nBUILD_ID={}\n",
            src.cfg.release.name,
            src.cfg.release.version,
            src.git.describe()
        )
        .as_bytes(),
    )?;
    let cmdline_file = work.join("cmdline");
    write(&cmdline_file, cmdline.as_bytes())?;
    let efi = out.join("zeronode.efi");
    uki::build(
        &efi,
        &osrel,
        &cmdline_file,
        &src.kernel.vmlinuz(),
        &out.join("initramfs.img"),
        u32::try_from(src.epoch).unwrap_or(u32::MAX),
    )?;
    let efi_bytes = read(&efi)?;
    tracing::info!("  zeronode.efi {}", size(efi_bytes.len() as u64));
    let seed = blake3::hash(&efi_bytes);
    let [a, b, c, d, ..] = *seed.as_bytes();
    let esp = fat::image(
        &[("EFI/BOOT/BOOTX64.EFI", &efi_bytes)],
        u32::from_le_bytes([a, b, c, d]),
    )?;
    let img = out.join("zeronode.img");
    write(&img, &gpt::disk(&esp, seed.as_bytes()))?;
    let qcow2 = out.join("zeronode.qcow2");
    if qcow2.exists() {
        std::fs::remove_file(&qcow2).map_err(io("removing", &qcow2))?;
    }
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&img)
        .arg(&qcow2))
}

/// Runs one build step, logging its duration.
fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    tracing::info!("{name}...");
    let t = Instant::now();
    let r = f()?;
    tracing::info!("{name}: done in {:.1} s", t.elapsed().as_secs_f64());
    Ok(r)
}

/// blake3 over everything that decides the artifacts' bytes, the builder
/// itself included (a changed builder may build differently).
fn inputs_digest(src: &Sources) -> Result<String> {
    let mut h = blake3::Hasher::new();
    let mut part = |label: &str, bytes: &[u8]| {
        h.update(label.as_bytes());
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    let exe = std::env::current_exe().map_err(io("locating", "the builder"))?;
    part("builder", &read(&exe)?);
    part("config", &src.config_text);
    part("init", &src.init);
    for (name, bytes) in &src.programs {
        part(name, bytes);
    }
    part("baseline", &src.baseline);
    for (name, body) in &src.services {
        part(name, body);
    }
    part("kernel", &read(&src.kernel.deb)?);
    for (path, file) in &src.kernel.rebuilt {
        part(path, &read(file)?);
    }
    part("stub", &read(Path::new(uki::STUB))?);
    for (path, item) in src.debian.iter().chain(&src.runtime) {
        match item {
            elf::Item::File(host) => part(path, &read(host)?),
            elf::Item::Link(target) => part(path, target.as_bytes()),
        }
    }
    // The tools that write bytes into the artifacts: a new version may
    // write different ones.
    for tool in [
        &["mksquashfs", "-version"][..],
        &["objcopy", "--version"],
        &["depmod", "--version"],
        &["qemu-img", "--version"],
    ] {
        let out = Command::new(tool[0])
            .args(&tool[1..])
            .output()
            .map_err(|source| crate::Error::Spawn {
                command: tool.join(" "),
                source,
            })?;
        part(tool[0], &out.stdout);
    }
    part("git", src.git.describe().as_bytes());
    part("epoch", &src.epoch.to_le_bytes());
    Ok(h.finalize().to_hex().to_string())
}

fn service_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        // No directory: an image without services (git keeps no empty dirs).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", dir)(e)),
    };
    for e in entries {
        let path = e.map_err(io("listing", dir))?.path();
        if path.extension().is_some_and(|x| x == "toml") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((name, read(&path)?));
        }
    }
    out.sort();
    Ok(out)
}

fn write_cpio(path: &Path, entries: &[Entry], stored: &[Entry], src: &Sources) -> Result<()> {
    let how = src.cfg.initramfs.compression;
    let mtime = u32::try_from(src.epoch).unwrap_or(u32::MAX);
    let bytes =
        compress::initramfs(entries, stored, how, mtime).map_err(io("writing cpio", path))?;
    write(path, &bytes)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let how = format!("{how:?}").to_lowercase();
    let stored = if stored.is_empty() {
        ""
    } else {
        ", the squashfs images stored as they are"
    };
    tracing::info!("  {name} {} ({how}{stored})", size(bytes.len() as u64));
    Ok(())
}

fn lines(items: &[String]) -> String {
    items.iter().map(|i| format!("{i}\n")).collect()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(io("reading", path))
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(path, bytes).map_err(io("writing", path))
}

fn symlink(target: &str, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(io("creating symlink", at))
}

fn make_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(io("setting the mode of", path))
}

pub struct GitInfo {
    pub commit: String,
    pub time: Option<u64>,
    pub dirty: bool,
}

impl GitInfo {
    /// The commit, with `-dirty` when the work tree has uncommitted changes.
    pub fn describe(&self) -> String {
        if self.dirty {
            format!("{}-dirty", self.commit)
        } else {
            self.commit.clone()
        }
    }
}

/// The commit being built, its time, and whether the tree differs from it.
fn git_info(dir: &Path) -> GitInfo {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let log = git(&["log", "-1", "--format=%H %ct"]);
    let Some((commit, time)) = log.as_deref().and_then(|t| t.split_once(' ')) else {
        return GitInfo {
            commit: "unknown".into(),
            time: None,
            dirty: false,
        };
    };
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    GitInfo {
        commit: commit.into(),
        time: time.parse().ok(),
        dirty,
    }
}

/// SOURCE_DATE_EPOCH if set, else the commit's time, else 0.
fn source_date_epoch(git: &GitInfo) -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .or(git.time)
        .unwrap_or(0)
}

pub fn size(n: u64) -> String {
    if n < 1 << 20 {
        format!("{:.1} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}
