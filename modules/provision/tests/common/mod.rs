//! A node on the host for tests: the real identity and ledger services
//! (their library code, served on unix sockets in this process, exactly as
//! their binaries serve them), fake network and storage modules that record
//! calls (optional), and the real zeronode-provision binary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use zeronode_client::Client;
use zeronode_deployment::hex;
use zeronode_identity::service::Identity;
use zeronode_identity::NodeKey;
use zeronode_ledger::dbus::{Ledger1Proxy, LedgerService};
use zeronode_ledger::{KeySigner, Ledger, Options};

pub struct Node {
    pub dir: tempfile::TempDir,
    pub owner: SigningKey,
    pub node_id: String,
    pub url: String,
    pub provision: Child,
    pub servers: Vec<tokio::task::JoinHandle<()>>,
    pub fakes: Fakes,
    pub args: Vec<String>,
}

/// Calls the fake modules received: ("VolumeCreate", name) ...
#[derive(Clone, Default)]
pub struct Fakes {
    pub calls: Arc<Mutex<Vec<(String, String)>>>,
    pub volumes: Arc<Mutex<Vec<(String, u64)>>>,
    /// Containers by name: the spec JSON they were created with.
    pub containers: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
    /// Namespaces: (name, size, mode, password, public).
    pub namespaces: Arc<Mutex<Vec<FakeNamespace>>>,
}

pub type FakeNamespace = (String, u64, String, String, bool);

impl Fakes {
    pub fn count(&self, method: &str) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.0 == method)
            .count()
    }
}

#[derive(Clone)]
pub struct FakeStorage(pub Fakes);

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.zeronode.Storage1.Error")]
pub enum FakeError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Exists(String),
}

#[zbus::interface(name = "org.zeronode.Storage1")]
impl FakeStorage {
    fn volume_create(&self, name: String, size_bytes: u64) -> Result<String, FakeError> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("VolumeCreate".into(), name.clone()));
        let mut v = self.0.volumes.lock().unwrap();
        if v.iter().any(|x| x.0 == name) {
            return Err(FakeError::Exists(format!("volume {name} exists")));
        }
        v.push((name.clone(), size_bytes));
        Ok(format!("/pool/volumes/{name}"))
    }
    fn volume_delete(&self, name: String) -> zbus::fdo::Result<()> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("VolumeDelete".into(), name.clone()));
        self.0.volumes.lock().unwrap().retain(|x| x.0 != name);
        Ok(())
    }
    fn volume_list(&self) -> Vec<(String, String, String, u64, u64)> {
        self.0
            .volumes
            .lock()
            .unwrap()
            .iter()
            .map(|(n, s)| (n.clone(), "p".into(), format!("/pool/volumes/{n}"), 0, *s))
            .collect()
    }
    #[allow(clippy::type_complexity)]
    fn pools(&self) -> Vec<(String, String, String, bool, u64, u64, u64, bool)> {
        vec![(
            "p".into(),
            "/dev/x".into(),
            "/pool".into(),
            true,
            1 << 30,
            0,
            1 << 30,
            true,
        )]
    }
}

#[derive(Clone)]
pub struct FakeNetwork(pub Fakes);

#[zbus::interface(name = "org.zeronode.Network1")]
impl FakeNetwork {
    fn network_create(&self, name: String, subnet: String) -> String {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("NetworkCreate".into(), name));
        subnet.replace(".0/", ".1/")
    }
    fn network_delete(&self, name: String) {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("NetworkDelete".into(), name));
    }
    fn state(&self) -> String {
        "{}".into()
    }
}

#[derive(Clone)]
pub struct FakeContainers(pub Fakes);

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.zeronode.Containers1.Error")]
pub enum FakeContainersError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    NotFound(String),
}

#[zbus::interface(name = "org.zeronode.Containers1")]
impl FakeContainers {
    /// As the module: the same spec again is a no-op answering the status.
    fn create(&self, spec: String) -> Result<String, FakeContainersError> {
        let v: serde_json::Value = serde_json::from_str(&spec)
            .map_err(|e| FakeContainersError::InvalidArgument(e.to_string()))?;
        let name = v["name"].as_str().unwrap_or("").to_string();
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("ContainerCreate".into(), name.clone()));
        let mut cs = self.0.containers.lock().unwrap();
        cs.retain(|c| c.0 != name);
        cs.push((name.clone(), v.clone()));
        let address = if v["network"].is_object() {
            "10.77.0.2/24"
        } else {
            ""
        };
        Ok(serde_json::json!({"name": name, "state": "running", "address": address}).to_string())
    }
    fn delete(&self, name: String) -> Result<(), FakeContainersError> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("ContainerDelete".into(), name.clone()));
        let mut cs = self.0.containers.lock().unwrap();
        if !cs.iter().any(|c| c.0 == name) {
            return Err(FakeContainersError::NotFound(format!(
                "no container {name}"
            )));
        }
        cs.retain(|c| c.0 != name);
        Ok(())
    }
    fn status(&self, name: String) -> Result<String, FakeContainersError> {
        Err(FakeContainersError::NotFound(name))
    }
    fn logs(&self, name: String, _max_bytes: u64) -> Result<String, FakeContainersError> {
        if !self
            .0
            .containers
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.0 == name)
        {
            return Err(FakeContainersError::NotFound(format!(
                "no container {name}"
            )));
        }
        Ok(format!("hello from {name}\n"))
    }
}

