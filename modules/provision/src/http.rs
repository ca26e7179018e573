//! The HTTPS API (docs/provision.md): hyper 1 over tokio-rustls, a small
//! router, the body size limit, JSON answers and error bodies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use zeronode_deployment::{HEADER_SIGNATURE, HEADER_TIME, HEADER_TWIN};
use zeronode_ledger::Entry;

use crate::app::{ApiError, App};

type Resp = Response<Full<Bytes>>;

fn json_resp(status: u16, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn err_resp(app: &App, e: &ApiError) -> Resp {
    app.metrics.refused(e.code);
    json_resp(e.status, &e.body())
}

/// Serves until the listener fails. Each connection gets its own task.
pub async fn serve(
    app: Arc<App>,
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!("{peer}: TLS: {e}"),
                    Err(_) => return tracing::debug!("{peer}: TLS handshake timed out"),
                };
            let svc = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(app, req, peer).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!("{peer}: {e}");
            }
        });
    }
}

/// Check 1, the body size limit. A body over it is still read (and
/// dropped) up to `DRAIN` bytes more, so the client finishes sending and
/// reads the 413 instead of a reset connection; past that it is cut.
async fn read_body(app: &App, req: Request<Incoming>) -> Result<Bytes, ApiError> {
    const DRAIN: u64 = 8 << 20;
    let max = app.cfg.max_body;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut too_big = declared.is_some_and(|len| len > max as u64);
    let mut body = req.into_body();
    let mut buf: Vec<u8> = Vec::new();
    let mut seen: u64 = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    408,
                    "body_timeout",
                    "the body did not arrive within 30 s",
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::new(
                    400,
                    "bad_request",
                    format!("reading the body: {e}"),
                ))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if !too_big && buf.len() + data.len() <= max {
                buf.extend_from_slice(&data);
            } else {
                too_big = true;
                buf = Vec::new();
            }
            if seen > max as u64 + DRAIN {
                break;
            }
        }
    }
    if too_big {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("the body is larger than {max} bytes"),
        ));
    }
    Ok(Bytes::from(buf))
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn handle(app: Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Resp {
    app.metrics.request();
    let started = Instant::now();
    let method = req.method().as_str().to_string();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let r: Result<Resp, ApiError> = async {
        match (method.as_str(), parts.as_slice()) {
            ("GET", ["v1", "health"]) => Ok(json_resp(
                200,
                &json!({"status": "ok", "node_id": app.node_id}),
            )),
            ("GET", ["metrics"]) => {
                let size = app.head().await.ok().map(|h| h.size);
                let (live, grants) = {
                    let st = app.state();
                    (
                        st.deployments.values().filter(|d| d.live.is_some()).count(),
                        st.grants.len(),
                    )
                };
                let mut r = Response::new(Full::new(Bytes::from(
                    app.metrics.render(live, grants, size),
                )));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                Ok(r)
            }
            ("GET", ["v1", "node"]) => node_info(&app).await.map(|v| json_resp(200, &v)),
            ("POST", ["v1", "deployments"]) => {
                let body = read_body(&app, req).await?;
                let r = app.order_deployment(&body, None).await?;
                app.metrics.order_time(started.elapsed());
                spawn_reconcile(&app, &r.deployment);
                Ok(json_resp(
                    201,
                    &serde_json::to_value(&r).unwrap_or_default(),
                ))
            }
            ("PUT", ["v1", "deployments", id]) => {
                let id = id.to_string();
                let body = read_body(&app, req).await?;
                let r = app.order_deployment(&body, Some(&id)).await?;
                app.metrics.order_time(started.elapsed());
                spawn_reconcile(&app, &r.deployment);
                Ok(json_resp(
                    200,
                    &serde_json::to_value(&r).unwrap_or_default(),
                ))
            }
            ("DELETE", ["v1", "deployments", id]) => {
                let id = id.to_string();
                let body = read_body(&app, req).await?;
                let r = app.order_delete(&body, &id).await?;
                app.metrics.order_time(started.elapsed());
                spawn_reconcile(&app, &r.deployment);
                Ok(json_resp(
                    200,
                    &serde_json::to_value(&r).unwrap_or_default(),
                ))
            }
            ("POST", ["v1", "grants"]) => {
                let body = read_body(&app, req).await?;
                let r = app.order_grant(&body).await?;
                app.metrics.order_time(started.elapsed());
                Ok(json_resp(
                    201,
                    &serde_json::to_value(&r).unwrap_or_default(),
                ))
            }
            ("GET", ["v1", "deployments", rest @ ..]) => {
                let reader = app.read_auth(
                    "GET",
                    &path_q,
                    header(&req, HEADER_TWIN),
                    header(&req, HEADER_TIME),
                    header(&req, HEADER_SIGNATURE),
                )?;
                match rest {
                    [] => app.list(&reader).map(|v| json_resp(200, &v)),
                    [id] => app.view(id, &reader).map(|v| json_resp(200, &v)),
                    [id, "changes"] => {
                        app.may_read(id, &reader)?;
                        changes(&app, id).await.map(|v| json_resp(200, &v))
                    }
                    [id, "proof"] => {
                        let seq = {
                            app.view(id, &reader)?;
                            app.state()
                                .deployments
                                .get(*id)
                                .and_then(|d| d.live.as_ref().map(|l| l.seq))
                        };
                        let seq = seq.ok_or_else(|| {
                            ApiError::new(404, "not_found", format!("{id:?} is not live"))
                        })?;
                        let mut v = app.proof(seq).await?;
                        v["deployment"] = json!(id);
                        Ok(json_resp(200, &v))
                    }
                    [id, "workloads", name, "logs"] => {
                        app.view(id, &reader)?;
                        workload_logs(&app, id, name, query_u64(&path_q, "max_bytes"))
                            .await
                            .map(|v| json_resp(200, &v))
                    }
                    _ => Err(ApiError::new(404, "not_found", format!("no route {path}"))),
                }
            }
            _ => Err(ApiError::new(
                404,
                "not_found",
                format!("no route {method} {path}"),
            )),
        }
    }
    .await;
    match r {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(
                "{peer} {method} {path}: {} {}: {}",
                e.status,
                e.code,
                e.message
            );
            err_resp(&app, &e)
        }
    }
}

