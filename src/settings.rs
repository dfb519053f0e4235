//! Layered settings: built-in defaults, then an optional `stacyvm.toml`, then
//! `STACYVM_*` environment variables, then command-line flags. Everything is
//! validated before the server binds.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Deserializer};

use crate::duration;
pub use crate::provider::docker::pool::PoolSettings;
pub use crate::sandbox::audit::AuditSettings;
pub use crate::sandbox::quotas::TenantQuota;

/// All of the server's configuration, in one typed value.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Where everything the server writes lives: images, compile cache,
    /// sandboxes and the registry.
    pub data_dir: PathBuf,
    pub auth: AuthSettings,
    pub providers: ProviderSettings,
    pub sandbox: SandboxSettings,
    pub exec: ExecSettings,
    pub http: HttpSettings,
    pub wasm: WasmSettings,
    pub docker: DockerSettings,
    pub contexts: ContextSettings,
    /// When set, `{port}-{id}.{preview_domain}` hosts are proxied to the
    /// sandbox's port, and the Sandbox object carries `preview_domain`.
    pub preview_domain: Option<String>,
    /// Per-tenant quotas, `[quotas.<tenant>]`; see `sandbox::quotas`.
    pub quotas: BTreeMap<String, TenantQuota>,
    /// The audit log's retention; see `sandbox::audit`.
    pub audit: AuditSettings,
}

/// `[[auth.keys]]`. A key entry may also carry its tenant's quota fields
/// (`max_sandboxes = 5`), which are gathered into `quotas` by tenant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "RawAuthSettings")]
pub struct AuthSettings {
    pub keys: Vec<ApiKey>,
    /// Quota fields given on key entries, by tenant.
    pub quotas: BTreeMap<String, TenantQuota>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct RawAuthSettings {
    keys: Vec<RawApiKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    key: Secret,
    tenant: String,
    #[serde(default)]
    role: Role,
    max_sandboxes: Option<usize>,
    max_memory_mb: Option<u64>,
    max_execs_per_minute: Option<u32>,
    max_disk_mb: Option<u64>,
    max_ttl: Option<String>,
    max_exec_timeout: Option<String>,
}

impl TryFrom<RawAuthSettings> for AuthSettings {
    type Error = String;

    fn try_from(raw: RawAuthSettings) -> Result<AuthSettings, String> {
        let mut auth = AuthSettings::default();
        let duration = |field: &str, v: Option<String>| -> Result<Option<Duration>, String> {
            v.map(|v| duration::parse_positive(&v).map_err(|e| format!("{field}: {e}")))
                .transpose()
        };
        for k in raw.keys {
            let quota = TenantQuota {
                max_sandboxes: k.max_sandboxes,
                max_memory_mb: k.max_memory_mb,
                max_execs_per_minute: k.max_execs_per_minute,
                max_disk_mb: k.max_disk_mb,
                max_ttl: duration("max_ttl", k.max_ttl)?,
                max_exec_timeout: duration("max_exec_timeout", k.max_exec_timeout)?,
            };
            if !quota.is_empty() {
                auth.quotas
                    .entry(k.tenant.clone())
                    .or_default()
                    .merge(&quota, &k.tenant)?;
            }
            auth.keys.push(ApiKey {
                key: k.key,
                tenant: k.tenant,
                role: k.role,
            });
        }
        Ok(auth)
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: Secret,
    pub tenant: String,
    /// What the key may see beyond its own tenant; `user` when left out.
    #[serde(default)]
    pub role: Role,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &self.key)
            .field("tenant", &self.tenant)
            .field("role", &self.role)
            .finish()
    }
}

/// What a key may do. Every role works on its own tenant's sandboxes only;
/// the roles differ in what they may read about the whole server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Its own tenant: sandboxes, events and that tenant's metrics.
    #[default]
    User,
    /// A user that may also read the whole server's metrics and the
    /// providers' details (such as why the Docker daemon is unreachable).
    Operator,
    /// An operator, with the administrative actions still to come.
    Admin,
}

