//! Sandboxes: the service the API calls, the registry, TTL reaping, tenancy.

pub mod audit;
pub mod contexts;
pub mod control;
pub mod events;
pub mod id;
pub mod metrics;
pub mod path;
pub mod quotas;
pub mod registry;
pub mod templates;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use self::id::{OwnerId, SandboxId, TenantId};
use self::path::SandboxPath;
use self::registry::SandboxRegistry;
use crate::duration;
use crate::provider::glob::GlobPattern;
use crate::provider::{
    ExecIo, ExecMode, ExecOutput, ExecSpec, FileEntry, Provider, ProviderError, ProviderStatus, SandboxStats,
};
use crate::settings::Settings;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxState {
    Creating,
    Running,
    Expired,
    Destroyed,
    Error,
}

impl SandboxState {
    /// The name clients see, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Creating => "creating",
            SandboxState::Running => "running",
            SandboxState::Expired => "expired",
            SandboxState::Destroyed => "destroyed",
            SandboxState::Error => "error",
        }
    }
}

/// A sandbox as the registry keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: SandboxId,
    pub tenant: TenantId,
    pub state: SandboxState,
    pub provider: String,
    pub image: String,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub created_at: SystemTime,
    pub expires_at: SystemTime,
    pub metadata: BTreeMap<String, String>,
    pub owner_id: Option<String>,
}

/// Errors of the sandbox service, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("sandbox {0} not found")]
    SandboxNotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    ResourceLimit(String),
    #[error("{0}")]
    Conflict(String),
    /// Over the tenant's exec rate: try again after `retry_after`.
    #[error("{message}")]
    RateLimited { message: String, retry_after: Duration },
    /// The caller's role does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error("template {0} not found")]
    TemplateNotFound(String),
    /// A template's setup failed; the sandbox was destroyed.
    #[error("{}", .0.message)]
    SetupFailed(Box<templates::SetupFailure>),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// A validated create request.
#[derive(Debug, Clone, Default)]
pub struct CreateSandbox {
    pub image: Option<String>,
    pub provider: Option<String>,
    pub memory_mb: Option<u64>,
    pub vcpus: Option<u32>,
    pub ttl: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub owner_id: Option<OwnerId>,
    /// Requirements installed into the sandbox before the create answers.
    pub packages: Vec<String>,
}

/// An exec request as received, before limits are applied.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub command: String,
    pub args: Vec<String>,
    pub mode: ExecMode,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub timeout: Option<String>,
    pub stdin: Option<Vec<u8>>,
}

/// An exec that passed every check and is ready to run.
pub struct PreparedExec {
    sandbox: Sandbox,
    provider: Arc<dyn Provider>,
    spec: ExecSpec,
    summary: String,
    /// Who asked, for the audit log (the exec may end in another task).
    actor: audit::Actor,
}

#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub owner_id: Option<String>,
    pub provider: Option<String>,
    pub state: Option<String>,
}

/// Records an exec once it ends, or, if its request is dropped first (the
/// client left), as stopped for that reason.
struct ExecRecord<'a> {
    service: &'a SandboxService,
    sandbox: &'a Sandbox,
    summary: &'a str,
    actor: &'a audit::Actor,
    started: std::time::Instant,
    done: bool,
}

impl ExecRecord<'_> {
    fn finish(&mut self, result: &Result<ExecOutput, ProviderError>) {
        self.done = true;
        self.service
            .record_exec(self.sandbox, self.summary, self.actor, self.started.elapsed(), result);
    }
}

impl Drop for ExecRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.done = true;
            let took = self.started.elapsed();
            self.service.record_exec(
                self.sandbox,
                self.summary,
                self.actor,
                took,
                &Err(ProviderError::Cancelled),
            );
        }
    }
}

/// Exec history kept per sandbox for `GET /logs`.
const HISTORY_LINES: usize = 200;
/// Metadata bounds: enough for labels, too small to use as storage.
const MAX_METADATA_ENTRIES: usize = 64;
const MAX_METADATA_BYTES: usize = 16 * 1024;

pub struct SandboxService {
    registry: SandboxRegistry,
    providers: HashMap<&'static str, Arc<dyn Provider>>,
    settings: Arc<Settings>,
    history: Mutex<HashMap<SandboxId, VecDeque<String>>>,
    events: events::EventBus,
    metrics: metrics::Metrics,
    /// Per-tenant quotas, with what creates under way reserve: counted
    /// with the tenant's sandboxes from the moment a create is admitted, so
    /// that parallel creates (a docker create may pull an image for
    /// seconds) cannot pass the quota.
    quotas: quotas::QuotaBook,
    audit: audit::AuditLog,
    /// Held while a sandbox's default code context is looked up or created.
    default_contexts: tokio::sync::Mutex<()>,
}

