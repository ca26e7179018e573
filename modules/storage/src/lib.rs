//! zeronode-storage: the node's disks. Finds them in /sys/block, pools blank
//! ones as btrfs, reuses ZeroNode pools, leaves every other disk alone unless
//! `zeronode.wipe=` names it, puts the node cache on the first pool, and
//! serves volumes for workloads over D-Bus (org.zeronode.Storage1).
//! See README.md for the rules.

pub mod btrfs;
pub mod btrfs_format;
pub mod dbus;
pub mod error;
pub mod late_disks;
pub mod mounts;
pub mod node;
pub mod probe;
pub mod sysfs;
pub mod volumes;

pub use error::{Result, StorageError};
pub use node::{bring_up, Cache, Config, DiskReport, DiskState, Node, Pool};
