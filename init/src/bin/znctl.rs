//! `znctl`: the console tool for ZeroNode's init. Talks D-Bus to the
//! control socket (`org.zeronode.Init1`, peer to peer, no bus daemon).
//!
//! Exit status: 0 done, 1 the call failed (unknown service, refused, ...),
//! 2 bad usage, 3 init cannot be reached.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use zeronode_init::control::{self, Error, Init1Proxy, ServiceStatus};

#[derive(Parser)]
#[command(name = "znctl", about = "Control the services of a ZeroNode")]
struct Cli {
    /// The control socket of zeronode-init.
    #[arg(long, global = true, default_value = control::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Give up on an init that does not answer within this many seconds
    /// (exit status 3). `logs -f` is bounded only until it starts.
    #[arg(long, global = true, default_value_t = 10)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Every service with its state.
    List,
    /// One service in detail.
    Status { name: String },
    /// Start a stopped or failed service.
    Start { name: String },
    /// Stop a service; returns once it has exited.
    Stop { name: String },
    /// Stop and start a service.
    Restart { name: String },
    /// Recent output of a service.
    Logs {
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// How many recent lines.
        #[arg(short = 'n', long = "lines", default_value_t = 100)]
        lines: u32,
        name: String,
    },
    /// Stop every service in order and reboot.
    Reboot,
    /// Stop every service in order and power off.
    Poweroff,
    /// Join a virtio-serial port to the control socket, so znctl on the VM
    /// host can reach this node (run by the control-port service; exits 0
    /// at once where the port does not exist, as on hardware).
    ServePort {
        #[arg(long, default_value = "org.zeronode.control")]
        port: String,
    },
}

