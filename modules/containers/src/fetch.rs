//! Fetching an OCI archive to a local file while hashing it. http:// is a
//! small HTTP/1.0 client of our own (a request for 1.0 keeps servers from
//! chunking, and the body ends when the connection closes or at
//! Content-Length); https and registries are out of scope for now.

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::Error;

/// Archives larger than this are refused (an image of a node workload is
/// far smaller; a server streaming forever must not fill the disk).
pub const MAX_ARCHIVE: u64 = 8 << 30;
/// No byte for this long: the fetch fails.
const IDLE: Duration = Duration::from_secs(60);

/// Copies `url` into `dest` (created or truncated) and returns the sha256
/// (hex) of what was written.
pub async fn fetch(url: &str, dest: &Path) -> Result<String, Error> {
    let fail = |m: String| Error::Fetch {
        url: url.to_string(),
        reason: m,
    };
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(Error::io(format!("create {}", dest.display())))?;
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    if let Some(path) = url.strip_prefix("file://") {
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        loop {
            let n = f.read(&mut buf).await.map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_ARCHIVE {
                return Err(fail(format!("larger than {MAX_ARCHIVE} bytes")));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(Error::io(format!("write {}", dest.display())))?;
        }
    } else if let Some(rest) = url.strip_prefix("http://") {
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = if hostport.contains(':') && !hostport.ends_with(']') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        let host = hostport;
        let stream = tokio::time::timeout(IDLE, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| fail("connect timed out".into()))?
            .map_err(|e| fail(format!("connect {addr}: {e}")))?;
        let mut stream = BufReader::new(stream);
        let req = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: zeronode-containers\r\nConnection: close\r\n\r\n"
        );
        stream
            .get_mut()
            .write_all(req.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let mut line = String::new();
        read_line(&mut stream, &mut line).await.map_err(&fail)?;
        let status = line.split_whitespace().nth(1).unwrap_or("");
        if status != "200" {
            return Err(fail(format!("HTTP status {:?}", line.trim())));
        }
        let mut length: Option<u64> = None;
        loop {
            line.clear();
            read_line(&mut stream, &mut line).await.map_err(&fail)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let k = k.trim().to_ascii_lowercase();
                if k == "content-length" {
                    length = v.trim().parse().ok();
                } else if k == "transfer-encoding" && !v.trim().eq_ignore_ascii_case("identity") {
                    return Err(fail(format!("unsupported transfer encoding {}", v.trim())));
                }
            }
        }
        if length.is_some_and(|l| l > MAX_ARCHIVE) {
            return Err(fail(format!("larger than {MAX_ARCHIVE} bytes")));
        }
        loop {
            let n = tokio::time::timeout(IDLE, stream.read(&mut buf))
                .await
                .map_err(|_| fail("no data for 60 s".into()))?
                .map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_ARCHIVE {
                return Err(fail(format!("larger than {MAX_ARCHIVE} bytes")));
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(Error::io(format!("write {}", dest.display())))?;
            if length == Some(total) {
                break;
            }
        }
        if let Some(l) = length {
            if l != total {
                return Err(fail(format!("body cut short: {total} of {l} bytes")));
            }
        }
    } else {
        return Err(fail("only http:// and file:// are supported".into()));
    }
    out.sync_all()
        .await
        .map_err(Error::io(format!("sync {}", dest.display())))?;
    Ok(hex(&hasher.finalize()))
}

async fn read_line(
    r: &mut BufReader<tokio::net::TcpStream>,
    line: &mut String,
) -> Result<(), String> {
    let n = tokio::time::timeout(IDLE, r.read_line(line))
        .await
        .map_err(|_| "no response for 60 s".to_string())?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("connection closed in the headers".into());
    }
    if line.len() > 8192 {
        return Err("header line too long".into());
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `sha256:` + hex of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(data)))
}
