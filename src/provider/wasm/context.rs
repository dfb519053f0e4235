//! Code contexts: a kept wasm instance whose interpreter state lives between
//! runs, and whose whole state can be copied out (a snapshot) and into a
//! fresh instance of the same compiled program (a fork, a rollback, a
//! resume from disk).
//!
//! What a snapshot holds, and why that is the whole state:
//! - **Guest state.** The program is instrumented when it is loaded
//!   (`instrument.rs`) so that every defined memory, every mutable global and
//!   every table is exported. A snapshot copies each memory's bytes and each
//!   global's value, and records each table's size. The tables of the
//!   programs served here are filled once by their element segments and
//!   never change; a table whose size differs from a fresh instance's makes
//!   the restore fail rather than run with stale function pointers.
//! - **Host state (WASI).** A preview1 guest sees numbers only: descriptors
//!   live on the host. Standard input, output and error are fixed objects of
//!   the context whose target changes per cell (`CellIo`), so they are the
//!   same before and after any restore; the sandbox directory is always the
//!   first preopen; and every file the guest opens is recorded (path, flags,
//!   rights) by the `path_open`, `fd_close` and `fd_renumber` shadows of the
//!   linker. A restore replays the opens under the same descriptor numbers
//!   and seeks each file to the position the snapshot read with `fd_tell`,
//!   so the copy reads and writes its open files where the original was. In
//!   a forked sandbox the same paths open in the child's own directory.
//!
//! Each guest kind plugs in through [`ContextProgram`]: how to start the
//! interpreter and how to run a cell. JavaScript (QuickJS-NG's reactor) is
//! the first; a preview1 Python reactor exporting `turn` is a second
//! implementation of the same trait.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime::{Engine, Global, Instance, InstancePre, Linker, Memory, Module, ResourceLimiter, Store, Table, Val};
use wasmtime_wasi::cli::{IsTerminal, StdinStream, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p1::wasi_snapshot_preview1 as wasi1;
use wasmtime_wasi::p2::{InputStream, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};
use wiggle::GuestMemory;

use super::guest::{GuestState, StopCheck, in_tokio};
use super::instrument::{self, GLOBAL_PREFIX, Instrumented, MEMORY_PREFIX, TABLE_PREFIX};
use super::pipe::CapturePipe;
use super::quota::DiskLedger;
use crate::provider::{OutputChunk, ProviderError, StreamKind};

/// `__WASI_ERRNO_NFILE`: the context holds as many open files as it may.
pub const ERRNO_NFILE: i32 = 41;
/// Longest path recorded for an open file; the host's own limit is lower.
pub const MAX_PATH_BYTES: usize = 4096;
/// Files one context may hold open at once; each is replayed on restore.
const MAX_OPEN_FILES: usize = 1024;
/// preview1 `oflags` that must not be replayed: the file exists now.
const OFLAGS_CREAT_EXCL_TRUNC: u16 = 1 | 4 | 8;
/// The most the host reads of a cell's report: a few MIME values of at most
/// 1 Mi characters each (the prelude clips them), UTF-8 encoded.
const MAX_REPORT_BYTES: usize = 16 << 20;
/// The page size of a snapshot file's sparse encoding.
const PAGE: usize = 4096;
/// The start of a fresh memory that restoring open files writes to: a
/// descriptor and a path.
const SCRATCH_BYTES: usize = 64 + MAX_PATH_BYTES;

/// The arguments of a recorded `path_open`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenCall {
    pub dirfd: u32,
    pub dirflags: u32,
    pub oflags: u16,
    pub rights_base: u64,
    pub rights_inheriting: u64,
    pub fdflags: u16,
}

/// One open file of a context: how it was opened, and (in a snapshot)
/// where its position was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpenFile {
    pub fd: u32,
    pub call: OpenCall,
    pub path: Vec<u8>,
    /// Order of opening: a file opened relative to a directory the guest
    /// opened itself is replayed after that directory.
    pub seq: u64,
    #[serde(default)]
    pub position: Option<u64>,
}

/// The files a context's guest holds open, by descriptor.
#[derive(Debug, Clone, Default)]
pub struct FdLog {
    files: BTreeMap<u32, OpenFile>,
    next_seq: u64,
}

impl FdLog {
    pub fn is_full(&self) -> bool {
        self.files.len() >= MAX_OPEN_FILES
    }

    pub fn opened(&mut self, fd: u32, call: OpenCall, path: Vec<u8>) {
        self.next_seq += 1;
        let file = OpenFile {
            fd,
            call,
            path,
            seq: self.next_seq,
            position: None,
        };
        self.files.insert(fd, file);
    }

    pub fn closed(&mut self, fd: u32) {
        self.files.remove(&fd);
    }

    pub fn renumbered(&mut self, from: u32, to: u32) {
        self.files.remove(&to);
        if let Some(mut file) = self.files.remove(&from) {
            file.fd = to;
            self.files.insert(to, file);
        }
    }
}

/// Refuses memory growth past the context's cap, and remembers that it did,
/// so that a cell that hit the cap is answered as a memory limit (429) and
/// rolled back, rather than left half-done.
#[derive(Debug)]
struct MemoryWatch {
    limit: usize,
    hit: bool,
}

impl ResourceLimiter for MemoryWatch {
    fn memory_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        // The programs served here never grow their tables; a bound anyway.
        Ok(desired <= 1 << 16)
    }
}

/// What a context's store carries beyond an exec's.
pub struct ContextHooks {
    pub(super) fds: FdLog,
    limiter: MemoryWatch,
    /// The last frame the guest sent through `host.call` in this cell: how
    /// the Python driver reports a cell's `{result, error}`.
    report: Option<Vec<u8>>,
}

/// The targets of a context's standard streams, swapped at every cell: the
/// guest keeps descriptors 0, 1 and 2 for its whole life, and every copy of
/// it sees the same objects.
#[derive(Clone)]
pub struct CellIo {
    inner: Arc<Mutex<CellStreams>>,
}

struct CellStreams {
    stdout: CapturePipe,
    stderr: CapturePipe,
    stdin: Bytes,
}

