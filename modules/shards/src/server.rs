//! The RESP server: one task per connection. Each read batch is parsed and
//! executed as a whole; the records it wrote reach the kernel in one
//! write (shared with whatever other connections appended meanwhile), are
//! synced first when the policy is `always` (group commit), and then all
//! the batch's replies leave in one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::Error;
use crate::namespace::{Meta, Mode, Namespace, PasswordHash, SetOutcome, SyncPolicy};
use crate::resp::{self, reply, Limits, Request};
use crate::store::{Store, DEFAULT_NAMESPACE};

/// How the server behaves towards clients.
#[derive(Clone)]
pub struct Config {
    /// Enables AUTH and, after it, NSNEW / NSDEL / NSSET over RESP. Without
    /// it namespaces are managed only over D-Bus (by provision).
    pub admin_password: Option<String>,
    /// The default namespace refuses writes except from the admin (on a
    /// node every writable namespace comes from a signed deployment).
    pub lock_default: bool,
    pub limits: Limits,
    /// Connections beyond this are answered an error and closed: each may
    /// buffer up to one request (8 MiB), so their number bounds memory.
    pub max_clients: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            admin_password: None,
            lock_default: false,
            limits: Limits::default(),
            max_clients: 10_000,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "<hidden>"),
            )
            .field("lock_default", &self.lock_default)
            .field("limits", &self.limits)
            .field("max_clients", &self.max_clients)
            .finish()
    }
}

/// Server-wide counters for INFO.
#[derive(Default)]
pub struct Counters {
    pub clients: AtomicU64,
    pub connections: AtomicU64,
    pub commands: AtomicU64,
    pub protocol_errors: AtomicU64,
}

pub struct Server {
    pub store: Arc<Store>,
    pub config: Config,
    pub counters: Counters,
    started: Instant,
}

