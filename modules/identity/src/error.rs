use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a node key ({reason}); refusing to replace it, since that would change the node's identity")]
    BadKeyFile { path: PathBuf, reason: String },
    #[error("no randomness from the kernel for a new key: {0}")]
    Random(String),
    #[error("{input:?} is not a node id: {reason}")]
    BadNodeId { input: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn io(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
