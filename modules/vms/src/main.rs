//! `zeronode-vms`: brings back the recorded VMs, then serves
//! `org.zeronode.Vms1` until SIGTERM. VMs keep running when the module
//! stops (QEMU runs in a session of its own); the next start watches them
//! again.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use zeronode_types::bus;
use zeronode_vms::dbus::{Vms, OBJECT_PATH, SOCKET_NAME};
use zeronode_vms::{Accel, Config, Manager};

#[derive(Parser)]
#[command(about = "VM workloads through QEMU and its QMP socket")]
struct Args {
    #[arg(long, default_value = "/usr/bin/qemu-system-x86_64")]
    qemu: PathBuf,
    /// QEMU's firmware directory (-L): bios-256k.bin, linuxboot_dma.bin, pvh.bin.
    #[arg(long)]
    firmware_dir: Option<PathBuf>,
    /// auto (KVM when /dev/kvm works, TCG otherwise), kvm or tcg.
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Records, downloads, config drives, serial logs (node cache).
    #[arg(long, default_value = "/var/cache/zeronode/vms")]
    state_dir: PathBuf,
    /// QMP sockets, pid files, QEMU's output.
    #[arg(long, default_value = "/run/zeronode/vms")]
    run_dir: PathBuf,
    /// The network module's socket; without it a VM naming a network is refused.
    #[arg(long)]
    network_socket: Option<PathBuf>,
    #[arg(long, default_value_os_t = bus::socket_path(SOCKET_NAME))]
    socket: PathBuf,
    /// A serial log is rotated past this many bytes.
    #[arg(long, default_value_t = 1 << 20)]
    log_cap: u64,
    #[arg(long, default_value_t = 5000)]
    log_check_ms: u64,
    /// Extra CA certificates (PEM) for https:// downloads.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value_t = 500)]
    backoff_initial_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    backoff_max_ms: u64,
    /// After the ACPI power-down, a guest still running is killed.
    #[arg(long, default_value_t = 30_000)]
    stop_timeout_ms: u64,
}

pub fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    zeronode_types::logging::init();
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run(args, started))
}

async fn run(args: Args, started: Instant) -> anyhow::Result<()> {
    let mut cfg = Config::new(args.state_dir, args.run_dir);
    cfg.qemu = args.qemu;
    cfg.firmware_dir = args.firmware_dir;
    cfg.accel = args.accel;
    cfg.network_socket = args.network_socket;
    cfg.log_cap = args.log_cap;
    cfg.ca_file = args.ca_file;
    cfg.backoff_initial = Duration::from_millis(args.backoff_initial_ms);
    cfg.backoff_max = Duration::from_millis(args.backoff_max_ms);
    cfg.stop_timeout = Duration::from_millis(args.stop_timeout_ms);
    let manager = Manager::new(cfg).context("vms")?;
    // Serve first: the node's ready line must not wait for downloads.
    let server = bus::serve(
        &args.socket,
        OBJECT_PATH,
        Vms {
            manager: manager.clone(),
        },
    )
    .with_context(|| format!("serving on {}", args.socket.display()))?;
    let restore = {
        let m = manager.clone();
        tokio::spawn(async move {
            let restored = m.restore().await;
            m.gc_images();
            println!(
                "vms: {restored} vm(s) restored in {} ms ({})",
                started.elapsed().as_millis(),
                m.engine().as_str()
            );
        })
    };
    let rotator = {
        let m = manager.clone();
        let check = Duration::from_millis(args.log_check_ms.max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(check).await;
                let m = m.clone();
                let _ = tokio::task::spawn_blocking(move || m.rotate_logs()).await;
            }
        })
    };
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping (VMs keep running)"),
        _ = int.recv() => tracing::info!("SIGINT: stopping (VMs keep running)"),
    }
    restore.abort();
    rotator.abort();
    server.abort();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
