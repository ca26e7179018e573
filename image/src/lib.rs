//! Builds ZeroNode's bootable artifacts (see `image/zeronode.toml` for what
//! goes in and README.md for the boot design).

pub mod build;
pub mod config;
pub mod cpio;
pub mod disk;
pub mod kernel;
pub mod modules;
pub mod uki;
