//! PID 1 from the first instruction to the supervisor.
//!
//! Stage 1 runs from the initramfs: kernel API mounts, command line,
//! verify and enter the system image (see `rootfs`). Stage 2 goes on in the
//! same process, rooted in the system image (or starts there, when PID 1
//! was started from it): the rest of the mounts, kernel modules, hostname,
//! loopback, then the supervisor until a power action.
//! Nothing here may panic or return: PID 1 exiting is a kernel panic.

use std::path::Path;

use super::{
    early_hash, kmod, logging, modprobe, mounts, net, power_button, rcu, rootfs, shutdown,
    static_nodes, watchdog,
};
use crate::run::{self, ReadyClock, RunOptions, Services};
use crate::supervisor::Supervisor;
use zeronode_types::boot_config::{self as cmdline, BootConfig};

pub const SERVICES_DIR: &str = "/etc/zeronode/services";
pub const CONTROL_SOCKET: &str = "/run/zeronode/init.sock";
/// The typed boot config, for the modules to read.
pub const BOOT_CONFIG: &str = "/run/zeronode/boot.json";

pub fn main() -> ! {
    match std::panic::catch_unwind(boot) {
        Ok(Err(msg)) => halt(&msg),
        Err(_) => halt("internal error (panic) in PID 1"),
    }
}

fn boot() -> Result<std::convert::Infallible, String> {
    let cpu_at_init_ms = run::own_cpu_ms();
    // Before anything else, while the second CPU idles (see early_hash).
    let hashing = early_hash::start(Path::new(rootfs::SYSTEM_IMAGE));
    mounts::mount_all(Path::new("/"), mounts::KERNEL_API).map_err(|e| e.to_string())?;
    let all_cpus_at_init = run::CpuTime::now();
    let cfg = read_cmdline();
    let rcu = rcu::Expedited::start();

    if rootfs::has_system_image(Path::new(rootfs::SYSTEM_IMAGE), &cfg).map_err(|e| e.to_string())? {
        tracing::info!("verifying and entering the system image");
        rootfs::enter_system_image(&cfg, hashing).map_err(|e| e.to_string())?;
    }

    tracing::debug!("stage 2: running from the system image");
    let stage2 = std::time::Instant::now();
    // WRITABLE is in place already when stage 1 built the root; mount_all
    // skips what is mounted.
    for set in [mounts::WRITABLE, mounts::SYSTEM] {
        mounts::mount_all(Path::new("/"), set).map_err(|e| e.to_string())?;
    }
    // Ctrl-Alt-Del becomes SIGINT to us (a clean reboot) instead of an instant reset.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        tracing::warn!("cannot take over Ctrl-Alt-Del: {e}");
    }
    set_hostname(&cfg);
    if let Err(e) = net::loopback_up() {
        tracing::warn!("bringing lo up: {e}");
    }
    write_boot_config(&cfg);
    if let Err(e) = modprobe::route_kernel_requests() {
        tracing::warn!(
            "the kernel's module requests stay with /sbin/modprobe ({}): {e}",
            modprobe::LINK
        );
    }
    tracing::debug!("stage 2 set up in {} ms", stage2.elapsed().as_millis());
    // The service files are read while coldplug loads drivers: its last
    // 150 ms are a wait for the uevent stream to go quiet.
    let services = std::thread::Builder::new()
        .name("services".into())
        .spawn(|| Supervisor::read_services(Path::new(SERVICES_DIR)));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let deferred_modules = load_modules();
    after_ready(ready_rx, rcu, deferred_modules);
    let services = match services.map(|t| t.join()) {
        Ok(Ok(specs)) => Services::Read(specs),
        // No thread, or it panicked: read them here.
        _ => Services::Dir(SERVICES_DIR.into()),
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the async runtime: {e}"))?;
    let opts = RunOptions {
        services,
        control_socket: Some(CONTROL_SOCKET.into()),
        ready_clock: ReadyClock::KernelBoot {
            cpu_at_init_ms,
            all_cpus_at_init,
        },
        subreaper: false,
        on_ready: Some(ready_tx),
    };
    let action = runtime.block_on(async {
        // Runs at the supervisor's first wait, once the first services
        // are spawned: opening the input devices and arming the watchdog
        // took 20-30 ms under emulation, which storage, the first thing
        // the ready line waits for, need not wait for.
        tokio::spawn(async {
            power_button::spawn_watchers();
            watchdog::spawn();
        });
        run::run(opts).await
    });
    drop(runtime);
    match action {
        Ok(action) => shutdown::finish(action),
        // The supervisor could not run at all; still take the machine down cleanly.
        Err(e) => {
            tracing::error!("supervisor: {e:#}");
            shutdown::finish(run::PowerAction::PowerOff)
        }
    }
}

