//! Code contexts and sandbox forks, as the API asks for them: tenancy and
//! input are checked here, the provider's [`ContextBackend`] does the rest.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::id::{SandboxId, TenantId};
use super::path::{self, SandboxPath};
use super::{Sandbox, SandboxService, SandboxState, ServiceError};
use crate::duration;
use crate::provider::contexts::{CellOutput, CellSpec, ContextBackend, ContextInfo, ContextSpec};
use crate::provider::{ExecIo, ExecOutput, ProviderError};

/// Serializes a time as RFC 3339 UTC seconds, like the Sandbox object.
pub fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_rfc3339_seconds(*time).to_string())
}

/// The most code one cell may carry (the request body is bounded too).
const MAX_CODE_BYTES: usize = 4 << 20;

/// A create request as received.
#[derive(Debug, Clone, Default)]
pub struct CreateContext {
    pub language: String,
    pub image: Option<String>,
    pub cwd: Option<String>,
    pub env: BTreeMap<String, String>,
}

/// A run request as received.
#[derive(Debug, Clone, Default)]
pub struct RunCell {
    pub code: String,
    pub timeout: Option<String>,
    pub stdin: Option<Vec<u8>>,
}

/// The languages a client may name, and what each is called elsewhere.
fn normalize_language(language: &str) -> Result<String, ServiceError> {
    match language.trim().to_ascii_lowercase().as_str() {
        "python" | "python3" | "py" => Ok("python".into()),
        "javascript" | "js" | "node" => Ok("javascript".into()),
        other => Err(ServiceError::BadRequest(format!(
            "unknown language {other:?}; use \"python\" or \"javascript\""
        ))),
    }
}

