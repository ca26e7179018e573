//! The boot paths, power handling and the console tool.

use std::time::{Duration, Instant};

use zeronode_qemu::Boot;

use super::{ensure, opts, start, Check, BOOT_TIMEOUT, PXE_TIMEOUT};

/// Ready line; a typo'd zeronode key is reported and ignored; zeronode.debug
/// reaches the modules; every device gets its driver; RCU grace periods are
/// expedited until ready only; the runtime image is verified and mounted
/// after ready; the power button powers off with filesystems unmounted.
pub fn direct_boot_ready_then_power_button() -> Check {
    let mut o = opts(Boot::Direct);
    // virtio_net.napi_tx=1: a module parameter on the kernel command line,
    // which PID 1 hands to the module as it loads it (1 is the default).
    o.append = Some("zeronode.debug zeronode.frobnicate=1 virtio_net.napi_tx=1".into());
    let mut node = start(&o)?;
    let ms = node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    ensure(ms > 0, || "ready in 0 ms".into())?;
    // The fixed module list loads beside the supervisor: wait for the names
    // it loaded (its count comes a line earlier, and the runtime image can
    // be verified before either, so neither wait below covers this one).
    node.find_or_wait_for_line("the fixed module list", Duration::from_secs(60), |l| {
        l.contains("fixed module list loaded:")
    })
    .map_err(|e| e.to_string())?;
    // After ready, the runtime image (containerd, runc, QEMU) is checked
    // against the hash the system image pins and mounted.
    node.find_or_wait_for_line("the runtime image", Duration::from_secs(120), |l| {
        l.contains("runtime image on /dev/loop") && l.contains("verified")
    })
    .map_err(|e| e.to_string())?;
    let console = node.console().to_string();
    ensure(
        console
            .contains("ignoring kernel parameter \"zeronode.frobnicate=1\": unknown zeronode key"),
        || "the unknown key was not reported".into(),
    )?;
    // RCU grace periods are expedited from stage 1 to the ready line only.
    let at = |needle: &str| console.find(needle);
    let (expedited, ready, normal) = (
        at("RCU grace periods expedited until ready"),
        at("zeronode: ready in"),
        at("RCU grace periods normal again"),
    );
    ensure(
        matches!((expedited, ready, normal), (Some(e), Some(r), Some(n)) if e < r && r < n),
        || {
            format!("RCU expedited {expedited:?}, ready {ready:?}, normal again {normal:?}: not in that order")
        },
    )?;
    // zeronode.debug reaches the modules too: storage's own debug line.
    ensure(
        console
            .lines()
            .any(|l| l.starts_with("[storage] DEBUG storage: cache set up in")),
        || "no debug line from the storage module".into(),
    )?;
    let loaded: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains(" loaded: "))
        .flat_map(|l| {
            l.split(" loaded: ")
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
        })
        .collect();
    for m in [
        "virtio_net",
        "virtio_blk",
        "virtio_console",
        "bridge",
        "evdev",
        // the early list, loaded beside the device drivers
        "btrfs",
    ] {
        ensure(loaded.contains(&m), || {
            format!("{m} not loaded: {loaded:?}")
        })?;
    }
    ensure(
        console.contains("DEBUG virtio_net (async_probe napi_tx=1): "),
        || "virtio_net was not loaded with napi_tx=1 from the command line".into(),
    )?;
    ensure(!console.contains("WARN module"), || {
        "a kernel module failed to load".into()
    })?;
    // The images' loop devices have read-ahead off (they are in RAM).
    ensure(!console.contains("setting the read-ahead"), || {
        "read-ahead of an image's loop device was not turned off".into()
    })?;
    ensure(
        console.contains("hardware watchdog /dev/watchdog0 armed"),
        || "PID 1 did not arm QEMU's i6300esb watchdog".into(),
    )?;
    node.powerdown().map_err(|e| e.to_string())?;
    node.wait_for_line("unmount summary", Duration::from_secs(60), |l| {
        l.starts_with("zeronode: filesystems unmounted")
    })
    .map_err(|e| e.to_string())?;
    node.wait_for_line("kernel power-down", Duration::from_secs(30), |l| {
        l.contains("reboot: Power down")
    })
    .map_err(|e| e.to_string())?;
    node.wait_exit(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    // The watchdog was disarmed on the way down, not left to fire.
    ensure(!node.console().contains("did not stop"), || {
        "the watchdog was left running at power-off".into()
    })?;
    Ok(())
}