/// Locks a mutex even if a thread panicked while holding it: every value
/// behind the service's locks stays consistent between statements, so a
/// panic in one request must not poison the server for the next.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SandboxService {
    /// Opens the registry and reconciles it with what the providers hold:
    /// entries whose resources are gone are dropped, resources with no entry
    /// are removed, and whatever expired while the server was down is reaped.
    pub async fn start(settings: Arc<Settings>, providers: Vec<Arc<dyn Provider>>) -> anyhow::Result<SandboxService> {
        std::fs::create_dir_all(&settings.data_dir)?;
        let (registry, loaded) = SandboxRegistry::open(&settings.data_dir.join("registry.db"))?;
        templates::create_table(&registry)?;
        let providers: HashMap<_, _> = providers.into_iter().map(|p| (p.name(), p)).collect();
        let service = SandboxService {
            registry,
            providers,
            quotas: quotas::QuotaBook::new(settings.all_quotas()?),
            audit: audit::AuditLog::open(&settings.data_dir.join("audit.db"), &settings.audit)?,
            settings,
            history: Mutex::default(),
            events: events::EventBus::new(),
            metrics: metrics::Metrics::default(),
            default_contexts: tokio::sync::Mutex::new(()),
        };
        let mut kept = vec![];
        for sb in loaded {
            let exists = match service.providers.get(sb.provider.as_str()) {
                Some(p) => p.exists(&sb).await,
                None => false,
            };
            if exists {
                service.registry.adopt(sb.clone());
                kept.push(sb);
            } else {
                tracing::info!(id = %sb.id, "dropping registry entry whose resources are gone");
                service.registry.remove(&sb.id)?;
            }
        }
        for provider in service.providers.values() {
            let mine: Vec<Sandbox> = kept.iter().filter(|s| s.provider == provider.name()).cloned().collect();
            let removed = provider.remove_orphans(&mine).await?;
            if removed > 0 {
                tracing::info!(
                    provider = provider.name(),
                    removed,
                    "removed orphaned sandbox resources"
                );
            }
        }
        let reaped = service.reap_expired().await;
        tracing::info!(
            recovered = kept.len().saturating_sub(reaped),
            reaped,
            "sandbox registry loaded"
        );
        Ok(service)
    }

    /// Lets every provider finish (keep or remove its resources).
    pub async fn shutdown(&self) {
        for provider in self.providers.values() {
            provider.shutdown().await;
        }
    }

    /// Where preview traffic for `port` of the sandbox goes.
    pub async fn preview_target(
        &self,
        tenant: &TenantId,
        id: &str,
        port: u16,
    ) -> Result<std::net::SocketAddr, ServiceError> {
        let sb = self.get(tenant, id)?;
        Ok(self.provider(&sb.provider)?.preview_target(&sb, port).await?)
    }

    /// Like [`Self::preview_target`] for host-based preview, where the
    /// unguessable sandbox id in the host name is the credential.
    pub async fn preview_target_by_id(&self, id: &str, port: u16) -> Result<std::net::SocketAddr, ServiceError> {
        let sb = SandboxId::parse(id)
            .and_then(|sid| self.registry.get(&sid))
            .ok_or_else(|| ServiceError::SandboxNotFound(id.to_string()))?;
        Ok(self.provider(&sb.provider)?.preview_target(&sb, port).await?)
    }

    /// The Prometheus text of `GET /metrics/prometheus`: of the whole
    /// server (`None`) or of one tenant's sandboxes only.
    pub fn metrics_text(&self, scope: Option<&TenantId>) -> String {
        let mut live: BTreeMap<(String, String), usize> = BTreeMap::new();
        for sb in self.registry.filter(|sb| scope.is_none_or(|t| &sb.tenant == t)) {
            *live.entry((sb.provider, sb.state.as_str().to_string())).or_default() += 1;
        }
        let live: Vec<_> = live.into_iter().map(|((p, s), n)| (p, s, n)).collect();
        self.metrics.render(scope, &live)
    }

    /// Live events of `tenant`'s sandboxes.
    pub fn subscribe(&self, tenant: &TenantId) -> events::Subscription {
        self.events.subscribe(tenant)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn provider(&self, name: &str) -> Result<&Arc<dyn Provider>, ServiceError> {
        self.providers.get(name).ok_or_else(|| {
            ServiceError::BadRequest(format!("unknown provider {name:?}; known providers: wasm, docker"))
        })
    }

    pub fn provider_statuses(&self) -> Vec<(ProviderStatus, bool)> {
        let mut out: Vec<_> = self
            .providers
            .values()
            .map(|p| (p.status(), p.name() == self.settings.providers.default))
            .collect();
        out.sort_by(|a, b| b.0.name.cmp(&a.0.name));
        out
    }

    pub fn any_provider_available(&self) -> bool {
        self.providers.values().any(|p| p.status().available)
    }

    fn parse_ttl(&self, tenant: &TenantId, ttl: &str) -> Result<Duration, ServiceError> {
        let ttl = duration::parse_positive(ttl).map_err(|e| ServiceError::BadRequest(e.to_string()))?;
        let max = self.limits(tenant).max_ttl;
        if ttl > max {
            return Err(ServiceError::ResourceLimit(format!(
                "ttl {} is above the maximum of {}",
                duration::format(ttl),
                duration::format(max)
            )));
        }
        Ok(ttl)
    }

    /// The tenant's effective limits: its quota over the server-wide ones.
    pub fn limits(&self, tenant: &TenantId) -> quotas::Limits {
        let q = self.quotas.quota(tenant);
        quotas::Limits {
            max_sandboxes: q.max_sandboxes.unwrap_or(self.settings.sandbox.max_per_tenant),
            max_memory_mb: q.max_memory_mb,
            max_execs_per_minute: q.max_execs_per_minute,
            max_disk_mb: q.max_disk_mb,
            max_ttl: q.max_ttl.unwrap_or(self.settings.sandbox.max_ttl),
            max_exec_timeout: q.max_exec_timeout.unwrap_or(self.settings.exec.max_timeout),
            configured: !q.is_empty(),
        }
    }

    /// What the tenant's live sandboxes hold: their number, memory and disk;
    /// a destroyed sandbox keeps its disk reservation until its files are
    /// deleted.
    pub fn held(&self, tenant: &TenantId) -> quotas::Usage {
        let disk_mb = self.settings.sandbox.disk_quota_mb;
        let freeing: usize = self.providers.values().map(|p| p.freeing(tenant)).sum();
        let tally = self.registry.tally(tenant);
        quotas::Usage {
            sandboxes: tally.sandboxes,
            memory_mb: tally.memory_mb,
            disk_mb: disk_mb.saturating_mul((tally.sandboxes + freeing) as u64),
        }
    }

    pub async fn create(&self, tenant: &TenantId, req: CreateSandbox) -> Result<Sandbox, ServiceError> {
        let owner = req.owner_id.as_ref().map(|o| o.as_str().to_string());
        let result = self.create_sandbox(tenant, req).await;
        let entry = match &result {
            Ok(sb) => audit::Entry::new("sandbox.create", "ok")
                .sandbox(sb.id.as_str())
                .subject(format!("{} {}", sb.provider, sb.image)),
            Err(e) => audit::Entry::new("sandbox.create", audit_outcome(e)),
        };
        self.audit(entry.tenant(tenant.as_str()).owner(owner.as_deref()));
        result
    }

    /// Every check a create makes before any provider work: the provider,
    /// TTL, resources, metadata and image. Shared with admission.
    fn plan_create(&self, tenant: &TenantId, req: &CreateSandbox) -> Result<CreatePlan, ServiceError> {
        let s = &self.settings.sandbox;
        let provider_name = req.provider.as_deref().unwrap_or(&self.settings.providers.default);
        let provider = self.provider(provider_name)?.clone();
        let max_ttl = self.limits(tenant).max_ttl;
        let ttl = match &req.ttl {
            Some(t) => self.parse_ttl(tenant, t)?,
            None => s.default_ttl.min(max_ttl),
        };
        let memory_mb = req.memory_mb.unwrap_or(s.default_memory_mb);
        if memory_mb == 0 {
            return Err(ServiceError::BadRequest("memory_mb must be positive".into()));
        }
        if memory_mb > s.max_memory_mb {
            return Err(ServiceError::ResourceLimit(format!(
                "memory_mb {memory_mb} is above the maximum of {}",
                s.max_memory_mb
            )));
        }
        if provider_name == "wasm" && memory_mb > 4096 {
            return Err(ServiceError::BadRequest(
                "memory_mb above 4096 cannot be given to a wasm32 guest".into(),
            ));
        }
        let vcpus = req.vcpus.unwrap_or(1);
        if vcpus == 0 {
            return Err(ServiceError::BadRequest("vcpus must be positive".into()));
        }
        if vcpus > s.max_vcpus {
            return Err(ServiceError::ResourceLimit(format!(
                "vcpus {vcpus} is above the maximum of {}",
                s.max_vcpus
            )));
        }
        validate_metadata(&req.metadata)?;
        let image = provider.resolve_image(req.image.as_deref())?;
        provider.check_packages(&image, &req.packages)?;
        Ok(CreatePlan {
            provider,
            ttl,
            memory_mb,
            vcpus,
            image,
        })
    }

    /// Reserves a create's share of the tenant's quota. A destroyed
    /// sandbox keeps its disk reservation until its files are deleted in
    /// the background, which takes milliseconds unless it held very many
    /// files; a create refused only while such deletes are pending waits
    /// for them (a few seconds at most) instead of failing at once.
    async fn reserve_for_create(
        &self,
        tenant: &TenantId,
        memory_mb: u64,
    ) -> Result<quotas::Reservation<'_>, ServiceError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let freeing = || self.providers.values().any(|p| p.freeing(tenant) > 0);
        loop {
            // Read before the check: a delete that finishes during the
            // check still gets the create another try.
            let was_freeing = freeing();
            let refused = match self.quotas.reserve(
                tenant,
                &self.limits(tenant),
                || self.held(tenant),
                self.wanted(memory_mb),
            ) {
                Ok(reservation) => return Ok(reservation),
                Err(why) => why,
            };
            if !(was_freeing || freeing()) || tokio::time::Instant::now() >= deadline {
                return Err(ServiceError::ResourceLimit(refused));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// What a create reserves against the tenant's quota.
    fn wanted(&self, memory_mb: u64) -> quotas::Usage {
        quotas::Usage {
            sandboxes: 1,
            memory_mb,
            disk_mb: self.settings.sandbox.disk_quota_mb,
        }
    }

    async fn create_sandbox(&self, tenant: &TenantId, req: CreateSandbox) -> Result<Sandbox, ServiceError> {
        let CreatePlan {
            provider,
            ttl,
            memory_mb,
            vcpus,
            image,
        } = self.plan_create(tenant, &req)?;
        let _reservation = self.reserve_for_create(tenant, memory_mb).await?;
        let now = SystemTime::now();
        // A warm pool's ready resources come with their id; nothing may fail
        // between taking them and the provider's create, which claims them.
        let id = provider
            .take_ready(&image, memory_mb, vcpus)
            .unwrap_or_else(SandboxId::generate);
        let sandbox = Sandbox {
            id,
            tenant: tenant.clone(),
            state: SandboxState::Running,
            provider: provider.name().to_string(),
            image,
            memory_mb,
            vcpus,
            created_at: now,
            expires_at: now + ttl,
            metadata: req.metadata,
            owner_id: req.owner_id.map(OwnerId::into_string),
        };
        provider.create(&sandbox).await?;
        if !req.packages.is_empty() {
            // The install runs as a task of its own, so that a client who
            // leaves (dropping this future, which cancels the install) still
            // has its half-made sandbox destroyed.
            let cancel = tokio_util::sync::CancellationToken::new();
            let _stop_when_dropped = cancel.clone().drop_guard();
            let (install, made, packages) = (provider.clone(), sandbox.clone(), req.packages.clone());
            tokio::spawn(async move {
                let result = install.install_packages(&made, &packages, cancel).await;
                if result.is_err() {
                    install.destroy(&made).await.ok();
                }
                result
            })
            .await
            .map_err(|e| ProviderError::Internal(e.into()))??;
        }
        if let Err(e) = self.registry.put(&sandbox) {
            provider.destroy(&sandbox).await.ok();
            return Err(ProviderError::Internal(e).into());
        }
        tracing::info!(id = %sandbox.id, provider = %sandbox.provider, image = %sandbox.image, "sandbox created");
        self.metrics.created(&sandbox.tenant, &sandbox.provider);
        self.events.publish(
            &sandbox,
            "sandbox.created",
            serde_json::json!({"provider": sandbox.provider, "image": sandbox.image}),
        );
        Ok(sandbox)
    }

    /// Queues an audit entry.
    pub fn audit(&self, entry: audit::Entry) {
        self.audit.record(entry);
    }

    /// The audit log, for queries.
    pub fn audit_log(&self) -> &audit::AuditLog {
        &self.audit
    }

    /// The sandbox, if it exists and belongs to `tenant`; another tenant's
    /// sandbox is indistinguishable from a missing one.
    pub fn get(&self, tenant: &TenantId, id: &str) -> Result<Sandbox, ServiceError> {
        SandboxId::parse(id)
            .and_then(|id| self.registry.get(&id))
            .filter(|sb| &sb.tenant == tenant)
            .ok_or_else(|| ServiceError::SandboxNotFound(id.to_string()))
    }

    pub fn list(&self, tenant: &TenantId, filter: &ListFilter) -> Vec<Sandbox> {
        let mut list = self.registry.filter(|sb| {
            &sb.tenant == tenant
                && filter.owner_id.as_ref().is_none_or(|o| sb.owner_id.as_ref() == Some(o))
                && filter.provider.as_ref().is_none_or(|p| &sb.provider == p)
                && filter.state.as_ref().is_none_or(|s| sb.state.as_str() == s)
        });
        list.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| b.id.cmp(&a.id)));
        list
    }

    /// Destroys the sandbox if the tenant has it. Idempotent: an unknown id
    /// is already destroyed.
    pub async fn destroy(&self, tenant: &TenantId, id: &str) -> Result<(), ServiceError> {
        match self.get(tenant, id) {
            Ok(sb) => {
                let result = self.destroy_sandbox(&sb, "sandbox.destroyed").await;
                self.audit(
                    audit::Entry::new("sandbox.destroy", outcome_of(&result))
                        .tenant(tenant.as_str())
                        .owner(sb.owner_id.as_deref())
                        .sandbox(sb.id.as_str()),
                );
                result
            }
            Err(_) => Ok(()),
        }
    }

    async fn destroy_sandbox(&self, sb: &Sandbox, event: &'static str) -> Result<(), ServiceError> {
        if let Some(provider) = self.providers.get(sb.provider.as_str()) {
            provider.destroy(sb).await?;
        }
        self.registry.remove(&sb.id).map_err(ProviderError::Internal)?;
        lock(&self.history).remove(&sb.id);
        tracing::info!(id = %sb.id, "sandbox destroyed");
        self.metrics
            .destroyed(&sb.tenant, &sb.provider, event == "sandbox.expired");
        self.events.publish(sb, event, serde_json::json!({}));
        Ok(())
    }

    pub fn extend(&self, tenant: &TenantId, id: &str, ttl: &str) -> Result<Sandbox, ServiceError> {
        let mut sb = self.get(tenant, id)?;
        let ttl = self.parse_ttl(tenant, ttl)?;
        sb.expires_at = SystemTime::now() + ttl;
        self.registry.put(&sb).map_err(ProviderError::Internal)?;
        Ok(sb)
    }

    /// Destroys every expired sandbox; returns how many.
    pub async fn reap_expired(&self) -> usize {
        let now = SystemTime::now();
        // A provider that is down cannot free anything; its sandboxes are
        // reaped once it is back, instead of failing every tick.
        let down: Vec<&str> = self
            .providers
            .values()
            .filter(|p| !p.status().available)
            .map(|p| p.name())
            .collect();
        let expired = self
            .registry
            .filter(|sb| sb.expires_at <= now && !down.contains(&sb.provider.as_str()));
        let mut reaped = 0;
        for sb in expired {
            match self.destroy_sandbox(&sb, "sandbox.expired").await {
                Ok(()) => {
                    reaped += 1;
                    tracing::info!(id = %sb.id, "sandbox expired and was destroyed");
                }
                Err(e) => tracing::warn!(id = %sb.id, "cannot destroy expired sandbox: {e}"),
            }
        }
        reaped
    }

    pub async fn exec(&self, tenant: &TenantId, id: &str, req: ExecRequest) -> Result<ExecOutput, ServiceError> {
        let prepared = self.prepare_exec(tenant, id, req)?;
        self.run_exec(prepared, ExecIo::default()).await
    }

    /// Checks an exec request against the sandbox and the limits, before
    /// anything runs, so that a streaming answer can still carry the status.
    pub fn prepare_exec(&self, tenant: &TenantId, id: &str, req: ExecRequest) -> Result<PreparedExec, ServiceError> {
        let summary = summarize(&req.command, &req.args);
        let prepared = self.check_exec(tenant, id, req, true);
        if let Err(e) = &prepared {
            self.audit(
                audit::Entry::new("exec", audit_outcome(e))
                    .tenant(tenant.as_str())
                    .sandbox(id)
                    .subject(summary),
            );
        }
        prepared
    }

    /// The checks of [`Self::prepare_exec`]; `counted` charges the exec to
    /// the tenant's exec rate (a template's setup commands are not).
    fn check_exec(
        &self,
        tenant: &TenantId,
        id: &str,
        req: ExecRequest,
        counted: bool,
    ) -> Result<PreparedExec, ServiceError> {
        let sb = self.get(tenant, id)?;
        if sb.state != SandboxState::Running {
            return Err(ServiceError::Conflict(format!("sandbox {} is not running", sb.id)));
        }
        let limits = self.limits(tenant);
        let max_timeout = limits.max_exec_timeout;
        let timeout = match req.timeout.as_deref() {
            Some(t) => duration::parse_positive(t).map_err(|e| ServiceError::BadRequest(e.to_string()))?,
            None => self.settings.exec.default_timeout.min(max_timeout),
        };
        if timeout > max_timeout {
            return Err(ServiceError::ResourceLimit(format!(
                "timeout {} is above the maximum of {}",
                duration::format(timeout),
                duration::format(max_timeout)
            )));
        }
        if req.command.trim().is_empty() {
            return Err(ServiceError::BadRequest("command is empty".into()));
        }
        for key in req.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(ServiceError::BadRequest(format!(
                    "invalid environment variable name {key:?}"
                )));
            }
        }
        let workdir = SandboxPath::parse(req.workdir.as_deref().unwrap_or(path::WORKSPACE))
            .map_err(|e| ServiceError::BadRequest(format!("workdir: {e}")))?;
        let provider = self.provider(&sb.provider)?.clone();
        let summary = summarize(&req.command, &req.args);
        if counted && let Err(wait) = self.quotas.take_exec(tenant, &limits, std::time::Instant::now()) {
            return Err(ServiceError::RateLimited {
                message: format!(
                    "this tenant may start {} execs a minute; try again in {} s",
                    wait.limit,
                    quotas::retry_after_secs(wait.retry_after)
                ),
                retry_after: wait.retry_after,
            });
        }
        let spec = ExecSpec {
            mode: req.mode,
            command: req.command,
            args: req.args,
            env: req.env,
            workdir,
            timeout,
            stdin: req.stdin,
        };
        Ok(PreparedExec {
            sandbox: sb,
            provider,
            spec,
            summary,
            actor: audit::current_actor(),
        })
    }

    /// Runs a prepared exec; `io` can stream its output and feed its stdin.
    pub async fn run_exec(&self, prepared: PreparedExec, io: ExecIo) -> Result<ExecOutput, ServiceError> {
        let PreparedExec {
            sandbox: sb,
            provider,
            spec,
            summary,
            actor,
        } = prepared;
        // If this future is dropped before the exec ends (the client hung
        // up), the provider is told to stop the command, and the exec is
        // recorded as stopped.
        let client_left = io.cancel.clone().drop_guard();
        let mut record = ExecRecord {
            service: self,
            sandbox: &sb,
            summary: &summary,
            actor: &actor,
            started: std::time::Instant::now(),
            done: false,
        };
        let result = provider.exec_io(&sb, spec, io).await;
        client_left.disarm();
        record.finish(&result);
        result.map_err(|e| self.vanished(&sb, e))
    }

    /// Counts, publishes and logs how an exec ended.
    fn record_exec(
        &self,
        sb: &Sandbox,
        summary: &str,
        actor: &audit::Actor,
        took: Duration,
        result: &Result<ExecOutput, ProviderError>,
    ) {
        let outcome = match result {
            Ok(_) => "completed",
            Err(ProviderError::Timeout { .. }) => "timeout",
            Err(ProviderError::FuelExhausted { .. }) => "cpu_limit",
            Err(ProviderError::MemoryLimit { .. }) => "memory_limit",
            Err(_) => "failed",
        };
        self.metrics.exec(&sb.tenant, &sb.provider, outcome, took);
        let (kind, data) = match result {
            Ok(out) => (
                "exec.completed",
                serde_json::json!({"exit_code": out.exit_code, "duration_ms": out.duration.as_secs_f64() * 1000.0}),
            ),
            Err(ProviderError::Timeout { .. }) => ("exec.timeout", serde_json::json!({})),
            Err(ProviderError::FuelExhausted { .. }) => ("exec.limit", serde_json::json!({"limit": "cpu"})),
            Err(ProviderError::MemoryLimit { .. }) => ("exec.limit", serde_json::json!({"limit": "memory"})),
            Err(e) => ("exec.failed", serde_json::json!({"message": e.to_string()})),
        };
        self.events.publish(sb, kind, data);
        let outcome = match result {
            Ok(out) => format!("exit {} in {}", out.exit_code, duration::format(out.duration)),
            Err(ProviderError::Timeout { .. }) => "timed out".into(),
            Err(e) => format!("failed: {e}"),
        };
        let audited = match result {
            Ok(out) => format!("exit {}", out.exit_code),
            Err(ProviderError::Timeout { .. }) => "timeout".into(),
            Err(ProviderError::FuelExhausted { .. }) => "cpu_limit".into(),
            Err(ProviderError::MemoryLimit { .. }) => "memory_limit".into(),
            Err(ProviderError::Cancelled) => "cancelled: the client disconnected".into(),
            // The reason can name the daemon's address, which users may not read.
            Err(ProviderError::Unavailable(_)) => "unavailable".into(),
            Err(ProviderError::Internal(_)) => "internal".into(),
            Err(e) => format!("failed: {e}"),
        };
        self.audit(audit::Entry {
            key_id: actor.key_id.clone(),
            ..audit::Entry::new("exec", audited)
                .tenant(sb.tenant.as_str())
                .owner(sb.owner_id.as_deref())
                .sandbox(sb.id.as_str())
                .subject(summary)
        });
        let now = humantime::format_rfc3339_seconds(SystemTime::now());
        self.record(&sb.id, format!("{now} exec {summary}: {outcome}"));
    }

    /// The timeout a prepared exec will run with.
    pub fn timeout_of(prepared: &PreparedExec) -> Duration {
        prepared.spec.timeout
    }

    fn record(&self, id: &SandboxId, line: String) {
        let mut history = lock(&self.history);
        let lines = history.entry(id.clone()).or_default();
        while lines.len() >= HISTORY_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    pub fn logs(&self, tenant: &TenantId, id: &str, lines: usize) -> Result<Vec<String>, ServiceError> {
        let sb = self.get(tenant, id)?;
        let history = lock(&self.history);
        let Some(all) = history.get(&sb.id) else {
            return Ok(vec![]);
        };
        let skip = all.len().saturating_sub(lines);
        Ok(all.iter().skip(skip).cloned().collect())
    }

    pub async fn stats(&self, tenant: &TenantId, id: &str) -> Result<SandboxStats, ServiceError> {
        let sb = self.get(tenant, id)?;
        self.provider(&sb.provider)?
            .stats(&sb)
            .await
            .map_err(|e| self.vanished(&sb, e))
    }

    /// A provider error on a sandbox that was destroyed meanwhile (its
    /// directory or container went while the operation ran) is the 404 the
    /// operation would have got a moment later, not an internal error.
    fn vanished(&self, sb: &Sandbox, e: ProviderError) -> ServiceError {
        if self.registry.get(&sb.id).is_none() {
            return ServiceError::SandboxNotFound(sb.id.to_string());
        }
        e.into()
    }

    /// Resolves the sandbox and its provider for a files operation.
    pub fn files(&self, tenant: &TenantId, id: &str) -> Result<(Sandbox, Arc<dyn Provider>), ServiceError> {
        let sb = self.get(tenant, id)?;
        let provider = self.provider(&sb.provider)?.clone();
        Ok((sb, provider))
    }
}

