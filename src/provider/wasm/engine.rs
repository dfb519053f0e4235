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
use wasmtime::{Config, Engine, InstancePre, Linker, Module, OptLevel};

use super::guest::{GuestState, add_to_linker};
use crate::runtime::fetch::{sha256_file, write_atomically};
use crate::runtime::{Catalog, RuntimeDef, fetch};

/// How often the epoch advances. Deadlines are checked at this granularity,
/// so a timed-out guest stops within about one tick of its deadline.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A runtime ready to instantiate.
pub struct LoadedRuntime {
    pub def: Arc<RuntimeDef>,
    pub pre: InstancePre<GuestState>,
    /// Host directory holding the runtime's read-only support files.
    pub support_dir: Option<PathBuf>,
}

pub struct WasmEngine {
    pub runtimes: HashMap<String, Arc<LoadedRuntime>>,
    _ticker: EpochTicker,
}

/// The engine settings every module is compiled and run with. The compile
/// cache key covers them, so changing one recompiles.
fn engine_config() -> Config {
    let mut config = Config::new();
    config.consume_fuel(true);
    config.epoch_interruption(true);
    config.cranelift_opt_level(OptLevel::Speed);
    config.parallel_compilation(true);
    config
}

impl WasmEngine {
    /// Fetches (if needed), compiles or loads from cache, and links every
    /// runtime of the catalogue.
    pub async fn load(catalog: &Catalog, image_dir: &Path, offline: bool) -> anyhow::Result<WasmEngine> {
        let engine = Engine::new(&engine_config()).map_err(anyhow::Error::from)?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        let mut modules: HashMap<String, Module> = HashMap::new();
        let mut runtimes = HashMap::new();
        for def in catalog.runtimes() {
            let manifest = catalog.image(&def.wasm_image).expect("catalogue validated");
            if !modules.contains_key(&manifest.name) {
                let wasm = fetch::ensure_image(manifest, image_dir, offline).await?;
                let engine = engine.clone();
                let sha = manifest.wasm_sha256.clone();
                let cache_dir = image_dir.join("cache");
                let module =
                    tokio::task::spawn_blocking(move || load_module(&engine, &wasm, &sha, &cache_dir)).await??;
                modules.insert(manifest.name.clone(), module);
            }
            let module = &modules[&manifest.name];
            let pre = linker
                .instantiate_pre(module)
                .map_err(anyhow::Error::from)
                .with_context(|| format!("cannot link runtime {}", def.name))?;
            let support_dir = write_support_files(def, image_dir)?;
            runtimes.insert(
                def.name.clone(),
                Arc::new(LoadedRuntime {
                    def: def.clone(),
                    pre,
                    support_dir,
                }),
            );
        }
        let ticker = EpochTicker::start(engine.clone());
        Ok(WasmEngine {
            runtimes,
            _ticker: ticker,
        })
    }
}

/// Loads a module from the compile cache, or compiles it and fills the cache.
/// A cache file whose checksum does not match is ignored and rewritten.
fn load_module(engine: &Engine, wasm: &Path, wasm_sha: &str, cache_dir: &Path) -> anyhow::Result<Module> {
    let mut hasher = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let key = hex::encode(&Sha256::digest(format!("{wasm_sha}:{:x}", hasher.finish()))[..12]);
    let stem = wasm.file_stem().unwrap().to_string_lossy();
    let cwasm = cache_dir.join(format!("{stem}-{key}.cwasm"));
    let checksum = cwasm.with_extension("cwasm.sha256");
    if let (Ok(expected), true) = (std::fs::read_to_string(&checksum), cwasm.exists()) {
        let started = Instant::now();
        match sha256_file(&cwasm) {
            Ok(actual) if actual == expected.trim() => {
                // SAFETY: the file was written by `Module::serialize` of an
                // engine with the same compatibility hash (it is in the file
                // name), and its checksum matches what we recorded then.
                match unsafe { Module::deserialize_file(engine, &cwasm) } {
                    Ok(module) => {
                        tracing::info!(module = %stem, elapsed = ?started.elapsed(), "loaded compiled module from cache");
                        return Ok(module);
                    }
                    Err(e) => tracing::warn!(module = %stem, "compile cache entry unusable, recompiling: {e:#}"),
                }
            }
            _ => tracing::warn!(module = %stem, "compile cache entry is corrupt, recompiling"),
        }
    }
    tracing::info!(module = %stem, "compiling (this takes a few seconds, once)");
    let started = Instant::now();
    let module = Module::from_file(engine, wasm)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot compile {}", wasm.display()))?;
    tracing::info!(module = %stem, elapsed = ?started.elapsed(), "compiled");
    let bytes = module.serialize()?;
    std::fs::create_dir_all(cache_dir)?;
    write_atomically(&cwasm, &bytes)?;
    write_atomically(&checksum, hex::encode(Sha256::digest(&bytes)).as_bytes())?;
    Ok(module)
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
struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
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
