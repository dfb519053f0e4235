//! wasmtime, hidden in one place: one `Engine` for the process, one compiled
//! module and `InstancePre` per runtime, a compile cache on disk, and an
//! epoch ticker that stops when the engine is dropped.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker as ComponentLinker};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, OptLevel, PoolingAllocationConfig,
};
use wasmtime_wasi::p2::bindings::sync::CommandPre;

use super::component::{self, ComponentState};
use super::guest::{GuestJob, GuestState, add_to_linker};
use super::{reactor, snapshot};
use crate::runtime::fetch::{sha256_file, write_atomically};
use crate::runtime::{Catalog, ImageKind, RuntimeDef, fetch, recipe};

/// How often the epoch advances. Deadlines are checked at this granularity,
/// so a timed-out guest stops within about one tick of its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A runtime ready to instantiate.
pub struct LoadedRuntime {
    pub def: Arc<RuntimeDef>,
    pub program: Program,
    /// Read-only host directories and where the guest sees them: the
    /// runtime's support files and the image's own mounts.
    pub mounts: Vec<(PathBuf, String)>,
}

impl LoadedRuntime {
    /// The memory its program starts with (for the CPython 3.15 snapshot,
    /// its whole pre-initialized heap); a sandbox needs at least this much.
    /// Components report none here: theirs start small.
    pub fn min_memory_bytes(&self) -> u64 {
        let module = match &self.program {
            Program::Module(pre) | Program::Reactor(pre) => pre.module(),
            Program::Component(_) => return 0,
        };
        module
            .exports()
            .filter_map(|export| export.ty().memory().cloned())
            .map(|memory| memory.minimum().saturating_mul(memory.page_size()))
            .max()
            .unwrap_or(0)
    }
}

/// A linked program: a preview1 module, a WASI 0.2 command component, or
/// a pre-initialized preview1 reactor driven through its `turn` export.
#[derive(Clone)]
pub enum Program {
    Module(InstancePre<GuestState>),
    Component(CommandPre<ComponentState>),
    Reactor(InstancePre<GuestState>),
}

pub struct WasmEngine {
    pub runtimes: HashMap<String, Arc<LoadedRuntime>>,
    /// Optional runtimes whose image could not be loaded, and why.
    pub unavailable: HashMap<String, String>,
    /// The pre-initialized reactor programs loaded, by image name: what
    /// code contexts of those images instantiate.
    pub reactors: HashMap<String, ReactorSource>,
    /// Whether instances come from the pooling allocator.
    pub pooling: bool,
    _ticker: EpochTicker,
}

/// The largest wasm stack a guest may use. CPython recurses deeply in C
/// (its recursion limit is 1000 Python frames), so this is above wasmtime's
/// default; the threads that run guests get a native stack to match.
pub const MAX_WASM_STACK: usize = 4 << 20;
/// Native stack of the threads that run guests.
pub const GUEST_THREAD_STACK: usize = MAX_WASM_STACK + (4 << 20);

