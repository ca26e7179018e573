//! A /init that does nothing but say when user space began, then powers
//! off: the floor that ZeroNode's boot time is measured against.

use std::io::Write;

fn main() {
    let ms = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() * 1000 + t.tv_nsec() / 1_000_000)
        .unwrap_or(-1);
    let mut out = std::io::stdout();
    let _ = writeln!(out, "baseline: userspace at {ms} ms");
    let _ = out.flush();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    loop {
        std::thread::park();
    }
}
