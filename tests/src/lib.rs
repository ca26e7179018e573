//! Helpers for the end-to-end tests in `tests/e2e/`.

use std::path::PathBuf;

/// The image under test: `ZERONODE_IMAGE`, or the workspace's `out/image`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("ZERONODE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../out/image"))
}

/// The 3Bot client `zn`, built by cargo (debug, as `cargo test` already
/// built it for provision's tests) into this workspace's target directory
/// on first use (`ZN_BIN` names another one).
pub fn zn_binary() -> Result<PathBuf, String> {
    built_binary("zeronode-client", "zn", "ZN_BIN")
}

/// The objects client `zn-objects`, built as `zn` is (`ZN_OBJECTS_BIN`
/// names another one).
pub fn zn_objects_binary() -> Result<PathBuf, String> {
    built_binary("zeronode-objects", "zn-objects", "ZN_OBJECTS_BIN")
}

/// `bin` of `package`, built in debug by cargo unless `env` names it.
fn built_binary(package: &str, bin: &str, env: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--locked",
            "-p",
            package,
            "--bin",
            bin,
            "--message-format=short",
        ])
        .output()
        .map_err(|e| format!("running cargo to build {bin}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building {bin}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target.join("debug").join(bin))
}
