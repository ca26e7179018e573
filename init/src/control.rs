//! The supervisor's control interface: D-Bus over a peer-to-peer unix
//! socket (no bus daemon), interface `org.zeronode.Init1` at
//! `/org/zeronode/Init1`. `znctl` is its client; `busctl --address=unix:path=SOCK`
//! works too, for which the socket also answers the one bus method busctl
//! sends first, `org.freedesktop.DBus.Hello`.
//!
//! A method call becomes a [`Request`] to the loop in `run`, which owns the
//! supervisor; the reply comes back on a one-shot channel. So the D-Bus
//! side holds no supervisor state and takes no lock.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use zbus::{interface, proxy, DBusError, Type};

use crate::run::PowerAction;
use crate::supervisor::command::{Answer, CommandError, Info, Op, Reply};

pub const OBJECT_PATH: &str = "/org/zeronode/Init1";
/// Where the node's init listens.
pub const DEFAULT_SOCKET: &str = "/run/zeronode/init.sock";

/// A client that has not finished the D-Bus handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a method call asks of the loop in `run`.
#[derive(Debug)]
pub enum Request {
    Command(Op, oneshot::Sender<Answer>),
    Power(PowerAction),
}

/// One service, as List and Status return it: D-Bus signature
/// `(sssuutsb)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceStatus {
    pub name: String,
    /// "longrun" or "oneshot".
    pub kind: String,
    /// waiting, starting, running, done, backoff, stopping, stopped,
    /// failed or refused.
    pub state: String,
    /// 0 when no process runs.
    pub pid: u32,
    /// Restarts in a row.
    pub restarts: u32,
    /// Milliseconds in this state.
    pub since_ms: u64,
    /// Why it failed or was refused.
    pub detail: String,
    /// Counts for the node's ready line.
    pub ready: bool,
}

impl From<Info> for ServiceStatus {
    fn from(i: Info) -> Self {
        ServiceStatus {
            name: i.name,
            kind: i.kind.into(),
            state: i.state.into(),
            pid: i.pid,
            restarts: i.restarts,
            since_ms: i.since_ms,
            detail: i.detail,
            ready: i.ready,
        }
    }
}

/// The errors of `org.zeronode.Init1`, as D-Bus error names
/// `org.zeronode.Init1.Error.<Variant>`; the message names the service.
#[derive(Debug, DBusError)]
#[zbus(prefix = "org.zeronode.Init1.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    UnknownService(String),
    Refused(String),
    ShuttingDown(String),
    Failed(String),
}

impl From<CommandError> for Error {
    fn from(e: CommandError) -> Self {
        let msg = e.to_string();
        match e {
            CommandError::UnknownService(_) => Error::UnknownService(msg),
            CommandError::Refused { .. } => Error::Refused(msg),
            CommandError::ShuttingDown(_) => Error::ShuttingDown(msg),
            CommandError::Follow { .. } => Error::Failed(msg),
        }
    }
}

/// The object served at [`OBJECT_PATH`] on each client connection.
struct Control {
    requests: mpsc::UnboundedSender<Request>,
}

impl Control {
    async fn ask(&self, op: Op) -> Result<Reply, Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Command(op, tx))
            .map_err(|_| Error::ShuttingDown("the supervisor has stopped".into()))?;
        rx.await
            .map_err(|_| Error::ShuttingDown("the supervisor has stopped".into()))?
            .map_err(Error::from)
    }

    async fn status_of(&self, op: Op) -> Result<ServiceStatus, Error> {
        match self.ask(op).await? {
            Reply::Status(i) => Ok(i.into()),
            other => Err(unexpected(other)),
        }
    }

    fn power(&self, action: PowerAction) -> Result<(), Error> {
        self.requests
            .send(Request::Power(action))
            .map_err(|_| Error::ShuttingDown("the supervisor has stopped".into()))
    }
}

fn unexpected(reply: Reply) -> Error {
    Error::Failed(format!("internal error: unexpected reply {reply:?}"))
}

#[interface(name = "org.zeronode.Init1")]
impl Control {
    /// Every service, in name order.
    async fn list(&self) -> Result<Vec<ServiceStatus>, Error> {
        match self.ask(Op::List).await? {
            Reply::List(l) => Ok(l.into_iter().map(Into::into).collect()),
            other => Err(unexpected(other)),
        }
    }

    async fn status(&self, name: String) -> Result<ServiceStatus, Error> {
        self.status_of(Op::Status(name)).await
    }

    /// Starts a stopped or failed service (it waits for its dependencies).
    async fn start(&self, name: String) -> Result<ServiceStatus, Error> {
        self.status_of(Op::Start(name)).await
    }

    /// Stops a service and answers once its process has exited.
    async fn stop(&self, name: String) -> Result<ServiceStatus, Error> {
        self.status_of(Op::Stop(name)).await
    }

    /// Stops and starts a service again, with a fresh back-off.
    async fn restart(&self, name: String) -> Result<ServiceStatus, Error> {
        self.status_of(Op::Restart(name)).await
    }

