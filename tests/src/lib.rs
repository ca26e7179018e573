//! Helpers for the end-to-end tests in `tests/e2e/`.

use std::path::PathBuf;

/// The image under test: `ZERONODE_IMAGE`, or the workspace's `out/image`.
pub fn image_dir() -> PathBuf {
    std::env::var_os("ZERONODE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../out/image"))
}
