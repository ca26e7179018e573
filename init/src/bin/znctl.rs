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
}

enum Failure {
    Unreachable(String),
    Call(String),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match runtime.block_on(call(&cli)) {
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
        Cmd::Reboot => proxy.reboot().await.map_err(failed)?,
        Cmd::Poweroff => proxy.power_off().await.map_err(failed)?,
    }
    Ok(None)
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
