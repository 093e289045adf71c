//! The Docker engine as the spawner sees it: [`Engine`], a thin wrapper over bollard (one lazily
//! (re)established connection with the API version negotiated down to the engine's, every call
//! under a timeout, no policy); the event subscription that tells the loop *when* to look
//! ([`events`], with what it reported kept in [`event_reports`]); and the observation that reads
//! what is true into the reconcile inputs ([`observe`]). Everything that talks to the engine is
//! here, so every call has a timeout and every failure says whether the engine answered.

pub(crate) mod event_reports;
pub(crate) mod events;
pub(crate) mod observe;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EventMessage,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

/// A call to the engine that failed: one variant per way it can fail, each keeping its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to connect to the docker engine at {host}")]
    Connect {
        host: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker call {op} timed out after {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    #[error("docker call {op} failed")]
    Docker {
        op: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
}

impl Error {
    /// The HTTP status the engine answered with, when it answered at all.
    pub(crate) fn status_code(&self) -> Option<u16> {
        match self {
            Error::Docker {
                source: bollard::errors::Error::DockerResponseServerError { status_code, .. },
                ..
            } => Some(*status_code),
            _ => None,
        }
    }

    /// True when the engine could not be reached (as opposed to answering with an error), so the
    /// cached connection should be dropped and re-established.
    pub(crate) fn is_transport(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Docker { source, .. } => !matches!(
                source,
                bollard::errors::Error::DockerResponseServerError { .. }
                    | bollard::errors::Error::DockerStreamError { .. }
            ),
        }
    }
}

/// Pulls transfer image layers, so they get this many times the per-call timeout.
const PULL_TIMEOUT_FACTOR: u32 = 10;

/// What the engine says of its swarm, when it is in one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SwarmView {
    /// A manager (it sees the whole swarm); a worker sees only itself.
    pub(crate) manager: bool,
    /// Nodes in the swarm, as a manager counts them (0 on a worker: it cannot tell).
    pub(crate) nodes: u64,
}

/// A handle on the engine. Cheap to share behind an `Arc`.
pub(crate) struct Engine {
    host: String,
    socket: String,
    timeout: Duration,
    client: Mutex<Option<Docker>>,
    /// Engine API calls made so far (for the per-turn debug line and the scale benchmark).
    calls: std::sync::atomic::AtomicU64,
}

