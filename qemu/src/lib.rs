//! Launching ZeroNode images in QEMU: the three boot paths (direct kernel,
//! UEFI disk, PXE), blank disks, user networking with the API port (and
//! any other) forwarded, the serial console captured to a file, and QMP for the power
//! button and Ctrl-Alt-Del. Used by `zeronode-qemu` and the end-to-end tests.

pub mod command;
pub mod console;
pub mod node;
pub mod qmp;

pub use command::{Accel, Boot, GUEST_API_PORT};
pub use console::Console;
pub use node::{free_port, ready_ms, Forward, Node, NodeError, NodeOptions, UdpNic};
pub use qmp::QmpError;
