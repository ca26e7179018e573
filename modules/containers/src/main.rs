//! `zeronode-containers`: brings back the recorded containers, then
//! serves `org.zeronode.Containers1` until SIGTERM. Containers keep
//! running when the module stops (their shims belong to containerd).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use zeronode_containers::dbus::{Containers, OBJECT_PATH, SOCKET_NAME};
use zeronode_containers::{Config, Manager};
use zeronode_types::bus;

#[derive(Parser)]
#[command(about = "Container workloads through containerd and runc")]
struct Args {
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    containerd: PathBuf,
    /// The containerd namespace of the module's images and containers.
    #[arg(long, default_value = "zeronode")]
    namespace: String,
    /// Records, logs and downloads (on the node cache: survives reboots).
    #[arg(long, default_value = "/var/cache/zeronode/containers")]
    state_dir: PathBuf,
    /// Network namespaces of the containers.
    #[arg(long, default_value = "/run/zeronode/containers")]
    run_dir: PathBuf,
    /// The network module's socket; without it, containers get an empty
    /// network namespace (loopback only) and a workload network is refused.
    #[arg(long)]
    network_socket: Option<PathBuf>,
    /// The D-Bus socket to serve on.
    #[arg(long, default_value_os_t = bus::socket_path(SOCKET_NAME))]
    socket: PathBuf,
    /// The cgroup under which each container gets its own.
    #[arg(long, default_value = "/zeronode")]
    cgroup_parent: String,
    /// Mounted read-only as /etc/resolv.conf into containers on a network.
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// A container's log is rotated past this many bytes.
    #[arg(long, default_value_t = 1 << 20)]
    log_cap: u64,
    /// Extra CA certificates (PEM) for https:// archives, besides the
    /// built-in Mozilla roots.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// How often the logs are checked against the cap, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    log_check_ms: u64,
    /// Restart back-off: first delay and ceiling, in milliseconds.
    #[arg(long, default_value_t = 500)]
    backoff_initial_ms: u64,
    #[arg(long, default_value_t = 60_000)]
    backoff_max_ms: u64,
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
    let mut cfg = Config::new(args.containerd.clone(), args.state_dir, args.run_dir);
    cfg.namespace = args.namespace;
    cfg.network_socket = args.network_socket;
    cfg.cgroup_parent = args.cgroup_parent;
    cfg.log_cap = args.log_cap;
    cfg.ca_file = args.ca_file;
    cfg.resolv_conf = Some(args.resolv_conf);
    cfg.backoff_initial = Duration::from_millis(args.backoff_initial_ms);
    cfg.backoff_max = Duration::from_millis(args.backoff_max_ms);
    // containerd may still be starting when the supervisor starts us.
    let deadline = Instant::now() + Duration::from_secs(30);
    let manager = loop {
        match Manager::new(cfg.clone()).await {
            Ok(m) => break m,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("containerd"),
        }
    };
    // Serve first: the supervisor's health check (and the node's ready
    // line) must not wait for image downloads of the restored containers;
    // calls meanwhile interleave with it, one container operation at a time.
    let server = bus::serve(
        &args.socket,
        OBJECT_PATH,
        Containers {
            manager: manager.clone(),
        },
    )
    .with_context(|| format!("serving on {}", args.socket.display()))?;
    let restore = {
        let m = manager.clone();
        tokio::spawn(async move {
            let restored = m.restore().await;
            if let Err(e) = m.gc_images().await {
                tracing::warn!("image cleanup: {e}");
            }
            println!(
                "containers: {restored} container(s) restored in {} ms",
                started.elapsed().as_millis()
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
        _ = term.recv() => tracing::info!("SIGTERM: stopping (containers keep running)"),
        _ = int.recv() => tracing::info!("SIGINT: stopping (containers keep running)"),
    }
    restore.abort();
    rotator.abort();
    server.abort();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