impl SandboxService {
    /// The running sandbox and its provider's contexts.
    fn context_target(&self, tenant: &TenantId, id: &str) -> Result<(Sandbox, &dyn ContextBackend), ServiceError> {
        let sb = self.get(tenant, id)?;
        if sb.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!("sandbox {} is not running", sb.id)));
        }
        let provider = self.provider(&sb.provider)?;
        let backend = provider.contexts().ok_or_else(|| {
            ServiceError::Provider(ProviderError::Unsupported(format!(
                "code contexts are not supported by the {} provider; create a wasm sandbox for them",
                sb.provider
            )))
        })?;
        Ok((sb, backend))
    }

    pub async fn context_create(
        &self,
        tenant: &TenantId,
        id: &str,
        req: CreateContext,
    ) -> Result<ContextInfo, ServiceError> {
        let (sb, backend) = self.context_target(tenant, id)?;
        let spec = self.context_spec(req, false)?;
        backend.create(&sb, spec).await.map_err(|e| self.vanished(&sb, e))
    }

    fn context_spec(&self, req: CreateContext, default: bool) -> Result<ContextSpec, ServiceError> {
        let language = normalize_language(&req.language)?;
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ServiceError::BadRequest(format!(
                    "invalid environment variable name {key:?}"
                )));
            }
        }
        let size: usize = req.env.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > 1 << 20 {
            return Err(ServiceError::BadRequest("env is larger than 1048576 bytes".into()));
        }
        let cwd = SandboxPath::parse(req.cwd.as_deref().unwrap_or(path::WORKSPACE))
            .map_err(|e| ServiceError::BadRequest(format!("cwd: {e}")))?;
        Ok(ContextSpec {
            language,
            image: req.image.filter(|i| !i.is_empty()),
            cwd,
            env: req.env,
            default,
        })
    }

    pub async fn context_list(&self, tenant: &TenantId, id: &str) -> Result<Vec<ContextInfo>, ServiceError> {
        let (sb, backend) = self.context_target(tenant, id)?;
        Ok(backend.list(&sb).await)
    }

    pub async fn context_get(&self, tenant: &TenantId, id: &str, ctx: &str) -> Result<ContextInfo, ServiceError> {
        let (sb, backend) = self.context_target(tenant, id)?;
        backend.get(&sb, ctx).await.map_err(|e| self.vanished(&sb, e))
    }

    /// Idempotent, like sandbox destroy: a context that is gone, or a
    /// sandbox the tenant cannot see, answers the same.
    pub async fn context_delete(&self, tenant: &TenantId, id: &str, ctx: &str) -> Result<(), ServiceError> {
        let Ok((sb, backend)) = self.context_target(tenant, id) else {
            return Ok(());
        };
        backend.delete(&sb, ctx).await.map_err(|e| self.vanished(&sb, e))
    }

    pub async fn context_fork(&self, tenant: &TenantId, id: &str, ctx: &str) -> Result<ContextInfo, ServiceError> {
        let (sb, backend) = self.context_target(tenant, id)?;
        backend.fork(&sb, ctx).await.map_err(|e| self.vanished(&sb, e))
    }

    /// Checks a run request; returns the sandbox id and the cell.
    pub fn prepare_cell(&self, tenant: &TenantId, id: &str, req: RunCell) -> Result<(Sandbox, CellSpec), ServiceError> {
        let (sb, _) = self.context_target(tenant, id)?;
        if req.code.len() > MAX_CODE_BYTES {
            return Err(ServiceError::BadRequest(format!(
                "code is longer than {MAX_CODE_BYTES} bytes"
            )));
        }
        let e = &self.settings.exec;
        let timeout = match req.timeout.as_deref() {
            Some(t) => duration::parse_positive(t).map_err(|e| ServiceError::BadRequest(e.to_string()))?,
            None => e.default_timeout,
        };
        if timeout > e.max_timeout {
            return Err(ServiceError::ResourceLimit(format!(
                "timeout {} is above the maximum of {}",
                duration::format(timeout),
                duration::format(e.max_timeout)
            )));
        }
        Ok((
            sb,
            CellSpec {
                code: req.code,
                stdin: req.stdin.unwrap_or_default(),
                timeout,
            },
        ))
    }

    /// Runs a checked cell in context `ctx`; `io` streams its output. The
    /// run is counted and recorded like an exec.
    pub async fn context_run(
        &self,
        sb: Sandbox,
        ctx: &str,
        cell: CellSpec,
        io: ExecIo,
    ) -> Result<CellOutput, ServiceError> {
        let provider = self.provider(&sb.provider)?.clone();
        let backend = provider
            .contexts()
            .ok_or_else(|| ServiceError::Provider(ProviderError::Unsupported("no contexts".into())))?;
        let client_left = io.cancel.clone().drop_guard();
        let started = std::time::Instant::now();
        let result = backend.run(&sb, ctx, cell, io).await;
        client_left.disarm();
        let as_exec: Result<ExecOutput, ProviderError> = match &result {
            Ok(out) => Ok(ExecOutput {
                exit_code: i32::from(out.error.is_some()),
                duration: out.duration,
                ..ExecOutput::default()
            }),
            Err(ProviderError::NotFound(m)) => Err(ProviderError::NotFound(m.clone())),
            Err(ProviderError::Timeout { timeout, partial }) => Err(ProviderError::Timeout {
                timeout: *timeout,
                partial: partial.clone(),
            }),
            Err(ProviderError::FuelExhausted { fuel, partial }) => Err(ProviderError::FuelExhausted {
                fuel: *fuel,
                partial: partial.clone(),
            }),
            Err(ProviderError::MemoryLimit { limit_mb, partial }) => Err(ProviderError::MemoryLimit {
                limit_mb: *limit_mb,
                partial: partial.clone(),
            }),
            Err(e) => Err(ProviderError::Conflict(e.to_string())),
        };
        if !matches!(result, Err(ProviderError::NotFound(_))) {
            self.record_exec(
                &sb,
                &format!("context {ctx} run"),
                &super::audit::current_actor(),
                started.elapsed(),
                &as_exec,
            );
        }
        result.map_err(|e| self.vanished(&sb, e))
    }

    /// The context `POST /code` runs in: the one named, or the sandbox's
    /// default context for the language, created on first use.
    pub async fn code_context(
        &self,
        tenant: &TenantId,
        id: &str,
        language: Option<&str>,
        context_id: Option<&str>,
    ) -> Result<String, ServiceError> {
        let (sb, backend) = self.context_target(tenant, id)?;
        if let Some(ctx) = context_id {
            return Ok(backend.get(&sb, ctx).await.map_err(|e| self.vanished(&sb, e))?.id);
        }
        let language = normalize_language(language.unwrap_or("python"))?;
        // One default per language, even when two first calls race.
        let _creating = self.default_contexts.lock().await;
        if let Some(found) = backend
            .list(&sb)
            .await
            .into_iter()
            .find(|c| c.default && c.language == language)
        {
            return Ok(found.id);
        }
        let req = CreateContext {
            language,
            ..CreateContext::default()
        };
        let spec = self.context_spec(req, true)?;
        Ok(backend.create(&sb, spec).await.map_err(|e| self.vanished(&sb, e))?.id)
    }

    /// Forks a sandbox: a new sandbox of the same tenant with a copy of the
    /// parent's files and of every context under the same ids. From then on
    /// the two are independent.
    pub async fn fork(
        &self,
        tenant: &TenantId,
        id: &str,
        ttl: Option<&str>,
        metadata: Option<BTreeMap<String, String>>,
    ) -> Result<Sandbox, ServiceError> {
        let (parent, backend) = self.context_target(tenant, id)?;
        let ttl = match ttl {
            Some(t) => self.parse_ttl(tenant, t)?,
            None => self.settings.sandbox.default_ttl.min(self.limits(tenant).max_ttl),
        };
        let metadata = metadata.unwrap_or_else(|| parent.metadata.clone());
        super::validate_metadata(&metadata)?;
        let _reservation = self
            .quotas
            .reserve(
                tenant,
                &self.limits(tenant),
                || self.held(tenant),
                self.wanted(parent.memory_mb),
            )
            .map_err(ServiceError::ResourceLimit)?;
        let now = SystemTime::now();
        let child = Sandbox {
            id: SandboxId::generate(),
            created_at: now,
            expires_at: now + ttl,
            metadata,
            ..parent.clone()
        };
        if let Err(e) = backend.fork_sandbox(&parent, &child).await {
            if let Ok(provider) = self.provider(&child.provider) {
                provider.destroy(&child).await.ok();
            }
            return Err(self.vanished(&parent, e));
        }
        if let Err(e) = self.registry.put(&child) {
            if let Ok(provider) = self.provider(&child.provider) {
                provider.destroy(&child).await.ok();
            }
            return Err(ProviderError::Internal(e).into());
        }
        tracing::info!(id = %child.id, parent = %parent.id, "sandbox forked");
        self.metrics.created(&child.tenant, &child.provider);
        self.events.publish(
            &child,
            "sandbox.created",
            serde_json::json!({"provider": child.provider, "image": child.image, "forked_from": parent.id.as_str()}),
        );
        Ok(child)
    }

    /// Pauses idle contexts of every provider (run by the reaper).
    pub async fn pause_idle_contexts(&self) {
        for provider in self.providers.values() {
            if let Some(backend) = provider.contexts() {
                backend.pause_idle().await;
            }
        }
    }
}
