//! Against the node's own shard store (modules/shards, a 0-db compatible
//! server) instead of redis-server: namespaces with passwords selected by
//! `SELECT ns password`, a 2+1 object over three servers (the layout of the
//! three-node QEMU test), one server stopped, the object back bit-exact.
//!
//! Ignored by default because it needs that binary:
//! `ZN_SHARDS_BIN=/path/to/zeronode-shards cargo test -p zeronode-objects
//!  --test shards_interop -- --ignored`

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zeronode_objects::resp::Reply;
use zeronode_objects::{Backend, BackendConfig, Objects, OwnerKey, Status, StoreOptions};

struct Shards {
    child: Option<Child>,
    address: String,
    _dir: tempfile::TempDir,
}

impl Shards {
    fn start(binary: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("admin"), "adminpw\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("--data")
            .arg(dir.path().join("data"))
            .args(["--listen", &address])
            .arg("--socket")
            .arg(dir.path().join("shards.sock"))
            .arg("--admin-password-file")
            .arg(dir.path().join("admin"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run the shard store");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(
                Instant::now() < deadline,
                "shard store on {address} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child: Some(child),
            address,
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ZN_SHARDS_BIN, a zeronode-shards binary"]
async fn two_plus_one_over_three_shard_stores_with_namespaces() {
    let binary = std::env::var("ZN_SHARDS_BIN").expect("set ZN_SHARDS_BIN");
    let mut servers: Vec<Shards> = (0..3).map(|_| Shards::start(&binary)).collect();
    for server in &servers {
        // What a zdb deployment does: a namespace with a password.
        let admin = Backend::new(
            BackendConfig::new(server.address.clone()),
            Duration::from_secs(5),
        );
        for command in [
            vec![&b"AUTH"[..], b"adminpw"],
            vec![b"NSNEW", b"objects"],
            vec![b"NSSET", b"objects", b"password", b"nspw"],
        ] {
            let reply = admin.command(&command).await.unwrap();
            assert!(!matches!(reply, Reply::Error(_)), "{command:?}: {reply:?}");
        }
    }
    let configs: Vec<BackendConfig> = servers
        .iter()
        .map(|s| BackendConfig::parse(&format!("{}/objects:nspw", s.address)).unwrap())
        .collect();
    let objects = Objects::new(
        configs.clone(),
        OwnerKey::from_bytes(&[4; 32]),
        Duration::from_secs(5),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = common::content(5 << 20, 12);
    let input = common::write_file(dir.path(), "in", &data);
    let options = StoreOptions {
        data_shards: 2,
        parity_shards: 1,
        stripe_size: 1 << 20,
        zstd_level: 3,
    };
    let id = objects.store(&input, &options).await.unwrap().id;
    assert_eq!(objects.check(&id).await.unwrap().status(), Status::Healthy);

    // A wrong namespace password is refused by the server, clearly.
    let mut wrong = configs.clone();
    wrong[0].password = Some("nope".into());
    let intruder = Objects::new(
        wrong,
        OwnerKey::from_bytes(&[4; 32]),
        Duration::from_secs(5),
    )
    .unwrap();
    let health = intruder.check(&id).await.unwrap();
    assert!(format!("{:?}", health.metadata[0].1).contains("SELECT objects refused"));

    servers[1].stop();
    let output = dir.path().join("out");
    objects.retrieve(&id, &output).await.unwrap();
    assert!(std::fs::read(&output).unwrap() == data);
}