impl CellIo {
    fn new() -> CellIo {
        CellIo {
            inner: Arc::new(Mutex::new(CellStreams {
                stdout: CapturePipe::discard(),
                stderr: CapturePipe::discard(),
                stdin: Bytes::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CellStreams> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points the streams at one cell's captures and input.
    fn begin(&self, stdout: CapturePipe, stderr: CapturePipe, stdin: Vec<u8>) {
        let mut s = self.lock();
        s.stdout = stdout;
        s.stderr = stderr;
        s.stdin = Bytes::from(stdin);
    }

    /// Between cells nothing is captured and input is empty.
    fn end(&self) {
        self.begin(CapturePipe::discard(), CapturePipe::discard(), vec![]);
    }

    fn out(&self, kind: StreamKind) -> CapturePipe {
        let s = self.lock();
        match kind {
            StreamKind::Stdout => s.stdout.clone(),
            StreamKind::Stderr => s.stderr.clone(),
        }
    }
}

/// Standard output or error of a context: writes go to the current cell's
/// capture.
#[derive(Clone)]
struct SwitchOut {
    io: CellIo,
    kind: StreamKind,
}

impl OutputStream for SwitchOut {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.io.out(self.kind).write(bytes)
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        self.io.out(self.kind).check_write()
    }
}

#[async_trait::async_trait]
impl Pollable for SwitchOut {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for SwitchOut {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let mut out = self.io.out(self.kind);
        std::pin::Pin::new(&mut out).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for SwitchOut {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SwitchOut {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// Standard input of a context: the current cell's `stdin`, then end of
/// input, read without blocking.
#[derive(Clone)]
struct SwitchIn {
    io: CellIo,
}

impl SwitchIn {
    fn take(&self, size: usize) -> Bytes {
        let mut s = self.io.lock();
        let n = size.min(s.stdin.len());
        s.stdin.split_to(n)
    }
}

#[async_trait::async_trait]
impl Pollable for SwitchIn {
    async fn ready(&mut self) {}
}

impl InputStream for SwitchIn {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        let bytes = self.take(size);
        if bytes.is_empty() && size > 0 {
            return Err(StreamError::Closed);
        }
        Ok(bytes)
    }
}

impl tokio::io::AsyncRead for SwitchIn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let bytes = self.take(buf.remaining());
        buf.put_slice(&bytes);
        std::task::Poll::Ready(Ok(()))
    }
}

impl IsTerminal for SwitchIn {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdinStream for SwitchIn {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }
    fn p2_stream(&self) -> Box<dyn InputStream> {
        Box::new(self.clone())
    }
}

/// The `{result, error}` a cell reports, as JSON values (MIME bundle and
/// error object), before the limits are looked at.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CellReport {
    #[serde(default)]
    pub result: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
}

impl CellReport {
    /// A cell whose report the host could not read, and why.
    fn unreadable(why: &str) -> CellReport {
        CellReport {
            result: None,
            error: Some(serde_json::json!({"name": "StacyvmError", "value": why, "traceback": ""})),
        }
    }
}

/// One kind of interpreter that can run cells in a kept instance.
pub trait ContextProgram: Send + Sync + 'static {
    /// The `language` clients ask for.
    fn language(&self) -> &'static str;
    /// The image name contexts of this kind report.
    fn image(&self) -> &'static str;
    /// Functions the driver calls, exported by name at instrumentation.
    fn entry_points(&self) -> &'static [&'static str];
    /// Starts the interpreter in a fresh instance, in `cwd`, with `env`
    /// (also the instance's WASI environment).
    fn init(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
        cwd: &str,
        env: &[(String, String)],
    ) -> wasmtime::Result<()>;
    /// Programs whose start splits in two return true here: `prepare` does
    /// what every context shares, once per image (its snapshot is the
    /// template of every later context), and `begin` what is each
    /// context's own (`cwd`, `env`, random state).
    fn splits_init(&self) -> bool {
        false
    }
    fn prepare(&self, _store: &mut Store<GuestState>, _instance: &Instance) -> wasmtime::Result<()> {
        Ok(())
    }
    fn begin(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
        cwd: &str,
        env: &[(String, String)],
    ) -> wasmtime::Result<()> {
        self.init(store, instance, cwd, env)
    }
    /// Runs one cell; an `Err` is a trap or a limit (the caller rolls back).
    fn run_cell(&self, store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<CellReport>;
}

/// A compiled, instrumented program with its state exports, ready to
/// instantiate many times.
pub struct ContextImage {
    pub program: Arc<dyn ContextProgram>,
    pre: InstancePre<GuestState>,
    layout: Instrumented,
    /// Read-only directories preopened after the sandbox's `/`, in this
    /// order (a pre-initialized interpreter's snapshot holds the layout).
    mounts: Vec<(PathBuf, String)>,
    /// The SHA-256 of the compiled program's wasm: a paused context is only
    /// resumed on the same program.
    pub sha256: String,
    /// For programs that split their start: the state after `prepare`,
    /// made by the first context and copied into every later one.
    template: Mutex<Option<Arc<Snapshot>>>,
}

impl ContextImage {
    /// The memory the program starts with: a context needs at least this.
    pub fn initial_memory_bytes(&self) -> u64 {
        self.pre
            .module()
            .exports()
            .filter_map(|export| export.ty().memory().cloned())
            .map(|memory| memory.minimum().saturating_mul(memory.page_size()))
            .max()
            .unwrap_or(0)
    }
}

/// The engine of code contexts. It has no pooling allocator: contexts live
/// for minutes, and each would pin a pool slot; on-demand instances cost
/// only what their memories touch.
pub struct ContextEngine {
    images: Vec<Arc<ContextImage>>,
    /// Languages whose image could not be loaded, and why.
    pub unavailable: BTreeMap<&'static str, String>,
    _ticker: super::engine::EpochTicker,
}

impl ContextEngine {
    /// Loads every context program whose image is in the catalogue. A
    /// program that cannot be loaded is reported, not fatal.
    pub async fn load(
        catalog: &crate::runtime::Catalog,
        image_dir: &Path,
        offline: bool,
        reactors: &std::collections::HashMap<String, super::engine::ReactorSource>,
    ) -> anyhow::Result<ContextEngine> {
        let engine = Engine::new(&super::engine::engine_config(None)).map_err(anyhow::Error::from)?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        super::guest::add_to_linker(&mut linker).map_err(anyhow::Error::from)?;
        add_report_door(&mut linker).map_err(anyhow::Error::from)?;
        let mut images = vec![];
        let mut unavailable = BTreeMap::new();
        // Python: the pre-initialized CPython 3.15 reactor the execs of
        // `python:3.15` run, the same compiled program (the compile cache
        // finds it: both engines compile alike).
        let python: Arc<dyn ContextProgram> = Arc::new(Python315);
        let loaded = match reactors.get(Python315::MANIFEST) {
            Some(source) => load_reactor(&engine, &linker, source, python.clone(), image_dir).await,
            None => Err(anyhow::anyhow!(
                "the image {} (python:3.15) is not loaded on this server",
                Python315::MANIFEST
            )),
        };
        match loaded {
            Ok(image) => images.push(Arc::new(image)),
            Err(e) => {
                tracing::warn!(language = python.language(), "code contexts are unavailable: {e:#}");
                unavailable.insert(python.language(), format!("{e:#}"));
            }
        }
        let programs: Vec<(Arc<dyn ContextProgram>, &str)> = vec![(Arc::new(QuickJs), QuickJs::MANIFEST)];
        for (program, manifest) in programs {
            let loaded = match catalog.image(manifest) {
                Some(manifest) => load_image(&engine, &linker, manifest, program.clone(), image_dir, offline).await,
                None => Err(anyhow::anyhow!("the catalogue has no image {manifest}")),
            };
            match loaded {
                Ok(image) => images.push(Arc::new(image)),
                Err(e) => {
                    tracing::warn!(language = program.language(), "code contexts are unavailable: {e:#}");
                    unavailable.insert(program.language(), format!("{e:#}"));
                }
            }
        }
        let ticker = super::engine::EpochTicker::start(engine.clone());
        Ok(ContextEngine {
            images,
            unavailable,
            _ticker: ticker,
        })
    }

    /// The program serving `language`.
    pub fn image(&self, language: &str) -> Option<&Arc<ContextImage>> {
        self.images.iter().find(|i| i.program.language() == language)
    }
}

async fn load_image(
    engine: &Engine,
    linker: &Linker<GuestState>,
    manifest: &crate::runtime::ImageManifest,
    program: Arc<dyn ContextProgram>,
    image_dir: &Path,
    offline: bool,
) -> anyhow::Result<ContextImage> {
    let wasm = crate::runtime::fetch::ensure_image(manifest, image_dir, offline).await?;
    let original = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let layout = instrument::instrument(&original, program.entry_points())
        .with_context(|| format!("cannot instrument image {}", manifest.name))?;
    let path = image_dir.join(format!("{}.context.wasm", manifest.name));
    let sha = hex::encode(sha2::Sha256::digest(&layout.wasm));
    let sha_of_module = sha.clone();
    if crate::runtime::fetch::sha256_file(&path).ok().as_deref() != Some(sha.as_str()) {
        crate::runtime::fetch::write_atomically(&path, &layout.wasm)?;
    }
    let (engine2, name, cache) = (
        engine.clone(),
        format!("{}-context", manifest.name),
        image_dir.join("cache"),
    );
    let module =
        tokio::task::spawn_blocking(move || super::engine::load_cached::<Module>(&engine2, &name, &path, &sha, &cache))
            .await??;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(anyhow::Error::from)
        .with_context(|| format!("cannot link image {}", manifest.name))?;
    Ok(ContextImage {
        program,
        pre,
        layout,
        mounts: vec![],
        sha256: sha_of_module,
        template: Mutex::default(),
    })
}

/// A pre-initialized reactor, already instrumented when it was built: the
/// exec engine's program, loaded from the same compile cache entry.
async fn load_reactor(
    engine: &Engine,
    linker: &Linker<GuestState>,
    source: &super::engine::ReactorSource,
    program: Arc<dyn ContextProgram>,
    image_dir: &Path,
) -> anyhow::Result<ContextImage> {
    let (engine2, name, cache) = (engine.clone(), Python315::MANIFEST.to_string(), image_dir.join("cache"));
    let (path, sha) = (source.wasm.clone(), source.sha256.clone());
    let module =
        tokio::task::spawn_blocking(move || super::engine::load_cached::<Module>(&engine2, &name, &path, &sha, &cache))
            .await??;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(anyhow::Error::from)
        .context("cannot link the python:3.15 snapshot for contexts")?;
    let layout = Instrumented {
        wasm: vec![],
        memories: source.layout.memories.clone(),
        globals: source.layout.globals.clone(),
        tables: source.layout.tables.clone(),
    };
    Ok(ContextImage {
        program,
        pre,
        layout,
        mounts: source.mounts.clone(),
        sha256: source.sha256.clone(),
        template: Mutex::default(),
    })
}

/// The module a reactor imports its door to the host from.
const DOOR_MODULE: &str = "host";
/// What the door answers: a response was written, or the frame was refused.
const DOOR_OK: i32 = 0;
const DOOR_FAULT: i32 = -2;

/// `host.call(ptr, len, out_ptr_ptr, out_len_ptr) -> i32`, the door of the
/// CPython 3.15 reactor (`_host.call(frame) -> bytes` in Python). In a
/// context it carries one thing: the driver's report of a cell, kept as
/// the cell's `{result, error}`; the answer is empty. Outside a context
/// (never here) and for frames over [`MAX_REPORT_BYTES`] it faults, and
/// the guest raises `OSError`.
fn add_report_door(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        DOOR_MODULE,
        "call",
        |mut caller: wasmtime::Caller<'_, GuestState>,
         ptr: i32,
         len: i32,
         out_ptr: i32,
         out_len: i32|
         -> wasmtime::Result<i32> {
            let (ptr, len) = (ptr as u32 as usize, len as u32 as usize);
            let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
                return Ok(DOOR_FAULT);
            };
            if len > MAX_REPORT_BYTES || caller.data().context.is_none() {
                return Ok(DOOR_FAULT);
            }
            let mut frame = vec![0u8; len];
            if memory.read(&caller, ptr, &mut frame).is_err() {
                return Ok(DOOR_FAULT);
            }
            // An empty answer in a buffer of the guest's own allocator,
            // which the guest frees.
            let Some(alloc) = caller
                .get_export("host_alloc")
                .and_then(|e| e.into_func())
                .and_then(|f| f.typed::<i32, i32>(&caller).ok())
            else {
                return Ok(DOOR_FAULT);
            };
            let answer = alloc.call(&mut caller, 1)?;
            if answer == 0
                || memory
                    .write(&mut caller, out_ptr as u32 as usize, &answer.to_le_bytes())
                    .is_err()
                || memory
                    .write(&mut caller, out_len as u32 as usize, &0u32.to_le_bytes())
                    .is_err()
            {
                return Ok(DOOR_FAULT);
            }
            if let Some(context) = caller.data_mut().context.as_mut() {
                context.report = Some(frame);
            }
            Ok(DOOR_OK)
        },
    )?;
    Ok(())
}

use sha2::Digest as _;

/// What a context needs to build its WASI world and limits.
#[derive(Clone)]
pub struct ContextEnv {
    pub sandbox_dir: PathBuf,
    pub ledger: Arc<DiskLedger>,
    pub memory_bytes: usize,
    pub env: Vec<(String, String)>,
}

/// A context held in memory: its store, instance and standard streams.
pub struct LiveContext {
    store: Store<GuestState>,
    instance: Instance,
    io: CellIo,
    image: Arc<ContextImage>,
    /// Per memory: which pages were written since the last snapshot or
    /// update (empty when the kernel does not offer it).
    trackers: Vec<Option<super::pagemap::WriteTracker>>,
}

/// A value of a mutable global, kept as bits.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub enum GlobalBits {
    I32(i32),
    I64(i64),
    F32(u32),
    F64(u64),
}

