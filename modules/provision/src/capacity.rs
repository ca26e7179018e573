//! What the node can give workloads: vCPUs and memory. Every deployment's
//! containers and VMs together must fit, whoever's they are; a grant's
//! quota only bounds one twin.

use std::path::Path;

use zeronode_deployment::Usage;

/// The node's capacity for container and VM workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// vCPUs (containers' cpu and VMs' cpu summed).
    pub cpu: u64,
    /// Bytes of memory (containers' and VMs' memory summed).
    pub memory: u64,
}

/// How many vCPUs a core carries by default: workloads rarely keep every
/// core busy, so cores are shared, as every cloud does. Memory is not
/// overcommitted: a node that runs out kills workloads.
pub const DEFAULT_CPU_OVERCOMMIT: u64 = 4;

/// Memory kept for the node itself (modules, containerd, page cache for the
/// ledger): the larger of this and an eighth of the total.
pub const MIN_RESERVED_MEMORY: u64 = 256 << 20;

impl Capacity {
    /// This machine's: its CPUs times `overcommit`, its memory less what
    /// the node keeps for itself.
    pub fn of_this_machine(overcommit: u64) -> std::io::Result<Capacity> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let total = mem_total(Path::new("/proc/meminfo"))?;
        Ok(Capacity::from_machine(cores, total, overcommit))
    }

    pub fn from_machine(cores: u64, mem_total: u64, overcommit: u64) -> Capacity {
        let reserved = MIN_RESERVED_MEMORY.max(mem_total / 8);
        Capacity {
            cpu: cores.saturating_mul(overcommit.max(1)),
            memory: mem_total.saturating_sub(reserved),
        }
    }

    /// The first resource `usage` does not fit in: (name, used, capacity).
    pub fn exceeded_by(&self, usage: &Usage) -> Option<(&'static str, u64, u64)> {
        [
            ("cpu", usage.cpu, self.cpu),
            ("memory", usage.memory, self.memory),
        ]
        .into_iter()
        .find(|(_, used, cap)| used > cap)
    }
}

/// MemTotal from /proc/meminfo, in bytes.
fn mem_total(meminfo: &Path) -> std::io::Result<u64> {
    let text = std::fs::read_to_string(meminfo)?;
    parse_mem_total(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("no MemTotal line in {}", meminfo.display()),
        )
    })
}

fn parse_mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut parts = line.split_whitespace().skip(1);
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_total_is_read_in_bytes() {
        let text = "MemTotal:        1008192 kB\nMemFree:          800000 kB\n";
        assert_eq!(parse_mem_total(text), Some(1008192 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: x kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: 1 MB\n"), None);
        assert!(mem_total(Path::new("/proc/meminfo")).unwrap() > 0);
    }

    #[test]
    fn the_node_keeps_memory_for_itself_and_shares_cores() {
        // A 1 GiB node (the QEMU tests'): 256 MiB kept, 768 MiB for workloads.
        let c = Capacity::from_machine(2, 1 << 30, 4);
        assert_eq!(
            c,
            Capacity {
                cpu: 8,
                memory: 768 << 20
            }
        );
        // A 64 GiB server keeps an eighth.
        let c = Capacity::from_machine(16, 64 << 30, 4);
        assert_eq!(c.memory, 56 << 30);
        // A machine smaller than the reserve has nothing to give.
        assert_eq!(Capacity::from_machine(1, 128 << 20, 0).memory, 0);
        assert_eq!(Capacity::from_machine(1, 128 << 20, 0).cpu, 1);
    }

    #[test]
    fn the_first_resource_over_capacity_is_named() {
        let c = Capacity {
            cpu: 8,
            memory: 1000,
        };
        let u = |cpu, memory| Usage {
            cpu,
            memory,
            ..Usage::default()
        };
        assert_eq!(c.exceeded_by(&u(8, 1000)), None);
        assert_eq!(c.exceeded_by(&u(9, 1000)), Some(("cpu", 9, 8)));
        assert_eq!(c.exceeded_by(&u(1, 1001)), Some(("memory", 1001, 1000)));
        // Disk and count are not the node's capacity here.
        let big = Usage {
            disk: u64::MAX,
            count: u64::MAX,
            ..Usage::default()
        };
        assert_eq!(c.exceeded_by(&big), None);
    }
}
