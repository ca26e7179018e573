//! One shard namespace reached over RESP: a 0-db namespace (address, optional
//! namespace and password selected with `SELECT ns password`) or a plain
//! redis-server (no namespace). Each backend keeps one connection; a request
//! that fails, times out or is cancelled drops it, and the next one reconnects,
//! so a half-read reply can never be taken for the answer to a later command.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::error::{Error, Result};
use crate::resp::{self, Reply};

/// Where a backend is and how to enter its namespace. The password is never
/// printed (Debug and Display leave it out) and never stored in metadata.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// host:port, e.g. `127.0.0.1:9900` or `[::1]:9900`.
    pub address: String,
    /// 0-db namespace; none for a plain redis server or 0-db's default namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
}

impl BackendConfig {
    pub fn new(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            namespace: None,
            password: None,
        }
    }

    /// What identifies the backend in metadata: address and namespace.
    pub fn location(&self) -> BackendLocation {
        BackendLocation {
            address: self.address.clone(),
            namespace: self.namespace.clone(),
        }
    }

    /// Parses `host:port[/namespace[:password]]`, the command-line form.
    pub fn parse(text: &str) -> Result<Self> {
        let (address, rest) = match text.split_once('/') {
            Some((a, r)) => (a, Some(r)),
            None => (text, None),
        };
        let (namespace, password) = match rest {
            None => (None, None),
            Some(r) => match r.split_once(':') {
                Some((ns, pw)) => (Some(ns.to_string()), Some(pw.to_string())),
                None => (Some(r.to_string()), None),
            },
        };
        let config = Self {
            address: address.to_string(),
            namespace,
            password,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |reason: &str| Error::Config(format!("backend {self}: {reason}"));
        let Some((host, port)) = self.address.rsplit_once(':') else {
            return Err(bad("address must be host:port"));
        };
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("address must be host:port with a port 1-65535"));
        }
        if let Some(ns) = &self.namespace {
            if ns.is_empty() || ns.len() > 128 || ns.bytes().any(|b| b.is_ascii_whitespace()) {
                return Err(bad("namespace must be 1-128 characters without spaces"));
            }
        }
        if self.password.is_some() && self.namespace.is_none() {
            return Err(bad("a password needs a namespace"));
        }
        Ok(())
    }
}

impl fmt::Display for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.location(), f)
    }
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackendConfig")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

/// A backend as named in metadata.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendLocation {
    pub address: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

impl fmt::Display for BackendLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}", self.address, ns),
            None => write!(f, "{}", self.address),
        }
    }
}

/// A connected (or connectable) backend.
pub struct Backend {
    config: BackendConfig,
    timeout: Duration,
    connection: Mutex<Option<BufStream<TcpStream>>>,
    /// Set when a request timed out: until then requests fail at once, so a
    /// hung server (it accepts but never answers) costs one timeout per
    /// period rather than one per shard.
    hung_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backend({})", self.config)
    }
}

