//! Disks that come after bring-up: a SATA disk that AHCI's asynchronous
//! port scan found late, a USB disk, a disk hot-plugged into a running
//! node. The kernel announces each on the uevent socket; each goes through
//! the boot's policy (`node::add_late_disk`).

use std::sync::{Arc, RwLock};

use zeronode_types::uevent::{Uevent, UeventSocket};

use crate::node::{add_late_disk, Config, DiskState, Node};
use crate::sysfs::virtual_kind;

/// The whole disk a uevent announces, if it is one storage may pool.
pub fn added_disk(msg: &[u8]) -> Option<String> {
    let e = Uevent::parse(msg)?;
    let disk = e.action == "add" && e.get("SUBSYSTEM") == Some("block");
    let name = e
        .get("DEVNAME")
        .filter(|_| disk && e.get("DEVTYPE") == Some("disk"))?;
    // Partitions and virtual devices (loop, zram, dm...) are not disks;
    // DEVNAME may carry a directory for other devices, never for these.
    (virtual_kind(name).is_none() && !name.contains('/')).then(|| name.to_string())
}

/// Watches `socket` for disks for as long as the service runs. `socket` was
/// opened before bring-up scanned /sys, so a disk that came in between is
/// announced here (and skipped if bring-up saw it).
pub fn watch(cfg: Config, socket: UeventSocket, node: Arc<RwLock<Node>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match socket.wait(-1) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                return tracing::warn!("uevent socket: {e}; disks added from now on are not pooled")
            }
        }
        loop {
            let name = match socket.recv(&mut buf) {
                Ok([]) | Err(nix::Error::EAGAIN) => break,
                Ok(msg) => added_disk(msg),
                Err(nix::Error::EINTR) => continue,
                // Events were dropped: a disk among them is found by /sys.
                Err(nix::Error::ENOBUFS) => {
                    rescan(&cfg, &node);
                    continue;
                }
                Err(e) => {
                    return tracing::warn!(
                        "uevent socket: {e}; disks added from now on are not pooled"
                    )
                }
            };
            if let Some(name) = name {
                take(&cfg, &node, &name);
            }
        }
    }
}

fn rescan(cfg: &Config, node: &RwLock<Node>) {
    match cfg.sysfs.scan() {
        Ok(disks) => disks.iter().for_each(|d| take(cfg, node, &d.name)),
        Err(e) => tracing::warn!("rescanning disks: {e}"),
    }
}

fn take(cfg: &Config, node: &RwLock<Node>, name: &str) {
    if let Some(DiskState::Pool { label, .. }) = add_late_disk(cfg, node, name) {
        tracing::info!("late disk {name}: pool {label} is in service");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(fields: &[&str]) -> Vec<u8> {
        let mut m = b"add@/devices/x".to_vec();
        for f in fields {
            m.push(0);
            m.extend_from_slice(f.as_bytes());
        }
        m
    }

    #[test]
    fn only_whole_real_disks_added_are_taken() {
        let disk = ["SUBSYSTEM=block", "DEVTYPE=disk", "DEVNAME=sdb"];
        assert_eq!(added_disk(&event(&disk)).as_deref(), Some("sdb"));
        let part = ["SUBSYSTEM=block", "DEVTYPE=partition", "DEVNAME=sdb1"];
        assert_eq!(added_disk(&event(&part)), None);
        let lo = ["SUBSYSTEM=block", "DEVTYPE=disk", "DEVNAME=loop3"];
        assert_eq!(added_disk(&event(&lo)), None);
        let tty = ["SUBSYSTEM=tty", "DEVNAME=ttyS1"];
        assert_eq!(added_disk(&event(&tty)), None);
        let removed = [b"remove@/devices/x".as_slice(), &event(&disk)[14..]].concat();
        assert_eq!(added_disk(&removed), None);
    }
}