/// A context's whole state, out of any instance. Memories are kept apart
/// from the rest because they are what is large.
#[derive(Clone, Default)]
pub struct Snapshot {
    pub memories: Vec<MemoryCopy>,
    pub state: SnapshotState,
}

/// A linear memory as the pages that may differ from a fresh instance's:
/// a restore instantiates the program afresh (its memory is the module's
/// image, copy-on-write, and zeros past it), grows it to `size` and writes
/// these pages back. Which pages those are comes from the kernel's page
/// table (`/proc/self/pagemap`): a page still backed by the image file, or
/// never touched, holds what a fresh instance holds; only pages written
/// since the instance started (private anonymous ones, or swapped out) are
/// copied. A context whose interpreter's heap is hundreds of megabytes but
/// whose cells touch a few costs a copy of those few.
#[derive(Clone, Default)]
pub struct MemoryCopy {
    /// The memory's size in bytes (whole wasm pages).
    pub size: usize,
    /// The 4 KiB pages held, ascending.
    pub pages: Vec<u32>,
    /// Their bytes, [`PAGE`] each, in the order of `pages`.
    pub bytes: Vec<u8>,
    /// Where each page's bytes are (its position in `pages`), built when a
    /// snapshot is first updated in place.
    slots: std::collections::HashMap<u32, usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SnapshotState {
    pub globals: Vec<GlobalBits>,
    pub tables: Vec<u64>,
    pub files: Vec<OpenFile>,
}

/// How a cell ended when it did not complete.
pub enum CellFailure {
    Timeout,
    Fuel,
    Memory,
    Cancelled,
    /// A crash of the guest (a wasm trap), with its kind and message.
    Trap(String, String),
    Internal(anyhow::Error),
}

/// What a cell produced.
pub struct CellRun {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub truncated: bool,
    pub duration: Duration,
    pub outcome: Result<CellReport, CellFailure>,
}

/// The limits and live channels of one cell.
pub struct CellLimits {
    pub timeout: Duration,
    pub fuel: u64,
    pub output_limit: usize,
    pub output: Option<tokio::sync::mpsc::UnboundedSender<OutputChunk>>,
    pub cancel: tokio_util::sync::CancellationToken,
}

fn new_store(image: &ContextImage, env: &ContextEnv, io: &CellIo) -> Result<Store<GuestState>, ProviderError> {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdin(SwitchIn { io: io.clone() })
        .stdout(SwitchOut {
            io: io.clone(),
            kind: StreamKind::Stdout,
        })
        .stderr(SwitchOut {
            io: io.clone(),
            kind: StreamKind::Stderr,
        })
        .args(&[image.program.language()])
        .envs(&env.env)
        .allow_blocking_current_thread(true)
        .preopened_dir(&env.sandbox_dir, "/", FsPerms::ReadWrite)
        .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context("cannot preopen the sandbox directory")))?;
    for (host, guest) in &image.mounts {
        builder
            .preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context(format!("cannot preopen {guest}"))))?;
    }
    let wasi: WasiP1Ctx = builder.build_p1();
    let hooks = ContextHooks {
        fds: FdLog::default(),
        limiter: MemoryWatch {
            limit: env.memory_bytes,
            hit: false,
        },
        report: None,
    };
    let mut store = Store::new(
        image.pre.module().engine(),
        GuestState::for_context(wasi, env.ledger.clone(), hooks),
    );
    store.limiter(|s| &mut s.context.as_mut().expect("a context's store").limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| match ctx.data().stop_check().must_stop() {
        Some(stop) => Err(stop),
        None => Ok(wasmtime::UpdateDeadline::Continue(1)),
    });
    Ok(store)
}

/// A deadline and fuel for the work the server does in a guest (starting
/// the interpreter, restoring a snapshot): generous, but finite.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_FUEL: u64 = 50_000_000_000;

fn setup_limits(store: &mut Store<GuestState>) -> wasmtime::Result<()> {
    store.data_mut().set_stop(StopCheck {
        deadline: Instant::now() + SETUP_TIMEOUT,
        output: None,
        cancel: Default::default(),
    });
    store.set_fuel(SETUP_FUEL)
}

impl LiveContext {
    /// A fresh context: a new instance with its interpreter started, or for
    /// a program that splits its start, a copy of its image's template
    /// (made here the first time) that then begins in `cwd` with `env`.
    pub fn create(image: Arc<ContextImage>, env: &ContextEnv, cwd: &str) -> Result<LiveContext, ProviderError> {
        if !image.program.splits_init() {
            return Self::start(image, env, cwd);
        }
        let internal =
            |e: wasmtime::Error| ProviderError::Internal(anyhow::Error::from(e).context("cannot start the context"));
        let template = Self::template(&image, env)?;
        let size = template.memories.iter().map(|m| m.size).max().unwrap_or(0);
        if size > env.memory_bytes {
            return Err(ProviderError::InvalidInput(format!(
                "{} contexts start with {} MiB of memory, more than this sandbox's memory_mb of {}",
                image.program.language(),
                size.div_ceil(1 << 20),
                env.memory_bytes >> 20
            )));
        }
        let mut live = Self::restore(image.clone(), env, &template)?;
        setup_limits(&mut live.store).map_err(internal)?;
        let program = image.program.clone();
        program
            .begin(&mut live.store, &live.instance, cwd, &env.env)
            .map_err(internal)?;
        Ok(live)
    }

