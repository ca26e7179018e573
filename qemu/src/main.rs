//! `zeronode-qemu`: boot a built image in QEMU.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use zeronode_qemu::{node, Boot, Node, NodeOptions};

#[derive(Parser)]
#[command(about = "Boot a ZeroNode image in QEMU")]
struct Args {
    /// The directory scripts/build-image wrote.
    #[arg(long, default_value = "out/image")]
    image: PathBuf,
    /// direct, uefi or pxe.
    #[arg(long, default_value = "direct")]
    boot: Boot,
    /// Blank virtio disks to attach.
    #[arg(long, default_value_t = 2)]
    disks: u32,
    #[arg(long, default_value = "2G")]
    disk_size: String,
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// tcg, or kvm on hardware where KVM guests work.
    #[arg(long, default_value = "tcg")]
    accel: String,
    /// Host port (on 127.0.0.1) forwarded to the node's API port.
    #[arg(long, default_value_t = 8443)]
    api_port: u16,
    /// Extra kernel parameters (direct boot).
    #[arg(long)]
    append: Option<String>,
    /// Another initramfs (direct boot).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Exit 0 once the node says it is ready (killing it), non-zero on timeout.
    #[arg(long, value_name = "SECONDS")]
    wait_ready: Option<u64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = NodeOptions {
        image: a.image,
        boot: a.boot,
        disks: a.disks,
        disk_size: a.disk_size,
        memory_mib: a.memory,
        cpus: a.cpus,
        accel: a.accel,
        api_port: Some(a.api_port),
        append: a.append,
        initrd: a.initrd,
        echo: true,
    };
    let result = match a.wait_ready {
        Some(secs) => Node::start(&opts)
            .and_then(|mut n| n.wait_ready(Duration::from_secs(secs)))
            .map(|_| ()),
        None => interactive(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeronode-qemu: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The console on this terminal (Ctrl-A X quits, Ctrl-A C is QEMU's monitor).
fn interactive(opts: &NodeOptions) -> Result<(), node::NodeError> {
    let dir = tempfile::tempdir().map_err(|source| node::NodeError::Io {
        what: "creating a run directory".into(),
        source,
    })?;
    let status = node::qemu_command(opts, dir.path(), None)?
        .status()
        .map_err(|source| node::NodeError::Io {
            what: "running qemu-system-x86_64".into(),
            source,
        })?;
    eprintln!("zeronode-qemu: QEMU exited ({status})");
    Ok(())
}
