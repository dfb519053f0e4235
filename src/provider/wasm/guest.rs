//! One guest run: a fresh `Store` with memory, fuel, deadline and disk limits,
//! a WASI context whose whole world is the sandbox directory, and captured
//! output. Nothing survives the run but the files it wrote.
//!
//! Disk quota: wasmtime-wasi has no quota hook, so the linker shadows the
//! preview1 functions that make files grow or add entries with wrappers
//! that charge the sandbox's [`DiskLedger`] before calling the real
//! implementation, and answer ENOSPC when the charge does not fit:
//! - `fd_write`, `fd_pwrite`, `fd_allocate` and `fd_filestat_set_size` are
//!   charged the growth of the file's size they cause (so a write far past
//!   the end of a file is charged the whole hole it makes);
//! - `path_open` with `O_CREAT` of a missing file, `path_create_directory`,
//!   `path_symlink` and `path_link` are charged one entry each.
//!
//! A charge for a call that then fails is given back.

use std::any::Any;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use wasmtime::{
    AsContextMut, Caller, Engine, Extern, InstancePre, Linker, Store, StoreLimits, StoreLimitsBuilder, Trap,
    UpdateDeadline,
};
use wasmtime_wasi::cli::{AsyncStdinStream, StdinStream};
use wasmtime_wasi::p1::wasi_snapshot_preview1::{self as wasi1, WasiSnapshotPreview1};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};
use wiggle::GuestMemory;

use super::component;
use super::engine::{GUEST_THREAD_STACK, LoadedRuntime, Program};
use super::pipe::{CapturePipe, FileSink, WriterSink};
use super::quota::{DIR_BYTES, DiskLedger};
use crate::provider::{ExecOutput, OutputChunk, ProviderError, StreamKind};

const WASI: &str = "wasi_snapshot_preview1";
/// `__WASI_ERRNO_NOENT`.
const ERRNO_NOENT: i32 = 44;
/// `__WASI_ERRNO_NOSPC`.
const ERRNO_NOSPC: i32 = 51;
/// `__WASI_OFLAGS_CREAT`.
const OFLAGS_CREAT: i32 = 1;
/// `__WASI_FDFLAGS_APPEND`.
const FDFLAGS_APPEND: u16 = 1;
/// `__WASI_FILETYPE_REGULAR_FILE`.
const FILETYPE_REGULAR_FILE: u8 = 4;

pub struct GuestState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    quota: Quota,
    stop: StopCheck,
}

/// When a running guest must stop early, whichever kind of program it is.
#[derive(Clone)]
pub struct StopCheck {
    /// When the exec must end; also bounds sleeps inside host calls.
    pub deadline: Instant,
    /// The live output channel, whose closing means the client left.
    pub output: Option<UnboundedSender<OutputChunk>>,
    /// Cancelled when the client left.
    pub cancel: CancellationToken,
}

impl StopCheck {
    /// Why the guest must stop now, if it must.
    pub fn must_stop(&self) -> Option<wasmtime::Error> {
        if Instant::now() >= self.deadline {
            Some(wasmtime::Error::new(DeadlineReached))
        } else if self.cancel.is_cancelled() || self.output.as_ref().is_some_and(|tx| tx.is_closed()) {
            Some(wasmtime::Error::new(ClientGone))
        } else {
            None
        }
    }
}

struct Quota {
    ledger: Arc<DiskLedger>,
    /// Once the guest moves a file onto fd 0-2, every fd is charged.
    stdio_replaced: bool,
}

/// What every guest's store state offers the shared store set-up.
pub trait Limited: Send + 'static {
    fn limits(&mut self) -> &mut StoreLimits;
    fn stop(&self) -> &StopCheck;
}

impl Limited for GuestState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    fn stop(&self) -> &StopCheck {
        &self.stop
    }
}

thread_local! {
    /// The store of the last guest this thread ran. Releasing an instance
    /// takes about a millisecond (its memory is reset in place for the next
    /// one), so it is parked here and dropped by [`release_parked`] after
    /// the exec's result has gone out, or when the next guest is parked.
    static PARKED: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Parks a finished guest's store for [`release_parked`] to drop.
pub fn park<T: 'static>(store: Store<T>) {
    let previous = PARKED.with(|p| p.replace(Some(Box::new(store))));
    drop(previous);
}

/// Drops the store this thread parked, if any.
pub fn release_parked() {
    let parked = PARKED.with(|p| p.take());
    drop(parked);
}

