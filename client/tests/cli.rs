//! The zn binary's key commands as a user runs them. (Building this test
//! also makes cargo build `zn` itself, which the provision tests drive.)

use std::process::Command;

const ZN: &str = env!("CARGO_BIN_EXE_zn");

fn zn(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(ZN).args(args).output().expect("running zn")
}

#[test]
fn a_key_is_generated_read_back_and_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("owner.key");
    let out = zn(&["key".as_ref(), "generate".as_ref(), key.as_os_str()]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let public = stdout
        .lines()
        .find_map(|l| l.strip_prefix("public key "))
        .expect("a public key line")
        .to_string();
    assert_eq!(public.len(), 64, "{public}");
    let saved = std::fs::read(&key).unwrap();

    let out = zn(&[
        "--key".as_ref(),
        key.as_os_str(),
        "key".as_ref(),
        "pubkey".as_ref(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), public);

    // A second generate into the same file is refused, clearly, and the key stays.
    let out = zn(&["key".as_ref(), "generate".as_ref(), key.as_os_str()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("refusing to overwrite") && stderr.contains("owner.key"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), saved);
}
