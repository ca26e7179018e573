//! What the node's modules share: the boot config from the kernel command
//! line, and how they reach each other over D-Bus.

pub mod boot_config;
pub mod bus;
pub mod clock;
pub mod logging;
pub mod ready;
pub mod uevent;
