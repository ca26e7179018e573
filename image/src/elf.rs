//! The shared-library closure of Debian binaries, found the way the dynamic
//! loader finds it: PT_INTERP, then DT_NEEDED searched in DT_RUNPATH (or
//! DT_RPATH) and the multiarch default directories, recursively. Each file
//! goes into the image at its real path (symlinks resolved, including
//! merged-/usr directory links), with a symlink at every other path it was
//! asked for, so both the loader's path and the binary's path work.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use goblin::elf::Elf;

use crate::error::{io, Error, Result};

/// Where glibc's loader looks on Debian amd64, in its order.
pub const DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/usr/lib64",
    "/lib",
    "/usr/lib",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// A regular file: its path on the build machine (under the sysroot).
    File(PathBuf),
    /// A symlink to this absolute image path.
    Link(String),
}

/// Image path -> what goes there.
pub type Closure = BTreeMap<String, Item>;

/// The closure of `binaries` (absolute paths) as found under `sysroot`.
pub fn closure(sysroot: &Path, binaries: &[String]) -> Result<Closure> {
    let mut out = Closure::new();
    let mut queue: VecDeque<String> = binaries.iter().cloned().collect();
    while let Some(wanted) = queue.pop_front() {
        let real = resolve(sysroot, &wanted)?;
        if real != wanted {
            out.insert(wanted.clone(), Item::Link(real.clone()));
        }
        if out.contains_key(&real) {
            continue;
        }
        let host = host_path(sysroot, &real);
        out.insert(real.clone(), Item::File(host.clone()));
        let bytes = std::fs::read(&host).map_err(io("reading", &host))?;
        if !bytes.starts_with(b"\x7fELF") {
            continue; // a script or data file: nothing to load
        }
        let elf = Elf::parse(&bytes).map_err(|e| Error::Elf {
            path: host.clone(),
            reason: e.to_string(),
        })?;
        if let Some(interp) = elf.interpreter {
            if !exists(sysroot, interp) {
                return Err(Error::MissingLibrary {
                    path: host.clone(),
                    lib: interp.into(),
                    searched: "its PT_INTERP path".into(),
                });
            }
            queue.push_back(interp.to_string());
        }
        let origin = real.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
        let mut dirs: Vec<String> = if elf.runpaths.is_empty() {
            elf.rpaths
                .iter()
                .flat_map(|r| r.split(':'))
                .map(str::to_string)
                .collect()
        } else {
            elf.runpaths
                .iter()
                .flat_map(|r| r.split(':'))
                .map(str::to_string)
                .collect()
        };
        for d in &mut dirs {
            *d = d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin);
        }
        dirs.extend(DEFAULT_DIRS.iter().map(|d| d.to_string()));
        for lib in &elf.libraries {
            let found = if lib.contains('/') {
                Some(lib.to_string()).filter(|p| exists(sysroot, p))
            } else {
                dirs.iter()
                    .map(|d| format!("{}/{lib}", d.trim_end_matches('/')))
                    .find(|p| compatible(sysroot, p, &elf))
            };
            match found {
                Some(p) => queue.push_back(p),
                None => {
                    return Err(Error::MissingLibrary {
                        path: host.clone(),
                        lib: lib.to_string(),
                        searched: dirs.join(":"),
                    })
                }
            }
        }
    }
    Ok(out)
}

/// Writes the closure under `root`. A path already there is an error: a
/// Debian binary must not silently replace one of ours.
pub fn install(closure: &Closure, root: &Path) -> Result<()> {
    for (path, item) in closure {
        let to = place(root, path)?;
        match item {
            Item::File(from) => copy(from, &to)?,
            Item::Link(target) => symlink(target, &to)?,
        }
    }
    Ok(())
}

/// Installs `closure` as the tree `files` of an image that will be mounted
/// at `mount`: each file goes into `files`, and `system` (the tree of the
/// image holding the mount point) gets a symlink at the file's path to the
/// same path under `mount`. The closure's own links go into `system` as
/// they are. So every path works once the image is mounted, and says "no
/// such file" before.
pub fn install_behind(closure: &Closure, files: &Path, system: &Path, mount: &str) -> Result<()> {
    for (path, item) in closure {
        let link = place(system, path)?;
        match item {
            Item::File(from) => {
                copy(from, &place(files, path)?)?;
                symlink(&format!("{}{path}", mount.trim_end_matches('/')), &link)?;
            }
            Item::Link(target) => symlink(target, &link)?,
        }
    }
    Ok(())
}

/// `root` joined with the image path `path`, its directory made; an error
/// if something is there already.
fn place(root: &Path, path: &str) -> Result<PathBuf> {
    let to = root.join(path.trim_start_matches('/'));
    if std::fs::symlink_metadata(&to).is_ok() {
        return Err(Error::Elf {
            path: PathBuf::from(path),
            reason: "already in the system tree: a declared binary may not replace it".into(),
        });
    }
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    }
    Ok(to)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to).map_err(io("copying", from))?;
    Ok(())
}

fn symlink(target: &str, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(io("creating symlink", at))
}

fn host_path(sysroot: &Path, path: &str) -> PathBuf {
    sysroot.join(path.trim_start_matches('/'))
}

fn exists(sysroot: &Path, path: &str) -> bool {
    resolve(sysroot, path).is_ok()
}

