//! Templates: named, stored creates. A template holds what a create takes
//! (provider, image, memory, vcpus, TTL, metadata) plus files to write and
//! setup commands to run, with the environment they run with. Spawning one
//! creates the sandbox, writes the files, runs the setup commands in order,
//! and answers only when all of that is done; if any of it fails, the
//! sandbox is destroyed and the answer says which step failed and how.
//!
//! Templates belong to a tenant and live in the registry's SQLite database,
//! so they survive restarts. Everything a template holds is bounded, since
//! a client writes it and the server replays it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use base64::Engine as _;
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::id::{OwnerId, TenantId};
use super::registry::SandboxRegistry;
use super::{
    CreateSandbox, ExecRequest, Sandbox, SandboxService, ServiceError, audit, outcome_of, parse_mode, parse_path,
};
use crate::duration;
use crate::provider::{ExecIo, ExecMode, ProviderError};

/// A tenant may keep this many templates: plenty for a catalogue of
/// environments, few enough that listing them stays cheap.
pub const MAX_TEMPLATES_PER_TENANT: usize = 1000;
const MAX_NAME: usize = 64;
const MAX_FILES: usize = 256;
/// Decoded file contents of one template together: a template seeds a
/// sandbox; it is not a way to store a disk image.
const MAX_FILE_BYTES: usize = 16 << 20;
const MAX_SETUP_COMMANDS: usize = 64;
const MAX_SETUP_COMMAND: usize = 64 << 10;
const MAX_ENV_VARS: usize = 256;
const MAX_ENV_BYTES: usize = 64 << 10;

/// A file a template writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    pub path: String,
    pub content: String,
    /// `"base64"` for binary content; UTF-8 text otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// A template as stored and answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    pub name: String,
    pub provider: String,
    pub image: String,
    pub memory_mb: u64,
    pub vcpus: u32,
    pub ttl: String,
    pub metadata: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
    pub files: Vec<TemplateFile>,
    pub setup: Vec<String>,
    pub setup_timeout: String,
    pub created_at: String,
    pub updated_at: String,
}

/// A template as a client sends it; what it leaves out takes the server's
/// defaults, fixed when the template is saved.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    pub name: String,
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<TemplateFile>,
    #[serde(default)]
    pub setup: Vec<String>,
    #[serde(default)]
    pub setup_timeout: Option<String>,
}

/// What a spawn may change: when the sandbox expires, extra labels, and
/// whose it is.
#[derive(Debug, Clone, Default)]
pub struct SpawnOverrides {
    pub ttl: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub owner_id: Option<OwnerId>,
}

/// Which step of a spawn failed, with its output; the sandbox is gone.
#[derive(Debug)]
pub struct SetupFailure {
    pub message: String,
    /// 1-based index of the setup command.
    pub step: usize,
    pub command: String,
    pub exit_code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
}

/// Makes the templates table beside the sandboxes.
pub fn create_table(registry: &SandboxRegistry) -> anyhow::Result<()> {
    registry.with_db(|db| {
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS templates (tenant TEXT NOT NULL, name TEXT NOT NULL, record TEXT NOT NULL,
             PRIMARY KEY (tenant, name))",
        )
    })?;
    Ok(())
}

/// Letters, digits, `.`, `_` and `-`, starting with a letter or digit: a
/// name that needs no escaping in a URL path.
pub fn validate_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::BadRequest(format!(
            "template name {name:?} is invalid: use 1 to {MAX_NAME} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )))
    }
}

