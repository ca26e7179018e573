//! The library's errors: each says what failed on which path or device.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{path}: {what}: {source}")]
    Sys {
        path: PathBuf,
        what: &'static str,
        source: nix::Error,
    },
    #[error("{path}: {reason}")]
    BadDevice { path: PathBuf, reason: String },
    #[error("volume name {name:?}: {reason}")]
    BadVolumeName { name: String, reason: &'static str },
    #[error("volume {0:?} already exists")]
    VolumeExists(String),
    #[error("no volume named {0:?}")]
    NoSuchVolume(String),
    #[error("volume size {size} bytes: {reason}")]
    BadSize { size: u64, reason: String },
    #[error("no pool is mounted: a volume needs a disk")]
    NoPool,
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Shorthand for mapping an io::Error to [`StorageError::Io`].
pub(crate) fn io(
    path: impl Into<PathBuf>,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Io { path, what, source }
}

/// Shorthand for mapping a nix::Error to [`StorageError::Sys`].
pub(crate) fn sys(
    path: impl Into<PathBuf>,
    what: &'static str,
) -> impl FnOnce(nix::Error) -> StorageError {
    let path = path.into();
    move |source| StorageError::Sys { path, what, source }
}
