//! `zeronode-ledger`: serves the node's ledger as `org.zeronode.Ledger1`
//! on a unix socket, or audits, exports and imports one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use zeronode_ledger::dbus::{LedgerService, OBJECT_PATH};
use zeronode_ledger::{KeySigner, Ledger, Options};

#[derive(Parser)]
#[command(version, about = "The node's append-only, signed ledger (BCDB)")]
struct Cli {
    /// Directory holding the ledger's LMDB files.
    #[arg(long, default_value = "/var/lib/zeronode/ledger")]
    dir: PathBuf,
    /// Largest size the ledger may grow to, in MiB (address space).
    #[arg(long, default_value_t = 65536)]
    map_size_mib: usize,
    #[command(subcommand)]
    command: Option<Command>,
    /// Socket to serve on (for `serve`, the default command).
    #[arg(long, default_value = "/run/zeronode/ledger.sock")]
    socket: PathBuf,
    /// The node's ed25519 key (32-byte seed, raw or 64 hex digits). Until
    /// the identity module signs over D-Bus, the ledger signs with this.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve org.zeronode.Ledger1 on --socket (the default).
    Serve,
    /// Walk the whole chain; exit 1 and name the first broken entry.
    Verify,
    /// Write the ledger to a portable file.
    Export { file: PathBuf },
    /// Check a portable file completely, then write it into the empty --dir.
    Import { file: PathBuf },
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zeronode-ledger: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let opts = Options {
        map_size: cli
            .map_size_mib
            .checked_mul(1 << 20)
            .context("--map-size-mib is too large")?,
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let Some(key_file) = cli.key_file else {
                bail!("serve needs --key-file (the node key, until identity signs over D-Bus)");
            };
            let signer = KeySigner::from_file(&key_file)?;
            let ledger = Ledger::open(&cli.dir, Arc::new(signer), opts)
                .with_context(|| format!("opening the ledger in {}", cli.dir.display()))?;
            serve(ledger, cli.socket)?;
            Ok(0)
        }
        Command::Verify => {
            let ledger = Ledger::open_for_audit(&cli.dir, opts)
                .with_context(|| format!("opening the ledger in {}", cli.dir.display()))?;
            let start = std::time::Instant::now();
            let r = ledger.verify()?;
            let secs = start.elapsed().as_secs_f64();
            println!(
                "entries {} bytes {} root {} in {secs:.2}s",
                r.entries,
                r.bytes,
                hex(&r.root)
            );
            match r.first_break {
                None => {
                    println!("ok");
                    Ok(0)
                }
                Some(b) => {
                    println!("broken at seq {}: {}", b.seq, b.reason);
                    Ok(1)
                }
            }
        }
        Command::Export { file } => {
            let ledger = Ledger::open_for_audit(&cli.dir, opts)
                .with_context(|| format!("opening the ledger in {}", cli.dir.display()))?;
            let h = ledger.export(&file)?;
            println!("exported {} entries, root {}", h.count, hex(&h.root));
            Ok(0)
        }
        Command::Import { file } => {
            let h = Ledger::import(&file, &cli.dir, opts)?;
            println!("imported {} entries, root {}", h.count, hex(&h.root));
            Ok(0)
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn serve(ledger: Ledger, socket: PathBuf) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = zeronode_types::bus::serve(&socket, OBJECT_PATH, LedgerService::new(ledger))
            .with_context(|| format!("listening on {}", socket.display()))?;
        tracing::info!(
            "ledger: serving org.zeronode.Ledger1 on {}",
            socket.display()
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("ledger: SIGTERM, stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("ledger: SIGINT, stopping"),
        }
        server.abort();
        let _ = std::fs::remove_file(&socket);
        anyhow::Ok(())
    })?;
    // Appends in flight were answered or refused; dropping the ledger
    // drains the writer and closes LMDB.
    Ok(())
}
