//! The client's configuration file (TOML):
//!
//! ```toml
//! key_file = "/home/me/.zn/objects.key"   # 32 raw bytes or 64 hex digits
//! timeout_secs = 10
//! data_shards = 4
//! parity_shards = 2
//! stripe_size = 4194304
//! zstd_level = 3
//!
//! [[backend]]
//! address = "10.1.0.2:9900"
//! namespace = "objects"        # optional: 0-db namespace
//! password = "..."             # optional
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::backend::BackendConfig;
use crate::error::{Error, Result};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    #[serde(default)]
    pub data_shards: Option<usize>,
    #[serde(default)]
    pub parity_shards: Option<usize>,
    #[serde(default)]
    pub stripe_size: Option<usize>,
    #[serde(default)]
    pub zstd_level: Option<i32>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

impl ClientConfig {
    pub fn parse(text: &str) -> Result<Self> {
        let config: Self = toml::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        for backend in &config.backends {
            backend.validate()?;
        }
        if let Some(t) = config.timeout_secs {
            if !(t > 0.0 && t <= 3600.0) {
                return Err(Error::Config(format!(
                    "timeout_secs {t} must be in (0, 3600]"
                )));
            }
        }
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            action: "read config",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_rejects_unknown_keys() {
        let config = ClientConfig::parse(
            r#"
            key_file = "/k"
            data_shards = 10
            parity_shards = 4
            [[backend]]
            address = "127.0.0.1:9900"
            [[backend]]
            address = "127.0.0.1:9901"
            namespace = "ns"
            password = "pw"
            "#,
        )
        .unwrap();
        assert_eq!(config.backends.len(), 2);
        assert_eq!(config.backends[1].namespace.as_deref(), Some("ns"));
        assert_eq!(config.data_shards, Some(10));
        assert!(ClientConfig::parse("bogus = 1").is_err());
        assert!(ClientConfig::parse("[[backend]]\naddress = \"nohost\"").is_err());
        assert!(ClientConfig::parse("timeout_secs = -1").is_err());
    }
}