fn spawn_reconcile(app: &Arc<App>, id: &str) {
    let app = app.clone();
    let id = id.to_string();
    tokio::spawn(async move { app.reconcile(&id, &[]).await });
}

async fn node_info(app: &App) -> Result<Value, ApiError> {
    let head = app.head().await?;
    let disk = app.drivers_disk().await;
    let used = app.usage_of_all("");
    let live = app
        .state()
        .deployments
        .values()
        .filter(|d| d.live.is_some())
        .count();
    Ok(json!({
        "node_id": app.node_id,
        "public_key": zeronode_deployment::hex::encode(app.node_key.as_bytes()),
        "farm_id": app.farm_id,
        "owner": app.owner,
        "capacity": {"cpu": app.cfg.capacity.cpu, "memory": app.cfg.capacity.memory, "disk": disk},
        "used": {"cpu": used.cpu, "memory": used.memory},
        "live_deployments": live,
        "ledger_head": {
            "size": head.size,
            "time_ms": head.time_ms,
            "root": zeronode_deployment::hex::encode(&head.root),
            "signature": zeronode_deployment::hex::encode(&head.signature),
        },
    }))
}

/// `?name=N` of a request path, if it is there and a number.
fn query_u64(path_q: &str, name: &str) -> Option<u64> {
    let (_, q) = path_q.split_once('?')?;
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .and_then(|(_, v)| v.parse().ok())
}

/// The last bytes of a workload's logs (64 KiB unless `max_bytes`), from
/// its module; the caller has checked the reader may see the deployment.
async fn workload_logs(
    app: &App,
    id: &str,
    name: &str,
    max_bytes: Option<u64>,
) -> Result<Value, ApiError> {
    let ty = app
        .state()
        .deployments
        .get(id)
        .and_then(|d| d.live.as_ref())
        .and_then(|l| l.doc.workload(name).and_then(|w| w.workload_type()))
        .ok_or_else(|| {
            ApiError::new(404, "not_found", format!("{id:?} has no workload {name:?}"))
        })?;
    let driver = app
        .drivers
        .get(ty)
        .ok_or_else(|| ApiError::new(404, "not_found", format!("no driver for {}", ty.name())))?;
    let max = max_bytes.unwrap_or(64 << 10).min(16 << 20);
    match driver.logs(id, name, max).await {
        None => Err(ApiError::new(
            404,
            "not_found",
            format!("{} workloads keep no logs", ty.name()),
        )),
        Some(Ok(logs)) => Ok(json!({"deployment": id, "workload": name, "logs": logs})),
        Some(Err(e)) if e.contains(".Error.NotFound") => Err(ApiError::new(
            404,
            "not_found",
            format!("logs of {id}/{name}: {e}"),
        )),
        Some(Err(e)) => Err(ApiError::new(
            503,
            "module_unavailable",
            format!("logs of {id}/{name}: {e}"),
        )),
    }
}

async fn changes(app: &App, id: &str) -> Result<Value, ApiError> {
    let hist = app.history(id).await?;
    let mut out = Vec::new();
    for r in hist {
        let Ok(e) = Entry::decode(&r.record) else {
            continue;
        };
        let payload: Value = serde_json::from_slice(&e.payload).unwrap_or(Value::Null);
        let summary = match e.kind.name() {
            "result" => format!(
                "{} {}{}",
                payload["workload"].as_str().unwrap_or(""),
                payload["state"].as_str().unwrap_or(""),
                payload["reason"]
                    .as_str()
                    .filter(|s| !s.is_empty())
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
            "delete" if payload["kind"] == "expired" => "expired".to_string(),
            k => format!("{k} by {}", e.meta.owner),
        };
        out.push(json!({
            "seq": e.seq,
            "time_ms": e.time_ms,
            "kind": e.kind.name(),
            "version": e.meta.version,
            "workloads": e.meta.workloads,
            "summary": summary,
            "document": payload,
        }));
    }
    Ok(json!({"deployment": id, "changes": out}))
}

impl App {
    /// Free bytes over the storage pools, 0 when storage is not there.
    pub async fn drivers_disk(&self) -> u64 {
        let Ok(conn) = zeronode_types::bus::connect(&self.cfg.storage_socket).await else {
            return 0;
        };
        let Ok(p) = crate::modules::Storage1Proxy::new(&conn).await else {
            return 0;
        };
        p.pools()
            .await
            .map(|ps| ps.iter().map(|x| x.4).sum())
            .unwrap_or(0)
    }
}
