//! `zeronode-identity`: makes or loads the node key, then answers
//! `org.zeronode.Identity1` until SIGTERM.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use zeronode_identity::service::{Identity, OBJECT_PATH, SOCKET_NAME};
use zeronode_identity::NodeKey;
use zeronode_types::{boot_config, bus};

#[derive(Parser)]
#[command(about = "The node's identity: ed25519 key, node id, farm and owner")]
struct Args {
    /// Where the node key lives (the persistent node cache on a node).
    #[arg(long, default_value = "/var/cache/zeronode/identity")]
    key_dir: PathBuf,
    /// The D-Bus socket to serve on.
    #[arg(long, default_value_os_t = bus::socket_path(SOCKET_NAME))]
    socket: PathBuf,
    /// The kernel command line (zeronode.farm=, zeronode.owner=).
    #[arg(long, default_value = "/proc/cmdline")]
    cmdline: PathBuf,
}

pub fn main() -> anyhow::Result<()> {
    let started = Instant::now();
    zeronode_types::logging::init();
    let args = Args::parse();
    let line = std::fs::read_to_string(&args.cmdline)
        .with_context(|| format!("reading {}", args.cmdline.display()))?;
    // init reports malformed keys on the console already.
    let (cfg, _warnings) = boot_config::parse(&line);
    let key = NodeKey::load_or_create(&args.key_dir)?;
    let id = key.node_id();
    println!(
        "identity: node id {id} ({} key) in {} ms, at {} ms since boot",
        if key.created() { "new" } else { "existing" },
        started.elapsed().as_millis(),
        zeronode_types::clock::since_boot_ms()
    );
    if cfg.owner_key.is_none() {
        tracing::warn!("no zeronode.owner= on the command line: no one can deploy on this node");
    }
    let identity = Identity::new(key, cfg.farm_id, cfg.owner_key);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let _server = bus::serve(&args.socket, OBJECT_PATH, identity)
            .with_context(|| format!("serving on {}", args.socket.display()))?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("watching SIGTERM")?;
        term.recv().await;
        let _ = std::fs::remove_file(&args.socket);
        Ok(())
    })
}
