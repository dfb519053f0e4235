//! The wasm provider's code contexts: which exist, which are in memory and
//! which sleep on disk, and the rules between them.
//!
//! - A context is `ready` (its instance in memory) or `paused` (its
//!   snapshot in `<data_dir>/contexts/<sandbox>/<context>/`, its memory
//!   freed). Paused bytes are reserved in the sandbox's disk ledger, so they
//!   count against its quota; a pause that does not fit leaves the context
//!   in memory.
//! - Every cell is preceded by a snapshot; a cell stopped by its deadline,
//!   its fuel, its memory cap, a crash or a departed client is answered as
//!   such and the context is rebuilt from that snapshot.
//! - Memory is bounded by `contexts.max_per_sandbox` contexts per sandbox,
//!   each capped at the sandbox's `memory_mb`, and by `contexts.max_live`
//!   contexts in memory server-wide: past it, the least recently used idle
//!   one is paused. Idle contexts are paused after `contexts.idle_pause`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use rand::RngCore;

use super::WasmProvider;
use super::context::{CellFailure, CellLimits, ContextEngine, ContextEnv, ContextImage, LiveContext, Snapshot};
use crate::provider::contexts::{CellOutput, CellSpec, ContextBackend, ContextInfo, ContextSpec, not_found};
use crate::provider::{ExecIo, ExecOutput, ProviderError};
use crate::sandbox::Sandbox;

/// One sandbox's contexts, by id.
type SandboxContexts = HashMap<String, Arc<tokio::sync::Mutex<Entry>>>;

/// The contexts of every sandbox.
pub struct ContextManager {
    pub(super) engine: Option<Arc<ContextEngine>>,
    /// Why contexts are unavailable altogether, when the engine failed.
    pub(super) engine_error: Option<String>,
    root: PathBuf,
    sandboxes: Mutex<HashMap<String, SandboxContexts>>,
    live: AtomicUsize,
    idle_pause: Duration,
    max_per_sandbox: usize,
    max_live: usize,
}

type Guard = tokio::sync::OwnedMutexGuard<Entry>;

struct Entry {
    info: ContextInfo,
    env: ContextEnv,
    image: Arc<ContextImage>,
    state: State,
    /// The buffers of the last per-cell snapshot, reused by the next one.
    spare: Option<Snapshot>,
    /// A snapshot equal to the live state now (after a resume, a rollback
    /// or a fork), which the next cell takes as its rollback point instead
    /// of copying the memory again.
    current: Option<Snapshot>,
    /// Bytes reserved in the ledger for the paused snapshot.
    paused_bytes: u64,
}

enum State {
    Live(Box<LiveContext>),
    Paused,
    /// Lost (its guest thread failed mid-run); it answers 500 until deleted.
    Broken,
}

impl ContextManager {
    pub fn new(
        engine: Result<ContextEngine, anyhow::Error>,
        data_dir: &Path,
        settings: &crate::settings::ContextSettings,
    ) -> ContextManager {
        let (engine, engine_error) = match engine {
            Ok(engine) => (Some(Arc::new(engine)), None),
            Err(e) => {
                tracing::warn!("code contexts are unavailable: {e:#}");
                (None, Some(format!("{e:#}")))
            }
        };
        ContextManager {
            engine,
            engine_error,
            root: data_dir.join("contexts"),
            sandboxes: Mutex::default(),
            live: AtomicUsize::new(0),
            idle_pause: settings.idle_pause,
            max_per_sandbox: settings.max_per_sandbox,
            max_live: settings.max_live,
        }
    }

    fn dir(&self, sandbox: &str, id: &str) -> PathBuf {
        self.root.join(sandbox).join(id)
    }

