//! zeronode-vms: `vm` workloads run by QEMU and driven through its QMP
//! socket.
//!
//! A VM boots a kernel + initrd (+ command line) or a disk image, each
//! downloaded once and pinned by its sha256; its disks are raw files in
//! volumes of the same deployment (virtio-blk); its NIC is a tap on a
//! workload network's bridge with the network module's stable address,
//! which the guest learns from a NoCloud config drive (`cidata`) that also
//! carries SSH keys and environment. The serial console goes to a capped
//! log file; a VM that dies is started again with back-off; Stop is an
//! ACPI power-down (QMP `system_powerdown`), then a kill after a timeout.

pub mod dbus;
pub mod fixture;
pub mod manager;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod spec;
pub mod tap;

pub use manager::{Accel, Config, Manager, Status};
pub use spec::{CloudInit, DiskSpec, NetworkRef, Source, VmSpec};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("no vm named {0:?}")]
    NotFound(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("{what} {url}: sha256 is {actual}, the workload pins {expected}; refused")]
    DigestMismatch {
        what: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("tap {name}: {reason}")]
    Tap { name: String, reason: String },
    #[error("network module: {0}")]
    Network(String),
    #[error("qemu for {name}: {reason}")]
    Qemu { name: String, reason: String },
    #[error("qmp {path}: {reason}")]
    Qmp { path: String, reason: String },
    #[error("config drive: {0}")]
    Seed(String),
    #[error("state {path}: {reason}")]
    State { path: String, reason: String },
}

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

impl From<zeronode_containers::Error> for Error {
    /// The shared fetch and log helpers report in the containers' terms.
    fn from(e: zeronode_containers::Error) -> Self {
        use zeronode_containers::Error as C;
        match e {
            C::Fetch { url, reason } => Error::Fetch { url, reason },
            C::Invalid(m) => Error::Invalid(m),
            C::Io { what, source } => Error::Io { what, source },
            other => Error::Invalid(other.to_string()),
        }
    }
}
