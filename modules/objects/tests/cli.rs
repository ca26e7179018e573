//! The zn-objects binary as a user runs it: keygen, store, check, retrieve,
//! rebuild, with backends from flags and from a TOML file.

mod common;

use std::process::{Command, Output};

use common::*;

fn zn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zn-objects"))
        .args(args)
        .output()
        .expect("run zn-objects")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn store_check_retrieve_rebuild_from_the_command_line() {
    let mut cluster = cluster(6);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("owner.key");
    let key_arg = key.to_str().unwrap();
    let out = zn(&["keygen", key_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second keygen must not overwrite the owner's key.
    let again = zn(&["keygen", key_arg]);
    assert!(!again.status.success());

    let data = content(3 << 20, 21);
    let input = write_file(dir.path(), "input.bin", &data);
    let mut backend_flags: Vec<String> = Vec::new();
    for redis in &cluster {
        backend_flags.push("--backend".into());
        backend_flags.push(redis.address());
    }
    let mut args: Vec<&str> = backend_flags.iter().map(String::as_str).collect();
    args.extend([
        "--key",
        key_arg,
        "store",
        input.to_str().unwrap(),
        "--stripe-size",
        "1048576",
    ]);
    let out = zn(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 32, "{id}");

    // The same backends from a config file.
    let mut toml = format!("key_file = {key_arg:?}\ntimeout_secs = 3\n");
    for redis in &cluster {
        toml.push_str(&format!("[[backend]]\naddress = \"{}\"\n", redis.address()));
    }
    let config = write_file(dir.path(), "objects.toml", toml.as_bytes());
    let config_arg = config.to_str().unwrap();

    let out = zn(&["--config", config_arg, "check", &id]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("status: healthy"),
        "{}",
        text(&out.stdout)
    );

    cluster[1].stop();
    cluster[2].stop();
    let output = dir.path().join("output.bin");
    let out = zn(&[
        "--config",
        config_arg,
        "retrieve",
        &id,
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&output).unwrap() == data);
    let out = zn(&["--config", config_arg, "check", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("4 good, 0 missing, 0 corrupt, 2 unreachable"));

    cluster[1].restart();
    cluster[2].restart();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let objects = objects(&cluster, 0);
    runtime.block_on(async {
        objects.backends()[4].command(&[b"FLUSHALL"]).await.unwrap();
    });
    let out = zn(&["--config", config_arg, "check", &id]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stdout).contains("missing"),
        "{}",
        text(&out.stdout)
    );
    let out = zn(&["--config", config_arg, "rebuild", &id]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = zn(&["--config", config_arg, "check", &id]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // Several objects at once: an unknown one is an error (exit 1), the
    // known one is still reported.
    let unknown = "00".repeat(16);
    let out = zn(&["--config", config_arg, "check", &id, &unknown]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("status: healthy"));
    assert!(
        text(&out.stderr).contains("not found on any of the 6 backends"),
        "{}",
        text(&out.stderr)
    );

    // Wrong key: a clear error, exit 1, no output file.
    let other = dir.path().join("other.key");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let refused = dir.path().join("refused.bin");
    let out = zn(&[
        "--config",
        config_arg,
        "--key",
        other.to_str().unwrap(),
        "retrieve",
        &id,
        refused.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("wrong key or tampered metadata"),
        "{}",
        text(&out.stderr)
    );
    assert!(!refused.exists());

    // Bad input: specific errors.
    let out = zn(&["--config", config_arg, "retrieve", "xyz", "/tmp/never"]);
    assert!(
        text(&out.stderr).contains("invalid object id"),
        "{}",
        text(&out.stderr)
    );
    let out = zn(&["--key", key_arg, "check", &id]);
    assert!(
        text(&out.stderr).contains("no backends"),
        "{}",
        text(&out.stderr)
    );
    let out = zn(&["--backend", "nohost", "--key", key_arg, "check", &id]);
    assert!(
        text(&out.stderr).contains("host:port"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn sigterm_ends_a_hanging_retrieve_cleanly() {
    let cluster = cluster(3);
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    for redis in &cluster {
        redis.freeze(true);
    }
    let output = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_zn-objects"))
        .env("RUST_LOG", "zeronode_objects=debug")
        .env("NO_COLOR", "1")
        .args(["--timeout", "60", "--key", key.to_str().unwrap()])
        .args(
            cluster
                .iter()
                .flat_map(|r| ["--backend".to_string(), r.address()]),
        )
        .args(["retrieve", &"ab".repeat(16), output.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Signal only once it is inside the command (handlers are installed by then).
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(n > 0, "zn-objects ended early: {seen}");
        seen.push_str(&line);
        if line.contains("reading metadata copies") {
            break;
        }
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted by SIGTERM"), "{rest}");
    assert_eq!(names(dir.path()), vec!["k"]);
    for redis in &cluster {
        redis.freeze(false);
    }
}
