//! `zeronode-ledger`: serves the node's ledger as `org.zeronode.Ledger1`
//! on a unix socket, or audits, exports and imports one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use zeronode_identity::service::Identity1Proxy;
use zeronode_ledger::dbus::{LedgerService, OBJECT_PATH};
use zeronode_ledger::signer::{SignError, Signer};
use zeronode_ledger::{KeySigner, Ledger, Options};

#[derive(Parser)]
#[command(version, about = "The node's append-only, signed ledger (BCDB)")]
struct Cli {
    /// Directory holding the ledger's LMDB files (on a node: in the
    /// persistent node cache).
    #[arg(long, default_value = "/var/cache/zeronode/ledger")]
    dir: PathBuf,
    /// Largest size the ledger may grow to, in MiB (address space).
    #[arg(long, default_value_t = 65536)]
    map_size_mib: usize,
    #[command(subcommand)]
    command: Option<Command>,
    /// Socket to serve on (for `serve`, the default command).
    #[arg(long, default_value = "/run/zeronode/ledger.sock")]
    socket: PathBuf,
    /// Sign with this ed25519 key (32-byte seed, raw or 64 hex digits)
    /// instead of asking the identity module: for tests and off-node use.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The identity module's socket: on a node the ledger signs through it
    /// and never sees the node key.
    #[arg(long, default_value = "/run/zeronode/identity.sock")]
    identity_socket: PathBuf,
    /// How long to wait for the identity module's socket to appear: the
    /// ledger starts beside identity at boot rather than after it.
    #[arg(long, default_value_t = 60)]
    identity_wait_secs: u64,
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

pub fn main() {
    zeronode_types::logging::init();
    match run(Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zeronode-ledger: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run(mut cli: Cli) -> Result<i32> {
    let opts = Options {
        map_size: cli
            .map_size_mib
            .checked_mul(1 << 20)
            .context("--map-size-mib is too large")?,
    };
    match cli.command.take().unwrap_or(Command::Serve) {
        Command::Serve => {
            serve(&cli, opts)?;
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

fn serve(cli: &Cli, opts: Options) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = std::time::Instant::now();
    let existed = cli.dir.exists();
    let ledger = Ledger::open_awaiting_signer(&cli.dir, opts)
        .with_context(|| format!("opening the ledger in {}", cli.dir.display()))?;
    if let Some(key_file) = &cli.key_file {
        ledger.attach_signer(Arc::new(KeySigner::from_file(key_file)?))?;
    }
    let socket = cli.socket.clone();
    let identity_socket = cli.identity_socket.clone();
    let identity_wait = std::time::Duration::from_secs(cli.identity_wait_secs);
    let key_from_identity = cli.key_file.is_none();
    let served = rt.block_on(async move {
        let server =
            zeronode_types::bus::serve(&socket, OBJECT_PATH, LedgerService::new(ledger.clone()))
                .with_context(|| format!("listening on {}", socket.display()))?;
        // Reads are served from here on; the node key comes from the
        // identity module, which starts beside us, and appends queue until
        // it has come.
        tracing::info!(
            "ledger: serving org.zeronode.Ledger1 on {} in {} ms",
            socket.display(),
            started.elapsed().as_millis()
        );
        let keyed = async {
            if !key_from_identity {
                return Ok(());
            }
            let signer = IdentitySigner::connect(
                &identity_socket,
                identity_wait,
                tokio::runtime::Handle::current(),
            )
            .await
            .with_context(|| {
                format!(
                    "asking the identity module on {} for the node key",
                    identity_socket.display()
                )
            });
            let ledger = ledger.clone();
            let attached = match signer {
                Ok(signer) => {
                    tokio::task::spawn_blocking(move || ledger.attach_signer(Arc::new(signer)))
                        .await
                        .context("attaching the node key")?
                        .context("taking the node key")
                }
                Err(e) => {
                    ledger.signer_failed(format!("{e:#}"));
                    Err(e)
                }
            };
            attached?;
            tracing::info!(
                "ledger: node key at {} ms, appending",
                started.elapsed().as_millis()
            );
            anyhow::Ok(())
        };
        tokio::pin!(keyed);
        let mut keying = true;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let outcome = loop {
            tokio::select! {
                r = &mut keyed, if keying => match r {
                    Ok(()) => keying = false,
                    // Without its key the ledger cannot take orders: fail
                    // the service, so its policy restarts it.
                    Err(e) => break Err(e),
                },
                _ = term.recv() => {
                    tracing::info!("ledger: SIGTERM, stopping");
                    break Ok(());
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("ledger: SIGINT, stopping");
                    break Ok(());
                }
            }
        };
        server.abort();
        let _ = std::fs::remove_file(&socket);
        outcome
    });
    // A ledger that never got its key holds nothing: a new one leaves no
    // directory behind (the runtime, and with it the ledger, is gone).
    if served.is_err() && !existed {
        let _ = std::fs::remove_dir_all(&cli.dir);
    }
    served?;
    // Appends in flight were answered or refused; dropping the ledger
    // drains the writer and closes LMDB.
    Ok(())
}

/// Signs through the identity module (`org.zeronode.Identity1`), one
/// round trip a group commit. The ledger's writer is a plain thread, so it
/// waits on the runtime that serves D-Bus.
struct IdentitySigner {
    rt: tokio::runtime::Handle,
    proxy: Identity1Proxy<'static>,
    public_key: [u8; 32],
}

impl IdentitySigner {
    /// Connects once the module answers on `socket`, waiting up to `wait`
    /// for it to come up.
    async fn connect(
        socket: &std::path::Path,
        wait: std::time::Duration,
        rt: tokio::runtime::Handle,
    ) -> Result<Self> {
        let deadline = tokio::time::Instant::now() + wait;
        let conn = loop {
            match zeronode_types::bus::connect(socket).await {
                Ok(conn) => break conn,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(e).context(format!("no answer within {} s", wait.as_secs()))
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            }
        };
        let proxy = Identity1Proxy::new(&conn).await?;
        let info = proxy.info().await?;
        let public_key = zeronode_identity::service::parse_public_key(&info.public_key)
            .with_context(|| format!("identity answered a bad public key {:?}", info.public_key))?
            .to_bytes();
        Ok(IdentitySigner {
            rt,
            proxy,
            public_key,
        })
    }
}

impl Signer for IdentitySigner {
    fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    fn sign(&self, hash: &[u8; 32]) -> Result<[u8; 64], SignError> {
        self.sign_batch(std::slice::from_ref(hash))
            .map(|mut v| v.remove(0))
    }

    fn sign_batch(&self, hashes: &[[u8; 32]]) -> Result<Vec<[u8; 64]>, SignError> {
        let messages: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        let sigs = self
            .rt
            .block_on(self.proxy.sign_batch(&messages))
            .map_err(|e| SignError(format!("identity module: {e}")))?;
        if sigs.len() != hashes.len() {
            return Err(SignError(format!(
                "identity module answered {} signatures for {} hashes",
                sigs.len(),
                hashes.len()
            )));
        }
        sigs.into_iter()
            .map(|s| {
                <[u8; 64]>::try_from(s.as_slice()).map_err(|_| {
                    SignError(format!(
                        "identity module answered a {}-byte signature",
                        s.len()
                    ))
                })
            })
            .collect()
    }
}