/// Ctrl-Alt-Del reboots: the node goes down cleanly and comes up again.
pub fn ctrl_alt_del_reboots() -> Check {
    let mut node = start(&opts(Boot::Direct))?;
    node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    node.ctrl_alt_del().map_err(|e| e.to_string())?;
    node.wait_for_line("reboot request", Duration::from_secs(60), |l| {
        l.starts_with("zeronode: rebooting")
    })
    .map_err(|e| e.to_string())?;
    node.wait_ready(BOOT_TIMEOUT)
        .map_err(|e| format!("after the reboot: {e}"))?;
    Ok(())
}

/// A system image that does not match the pinned hash stops the boot, and
/// so does an initramfs that lost its images.
pub fn tampered_image_stops_the_boot() -> Check {
    let mut o = opts(Boot::Direct);
    // The last zeronode.root_hash on the command line wins.
    o.append = Some(format!("zeronode.root_hash={}", "ab".repeat(32)));
    refused(&o, "does not match the pinned hash")?;

    // Cut where the stored archive of squashfs images begins: the kernel
    // unpacks what came (PID 1 and its modules) and starts /init.
    let mut o = opts(Boot::Direct);
    let bytes = std::fs::read(o.image.join("initramfs.img")).map_err(|e| e.to_string())?;
    let name = bytes
        .windows(11)
        .position(|w| w == b"system.img\0")
        .ok_or("no system.img in the initramfs")?;
    // A newc header is 110 bytes, the name follows it.
    let header = name.checked_sub(110).ok_or("system.img's header")?;
    ensure(&bytes[header..header + 6] == b"070701", || {
        "system.img's cpio header not found".into()
    })?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let cut = dir.path().join("initramfs-cut.img");
    std::fs::write(&cut, &bytes[..header]).map_err(|e| e.to_string())?;
    o.initrd = Some(cut);
    refused(&o, "holds no /system.img")
}

/// Boots `o`, expects PID 1 to stop the boot for `reason` and never say ready.
fn refused(o: &zeronode_qemu::NodeOptions, reason: &str) -> Check {
    let mut node = start(o)?;
    let line = node
        .wait_for_line("the refusal", BOOT_TIMEOUT, |l| {
            l.starts_with("zeronode: boot stopped:")
        })
        .map_err(|e| e.to_string())?;
    ensure(line.contains(reason), || {
        format!("expected {reason:?}, got: {line}")
    })?;
    std::thread::sleep(Duration::from_secs(2));
    ensure(!node.console().contains("zeronode: ready"), || {
        "booted anyway".into()
    })
}

pub fn uefi_boot_from_usb_image() -> Check {
    let mut node = start(&opts(Boot::Uefi))?;
    node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    node.powerdown().map_err(|e| e.to_string())?;
    node.wait_exit(Duration::from_secs(90))
        .map_err(|e| e.to_string())?;
    Ok(())
}

pub fn pxe_boot() -> Check {
    let mut node = start(&opts(Boot::Pxe))?;
    node.wait_ready(PXE_TIMEOUT).map_err(|e| e.to_string())?;
    Ok(())
}

/// The console tool, run on the host against the node's control port,
/// lists the image's services as running and powers the node off.
pub fn console_tool_lists_services_and_powers_off() -> Check {
    let mut node = start(&opts(Boot::Direct))?;
    node.wait_ready(BOOT_TIMEOUT).map_err(|e| e.to_string())?;
    let socket = node.control_socket();
    let znctl = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new(znctl_path())
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .output()
            .map_err(|e| format!("running {}: {e}", znctl_path().display()))?;
        if !out.status.success() {
            return Err(format!(
                "znctl {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    // The bridge starts with the services; give it a moment after ready.
    let deadline = Instant::now() + Duration::from_secs(30);
    let table = loop {
        match znctl(&["list"]) {
            Ok(t) => break t,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    let row = table
        .lines()
        .find(|l| l.starts_with("control-port"))
        .unwrap_or_default();
    ensure(row.contains("running"), || {
        format!("control-port is not running:\n{table}")
    })?;
    let json = znctl(&["--json", "status", "control-port"])?;
    ensure(json.contains("\"state\": \"running\""), || {
        format!("status says: {json}")
    })?;
    let unknown = znctl(&["status", "no-such-service"]);
    ensure(
        unknown
            .as_ref()
            .is_err_and(|e| e.contains("no-such-service")),
        || format!("unknown service: {unknown:?}"),
    )?;
    znctl(&["poweroff"])?;
    node.wait_for_line("kernel power-down", Duration::from_secs(60), |l| {
        l.contains("reboot: Power down")
    })
    .map_err(|e| e.to_string())?;
    node.wait_exit(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// The host's znctl, built beside this test binary (target/<profile>/).
fn znctl_path() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|p| p.to_path_buf())
        .unwrap_or_default();
    profile_dir.join("znctl")
}