enum Failure {
    Unreachable(String),
    Call(String),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::ServePort { port } = &cli.cmd {
        return match port_bridge::serve(port, &cli.socket) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("znctl serve-port: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("znctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let limit = std::time::Duration::from_secs(cli.timeout);
    let outcome = runtime.block_on(async {
        tokio::time::timeout(limit, call(&cli))
            .await
            .unwrap_or_else(|_| {
                Err(Failure::Unreachable(format!(
                    "no answer from {} within {} s",
                    cli.socket.display(),
                    cli.timeout
                )))
            })
    });
    match outcome {
        Ok(Some(follow)) => {
            drop(runtime);
            copy_until_closed(follow)
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(Failure::Call(msg)) => {
            eprintln!("znctl: {msg}");
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(msg)) => {
            eprintln!("znctl: {msg}");
            ExitCode::from(3)
        }
    }
}

/// Makes the call and prints its answer; a follow returns the pipe to read.
async fn call(cli: &Cli) -> Result<Option<std::os::fd::OwnedFd>, Failure> {
    let conn = control::connect(&cli.socket).await.map_err(|e| {
        Failure::Unreachable(format!(
            "cannot reach zeronode-init at {}: {e}",
            cli.socket.display()
        ))
    })?;
    let proxy = Init1Proxy::new(&conn)
        .await
        .map_err(|e| Failure::Unreachable(e.to_string()))?;
    let failed = |e: Error| Failure::Call(describe(e));
    match &cli.cmd {
        Cmd::List => {
            let list = proxy.list().await.map_err(failed)?;
            if cli.json {
                print_json(&list);
            } else {
                print!("{}", table(&list));
            }
        }
        Cmd::Status { name } => show(cli.json, proxy.status(name).await.map_err(failed)?),
        Cmd::Start { name } => show(cli.json, proxy.start(name).await.map_err(failed)?),
        Cmd::Stop { name } => show(cli.json, proxy.stop(name).await.map_err(failed)?),
        Cmd::Restart { name } => show(cli.json, proxy.restart(name).await.map_err(failed)?),
        Cmd::Logs {
            follow: true,
            lines,
            name,
        } => {
            let fd = proxy.follow(name, *lines).await.map_err(failed)?;
            return Ok(Some(fd.into()));
        }
        Cmd::Logs { lines, name, .. } => {
            let lines = proxy.logs(name, *lines).await.map_err(failed)?;
            if cli.json {
                print_json(&lines);
            } else {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        // The node may stop the path the reply would take (the control port
        // is a service too): the request went out, so the connection
        // closing is the node going down.
        Cmd::Reboot => proxy.reboot().await.or_else(going_down).map_err(failed)?,
        Cmd::Poweroff => proxy
            .power_off()
            .await
            .or_else(going_down)
            .map_err(failed)?,
        Cmd::ServePort { .. } => {}
    }
    Ok(None)
}

fn going_down(e: Error) -> Result<(), Error> {
    match e {
        Error::ZBus(zbus::Error::InputOutput(_)) => Ok(()),
        other => Err(other),
    }
}

/// The D-Bus error's message without the zbus wrapping.
fn describe(e: Error) -> String {
    match e {
        Error::UnknownService(m)
        | Error::Refused(m)
        | Error::ShuttingDown(m)
        | Error::Failed(m) => m,
        Error::ZBus(e) => e.to_string(),
    }
}

fn copy_until_closed(fd: std::os::fd::OwnedFd) -> ExitCode {
    let mut pipe = std::fs::File::from(fd);
    let mut out = std::io::stdout();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(n) => {
                if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                    return ExitCode::SUCCESS;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("znctl: reading the log stream: {e}");
                return ExitCode::from(1);
            }
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("znctl: {e}"),
    }
}

fn show(json: bool, s: ServiceStatus) {
    if json {
        return print_json(&s);
    }
    let rows = [
        ("name", s.name.clone()),
        ("kind", s.kind.clone()),
        ("state", s.state.clone()),
        ("pid", pid(s.pid)),
        ("restarts", s.restarts.to_string()),
        ("since", duration(s.since_ms)),
        ("ready", if s.ready { "yes" } else { "no" }.into()),
        ("detail", s.detail.clone()),
    ];
    for (k, v) in rows {
        if !v.is_empty() {
            println!("{k:<9}{v}");
        }
    }
}

/// Columns padded to their widest cell.
fn table(list: &[ServiceStatus]) -> String {
    let header = [
        "NAME", "KIND", "STATE", "PID", "RESTARTS", "SINCE", "DETAIL",
    ];
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.kind.clone(),
                s.state.clone(),
                pid(s.pid),
                s.restarts.to_string(),
                duration(s.since_ms),
                s.detail.clone(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, cell) in width.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for r in &rows {
        line(&r.each_ref().map(String::as_str));
    }
    out
}

fn pid(p: u32) -> String {
    if p == 0 {
        "-".into()
    } else {
        p.to_string()
    }
}

fn duration(ms: u64) -> String {
    match ms {
        0..=9_999 => format!("{:.1}s", ms as f64 / 1000.0),
        10_000..=3_599_999 => format!("{}m{:02}s", ms / 60_000, ms / 1000 % 60),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms / 60_000 % 60),
    }
}

/// Bytes between a virtio-serial port and the control socket, one D-Bus
/// session per host connection. Unix fds cannot cross the port, so
/// `logs -f` works only on the node itself.
mod port_bridge {
    use std::fs::{File, OpenOptions};
    use std::io::{self, Read, Write};
    use std::os::unix::net::UnixStream;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// The device of the virtio-serial port called `name`, if there is one.
    pub fn find_port(sys_class: &Path, name: &str) -> Option<PathBuf> {
        let entries = std::fs::read_dir(sys_class).ok()?;
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| {
                std::fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name)
            })
            .map(|e| Path::new("/dev").join(e.file_name()))
            .collect();
        found.sort();
        found.into_iter().next()
    }

    pub fn serve(name: &str, socket: &Path) -> io::Result<()> {
        let Some(dev) = find_port(Path::new("/sys/class/virtio-ports"), name) else {
            println!("no virtio port {name:?} on this machine: nothing to serve");
            return Ok(());
        };
        let mut port = OpenOptions::new().read(true).write(true).open(&dev)?;
        println!("serving {} on {}", socket.display(), dev.display());
        let mut buf = vec![0u8; 64 * 1024];
        let mut next: Option<Vec<u8>> = None;
        loop {
            let first = match next.take() {
                Some(bytes) => bytes,
                None => {
                    // With no host connected, a read returns 0 at once: wait and look again.
                    let n = port.read(&mut buf)?;
                    if n == 0 {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    buf[..n].to_vec()
                }
            };
            match session(&mut port, &first, socket) {
                Ok(following) => next = Some(following),
                Err(e) => eprintln!("session ended: {e}"),
            }
        }
    }

    /// A D-Bus client's first bytes: a NUL, then its AUTH command. The port
    /// may never read as closed between two quick host connections, so this
    /// is how a new client shows itself. Clients send the NUL on its own
    /// (it carries credentials on some systems), so a read may hold just it
    /// or a start of "\0AUTH "; a message of a client in session never
    /// starts with a NUL.
    pub fn starts_client(bytes: &[u8]) -> bool {
        const HELLO: &[u8] = b"\0AUTH ";
        !bytes.is_empty() && (bytes.starts_with(HELLO) || HELLO.starts_with(bytes))
    }

    /// One host connection: from its first bytes until a new client starts
    /// (whose first bytes are returned) or the control socket fails.
    fn session(port: &mut File, first: &[u8], socket: &Path) -> io::Result<Vec<u8>> {
        let mut init = UnixStream::connect(socket)?;
        init.write_all(first)?;
        let mut to_port = init.try_clone()?;
        let mut port_out = port.try_clone()?;
        let back = std::thread::spawn(move || io::copy(&mut to_port, &mut port_out));
        let mut buf = vec![0u8; 64 * 1024];
        let result = loop {
            match port.read(&mut buf) {
                // No data and no host, as the port believes: but its word
                // that a host connected can come after the host's first
                // bytes, so this is no proof the client left. The session
                // stays until its next client starts (or init goes away).
                Ok(0) => std::thread::sleep(Duration::from_millis(50)),
                Ok(n) if starts_client(&buf[..n]) => break Ok(buf[..n].to_vec()),
                Ok(n) => {
                    if let Err(e) = init.write_all(&buf[..n]) {
                        break Err(e);
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let _ = init.shutdown(std::net::Shutdown::Both);
        let _ = back.join();
        result
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_new_client_is_told_from_session_bytes() {
            assert!(starts_client(b"\0AUTH EXTERNAL 30\r\n"));
            // The NUL alone, or cut inside "AUTH ", as the port may deliver it.
            assert!(starts_client(b"\0"));
            assert!(starts_client(b"\0AU"));
            assert!(!starts_client(b"\0x"));
            assert!(!starts_client(b"BEGIN\r\n"));
            assert!(!starts_client(b"l\x01\0\x01"));
            assert!(!starts_client(b""));
        }

        #[test]
        fn finds_the_port_by_name() {
            let sys = tempfile::tempdir().unwrap();
            for (dev, name) in [("vport1p1", "org.zeronode.control"), ("vport1p2", "other")] {
                std::fs::create_dir(sys.path().join(dev)).unwrap();
                std::fs::write(sys.path().join(dev).join("name"), format!("{name}\n")).unwrap();
            }
            assert_eq!(
                find_port(sys.path(), "org.zeronode.control"),
                Some(PathBuf::from("/dev/vport1p1"))
            );
            assert_eq!(find_port(sys.path(), "nope"), None);
            assert_eq!(find_port(&sys.path().join("missing"), "other"), None);
        }
    }
}
