//! The seam between the sandbox service and the isolation back ends.
//!
//! A [`Provider`] creates and destroys sandboxes, runs commands in them and
//! moves files in and out. It never sees HTTP; the API never sees wasmtime or
//! Docker. Optional capabilities default to [`ProviderError::Unsupported`].

pub mod contexts;
pub mod docker;
pub mod glob;
pub mod wasm;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::sandbox::Sandbox;
use crate::sandbox::path::SandboxPath;

/// What went wrong in a provider, in domain terms. Converted to an HTTP
/// answer in exactly one place (`api::error`).
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A file or directory inside the sandbox does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The provider cannot serve requests right now (no Docker daemon...).
    #[error("{0}")]
    Unavailable(String),
    /// The provider cannot do this at all.
    #[error("{0}")]
    Unsupported(String),
    /// The request cannot work as given: unknown image, bad workdir, a shell
    /// feature the provider lacks.
    #[error("{0}")]
    InvalidInput(String),
    /// The target exists when it must not, or has the wrong kind.
    #[error("{0}")]
    Conflict(String),
    /// A quota (disk, sandbox count) would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The command ran past its deadline and was stopped.
    #[error("the command ran past its timeout of {} and was stopped", crate::duration::format(*.timeout))]
    Timeout {
        timeout: Duration,
        partial: Box<ExecOutput>,
    },
    /// The command used up its CPU budget and was stopped.
    #[error("the command used up its CPU budget of {fuel} fuel units and was stopped")]
    FuelExhausted { fuel: u64, partial: Box<ExecOutput> },
    /// The command was stopped for exceeding its memory limit.
    #[error("the command exceeded its memory limit of {limit_mb} MiB and was stopped")]
    MemoryLimit { limit_mb: u64, partial: Box<ExecOutput> },
    /// The client went away, and the command was stopped.
    #[error("the client disconnected and the command was stopped")]
    Cancelled,
    /// Anything else; the detail goes to the log only.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// How `command` is to be understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecMode {
    /// A shell command line; `args` are quoted and appended.
    #[default]
    Shell,
    /// `command` is the program and `args` its arguments; no shell.
    Argv,
}

/// A command to run, already validated by the service.
#[derive(Debug, Clone)]
pub struct ExecSpec {
    pub mode: ExecMode,
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: SandboxPath,
    pub timeout: Duration,
    pub stdin: Option<Vec<u8>>,
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdout,
    Stderr,
}

/// A piece of output, sent as soon as the command produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputChunk {
    pub stream: StreamKind,
    pub data: Vec<u8>,
}

/// Live input and output of an exec. Output is bounded by the output cap, so
/// the channel needs no bound; a closed receiver means the client left, and
/// the command is stopped.
#[derive(Default)]
pub struct ExecIo {
    pub output: Option<tokio::sync::mpsc::UnboundedSender<OutputChunk>>,
    /// Standard input fed while the command runs (instead of `spec.stdin`).
    pub stdin: Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>,
    /// Cancelled when the client that asked for the exec has gone away
    /// (its request was dropped): the provider stops the command as it
    /// does at the deadline, and frees everything it holds.
    pub cancel: CancellationToken,
}

/// What a finished command produced. A non-zero exit is a normal result.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output beyond the cap was dropped.
    pub truncated: bool,
    pub duration: Duration,
    /// Set when the guest crashed (a wasm trap such as stack exhaustion):
    /// a short machine-readable reason, like a signal name for a process.
    pub trap: Option<String>,
}

/// One entry of a directory listing or a stat.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub path: String,
    pub size: u64,
    /// Permission bits in octal, as `chmod` takes them: `"0644"`.
    pub mode: String,
    pub is_dir: bool,
    /// RFC 3339, UTC.
    pub mod_time: String,
}

/// Usage figures for `GET /stats`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SandboxStats {
    pub supported: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
}

/// How a provider describes itself in `GET /providers`.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub name: String,
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub images: Vec<String>,
    pub capabilities: Capabilities,
}

/// What a provider can do beyond the common API.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Capabilities {
    pub exec: bool,
    pub files: bool,
    pub stdin: bool,
    pub shell: bool,
    pub preview: bool,
    pub stats: bool,
    pub network: bool,
}

/// The figures of a provider's warm pool (`GET /pool/status`).
#[derive(Debug, Clone, Serialize, Default)]
pub struct PoolStatus {
    pub images: Vec<PoolImageStatus>,
    /// Live sandboxes that were served from the pool (in the caller's scope).
    pub serving: usize,
    /// Creates the pool served since the server started (in scope).
    pub served: u64,
    /// The `memory_mb` of pool containers; creates asking for other
    /// resources get a new container.
    pub memory_mb: u64,
    /// Why the last refill failed, until one succeeds.
    pub last_error: Option<String>,
}

/// One pooled image.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PoolImageStatus {
    pub image: String,
    pub ready: usize,
    pub creating: usize,
    pub target: usize,
}

#[async_trait]
pub trait Provider: Send + Sync {
    fn name(&self) -> &'static str;

    fn status(&self) -> ProviderStatus;

    /// The image a create request asked for, or the default, checked to be
    /// one this provider can run.
    fn resolve_image(&self, requested: Option<&str>) -> Result<String, ProviderError>;

    /// Makes the sandbox's resources. The sandbox is ready when this returns.
    async fn create(&self, sandbox: &Sandbox) -> Result<(), ProviderError>;