/// Runs `f`, which runs guests, on a thread of its own whose native stack is
/// deep enough for the deepest wasm stack a guest may use (the threads of
/// tokio's blocking pool are not), inside the current tokio runtime. For
/// one-off runs; execs go through a [`GuestPool`].
pub async fn on_guest_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let handle = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("stacyvm-guest".into())
        .stack_size(GUEST_THREAD_STACK)
        .spawn(move || {
            let _runtime = handle.enter();
            tx.send(f()).ok();
            // The result is out; now release the last instance.
            release_parked();
        })
        .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context("cannot start a guest thread")))?;
    rx.await
        .map_err(|_| ProviderError::Internal(anyhow::anyhow!("the guest thread panicked")))?
}

type PoolJob = Box<dyn FnOnce() + Send>;

/// The threads that run guests: at most `size`, started as needed and
/// kept, each with a native stack deep enough for the deepest wasm stack.
/// A job that panics answers an internal error for its exec only; the
/// thread goes on serving.
pub struct GuestPool {
    size: usize,
    jobs: std::sync::mpsc::Sender<PoolJob>,
    queue: Arc<std::sync::Mutex<std::sync::mpsc::Receiver<PoolJob>>>,
    /// Threads started, and threads waiting for a job.
    started: std::sync::atomic::AtomicUsize,
    idle: Arc<std::sync::atomic::AtomicUsize>,
    runtime: tokio::runtime::Handle,
}

impl GuestPool {
    /// A pool of at most `size` threads, running in the current runtime.
    pub fn new(size: usize) -> GuestPool {
        let (jobs, queue) = std::sync::mpsc::channel();
        GuestPool {
            size,
            jobs,
            queue: Arc::new(std::sync::Mutex::new(queue)),
            started: Default::default(),
            idle: Default::default(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Runs `f` on a pool thread. The caller bounds the jobs in flight to
    /// the pool's size, so a job never waits for a busy thread for long.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        use std::sync::atomic::Ordering;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: PoolJob = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            if let Ok(result) = result {
                tx.send(result).ok();
            }
            // The result is out; now release the last instance.
            release_parked();
        });
        self.jobs
            .send(job)
            .map_err(|_| ProviderError::Internal(anyhow::anyhow!("the guest threads have stopped")))?;
        if self.idle.load(Ordering::Acquire) == 0 {
            self.grow()?;
        }
        rx.await
            .map_err(|_| ProviderError::Internal(anyhow::anyhow!("the guest program's host code panicked")))?
    }

    /// Runs `f` on a pool thread, starting now; the receiver gets its
    /// result (or the panic). The caller makes sure a thread is free for it
    /// ([`Self::ensure_threads`]).
    pub fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::sync::mpsc::Receiver<std::thread::Result<T>> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: PoolJob = Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            // The instance is let go before the result is out, so that
            // whoever waits for it finds the pipes it held closed.
            release_parked();
            tx.send(result).ok();
        });
        if self.jobs.send(job).is_err() {
            // The pool is gone with the server: the receiver sees a
            // disconnection.
        }
        rx
    }

    /// Starts threads until the pool has `n` (at most its size), so that
    /// `n` jobs can run at once.
    pub fn ensure_threads(&self, n: usize) {
        use std::sync::atomic::Ordering;
        while self.started.load(Ordering::Acquire) < n.min(self.size) {
            if self.grow().is_err() {
                break;
            }
        }
    }

    /// Starts one more thread, unless the pool is full.
    fn grow(&self) -> Result<(), ProviderError> {
        use std::sync::atomic::Ordering;
        let claimed = self.started.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.size).then_some(n + 1)
        });
        if claimed.is_err() {
            return Ok(());
        }
        let (queue, idle, runtime) = (self.queue.clone(), self.idle.clone(), self.runtime.clone());
        std::thread::Builder::new()
            .name("stacyvm-guest".into())
            .stack_size(GUEST_THREAD_STACK)
            .spawn(move || {
                let _runtime = runtime.enter();
                loop {
                    idle.fetch_add(1, Ordering::AcqRel);
                    let job = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    idle.fetch_sub(1, Ordering::AcqRel);
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context("cannot start a guest thread")))?;
        Ok(())
    }
}

