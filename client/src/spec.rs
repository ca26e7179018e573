//! A readable deployment spec (TOML) -> a Deployment document (JSON value).
//!
//! ```toml
//! id = "web-1"
//! version = 1                      # default 1
//! description = "a network and a volume"
//! valid_for = 2592000              # seconds from now; or expiration = <unix s>
//! # twin = "<hex>"                 # default: the first signing key
//! # threshold = 2 and [[signers]] twin/weight/required: default is the
//! # twin alone, weight 1, required, threshold 1
//! [[workloads]]
//! name = "net"
//! type = "network"
//! data = { subnet = "10.20.0.0/24" }
//! ```

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("spec: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("spec: {0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Spec {
    id: String,
    #[serde(default = "one")]
    version: u64,
    #[serde(default)]
    description: String,
    expiration: Option<u64>,
    valid_for: Option<u64>,
    twin: Option<String>,
    threshold: Option<u64>,
    #[serde(default)]
    signers: Vec<Signer>,
    workloads: Vec<WorkloadSpec>,
}

fn one() -> u64 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signer {
    twin: String,
    #[serde(default = "one")]
    weight: u64,
    #[serde(default)]
    required: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadSpec {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default = "one")]
    version: u64,
    data: toml::Value,
}

/// Builds the unsigned document; `default_twin` is the first signing key.
pub fn build(
    text: &str,
    default_twin: Option<&str>,
    version: Option<u64>,
    now: u64,
) -> Result<Value, SpecError> {
    let s: Spec = toml::from_str(text)?;
    let twin = s
        .twin
        .or_else(|| default_twin.map(str::to_string))
        .ok_or_else(|| SpecError::Invalid("no twin: name one or pass --key".into()))?;
    let expiration = match (s.expiration, s.valid_for) {
        (Some(e), None) => e,
        (None, Some(v)) => now.saturating_add(v),
        (None, None) => now + 30 * 24 * 3600,
        (Some(_), Some(_)) => {
            return Err(SpecError::Invalid(
                "expiration and valid_for: pick one".into(),
            ))
        }
    };
    let requests: Vec<Value> = if s.signers.is_empty() {
        vec![json!({"twin": twin, "weight": 1, "required": true})]
    } else {
        s.signers
            .iter()
            .map(|g| json!({"twin": g.twin, "weight": g.weight, "required": g.required}))
            .collect()
    };
    let workloads = s
        .workloads
        .iter()
        .map(|w| {
            let data =
                serde_json::to_value(&w.data).map_err(|e| SpecError::Invalid(e.to_string()))?;
            Ok(json!({"name": w.name, "type": w.kind, "version": w.version, "data": data}))
        })
        .collect::<Result<Vec<_>, SpecError>>()?;
    Ok(json!({
        "kind": "deployment",
        "id": s.id,
        "version": version.unwrap_or(s.version),
        "twin": twin,
        "description": s.description,
        "expiration": expiration,
        "signature_requirement": {"requests": requests, "threshold": s.threshold.unwrap_or(1)},
        "workloads": workloads,
    }))
}

#[cfg(test)]
mod tests {
    use zeronode_deployment::{decode, Deployment};

    #[test]
    fn spec_builds_a_valid_deployment() {
        let t = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let spec = r#"
            id = "web-1"
            description = "x"
            valid_for = 60
            [[workloads]]
            name = "net"
            type = "network"
            data = { subnet = "10.20.0.0/24" }
            [[workloads]]
            name = "data"
            type = "volume"
            data = { size = 104857600 }
        "#;
        let v = super::build(spec, Some(t), None, 1000).unwrap();
        assert_eq!(v["expiration"], 1060);
        let p = decode::<Deployment>(v.to_string().as_bytes()).unwrap();
        assert_eq!(p.doc.workloads[1].name, "data");
        assert!(super::build("id = 1", Some(t), None, 0).is_err());
    }

    /// The network + volume + container spec docs/provision.md shows.
    #[test]
    fn container_spec_builds_a_valid_deployment() {
        let t = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let spec = r#"
            id = "web-1"
            valid_for = 86400
            [[workloads]]
            name = "net"
            type = "network"
            data = { subnet = "10.20.0.0/24" }
            [[workloads]]
            name = "data"
            type = "volume"
            data = { size = 104857600 }
            [[workloads]]
            name = "web"
            type = "container"
            [workloads.data]
            image = { url = "http://10.0.2.2:8000/web.tar", sha256 = "3c99e3c5a3a5e0c8d6b5f0d2a1e4c7b9f8a6d5c4b3a291807f6e5d4c3b2a1908" }
            cpu = 1
            memory = 67108864
            network = "net"
            mounts = [{ volume = "data", path = "/data" }]
            entrypoint = ["/bin/sh", "-c"]
            args = ["date >> /data/boots; exec httpd -f -p 8080 -h /data"]
            env = { GREETING = "hello" }
            restart = "always"
        "#;
        let v = super::build(spec, Some(t), None, 1000).unwrap();
        let p = decode::<Deployment>(v.to_string().as_bytes()).unwrap();
        assert_eq!(p.doc.workloads[2].data["mounts"][0]["volume"], "data");
    }
}
