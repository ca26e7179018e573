//! The HTTPS client of a node's provision API (docs/provision.md): one
//! kept-alive HTTP/1.1 connection over rustls, pinned to a node id.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{SigningKey, VerifyingKey};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::Mutex;
use zeronode_deployment::{hex, sign_read, Deployment, Receipt};
use zeronode_identity::NodeId;
use zeronode_ledger::verifier;
use zeronode_ledger::SignedTreeHead;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("node URL {0:?}: want https://HOST:PORT")]
    BadUrl(String),
    #[error("--node-id: {0}")]
    BadNodeId(String),
    #[error("cannot reach the node: {0}")]
    Connect(String),
    #[error("the node refused (HTTP {status} {code}): {message}")]
    Refused {
        status: u16,
        code: String,
        message: String,
    },
    #[error("the node's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("proof does not verify: {0}")]
    Proof(String),
}

impl ClientError {
    /// The node's error code, when the node refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub struct Client {
    addr: String,
    tls: tokio_rustls::TlsConnector,
    pinned: Option<VerifyingKey>,
    conn: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What `proof` checked.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProofReport {
    pub deployment: String,
    pub version: u64,
    pub seq: u64,
    pub entry_hash: String,
    pub tree_size: u64,
    pub tree_root: String,
    pub order_hash: String,
}

impl Client {
    /// `url` is `https://host:port`; `node_id` pins the node (without it any
    /// node with a self-consistent binding is accepted: `zn node` only).
    pub fn new(url: &str, node_id: Option<&str>) -> Result<Client, ClientError> {
        let addr = url
            .strip_prefix("https://")
            .map(|a| a.trim_end_matches('/').to_string())
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| ClientError::BadUrl(url.to_string()))?;
        let pinned = match node_id {
            Some(id) => Some(
                *id.parse::<NodeId>()
                    .map_err(|e| ClientError::BadNodeId(e.to_string()))?
                    .verifying_key(),
            ),
            None => None,
        };
        let cfg =
            crate::tls::client_config(pinned).map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Client {
            addr,
            tls: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
            pinned,
            conn: Mutex::new(None),
        })
    }

    pub fn node_key(&self) -> Option<VerifyingKey> {
        self.pinned
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| ClientError::Connect(format!("{}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from("zeronode")
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|e| ClientError::Connect(format!("TLS: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// One request; answers (status, body). Reconnects once when a kept
    /// connection has gone away.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>), ClientError> {
        let mut guard = self.conn.lock().await;
        for attempt in 0..2 {
            let (mut sender, reused) = match guard.take() {
                Some(s) if !s.is_closed() => (s, true),
                _ => (self.connect().await?, false),
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", &self.addr)
                .header("content-type", "application/json");
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let req = req
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| ClientError::BadUrl(e.to_string()))?;
            match sender.send_request(req).await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let bytes = resp
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| ClientError::Connect(e.to_string()))?
                        .to_bytes();
                    *guard = Some(sender);
                    return Ok((status, bytes.to_vec()));
                }
                // A kept connection the node closed meanwhile (after a
                // refusal it did not read the body of, or idle): the
                // request did not get through, so send it once more.
                Err(e)
                    if attempt == 0 && reused && (e.is_canceled() || e.is_incomplete_message()) =>
                {
                    continue
                }
                Err(e) => return Err(ClientError::Connect(e.to_string())),
            }
        }
        Err(ClientError::Connect("connection closed".into()))
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&SigningKey>,
        body: Vec<u8>,
    ) -> Result<Value, ClientError> {
        let headers: Vec<(String, String)> = match key {
            Some(k) => sign_read(k, method, path, now_secs()).to_vec(),
            None => Vec::new(),
        };
        let (status, bytes) = self.raw(method, path, &headers, body).await?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::BadAnswer(format!(
                "HTTP {status}: {e}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))
        })?;
        if !(200..300).contains(&status) {
            let err = &v["error"];
            return Err(ClientError::Refused {
                status,
                code: err["code"].as_str().unwrap_or("unknown").to_string(),
                message: err["message"].as_str().unwrap_or("").to_string(),
            });
        }
        Ok(v)
    }

    async fn order(&self, method: &str, path: &str, body: Vec<u8>) -> Result<Receipt, ClientError> {
        let v = self.call(method, path, None, body).await?;
        let r: Receipt = serde_json::from_value(v)
            .map_err(|e| ClientError::BadAnswer(format!("receipt: {e}")))?;
        if let Some(k) = &self.pinned {
            if !r.verify(k) {
                return Err(ClientError::BadAnswer(
                    "receipt signature does not verify with the node key".into(),
                ));
            }
        }
        Ok(r)
    }

    /// POST a signed deployment (create).
    pub async fn deploy(&self, doc: Vec<u8>) -> Result<Receipt, ClientError> {
        self.order("POST", "/v1/deployments", doc).await
    }

    /// PUT a signed deployment of a higher version.
    pub async fn update(&self, id: &str, doc: Vec<u8>) -> Result<Receipt, ClientError> {
        self.order("PUT", &format!("/v1/deployments/{id}"), doc)
            .await
    }

    /// DELETE with a signed delete order.
    pub async fn delete(&self, id: &str, order: Vec<u8>) -> Result<Receipt, ClientError> {
        self.order("DELETE", &format!("/v1/deployments/{id}"), order)
            .await
    }

    pub async fn grant(&self, grant: Vec<u8>) -> Result<Receipt, ClientError> {
        self.order("POST", "/v1/grants", grant).await
    }

    pub async fn get(&self, id: &str, key: &SigningKey) -> Result<Value, ClientError> {
        self.call(
            "GET",
            &format!("/v1/deployments/{id}"),
            Some(key),
            Vec::new(),
        )
        .await
    }

    pub async fn list(&self, key: &SigningKey) -> Result<Value, ClientError> {
        self.call("GET", "/v1/deployments", Some(key), Vec::new())
            .await
    }

    pub async fn changes(&self, id: &str, key: &SigningKey) -> Result<Value, ClientError> {
        self.call(
            "GET",
            &format!("/v1/deployments/{id}/changes"),
            Some(key),
            Vec::new(),
        )
        .await
    }

    /// The last `max_bytes` of a workload's logs (containers keep them);
    /// the node's default (64 KiB) when None.
    pub async fn logs(
        &self,
        id: &str,
        workload: &str,
        max_bytes: Option<u64>,
        key: &SigningKey,
    ) -> Result<Value, ClientError> {
        let q = max_bytes
            .map(|m| format!("?max_bytes={m}"))
            .unwrap_or_default();
        self.call(
            "GET",
            &format!("/v1/deployments/{id}/workloads/{workload}/logs{q}"),
            Some(key),
            Vec::new(),
        )
        .await
    }

    pub async fn node(&self) -> Result<Value, ClientError> {
        self.call("GET", "/v1/node", None, Vec::new()).await
    }

    pub async fn health(&self) -> Result<Value, ClientError> {
        self.call("GET", "/v1/health", None, Vec::new()).await
    }

    /// Fetches the ledger entry of the deployment's live version and its
    /// inclusion proof, and checks them with the pinned node key alone:
    /// the record's signature, that it holds this deployment's order, the
    /// Merkle path to the root, and the node's signature on the tree head.
    pub async fn proof(&self, id: &str, key: &SigningKey) -> Result<ProofReport, ClientError> {
        let node_key = self
            .pinned
            .ok_or_else(|| ClientError::Proof("pin the node with --node-id first".into()))?;
        let v = self
            .call(
                "GET",
                &format!("/v1/deployments/{id}/proof"),
                Some(key),
                Vec::new(),
            )
            .await?;
        verify_proof(&node_key, id, &v)
    }
}