/// Files operations go straight to the provider once the sandbox is found.
impl SandboxService {
    pub async fn write_file(
        &self,
        tenant: &TenantId,
        id: &str,
        path: &str,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ServiceError> {
        let size = data.len();
        let result = async {
            let (sb, p) = self.files(tenant, id)?;
            p.write_file(&sb, &parse_path(path)?, data, mode)
                .await
                .map_err(|e| self.vanished(&sb, e))
        }
        .await;
        self.audit_file(tenant, id, "file.write", format!("{path} ({size} bytes)"), &result);
        result
    }
    pub async fn read_file(&self, tenant: &TenantId, id: &str, path: &str) -> Result<Vec<u8>, ServiceError> {
        let (sb, p) = self.files(tenant, id)?;
        p.read_file(&sb, &parse_path(path)?)
            .await
            .map_err(|e| self.vanished(&sb, e))
    }
    pub async fn delete_file(
        &self,
        tenant: &TenantId,
        id: &str,
        path: &str,
        recursive: bool,
    ) -> Result<(), ServiceError> {
        let result = async {
            let (sb, p) = self.files(tenant, id)?;
            p.delete_file(&sb, &parse_path(path)?, recursive)
                .await
                .map_err(|e| self.vanished(&sb, e))
        }
        .await;
        self.audit_file(tenant, id, "file.delete", path.to_string(), &result);
        result
    }
    pub async fn list_files(&self, tenant: &TenantId, id: &str, path: &str) -> Result<Vec<FileEntry>, ServiceError> {
        let (sb, p) = self.files(tenant, id)?;
        p.list_files(&sb, &parse_path(path)?)
            .await
            .map_err(|e| self.vanished(&sb, e))
    }
    pub async fn stat_file(&self, tenant: &TenantId, id: &str, path: &str) -> Result<FileEntry, ServiceError> {
        let (sb, p) = self.files(tenant, id)?;
        p.stat_file(&sb, &parse_path(path)?)
            .await
            .map_err(|e| self.vanished(&sb, e))
    }
    pub async fn move_file(&self, tenant: &TenantId, id: &str, from: &str, to: &str) -> Result<(), ServiceError> {
        let result = async {
            let (sb, p) = self.files(tenant, id)?;
            p.move_file(&sb, &parse_path(from)?, &parse_path(to)?)
                .await
                .map_err(|e| self.vanished(&sb, e))
        }
        .await;
        self.audit_file(tenant, id, "file.move", format!("{from} -> {to}"), &result);
        result
    }
    pub async fn chmod_file(&self, tenant: &TenantId, id: &str, path: &str, mode: &str) -> Result<(), ServiceError> {
        let result = async {
            let (sb, p) = self.files(tenant, id)?;
            let mode = parse_mode(mode)?;
            p.chmod_file(&sb, &parse_path(path)?, mode)
                .await
                .map_err(|e| self.vanished(&sb, e))
        }
        .await;
        self.audit_file(tenant, id, "file.chmod", format!("{path} {mode}"), &result);
        result
    }
    pub async fn glob(&self, tenant: &TenantId, id: &str, pattern: &str) -> Result<Vec<String>, ServiceError> {
        let (sb, p) = self.files(tenant, id)?;
        // Bounded and normalised here, so every provider gets the same
        // pattern and the same 400 for one that is too large.
        let pattern = GlobPattern::parse(pattern).map_err(ServiceError::BadRequest)?;
        p.glob(&sb, &pattern.to_string())
            .await
            .map_err(|e| self.vanished(&sb, e))
    }
}

impl SandboxService {
    fn audit_file(
        &self,
        tenant: &TenantId,
        id: &str,
        action: &str,
        subject: String,
        result: &Result<(), ServiceError>,
    ) {
        let owner = self.get(tenant, id).ok().and_then(|sb| sb.owner_id);
        self.audit(
            audit::Entry::new(action, outcome_of(result))
                .tenant(tenant.as_str())
                .owner(owner.as_deref())
                .sandbox(id)
                .subject(subject),
        );
    }
}

/// A create's checked parameters.
struct CreatePlan {
    provider: Arc<dyn Provider>,
    ttl: Duration,
    memory_mb: u64,
    vcpus: u32,
    image: String,
}

/// `ok`, or what the failure answers, for the audit log.
fn outcome_of<T>(result: &Result<T, ServiceError>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => audit_outcome(e),
    }
}

