//! Pre-initialization of reactor images at image-build time, with
//! wasmtime-wizer: the CPython 3.15 image imports numpy, pandas, scipy and
//! scikit-learn once, here, and every exec starts from the result.
//!
//! The steps, once per image directory (and again only when the recipe, the
//! package or the wizer version changes):
//! 1. wizer instruments the reactor (exporting its globals and memory);
//! 2. the instrumented module runs here, under a WASI context with exactly
//!    the preopens an exec has (the snapshot keeps wasi-libc's table of
//!    them): the sandbox's `/` (an empty stand-in), then the image's mounts;
//! 3. `_initialize`, then one `turn` that runs the recipe's
//!    `stacyvm_python.py` as the module `_stacyvm` (its top level does the
//!    imports);
//! 4. wizer writes the instance's memory and globals out as a new module,
//!    `snapshot.wasm`, which the engine then compiles like any image.
//!
//! Nothing host-side survives into the snapshot: files the init opened are
//! closed by then, and each exec gets its own WASI context.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wasmtime::{Config, Engine, Instance, Linker, Module, OptLevel, Store, Val};
use wasmtime_wizer::{InstanceState, SnapshotVal, ValType, Wizer};

use super::engine::MAX_WASM_STACK;
use super::guest::{self, GuestJob, GuestState, Limited, RunStart};
use super::quota::DiskLedger;
use super::reactor;
use crate::runtime::fetch::{FetchedImage, sha256_file, write_atomically};
use crate::runtime::{ImageManifest, recipe};

/// The wasmtime-wizer release that takes the snapshot: part of its key.
pub const WIZER_VERSION: &str = "48.0.8";

/// The driver in the recipe whose top level is the pre-initialization.
const DRIVER: &str = "stacyvm_python.py";

/// How long pre-initialization may run: the imports take seconds; the
/// bound only stops a recipe that hangs.
const INIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The memory the init may use: all a 32-bit guest can address.
const INIT_MEMORY: usize = 4 << 30;

/// matplotlib's data comes as a zip inside the library zip; it is extracted
/// beside it, within these bounds (it holds about 200 files, 10 MB).
const MPL_DATA_MEMBER: &str = "matplotlib/mpl-data.zip";
const MPL_DATA_MAX_ENTRIES: usize = 20_000;
const MPL_DATA_MAX_BYTES: u64 = 256 << 20;

/// What a snapshot records about how it was made.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotInfo {
    /// Covers the recipe, the package's files and the wizer version.
    key: String,
    snapshot_sha256: String,
    /// How long the init turn took, for the record.
    init_ms: u64,
}

/// A pre-initialized program.
#[derive(Debug, Clone)]
pub struct BuiltSnapshot {
    pub wasm: PathBuf,
    pub sha256: String,
}

/// What the instrumented copy of a snapshot records: which snapshot it was
/// made from, its own hash, and the state it exports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstrumentedInfo {
    pub source_sha256: String,
    pub sha256: String,
    pub memories: Vec<u32>,
    pub globals: Vec<u32>,
    pub tables: Vec<u32>,
}

/// The snapshot both execs and code contexts run: the pre-initialized
/// program with its state exported under reserved names
/// (`instrument.rs`), so that a context's whole state can be copied. The
/// extra exports change nothing for an exec, and one compiled program then
/// serves both (one compile of a 200 MB module, not two).
pub fn ensure_instrumented(built: &BuiltSnapshot) -> anyhow::Result<(BuiltSnapshot, InstrumentedInfo)> {
    let dir = built.wasm.parent().context("a snapshot has a directory")?;
    let (wasm, record) = (
        dir.join("snapshot.instrumented.wasm"),
        dir.join("snapshot.instrumented.json"),
    );
    let known: Option<InstrumentedInfo> = std::fs::read(&record)
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok());
    if let Some(info) = known
        && info.source_sha256 == built.sha256
        && sha256_file(&wasm).ok().as_deref() == Some(info.sha256.as_str())
    {
        let built = BuiltSnapshot {
            wasm,
            sha256: info.sha256.clone(),
        };
        return Ok((built, info));
    }
    let original = std::fs::read(&built.wasm).with_context(|| format!("cannot read {}", built.wasm.display()))?;
    let layout = super::instrument::instrument(&original, &[]).context("cannot instrument the snapshot")?;
    drop(original);
    let info = InstrumentedInfo {
        source_sha256: built.sha256.clone(),
        sha256: hex::encode(Sha256::digest(&layout.wasm)),
        memories: layout.memories,
        globals: layout.globals,
        tables: layout.tables,
    };
    write_atomically(&wasm, &layout.wasm)?;
    write_atomically(&record, &serde_json::to_vec_pretty(&info)?)?;
    let built = BuiltSnapshot {
        wasm,
        sha256: info.sha256.clone(),
    };
    Ok((built, info))
}

