//! Builds ZeroNode's bootable artifacts (see `image/zeronode.toml` for what
//! goes in and DESIGN.md for the boot design).

pub mod build;
pub mod compress;
pub mod config;
pub mod cpio;
pub mod elf;
pub mod error;
pub mod fat;
pub mod gpt;
pub mod kernel;
pub mod kmod;
pub mod manifest;
pub mod module_edits;
pub mod module_rebuild;
pub mod pvh;
pub mod squashfs;
#[cfg(test)]
mod test_elf;
pub mod uki;

pub use error::{Error, Result};
