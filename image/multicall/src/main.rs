//! `zeronode`: every module of the node in one static binary. The image
//! installs it once, as /usr/bin/zeronode, with a symlink for each module
//! (/usr/bin/zeronode-storage -> zeronode ...), from image/zeronode.toml's
//! `multicall` list; run through a link, it runs
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
#[path = "../../../modules/vms/src/main.rs"]
mod vms;
#[path = "../../../init/src/bin/znctl.rs"]
mod znctl;

type Main = fn() -> ExitCode;

/// A module's `main`, whatever it returns, as an exit code.
fn report<T: Termination>(main: fn() -> T) -> ExitCode {
    main().report()
}

/// The names it answers to (image/zeronode.toml's `multicall` list must
/// match: the image test checks), each with its module's `main`.
const MODULES: &[(&str, Main)] = &[
    ("zeronode-containers", || report(containers::main)),
    ("zeronode-identity", || report(identity::main)),
    ("zeronode-ledger", || report(ledger::main)),
    ("zeronode-network", || report(network::main)),
    ("zeronode-provision", || report(provision::main)),
    ("zeronode-shards", || report(shards::main)),
    ("zeronode-storage", || report(storage::main)),
    ("zeronode-vms", || report(vms::main)),
    ("znctl", || report(znctl::main)),
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

#[cfg(test)]
mod tests {
    use super::MODULES;

    /// The image links exactly the names this binary answers to: a module
    /// added here but not there (or the reverse) would be missing on the
    /// node, or a dangling link.
    #[test]
    fn image_config_links_every_module_and_nothing_else() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../zeronode.toml");
        let text = std::fs::read_to_string(path).expect("read image/zeronode.toml");
        let cfg: toml::Table = toml::from_str(&text).expect("parse image/zeronode.toml");
        let listed: Vec<&str> = cfg["system"]["multicall"]
            .as_array()
            .expect("[system] multicall is a list")
            .iter()
            .map(|v| v.as_str().expect("names are strings"))
            .collect();
        let ours: Vec<&str> = MODULES.iter().map(|(n, _)| *n).collect();
        assert_eq!(listed, ours);
    }

    #[test]
    fn module_names_are_unique() {
        let mut names: Vec<&str> = MODULES.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), MODULES.len());
    }
}
