//! Disks that come after bring-up: a SATA disk that AHCI's asynchronous
//! port scan found late, a USB disk, a disk hot-plugged into a running
//! node. The kernel announces each on the uevent socket; each goes through
//! the boot's policy (`node::add_late_disk`). Disks that go (unplugged)
//! take their pool out of service (`node::remove_disk`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use zeronode_types::uevent::{Uevent, UeventSocket};

use crate::node::{add_late_disk, finish_pending, remove_disk, Config, DiskState, Node, Pending};
use crate::sysfs::virtual_kind;

/// What a uevent says about a whole disk storage may pool.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskEvent {
    Added(String),
    Removed(String),
}

pub fn disk_event(msg: &[u8]) -> Option<DiskEvent> {
    let e = Uevent::parse(msg)?;
    let disk = e.get("SUBSYSTEM") == Some("block") && e.get("DEVTYPE") == Some("disk");
    let name = e.get("DEVNAME").filter(|_| disk)?;
    // Partitions and virtual devices (loop, zram, dm...) are not disks;
    // DEVNAME may carry a directory for other devices, never for these.
    if virtual_kind(name).is_some() || name.contains('/') {
        return None;
    }
    match e.action {
        "add" => Some(DiskEvent::Added(name.to_string())),
        "remove" => Some(DiskEvent::Removed(name.to_string())),
        _ => None,
    }
}

/// How long the blank disks bring-up left wait for the node's ready mark.
const READY_WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The service's disk thread: formats the blank disks bring-up left (once
/// `ready_mark` exists, if given, or after [`READY_WAIT_LIMIT`]), then
/// watches `socket` (if any) for disks that come later. Uevents that arrive
/// meanwhile wait in the socket, and a disk formatted here is known by the
/// time its event is read.
pub fn run(
    cfg: Config,
    pending: Vec<Pending>,
    ready_mark: Option<PathBuf>,
    socket: Option<UeventSocket>,
    node: Arc<RwLock<Node>>,
) {
    // Formatting and mounting a pool is kernel work too (btrfs starts its
    // worker threads at mount), which no nice value of ours reaches: before
    // the ready line it took CPU from identity, ledger and provision.
    if let (Some(mark), false) = (&ready_mark, pending.is_empty()) {
        if !zeronode_types::ready::wait_for(mark, READY_WAIT_LIMIT) {
            tracing::warn!(
                "{} not there after {} s: formatting the blank disks anyway",
                mark.display(),
                READY_WAIT_LIMIT.as_secs()
            );
        }
    }
    // Nothing waits for these formats: they yield the CPUs to the services
    // starting beside them (the threads started from here inherit this
    // thread's nice value).
    // SAFETY: a plain system call on the calling thread.
    if unsafe { nix::libc::setpriority(nix::libc::PRIO_PROCESS as _, 0, 10) } != 0 {
        tracing::debug!(
            "lowering the disk thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
    finish_pending(&cfg, &node, pending);
    if let Some(socket) = socket {
        watch(cfg, socket, node);
    }
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
            let event = match socket.recv(&mut buf) {
                Ok([]) | Err(nix::Error::EAGAIN) => break,
                Ok(msg) => disk_event(msg),
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
            match event {
                Some(DiskEvent::Added(name)) => take(&cfg, &node, &name),
                Some(DiskEvent::Removed(name)) => gone(&node, &name),
                None => {}
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

fn gone(node: &RwLock<Node>, name: &str) {
    let Some(report) = remove_disk(node, name) else {
        return;
    };
    let DiskState::Pool { label, .. } = report.state else {
        return tracing::info!("disk {name} removed");
    };
    let cache = node.read().unwrap_or_else(|p| p.into_inner()).cache.clone();
    if cache.pool.as_deref() == Some(label.as_str()) {
        tracing::error!(
            "disk {name} removed: pool {label} held the node cache ({}): what the services \
             keep there fails until the disk is back and the node restarts",
            cache.path.display()
        );
    } else {
        tracing::info!("disk {name} removed: pool {label} is out of service");
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
    fn only_whole_real_disks_count() {
        let disk = ["SUBSYSTEM=block", "DEVTYPE=disk", "DEVNAME=sdb"];
        assert_eq!(
            disk_event(&event(&disk)),
            Some(DiskEvent::Added("sdb".into()))
        );
        let part = ["SUBSYSTEM=block", "DEVTYPE=partition", "DEVNAME=sdb1"];
        assert_eq!(disk_event(&event(&part)), None);
        let lo = ["SUBSYSTEM=block", "DEVTYPE=disk", "DEVNAME=loop3"];
        assert_eq!(disk_event(&event(&lo)), None);
        let tty = ["SUBSYSTEM=tty", "DEVNAME=ttyS1"];
        assert_eq!(disk_event(&event(&tty)), None);
        let removed = [b"remove@/devices/x".as_slice(), &event(&disk)[14..]].concat();
        assert_eq!(disk_event(&removed), Some(DiskEvent::Removed("sdb".into())));
        let changed = [b"change@/devices/x".as_slice(), &event(&disk)[14..]].concat();
        assert_eq!(disk_event(&changed), None);
    }
}
