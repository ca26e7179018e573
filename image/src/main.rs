//! `zeronode-image`: writes the image artifacts (see scripts/build-image).

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Build ZeroNode's bootable artifacts")]
struct Args {
    /// The image declaration.
    #[arg(long, default_value = "image/zeronode.toml")]
    config: PathBuf,
    /// Service files shipped in the image.
    #[arg(long, default_value = "image/services")]
    services: PathBuf,
    /// Where the static binaries are (zeronode-init, baseline-init).
    #[arg(long, default_value = "target/x86_64-unknown-linux-musl/release")]
    bins: PathBuf,
    /// Download cache (the kernel package).
    #[arg(long, default_value = "out/cache")]
    cache: PathBuf,
    /// Output directory.
    #[arg(long, default_value = "out/image")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_target(false)
        .without_time()
        .init();
    let a = Args::parse();
    zeronode_image::build::build(&zeronode_image::build::Inputs {
        config: a.config,
        services: a.services,
        bins: a.bins,
        cache: a.cache,
        out: a.out,
    })
}
