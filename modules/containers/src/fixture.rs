//! Test fixtures shared by this crate's tests and the boot tests: an OCI
//! image archive of the build machine's static busybox (Debian's
//! busybox-static), and a small HTTP/1.0 server on loopback to serve it.
//! Not used by the module itself; they panic on failure, as fixtures do.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Write};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Lowercase hex of the sha256 of `b`, as OCI digests and workload specs write it.
pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// A tar of an OCI image layout holding one layer: the static busybox at
/// /bin/busybox with a link per applet, plus `/etc/marker` = `marker`
/// (so two archives can differ). Returns the archive's bytes.
pub fn busybox_archive(marker: &str) -> io::Result<Vec<u8>> {
    let mut layer = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32| {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty())
    };
    for (d, m) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("tmp", 0o1777),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("www", 0o755),
    ] {
        dir(&mut layer, d, m)?;
    }
    let bb = std::fs::read("/bin/busybox")?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    h.set_mtime(0);
    layer.append_data(&mut h, "bin/busybox", &bb[..])?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "busybox" || applet.is_empty() || applet.contains('/') {
            continue;
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_mtime(0);
        layer.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
    }
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(marker.len() as u64);
    h.set_mtime(0);
    layer.append_data(&mut h, "etc/marker", marker.as_bytes())?;
    let layer = layer.into_inner()?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/busybox"],
            "Cmd": ["sh"],
            "Env": ["PATH=/bin", "FROM_IMAGE=yes"],
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let config = serde_json::to_vec(&config).map_err(io::Error::other)?;
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config.len()
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer.len()
        }]
    });
    let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "busybox"}
        }]
    });
    let mut out = tar::Builder::new(Vec::new());
    let mut file = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        out.append_data(&mut h, path, data)
    };
    file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    file(
        "index.json",
        &serde_json::to_vec(&index).map_err(io::Error::other)?,
    )?;
    for (d, data) in [
        (&manifest_digest, &manifest),
        (&config_digest, &config),
        (&layer_digest, &layer),
    ] {
        file(&format!("blobs/sha256/{}", &d[7..]), data)?;
    }
    out.into_inner()
}

/// An HTTP/1.0 server on 127.0.0.1 serving `files` by path; stops on drop.
pub struct HttpServer {
    pub base: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpServer {
    pub fn start(files: HashMap<String, Vec<u8>>) -> io::Result<HttpServer> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = format!("http://{}", l.local_addr()?);
        l.set_nonblocking(true)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut c, _)) => {
                        let _ = c.set_nonblocking(false);
                        let Ok(reader) = c.try_clone() else { continue };
                        let mut r = BufReader::new(reader);
                        let mut line = String::new();
                        let _ = r.read_line(&mut line);
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                                break;
                            }
                        }
                        match files.get(&path) {
                            Some(b) => {
                                let _ = write!(
                                    c,
                                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
                                    b.len()
                                );
                                let _ = c.write_all(b);
                            }
                            None => {
                                let _ = c.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n");
                            }
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Ok(HttpServer { base, stop })
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
