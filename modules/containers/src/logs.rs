//! Container output: the runc shim appends stdout and stderr to one file
//! (`file://` stdio URI), so output keeps flowing while this module
//! restarts. Rotation is copy-then-truncate: the shim's descriptor is
//! O_APPEND, so after a truncate its next write lands at the new end.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::Error;

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

fn old_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log.1"))
}

/// When the current log passed `cap` bytes, its last `cap` bytes become
/// `NAME.log.1` (replacing the previous one) and it starts again empty: at
/// most twice `cap` per container on disk, plus what comes between checks.
pub fn rotate(dir: &Path, name: &str, cap: u64) -> Result<bool, Error> {
    let cur = log_path(dir, name);
    let len = match std::fs::metadata(&cur) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if len <= cap {
        return Ok(false);
    }
    let old = old_path(dir, name);
    let mut from =
        std::fs::File::open(&cur).map_err(Error::io(format!("open {}", cur.display())))?;
    from.seek(SeekFrom::End(-(cap.min(len) as i64)))
        .map_err(Error::io(format!("seek {}", cur.display())))?;
    let mut to =
        std::fs::File::create(&old).map_err(Error::io(format!("create {}", old.display())))?;
    std::io::copy(&mut from.take(cap), &mut to)
        .map_err(Error::io(format!("copy {}", cur.display())))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&cur)
        .map_err(Error::io(format!("open {}", cur.display())))?;
    f.set_len(0)
        .map_err(Error::io(format!("truncate {}", cur.display())))?;
    Ok(true)
}

/// The last `max` bytes of the container's output (rotated part first).
pub fn tail(dir: &Path, name: &str, max: u64) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    let mut want = max;
    for p in [log_path(dir, name), old_path(dir, name)] {
        if want == 0 {
            break;
        }
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("open {}", p.display()))(e)),
        };
        let len = f
            .metadata()
            .map_err(Error::io(format!("stat {}", p.display())))?
            .len();
        let take = len.min(want);
        f.seek(SeekFrom::Start(len - take))
            .map_err(Error::io(format!("seek {}", p.display())))?;
        let mut buf = Vec::with_capacity(take as usize);
        f.take(take)
            .read_to_end(&mut buf)
            .map_err(Error::io(format!("read {}", p.display())))?;
        want -= buf.len() as u64;
        buf.extend_from_slice(&out);
        out = buf;
    }
    Ok(out)
}

pub fn remove(dir: &Path, name: &str) {
    let _ = std::fs::remove_file(log_path(dir, name));
    let _ = std::fs::remove_file(old_path(dir, name));
}

/// A log's bytes as a D-Bus string: invalid UTF-8 and NUL (which D-Bus
/// strings cannot carry; a guest's serial console does print it) become
/// U+FFFD, so one odd byte cannot make the whole log unreadable.
pub fn as_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{FFFD}")
}

#[cfg(test)]
mod tests {

    #[test]
    fn text_for_dbus_has_no_nul_and_keeps_the_rest() {
        assert_eq!(as_text(b"up\0\xffok\n"), "up\u{FFFD}\u{FFFD}ok\n");
        assert_eq!(as_text(b"plain"), "plain");
    }
    use super::*;

    #[test]
    fn rotation_keeps_the_tail() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(log_path(d.path(), "a"), b"0123456789").unwrap();
        assert!(!rotate(d.path(), "a", 100).unwrap());
        assert!(rotate(d.path(), "a", 5).unwrap());
        assert_eq!(std::fs::metadata(log_path(d.path(), "a")).unwrap().len(), 0);
        std::fs::write(log_path(d.path(), "a"), b"abc").unwrap();
        assert_eq!(tail(d.path(), "a", 100).unwrap(), b"56789abc");
        assert_eq!(tail(d.path(), "a", 5).unwrap(), b"89abc");
        assert_eq!(tail(d.path(), "a", 2).unwrap(), b"bc");
        assert!(tail(d.path(), "none", 2).unwrap().is_empty());
    }
}
