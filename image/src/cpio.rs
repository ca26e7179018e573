//! The initramfs format: cpio "newc" (SVR4 without checksums), as the kernel
//! unpacks it. Written by us so owners, device nodes, inode numbers and
//! timestamps are fixed, and no root is needed for /dev/console.

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::error::{io as io_err, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev { major: u32, minor: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path without a leading slash, e.g. `dev/console`.
    pub path: String,
    pub mode: u32,
    pub kind: Kind,
}

impl Entry {
    pub fn dir(path: &str) -> Self {
        Entry {
            path: path.into(),
            mode: 0o755,
            kind: Kind::Dir,
        }
    }
    pub fn file(path: &str, mode: u32, data: Vec<u8>) -> Self {
        Entry {
            path: path.into(),
            mode,
            kind: Kind::File(data),
        }
    }
    pub fn char_dev(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        Entry {
            path: path.into(),
            mode,
            kind: Kind::CharDev { major, minor },
        }
    }
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Writes `entries` sorted by path (parents before children), every one
/// owned by root with modification time `mtime`, then the trailer.
pub fn write(out: &mut impl Write, entries: &[Entry], mtime: u32) -> io::Result<u64> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    let mut w = Counting {
        inner: out,
        written: 0,
    };
    for (i, e) in sorted.iter().enumerate() {
        let (fmt, data, rdev): (u32, &[u8], (u32, u32)) = match &e.kind {
            Kind::Dir => (S_IFDIR, &[], (0, 0)),
            Kind::File(d) => (S_IFREG, d, (0, 0)),
            Kind::Symlink(t) => (S_IFLNK, t.as_bytes(), (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR, &[], (*major, *minor)),
        };
        let nlink = if matches!(e.kind, Kind::Dir) { 2 } else { 1 };
        header(
            &mut w,
            i as u32 + 1,
            fmt | (e.mode & 0o7777),
            nlink,
            mtime,
            data.len(),
            rdev,
            &e.path,
        )?;
        w.write_all(data)?;
        pad(&mut w)?;
    }
    header(&mut w, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
    Ok(w.written)
}

#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut Counting<impl Write>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let size = u32::try_from(size).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: over 4 GiB, too big for cpio"),
        )
    })?;
    write!(
        w,
        "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{mtime:08X}{size:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        0,
        0,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

fn pad(w: &mut Counting<impl Write>) -> io::Result<()> {
    let n = (4 - (w.written % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..n])
}

struct Counting<W> {
    inner: W,
    written: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Every directory, file and symlink under `root` as entries with paths
/// relative to it. Files keep only whether they are executable.
pub fn tree_entries(root: &Path) -> Result<Vec<Entry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(io_err("listing", dir))? {
            let path = e.map_err(io_err("listing", dir))?.path();
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(&path).map_err(io_err("reading", &path))?;
            if meta.is_dir() {
                out.push(Entry::dir(&rel));
                walk(root, &path, out)?;
            } else if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).map_err(io_err("reading", &path))?;
                out.push(Entry {
                    path: rel,
                    mode: 0o777,
                    kind: Kind::Symlink(target.to_string_lossy().into_owned()),
                });
            } else {
                let mode = if meta.permissions().mode() & 0o111 != 0 {
                    0o755
                } else {
                    0o644
                };
                let data = std::fs::read(&path).map_err(io_err("reading", &path))?;
                out.push(Entry::file(&rel, mode, data));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Vec<Entry> {
        vec![
            Entry::file("init", 0o755, b"#!/bin/true\n".to_vec()),
            Entry::dir("dev"),
            Entry::char_dev("dev/console", 0o600, 5, 1),
            Entry {
                path: "bin".into(),
                mode: 0o777,
                kind: Kind::Symlink("usr/bin".into()),
            },
            Entry::file("etc/odd", 0o644, vec![1, 2, 3]),
            Entry::dir("etc"),
        ]
    }

    #[test]
    fn the_cpio_tool_reads_it_back() {
        let mut buf = Vec::new();
        let n = write(&mut buf, &sample(), 1_700_000_000).unwrap();
        assert_eq!(n as usize, buf.len());
        assert_eq!(buf.len() % 4, 0);
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, &buf).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -tv --quiet < {}", archive.display()))
            .output()
            .expect("cpio is installed");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names: Vec<&str> = listing
            .lines()
            .map(|l| l.split_whitespace().last().unwrap())
            .collect();
        // Sorted, parents first; the symlink line ends in its target.
        assert_eq!(
            names,
            ["usr/bin", "dev", "dev/console", "etc", "etc/odd", "init"]
        );
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("dev/console"), "{listing}");
        assert!(listing.contains("bin -> usr/bin"), "{listing}");
        let extract = dir.path().join("x");
        std::fs::create_dir(&extract).unwrap();
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -id --quiet --no-absolute-filenames 'etc/*' 'init' < {}",
                extract.display(),
                archive.display()
            ))
            .status()
            .unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read(extract.join("etc/odd")).unwrap(), [1, 2, 3]);
        assert_eq!(
            std::fs::read(extract.join("init")).unwrap(),
            b"#!/bin/true\n"
        );
    }

    #[test]
    fn a_directory_tree_keeps_links_and_exec_bits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("lib/modules")).unwrap();
        std::fs::write(root.join("lib/modules/a.ko"), b"ko").unwrap();
        std::fs::write(root.join("tool"), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(root.join("tool"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::symlink("tool", root.join("alias")).unwrap();
        let mut entries = tree_entries(root).unwrap();
        entries.sort_by(|a, b| a.path.cmp(&b.path));
        let got: Vec<(&str, u32)> = entries.iter().map(|e| (e.path.as_str(), e.mode)).collect();
        assert_eq!(
            got,
            [
                ("alias", 0o777),
                ("lib", 0o755),
                ("lib/modules", 0o755),
                ("lib/modules/a.ko", 0o644),
                ("tool", 0o755)
            ]
        );
        assert_eq!(entries[0].kind, Kind::Symlink("tool".into()));
    }

    #[test]
    fn same_input_same_bytes_whatever_the_order() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut rev = sample();
        rev.reverse();
        write(&mut a, &sample(), 0).unwrap();
        write(&mut b, &rev, 0).unwrap();
        assert_eq!(a, b);
    }
}