impl Role {
    /// Whether the role may read figures and details of the whole server.
    pub fn sees_whole_server(self) -> bool {
        self >= Role::Operator
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::User => "user",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "user" => Ok(Role::User),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!("role {other:?} is not one of user, operator, admin")),
        }
    }
}

/// A secret string whose `Debug` never prints it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderSettings {
    /// The provider used when a create request names none.
    pub default: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    #[serde(deserialize_with = "go_duration")]
    pub default_ttl: Duration,
    #[serde(deserialize_with = "go_duration")]
    pub max_ttl: Duration,
    /// Live sandboxes one tenant may hold at once.
    pub max_per_tenant: usize,
    pub default_memory_mb: u64,
    pub max_memory_mb: u64,
    pub max_vcpus: u32,
    /// Disk space one sandbox's files may take, in MiB.
    pub disk_quota_mb: u64,
    /// Files, directories and symlinks one sandbox may hold.
    pub max_entries: u64,
    /// How often the reaper looks for expired sandboxes.
    #[serde(deserialize_with = "go_duration")]
    pub reap_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecSettings {
    #[serde(deserialize_with = "go_duration")]
    pub default_timeout: Duration,
    #[serde(deserialize_with = "go_duration")]
    pub max_timeout: Duration,
    /// Bytes kept of each of stdout and stderr; the rest is dropped and the
    /// result says `truncated`.
    pub output_limit_bytes: usize,
    /// wasm fuel one exec may burn (CPU budget); it cannot be switched off.
    pub fuel: u64,
    /// Guests running at once; further execs wait for a slot.
    pub max_concurrent: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Largest JSON request body, which includes base64 file uploads.
    pub body_limit_bytes: usize,
    /// Largest raw file upload through `PUT /files`.
    pub file_limit_bytes: usize,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WasmSettings {
    /// Where downloaded wasm images and their compile cache live; defaults
    /// to `<data_dir>/images`. Servers may share one.
    pub image_dir: Option<PathBuf>,
    /// Read runtime definitions and image manifests from this directory
    /// (holding `runtimes/` and `wasm-images/`) instead of the built-in ones.
    pub catalog_dir: Option<PathBuf>,
    /// Never download images; fail if one is missing.
    pub offline: bool,
    /// The Python that builds images from recipes (CPython 3.14); defaults
    /// to `python3` on the PATH.
    pub build_python: Option<String>,
    /// Memory (MiB) of each pooled instance slot that stays mapped between
    /// execs and is reset in place; see `WasmSettings::keep_resident_bytes`.
    pub keep_resident_mb: Option<u64>,
    /// The PyPI-compatible simple index `pip install` resolves and downloads
    /// from; see `WasmSettings::package_index_url`.
    pub package_index: Option<String>,
}

impl WasmSettings {
    /// The default keeps a CPython 3.14 exec's working set resident: about
    /// half the exec time goes otherwise to page faults and `madvise`.
    pub const DEFAULT_KEEP_RESIDENT_MB: u64 = 16;

    pub fn keep_resident_bytes(&self) -> usize {
        (self.keep_resident_mb.unwrap_or(Self::DEFAULT_KEEP_RESIDENT_MB) as usize) << 20
    }

    /// The index `pip install` uses: `package_index`, else the one images
    /// come from (`STACYVM_PACKAGE_INDEX`, `PIP_INDEX_URL`, then PyPI).
    pub fn package_index_url(&self) -> String {
        self.package_index
            .clone()
            .unwrap_or_else(crate::runtime::fetch::index_base)
    }
}

/// How the docker provider reaches the daemon and shapes containers.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerSettings {
    /// Daemon address (`unix:///var/run/docker.sock`, `tcp://host:2375`);
    /// defaults to `DOCKER_HOST`, then the local socket.
    pub host: Option<String>,
    /// Container networking: `internal` (a stacyvm network with no egress
    /// that preview can still reach), `none`, or `bridge` (full egress).
    pub network: String,
    /// Processes one container may hold.
    pub pids_limit: i64,
    /// Image used when a docker create names none.
    pub default_image: String,
    /// On graceful shutdown: `keep` containers for re-adoption, or `remove` them.
    pub on_shutdown: String,
    /// How often a missing daemon is looked for again.
    #[serde(deserialize_with = "go_duration")]
    pub recheck_interval: Duration,
    /// Numeric `UID:GID` (or `UID`, with the group of the same number) that
    /// commands and file operations run as; `0:0` runs them as root.
    pub user: String,
    /// Globs an image reference must match to be created (`python:*`);
    /// empty allows any image.
    pub allowed_images: Vec<String>,
    /// Images served under another name: a create asking for a key gets
    /// the value (`"alpine:latest" = "mirror.internal/alpine:3.20"`).
    pub image_aliases: BTreeMap<String, String>,
    /// Ready containers kept for fast creates, `[docker.pool]`.
    pub pool: PoolSettings,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            host: None,
            network: "internal".into(),
            // Enough for a build or a test suite, far too few for a fork bomb
            // to hurt the host.
            pids_limit: 256,
            default_image: "alpine:latest".into(),
            on_shutdown: "keep".into(),
            recheck_interval: Duration::from_secs(5),
            // `nobody`: no file of the image belongs to it, so a command can
            // change nothing outside /workspace and /tmp.
            user: "65534:65534".into(),
            allowed_images: vec![],
            image_aliases: BTreeMap::new(),
            pool: PoolSettings::default(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bind: SocketAddr::from(([127, 0, 0, 1], 7423)),
            data_dir: PathBuf::from("stacyvm-data"),
            auth: AuthSettings::default(),
            providers: ProviderSettings::default(),
            sandbox: SandboxSettings::default(),
            exec: ExecSettings::default(),
            http: HttpSettings::default(),
            wasm: WasmSettings::default(),
            docker: DockerSettings::default(),
            contexts: ContextSettings::default(),
            preview_domain: None,
            quotas: BTreeMap::new(),
            audit: AuditSettings::default(),
        }
    }
}

