//! The store: every namespace under one data directory, one subdirectory
//! each. `default` always exists (as in 0-db).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};
use crate::namespace::{Meta, Namespace, Options};

pub const DEFAULT_NAMESPACE: &str = "default";

pub struct Store {
    dir: PathBuf,
    options: Options,
    namespaces: RwLock<BTreeMap<String, Arc<Namespace>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.dir.display())
    }
}

/// Namespace names: 1-128 of `A-Z a-z 0-9 . _ -`, not starting with `.`
/// (they are directory names).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Store {
    /// Opens every namespace under `dir` (creating `dir` and `default`).
    pub fn open(dir: &Path, options: Options) -> Result<Arc<Store>> {
        std::fs::create_dir_all(dir).map_err(|e| Error::at(dir, "creating", e))?;
        let mut namespaces = BTreeMap::new();
        let entries = std::fs::read_dir(dir).map_err(|e| Error::at(dir, "listing", e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(".trash-") {
                // A delete that was interrupted.
                let _ = std::fs::remove_dir_all(&path);
                continue;
            }
            if !valid_name(&name) || !path.join("namespace.json").exists() {
                continue;
            }
            let ns = Namespace::open(&path, &name, options)?;
            namespaces.insert(name, Arc::new(ns));
        }
        if !namespaces.contains_key(DEFAULT_NAMESPACE) {
            let ns = Namespace::create(
                &dir.join(DEFAULT_NAMESPACE),
                DEFAULT_NAMESPACE,
                Meta::default(),
                options,
            )?;
            namespaces.insert(DEFAULT_NAMESPACE.to_string(), Arc::new(ns));
        }
        Ok(Arc::new(Store {
            dir: dir.to_path_buf(),
            options,
            namespaces: RwLock::new(namespaces),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> Options {
        self.options
    }

    pub fn get(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    pub fn list(&self) -> Vec<String> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Namespace>> {
        self.namespaces
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn create(&self, name: &str, meta: Meta) -> Result<Arc<Namespace>> {
        if !valid_name(name) {
            return Err(Error::BadName(name.to_string()));
        }
        let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Err(Error::Exists(name.to_string()));
        }
        let ns = Arc::new(Namespace::create(
            &self.dir.join(name),
            name,
            meta,
            self.options,
        )?);
        map.insert(name.to_string(), ns.clone());
        tracing::info!(namespace = name, "namespace created");
        Ok(ns)
    }

    /// Deletes a namespace and its data. `default` cannot be deleted.
    pub fn delete(&self, name: &str) -> Result<()> {
        if name == DEFAULT_NAMESPACE {
            return Err(Error::Invalid(
                "the default namespace cannot be deleted".into(),
            ));
        }
        let ns = {
            let mut map = self.namespaces.write().unwrap_or_else(|e| e.into_inner());
            map.remove(name)
                .ok_or_else(|| Error::NotFound(name.to_string()))?
        };
        ns.mark_deleted();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = self.dir.join(name);
        let trash = self.dir.join(format!(".trash-{name}-{stamp}"));
        // Rename first so that a crash midway never leaves half a namespace.
        std::fs::rename(&path, &trash).map_err(|e| Error::at(&path, "renaming", e))?;
        crate::namespace::sync_dir(&self.dir)?;
        std::fs::remove_dir_all(&trash).map_err(|e| Error::at(&trash, "removing", e))?;
        tracing::info!(namespace = name, "namespace deleted");
        Ok(())
    }

    /// Flushes, syncs and snapshots every namespace.
    pub fn close(&self) -> Result<()> {
        let mut first = None;
        for ns in self.all() {
            if let Err(e) = ns.close() {
                tracing::error!(namespace = ns.name(), "closing: {e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}