    fn entries(&self, sandbox: &Sandbox) -> Vec<Arc<tokio::sync::Mutex<Entry>>> {
        let map = crate::sandbox::lock(&self.sandboxes);
        map.get(sandbox.id.as_str())
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn entry(&self, sandbox: &Sandbox, id: &str) -> Result<Arc<tokio::sync::Mutex<Entry>>, ProviderError> {
        let map = crate::sandbox::lock(&self.sandboxes);
        map.get(sandbox.id.as_str())
            .and_then(|m| m.get(id))
            .cloned()
            .ok_or_else(|| not_found(id))
    }

    /// Adds an entry, unless the sandbox already has its maximum.
    fn insert(&self, sandbox: &str, id: String, entry: Entry) -> Result<(), ProviderError> {
        let mut map = crate::sandbox::lock(&self.sandboxes);
        let contexts = map.entry(sandbox.to_string()).or_default();
        if contexts.len() >= self.max_per_sandbox {
            return Err(ProviderError::QuotaExceeded(format!(
                "this sandbox already has the maximum of {} contexts",
                self.max_per_sandbox
            )));
        }
        contexts.insert(id, Arc::new(tokio::sync::Mutex::new(entry)));
        Ok(())
    }

    fn remove(&self, sandbox: &str, id: &str) -> Option<Arc<tokio::sync::Mutex<Entry>>> {
        let mut map = crate::sandbox::lock(&self.sandboxes);
        let contexts = map.get_mut(sandbox)?;
        let entry = contexts.remove(id);
        if contexts.is_empty() {
            map.remove(sandbox);
        }
        entry
    }

    /// Room for one more context in memory: pauses the least recently used
    /// idle ones while the server holds `max_live` or more.
    async fn make_room(&self, provider: &WasmProvider) -> Result<(), ProviderError> {
        self.pause_lru(provider).await;
        if self.live.load(Ordering::Acquire) >= self.max_live {
            return Err(ProviderError::QuotaExceeded(format!(
                "the server already holds the maximum of {} code contexts in memory, and none can be paused now",
                self.max_live
            )));
        }
        Ok(())
    }

    async fn pause_lru(&self, provider: &WasmProvider) {
        let mut tries = 0;
        while self.live.load(Ordering::Acquire) >= self.max_live && tries < 8 {
            tries += 1;
            let all: Vec<_> = crate::sandbox::lock(&self.sandboxes)
                .values()
                .flat_map(|m| m.values().cloned())
                .collect();
            let mut oldest: Option<(SystemTime, Arc<tokio::sync::Mutex<Entry>>)> = None;
            for entry in all {
                if let Ok(e) = entry.try_lock()
                    && matches!(e.state, State::Live(_))
                    && oldest.as_ref().is_none_or(|(at, _)| e.info.last_used_at < *at)
                {
                    oldest = Some((e.info.last_used_at, entry.clone()));
                }
            }
            let Some((_, entry)) = oldest else { return };
            let guard = entry.lock_owned().await;
            let id = guard.info.id.clone();
            if let Err(err) = self.pause(provider, guard).await {
                tracing::warn!(context = %id, "cannot pause a context to make room: {err}");
            }
        }
    }

    /// Writes a live context to disk and frees its memory. The work runs
    /// with the entry's lock, so a caller that goes away mid-pause leaves
    /// the context whole (in memory, or paused).
    async fn pause(&self, provider: &WasmProvider, guard: Guard) -> Result<Guard, ProviderError> {
        if !matches!(guard.state, State::Live(_)) {
            return Ok(guard);
        }
        let dir = self.dir(&guard.env_sandbox_id(), &guard.info.id);
        let (guard, result) = provider
            .run_guest(move || {
                let mut guard = guard;
                let meta = meta_json(&guard.info, &guard.image);
                let ledger = guard.env.ledger.clone();
                let current = guard.current.take();
                let State::Live(live) = &mut guard.state else {
                    unreachable!()
                };
                let written = current
                    .map_or_else(|| live.snapshot(None), Ok)
                    .and_then(|s| super::context::write_snapshot(&dir, &s, &meta))
                    .map_err(ProviderError::Internal);
                let result = written.and_then(|bytes| match ledger.reserve(bytes) {
                    Ok(()) => Ok(bytes),
                    Err(over) => {
                        std::fs::remove_dir_all(&dir).ok();
                        Err(ProviderError::QuotaExceeded(format!(
                            "the context cannot be paused: {over}"
                        )))
                    }
                });
                if let Ok(bytes) = result {
                    // Freed here, on the guest thread.
                    guard.state = State::Paused;
                    guard.paused_bytes = bytes;
                    guard.spare = None;
                }
                Ok((guard, result.map(|_| ())))
            })
            .await?;
        if result.is_ok() {
            self.live.fetch_sub(1, Ordering::AcqRel);
            tracing::info!(context = %guard.info.id, bytes = guard.paused_bytes, "context paused to disk");
        }
        result.map(|()| guard)
    }

    /// Brings a paused context back into memory.
    async fn resume(&self, provider: &WasmProvider, guard: Guard) -> Result<Guard, ProviderError> {
        match guard.state {
            State::Live(_) => return Ok(guard),
            State::Broken => {
                return Err(ProviderError::Internal(anyhow::anyhow!(
                    "context {} was lost when its guest failed",
                    guard.info.id
                )));
            }
            State::Paused => {}
        }
        self.make_room(provider).await?;
        let dir = self.dir(&guard.env_sandbox_id(), &guard.info.id);
        let mut guard = provider
            .run_guest(move || {
                let mut guard = guard;
                let (snapshot, _) =
                    super::context::read_snapshot(&dir, guard.env.memory_bytes).map_err(ProviderError::Internal)?;
                let live = LiveContext::restore(guard.image.clone(), &guard.env, &snapshot)?;
                guard.state = State::Live(Box::new(live));
                guard.current = Some(snapshot);
                guard.env.ledger.release(guard.paused_bytes);
                guard.paused_bytes = 0;
                // The guard is held here: the context is live before its
                // files go, whoever awaits this.
                std::fs::remove_dir_all(&dir).ok();
                Ok(guard)
            })
            .await?;
        self.live.fetch_add(1, Ordering::AcqRel);
        guard.info.last_used_at = SystemTime::now();
        Ok(guard)
    }

    /// Forgets every context of a sandbox and removes their files.
    pub fn drop_sandbox(&self, sandbox: &str) {
        if let Some(contexts) = crate::sandbox::lock(&self.sandboxes).remove(sandbox) {
            for entry in contexts.values() {
                // A context running a cell holds its lock; its state is
                // dropped when the cell ends and the entry goes.
                if let Ok(e) = entry.try_lock()
                    && matches!(e.state, State::Live(_))
                {
                    self.live.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
        let dir = self.root.join(sandbox);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove {}: {e}", dir.display());
        }
    }

    /// After a restart: takes back the paused contexts of `known` sandboxes
    /// and removes every other context directory (a sandbox that is gone, a
    /// pause that never finished, a context that was in memory at a crash).
    pub fn recover(&self, provider: &WasmProvider, known: &[Sandbox]) -> usize {
        let Ok(read) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut recovered = 0;
        for sandbox_dir in read.flatten() {
            let name = sandbox_dir.file_name().to_string_lossy().into_owned();
            let Some(sandbox) = known.iter().find(|s| s.id.as_str() == name) else {
                std::fs::remove_dir_all(sandbox_dir.path()).ok();
                continue;
            };
            let Ok(contexts) = std::fs::read_dir(sandbox_dir.path()) else {
                continue;
            };
            for dir in contexts.flatten() {
                match self.recover_one(provider, sandbox, &dir.path()) {
                    Ok(()) => recovered += 1,
                    Err(e) => {
                        tracing::info!("dropping context directory {}: {e:#}", dir.path().display());
                        std::fs::remove_dir_all(dir.path()).ok();
                    }
                }
            }
        }
        recovered
    }

    fn recover_one(&self, provider: &WasmProvider, sandbox: &Sandbox, dir: &Path) -> anyhow::Result<()> {
        let text = std::fs::read(dir.join("state.json"))?;
        let value: serde_json::Value = serde_json::from_slice(&text)?;
        let meta = &value["meta"];
        let id = meta["id"].as_str().unwrap_or_default().to_string();
        if !valid_id(&id) || dir.file_name().and_then(|n| n.to_str()) != Some(id.as_str()) {
            anyhow::bail!("its id does not match its directory");
        }
        let language = meta["language"].as_str().unwrap_or_default();
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("contexts are unavailable"))?;
        let image = engine
            .image(language)
            .ok_or_else(|| anyhow::anyhow!("language {language} is not served"))?
            .clone();
        // A paused memory holds the pages that differ from the program's
        // image: on another image they would mean something else.
        if let Some(sha) = meta["image_sha256"].as_str()
            && sha != image.sha256
        {
            anyhow::bail!(
                "it was paused on another build of its image ({sha}, now {})",
                image.sha256
            );
        }
        let cwd = meta["cwd"].as_str().unwrap_or("/workspace").to_string();
        let env: Vec<(String, String)> = serde_json::from_value(meta["env"].clone()).unwrap_or_default();
        let time = |key: &str| {
            meta[key]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap_or_else(SystemTime::now)
        };
        let bytes = dir_bytes(dir);
        let ledger = provider.ledger(sandbox);
        ledger.release(0);
        // Recovered state is already on disk: it is counted whether or not
        // it fits what the quota allows now.
        if ledger.reserve(bytes).is_err() {
            tracing::warn!(context = %id, "a recovered paused context is over its sandbox's disk quota");
        }
        let info = ContextInfo {
            id: id.clone(),
            language: language.to_string(),
            image: image.program.image().to_string(),
            cwd,
            state: "paused",
            created_at: time("created_at"),
            last_used_at: time("last_used_at"),
            memory_bytes: meta["memory_bytes"].as_u64().unwrap_or(0),
            default: meta["default"].as_bool().unwrap_or(false),
        };
        let entry = Entry {
            env: provider.context_env(sandbox, env, &info.cwd),
            info,
            image,
            state: State::Paused,
            spare: None,
            current: None,
            paused_bytes: bytes,
        };
        self.insert(sandbox.id.as_str(), id, entry).map_err(anyhow::Error::from)
    }
}

impl Entry {
    /// A copy of this live context in a fresh instance with `env` (its own
    /// sandbox's, for a sandbox fork), and the snapshot it was made from,
    /// which is the copy's rollback point. Runs on a guest thread.
    fn copy_live(&mut self, env: &ContextEnv) -> Result<(LiveContext, Snapshot), ProviderError> {
        let State::Live(live) = &mut self.state else {
            return Err(ProviderError::Internal(anyhow::anyhow!("the context is not in memory")));
        };
        let snapshot = match &self.current {
            Some(current) => current.clone(),
            None => live.snapshot(None).map_err(ProviderError::Internal)?,
        };
        let copy = LiveContext::restore(self.image.clone(), env, &snapshot)?;
        Ok((copy, snapshot))
    }

    /// The sandbox this context belongs to (its directory's name).
    fn env_sandbox_id(&self) -> String {
        self.env
            .sandbox_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn info(&mut self) -> ContextInfo {
        let mut info = self.info.clone();
        match &mut self.state {
            State::Live(live) => {
                info.state = "ready";
                info.memory_bytes = live.memory_bytes();
            }
            _ => info.state = "paused",
        }
        self.info.memory_bytes = info.memory_bytes;
        info
    }
}

/// The metadata stored beside a paused snapshot.
fn meta_json(info: &ContextInfo, image: &ContextImage) -> serde_json::Value {
    serde_json::json!({
        "image_sha256": image.sha256,
        "id": info.id,
        "language": info.language,
        "cwd": info.cwd,
        "created_at": humantime::format_rfc3339_seconds(info.created_at).to_string(),
        "last_used_at": humantime::format_rfc3339_seconds(info.last_used_at).to_string(),
        "memory_bytes": info.memory_bytes,
        "default": info.default,
    })
}

/// `ctx_` and 20 lowercase hex characters (80 bits) from a CSPRNG.
fn new_id() -> String {
    let mut bytes = [0u8; 10];
    rand::rng().fill_bytes(&mut bytes);
    format!("ctx_{}", hex::encode(bytes))
}

fn valid_id(id: &str) -> bool {
    id.strip_prefix("ctx_")
        .is_some_and(|hex| hex.len() == 20 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Copies a sandbox's directory tree: regular files (with `copy_file_range`,
/// which reflinks where the filesystem can), directories and symlinks, as
/// they are, through an explicit stack (no recursion on the guest's depth).
/// A tree nested deeper than the disk quota can measure is refused with
/// [`TreeTooDeep`] rather than half copied.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(to)?;
    let mut stack = vec![(from.to_path_buf(), to.to_path_buf(), 1)];
    while let Some((src, dst, depth)) = stack.pop() {
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let (s, d) = (entry.path(), dst.join(entry.file_name()));
            if kind.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&s)?, &d)?;
            } else if kind.is_dir() {
                if depth >= super::quota::MAX_WALK_DEPTH {
                    return Err(std::io::Error::other(TreeTooDeep));
                }
                std::fs::create_dir(&d)?;
                let mode = entry.metadata()?.permissions().mode() & 0o777;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode | 0o700))?;
                stack.push((s, d, depth + 1));
            } else if kind.is_file() {
                std::fs::copy(&s, &d)?;
            }
        }
    }
    Ok(())
}

