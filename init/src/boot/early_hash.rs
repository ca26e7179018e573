//! The system image's hash, started at PID 1's first instruction by a
//! process of its own.
//!
//! Before stage 1 can fork the early module loader and hash, PID 1 mounts
//! the kernel's file systems, parses the command line and sets up its log:
//! 60-130 ms under emulation with the second CPU idle. The hash needs none
//! of that, only `/system.img`, so a child forked first hashes it meanwhile
//! and hands PID 1 the 32 bytes through a pipe. A process rather than a
//! thread: PID 1 forks the early module loader next, which is only sound
//! while PID 1 has no thread (see `early_modules`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid};

use super::parallel_hash;

/// A hash under way in a child.
pub struct Hashing {
    child: Pid,
    result: File,
}

/// What the child reports: its hash and how long it took.
#[derive(Debug, PartialEq, Eq)]
pub struct Hashed {
    pub hash: [u8; 32],
    pub took: Duration,
}

const OK: u8 = 0;
const FAILED: u8 = 1;

/// Forks the child that hashes `image`. None when there is no image or
/// no child (a failed pipe or fork is said as a warning once the log is
/// up, by the caller hashing in-line).
///
/// Must be called while PID 1 has no other thread: the child runs Rust
/// code after fork, which is only sound in a single-threaded process.
pub fn start(image: &Path) -> Option<Hashing> {
    if !image.exists() {
        return None;
    }
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).ok()?;
    // SAFETY: PID 1 has started no thread yet (see above), so the child
    // inherits no lock another thread holds.
    match unsafe { nix::unistd::fork() }.ok()? {
        ForkResult::Parent { child } => {
            drop(write_end);
            Some(Hashing {
                child,
                result: File::from(read_end),
            })
        }
        ForkResult::Child => {
            drop(read_end);
            run_child(image, write_end)
        }
    }
}

fn run_child(image: &Path, out: OwnedFd) -> ! {
    let t = Instant::now();
    let message = encode(parallel_hash::hash_path(image), t.elapsed());
    let _ = File::from(out).write_all(&message);
    std::process::exit(0)
}

impl Hashing {
    /// Waits for the child's result and reaps it.
    pub fn finish(mut self) -> io::Result<Hashed> {
        let mut message = Vec::new();
        let read = self.result.read_to_end(&mut message);
        let _ = waitpid(self.child, None);
        read?;
        decode(&message)
    }
}

fn encode(result: io::Result<[u8; 32]>, took: Duration) -> Vec<u8> {
    match result {
        Ok(hash) => {
            let ms = u32::try_from(took.as_millis()).unwrap_or(u32::MAX);
            let mut m = vec![OK];
            m.extend_from_slice(&hash);
            m.extend_from_slice(&ms.to_le_bytes());
            m
        }
        Err(e) => {
            let mut m = vec![FAILED];
            m.extend_from_slice(e.to_string().as_bytes());
            m
        }
    }
}

fn decode(message: &[u8]) -> io::Result<Hashed> {
    match message.split_first() {
        Some((&OK, rest)) if rest.len() == 36 => {
            let (hash, ms) = rest.split_at(32);
            let mut h = [0u8; 32];
            h.copy_from_slice(hash);
            let mut m = [0u8; 4];
            m.copy_from_slice(ms);
            Ok(Hashed {
                hash: h,
                took: Duration::from_millis(u32::from_le_bytes(m).into()),
            })
        }
        Some((&FAILED, why)) => Err(io::Error::other(String::from_utf8_lossy(why).into_owned())),
        _ => Err(io::Error::other(format!(
            "the hashing process ended without a result ({} bytes)",
            message.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_comes_back_whole() {
        let hash = *blake3::hash(b"system image").as_bytes();
        let m = encode(Ok(hash), Duration::from_millis(228));
        assert_eq!(
            decode(&m).unwrap(),
            Hashed {
                hash,
                took: Duration::from_millis(228)
            }
        );
    }

    #[test]
    fn the_childs_error_is_passed_on() {
        let m = encode(
            Err(io::Error::from(io::ErrorKind::PermissionDenied)),
            Duration::ZERO,
        );
        let e = decode(&m).unwrap_err();
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    #[test]
    fn a_child_that_died_is_an_error_not_a_hash() {
        // Nothing (killed before writing) or a message cut short.
        for m in [&[][..], &[OK][..], &[OK; 20][..]] {
            let e = decode(m).unwrap_err();
            assert!(e.to_string().contains("without a result"), "{e}");
        }
    }
}