/// A fresh store for one run, with its memory limits, its fuel, and the
/// deadline and client checks at every epoch tick.
pub fn new_store<T: Limited>(engine: &Engine, state: T, fuel: u64) -> Result<Store<T>, ProviderError> {
    let mut store = Store::new(engine, state);
    store.limiter(|s| s.limits());
    store
        .set_fuel(fuel)
        .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context("cannot set fuel")))?;
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|ctx| match ctx.data().stop().must_stop() {
        Some(stop) => Err(stop),
        None => Ok(UpdateDeadline::Continue(1)),
    });
    Ok(store)
}

/// The start of every run: its clock, its captured output and its WASI
/// context, whose whole world is the sandbox directory and the runtime's
/// read-only mounts.
pub struct RunStart {
    pub started: Instant,
    pub stdout: CapturePipe,
    pub stderr: CapturePipe,
    pub wasi: WasiCtxBuilder,
}

impl RunStart {
    pub fn new(runtime: &LoadedRuntime, job: &mut GuestJob) -> Result<RunStart, ProviderError> {
        let started = Instant::now();
        let stdout = CapturePipe::new(job.output_limit)
            .tee(job.output.clone(), StreamKind::Stdout)
            .close_when_full(job.close_when_full);
        let stderr = CapturePipe::new(job.output_limit).tee(job.output.clone(), StreamKind::Stderr);
        let stop = StopCheck {
            deadline: started + job.timeout,
            output: job.output.clone(),
            cancel: job.cancel.clone(),
        };
        let wasi = wasi_builder(runtime, job, &stdout, &stderr, &stop)?;
        Ok(RunStart {
            started,
            stdout,
            stderr,
            wasi,
        })
    }

    /// The exec's stop check, from its deadline and live output.
    pub fn stop_check(&self, job: &GuestJob) -> StopCheck {
        StopCheck {
            deadline: self.started + job.timeout,
            output: job.output.clone(),
            cancel: job.cancel.clone(),
        }
    }

    /// Turns how the run ended into the exec's result: exit codes, limits
    /// (with the output so far) and crashes.
    pub fn finish(&self, result: wasmtime::Result<()>, job: &GuestJob) -> Result<ExecOutput, ProviderError> {
        let timed_out = |output: ExecOutput| {
            Err(ProviderError::Timeout {
                timeout: job.timeout,
                partial: Box::new(output),
            })
        };
        let (out, out_truncated) = self.stdout.take();
        let (err, err_truncated) = self.stderr.take();
        let mut output = ExecOutput {
            exit_code: 0,
            stdout: out,
            stderr: err,
            truncated: out_truncated || err_truncated,
            duration: self.started.elapsed(),
            trap: None,
        };
        let past_deadline = Instant::now() >= self.started + job.timeout;
        let Err(error) = result else {
            return if past_deadline { timed_out(output) } else { Ok(output) };
        };
        if let Some(exit) = error.downcast_ref::<I32Exit>() {
            output.exit_code = exit.0;
            // A guest woken at its deadline (its input ended there) may exit
            // before the next deadline check: it still ran out of time.
            return if past_deadline { timed_out(output) } else { Ok(output) };
        }
        if error.downcast_ref::<ClientGone>().is_some() {
            return Err(ProviderError::Cancelled);
        }
        if error.downcast_ref::<DeadlineReached>().is_some() {
            return timed_out(output);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => Err(ProviderError::FuelExhausted {
                fuel: job.fuel,
                partial: Box::new(output),
            }),
            Some(Trap::Interrupt) => Err(ProviderError::Timeout {
                timeout: job.timeout,
                partial: Box::new(output),
            }),
            Some(trap) => {
                // A crash of the guest program, like a signal for a process: a
                // normal result with the conventional 128+SIGABRT exit code.
                let reason = match trap {
                    Trap::StackOverflow => "stack_overflow",
                    Trap::MemoryOutOfBounds => "memory_out_of_bounds",
                    Trap::UnreachableCodeReached => "unreachable",
                    Trap::IntegerDivisionByZero => "integer_division_by_zero",
                    Trap::IndirectCallToNull | Trap::BadSignature => "bad_call",
                    _ => "trap",
                };
                output.exit_code = 134;
                output
                    .stderr
                    .extend_from_slice(format!("\nstacyvm: the program crashed: {trap}\n").as_bytes());
                output.trap = Some(reason.to_string());
                Ok(output)
            }
            None => {
                let message = format!("{error:#}");
                if message.contains("memory") && message.contains("limit") || message.contains("exceeds memory limits")
                {
                    return Err(ProviderError::MemoryLimit {
                        limit_mb: (job.memory_bytes >> 20) as u64,
                        partial: Box::new(output),
                    });
                }
                Err(ProviderError::Internal(
                    anyhow::Error::from(error).context("guest run failed"),
                ))
            }
        }
    }
}

