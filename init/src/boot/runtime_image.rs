//! The runtime image: the Debian programs only workloads run (containerd,
//! runc, QEMU and their libraries) in a squashfs of their own, beside the
//! system image in the initramfs. Stage 1 only attaches it to a loop device.
//! The `runtime` service (`zeronode-init mount-runtime`, after the ready
//! line) checks its blake3 against the hash the verified system image pins
//! and mounts it where the system image's links point. Hashing most of the
//! image's bytes then costs the way to ready nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use nix::mount::{mount, MsFlags};
use thiserror::Error;

use super::loopdev::{self, Detach};
use super::{mounts, parallel_hash};
use zeronode_types::boot_config::hex;

/// The runtime image inside the initramfs.
const IMAGE: &str = "/runtime.img";
/// Where the system image's links point (the image builder's RUNTIME_MOUNT).
pub const MOUNT_POINT: &str = "/usr/lib/zeronode/runtime";
/// Its blake3 hex, in the system image (the builder's RUNTIME_HASH_FILE).
pub const PINNED_HASH: &str = "/etc/zeronode/runtime.blake3";
/// The loop device stage 1 attached it to.
pub const DEVICE_RECORD: &str = "/run/zeronode/runtime-device";

#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("stage 1 attached no runtime image ({0} is missing; its reason is in the boot log)")]
    NotAttached(PathBuf),
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} holds no blake3 hash (64 hex digits): {text:?}")]
    BadPin { path: PathBuf, text: String },
    #[error(
        "runtime image on {device} does not match the hash the system image pins: expected {expected}, found {actual}"
    )]
    HashMismatch {
        device: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("mounting {device} (squashfs) on {mount_point}: {source}")]
    Mount {
        device: PathBuf,
        mount_point: PathBuf,
        source: nix::Error,
    },
}

/// Stage 1, once the new root's /run is mounted: attaches /runtime.img to a
/// loop device that outlives the initramfs and writes the device's path
/// where the `runtime` service looks. Failing here only costs workloads
/// their runtimes, so it is reported and the boot goes on.
pub fn attach(new_root: &Path) {
    if !Path::new(IMAGE).exists() {
        return;
    }
    let record = new_root.join(DEVICE_RECORD.trim_start_matches('/'));
    let attached = loopdev::attach_read_only(Path::new(IMAGE), Detach::Never)
        .map_err(|e| e.to_string())
        .and_then(|device| {
            let write = || -> io::Result<()> {
                if let Some(dir) = record.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&record, device.path.as_os_str().as_encoded_bytes())
            };
            write().map_err(|e| format!("writing {}: {e}", record.display()))
        });
    if let Err(e) = attached {
        tracing::error!("runtime image: {e}; container and VM workloads cannot run");
    }
}

/// Where `mount_runtime` reads and mounts; the node's own paths, or a
/// test's.
pub struct Paths {
    pub record: PathBuf,
    pub pin: PathBuf,
    pub mount_point: PathBuf,
}

impl Paths {
    pub fn node() -> Self {
        Paths {
            record: DEVICE_RECORD.into(),
            pin: PINNED_HASH.into(),
            mount_point: MOUNT_POINT.into(),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Mounted {
        device: PathBuf,
        hash: String,
    },
    AlreadyMounted,
    /// The system image pins no runtime image: it was built without one.
    NoneInThisImage,
}

/// Verifies the runtime image against its pin and mounts it read-only.
/// Mounted already (the service ran before) is success.
pub fn mount_runtime(paths: &Paths) -> Result<Outcome, RuntimeError> {
    let pin = match std::fs::read_to_string(&paths.pin) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Outcome::NoneInThisImage),
        Err(source) => {
            return Err(RuntimeError::Read {
                path: paths.pin.clone(),
                source,
            })
        }
    };
    if mounts::is_mountpoint(&paths.mount_point) {
        return Ok(Outcome::AlreadyMounted);
    }
    let device = match std::fs::read_to_string(&paths.record) {
        Ok(text) => PathBuf::from(text.trim()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(RuntimeError::NotAttached(paths.record.clone()))
        }
        Err(source) => {
            return Err(RuntimeError::Read {
                path: paths.record.clone(),
                source,
            })
        }
    };
    let hash = verify(&device, &paths.pin, &pin)?;
    mount(
        Some(&device),
        &paths.mount_point,
        Some("squashfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .map_err(|source| RuntimeError::Mount {
        device: device.clone(),
        mount_point: paths.mount_point.clone(),
        source,
    })?;
    Ok(Outcome::Mounted { device, hash })
}

