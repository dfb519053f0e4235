//! The docker provider: each sandbox is a long-lived container reached
//! through the Docker Engine API (bollard).
//!
//! - `connection`: the daemon link, its availability and the recheck task;
//! - `exec`: tagged commands, killed for good on timeout or departure;
//! - `files`: archive endpoints for contents, argv-only scripts for metadata;
//! - `glob`: the wasm provider's glob semantics over a `find` listing.
//!
//! Commands and file operations run as `docker.user` (not root by
//! default); the keep-alive and the killer run as root. `/workspace` lives
//! in the container's writable layer, which is limited to the sandbox disk
//! quota where the storage driver can do it.
//!
//! Containers carry labels: `stacyvm.sandbox`, `stacyvm.tenant`, and
//! `stacyvm.instance`, a hash of the canonical data directory, so servers
//! with different data directories never touch each other's containers.

mod connection;
mod exec;
mod files;
mod glob;
pub mod pool;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as DockerError;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, ListContainersOptions, RemoveContainerOptions, StatsOptions,
};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use self::connection::{Connection, INTERNAL_NETWORK, status_code};
use self::exec::{Collected, Finished, Job, StdinStream};
use self::files::{FileError, Files};
use super::{
    Capabilities, ExecIo, ExecOutput, ExecSpec, FileEntry, Provider, ProviderError, ProviderStatus, SandboxStats,
};
use crate::sandbox::Sandbox;
use crate::sandbox::path::SandboxPath;
use crate::settings::Settings;
use tokio_util::sync::CancellationToken;

const LABEL_SANDBOX: &str = "stacyvm.sandbox";
const LABEL_TENANT: &str = "stacyvm.tenant";
const LABEL_INSTANCE: &str = "stacyvm.instance";
const LABEL_DATA_DIR: &str = "stacyvm.data_dir";
/// On warm-pool containers (see `pool`), whose tenant is not known yet.
const LABEL_POOL: &str = "stacyvm.pool";

/// Keeps the container alive doing nothing; docker-init (`init: true`) is
/// PID 1 and reaps whatever the execs leave behind.
const KEEPALIVE: &str = "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done";

/// Longest image reference accepted: Docker's own limits (a 255-byte
/// name, a 128-byte tag, a digest) add up to less.
const MAX_IMAGE_REFERENCE: usize = 512;

/// How long a pull may take before the image counts as not pullable. A
/// typical image arrives within seconds; a registry that does not answer
/// must not hang the create.
const PULL_TIMEOUT: Duration = Duration::from_secs(60);

/// Connects to the daemon described by the settings. Never fails: with no
/// daemon the provider lists itself unavailable, with the reason, until the
/// recheck task finds one.
pub async fn start(settings: &Settings) -> Arc<dyn Provider> {
    let provider = Arc::new(DockerProvider::new(settings).await);
    if let Some(warm) = &provider.pool {
        tokio::spawn(pool::refill(
            Arc::downgrade(&provider),
            warm.clone(),
            settings.docker.recheck_interval,
        ));
    }
    provider
}

/// The user commands and file operations run as, from `docker.user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerUser {
    pub uid: u32,
    pub gid: u32,
}

