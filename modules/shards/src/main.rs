//! `zeronode-shards`: the node's shard store. Serves RESP (the 0-db command
//! set) on `--listen` and `org.zeronode.Shards1` on `--socket`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use zeronode_shards::dbus::{ShardsService, OBJECT_PATH};
use zeronode_shards::namespace::{Options, SyncPolicy};
use zeronode_shards::{Config, Server, Store};

#[derive(Parser)]
#[command(version, about = "The node's shard store: 0-db compatible, over RESP")]
struct Cli {
    /// Data directory, one subdirectory a namespace (on a node: the cache
    /// on the first storage pool).
    #[arg(long, alias = "data", default_value = "/var/cache/zeronode/shards")]
    dir: PathBuf,
    /// RESP address.
    #[arg(long, default_value = "0.0.0.0:9900")]
    listen: String,
    /// D-Bus socket for org.zeronode.Shards1.
    #[arg(long, default_value = "/run/zeronode/shards.sock")]
    socket: PathBuf,
    /// When a write is acknowledged: after fdatasync (always, group
    /// committed) or after write(2) with a sync each second (everysec).
    /// A namespace may override it (NSSET ns sync ...).
    #[arg(long, default_value = "everysec")]
    sync: SyncPolicy,
    /// File holding the admin password (first line). With it, AUTH enables
    /// NSNEW / NSDEL / NSSET over RESP; without it those are refused and
    /// namespaces come only from provision over D-Bus.
    #[arg(long)]
    admin_password_file: Option<PathBuf>,
    /// The default namespace refuses writes from non-admin clients.
    #[arg(long)]
    lock_default: bool,
    /// Threads serving clients. 1 (the default) serves from one thread as
    /// redis does, which measured best on 2 cores shared with the clients;
    /// more gives a multi-threaded runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Size at which a data file is closed and a new one started, in MiB.
    #[arg(long, default_value_t = 256)]
    file_size_mib: u64,
    /// Most client connections at once.
    #[arg(long, default_value_t = 10_000)]
    max_clients: u64,
    /// How often to check whether a namespace's index snapshot is worth
    /// rewriting (more than 1 MiB written since the last), in ms.
    #[arg(long, default_value_t = 30_000)]
    snapshot_interval_ms: u64,
}

pub fn main() {
    zeronode_types::logging::init();
    if let Err(e) = run(Cli::parse()) {
        tracing::error!("{e:#}");
        eprintln!("zeronode-shards: {e:#}");
        std::process::exit(2);
    }
}

fn run(cli: Cli) -> Result<()> {
    let admin_password = match &cli.admin_password_file {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin password file {}", path.display()))?;
            let pw = text.lines().next().unwrap_or("").trim().to_string();
            anyhow::ensure!(
                !pw.is_empty(),
                "the admin password file {} is empty",
                path.display()
            );
            Some(pw)
        }
    };
    let options = Options {
        file_size: cli.file_size_mib.max(1) << 20,
        sync: cli.sync,
    };
    // One thread serves like redis does: on a 2-core node the other core
    // is left to the clients, the sync thread and the rest of the node.
    let rt = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()?
    };
    let store = Store::open(&cli.dir, options)
        .with_context(|| format!("opening the store in {}", cli.dir.display()))?;
    let config = Config {
        admin_password,
        lock_default: cli.lock_default,
        limits: Default::default(),
        max_clients: cli.max_clients,
    };
    let server = Server::new(store.clone(), config);
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&cli.listen)
            .await
            .with_context(|| format!("listening on {}", cli.listen))?;
        let local = listener.local_addr()?;
        let resp = tokio::spawn(server.clone().serve(listener));
        let bus = zeronode_types::bus::serve(
            &cli.socket,
            OBJECT_PATH,
            ShardsService::new(store.clone(), local),
        )
        .with_context(|| format!("serving D-Bus on {}", cli.socket.display()))?;
        tracing::info!(
            "shards: RESP on {local}, org.zeronode.Shards1 on {}, sync {}, {} namespaces",
            cli.socket.display(),
            cli.sync.as_str(),
            store.list().len()
        );
        let snapshots = tokio::spawn(snapshot_loop(
            store.clone(),
            Duration::from_millis(cli.snapshot_interval_ms.max(10)),
        ));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("shards: SIGTERM, stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("shards: SIGINT, stopping"),
        }
        resp.abort();
        bus.abort();
        snapshots.abort();
        let _ = std::fs::remove_file(&cli.socket);
        anyhow::Ok(())
    });
    // Whatever was acknowledged is in the kernel already; make it durable
    // and leave snapshots so that the next start replays nothing.
    let closed = store.close().context("closing the store");
    rt.shutdown_timeout(Duration::from_secs(1));
    result.and(closed)?;
    tracing::info!("shards: stopped");
    Ok(())
}

/// Rewrites a namespace's index snapshot once it is more than 1 MiB behind,
/// so that a restart after a crash replays little.
async fn snapshot_loop(store: Arc<Store>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for ns in store.all() {
            if ns.is_deleted() || ns.unsnapshotted() < 1 << 20 {
                continue;
            }
            let name = ns.name().to_string();
            match tokio::task::spawn_blocking(move || ns.snapshot()).await {
                Ok(Ok(())) => tracing::debug!(namespace = %name, "index snapshot written"),
                Ok(Err(e)) => tracing::warn!(namespace = %name, "index snapshot: {e}"),
                Err(e) => tracing::warn!(namespace = %name, "index snapshot task: {e}"),
            }
        }
    }
}