fn audit_outcome(e: &ServiceError) -> String {
    let kind = match e {
        ServiceError::SandboxNotFound(_) | ServiceError::TemplateNotFound(_) => "not_found",
        ServiceError::BadRequest(_) => "bad_request",
        ServiceError::ResourceLimit(_) | ServiceError::RateLimited { .. } => "resource_limit",
        ServiceError::Conflict(_) => "conflict",
        ServiceError::Forbidden(_) => "forbidden",
        ServiceError::SetupFailed(_) => "setup_failed",
        ServiceError::Provider(p) => match p {
            ProviderError::NotFound(_) => "not_found",
            ProviderError::Unavailable(_) => "unavailable",
            ProviderError::Unsupported(_) => "unsupported",
            ProviderError::InvalidInput(_) => "bad_request",
            ProviderError::Conflict(_) => "conflict",
            ProviderError::QuotaExceeded(_)
            | ProviderError::FuelExhausted { .. }
            | ProviderError::MemoryLimit { .. } => "resource_limit",
            ProviderError::Timeout { .. } => "timeout",
            ProviderError::Cancelled => "cancelled",
            ProviderError::Internal(_) => "internal",
        },
    };
    // Internal details stay in the server log, and why a provider is
    // unavailable can name the daemon's address.
    match e {
        ServiceError::Provider(ProviderError::Internal(_) | ProviderError::Unavailable(_)) => kind.to_string(),
        _ => format!("{kind}: {e}"),
    }
}

