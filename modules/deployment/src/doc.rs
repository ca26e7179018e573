//! The documents and their schema. Decoding goes bytes -> strict JSON value
//! (no duplicate names) -> typed struct (no unknown members) -> schema
//! rules; each step fails with its own error code.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hex;

/// Integers in documents stay below 2^53: JCS treats every number as an
/// IEEE double, and a larger integer would not survive a JavaScript signer.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
pub const MAX_WORKLOADS: usize = 64;
pub const MAX_SIGNERS: usize = 32;
pub const MAX_DESCRIPTION: usize = 1024;

/// Why a document is refused. `code()` is the stable string the API
/// returns; the message says what exactly is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("malformed JSON: {0}")]
    Malformed(String),
    #[error("schema: {0}")]
    Schema(String),
    #[error("unknown workload type {kind:?} (workload {name:?}); known: network, volume, container, zdb")]
    UnknownWorkloadType { name: String, kind: String },
    #[error("signature of twin {twin} does not verify over the document's canonical hash")]
    SignatureInvalid { twin: String },
    #[error("twin {twin} signed but is not in the signature requirement")]
    UnknownSigner { twin: String },
    #[error("twin {twin} signed twice")]
    DuplicateSigner { twin: String },
    #[error("required signer {twin} did not sign")]
    RequiredSignerMissing { twin: String },
    #[error("signature weight {have} is below the threshold {need}")]
    ThresholdNotMet { have: u64, need: u64 },
}

impl DocError {
    pub fn code(&self) -> &'static str {
        match self {
            DocError::Malformed(_) => "malformed_json",
            DocError::Schema(_) => "schema_invalid",
            DocError::UnknownWorkloadType { .. } => "unknown_workload_type",
            DocError::SignatureInvalid { .. } => "signature_invalid",
            DocError::UnknownSigner { .. } => "unknown_signer",
            DocError::DuplicateSigner { .. } => "duplicate_signer",
            DocError::RequiredSignerMissing { .. } => "required_signer_missing",
            DocError::ThresholdNotMet { .. } => "threshold_not_met",
        }
    }
}

