//! What the supervisor tests share: a `zeronode-init --services DIR
//! --control SOCK` in a temporary directory, its output collected, and
//! `znctl` against it. Included by the other `supervisor_*` tests with
//! `#[path]`; built alone it is an empty test crate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const INIT: &str = env!("CARGO_BIN_EXE_zeronode-init");
pub const ZNCTL: &str = env!("CARGO_BIN_EXE_znctl");

pub struct Init {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub sock: PathBuf,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

/// Reads `pipe` line by line into `into`, on a thread of the test.
fn collect(pipe: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

impl Init {
    /// Writes `services` (name, file text) into a fresh services dir and
    /// starts init on it. `@DIR@` in a text stands for the temp directory.
    pub fn start(services: &[(&str, &str)]) -> Init {
        let dir = tempfile::tempdir().unwrap();
        let sdir = dir.path().join("services");
        std::fs::create_dir(&sdir).unwrap();
        for (name, text) in services {
            let text = text.replace("@DIR@", &dir.path().display().to_string());
            std::fs::write(sdir.join(format!("{name}.toml")), text).unwrap();
        }
        let sock = dir.path().join("init.sock");
        let mut child = Command::new(INIT)
            .arg("--services")
            .arg(&sdir)
            .arg("--control")
            .arg(&sock)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), stdout.clone());
        collect(child.stderr.take().unwrap(), stderr.clone());
        let init = Init {
            child,
            dir,
            sock,
            stdout,
            stderr,
        };
        // The file appears at bind(2), before listen(2): wait until it answers.
        init.wait_until("control socket", || {
            std::os::unix::net::UnixStream::connect(&init.sock).is_ok()
        });
        init
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Polls `cond` every 10 ms for up to 10 s; panics with init's logs if
    /// it never holds.
    pub fn wait_until(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout().join("\n"),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_stdout(&self, line: &str) {
        self.wait_until(&format!("stdout line {line:?}"), || {
            self.stdout().iter().any(|l| l == line)
        });
    }

    pub fn wait_stderr(&self, text: &str) {
        self.wait_until(&format!("stderr {text:?}"), || self.stderr().contains(text));
    }

    pub fn ready_lines(&self) -> Vec<String> {
        self.stdout()
            .into_iter()
            .filter(|l| l.starts_with("zeronode: ready in "))
            .collect()
    }

    pub fn znctl(&self, args: &[&str]) -> Output {
        Command::new(ZNCTL)
            .arg("--socket")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }

    /// `znctl --json ARGS`, which must succeed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.znctl(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "znctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn state(&self, name: &str) -> String {
        self.json(&["status", name])["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn wait_state(&self, name: &str, state: &str) {
        self.wait_until(&format!("{name} {state}"), || self.state(name) == state);
    }

    /// Sends `sig` to init and waits for it to exit; returns how long that took.
    pub fn stop_with(&mut self, sig: nix::sys::signal::Signal) -> Duration {
        let t = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        let status = self.wait_exit();
        assert!(status.success(), "init exited with {status}");
        t.elapsed()
    }

    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "init did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Init {
    /// Leaves no services behind: init stops them on SIGTERM.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let pid = nix::unistd::Pid::from_raw(self.pid());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Ok(None) = self.child.try_wait() {
                if Instant::now() > deadline {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Lines of a file the services append to (empty if it does not exist yet).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// (pid, state, ppid) of every process, from /proc.
pub fn processes() -> Vec<(i32, char, i32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) S ppid ...": comm may hold spaces, so split after ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim_start()) else {
            continue;
        };
        let mut f = rest.split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, state, ppid));
    }
    out
}

/// The command line of a process, arguments joined by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}