impl Backend {
    pub fn new(config: BackendConfig, timeout: Duration) -> Self {
        Self {
            config,
            timeout,
            connection: Mutex::new(None),
            hung_until: std::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &BackendConfig {
        &self.config
    }

    fn error(&self, reason: impl Into<String>) -> Error {
        Error::Backend {
            backend: self.config.to_string(),
            reason: reason.into(),
        }
    }

    fn resp_error(&self, e: resp::RespError) -> Error {
        match e {
            resp::RespError::Io(io) => self.error(io.to_string()),
            resp::RespError::Malformed(m) => Error::Protocol {
                backend: self.config.to_string(),
                reason: m,
            },
        }
    }

    async fn connect(&self) -> Result<BufStream<TcpStream>> {
        let stream = TcpStream::connect(&self.config.address)
            .await
            .map_err(|e| self.error(format!("connect: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut stream = BufStream::with_capacity(64 << 10, 64 << 10, stream);
        if let Some(ns) = &self.config.namespace {
            let mut args: Vec<&[u8]> = vec![b"SELECT", ns.as_bytes()];
            if let Some(pw) = &self.config.password {
                args.push(pw.as_bytes());
            }
            resp::write_command(&mut stream, &args)
                .await
                .map_err(|e| self.resp_error(e))?;
            let reply = resp::read_reply(&mut stream)
                .await
                .map_err(|e| self.resp_error(e))?;
            if let Reply::Error(e) = reply {
                // The server's message can echo what we sent; keep the password out.
                return Err(self.error(format!(
                    "SELECT {ns} refused: {}",
                    redact(&e, &self.config.password)
                )));
            }
        }
        Ok(stream)
    }

    /// Sends one command and reads its reply, within the backend's timeout.
    async fn request(&self, operation: &'static str, args: &[&[u8]]) -> Result<Reply> {
        let timed_out = || Error::Timeout {
            backend: self.config.to_string(),
            operation,
            seconds: self.timeout.as_secs_f64(),
        };
        if let Ok(hung) = self.hung_until.lock() {
            if hung.is_some_and(|until| tokio::time::Instant::now() < until) {
                return Err(timed_out());
            }
        }
        let work = async {
            let mut slot = self.connection.lock().await;
            // Taken out for the duration: if this future is dropped half way, the
            // connection goes with it rather than back into the slot.
            let mut stream = match slot.take() {
                Some(s) => s,
                None => self.connect().await?,
            };
            resp::write_command(&mut stream, args)
                .await
                .map_err(|e| self.resp_error(e))?;
            let reply = resp::read_reply(&mut stream)
                .await
                .map_err(|e| self.resp_error(e))?;
            *slot = Some(stream);
            Ok(reply)
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                if let Ok(mut hung) = self.hung_until.lock() {
                    *hung = Some(tokio::time::Instant::now() + self.timeout);
                }
                tracing::debug!(backend = %self.config, operation, "timed out; skipped for one timeout period");
                Err(timed_out())
            }
        }
    }

    fn refused(&self, operation: &str, reply: Reply) -> Error {
        match reply {
            Reply::Error(e) => self.error(format!("{operation} refused: {e}")),
            other => Error::Protocol {
                backend: self.config.to_string(),
                reason: format!("unexpected reply to {operation}: {other:?}"),
            },
        }
    }

    /// Any command, for tools and tests; the reply as it came.
    pub async fn command(&self, args: &[&[u8]]) -> Result<Reply> {
        self.request("command", args).await
    }

    pub async fn ping(&self) -> Result<()> {
        match self.request("PING", &[b"PING"]).await? {
            Reply::Status(_) | Reply::Bulk(Some(_)) => Ok(()),
            other => Err(self.refused("PING", other)),
        }
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.request("GET", &[b"GET", key]).await? {
            Reply::Bulk(value) => Ok(value),
            other => Err(self.refused("GET", other)),
        }
    }

    /// SET: redis answers +OK, 0-db the key (or nil when the value is unchanged).
    pub async fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        match self.request("SET", &[b"SET", key, value]).await? {
            Reply::Status(_) | Reply::Bulk(_) => Ok(()),
            other => Err(self.refused("SET", other)),
        }
    }

    /// DEL: redis answers the count, 0-db +OK or an error for a missing key;
    /// a missing key is not a failure here.
    pub async fn del(&self, key: &[u8]) -> Result<()> {
        match self.request("DEL", &[b"DEL", key]).await? {
            Reply::Integer(_) | Reply::Status(_) => Ok(()),
            Reply::Error(e) if e.to_ascii_lowercase().contains("not found") => Ok(()),
            other => Err(self.refused("DEL", other)),
        }
    }

    pub async fn exists(&self, key: &[u8]) -> Result<bool> {
        match self.request("EXISTS", &[b"EXISTS", key]).await? {
            Reply::Integer(n) => Ok(n > 0),
            other => Err(self.refused("EXISTS", other)),
        }
    }
}

fn redact(message: &str, password: &Option<String>) -> String {
    match password {
        Some(pw) if !pw.is_empty() => message.replace(pw.as_str(), "<hidden>"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_form_parses() {
        let b = BackendConfig::parse("127.0.0.1:9900").unwrap();
        assert_eq!(b, BackendConfig::new("127.0.0.1:9900"));
        let b = BackendConfig::parse("[::1]:9900/ns1:secret").unwrap();
        assert_eq!(b.address, "[::1]:9900");
        assert_eq!(b.namespace.as_deref(), Some("ns1"));
        assert_eq!(b.password.as_deref(), Some("secret"));
        assert!(!format!("{b} {b:?}").contains("secret"));
        for bad in ["", "host", "host:0", ":80", "h:99999", "h:1/", "h:1/a b"] {
            assert!(BackendConfig::parse(bad).is_err(), "{bad}");
        }
    }

    /// The namespace handshake as bytes on the wire, against a loopback
    /// listener that plays 0-db's part for SELECT (redis-server has no
    /// SELECT ns password, so the redis-backed tests cannot show it).
    #[tokio::test]
    async fn namespace_is_selected_with_password_on_connect() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let select = b"*3\r\n$6\r\nSELECT\r\n$3\r\nns1\r\n$2\r\npw\r\n";
            let mut got = vec![0u8; select.len()];
            socket.read_exact(&mut got).await.unwrap();
            assert_eq!(got, select);
            socket.write_all(b"+OK\r\n").await.unwrap();
            let ping = b"*1\r\n$4\r\nPING\r\n";
            let mut got = vec![0u8; ping.len()];
            socket.read_exact(&mut got).await.unwrap();
            assert_eq!(got, ping);
            socket.write_all(b"+PONG\r\n").await.unwrap();
        });
        let mut config = BackendConfig::new(address);
        config.namespace = Some("ns1".into());
        config.password = Some("pw".into());
        let backend = Backend::new(config, Duration::from_secs(5));
        backend.ping().await.unwrap();
        server.await.unwrap();
    }

    #[tokio::test]
    async fn refused_select_is_a_clear_error_without_the_password() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf).await;
            socket
                .write_all(b"-Access denied for hunter2\r\n")
                .await
                .unwrap();
        });
        let config = BackendConfig::parse(&format!("{address}/ns1:hunter2")).unwrap();
        let err = Backend::new(config, Duration::from_secs(5))
            .ping()
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("SELECT ns1 refused"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
}