/// A guest's live standard input that ends in an error at the exec's
/// deadline or when the client leaves: a guest blocked reading it is in a
/// host call, where epoch interruption cannot reach it.
struct StoppableInput {
    inner: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    cancelled: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl StoppableInput {
    fn new(inner: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>, stop: &StopCheck) -> Self {
        StoppableInput {
            inner,
            deadline: Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(stop.deadline))),
            cancelled: Box::pin(stop.cancel.clone().cancelled_owned()),
        }
    }
}

impl tokio::io::AsyncRead for StoppableInput {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        let stopped = self.deadline.as_mut().poll(cx).is_ready() || self.cancelled.as_mut().poll(cx).is_ready();
        if stopped {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the exec was stopped",
            )));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// A caller's stdin, boxed.
struct CustomStdin(Box<dyn StdinStream + Sync>);

impl wasmtime_wasi::cli::IsTerminal for CustomStdin {
    fn is_terminal(&self) -> bool {
        self.0.is_terminal()
    }
}

impl StdinStream for CustomStdin {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        self.0.async_stream()
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::InputStream> {
        self.0.p2_stream()
    }
}

/// Marks the error that stops a guest at its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the exec deadline was reached")]
struct DeadlineReached;

/// Marks the error that stops a guest whose output receiver left.
#[derive(Debug, thiserror::Error)]
#[error("the client disconnected")]
struct ClientGone;

