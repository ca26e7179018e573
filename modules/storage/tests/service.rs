//! The zeronode-storage binary as the node runs it: one ready line, D-Bus
//! on its socket, clean exit on SIGTERM, and the same pool on the next run.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{LoopDisk, Scratch};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zeronode_storage::dbus::Storage1Proxy;

/// The running service; killed on drop if a test fails before it stops it.
struct Service {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Service {
    fn start(scratch: &Scratch, devices: &[&Path], cmdline: &str) -> Service {
        let cmdline_file = scratch.path().join("cmdline");
        std::fs::write(&cmdline_file, cmdline).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_zeronode-storage"));
        cmd.arg("--socket")
            .arg(socket(scratch))
            .arg("--cmdline")
            .arg(&cmdline_file)
            .arg("--mnt-root")
            .arg(scratch.mnt_root())
            .arg("--cache")
            .arg(scratch.cache());
        for d in devices {
            cmd.arg("--device").arg(d);
        }
        let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Service { child, lines }
    }

    /// Stdout lines up to and including the ready line.
    fn until_ready(&self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no ready line; saw {seen:?}"));
            let ready = line.contains("mounted, cache on");
            seen.push(line);
            if ready {
                return seen;
            }
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn socket(scratch: &Scratch) -> PathBuf {
    scratch.path().join("run/storage.sock")
}

async fn proxy(scratch: &Scratch) -> (zbus::Connection, Storage1Proxy<'static>) {
    for _ in 0..100 {
        if let Ok(conn) = zeronode_types::bus::connect(&socket(scratch)).await {
            let p = Storage1Proxy::new(&conn).await.unwrap();
            return (conn, p);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("storage socket never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_pools_and_volumes_and_keeps_them_across_runs() {
    let scratch = Scratch::new();
    let disk = LoopDisk::new(&scratch.path().join("svc.img"), 512);
    let cmdline = "console=ttyS0 zeronode.wipe=ABSENT-DISK-1 zeronode.wipe=/dev/sda";

    let svc = Service::start(&scratch, &[&disk.dev], cmdline);
    let lines = svc.until_ready();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARNING") && l.contains("ABSENT-DISK-1")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("WARNING") && l.contains("/dev/sda") && l.contains("by-id")),
        "{lines:?}"
    );
    let ready = lines.last().unwrap();
    assert!(
        ready.starts_with("storage: 1 pool mounted, cache on zn-"),
        "{ready}"
    );
    assert!(ready.ends_with(" ms since boot"), "{ready}");

    let (_conn, p) = proxy(&scratch).await;
    let pools = p.pools().await.unwrap();
    assert_eq!(pools.len(), 1);
    let pool = &pools[0];
    assert!(ready.contains(&pool.name), "{ready} vs {pool:?}");
    assert!(
        pool.cache && pool.size > 400 << 20 && pool.free > 0 && pool.used > 0,
        "{pool:?}"
    );
    let disks = p.disks().await.unwrap();
    assert_eq!(
        (disks[0].state.as_str(), disks[0].serial.as_str()),
        ("pool", "svc.img")
    );
    let cache = p.cache().await.unwrap();
    assert!(cache.persistent && cache.pool == pool.name, "{cache:?}");

    let path = p.volume_create("data", 32 << 20).await.unwrap();
    assert!(path.ends_with("/volumes/data"), "{path}");
    std::fs::write(Path::new(&path).join("hello"), b"world").unwrap();
    let err = p
        .volume_create("a/b", 1 << 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("InvalidArgs") && err.contains("a/b"), "{err}");
    let err = p
        .volume_create("huge", 1 << 40)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("InvalidArgs") && err.contains("larger than"),
        "{err}"
    );
    let err = p
        .volume_create("data", 1 << 20)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("Exists"), "{err}");
    let err = p.volume_delete("nope").await.unwrap_err().to_string();
    assert!(err.contains("NotFound"), "{err}");
    p.volume_create("scratch", 8 << 20).await.unwrap();
    p.volume_delete("scratch").await.unwrap();

    std::fs::write(scratch.cache().join("node.key"), b"key").unwrap();
    drop(p);
    assert!(svc.stop().success());
    assert!(!socket(&scratch).exists(), "socket left behind");

    // Next boot: everything unmounted, a new run finds the same pool.
    scratch.unmount_all();
    let svc = Service::start(&scratch, &[&disk.dev], cmdline);
    let ready2 = svc.until_ready().pop().unwrap();
    assert!(ready2.contains(&pool.name), "{ready2}");
    assert_eq!(
        std::fs::read(scratch.cache().join("node.key")).unwrap(),
        b"key"
    );
    let (_conn, p) = proxy(&scratch).await;
    let vols = p.volume_list().await.unwrap();
    assert_eq!(vols.len(), 1, "{vols:?}");
    assert_eq!((vols[0].name.as_str(), vols[0].limit), ("data", 32 << 20));
    assert!(vols[0].used >= 5, "{vols:?}");
    assert_eq!(
        std::fs::read(Path::new(&vols[0].path).join("hello")).unwrap(),
        b"world"
    );
    drop(p);
    assert!(svc.stop().success());
}

#[test]
fn bad_device_is_a_clear_error_and_no_socket() {
    let scratch = Scratch::new();
    std::fs::write(scratch.path().join("cmdline"), "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zeronode-storage"))
        .arg("--socket")
        .arg(socket(&scratch))
        .arg("--cmdline")
        .arg(scratch.path().join("cmdline"))
        .arg("--mnt-root")
        .arg(scratch.mnt_root())
        .arg("--cache")
        .arg(scratch.cache())
        .args(["--device", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/dev/null: not a block device"), "{stderr}");
    assert!(!socket(&scratch).exists());
    assert!(!scratch.cache().exists());
}