fn decode(file: &TemplateFile) -> Result<Vec<u8>, ServiceError> {
    match file.encoding.as_deref() {
        None | Some("utf-8") | Some("utf8") => Ok(file.content.clone().into_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(&file.content)
            .map_err(|e| ServiceError::BadRequest(format!("file {}: content is not valid base64: {e}", file.path))),
        Some(other) => Err(ServiceError::BadRequest(format!(
            "file {}: unknown encoding {other:?}; use \"base64\"",
            file.path
        ))),
    }
}

fn validate_env(env: &BTreeMap<String, String>) -> Result<(), ServiceError> {
    if env.len() > MAX_ENV_VARS {
        return Err(ServiceError::BadRequest(format!(
            "env has more than {MAX_ENV_VARS} variables"
        )));
    }
    let size: usize = env.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_ENV_BYTES {
        return Err(ServiceError::BadRequest(format!(
            "env is larger than {MAX_ENV_BYTES} bytes"
        )));
    }
    if let Some(key) = env.keys().find(|k| k.is_empty() || k.contains('=') || k.contains('\0')) {
        return Err(ServiceError::BadRequest(format!(
            "invalid environment variable name {key:?}"
        )));
    }
    Ok(())
}

impl SandboxService {
    /// Checks a template as a create would be checked, fixes its defaults,
    /// and stores it; true when it is new.
    pub fn save_template(&self, tenant: &TenantId, input: TemplateInput) -> Result<(Template, bool), ServiceError> {
        let result = self.save_template_unaudited(tenant, input.clone());
        self.audit(
            audit::Entry::new("template.save", outcome_of(&result))
                .tenant(tenant.as_str())
                .subject(input.name),
        );
        result
    }

    fn save_template_unaudited(
        &self,
        tenant: &TenantId,
        input: TemplateInput,
    ) -> Result<(Template, bool), ServiceError> {
        validate_name(&input.name)?;
        let provider = input
            .provider
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| self.settings.providers.default.clone());
        let create = CreateSandbox {
            image: input.image.filter(|i| !i.trim().is_empty()),
            provider: Some(provider),
            memory_mb: input.memory_mb,
            vcpus: input.vcpus,
            ttl: input.ttl,
            metadata: input.metadata,
            owner_id: None,
            packages: Vec::new(),
        };
        let plan = self.plan_create(tenant, &create)?;
        validate_env(&input.env)?;
        if input.files.len() > MAX_FILES {
            return Err(ServiceError::BadRequest(format!(
                "a template may write at most {MAX_FILES} files"
            )));
        }
        let mut bytes = 0usize;
        for file in &input.files {
            parse_path(&file.path)?;
            bytes = bytes.saturating_add(decode(file)?.len());
            if let Some(mode) = &file.mode {
                parse_mode(mode)?;
            }
        }
        if bytes > MAX_FILE_BYTES {
            return Err(ServiceError::BadRequest(format!(
                "a template's files may hold at most {MAX_FILE_BYTES} bytes together"
            )));
        }
        if input.setup.len() > MAX_SETUP_COMMANDS {
            return Err(ServiceError::BadRequest(format!(
                "a template may run at most {MAX_SETUP_COMMANDS} setup commands"
            )));
        }
        for command in &input.setup {
            if command.trim().is_empty() {
                return Err(ServiceError::BadRequest("a setup command is empty".into()));
            }
            if command.len() > MAX_SETUP_COMMAND {
                return Err(ServiceError::BadRequest(format!(
                    "a setup command is longer than {MAX_SETUP_COMMAND} bytes"
                )));
            }
        }
        let max_timeout = self.limits(tenant).max_exec_timeout;
        let setup_timeout = match input.setup_timeout.as_deref() {
            Some(t) => duration::parse_positive(t).map_err(|e| ServiceError::BadRequest(e.to_string()))?,
            None => self.settings.exec.default_timeout.min(max_timeout),
        };
        if setup_timeout > max_timeout {
            return Err(ServiceError::ResourceLimit(format!(
                "setup_timeout {} is above the maximum of {}",
                duration::format(setup_timeout),
                duration::format(max_timeout)
            )));
        }
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let existing = self.template(tenant, &input.name)?;
        if existing.is_none() && self.count_templates(tenant)? >= MAX_TEMPLATES_PER_TENANT {
            return Err(ServiceError::ResourceLimit(format!(
                "this tenant already has the maximum of {MAX_TEMPLATES_PER_TENANT} templates"
            )));
        }
        let template = Template {
            name: input.name,
            provider: plan.provider.name().to_string(),
            image: plan.image,
            memory_mb: plan.memory_mb,
            vcpus: plan.vcpus,
            ttl: duration::format(plan.ttl),
            metadata: create.metadata,
            env: input.env,
            files: input.files,
            setup: input.setup,
            setup_timeout: duration::format(setup_timeout),
            created_at: existing.as_ref().map_or_else(|| now.clone(), |t| t.created_at.clone()),
            updated_at: now,
        };
        let record = serde_json::to_string(&template).map_err(|e| ProviderError::Internal(e.into()))?;
        self.registry
            .with_db(|db| {
                db.prepare_cached("INSERT OR REPLACE INTO templates (tenant, name, record) VALUES (?1, ?2, ?3)")?
                    .execute(params![tenant.as_str(), template.name, record])
            })
            .map_err(|e| ProviderError::Internal(e.into()))?;
        Ok((template, existing.is_none()))
    }

    /// The tenant's template called `name`, if it has one.
    pub fn template(&self, tenant: &TenantId, name: &str) -> Result<Option<Template>, ServiceError> {
        let record: Option<String> = self
            .registry
            .with_db(|db| {
                db.prepare_cached("SELECT record FROM templates WHERE tenant = ?1 AND name = ?2")?
                    .query_row(params![tenant.as_str(), name], |r| r.get(0))
                    .optional()
            })
            .map_err(|e| ProviderError::Internal(e.into()))?;
        record
            .map(|r| serde_json::from_str(&r).map_err(|e| ProviderError::Internal(e.into()).into()))
            .transpose()
    }

    /// The tenant's templates, by name.
    pub fn templates(&self, tenant: &TenantId) -> Result<Vec<Template>, ServiceError> {
        let records: Vec<String> = self
            .registry
            .with_db(|db| {
                let mut stmt = db.prepare_cached("SELECT record FROM templates WHERE tenant = ?1 ORDER BY name")?;
                let rows = stmt.query_map(params![tenant.as_str()], |r| r.get(0))?;
                rows.collect::<Result<Vec<String>, _>>()
            })
            .map_err(|e| ProviderError::Internal(e.into()))?;
        records
            .iter()
            .map(|r| serde_json::from_str(r).map_err(|e| ProviderError::Internal(e.into()).into()))
            .collect()
    }

    fn count_templates(&self, tenant: &TenantId) -> Result<usize, ServiceError> {
        let n: i64 = self
            .registry
            .with_db(|db| {
                db.prepare_cached("SELECT COUNT(*) FROM templates WHERE tenant = ?1")?
                    .query_row(params![tenant.as_str()], |r| r.get(0))
            })
            .map_err(|e| ProviderError::Internal(e.into()))?;
        Ok(n as usize)
    }

    /// Deletes the template; 404 when the tenant has none by that name.
    pub fn delete_template(&self, tenant: &TenantId, name: &str) -> Result<(), ServiceError> {
        let result = self
            .registry
            .with_db(|db| {
                db.prepare_cached("DELETE FROM templates WHERE tenant = ?1 AND name = ?2")?
                    .execute(params![tenant.as_str(), name])
            })
            .map_err(|e| ServiceError::from(ProviderError::Internal(e.into())))
            .and_then(|n| {
                if n == 0 {
                    Err(ServiceError::TemplateNotFound(name.to_string()))
                } else {
                    Ok(())
                }
            });
        self.audit(
            audit::Entry::new("template.delete", outcome_of(&result))
                .tenant(tenant.as_str())
                .subject(name),
        );
        result
    }

    /// Creates a sandbox from the template, writes its files and runs its
    /// setup commands; on any failure, and if the caller goes away before
    /// the end, the sandbox is destroyed.
    pub async fn spawn_template(
        self: &Arc<Self>,
        tenant: &TenantId,
        name: &str,
        overrides: SpawnOverrides,
    ) -> Result<Sandbox, ServiceError> {
        let owner = overrides.owner_id.as_ref().map(|o| o.as_str().to_string());
        let result = self.spawn_unaudited(tenant, name, overrides).await;
        let entry = match &result {
            Ok(sb) => audit::Entry::new("template.spawn", "ok").sandbox(sb.id.as_str()),
            Err(e) => audit::Entry::new("template.spawn", super::audit_outcome(e)),
        };
        self.audit(entry.tenant(tenant.as_str()).owner(owner.as_deref()).subject(name));
        result
    }

    async fn spawn_unaudited(
        self: &Arc<Self>,
        tenant: &TenantId,
        name: &str,
        overrides: SpawnOverrides,
    ) -> Result<Sandbox, ServiceError> {
        let template = self
            .template(tenant, name)?
            .ok_or_else(|| ServiceError::TemplateNotFound(name.to_string()))?;
        let mut metadata = template.metadata.clone();
        metadata.insert("template".into(), template.name.clone());
        metadata.extend(overrides.metadata);
        let create = CreateSandbox {
            image: Some(template.image.clone()),
            provider: Some(template.provider.clone()),
            memory_mb: Some(template.memory_mb),
            vcpus: Some(template.vcpus),
            ttl: Some(overrides.ttl.unwrap_or_else(|| template.ttl.clone())),
            metadata,
            owner_id: overrides.owner_id,
            packages: Vec::new(),
        };
        let sandbox = self.create(tenant, create).await?;
        let mut guard = SpawnGuard {
            service: self.clone(),
            tenant: tenant.clone(),
            id: sandbox.id.to_string(),
            armed: true,
        };
        let setup = self.set_up(tenant, &sandbox, &template).await;
        match setup {
            Ok(()) => {
                guard.armed = false;
                Ok(sandbox)
            }
            Err(e) => {
                guard.armed = false;
                self.destroy(tenant, sandbox.id.as_str()).await.ok();
                Err(e)
            }
        }
    }

    async fn set_up(&self, tenant: &TenantId, sandbox: &Sandbox, template: &Template) -> Result<(), ServiceError> {
        let id = sandbox.id.as_str();
        for file in &template.files {
            let mode = file.mode.as_deref().map(parse_mode).transpose()?.unwrap_or(0o644);
            self.write_file(tenant, id, &file.path, decode(file)?, mode)
                .await
                .map_err(|e| match e {
                    // Say which of the template's files did not fit.
                    ServiceError::Provider(ProviderError::QuotaExceeded(m)) | ServiceError::ResourceLimit(m) => {
                        ServiceError::ResourceLimit(format!("the template's file {}: {m}", file.path))
                    }
                    other => other,
                })?;
        }
        for (i, command) in template.setup.iter().enumerate() {
            let step = i + 1;
            let req = ExecRequest {
                command: command.clone(),
                args: vec![],
                mode: ExecMode::Shell,
                env: template.env.clone(),
                workdir: None,
                timeout: Some(template.setup_timeout.clone()),
                stdin: None,
            };
            let prepared = self.check_exec(tenant, id, req, false)?;
            match self.run_exec(prepared, ExecIo::default()).await {
                Ok(out) if out.exit_code == 0 => {}
                Ok(out) => {
                    return Err(ServiceError::SetupFailed(Box::new(SetupFailure {
                        message: format!("setup command {step} ({command}) exited with {}", out.exit_code),
                        step,
                        command: command.clone(),
                        exit_code: Some(out.exit_code),
                        stdout: out.stdout,
                        stderr: out.stderr,
                        truncated: out.truncated,
                    })));
                }
                Err(ServiceError::Provider(
                    e @ (ProviderError::Timeout { .. }
                    | ProviderError::FuelExhausted { .. }
                    | ProviderError::MemoryLimit { .. }),
                )) => {
                    let message = format!("setup command {step} ({command}) was stopped: {e}");
                    let partial = match e {
                        ProviderError::Timeout { partial, .. }
                        | ProviderError::FuelExhausted { partial, .. }
                        | ProviderError::MemoryLimit { partial, .. } => partial,
                        _ => unreachable!("matched above"),
                    };
                    return Err(ServiceError::SetupFailed(Box::new(SetupFailure {
                        message,
                        step,
                        command: command.clone(),
                        exit_code: None,
                        stdout: partial.stdout,
                        stderr: partial.stderr,
                        truncated: partial.truncated,
                    })));
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Destroys a spawned sandbox whose spawn did not finish (the client went
/// away mid-setup): a half-prepared sandbox must not outlive its request.
struct SpawnGuard {
    service: Arc<SandboxService>,
    tenant: TenantId,
    id: String,
    armed: bool,
}

impl Drop for SpawnGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (service, tenant, id) = (self.service.clone(), self.tenant.clone(), self.id.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = service.destroy(&tenant, &id).await {
                    tracing::warn!(%id, "cannot destroy the sandbox of an abandoned spawn: {e}");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_names_are_url_safe_and_bounded() {
        for good in ["python-dev", "a", "A.b_c-9", &"x".repeat(64)] {
            validate_name(good).unwrap();
        }
        for bad in ["", "-x", ".x", "a b", "a/b", "é", &"x".repeat(65), "a%2f"] {
            let Err(ServiceError::BadRequest(m)) = validate_name(bad) else {
                panic!("{bad:?} accepted");
            };
            assert!(m.starts_with(&format!("template name {bad:?} is invalid")), "{m}");
        }
    }

    #[test]
    fn file_contents_decode_as_text_or_base64() {
        let file = |content: &str, encoding: Option<&str>| TemplateFile {
            path: "a".into(),
            content: content.into(),
            encoding: encoding.map(String::from),
            mode: None,
        };
        assert_eq!(decode(&file("hi", None)).unwrap(), b"hi");
        assert_eq!(decode(&file("AAE=", Some("base64"))).unwrap(), [0, 1]);
        let Err(ServiceError::BadRequest(m)) = decode(&file("!!", Some("base64"))) else {
            panic!()
        };
        assert!(m.starts_with("file a: content is not valid base64"), "{m}");
        let Err(ServiceError::BadRequest(m)) = decode(&file("x", Some("hex"))) else {
            panic!()
        };
        assert_eq!(m, "file a: unknown encoding \"hex\"; use \"base64\"");
    }

    #[test]
    fn env_is_bounded_and_named_properly() {
        let mut env = BTreeMap::new();
        env.insert("A".to_string(), "1".to_string());
        validate_env(&env).unwrap();
        env.insert("B=C".into(), "1".into());
        assert!(validate_env(&env).is_err());
        let many: BTreeMap<String, String> = (0..257).map(|i| (format!("V{i}"), String::new())).collect();
        let Err(ServiceError::BadRequest(m)) = validate_env(&many) else {
            panic!()
        };
        assert_eq!(m, "env has more than 256 variables");
    }
}