/// The engine settings every module is compiled and run with. The compile
/// cache key covers them, so changing one recompiles.
pub(super) fn engine_config(pool: Option<&PoolSize>) -> Config {
    let mut config = Config::new();
    // The wasm proposals guests may use: wasmtime's defaults, plus
    // exception handling (on by default with the `gc` cargo feature; the
    // CPython 3.15 image's C++ and setjmp code throw wasm exceptions), and
    // not the GC proposal itself, which no image uses. The compile cache key
    // covers the features, so enabling one recompiles every image.
    config.wasm_exceptions(true);
    config.wasm_gc(false);
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.parallel_compilation(true);
    config.max_wasm_stack(MAX_WASM_STACK);
    // Only checked against max_wasm_stack: guests run synchronously.
    config.async_stack_size(MAX_WASM_STACK + (1 << 20));
    // Linear memories start as copy-on-write mappings of the module's
    // initial image (for the 3.14 image, the whole snapshotted heap), so an
    // instance costs page faults for what it touches, not a copy.
    config.memory_init_cow(true);
    if let Some(size) = pool {
        let mut pooling = PoolingAllocationConfig::default();
        pooling
            .total_component_instances(size.instances)
            .total_core_instances(size.instances * size.core_per_instance)
            .total_memories(size.instances * 2)
            .total_tables(size.instances * size.core_per_instance)
            .max_memories_per_component(4)
            .max_tables_per_component(size.core_per_instance)
            .max_core_instances_per_component(size.core_per_instance)
            .max_memory_size(4 << 30)
            .table_elements(1 << 16)
            .max_component_instance_size(1 << 20)
            // Instance metadata, allocated as needed up to this bound: the
            // CPython 3.15 image needs about 1.5 MiB (its many functions).
            .max_core_instance_size(4 << 20)
            // A store that throws a wasm exception gets a GC heap for it,
            // which takes a slot of the memory pool (hence two memories per
            // instance above); at most one per instance.
            .total_gc_heaps(size.instances)
            // The first `keep_resident` bytes of a finished instance's
            // memory are reset in place (wasmtime restores the image or
            // zeroes them) instead of being returned to the kernel with
            // madvise, so the next instance does not fault them in again.
            // For the CPython 3.14 image this halves the exec time.
            .linear_memory_keep_resident(size.keep_resident)
            .table_keep_resident(size.keep_resident)
            // Where the kernel has PAGEMAP_SCAN (Linux 6.7), the pages an
            // exec dirtied anywhere in its memory are reset, up to that
            // budget, instead of only the lowest addresses: the CPython 3.15
            // snapshot's heap is 112 MiB, and an exec touches pages all over
            // it, which would otherwise be faulted in again every time.
            .pagemap_scan(wasmtime::Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    }
    config
}

/// How many instances the pooling allocator reserves room for.
#[derive(Debug, Clone, Copy)]
pub struct PoolSize {
    pub instances: u32,
    pub core_per_instance: u32,
    pub keep_resident: usize,
}

impl PoolSize {
    pub fn for_concurrency(max_concurrent: usize, keep_resident: usize) -> PoolSize {
        PoolSize {
            // A running exec holds up to two instances (a shell script's
            // current guest and the previous one, parked until released),
            // and a finished exec one more until its thread releases it.
            instances: (max_concurrent as u32).saturating_mul(3).saturating_add(4),
            core_per_instance: 32,
            keep_resident,
        }
    }
}

/// Whether the pooling allocator can reserve its address space for
/// `pool` here (what `stacyvm doctor` checks); the engine is dropped.
pub fn check_pooling(pool: &PoolSize) -> anyhow::Result<()> {
    Engine::new(&engine_config(Some(pool)))
        .map(drop)
        .map_err(anyhow::Error::from)
}

/// Where images come from and how the engine is set up.
pub struct LoadOptions {
    pub image_dir: PathBuf,
    pub offline: bool,
    pub pool: PoolSize,
    /// The Python that builds images from recipes.
    pub build_python: Option<String>,
    /// Fail instead of falling back when an image is unavailable.
    pub strict: bool,
}

impl WasmEngine {
    /// Fetches or builds (if needed), compiles or loads from cache, and
    /// links every runtime of the catalogue.
    pub async fn load(catalog: &Catalog, options: &LoadOptions) -> anyhow::Result<WasmEngine> {
        let image_dir = options.image_dir.as_path();
        let (engine, pooling) = match Engine::new(&engine_config(Some(&options.pool))) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(
                    "the pooling allocator is unavailable ({e:#}); instances are allocated on demand, which is slower"
                );
                (Engine::new(&engine_config(None)).map_err(anyhow::Error::from)?, false)
            }
        };
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        reactor::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        let mut component_linker: ComponentLinker<ComponentState> = ComponentLinker::new(&engine);
        component::add_to_linker(&mut component_linker).map_err(anyhow::Error::from)?;

        // Each image once, even when several runtimes use it.
        let mut programs: HashMap<String, Result<Loaded, String>> = HashMap::new();
        let mut reactors = HashMap::new();
        for def in catalog.runtimes() {
            let manifest = catalog.image(&def.wasm_image).expect("catalogue validated");
            if programs.contains_key(&manifest.name) {
                continue;
            }
            let loaded = load_program(&engine, &linker, &component_linker, manifest, options).await;
            let loaded = match loaded {
                Ok((loaded, source)) => {
                    if let Some(source) = source {
                        reactors.insert(manifest.name.clone(), source);
                    }
                    Ok(loaded)
                }
                // A runtime with a fallback still serves; one without fails
                // the start.
                Err(e) if (def.fallback.is_some() || def.optional) && !options.strict => Err(format!("{e:#}")),
                Err(e) => return Err(e.context(format!("cannot load runtime {}", def.name))),
            };
            programs.insert(manifest.name.clone(), loaded);
        }
        let mut runtimes = HashMap::new();
        let mut unavailable = HashMap::new();
        for runtime in catalog.runtimes() {
            let (def, (program, mut mounts)) = match &programs[&runtime.wasm_image] {
                Ok(loaded) => (runtime.clone(), loaded.clone()),
                Err(reason) if runtime.fallback.is_none() => {
                    tracing::warn!(
                        "image {} is unavailable, so the commands of runtime {} cannot run: {reason}",
                        runtime.wasm_image,
                        runtime.name,
                    );
                    unavailable.insert(runtime.name.clone(), reason.clone());
                    continue;
                }
                Err(reason) => {
                    let fallback = catalog
                        .runtimes()
                        .iter()
                        .find(|r| Some(&r.name) == runtime.fallback.as_ref())
                        .expect("catalogue validated");
                    tracing::warn!(
                        "image {} is unavailable, so runtime {} (images {}) runs {} instead: {reason}",
                        runtime.wasm_image,
                        runtime.name,
                        runtime.images.join(", "),
                        fallback.wasm_image,
                    );
                    let loaded = programs[&fallback.wasm_image]
                        .clone()
                        .expect("fallbacks have fetched images");
                    (fallback.clone(), loaded)
                }
            };
            if let Some(dir) = write_support_files(&def, image_dir)? {
                mounts.push((dir, def.support_guest_dir()));
            }
            runtimes.insert(runtime.name.clone(), Arc::new(LoadedRuntime { def, program, mounts }));
        }
        let ticker = EpochTicker::start(engine.clone());
        Ok(WasmEngine {
            runtimes,
            unavailable,
            reactors,
            pooling,
            _ticker: ticker,
        })
    }
}

