//! The order path: checks in their fixed order, the ledger append, the
//! node-signed receipt, and the in-memory view of live deployments and
//! grants that the checks read (rebuilt from the ledger at start).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use zeronode_deployment::{
    check_signatures, decode, hex, DeleteOrder, Deployment, DocError, Grant, Receipt,
    SignatureRequirement, Usage,
};
use zeronode_identity::service::Identity1Proxy;
use zeronode_ledger::dbus::Ledger1Proxy;
use zeronode_ledger::Entry;

use crate::metrics::Metrics;
use crate::modules::ModuleConn;
use crate::reconcile::{Drivers, WorkloadResult};

/// Where provision finds its peers and how it limits requests.
#[derive(Debug, Clone)]
pub struct Config {
    pub ledger_socket: PathBuf,
    pub identity_socket: PathBuf,
    pub network_socket: PathBuf,
    pub storage_socket: PathBuf,
    pub containers_socket: PathBuf,
    pub vms_socket: PathBuf,
    pub shards_socket: PathBuf,
    /// Overrides the owner the identity module reports (`--owner`).
    pub owner: Option<String>,
    pub max_body: usize,
    /// Signed reads older or newer than this are refused.
    pub read_skew_secs: u64,
    /// How often module sockets are looked at and expiry is checked.
    pub watch_interval: Duration,
    /// What all deployments' containers and VMs together may use.
    pub capacity: crate::Capacity,
}

/// A refusal: HTTP status, stable code, message. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn body(&self) -> Value {
        json!({"error": {"code": self.code, "message": self.message}})
    }
}

