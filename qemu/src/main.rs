//! `zeronode-qemu`: boot a built image in QEMU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use zeronode_qemu::{node, Accel, Boot, Forward, Node, NodeOptions};

#[derive(Parser)]
#[command(
    about = "Boot a ZeroNode image in QEMU (TCG by default)",
    args_override_self = true
)]
struct Args {
    /// The directory scripts/build-image wrote.
    #[arg(long, default_value = "out/image")]
    image: PathBuf,
    /// direct (-kernel vmlinux, or vmlinuz if the image has no vmlinux), uefi or pxe.
    #[arg(long, default_value = "direct")]
    boot: Boot,
    /// Blank virtio disks to attach.
    #[arg(long, default_value_t = 2)]
    disks: u32,
    /// Size of each blank disk (and of a --disk file made anew).
    #[arg(long, default_value = "2G")]
    disk_size: String,
    /// A disk image to attach and keep (raw, or qcow2 by extension); a
    /// missing .qcow2 file is created blank. Repeatable.
    #[arg(long = "disk", value_name = "FILE")]
    disk_files: Vec<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// tcg, or kvm on hardware where KVM guests work.
    #[arg(long, default_value = "tcg")]
    accel: Accel,
    /// Host port (on 127.0.0.1) forwarded to the node's API port 8443.
    #[arg(long, default_value_t = 8443)]
    api_port: u16,
    /// Another TCP port forwarded, HOST:GUEST (host side on 127.0.0.1),
    /// e.g. 9900:9900 for the shard store. Repeatable.
    #[arg(long = "forward", value_name = "HOST:GUEST")]
    forwards: Vec<Forward>,
    /// stdio (this terminal; Ctrl-A X quits QEMU) or a file to write it to.
    #[arg(long, default_value = "stdio")]
    console: String,
    /// Exit 0 once the node prints its ready line (stopping QEMU), non-zero
    /// with the last console lines if it does not within SECONDS.
    #[arg(long, value_name = "SECONDS")]
    wait_ready: Option<u64>,
    /// Extra kernel parameters.
    #[arg(long)]
    append: Option<String>,
    /// Another initramfs, e.g. out/image/baseline-initramfs.img.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Add an empty virtio-scsi controller (id scsi0) to hot-plug disks
    /// into through the QMP socket (blockdev-add, then device_add scsi-hd).
    #[arg(long)]
    scsi_hotplug: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zeronode-qemu: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: Args) -> anyhow::Result<ExitCode> {
    let to_file = a.console != "stdio";
    let opts = NodeOptions {
        image: a.image,
        boot: a.boot,
        disks: a.disks,
        disk_size: a.disk_size,
        disk_files: a.disk_files,
        memory_mib: a.memory,
        cpus: a.cpus,
        accel: a.accel,
        api_port: Some(a.api_port),
        append: a.append,
        initrd: a.initrd,
        console: to_file.then(|| PathBuf::from(&a.console)),
        echo: !to_file,
        udp_nics: Vec::new(),
        forwards: a.forwards,
        scsi_hotplug: a.scsi_hotplug,
    };
    let started = Instant::now();
    if let Some(secs) = a.wait_ready {
        let mut node = Node::start(&opts).context("starting QEMU")?;
        let ms = node.wait_ready(Duration::from_secs(secs))?;
        eprintln!(
            "zeronode-qemu: zeronode: ready in {ms} ms (guest), {:.1} s wall",
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let status = if to_file {
        let mut node = Node::start(&opts).context("starting QEMU")?;
        eprintln!(
            "zeronode-qemu: console in {}; QEMU pid {}, API on 127.0.0.1:{}",
            a.console,
            node.pid(),
            node.api_port()
        );
        node.wait_exit(Duration::MAX)?
    } else {
        node::run_interactive(&opts)?
    };
    eprintln!(
        "zeronode-qemu: QEMU exited ({status}) after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