fn hex_field<const N: usize>(v: &Value, name: &str) -> Result<[u8; N], ClientError> {
    v[name]
        .as_str()
        .and_then(hex::decode_array::<N>)
        .ok_or_else(|| ClientError::BadAnswer(format!("{name}: not {N} bytes of hex")))
}

/// The client's check of a proof answer (see `Client::proof`).
pub fn verify_proof(
    node_key: &VerifyingKey,
    id: &str,
    v: &Value,
) -> Result<ProofReport, ClientError> {
    let pk = node_key.to_bytes();
    let record = v["record"]
        .as_str()
        .and_then(hex::decode)
        .ok_or_else(|| ClientError::BadAnswer("record: not hex".into()))?;
    let (entry, entry_hash) =
        verifier::verify_record(&pk, &record).map_err(|e| ClientError::Proof(e.to_string()))?;
    if entry.meta.deployment != id {
        return Err(ClientError::Proof(format!(
            "the entry is about {:?}, not {id:?}",
            entry.meta.deployment
        )));
    }
    let parsed = zeronode_deployment::decode::<Deployment>(&entry.payload)
        .map_err(|e| ClientError::Proof(format!("the entry's payload is not a deployment: {e}")))?;
    if parsed.doc.id != id || parsed.doc.version != entry.meta.version {
        return Err(ClientError::Proof(
            "the entry's payload does not match its keys".into(),
        ));
    }
    let size = v["tree_size"]
        .as_u64()
        .ok_or_else(|| ClientError::BadAnswer("tree_size".into()))?;
    let time_ms = v["tree_time_ms"]
        .as_u64()
        .ok_or_else(|| ClientError::BadAnswer("tree_time_ms".into()))?;
    let root = hex_field::<32>(v, "tree_root")?;
    let signature = hex_field::<64>(v, "tree_signature")?;
    let path = v["path"]
        .as_array()
        .ok_or_else(|| ClientError::BadAnswer("path".into()))?
        .iter()
        .map(|h| {
            h.as_str()
                .and_then(hex::decode_array::<32>)
                .ok_or_else(|| ClientError::BadAnswer("path: not hashes".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    verifier::verify_inclusion(&entry_hash, entry.seq, size, &path, &root)
        .map_err(|e| ClientError::Proof(e.to_string()))?;
    SignedTreeHead {
        size,
        time_ms,
        root,
        signature,
    }
    .verify(&pk)
    .map_err(|e| ClientError::Proof(format!("tree head: {e}")))?;
    Ok(ProofReport {
        deployment: id.to_string(),
        version: entry.meta.version,
        seq: entry.seq,
        entry_hash: hex::encode(&entry_hash),
        tree_size: size,
        tree_root: hex::encode(&root),
        order_hash: hex::encode(&parsed.hash),
    })
}
