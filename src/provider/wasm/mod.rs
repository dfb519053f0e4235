//! The wasm provider: a sandbox is a directory and a registry entry; each
//! exec is a fresh wasmtime instance of an interpreter from the catalogue,
//! whose whole world is that directory.

mod component;
pub(crate) mod context;
mod contexts;
mod engine;
mod files;
mod guest;
mod instrument;
pub mod packages;
mod pagemap;
mod pipe;
mod quota;
mod reactor;
mod shell;
mod snapshot;
mod spares;
mod trash;

pub use self::snapshot::is_built as snapshot_is_built;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::Semaphore;

use self::engine::{LoadOptions, LoadedRuntime, PoolSize, WasmEngine};
use self::guest::GuestJob;
use self::quota::DiskLedger;
use super::{
    Capabilities, ExecIo, ExecMode, ExecOutput, ExecSpec, FileEntry, OutputChunk, Provider, ProviderError,
    ProviderStatus, SandboxStats, StreamKind,
};
use crate::runtime::Catalog;
use crate::sandbox::Sandbox;
use crate::sandbox::path::SandboxPath;
use crate::settings::Settings;

/// What an argv-mode exec runs: the runtime and the guest's argv.
type Plan = (Arc<LoadedRuntime>, Vec<String>);

/// Directories every sandbox starts with, as in a container.
const SKELETON: &[&str] = &["workspace", "tmp"];

pub struct WasmProvider {
    engine: Arc<WasmEngine>,
    catalog: Catalog,
    sandboxes_dir: PathBuf,
    disk_quota: u64,
    max_entries: u64,
    /// Each sandbox's disk ledger, shared by its execs and file operations.
    ledgers: Mutex<HashMap<String, Arc<DiskLedger>>>,
    fuel: u64,
    output_limit: usize,
    file_limit: usize,
    /// Bounds the guests running at once: a slot is taken before a job goes
    /// to the guest threads, and the job gives it back when its guest has
    /// stopped.
    slots: Arc<Semaphore>,
    /// `exec.max_concurrent` threads at most, which run every guest.
    threads: guest::GuestPool,
    /// Code contexts: kept instances, in memory or paused on disk.
    contexts: contexts::ContextManager,
    /// As many again for the commands of shell scripts that run at the
    /// same time as the script (pipeline stages, background jobs).
    stages: Arc<shell::Stages>,
    /// `pip install` and the `packages` of a create.
    packages: Arc<packages::PackageManager>,
    /// How long a create waits for its `packages`.
    packages_timeout: std::time::Duration,
    /// Destroyed sandboxes' directories, deleted in the background.
    trash: trash::Trash,
    /// Sandbox directories made ahead of the creates.
    spares: spares::Spares,
}

impl WasmProvider {
    pub async fn new(settings: &Settings, catalog: Catalog) -> anyhow::Result<WasmProvider> {
        let engine = WasmEngine::load(&catalog, &load_options(settings, false)).await?;
        tracing::info!(
            pooling = engine.pooling,
            runtimes = engine.runtimes.len(),
            "wasm engine ready"
        );
        let sandboxes_dir = settings.data_dir.join("sandboxes");
        std::fs::create_dir_all(&sandboxes_dir)?;
        let context_engine =
            context::ContextEngine::load(&catalog, &settings.image_dir(), settings.wasm.offline, &engine.reactors)
                .await;
        let contexts = contexts::ContextManager::new(context_engine, &settings.data_dir, &settings.contexts);
        let packages = Arc::new(packages::PackageManager::new(
            &settings.data_dir,
            &settings.image_dir(),
            settings.wasm.build_python.as_deref(),
            settings.wasm.package_index_url(),
            settings.wasm.offline,
        ));
        // The virtualenv that runs pip is made once per image directory;
        // in the background, so that neither the start nor the first
        // install waits for it.
        tokio::spawn({
            let packages = packages.clone();
            async move { packages.prepare().await }
        });
        let trash = trash::Trash::open(settings.data_dir.join("trash"))?;
        let spares = spares::Spares::open(settings.data_dir.join("spare"), SKELETON, |p| trash.discard(p, ""))?;
        Ok(WasmProvider {
            trash,
            spares,
            contexts,
            packages,
            packages_timeout: settings.exec.default_timeout,
            engine: Arc::new(engine),
            catalog,
            sandboxes_dir,
            disk_quota: settings.disk_quota_bytes(),
            max_entries: settings.sandbox.max_entries,
            ledgers: Mutex::default(),
            fuel: settings.exec.fuel,
            output_limit: settings.exec.output_limit_bytes,
            file_limit: settings.http.file_limit_bytes.max(settings.http.body_limit_bytes),
            slots: Arc::new(Semaphore::new(settings.exec.max_concurrent)),
            threads: guest::GuestPool::new(settings.exec.max_concurrent),
            stages: Arc::new(shell::Stages::new(settings.exec.max_concurrent)),
        })
    }