    /// The image's template: a fresh instance after `prepare`, snapshotted.
    /// Built once; two first contexts at once may both build one.
    fn template(image: &Arc<ContextImage>, env: &ContextEnv) -> Result<Arc<Snapshot>, ProviderError> {
        if let Some(template) = crate::sandbox::lock(&image.template).clone() {
            return Ok(template);
        }
        let internal =
            |e: wasmtime::Error| ProviderError::Internal(anyhow::Error::from(e).context("cannot prepare the context"));
        let io = CellIo::new();
        // Any sandbox's directory will do (the template opens no file); its
        // memory is bounded by what a wasm32 guest can address, not by this
        // sandbox, whose own limit is checked against the result.
        let unbounded = ContextEnv {
            memory_bytes: 4 << 30,
            ..env.clone()
        };
        let mut store = new_store(image, &unbounded, &io)?;
        setup_limits(&mut store).map_err(internal)?;
        let instance = image.pre.instantiate(&mut store).map_err(internal)?;
        image.program.prepare(&mut store, &instance).map_err(internal)?;
        let mut live = LiveContext {
            store,
            instance,
            io,
            image: image.clone(),
            trackers: vec![],
        };
        let snapshot = Arc::new(live.snapshot(None).map_err(ProviderError::Internal)?);
        if !snapshot.state.files.is_empty() {
            return Err(ProviderError::Internal(anyhow::anyhow!(
                "the context template holds open files"
            )));
        }
        *crate::sandbox::lock(&image.template) = Some(snapshot.clone());
        Ok(snapshot)
    }

    fn start(image: Arc<ContextImage>, env: &ContextEnv, cwd: &str) -> Result<LiveContext, ProviderError> {
        let io = CellIo::new();
        let mut store = new_store(&image, env, &io)?;
        let internal =
            |e: wasmtime::Error| ProviderError::Internal(anyhow::Error::from(e).context("cannot start the context"));
        setup_limits(&mut store).map_err(internal)?;
        let instance = image.pre.instantiate(&mut store).map_err(internal)?;
        image
            .program
            .init(&mut store, &instance, cwd, &env.env)
            .map_err(internal)?;
        let mut live = LiveContext {
            store,
            instance,
            io,
            image,
            trackers: vec![],
        };
        live.track();
        Ok(live)
    }

    /// A context rebuilt from a snapshot: a new instance of the same
    /// program, its open files reopened, then its state copied in. The
    /// interpreter is not started again: the copied memory is its state.
    pub fn restore(
        image: Arc<ContextImage>,
        env: &ContextEnv,
        snapshot: &Snapshot,
    ) -> Result<LiveContext, ProviderError> {
        let io = CellIo::new();
        let mut store = new_store(&image, env, &io)?;
        let fail = |e: anyhow::Error| ProviderError::Internal(e.context("cannot restore the context"));
        setup_limits(&mut store).map_err(|e| fail(e.into()))?;
        let instance = image.pre.instantiate(&mut store).map_err(|e| fail(e.into()))?;
        let mut live = LiveContext {
            store,
            instance,
            io,
            image,
            trackers: vec![],
        };
        // Reopening lends the start of the fresh memory as scratch space;
        // the snapshot may not hold those pages (they are the image's), so
        // they are put back as they were.
        let scratch = live.scratch_bytes().map_err(fail)?;
        live.reopen_files(&snapshot.state.files).map_err(fail)?;
        live.put_scratch_back(&scratch).map_err(fail)?;
        live.write_state(snapshot).map_err(fail)?;
        // The instance now holds the snapshot: writes count from here.
        live.track();
        Ok(live)
    }

    fn memories(&mut self) -> Vec<Memory> {
        let layout = &self.image.layout;
        layout
            .memories
            .iter()
            .filter_map(|i| {
                self.instance
                    .get_memory(&mut self.store, &format!("{MEMORY_PREFIX}{i}"))
            })
            .collect()
    }

    fn globals(&mut self) -> Vec<Global> {
        let layout = &self.image.layout;
        layout
            .globals
            .iter()
            .filter_map(|i| {
                self.instance
                    .get_global(&mut self.store, &format!("{GLOBAL_PREFIX}{i}"))
            })
            .collect()
    }

    fn tables(&mut self) -> Vec<Table> {
        let layout = &self.image.layout;
        layout
            .tables
            .iter()
            .filter_map(|i| self.instance.get_table(&mut self.store, &format!("{TABLE_PREFIX}{i}")))
            .collect()
    }

    /// The bytes of every linear memory, now.
    pub fn memory_bytes(&mut self) -> u64 {
        let memories = self.memories();
        memories.iter().map(|m| m.data_size(&self.store) as u64).sum()
    }

    /// Copies the whole state out. `reuse` lends buffers from an earlier
    /// snapshot, so that a snapshot per cell allocates nothing new.
    pub fn snapshot(&mut self, reuse: Option<Snapshot>) -> anyhow::Result<Snapshot> {
        let mut snapshot = reuse.unwrap_or_default();
        // The tracked writes start again from this copy.
        self.reset_trackers();
        let memories = self.memories();
        snapshot.memories.resize_with(memories.len(), MemoryCopy::default);
        for (memory, copy) in memories.iter().zip(snapshot.memories.iter_mut()) {
            let data = memory.data(&self.store);
            copy.size = data.len();
            copy.pages.clear();
            copy.bytes.clear();
            copy.slots.clear();
            super::pagemap::written_pages(data, &mut copy.pages);
            super::pagemap::reserve_huge(&mut copy.bytes, copy.pages.len() * PAGE);
            // Runs of consecutive pages are copied in one go.
            let mut i = 0;
            while i < copy.pages.len() {
                let start = copy.pages[i] as usize;
                let mut end = start + 1;
                while i + (end - start) < copy.pages.len() && copy.pages[i + (end - start)] as usize == end {
                    end += 1;
                }
                copy.bytes.extend_from_slice(&data[start * PAGE..end * PAGE]);
                i += end - start;
            }
        }
        self.read_state(&mut snapshot)?;
        Ok(snapshot)
    }

    /// Starts tracking writes to every memory from its state now.
    fn track(&mut self) {
        let memories = self.memories();
        self.trackers = memories
            .iter()
            .map(|m| super::pagemap::WriteTracker::new(m.data(&self.store)))
            .collect();
    }

    fn reset_trackers(&mut self) {
        let mut discard = vec![];
        for slot in &mut self.trackers {
            if let Some(tracker) = slot
                && tracker.take_written(&mut discard).is_err()
            {
                *slot = None;
            }
            discard.clear();
        }
    }

    /// Brings `snapshot`, taken (or last updated) from this instance, up to
    /// its state now by copying only the pages written since. False when
    /// writes are not tracked here; the caller then takes a whole snapshot.
    pub fn update(&mut self, snapshot: &mut Snapshot) -> anyhow::Result<bool> {
        let memories = self.memories();
        if memories.is_empty()
            || memories.len() != snapshot.memories.len()
            || self.trackers.len() != memories.len()
            || self.trackers.iter().any(Option::is_none)
        {
            return Ok(false);
        }
        let mut written = vec![];
        for (i, memory) in memories.iter().enumerate() {
            written.clear();
            let tracker = self.trackers[i].as_mut().expect("checked");
            if tracker.take_written(&mut written).is_err() {
                self.trackers[i] = None;
                return Ok(false);
            }
            let data = memory.data(&self.store);
            let tracked = tracker.tracked_len();
            if data.len() > tracked {
                // Grown since: its written pages from the page table, and
                // tracked from now on.
                let mut grown = vec![];
                super::pagemap::written_pages(&data[tracked..], &mut grown);
                written.extend(grown.into_iter().map(|p| p + (tracked / PAGE) as u32));
                if !tracker.extend(data.len()) {
                    self.trackers[i] = None;
                    return Ok(false);
                }
            }
            let copy = &mut snapshot.memories[i];
            if copy.slots.len() != copy.pages.len() {
                copy.slots = copy
                    .pages
                    .iter()
                    .enumerate()
                    .map(|(slot, &page)| (page, slot))
                    .collect();
            }
            copy.size = data.len();
            for &page in &written {
                let from = &data[page as usize * PAGE..][..PAGE];
                match copy.slots.get(&page) {
                    Some(&slot) => copy.bytes[slot * PAGE..][..PAGE].copy_from_slice(from),
                    None => {
                        copy.slots.insert(page, copy.pages.len());
                        copy.pages.push(page);
                        copy.bytes.extend_from_slice(from);
                    }
                }
            }
        }
        self.read_state(snapshot)?;
        Ok(true)
    }

    /// Reads the globals, table sizes and open files into `snapshot`.
    fn read_state(&mut self, snapshot: &mut Snapshot) -> anyhow::Result<()> {
        let globals = self.globals();
        snapshot.state.globals = globals
            .iter()
            .map(|g| match g.get(&mut self.store) {
                Val::I32(v) => Ok(GlobalBits::I32(v)),
                Val::I64(v) => Ok(GlobalBits::I64(v)),
                Val::F32(v) => Ok(GlobalBits::F32(v)),
                Val::F64(v) => Ok(GlobalBits::F64(v)),
                other => bail!("a global of type {:?} cannot be copied", other.ty(&self.store)),
            })
            .collect::<anyhow::Result<_>>()?;
        let tables = self.tables();
        snapshot.state.tables = tables.iter().map(|t| t.size(&self.store)).collect();
        let mut files: Vec<OpenFile> = self
            .store
            .data()
            .context
            .as_ref()
            .map(|c| c.fds.files.values().cloned().collect())
            .unwrap_or_default();
        for file in &mut files {
            file.position = self.tell(file.fd)?;
        }
        snapshot.state.files = files;
        Ok(())
    }