/// A sandbox's files nest deeper than a fork copies.
#[derive(Debug, thiserror::Error)]
#[error(
    "the sandbox's files nest deeper than {} directories, which a fork does not copy",
    super::quota::MAX_WALK_DEPTH
)]
struct TreeTooDeep;

fn copy_dir_files(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        std::fs::copy(entry.path(), to.join(entry.file_name()))?;
    }
    Ok(())
}

impl WasmProvider {
    fn manager(&self) -> &ContextManager {
        &self.contexts
    }

    /// The WASI world and limits of a context in `sandbox`.
    pub(super) fn context_env(&self, sandbox: &Sandbox, extra: Vec<(String, String)>, cwd: &str) -> ContextEnv {
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME".into(), "/workspace".into()),
            ("TMPDIR".into(), "/tmp".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ];
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra);
        env.retain(|(k, _)| k != "PWD");
        env.push(("PWD".into(), cwd.to_string()));
        ContextEnv {
            sandbox_dir: self.dir(sandbox),
            ledger: self.ledger(sandbox),
            memory_bytes: (sandbox.memory_mb as usize) << 20,
            env,
        }
    }

    fn context_image(&self, language: &str) -> Result<Arc<ContextImage>, ProviderError> {
        let manager = self.manager();
        let Some(engine) = &manager.engine else {
            return Err(ProviderError::Unavailable(format!(
                "code contexts are unavailable on this server: {}",
                manager.engine_error.as_deref().unwrap_or("their engine did not start")
            )));
        };
        if let Some(image) = engine.image(language) {
            return Ok(image.clone());
        }
        if let Some(why) = engine.unavailable.get(language) {
            return Err(ProviderError::Unavailable(format!(
                "{language} contexts are unavailable on this server: {why}"
            )));
        }
        Err(ProviderError::Unsupported(format!(
            "the wasm provider has no {language:?} contexts; the languages with contexts are: {}",
            self.languages().join(", ")
        )))
    }
}