#[derive(Clone)]
pub struct FakeShards(pub Fakes);

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.zeronode.Shards1.Error")]
pub enum FakeShardsError {
    #[zbus(error)]
    ZBus(zbus::Error),
    Exists(String),
    NotFound(String),
}

#[zbus::interface(name = "org.zeronode.Shards1")]
impl FakeShards {
    fn namespace_create(
        &self,
        name: String,
        size: u64,
        mode: String,
        password: String,
        public: bool,
    ) -> Result<(String, String, u16), FakeShardsError> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("NamespaceCreate".into(), name.clone()));
        let mut ns = self.0.namespaces.lock().unwrap();
        if ns.iter().any(|n| n.0 == name) {
            return Err(FakeShardsError::Exists(format!("Namespace {name} exists")));
        }
        ns.push((name.clone(), size, mode, password, public));
        Ok((name, "0.0.0.0".into(), 9900))
    }
    fn listener(&self) -> (String, u16) {
        ("0.0.0.0".into(), 9900)
    }
    fn namespace_delete(&self, name: String) -> Result<(), FakeShardsError> {
        self.0
            .calls
            .lock()
            .unwrap()
            .push(("NamespaceDelete".into(), name.clone()));
        let mut ns = self.0.namespaces.lock().unwrap();
        if !ns.iter().any(|n| n.0 == name) {
            return Err(FakeShardsError::NotFound(name));
        }
        ns.retain(|n| n.0 != name);
        Ok(())
    }
    #[allow(clippy::type_complexity)]
    fn namespace_info(
        &self,
        name: String,
    ) -> Result<(String, u64, u64, String, bool, bool, u64, String), FakeShardsError> {
        let ns = self.0.namespaces.lock().unwrap();
        let n = ns
            .iter()
            .find(|n| n.0 == name)
            .ok_or_else(|| FakeShardsError::NotFound(name.clone()))?;
        // The module answers 0-db's names for the modes.
        let mode = match n.2.as_str() {
            "user" => "userkey",
            "seq" => "sequential",
            other => other,
        };
        Ok((
            n.0.clone(),
            n.1,
            0,
            mode.into(),
            n.4,
            !n.3.is_empty(),
            0,
            "everysec".into(),
        ))
    }
}