/// A linked program and the read-only directories its image mounts.
type Loaded = (Program, Vec<(PathBuf, String)>);

/// A pre-initialized reactor's program as loaded: the instrumented
/// snapshot (its file and hash, which key the compile cache), the image's
/// mounts in the order the snapshot was taken with, and the state it
/// exports.
#[derive(Debug, Clone)]
pub struct ReactorSource {
    pub wasm: PathBuf,
    pub sha256: String,
    pub mounts: Vec<(PathBuf, String)>,
    pub layout: snapshot::InstrumentedInfo,
}

/// Loads one image: a fetched module, or a built component with its mounts.
async fn load_program(
    engine: &Engine,
    linker: &Linker<GuestState>,
    component_linker: &ComponentLinker<ComponentState>,
    manifest: &crate::runtime::ImageManifest,
    options: &LoadOptions,
) -> anyhow::Result<(Loaded, Option<ReactorSource>)> {
    let image_dir = options.image_dir.as_path();
    let cache_dir = image_dir.join("cache");
    let mut built_dir = None;
    let mut reactor_source = None;
    let (wasm, sha, mounts) = match &manifest.build {
        None if manifest.kind == ImageKind::Reactor => {
            let fetched = fetch::ensure_package_image(manifest, image_dir, options.offline).await?;
            let mounts: Vec<(PathBuf, String)> = manifest
                .mounts
                .iter()
                .map(|(guest, rel)| (fetched.dir.join(rel), guest.clone()))
                .collect();
            let built = snapshot::ensure_snapshot(manifest, &fetched, &mounts, options.offline).await?;
            let (built, layout) = tokio::task::spawn_blocking(move || snapshot::ensure_instrumented(&built)).await??;
            reactor_source = Some(ReactorSource {
                wasm: built.wasm.clone(),
                sha256: built.sha256.clone(),
                mounts: mounts.clone(),
                layout,
            });
            (built.wasm, built.sha256, mounts)
        }
        None => {
            let wasm = fetch::ensure_image(manifest, image_dir, options.offline).await?;
            (wasm, manifest.wasm_sha256.clone(), vec![])
        }
        Some(_) => {
            let built =
                recipe::ensure_built(manifest, image_dir, options.offline, options.build_python.as_deref()).await?;
            let mounts = manifest
                .mounts
                .iter()
                .map(|(guest, rel)| (built.dir.join(rel), guest.clone()))
                .collect();
            built_dir = Some(built.dir.clone());
            (built.wasm, built.wasm_sha256, mounts)
        }
    };
    let (engine, name) = (engine.clone(), manifest.name.clone());
    let program = match manifest.kind {
        ImageKind::Module | ImageKind::Reactor => {
            let module =
                tokio::task::spawn_blocking(move || load_cached::<Module>(&engine, &name, &wasm, &sha, &cache_dir))
                    .await??;
            let pre = linker
                .instantiate_pre(&module)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot link image {}", manifest.name))?;
            if manifest.kind == ImageKind::Reactor {
                Program::Reactor(pre)
            } else {
                Program::Module(pre)
            }
        }
        ImageKind::Component => {
            let component =
                tokio::task::spawn_blocking(move || load_cached::<Component>(&engine, &name, &wasm, &sha, &cache_dir))
                    .await??;
            let pre = component_linker
                .instantiate_pre(&component)
                .and_then(CommandPre::new)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot link image {}", manifest.name))?;
            Program::Component(pre)
        }
    };
    if let (Some(dir), Some(stdlib)) = (built_dir, manifest.mounts.iter().find(|(guest, _)| *guest == "/python")) {
        precompile_stdlib(&program, &dir, stdlib.1, &mounts).await;
    }
    Ok(((program, mounts), reactor_source))
}