/// Registers WASI preview1, then shadows the functions that grow files.
pub fn add_to_linker(linker: &mut Linker<GuestState>) -> wasmtime::Result<()> {
    p1::add_to_linker_sync(linker, |s: &mut GuestState| &mut s.wasi)?;
    linker.allow_shadowing(true);
    linker.func_wrap(
        WASI,
        "fd_write",
        |mut caller: Caller<'_, GuestState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            let growth = match iov_total(&mut caller, iovs, iovs_len) {
                Some(bytes) if counted(&caller, fd) => file_growth(&mut caller, fd, None, bytes)?,
                _ => 0,
            };
            charged(&mut caller, growth, 0, |ctx, mem| {
                in_tokio(wasi1::fd_write(ctx, mem, fd, iovs, iovs_len, nwritten))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_pwrite",
        |mut caller: Caller<'_, GuestState>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         offset: i64,
         nwritten: i32|
         -> wasmtime::Result<i32> {
            let growth = match iov_total(&mut caller, iovs, iovs_len) {
                Some(bytes) if counted(&caller, fd) => file_growth(&mut caller, fd, Some(offset as u64), bytes)?,
                _ => 0,
            };
            charged(&mut caller, growth, 0, |ctx, mem| {
                in_tokio(wasi1::fd_pwrite(ctx, mem, fd, iovs, iovs_len, offset, nwritten))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_filestat_set_size",
        |mut caller: Caller<'_, GuestState>, fd: i32, size: i64| -> wasmtime::Result<i32> {
            let growth = file_growth(&mut caller, fd, Some(0), size as u64)?;
            charged(&mut caller, growth, 0, |ctx, mem| {
                in_tokio(wasi1::fd_filestat_set_size(ctx, mem, fd, size))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_allocate",
        |mut caller: Caller<'_, GuestState>, fd: i32, offset: i64, len: i64| -> wasmtime::Result<i32> {
            let growth = file_growth(&mut caller, fd, Some(offset as u64), len as u64)?;
            charged(&mut caller, growth, 0, |ctx, mem| {
                Ok(wasi1::fd_allocate(ctx, mem, fd, offset, len))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_open",
        |mut caller: Caller<'_, GuestState>,
         dirfd: i32,
         dirflags: i32,
         path: i32,
         path_len: i32,
         oflags: i32,
         rights_base: i64,
         rights_inheriting: i64,
         fdflags: i32,
         opened: i32|
         -> wasmtime::Result<i32> {
            // Creating a file that does not exist yet adds an entry.
            let new_entry = oflags & OFLAGS_CREAT != 0 && {
                let (errno, _) = with_scratch::<64>(&mut caller, |ctx, mem, at| {
                    in_tokio(wasi1::path_filestat_get(ctx, mem, dirfd, dirflags, path, path_len, at))
                })?;
                errno == ERRNO_NOENT
            };
            charged(&mut caller, 0, u64::from(new_entry), |ctx, mem| {
                in_tokio(wasi1::path_open(
                    ctx,
                    mem,
                    dirfd,
                    dirflags,
                    path,
                    path_len,
                    oflags,
                    rights_base,
                    rights_inheriting,
                    fdflags,
                    opened,
                ))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_create_directory",
        |mut caller: Caller<'_, GuestState>, dirfd: i32, path: i32, path_len: i32| -> wasmtime::Result<i32> {
            charged(&mut caller, DIR_BYTES, 1, |ctx, mem| {
                in_tokio(wasi1::path_create_directory(ctx, mem, dirfd, path, path_len))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_symlink",
        |mut caller: Caller<'_, GuestState>,
         old_path: i32,
         old_len: i32,
         dirfd: i32,
         new_path: i32,
         new_len: i32|
         -> wasmtime::Result<i32> {
            charged(&mut caller, u64::from(old_len as u32), 1, |ctx, mem| {
                in_tokio(wasi1::path_symlink(
                    ctx, mem, old_path, old_len, dirfd, new_path, new_len,
                ))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "path_link",
        |mut caller: Caller<'_, GuestState>,
         old_fd: i32,
         old_flags: i32,
         old_path: i32,
         old_len: i32,
         new_fd: i32,
         new_path: i32,
         new_len: i32|
         -> wasmtime::Result<i32> {
            charged(&mut caller, 0, 1, |ctx, mem| {
                in_tokio(wasi1::path_link(
                    ctx, mem, old_fd, old_flags, old_path, old_len, new_fd, new_path, new_len,
                ))
            })
        },
    )?;
    linker.func_wrap(
        WASI,
        "poll_oneoff",
        |mut caller: Caller<'_, GuestState>,
         subs: i32,
         events: i32,
         nsubs: i32,
         nevents: i32|
         -> wasmtime::Result<i32> {
            match sleep_only(&mut caller, subs, events, nsubs, nevents)? {
                Some(errno) => Ok(errno),
                None => call_real(&mut caller, |ctx, mem| {
                    in_tokio(wasi1::poll_oneoff(ctx, mem, subs, events, nsubs, nevents))
                }),
            }
        },
    )?;
    linker.func_wrap(
        WASI,
        "fd_renumber",
        |mut caller: Caller<'_, GuestState>, from: i32, to: i32| -> wasmtime::Result<i32> {
            if (0..=2).contains(&to) {
                caller.data_mut().quota.stdio_replaced = true;
            }
            call_real(&mut caller, |ctx, mem| in_tokio(wasi1::fd_renumber(ctx, mem, from, to)))
        },
    )?;
    Ok(())
}

/// Calls the real preview1 implementation, set up exactly as the generated
/// glue does (guest memory, hostcall fuel).
fn call_real(
    caller: &mut Caller<'_, GuestState>,
    f: impl FnOnce(&mut WasiP1Ctx, &mut GuestMemory<'_>) -> wasmtime::Result<wasmtime::Result<i32>>,
) -> wasmtime::Result<i32> {
    let fuel = caller.as_context_mut().hostcall_fuel();
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::Error::msg("missing required memory export"));
    };
    let (data, state) = memory.data_and_store_mut(caller);
    state.wasi.set_hostcall_fuel(fuel);
    let mut mem = GuestMemory::Unshared(data);
    f(&mut state.wasi, &mut mem)?
}

fn in_tokio<F: std::future::Future>(f: F) -> wasmtime::Result<F::Output> {
    Ok(wasmtime_wasi::runtime::in_tokio(f))
}

/// Size of a preview1 `subscription` and `event` in guest memory.
const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
/// The longest a sleeping guest goes without its deadline being checked.
const SLEEP_SLICE: Duration = Duration::from_millis(10);

/// A guest sleeping (a `poll_oneoff` on relative clocks only, which is what
/// `time.sleep` becomes) would block its thread past the exec deadline, where
/// epoch interruption cannot reach. Sleep here instead, in slices, and stop
/// at the deadline or when the client leaves. Returns None when the call is
/// not a plain sleep, for the real implementation to handle.
fn sleep_only(
    caller: &mut Caller<'_, GuestState>,
    subs: i32,
    events: i32,
    nsubs: i32,
    nevents: i32,
) -> wasmtime::Result<Option<i32>> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Ok(None);
    };
    let n = nsubs as u32 as usize;
    let start = subs as u32 as usize;
    let Some(raw) = n
        .checked_mul(SUBSCRIPTION_SIZE)
        .and_then(|len| memory.data(&caller).get(start..start.checked_add(len)?))
    else {
        return Ok(None);
    };
    let parsed: Vec<(u8, u32, u64, u64, u16)> = raw
        .chunks_exact(SUBSCRIPTION_SIZE)
        .map(|sub| {
            let userdata = u64::from_le_bytes(sub[0..8].try_into().unwrap());
            let clock = u32::from_le_bytes(sub[16..20].try_into().unwrap());
            let timeout = u64::from_le_bytes(sub[24..32].try_into().unwrap());
            let flags = u16::from_le_bytes([sub[40], sub[41]]);
            (sub[8], clock, userdata, timeout, flags)
        })
        .collect();
    // Only clock subscriptions on the realtime (0) or monotonic (1) clock;
    // fd waits go to the real implementation.
    if parsed.iter().any(|(tag, clock, ..)| *tag != 0 || *clock > 1) {
        return Ok(None);
    }
    let now = Instant::now();
    let mut wakes = Vec::with_capacity(n);
    for (_, clock, userdata, timeout, flags) in parsed {
        let relative = if flags & 1 == 0 {
            timeout
        } else {
            // An absolute time (CPython's time.sleep uses one): measure the
            // guest's clock now, using the event buffer as scratch space.
            let scratch = events;
            let errno = call_real(caller, |ctx, mem| {
                Ok(wasi1::clock_time_get(ctx, mem, clock as i32, 1, scratch))
            })?;
            if errno != 0 {
                return Ok(None);
            }
            let at = scratch as u32 as usize;
            let Some(bytes) = memory.data(&caller).get(at..at + 8) else {
                return Ok(None);
            };
            timeout.saturating_sub(u64::from_le_bytes(bytes.try_into().unwrap()))
        };
        wakes.push((userdata, now + Duration::from_nanos(relative)));
    }
    let Some(earliest) = wakes.iter().map(|(_, at)| *at).min() else {
        return Ok(None);
    };
    loop {
        let now = Instant::now();
        let stop = &caller.data().stop;
        if let Some(stop) = stop.must_stop() {
            return Err(stop);
        }
        if now >= earliest {
            break;
        }
        std::thread::sleep(SLEEP_SLICE.min(earliest - now).min(stop.deadline - now));
    }
    let now = Instant::now();
    let fired: Vec<u64> = wakes.iter().filter(|(_, at)| *at <= now).map(|(u, _)| *u).collect();
    let data = memory.data_mut(&mut *caller);
    let out = events as u32 as usize;
    let Some(dst) = data.get_mut(out..out + fired.len() * EVENT_SIZE) else {
        return Ok(None);
    };
    for (event, userdata) in dst.chunks_exact_mut(EVENT_SIZE).zip(&fired) {
        event.fill(0);
        event[0..8].copy_from_slice(&userdata.to_le_bytes());
        // error = 0 (success), type = 0 (clock): already zero.
    }
    let count_at = nevents as u32 as usize;
    let Some(count) = data.get_mut(count_at..count_at + 4) else {
        return Ok(None);
    };
    count.copy_from_slice(&(fired.len() as u32).to_le_bytes());
    Ok(Some(0))
}

fn counted(caller: &Caller<'_, GuestState>, fd: i32) -> bool {
    !(1..=2).contains(&fd) || caller.data().quota.stdio_replaced
}

/// Charges the ledger, runs the real call, and gives the charge back if
/// the call failed. ENOSPC when the charge does not fit.
fn charged(
    caller: &mut Caller<'_, GuestState>,
    bytes: u64,
    entries: u64,
    f: impl FnOnce(&mut WasiP1Ctx, &mut GuestMemory<'_>) -> wasmtime::Result<wasmtime::Result<i32>>,
) -> wasmtime::Result<i32> {
    let ledger = caller.data().quota.ledger.clone();
    if (bytes, entries) != (0, 0) && ledger.charge(bytes, entries).is_err() {
        return Ok(ERRNO_NOSPC);
    }
    let errno = call_real(caller, f)?;
    if errno != 0 {
        ledger.refund(bytes, entries);
    }
    Ok(errno)
}

/// How much writing `bytes` to the regular file `fd` grows it: at `offset`
/// for a positioned write, else at its current position (or its end in
/// append mode). Zero for anything that is not a regular file; the whole
/// extent when the file cannot be examined (the real call then fails).
fn file_growth(caller: &mut Caller<'_, GuestState>, fd: i32, offset: Option<u64>, bytes: u64) -> wasmtime::Result<u64> {
    let end = |start: u64| start.saturating_add(bytes);
    let (errno, stat) = with_scratch::<64>(caller, |ctx, mem, at| {
        in_tokio(wasi1::fd_filestat_get(ctx, mem, fd, at))
    })?;
    if errno != 0 {
        return Ok(end(offset.unwrap_or(0)));
    }
    if stat[16] != FILETYPE_REGULAR_FILE {
        return Ok(0);
    }
    let size = u64::from_le_bytes(stat[32..40].try_into().expect("8 bytes"));
    let start = match offset {
        Some(offset) => offset,
        None => {
            let (errno, fdstat) =
                with_scratch::<24>(caller, |ctx, mem, at| in_tokio(wasi1::fd_fdstat_get(ctx, mem, fd, at)))?;
            let flags = u16::from_le_bytes([fdstat[2], fdstat[3]]);
            if errno == 0 && flags & FDFLAGS_APPEND != 0 {
                size
            } else {
                let (errno, tell) = with_scratch::<8>(caller, |ctx, mem, at| Ok(wasi1::fd_tell(ctx, mem, fd, at)))?;
                if errno != 0 {
                    return Ok(end(size));
                }
                u64::from_le_bytes(tell)
            }
        }
    };
    Ok(end(start).saturating_sub(size))
}

/// Calls a real preview1 function that writes its result into guest
/// memory, lending it the first `N` bytes of the guest's memory and putting
/// back what they held. Returns the errno and what the call wrote.
fn with_scratch<const N: usize>(
    caller: &mut Caller<'_, GuestState>,
    f: impl FnOnce(&mut WasiP1Ctx, &mut GuestMemory<'_>, i32) -> wasmtime::Result<wasmtime::Result<i32>>,
) -> wasmtime::Result<(i32, [u8; N])> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return Err(wasmtime::Error::msg("missing required memory export"));
    };
    let Some(saved) = memory
        .data(&caller)
        .get(..N)
        .map(|b| <[u8; N]>::try_from(b).expect("N bytes"))
    else {
        // A memory this small holds nothing to write to a file.
        return Ok((ERRNO_NOSPC, [0; N]));
    };
    let errno = call_real(caller, |ctx, mem| f(ctx, mem, 0))?;
    let data = memory.data_mut(&mut *caller);
    let written = <[u8; N]>::try_from(&data[..N]).expect("N bytes");
    data[..N].copy_from_slice(&saved);
    Ok((errno, written))
}

/// Sum of the lengths of an iovec array in guest memory.
fn iov_total(caller: &mut Caller<'_, GuestState>, iovs: i32, iovs_len: i32) -> Option<u64> {
    let Some(Extern::Memory(memory)) = caller.get_export("memory") else {
        return None;
    };
    let data = memory.data(&caller);
    let start = iovs as u32 as usize;
    let len = (iovs_len as u32 as usize).checked_mul(8)?;
    let raw = data.get(start..start.checked_add(len)?)?;
    Some(
        raw.chunks_exact(8)
            .map(|iov| u64::from(u32::from_le_bytes(iov[4..8].try_into().unwrap())))
            .sum(),
    )
}

/// Where one of a guest's output streams goes.
#[derive(Default)]
pub enum GuestOut {
    /// Kept (up to `output_limit`) for the exec's result or a pipe.
    #[default]
    Capture,
    /// Written to this file as it comes, charged to the disk ledger.
    File(std::fs::File),
    /// Dropped.
    Discard,
    /// Handed to this function as it comes (a pipe to another command).
    Writer(Arc<dyn Fn(&[u8]) -> std::io::Result<()> + Send + Sync>),
}

/// Everything one run needs; built by the provider from the exec request.
pub struct GuestJob {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub sandbox_dir: PathBuf,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    pub memory_bytes: usize,
    pub fuel: u64,
    pub output_limit: usize,
    /// Fail stdout writes once `output_limit` is reached (a pipe).
    pub close_when_full: bool,
    /// Where stdout and stderr go.
    pub stdout: GuestOut,
    pub stderr: GuestOut,
    /// The sandbox's disk ledger, held by the caller for the run.
    pub ledger: Arc<DiskLedger>,
    /// Live stdin, read while the guest runs (replaces `stdin`).
    pub stdin_stream: Option<Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>>,
    /// A stdin of the caller's making (replaces both).
    pub stdin_custom: Option<Box<dyn StdinStream + Sync>>,
    /// Live output, sent as the guest writes.
    pub output: Option<UnboundedSender<OutputChunk>>,
    /// Cancelled when the client left.
    pub cancel: CancellationToken,
}

/// Runs one guest to completion on the current (blocking) thread.
pub fn run(runtime: &LoadedRuntime, job: GuestJob) -> Result<ExecOutput, ProviderError> {
    match &runtime.program {
        Program::Module(pre) => run_module(runtime, pre, job),
        Program::Component(pre) => component::run(runtime, pre, job),
    }
}

/// The WASI context every guest gets: arguments, environment, stdio wired to
/// `stdout`/`stderr`, the sandbox directory as `/` and the runtime's
/// read-only mounts.
fn wasi_builder(
    runtime: &LoadedRuntime,
    job: &mut GuestJob,
    stdout: &CapturePipe,
    stderr: &CapturePipe,
    stop: &StopCheck,
) -> Result<WasiCtxBuilder, ProviderError> {
    let mut builder = WasiCtxBuilder::new();
    if let Some(stdin) = job.stdin_custom.take() {
        builder.stdin(CustomStdin(stdin));
    } else {
        match job.stdin_stream.take() {
            Some(stream) => builder.stdin(AsyncStdinStream::new(StoppableInput::new(stream, stop))),
            None => builder.stdin(MemoryInputPipe::new(std::mem::take(&mut job.stdin))),
        };
    }
    match std::mem::take(&mut job.stdout) {
        GuestOut::Capture => builder.stdout(stdout.clone()),
        GuestOut::File(file) => builder.stdout(FileSink::new(file, job.ledger.clone())),
        GuestOut::Discard => builder.stdout(CapturePipe::discard()),
        GuestOut::Writer(write) => builder.stdout(WriterSink(write)),
    };
    match std::mem::take(&mut job.stderr) {
        GuestOut::Capture => builder.stderr(stderr.clone()),
        GuestOut::File(file) => builder.stderr(FileSink::new(file, job.ledger.clone())),
        GuestOut::Discard => builder.stderr(CapturePipe::discard()),
        GuestOut::Writer(write) => builder.stderr(WriterSink(write)),
    };
    builder
        .args(&job.argv)
        .envs(&job.env)
        .allow_blocking_current_thread(true)
        .preopened_dir(&job.sandbox_dir, "/", FsPerms::ReadWrite)
        .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context("cannot preopen the sandbox directory")))?;
    for (host, guest) in &runtime.mounts {
        builder
            .preopened_dir(host, guest, FsPerms::ReadOnly)
            .map_err(|e| ProviderError::Internal(anyhow::Error::from(e).context(format!("cannot preopen {guest}"))))?;
    }
    Ok(builder)
}

fn run_module(
    runtime: &LoadedRuntime,
    pre: &InstancePre<GuestState>,
    mut job: GuestJob,
) -> Result<ExecOutput, ProviderError> {
    let mut start = RunStart::new(runtime, &mut job)?;
    let state = GuestState {
        wasi: start.wasi.build_p1(),
        limits: StoreLimitsBuilder::new()
            .memory_size(job.memory_bytes)
            .instances(1)
            .build(),
        quota: Quota {
            ledger: job.ledger.clone(),
            stdio_replaced: false,
        },
        stop: start.stop_check(&job),
    };
    let mut store = new_store(pre.module().engine(), state, job.fuel)?;
    let result = pre
        .instantiate(&mut store)
        .and_then(|instance| instance.get_typed_func::<(), ()>(&mut store, "_start"))
        .and_then(|start| start.call(&mut store, ()));
    park(store);
    start.finish(result, &job)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_that_panics_answers_an_internal_error_and_the_pool_serves_on() {
        let pool = GuestPool::new(1);
        let panicked = pool.run(|| -> Result<(), ProviderError> { panic!("a bug") }).await;
        assert_eq!(
            panicked.unwrap_err().to_string(),
            "the guest program's host code panicked"
        );
        assert_eq!(pool.run(|| Ok(42)).await.unwrap(), 42);
        assert_eq!(pool.started.load(std::sync::atomic::Ordering::Acquire), 1);
    }
}
