//! Launching ZeroNode images in QEMU: the three boot paths, blank disks,
//! user networking with the API port forwarded, the serial console captured
//! to a file, and QMP for the power button and Ctrl-Alt-Del.

pub mod node;
pub mod qmp;

pub use node::{Boot, Node, NodeError, NodeOptions};