fn read_cmdline() -> BootConfig {
    let line = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (cfg, warnings) = cmdline::parse(&line);
    logging::init_pid1(cfg.debug);
    for w in warnings {
        tracing::warn!("{w}");
    }
    cfg
}

fn set_hostname(cfg: &BootConfig) {
    let from_file = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string());
    let name = cfg
        .hostname
        .clone()
        .or(from_file)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "zeronode".into());
    if let Err(e) = nix::unistd::sethostname(&name) {
        tracing::warn!("setting host name {name:?}: {e}");
    }
}

fn write_boot_config(cfg: &BootConfig) {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all("/run/zeronode")?;
        let json = serde_json::to_vec_pretty(cfg).map_err(std::io::Error::other)?;
        std::fs::write(BOOT_CONFIG, json)
    };
    if let Err(e) = write() {
        tracing::warn!("writing {BOOT_CONFIG}: {e}");
    }
}

/// Every device's driver, before any service starts (a service may need
/// its NIC or disk); btrfs, which storage needs too, is on its way since
/// stage 1 (see `early_modules`). The modules of CPU features (kvm...) and
/// the image's fixed list load on a thread once the node is ready (`ready`
/// fires): those (kvm, bridge, veth, nf_tables...) serve workloads, and the
/// kernel asks for most of them itself through /sbin/modprobe, so they only
/// warm up the first use and must not compete with the way to ready for the
/// CPU: the fixed list comes back as work for after ready. Failures are
/// reported and boot goes on.
fn load_modules() -> Option<Deferred> {
    let release = match nix::sys::utsname::uname() {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => {
            tracing::warn!("uname: {e}; no kernel modules loaded");
            return None;
        }
    };
    let dir = Path::new("/lib/modules").join(&release);
    let t = std::time::Instant::now();
    let index = match kmod::ModuleIndex::load(&dir) {
        Ok(i) => std::sync::Arc::new(i),
        Err(e) => {
            tracing::warn!("no kernel modules loaded: {e}");
            return None;
        }
    };
    tracing::debug!(
        "module index of {} read in {} ms",
        dir.display(),
        t.elapsed().as_millis()
    );
    match static_nodes::create(&dir, Path::new("/dev")) {
        Ok(made) => tracing::debug!("{} device nodes for on-demand modules", made.len()),
        Err(e) => tracing::warn!("device nodes for on-demand modules: {e}"),
    }
    let t = std::time::Instant::now();
    let hotplug_index = index.clone();
    let mut loader = kmod::Loader::new(index).with_async_probe();
    let (report, late) = loader.coldplug(Path::new("/sys"), &[]);
    tracing::debug!("device drivers loaded in {} ms", t.elapsed().as_millis());
    report.log("device drivers");
    // Devices keep coming after coldplug (a SATA disk behind AHCI's
    // asynchronous port scan, a USB stick): their drivers load as they do.
    let spawned = std::thread::Builder::new()
        .name("hotplug".into())
        .spawn(move || {
            kmod::Loader::new(hotplug_index)
                .with_async_probe()
                .hotplug(late)
        });
    if let Err(e) = spawned {
        tracing::warn!("no hotplug listener ({e}): devices added from now on get no driver");
    }
    let list = std::fs::read_to_string("/etc/zeronode/modules-load").unwrap_or_default();
    let mut fixed = loader.cpu_feature_modules(Path::new("/sys"));
    fixed.extend(kmod::parse_load_list(&list));
    Some(Box::new(move || {
        let mut report = kmod::LoadReport::default();
        loader.load_many(fixed, &mut report);
        report.log("CPU features and fixed module list");
    }))
}

/// Work held back until the ready line.
type Deferred = Box<dyn FnOnce() + Send>;

/// Once the ready line is out (or the supervisor gave up and closed the
/// channel): the ready mark for module requests, normal RCU grace periods
/// again, then the modules held back.
fn after_ready(ready: std::sync::mpsc::Receiver<()>, rcu: rcu::Expedited, work: Option<Deferred>) {
    let spawned = std::thread::Builder::new()
        .name("after-ready".into())
        .spawn(move || {
            let _ = ready.recv();
            if let Err(e) = modprobe::mark_ready() {
                tracing::warn!("{}: {e}", zeronode_types::ready::MARK);
            }
            rcu.normal();
            if let Some(work) = work {
                work();
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot wait for the ready line ({e}): RCU stays expedited, the fixed module list is not loaded");
    }
}

/// The boot cannot go on. Say why where a person looks, then wait: PID 1
/// must not exit, and a loop of reboots would scroll the reason away.
fn halt(reason: &str) -> ! {
    logging::say(&format!("zeronode: boot stopped: {reason}"));
    tracing::error!("boot stopped: {reason}");
    loop {
        nix::unistd::pause();
    }
}
