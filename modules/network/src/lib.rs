//! zeronode-network: the node's links, management bridge and addressing
//! (our own DHCPv4 client or the kernel's static `ip=` form), and the
//! workload networks (a bridge per network, veth into the workload's
//! namespace, persisted IPAM, outbound NAT through the management bridge).
//!
//! Every step goes through rtnetlink in the caller's network namespace, so
//! the tests run the same code in namespaces they create.

pub mod dbus;
pub mod dhcp;
pub mod ipam;
pub mod links;
pub mod mgmt;
pub mod nat;
pub mod packet;
pub mod rawsock;
pub mod state;
pub mod workload;

use std::path::PathBuf;

/// The management bridge.
pub const MGMT_BRIDGE: &str = "zn0";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open a netlink socket: {0}")]
    NetlinkSocket(std::io::Error),
    #[error("netlink: {what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("no link named {0:?}")]
    NoSuchLink(String),
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("no management NIC: {0}")]
    NoMgmtNic(String),
    #[error("{0}")]
    Invalid(String),
    #[error("nft failed: {0}")]
    Nft(String),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
