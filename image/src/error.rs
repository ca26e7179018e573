//! The builder's errors: each names the step, the file or the command that
//! failed, so a failed build says what to fix.

use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

use crate::config::ConfigError;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start {command} (is it installed? scripts/build-image installs it): {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error(
        "the pinned kernel {spec} cannot be downloaded from Debian's archive (superseded or \
         removed?): pick a version that `apt-cache policy {package}` or \
         `apt-cache search linux-image-6.1` lists and update [kernel] in image/zeronode.toml"
    )]
    KernelUnavailable { spec: String, package: String },
    #[error("{deb} holds no {vmlinuz}: is kernel.release in image/zeronode.toml right?")]
    KernelLayout { deb: PathBuf, vmlinuz: PathBuf },
    #[error("{file}:{line}: {reason}")]
    ModulesDep {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("rebuilding kernel module {module} ([kernel] rebuild): {reason}")]
    Rebuild { module: String, reason: String },
    #[error("the kernel's ELF for direct boot: {reason}")]
    Kernel { reason: String },
    #[error("modules not in kernel {release} (neither loadable nor built in): {names}")]
    MissingModules { release: String, names: String },
    #[error("{}: {reason}", path.display())]
    Elf { path: PathBuf, reason: String },
    #[error("{}: needs {lib}, found in none of {searched}", path.display())]
    MissingLibrary {
        path: PathBuf,
        lib: String,
        searched: String,
    },
    #[error("{}: not a usable EFI stub: {reason}", path.display())]
    Stub { path: PathBuf, reason: String },
    #[error("{what}: {reason}")]
    Disk { what: &'static str, reason: String },
    #[error("cpio entry {path}: {reason}")]
    Cpio { path: String, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// `map_err` helper: an I/O error with what was being done to which path.
pub fn io(what: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().to_path_buf();
    move |source| Error::Io { what, path, source }
}

/// Runs `cmd` to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    let command = format!("{cmd:?}");
    let out = cmd.output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        return Err(Error::Command {
            command,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}