/// A candidate library is usable if it is an ELF of the binary's class and
/// machine (a 32-bit libc in /lib must not satisfy a 64-bit program).
fn compatible(sysroot: &Path, path: &str, wanted_by: &Elf) -> bool {
    let Ok(real) = resolve(sysroot, path) else {
        return false;
    };
    let Ok(bytes) = std::fs::read(host_path(sysroot, &real)) else {
        return false;
    };
    match Elf::parse_header(&bytes) {
        Ok(h) => {
            let class = goblin::elf::header::EI_CLASS;
            h.e_machine == wanted_by.header.e_machine
                && h.e_ident[class] == wanted_by.header.e_ident[class]
        }
        Err(_) => false,
    }
}

/// `path` with every symlink resolved inside `sysroot` (absolute targets
/// are taken relative to it), as an absolute image path to a regular file.
pub fn resolve(sysroot: &Path, path: &str) -> Result<String> {
    let mut done: Vec<String> = Vec::new();
    let mut rest: VecDeque<String> = path.split('/').map(str::to_string).collect();
    let mut hops = 0;
    while let Some(c) = rest.pop_front() {
        match c.as_str() {
            "" | "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        let candidate = format!("/{}/{c}", done.join("/")).replace("//", "/");
        let host = host_path(sysroot, &candidate);
        let meta = std::fs::symlink_metadata(&host).map_err(io("looking up", &host))?;
        if meta.file_type().is_symlink() {
            hops += 1;
            if hops > 40 {
                return Err(Error::Elf {
                    path: PathBuf::from(path),
                    reason: "too many levels of symlinks".into(),
                });
            }
            let target = std::fs::read_link(&host).map_err(io("reading symlink", &host))?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                done.clear();
            }
            for part in target.split('/').rev() {
                rest.push_front(part.to_string());
            }
        } else {
            done.push(c);
        }
    }
    Ok(format!("/{}", done.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_names(c: &Closure) -> Vec<String> {
        c.iter()
            .filter(|(_, i)| matches!(i, Item::File(_)))
            .map(|(p, _)| p.rsplit('/').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn ls_needs_libc_and_the_loader() {
        let c = closure(Path::new("/"), &["/usr/bin/ls".into()]).unwrap();
        let files = file_names(&c);
        for want in ["ls", "libc.so.6", "ld-linux-x86-64.so.2", "libselinux.so.1"] {
            assert!(files.iter().any(|f| f == want), "{want} not in {c:#?}");
        }
        // The interpreter's own path works in the image (a link on merged /usr).
        assert!(c.contains_key("/lib64/ld-linux-x86-64.so.2"), "{c:#?}");
        // Every link points at something in the closure.
        for (p, item) in &c {
            if let Item::Link(t) = item {
                assert!(matches!(c.get(t), Some(Item::File(_))), "{p} -> {t}");
            }
        }
    }

    #[test]
    fn install_writes_files_and_links() {
        let c = closure(Path::new("/"), &["/usr/bin/ls".into()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        install(&c, dir.path()).unwrap();
        let loader = dir.path().join("lib64/ld-linux-x86-64.so.2");
        let target = std::fs::read_link(&loader).unwrap();
        let real = dir
            .path()
            .join(target.to_string_lossy().trim_start_matches('/'));
        assert!(std::fs::read(real).unwrap().starts_with(b"\x7fELF"));
        // A second install over the same tree refuses to replace files.
        assert!(install(&c, dir.path()).is_err());
    }

    #[test]
    fn install_behind_puts_files_in_the_image_and_links_in_the_system() {
        let system = closure(Path::new("/"), &["/bin/true".into()]).unwrap();
        let mut runtime = closure(Path::new("/"), &["/usr/bin/ls".into()]).unwrap();
        runtime.retain(|p, _| !system.contains_key(p));
        let (files, sys) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        install(&system, sys.path()).unwrap();
        install_behind(&runtime, files.path(), sys.path(), "/usr/lib/rt").unwrap();
        assert!(std::fs::read(files.path().join("usr/bin/ls"))
            .unwrap()
            .starts_with(b"\x7fELF"));
        assert_eq!(
            std::fs::read_link(sys.path().join("usr/bin/ls")).unwrap(),
            Path::new("/usr/lib/rt/usr/bin/ls")
        );
        // What the system has (libc, the loader) is not in the runtime tree.
        let libc = system.keys().find(|p| p.contains("libc.so")).unwrap();
        assert!(!files.path().join(libc.trim_start_matches('/')).exists());
        assert!(sys.path().join(libc.trim_start_matches('/')).exists());
    }

    #[test]
    fn a_missing_library_is_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::fs::copy("/usr/bin/ls", root.path().join("usr/bin/ls")).unwrap();
        let err = closure(root.path(), &["/usr/bin/ls".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("usr/bin/ls") && err.contains("ld-linux-x86-64.so.2"),
            "{err}"
        );
    }

    #[test]
    fn resolve_follows_relative_and_absolute_links() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir_all(r.join("usr/lib")).unwrap();
        std::fs::write(r.join("usr/lib/libx.so.1.2"), b"x").unwrap();
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).unwrap();
        std::os::unix::fs::symlink("libx.so.1.2", r.join("usr/lib/libx.so.1")).unwrap();
        std::os::unix::fs::symlink("/lib/libx.so.1", r.join("usr/lib/abs")).unwrap();
        assert_eq!(
            resolve(r, "/lib/libx.so.1").unwrap(),
            "/usr/lib/libx.so.1.2"
        );
        assert_eq!(resolve(r, "/usr/lib/abs").unwrap(), "/usr/lib/libx.so.1.2");
        assert!(resolve(r, "/lib/nope").is_err());
    }
}