impl From<DocError> for ApiError {
    fn from(e: DocError) -> Self {
        let status = match &e {
            DocError::Malformed(_) => 400,
            DocError::Schema(_) | DocError::UnknownWorkloadType { .. } => 422,
            _ => 401,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(503, "ledger_unavailable", format!("{what}: {e}"))
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A live deployment as the node holds it.
#[derive(Debug, Clone)]
pub struct Live {
    pub doc: Deployment,
    pub seq: u64,
}

#[derive(Debug, Default)]
pub struct DepState {
    /// Highest version of any accepted order for this id (deploy, update
    /// or delete): the next order must be higher.
    pub max_version: u64,
    pub live: Option<Live>,
    /// Twin that owns the id (kept after delete, for reads of history).
    pub twin: String,
    /// What reconcile last brought about, per workload name.
    pub results: BTreeMap<String, WorkloadResult>,
    /// Taken down by the node at its expiration (not by an order).
    pub expired: bool,
}

#[derive(Default)]
pub struct State {
    pub deployments: HashMap<String, DepState>,
    pub grants: HashMap<String, Grant>,
}

/// Per-key async locks: orders on one deployment id (or one grantee's
/// quota) are checked and appended one at a time, different ids in
/// parallel, so the ledger can group-commit them.
#[derive(Default)]
pub struct KeyedLocks(StdMutex<HashMap<String, Arc<Mutex<()>>>>);

impl KeyedLocks {
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            // Drop locks nobody holds once the map grows, so it stays small.
            if map.len() > 4096 {
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(key.to_string()).or_default().clone()
        };
        m.lock_owned().await
    }
}

pub struct App {
    pub cfg: Config,
    pub node_key: VerifyingKey,
    pub node_id: String,
    pub farm_id: u32,
    pub owner: Option<String>,
    pub ledger: ModuleConn,
    pub identity: ModuleConn,
    pub state: StdMutex<State>,
    pub locks: KeyedLocks,
    pub drivers: Drivers,
    pub metrics: Metrics,
}

/// The ledger's kinds, as Append names them.
pub const KIND_GRANT: &str = "grant";
pub const KIND_DEPLOY: &str = "deploy";
pub const KIND_UPDATE: &str = "update";
pub const KIND_DELETE: &str = "delete";
pub const KIND_RESULT: &str = "result";

impl App {
    /// Asks identity who the node is, then builds the view from the ledger.
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<App>> {
        let identity = ModuleConn::new("identity", cfg.identity_socket.clone());
        let conn = identity.get().await.map_err(anyhow::Error::msg)?;
        let info = Identity1Proxy::new(&conn).await?.info().await?;
        let node_key =
            zeronode_identity::service::parse_public_key(&info.public_key).ok_or_else(|| {
                anyhow::anyhow!("identity's public key {:?} is not a key", info.public_key)
            })?;
        let owner = cfg
            .owner
            .clone()
            .or_else(|| (!info.owner_key.is_empty()).then(|| info.owner_key.clone()));
        if let Some(o) = &owner {
            if zeronode_deployment::parse_key(o).is_none() {
                anyhow::bail!("owner {o:?} is not an ed25519 public key in lowercase hex");
            }
        } else {
            tracing::warn!("no owner (zeronode.owner= or --owner): only grants could authorise, and no one can grant");
        }
        let drivers = Drivers::new(&cfg);
        let app = Arc::new(App {
            ledger: ModuleConn::new("ledger", cfg.ledger_socket.clone()),
            identity,
            node_id: info.node_id,
            farm_id: info.farm_id,
            owner,
            node_key,
            cfg,
            state: StdMutex::new(State::default()),
            locks: KeyedLocks::default(),
            drivers,
            metrics: Metrics::default(),
        });
        Ok(app)
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn ledger(&self) -> Result<Ledger1Proxy<'static>, ApiError> {
        let conn = self
            .ledger
            .get()
            .await
            .map_err(|e| unavailable("ledger", e))?;
        Ledger1Proxy::new(&conn)
            .await
            .map_err(|e| unavailable("ledger", e))
    }

    /// Runs a ledger call; a failure drops the connection so the next call
    /// reconnects (the ledger may have restarted).
    async fn ledger_call<T, F, Fut>(&self, what: &str, f: F) -> Result<T, ApiError>
    where
        F: FnOnce(Ledger1Proxy<'static>) -> Fut,
        Fut: std::future::Future<Output = Result<T, zeronode_ledger::dbus::Error>>,
    {
        let p = self.ledger().await?;
        match f(p).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.ledger.reset().await;
                Err(unavailable(what, e))
            }
        }
    }

    pub async fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, String> {
        let conn = self.identity.get().await?;
        let r = async { Identity1Proxy::new(&conn).await?.sign(msg).await }.await;
        match r {
            Ok(s) => Ok(s),
            Err(e) => {
                self.identity.reset().await;
                Err(format!("identity Sign: {e}"))
            }
        }
    }

    /// Rebuilds the view: live deployments, their max versions, and grants.
    /// Safe to run again after a failure (provision retries it at start
    /// until the ledger answers).
    pub async fn load(&self) -> anyhow::Result<()> {
        let ledger = self
            .ledger()
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        let live = ledger.live().await?;
        let mut grants: HashMap<String, Grant> = HashMap::new();
        let mut after: i64 = -1;
        loop {
            let page = ledger.scan("kind", KIND_GRANT, after, 1000).await?;
            for r in &page.records {
                let e = Entry::decode(&r.record)?;
                // Our own entries, accepted before: decode them the same way.
                if let Ok(p) = decode::<Grant>(&e.payload) {
                    let g = p.doc;
                    if grants.get(&g.twin).is_none_or(|o| o.version < g.version) {
                        grants.insert(g.twin.clone(), g);
                    }
                }
            }
            if page.next < 0 {
                break;
            }
            after = page.next;
        }
        let mut st = self.state();
        st.grants = grants;
        for l in live {
            let e = Entry::decode(&l.record)?;
            match decode::<Deployment>(&e.payload) {
                Ok(p) => {
                    st.deployments.insert(
                        l.deployment.clone(),
                        DepState {
                            max_version: l.version,
                            twin: p.doc.twin.clone(),
                            live: Some(Live {
                                doc: p.doc,
                                seq: l.seq,
                            }),
                            results: BTreeMap::new(),
                            expired: false,
                        },
                    );
                }
                Err(err) => tracing::error!(
                    "ledger entry {} for {:?} does not decode as a deployment: {err}",
                    l.seq,
                    l.deployment
                ),
            }
        }
        tracing::info!(
            "provision: {} live deployment(s), {} grant(s) from the ledger",
            st.deployments.len(),
            st.grants.len()
        );
        Ok(())
    }

    /// The highest accepted version for `id`, loading its history on first use.
    async fn max_version(&self, id: &str) -> Result<u64, ApiError> {
        if let Some(d) = self.state().deployments.get(id) {
            return Ok(d.max_version);
        }
        let hist = self
            .ledger_call("ledger History", |l| async move { l.history(id).await })
            .await?;
        let mut max = 0;
        let mut twin = String::new();
        for r in hist {
            let Ok(e) = Entry::decode(&r.record) else {
                continue;
            };
            if matches!(e.kind.name(), KIND_DEPLOY | KIND_UPDATE | KIND_DELETE) {
                max = max.max(e.meta.version);
                if twin.is_empty() && !e.meta.owner.is_empty() {
                    twin = e.meta.owner.clone();
                }
            }
        }
        let mut st = self.state();
        let d = st.deployments.entry(id.to_string()).or_default();
        d.max_version = d.max_version.max(max);
        if d.twin.is_empty() {
            d.twin = twin;
        }
        Ok(d.max_version)
    }

    /// Signer authority: the node owner, or a twin with an unexpired,
    /// unrevoked grant (whose quota is returned).
    fn authority(&self, twin: &str, now: u64) -> Result<Option<Grant>, ApiError> {
        if self.owner.as_deref() == Some(twin) {
            return Ok(None);
        }
        let st = self.state();
        match st.grants.get(twin) {
            None => Err(ApiError::new(
                403,
                "not_authorized",
                format!("twin {twin} is neither the node owner nor granted on this node"),
            )),
            Some(g) if g.revoked => Err(ApiError::new(
                403,
                "grant_revoked",
                format!(
                    "the grant of twin {twin} was revoked (grant version {})",
                    g.version
                ),
            )),
            Some(g) if g.expiration <= now => Err(ApiError::new(
                403,
                "grant_expired",
                format!("the grant of twin {twin} expired at {}", g.expiration),
            )),
            Some(g) => Ok(Some(g.clone())),
        }
    }

    /// What every live deployment but `except` uses, whoever's.
    pub fn usage_of_all(&self, except: &str) -> Usage {
        let st = self.state();
        st.deployments
            .iter()
            .filter(|(id, _)| id.as_str() != except)
            .filter_map(|(_, d)| d.live.as_ref())
            .fold(Usage::default(), |u, l| u.add(&l.doc.usage()))
    }

    fn usage_of(&self, twin: &str, except: &str) -> Usage {
        let st = self.state();
        st.deployments
            .iter()
            .filter(|(id, d)| id.as_str() != except && d.twin == twin)
            .filter_map(|(_, d)| d.live.as_ref())
            .fold(Usage::default(), |u, l| u.add(&l.doc.usage()))
    }

    /// POST (create) or PUT (update) of a deployment. `path_id` is the id
    /// in a PUT's path.
    pub async fn order_deployment(
        &self,
        body: &[u8],
        path_id: Option<&str>,
    ) -> Result<Receipt, ApiError> {
        let now = now_secs();
        // 2. parse + schema, 3. canonical hash
        let p = decode::<Deployment>(body)?;
        let d = &p.doc;
        if let Some(pid) = path_id {
            if pid != d.id {
                return Err(ApiError::new(
                    422,
                    "schema_invalid",
                    format!("the path names {pid:?}, the document {:?}", d.id),
                ));
            }
        }
        // 4. every signature, 5. threshold
        let signers = check_signatures(&p.hash, &d.signatures, &d.signature_requirement)?;
        // 6. signer authority: the deployment's twin signed, and may deploy here.
        if !signers.contains(&d.twin) {
            return Err(ApiError::new(
                403,
                "twin_not_signer",
                format!("the deployment's twin {} did not sign it", d.twin),
            ));
        }
        let grant = self.authority(&d.twin, now)?;
        let _twin_lock = match &grant {
            Some(_) => Some(self.locks.lock(&format!("twin:{}", d.twin)).await),
            None => None,
        };
        let _id_lock = self.locks.lock(&format!("dep:{}", d.id)).await;
        let (live, owner_twin) = {
            let st = self.state();
            let e = st.deployments.get(&d.id);
            (
                e.and_then(|e| e.live.clone()),
                e.map(|e| e.twin.clone()).unwrap_or_default(),
            )
        };
        if !owner_twin.is_empty() && owner_twin != d.twin {
            return Err(ApiError::new(
                403,
                "not_authorized",
                format!("deployment {:?} belongs to twin {owner_twin}", d.id),
            ));
        }
        // 7. version strictly higher
        let max = self.max_version(&d.id).await?;
        if d.version <= max {
            return Err(ApiError::new(
                409,
                "version_not_higher",
                format!(
                    "version {} of {:?} is not higher than the recorded version {max}",
                    d.version, d.id
                ),
            ));
        }
        let kind = match (path_id.is_some(), live.is_some()) {
            (false, true) => {
                return Err(ApiError::new(
                    409,
                    "deployment_exists",
                    format!("{:?} is live at version {max}: update it with PUT", d.id),
                ))
            }
            (true, false) => {
                return Err(ApiError::new(
                    404,
                    "not_found",
                    format!("{:?} is not live: create it with POST", d.id),
                ))
            }
            (false, false) => KIND_DEPLOY,
            (true, true) => KIND_UPDATE,
        };
        // 8. not expired
        if d.expiration <= now {
            return Err(ApiError::new(
                422,
                "expired",
                format!("the deployment expired at {} (now {now})", d.expiration),
            ));
        }
        // 9. within the grant's quota
        if let Some(g) = &grant {
            let total = self.usage_of(&d.twin, &d.id).add(&d.usage());
            if let Some((what, used, allowed)) = g.quota.exceeded_by(&total) {
                return Err(ApiError::new(
                    403,
                    "quota_exceeded",
                    format!("{what}: {used} with this deployment, the grant allows {allowed}"),
                ));
            }
        }
        // 10. within the node's capacity, with every other live deployment.
        // One at a time node-wide, or two could each fit alone and not
        // together.
        let usage = d.usage();
        let mut _node_lock = None;
        if usage.cpu > 0 || usage.memory > 0 {
            _node_lock = Some(self.locks.lock("node:capacity").await);
            let total = self.usage_of_all(&d.id).add(&usage);
            if let Some((what, used, cap)) = self.cfg.capacity.exceeded_by(&total) {
                return Err(ApiError::new(
                    409,
                    "capacity_exceeded",
                    format!(
                        "{what}: {used} with this deployment and every other live one, \
                         the node has {cap} for workloads"
                    ),
                ));
            }
        }
        let names: Vec<&str> = d.workloads.iter().map(|w| w.name.as_str()).collect();
        let receipt = self
            .append_and_receipt(kind, &d.id, d.version, &d.twin, &names, body, &p.hash)
            .await?;
        {
            let mut st = self.state();
            let e = st.deployments.entry(d.id.clone()).or_default();
            e.max_version = d.version;
            e.twin = d.twin.clone();
            e.live = Some(Live {
                doc: p.doc.clone(),
                seq: receipt.seq,
            });
            e.expired = false;
        }
        Ok(receipt)
    }

    /// DELETE with a signed delete order, checked against the live
    /// version's signature requirement.
    pub async fn order_delete(&self, body: &[u8], path_id: &str) -> Result<Receipt, ApiError> {
        let p = decode::<DeleteOrder>(body)?;
        let o = &p.doc;
        if o.id != path_id {
            return Err(ApiError::new(
                422,
                "schema_invalid",
                format!("the path names {path_id:?}, the order {:?}", o.id),
            ));
        }
        let _id_lock = self.locks.lock(&format!("dep:{}", o.id)).await;
        let live = self
            .state()
            .deployments
            .get(&o.id)
            .and_then(|d| d.live.clone())
            .ok_or_else(|| ApiError::new(404, "not_found", format!("{:?} is not live", o.id)))?;
        let signers = check_signatures(&p.hash, &o.signatures, &live.doc.signature_requirement)?;
        // The deployment's own twin orders its deletion (a revoked grant
        // does not stop a tenant from cleaning up), or the node owner does.
        let owner_ok = self.owner.as_deref() == Some(o.twin.as_str());
        if !signers.contains(&o.twin) {
            return Err(ApiError::new(
                403,
                "twin_not_signer",
                format!("twin {} did not sign the delete order", o.twin),
            ));
        }
        if o.twin != live.doc.twin && !owner_ok {
            return Err(ApiError::new(
                403,
                "not_authorized",
                format!("{:?} belongs to twin {}", o.id, live.doc.twin),
            ));
        }
        let max = self.max_version(&o.id).await?;
        if o.version <= max {
            return Err(ApiError::new(
                409,
                "version_not_higher",
                format!(
                    "version {} is not higher than the recorded version {max}",
                    o.version
                ),
            ));
        }
        let names: Vec<&str> = live.doc.workloads.iter().map(|w| w.name.as_str()).collect();
        let receipt = self
            .append_and_receipt(
                KIND_DELETE,
                &o.id,
                o.version,
                &o.twin,
                &names,
                body,
                &p.hash,
            )
            .await?;
        let mut st = self.state();
        let e = st.deployments.entry(o.id.clone()).or_default();
        e.max_version = o.version;
        e.live = None;
        Ok(receipt)
    }

    /// POST /v1/grants: signed by the node owner alone.
    pub async fn order_grant(&self, body: &[u8]) -> Result<Receipt, ApiError> {
        let now = now_secs();
        let p = decode::<Grant>(body)?;
        let g = &p.doc;
        let owner = self.owner.clone().ok_or_else(|| {
            ApiError::new(
                403,
                "no_owner",
                "this node has no owner (zeronode.owner=): nobody can grant",
            )
        })?;
        check_signatures(
            &p.hash,
            &g.signatures,
            &SignatureRequirement::single(&owner),
        )
        .map_err(|e| match e {
            DocError::UnknownSigner { twin } => ApiError::new(
                403,
                "not_authorized",
                format!("grants are signed by the node owner {owner}, not {twin}"),
            ),
            e => e.into(),
        })?;
        let _lock = self.locks.lock(&format!("twin:{}", g.twin)).await;
        let max = self
            .state()
            .grants
            .get(&g.twin)
            .map(|o| o.version)
            .unwrap_or(0);
        if g.version <= max {
            return Err(ApiError::new(
                409,
                "version_not_higher",
                format!(
                    "grant version {} is not higher than the recorded version {max}",
                    g.version
                ),
            ));
        }
        if !g.revoked && g.expiration <= now {
            return Err(ApiError::new(
                422,
                "expired",
                format!("the grant expired at {} (now {now})", g.expiration),
            ));
        }
        let receipt = self
            .append_and_receipt(KIND_GRANT, "", g.version, &g.twin, &[], body, &p.hash)
            .await?;
        self.state().grants.insert(g.twin.clone(), g.clone());
        Ok(receipt)
    }

    /// Appends the exact received bytes, then signs a receipt naming the
    /// entry and the tree head that includes it.
    #[allow(clippy::too_many_arguments)]
    async fn append_and_receipt(
        &self,
        kind: &str,
        id: &str,
        version: u64,
        twin: &str,
        workloads: &[&str],
        body: &[u8],
        order_hash: &[u8; 32],
    ) -> Result<Receipt, ApiError> {
        let a = self
            .ledger_call("ledger Append", |l| async move {
                l.append(kind, id, version, twin, workloads, body).await
            })
            .await?;
        // Past the append the order stands, whatever follows: a failure to
        // build the receipt is reported, but the order is recorded.
        let head = self
            .ledger_call("ledger Head", |l| async move { l.head().await })
            .await?;
        let mut r = Receipt {
            node_id: self.node_id.clone(),
            kind: kind.to_string(),
            deployment: id.to_string(),
            version,
            order_hash: hex::encode(order_hash),
            seq: a.seq,
            entry_hash: hex::encode(&a.hash),
            time_ms: a.time_ms,
            tree_size: head.size,
            tree_time_ms: head.time_ms,
            tree_root: hex::encode(&head.root),
            tree_signature: hex::encode(&head.signature),
            signature: String::new(),
        };
        let h = r
            .signed_hash()
            .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        let sig = self.sign(&h).await.map_err(|e| {
            ApiError::new(
                503,
                "identity_unavailable",
                format!("order recorded at seq {}, receipt unsigned: {e}", a.seq),
            )
        })?;
        r.signature = hex::encode(&sig);
        self.metrics.accepted(kind);
        Ok(r)
    }

    /// Appends a result (or a node event) about a deployment.
    pub async fn record(
        &self,
        kind: &str,
        id: &str,
        version: u64,
        workloads: &[&str],
        payload: &Value,
    ) -> Result<u64, ApiError> {
        let bytes = serde_json::to_vec(payload)
            .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        let a = self
            .ledger_call("ledger Append", |l| async move {
                l.append(kind, id, version, "", workloads, &bytes).await
            })
            .await?;
        Ok(a.seq)
    }

    pub async fn head(&self) -> Result<zeronode_ledger::dbus::TreeHead, ApiError> {
        self.ledger_call("ledger Head", |l| async move { l.head().await })
            .await
    }

    pub async fn history(&self, id: &str) -> Result<Vec<zeronode_ledger::dbus::Record>, ApiError> {
        self.ledger_call("ledger History", |l| async move { l.history(id).await })
            .await
    }

    pub async fn proof(&self, seq: u64) -> Result<Value, ApiError> {
        let head = self.head().await?;
        let record = self
            .ledger_call("ledger Get", |l| async move { l.get(seq).await })
            .await?;
        let size = head.size;
        let path = self
            .ledger_call("ledger InclusionProof", |l| async move {
                l.inclusion_proof(seq, size).await
            })
            .await?;
        Ok(json!({
            "seq": seq,
            "record": hex::encode(&record),
            "tree_size": head.size,
            "tree_time_ms": head.time_ms,
            "tree_root": hex::encode(&head.root),
            "tree_signature": hex::encode(&head.signature),
            "path": path.iter().map(|h| hex::encode(h)).collect::<Vec<_>>(),
        }))
    }

    /// Checks a signed read's headers; returns the reading twin.
    pub fn read_auth(
        &self,
        method: &str,
        path: &str,
        twin: Option<&str>,
        time: Option<&str>,
        sig: Option<&str>,
    ) -> Result<String, ApiError> {
        let (Some(twin), Some(time), Some(sig)) = (twin, time, sig) else {
            return Err(ApiError::new(
                401,
                "auth_required",
                "signed read: send x-zn-twin, x-zn-time and x-zn-signature",
            ));
        };
        let t: u64 = time
            .parse()
            .map_err(|_| ApiError::new(401, "auth_invalid", "x-zn-time is not unix seconds"))?;
        let now = now_secs();
        if t.abs_diff(now) > self.cfg.read_skew_secs {
            return Err(ApiError::new(
                401,
                "auth_stale",
                format!(
                    "x-zn-time {t} is more than {} s from the node's clock {now}",
                    self.cfg.read_skew_secs
                ),
            ));
        }
        let key = zeronode_deployment::parse_key(twin)
            .ok_or_else(|| ApiError::new(401, "auth_invalid", "x-zn-twin is not a key"))?;
        let sig = hex::decode_array::<64>(sig).ok_or_else(|| {
            ApiError::new(401, "auth_invalid", "x-zn-signature is not 64 bytes of hex")
        })?;
        let h = zeronode_deployment::read_auth_hash(method, path, t);
        key.verify_strict(&h, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| ApiError::new(401, "auth_invalid", "x-zn-signature does not verify"))?;
        Ok(twin.to_string())
    }

    pub fn is_owner(&self, twin: &str) -> bool {
        self.owner.as_deref() == Some(twin)
    }

    /// A deployment as a reader sees it.
    pub fn view(&self, id: &str, reader: &str) -> Result<Value, ApiError> {
        let st = self.state();
        let d = st
            .deployments
            .get(id)
            .filter(|d| d.live.is_some())
            .ok_or_else(|| ApiError::new(404, "not_found", format!("{id:?} is not live")))?;
        if d.twin != reader && !self.is_owner(reader) {
            return Err(ApiError::new(
                403,
                "forbidden",
                format!("{id:?} is not yours"),
            ));
        }
        Ok(view_of(id, d))
    }

    pub fn list(&self, reader: &str) -> Result<Value, ApiError> {
        let st = self.state();
        let owner = self.is_owner(reader);
        if !owner
            && !st.grants.contains_key(reader)
            && !st.deployments.values().any(|d| d.twin == reader)
        {
            return Err(ApiError::new(
                403,
                "forbidden",
                "neither the node owner nor a granted twin",
            ));
        }
        let mut out: Vec<Value> = st
            .deployments
            .iter()
            .filter(|(_, d)| d.live.is_some() && (owner || d.twin == reader))
            .map(|(id, d)| view_of(id, d))
            .collect();
        out.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        Ok(json!({ "deployments": out }))
    }

    /// Who may read a deployment's history: its twin, or the owner.
    pub fn may_read(&self, id: &str, reader: &str) -> Result<(), ApiError> {
        if self.is_owner(reader) {
            return Ok(());
        }
        match self.state().deployments.get(id) {
            Some(d) if d.twin == reader => Ok(()),
            Some(_) => Err(ApiError::new(
                403,
                "forbidden",
                format!("{id:?} is not yours"),
            )),
            None => Err(ApiError::new(
                404,
                "not_found",
                format!("no deployment {id:?}"),
            )),
        }
    }
}

fn view_of(id: &str, d: &DepState) -> Value {
    let Some(l) = &d.live else {
        return json!({"id": id});
    };
    let workloads: Vec<Value> = l
        .doc
        .workloads
        .iter()
        .map(|w| {
            let r = d.results.get(&w.name);
            json!({
                "name": w.name,
                "type": w.kind,
                "version": w.version,
                "state": r.map(|r| r.state.as_str()).unwrap_or("pending"),
                "reason": r.map(|r| r.reason.as_str()).unwrap_or(""),
                "detail": r.map(|r| r.detail.as_str()).unwrap_or(""),
            })
        })
        .collect();
    json!({
        "id": id,
        "version": l.doc.version,
        "twin": l.doc.twin,
        "seq": l.seq,
        "expiration": l.doc.expiration,
        "description": l.doc.description,
        "workloads": workloads,
    })
}
