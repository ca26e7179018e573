//! zn-objects: store, retrieve, check and rebuild erasure-coded objects.
//! Backends and defaults come from a TOML file (--config) and/or --backend
//! flags; the owner's key from a file. Exit codes: 0 ok (check: healthy),
//! 1 error, 3 check found the object degraded, 4 check found data lost.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use zeronode_objects::config::ClientConfig;
use zeronode_objects::{BackendConfig, ObjectId, Objects, OwnerKey, Status, StoreOptions};

#[derive(Parser, Debug)]
#[command(
    name = "zn-objects",
    about = "Erasure-coded, encrypted objects over 0-db namespaces"
)]
struct Cli {
    /// TOML configuration: key_file, timeout_secs, coding defaults, [[backend]] tables.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// A backend as host:port[/namespace[:password]]; repeatable; added to the config's.
    #[arg(long = "backend", global = true)]
    backends: Vec<String>,
    /// The owner's key file (32 raw bytes or 64 hex digits); overrides key_file.
    #[arg(long, global = true)]
    key: Option<PathBuf>,
    /// Seconds before a backend operation is given up.
    #[arg(long, global = true)]
    timeout: Option<f64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new random key file (refuses to overwrite).
    Keygen { path: PathBuf },
    /// Store a file; prints the object id.
    Store {
        file: PathBuf,
        #[arg(long)]
        data: Option<usize>,
        #[arg(long)]
        parity: Option<usize>,
        /// Plaintext bytes per stripe.
        #[arg(long)]
        stripe_size: Option<usize>,
        #[arg(long)]
        zstd_level: Option<i32>,
    },
    /// Retrieve an object into a file (written only after full verification).
    Retrieve { id: String, output: PathBuf },
    /// Report the health of objects: every shard and metadata copy.
    Check {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Regenerate missing or corrupt shards and refresh every metadata copy.
    Rebuild {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zn-objects: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Keygen { path } = &cli.command {
        return keygen(path);
    }
    let config = match &cli.config {
        Some(path) => ClientConfig::load(path)?,
        None => ClientConfig::default(),
    };
    let mut backends = config.backends.clone();
    for text in &cli.backends {
        backends.push(BackendConfig::parse(text)?);
    }
    if backends.is_empty() {
        bail!("no backends: give --backend host:port[/ns[:password]] or a --config with [[backend]] tables");
    }
    let key_path = cli
        .key
        .clone()
        .or(config.key_file.clone())
        .context("no key: give --key FILE or key_file in the config")?;
    let key = OwnerKey::from_file(&key_path)?;
    let timeout = cli.timeout.or(config.timeout_secs).unwrap_or(10.0);
    if !(timeout > 0.0 && timeout <= 3600.0) {
        bail!("timeout {timeout} must be in (0, 3600] seconds");
    }
    let objects = Objects::new(backends, key, Duration::from_secs_f64(timeout))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async {
        // On Ctrl-C or SIGTERM the command is dropped, which removes a
        // half-written output file; the exit code says it was interrupted.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("install the SIGTERM handler")?;
        tokio::select! {
            result = command(objects, &config, cli.command) => result,
            _ = tokio::signal::ctrl_c() => interrupted("SIGINT"),
            _ = terminate.recv() => interrupted("SIGTERM"),
        }
    })
}

fn interrupted(signal: &str) -> anyhow::Result<ExitCode> {
    eprintln!("zn-objects: interrupted by {signal}; no output was written (an interrupted store may leave unreferenced shards)");
    Ok(ExitCode::from(130))
}

fn keygen(path: &PathBuf) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = OwnerKey::generate_hex()?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create key file {}", path.display()))?;
    writeln!(file, "{key}").with_context(|| format!("write key file {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("sync key file {}", path.display()))?;
    eprintln!("zn-objects: wrote a new key to {}", path.display());
    Ok(ExitCode::SUCCESS)
}

async fn command(
    objects: Objects,
    config: &ClientConfig,
    command: Command,
) -> anyhow::Result<ExitCode> {
    match command {
        Command::Keygen { .. } => unreachable_keygen(),
        Command::Store {
            file,
            data,
            parity,
            stripe_size,
            zstd_level,
        } => {
            let defaults = StoreOptions::default();
            let options = StoreOptions {
                data_shards: data.or(config.data_shards).unwrap_or(defaults.data_shards),
                parity_shards: parity
                    .or(config.parity_shards)
                    .unwrap_or(defaults.parity_shards),
                stripe_size: stripe_size
                    .or(config.stripe_size)
                    .unwrap_or(defaults.stripe_size),
                zstd_level: zstd_level
                    .or(config.zstd_level)
                    .unwrap_or(defaults.zstd_level),
            };
            let report = objects.store(&file, &options).await?;
            eprintln!(
                "zn-objects: stored {} bytes in {} stripes as {}+{} ({} bytes on backends)",
                report.size,
                report.stripes,
                options.data_shards,
                options.parity_shards,
                report.stored_bytes
            );
            println!("{}", report.id);
            Ok(ExitCode::SUCCESS)
        }
        Command::Retrieve { id, output } => {
            let id = ObjectId::parse(&id)?;
            let report = objects.retrieve(&id, &output).await?;
            eprintln!(
                "zn-objects: retrieved {} bytes into {} ({} of {} stripes needed parity)",
                report.size,
                output.display(),
                report.reconstructed_stripes,
                report.stripes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { ids } => {
            // Every object is checked; the exit code is the worst found:
            // lost (4) over error (1) over degraded (3) over healthy (0).
            let rank = |code: u8| [0u8, 3, 1, 4].iter().position(|c| *c == code);
            let mut worst = 0u8;
            for id in ids {
                let code = match check_one(&objects, &id).await {
                    Ok(code) => code,
                    Err(e) => {
                        eprintln!("zn-objects: check {id}: {e:#}");
                        1
                    }
                };
                if rank(code) > rank(worst) {
                    worst = code;
                }
            }
            Ok(ExitCode::from(worst))
        }
        Command::Rebuild { ids } => {
            let mut failed = 0;
            for id in &ids {
                if let Err(e) = rebuild_one(&objects, id).await {
                    eprintln!("zn-objects: rebuild {id}: {e:#}");
                    failed += 1;
                }
            }
            if failed > 0 {
                bail!("{failed} of {} objects not fully rebuilt", ids.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints one object's health; returns its exit code (0, 3 or 4).
async fn check_one(objects: &Objects, id: &str) -> anyhow::Result<u8> {
    let id = ObjectId::parse(id)?;
    let health = objects.check(&id).await?;
    println!(
        "object {} generation {} coding {}+{} size {}",
        health.id, health.generation, health.data_shards, health.parity_shards, health.size
    );
    for (location, state) in &health.metadata {
        println!("metadata {location}: {state}");
    }
    for (stripe, placement) in health.stripes.iter().zip(&health.placement) {
        let missing = stripe
            .faults
            .iter()
            .filter(|f| matches!(f, Some(zeronode_objects::meta::ShardFault::Missing)))
            .count();
        let corrupt = stripe
            .faults
            .iter()
            .filter(|f| matches!(f, Some(zeronode_objects::meta::ShardFault::Corrupt(_))))
            .count();
        let unreachable = stripe.faults.len() - stripe.good() - missing - corrupt;
        println!(
            "stripe {}: {} good, {} missing, {} corrupt, {} unreachable",
            stripe.index,
            stripe.good(),
            missing,
            corrupt,
            unreachable
        );
        for (shard, fault) in stripe.faults.iter().enumerate() {
            if let Some(fault) = fault {
                let backend = &health.backends[placement[shard] as usize];
                println!("  shard {shard} on {backend}: {fault}");
            }
        }
    }
    let status = health.status();
    println!(
        "status: {} (fewest good shards in a stripe: {} of {}, {} needed)",
        match status {
            Status::Healthy => "healthy",
            Status::Degraded => "degraded",
            Status::Lost => "lost",
        },
        health.min_good(),
        health.data_shards + health.parity_shards,
        health.data_shards
    );
    Ok(match status {
        Status::Healthy => 0,
        Status::Degraded => 3,
        Status::Lost => 4,
    })
}

async fn rebuild_one(objects: &Objects, id: &str) -> anyhow::Result<()> {
    let id = ObjectId::parse(id)?;
    let report = objects.rebuild(&id).await?;
    println!(
                "rebuilt: {} shards rewritten in place, {} moved to spare backends, {} metadata copies written, generation {}",
                report.rewritten, report.moved, report.metadata_copies, report.generation
            );
    for problem in &report.unrepaired {
        println!("not repaired: {problem}");
    }
    if !report.lost_stripes.is_empty() {
        bail!(
            "stripes {:?} have fewer than k good shards and cannot be rebuilt",
            report.lost_stripes
        );
    }
    if !report.unrepaired.is_empty() {
        bail!("{} items could not be repaired", report.unrepaired.len());
    }
    Ok(())
}

fn unreachable_keygen() -> anyhow::Result<ExitCode> {
    bail!("keygen is handled before connecting")
}
