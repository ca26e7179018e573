//! `zeronode-image`: writes the image artifacts (scripts/build-image runs it
//! after building the static binaries).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build ZeroNode's bootable artifacts from image/zeronode.toml")]
struct Args {
    /// The image declaration.
    #[arg(long, default_value = "image/zeronode.toml")]
    config: PathBuf,
    /// Service files shipped in the image.
    #[arg(long, default_value = "image/services")]
    services: PathBuf,
    /// Where the static binaries are (zeronode-init, baseline-init, the config's programs).
    #[arg(long, default_value = "target/x86_64-unknown-linux-musl/release")]
    bins: PathBuf,
    /// Download cache (the kernel package).
    #[arg(long, default_value = "out/cache")]
    cache: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "out/image")]
    out: PathBuf,
    /// Build even when the inputs are unchanged since the last build.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    let m = zeronode_image::build::build(&zeronode_image::build::Inputs {
        config: a.config,
        services: a.services,
        bins: a.bins,
        cache: a.cache,
        out: a.out.clone(),
        force: a.force,
    })?;
    // The one line a script may want: where, and which root hash.
    println!("{} root_hash={}", a.out.display(), m.root_hash);
    Ok(())
}
