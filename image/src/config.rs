//! `image/zeronode.toml`: the declaration of what goes into the image.

use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: toml::de::Error,
    },
    #[error("{path}: {field}: {reason}")]
    Invalid {
        path: String,
        field: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    pub kernel: Kernel,
    pub initramfs: Initramfs,
    pub system: System,
    pub cmdline: Cmdline,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// Debian package name, e.g. `linux-image-6.1.0-50-amd64`.
    pub package: String,
    /// Exact Debian version to download, e.g. `6.1.176-1`.
    pub version: String,
    /// `uname -r` of that kernel: the directory under /lib/modules.
    pub release: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct System {
    /// Module names, or kernel-tree directories ending in `/`.
    pub modules: Vec<String>,
    /// Loaded at every boot: /etc/zeronode/modules-load.
    pub load: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cmdline {
    pub extra: Vec<String>,
}

impl ImageConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let cfg: ImageConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: name.into(),
            source,
        })?;
        let invalid = |field, reason: String| ConfigError::Invalid {
            path: name.into(),
            field,
            reason,
        };
        let safe = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-+.:~_".contains(&b))
        };
        if !safe(&cfg.kernel.package) || !cfg.kernel.package.starts_with("linux-image-") {
            return Err(invalid(
                "kernel.package",
                format!(
                    "{:?} is not a linux-image-* package name",
                    cfg.kernel.package
                ),
            ));
        }
        if !safe(&cfg.kernel.version) {
            return Err(invalid(
                "kernel.version",
                format!("{:?} is not a Debian version", cfg.kernel.version),
            ));
        }
        if !safe(&cfg.kernel.release) {
            return Err(invalid(
                "kernel.release",
                format!("{:?} is not a kernel release", cfg.kernel.release),
            ));
        }
        for m in cfg
            .initramfs
            .modules
            .iter()
            .chain(&cfg.system.modules)
            .chain(&cfg.system.load)
        {
            if m.is_empty() || m.contains("..") || m.contains(char::is_whitespace) {
                return Err(invalid(
                    "modules",
                    format!("{m:?} is not a module name or kernel/ directory"),
                ));
            }
        }
        if let Some(bad) = cfg.cmdline.extra.iter().find(|a| {
            a.is_empty() || a.contains(char::is_whitespace) || a.starts_with("zeronode.root_hash")
        }) {
            return Err(invalid("cmdline.extra", format!("{bad:?}: one parameter an item, no spaces; the root hash is set by the builder")));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_declaration_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("zeronode.toml");
        let cfg = ImageConfig::load(&path).unwrap();
        assert!(cfg.system.modules.iter().any(|m| m == "virtio_net"));
        assert!(cfg.initramfs.modules.contains(&"squashfs".to_string()));
    }

    #[test]
    fn bad_input_names_the_field() {
        let base =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("zeronode.toml"))
                .unwrap();
        let bad = base.replace(
            "package = \"linux-image-",
            "package = \"rm -rf linux-image-",
        );
        assert!(ImageConfig::parse(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("kernel.package"));
        let bad = base.replace("[cmdline]", "[cmdline]\nextra2 = 1");
        assert!(ImageConfig::parse(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("extra2"));
        let bad = base.replace("extra = [\"", "extra = [\"zeronode.root_hash=00\", \"");
        assert!(ImageConfig::parse(&bad, "x")
            .unwrap_err()
            .to_string()
            .contains("cmdline.extra"));
    }
}
