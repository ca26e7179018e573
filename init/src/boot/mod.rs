//! Bringing the machine up as PID 1, and taking it down again.

pub mod early_hash;
pub mod early_modules;
pub mod kmod;
pub mod logging;
pub mod loopdev;
pub mod modprobe;
pub mod mounts;
pub mod net;
pub mod parallel_hash;
pub mod pid1;
pub mod power_button;
pub mod rcu;
pub mod rootfs;
pub mod runtime_image;
pub mod shutdown;
pub mod static_nodes;
pub mod watchdog;