fn schema(msg: impl Into<String>) -> DocError {
    DocError::Schema(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signer's ed25519 public key, 64 lowercase hex digits.
    pub twin: String,
    /// ed25519 signature over the document's 32-byte canonical hash, 128 hex.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequest {
    pub twin: String,
    pub weight: u64,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureRequirement {
    pub requests: Vec<SignatureRequest>,
    pub threshold: u64,
}

impl SignatureRequirement {
    /// One key, weight 1, threshold 1: how grants are signed (by the owner).
    pub fn single(twin: &str) -> Self {
        SignatureRequirement {
            requests: vec![SignatureRequest {
                twin: twin.to_string(),
                weight: 1,
                required: true,
            }],
            threshold: 1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    pub data: Value,
}

/// The typed data of a workload, once the schema has accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkloadData {
    Network(NetworkData),
    Volume(VolumeData),
    Container(ContainerData),
    Vm(VmData),
    Zdb(ZdbData),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkData {
    /// IPv4 subnet `a.b.c.d/n`, n in 8..=30.
    pub subnet: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeData {
    /// Size limit in bytes, at least 1 MiB.
    pub size: u64,
}

/// What provision needs of a container (quota and ordering); the containers
/// module owns the rest of its data, which is kept as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerData {
    pub image: ImageRef,
    pub cpu: u64,
    pub memory: u64,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// A container's image: an OCI archive pinned by its sha256 (what the
/// containers module runs), or a registry reference (accepted by the
/// schema, refused by the module until it can pull).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ImageRef {
    Archive { url: String, sha256: String },
    Reference(String),
}

impl ImageRef {
    fn check(&self) -> Result<(), String> {
        match self {
            ImageRef::Reference(r) if r.is_empty() => Err("image: empty".into()),
            ImageRef::Reference(_) => Ok(()),
            ImageRef::Archive { url, sha256 } => {
                let hex = sha256.strip_prefix("sha256:").unwrap_or(sha256);
                if url.is_empty() {
                    return Err("image.url: empty".into());
                }
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("image.sha256 {sha256:?}: 64 hex digits expected"));
                }
                Ok(())
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// A `volume` workload of the same deployment.
    pub volume: String,
    /// Where it appears inside the container (absolute).
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

/// What provision needs of a VM (quota, ordering, volumes and network of
/// the same deployment); the vms module owns the rest (kernel, initrd,
/// cmdline, disk_image, cloud_init), kept as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmData {
    /// vCPUs.
    pub cpu: u64,
    /// Bytes.
    pub memory: u64,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub disks: Vec<VmDisk>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// A VM disk: a raw file in a `volume` workload of the same deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDisk {
    pub volume: String,
    /// The file inside the volume (the vms module's default otherwise).
    #[serde(default)]
    pub file: Option<String>,
    /// Bytes.
    pub size: u64,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZdbData {
    pub size: u64,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadType {
    Network,
    Volume,
    Zdb,
    Container,
    Vm,
}

impl WorkloadType {
    pub fn parse(s: &str) -> Option<WorkloadType> {
        Some(match s {
            "network" => WorkloadType::Network,
            "volume" => WorkloadType::Volume,
            "zdb" => WorkloadType::Zdb,
            "container" => WorkloadType::Container,
            "vm" => WorkloadType::Vm,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            WorkloadType::Network => "network",
            WorkloadType::Volume => "volume",
            WorkloadType::Zdb => "zdb",
            WorkloadType::Container => "container",
            WorkloadType::Vm => "vm",
        }
    }
    /// Reconcile order: what others use comes first (the derived `Ord`
    /// is this order); teardown goes the other way.
    pub fn order(self) -> u8 {
        self as u8
    }
}

impl Workload {
    pub fn workload_type(&self) -> Option<WorkloadType> {
        WorkloadType::parse(&self.kind)
    }

    /// The typed data; the schema has checked it decodes.
    pub fn typed(&self) -> Result<WorkloadData, DocError> {
        let bad = |e: serde_json::Error| schema(format!("workload {:?}: data: {e}", self.name));
        let ty = self
            .workload_type()
            .ok_or_else(|| DocError::UnknownWorkloadType {
                name: self.name.clone(),
                kind: self.kind.clone(),
            })?;
        Ok(match ty {
            WorkloadType::Network => {
                WorkloadData::Network(serde_json::from_value(self.data.clone()).map_err(bad)?)
            }
            WorkloadType::Volume => {
                WorkloadData::Volume(serde_json::from_value(self.data.clone()).map_err(bad)?)
            }
            WorkloadType::Container => {
                WorkloadData::Container(serde_json::from_value(self.data.clone()).map_err(bad)?)
            }
            WorkloadType::Zdb => {
                WorkloadData::Zdb(serde_json::from_value(self.data.clone()).map_err(bad)?)
            }
            WorkloadType::Vm => {
                WorkloadData::Vm(serde_json::from_value(self.data.clone()).map_err(bad)?)
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// Always "deployment": the kind is signed, so a signature over one
    /// kind of document cannot be replayed as another.
    pub kind: String,
    pub id: String,
    pub version: u64,
    /// The deployment's owner: the twin whose authority (node owner or a
    /// grant) the node checks, and who must sign.
    pub twin: String,
    #[serde(default)]
    pub description: String,
    /// Unix seconds after which the node tears it down.
    pub expiration: u64,
    pub signature_requirement: SignatureRequirement,
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// A signed order to delete a deployment; checked against the signature
/// requirement of the live version, and its version must be higher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteOrder {
    pub kind: String,
    pub id: String,
    pub version: u64,
    pub twin: String,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quota {
    /// Container and VM CPUs.
    pub cpu: u64,
    /// Container and VM memory, bytes.
    pub memory: u64,
    /// Volume and zdb bytes.
    pub disk: u64,
    /// Workloads.
    pub count: u64,
}

/// What deployments use, in the quota's units.
pub type Usage = Quota;

impl Quota {
    pub fn add(&self, o: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_add(o.cpu),
            memory: self.memory.saturating_add(o.memory),
            disk: self.disk.saturating_add(o.disk),
            count: self.count.saturating_add(o.count),
        }
    }

    /// The first resource `usage` exceeds: (name, used, allowed).
    pub fn exceeded_by(&self, usage: &Usage) -> Option<(&'static str, u64, u64)> {
        [
            ("cpu", usage.cpu, self.cpu),
            ("memory", usage.memory, self.memory),
            ("disk", usage.disk, self.disk),
            ("count", usage.count, self.count),
        ]
        .into_iter()
        .find(|(_, used, allowed)| used > allowed)
    }
}

/// Authorises `twin` to deploy on the owner's nodes within `quota` until
/// `expiration`; a later version replaces it, `revoked: true` withdraws it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub kind: String,
    pub twin: String,
    pub version: u64,
    pub expiration: u64,
    #[serde(default)]
    pub revoked: bool,
    pub quota: Quota,
    #[serde(default)]
    pub signatures: Vec<Signature>,
}

/// A document as received: its exact bytes, its value and its canonical
/// hash (of everything but `signatures`).
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    pub doc: T,
    pub value: Value,
    pub hash: [u8; 32],
}

/// A public key as documents spell it: 64 lowercase hex digits of a valid
/// ed25519 point.
pub fn parse_key(s: &str) -> Option<VerifyingKey> {
    VerifyingKey::from_bytes(&hex::decode_array::<32>(s)?).ok()
}

fn check_key(what: &str, s: &str) -> Result<(), DocError> {
    parse_key(s).map(|_| ()).ok_or_else(|| {
        schema(format!(
            "{what}: {s:?} is not an ed25519 key in lowercase hex"
        ))
    })
}

fn check_int(what: &str, v: u64) -> Result<(), DocError> {
    if v > MAX_SAFE_INTEGER {
        return Err(schema(format!("{what}: {v} is above 2^53-1")));
    }
    Ok(())
}

fn check_id(what: &str, s: &str, max: usize) -> Result<(), DocError> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        })
        && !s.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(schema(format!(
            "{what} {s:?}: use 1-{max} characters a-z 0-9 - _ . (not starting with . or -)"
        )))
    }
}

fn check_signatures(sigs: &[Signature]) -> Result<(), DocError> {
    if sigs.len() > MAX_SIGNERS {
        return Err(schema(format!("more than {MAX_SIGNERS} signatures")));
    }
    for s in sigs {
        check_key("signature twin", &s.twin)?;
        if hex::decode_array::<64>(&s.signature).is_none() {
            return Err(schema(format!(
                "signature of {}: not 128 lowercase hex digits",
                s.twin
            )));
        }
    }
    Ok(())
}

fn check_requirement(r: &SignatureRequirement) -> Result<(), DocError> {
    if r.requests.is_empty() || r.requests.len() > MAX_SIGNERS {
        return Err(schema(format!(
            "signature_requirement: 1 to {MAX_SIGNERS} requests"
        )));
    }
    let mut total: u64 = 0;
    for (i, q) in r.requests.iter().enumerate() {
        check_key("signature_requirement twin", &q.twin)?;
        if r.requests[..i].iter().any(|p| p.twin == q.twin) {
            return Err(schema(format!(
                "signature_requirement: twin {} listed twice",
                q.twin
            )));
        }
        if q.weight == 0 {
            return Err(schema("signature_requirement: weight 0"));
        }
        check_int("weight", q.weight)?;
        total = total.saturating_add(q.weight);
    }
    if r.threshold == 0 || r.threshold > total {
        return Err(schema(format!(
            "signature_requirement: threshold {} not in 1..={total} (the sum of weights)",
            r.threshold
        )));
    }
    Ok(())
}

fn check_subnet(s: &str) -> Result<(), String> {
    let (addr, prefix) = s.split_once('/').ok_or("not a.b.c.d/n")?;
    addr.parse::<std::net::Ipv4Addr>()
        .map_err(|_| "not an IPv4 address")?;
    let p: u8 = prefix.parse().map_err(|_| "bad prefix")?;
    if !(8..=30).contains(&p) {
        return Err("prefix not in 8..=30".into());
    }
    Ok(())
}

impl Deployment {
    pub fn validate(&self) -> Result<(), DocError> {
        if self.kind != "deployment" {
            return Err(schema(format!("kind {:?}: want \"deployment\"", self.kind)));
        }
        check_id("id", &self.id, 64)?;
        if self.version == 0 {
            return Err(schema("version starts at 1"));
        }
        check_int("version", self.version)?;
        check_int("expiration", self.expiration)?;
        check_key("twin", &self.twin)?;
        if self.description.len() > MAX_DESCRIPTION {
            return Err(schema(format!(
                "description longer than {MAX_DESCRIPTION} bytes"
            )));
        }
        check_requirement(&self.signature_requirement)?;
        check_signatures(&self.signatures)?;
        if self.workloads.is_empty() || self.workloads.len() > MAX_WORKLOADS {
            return Err(schema(format!("1 to {MAX_WORKLOADS} workloads")));
        }
        for (i, w) in self.workloads.iter().enumerate() {
            check_id("workload name", &w.name, 32)?;
            if self.workloads[..i].iter().any(|o| o.name == w.name) {
                return Err(schema(format!("workload name {:?} used twice", w.name)));
            }
            check_int("workload version", w.version)?;
            match w.typed()? {
                WorkloadData::Network(n) => check_subnet(&n.subnet).map_err(|e| {
                    schema(format!("workload {:?}: subnet {:?}: {e}", w.name, n.subnet))
                })?,
                WorkloadData::Volume(v) => {
                    check_int("volume size", v.size)?;
                    if v.size < 1 << 20 {
                        return Err(schema(format!("volume {:?}: size under 1 MiB", w.name)));
                    }
                }
                WorkloadData::Container(c) => {
                    check_int("cpu", c.cpu)?;
                    check_int("memory", c.memory)?;
                    if c.cpu == 0 || c.memory == 0 {
                        return Err(schema(format!(
                            "container {:?}: image, cpu and memory are required",
                            w.name
                        )));
                    }
                    c.image
                        .check()
                        .map_err(|e| schema(format!("container {:?}: {e}", w.name)))?;
                    // What a container uses must be in this deployment.
                    let has = |name: &str, ty: WorkloadType| {
                        self.workloads
                            .iter()
                            .any(|o| o.name == name && o.workload_type() == Some(ty))
                    };
                    if let Some(n) = &c.network {
                        if !has(n, WorkloadType::Network) {
                            return Err(schema(format!(
                                "container {:?}: no network workload {n:?}",
                                w.name
                            )));
                        }
                    }
                    for (j, m) in c.mounts.iter().enumerate() {
                        if !m.path.starts_with('/') {
                            return Err(schema(format!(
                                "container {:?}: mount path {:?}: absolute path expected",
                                w.name, m.path
                            )));
                        }
                        if c.mounts[..j].iter().any(|o| o.path == m.path) {
                            return Err(schema(format!(
                                "container {:?}: mount path {:?} used twice",
                                w.name, m.path
                            )));
                        }
                        if !has(&m.volume, WorkloadType::Volume) {
                            return Err(schema(format!(
                                "container {:?}: no volume workload {:?}",
                                w.name, m.volume
                            )));
                        }
                    }
                }
                WorkloadData::Vm(v) => {
                    check_int("cpu", v.cpu)?;
                    check_int("memory", v.memory)?;
                    if v.cpu == 0 || v.memory == 0 {
                        return Err(schema(format!(
                            "vm {:?}: cpu and memory are required",
                            w.name
                        )));
                    }
                    // What a VM uses must be in this deployment.
                    let has = |name: &str, ty: WorkloadType| {
                        self.workloads
                            .iter()
                            .any(|o| o.name == name && o.workload_type() == Some(ty))
                    };
                    if let Some(n) = &v.network {
                        if !has(n, WorkloadType::Network) {
                            return Err(schema(format!(
                                "vm {:?}: no network workload {n:?}",
                                w.name
                            )));
                        }
                    }
                    for d in &v.disks {
                        check_int("disk size", d.size)?;
                        if !has(&d.volume, WorkloadType::Volume) {
                            return Err(schema(format!(
                                "vm {:?}: no volume workload {:?}",
                                w.name, d.volume
                            )));
                        }
                    }
                }
                WorkloadData::Zdb(z) => {
                    check_int("zdb size", z.size)?;
                    if z.size < 1 << 20 {
                        return Err(schema(format!("zdb {:?}: size under 1 MiB", w.name)));
                    }
                }
            }
        }
        Ok(())
    }

    /// What this deployment counts against a grant's quota.
    pub fn usage(&self) -> Usage {
        let mut u = Usage {
            count: self.workloads.len() as u64,
            ..Usage::default()
        };
        for w in &self.workloads {
            match w.typed() {
                Ok(WorkloadData::Volume(v)) => u.disk = u.disk.saturating_add(v.size),
                Ok(WorkloadData::Zdb(z)) => u.disk = u.disk.saturating_add(z.size),
                Ok(WorkloadData::Container(c)) => {
                    u.cpu = u.cpu.saturating_add(c.cpu);
                    u.memory = u.memory.saturating_add(c.memory);
                }
                Ok(WorkloadData::Vm(v)) => {
                    u.cpu = u.cpu.saturating_add(v.cpu);
                    u.memory = u.memory.saturating_add(v.memory);
                }
                _ => {}
            }
        }
        u
    }

    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }
}

impl DeleteOrder {
    pub fn validate(&self) -> Result<(), DocError> {
        if self.kind != "delete" {
            return Err(schema(format!("kind {:?}: want \"delete\"", self.kind)));
        }
        check_id("id", &self.id, 64)?;
        if self.version == 0 {
            return Err(schema("version starts at 1"));
        }
        check_int("version", self.version)?;
        check_key("twin", &self.twin)?;
        check_signatures(&self.signatures)
    }
}

impl Grant {
    pub fn validate(&self) -> Result<(), DocError> {
        if self.kind != "grant" {
            return Err(schema(format!("kind {:?}: want \"grant\"", self.kind)));
        }
        if self.version == 0 {
            return Err(schema("version starts at 1"));
        }
        check_int("version", self.version)?;
        check_int("expiration", self.expiration)?;
        check_key("twin", &self.twin)?;
        for (n, v) in [
            ("cpu", self.quota.cpu),
            ("memory", self.quota.memory),
            ("disk", self.quota.disk),
            ("count", self.quota.count),
        ] {
            check_int(n, v)?;
        }
        check_signatures(&self.signatures)
    }
}

/// Something decode() can make and validate.
pub trait Document: serde::de::DeserializeOwned {
    fn validate(&self) -> Result<(), DocError>;
}

impl Document for Deployment {
    fn validate(&self) -> Result<(), DocError> {
        Deployment::validate(self)
    }
}
impl Document for DeleteOrder {
    fn validate(&self) -> Result<(), DocError> {
        DeleteOrder::validate(self)
    }
}
impl Document for Grant {
    fn validate(&self) -> Result<(), DocError> {
        Grant::validate(self)
    }
}

/// Bytes -> strict JSON -> typed document -> schema -> canonical hash.
/// Never panics on any input (tests/props.rs).
pub fn decode<T: Document>(bytes: &[u8]) -> Result<Parsed<T>, DocError> {
    let value = crate::strict::parse(bytes).map_err(|e| DocError::Malformed(e.to_string()))?;
    if !value.is_object() {
        return Err(DocError::Malformed(
            "the document is not a JSON object".into(),
        ));
    }
    let doc: T = serde_json::from_value(value.clone()).map_err(|e| {
        // An unknown workload type is its own refusal, found before the
        // rest of the schema because serde would only say "data".
        if let Some(e2) = unknown_type(&value) {
            return e2;
        }
        schema(e.to_string())
    })?;
    if let Some(e) = unknown_type(&value) {
        return Err(e);
    }
    doc.validate()?;
    let hash = crate::sign::canonical_hash(&value)?;
    Ok(Parsed { doc, value, hash })
}

fn unknown_type(value: &Value) -> Option<DocError> {
    for w in value.get("workloads")?.as_array()? {
        let kind = w.get("type")?.as_str()?;
        if WorkloadType::parse(kind).is_none() {
            let name = w
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            return Some(DocError::UnknownWorkloadType {
                name,
                kind: kind.to_string(),
            });
        }
    }
    None
}
