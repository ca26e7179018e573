//! `zeronode`: every module of the node in one static binary. The image
//! installs it once, as /usr/bin/zeronode, with a symlink for each module
//! (/usr/bin/zeronode-storage -> zeronode ...); run through a link, it runs
//! that module's own `main`, the very file its crate builds as a binary
//! for tests. One binary instead of one a module: the code they share
//! (tokio, zbus, rustls, serde, the std) is in the image, hashed at boot
//! and paged in from the squashfs once instead of seven times.

use std::process::{ExitCode, Termination};

#[path = "../../../modules/containers/src/main.rs"]
mod containers;
#[path = "../../../modules/identity/src/main.rs"]
mod identity;
#[path = "../../../modules/ledger/src/main.rs"]
mod ledger;
#[path = "../../../modules/network/src/main.rs"]
mod network;
#[path = "../../../modules/provision/src/main.rs"]
mod provision;
#[path = "../../../modules/shards/src/main.rs"]
mod shards;
#[path = "../../../modules/storage/src/main.rs"]
mod storage;

/// The names it answers to (image/zeronode.toml's `multicall` list must
/// match: the image test checks), each with its module's `main`.
const MODULES: &[(&str, fn() -> ExitCode)] = &[
    ("zeronode-containers", || containers::main().report()),
    ("zeronode-identity", || identity::main().report()),
    ("zeronode-ledger", || ledger::main().report()),
    ("zeronode-network", || network::main().report()),
    ("zeronode-provision", || provision::main().report()),
    ("zeronode-shards", || shards::main().report()),
    ("zeronode-storage", || storage::main().report()),
];

fn main() -> ExitCode {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    let name = std::path::Path::new(&arg0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, run)) = MODULES.iter().find(|(n, _)| *n == name) {
        return run();
    }
    let names: Vec<&str> = MODULES.iter().map(|(n, _)| *n).collect();
    if std::env::args().nth(1).as_deref() == Some("--list") {
        println!("{}", names.join("\n"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "zeronode: run as {name:?}; run it through a link named one of: {} (or `zeronode --list`)",
        names.join(", ")
    );
    ExitCode::from(2)
}