/// The device's blake3 hex, if it is the pinned one. The loop device is
/// read-only and its file lies in the initramfs no path reaches any more,
/// so what was hashed is what gets mounted.
fn verify(device: &Path, pin_path: &Path, pin: &str) -> Result<String, RuntimeError> {
    let expected = pin.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(RuntimeError::BadPin {
            path: pin_path.to_path_buf(),
            text: pin.to_string(),
        });
    }
    let actual = parallel_hash::hash_path(device).map_err(|source| RuntimeError::Read {
        path: device.to_path_buf(),
        source,
    })?;
    drop_cached(device);
    let actual = hex(&actual);
    if actual != expected {
        return Err(RuntimeError::HashMismatch {
            device: device.to_path_buf(),
            expected,
            actual,
        });
    }
    Ok(actual)
}

/// squashfs reads its device around the page cache, so what hashing left
/// there would only sit in RAM until reclaimed.
fn drop_cached(device: &Path) {
    if let Ok(f) = std::fs::File::open(device) {
        let _ = nix::fcntl::posix_fadvise(
            &f,
            0,
            0,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

/// `zeronode-init mount-runtime`: the `runtime` service.
pub fn main() -> ExitCode {
    super::logging::init_stderr();
    let t = Instant::now();
    match mount_runtime(&Paths::node()) {
        Ok(Outcome::Mounted { device, hash }) => {
            tracing::info!(
                "runtime image on {} verified (blake3 {}) and mounted on {MOUNT_POINT} in {} ms",
                device.display(),
                &hash[..16],
                t.elapsed().as_millis()
            );
            ExitCode::SUCCESS
        }
        Ok(Outcome::AlreadyMounted) => {
            tracing::info!("runtime image already mounted on {MOUNT_POINT}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::NoneInThisImage) => {
            tracing::info!("this system image has no runtime image ({PINNED_HASH} is absent)");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("{e}; container and VM workloads cannot run");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        /// Keeps the files alive for the test.
        _dir: tempfile::TempDir,
        paths: Paths,
        image: PathBuf,
    }

    fn fixture(image: &[u8], pin: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image_path = dir.path().join("runtime.img");
        std::fs::write(&image_path, image).unwrap();
        let paths = Paths {
            record: dir.path().join("runtime-device"),
            pin: dir.path().join("runtime.blake3"),
            mount_point: dir.path().join("mnt"),
        };
        std::fs::create_dir(&paths.mount_point).unwrap();
        if let Some(pin) = pin {
            std::fs::write(&paths.pin, pin).unwrap();
        }
        Fixture {
            _dir: dir,
            paths,
            image: image_path,
        }
    }

    #[test]
    fn a_changed_image_is_refused_before_anything_is_mounted() {
        let bytes = vec![9u8; 3 << 20];
        let good = blake3::hash(&bytes).to_hex().to_string();
        let mut bad = bytes.clone();
        bad[1 << 20] ^= 1;
        let f = fixture(&bad, Some(&format!("{good}\n")));
        std::fs::write(&f.paths.record, f.image.as_os_str().as_encoded_bytes()).unwrap();
        let err = mount_runtime(&f.paths).unwrap_err().to_string();
        assert!(
            err.contains("does not match the hash the system image pins") && err.contains(&good),
            "{err}"
        );
        assert!(!mounts::is_mountpoint(&f.paths.mount_point));
        // The right bytes pass verification.
        std::fs::write(&f.image, &bytes).unwrap();
        assert_eq!(
            verify(&f.image, &f.paths.pin, &format!("{good}\n")).unwrap(),
            good
        );
    }

    #[test]
    fn a_missing_device_record_or_a_bad_pin_is_named() {
        let f = fixture(b"x", Some(&"ab".repeat(32)));
        let err = mount_runtime(&f.paths).unwrap_err().to_string();
        assert!(
            err.contains("stage 1 attached no runtime image") && err.contains("runtime-device"),
            "{err}"
        );
        std::fs::write(&f.paths.record, f.image.as_os_str().as_encoded_bytes()).unwrap();
        std::fs::write(&f.paths.pin, "not a hash").unwrap();
        let err = mount_runtime(&f.paths).unwrap_err().to_string();
        assert!(err.contains("holds no blake3 hash"), "{err}");
    }

    #[test]
    fn an_image_without_a_runtime_pins_none_and_that_is_fine() {
        let f = fixture(b"x", None);
        assert_eq!(mount_runtime(&f.paths).unwrap(), Outcome::NoneInThisImage);
    }
}
