//! Peer-to-peer D-Bus for the node's modules: no bus daemon, one unix
//! socket a module. A module `NAME` listens on `/run/zeronode/NAME.sock`
//! and serves one interface `org.zeronode.<Name>1` at
//! `/org/zeronode/<Name>1`; `busctl --address=unix:path=SOCK` works on it
//! because the socket also answers `org.freedesktop.DBus.Hello`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use zbus::object_server::Interface;

/// Where the modules' sockets live on a node.
pub const RUN_DIR: &str = "/run/zeronode";

/// A client that has not finished the D-Bus handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The socket of module `name` on a node: `/run/zeronode/<name>.sock`.
pub fn socket_path(name: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{name}.sock"))
}

/// Connects to the module listening on `path` (the client side). A proxy
/// built on it still needs a destination, which nothing routes by.
pub async fn connect(path: &Path) -> zbus::Result<zbus::Connection> {
    let stream = std::os::unix::net::UnixStream::connect(path)?;
    zbus::connection::Builder::unix_stream(stream)
        .p2p()
        .build()
        .await
}

/// Listens on `path` (replacing a stale socket, mode 0600: only root talks
/// to modules) and serves `iface` at `object_path` on each client's own
/// connection; clones of `iface` share its state through whatever `Arc`s it
/// holds. Must run inside a tokio runtime.
pub fn serve<I>(
    path: &Path,
    object_path: &'static str,
    iface: I,
) -> std::io::Result<tokio::task::JoinHandle<()>>
where
    I: Interface + Clone,
{
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(accept(listener, object_path, iface)))
}

async fn accept<I: Interface + Clone>(
    listener: tokio::net::UnixListener,
    object_path: &'static str,
    iface: I,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_client(stream, object_path, iface.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: wait instead of spinning.
                tracing::warn!("{object_path}: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_client<I: Interface>(
    stream: tokio::net::UnixStream,
    object_path: &'static str,
    iface: I,
) {
    let stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => return tracing::warn!("{object_path}: {e}"),
    };
    let build = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())
        .p2p()
        .serve_at(object_path, iface)
        .serve_at("/org/freedesktop/DBus", BusHello)
        .build();
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, build).await {
        // The connection serves until the client hangs up.
        Ok(Ok(conn)) => conn.closed().await,
        Ok(Err(e)) => tracing::debug!("{object_path}: client: {e}"),
        Err(_) => tracing::debug!("{object_path}: client: no handshake within 5 s"),
    }
}

/// Just enough of the bus interface for clients that greet a bus first
/// (busctl, sd-bus with an address): Hello gets a unique name.
struct BusHello;

#[zbus::interface(name = "org.freedesktop.DBus")]
impl BusHello {
    fn hello(&self) -> String {
        ":1.1".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Counter(Arc<AtomicU32>);

    #[zbus::interface(name = "org.zeronode.Test1")]
    impl Counter {
        fn bump(&self) -> u32 {
            self.0.fetch_add(1, Ordering::SeqCst) + 1
        }
    }

    #[zbus::proxy(
        interface = "org.zeronode.Test1",
        default_service = "org.zeronode.Test1",
        default_path = "/org/zeronode/Test1"
    )]
    trait Test1 {
        fn bump(&self) -> zbus::Result<u32>;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn clients_share_the_served_state() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/test.sock");
        let server = serve(&sock, "/org/zeronode/Test1", Counter::default()).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let a = connect(&sock).await.unwrap();
        let b = connect(&sock).await.unwrap();
        assert_eq!(Test1Proxy::new(&a).await.unwrap().bump().await.unwrap(), 1);
        assert_eq!(Test1Proxy::new(&b).await.unwrap().bump().await.unwrap(), 2);
        server.abort();
    }

    #[test]
    fn sockets_live_under_run() {
        assert_eq!(
            socket_path("ledger"),
            PathBuf::from("/run/zeronode/ledger.sock")
        );
    }
}
