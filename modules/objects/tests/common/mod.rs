//! Real redis-server backends for the tests, each in its own temp dir on a
//! loopback port, stopped by Drop. AOF is on so that a stopped server that is
//! started again comes back with its data, as a rebooted 0-db node would.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeronode_objects::{BackendConfig, ObjectId, Objects, OwnerKey};

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    appendonly: bool,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(true)
    }

    /// `appendonly`: keep an AOF so a restarted server has its data back;
    /// the benchmark turns it off to measure the client, not the disk.
    pub fn start_with(appendonly: bool) -> Self {
        for _ in 0..10 {
            let mut redis = Self {
                child: None,
                port: free_port(),
                dir: tempfile::tempdir().unwrap(),
                appendonly,
            };
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server would not start (is it installed? apt-get install redis-server)");
    }

    /// Starts the server on its port and dir; false if it did not come up.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--save", ""])
            .args(["--appendonly", if self.appendonly { "yes" } else { "no" }])
            // Every acknowledged write is on disk before the reply: under
            // everysec a SIGKILLed server came back without shards it had
            // acknowledged, which is a lost disk, not the stop being tested.
            .args(["--appendfsync", "always"])
            .args(["--protected-mode", "no"])
            .args(["--daemonize", "no"])
            .args(["--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            let pid = self.child.as_ref().map_or(0, |c| c.id());
            if serves(self.port, pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop();
        false
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn config(&self) -> BackendConfig {
        BackendConfig::new(self.address())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL), as a node losing power.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the data it had.
    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server on port {} would not restart", self.port);
    }

    /// Freezes the process (SIGSTOP): it accepts connections but never answers.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let signal = if frozen { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server must be woken to die promptly.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.stop();
    }
}

/// True when the server on `port` answers and is our process `pid`: another
/// test's server may have won the race for a port we picked.
fn serves(port: u16, pid: u32) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"INFO server\r\n").is_err() {
        return false;
    }
    // The reply is one bulk string: "$N\r\n" then N bytes and CRLF.
    let mut header = Vec::new();
    let mut byte = [0u8; 1];
    while !header.ends_with(b"\r\n") {
        if stream.read_exact(&mut byte).is_err() || header.len() > 32 {
            return false;
        }
        header.push(byte[0]);
    }
    let Some(len) = std::str::from_utf8(&header[..header.len() - 2])
        .ok()
        .and_then(|h| h.strip_prefix('$'))
        .and_then(|n| n.parse::<usize>().ok())
    else {
        return false;
    };
    let mut info = vec![0u8; len + 2];
    if stream.read_exact(&mut info).is_err() {
        return false;
    }
    let ours = String::from_utf8_lossy(&info).contains(&format!("process_id:{pid}\r\n"));
    // Ours, and ready once it has loaded its AOF (PING answers -LOADING before).
    ours && pong(&mut stream)
}

fn pong(stream: &mut std::net::TcpStream) -> bool {
    use std::io::{Read, Write};
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

pub fn cluster(n: usize) -> Vec<Redis> {
    (0..n).map(|_| Redis::start()).collect()
}

pub fn configs(cluster: &[Redis]) -> Vec<BackendConfig> {
    cluster.iter().map(|r| r.config()).collect()
}

pub fn key(seed: u8) -> OwnerKey {
    OwnerKey::from_bytes(&[seed; 32])
}

pub fn objects(cluster: &[Redis], key_seed: u8) -> Objects {
    Objects::new(configs(cluster), key(key_seed), Duration::from_secs(3)).unwrap()
}

/// Test content: compressible text runs and incompressible noise, mixed.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        if (state >> 60) & 1 == 0 {
            let run = b"zeronode objects are erasure coded; ";
            out.extend_from_slice(&run[..run.len().min(len - out.len())]);
        } else {
            for _ in 0..64.min(len - out.len()) {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                out.push((state >> 33) as u8);
            }
        }
    }
    out
}

pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// Every file name in a directory, to show no stray partial output remains.
pub fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// All k-subsets of 0..n.
pub fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    fn go(start: usize, n: usize, k: usize, current: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
        if current.len() == k {
            out.push(current.clone());
            return;
        }
        for i in start..n {
            current.push(i);
            go(i + 1, n, k, current, out);
            current.pop();
        }
    }
    let mut out = Vec::new();
    go(0, n, k, &mut Vec::new(), &mut out);
    out
}

/// Flips a byte of a stored value through the RESP connection.
pub async fn corrupt_value(objects: &Objects, backend: usize, key: &[u8], at: usize) {
    let b = &objects.backends()[backend];
    let mut value = b.get(key).await.unwrap().expect("value to corrupt exists");
    let at = at % value.len();
    value[at] ^= 0x5a;
    b.set(key, &value).await.unwrap();
}

/// Which backend holds shard `index` of `stripe`, from the current metadata.
pub async fn shard_backend(objects: &Objects, id: &ObjectId, stripe: usize, index: usize) -> usize {
    let (meta, _) = objects.load_metadata(id).await.unwrap();
    let location = &meta.backends[meta.stripes[stripe].shards[index].backend as usize];
    objects
        .backends()
        .iter()
        .position(|b| b.config().location() == *location)
        .unwrap()
}