    /// Copies a snapshot's guest state into this (fresh) instance.
    fn write_state(&mut self, snapshot: &Snapshot) -> anyhow::Result<()> {
        let memories = self.memories();
        if memories.len() != snapshot.memories.len() {
            bail!(
                "the snapshot has {} memories, the program {}",
                snapshot.memories.len(),
                memories.len()
            );
        }
        for (memory, copy) in memories.iter().zip(&snapshot.memories) {
            let have = memory.data_size(&self.store);
            if copy.size < have || copy.size % 65536 != 0 {
                bail!("a snapshot memory of {} bytes cannot replace one of {have}", copy.size);
            }
            if copy.bytes.len() != copy.pages.len() * PAGE {
                bail!("a snapshot memory's pages and bytes disagree");
            }
            let pages = ((copy.size - have) / 65536) as u64;
            if pages > 0 {
                memory
                    .grow(&mut self.store, pages)
                    .map_err(anyhow::Error::from)
                    .context("cannot grow the memory to the snapshot's size")?;
            }
            let data = memory.data_mut(&mut self.store);
            // Runs of consecutive pages: faulted in at once, copied at once.
            let mut i = 0;
            while i < copy.pages.len() {
                let start = copy.pages[i] as usize;
                let mut n = 1;
                while i + n < copy.pages.len() && copy.pages[i + n] as usize == start + n {
                    n += 1;
                }
                let to = data
                    .get_mut(start * PAGE..(start + n) * PAGE)
                    .context("a snapshot page lies outside its memory")?;
                super::pagemap::populate_for_write(to);
                to.copy_from_slice(&copy.bytes[i * PAGE..(i + n) * PAGE]);
                i += n;
            }
        }
        let globals = self.globals();
        if globals.len() != snapshot.state.globals.len() {
            bail!("the snapshot does not match the program's globals");
        }
        for (global, bits) in globals.iter().zip(&snapshot.state.globals) {
            let val = match *bits {
                GlobalBits::I32(v) => Val::I32(v),
                GlobalBits::I64(v) => Val::I64(v),
                GlobalBits::F32(v) => Val::F32(v),
                GlobalBits::F64(v) => Val::F64(v),
            };
            global.set(&mut self.store, val)?;
        }
        let tables = self.tables();
        let sizes: Vec<u64> = tables.iter().map(|t| t.size(&self.store)).collect();
        if sizes != snapshot.state.tables {
            bail!(
                "the snapshot's tables ({:?}) differ from the program's ({sizes:?})",
                snapshot.state.tables
            );
        }
        Ok(())
    }

    /// Runs a real preview1 function with the instance's memory, whose first
    /// `N` bytes are lent as scratch space and put back afterwards.
    fn with_memory<R>(
        &mut self,
        f: impl FnOnce(&mut WasiP1Ctx, &mut GuestMemory<'_>) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .context("the program exports no memory")?;
        // The linker's wrapper refills the WASI context's per-call budget
        // (the bytes a call may copy out of guest memory) before each call a
        // guest makes; the host's own calls here bypass it, and without the
        // refill they would spend what the guest's last call left (nothing,
        // in a fresh copy) and fail with ENOMEM.
        let fuel = self.store.hostcall_fuel();
        let (data, state) = memory.data_and_store_mut(&mut self.store);
        let mut mem = GuestMemory::Unshared(data);
        let wasi = state.wasi_mut();
        wasi1::WasiSnapshotPreview1::set_hostcall_fuel(wasi, fuel);
        f(wasi, &mut mem)
    }

    /// The bytes [`Self::reopen_files`] uses as scratch space.
    fn scratch_bytes(&mut self) -> anyhow::Result<Vec<u8>> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .context("the program exports no memory")?;
        let data = memory.data(&self.store);
        Ok(data[..SCRATCH_BYTES.min(data.len())].to_vec())
    }