/// The turn that makes the recipe's driver the module `_stacyvm`. Its
/// source is passed as a JSON string, which Python reads as a string too.
fn init_source(driver: &str) -> String {
    format!(
        "import sys, types\n\
         _stacyvm = types.ModuleType(\"_stacyvm\")\n\
         _stacyvm.__file__ = \"<stacyvm>\"\n\
         sys.modules[\"_stacyvm\"] = _stacyvm\n\
         exec(compile({}, \"<stacyvm>\", \"exec\"), _stacyvm.__dict__)\n\
         del _stacyvm, sys, types\n",
        serde_json::Value::String(driver.to_string())
    )
}

/// The key a snapshot is kept under: the recipe's digest, every pinned
/// file of the package, and the wizer release.
fn snapshot_key(manifest: &ImageManifest, recipe_name: &str) -> anyhow::Result<String> {
    let mut h = Sha256::new();
    h.update(recipe::digest(recipe_name)?.as_bytes());
    h.update(b"\0");
    h.update(manifest.wasm_sha256.as_bytes());
    for file in &manifest.files {
        h.update(b"\0");
        h.update(file.sha256.as_bytes());
    }
    h.update(b"\0wizer ");
    h.update(WIZER_VERSION.as_bytes());
    Ok(hex::encode(h.finalize()))
}

/// The snapshot of `manifest` in its directory, if it is there, intact and
/// made from the current recipe.
fn existing(dir: &Path, key: &str) -> Option<BuiltSnapshot> {
    let info: SnapshotInfo = serde_json::from_slice(&std::fs::read(dir.join("snapshot.json")).ok()?).ok()?;
    let wasm = dir.join("snapshot.wasm");
    if info.key != key || sha256_file(&wasm).ok()? != info.snapshot_sha256 {
        return None;
    }
    Some(BuiltSnapshot {
        wasm,
        sha256: info.snapshot_sha256,
    })
}

/// Whether the snapshot of `manifest`, fetched into `dir`, is built from
/// the current recipe and intact (what `stacyvm doctor` checks).
pub fn is_built(manifest: &ImageManifest, dir: &Path) -> bool {
    manifest
        .snapshot
        .as_deref()
        .and_then(|recipe| snapshot_key(manifest, recipe).ok())
        .is_some_and(|key| existing(dir, &key).is_some())
}

/// The pre-initialized program of a reactor image, built if missing or
/// stale (never when `offline`). `mounts` are the image's read-only
/// directories, in the order execs preopen them.
pub async fn ensure_snapshot(
    manifest: &ImageManifest,
    fetched: &FetchedImage,
    mounts: &[(PathBuf, String)],
    offline: bool,
) -> anyhow::Result<BuiltSnapshot> {
    let recipe_name = manifest
        .snapshot
        .as_deref()
        .context("the image has no snapshot recipe")?;
    let key = snapshot_key(manifest, recipe_name)?;
    let dir = fetched.dir.clone();
    let check = {
        let (dir, key) = (dir.clone(), key.clone());
        move || existing(&dir, &key)
    };
    if let Some(built) = tokio::task::spawn_blocking(check.clone()).await? {
        return Ok(built);
    }
    if offline {
        bail!(
            "image {} is not pre-initialized in {} and offline mode is on; run `stacyvm images pull` first",
            manifest.name,
            dir.display()
        );
    }
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".snapshot.lock"))?;
    let lock = tokio::task::spawn_blocking(move || lock.lock().map(|_| lock)).await??;
    if let Some(built) = tokio::task::spawn_blocking(check.clone()).await? {
        return Ok(built);
    }
    let driver = recipe::file(recipe_name, DRIVER)
        .with_context(|| format!("the recipe images/{recipe_name}/ has no {DRIVER}"))?;
    let driver = std::str::from_utf8(driver)
        .context("the driver is not UTF-8")?
        .to_string();
    let (name, wasm, mounts) = (manifest.name.clone(), fetched.wasm.clone(), mounts.to_vec());
    let started = Instant::now();
    tracing::info!(image = %name, "pre-initializing with wasmtime-wizer (once per image; about two minutes)");
    let made = guest::on_guest_thread({
        let dir = dir.clone();
        move || build(&dir, &wasm, &mounts, &init_source(&driver)).map_err(crate::provider::ProviderError::Internal)
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}"))
    .with_context(|| format!("cannot pre-initialize image {name}"))?;
    let (snapshot, init) = made;
    let sha = hex::encode(Sha256::digest(&snapshot));
    write_atomically(&dir.join("snapshot.wasm"), &snapshot)?;
    let info = SnapshotInfo {
        key,
        snapshot_sha256: sha,
        init_ms: init.as_millis() as u64,
    };
    write_atomically(&dir.join("snapshot.json"), &serde_json::to_vec_pretty(&info)?)?;
    drop(lock);
    tracing::info!(image = %name, elapsed = ?started.elapsed(), init = ?init, bytes = snapshot.len(), "pre-initialized");
    match tokio::task::spawn_blocking(check).await? {
        Some(built) => Ok(built),
        None => bail!("the snapshot of image {name} in {} is not usable", dir.display()),
    }
}

