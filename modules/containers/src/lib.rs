//! zeronode-containers: `container` workloads run by containerd and runc.
//!
//! Images come as OCI image archives (a tar of an OCI image layout) pinned
//! by the archive's sha256. Debian's containerd 1.6 has no transfer
//! service, so the module does the import itself through the services 1.6
//! has: blobs into the content store (under a lease, with the GC labels
//! that tie manifest, config, layers and snapshots together), an image
//! record, and layers unpacked through snapshots (Prepare), diff (Apply)
//! and Commit under their OCI chain IDs on the overlayfs snapshotter.
//!
//! Containers get an OCI runtime spec built with oci-spec, their own
//! network namespace (attached by the network module when the workload
//! names a network), logs in files the shim writes, and a restart policy.

pub mod containerd;
pub mod dbus;
pub mod fetch;
pub mod fixture;
pub mod logs;
pub mod manager;
pub mod netns;
pub mod oci;
pub mod runtime_spec;
pub mod spec;

pub use manager::{Config, Manager, Status};
pub use spec::{ContainerSpec, ImageSource, MountSpec, NetworkRef, RestartPolicy};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    #[error("no container named {0:?}")]
    NotFound(String),
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: String },
    #[error("image archive {url}: sha256 is {actual}, the workload pins {expected}; refused")]
    DigestMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("image archive: {0}")]
    Layout(String),
    #[error("cannot connect to containerd at {path}: {reason}")]
    Connect { path: String, reason: String },
    #[error("containerd: {what}: {status}")]
    Containerd {
        what: String,
        status: Box<tonic::Status>,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("network namespace {path}: {reason}")]
    Netns { path: String, reason: String },
    #[error("network module: {0}")]
    Network(String),
    #[error("state {path}: {reason}")]
    State { path: String, reason: String },
}

use containerd_client::tonic;

impl Error {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    pub fn ctd(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let what = what.into();
        move |status| Error::Containerd {
            what,
            status: Box::new(status),
        }
    }

    /// True when containerd said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Containerd { status, .. } if status.code() == tonic::Code::NotFound)
    }
}

/// containerd's configuration for the module: `root` (content, metadata,
/// snapshots: on the node cache, on a pool), `state` (runtime state: tmpfs),
/// the gRPC socket, and only the plugins the module uses (no CRI, no
/// snapshotters but overlayfs and native). The node's
/// /etc/containerd/config.toml is this with the node's paths; the tests
/// start containerd with it in a temporary directory.
pub fn containerd_config(
    root: &std::path::Path,
    state: &std::path::Path,
    socket: &std::path::Path,
) -> String {
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[debug]
  level = "warn"
"#,
        root = root.display(),
        state = state.display(),
        socket = socket.display(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The image ships containerd's config as text in image/zeronode.toml:
    /// it must be what this crate expects containerd to run with.
    #[test]
    fn the_image_ships_this_containerd_config() {
        let decl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../image/zeronode.toml");
        let text = std::fs::read_to_string(&decl).unwrap();
        let expected = super::containerd_config(
            Path::new("/var/cache/zeronode/containerd"),
            Path::new("/run/containerd"),
            Path::new("/run/containerd/containerd.sock"),
        );
        assert!(
            text.contains(&format!(
                "path = \"/etc/containerd/config.toml\"\ntext = '''\n{expected}'''"
            )),
            "image/zeronode.toml's /etc/containerd/config.toml differs from:\n{expected}"
        );
    }
}