    fn dir(&self, sandbox: &Sandbox) -> PathBuf {
        self.sandboxes_dir.join(sandbox.id.as_str())
    }

    /// The sandbox's disk ledger.
    fn ledger(&self, sandbox: &Sandbox) -> Arc<DiskLedger> {
        let mut ledgers = self.ledgers.lock().unwrap_or_else(|e| e.into_inner());
        ledgers
            .entry(sandbox.id.as_str().to_string())
            .or_insert_with(|| DiskLedger::new(self.dir(sandbox), self.disk_quota, self.max_entries))
            .clone()
    }

    /// Runs a blocking file operation on the sandbox's root directory.
    async fn with_root<T: Send + 'static>(
        &self,
        sandbox: &Sandbox,
        op: impl FnOnce(&cap_std::fs::Dir) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let dir = self.dir(sandbox);
        tokio::task::spawn_blocking(move || {
            let root = files::open_root(&dir)?;
            op(&root)
        })
        .await
        .map_err(|e| ProviderError::Internal(e.into()))?
    }

    /// Like [`Self::with_root`], holding the sandbox's disk ledger.
    async fn with_ledger<T: Send + 'static>(
        &self,
        sandbox: &Sandbox,
        op: impl FnOnce(&cap_std::fs::Dir, &DiskLedger) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let (dir, ledger) = (self.dir(sandbox), self.ledger(sandbox));
        tokio::task::spawn_blocking(move || {
            let root = files::open_root(&dir)?;
            let held = ledger.begin();
            op(&root, &held)
        })
        .await
        .map_err(|e| ProviderError::Internal(e.into()))?
    }

    /// The Python version `python3` runs in a sandbox whose own runtime is
    /// `home` (after any fallback), if a Python runs there.
    fn python_version(&self, home: Option<&str>) -> Option<String> {
        let def = self.catalog.runtime_for_command("python3", home)?;
        let loaded = self.engine.runtimes.get(&def.name)?;
        loaded.def.python_version.clone()
    }

    /// The runtime the sandbox's image selects.
    fn home_runtime(&self, sandbox: &Sandbox) -> Option<String> {
        self.catalog.runtime_for_image(&sandbox.image).map(|r| r.name.clone())
    }

    /// The runtime and argv an argv-mode exec runs, or a 127 result for an
    /// unknown command.
    fn plan(&self, sandbox: &Sandbox, spec: &ExecSpec) -> Result<Result<Plan, ExecOutput>, ProviderError> {
        let program = &spec.command;
        if program.is_empty() {
            return Err(ProviderError::InvalidInput("command is empty".into()));
        }
        let home = self.home_runtime(sandbox);
        let (runtime, mut guest_argv) = match resolve_runtime(&self.catalog, &self.engine, program, home.as_deref()) {
            Resolved::Runtime(runtime, argv) => (runtime, argv),
            Resolved::Unavailable(why) => {
                return Ok(Err(ExecOutput {
                    exit_code: 127,
                    stderr: format!("sh: {why}\n").into_bytes(),
                    ..ExecOutput::default()
                }));
            }
            Resolved::NotFound => {
                return Ok(Err(ExecOutput {
                    exit_code: 127,
                    stderr: format!("sh: {program}: command not found\n").into_bytes(),
                    ..ExecOutput::default()
                }));
            }
        };
        guest_argv.extend(spec.args.iter().cloned());
        Ok(Ok((runtime, guest_argv)))
    }

    /// Checks that the exec's workdir is a directory in the sandbox.
    fn check_workdir(root: &cap_std::fs::Dir, workdir: &SandboxPath) -> Result<(), ProviderError> {
        match root.metadata(workdir.relative()) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ProviderError::InvalidInput(format!(
                "workdir {workdir} is not a directory"
            ))),
            Err(_) => Err(ProviderError::InvalidInput(format!(
                "workdir {workdir} does not exist in the sandbox"
            ))),
        }
    }

    /// The environment every exec starts with, before the runtime's own.
    fn base_env(spec: &ExecSpec) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BTreeMap::from([
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/workspace".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ]);
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.insert("PWD".into(), spec.workdir.to_string());
        env
    }

    /// Runs `f`, which runs guests, on a guest thread once one of the
    /// `exec.max_concurrent` slots is free. The thread holds the slot, so a
    /// client that leaves frees it only when the guest has stopped.
    async fn run_guest<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ProviderError::Internal(e.into()))?;
        self.threads
            .run(move || {
                let _slot = slot;
                f()
            })
            .await
    }

    /// Runs a shell-mode command line in the stacyvm shell.
    async fn exec_shell(&self, sandbox: &Sandbox, spec: ExecSpec, io: ExecIo) -> Result<ExecOutput, ProviderError> {
        let mut script = spec.command.clone();
        for arg in &spec.args {
            script.push(' ');
            script.push_str(&shell::quote(arg));
        }
        if script.trim().is_empty() {
            return Err(ProviderError::InvalidInput("command is empty".into()));
        }
        let (catalog, engine, home) = (self.catalog.clone(), self.engine.clone(), self.home_runtime(sandbox));
        let job = shell::ShellJob {
            script,
            sandbox_dir: self.dir(sandbox),
            cwd: spec.workdir.clone(),
            env: Self::base_env(&spec),
            client_env: spec.env.keys().cloned().collect(),
            stdin: spec.stdin.unwrap_or_default(),
            stdin_stream: io.stdin,
            output: io.output,
            timeout: spec.timeout,
            memory_bytes: (sandbox.memory_mb as usize) << 20,
            fuel: self.fuel,
            output_limit: self.output_limit,
            ledger: self.ledger(sandbox),
            cancel: io.cancel,
            pip: packages::PipContext {
                manager: Some(self.packages.clone()),
                python_version: self.python_version(home.as_deref()),
            },
            resolve: Arc::new(move |command| resolve_runtime(&catalog, &engine, command, home.as_deref())),
            stages: self.stages.clone(),
        };
        self.run_guest(move || {
            Self::check_workdir(&files::open_root(&job.sandbox_dir)?, &job.cwd)?;
            shell::run(job)
        })
        .await
    }
}