/// Instruments, initializes and snapshots; returns the new module and how
/// long the init turn took. Runs on a thread with a guest-sized stack.
fn build(dir: &Path, wasm: &Path, mounts: &[(PathBuf, String)], init: &str) -> anyhow::Result<(Vec<u8>, Duration)> {
    extract_mpl_data(dir)?;
    // The sandbox's `/` while the snapshot is taken: empty but for the
    // directories every sandbox starts with.
    let root = dir.join(".snapshot-root");
    let _ = std::fs::remove_dir_all(&root);
    for sub in ["workspace", "tmp"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    let wasm = std::fs::read(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let wizer = Wizer::new();
    let (cx, instrumented) = wizer.instrument(&wasm)?;

    let engine = init_engine()?;
    let started = Instant::now();
    let module = Module::new(&engine, &instrumented).map_err(anyhow::Error::from)?;
    drop(instrumented);
    tracing::info!(elapsed = ?started.elapsed(), "compiled the instrumented reactor");
    let mut linker: Linker<GuestState> = Linker::new(&engine);
    guest::add_to_linker(&mut linker)?;
    reactor::add_to_linker(&mut linker)?;

    let mut job = GuestJob {
        argv: vec!["python3".into()],
        env: [
            ("HOME", "/workspace"),
            ("TMPDIR", "/tmp"),
            ("LANG", "C.UTF-8"),
            ("PWD", "/"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        sandbox_dir: root.clone(),
        stdin: vec![],
        timeout: INIT_TIMEOUT,
        memory_bytes: INIT_MEMORY,
        fuel: u64::MAX,
        output_limit: 64 << 10,
        close_when_full: false,
        stdout: Default::default(),
        stderr: Default::default(),
        ledger: DiskLedger::unlimited(),
        stdin_stream: None,
        stdin_custom: None,
        output: None,
        cancel: Default::default(),
    };
    let start = RunStart::new(mounts, &mut job).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut start = start;
    let state = GuestState::new(&mut start, &job);
    let mut store = Store::new(&engine, state);
    store.limiter(|s| s.limits());
    let instance = linker.instantiate(&mut store, &module)?;
    let init_started = Instant::now();
    let status = instance
        .get_typed_func::<(), ()>(&mut store, "_initialize")
        .and_then(|f| f.call(&mut store, ()))
        .and_then(|()| reactor::call_turn(&mut store, &instance, init.as_bytes()));
    let init_time = init_started.elapsed();
    let (stderr, _) = start.stderr.take();
    let stderr = String::from_utf8_lossy(&stderr);
    match status {
        Ok(0) => {}
        Ok(status) => bail!("the init turn exited with status {status}: {stderr}"),
        Err(e) => bail!("the init turn failed: {e:#}: {stderr}"),
    }
    tracing::info!(elapsed = ?init_time, "ran the init turn");
    let snapshot = wasmtime_wasi::runtime::in_tokio(wizer.snapshot(
        &cx,
        &mut Captured {
            store: &mut store,
            instance,
        },
    ))?;
    drop(store);
    std::fs::remove_dir_all(&root).ok();
    Ok((snapshot, init_time))
}

/// The engine the init runs under: the exec engine's wasm features and
/// stack, without fuel or deadlines (nothing untrusted runs here).
fn init_engine() -> anyhow::Result<Engine> {
    let mut config = Config::new();
    config
        .wasm_exceptions(true)
        .wasm_gc(false)
        .max_wasm_stack(MAX_WASM_STACK)
        // Only checked against max_wasm_stack: the init runs synchronously.
        .async_stack_size(MAX_WASM_STACK + (1 << 20))
        .cranelift_opt_level(OptLevel::Speed)
        .parallel_compilation(true);
    Engine::new(&config).map_err(anyhow::Error::from)
}

/// The instance's state, as wizer reads it.
struct Captured<'a> {
    store: &'a mut Store<GuestState>,
    instance: Instance,
}

impl InstanceState for Captured<'_> {
    async fn global_get(&mut self, name: &str, _: ValType) -> SnapshotVal {
        let global = self
            .instance
            .get_global(&mut *self.store, name)
            .expect("wizer exports every global it snapshots");
        match global.get(&mut *self.store) {
            Val::I32(x) => SnapshotVal::I32(x),
            Val::I64(x) => SnapshotVal::I64(x),
            Val::F32(x) => SnapshotVal::F32(x),
            Val::F64(x) => SnapshotVal::F64(x),
            Val::V128(x) => SnapshotVal::V128(x.as_u128()),
            _ => panic!("wizer refuses mutable globals of reference types"),
        }
    }

    async fn memory_contents(&mut self, name: &str, contents: impl FnOnce(&[u8]) + Send) {
        let memory = self
            .instance
            .get_memory(&mut *self.store, name)
            .expect("wizer exports every memory it snapshots");
        contents(memory.data(&*self.store))
    }
}

/// Extracts matplotlib's data from the library zip into `mpl-data/`, which
/// is mounted where matplotlib looks for it. The zip is pinned by hash;
/// the bounds only guard against a mistake in a manifest.
fn extract_mpl_data(dir: &Path) -> anyhow::Result<()> {
    let dest = dir.join("mpl-data");
    let marker = dest.join(".stacyvm-extracted");
    if marker.exists() {
        return Ok(());
    }
    let tmp = dir.join("mpl-data.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let library = std::fs::File::open(dir.join("lib/python315.zip"))?;
    let mut library = zip::ZipArchive::new(library).context("the library is not a zip")?;
    let mut inner = Vec::new();
    {
        use std::io::Read;
        let member = library
            .by_name(MPL_DATA_MEMBER)
            .with_context(|| format!("the library has no {MPL_DATA_MEMBER}"))?;
        member.take(MPL_DATA_MAX_BYTES + 1).read_to_end(&mut inner)?;
    }
    let mut data = zip::ZipArchive::new(std::io::Cursor::new(inner)).context("mpl-data.zip is not a zip")?;
    if data.len() > MPL_DATA_MAX_ENTRIES {
        bail!("mpl-data.zip has more than {MPL_DATA_MAX_ENTRIES} entries");
    }
    let mut total = 0u64;
    for i in 0..data.len() {
        let mut entry = data.by_index(i)?;
        let Some(rel) = entry.enclosed_name() else {
            bail!("mpl-data.zip holds a path that leaves it: {}", entry.name());
        };
        let path = tmp.join(rel);
        if entry.is_dir() {
            std::fs::create_dir_all(&path)?;
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::File::create(&path)?;
        let left = MPL_DATA_MAX_BYTES.saturating_sub(total);
        let copied = std::io::copy(&mut std::io::Read::take(&mut entry, left + 1), &mut out)?;
        total += copied;
        if total > MPL_DATA_MAX_BYTES {
            bail!("mpl-data.zip unpacks to more than {MPL_DATA_MAX_BYTES} bytes");
        }
    }
    std::fs::write(tmp.join(".stacyvm-extracted"), b"")?;
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_init_turn_runs_the_driver_as_the_module_stacyvm() {
        let source = init_source("print(\"hi\")\nx = '\\n'\n");
        assert_eq!(
            source,
            "import sys, types\n_stacyvm = types.ModuleType(\"_stacyvm\")\n_stacyvm.__file__ = \"<stacyvm>\"\n\
             sys.modules[\"_stacyvm\"] = _stacyvm\nexec(compile(\"print(\\\"hi\\\")\\nx = '\\\\n'\\n\", \"<stacyvm>\", \"exec\"), _stacyvm.__dict__)\n\
             del _stacyvm, sys, types\n"
        );
    }
}
