//! Device nodes for modules that are loaded on first use: depmod lists in
//! modules.devname the nodes whose open(2) makes the kernel ask for their
//! module (`tun net/tun c10:200`). devtmpfs only has a node once its module
//! is loaded, so without these the first open of /dev/net/tun fails with
//! ENOENT instead of loading tun. Same job as kmod's `static-nodes`.

use std::path::{Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};

/// One line of modules.devname.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNode {
    pub module: String,
    /// Relative to /dev.
    pub name: String,
    pub char_device: bool,
    pub major: u64,
    pub minor: u64,
}

/// modules.devname's lines (`module name cMAJ:MIN` or `b...`); comments,
/// blank and malformed lines (or names leaving /dev) are skipped.
pub fn parse(text: &str) -> Vec<StaticNode> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (module, name, dev) = (f.next()?, f.next()?, f.next()?);
            if name.starts_with('/') || name.split('/').any(|c| c == ".." || c.is_empty()) {
                return None;
            }
            let char_device = match dev.as_bytes().first()? {
                b'c' => true,
                b'b' => false,
                _ => return None,
            };
            let (major, minor) = dev[1..].split_once(':')?;
            Some(StaticNode {
                module: module.to_string(),
                name: name.to_string(),
                char_device,
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
            })
        })
        .collect()
}

/// Makes every node of `modules_dir`/modules.devname that `dev` lacks
/// (mode 0600, as devtmpfs would). Returns the paths made; an error names
/// the node.
pub fn create(modules_dir: &Path, dev: &Path) -> Result<Vec<PathBuf>, String> {
    let list = modules_dir.join("modules.devname");
    let text = match std::fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", list.display())),
    };
    let mut made = Vec::new();
    for n in parse(&text) {
        let path = dev.join(&n.name);
        if path.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("creating {}: {e}", parent.display()))?;
        }
        let kind = if n.char_device {
            SFlag::S_IFCHR
        } else {
            SFlag::S_IFBLK
        };
        mknod(
            &path,
            kind,
            Mode::from_bits_truncate(0o600),
            makedev(n.major, n.minor),
        )
        .map_err(|e| format!("mknod {} ({}): {e}", path.display(), n.module))?;
        made.push(path);
    }
    Ok(made)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devname_lines_are_read_and_bad_ones_skipped() {
        let text = "# Device nodes to trigger on-demand module loading.\n\
                    tun net/tun c10:200\n\
                    loop loop-control c10:237\n\
                    x ../etc/passwd c1:1\n\
                    y /abs c1:1\n\
                    z bad x1:1\n\
                    w short\n\
                    v blk b7:3\n";
        let nodes = parse(text);
        assert_eq!(
            nodes,
            vec![
                StaticNode {
                    module: "tun".into(),
                    name: "net/tun".into(),
                    char_device: true,
                    major: 10,
                    minor: 200
                },
                StaticNode {
                    module: "loop".into(),
                    name: "loop-control".into(),
                    char_device: true,
                    major: 10,
                    minor: 237
                },
                StaticNode {
                    module: "v".into(),
                    name: "blk".into(),
                    char_device: false,
                    major: 7,
                    minor: 3
                },
            ]
        );
    }

    #[test]
    fn nodes_are_made_once_and_existing_ones_kept() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: mknod needs root");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let modules = d.path().join("modules");
        let dev = d.path().join("dev");
        std::fs::create_dir_all(&modules).unwrap();
        std::fs::create_dir_all(dev.join("already")).unwrap();
        std::fs::write(
            modules.join("modules.devname"),
            "tun net/tun c10:200\nx already c1:3\n",
        )
        .unwrap();
        let made = create(&modules, &dev).unwrap();
        assert_eq!(made, vec![dev.join("net/tun")]);
        use std::os::unix::fs::FileTypeExt;
        let meta = std::fs::metadata(dev.join("net/tun")).unwrap();
        assert!(meta.file_type().is_char_device());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.rdev(), makedev(10, 200));
        assert!(dev.join("already").is_dir());
        assert!(create(&modules, &dev).unwrap().is_empty());
        // No modules.devname: nothing to do.
        assert!(create(d.path(), &dev).unwrap().is_empty());
    }
}