fn load_options(settings: &Settings, strict: bool) -> LoadOptions {
    LoadOptions {
        image_dir: settings.image_dir(),
        offline: settings.wasm.offline,
        pool: PoolSize::for_concurrency(settings.exec.max_concurrent, settings.wasm.keep_resident_bytes()),
        build_python: settings.wasm.build_python.clone(),
        strict,
    }
}

/// Whether the pooling allocator can reserve its address space with these
/// settings; returns the instance slots it reserved (for `stacyvm doctor`).
pub fn check_pooling(settings: &Settings) -> anyhow::Result<u32> {
    let pool = load_options(settings, true).pool;
    engine::check_pooling(&pool)?;
    Ok(pool.instances)
}

/// Fetches, builds and compiles every image of the catalogue ahead of time,
/// failing rather than falling back. Returns one line per runtime.
pub async fn prepare_images(settings: &Settings, catalog: &Catalog) -> anyhow::Result<Vec<String>> {
    let engine = WasmEngine::load(catalog, &load_options(settings, true)).await?;
    let mut lines: Vec<String> = catalog
        .runtimes()
        .iter()
        .map(|def| {
            let image = catalog.image(&def.wasm_image).expect("catalogue validated");
            format!(
                "{} ({}): image {} ({})",
                def.name,
                def.images.join(", "),
                image.name,
                image.license
            )
        })
        .collect();
    lines.sort();
    drop(engine);
    Ok(lines)
}

/// What a command word resolves to.
pub enum Resolved {
    /// The runtime, and the guest argv before the user's arguments:
    /// `argv[0]` and the runtime's prefix.
    Runtime(Arc<LoadedRuntime>, Vec<String>),
    /// A runtime offers the command, but its image could not be loaded.
    Unavailable(String),
    NotFound,
}

