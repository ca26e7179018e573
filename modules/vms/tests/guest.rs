//! The vms binary over D-Bus with a real guest under TCG (as root; skipped
//! otherwise): a tiny Debian-kernel guest on a workload network, with a
//! volume disk and a config drive. Shows the refused digest leaving
//! nothing, the marker on the serial console, the disk read, the ping,
//! restart with back-off, the module's restart (QEMU kept), a "reboot"
//! (QEMU and tap gone: the VM comes back), the ACPI stop and the delete.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use zeronode_containers::fixture::sha256_hex;
use zeronode_vms::dbus::Vms1Proxy;
use zeronode_vms::fixture;

const BOOT: Duration = Duration::from_secs(180);

fn vms_binary() -> &'static str {
    env!("CARGO_BIN_EXE_zeronode-vms")
}

fn start_module(ns: &Netns, dir: &Path) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, vms_binary()])
        .args(["--accel", "tcg"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--network-socket")
        .arg(dir.join("network.sock"))
        .arg("--socket")
        .arg(dir.join("vms.sock"))
        .args(["--backoff-initial-ms", "200", "--stop-timeout-ms", "60000"]);
    let p = Proc::spawn(cmd);
    p.wait_line("restored in", Duration::from_secs(120));
    p
}

async fn proxy(dir: &Path) -> (zbus::Connection, Vms1Proxy<'static>) {
    let conn = zeronode_types::bus::connect(&dir.join("vms.sock"))
        .await
        .unwrap();
    let p = Vms1Proxy::new(&conn).await.unwrap();
    (conn, p)
}

async fn status(p: &Vms1Proxy<'_>, name: &str) -> serde_json::Value {
    serde_json::from_str(&p.status(name).await.unwrap()).unwrap()
}

async fn wait_log(p: &Vms1Proxy<'_>, name: &str, needle: &str, count: usize) -> String {
    let deadline = Instant::now() + BOOT;
    loop {
        let l = p.logs(name, 1 << 20).await.unwrap_or_default();
        if l.matches(needle).count() >= count {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} x{count} not in {name}'s log within {BOOT:?}:\n{l}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ls(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pings(ns: &Netns, addr: &str) -> bool {
    let ip = addr.split('/').next().unwrap();
    ns.exec(&["ping", "-c", "1", "-W", "2", ip])
        .status
        .success()
}

#[test]
fn a_guest_boots_reads_its_disk_answers_ping_restarts_and_stops() {
    let Some(kernel) = guest_kernel() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ns = Netns::new("vms");
    let _net = NetworkModule::start(&ns, &d.join("network.sock"), &d.join("netstate"));
    let vmlinuz = std::fs::read(&kernel.vmlinuz).unwrap();
    let initrd = fixture::initramfs(&kernel, &fixture::guest_init()).unwrap();
    let server = http_server_in(
        &ns,
        HashMap::from([
            ("/vmlinuz".to_string(), vmlinuz.clone()),
            ("/initrd".to_string(), initrd.clone()),
        ]),
    );
    let vol = d.join("volume");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(
        vol.join("disk.raw"),
        fixture::fat_disk_with_hello(8 << 20, "hello from the volume").unwrap(),
    )
    .unwrap();
    let marker = d.display().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut module = start_module(&ns, d);
    rt.block_on(async {
        let conn = zeronode_types::bus::connect(&d.join("network.sock"))
            .await
            .unwrap();
        let net = zeronode_network::dbus::Network1Proxy::new(&conn)
            .await
            .unwrap();
        net.network_create("blue", "10.77.0.0/24").await.unwrap();
        let (_c, vms) = proxy(d).await;
        let spec = |kernel_sha: &str| {
            serde_json::json!({
                "name": "tiny",
                "kernel": {"url": format!("{}/vmlinuz", server.base), "sha256": kernel_sha},
                "initrd": {"url": format!("{}/initrd", server.base), "sha256": sha256_hex(&initrd)},
                "cmdline": "loglevel=4 cryptomgr.notests",
                "cpu": 1,
                "memory": 128u64 << 20,
                "disks": [{"volume": vol.display().to_string(), "size": 8u64 << 20, "readonly": true}],
                "network": {"name": "blue"},
                "cloud_init": {"ssh_keys": ["ssh-ed25519 AAAAC3Nz test@host"], "env": {"GREETING": "hi"}}
            })
            .to_string()
        };

        // A kernel whose digest is not the pinned one: refused, nothing left.
        let e = vms.create(&spec(&"0".repeat(64))).await.unwrap_err();
        let text = e.to_string();
        assert!(text.contains("InvalidArgument") && text.contains("sha256"), "{text}");
        assert!(ls(&d.join("state/vms")).is_empty());
        assert!(ls(&d.join("state/images")).is_empty(), "{:?}", ls(&d.join("state/images")));
        assert!(ls(&d.join("state/tmp")).is_empty());
        assert!(ls(&d.join("state/seeds")).is_empty());
        assert!(ls(&d.join("run")).is_empty(), "{:?}", ls(&d.join("run")));
        assert!(!ns.has_link(&zeronode_vms::tap::tap_name("tiny")));
        assert_eq!(vms.list().await.unwrap(), "[]");

        // The real one: marker, disk, network, ping.
        let t0 = Instant::now();
        let st: serde_json::Value =
            serde_json::from_str(&vms.create(&spec(&sha256_hex(&vmlinuz))).await.unwrap()).unwrap();
        assert_eq!(st["state"], "running");
        assert_eq!(st["accel"], "tcg");
        assert_eq!(st["address"], "10.77.0.2/24");
        let log = wait_log(&vms, "tiny", fixture::MARKER, 1).await;
        let to_marker = t0.elapsed();
        eprintln!("FIGURE deploy -> guest marker (TCG, host): {} ms", to_marker.as_millis());
        let log = if log.contains("ZN-GUEST-READY") {
            log
        } else {
            wait_log(&vms, "tiny", "ZN-GUEST-READY", 1).await
        };
        assert!(log.contains("ZN-DISK: hello from the volume"), "{log}");
        assert!(log.contains("ZN-NET: 10.77.0.2/24 via 10.77.0.1"), "{log}");
        eventually(Duration::from_secs(60), "ping of the guest", || async {
            pings(&ns, "10.77.0.2/24").then_some(())
        })
        .await;
        // The same spec again changes nothing.
        let again: serde_json::Value =
            serde_json::from_str(&vms.create(&spec(&sha256_hex(&vmlinuz))).await.unwrap()).unwrap();
        assert_eq!(again["pid"], st["pid"]);

        // QEMU dies: started again with back-off, same address.
        let pid = st["pid"].as_u64().unwrap() as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            .unwrap();
        let st = eventually(Duration::from_secs(60), "restart", || async {
            let s = status(&vms, "tiny").await;
            (s["state"] == "running" && s["restarts"] == 1).then_some(s)
        })
        .await;
        assert_eq!(st["last_exit"], 137);
        wait_log(&vms, "tiny", "ZN-GUEST-READY", 2).await;
        eventually(Duration::from_secs(60), "ping after the restart", || async {
            pings(&ns, "10.77.0.2/24").then_some(())
        })
        .await;
        st["pid"].as_u64().unwrap()
    });

    // The module restarts alone: QEMU keeps running and is watched again.
    let pid_before = rt.block_on(async {
        let (_c, vms) = proxy(d).await;
        status(&vms, "tiny").await["pid"].as_u64().unwrap()
    });
    module.terminate();
    assert!(
        Path::new(&format!("/proc/{pid_before}")).exists(),
        "qemu outlived the module"
    );
    module = start_module(&ns, d);
    module.wait_line("1 vm(s) restored", Duration::from_secs(10));
    rt.block_on(async {
        let (_c, vms) = proxy(d).await;
        let s = status(&vms, "tiny").await;
        assert_eq!(s["state"], "running");
        assert_eq!(s["pid"].as_u64().unwrap(), pid_before);
    });

    // A "reboot": module, QEMU and tap gone; the module brings the VM back.
    module.terminate();
    kill_qemus(&marker);
    std::thread::sleep(Duration::from_millis(500));
    let tap = zeronode_vms::tap::tap_name("tiny");
    run(&["ip", "netns", "exec", &ns.name, "ip", "link", "del", &tap]);
    module = start_module(&ns, d);
    module.wait_line("1 vm(s) restored", Duration::from_secs(10));
    rt.block_on(async {
        let (_c, vms) = proxy(d).await;
        let s = status(&vms, "tiny").await;
        assert_eq!(s["state"], "running");
        assert_ne!(s["pid"].as_u64().unwrap(), pid_before);
        wait_log(&vms, "tiny", "ZN-GUEST-READY", 3).await;
        eventually(Duration::from_secs(60), "ping after the reboot", || async {
            pings(&ns, "10.77.0.2/24").then_some(())
        })
        .await;

        // Stop: the ACPI power button, the guest powers off by itself.
        let t = Instant::now();
        let s: serde_json::Value = serde_json::from_str(&vms.stop("tiny").await.unwrap()).unwrap();
        eprintln!("FIGURE ACPI stop: {} ms", t.elapsed().as_millis());
        assert_eq!(s["state"], "stopped");
        let log = vms.logs("tiny", 1 << 20).await.unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(50),
            "killed rather than powered off:\n{log}"
        );
        assert!(log.contains("ZN-POWER-BUTTON"), "{log}");
        assert!(log.contains("reboot: Power down"), "{log}");
        assert!(!pings(&ns, "10.77.0.2/24"));

        // Delete: everything of the VM goes, the volume's disk stays.
        vms.delete("tiny").await.unwrap();
        assert_eq!(vms.list().await.unwrap(), "[]");
        assert!(ls(&d.join("state/vms")).is_empty());
        assert!(ls(&d.join("state/images")).is_empty());
        assert!(ls(&d.join("state/seeds")).is_empty());
        assert!(ls(&d.join("state/logs")).is_empty());
        assert!(!ns.has_link(&tap));
        assert!(vol.join("disk.raw").exists());
        let e = vms.status("tiny").await.unwrap_err();
        assert!(e.to_string().contains("NotFound"), "{e}");
    });
    module.terminate();
    kill_qemus(&marker);
}
