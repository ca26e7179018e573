//! containerd through containerd-client: the handful of calls the module
//! makes, each with the namespace header, errors typed with what was tried.

use std::collections::HashMap;
use std::path::Path;

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    ApplyRequest, Container, CreateContainerRequest, CreateImageRequest, CreateRequest,
    CreateTaskRequest, DeleteContainerRequest, DeleteImageRequest, DeleteRequest,
    DeleteTaskRequest, GetContainerRequest, GetImageRequest, GetRequest, Image, InfoRequest,
    KillRequest, ListContainersRequest, ListContentRequest, ListImagesRequest, StartRequest,
    WaitRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Code, Request};
use containerd_client::types::{Descriptor, Mount};
use futures_util::StreamExt;
use tokio::io::AsyncReadExt;

use crate::Error;

/// The runtime every container runs with (runc through the v2 shim).
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// The snapshotter: overlayfs on the node cache, which lives on a pool.
pub const SNAPSHOTTER: &str = "overlayfs";
/// How the runtime spec travels in a container record (containerd's typeurl
/// for the OCI spec, JSON-encoded).
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Blobs go to the content store in pieces of this size.
const CHUNK: usize = 1 << 20;

/// Task state as containerd reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Created,
    Running,
    Stopped,
    Paused,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub pid: u32,
    pub state: TaskState,
    pub exit_status: u32,
}

/// Everything containerd holds in our namespace, by id, sorted: what the
/// tests compare before and after.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub content: Vec<String>,
    pub images: Vec<String>,
    pub snapshots: Vec<String>,
    pub containers: Vec<String>,
    pub leases: Vec<String>,
}

#[derive(Clone)]
pub struct Ctd {
    channel: Channel,
    ns: String,
}