impl ContainerUser {
    /// `UID:GID`, or `UID` alone for the group of the same number. Names are
    /// refused: they mean different ids in different images.
    pub fn parse(spec: &str) -> Option<ContainerUser> {
        let number = |s: &str| {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        };
        match spec.trim().split_once(':') {
            Some((uid, gid)) => Some(ContainerUser {
                uid: number(uid)?,
                gid: number(gid)?,
            }),
            None => {
                let id = number(spec.trim())?;
                Some(ContainerUser { uid: id, gid: id })
            }
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// As the Engine API takes it.
    pub fn spec(&self) -> String {
        format!("{}:{}", self.uid, self.gid)
    }
}

/// Whether `image` may be created under the allow-list `patterns` (globs
/// with `*`, `?` and `[...]`; empty allows everything). Patterns match the
/// reference as written, `/`-separated part by part, so `*` never crosses
/// a `/`: `python:*` does not let `python:5000/other` name another
/// registry. A reference without a tag or digest is also tried with
/// `:latest`, as Docker reads it.
pub fn image_allowed(patterns: &[String], image: &str) -> bool {
    fn matches(pattern: &str, image: &str) -> bool {
        let (mut p, mut i) = (pattern.split('/'), image.split('/'));
        loop {
            match (p.next(), i.next()) {
                (None, None) => return true,
                (Some(p), Some(i)) if super::glob::wildcard_match(p, i) => {}
                _ => return false,
            }
        }
    }
    if patterns.is_empty() {
        return true;
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    let untagged = !image.contains('@') && !image[name_start..].contains(':');
    let latest = format!("{image}:latest");
    patterns
        .iter()
        .any(|p| matches(p.trim(), image) || (untagged && matches(p.trim(), &latest)))
}

/// Whether the storage driver limits a container's writable layer: not
/// known until the first create tries.
const SIZE_LIMIT_UNKNOWN: u8 = 0;
const SIZE_LIMIT_SUPPORTED: u8 = 1;
const SIZE_LIMIT_UNSUPPORTED: u8 = 2;

pub struct DockerProvider {
    conn: Arc<Connection>,
    instance: String,
    data_dir: String,
    default_image: String,
    network: String,
    pids_limit: i64,
    on_shutdown: String,
    output_limit: usize,
    file_limit: usize,
    user: ContainerUser,
    allowed_images: Vec<String>,
    disk_quota_mb: u64,
    /// One of the `SIZE_LIMIT_*` values.
    size_limit: AtomicU8,
    /// `docker.image_aliases`.
    image_aliases: std::collections::BTreeMap<String, String>,
    /// Ready containers for fast creates, when `[docker.pool]` lists images.
    pool: Option<Arc<pool::WarmPool>>,
}

impl DockerProvider {
    pub async fn new(settings: &Settings) -> DockerProvider {
        let d = &settings.docker;
        let data_dir = std::fs::canonicalize(&settings.data_dir)
            .or_else(|_| std::path::absolute(&settings.data_dir))
            .unwrap_or_else(|_| settings.data_dir.clone());
        let data_dir = data_dir.display().to_string();
        // 64 bits of the hash: labels stay short, collisions stay
        // impossible in practice.
        let instance = hex::encode(&Sha256::digest(data_dir.as_bytes())[..8]);
        DockerProvider {
            conn: Connection::open(d.host.clone(), d.network.clone(), d.recheck_interval).await,
            instance,
            data_dir,
            default_image: d.default_image.clone(),
            network: d.network.clone(),
            pids_limit: d.pids_limit,
            on_shutdown: d.on_shutdown.clone(),
            output_limit: settings.exec.output_limit_bytes,
            file_limit: settings.http.file_limit_bytes.max(settings.http.body_limit_bytes),
            // Validated with the settings.
            user: ContainerUser::parse(&d.user).unwrap_or(ContainerUser { uid: 65534, gid: 65534 }),
            allowed_images: d.allowed_images.clone(),
            disk_quota_mb: settings.sandbox.disk_quota_mb,
            size_limit: AtomicU8::new(SIZE_LIMIT_UNKNOWN),
            image_aliases: d.image_aliases.clone(),
            pool: pool::WarmPool::new(&d.pool, &d.image_aliases, settings.sandbox.default_memory_mb),
        }
    }

    fn container_name(sandbox: &Sandbox) -> String {
        format!("stacyvm-{}", sandbox.id.as_str())
    }

    /// The name of the docker network the containers join.
    fn network_mode(&self) -> &str {
        match self.network.as_str() {
            "internal" => INTERNAL_NETWORK,
            other => other,
        }
    }

    fn docker_error(&self, what: &str, e: DockerError) -> ProviderError {
        self.conn.error(what, e)
    }

    fn file_error(&self, what: &str, e: FileError) -> ProviderError {
        match e {
            FileError::Provider(p) => p,
            FileError::Docker(e) => self.docker_error(what, e),
        }
    }

    fn files<'a>(&self, docker: &'a Docker, name: &'a str) -> Files<'a> {
        Files {
            docker,
            container: name,
            file_limit: self.file_limit,
            user: self.user,
            disk_quota_mb: (self.size_limit.load(Ordering::Relaxed) == SIZE_LIMIT_SUPPORTED)
                .then_some(self.disk_quota_mb),
        }
    }

    /// Makes sure the image is here, pulling it if it is not. Any failure is
    /// the client's: the image does not exist or cannot be fetched.
    async fn ensure_image(&self, docker: &Docker, image: &str) -> Result<(), ProviderError> {
        match docker.inspect_image(image).await {
            Ok(_) => return Ok(()),
            Err(e) if status_code(&e) == Some(404) => {}
            Err(e) => return Err(self.docker_error("image inspect", e)),
        }
        let (from_image, tag) = split_reference(image);
        let options = CreateImageOptions {
            from_image: Some(from_image),
            tag,
            ..Default::default()
        };
        let pull = async {
            let mut progress = docker.create_image(Some(options), None, None);
            while let Some(step) = progress.next().await {
                let step = step.map_err(|e| connection::message(&e))?;
                if let Some(detail) = step.error_detail {
                    return Err(detail.message.unwrap_or_else(|| "the pull failed".into()));
                }
            }
            Ok(())
        };
        let why = match tokio::time::timeout(PULL_TIMEOUT, pull).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => why,
            Err(_) => format!(
                "the pull did not finish within {}",
                crate::duration::format(PULL_TIMEOUT)
            ),
        };
        Err(ProviderError::InvalidInput(format!(
            "docker image {image:?} is not present locally and could not be pulled: {}",
            why.trim()
        )))
    }

    fn create_body(&self, sandbox: &Sandbox, size_limit: bool, pooled: bool) -> ContainerCreateBody {
        let mut labels = HashMap::from([
            (LABEL_SANDBOX.to_string(), sandbox.id.as_str().to_string()),
            (LABEL_TENANT.to_string(), sandbox.tenant.as_str().to_string()),
            (LABEL_INSTANCE.to_string(), self.instance.clone()),
            (LABEL_DATA_DIR.to_string(), self.data_dir.clone()),
        ]);
        if pooled {
            labels.insert(LABEL_POOL.to_string(), "1".to_string());
        }
        let memory = (sandbox.memory_mb << 20) as i64;
        // Commands running as another user need the killer (root) to hold
        // CAP_KILL; their own processes get no capability at all.
        let cap_add = (!self.user.is_root()).then(|| vec!["KILL".to_string()]);
        let storage_opt = size_limit.then(|| HashMap::from([("size".to_string(), format!("{}m", self.disk_quota_mb))]));
        ContainerCreateBody {
            image: Some(sandbox.image.clone()),
            entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
            cmd: Some(vec![KEEPALIVE.into()]),
            // The keep-alive runs as root, out of reach of the commands.
            user: Some("0:0".into()),
            // /workspace is part of the writable layer, so the size limit
            // covers it; `make_workspace` creates it for the user.
            working_dir: Some("/workspace".into()),
            labels: Some(labels),
            host_config: Some(HostConfig {
                memory: Some(memory),
                // Equal to memory: no swap, so the limit is a real limit.
                memory_swap: Some(memory),
                nano_cpus: Some(i64::from(sandbox.vcpus) * 1_000_000_000),
                pids_limit: Some(self.pids_limit),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add,
                storage_opt,
                security_opt: Some(vec!["no-new-privileges".into()]),
                init: Some(true),
                network_mode: Some(self.network_mode().to_string()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates the container, limiting its writable layer to the disk quota
    /// unless the storage driver is known not to support that. The first
    /// refusal is logged once, and later creates no longer ask.
    async fn create_container(
        &self,
        docker: &Docker,
        name: &str,
        sandbox: &Sandbox,
        pooled: bool,
    ) -> Result<(), ProviderError> {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        let mut size_limit = self.size_limit.load(Ordering::Relaxed) != SIZE_LIMIT_UNSUPPORTED;
        let mut network_made = false;
        loop {
            let e = match docker
                .create_container(Some(options.clone()), self.create_body(sandbox, size_limit, pooled))
                .await
            {
                Ok(_) => {
                    if size_limit && self.size_limit.swap(SIZE_LIMIT_SUPPORTED, Ordering::Relaxed) == SIZE_LIMIT_UNKNOWN
                    {
                        tracing::info!(
                            "docker sandboxes' writable layers, /workspace included, are limited to sandbox.disk_quota_mb = {} MiB",
                            self.disk_quota_mb
                        );
                    }
                    return Ok(());
                }
                Err(e) => e,
            };
            if size_limit && refuses_size_limit(&e) {
                if self.size_limit.swap(SIZE_LIMIT_UNSUPPORTED, Ordering::Relaxed) != SIZE_LIMIT_UNSUPPORTED {
                    tracing::warn!(
                        "the docker storage driver cannot limit a container's size, so sandbox.disk_quota_mb is not enforced for docker sandboxes (the daemon said: {})",
                        connection::message(&e).trim()
                    );
                }
                size_limit = false;
            } else if self.network == "internal"
                && !network_made
                && status_code(&e) == Some(404)
                && connection::message(&e).contains("network")
            {
                // Someone removed the network since the daemon was first seen.
                connection::ensure_internal_network(docker)
                    .await
                    .map_err(|e| self.docker_error("network create", e))?;
                network_made = true;
            } else {
                return Err(self.docker_error("container create", e));
            }
        }
    }

    /// This server's containers: sandbox id and container id.
    async fn own_containers(&self, docker: &Docker) -> Result<Vec<(String, String)>, DockerError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([(
                "label".to_string(),
                vec![format!("{LABEL_INSTANCE}={}", self.instance)],
            )])),
            ..Default::default()
        };
        let list = docker.list_containers(Some(options)).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let sandbox = c.labels?.get(LABEL_SANDBOX)?.clone();
                Some((sandbox, c.id?))
            })
            .collect())
    }

    async fn remove(&self, docker: &Docker, container: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match docker.remove_container(container, Some(options)).await {
            Ok(()) => Ok(()),
            // Already gone, or already being removed by another call.
            Err(e) if matches!(status_code(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates, prepares and starts the sandbox's container; `pooled`
    /// marks a warm-pool container.
    async fn make_container(&self, sandbox: &Sandbox, pooled: bool) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        self.ensure_image(&docker, &sandbox.image).await?;
        let name = Self::container_name(sandbox);
        self.create_container(&docker, &name, sandbox, pooled).await?;
        let ready = async {
            self.files(&docker, &name)
                .make_workspace()
                .await
                .map_err(|e| self.file_error("workspace setup", e))?;
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| self.docker_error("container start", e))
        };
        if let Err(e) = ready.await {
            self.remove(&docker, &name).await.ok();
            return Err(e);
        }
        Ok(())
    }

    /// Removes the container of sandbox `id`, if there is one; failures are
    /// logged (the next reconciliation removes what is left).
    async fn remove_container_of(&self, id: &crate::sandbox::id::SandboxId) {
        let Ok(docker) = self.conn.client() else { return };
        let name = format!("stacyvm-{}", id.as_str());
        if let Err(e) = self.remove(&docker, &name).await {
            tracing::warn!(container = name, "cannot remove container: {e}");
        }
    }

    /// Runs a job; a container that stopped (its keep-alive was killed, the
    /// daemon restarted) is started again once, its files intact. The live
    /// stdin is only consumed by an exec that started, so the retry has it.
    async fn run_job(
        &self,
        docker: &Docker,
        name: &str,
        job: Job,
        live_stdin: &mut Option<StdinStream>,
        out: &mut Collected,
        cancel: &CancellationToken,
    ) -> Result<Finished, ProviderError> {
        let retry = job.clone();
        match exec::run(docker, name, job, live_stdin, out, cancel).await {
            Ok(done) => Ok(done),
            Err(e) if status_code(&e) == Some(409) => {
                tracing::info!(container = name, "container was not running; starting it again");
                docker
                    .start_container(name, None)
                    .await
                    .map_err(|e| self.docker_error("container start", e))?;
                out.reset();
                exec::run(docker, name, retry, live_stdin, out, cancel)
                    .await
                    .map_err(|e| self.docker_error("exec", e))
            }
            Err(e) if status_code(&e) == Some(404) => Err(gone(name)),
            Err(e) => Err(self.docker_error("exec", e)),
        }
    }
}

/// Whether the daemon refused a create for its `StorageOpt` size: overlay2
/// off xfs with `pquota`, vfs, or a driver without quotas.
fn refuses_size_limit(e: &DockerError) -> bool {
    let message = connection::message(e).to_lowercase();
    matches!(status_code(e), Some(400 | 500))
        && ["storage-opt", "storage opt", "storageopt", "storage option", "quota"]
            .iter()
            .any(|m| message.contains(m))
}

fn gone(name: &str) -> ProviderError {
    ProviderError::Conflict(format!("the container {name} of this sandbox no longer exists"))
}

/// Splits `repo[:tag]` for a pull; a pull without a tag would fetch every
/// tag. Digests (`repo@sha256:...`) go whole.
fn split_reference(image: &str) -> (String, Option<String>) {
    if image.contains('@') {
        return (image.to_string(), None);
    }
    let name_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[name_start..].rfind(':') {
        Some(i) => (
            image[..name_start + i].to_string(),
            Some(image[name_start + i + 1..].to_string()),
        ),
        None => (image.to_string(), Some("latest".into())),
    }
}

#[async_trait]
impl Provider for DockerProvider {
    fn name(&self) -> &'static str {
        "docker"
    }

    fn status(&self) -> ProviderStatus {
        let reason = self.conn.down_reason();
        let available = reason.is_none();
        ProviderStatus {
            name: "docker".into(),
            available,
            reason,
            images: vec![self.default_image.clone()],
            capabilities: Capabilities {
                exec: available,
                files: available,
                stdin: available,
                shell: available,
                preview: available && self.network != "none",
                stats: available,
                network: available && self.network == "bridge",
            },
        }
    }

    fn resolve_image(&self, requested: Option<&str>) -> Result<String, ProviderError> {
        self.conn.client()?;
        let requested = requested.map(|r| {
            let r = r.trim();
            self.image_aliases.get(r).map_or(r, String::as_str)
        });
        match requested {
            None | Some("") => Ok(self.default_image.clone()),
            Some(image)
                if image.len() > MAX_IMAGE_REFERENCE || image.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Err(ProviderError::InvalidInput(format!(
                    "{image:?} is not a docker image reference"
                )))
            }
            Some(image) if !image_allowed(&self.allowed_images, image) => Err(ProviderError::InvalidInput(format!(
                "docker image {image:?} is not allowed on this server; allowed images match {}",
                self.allowed_images.join(", ")
            ))),
            Some(image) => Ok(image.to_string()),
        }
    }

    async fn create(&self, sandbox: &Sandbox) -> Result<(), ProviderError> {
        if self.pool.as_ref().is_some_and(|p| p.claim(sandbox)) {
            return Ok(());
        }
        self.make_container(sandbox, false).await
    }

    fn take_ready(&self, image: &str, memory_mb: u64, vcpus: u32) -> Option<crate::sandbox::id::SandboxId> {
        self.pool.as_ref()?.take(image, memory_mb, vcpus)
    }

    fn pool_status(&self, scope: Option<&crate::sandbox::id::TenantId>) -> Option<super::PoolStatus> {
        Some(self.pool.as_ref()?.status(scope))
    }

    async fn check_image(&self, image: &str) -> Result<Option<String>, ProviderError> {
        let docker = self.conn.client()?;
        match docker.inspect_image(image).await {
            Ok(_) => Ok(None),
            Err(e) if status_code(&e) == Some(404) => Ok(Some(format!(
                "docker image {image:?} is not present locally; a create would try to pull it"
            ))),
            Err(e) => Err(self.docker_error("image inspect", e)),
        }
    }

    async fn destroy(&self, sandbox: &Sandbox) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        self.remove(&docker, &Self::container_name(sandbox))
            .await
            .map_err(|e| self.docker_error("container remove", e))?;
        if let Some(pool) = &self.pool {
            pool.forget(&sandbox.id);
        }
        Ok(())
    }