fn parse_path(path: &str) -> Result<SandboxPath, ServiceError> {
    SandboxPath::parse(path).map_err(|e| ServiceError::BadRequest(e.to_string()))
}

/// Parses an octal permission string such as `"0644"` or `"755"`. Only
/// permission bits are accepted: setuid, setgid and sticky (`"4755"`) are
/// refused rather than masked, so a client never gets a mode it did not ask
/// for, and the host never gets a setuid file.
pub fn parse_mode(mode: &str) -> Result<u32, ServiceError> {
    let bad = || ServiceError::BadRequest(format!("mode {mode:?} is not an octal permission such as \"0644\""));
    let digits = mode.strip_prefix("0o").unwrap_or(mode);
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(bad());
    }
    let value = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if value & !0o777 != 0 {
        return Err(ServiceError::BadRequest(format!(
            "mode {mode:?} sets setuid, setgid or sticky bits; only permission bits (at most 0777) are allowed"
        )));
    }
    Ok(value)
}

fn validate_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ServiceError::BadRequest(format!(
            "metadata has more than {MAX_METADATA_ENTRIES} entries"
        )));
    }
    let size: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_METADATA_BYTES {
        return Err(ServiceError::BadRequest(format!(
            "metadata is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(ServiceError::BadRequest("metadata keys must not be empty".into()));
    }
    Ok(())
}

/// A short one-line form of a command for the exec history.
fn summarize(command: &str, args: &[String]) -> String {
    let mut s = command.replace('\n', " ");
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    if s.chars().count() > 120 {
        s = s.chars().take(117).collect::<String>() + "...";
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_octal_permissions() {
        assert_eq!(parse_mode("0644").unwrap(), 0o644);
        assert_eq!(parse_mode("755").unwrap(), 0o755);
        assert_eq!(parse_mode("0o700").unwrap(), 0o700);
        assert_eq!(parse_mode("0777").unwrap(), 0o777);
        assert_eq!(parse_mode("0").unwrap(), 0);
        for bad in ["", "rwx", "0999", "77777", "-1", "+644", "0o", "0x1ff", " 644"] {
            let Err(ServiceError::BadRequest(message)) = parse_mode(bad) else {
                panic!("{bad:?} parsed");
            };
            assert_eq!(
                message,
                format!("mode {bad:?} is not an octal permission such as \"0644\"")
            );
        }
    }

    #[test]
    fn setuid_setgid_and_sticky_modes_are_refused() {
        for bad in ["4755", "2755", "1777", "7777", "0o4755", "6644"] {
            let Err(ServiceError::BadRequest(message)) = parse_mode(bad) else {
                panic!("{bad:?} parsed");
            };
            assert_eq!(
                message,
                format!(
                    "mode {bad:?} sets setuid, setgid or sticky bits; only permission bits (at most 0777) are allowed"
                )
            );
        }
    }
}
