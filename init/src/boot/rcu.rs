//! RCU grace periods expedited on the way to ready.
//!
//! The kernel expedites its grace periods through its own boot and stops as
//! it starts /init. From there every `synchronize_rcu` on the way to ready
//! (a loop device's queue freeze, a mount, a bridge, a module's init) waits
//! a normal grace period: a few scheduler ticks, many more under emulation.
//! PID 1 keeps them expedited until the ready line, then gives the normal
//! ones back: an expedited grace period interrupts every CPU, and workloads
//! should not pay for that.

use std::path::{Path, PathBuf};

/// The kernel's switch (0 or 1), present on every SMP RCU flavour.
const KNOB: &str = "/sys/kernel/rcu_expedited";

/// Grace periods expedited by us, until `normal` undoes it.
#[derive(Debug)]
pub struct Expedited {
    knob: PathBuf,
    /// False when the kernel expedited them already (`rcupdate.rcu_expedited=1`
    /// on the command line): that choice is the operator's and stays.
    ours: bool,
}

impl Expedited {
    /// Expedites grace periods unless they are already.
    pub fn start() -> Self {
        Self::start_at(Path::new(KNOB))
    }

    fn start_at(knob: &Path) -> Self {
        let ours = match std::fs::read_to_string(knob) {
            Ok(v) if v.trim() == "0" => match std::fs::write(knob, "1") {
                Ok(()) => {
                    tracing::debug!("RCU grace periods expedited until ready");
                    true
                }
                Err(e) => {
                    tracing::debug!("expediting RCU grace periods ({}): {e}", knob.display());
                    false
                }
            },
            Ok(_) => false,
            Err(e) => {
                tracing::debug!("reading {}: {e}", knob.display());
                false
            }
        };
        Self {
            knob: knob.to_path_buf(),
            ours,
        }
    }

    /// Back to normal grace periods, if we expedited them.
    pub fn normal(self) {
        if !self.ours {
            return;
        }
        match std::fs::write(&self.knob, "0") {
            Ok(()) => tracing::debug!("RCU grace periods normal again"),
            Err(e) => tracing::warn!(
                "RCU grace periods stay expedited ({}): {e}",
                self.knob.display()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn knob(value: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rcu_expedited");
        std::fs::write(&path, value).unwrap();
        (dir, path)
    }

    #[test]
    fn expedites_until_normal() {
        let (_dir, path) = knob("0\n");
        let e = Expedited::start_at(&path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1");
        e.normal();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0");
    }

    #[test]
    fn leaves_an_operators_choice_alone() {
        let (_dir, path) = knob("1\n");
        Expedited::start_at(&path).normal();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
    }

    #[test]
    fn no_knob_is_no_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        Expedited::start_at(&path).normal();
        assert!(!path.exists());
    }
}