    async fn exists(&self, sandbox: &Sandbox) -> bool {
        // Without a daemon nothing can be known: keep the registry entry.
        let Ok(docker) = self.conn.client() else { return true };
        match docker.inspect_container(&Self::container_name(sandbox), None).await {
            Ok(c) => c
                .config
                .and_then(|c| c.labels)
                .is_some_and(|l| l.get(LABEL_INSTANCE) == Some(&self.instance)),
            Err(e) if status_code(&e) == Some(404) => false,
            Err(_) => true,
        }
    }

    async fn remove_orphans(&self, known: &[Sandbox]) -> anyhow::Result<usize> {
        let Ok(docker) = self.conn.client() else { return Ok(0) };
        let known: HashSet<&str> = known.iter().map(|s| s.id.as_str()).collect();
        let mut removed = 0;
        for (sandbox, container) in self.own_containers(&docker).await? {
            let pooled = self.pool.as_ref().is_some_and(|p| p.holds(&sandbox));
            if !known.contains(sandbox.as_str()) && !pooled {
                self.remove(&docker, &container).await?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    async fn exec(&self, sandbox: &Sandbox, spec: ExecSpec) -> Result<ExecOutput, ProviderError> {
        self.exec_io(sandbox, spec, ExecIo::default()).await
    }

    /// Output is sent as the command writes it (kept bytes only, like the
    /// result); live stdin is fed while it runs and its end closes the
    /// command's stdin; a closed output receiver or a cancelled `io.cancel`
    /// kills the command.
    async fn exec_io(&self, sandbox: &Sandbox, spec: ExecSpec, io: ExecIo) -> Result<ExecOutput, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        let job = Job {
            script: exec::WRAPPER,
            args: exec::user_args(&spec),
            user: self.user.spec(),
            env: spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            stdin: spec.stdin.clone(),
            timeout: spec.timeout,
            limit: self.output_limit,
            killable: true,
        };
        let started = Instant::now();
        let mut out = Collected::with_tee(io.output);
        let mut live_stdin = io.stdin;
        let finished = self
            .run_job(&docker, &name, job, &mut live_stdin, &mut out, &io.cancel)
            .await?;
        let duration = started.elapsed();
        let code = match finished {
            Finished::Exited(code) => code,
            Finished::Cancelled => return Err(ProviderError::Cancelled),
            Finished::TimedOut => {
                return Err(ProviderError::Timeout {
                    timeout: spec.timeout,
                    partial: Box::new(out.into_output(137, duration)),
                });
            }
        };
        if code == exec::WORKDIR_EXIT {
            if out.take_sentinel(exec::WORKDIR_MISSING) {
                return Err(ProviderError::InvalidInput(format!(
                    "workdir {} does not exist in the sandbox",
                    spec.workdir
                )));
            }
            if out.take_sentinel(exec::WORKDIR_NOT_DIR) {
                return Err(ProviderError::InvalidInput(format!(
                    "workdir {} is not a directory",
                    spec.workdir
                )));
            }
        }
        if code == 137 && out.take_sentinel(exec::OOM_SENTINEL) {
            return Err(ProviderError::MemoryLimit {
                limit_mb: sandbox.memory_mb,
                partial: Box::new(out.into_output(code, duration)),
            });
        }
        Ok(out.into_output(code, duration))
    }

    async fn write_file(
        &self,
        sandbox: &Sandbox,
        path: &SandboxPath,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .write(path, data, mode)
            .await
            .map_err(|e| self.file_error("file upload", e))
    }

    async fn read_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<u8>, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .read(path)
            .await
            .map_err(|e| self.file_error("file download", e))
    }

    async fn delete_file(&self, sandbox: &Sandbox, path: &SandboxPath, recursive: bool) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .delete(path, recursive)
            .await
            .map_err(|e| self.file_error("file delete", e))
    }

