//! The store's errors. Their texts go to clients as RESP errors and D-Bus
//! errors, so they never carry a password.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid namespace name {0:?}: 1-128 of A-Z a-z 0-9 . _ - , not starting with '.'")]
    BadName(String),
    #[error("Namespace {0} already exists")]
    Exists(String),
    #[error("Namespace {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("No space left on this namespace (maxsize {limit} bytes, {used} used)")]
    Full { limit: u64, used: u64 },
    #[error("Namespace {0} stopped serving writes after a disk error; restart the store")]
    Poisoned(String),
    #[error("Corrupted record: {0}")]
    Corrupt(String),
    #[error("Namespace {0} was deleted")]
    Deleted(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub fn at(path: &Path, what: &str, source: std::io::Error) -> Self {
        Error::io(format!("{what} {}", path.display()), source)
    }
}