    fn put_scratch_back(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let memory = self
            .instance
            .get_memory(&mut self.store, "memory")
            .context("the program exports no memory")?;
        memory.data_mut(&mut self.store)[..bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    /// A file's current position, if it has one.
    fn tell(&mut self, fd: u32) -> anyhow::Result<Option<u64>> {
        self.with_memory(|wasi, mem| {
            const AT: u32 = 0;
            let saved: [u8; 8] = mem
                .as_slice(wiggle::GuestPtr::<[u8]>::new((AT, 8)))?
                .context("scratch")?
                .to_vec()
                .try_into()
                .expect("8 bytes");
            let errno = wasi1::fd_tell(wasi, mem, fd as i32, AT as i32)?;
            let bytes: [u8; 8] = mem
                .as_slice(wiggle::GuestPtr::<[u8]>::new((AT, 8)))?
                .context("scratch")?
                .to_vec()
                .try_into()
                .expect("8 bytes");
            mem.copy_from_slice(&saved, wiggle::GuestPtr::<[u8]>::new((AT, 8)))?;
            Ok((errno == 0).then(|| u64::from_le_bytes(bytes)))
        })
    }

    /// Reopens a snapshot's files under their descriptor numbers, at their
    /// positions, before the guest's memory is copied in (the fresh memory
    /// is scratch space until then). A file that can no longer be opened
    /// (deleted since) stays closed: the guest gets EBADF when it uses it.
    fn reopen_files(&mut self, files: &[OpenFile]) -> anyhow::Result<()> {
        let mut ordered: Vec<&OpenFile> = files.iter().collect();
        ordered.sort_by_key(|f| f.seq);
        let mut log = FdLog::default();
        for file in ordered {
            let reopened = self.with_memory(|wasi, mem| {
                let path_at = 64u32;
                mem.copy_from_slice(
                    &file.path,
                    wiggle::GuestPtr::<[u8]>::new((path_at, file.path.len() as u32)),
                )?;
                let call = &file.call;
                let errno = in_tokio(wasi1::path_open(
                    wasi,
                    mem,
                    call.dirfd as i32,
                    call.dirflags as i32,
                    path_at as i32,
                    file.path.len() as i32,
                    i32::from(call.oflags & !OFLAGS_CREAT_EXCL_TRUNC),
                    call.rights_base as i64,
                    call.rights_inheriting as i64,
                    i32::from(call.fdflags),
                    0,
                ))??;
                if errno != 0 {
                    return Ok(errno);
                }
                let fd = u32::from_le_bytes(
                    mem.as_slice(wiggle::GuestPtr::<[u8]>::new((0, 4)))?
                        .context("scratch")?
                        .to_vec()
                        .try_into()
                        .expect("4 bytes"),
                );
                if fd != file.fd {
                    let errno = in_tokio(wasi1::fd_renumber(wasi, mem, fd as i32, file.fd as i32))??;
                    if errno != 0 {
                        bail!("cannot move a reopened file to descriptor {}", file.fd);
                    }
                }
                if let Some(position) = file.position {
                    in_tokio(wasi1::fd_seek(wasi, mem, file.fd as i32, position as i64, 0, 8))??;
                }
                Ok(0)
            })?;
            if reopened == 0 {
                log.opened(file.fd, file.call, file.path.clone());
                if let Some(f) = log.files.get_mut(&file.fd) {
                    f.seq = file.seq;
                }
                log.next_seq = log.next_seq.max(file.seq);
            } else {
                tracing::info!(
                    fd = file.fd,
                    errno = reopened,
                    path = %String::from_utf8_lossy(&file.path),
                    "a context's open file cannot be opened again and stays closed in its copy"
                );
            }
        }
        if let Some(context) = self.store.data_mut().context.as_mut() {
            context.fds = log;
        }
        Ok(())
    }

    /// Runs one cell under its limits. The caller decides what a failure
    /// means for the context (a rollback).
    pub fn run_cell(&mut self, code: &str, stdin: Vec<u8>, limits: &CellLimits) -> CellRun {
        let started = Instant::now();
        let stdout = CapturePipe::new(limits.output_limit).tee(limits.output.clone(), StreamKind::Stdout);
        let stderr = CapturePipe::new(limits.output_limit).tee(limits.output.clone(), StreamKind::Stderr);
        self.io.begin(stdout.clone(), stderr.clone(), stdin);
        self.store.data_mut().set_stop(StopCheck {
            deadline: started + limits.timeout,
            output: limits.output.clone(),
            cancel: limits.cancel.clone(),
        });
        if let Some(c) = self.store.data_mut().context.as_mut() {
            c.limiter.hit = false;
        }
        let outcome = match self.store.set_fuel(limits.fuel) {
            Ok(()) => {
                let program = self.image.program.clone();
                program.run_cell(&mut self.store, &self.instance, code)
            }
            Err(e) => Err(e),
        };
        self.io.end();
        // Between cells the store keeps no channel of this cell: a streamed
        // answer ends when its cell does.
        self.store.data_mut().set_stop(StopCheck {
            deadline: Instant::now(),
            output: None,
            cancel: Default::default(),
        });
        let memory_hit = self.store.data().context.as_ref().is_some_and(|c| c.limiter.hit);
        let past_deadline = Instant::now() >= started + limits.timeout;
        let outcome = match outcome {
            Ok(_) if memory_hit => Err(CellFailure::Memory),
            Ok(_) if past_deadline => Err(CellFailure::Timeout),
            Ok(report) => Ok(report),
            Err(e) => Err(classify(e, memory_hit)),
        };
        let (out, out_truncated) = stdout.take();
        let (err, err_truncated) = stderr.take();
        CellRun {
            stdout: out,
            stderr: err,
            truncated: out_truncated || err_truncated,
            duration: started.elapsed(),
            outcome,
        }
    }
}

fn classify(error: wasmtime::Error, memory_hit: bool) -> CellFailure {
    if super::guest::is_client_gone(&error) {
        return CellFailure::Cancelled;
    }
    if super::guest::is_deadline(&error) {
        return CellFailure::Timeout;
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::OutOfFuel) => CellFailure::Fuel,
        Some(wasmtime::Trap::Interrupt) => CellFailure::Timeout,
        Some(_) if memory_hit => CellFailure::Memory,
        Some(trap) => {
            let kind = match trap {
                wasmtime::Trap::StackOverflow => "stack_overflow",
                wasmtime::Trap::MemoryOutOfBounds => "memory_out_of_bounds",
                wasmtime::Trap::UnreachableCodeReached => "unreachable",
                wasmtime::Trap::IntegerDivisionByZero => "integer_division_by_zero",
                _ => "trap",
            };
            CellFailure::Trap(kind.to_string(), trap.to_string())
        }
        None if memory_hit => CellFailure::Memory,
        None if error.downcast_ref::<wasmtime_wasi::I32Exit>().is_some() => {
            let code = error.downcast_ref::<wasmtime_wasi::I32Exit>().map_or(0, |e| e.0);
            CellFailure::Trap("exit".into(), format!("the program exited with status {code}"))
        }
        None => CellFailure::Internal(anyhow::Error::from(error).context("the cell failed")),
    }
}

/// The layout of a paused context's files. Version 1 held a memory's
/// non-zero pages, each after its index, the rest being zero; version 2
/// holds the pages that may differ from a fresh instance ([`MemoryCopy`]):
/// the memory's size (u64), the page count (u64), every page index (u32),
/// then the pages' bytes in that order, so that they read in one go.
const SNAPSHOT_FORMAT: u64 = 2;

/// Writes a snapshot to `dir`: each memory (format 2), then the rest as
/// JSON, each file synced before it is renamed into place. Returns the
/// bytes written.
pub fn write_snapshot(dir: &Path, snapshot: &Snapshot, meta: &serde_json::Value) -> anyhow::Result<u64> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let mut total = 0u64;
    for (i, memory) in snapshot.memories.iter().enumerate() {
        // Pages in ascending order (a snapshot updated in place holds them
        // in the order they were first written).
        let mut order: Vec<usize> = (0..memory.pages.len()).collect();
        order.sort_unstable_by_key(|&slot| memory.pages[slot]);
        let sorted = order.windows(2).all(|w| w[0] < w[1]);
        let mut head = Vec::with_capacity(16 + memory.pages.len() * 4);
        head.extend_from_slice(&(memory.size as u64).to_le_bytes());
        head.extend_from_slice(&(memory.pages.len() as u64).to_le_bytes());
        for &slot in &order {
            head.extend_from_slice(&memory.pages[slot].to_le_bytes());
        }
        let dest = dir.join(format!("memory-{i}.bin"));
        let tmp = dir.join(format!("memory-{i}.bin.tmp"));
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(&head)?;
        if sorted {
            f.write_all(&memory.bytes)?;
        } else {
            let mut out = std::io::BufWriter::with_capacity(1 << 20, &mut f);
            for &slot in &order {
                out.write_all(&memory.bytes[slot * PAGE..][..PAGE])?;
            }
            out.flush()?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)?;
        total += (head.len() + memory.bytes.len()) as u64;
    }
    let state = serde_json::json!({
        "format": SNAPSHOT_FORMAT,
        "meta": meta,
        "state": snapshot.state,
        "memories": snapshot.memories.len(),
    });
    let text = serde_json::to_vec(&state)?;
    total += text.len() as u64;
    // Written last: a directory without it is an unfinished pause.
    crate::runtime::fetch::write_atomically(&dir.join("state.json"), &text)?;
    Ok(total)
}

/// Reads what [`write_snapshot`] wrote (either format), refusing sizes
/// beyond `max_memory` (a wasm32 memory cannot exceed 4 GiB; the context's
/// cap is lower).
pub fn read_snapshot(dir: &Path, max_memory: usize) -> anyhow::Result<(Snapshot, serde_json::Value)> {
    use std::io::Read as _;
    let text = std::fs::read(dir.join("state.json")).context("the context was not paused completely")?;
    let value: serde_json::Value = serde_json::from_slice(&text)?;
    let state: SnapshotState = serde_json::from_value(value["state"].clone())?;
    let format = value["format"].as_u64().unwrap_or(1);
    if format > SNAPSHOT_FORMAT {
        bail!("a snapshot of format {format} is newer than this server");
    }
    let count = value["memories"].as_u64().unwrap_or(0);
    if count > 16 {
        bail!("a snapshot with {count} memories is not one this server wrote");
    }
    let mut memories = vec![];
    for i in 0..count {
        let mut file = std::fs::File::open(dir.join(format!("memory-{i}.bin")))?;
        let mut word = [0u8; 8];
        file.read_exact(&mut word).context("a memory file is truncated")?;
        let len = u64::from_le_bytes(word) as usize;
        if len > max_memory || !len.is_multiple_of(65536) {
            bail!("a memory of {len} bytes is over the context's limit");
        }
        let copy = if format == 1 {
            read_format_1(&mut file, len)?
        } else {
            file.read_exact(&mut word).context("a memory file is truncated")?;
            let pages = u64::from_le_bytes(word) as usize;
            if pages > len / PAGE {
                bail!("a memory file lists more pages than its memory has");
            }
            let mut index = vec![0u8; pages * 4];
            file.read_exact(&mut index).context("a memory file is truncated")?;
            let pages: Vec<u32> = index
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect();
            if pages.windows(2).any(|w| w[0] >= w[1]) || pages.last().is_some_and(|&p| (p as usize + 1) * PAGE > len) {
                bail!("a page lies outside the memory or out of order");
            }
            let want = pages.len() * PAGE;
            let mut bytes = Vec::new();
            super::pagemap::reserve_huge(&mut bytes, want);
            (&mut file).take(want as u64).read_to_end(&mut bytes)?;
            if bytes.len() != want {
                bail!("a memory file is truncated");
            }
            MemoryCopy {
                size: len,
                pages,
                bytes,
                slots: Default::default(),
            }
        };
        memories.push(copy);
    }
    Ok((Snapshot { memories, state }, value["meta"].clone()))
}

/// A memory of format 1: index and bytes of each non-zero page; every page
/// not listed was zero, so all are listed.
fn read_format_1(file: &mut std::fs::File, len: usize) -> anyhow::Result<MemoryCopy> {
    use std::io::Read as _;
    let mut raw = vec![];
    file.read_to_end(&mut raw)?;
    let mut full = vec![0u8; len];
    let mut at = 0;
    while at < raw.len() {
        let page = u32::from_le_bytes(raw.get(at..at + 4).context("a memory file is truncated")?.try_into()?) as usize;
        at += 4;
        let start = page.checked_mul(PAGE).context("a page index overflows")?;
        let end = (start + PAGE).min(len);
        let bytes = raw.get(at..at + (end - start)).context("a memory file is truncated")?;
        full.get_mut(start..end)
            .context("a page lies outside the memory")?
            .copy_from_slice(bytes);
        at += end - start;
    }
    Ok(MemoryCopy {
        size: len,
        pages: (0..(len / PAGE) as u32).collect(),
        bytes: full,
        slots: Default::default(),
    })
}