    async fn list_files(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<FileEntry>, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .list(path)
            .await
            .map_err(|e| self.file_error("file list", e))
    }

    async fn stat_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<FileEntry, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .stat(path)
            .await
            .map_err(|e| self.file_error("file stat", e))
    }

    async fn move_file(&self, sandbox: &Sandbox, from: &SandboxPath, to: &SandboxPath) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .rename(from, to)
            .await
            .map_err(|e| self.file_error("file move", e))
    }

    async fn chmod_file(&self, sandbox: &Sandbox, path: &SandboxPath, mode: u32) -> Result<(), ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .chmod(path, mode)
            .await
            .map_err(|e| self.file_error("file chmod", e))
    }

    async fn glob(&self, sandbox: &Sandbox, pattern: &str) -> Result<Vec<String>, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        self.files(&docker, &name)
            .glob(pattern)
            .await
            .map_err(|e| self.file_error("glob", e))
    }

    async fn stats(&self, sandbox: &Sandbox) -> Result<SandboxStats, ProviderError> {
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        // One sample, at once: a streamed pair would cost a second.
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let sample = match docker.stats(&name, Some(options)).next().await {
            Some(Ok(sample)) => sample,
            Some(Err(e)) if status_code(&e) == Some(404) => return Err(gone(&name)),
            Some(Err(e)) => return Err(self.docker_error("stats", e)),
            None => return Ok(SandboxStats::default()),
        };
        let memory = sample.memory_stats.unwrap_or_default();
        let cpu_pct = cpu_percent(sample.cpu_stats.as_ref(), sample.precpu_stats.as_ref());
        Ok(SandboxStats {
            supported: true,
            cpu_pct,
            mem_bytes: memory.usage,
            mem_limit_bytes: Some(sandbox.memory_mb << 20),
            disk_bytes: None,
            disk_limit_bytes: (self.size_limit.load(Ordering::Relaxed) == SIZE_LIMIT_SUPPORTED)
                .then_some(self.disk_quota_mb << 20),
        })
    }

    async fn preview_target(&self, sandbox: &Sandbox, port: u16) -> Result<SocketAddr, ProviderError> {
        if self.network == "none" {
            return Err(ProviderError::Unsupported(
                "preview is not available for docker sandboxes here: docker.network is \"none\", so containers have no network address"
                    .into(),
            ));
        }
        let docker = self.conn.client()?;
        let name = Self::container_name(sandbox);
        let inspect = match docker.inspect_container(&name, None).await {
            Ok(inspect) => inspect,
            Err(e) if status_code(&e) == Some(404) => return Err(gone(&name)),
            Err(e) => return Err(self.docker_error("container inspect", e)),
        };
        let ip = inspect
            .network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(self.network_mode()))
            .and_then(|endpoint| endpoint.ip_address)
            .and_then(|ip| ip.parse::<IpAddr>().ok())
            .ok_or_else(|| {
                ProviderError::Conflict(format!(
                    "the container {name} has no address on the {} network; is it running?",
                    self.network_mode()
                ))
            })?;
        Ok(SocketAddr::new(ip, port))
    }

    async fn shutdown(&self) {
        if let Some(pool) = &self.pool {
            // Ready pool containers belong to no sandbox: never kept.
            for id in pool.drain() {
                self.remove_container_of(&id).await;
            }
        }
        if self.on_shutdown != "remove" {
            tracing::info!("docker containers are kept for re-adoption (docker.on_shutdown = keep)");
            return;
        }
        let Ok(docker) = self.conn.client() else { return };
        match self.own_containers(&docker).await {
            Ok(list) => {
                for (_, container) in &list {
                    if let Err(e) = self.remove(&docker, container).await {
                        tracing::warn!(container, "cannot remove container on shutdown: {e}");
                    }
                }
                tracing::info!(
                    removed = list.len(),
                    "docker containers removed (docker.on_shutdown = remove)"
                );
            }
            Err(e) => tracing::warn!("cannot list docker containers on shutdown: {e}"),
        }
    }
}

