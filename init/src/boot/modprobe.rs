//! The kernel's own module requests (request_module: a crypto algorithm, a
//! filesystem, a netlink family, the bridge for `ip link add type bridge`).
//!
//! The kernel runs the program named in /proc/sys/kernel/modprobe with
//! `-q -- NAME`. PID 1 points it at [`LINK`], a link to its own binary
//! (/proc/1/exe), whose pages, and whose module index code, are in memory
//! already: /sbin/modprobe is the same program, but a copy in the system
//! image that nothing else runs, which a request would first read and
//! decompress. Before the ready line a request runs at [`NICE_UNTIL_READY`]:
//! PID 1 loads what the way to ready needs itself (early list, coldplug),
//! so what the kernel asks for then is for services that yield until ready
//! (the network's management bridge), and the kernel starts its helper at
//! nice 0.

use std::io;
use std::path::Path;
use std::process::ExitCode;

use super::kmod::{LoadReport, Loader, ModuleIndex};

/// What /proc/sys/kernel/modprobe names on a booted node.
pub const LINK: &str = "/run/zeronode/modprobe";
/// PID 1's binary, open for as long as PID 1 runs, even once the initramfs
/// file it was started from is freed.
const PID1_BINARY: &str = "/proc/1/exe";
const KERNEL_SETTING: &str = "/proc/sys/kernel/modprobe";
/// Made by PID 1 once the ready line is out.
const READY_MARK: &str = zeronode_types::ready::MARK;
/// As the services that yield until ready (`nice_until_ready` in their files).
const NICE_UNTIL_READY: i32 = 10;

/// PID 1, before any service starts: the kernel's requests go to [`LINK`].
/// The link ends in "modprobe", the name `main` answers to.
pub fn route_kernel_requests() -> io::Result<()> {
    route(
        Path::new(LINK),
        Path::new(PID1_BINARY),
        Path::new(KERNEL_SETTING),
    )
}

fn route(link: &Path, target: &Path, setting: &Path) -> io::Result<()> {
    match std::fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::os::unix::fs::symlink(target, link)?;
    std::fs::write(setting, link.as_os_str().as_encoded_bytes())
}

/// PID 1, at the ready line: requests from now on run at normal priority.
pub fn mark_ready() -> io::Result<()> {
    std::fs::write(READY_MARK, b"")
}

/// The nice a request runs at while `mark` is missing: before the ready line.
fn nice_before(mark: &Path) -> Option<i32> {
    (!mark.exists()).then_some(NICE_UNTIL_READY)
}

/// `modprobe [-q] [--] NAME`, as the kernel's request_module() calls it.
/// Exit status 0 when something for NAME is in the kernel afterwards.
pub fn main(args: impl Iterator<Item = String>) -> ExitCode {
    if let Some(nice) = nice_before(Path::new(READY_MARK)) {
        // Only this thread, before the loader starts its own: they inherit it.
        // SAFETY: a plain system call with integer arguments.
        unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS, 0, nice) };
    }
    let args: Vec<String> = args.collect();
    let quiet = args.iter().any(|a| a == "-q");
    let Some(name) = args.iter().rfind(|a| !a.starts_with('-')) else {
        eprintln!("usage: modprobe [-q] [--] MODULE");
        return ExitCode::from(2);
    };
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let index = match ModuleIndex::load(&Path::new("/lib/modules").join(release)) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("modprobe: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut loader = Loader::new(index);
    let mut report = LoadReport::default();
    let wanted = loader.index.resolve(name);
    for m in &wanted {
        loader.load(m, &mut report);
    }
    let present = wanted.iter().any(|m| loader.present(m));
    if !quiet {
        for (m, why) in &report.failed {
            eprintln!("modprobe: {m}: {why}");
        }
    }
    if present {
        ExitCode::SUCCESS
    } else {
        if !quiet {
            eprintln!("modprobe: nothing in this image provides {name:?}");
        }
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_routed_through_a_link_named_modprobe() {
        let dir = tempfile::tempdir().unwrap();
        let (link, setting) = (dir.path().join("modprobe"), dir.path().join("setting"));
        let target = dir.path().join("init");
        std::fs::write(&target, b"binary").unwrap();
        std::fs::write(&link, b"left from before").unwrap();
        route(&link, &target, &setting).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        assert_eq!(std::fs::read(&link).unwrap(), b"binary");
        assert_eq!(
            std::fs::read_to_string(&setting).unwrap(),
            link.to_str().unwrap()
        );
        assert!(LINK.ends_with("/modprobe"), "main answers to that name");
    }

    #[test]
    fn requests_yield_until_the_ready_mark_exists() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ready");
        assert_eq!(nice_before(&mark), Some(10));
        std::fs::write(&mark, b"").unwrap();
        assert_eq!(nice_before(&mark), None);
    }

    #[test]
    fn a_setting_the_kernel_refuses_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/setting");
        let err = route(&dir.path().join("modprobe"), Path::new("/x"), &missing).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
