//! `zeronode-provision`: the signed-deployment API over HTTPS. Waits for
//! identity and the ledger, heals every live deployment, then serves until
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use zeronode_deployment::WorkloadType;
use zeronode_provision::{capacity, http, tls, App, Capacity, Config};
use zeronode_types::{boot_config, bus};

#[derive(Parser)]
#[command(
    version,
    about = "Signed deployments: verify, record, reconcile, self-heal"
)]
struct Args {
    /// Address to serve HTTPS on; default: zeronode.api= or 0.0.0.0:8443.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The kernel command line (zeronode.owner=, zeronode.api=).
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    /// The owner's ed25519 public key (hex); default: zeronode.owner= from
    /// --cmdline, else what the identity module reports.
    #[arg(long)]
    owner: Option<String>,
    #[arg(long, default_value_os_t = bus::socket_path("identity"))]
    identity_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("ledger"))]
    ledger_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("network"))]
    network_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("storage"))]
    storage_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("containers"))]
    containers_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("vms"))]
    vms_socket: PathBuf,
    #[arg(long, default_value_os_t = bus::socket_path("shards"))]
    shards_socket: PathBuf,
    /// Largest request body, bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Signed reads whose time is further than this from the node's, seconds.
    #[arg(long, default_value_t = 300)]
    read_skew: u64,
    /// How often module sockets and expirations are checked, ms.
    #[arg(long, default_value_t = 1000)]
    watch_interval_ms: u64,
    /// vCPUs all containers and VMs may have together; default: this
    /// machine's CPUs times --cpu-overcommit.
    #[arg(long)]
    cpu_capacity: Option<u64>,
    #[arg(long, default_value_t = capacity::DEFAULT_CPU_OVERCOMMIT)]
    cpu_overcommit: u64,
    /// Bytes of memory all containers and VMs may have together; default:
    /// MemTotal less max(256 MiB, an eighth) kept for the node.
    #[arg(long)]
    memory_capacity: Option<u64>,
    /// How long to wait for identity and the ledger at start, seconds.
    #[arg(long, default_value_t = 60)]
    wait: u64,
}

pub fn main() {
    zeronode_types::logging::init();
    if let Err(e) = run(Args::parse()) {
        tracing::error!("{e:#}");
        eprintln!("zeronode-provision: {e:#}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let cfg_line = std::fs::read_to_string(&args.cmdline).unwrap_or_default();
    let (boot, _) = boot_config::parse(&cfg_line);
    let owner = args
        .owner
        .clone()
        .or_else(|| boot.owner_key.map(|k| boot_config::hex(&k)));
    let listen = args.listen.unwrap_or(boot.api_listen);
    let machine = Capacity::of_this_machine(args.cpu_overcommit)
        .context("reading this machine's CPUs and memory")?;
    let capacity = Capacity {
        cpu: args.cpu_capacity.unwrap_or(machine.cpu),
        memory: args.memory_capacity.unwrap_or(machine.memory),
    };
    tracing::info!(
        "capacity for workloads: {} vCPUs, {} MiB",
        capacity.cpu,
        capacity.memory >> 20
    );
    let cfg = Config {
        ledger_socket: args.ledger_socket,
        identity_socket: args.identity_socket,
        network_socket: args.network_socket,
        storage_socket: args.storage_socket,
        containers_socket: args.containers_socket,
        vms_socket: args.vms_socket,
        shards_socket: args.shards_socket,
        owner,
        max_body: args.max_body,
        read_skew_secs: args.read_skew,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(50)),
        capacity,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async move {
        // Identity and the ledger start beside us at boot (the services
        // file orders us after storage only): the certificate's key is
        // made while identity starts; once it is up, the certificate
        // (which identity signs) and the state read from the ledger are
        // made together. A restart of either is not a reason to fail.
        let deadline = Instant::now() + Duration::from_secs(args.wait);
        let tls_key = tokio::task::spawn_blocking(tls::new_key);
        let app = retry_until(deadline, "identity", || App::start(cfg.clone())).await?;
        let node_key = app.node_key.to_bytes();
        let app2 = app.clone();
        let certified = async {
            let key = tls_key.await.context("making the TLS key")??;
            anyhow::Ok(
                tls::server_config(key, &node_key, |m| async move { app2.sign(&m).await }).await?,
            )
        };
        let (tls, loaded) = tokio::join!(
            certified,
            retry_until(deadline, "the ledger", || app.load())
        );
        let tls = tls.context("making the TLS certificate")?;
        loaded?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!(
            "provision: node {} serving https://{} (owner {}) in {} ms",
            app.node_id,
            listener.local_addr().unwrap_or(listen),
            app.owner.as_deref().unwrap_or("none"),
            started.elapsed().as_millis()
        );
        // Self-healing at start: every live workload is applied again.
        let healer = app.clone();
        tokio::spawn(async move {
            let all = [
                WorkloadType::Network,
                WorkloadType::Volume,
                WorkloadType::Zdb,
                WorkloadType::Container,
                WorkloadType::Vm,
            ];
            healer.heal(&all).await;
            tracing::info!("provision: start-up reconcile done");
            healer.watch().await;
        });
        let server = tokio::spawn(http::serve(app.clone(), listener, tls));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("watching SIGTERM")?;
        tokio::select! {
            _ = term.recv() => tracing::info!("provision: SIGTERM, stopping"),
            r = server => { r.context("server task")?.context("server")?; }
        }
        Ok(())
    })
}

/// Runs `f` until it succeeds, every 10 ms (a module's socket appears
/// within a boot's first seconds), or fails with its last error once
/// `deadline` passed.
async fn retry_until<T, F, Fut>(deadline: Instant, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("waiting for {what}: {e:#}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.context(format!("waiting for {what}"))),
        }
    }
}