/// `name`, a binary of another package of the workspace, as `cargo test
/// --workspace` builds it. Cargo is asked for exactly that build (`--no-run`):
/// run from `cargo test --workspace`, as scripts/test does, every unit is fresh
/// and this takes a second or two, where `cargo build -p` resolved other
/// features and rebuilt tokio, zbus and their dependents (43 s in CI, once
/// for each test that did it). Run from `cargo test -p zeronode-provision`,
/// it builds the workspace's tests once.
pub fn workspace_binary(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_zeronode-provision"));
    let bin_dir = exe.parent().unwrap().to_path_buf();
    BUILT.get_or_init(|| {
        let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // What cargo set for this test (CARGO_PKG_NAME, CARGO_MANIFEST_DIR...)
        // must not reach the build: ring's build script reruns when they
        // differ from the outer build's, and everything after it rebuilt.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_BIN_",
                "CARGO_CRATE_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || key == "CARGO_PRIMARY_PACKAGE"
                || key == "CARGO_TARGET_TMPDIR"
            {
                cmd.env_remove(key);
            }
        }
        let status = cmd
            .args([
                "test",
                "--workspace",
                "--locked",
                "--no-run",
                "--quiet",
                "--manifest-path",
            ])
            .arg(&manifest)
            .env("CARGO_TARGET_DIR", bin_dir.parent().unwrap())
            .args(if bin_dir.ends_with("release") {
                &["--release"][..]
            } else {
                &[][..]
            })
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "building the workspace's binaries");
    });
    bin_dir.join(name)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Node {
    pub fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.sock"))
    }

    /// Starts identity, ledger, optionally the fake modules, and provision.
    pub async fn start(with_fakes: bool, extra: &[&str]) -> Node {
        Node::start_with(with_fakes, extra, None).await
    }

    /// As `start`, with the network and storage sockets of real modules.
    pub async fn start_with(
        with_fakes: bool,
        extra: &[&str],
        modules: Option<(PathBuf, PathBuf)>,
    ) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let owner = SigningKey::from_bytes(&[42; 32]);
        let key = NodeKey::load_or_create(&dir.path().join("identity")).unwrap();
        let seed: [u8; 32] = std::fs::read(key.path()).unwrap().try_into().unwrap();
        let node_id = key.node_id().to_string();
        let identity = Identity::new(key, Some(7), Some(owner.verifying_key().to_bytes()));
        let mut servers = Vec::new();
        let s = |n: &str| dir.path().join(format!("{n}.sock"));
        servers.push(
            zeronode_types::bus::serve(&s("identity"), "/org/zeronode/Identity1", identity)
                .unwrap(),
        );
        let ledger = Ledger::open(
            &dir.path().join("ledger"),
            Arc::new(KeySigner::from_seed(&seed)),
            Options { map_size: 1 << 30 },
        )
        .unwrap();
        servers.push(
            zeronode_types::bus::serve(
                &s("ledger"),
                "/org/zeronode/Ledger1",
                LedgerService::new(ledger),
            )
            .unwrap(),
        );
        let fakes = Fakes::default();
        if with_fakes {
            servers.push(
                zeronode_types::bus::serve(
                    &s("storage"),
                    "/org/zeronode/Storage1",
                    FakeStorage(fakes.clone()),
                )
                .unwrap(),
            );
            servers.push(
                zeronode_types::bus::serve(
                    &s("network"),
                    "/org/zeronode/Network1",
                    FakeNetwork(fakes.clone()),
                )
                .unwrap(),
            );
            servers.push(
                zeronode_types::bus::serve(
                    &s("containers"),
                    "/org/zeronode/Containers1",
                    FakeContainers(fakes.clone()),
                )
                .unwrap(),
            );
            servers.push(
                zeronode_types::bus::serve(
                    &s("shards"),
                    "/org/zeronode/Shards1",
                    FakeShards(fakes.clone()),
                )
                .unwrap(),
            );
        }
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--cmdline".into(),
            "/dev/null".into(),
            "--watch-interval-ms".into(),
            "200".into(),
        ];
        for m in [
            "identity",
            "ledger",
            "network",
            "storage",
            "containers",
            "vms",
            "shards",
        ] {
            let path = match (&modules, m) {
                (Some((n, _)), "network") => n.clone(),
                (Some((_, st)), "storage") => st.clone(),
                _ => s(m),
            };
            args.push(format!("--{m}-socket"));
            args.push(path.display().to_string());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let provision = spawn_provision(&args).await;
        Node {
            url: format!("https://127.0.0.1:{port}"),
            dir,
            owner,
            node_id,
            provision,
            servers,
            fakes,
            args,
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.url, Some(&self.node_id)).unwrap()
    }

    pub async fn ledger_count(&self) -> u64 {
        let conn = zeronode_types::bus::connect(&self.sock("ledger"))
            .await
            .unwrap();
        Ledger1Proxy::new(&conn)
            .await
            .unwrap()
            .count()
            .await
            .unwrap()
    }

    pub async fn restart_provision(&mut self) {
        let _ = self.provision.kill();
        let _ = self.provision.wait();
        self.provision = spawn_provision(&self.args).await;
    }

    pub fn owner_hex(&self) -> String {
        hex::encode(self.owner.verifying_key().as_bytes())
    }
}

/// Spawns provision and waits for its "serving" line.
async fn spawn_provision(args: &[String]) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zeronode-provision"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next();
        // Keep draining so provision never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        first
    });
    let line = tokio::time::timeout(Duration::from_secs(60), ready)
        .await
        .expect("provision did not start in 60 s")
        .unwrap();
    let line = line.expect("provision exited").unwrap();
    assert!(line.contains("serving https://"), "{line}");
    child
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.provision.kill();
        let _ = self.provision.wait();
        for s in &self.servers {
            s.abort();
        }
    }
}

/// A signed deployment of a network and a volume, by `key`.
pub fn deployment(key: &SigningKey, id: &str, version: u64) -> serde_json::Value {
    let twin = hex::encode(key.verifying_key().as_bytes());
    serde_json::json!({
        "kind": "deployment", "id": id, "version": version, "twin": twin,
        "description": "test", "expiration": zeronode_client::api::now_secs() + 3600,
        "signature_requirement": {"requests": [{"twin": twin, "weight": 1, "required": true}], "threshold": 1},
        "workloads": [
            {"name": "net", "type": "network", "version": 1, "data": {"subnet": "10.77.0.0/24"}},
            {"name": "data", "type": "volume", "version": 1, "data": {"size": 104857600}}
        ]
    })
}

pub fn signed(mut v: serde_json::Value, keys: &[&SigningKey]) -> Vec<u8> {
    for k in keys {
        zeronode_deployment::sign_value(&mut v, k).unwrap();
    }
    serde_json::to_vec(&v).unwrap()
}

/// Polls until every workload of `id` left "pending".
pub async fn settled(c: &Client, id: &str, key: &SigningKey) -> serde_json::Value {
    for _ in 0..100 {
        let v = c.get(id, key).await.unwrap();
        if v["workloads"]
            .as_array()
            .unwrap()
            .iter()
            .all(|w| w["state"] != "pending")
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{id} still pending");
}
