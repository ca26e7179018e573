//! zn: the owner's client. Keys, deployment documents, signing, and the
//! node's provision API over HTTPS pinned to a node id. `--json` prints
//! machine-readable output on every command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use zeronode_client::{api::now_secs, keys, spec, Client, ClientError};
use zeronode_deployment::{decode, sign_value, Deployment};

#[derive(Parser)]
#[command(
    name = "zn",
    version,
    about = "ZeroNode client: keys, signed deployments, grants, proofs"
)]
struct Cli {
    /// The node's API, https://HOST:PORT (env ZN_NODE).
    #[arg(long, global = true, env = "ZN_NODE")]
    node: Option<String>,
    /// Pin the node: its id (base32 of its ed25519 key, env ZN_NODE_ID).
    #[arg(long, global = true, env = "ZN_NODE_ID")]
    node_id: Option<String>,
    /// Key file(s) to sign with (64 hex digits of a seed); reads use the first.
    #[arg(long = "key", short = 'k', global = true, env = "ZN_KEY")]
    keys: Vec<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Keys: generate, import, pubkey.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Write a deployment document (JSON) from a TOML spec; signs it with --key.
    Build {
        spec: PathBuf,
        #[arg(long, short)]
        out: PathBuf,
        /// Override the spec's version.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Add signatures of every --key to a document, in place or into --out.
    Sign {
        doc: PathBuf,
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Send a signed deployment (a .json document, or a .toml spec built and
    /// signed on the fly).
    Deploy {
        doc: PathBuf,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Send a signed deployment of a higher version.
    Update {
        doc: PathBuf,
        #[arg(long)]
        version: Option<u64>,
    },
    /// Delete a deployment: signs a delete order of VERSION with every --key.
    Delete {
        id: String,
        #[arg(long)]
        version: u64,
    },
    /// A deployment and its workloads' states.
    Get { id: String },
    /// The deployments the key may see.
    List,
    /// The ledger entries of a deployment (orders and results).
    Changes { id: String },
    /// A workload's logs (a container's stdout and stderr, the last bytes).
    Logs {
        id: String,
        name: String,
        #[arg(long)]
        max_bytes: Option<u64>,
    },
    /// Poll a deployment until every workload is ok or failed.
    Watch {
        id: String,
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Authorise a twin on the node (signed by the owner's --key).
    Grant {
        #[arg(long)]
        twin: String,
        #[arg(long)]
        version: u64,
        /// Seconds from now.
        #[arg(long, default_value_t = 30 * 24 * 3600)]
        valid_for: u64,
        #[arg(long, default_value_t = 0)]
        cpu: u64,
        #[arg(long, default_value_t = 0)]
        memory: u64,
        #[arg(long, default_value_t = 0)]
        disk: u64,
        #[arg(long, default_value_t = 0)]
        count: u64,
    },
    /// Withdraw a twin's grant (a later grant version with revoked: true).
    Revoke {
        #[arg(long)]
        twin: String,
        #[arg(long)]
        version: u64,
    },
    /// Fetch and verify the ledger inclusion proof of a deployment's live version.
    Proof { id: String },
    /// The node's id, farm, capacity and ledger head (no key needed).
    Node,
    /// GET /v1/health.
    Health,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// A new key into FILE; prints its public key and mnemonic.
    Generate { file: PathBuf },
    /// A key from --seed HEX or --mnemonic "WORDS" into FILE.
    Import {
        file: PathBuf,
        #[arg(long, conflicts_with = "mnemonic")]
        seed: Option<String>,
        #[arg(long)]
        mnemonic: Option<String>,
    },
    /// The public key (twin) of --key.
    Pubkey,
}

fn main() {
    let cli = Cli::parse();
    let json_out = cli.json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zn: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        let refused = e.downcast_ref::<ClientError>();
        if json_out {
            let (code, status) = match refused {
                Some(ClientError::Refused { code, status, .. }) => (code.clone(), *status),
                _ => ("client_error".to_string(), 0),
            };
            println!(
                "{}",
                json!({"error": {"code": code, "status": status, "message": format!("{e:#}")}})
            );
        } else {
            eprintln!("zn: {e:#}");
        }
        std::process::exit(if refused.is_some_and(|r| r.code().is_some()) {
            1
        } else {
            2
        });
    }
}

fn print(json_out: bool, v: &Value, text: impl FnOnce() -> String) {
    if json_out {
        println!("{v}");
    } else {
        println!("{}", text());
    }
}

fn load_keys(paths: &[PathBuf]) -> Result<Vec<SigningKey>> {
    paths
        .iter()
        .map(|p| keys::load(p).map_err(anyhow::Error::from))
        .collect()
}

fn first_key(paths: &[PathBuf]) -> Result<SigningKey> {
    load_keys(paths)?
        .into_iter()
        .next()
        .context("this command needs --key FILE")
}

fn client(cli: &Cli) -> Result<Client> {
    let url = cli
        .node
        .as_deref()
        .context("--node https://HOST:PORT is needed")?;
    if cli.node_id.is_none() && !matches!(cli.cmd, Cmd::Node | Cmd::Health) {
        bail!("--node-id is needed to pin the node (`zn node --node URL` prints it)");
    }
    Ok(Client::new(url, cli.node_id.as_deref())?)
}

/// A document to send: JSON read as is (its bytes are what gets signed and
/// stored), or a TOML spec built and signed with --key.
fn document(path: &Path, keys: &[SigningKey], version: Option<u64>) -> Result<Vec<u8>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        let first = keys.first().context("a spec needs --key to be signed")?;
        let mut v = spec::build(
            std::str::from_utf8(&text).context("spec is not UTF-8")?,
            Some(&keys::public_hex(first)),
            version,
            now_secs(),
        )?;
        for k in keys {
            sign_value(&mut v, k)?;
        }
        return Ok(serde_json::to_vec_pretty(&v)?);
    }
    if version.is_some() {
        bail!("--version applies to a .toml spec; edit and re-sign a JSON document instead");
    }
    Ok(text)
}

fn receipt_out(json_out: bool, r: &zeronode_deployment::Receipt) -> Result<()> {
    let v = serde_json::to_value(r)?;
    print(json_out, &v, || {
        format!(
            "accepted: {} {} version {} -> ledger seq {} (entry {}), tree size {}",
            r.kind, r.deployment, r.version, r.seq, r.entry_hash, r.tree_size
        )
    });
    Ok(())
}

fn states_text(v: &Value) -> String {
    let mut s = format!(
        "{} version {} (twin {}), ledger seq {}",
        v["id"].as_str().unwrap_or(""),
        v["version"],
        v["twin"].as_str().unwrap_or(""),
        v["seq"]
    );
    for w in v["workloads"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "\n  {:<16} {:<10} {:<8} {}",
            w["name"].as_str().unwrap_or(""),
            w["type"].as_str().unwrap_or(""),
            w["state"].as_str().unwrap_or(""),
            w["reason"].as_str().unwrap_or("")
        ));
    }
    s
}

async fn run(cli: Cli) -> Result<()> {
    let j = cli.json;
    match &cli.cmd {
        Cmd::Key(KeyCmd::Generate { file }) => {
            let (k, words) = keys::generate()?;
            keys::save(file, &k)?;
            let pk = keys::public_hex(&k);
            print(
                j,
                &json!({"public_key": pk, "mnemonic": words, "file": file}),
                || format!("public key {pk}\nmnemonic (keep it safe): {words}"),
            );
        }
        Cmd::Key(KeyCmd::Import {
            file,
            seed,
            mnemonic,
        }) => {
            let k = match (seed, mnemonic) {
                (Some(s), None) => keys::from_seed_hex(s)?,
                (None, Some(m)) => keys::from_mnemonic(m)?,
                _ => bail!("give --seed HEX or --mnemonic \"WORDS\""),
            };
            keys::save(file, &k)?;
            let pk = keys::public_hex(&k);
            print(j, &json!({"public_key": pk, "file": file}), || {
                format!("public key {pk}")
            });
        }
        Cmd::Key(KeyCmd::Pubkey) => {
            let pk = keys::public_hex(&first_key(&cli.keys)?);
            print(j, &json!({"public_key": pk}), || pk.clone());
        }
        Cmd::Build {
            spec: path,
            out,
            version,
        } => {
            let ks = load_keys(&cli.keys)?;
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let first = ks.first().map(keys::public_hex);
            let mut v = spec::build(&text, first.as_deref(), *version, now_secs())?;
            for k in &ks {
                sign_value(&mut v, k)?;
            }
            let bytes = serde_json::to_vec_pretty(&v)?;
            decode::<Deployment>(&bytes).context("the built document")?;
            std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
            print(j, &json!({"file": out, "signatures": ks.len()}), || {
                format!("wrote {} ({} signature(s))", out.display(), ks.len())
            });
        }
        Cmd::Sign { doc, out } => {
            let ks = load_keys(&cli.keys)?;
            if ks.is_empty() {
                bail!("sign needs at least one --key");
            }
            let bytes = std::fs::read(doc).with_context(|| format!("reading {}", doc.display()))?;
            let mut v = zeronode_deployment::strict::parse(&bytes).context("document")?;
            for k in &ks {
                sign_value(&mut v, k)?;
            }
            let out = out.as_ref().unwrap_or(doc);
            std::fs::write(out, serde_json::to_vec_pretty(&v)?)
                .with_context(|| format!("writing {}", out.display()))?;
            print(
                j,
                &json!({"file": out, "signed_by": ks.iter().map(keys::public_hex).collect::<Vec<_>>()}),
                || format!("signed {} with {} key(s)", out.display(), ks.len()),
            );
        }
        Cmd::Deploy { doc, version } => {
            let bytes = document(doc, &load_keys(&cli.keys)?, *version)?;
            receipt_out(j, &client(&cli)?.deploy(bytes).await?)?;
        }
        Cmd::Update { doc, version } => {
            let bytes = document(doc, &load_keys(&cli.keys)?, *version)?;
            let id = decode::<Deployment>(&bytes)
                .map(|p| p.doc.id)
                .context("the document does not decode")?;
            receipt_out(j, &client(&cli)?.update(&id, bytes).await?)?;
        }
        Cmd::Delete { id, version } => {
            let ks = load_keys(&cli.keys)?;
            let first = ks.first().context("delete needs --key")?;
            let mut v = json!({"kind": "delete", "id": id, "version": version, "twin": keys::public_hex(first)});
            for k in &ks {
                sign_value(&mut v, k)?;
            }
            receipt_out(j, &client(&cli)?.delete(id, serde_json::to_vec(&v)?).await?)?;
        }
        Cmd::Get { id } => {
            let v = client(&cli)?.get(id, &first_key(&cli.keys)?).await?;
            print(j, &v, || states_text(&v));
        }
        Cmd::List => {
            let v = client(&cli)?.list(&first_key(&cli.keys)?).await?;
            print(j, &v, || {
                v["deployments"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(states_text)
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Cmd::Changes { id } => {
            let v = client(&cli)?.changes(id, &first_key(&cli.keys)?).await?;
            print(j, &v, || {
                v["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        format!(
                            "seq {} {} version {} {}",
                            c["seq"],
                            c["kind"].as_str().unwrap_or(""),
                            c["version"],
                            c["summary"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        Cmd::Logs {
            id,
            name,
            max_bytes,
        } => {
            let v = client(&cli)?
                .logs(id, name, *max_bytes, &first_key(&cli.keys)?)
                .await?;
            print(j, &v, || {
                v["logs"].as_str().unwrap_or("").trim_end().to_string()
            });
        }
        Cmd::Watch { id, timeout } => {
            let c = client(&cli)?;
            let k = first_key(&cli.keys)?;
            let deadline = std::time::Instant::now() + Duration::from_secs(*timeout);
            loop {
                let v = c.get(id, &k).await?;
                let done = v["workloads"]
                    .as_array()
                    .is_some_and(|ws| ws.iter().all(|w| w["state"] != "pending"));
                if done || std::time::Instant::now() > deadline {
                    print(j, &v, || states_text(&v));
                    if !done {
                        bail!("still pending after {timeout} s");
                    }
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        Cmd::Grant {
            twin,
            version,
            valid_for,
            cpu,
            memory,
            disk,
            count,
        } => {
            let owner = first_key(&cli.keys)?;
            let mut v = json!({"kind": "grant", "twin": twin, "version": version,
                "expiration": now_secs() + valid_for, "revoked": false,
                "quota": {"cpu": cpu, "memory": memory, "disk": disk, "count": count}});
            sign_value(&mut v, &owner)?;
            receipt_out(j, &client(&cli)?.grant(serde_json::to_vec(&v)?).await?)?;
        }
        Cmd::Revoke { twin, version } => {
            let owner = first_key(&cli.keys)?;
            let mut v = json!({"kind": "grant", "twin": twin, "version": version,
                "expiration": now_secs(), "revoked": true,
                "quota": {"cpu": 0, "memory": 0, "disk": 0, "count": 0}});
            sign_value(&mut v, &owner)?;
            receipt_out(j, &client(&cli)?.grant(serde_json::to_vec(&v)?).await?)?;
        }
        Cmd::Proof { id } => {
            let r = client(&cli)?.proof(id, &first_key(&cli.keys)?).await?;
            let v = serde_json::to_value(&r)?;
            print(j, &v, || {
                format!(
                    "verified: {} version {} is ledger entry {} ({}) in the node-signed tree of {} entries, root {}",
                    r.deployment, r.version, r.seq, r.entry_hash, r.tree_size, r.tree_root
                )
            });
        }
        Cmd::Node => {
            let v = client(&cli)?.node().await?;
            print(j, &v, || {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            });
        }
        Cmd::Health => {
            let v = client(&cli)?.health().await?;
            print(j, &v, || v.to_string());
        }
    }
    Ok(())
}