impl Ctd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Ctd, Error> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|e| Error::Connect {
                path: socket.display().to_string(),
                reason: e.to_string(),
            })?;
        Ok(Ctd {
            channel,
            ns: namespace.to_string(),
        })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        self.req_lease(msg, None)
    }

    /// A request in our namespace, and under `lease` when given (content
    /// and snapshots made under a lease are kept until the lease ends).
    fn req_lease<T>(&self, msg: T, lease: Option<&str>) -> Request<T> {
        let mut r = Request::new(msg);
        if let Ok(v) = self.ns.parse() {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(v) = lease.and_then(|l| l.parse().ok()) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// A lease that expires by itself after `expire_secs`: an import that
    /// dies half way leaves nothing for long.
    pub async fn lease_create(&self, id: &str, expire_secs: u64) -> Result<(), Error> {
        let expire = std::time::SystemTime::now() + std::time::Duration::from_secs(expire_secs);
        let expire = humantime_rfc3339(expire);
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        LeasesClient::new(self.channel.clone())
            .create(self.req(CreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(Error::ctd(format!("create lease {id}")))?;
        Ok(())
    }

    /// Ends the lease and, with `sync`, waits for the garbage collection
    /// that drops whatever only the lease held.
    pub async fn lease_delete(&self, id: &str) -> Result<(), Error> {
        match LeasesClient::new(self.channel.clone())
            .delete(self.req(DeleteRequest {
                id: id.to_string(),
                sync: true,
            }))
            .await
        {
            Err(s) if s.code() == Code::NotFound => Ok(()),
            r => r
                .map(|_| ())
                .map_err(Error::ctd(format!("delete lease {id}"))),
        }
    }

    pub async fn content_exists(&self, digest: &str) -> Result<bool, Error> {
        match ContentClient::new(self.channel.clone())
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::ctd(format!("content info {digest}"))(s)),
        }
    }

    /// Streams the file `path` into the content store as `digest` (which
    /// containerd checks on commit) with `labels` on the committed blob.
    pub async fn content_write(
        &self,
        path: &Path,
        digest: &str,
        size: i64,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(Error::io(format!("open {}", path.display())))?;
        let reference = format!("zn-{}", digest.replace(':', "-"));
        let expected = digest.to_string();
        // Pieces read lazily from the file, then one COMMIT carrying the labels.
        let state = (Some(file), 0i64, Some(labels));
        let stream = futures_util::stream::unfold(state, move |(file, offset, labels)| {
            let reference = reference.clone();
            let expected = expected.clone();
            async move {
                let mut file = file?;
                let mut buf = vec![0u8; CHUNK];
                // On a read error the store sees a short blob and refuses the commit.
                let n: usize = file.read(&mut buf).await.unwrap_or_default();
                if n > 0 {
                    buf.truncate(n);
                    let req = WriteContentRequest {
                        action: WriteAction::Write as i32,
                        r#ref: reference,
                        total: size,
                        expected,
                        offset,
                        data: buf,
                        labels: HashMap::new(),
                    };
                    Some((req, (Some(file), offset + n as i64, labels)))
                } else {
                    let req = WriteContentRequest {
                        action: WriteAction::Commit as i32,
                        r#ref: reference,
                        total: size,
                        expected,
                        offset,
                        data: Vec::new(),
                        labels: labels.unwrap_or_default(),
                    };
                    Some((req, (None, offset, None)))
                }
            }
        });
        let mut responses = ContentClient::new(self.channel.clone())
            .write(self.req_lease(stream, Some(lease)))
            .await
            .map_err(Error::ctd(format!("write content {digest}")))?
            .into_inner();
        while let Some(r) = responses.next().await {
            let r = r.map_err(Error::ctd(format!("write content {digest}")))?;
            if r.action == WriteAction::Commit as i32 {
                return Ok(());
            }
        }
        Err(Error::Containerd {
            what: format!("write content {digest}"),
            status: Box::new(containerd_client::tonic::Status::internal(
                "stream ended before the commit",
            )),
        })
    }

    pub async fn image_get(&self, name: &str) -> Result<Option<Image>, Error> {
        match ImagesClient::new(self.channel.clone())
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(Error::ctd(format!("get image {name}"))(s)),
        }
    }

    pub async fn image_create(
        &self,
        name: &str,
        target: Descriptor,
        labels: HashMap<String, String>,
        lease: &str,
    ) -> Result<(), Error> {
        let image = Image {
            name: name.to_string(),
            labels,
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        match ImagesClient::new(self.channel.clone())
            .create(self.req_lease(
                CreateImageRequest {
                    image: Some(image),
                    source_date_epoch: None,
                },
                Some(lease),
            ))
            .await
        {
            Err(s) if s.code() != Code::AlreadyExists => {
                Err(Error::ctd(format!("create image {name}"))(s))
            }
            _ => Ok(()),
        }
    }

    /// Deletes the image record and waits for the garbage collection that
    /// then drops its content and snapshots (unless something else holds them).
    pub async fn image_delete(&self, name: &str) -> Result<(), Error> {
        match ImagesClient::new(self.channel.clone())
            .delete(self.req(DeleteImageRequest {
                name: name.to_string(),
                sync: true,
                target: None,
            }))
            .await
        {
            Err(s) if s.code() != Code::NotFound => {
                Err(Error::ctd(format!("delete image {name}"))(s))
            }
            _ => Ok(()),
        }
    }

    pub async fn snapshot_exists(&self, key: &str) -> Result<bool, Error> {
        match SnapshotsClient::new(self.channel.clone())
            .stat(self.req(StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::ctd(format!("stat snapshot {key}"))(s)),
        }
    }

    pub async fn snapshot_prepare(
        &self,
        key: &str,
        parent: &str,
        lease: Option<&str>,
    ) -> Result<Vec<Mount>, Error> {
        let r = SnapshotsClient::new(self.channel.clone())
            .prepare(self.req_lease(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            ))
            .await
            .map_err(Error::ctd(format!("prepare snapshot {key}")))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let r = SnapshotsClient::new(self.channel.clone())
            .mounts(self.req(MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
            .map_err(Error::ctd(format!("snapshot mounts {key}")))?;
        Ok(r.into_inner().mounts)
    }

    pub async fn snapshot_commit(&self, name: &str, key: &str, lease: &str) -> Result<(), Error> {
        SnapshotsClient::new(self.channel.clone())
            .commit(self.req_lease(
                CommitSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    name: name.to_string(),
                    key: key.to_string(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(Error::ctd(format!("commit snapshot {name}")))?;
        Ok(())
    }

    pub async fn snapshot_remove(&self, key: &str) -> Result<(), Error> {
        match SnapshotsClient::new(self.channel.clone())
            .remove(self.req(RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.to_string(),
            }))
            .await
        {
            Err(s) if s.code() != Code::NotFound => {
                Err(Error::ctd(format!("remove snapshot {key}"))(s))
            }
            _ => Ok(()),
        }
    }

    /// Applies the layer `layer` (already in the content store) onto
    /// `mounts`; returns the digest of the uncompressed layer (its diff ID).
    pub async fn diff_apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> Result<String, Error> {
        let what = format!("apply layer {}", layer.digest);
        let r = DiffClient::new(self.channel.clone())
            .apply(self.req(ApplyRequest {
                diff: Some(layer),
                mounts,
                payloads: HashMap::new(),
                sync_fs: false,
            }))
            .await
            .map_err(Error::ctd(what))?;
        Ok(r.into_inner().applied.map(|d| d.digest).unwrap_or_default())
    }

    pub async fn container_exists(&self, id: &str) -> Result<bool, Error> {
        match ContainersClient::new(self.channel.clone())
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::ctd(format!("get container {id}"))(s)),
        }
    }

    /// The container record: image, runtime, the JSON runtime spec, and
    /// its snapshot (so containerd's GC keeps the snapshot while it lives).
    pub async fn container_create(
        &self,
        id: &str,
        image: &str,
        spec_json: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<(), Error> {
        let c = Container {
            id: id.to_string(),
            labels,
            image: image.to_string(),
            runtime: Some(Runtime {
                name: RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.into(),
                value: spec_json,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: id.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        ContainersClient::new(self.channel.clone())
            .create(self.req(CreateContainerRequest { container: Some(c) }))
            .await
            .map_err(Error::ctd(format!("create container {id}")))?;
        Ok(())
    }

    pub async fn container_delete(&self, id: &str) -> Result<(), Error> {
        match ContainersClient::new(self.channel.clone())
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await
        {
            Err(s) if s.code() != Code::NotFound => {
                Err(Error::ctd(format!("delete container {id}"))(s))
            }
            _ => Ok(()),
        }
    }

    pub async fn task_create(
        &self,
        id: &str,
        rootfs: Vec<Mount>,
        log_uri: &str,
    ) -> Result<(), Error> {
        TasksClient::new(self.channel.clone())
            .create(self.req(CreateTaskRequest {
                container_id: id.to_string(),
                rootfs,
                stdin: String::new(),
                stdout: log_uri.to_string(),
                stderr: log_uri.to_string(),
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await
            .map_err(Error::ctd(format!("create task {id}")))?;
        Ok(())
    }

    pub async fn task_start(&self, id: &str) -> Result<u32, Error> {
        let r = TasksClient::new(self.channel.clone())
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(Error::ctd(format!("start task {id}")))?;
        Ok(r.into_inner().pid)
    }

    pub async fn task_get(&self, id: &str) -> Result<Option<TaskInfo>, Error> {
        match TasksClient::new(self.channel.clone())
            .get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().process.map(|p| TaskInfo {
                pid: p.pid,
                state: match p.status {
                    1 => TaskState::Created,
                    2 => TaskState::Running,
                    3 => TaskState::Stopped,
                    4 | 5 => TaskState::Paused,
                    _ => TaskState::Unknown,
                },
                exit_status: p.exit_status,
            })),
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(Error::ctd(format!("get task {id}"))(s)),
        }
    }

    pub async fn task_kill(&self, id: &str, signal: u32) -> Result<(), Error> {
        match TasksClient::new(self.channel.clone())
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all: true,
            }))
            .await
        {
            // Already gone, or already stopped: nothing to kill.
            Err(s) if !matches!(s.code(), Code::NotFound | Code::FailedPrecondition) => {
                Err(Error::ctd(format!("kill task {id}"))(s))
            }
            _ => Ok(()),
        }
    }

    /// Waits until the task exits; its exit status.
    pub async fn task_wait(&self, id: &str) -> Result<u32, Error> {
        let r = TasksClient::new(self.channel.clone())
            .wait(self.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(Error::ctd(format!("wait task {id}")))?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn task_delete(&self, id: &str) -> Result<(), Error> {
        match TasksClient::new(self.channel.clone())
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
        {
            Err(s) if s.code() != Code::NotFound => Err(Error::ctd(format!("delete task {id}"))(s)),
            _ => Ok(()),
        }
    }

    /// Everything in our namespace, for checks that nothing was left behind.
    pub async fn inventory(&self) -> Result<Inventory, Error> {
        let mut inv = Inventory::default();
        let mut s = ContentClient::new(self.channel.clone())
            .list(self.req(ListContentRequest { filters: vec![] }))
            .await
            .map_err(Error::ctd("list content"))?
            .into_inner();
        while let Some(r) = s.next().await {
            let r = r.map_err(Error::ctd("list content"))?;
            inv.content.extend(r.info.into_iter().map(|i| i.digest));
        }
        let r = ImagesClient::new(self.channel.clone())
            .list(self.req(ListImagesRequest { filters: vec![] }))
            .await
            .map_err(Error::ctd("list images"))?;
        inv.images = r.into_inner().images.into_iter().map(|i| i.name).collect();
        let mut s = SnapshotsClient::new(self.channel.clone())
            .list(self.req(ListSnapshotsRequest {
                snapshotter: SNAPSHOTTER.into(),
                filters: vec![],
            }))
            .await
            .map_err(Error::ctd("list snapshots"))?
            .into_inner();
        while let Some(r) = s.next().await {
            let r = r.map_err(Error::ctd("list snapshots"))?;
            inv.snapshots.extend(r.info.into_iter().map(|i| i.name));
        }
        let r = ContainersClient::new(self.channel.clone())
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(Error::ctd("list containers"))?;
        inv.containers = r
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect();
        let r = LeasesClient::new(self.channel.clone())
            .list(self.req(containerd_client::services::v1::ListRequest { filters: vec![] }))
            .await
            .map_err(Error::ctd("list leases"))?;
        inv.leases = r.into_inner().leases.into_iter().map(|l| l.id).collect();
        for v in [
            &mut inv.content,
            &mut inv.images,
            &mut inv.snapshots,
            &mut inv.containers,
            &mut inv.leases,
        ] {
            v.sort();
        }
        Ok(inv)
    }
}

/// RFC 3339 in UTC (containerd parses the lease expiry label with Go's
/// time.RFC3339), without pulling a date crate for one label.
fn humantime_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86400;
    let rem = secs % 86400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_040_000);
        assert_eq!(super::humantime_rfc3339(t), "2026-11-30T12:00:00Z");
        assert_eq!(
            super::humantime_rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00Z"
        );
    }
}
