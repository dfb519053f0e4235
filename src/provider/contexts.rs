//! Code contexts as the sandbox service sees them: kept interpreters whose
//! state lives between runs, can be forked, rolls back when a cell fails,
//! and sleeps on disk when idle. A provider that offers them returns a
//! [`ContextBackend`] from `Provider::contexts`.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::Serialize;

use super::{ExecIo, ProviderError};
use crate::sandbox::Sandbox;
use crate::sandbox::path::SandboxPath;

/// A validated create request.
#[derive(Debug, Clone)]
pub struct ContextSpec {
    pub language: String,
    pub image: Option<String>,
    pub cwd: SandboxPath,
    pub env: BTreeMap<String, String>,
    /// The sandbox's default context for its language (`POST /code`).
    pub default: bool,
}

/// A context as clients see it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub image: String,
    pub cwd: String,
    /// `ready` (in memory) or `paused` (on disk).
    pub state: &'static str,
    #[serde(serialize_with = "crate::sandbox::contexts::rfc3339")]
    pub created_at: SystemTime,
    #[serde(serialize_with = "crate::sandbox::contexts::rfc3339")]
    pub last_used_at: SystemTime,
    pub memory_bytes: u64,
    #[serde(skip)]
    pub default: bool,
}

/// One cell to run, with the exec limits that apply to it.
#[derive(Debug, Clone)]
pub struct CellSpec {
    pub code: String,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

/// What a cell produced. A cell that raised is a normal result with
/// `error` set; one stopped by a limit is a `ProviderError` whose partial
/// output is in the error, and the context is rolled back either way.
#[derive(Debug, Clone, Default)]
pub struct CellOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub duration: Duration,
    /// A MIME bundle of the cell's last expression.
    pub result: Option<serde_json::Value>,
    /// `{name, value, traceback}` when the cell raised (or crashed).
    pub error: Option<serde_json::Value>,
    pub rolled_back: bool,
}

#[async_trait]
pub trait ContextBackend: Send + Sync {
    /// Languages this backend serves, and why the others are not.
    fn languages(&self) -> Vec<&'static str>;
    async fn create(&self, sandbox: &Sandbox, spec: ContextSpec) -> Result<ContextInfo, ProviderError>;
    async fn list(&self, sandbox: &Sandbox) -> Vec<ContextInfo>;
    async fn get(&self, sandbox: &Sandbox, id: &str) -> Result<ContextInfo, ProviderError>;
    /// Idempotent: deleting a context that is gone is not an error.
    async fn delete(&self, sandbox: &Sandbox, id: &str) -> Result<(), ProviderError>;
    async fn run(&self, sandbox: &Sandbox, id: &str, cell: CellSpec, io: ExecIo) -> Result<CellOutput, ProviderError>;
    /// A new context in the same sandbox holding a copy of `id`'s state.
    async fn fork(&self, sandbox: &Sandbox, id: &str) -> Result<ContextInfo, ProviderError>;
    /// Makes `child` a copy of `parent`: its files, and every context under
    /// the same id with its whole state.
    async fn fork_sandbox(&self, parent: &Sandbox, child: &Sandbox) -> Result<(), ProviderError>;
    /// Writes contexts idle past the configured time to disk.
    async fn pause_idle(&self);
}

/// The 404 of an unknown context.
pub fn not_found(id: &str) -> ProviderError {
    ProviderError::NotFound(format!("context {id} not found"))
}