/// CPU use between the two samples of a stats answer, as a percentage of
/// one CPU; None when the daemon sent a single sample.
fn cpu_percent(
    now: Option<&bollard::models::ContainerCpuStats>,
    before: Option<&bollard::models::ContainerCpuStats>,
) -> Option<f64> {
    let (now, before) = (now?, before?);
    let used = now
        .cpu_usage
        .as_ref()?
        .total_usage?
        .checked_sub(before.cpu_usage.as_ref()?.total_usage?)?;
    let system = now.system_cpu_usage?.checked_sub(before.system_cpu_usage?)?;
    if system == 0 {
        return None;
    }
    let cpus = f64::from(now.online_cpus.unwrap_or(1).max(1));
    Some(used as f64 / system as f64 * cpus * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_user_takes_numeric_ids_only() {
        let table = [
            ("65534:65534", Some((65534, 65534))),
            ("1000", Some((1000, 1000))),
            ("0:0", Some((0, 0))),
            (" 1000:100 ", Some((1000, 100))),
            ("nobody", None),
            ("1000:users", None),
            ("-1:0", None),
            ("", None),
            (":", None),
            ("4294967296:0", None),
        ];
        for (spec, want) in table {
            assert_eq!(ContainerUser::parse(spec).map(|u| (u.uid, u.gid)), want, "{spec:?}");
        }
        assert!(ContainerUser::parse("0:5").unwrap().is_root());
        assert_eq!(ContainerUser::parse("7").unwrap().spec(), "7:7");
    }

    #[test]
    fn the_allow_list_matches_references_part_by_part() {
        let list: Vec<String> = ["python:3.*", "stacyvm-test-*", "ghcr.io/acme/*"]
            .into_iter()
            .map(String::from)
            .collect();
        let table = [
            ("python:3.12", true),
            ("python:2.7", false),
            ("python", false),
            ("python:3.12:5000/evil:1", false),
            ("stacyvm-test-busybox", true),
            ("stacyvm-test-busybox:latest", true),
            ("stacyvm-test-x/y", false),
            ("ghcr.io/acme/tool:1", true),
            ("ghcr.io/acme/sub/tool:1", false),
            ("docker.io/library/python:3.12", false),
        ];
        for (image, want) in table {
            assert_eq!(image_allowed(&list, image), want, "{image}");
        }
        assert!(image_allowed(&[], "anything:at-all"));
        // Untagged means :latest.
        assert!(image_allowed(&["alpine:latest".into()], "alpine"));
        assert!(!image_allowed(&["alpine:latest".into()], "alpine:3"));
    }

    #[test]
    fn docker_user_and_allowed_images_come_from_the_file_or_the_environment_and_are_validated() {
        let mut s = Settings::from_toml("[docker]\nuser = \"1000:1000\"\nallowed_images = [\"alpine:*\"]").unwrap();
        assert_eq!(
            (s.docker.user.as_str(), s.docker.allowed_images.len()),
            ("1000:1000", 1)
        );
        s.apply_env(|name| match name {
            "STACYVM_DOCKER_USER" => Some("0:0".into()),
            "STACYVM_DOCKER_ALLOWED_IMAGES" => Some(" python:*, alpine:*,,".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.docker.user, "0:0");
        assert_eq!(s.docker.allowed_images, ["python:*", "alpine:*"]);
        s.validate().unwrap();
        let defaults = Settings::default();
        assert_eq!(
            (defaults.docker.user.as_str(), defaults.docker.allowed_images.len()),
            ("65534:65534", 0)
        );

        s.docker.user = "nobody".into();
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "docker.user must be a numeric UID:GID such as \"65534:65534\" (\"0:0\" for root), not \"nobody\""
        );
        s.docker.user = "0:0".into();
        s.docker.allowed_images = vec!["python:*".into()];
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "docker.default_image \"alpine:latest\" is not matched by docker.allowed_images"
        );
    }

    #[test]
    fn a_size_refusal_is_told_apart_from_other_create_errors() {
        let err = |status_code: u16, message: &str| DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        };
        assert!(refuses_size_limit(&err(
            500,
            "--storage-opt is supported only for overlay over xfs with 'pquota' mount option"
        )));
        assert!(refuses_size_limit(&err(400, "Storage Option not supported: size")));
        assert!(!refuses_size_limit(&err(404, "No such image: x")));
        assert!(!refuses_size_limit(&err(500, "network stacyvm-internal not found")));
    }

    #[test]
    fn image_references_split_into_repository_and_tag() {
        let table = [
            ("alpine", ("alpine", Some("latest"))),
            ("alpine:3.20", ("alpine", Some("3.20"))),
            ("localhost:5000/team/img", ("localhost:5000/team/img", Some("latest"))),
            ("localhost:5000/team/img:v1", ("localhost:5000/team/img", Some("v1"))),
            ("img@sha256:abc", ("img@sha256:abc", None)),
        ];
        for (image, (repo, tag)) in table {
            assert_eq!(
                split_reference(image),
                (repo.to_string(), tag.map(String::from)),
                "{image}"
            );
        }
    }
}