/// QuickJS-NG's reactor build: `qjs_init_argv` starts the runtime with the
/// `std`, `os` and `bjson` modules as globals; a cell is a global script
/// evaluated with `JS_Eval`, so `let`, `const`, functions and `var` persist
/// from cell to cell as in a browser console, and its completion value is
/// the cell's result.
pub struct QuickJs;

impl QuickJs {
    pub const MANIFEST: &'static str = "qjs-wasi-reactor-0.17.0";
    const TAG_EXCEPTION: i64 = 6;
    /// The driver's own functions, defined once in every context.
    const PRELUDE: &'static str = include_str!("context_prelude.js");
}

fn guest_string(store: &mut Store<GuestState>, instance: &Instance, text: &str) -> wasmtime::Result<(i32, i32)> {
    let malloc = instance.get_typed_func::<i32, i32>(&mut *store, "malloc")?;
    let len = i32::try_from(text.len()).map_err(|_| wasmtime::Error::msg("the cell is too long"))?;
    let ptr = malloc.call(&mut *store, len + 1)?;
    if ptr == 0 {
        return Err(wasmtime::Error::msg("the context is out of memory"));
    }
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or_else(|| wasmtime::Error::msg("no memory"))?;
    memory.write(&mut *store, ptr as u32 as usize, text.as_bytes())?;
    memory.write(&mut *store, ptr as u32 as usize + text.len(), &[0])?;
    Ok((ptr, len))
}

impl QuickJs {
    /// Evaluates `source` as a global script; returns the JSValue.
    fn eval(
        store: &mut Store<GuestState>,
        instance: &Instance,
        ctx: i32,
        source: &str,
        name: i32,
    ) -> wasmtime::Result<i64> {
        let eval = instance.get_typed_func::<(i32, i32, i32, i32, i32), i64>(&mut *store, "JS_Eval")?;
        let free = instance.get_typed_func::<i32, ()>(&mut *store, "free")?;
        let (ptr, len) = guest_string(store, instance, source)?;
        let value = eval.call(&mut *store, (ctx, ptr, len, name, 0))?;
        free.call(&mut *store, ptr)?;
        Ok(value)
    }

    /// Runs the jobs promises queued (bounded by the cell's fuel and
    /// deadline, which the loop checks between jobs).
    fn run_jobs(store: &mut Store<GuestState>, instance: &Instance, ctx: i32) -> wasmtime::Result<()> {
        let runtime = instance
            .get_typed_func::<i32, i32>(&mut *store, "JS_GetRuntime")?
            .call(&mut *store, ctx)?;
        let execute = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "JS_ExecutePendingJob")?;
        let malloc = instance.get_typed_func::<i32, i32>(&mut *store, "malloc")?;
        let slot = malloc.call(&mut *store, 4)?;
        loop {
            if let Some(stop) = store.data().stop_check().must_stop() {
                return Err(stop);
            }
            if execute.call(&mut *store, (runtime, slot))? <= 0 {
                break;
            }
        }
        instance
            .get_typed_func::<i32, ()>(&mut *store, "free")?
            .call(&mut *store, slot)?;
        Ok(())
    }

    /// Reads a JS string value out (None when it is longer than
    /// [`MAX_REPORT_BYTES`]: its length is the guest's to choose), and frees it.
    fn take_string(
        store: &mut Store<GuestState>,
        instance: &Instance,
        ctx: i32,
        value: i64,
    ) -> wasmtime::Result<Option<String>> {
        let to_cstring = instance.get_typed_func::<(i32, i32, i64, i32), i32>(&mut *store, "JS_ToCStringLen2")?;
        let free_cstring = instance.get_typed_func::<(i32, i32), ()>(&mut *store, "JS_FreeCString")?;
        let free_value = instance.get_typed_func::<(i32, i64), ()>(&mut *store, "JS_FreeValue")?;
        let malloc = instance.get_typed_func::<i32, i32>(&mut *store, "malloc")?;
        let free = instance.get_typed_func::<i32, ()>(&mut *store, "free")?;
        let len_at = malloc.call(&mut *store, 4)?;
        let ptr = to_cstring.call(&mut *store, (ctx, len_at, value, 0))?;
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("no memory"))?;
        let mut len = [0u8; 4];
        memory.read(&*store, len_at as u32 as usize, &mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        let fits = len <= MAX_REPORT_BYTES;
        let mut text = vec![0u8; if ptr == 0 || !fits { 0 } else { len }];
        if ptr != 0 {
            memory.read(&*store, ptr as u32 as usize, &mut text)?;
            free_cstring.call(&mut *store, (ctx, ptr))?;
        }
        free.call(&mut *store, len_at)?;
        free_value.call(&mut *store, (ctx, value))?;
        Ok(fits.then(|| String::from_utf8_lossy(&text).into_owned()))
    }

    fn context(store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<i32> {
        let get = instance.get_typed_func::<(), i32>(&mut *store, "qjs_get_context")?;
        get.call(&mut *store, ())
    }

    /// A guest C string (for file names), allocated once per call.
    fn name(store: &mut Store<GuestState>, instance: &Instance, name: &str) -> wasmtime::Result<i32> {
        Ok(guest_string(store, instance, name)?.0)
    }
}

impl ContextProgram for QuickJs {
    fn language(&self) -> &'static str {
        "javascript"
    }

    fn image(&self) -> &'static str {
        "quickjs:0.17"
    }

    fn entry_points(&self) -> &'static [&'static str] {
        &[
            "JS_Eval",
            "JS_ToCStringLen2",
            "JS_FreeCString",
            "JS_FreeValue",
            "JS_GetException",
            "JS_GetGlobalObject",
            "JS_SetPropertyStr",
            "JS_GetRuntime",
            "JS_ExecutePendingJob",
        ]
    }

    fn init(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
        cwd: &str,
        _env: &[(String, String)],
    ) -> wasmtime::Result<()> {
        instance
            .get_typed_func::<(), ()>(&mut *store, "_initialize")?
            .call(&mut *store, ())?;
        let malloc = instance.get_typed_func::<i32, i32>(&mut *store, "malloc")?;
        let args = ["qjs", "--std"];
        let argv = malloc.call(&mut *store, 4 * args.len() as i32)?;
        let memory = instance
            .get_memory(&mut *store, "memory")
            .ok_or_else(|| wasmtime::Error::msg("no memory"))?;
        for (i, arg) in args.iter().enumerate() {
            let (ptr, _) = guest_string(store, instance, arg)?;
            memory.write(&mut *store, argv as u32 as usize + 4 * i, &ptr.to_le_bytes())?;
        }
        let init = instance.get_typed_func::<(i32, i32), i32>(&mut *store, "qjs_init_argv")?;
        let status = init.call(&mut *store, (args.len() as i32, argv))?;
        if status != 0 {
            return Err(wasmtime::Error::msg(format!(
                "qjs_init_argv failed with status {status}"
            )));
        }
        let ctx = Self::context(store, instance)?;
        let name = Self::name(store, instance, "<stacyvm>")?;
        let prelude = format!("{}\n__stacyvm_setup({});", Self::PRELUDE, serde_json::to_string(cwd)?);
        let value = Self::eval(store, instance, ctx, &prelude, name)?;
        if (value >> 32) == Self::TAG_EXCEPTION {
            let exception = instance
                .get_typed_func::<i32, i64>(&mut *store, "JS_GetException")?
                .call(&mut *store, ctx)?;
            let text = Self::take_string(store, instance, ctx, exception)?.unwrap_or_default();
            return Err(wasmtime::Error::msg(format!("the context prelude failed: {text}")));
        }
        instance
            .get_typed_func::<(i32, i64), ()>(&mut *store, "JS_FreeValue")?
            .call(&mut *store, (ctx, value))?;
        Ok(())
    }

    fn run_cell(&self, store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<CellReport> {
        let ctx = Self::context(store, instance)?;
        let name = Self::name(store, instance, "<cell>")?;
        let value = Self::eval(store, instance, ctx, code, name)?;
        instance
            .get_typed_func::<i32, ()>(&mut *store, "free")?
            .call(&mut *store, name)?;
        let global = instance
            .get_typed_func::<i32, i64>(&mut *store, "JS_GetGlobalObject")?
            .call(&mut *store, ctx)?;
        let set = instance.get_typed_func::<(i32, i64, i32, i64), i32>(&mut *store, "JS_SetPropertyStr")?;
        let (key, stored) = if (value >> 32) == Self::TAG_EXCEPTION {
            let exception = instance
                .get_typed_func::<i32, i64>(&mut *store, "JS_GetException")?
                .call(&mut *store, ctx)?;
            ("__stacyvm_exception", exception)
        } else {
            ("__stacyvm_value", value)
        };
        let key_ptr = Self::name(store, instance, key)?;
        set.call(&mut *store, (ctx, global, key_ptr, stored))?;
        instance
            .get_typed_func::<i32, ()>(&mut *store, "free")?
            .call(&mut *store, key_ptr)?;
        instance
            .get_typed_func::<(i32, i64), ()>(&mut *store, "JS_FreeValue")?
            .call(&mut *store, (ctx, global))?;
        Self::run_jobs(store, instance, ctx)?;
        let report_name = Self::name(store, instance, "<stacyvm>")?;
        let report = Self::eval(store, instance, ctx, &format!("__stacyvm_report({key:?})"), report_name)?;
        instance
            .get_typed_func::<i32, ()>(&mut *store, "free")?
            .call(&mut *store, report_name)?;
        if (report >> 32) == Self::TAG_EXCEPTION {
            let exception = instance
                .get_typed_func::<i32, i64>(&mut *store, "JS_GetException")?
                .call(&mut *store, ctx)?;
            instance
                .get_typed_func::<(i32, i64), ()>(&mut *store, "JS_FreeValue")?
                .call(&mut *store, (ctx, exception))?;
            return Ok(CellReport::unreadable(
                "the context's result reporter (__stacyvm_report) was removed or replaced",
            ));
        }
        match Self::take_string(store, instance, ctx, report)? {
            Some(text) => Ok(serde_json::from_str(&text)
                .unwrap_or_else(|_| CellReport::unreadable("the cell's result could not be read"))),
            None => Ok(CellReport::unreadable("the cell's result is too large to report")),
        }
    }
}

