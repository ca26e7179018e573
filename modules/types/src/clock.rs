//! Milliseconds since the kernel started (CLOCK_BOOTTIME): the clock of the
//! node's `ready in N ms` line, so a module's "bound in N ms since boot"
//! lines line up with it on the console.

/// 0 if the clock cannot be read (it always can on Linux).
pub fn since_boot_ms() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u64 * 1000 + t.tv_nsec() as u64 / 1_000_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn moves_forward_from_after_boot() {
        let a = super::since_boot_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = super::since_boot_ms();
        assert!(a > 0 && b >= a + 5, "{a} {b}");
    }
}