impl Engine {
    pub(crate) fn new(host: &str, socket: &str, timeout: Duration) -> Self {
        Engine {
            host: host.to_string(),
            socket: socket.to_string(),
            timeout,
            client: Mutex::new(None),
            calls: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The cached client, or a new one. bollard's default API version is newer than older
    /// engines accept (20.10 speaks 1.41), so each new connection negotiates it down.
    async fn client(&self) -> Result<Docker, Error> {
        if let Some(d) = self
            .client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return Ok(d);
        }
        let secs = self.timeout.as_secs().max(1);
        let connect_err = |source| Error::Connect {
            host: self.host.clone(),
            source,
        };
        let d = Docker::connect_with_unix(&self.socket, secs, API_DEFAULT_VERSION)
            .map_err(connect_err)?;
        let d = tokio::time::timeout(self.timeout, d.negotiate_version())
            .await
            .map_err(|_| Error::Timeout {
                op: "version",
                timeout: self.timeout,
            })?
            .map_err(connect_err)?;
        tracing::debug!(host = %self.host, version = %d.client_version(), "connected to docker engine");
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(d.clone());
        Ok(d)
    }

    fn forget_client(&self) {
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn call<T, F, Fut>(&self, op: &'static str, timeout: Duration, f: F) -> Result<T, Error>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = Result<T, bollard::errors::Error>>,
    {
        let d = self.client().await?;
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = match tokio::time::timeout(timeout, f(d)).await {
            Err(_) => Err(Error::Timeout { op, timeout }),
            Ok(r) => r.map_err(|source| Error::Docker { op, source }),
        };
        if let Err(e) = &r {
            if e.is_transport() {
                self.forget_client();
            }
        }
        r
    }

    /// Engine API calls made so far.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// This engine's swarm membership (`GET /info`): `None` when it is in no swarm.
    pub(crate) async fn swarm(&self) -> Result<Option<SwarmView>, Error> {
        let info = self
            .call("info", self.timeout, |d| async move { d.info().await })
            .await?;
        let Some(swarm) = info.swarm else {
            return Ok(None);
        };
        if swarm.local_node_state != Some(bollard::models::LocalNodeState::ACTIVE) {
            return Ok(None);
        }
        Ok(Some(SwarmView {
            manager: swarm.control_available.unwrap_or(false),
            nodes: swarm.nodes.unwrap_or(0).max(0) as u64,
        }))
    }

    /// Every container, running or not.
    pub(crate) async fn list_containers(&self) -> Result<Vec<ContainerSummary>, Error> {
        let opts = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        self.call("list containers", self.timeout, |d| async move {
            d.list_containers(Some(opts)).await
        })
        .await
    }

    /// `None` when the container does not exist (any more).
    pub(crate) async fn inspect(
        &self,
        id: &str,
    ) -> Result<Option<ContainerInspectResponse>, Error> {
        let r = self.call("inspect container", self.timeout, |d| async move {
            d.inspect_container(id, None).await
        });
        match r.await {
            Err(e) if e.status_code() == Some(404) => Ok(None),
            r => r.map(Some),
        }
    }

    /// Creates a container and returns its ID.
    pub(crate) async fn create(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<String, Error> {
        let opts = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        self.call("create container", self.timeout, |d| async move {
            d.create_container(Some(opts), body).await.map(|r| r.id)
        })
        .await
    }

    /// Extracts a tar archive at `path` inside a container (created or running); with volumes
    /// mounted there, the files land in the volume. Ownership and modes come from the archive.
    pub(crate) async fn upload(&self, id: &str, path: &str, archive: Vec<u8>) -> Result<(), Error> {
        let opts = bollard::query_parameters::UploadToContainerOptions {
            path: path.to_string(),
            ..Default::default()
        };
        self.call("upload to container", self.timeout, |d| async move {
            d.upload_to_container(id, Some(opts), bollard::body_full(archive.into()))
                .await
        })
        .await
    }

    /// The tar archive of `path` inside a container (created, running or exited: a volume
    /// mounted there is read), through the engine's archive API; `None` when nothing is at
    /// `path`. A symbolic link comes back as a link, not followed. Reading stops once the archive
    /// is longer than `max_bytes`: a result longer than that is too large, and was cut.
    pub(crate) async fn download(
        &self,
        id: &str,
        path: &str,
        max_bytes: usize,
    ) -> Result<Option<Vec<u8>>, Error> {
        let opts = bollard::query_parameters::DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let r = self.call("download from container", self.timeout, |d| async move {
            let mut out = Vec::new();
            let mut archive = d.download_from_container(id, Some(opts));
            while let Some(chunk) = archive.next().await {
                out.extend_from_slice(chunk?.as_ref());
                if out.len() > max_bytes {
                    break;
                }
            }
            Ok(out)
        });
        match r.await {
            Err(e) if e.status_code() == Some(404) => Ok(None),
            r => r.map(Some),
        }
    }

    pub(crate) async fn start(&self, id: &str) -> Result<(), Error> {
        self.call("start container", self.timeout, |d| async move {
            d.start_container(id, None).await
        })
        .await
    }

    /// Force-removes a container (with its anonymous volumes); a container already gone is fine.
    pub(crate) async fn remove(&self, id: &str) -> Result<(), Error> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        let r = self.call("remove container", self.timeout, |d| async move {
            d.remove_container(id, Some(opts)).await
        });
        match r.await {
            Err(e) if e.status_code() == Some(404) => Ok(()),
            r => r,
        }
    }

    /// The last `lines` lines a container wrote to stderr (its fatal error, for a sidecar that
    /// exited), as the engine's log driver kept them.
    pub(crate) async fn stderr_tail(&self, id: &str, lines: &str) -> Result<Vec<u8>, Error> {
        let opts = LogsOptions {
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        self.call("read container logs", self.timeout, |d| async move {
            let mut out = Vec::new();
            let mut logs = d.logs(id, Some(opts));
            while let Some(item) = logs.next().await {
                out.extend_from_slice(item?.as_ref());
            }
            Ok(out)
        })
        .await
    }

    /// Whether the first `max_bytes` of a container's log (stdout and stderr, from its start)
    /// contain `needle`: read from the beginning and stopped at the first match or the limit,
    /// so a long-running container's log costs no more than that.
    pub(crate) async fn log_head_contains(
        &self,
        id: &str,
        needle: &str,
        max_bytes: usize,
    ) -> Result<bool, Error> {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            tail: "all".to_string(),
            ..Default::default()
        };
        self.call("read container logs", self.timeout, |d| async move {
            let mut seen: Vec<u8> = Vec::new();
            let mut logs = d.logs(id, Some(opts));
            while let Some(item) = logs.next().await {
                seen.extend_from_slice(item?.as_ref());
                if seen.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    return Ok(true);
                }
                if seen.len() >= max_bytes {
                    break;
                }
            }
            Ok(false)
        })
        .await
    }

    /// True when the image is present locally.
    pub(crate) async fn image_exists(&self, image: &str) -> Result<bool, Error> {
        let r = self.call("inspect image", self.timeout, |d| async move {
            d.inspect_image(image).await
        });
        match r.await {
            Ok(_) => Ok(true),
            Err(e) if e.status_code() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The ID (`sha256:...`) the image reference resolves to now; `None` when the engine does
    /// not have it.
    pub(crate) async fn image_id(&self, image: &str) -> Result<Option<String>, Error> {
        let r = self.call("inspect image", self.timeout, |d| async move {
            d.inspect_image(image).await
        });
        match r.await {
            Ok(info) => Ok(info.id),
            Err(e) if e.status_code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Renames a container.
    pub(crate) async fn rename(&self, id: &str, name: &str) -> Result<(), Error> {
        let opts = bollard::query_parameters::RenameContainerOptions {
            name: name.to_string(),
        };
        self.call("rename container", self.timeout, |d| async move {
            d.rename_container(id, opts).await
        })
        .await
    }

    /// Pulls an image, following the progress stream to its end.
    pub(crate) async fn pull(&self, image: &str) -> Result<(), Error> {
        let opts = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        self.call(
            "pull image",
            self.timeout * PULL_TIMEOUT_FACTOR,
            |d| async move {
                let mut progress = d.create_image(Some(opts), None, None);
                while let Some(item) = progress.next().await {
                    item?;
                }
                Ok(())
            },
        )
        .await
    }

    /// Subscribes to container lifecycle events since `since` (unix seconds). The stream connects
    /// when first polled; it ends or yields an error when the connection breaks.
    pub(crate) async fn events(
        &self,
        since: Option<i64>,
    ) -> Result<BoxStream<'static, Result<EventMessage, bollard::errors::Error>>, Error> {
        let d = self.client().await?;
        let filters = HashMap::from([
            (
                "type".to_string(),
                vec!["container".to_string(), "image".to_string()],
            ),
            (
                "event".to_string(),
                // `create` too: the listing is kept current from events (a sidecar created
                // but never started must be seen); `rename`, a roll-out renames its sidecar.
                // Images: a tag moved, an image arrived or went (roll-outs).
                [
                    "create", "start", "die", "destroy", "rename", "tag", "untag", "pull", "load",
                    "import", "delete",
                ]
                .map(String::from)
                .to_vec(),
            ),
        ]);
        let opts = EventsOptions {
            since: since.map(|s| s.to_string()),
            until: None,
            filters: Some(filters),
        };
        Ok(d.events(Some(opts)).boxed())
    }

    /// Drops the cached connection, so the next call reconnects (used after a broken stream).
    pub(crate) fn reconnect(&self) {
        self.forget_client();
    }
}
