//! The node's ready mark: a file PID 1 makes once the ready line is out.
//! Work nothing on the way to ready needs waits for it (storage's blank
//! disks beyond the first) or yields the CPUs until it is there (the
//! kernel's module requests), so it does not slow what the ready line
//! waits for.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

/// Made by PID 1 once the ready line is out.
pub const MARK: &str = "/run/zeronode/ready";

/// Waits until `mark` exists or `limit` has passed, whichever is first;
/// true if it exists. Woken by inotify on the mark's directory, so no
/// polling; if the directory cannot be watched (it does not exist), waits
/// out the limit.
pub fn wait_for(mark: &Path, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let Some(dir) = mark.parent() else {
        return mark.exists();
    };
    // Watch first, then look: a mark made in between is still seen.
    let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).and_then(|i| {
        i.add_watch(dir, AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
            .map(|_| i)
    });
    loop {
        if mark.exists() {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let Ok(inotify) = &watch else {
            std::thread::sleep(left);
            continue;
        };
        let ms = PollTimeout::try_from(left.as_millis().max(1)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            // Whatever was created, drain the events and look again.
            Ok(n) if n > 0 => {
                let _ = inotify.read_events();
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => std::thread::sleep(left.min(Duration::from_millis(50))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_mark_is_seen_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ready");
        std::fs::write(&mark, b"").unwrap();
        let t = Instant::now();
        assert!(wait_for(&mark, Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_mark_made_later_ends_the_wait_before_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("ready");
        std::fs::write(dir.path().join("other"), b"").unwrap();
        let later = mark.clone();
        let maker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(dir.path().join("unrelated"), b"").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            std::fs::write(&later, b"").unwrap();
            dir
        });
        let t = Instant::now();
        assert!(wait_for(&mark, Duration::from_secs(30)));
        assert!(t.elapsed() >= Duration::from_millis(150));
        assert!(t.elapsed() < Duration::from_secs(20));
        drop(maker.join().unwrap());
    }

    #[test]
    fn without_the_mark_the_wait_ends_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        for mark in [dir.path().join("ready"), dir.path().join("gone/ready")] {
            let t = Instant::now();
            assert!(!wait_for(&mark, Duration::from_millis(200)));
            assert!(t.elapsed() >= Duration::from_millis(200));
        }
    }
}