    /// The last `lines` lines the service wrote.
    async fn logs(&self, name: String, lines: u32) -> Result<Vec<String>, Error> {
        match self.ask(Op::Logs(name, lines)).await? {
            Reply::Logs(l) => Ok(l),
            other => Err(unexpected(other)),
        }
    }

    /// A pipe to read: the last `lines` lines, then each new line as the
    /// service writes it, until the reader closes it.
    async fn follow(&self, name: String, lines: u32) -> Result<zbus::OwnedFd, Error> {
        match self.ask(Op::Follow(name, lines)).await? {
            Reply::Follow(fd) => Ok(fd.into()),
            other => Err(unexpected(other)),
        }
    }

    /// Stops every service in order, then reboots the node.
    async fn reboot(&self) -> Result<(), Error> {
        self.power(PowerAction::Reboot)
    }

    /// Stops every service in order, then powers the node off.
    async fn power_off(&self) -> Result<(), Error> {
        self.power(PowerAction::PowerOff)
    }
}

/// Just enough of the bus interface for clients that greet a bus first
/// (busctl, sd-bus with an address): Hello gets a unique name.
struct Bus;

#[interface(name = "org.freedesktop.DBus")]
impl Bus {
    fn hello(&self) -> String {
        ":1.1".into()
    }
}

/// The client side of `org.zeronode.Init1`. A proxy needs a destination
/// even on a peer-to-peer connection, where nothing routes by it.
#[proxy(
    interface = "org.zeronode.Init1",
    default_service = "org.zeronode.Init1",
    default_path = "/org/zeronode/Init1"
)]
pub trait Init1 {
    fn list(&self) -> Result<Vec<ServiceStatus>, Error>;
    fn status(&self, name: &str) -> Result<ServiceStatus, Error>;
    fn start(&self, name: &str) -> Result<ServiceStatus, Error>;
    fn stop(&self, name: &str) -> Result<ServiceStatus, Error>;
    fn restart(&self, name: &str) -> Result<ServiceStatus, Error>;
    fn logs(&self, name: &str, lines: u32) -> Result<Vec<String>, Error>;
    fn follow(&self, name: &str, lines: u32) -> Result<zbus::OwnedFd, Error>;
    fn reboot(&self) -> Result<(), Error>;
    fn power_off(&self) -> Result<(), Error>;
}

/// Connects to the control socket at `path` (the client side).
pub async fn connect(path: &Path) -> zbus::Result<zbus::Connection> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await
}

/// Listens on `path` (replacing a stale socket, mode 0600) and serves each
/// client on its own connection. Must run inside the tokio runtime.
pub fn serve(
    path: &Path,
    requests: mpsc::UnboundedSender<Request>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(accept(listener, requests)))
}

async fn accept(listener: tokio::net::UnixListener, requests: mpsc::UnboundedSender<Request>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, requests.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!("control socket: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client(stream: tokio::net::UnixStream, requests: mpsc::UnboundedSender<Request>) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("control socket: {e}"),
    };
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .serve_at(OBJECT_PATH, Control { requests })
        .serve_at("/org/freedesktop/DBus", Bus)
        .build();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, build).await {
        // The connection serves until the client hangs up.
        Ok(Ok(conn)) => conn.closed().await,
        Ok(Err(e)) => tracing::debug!("control client: {e}"),
        Err(_) => tracing::debug!("control client: no handshake within 5 s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole path minus the supervisor: a fake loop answers requests.
    #[tokio::test]
    async fn calls_errors_and_power_reach_the_loop() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/init.sock");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let server = serve(&sock, tx).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let fake = tokio::spawn(async move {
            let mut powers = Vec::new();
            while let Some(req) = rx.recv().await {
                match req {
                    Request::Command(Op::Logs(name, n), reply) => {
                        let _ = reply.send(Ok(Reply::Logs(vec![format!("{name} {n}")])));
                    }
                    Request::Command(Op::Status(name), reply) => {
                        let _ = reply.send(Err(CommandError::UnknownService(name)));
                    }
                    Request::Command(op, _) => panic!("{op:?}"),
                    Request::Power(a) => {
                        powers.push(a);
                        if powers.len() == 2 {
                            return powers;
                        }
                    }
                }
            }
            powers
        });
        let conn = connect(&sock).await.unwrap();
        let proxy = Init1Proxy::new(&conn).await.unwrap();
        assert_eq!(proxy.logs("web", 3).await.unwrap(), ["web 3"]);
        match proxy.status("ghost").await {
            Err(Error::UnknownService(m)) => assert!(m.contains("\"ghost\""), "{m}"),
            other => panic!("{other:?}"),
        }
        proxy.reboot().await.unwrap();
        proxy.power_off().await.unwrap();
        assert_eq!(
            fake.await.unwrap(),
            [PowerAction::Reboot, PowerAction::PowerOff]
        );
        server.abort();
    }
}