fn cell_output(run: &super::context::CellRun) -> ExecOutput {
    ExecOutput {
        exit_code: 0,
        stdout: run.stdout.clone(),
        stderr: run.stderr.clone(),
        truncated: run.truncated,
        duration: run.duration,
        trap: None,
    }
}

#[async_trait]
impl ContextBackend for WasmProvider {
    fn languages(&self) -> Vec<&'static str> {
        let Some(engine) = self.manager().engine.as_ref() else {
            return vec![];
        };
        ["python", "javascript"]
            .into_iter()
            .filter(|l| engine.image(l).is_some())
            .collect()
    }

    async fn create(&self, sandbox: &Sandbox, spec: ContextSpec) -> Result<ContextInfo, ProviderError> {
        let image = self.context_image(&spec.language)?;
        if let Some(asked) = &spec.image
            && asked != image.program.image()
            && !(spec.language == "javascript" && ["quickjs", "javascript", "js"].contains(&asked.as_str()))
            && !(spec.language == "python" && ["python:data", "python3.15"].contains(&asked.as_str()))
        {
            let why = if spec.language == "python" {
                " (the other Python images are WASI 0.2 components or start from scratch, and their interpreter's \
                 state cannot be copied, which rollback, fork and pause need)"
            } else {
                ""
            };
            return Err(ProviderError::Unsupported(format!(
                "{} contexts run image {}, not {asked}{why}",
                spec.language,
                image.program.image()
            )));
        }
        let needs = image.initial_memory_bytes();
        if needs > sandbox.memory_mb << 20 {
            return Err(ProviderError::InvalidInput(format!(
                "{} contexts start with {} MiB of memory ({}'s pre-initialized heap), more than this sandbox's \
                 memory_mb of {}; create the sandbox with memory_mb of at least {}",
                spec.language,
                needs.div_ceil(1 << 20),
                image.program.image(),
                sandbox.memory_mb,
                needs.div_ceil(1 << 20)
            )));
        }
        let manager = self.manager();
        if manager.entries(sandbox).len() >= manager.max_per_sandbox {
            return Err(ProviderError::QuotaExceeded(format!(
                "this sandbox already has the maximum of {} contexts",
                manager.max_per_sandbox
            )));
        }
        let root = super::files::open_root(&self.dir(sandbox))?;
        Self::check_workdir(&root, &spec.cwd)?;
        manager.make_room(self).await?;
        let cwd = spec.cwd.to_string();
        let env = self.context_env(sandbox, spec.env.into_iter().collect(), &cwd);
        let (img, env2, cwd2) = (image.clone(), env.clone(), cwd.clone());
        let mut live = self
            .run_guest(move || LiveContext::create(img, &env2, &cwd2).map(Box::new))
            .await?;
        let now = SystemTime::now();
        let info = ContextInfo {
            id: new_id(),
            language: spec.language,
            image: image.program.image().to_string(),
            cwd,
            state: "ready",
            created_at: now,
            last_used_at: now,
            memory_bytes: live.memory_bytes(),
            default: spec.default,
        };
        let entry = Entry {
            info: info.clone(),
            env,
            image,
            state: State::Live(live),
            spare: None,
            current: None,
            paused_bytes: 0,
        };
        manager.insert(sandbox.id.as_str(), info.id.clone(), entry)?;
        manager.live.fetch_add(1, Ordering::AcqRel);
        Ok(info)
    }

    async fn list(&self, sandbox: &Sandbox) -> Vec<ContextInfo> {
        let mut out = vec![];
        for entry in self.manager().entries(sandbox) {
            let mut e = entry.lock().await;
            out.push(e.info());
        }
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }

    async fn get(&self, sandbox: &Sandbox, id: &str) -> Result<ContextInfo, ProviderError> {
        let entry = self.manager().entry(sandbox, id)?;
        let mut e = entry.lock().await;
        Ok(e.info())
    }

    async fn delete(&self, sandbox: &Sandbox, id: &str) -> Result<(), ProviderError> {
        let manager = self.manager();
        let Some(entry) = manager.remove(sandbox.id.as_str(), id) else {
            return Ok(());
        };
        let mut e = entry.lock().await;
        match std::mem::replace(&mut e.state, State::Broken) {
            State::Live(live) => {
                manager.live.fetch_sub(1, Ordering::AcqRel);
                // Dropping an instance frees its memory; off the async threads.
                tokio::task::spawn_blocking(move || drop(live));
            }
            State::Paused => {
                e.env.ledger.release(e.paused_bytes);
                std::fs::remove_dir_all(manager.dir(sandbox.id.as_str(), id)).ok();
            }
            State::Broken => {}
        }
        Ok(())
    }

    async fn run(&self, sandbox: &Sandbox, id: &str, cell: CellSpec, io: ExecIo) -> Result<CellOutput, ProviderError> {
        let manager = self.manager();
        let entry = manager.entry(sandbox, id)?;
        let guard = manager.resume(self, entry.lock_owned().await).await?;
        let limits = CellLimits {
            timeout: cell.timeout,
            fuel: self.fuel,
            output_limit: self.output_limit,
            output: io.output,
            cancel: io.cancel,
        };
        let code = cell.code;
        // The guest thread owns the entry's lock for the whole cell and puts
        // the context back itself, so a client that leaves mid-cell (its
        // request dropped) never loses the context.
        let (run, rolled_back) = self
            .run_guest(move || {
                let mut guard = guard;
                let e = &mut *guard;
                let State::Live(live) = &mut e.state else {
                    unreachable!("resumed")
                };
                let held = e.env.ledger.begin();
                let snapshot = match e.current.take() {
                    Some(current) => current,
                    None => live.snapshot(e.spare.take()).map_err(ProviderError::Internal)?,
                };
                let run = live.run_cell(&code, cell.stdin, &limits);
                let rolled_back = run.outcome.is_err();
                if rolled_back {
                    let restored = LiveContext::restore(e.image.clone(), &e.env, &snapshot)?;
                    **live = restored;
                    e.current = Some(snapshot);
                } else {
                    // Where writes are tracked, the rollback point of the
                    // next cell is this one's, plus the pages it wrote.
                    let mut snapshot = snapshot;
                    match live.update(&mut snapshot) {
                        Ok(true) => e.current = Some(snapshot),
                        Ok(false) => e.spare = Some(snapshot),
                        Err(err) => {
                            tracing::warn!("a context's snapshot could not be brought up to date: {err:#}");
                            e.spare = Some(snapshot);
                        }
                    }
                }
                drop(held);
                e.info.last_used_at = SystemTime::now();
                Ok((run, rolled_back))
            })
            .await?;
        let partial = || Box::new(cell_output(&run));
        let output = match run.outcome {
            Ok(report) => CellOutput {
                stdout: run.stdout,
                stderr: run.stderr,
                truncated: run.truncated,
                duration: run.duration,
                result: report.result,
                error: report.error,
                rolled_back,
            },
            Err(CellFailure::Timeout) => {
                return Err(ProviderError::Timeout {
                    timeout: cell.timeout,
                    partial: partial(),
                });
            }
            Err(CellFailure::Fuel) => {
                return Err(ProviderError::FuelExhausted {
                    fuel: self.fuel,
                    partial: partial(),
                });
            }
            Err(CellFailure::Memory) => {
                return Err(ProviderError::MemoryLimit {
                    limit_mb: sandbox.memory_mb,
                    partial: partial(),
                });
            }
            Err(CellFailure::Cancelled) => return Err(ProviderError::Cancelled),
            Err(CellFailure::Trap(kind, message)) => CellOutput {
                stdout: run.stdout,
                stderr: run.stderr,
                truncated: run.truncated,
                duration: run.duration,
                result: None,
                error: Some(serde_json::json!({
                    "name": "WasmTrap",
                    "value": format!("the interpreter crashed ({kind}): {message}"),
                    "traceback": "",
                })),
                rolled_back,
            },
            Err(CellFailure::Internal(err)) => return Err(ProviderError::Internal(err)),
        };
        Ok(output)
    }

    async fn fork(&self, sandbox: &Sandbox, id: &str) -> Result<ContextInfo, ProviderError> {
        let manager = self.manager();
        let entry = manager.entry(sandbox, id)?;
        if manager.entries(sandbox).len() >= manager.max_per_sandbox {
            return Err(ProviderError::QuotaExceeded(format!(
                "this sandbox already has the maximum of {} contexts",
                manager.max_per_sandbox
            )));
        }
        let guard = manager.resume(self, entry.lock_owned().await).await?;
        manager.make_room(self).await?;
        let (guard, (copy, snapshot)) = self
            .run_guest(move || {
                let mut guard = guard;
                let env = guard.env.clone();
                let copy = guard.copy_live(&env)?;
                Ok((guard, copy))
            })
            .await?;
        let mut copy = Box::new(copy);
        let now = SystemTime::now();
        let info = ContextInfo {
            id: new_id(),
            state: "ready",
            created_at: now,
            last_used_at: now,
            memory_bytes: copy.memory_bytes(),
            default: false,
            ..guard.info.clone()
        };
        let forked = Entry {
            info: info.clone(),
            env: guard.env.clone(),
            image: guard.image.clone(),
            state: State::Live(copy),
            spare: None,
            current: Some(snapshot),
            paused_bytes: 0,
        };
        drop(guard);
        manager.insert(sandbox.id.as_str(), info.id.clone(), forked)?;
        manager.live.fetch_add(1, Ordering::AcqRel);
        Ok(info)
    }

    async fn fork_sandbox(&self, parent: &Sandbox, child: &Sandbox) -> Result<(), ProviderError> {
        let manager = self.manager();
        let (from, to) = (self.dir(parent), self.dir(child));
        tokio::task::spawn_blocking(move || copy_tree(&from, &to))
            .await
            .map_err(|e| ProviderError::Internal(e.into()))?
            .map_err(|e| match e.get_ref().and_then(|e| e.downcast_ref::<TreeTooDeep>()) {
                Some(deep) => ProviderError::Conflict(deep.to_string()),
                None => ProviderError::Internal(anyhow::anyhow!("cannot copy the sandbox's files: {e}")),
            })?;
        for entry in manager.entries(parent) {
            let mut guard = entry.lock_owned().await;
            let id = guard.info.id.clone();
            let dest = manager.dir(child.id.as_str(), &id);
            let mut info = guard.info();
            // A live context is copied in memory while the server has room
            // for one more (no disk, no fsync); otherwise through a paused
            // copy on disk, which the child resumes on first use.
            let room = manager.live.load(Ordering::Acquire) < manager.max_live;
            if room && matches!(guard.state, State::Live(_)) {
                let env = self.context_env(child, guard.env.env.clone(), &info.cwd);
                let (guard, (copy, env, snapshot)) = self
                    .run_guest(move || {
                        let mut guard = guard;
                        let (copy, snapshot) = guard.copy_live(&env)?;
                        Ok((guard, (copy, env, snapshot)))
                    })
                    .await?;
                let forked = Entry {
                    env,
                    info,
                    image: guard.image.clone(),
                    state: State::Live(Box::new(copy)),
                    spare: None,
                    current: Some(snapshot),
                    paused_bytes: 0,
                };
                manager.insert(child.id.as_str(), id, forked)?;
                manager.live.fetch_add(1, Ordering::AcqRel);
                continue;
            }
            let (guard, bytes) = match &guard.state {
                State::Broken => continue,
                State::Paused => {
                    let src = manager.dir(parent.id.as_str(), &id);
                    let bytes =
                        tokio::task::spawn_blocking(move || copy_dir_files(&src, &dest).map(|_| dir_bytes(&dest)))
                            .await
                            .map_err(|e| ProviderError::Internal(e.into()))?
                            .map_err(|e| ProviderError::Internal(e.into()))?;
                    (guard, bytes)
                }
                State::Live(_) => {
                    let meta = meta_json(&info, &guard.image);
                    self.run_guest(move || {
                        let mut guard = guard;
                        let State::Live(live) = &mut guard.state else {
                            unreachable!()
                        };
                        let written = live
                            .snapshot(None)
                            .and_then(|s| super::context::write_snapshot(&dest, &s, &meta))
                            .map_err(ProviderError::Internal)?;
                        Ok((guard, written))
                    })
                    .await?
                }
            };
            self.ledger(child).reserve(bytes).ok();
            info.state = "paused";
            let forked = Entry {
                env: self.context_env(child, guard.env.env.clone(), &info.cwd),
                info,
                image: guard.image.clone(),
                state: State::Paused,
                spare: None,
                current: None,
                paused_bytes: bytes,
            };
            manager.insert(child.id.as_str(), id, forked)?;
        }
        Ok(())
    }

    async fn pause_idle(&self) {
        let manager = self.manager();
        let all: Vec<_> = crate::sandbox::lock(&manager.sandboxes)
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        let now = SystemTime::now();
        for entry in all {
            let Ok(guard) = entry.clone().try_lock_owned() else {
                continue;
            };
            let idle = now.duration_since(guard.info.last_used_at).unwrap_or_default();
            if !matches!(guard.state, State::Live(_)) || idle < manager.idle_pause {
                continue;
            }
            let id = guard.info.id.clone();
            if let Err(err) = manager.pause(self, guard).await {
                tracing::warn!(context = %id, "cannot pause an idle context: {err}");
                // Try again after another idle period, not every tick.
                entry.lock().await.info.last_used_at = now;
            }
        }
    }
}

impl WasmProvider {
    /// Pauses every context in memory (graceful shutdown).
    pub(super) async fn pause_all_contexts(&self) {
        let manager = self.manager();
        let all: Vec<_> = crate::sandbox::lock(&manager.sandboxes)
            .values()
            .flat_map(|m| m.values().cloned())
            .collect();
        let mut paused = 0;
        for entry in all {
            let guard = entry.lock_owned().await;
            if matches!(guard.state, State::Live(_)) {
                let id = guard.info.id.clone();
                match manager.pause(self, guard).await {
                    Ok(_) => paused += 1,
                    Err(err) => tracing::warn!(context = %id, "cannot pause a context at shutdown: {err}"),
                }
            }
        }
        if paused > 0 {
            tracing::info!(paused, "code contexts paused to disk for the restart");
        }
    }
}
