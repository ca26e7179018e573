//! Test helpers: the real binary as a child process on a loopback port.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_zeronode-shards");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the server that `command(addr)` describes on a free loopback port
/// and waits until it serves there; returns the child and its address.
///
/// A port from `free_port` is free only until someone binds it: a server of
/// a test running beside this one can take it first, and then this child
/// exits with "Address already in use" while a connect to the port reaches
/// the other server. So the wait does not trust the port alone: the server
/// creates its D-Bus socket (`socket`, unique to the test) only after it
/// bound the port, and a child that exited is started on another port.
pub fn start_on_free_port(socket: &Path, command: impl Fn(&str) -> Command) -> (Child, String) {
    for _ in 0..10 {
        let addr = format!("127.0.0.1:{}", free_port());
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
            _ => {}
        }
        let mut child = command(&addr).spawn().expect("start zeronode-shards");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if socket.exists() && TcpStream::connect(&addr).is_ok() {
                return (child, addr);
            }
            assert!(Instant::now() < deadline, "server on {addr} did not start");
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    panic!("zeronode-shards exited at every start (see its errors above)");
}

pub struct Proc {
    pub child: Option<Child>,
    pub addr: String,
    pub socket: PathBuf,
    pub dir: PathBuf,
}

impl Proc {
    /// Starts the server on `dir` (data in `dir/data`, socket `dir/shards.sock`),
    /// admin password "adminpw" unless `extra` says otherwise.
    pub fn start(dir: &Path, extra: &[&str]) -> Proc {
        Self::start_with(dir, extra, true)
    }

    pub fn start_with(dir: &Path, extra: &[&str], admin: bool) -> Proc {
        Self::spawn(dir, extra, admin, None)
    }

    /// With every log line (RUST_LOG=debug) in `log`.
    pub fn start_logged(dir: &Path, extra: &[&str], log: &Path) -> Proc {
        Self::spawn(dir, extra, false, Some(log))
    }

    fn spawn(dir: &Path, extra: &[&str], admin: bool, log: Option<&Path>) -> Proc {
        let socket = dir.join("shards.sock");
        let (child, addr) = start_on_free_port(&socket, |addr| {
            let mut cmd = Command::new(BIN);
            cmd.arg("--dir")
                .arg(dir.join("data"))
                .args(["--listen", addr])
                .arg("--socket")
                .arg(&socket)
                .args(extra)
                .stdout(Stdio::null());
            match log {
                Some(path) => {
                    cmd.env("RUST_LOG", "debug")
                        .stderr(std::fs::File::create(path).unwrap());
                }
                None => {
                    cmd.env("RUST_LOG", "warn").stderr(Stdio::inherit());
                }
            }
            if admin {
                std::fs::write(dir.join("admin"), "adminpw\n").unwrap();
                cmd.arg("--admin-password-file").arg(dir.join("admin"));
            }
            cmd
        });
        Proc {
            child: Some(child),
            addr,
            socket,
            dir: dir.to_path_buf(),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    pub fn redis(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(&self.addr)
    }

    /// SIGTERM and wait: the clean stop.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let status = child.wait().unwrap();
            assert!(status.success(), "clean stop exited with {status}");
        }
    }

    /// SIGKILL and wait.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw RESP connection: commands out, replies in as text (enough to assert on).
pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    pub fn connect(addr: &str) -> Raw {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn from_stream(stream: TcpStream) -> Raw {
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// One reply, or None when the connection failed or closed.
    pub fn try_reply(&mut self) -> Option<Reply> {
        loop {
            if let Some((r, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return Some(r);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn send(&mut self, args: &[&[u8]]) {
        self.stream.write_all(&encode(args)).unwrap();
    }

    /// One reply, parsed.
    pub fn reply(&mut self) -> Reply {
        loop {
            if let Some((r, used)) = parse_reply(&self.buf) {
                self.buf.drain(..used);
                return r;
            }
            let mut chunk = [0u8; 65536];
            let n = self.stream.read(&mut chunk).expect("read reply");
            assert!(n > 0, "connection closed while waiting for a reply");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args);
        self.reply()
    }
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    pub fn bulk(&self) -> Option<&[u8]> {
        match self {
            Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }
    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }
}

pub fn parse_reply(b: &[u8]) -> Option<(Reply, usize)> {
    let end = b.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&b[1..end]).ok()?.to_string();
    let next = end + 2;
    match b.first()? {
        b'+' => Some((Reply::Status(line), next)),
        b'-' => Some((Reply::Error(line), next)),
        b':' => Some((Reply::Int(line.parse().ok()?), next)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Bulk(None), next));
            }
            let n = n as usize;
            if b.len() < next + n + 2 {
                return None;
            }
            Some((Reply::Bulk(Some(b[next..next + n].to_vec())), next + n + 2))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            let mut at = next;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                let (r, used) = parse_reply(&b[at..])?;
                items.push(r);
                at += used;
            }
            Some((Reply::Array(items), at))
        }
        _ => panic!("bad reply byte in {:?}", String::from_utf8_lossy(b)),
    }
}

/// Total size of the regular files under `dir`.
pub fn du(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        if m.is_dir() {
            total += du(&e.path());
        } else {
            total += m.len();
        }
    }
    total
}

/// A value derived from the key, so a reader can check it without a map.
pub fn value_for(key: &str, len: usize) -> Vec<u8> {
    let seed = blake3::hash(key.as_bytes());
    let mut out = Vec::with_capacity(len);
    let mut reader = blake3::Hasher::new().update(seed.as_bytes()).finalize_xof();
    out.resize(len, 0);
    reader.fill(&mut out);
    out
}

/// Every key and value of the connection's namespace, through SCAN and GET.
pub fn dump(r: &mut Raw) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = std::collections::BTreeMap::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let reply = match &cursor {
            None => r.cmd(&[b"SCAN"]),
            Some(c) => r.cmd(&[b"SCAN", c]),
        };
        let parts = match reply {
            Reply::Error(e) if e == "No more data" => break,
            Reply::Array(parts) => parts,
            other => panic!("SCAN: {other:?}"),
        };
        let Reply::Array(entries) = &parts[1] else {
            panic!("{parts:?}")
        };
        for e in entries {
            let Reply::Array(f) = e else { panic!() };
            let key = f[0].bulk().unwrap().to_vec();
            let value = r
                .cmd(&[b"GET", &key])
                .bulk()
                .expect("scanned key readable")
                .to_vec();
            assert_eq!(f[1], Reply::Int(value.len() as i64));
            all.insert(key, value);
        }
        cursor = Some(parts[0].bulk().unwrap().to_vec());
    }
    all
}
