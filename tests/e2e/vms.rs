//! VM workloads on a booted node (QEMU inside QEMU, both TCG): the host
//! serves Debian's kernel and a tiny initramfs over QEMU's user network;
//! the owner deploys network + volume + vm; the guest's marker shows in
//! its serial console through the signed logs endpoint; after a hard reset
//! of the node the VM comes back by itself, with the same disk.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zeronode_containers::fixture::{sha256_hex, HttpServer};
use zeronode_vms::fixture;

use super::provision::{boot, node_opts, wait_all_ok, Target, Zn};
use super::storage::{blank_disk, power_off, HostMount};
use super::{ensure, Check, BOOT_TIMEOUT};

const ID: &str = "e2e-vm";

fn spec(base: &str, kernel_sha: &str, initrd_sha: &str) -> String {
    format!(
        r#"id = "{ID}"
valid_for = 86400
[[workloads]]
name = "net"
type = "network"
data = {{ subnet = "10.79.0.0/24" }}
[[workloads]]
name = "data"
type = "volume"
data = {{ size = 33554432 }}
[[workloads]]
name = "tiny"
type = "vm"
[workloads.data]
kernel = {{ url = "{base}/vmlinux", sha256 = "{kernel_sha}" }}
initrd = {{ url = "{base}/initrd", sha256 = "{initrd_sha}" }}
cpu = 1
memory = 134217728
# The guest boots under TCG inside a TCG node: its kernel's crypto
# self-tests alone took 15 s of that nested emulation.
cmdline = "cryptomgr.notests"
network = "net"
disks = [{{ volume = "data", size = 8388608 }}]
"#
    )
}

/// Waits until the VM's serial console holds `needle`; returns the log.
fn wait_log(zn: &Zn, t: &Target, needle: &str, secs: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = zn.on(t, "owner.key", &["logs", ID, "tiny"])?;
        let text = v["logs"].as_str().unwrap_or_default().to_string();
        if text.contains(needle) {
            return Ok(text);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no {needle:?} in the VM's console after {secs} s: {text:?}"
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

pub fn vm_runs_and_comes_back_after_a_hard_reset() -> Check {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let kernel = fixture::find_kernel(&workspace).ok_or(
        "no Debian kernel with the guest's modules (scripts/build-image caches one in out/cache)",
    )?;
    let vmlinuz = std::fs::read(&kernel.vmlinuz).map_err(|e| e.to_string())?;
    // The guest boots the kernel's ELF at its PVH entry: the bzImage's XZ
    // decompression, emulated twice over (TCG in a TCG node), cost minutes
    // of this case for each of the guest's two boots.
    let vmlinux = zeronode_image::pvh::vmlinux(&vmlinuz).map_err(|e| e.to_string())?;
    let initrd = fixture::initramfs(&kernel, &fixture::guest_init())
        .map_err(|e| format!("writing the guest's initramfs: {e}"))?;
    let (kernel_sha, initrd_sha) = (sha256_hex(&vmlinux), sha256_hex(&initrd));
    let http = HttpServer::start(HashMap::from([
        ("/vmlinux".to_string(), vmlinux),
        ("/initrd".to_string(), initrd),
    ]))
    .map_err(|e| format!("serving the guest: {e}"))?;
    // The node reaches the host's loopback as 10.0.2.2 on QEMU's user network.
    let port = http.base.rsplit(':').next().unwrap_or_default();
    let base = format!("http://10.0.2.2:{port}");

    let work = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (zn, owner) = Zn::with_owner(work.path())?;
    let disk = work.path().join("pool.raw");
    blank_disk(&disk, 1024)?;
    let o = node_opts(&disk, &owner);

    let (mut node, t) = boot(&o, &zn)?;
    std::fs::write(
        work.path().join("vm.toml"),
        spec(&base, &kernel_sha, &initrd_sha),
    )
    .map_err(|e| e.to_string())?;
    let started = Instant::now();
    zn.on(&t, "owner.key", &["deploy", "vm.toml"])?;
    let v = wait_all_ok(&zn, &t, ID, "after the deploy")?;
    let detail = v["workloads"]
        .as_array()
        .and_then(|ws| ws.iter().find(|w| w["name"] == "tiny"))
        .and_then(|w| w["detail"].as_str())
        .unwrap_or_default()
        .to_string();
    // No KVM inside a TCG node: the result says the VM runs under TCG.
    ensure(
        detail.starts_with("vm ") && detail.contains(" tcg ") && detail.contains("10.79.0."),
        || format!("the vm's result detail: {detail:?}"),
    )?;
    wait_log(&zn, &t, fixture::MARKER, 600)?;
    eprintln!(
        "    deploy to the guest's marker in the node: {:.1} s ({detail})",
        started.elapsed().as_secs_f64()
    );
    // The guest counts its boots in the first bytes of its volume disk and
    // takes its address from the config drive.
    let log = wait_log(&zn, &t, "ZN-GUEST-READY", 600)?;
    ensure(log.contains("ZN-BOOTS: 1 on /dev/vd"), || {
        format!("the guest did not see its blank volume disk: {log}")
    })?;
    ensure(log.contains("ZN-NET: 10.79.0.2/24 via 10.79.0.1"), || {
        format!("the guest did not take its address from the config drive: {log}")
    })?;

    // Hard reset: the node boots, provision re-applies, the vms module
    // starts the VM again on the same volume disk.
    node.qmp("system_reset", None).map_err(|e| e.to_string())?;
    let reset = Instant::now();
    node.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| format!("after system_reset: {e}"))?;
    wait_all_ok(&zn, &t, ID, "after a hard reset")?;
    if let Err(e) = wait_log(&zn, &t, "ZN-BOOTS: 2 on /dev/vd", 600) {
        let vms: Vec<String> = node
            .console()
            .lines()
            .filter(|l| {
                l.contains("vm")
                    || l.contains("qemu")
                    || l.contains("WARN")
                    || l.contains("ERROR")
                    || l.contains("kernel")
            })
            .map(str::to_string)
            .collect();
        let _ = power_off(node);
        return Err(format!(
            "{e}\nthe node's console about VMs:\n{}\non the pool:\n{}",
            vms.join("\n"),
            pool_listing(&disk)
        ));
    }
    eprintln!(
        "    hard reset to the guest's second boot: {:.1} s",
        reset.elapsed().as_secs_f64()
    );
    let console = node.console().to_string();
    ensure(!console.contains("panicked"), || "a module panicked".into())?;
    power_off(node)
}

/// What the vms module keeps on the pool (records, logs, run files), for a
/// failure's report.
fn pool_listing(disk: &std::path::Path) -> String {
    let m = match HostMount::new(disk) {
        Ok(m) => m,
        Err(e) => return format!("cannot mount the pool: {e}"),
    };
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("cd \"$1\" && ls -laR cache/vms 2>&1 | head -80; for f in cache/vms/logs/*.log; do echo \"== $f\"; tail -c 2000 \"$f\"; done")
        .arg("sh")
        .arg(m.path())
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => format!("listing: {e}"),
    }
}
