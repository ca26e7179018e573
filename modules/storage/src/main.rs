//! The storage service: bring the disks up, print one line, serve D-Bus
//! until SIGTERM.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use zeronode_storage::dbus::{StorageService, OBJECT_PATH};
use zeronode_storage::node::{bring_up_for_cache, BringUp};
use zeronode_storage::sysfs::Sysfs;
use zeronode_storage::{late_disks, Config};
use zeronode_types::uevent::UeventSocket;

#[derive(Parser, Debug)]
#[command(version, about = "ZeroNode storage: disks, pools, node cache, volumes")]
struct Args {
    /// D-Bus socket to serve org.zeronode.Storage1 on; created only once the
    /// pools and the cache are ready, so a health check on it means ready.
    #[arg(long, default_value = "/run/zeronode/storage.sock")]
    socket: PathBuf,
    /// Kernel command line to read zeronode.wipe= from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// Pools mount at DIR/<pool name>.
    #[arg(long, default_value = "/mnt")]
    mnt_root: PathBuf,
    /// The node cache directory.
    #[arg(long, default_value = "/var/cache/zeronode")]
    cache: PathBuf,
    /// Use these whole-disk devices instead of scanning /sys/block (loop
    /// devices allowed); repeatable.
    #[arg(long = "device")]
    devices: Vec<PathBuf>,
    /// sysfs mount point.
    #[arg(long, default_value = "/sys")]
    sysfs: PathBuf,
    /// Format the blank disks beyond the first (which holds the cache) only
    /// once this file exists (PID 1's ready mark, /run/zeronode/ready), or
    /// 30 s after bring-up without it; by default right after bring-up.
    #[arg(long, value_name = "MARK")]
    format_more_after: Option<PathBuf>,
}

pub fn main() -> std::process::ExitCode {
    let started = Instant::now();
    zeronode_types::logging::init();
    match run(Args::parse(), started) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeronode-storage: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args, started: Instant) -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string(&args.cmdline)
        .with_context(|| format!("reading the command line {}", args.cmdline.display()))?;
    let (boot, warnings) = zeronode_types::boot_config::parse(&cmdline);
    // PID 1 reports every malformed parameter too; a bad wipe= is repeated
    // here because it is the one that decides whether a disk is erased.
    let wipe_warnings: Vec<String> = warnings
        .iter()
        .filter(|w| w.param.starts_with("zeronode.wipe"))
        .map(|w| w.to_string())
        .collect();
    for w in &wipe_warnings {
        tracing::warn!("{w}");
    }
    let config = Config {
        mnt_root: args.mnt_root,
        cache_dir: args.cache,
        devices: (!args.devices.is_empty()).then_some(args.devices),
        sysfs: Sysfs {
            root: args.sysfs,
            dev_dir: "/dev".into(),
        },
        wipe: boot.wipe,
    };
    // Listening before /sys is scanned: a disk that comes during bring-up
    // or any time later is announced here (see late_disks).
    let uevents = match config.devices {
        Some(_) => None,
        None => UeventSocket::open()
            .map_err(|e| {
                tracing::warn!("no uevent socket ({e}): disks that come later are not pooled")
            })
            .ok(),
    };
    let BringUp { node, pending, .. } =
        bring_up_for_cache(&config).context("bringing the disks up")?;
    let ms = started.elapsed().as_millis();
    let cache_on = node.cache.pool.clone().unwrap_or_else(|| "tmpfs".into());
    for w in wipe_warnings.iter().chain(&node.warnings) {
        println!("storage: WARNING: {w}");
    }
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let more = match pending.len() {
        0 => String::new(),
        n => format!("; formatting {n} more blank disk{} next", plural(n)),
    };
    println!(
        "storage: {} pool{} mounted, cache on {cache_on} in {ms} ms, at {} ms since boot{more}",
        node.pools.len(),
        plural(node.pools.len()),
        zeronode_types::clock::since_boot_ms()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let service = StorageService::new(node);
        let (config, node) = (config.clone(), service.node());
        let defer = args.format_more_after.clone();
        let server = zeronode_types::bus::serve(&args.socket, OBJECT_PATH, service)
            .with_context(|| format!("serving D-Bus on {}", args.socket.display()))?;
        let spawned = std::thread::Builder::new()
            .name("disks".into())
            .spawn(move || late_disks::run(config, pending, defer, uevents, node));
        if let Err(e) = spawned {
            tracing::warn!(
                "cannot format the remaining blank disks nor watch for disks that come later: {e}"
            );
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("SIGTERM handler")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: stopping; pools stay mounted"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping; pools stay mounted"),
        }
        server.abort();
        let _ = std::fs::remove_file(&args.socket);
        Ok(())
    })
}