/// Code contexts: kept interpreters whose state lives between runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextSettings {
    /// A context idle this long is written to disk and its memory freed.
    #[serde(deserialize_with = "go_duration")]
    pub idle_pause: Duration,
    /// Contexts one sandbox may hold, live or paused.
    pub max_per_sandbox: usize,
    /// Contexts held in memory across the whole server; past it, the one
    /// idle longest is paused to disk to make room.
    pub max_live: usize,
}

impl Default for ContextSettings {
    fn default() -> Self {
        ContextSettings {
            idle_pause: Duration::from_secs(120),
            // Enough for a notebook per language and a few forks.
            max_per_sandbox: 16,
            // About 3 MiB each when idle (a JavaScript context), so a few
            // GiB at most; an operator with larger contexts lowers it.
            max_live: 2000,
        }
    }
}

impl Default for ProviderSettings {
    fn default() -> Self {
        ProviderSettings { default: "wasm".into() }
    }
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            default_ttl: Duration::from_secs(30 * 60),
            max_ttl: Duration::from_secs(24 * 3600),
            max_per_tenant: 10_000,
            default_memory_mb: 512,
            max_memory_mb: 8192,
            max_vcpus: 16,
            disk_quota_mb: 512,
            // Far more than a project checkout needs; few enough that
            // walking the whole tree stays in the tens of milliseconds.
            max_entries: 100_000,
            // One second keeps expiry prompt while costing one map scan.
            reap_interval: Duration::from_secs(1),
        }
    }
}

impl Default for ExecSettings {
    fn default() -> Self {
        ExecSettings {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(10 * 60),
            // 1 MiB per stream: plenty for an agent to read, small enough
            // that a flood cannot balloon the server.
            output_limit_bytes: 1 << 20,
            // CPython burns about 6 G fuel a second here, so 600 G is about
            // 100 s of pure computation: above the default timeout, so the
            // wall clock normally stops a guest first.
            fuel: 600_000_000_000,
            // Each guest may hold up to its memory limit; 32 at once bounds
            // the worst case while keeping a 2-core box busy.
            max_concurrent: 32,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            body_limit_bytes: 16 << 20,
            file_limit_bytes: 64 << 20,
        }
    }
}

fn go_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    duration::parse(&s).map_err(serde::de::Error::custom)
}

