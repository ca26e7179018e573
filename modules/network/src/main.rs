//! zeronode-network: the node's network module as a supervised service.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use zeronode_types::boot_config::{self, IpConfig};
use zeronode_types::bus;

use zeronode_network::dbus::{Network, OBJECT_PATH};
use zeronode_network::state::Shared;
use zeronode_network::workload::Workloads;
use zeronode_network::{links, mgmt};

#[derive(Parser, Debug)]
#[command(
    about = "ZeroNode network module: management bridge, DHCP/static addressing, workload networks"
)]
struct Args {
    /// D-Bus socket to serve org.zeronode.Network1 on.
    #[arg(long, default_value = "/run/zeronode/network.sock")]
    socket: PathBuf,
    /// Where the workload networks' IPAM lives (networks.json).
    #[arg(long, default_value = "/var/cache/zeronode/network")]
    state_dir: PathBuf,
    /// The kernel command line to read ip=, zeronode.mgmt=, zeronode.hostname= from.
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
    #[arg(long, default_value = "/etc/resolv.conf")]
    resolv_conf: PathBuf,
    /// The management NIC (name or MAC); wins over zeronode.mgmt=.
    #[arg(long)]
    mgmt: Option<String>,
    /// The nft binary for the NAT rules.
    #[arg(long, default_value = "nft")]
    nft: PathBuf,
    #[arg(long, default_value = "/sys/class/net")]
    sys_class_net: PathBuf,
    /// Milliseconds to wait for a carrier on the physical NICs.
    #[arg(long, default_value_t = 5000)]
    carrier_wait_ms: u64,
    /// With several candidate NICs: how long each gets to win a lease in the
    /// first round (doubling each round).
    #[arg(long, default_value_t = 10000)]
    candidate_timeout_ms: u64,
}

pub fn main() -> std::process::ExitCode {
    let started = Instant::now();
    zeronode_types::logging::init();
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zeronode-network: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, started)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args, started: Instant) -> anyhow::Result<()> {
    let cmdline = std::fs::read_to_string(&args.cmdline).with_context(|| {
        format!(
            "read the kernel command line from {}",
            args.cmdline.display()
        )
    })?;
    let (boot, warnings) = boot_config::parse(&cmdline);
    let shared = Shared::default();
    for w in &warnings {
        let msg = if w.param.starts_with("ip=") {
            format!(
                "malformed {:?} on the kernel command line: {}; falling back to DHCP",
                w.param, w.reason
            )
        } else {
            w.to_string()
        };
        // Only ours: other modules report their own keys.
        if w.param.starts_with("ip=")
            || w.param.starts_with("zeronode.mgmt")
            || w.param.starts_with("zeronode.hostname")
        {
            tracing::error!("{msg}");
            shared.lock().warnings.push(msg);
        }
    }
    let cfg = mgmt::Config {
        mgmt: args.mgmt.clone().or(boot.mgmt.clone()),
        ip: boot.ip.clone(),
        hostname: boot.hostname.clone(),
        resolv_conf: args.resolv_conf.clone(),
        sys_class_net: args.sys_class_net.clone(),
        carrier_wait: Duration::from_millis(args.carrier_wait_ms),
        candidate_timeout: Duration::from_millis(args.candidate_timeout_ms),
        started,
    };

    let handle = links::connect().context("netlink")?;
    let workloads = Arc::new(Workloads::new(handle.clone(), &args.state_dir, &args.nft)?);
    let iface = Network {
        handle: handle.clone(),
        shared: shared.clone(),
        workloads: workloads.clone(),
    };
    // Serve from the start: State answers while DHCP is still running.
    let server = bus::serve(&args.socket, OBJECT_PATH, iface)
        .with_context(|| format!("serve D-Bus on {}", args.socket.display()))?;

    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let candidates = mgmt::candidates(&handle, &cfg, &shared).await?;
    let first = candidates
        .first()
        .cloned()
        .context("no candidate for the management NIC")?;
    let (mgmt_link, dhcp_task) = match &cfg.ip {
        IpConfig::Static {
            client,
            gateway,
            netmask,
            hostname,
            dns,
            ..
        } => {
            shared.lock().mode = "static".into();
            let m = mgmt::bridge(&handle, &first).await?;
            {
                let mut s = shared.lock();
                s.mgmt_nic = Some(m.nic.name.clone());
                s.mgmt_mac = Some(m.nic.mac.clone());
            }
            mgmt::apply_static(
                &handle,
                &cfg,
                &shared,
                &m,
                *client,
                *netmask,
                *gateway,
                hostname.as_deref(),
                dns,
            )
            .await?;
            (Some(m), None)
        }
        IpConfig::Off => {
            shared.lock().mode = "off".into();
            let m = mgmt::bridge(&handle, &first).await?;
            tracing::info!(
                "ip=off: {} left without an address",
                zeronode_network::MGMT_BRIDGE
            );
            (Some(m), None)
        }
        IpConfig::Dhcp { .. } => {
            shared.lock().mode = "dhcp".into();
            // Workload networks come back while DHCP runs; a lease can take
            // a while and must not hold them up.
            let h = handle.clone();
            let c = cfg.clone();
            let s = shared.clone();
            let dhcp = tokio::spawn(mgmt::run_dhcp(h, c, s, candidates));
            if let Err(e) = workloads.restore().await {
                tracing::error!("workload networks: {e}");
            }
            tokio::select! {
                r = dhcp => {
                    let (m, task) = r.context("DHCP task")??;
                    (Some(m), Some(task))
                }
                _ = term.recv() => {
                    tracing::info!("SIGTERM before a lease: stopping");
                    server.abort();
                    let _ = std::fs::remove_file(&args.socket);
                    return Ok(());
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT before a lease: stopping");
                    server.abort();
                    let _ = std::fs::remove_file(&args.socket);
                    return Ok(());
                }
            }
        }
    };
    if !matches!(cfg.ip, IpConfig::Dhcp { .. }) {
        if let Err(e) = workloads.restore().await {
            tracing::error!("workload networks: {e}");
        }
    }

    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = int.recv() => tracing::info!("SIGINT: stopping"),
    }
    if let Some(task) = dhcp_task {
        task.abort();
    }
    let dhcp_mode = shared.lock().mode == "dhcp";
    if let (Some(m), true) = (&mgmt_link, dhcp_mode) {
        mgmt::release(&handle, &shared, m).await;
    }
    server.abort();
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
