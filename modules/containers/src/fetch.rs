//! Fetching an OCI archive to a local file while hashing it. http:// and
//! https:// are a small HTTP/1.0 client of our own (a request for 1.0 keeps
//! servers from chunking; the body ends at Content-Length or when the
//! connection closes), TLS through rustls with Mozilla's roots plus any
//! extra CA given; file:// reads a local file. Whatever the transport, the
//! pinned sha256 decides.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;

use crate::Error;

/// Archives larger than this are refused (an image of a node workload is
/// far smaller; a server streaming forever must not fill the disk).
pub const MAX_ARCHIVE: u64 = 8 << 30;
/// No byte for this long: the fetch fails.
const IDLE: Duration = Duration::from_secs(60);

/// The TLS client configuration: Mozilla's roots (the node has no CA
/// bundle) and the certificates of `ca_file` (PEM) when given.
pub fn tls_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(f) = ca_file {
        let bad = |e: String| Error::Invalid(format!("CA file {}: {e}", f.display()));
        for cert in
            rustls_pki_types::CertificateDer::pem_file_iter(f).map_err(|e| bad(e.to_string()))?
        {
            roots
                .add(cert.map_err(|e| bad(e.to_string()))?)
                .map_err(|e| bad(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Invalid(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Copies `url` into `dest` (created or truncated) and returns the sha256
/// (hex) of what was written.
pub async fn fetch(
    url: &str,
    dest: &Path,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<String, Error> {
    let fail = |m: String| Error::Fetch {
        url: url.to_string(),
        reason: m,
    };
    let mut out = tokio::fs::File::create(dest)
        .await
        .map_err(Error::io(format!("create {}", dest.display())))?;
    let mut sink = Sink {
        out: &mut out,
        dest,
        hasher: Sha256::new(),
        total: 0,
    };
    if let Some(path) = url.strip_prefix("file://") {
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| fail(e.to_string()))?;
        copy_body(f, &mut sink, None, false).await.map_err(fail)?;
    } else {
        let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(r), _) => (false, r),
            (_, Some(r)) => (true, r),
            _ => {
                return Err(fail(
                    "only http://, https:// and file:// are supported".into(),
                ))
            }
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let has_port = hostport.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (!h.contains(':') || h.ends_with(']'))
        });
        let addr = if has_port {
            hostport.to_string()
        } else {
            format!("{hostport}:{}", if https { 443 } else { 80 })
        };
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(hostport)
            .to_string();
        let tcp = tokio::time::timeout(IDLE, tokio::net::TcpStream::connect(&addr))
            .await
            .map_err(|_| fail("connect timed out".into()))?
            .map_err(|e| fail(format!("connect {addr}: {e}")))?;
        if https {
            let name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| fail(format!("server name: {e}")))?;
            let tls = tokio::time::timeout(
                IDLE,
                tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp),
            )
            .await
            .map_err(|_| fail("TLS handshake timed out".into()))?
            .map_err(|e| fail(format!("TLS: {e}")))?;
            http_get(tls, hostport, path, &mut sink, true)
                .await
                .map_err(fail)?;
        } else {
            http_get(tcp, hostport, path, &mut sink, false)
                .await
                .map_err(fail)?;
        }
    }
    let hex = hex(&sink.hasher.finalize());
    out.sync_all()
        .await
        .map_err(Error::io(format!("sync {}", dest.display())))?;
    Ok(hex)
}

/// Where the body goes: the file, and the hash of what went there.
struct Sink<'a> {
    out: &'a mut tokio::fs::File,
    dest: &'a Path,
    hasher: Sha256,
    total: u64,
}

async fn http_get<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    host: &str,
    path: &str,
    sink: &mut Sink<'_>,
    tls: bool,
) -> Result<(), String> {
    let mut stream = BufReader::new(stream);
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: zeronode-containers\r\nConnection: close\r\n\r\n"
    );
    stream
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.get_mut().flush().await.map_err(|e| e.to_string())?;
    let mut line = String::new();
    read_line(&mut stream, &mut line).await?;
    let status = line.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("HTTP status {:?}", line.trim()));
    }
    let mut length: Option<u64> = None;
    loop {
        line.clear();
        read_line(&mut stream, &mut line).await?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let k = k.trim().to_ascii_lowercase();
            if k == "content-length" {
                length = v.trim().parse().ok();
            } else if k == "transfer-encoding" && !v.trim().eq_ignore_ascii_case("identity") {
                return Err(format!("unsupported transfer encoding {}", v.trim()));
            }
        }
    }
    if length.is_some_and(|l| l > MAX_ARCHIVE) {
        return Err(format!("larger than {MAX_ARCHIVE} bytes"));
    }
    copy_body(stream, sink, length, tls).await
}

/// Copies `r` into the sink up to `length` (or the end). Over TLS a peer
/// that closes without close_notify ends the body too: the pinned digest,
/// not the transport, tells whether the archive is complete.
async fn copy_body<R: AsyncRead + Unpin>(
    mut r: R,
    sink: &mut Sink<'_>,
    length: Option<u64>,
    tls: bool,
) -> Result<(), String> {
    let mut buf = vec![0u8; 256 << 10];
    loop {
        if length == Some(sink.total) {
            break;
        }
        let n = match tokio::time::timeout(IDLE, r.read(&mut buf)).await {
            Err(_) => return Err("no data for 60 s".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) if tls && e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Ok(Err(e)) => return Err(e.to_string()),
        };
        if n == 0 {
            break;
        }
        sink.total += n as u64;
        if sink.total > MAX_ARCHIVE {
            return Err(format!("larger than {MAX_ARCHIVE} bytes"));
        }
        sink.hasher.update(&buf[..n]);
        sink.out
            .write_all(&buf[..n])
            .await
            .map_err(|e| format!("write {}: {e}", sink.dest.display()))?;
    }
    if let Some(l) = length {
        if l != sink.total {
            return Err(format!("body cut short: {} of {l} bytes", sink.total));
        }
    }
    Ok(())
}

async fn read_line<S: AsyncRead + Unpin>(
    r: &mut BufReader<S>,
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
