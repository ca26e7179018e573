//! ZeroNode's PID 1.
//!
//! `boot` brings the machine up when this runs as PID 1 (mounts, the kernel
//! command line, kernel modules, the immutable root, power-off and reboot).
//! `supervisor` starts and watches the node's services; it runs the same way
//! as PID 1 and as an ordinary process with a config directory, which is how
//! the host tests drive it. `control` exposes the supervisor over D-Bus.

pub mod boot;
pub mod control;
pub mod run;
pub mod supervisor;