/// Resolves a command word to the runtime that runs it, preferring the
/// sandbox's own (`home`).
fn resolve_runtime(catalog: &Catalog, engine: &WasmEngine, command: &str, home: Option<&str>) -> Resolved {
    let Some(def) = catalog.runtime_for_command(command, home) else {
        return Resolved::NotFound;
    };
    let Some(runtime) = engine.runtimes.get(&def.name) else {
        let why = engine
            .unavailable
            .get(&def.name)
            .map_or("it is not loaded", String::as_str);
        return Resolved::Unavailable(format!(
            "{command}: cannot run here: the {} image is unavailable on this server ({why})",
            def.wasm_image
        ));
    };
    let argv0 = if def.multicall {
        command.rsplit('/').next().unwrap_or(command).to_string()
    } else {
        def.argv0.clone()
    };
    let mut argv = vec![argv0];
    argv.extend(def.argv_prefix.iter().cloned());
    Resolved::Runtime(runtime.clone(), argv)
}

#[async_trait]
impl Provider for WasmProvider {
    fn name(&self) -> &'static str {
        "wasm"
    }

    fn status(&self) -> ProviderStatus {
        ProviderStatus {
            name: "wasm".into(),
            available: true,
            reason: None,
            images: self.catalog.known_image_names(),
            capabilities: Capabilities {
                exec: true,
                files: true,
                stdin: true,
                shell: true,
                preview: false,
                stats: true,
                network: false,
            },
        }
    }

    fn resolve_image(&self, requested: Option<&str>) -> Result<String, ProviderError> {
        match requested {
            None | Some("") => Ok(self.catalog.default_runtime().images[0].clone()),
            Some(image) if self.catalog.runtime_for_image(image).is_some() => {
                let def = self.catalog.runtime_for_image(image).expect("matched");
                if !self.engine.runtimes.contains_key(&def.name) {
                    // The reason can name hosts and paths: it goes to the log
                    // (at start), not to clients.
                    return Err(ProviderError::Unavailable(format!(
                        "image {image} is not available on this server: its wasm image {} could not be loaded",
                        def.wasm_image
                    )));
                }
                Ok(image.to_string())
            }
            Some(image) => Err(ProviderError::InvalidInput(format!(
                "unknown wasm image {image:?}; known images: {}",
                self.catalog.known_image_names().join(", ")
            ))),
        }
    }

    fn check_packages(&self, image: &str, requirements: &[String]) -> Result<(), ProviderError> {
        if requirements.is_empty() {
            return Ok(());
        }
        let home = self.catalog.runtime_for_image(image).map(|r| r.name.clone());
        if self.python_version(home.as_deref()).is_none() {
            return Err(ProviderError::InvalidInput(format!(
                "packages cannot be installed: no Python runs in a sandbox of image {image}"
            )));
        }
        if requirements.len() > packages::MAX_REQUIREMENTS {
            return Err(ProviderError::InvalidInput(format!(
                "packages may list at most {} requirements",
                packages::MAX_REQUIREMENTS
            )));
        }
        for requirement in requirements {
            packages::Requirement::parse(requirement)
                .map_err(|e| ProviderError::InvalidInput(format!("packages: {e}")))?;
        }
        Ok(())
    }

    async fn install_packages(
        &self,
        sandbox: &Sandbox,
        requirements: &[String],
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<(), ProviderError> {
        self.check_packages(&sandbox.image, requirements)?;
        if requirements.is_empty() {
            return Ok(());
        }
        let parsed: Vec<packages::Requirement> = requirements
            .iter()
            .map(|r| packages::Requirement::parse(r).expect("checked above"))
            .collect();
        let version = self
            .python_version(self.home_runtime(sandbox).as_deref())
            .expect("checked above");
        let (manager, dir, ledger) = (self.packages.clone(), self.dir(sandbox), self.ledger(sandbox));
        let timeout = self.packages_timeout;
        let deadline = std::time::Instant::now() + timeout;
        let result = tokio::task::spawn_blocking(move || {
            let root = files::open_root(&dir)?;
            let held = ledger.begin();
            let target = packages::Target {
                root: &root,
                ledger: &held,
                python_version: &version,
                deadline,
                cancel: &cancel,
            };
            Ok::<_, ProviderError>(manager.install(&target, &dir, &parsed, &packages::InstallOptions::default()))
        })
        .await
        .map_err(|e| ProviderError::Internal(e.into()))??;
        match result {
            Ok(installed) => {
                tracing::info!(id = %sandbox.id, packages = ?installed.dists, cached = installed.cached, "installed packages");
                Ok(())
            }
            Err(e) => Err(match e {
                packages::PackageError::Invalid(m)
                | packages::PackageError::NotFound(m)
                | packages::PackageError::NotPure(m)
                | packages::PackageError::Failed(m) => ProviderError::InvalidInput(format!("packages: {m}")),
                packages::PackageError::Unavailable(m) => ProviderError::Unavailable(format!("packages: {m}")),
                packages::PackageError::TooLarge(m) => ProviderError::QuotaExceeded(format!("packages: {m}")),
                packages::PackageError::TimedOut(_) => ProviderError::Timeout {
                    timeout,
                    partial: Box::default(),
                },
                packages::PackageError::Cancelled => ProviderError::Cancelled,
            }),
        }
    }

    async fn create(&self, sandbox: &Sandbox) -> Result<(), ProviderError> {
        if let Some(runtime) = self
            .home_runtime(sandbox)
            .and_then(|name| self.engine.runtimes.get(&name))
        {
            let needed = runtime.min_memory_bytes();
            if sandbox.memory_mb.saturating_mul(1 << 20) < needed {
                return Err(ProviderError::InvalidInput(format!(
                    "image {} needs memory_mb of at least {}: its interpreter starts with that much memory",
                    sandbox.image,
                    needed.div_ceil(1 << 20)
                )));
            }
        }
        let dir = self.dir(sandbox);
        // One rename of a directory made ahead, in the common case.
        self.spares
            .take(&dir)
            .map_err(|e| ProviderError::Internal(anyhow::anyhow!("cannot create {}: {e}", dir.display())))
    }

    async fn destroy(&self, sandbox: &Sandbox) -> Result<(), ProviderError> {
        self.contexts.drop_sandbox(sandbox.id.as_str());
        self.ledgers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sandbox.id.as_str());
        // One rename; the reaper deletes it (remove_dir_all never follows
        // symlinks, so a link to / inside the sandbox is removed, not walked).
        let dir = self.dir(sandbox);
        self.trash
            .discard(&dir, sandbox.tenant.as_str())
            .map_err(|e| ProviderError::Internal(anyhow::anyhow!("cannot remove {}: {e}", dir.display())))
    }

    fn freeing(&self, tenant: &crate::sandbox::id::TenantId) -> usize {
        self.trash.pending(tenant.as_str())
    }

    async fn exists(&self, sandbox: &Sandbox) -> bool {
        self.dir(sandbox).is_dir()
    }

    async fn remove_orphans(&self, known_sandboxes: &[Sandbox]) -> anyhow::Result<usize> {
        let known: std::collections::HashSet<&str> = known_sandboxes.iter().map(|s| s.id.as_str()).collect();
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.sandboxes_dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !known.contains(name.as_str()) {
                self.trash.discard(&entry.path(), "")?;
                removed += 1;
            }
        }
        let known: Vec<Sandbox> = known_sandboxes.to_vec();
        let recovered = self.contexts.recover(self, &known);
        if recovered > 0 {
            tracing::info!(recovered, "paused code contexts recovered");
        }
        Ok(removed)
    }

    fn contexts(&self) -> Option<&dyn super::contexts::ContextBackend> {
        Some(self)
    }

    async fn shutdown(&self) {
        self.pause_all_contexts().await;
    }

    async fn exec(&self, sandbox: &Sandbox, spec: ExecSpec) -> Result<ExecOutput, ProviderError> {
        self.exec_io(sandbox, spec, ExecIo::default()).await
    }

    async fn exec_io(&self, sandbox: &Sandbox, spec: ExecSpec, io: ExecIo) -> Result<ExecOutput, ProviderError> {
        if spec.mode == ExecMode::Shell {
            return self.exec_shell(sandbox, spec, io).await;
        }
        let (runtime, argv) = match self.plan(sandbox, &spec)? {
            Ok(plan) => plan,
            Err(not_found) => {
                if let Some(tx) = &io.output {
                    tx.send(OutputChunk {
                        stream: StreamKind::Stderr,
                        data: not_found.stderr.clone(),
                    })
                    .ok();
                }
                return Ok(not_found);
            }
        };
        let dir = self.dir(sandbox);
        let workdir = spec.workdir.clone();
        let memory_bytes = (sandbox.memory_mb as usize) << 20;
        let (fuel, output_limit, ledger) = (self.fuel, self.output_limit, self.ledger(sandbox));
        self.run_guest(move || {
            let root = files::open_root(&dir)?;
            Self::check_workdir(&root, &workdir)?;
            let mut env = Self::base_env(&spec);
            for (k, v) in &runtime.def.env {
                if !spec.env.contains_key(k) {
                    env.insert(k.clone(), v.clone());
                }
            }
            let held = ledger.begin();
            let job = GuestJob {
                argv,
                env: env.into_iter().collect(),
                sandbox_dir: dir,
                stdin: spec.stdin.unwrap_or_default(),
                timeout: spec.timeout,
                memory_bytes,
                fuel,
                output_limit,
                close_when_full: false,
                stdout: Default::default(),
                stderr: Default::default(),
                ledger: ledger.clone(),
                stdin_stream: io.stdin,
                stdin_custom: None,
                output: io.output,
                cancel: io.cancel,
            };
            let result = guest::run(&runtime, job);
            drop(held);
            result
        })
        .await
    }

    async fn write_file(
        &self,
        sandbox: &Sandbox,
        path: &SandboxPath,
        data: Vec<u8>,
        mode: u32,
    ) -> Result<(), ProviderError> {
        let path = path.clone();
        self.with_ledger(sandbox, move |root, ledger| {
            files::write(root, &path, &data, mode, ledger)
        })
        .await
    }

    async fn read_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<u8>, ProviderError> {
        let (path, limit) = (path.clone(), self.file_limit);
        self.with_root(sandbox, move |root| files::read(root, &path, limit))
            .await
    }

    async fn delete_file(&self, sandbox: &Sandbox, path: &SandboxPath, recursive: bool) -> Result<(), ProviderError> {
        let path = path.clone();
        self.with_root(sandbox, move |root| files::delete(root, &path, recursive))
            .await
    }

    async fn list_files(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<Vec<FileEntry>, ProviderError> {
        let path = path.clone();
        self.with_root(sandbox, move |root| files::list(root, &path)).await
    }

    async fn stat_file(&self, sandbox: &Sandbox, path: &SandboxPath) -> Result<FileEntry, ProviderError> {
        let path = path.clone();
        self.with_root(sandbox, move |root| files::stat(root, &path)).await
    }

    async fn move_file(&self, sandbox: &Sandbox, from: &SandboxPath, to: &SandboxPath) -> Result<(), ProviderError> {
        let (from, to) = (from.clone(), to.clone());
        self.with_ledger(sandbox, move |root, ledger| files::rename(root, &from, &to, ledger))
            .await
    }

    async fn chmod_file(&self, sandbox: &Sandbox, path: &SandboxPath, mode: u32) -> Result<(), ProviderError> {
        let path = path.clone();
        self.with_root(sandbox, move |root| files::chmod(root, &path, mode))
            .await
    }

    async fn glob(&self, sandbox: &Sandbox, pattern: &str) -> Result<Vec<String>, ProviderError> {
        let pattern = pattern.to_string();
        self.with_root(sandbox, move |root| files::glob(root, &pattern)).await
    }

    async fn stats(&self, sandbox: &Sandbox) -> Result<SandboxStats, ProviderError> {
        let limit = self.disk_quota;
        let mem_limit = sandbox.memory_mb << 20;
        let dir = self.dir(sandbox);
        let reserved = self.ledger(sandbox).reserved();
        tokio::task::spawn_blocking(move || SandboxStats {
            supported: true,
            // An idle wasm sandbox runs nothing and holds no memory.
            cpu_pct: Some(0.0),
            mem_bytes: Some(0),
            mem_limit_bytes: Some(mem_limit),
            // A tree that cannot be measured counts as full.
            disk_bytes: Some(quota::measure(&dir).map_or(limit, |usage| usage.bytes.saturating_add(reserved))),
            disk_limit_bytes: Some(limit),
        })
        .await
        .map_err(|e| ProviderError::Internal(e.into()))
    }
}
