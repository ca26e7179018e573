//! The `container` workload as a deployment carries it. Provision depends
//! on this crate for the type, so the JSON on D-Bus and the deployment's
//! workload are the same document.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::Error;

/// A container workload. Unknown fields are refused: a typo in a
/// deployment must not silently drop a limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    /// 1-64 of `[a-z0-9_.-]`, starting with a letter or digit; unique on the node.
    pub name: String,
    pub image: ImageSource,
    /// Replaces the image's ENTRYPOINT when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Replaces the image's CMD when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Added to (and overriding) the image's environment. Secrets included:
    /// they never appear in logs, only in the runtime spec.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Absolute path inside the container; the image's WorkingDir otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// CPU limit in cores (fractional allowed: 0.5 = half a core).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// Memory limit in bytes (at least 4 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Volumes (host paths from the storage module) bind-mounted inside.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    /// The workload network to attach to (through the network module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkRef>,
    #[serde(default)]
    pub restart: RestartPolicy,
}

/// An OCI image archive: a tar of an OCI image layout, pinned by the
/// sha256 of the archive file itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSource {
    /// `http://`, `https://` or `file:///`.
    pub url: String,
    /// 64 lowercase hex digits (an optional `sha256:` prefix is accepted).
    pub sha256: String,
}

impl ImageSource {
    /// The digest without prefix, lowercase.
    pub fn hex(&self) -> String {
        self.sha256
            .strip_prefix("sha256:")
            .unwrap_or(&self.sha256)
            .to_ascii_lowercase()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountSpec {
    /// A host path: the volume's path as the storage module returned it.
    pub source: String,
    /// Absolute path inside the container.
    pub target: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRef {
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whatever the exit status.
    Always,
    /// Restart when the exit status is not 0 (or the process was killed).
    #[default]
    OnFailure,
    Never,
}

/// A container name, also used as containerd id, snapshot key, cgroup and
/// file name: kept to characters that are safe in all of them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
}

impl ContainerSpec {
    pub fn from_json(json: &str) -> Result<Self, Error> {
        let spec: ContainerSpec = serde_json::from_str(json)
            .map_err(|e| Error::Invalid(format!("container spec: {e}")))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks everything that can be checked before touching containerd,
    /// so a bad spec changes nothing.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        if !valid_name(&self.name) {
            return bad(format!(
                "container name {:?}: 1-64 of [a-z0-9_.-], starting with a letter or digit",
                self.name
            ));
        }
        let hex = self.image.hex();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!(
                "image sha256 {:?}: 64 hex digits expected",
                self.image.sha256
            ));
        }
        if !["http://", "https://", "file:///"]
            .iter()
            .any(|p| self.image.url.starts_with(p))
        {
            return bad(format!(
                "image url {:?}: only http://, https:// and file:/// archives are supported",
                self.image.url
            ));
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return bad(format!("env name {k:?}: not empty, no '=' nor NUL"));
            }
        }
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                return bad(format!("workdir {w:?}: an absolute path expected"));
            }
        }
        if let Some(c) = self.cpu {
            // 1 ms of every 100 ms period is the smallest sensible quota.
            if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
                return bad(format!("cpu {c}: between 0.01 and 1024 cores"));
            }
        }
        if let Some(m) = self.memory {
            if m < 4 << 20 {
                return bad(format!("memory {m}: at least 4 MiB"));
            }
        }
        for m in &self.mounts {
            if !m.target.starts_with('/') || m.target.split('/').any(|c| c == "..") {
                return bad(format!(
                    "mount target {:?}: an absolute path without '..'",
                    m.target
                ));
            }
            let src = Path::new(&m.source);
            if !src.is_absolute() || !src.exists() {
                return bad(format!(
                    "mount source {:?}: not an existing absolute path",
                    m.source
                ));
            }
        }
        if let Some(n) = &self.network {
            if n.name.is_empty() {
                return bad("network name is empty".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec::from_json(&format!(
            r#"{{"name":"web-1","image":{{"url":"http://127.0.0.1/x.tar","sha256":"{}"}}}}"#,
            "a".repeat(64)
        ))
        .unwrap()
    }

    #[test]
    fn defaults_and_round_trip() {
        let s = spec();
        assert_eq!(s.restart, RestartPolicy::OnFailure);
        let back = ContainerSpec::from_json(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn refusals_name_the_field() {
        let mut s = spec();
        s.name = "Bad Name".into();
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("container name"));
        let mut s = spec();
        s.image.sha256 = "abc".into();
        assert!(s.validate().unwrap_err().to_string().contains("sha256"));
        let mut s = spec();
        s.image.url = "ftp://x".into();
        assert!(s.validate().unwrap_err().to_string().contains("url"));
        let mut s = spec();
        s.memory = Some(1000);
        assert!(s.validate().unwrap_err().to_string().contains("memory"));
        let mut s = spec();
        s.mounts.push(MountSpec {
            source: "/nonexistent-zn".into(),
            target: "/data".into(),
            readonly: false,
        });
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("mount source"));
        let e = ContainerSpec::from_json(
            r#"{"name":"a","image":{"url":"http://x","sha256":"x"},"bogus":1}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }
}