/// Compiles the standard library of a built Python image to `.pyc` files,
/// once, with the image's own interpreter, so that modules the snapshot did
/// not preload import without compiling their source in every exec. The
/// files use unchecked hashes: the library is read-only, so its sources are
/// never stat'ed against them. Failure only costs speed, so it is logged.
async fn precompile_stdlib(program: &Program, dir: &Path, lib: &str, mounts: &[(PathBuf, String)]) {
    let marker = dir.join(lib).join(".stacyvm-pyc");
    if marker.exists() {
        return;
    }
    let started = Instant::now();
    // The image directory is the guest's `/`, writable, so the library is
    // also at `/<lib>`; the .pyc files record `/python` as their source path.
    let lib_in_root = format!("/{lib}");
    let argv = [
        "python3",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        &lib_in_root,
        "-p",
        "/python",
        &lib_in_root,
    ];
    let runtime = LoadedRuntime {
        def: Arc::new(RuntimeDef {
            name: "precompile".into(),
            argv0: "python3".into(),
            ..RuntimeDef::default()
        }),
        program: program.clone(),
        mounts: mounts.to_vec(),
    };
    let job = GuestJob {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PWD".into(), "/".into())],
        sandbox_dir: dir.to_path_buf(),
        stdin: vec![],
        timeout: Duration::from_secs(600),
        memory_bytes: 1 << 30,
        fuel: u64::MAX,
        output_limit: 64 << 10,
        close_when_full: false,
        stdout: Default::default(),
        stderr: Default::default(),
        ledger: super::quota::DiskLedger::unlimited(),
        stdin_stream: None,
        stdin_custom: None,
        output: None,
        cancel: Default::default(),
    };
    let result = super::guest::on_guest_thread(move || super::guest::run(&runtime, job)).await;
    match result {
        Ok(out) if out.exit_code == 0 => {
            tracing::info!(elapsed = ?started.elapsed(), "precompiled the standard library");
            if let Err(e) = std::fs::write(&marker, b"") {
                tracing::warn!("cannot write {}: {e}", marker.display());
            }
        }
        Ok(out) => tracing::warn!(
            exit_code = out.exit_code,
            "precompiling the standard library failed; imports outside the snapshot compile from source: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => tracing::warn!("precompiling the standard library failed: {e}"),
    }
}

/// Loads a compiled module or component from the compile cache, or
/// compiles it and fills the cache. A cache file whose checksum does not
/// match is ignored and rewritten.
pub(super) fn load_cached<T: Compiled>(
    engine: &Engine,
    name: &str,
    wasm: &Path,
    wasm_sha: &str,
    cache_dir: &Path,
) -> anyhow::Result<T> {
    let key = cache_key(engine, wasm_sha);
    let cwasm = cache_dir.join(format!("{name}-{key}.cwasm"));
    let checksum = cwasm.with_extension("cwasm.sha256");
    if let Some(program) = load_cache_entry(engine, name, &cwasm, &checksum) {
        return Ok(program);
    }
    // One compile per entry at a time, even across servers sharing the
    // directory (tests start many at once): the CPython 3.15 image takes a
    // minute or more on two cores. A waiter finds the entry made.
    std::fs::create_dir_all(cache_dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_dir.join(format!(".{name}-{key}.lock")))?;
    lock.lock()?;
    if let Some(program) = load_cache_entry(engine, name, &cwasm, &checksum) {
        return Ok(program);
    }
    tracing::info!(program = %name, "compiling (once per image and engine settings; a few seconds, or a minute or more for large images)");
    let started = Instant::now();
    let program = T::from_file(engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", wasm.display()))?;
    tracing::info!(program = %name, elapsed = ?started.elapsed(), "compiled");
    let bytes = program.serialize()?;
    write_atomically(&cwasm, &bytes)?;
    write_atomically(&checksum, hex::encode(Sha256::digest(&bytes)).as_bytes())?;
    drop(lock);
    Ok(program)
}

/// The compile cache key of a program: its wasm's hash and everything of
/// the engine that a compiled program depends on (wasmtime's version, the
/// target, the wasm features and every other setting), as wasmtime itself
/// checks on loading.
fn cache_key(engine: &Engine, wasm_sha: &str) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(&Sha256::digest(format!("{wasm_sha}:{:x}", hasher.finish()))[..12])
}

/// A compile cache entry, if it is there and intact.
fn load_cache_entry<T: Compiled>(engine: &Engine, name: &str, cwasm: &Path, checksum: &Path) -> Option<T> {
    if let (Ok(expected), true) = (std::fs::read_to_string(checksum), cwasm.exists()) {
        let started = Instant::now();
        match sha256_file(cwasm) {
            // SAFETY: the file was written by `T::serialize` of an engine
            // with the same compatibility hash (it is in the file name), and
            // its checksum matches what we recorded then.
            Ok(actual) if actual == expected.trim() => match unsafe { T::deserialize_file(engine, cwasm) } {
                Ok(program) => {
                    tracing::info!(program = %name, elapsed = ?started.elapsed(), "loaded compiled program from cache");
                    return Some(program);
                }
                Err(e) => tracing::warn!(program = %name, "compile cache entry unusable, recompiling: {e:#}"),
            },
            _ => tracing::warn!(program = %name, "compile cache entry is corrupt, recompiling"),
        }
    }
    None
}

/// What the compile cache needs of a module or component.
pub(super) trait Compiled: Sized {
    fn from_file(engine: &Engine, wasm: &Path) -> wasmtime::Result<Self>;
    fn serialize(&self) -> wasmtime::Result<Vec<u8>>;
    /// # Safety
    /// `path` must hold what `serialize` wrote for an engine compatible with
    /// `engine`.
    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self>;
}

impl Compiled for Module {
    fn from_file(engine: &Engine, wasm: &Path) -> wasmtime::Result<Self> {
        Module::from_file(engine, wasm)
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Module::serialize(self)
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: passed on to the caller.
        unsafe { Module::deserialize_file(engine, path) }
    }
}

impl Compiled for Component {
    fn from_file(engine: &Engine, wasm: &Path) -> wasmtime::Result<Self> {
        Component::from_file(engine, wasm)
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        Component::serialize(self)
    }

    unsafe fn deserialize_file(engine: &Engine, path: &Path) -> wasmtime::Result<Self> {
        // SAFETY: passed on to the caller.
        unsafe { Component::deserialize_file(engine, path) }
    }
}

/// Materialises a runtime's support files in a directory the guest will see
/// read-only. Rewritten at every start, so edits to the runtime file apply.
fn write_support_files(def: &RuntimeDef, image_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    if def.support_files.is_empty() {
        return Ok(None);
    }
    let dir = image_dir.join("support").join(&def.name);
    std::fs::create_dir_all(&dir)?;
    for (name, content) in &def.support_files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            write_atomically(&path, content.as_bytes())?;
        }
    }
    Ok(Some(dir))
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
pub(super) struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub(super) fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("stacyvm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("cannot start the epoch ticker thread");
        EpochTicker { stop }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