/// Values given on the command line; each has a `STACYVM_` twin that clap
/// reads, so "flag beats environment" comes for free.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub bind: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads the layers in order: defaults, file, environment, flags.
    pub fn load(overrides: &Overrides) -> anyhow::Result<Settings> {
        let mut settings = match &overrides.config {
            Some(path) => Self::from_file(path)?,
            None if Path::new("stacyvm.toml").exists() => Self::from_file(Path::new("stacyvm.toml"))?,
            None => Settings::default(),
        };
        settings.apply_env(|name| std::env::var(name).ok())?;
        if let Some(bind) = overrides.bind {
            settings.bind = bind;
        }
        if let Some(dir) = &overrides.data_dir {
            settings.data_dir = dir.clone();
        }
        settings.validate()?;
        Ok(settings)
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Settings> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    pub fn from_toml(text: &str) -> anyhow::Result<Settings> {
        Ok(toml::from_str(text)?)
    }

    /// Applies `STACYVM_*` variables. `lookup` is injectable for tests.
    pub fn apply_env(&mut self, lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        fn num<T: std::str::FromStr>(name: &str, v: &str) -> anyhow::Result<T> {
            v.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{name}={v:?} is not a valid number"))
        }
        fn dur(name: &str, v: &str) -> anyhow::Result<Duration> {
            duration::parse(v).with_context(|| format!("{name} is invalid"))
        }
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        if let Some(v) = get("STACYVM_BIND") {
            self.bind = v
                .parse()
                .map_err(|_| anyhow::anyhow!("STACYVM_BIND={v:?} is not an ADDR:PORT"))?;
        }
        if let Some(v) = get("STACYVM_CONTEXT_IDLE_PAUSE") {
            self.contexts.idle_pause = dur("STACYVM_CONTEXT_IDLE_PAUSE", &v)?;
        }
        if let Some(v) = get("STACYVM_CONTEXTS_MAX_LIVE") {
            self.contexts.max_live = num("STACYVM_CONTEXTS_MAX_LIVE", &v)?;
        }
        if let Some(v) = get("STACYVM_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = get("STACYVM_DEFAULT_PROVIDER") {
            self.providers.default = v;
        }
        if let Some(v) = get("STACYVM_API_KEYS") {
            // `key:tenant[:role],...`, for deployments that keep secrets in
            // the environment rather than a file.
            self.auth.keys = v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|entry| {
                    let mut fields = entry.trim().split(':');
                    let (Some(key), Some(tenant), role, None) =
                        (fields.next(), fields.next(), fields.next(), fields.next())
                    else {
                        bail!("STACYVM_API_KEYS entries must be key:tenant or key:tenant:role");
                    };
                    let role = match role {
                        None => Role::User,
                        Some(r) => r.parse().map_err(|e| anyhow::anyhow!("STACYVM_API_KEYS: {e}"))?,
                    };
                    Ok(ApiKey {
                        key: Secret::new(key),
                        tenant: tenant.to_string(),
                        role,
                    })
                })
                .collect::<anyhow::Result<_>>()?;
        }
        let s = &mut self.sandbox;
        if let Some(v) = get("STACYVM_DEFAULT_TTL") {
            s.default_ttl = dur("STACYVM_DEFAULT_TTL", &v)?;
        }
        if let Some(v) = get("STACYVM_MAX_TTL") {
            s.max_ttl = dur("STACYVM_MAX_TTL", &v)?;
        }
        if let Some(v) = get("STACYVM_MAX_SANDBOXES") {
            s.max_per_tenant = num("STACYVM_MAX_SANDBOXES", &v)?;
        }
        if let Some(v) = get("STACYVM_DISK_QUOTA_MB") {
            s.disk_quota_mb = num("STACYVM_DISK_QUOTA_MB", &v)?;
        }
        if let Some(v) = get("STACYVM_MAX_ENTRIES") {
            s.max_entries = num("STACYVM_MAX_ENTRIES", &v)?;
        }
        if let Some(v) = get("STACYVM_REAP_INTERVAL") {
            s.reap_interval = dur("STACYVM_REAP_INTERVAL", &v)?;
        }
        let e = &mut self.exec;
        if let Some(v) = get("STACYVM_DEFAULT_TIMEOUT") {
            e.default_timeout = dur("STACYVM_DEFAULT_TIMEOUT", &v)?;
        }
        if let Some(v) = get("STACYVM_MAX_TIMEOUT") {
            e.max_timeout = dur("STACYVM_MAX_TIMEOUT", &v)?;
        }
        if let Some(v) = get("STACYVM_OUTPUT_LIMIT") {
            e.output_limit_bytes = num("STACYVM_OUTPUT_LIMIT", &v)?;
        }
        if let Some(v) = get("STACYVM_FUEL") {
            e.fuel = num("STACYVM_FUEL", &v)?;
        }
        if let Some(v) = get("STACYVM_MAX_CONCURRENT_EXECS") {
            e.max_concurrent = num("STACYVM_MAX_CONCURRENT_EXECS", &v)?;
        }
        if let Some(v) = get("STACYVM_BODY_LIMIT") {
            self.http.body_limit_bytes = num("STACYVM_BODY_LIMIT", &v)?;
        }
        if let Some(v) = get("STACYVM_FILE_LIMIT") {
            self.http.file_limit_bytes = num("STACYVM_FILE_LIMIT", &v)?;
        }
        if let Some(v) = get("STACYVM_IMAGE_DIR") {
            self.wasm.image_dir = Some(v.into());
        }
        if let Some(v) = get("STACYVM_KEEP_RESIDENT_MB") {
            self.wasm.keep_resident_mb = Some(num("STACYVM_KEEP_RESIDENT_MB", &v)?);
        }
        if let Some(v) = get("STACYVM_BUILD_PYTHON") {
            self.wasm.build_python = Some(v);
        }
        if let Some(v) = get("STACYVM_CATALOG_DIR") {
            self.wasm.catalog_dir = Some(v.into());
        }
        if let Some(v) = get("STACYVM_DOCKER_HOST") {
            self.docker.host = Some(v);
        }
        if let Some(v) = get("STACYVM_DOCKER_NETWORK") {
            self.docker.network = v;
        }
        if let Some(v) = get("STACYVM_DOCKER_DEFAULT_IMAGE") {
            self.docker.default_image = v;
        }
        if let Some(v) = get("STACYVM_DOCKER_ON_SHUTDOWN") {
            self.docker.on_shutdown = v;
        }
        if let Some(v) = get("STACYVM_DOCKER_USER") {
            self.docker.user = v;
        }
        if let Some(v) = get("STACYVM_DOCKER_ALLOWED_IMAGES") {
            self.docker.allowed_images = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("STACYVM_DOCKER_IMAGE_ALIASES") {
            // `name=target,...`
            self.docker.image_aliases = v
                .split(',')
                .filter(|p| !p.trim().is_empty())
                .map(|pair| match pair.split_once('=') {
                    Some((from, to)) => Ok((from.trim().to_string(), to.trim().to_string())),
                    None => bail!("STACYVM_DOCKER_IMAGE_ALIASES entries must be name=target"),
                })
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(v) = get("STACYVM_DOCKER_POOL_IMAGES") {
            self.docker.pool.images = v
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = get("STACYVM_DOCKER_POOL_SIZE") {
            self.docker.pool.size = num("STACYVM_DOCKER_POOL_SIZE", &v)?;
        }
        if let Some(v) = get("STACYVM_AUDIT_RETENTION") {
            self.audit.retention = dur("STACYVM_AUDIT_RETENTION", &v)?;
        }
        if let Some(v) = get("STACYVM_PREVIEW_DOMAIN") {
            self.preview_domain = Some(v);
        }
        if let Some(v) = get("STACYVM_PACKAGE_INDEX") {
            self.wasm.package_index = Some(v);
        }
        if let Some(v) = get("STACYVM_OFFLINE") {
            self.wasm.offline = matches!(v.as_str(), "1" | "true" | "yes");
        }
        Ok(())
    }

    /// Refuses settings that could not work, naming the setting.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.contexts.idle_pause.is_zero() {
            bail!("contexts.idle_pause must be positive");
        }
        if self.contexts.max_live == 0 || self.contexts.max_per_sandbox == 0 {
            bail!("contexts.max_live and contexts.max_per_sandbox must be positive");
        }
        if let Some(index) = &self.wasm.package_index
            && !(index.starts_with("https://") || index.starts_with("http://"))
        {
            bail!("wasm.package_index must be an http:// or https:// URL, not {index:?}");
        }
        if self.wasm.keep_resident_mb.is_some_and(|mb| mb > 4096) {
            bail!("wasm.keep_resident_mb must be at most 4096 (a wasm32 memory's size)");
        }
        if !["wasm", "docker"].contains(&self.providers.default.as_str()) {
            bail!(
                "providers.default must be \"wasm\" or \"docker\", not {:?}",
                self.providers.default
            );
        }
        let s = &self.sandbox;
        if s.default_ttl.is_zero() || s.max_ttl.is_zero() {
            bail!("sandbox.default_ttl and sandbox.max_ttl must be positive");
        }
        if s.default_ttl > s.max_ttl {
            bail!("sandbox.default_ttl is above sandbox.max_ttl");
        }
        if s.default_memory_mb == 0 || s.default_memory_mb > s.max_memory_mb {
            bail!("sandbox.default_memory_mb must be between 1 and sandbox.max_memory_mb");
        }
        // wasm32 linear memory cannot exceed 4 GiB.
        if s.max_memory_mb > 1 << 20 {
            bail!("sandbox.max_memory_mb is unreasonably large");
        }
        if s.max_per_tenant == 0 || s.disk_quota_mb == 0 || s.max_vcpus == 0 || s.max_entries == 0 {
            bail!(
                "sandbox.max_per_tenant, sandbox.disk_quota_mb, sandbox.max_entries and sandbox.max_vcpus must be positive"
            );
        }
        // 1 PiB: beyond any disk, and far from overflowing a byte count.
        if s.disk_quota_mb > 1 << 30 {
            bail!("sandbox.disk_quota_mb must be at most 1073741824 (1 PiB)");
        }
        if s.reap_interval.is_zero() {
            bail!("sandbox.reap_interval must be positive");
        }
        let e = &self.exec;
        if e.default_timeout.is_zero() || e.default_timeout > e.max_timeout {
            bail!("exec.default_timeout must be positive and at most exec.max_timeout");
        }
        if e.fuel == 0 {
            bail!("exec.fuel must be positive: fuel metering cannot be switched off");
        }
        if e.output_limit_bytes == 0 || e.max_concurrent == 0 {
            bail!("exec.output_limit_bytes and exec.max_concurrent must be positive");
        }
        if self.http.body_limit_bytes < 1024 || self.http.file_limit_bytes < 1024 {
            bail!("http.body_limit_bytes and http.file_limit_bytes must be at least 1024");
        }
        let d = &self.docker;
        if !["internal", "none", "bridge"].contains(&d.network.as_str()) {
            bail!(
                "docker.network must be \"internal\", \"none\" or \"bridge\", not {:?}",
                d.network
            );
        }
        if !["keep", "remove"].contains(&d.on_shutdown.as_str()) {
            bail!(
                "docker.on_shutdown must be \"keep\" or \"remove\", not {:?}",
                d.on_shutdown
            );
        }
        if d.pids_limit < 16 || d.recheck_interval.is_zero() || d.default_image.is_empty() {
            bail!(
                "docker.pids_limit must be at least 16, docker.recheck_interval positive and docker.default_image set"
            );
        }
        if crate::provider::docker::ContainerUser::parse(&d.user).is_none() {
            bail!(
                "docker.user must be a numeric UID:GID such as \"65534:65534\" (\"0:0\" for root), not {:?}",
                d.user
            );
        }
        if d.allowed_images.iter().any(|p| p.trim().is_empty()) {
            bail!("docker.allowed_images must not hold an empty pattern");
        }
        if !crate::provider::docker::image_allowed(&d.allowed_images, &d.default_image) {
            bail!(
                "docker.default_image {:?} is not matched by docker.allowed_images",
                d.default_image
            );
        }
        if let Some(domain) = &self.preview_domain
            && (domain.is_empty() || domain.starts_with('.') || domain.contains('/'))
        {
            bail!("preview_domain must be a plain domain such as preview.example.com");
        }
        self.validate_operator_settings()?;
        let mut seen = HashSet::new();
        for key in &self.auth.keys {
            if key.key.expose().len() < 8 {
                bail!("an API key for tenant {:?} is shorter than 8 characters", key.tenant);
            }
            if key.tenant.trim().is_empty() {
                bail!("every API key needs a non-empty tenant");
            }
            if !seen.insert(key.key.expose().to_string()) {
                bail!("an API key is listed twice");
            }
        }
        Ok(())
    }

    /// Quotas, the docker pool, image aliases and the audit log.
    fn validate_operator_settings(&self) -> anyhow::Result<()> {
        for (tenant, quota) in self.all_quotas()? {
            quota.validate(&tenant).map_err(anyhow::Error::msg)?;
        }
        let d = &self.docker;
        for (from, to) in &d.image_aliases {
            if from.trim().is_empty() || to.trim().is_empty() {
                bail!("docker.image_aliases must map non-empty names to non-empty images");
            }
            if !crate::provider::docker::image_allowed(&d.allowed_images, to) {
                bail!("docker.image_aliases maps {from:?} to {to:?}, which docker.allowed_images does not match");
            }
        }
        d.pool
            .validate(&d.allowed_images, &d.image_aliases)
            .map_err(anyhow::Error::msg)?;
        self.audit.validate().map_err(anyhow::Error::msg)
    }

    /// Every tenant's quota: the `[quotas.<tenant>]` tables merged with the
    /// quota fields of the tenant's key entries.
    pub fn all_quotas(&self) -> anyhow::Result<BTreeMap<String, TenantQuota>> {
        let mut all = self.quotas.clone();
        for (tenant, quota) in &self.auth.quotas {
            all.entry(tenant.clone())
                .or_default()
                .merge(quota, tenant)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(all)
    }

    pub fn auth_enabled(&self) -> bool {
        !self.auth.keys.is_empty()
    }

    pub fn image_dir(&self) -> PathBuf {
        self.wasm
            .image_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("images"))
    }

    pub fn disk_quota_bytes(&self) -> u64 {
        self.sandbox.disk_quota_mb * 1024 * 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bind_loopback_7423() {
        let s = Settings::default();
        s.validate().unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:7423");
        assert_eq!(s.providers.default, "wasm");
        assert!(!s.auth_enabled());
    }

    #[test]
    fn the_operator_contract_toml_parses() {
        let s = Settings::from_toml(
            r#"
            [[auth.keys]]
            key = "sk_test_alpha"
            tenant = "alpha"

            [providers]
            default = "docker"

            [sandbox]
            max_ttl = "1h30m"
            "#,
        )
        .unwrap();
        assert_eq!(s.auth.keys[0].key.expose(), "sk_test_alpha");
        assert_eq!(s.auth.keys[0].tenant, "alpha");
        assert_eq!(s.providers.default, "docker");
        assert_eq!(s.sandbox.max_ttl, Duration::from_secs(5400));
        s.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_refused() {
        assert!(Settings::from_toml("bnid = \"x\"").is_err());
        let err = Settings::from_toml("[sandbox]\nmax_ttl = \"forever\"").unwrap_err();
        assert!(format!("{err:#}").contains("invalid duration \"forever\""), "{err:#}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut s = Settings::from_toml("[exec]\nmax_timeout = \"1m\"").unwrap();
        s.apply_env(|name| match name {
            "STACYVM_MAX_TIMEOUT" => Some("2m".into()),
            "STACYVM_BIND" => Some("0.0.0.0:9000".into()),
            "STACYVM_API_KEYS" => Some("sk_one_secret:one,sk_two_secret:two".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.exec.max_timeout, Duration::from_secs(120));
        assert_eq!(s.bind.to_string(), "0.0.0.0:9000");
        assert_eq!(s.auth.keys.len(), 2);
        assert_eq!(s.auth.keys[1].tenant, "two");
        assert_eq!(s.auth.keys[1].role, Role::User);
    }

    #[test]
    fn keys_carry_a_role_that_defaults_to_user() {
        let s = Settings::from_toml(
            r#"
            [[auth.keys]]
            key = "sk_test_alpha"
            tenant = "alpha"

            [[auth.keys]]
            key = "sk_test_ops"
            tenant = "ops"
            role = "operator"

            [[auth.keys]]
            key = "sk_test_root"
            tenant = "ops"
            role = "admin"
            "#,
        )
        .unwrap();
        let roles: Vec<Role> = s.auth.keys.iter().map(|k| k.role).collect();
        assert_eq!(roles, [Role::User, Role::Operator, Role::Admin]);
        assert!(!Role::User.sees_whole_server());
        assert!(Role::Operator.sees_whole_server() && Role::Admin.sees_whole_server());
        let err =
            Settings::from_toml("[[auth.keys]]\nkey = \"sk_test_alpha\"\ntenant = \"a\"\nrole = \"root\"").unwrap_err();
        assert!(format!("{err:#}").contains("unknown variant `root`"), "{err:#}");
    }

    #[test]
    fn environment_keys_take_an_optional_role() {
        let mut s = Settings::default();
        s.apply_env(|name| {
            (name == "STACYVM_API_KEYS")
                .then(|| "sk_one_secret:one,sk_ops_secret:ops:operator,sk_adm_secret:ops:admin".into())
        })
        .unwrap();
        let got: Vec<(&str, Role)> = s.auth.keys.iter().map(|k| (k.tenant.as_str(), k.role)).collect();
        assert_eq!(
            got,
            [("one", Role::User), ("ops", Role::Operator), ("ops", Role::Admin)]
        );
        for (bad, message) in [
            (
                "sk_one_secret",
                "STACYVM_API_KEYS entries must be key:tenant or key:tenant:role",
            ),
            (
                "sk_one_secret:one:user:x",
                "STACYVM_API_KEYS entries must be key:tenant or key:tenant:role",
            ),
            (
                "sk_one_secret:one:root",
                "STACYVM_API_KEYS: role \"root\" is not one of user, operator, admin",
            ),
        ] {
            let mut s = Settings::default();
            let err = s
                .apply_env(|name| (name == "STACYVM_API_KEYS").then(|| bad.to_string()))
                .unwrap_err();
            assert_eq!(err.to_string(), message, "{bad}");
        }
    }

    #[test]
    fn wasm_build_python_and_keep_resident_come_from_the_file_or_the_environment() {
        let mut s = Settings::from_toml("[wasm]\nkeep_resident_mb = 0\nbuild_python = \"/usr/bin/python3\"").unwrap();
        assert_eq!(s.wasm.keep_resident_bytes(), 0);
        assert_eq!(s.wasm.build_python.as_deref(), Some("/usr/bin/python3"));
        s.apply_env(|name| (name == "STACYVM_KEEP_RESIDENT_MB").then(|| "64".into()))
            .unwrap();
        assert_eq!(s.wasm.keep_resident_bytes(), 64 << 20);
        assert_eq!(Settings::default().wasm.keep_resident_bytes(), 16 << 20);
        s.wasm.keep_resident_mb = Some(5000);
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "wasm.keep_resident_mb must be at most 4096 (a wasm32 memory's size)"
        );
    }

    #[test]
    fn invalid_combinations_are_refused_before_binding() {
        let mut s = Settings::default();
        s.sandbox.default_ttl = Duration::from_secs(48 * 3600);
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "sandbox.default_ttl is above sandbox.max_ttl"
        );
        let mut s = Settings::default();
        s.exec.fuel = 0;
        assert!(s.validate().unwrap_err().to_string().contains("fuel metering"));
        let mut s = Settings::default();
        s.providers.default = "firecracker".into();
        assert!(s.validate().is_err());
    }

    #[test]
    fn secrets_never_appear_in_debug_output() {
        let s = Settings::from_toml("[[auth.keys]]\nkey = \"sk_super_secret\"\ntenant = \"t\"").unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("sk_super_secret"));
        assert!(printed.contains("Secret(***)"));
    }
}