    /// Frees every resource of the sandbox. Destroying twice is not an error.
    async fn destroy(&self, sandbox: &Sandbox) -> Result<(), ProviderError>;

    /// Whether the sandbox's resources still exist (used after a restart).
    async fn exists(&self, sandbox: &Sandbox) -> bool;

    /// How many of `tenant`'s destroyed sandboxes still hold disk while
    /// they are deleted in the background.
    fn freeing(&self, _tenant: &crate::sandbox::id::TenantId) -> usize {
        0
    }

    /// Removes resources that belong to no sandbox in `known` (after a crash).
    async fn remove_orphans(&self, known: &[Sandbox]) -> anyhow::Result<usize>;

    async fn exec(&self, sandbox: &Sandbox, spec: ExecSpec) -> Result<ExecOutput, ProviderError>;

    /// Exec with live output and input. Providers that cannot stream get
    /// this default: stdin is read to its end first, and the output is sent
    /// when the command has finished.
    async fn exec_io(&self, sandbox: &Sandbox, mut spec: ExecSpec, io: ExecIo) -> Result<ExecOutput, ProviderError> {
        if let Some(mut stdin) = io.stdin {
            let mut buf = spec.stdin.take().unwrap_or_default();
            tokio::io::AsyncReadExt::read_to_end(&mut stdin, &mut buf)
                .await
                .map_err(|e| ProviderError::Internal(e.into()))?;
            spec.stdin = Some(buf);
        }
        let result = self.exec(sandbox, spec).await;
        if let Some(tx) = io.output {
            let out = match &result {
                Ok(out) => Some(out),
                Err(ProviderError::Timeout { partial, .. })
                | Err(ProviderError::FuelExhausted { partial, .. })
                | Err(ProviderError::MemoryLimit { partial, .. }) => Some(partial.as_ref()),
                Err(_) => None,
            };
            for (stream, data) in out
                .into_iter()
                .flat_map(|o| [(StreamKind::Stdout, &o.stdout), (StreamKind::Stderr, &o.stderr)])
            {
                if !data.is_empty() {
                    tx.send(OutputChunk {
                        stream,
                        data: data.clone(),
                    })
                    .ok();
                }
            }
        }
        result
    }

    async fn write_file(
        &self,
        sandbox: &Sandbox,
        path: &SandboxPath,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ProviderError>;
    async fn read_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<u8>, ProviderError>;
    async fn delete_file(&self, sandbox: &Sandbox, path: &SandboxPath, recursive: bool) -> Result<(), ProviderError>;
    async fn list_files(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<FileEntry>, ProviderError>;
    async fn stat_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<FileEntry, ProviderError>;
    async fn move_file(&self, sandbox: &Sandbox, from: &SandboxPath, to: &SandboxPath) -> Result<(), ProviderError>;
    async fn chmod_file(&self, sandbox: &Sandbox, path: &SandboxPath, mode: u32) -> Result<(), ProviderError>;
    async fn glob(&self, sandbox: &Sandbox, pattern: &str) -> Result<Vec<String>, ProviderError>;

    async fn stats(&self, _sandbox: &Sandbox) -> Result<SandboxStats, ProviderError> {
        Ok(SandboxStats::default())
    }

    /// Where HTTP for `port` inside the sandbox can be sent, for preview.
    async fn preview_target(&self, _sandbox: &Sandbox, _port: u16) -> Result<std::net::SocketAddr, ProviderError> {
        Err(ProviderError::Unsupported(format!(
            "preview is not supported by the {} provider: its sandboxes have no network",
            self.name()
        )))
    }

    /// Checks the `packages` of a create before anything is made: whether
    /// this provider installs packages, and whether each requirement is one
    /// it accepts.
    fn check_packages(&self, image: &str, packages: &[String]) -> Result<(), ProviderError> {
        let _ = image;
        if packages.is_empty() {
            return Ok(());
        }
        Err(ProviderError::Unsupported(format!(
            "the {} provider cannot install packages at create; install them with a command",
            self.name()
        )))
    }

    /// Installs the `packages` of a create into the new sandbox, before the
    /// create answers; stops when `cancel` fires (the client left).
    async fn install_packages(
        &self,
        _sandbox: &Sandbox,
        packages: &[String],
        _cancel: CancellationToken,
    ) -> Result<(), ProviderError> {
        self.check_packages("", packages)
    }

    /// Called once on graceful shutdown, after the server stops serving.
    async fn shutdown(&self) {}

    /// Code contexts, where the provider offers them.
    fn contexts(&self) -> Option<&dyn contexts::ContextBackend> {
        None
    }
    /// The id of a sandbox whose resources are already made and match this
    /// create (a warm pool), if the provider keeps any: the create must
    /// then use that id, and [`Provider::create`] finds it ready.
    fn take_ready(&self, _image: &str, _memory_mb: u64, _vcpus: u32) -> Option<crate::sandbox::id::SandboxId> {
        None
    }

    /// The warm pool's figures, if the provider has a pool; `scope` limits
    /// the per-tenant counts to one tenant.
    fn pool_status(&self, _scope: Option<&crate::sandbox::id::TenantId>) -> Option<PoolStatus> {
        None
    }

    /// Whether `image` (already resolved) can be created from without
    /// fetching anything: None when it can, or a note on what a create
    /// would have to do first.
    async fn check_image(&self, _image: &str) -> Result<Option<String>, ProviderError> {
        Ok(None)
    }
}
