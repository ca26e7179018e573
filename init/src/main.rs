//! `zeronode-init`: PID 1 of a ZeroNode, or the same supervisor as an
//! ordinary process (`--services DIR`), which is how tests and benches run it.

use std::path::PathBuf;
use std::process::ExitCode;

use zeronode_init::run::{ReadyClock, RunOptions, Services};

const USAGE: &str = "usage: zeronode-init --services DIR [--control SOCKET]\n\
                     \x20      zeronode-init mount-runtime   (the node's `runtime` service)\n\
                     (as PID 1 it takes no arguments: it boots the node)";

fn main() -> ExitCode {
    if std::process::id() == 1 {
        zeronode_init::boot::pid1::main();
    }
    // The kernel runs /run/zeronode/modprobe (a link to PID 1's binary, see
    // boot::modprobe) when it needs a module (request_module): crypto
    // algorithms, filesystems, nft expressions. /sbin/modprobe links to us too.
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.rsplit('/').next() == Some("modprobe") {
        return zeronode_init::boot::modprobe::main(std::env::args().skip(1));
    }
    // The `runtime` service: verify and mount the runtime image.
    if std::env::args().nth(1).as_deref() == Some("mount-runtime") {
        return zeronode_init::boot::runtime_image::main();
    }
    match parse_args(std::env::args().skip(1)) {
        Ok(opts) => process_mode(opts),
        Err(msg) => {
            eprintln!("zeronode-init: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<RunOptions, String> {
    let mut services = None;
    let mut control = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--services" => {
                services = Some(PathBuf::from(
                    args.next().ok_or("--services needs a directory")?,
                ))
            }
            "--control" => {
                control = Some(PathBuf::from(
                    args.next().ok_or("--control needs a socket path")?,
                ))
            }
            "-h" | "--help" => return Err("help".into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(RunOptions {
        services: Services::Dir(services.ok_or("--services DIR is required")?),
        control_socket: control,
        ready_clock: ReadyClock::ProcessStart(std::time::Instant::now()),
        subreaper: true,
        on_ready: None,
    })
}

fn process_mode(opts: RunOptions) -> ExitCode {
    zeronode_init::boot::logging::init_stderr();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zeronode-init: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(zeronode_init::run::run(opts)) {
        Ok(_action) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zeronode-init: {e:#}");
            ExitCode::FAILURE
        }
    }
}