impl Server {
    pub fn new(store: Arc<Store>, config: Config) -> Arc<Server> {
        Arc::new(Server {
            store,
            config,
            counters: Counters::default(),
            started: Instant::now(),
        })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((mut stream, _)) => {
                    if self.counters.clients.load(Ordering::Relaxed) >= self.config.max_clients {
                        tokio::spawn(async move {
                            let _ = stream
                                .write_all(b"-ERR max number of clients reached\r\n")
                                .await;
                        });
                        continue;
                    }
                    let server = self.clone();
                    tokio::spawn(async move {
                        server.counters.clients.fetch_add(1, Ordering::Relaxed);
                        server.counters.connections.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = server.connection(stream).await {
                            tracing::debug!("connection: {e}");
                        }
                        server.counters.clients.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn connection(&self, mut stream: TcpStream) -> std::io::Result<()> {
        let _ = stream.set_nodelay(true);
        let default = self.store.get(DEFAULT_NAMESPACE);
        let mut conn = Conn {
            access: if self.config.lock_default {
                Access::Read
            } else {
                Access::Write
            },
            ns: default,
            admin: false,
            touched: Vec::new(),
            scratch: Vec::new(),
        };
        let limits = self.config.limits;
        let mut input: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut out: Vec<u8> = Vec::with_capacity(16 << 10);
        let mut req = Request::default();
        loop {
            let want = resp::wanted(&input, 0, &limits).max(16 << 10);
            input.reserve(want);
            let n = stream.read_buf(&mut input).await?;
            if n == 0 {
                return Ok(());
            }
            let mut at = 0;
            let mut close = false;
            loop {
                match resp::parse_into(&input, at, &limits, &mut req) {
                    Ok(true) => {
                        at += req.len;
                        if req.args.is_empty() {
                            continue;
                        }
                        let args: Vec<&[u8]> = req.args.iter().map(|r| &input[r.clone()]).collect();
                        self.counters.commands.fetch_add(1, Ordering::Relaxed);
                        match self.execute(&mut conn, &args, &mut out) {
                            Flow::Continue => {}
                            Flow::Close => {
                                close = true;
                                break;
                            }
                            Flow::Compact(ns) => {
                                match tokio::task::spawn_blocking(move || ns.compact()).await {
                                    Ok(Ok(n)) => reply::integer(&mut out, n as i64),
                                    Ok(Err(e)) => reply::error(&mut out, &e.to_string()),
                                    Err(e) => {
                                        reply::error(&mut out, &format!("ERR compaction: {e}"))
                                    }
                                }
                            }
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        self.counters
                            .protocol_errors
                            .fetch_add(1, Ordering::Relaxed);
                        reply::error(&mut out, &format!("ERR Protocol error: {e}"));
                        close = true;
                        break;
                    }
                }
            }
            input.drain(..at);
            if input.capacity() > 1 << 20 && input.len() < 64 << 10 {
                input.shrink_to(64 << 10);
            }
            if let Err(e) = self.commit(&mut conn).await {
                // The batch's writes may not be in: take back every reply.
                out.clear();
                reply::error(&mut out, &format!("ERR write failed: {e}"));
                close = true;
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
                if out.capacity() > 1 << 20 {
                    out.shrink_to(64 << 10);
                }
            }
            if close {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }

    /// Hands the batch's records to the kernel and, under `always`, waits
    /// for the sync that covers them.
    async fn commit(&self, conn: &mut Conn) -> Result<(), Error> {
        if conn.touched.is_empty() {
            return Ok(());
        }
        // Let the other connections with requests ready run first: their
        // records join ours, and one write (or one sync) covers them all.
        tokio::task::yield_now().await;
        for (ns, lsn) in std::mem::take(&mut conn.touched) {
            if ns.policy() == SyncPolicy::Always {
                // The sync thread writes and syncs for the whole group.
                ns.wait_synced(lsn).await?;
            } else {
                ns.flush()?;
            }
        }
        Ok(())
    }

    fn execute(&self, conn: &mut Conn, args: &[&[u8]], out: &mut Vec<u8>) -> Flow {
        let mut name = [0u8; 16];
        let cmd = args[0];
        let len = cmd.len().min(16);
        name[..len].copy_from_slice(&cmd[..len]);
        name[..len].make_ascii_uppercase();
        let cmd = if cmd.len() > 16 {
            &b"?"[..]
        } else {
            &name[..len]
        };
        let argc = args.len() - 1;
        let wrong = |out: &mut Vec<u8>| {
            reply::error(
                out,
                &format!(
                    "ERR wrong number of arguments for '{}'",
                    String::from_utf8_lossy(cmd).to_lowercase()
                ),
            )
        };
        match cmd {
            b"PING" => match argc {
                0 => reply::status(out, "PONG"),
                1 => reply::bulk(out, args[1]),
                _ => wrong(out),
            },
            b"SET" if argc == 2 => self.set(conn, args[1], args[2], out),
            b"GET" if argc == 1 => self.get(conn, args[1], out),
            b"DEL" if argc == 1 => self.del(conn, args[1], out),
            b"EXISTS" if argc == 1 => {
                if let Some(ns) = conn.readable(out) {
                    match ns.exists(args[1]) {
                        Ok(b) => reply::integer(out, i64::from(b)),
                        Err(e) => reply::error(out, &e.to_string()),
                    }
                }
            }
            b"CHECK" if argc == 1 => {
                if let Some(ns) = conn.readable(out) {
                    match ns.check(args[1]) {
                        Ok(None) => reply::nil(out),
                        Ok(Some(ok)) => reply::integer(out, i64::from(ok)),
                        Err(e) => reply::error(out, &e.to_string()),
                    }
                }
            }
            b"SCAN" | b"RSCAN" if argc <= 1 => {
                if let Some(ns) = conn.readable(out) {
                    let reverse = cmd == b"RSCAN";
                    match ns.scan(args.get(1).copied(), reverse, SCAN_PAGE) {
                        Ok(entries) if entries.is_empty() => reply::error(out, "No more data"),
                        Ok(entries) => {
                            reply::array(out, 2);
                            reply::bulk(out, &entries[entries.len() - 1].key);
                            reply::array(out, entries.len());
                            for e in &entries {
                                reply::array(out, 3);
                                reply::bulk(out, &e.key);
                                reply::integer(out, i64::from(e.size));
                                reply::integer(out, i64::from(e.time));
                            }
                        }
                        Err(e) => reply::error(out, &e.to_string()),
                    }
                }
            }
            b"KEYCUR" if argc == 1 => {
                if let Some(ns) = conn.readable(out) {
                    match ns.exists(args[1]) {
                        Ok(true) => reply::bulk(out, args[1]),
                        Ok(false) => reply::error(out, "Key not found"),
                        Err(e) => reply::error(out, &e.to_string()),
                    }
                }
            }
            b"DBSIZE" if argc == 0 => {
                if let Some(ns) = conn.readable(out) {
                    reply::integer(out, ns.len() as i64);
                }
            }
            b"TIME" if argc == 0 => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                reply::array(out, 2);
                reply::bulk(out, now.as_secs().to_string().as_bytes());
                reply::bulk(out, now.subsec_micros().to_string().as_bytes());
            }
            b"INFO" => reply::bulk(out, self.info().as_bytes()),
            b"AUTH" if argc == 1 => match &self.config.admin_password {
                None => reply::error(out, "Authentication disabled: no admin password is set"),
                Some(pw) if pw.as_bytes() == args[1] => {
                    conn.admin = true;
                    conn.access = Access::Write;
                    reply::status(out, "OK");
                }
                Some(_) => reply::error(out, "Access denied"),
            },
            b"SELECT" if argc == 1 || argc == 2 => self.select(conn, args[1], args.get(2), out),
            b"NSNEW" if argc == 1 => {
                if self.admin(conn, out) {
                    match std::str::from_utf8(args[1]) {
                        Ok(name) => match self.store.create(name, Meta::default()) {
                            Ok(_) => reply::status(out, "OK"),
                            Err(e) => reply::error(out, &e.to_string()),
                        },
                        Err(_) => reply::error(out, "Invalid namespace name"),
                    }
                }
            }
            b"NSDEL" if argc == 1 => {
                if self.admin(conn, out) {
                    let name = String::from_utf8_lossy(args[1]);
                    match self.store.delete(&name) {
                        Ok(()) => reply::status(out, "OK"),
                        Err(e) => reply::error(out, &e.to_string()),
                    }
                }
            }
            b"NSSET" if argc == 3 => {
                if self.admin(conn, out) {
                    let name = String::from_utf8_lossy(args[1]);
                    let prop = String::from_utf8_lossy(args[2]);
                    let value = String::from_utf8_lossy(args[3]);
                    match self.store.get(&name) {
                        None => reply::error(out, &Error::NotFound(name.into_owned()).to_string()),
                        Some(ns) => match set_property(&ns, &prop, &value) {
                            Ok(()) => reply::status(out, "OK"),
                            Err(e) => reply::error(out, &e.to_string()),
                        },
                    }
                }
            }
            b"NSINFO" if argc == 1 => {
                let name = String::from_utf8_lossy(args[1]);
                match self.store.get(&name) {
                    None => reply::error(out, &Error::NotFound(name.into_owned()).to_string()),
                    Some(ns) => reply::bulk(out, ns_info(&ns).as_bytes()),
                }
            }
            b"NSLIST" if argc == 0 => {
                let names = self.store.list();
                reply::array(out, names.len());
                for n in names {
                    reply::bulk(out, n.as_bytes());
                }
            }
            b"COMPACT" if argc == 0 => {
                if let Some(ns) = conn.writable(out) {
                    return Flow::Compact(ns);
                }
            }
            // redis-cli asks for command docs at start; an empty answer is fine.
            b"COMMAND" => reply::array(out, 0),
            b"QUIT" => {
                reply::status(out, "OK");
                return Flow::Close;
            }
            b"SET" | b"GET" | b"DEL" | b"EXISTS" | b"CHECK" | b"SCAN" | b"RSCAN" | b"KEYCUR"
            | b"DBSIZE" | b"TIME" | b"AUTH" | b"SELECT" | b"NSNEW" | b"NSDEL" | b"NSSET"
            | b"NSINFO" | b"NSLIST" | b"COMPACT" => wrong(out),
            _ => reply::error(out, "Command not supported"),
        }
        Flow::Continue
    }

    fn admin(&self, conn: &Conn, out: &mut Vec<u8>) -> bool {
        if self.config.admin_password.is_none() {
            reply::error(
                out,
                "Permission denied: namespaces are managed by provision on this node",
            );
            false
        } else if !conn.admin {
            reply::error(out, "Permission denied: AUTH with the admin password first");
            false
        } else {
            true
        }
    }

    fn set(&self, conn: &mut Conn, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
        let Some(ns) = conn.writable(out) else {
            return;
        };
        match ns.set(key, value) {
            Ok(SetOutcome::Stored { key, lsn }) => {
                reply::bulk(out, &key);
                conn.touch(&ns, lsn);
            }
            Ok(SetOutcome::Unchanged) => reply::nil(out),
            Err(e) => reply::error(out, &e.to_string()),
        }
    }

    fn get(&self, conn: &mut Conn, key: &[u8], out: &mut Vec<u8>) {
        let Some(ns) = conn.readable(out) else {
            return;
        };
        match ns.get(key, &mut conn.scratch) {
            Ok(Some(range)) => reply::bulk(out, &conn.scratch[range]),
            Ok(None) => reply::nil(out),
            Err(e) => reply::error(out, &e.to_string()),
        }
        if conn.scratch.capacity() > 1 << 20 {
            conn.scratch = Vec::new();
        }
    }

    fn del(&self, conn: &mut Conn, key: &[u8], out: &mut Vec<u8>) {
        let Some(ns) = conn.writable(out) else {
            return;
        };
        match ns.delete(key) {
            Ok(Some(lsn)) => {
                reply::status(out, "OK");
                conn.touch(&ns, lsn);
            }
            Ok(None) => reply::error(out, "Key not found"),
            Err(e) => reply::error(out, &e.to_string()),
        }
    }

    fn select(&self, conn: &mut Conn, name: &[u8], password: Option<&&[u8]>, out: &mut Vec<u8>) {
        let name = String::from_utf8_lossy(name);
        let Some(ns) = self.store.get(&name) else {
            reply::error(out, &format!("Namespace {name} not found"));
            return;
        };
        let meta = ns.meta();
        let given = password.map(|p| String::from_utf8_lossy(p).into_owned());
        let access = if conn.admin {
            Access::Write
        } else {
            match (&meta.password, given) {
                (None, _) if self.config.lock_default && name == DEFAULT_NAMESPACE => Access::Read,
                (None, _) => Access::Write,
                (Some(hash), Some(pw)) if hash.matches(&pw) => Access::Write,
                (Some(_), Some(_)) => {
                    reply::error(out, "Access denied");
                    return;
                }
                (Some(_), None) if meta.public => Access::Read,
                (Some(_), None) => {
                    reply::error(out, "Namespace protected and private: password required");
                    return;
                }
            }
        };
        conn.ns = Some(ns);
        conn.access = access;
        reply::status(out, "OK");
    }

    fn info(&self) -> String {
        let c = &self.counters;
        let o = self.store.options();
        format!(
            "# server\r\nserver_name: zeronode-shards\r\nserver_version: {}\r\nuptime_seconds: {}\r\n\
             sync: {}\r\nadmin_password: {}\r\n# clients\r\nconnected_clients: {}\r\n\
             total_connections: {}\r\n# stats\r\ncommands: {}\r\nprotocol_errors: {}\r\n\
             namespaces: {}\r\n",
            env!("CARGO_PKG_VERSION"),
            self.started.elapsed().as_secs(),
            o.sync.as_str(),
            if self.config.admin_password.is_some() { "yes" } else { "no" },
            c.clients.load(Ordering::Relaxed),
            c.connections.load(Ordering::Relaxed),
            c.commands.load(Ordering::Relaxed),
            c.protocol_errors.load(Ordering::Relaxed),
            self.store.list().len(),
        )
    }
}

/// Entries a SCAN answers at most.
const SCAN_PAGE: usize = 64;

/// NSSET's properties: password (`*` or empty clears it), maxsize, public,
/// mode (user|seq, only while empty), sync (always|everysec|default).
pub fn set_property(ns: &Namespace, prop: &str, value: &str) -> Result<(), Error> {
    match prop.to_ascii_lowercase().as_str() {
        "password" => {
            let hash = if value.is_empty() || value == "*" {
                None
            } else {
                Some(PasswordHash::new(value)?)
            };
            ns.update_meta(|m| {
                m.password = hash;
                Ok(())
            })
        }
        "maxsize" => {
            let size: u64 = value
                .parse()
                .map_err(|_| Error::Invalid(format!("maxsize {value:?} is not a byte count")))?;
            ns.update_meta(|m| {
                m.maxsize = size;
                Ok(())
            })
        }
        "public" => {
            let public = match value {
                "1" | "yes" | "true" => true,
                "0" | "no" | "false" => false,
                _ => return Err(Error::Invalid(format!("public {value:?}: 0 or 1"))),
            };
            ns.update_meta(|m| {
                m.public = public;
                Ok(())
            })
        }
        "mode" => {
            let mode: Mode = value.parse().map_err(Error::Invalid)?;
            ns.update_meta(|m| {
                m.mode = mode;
                Ok(())
            })
        }
        "sync" => {
            let sync = match value {
                "default" | "" => None,
                v => Some(v.parse::<SyncPolicy>().map_err(Error::Invalid)?),
            };
            ns.update_meta(|m| {
                m.sync = sync;
                Ok(())
            })
        }
        other => Err(Error::Invalid(format!(
            "Invalid property {other:?}: password, maxsize, public, mode or sync"
        ))),
    }
}

/// NSINFO's text (never the password, only whether one is set).
pub fn ns_info(ns: &Namespace) -> String {
    let m = ns.meta();
    let s = ns.stats();
    format!(
        "# namespace\r\nname: {}\r\nentries: {}\r\npublic: {}\r\npassword: {}\r\n\
         data_size_bytes: {}\r\ndata_limits_bytes: {}\r\nmode: {}\r\nsync: {}\r\n\
         disk_size_bytes: {}\r\ndata_files: {}\r\nsyncs: {}\r\n",
        ns.name(),
        s.entries,
        if m.public { "yes" } else { "no" },
        if m.password.is_some() { "yes" } else { "no" },
        s.data_bytes,
        m.maxsize,
        m.mode.as_str(),
        ns.policy().as_str(),
        s.disk_bytes,
        s.files,
        s.syncs,
    )
}

enum Flow {
    Continue,
    Close,
    /// Compaction copies data: it runs on a blocking thread while the
    /// connection waits and other connections go on.
    Compact(Arc<Namespace>),
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

struct Conn {
    ns: Option<Arc<Namespace>>,
    access: Access,
    admin: bool,
    /// Namespaces written in this batch and the log position to commit.
    touched: Vec<(Arc<Namespace>, u64)>,
    scratch: Vec<u8>,
}

impl Conn {
    fn readable(&self, out: &mut Vec<u8>) -> Option<Arc<Namespace>> {
        match &self.ns {
            Some(ns) if ns.is_deleted() => {
                reply::error(out, &Error::Deleted(ns.name().to_string()).to_string());
                None
            }
            Some(ns) => Some(ns.clone()),
            None => {
                reply::error(out, "No namespace selected");
                None
            }
        }
    }

    fn writable(&self, out: &mut Vec<u8>) -> Option<Arc<Namespace>> {
        let ns = self.readable(out)?;
        if self.access != Access::Write {
            reply::error(out, "Permission denied: read-only access to this namespace");
            return None;
        }
        Some(ns)
    }

    fn touch(&mut self, ns: &Arc<Namespace>, lsn: u64) {
        match self.touched.iter_mut().find(|(n, _)| Arc::ptr_eq(n, ns)) {
            Some((_, l)) => *l = (*l).max(lsn),
            None => self.touched.push((ns.clone(), lsn)),
        }
    }
}