/// CPython 3.15's reactor (the `python:3.15` image), from its pre-initialized
/// snapshot: the scientific stack is imported before the first cell. A cell
/// is one `turn` that calls the driver (`context_prelude.py`), which runs it
/// in the context's `__main__` and reports through the door.
pub struct Python315;

impl Python315 {
    pub const MANIFEST: &'static str = "python-3.15";
    const PRELUDE: &'static str = include_str!("context_prelude.py");
    const MODULE: &'static str = "_stacyvm_context";

    /// Runs one turn of the driver's start; anything but status 0 fails.
    fn turn(store: &mut Store<GuestState>, instance: &Instance, source: &str) -> wasmtime::Result<()> {
        let status = super::reactor::call_turn(store, instance, source.as_bytes())?;
        if status != 0 {
            return Err(wasmtime::Error::msg(format!(
                "the Python context driver failed to start (status {status})"
            )));
        }
        Ok(())
    }

    /// Takes the report the driver sent during this cell.
    fn take_report(store: &mut Store<GuestState>) -> Option<Vec<u8>> {
        store.data_mut().context.as_mut().and_then(|c| c.report.take())
    }
}

impl ContextProgram for Python315 {
    fn language(&self) -> &'static str {
        "python"
    }

    fn image(&self) -> &'static str {
        "python:3.15"
    }

    fn entry_points(&self) -> &'static [&'static str] {
        &[]
    }

    /// The per-context half of the start (`setup`), on an instance that
    /// holds the driver: made by `prepare`, or copied from the template.
    fn init(
        &self,
        store: &mut Store<GuestState>,
        instance: &Instance,
        cwd: &str,
        env: &[(String, String)],
    ) -> wasmtime::Result<()> {
        let env: serde_json::Map<String, serde_json::Value> = env
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        // JSON strings and objects of strings read the same in Python.
        let source = format!(
            "__import__({module:?}).setup({cwd}, {env})\n",
            module = Self::MODULE,
            cwd = serde_json::Value::String(cwd.to_string()),
            env = serde_json::Value::Object(env),
        );
        Self::turn(store, instance, &source)
    }

    fn splits_init(&self) -> bool {
        true
    }

    fn prepare(&self, store: &mut Store<GuestState>, instance: &Instance) -> wasmtime::Result<()> {
        let source = format!(
            "import sys as _s, types as _t\n\
             _m = _t.ModuleType({module:?})\n\
             _m.__file__ = \"<stacyvm-context>\"\n\
             _s.modules[{module:?}] = _m\n\
             exec(compile({prelude}, \"<stacyvm-context>\", \"exec\"), _m.__dict__)\n\
             del _m, _s, _t\n",
            module = Self::MODULE,
            prelude = serde_json::Value::String(Self::PRELUDE.to_string()),
        );
        Self::turn(store, instance, &source)
    }

    fn run_cell(&self, store: &mut Store<GuestState>, instance: &Instance, code: &str) -> wasmtime::Result<CellReport> {
        Self::take_report(store);
        let source = format!(
            "__import__({:?}).cell({})\n",
            Self::MODULE,
            serde_json::Value::String(code.to_string())
        );
        let status = super::reactor::call_turn(store, instance, source.as_bytes())?;
        match Self::take_report(store) {
            Some(frame) => Ok(serde_json::from_slice(&frame)
                .unwrap_or_else(|_| CellReport::unreadable("the cell's result could not be read"))),
            None => Ok(CellReport::unreadable(&format!(
                "the context's driver ({}) did not report the cell (status {status}); it was removed or replaced",
                Self::MODULE
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_dir() -> PathBuf {
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from("target"));
        target.join("tmp/images")
    }

    fn limits(timeout_ms: u64) -> CellLimits {
        CellLimits {
            timeout: Duration::from_millis(timeout_ms),
            fuel: 10_000_000_000,
            output_limit: 1 << 20,
            output: None,
            cancel: Default::default(),
        }
    }

    fn text(run: &CellRun) -> String {
        match &run.outcome {
            Ok(report) => format!(
                "{} | {} | {}",
                String::from_utf8_lossy(&run.stdout),
                report
                    .result
                    .as_ref()
                    .map(|r| r["text/plain"].to_string())
                    .unwrap_or_default(),
                report.error.as_ref().map(|e| e.to_string()).unwrap_or_default()
            ),
            Err(CellFailure::Timeout) => "timeout".into(),
            Err(CellFailure::Fuel) => "fuel".into(),
            Err(CellFailure::Memory) => "memory".into(),
            Err(CellFailure::Trap(k, m)) => format!("trap {k} {m}"),
            Err(CellFailure::Cancelled) => "cancelled".into(),
            Err(CellFailure::Internal(e)) => format!("internal {e:#}"),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_javascript_context_keeps_state_and_a_snapshot_restores_it_with_its_open_files() {
        let catalog = crate::runtime::Catalog::built_in().unwrap();
        let engine = ContextEngine::load(&catalog, &image_dir(), false, &Default::default())
            .await
            .unwrap();
        let image = engine.image("javascript").cloned().expect("the reactor loads");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("workspace")).unwrap();
        std::fs::write(dir.path().join("workspace/data.txt"), "0123456789").unwrap();
        let env = ContextEnv {
            sandbox_dir: dir.path().to_path_buf(),
            ledger: DiskLedger::unlimited(),
            memory_bytes: 256 << 20,
            env: vec![("HOME".into(), "/workspace".into())],
        };
        let out = super::super::guest::on_guest_thread(move || {
            let mut live = LiveContext::create(image.clone(), &env, "/workspace").unwrap();
            let mut lines = vec![];
            for code in [
                "let x = 41; x + 1",
                "x + 1",
                "console.log('hi', x); const f = std.open('data.txt', 'r'); f.read(new ArrayBuffer(3), 0, 3)",
                "throw new TypeError('nope')",
                "std.in.readAsString()",
            ] {
                let run = live.run_cell(code, b"from stdin".to_vec(), &limits(5000));
                lines.push(text(&run));
            }
            let snap = live.snapshot(None).unwrap();
            let mut copy = LiveContext::restore(image.clone(), &env, &snap).unwrap();
            let run = copy.run_cell("x = x + 100; f.getline()", vec![], &limits(5000));
            lines.push(text(&run));
            let run = live.run_cell("x", vec![], &limits(5000));
            lines.push(text(&run));
            let run = live.run_cell("for (;;) {}", vec![], &limits(200));
            lines.push(text(&run));
            Ok(lines)
        })
        .await
        .unwrap();
        assert_eq!(
            out,
            vec![
                " | \"42\" | ",
                " | \"42\" | ",
                "hi 41\n | \"3\" | ",
                " |  | {\"name\":\"TypeError\",\"traceback\":\"    at <eval> (<cell>:1:11)\\n\",\"value\":\"nope\"}",
                " | \"\\\"from stdin\\\"\" | ",
                " | \"\\\"3456789\\\"\" | ",
                " | \"41\" | ",
                "timeout",
            ]
        );
    }
}
