//! Guests that are WASI 0.2 components (`wasi:cli/command`), such as the
//! pre-initialized CPython image: a fresh `Store` and instance per run, with
//! the same limits as preview1 modules.
//!
//! The preview1 shadows in `guest.rs` do not apply here, so this module has
//! its own:
//! - Disk quota: as for preview1 modules, growth and new entries are
//!   charged to the sandbox's [`DiskLedger`] before the real call, and a
//!   charge that does not fit fails with ENOSPC. The file streams
//!   `write-via-stream` and `append-via-stream` hand out are wrapped in
//!   [`QuotaStream`], which charges each write the growth it causes and
//!   fails it when that does not fit (wasi-libc reports a failed stream to
//!   the program as EIO); `descriptor.write` and `descriptor.set-size` are
//!   charged their growth; `open-at` with `create` of a missing file,
//!   `create-directory-at`, `symlink-at` and `link-at` one entry each.
//! - Sleeps: `poll` and `pollable.block` wait in slices, checking the exec
//!   deadline and the client, because epoch interruption cannot reach a guest
//!   blocked in a host call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime::{StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::filesystem::WasiFilesystemView;
use wasmtime_wasi::p2::bindings::sync::CommandPre;
use wasmtime_wasi::p2::bindings::sync::filesystem::types::{self as fs, HostDescriptor};
use wasmtime_wasi::p2::{DynOutputStream, DynPollable, OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::poll::{Host as _, HostPollable as _};

use super::engine::LoadedRuntime;
use super::guest::{GuestJob, Limited, RunStart, StopCheck, new_store, park};
use super::quota::{DIR_BYTES, DiskLedger};
use crate::provider::{ExecOutput, ProviderError};

/// The WASI version of the interfaces the shadows replace.
const FILESYSTEM: &str = "wasi:filesystem/types@0.2.12";
const POLL: &str = "wasi:io/poll@0.2.12";
/// The longest a blocked guest goes without its deadline being checked.
const WAIT_SLICE: Duration = Duration::from_millis(10);
/// `ENOSPC` on every host stacyvm runs on.
const ENOSPC: i32 = 28;

pub struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    /// The sandbox's disk ledger, shared with the file streams it opened.
    ledger: Arc<DiskLedger>,
    stop: StopCheck,
}

impl Limited for ComponentState {
    fn limits(&mut self) -> &mut StoreLimits {
        &mut self.limits
    }

    fn stop(&self) -> &StopCheck {
        &self.stop
    }
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// Registers WASI 0.2.12 (whose `exit-with-code` lets exit statuses through),
/// then the quota and sleep shadows.
pub fn add_to_linker(linker: &mut Linker<ComponentState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);

    let mut fs_types = linker.instance(FILESYSTEM)?;
    fs_types.func_wrap(
        "[method]descriptor.write-via-stream",
        |mut store: StoreContextMut<'_, ComponentState>, (fd, offset): (Resource<fs::Descriptor>, u64)| {
            let state = store.data_mut();
            let size = size_of(state, &fd);
            let stream = state.filesystem().write_via_stream(fd, offset);
            Ok((wrap_stream(state, stream, Some(offset), size)?,))
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.append-via-stream",
        |mut store: StoreContextMut<'_, ComponentState>, (fd,): (Resource<fs::Descriptor>,)| {
            let state = store.data_mut();
            let size = size_of(state, &fd);
            let stream = state.filesystem().append_via_stream(fd);
            Ok((wrap_stream(state, stream, None, size)?,))
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.write",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, buffer, offset): (Resource<fs::Descriptor>, Vec<u8>, u64)| {
            let state = store.data_mut();
            let growth = offset
                .saturating_add(buffer.len() as u64)
                .saturating_sub(size_of(state, &fd));
            charged(state, growth, 0, |state| state.filesystem().write(fd, buffer, offset))
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.set-size",
        |mut store: StoreContextMut<'_, ComponentState>, (fd, size): (Resource<fs::Descriptor>, u64)| {
            let state = store.data_mut();
            let growth = size.saturating_sub(size_of(state, &fd));
            charged(state, growth, 0, |state| state.filesystem().set_size(fd, size))
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.open-at",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, path_flags, path, open_flags, flags): (
            Resource<fs::Descriptor>,
            fs::PathFlags,
            String,
            fs::OpenFlags,
            fs::DescriptorFlags,
        )| {
            let state = store.data_mut();
            // Creating a file that does not exist yet adds an entry.
            let new_entry = open_flags.contains(fs::OpenFlags::CREATE)
                && matches!(
                    fs_result(state.filesystem().stat_at(borrow(&fd), path_flags, path.clone())),
                    Ok(Err(fs::ErrorCode::NoEntry))
                );
            charged(state, 0, u64::from(new_entry), |state| {
                state.filesystem().open_at(fd, path_flags, path, open_flags, flags)
            })
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.create-directory-at",
        |mut store: StoreContextMut<'_, ComponentState>, (fd, path): (Resource<fs::Descriptor>, String)| {
            charged(store.data_mut(), DIR_BYTES, 1, |state| {
                state.filesystem().create_directory_at(fd, path)
            })
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.symlink-at",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, old_path, new_path): (Resource<fs::Descriptor>, String, String)| {
            let bytes = old_path.len() as u64;
            charged(store.data_mut(), bytes, 1, |state| {
                state.filesystem().symlink_at(fd, old_path, new_path)
            })
        },
    )?;
    fs_types.func_wrap(
        "[method]descriptor.link-at",
        |mut store: StoreContextMut<'_, ComponentState>,
         (fd, old_flags, old_path, new_fd, new_path): (
            Resource<fs::Descriptor>,
            fs::PathFlags,
            String,
            Resource<fs::Descriptor>,
            String,
        )| {
            charged(store.data_mut(), 0, 1, |state| {
                state.filesystem().link_at(fd, old_flags, old_path, new_fd, new_path)
            })
        },
    )?;

    let mut poll = linker.instance(POLL)?;
    poll.func_wrap(
        "poll",
        |mut store: StoreContextMut<'_, ComponentState>, (pollables,): (Vec<Resource<DynPollable>>,)| {
            let reps: Vec<u32> = pollables.iter().map(|p| p.rep()).collect();
            let ready = wait(store.data_mut(), |table| {
                let list = reps.iter().map(|&rep| Resource::new_borrow(rep)).collect();
                Box::pin(async move { table.poll(list).await })
            })?;
            Ok((ready,))
        },
    )?;
    poll.func_wrap(
        "[method]pollable.block",
        |mut store: StoreContextMut<'_, ComponentState>, (pollable,): (Resource<DynPollable>,)| {
            let rep = pollable.rep();
            wait(store.data_mut(), |table| {
                Box::pin(async move { table.block(Resource::new_borrow(rep)).await })
            })?;
            Ok(())
        },
    )?;
    Ok(())
}

type WaitFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = wasmtime::Result<T>> + Send + 'a>>;

/// Runs a blocking WASI wait in slices, so that the exec deadline and a
/// departed client still stop the guest while it waits.
fn wait<T>(
    state: &mut ComponentState,
    mut start: impl for<'a> FnMut(&'a mut ResourceTable) -> WaitFuture<'a, T>,
) -> wasmtime::Result<T> {
    loop {
        if let Some(stop) = state.stop.must_stop() {
            return Err(stop);
        }
        let slice = WAIT_SLICE.min(state.stop.deadline.saturating_duration_since(Instant::now()));
        let attempt = wasmtime_wasi::runtime::in_tokio(tokio::time::timeout(slice, start(&mut state.table)));
        if let Ok(done) = attempt {
            return done;
        }
    }
}

/// Converts a filesystem result the way the generated bindings do: an error
/// code goes to the guest, anything else traps.
fn fs_result<T>(result: wasmtime_wasi::p2::FsResult<T>) -> wasmtime::Result<Result<T, fs::ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(e) => Ok(Err(e.downcast()?.into())),
    }
}

/// Another handle on a borrowed descriptor, for a look before the real call.
fn borrow(fd: &Resource<fs::Descriptor>) -> Resource<fs::Descriptor> {
    Resource::new_borrow(fd.rep())
}

/// The size of the file `fd`, or 0 when it has none (the real call then
/// decides what happens).
fn size_of(state: &mut ComponentState, fd: &Resource<fs::Descriptor>) -> u64 {
    match fs_result(state.filesystem().stat(borrow(fd))) {
        Ok(Ok(stat)) if stat.type_ == fs::DescriptorType::RegularFile => stat.size,
        _ => 0,
    }
}

/// Charges the ledger, runs the real call, and gives the charge back if
/// the call failed. ENOSPC when the charge does not fit.
fn charged<T>(
    state: &mut ComponentState,
    bytes: u64,
    entries: u64,
    f: impl FnOnce(&mut ComponentState) -> wasmtime_wasi::p2::FsResult<T>,
) -> wasmtime::Result<(Result<T, fs::ErrorCode>,)> {
    let ledger = state.ledger.clone();
    if (bytes, entries) != (0, 0) && ledger.charge(bytes, entries).is_err() {
        return Ok((Err(fs::ErrorCode::InsufficientSpace),));
    }
    let result = fs_result(f(state))?;
    if result.is_err() {
        ledger.refund(bytes, entries);
    }
    Ok((result,))
}

/// Replaces a new file stream in the table with one that charges the
/// ledger. `offset` is where it writes, None when it appends; `size` is the
/// file's size now.
fn wrap_stream(
    state: &mut ComponentState,
    stream: wasmtime_wasi::p2::FsResult<Resource<DynOutputStream>>,
    offset: Option<u64>,
    size: u64,
) -> wasmtime::Result<Result<Resource<DynOutputStream>, fs::ErrorCode>> {
    let stream = match fs_result(stream)? {
        Ok(stream) => stream,
        Err(code) => return Ok(Err(code)),
    };
    let slot = state.table.get_mut(&stream)?;
    let inner = std::mem::replace(slot, Box::new(ClosedStream));
    *slot = Box::new(QuotaStream {
        inner,
        ledger: state.ledger.clone(),
        position: offset,
        size,
    });
    Ok(Ok(stream))
}

/// A file's output stream that charges the sandbox's disk ledger the
/// growth each write causes.
struct QuotaStream {
    inner: DynOutputStream,
    ledger: Arc<DiskLedger>,
    /// Where the next write lands; None for an appending stream.
    position: Option<u64>,
    /// The file's size as far as this stream knows: what it had when the
    /// stream opened, grown by the stream's own writes.
    size: u64,
}

#[async_trait::async_trait]
impl Pollable for QuotaStream {
    async fn ready(&mut self) {
        self.inner.ready().await
    }
}

impl QuotaStream {
    fn charge(&mut self, bytes: usize) -> StreamResult<()> {
        let start = self.position.unwrap_or(self.size);
        let end = start.saturating_add(bytes as u64);
        let growth = end.saturating_sub(self.size);
        if self.ledger.charge(growth, 0).is_err() {
            return Err(StreamError::LastOperationFailed(wasmtime::Error::new(
                std::io::Error::from_raw_os_error(ENOSPC),
            )));
        }
        self.size = self.size.max(end);
        if let Some(position) = &mut self.position {
            *position = end;
        }
        Ok(())
    }
}

/// How much one write to a file may carry. wasmtime-wasi offers 64 KiB,
/// which makes a single `os.write` of more than that short; CPython's own
/// `.pyc` writer does not retry short writes.
const FILE_WRITE_PERMIT: usize = 4 << 20;

#[async_trait::async_trait]
impl OutputStream for QuotaStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.write(bytes)
    }

    async fn blocking_write_and_flush(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.charge(bytes.len())?;
        self.inner.blocking_write_and_flush(bytes).await
    }

    fn flush(&mut self) -> StreamResult<()> {
        self.inner.flush()
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // The file stream takes any length once it is ready (non-zero).
        Ok(match self.inner.check_write()? {
            0 => 0,
            n => n.max(FILE_WRITE_PERMIT),
        })
    }

    async fn cancel(&mut self) {
        self.inner.cancel().await
    }
}

/// Stands in for a stream for the instant it is being wrapped.
struct ClosedStream;

#[async_trait::async_trait]
impl Pollable for ClosedStream {
    async fn ready(&mut self) {}
}

impl OutputStream for ClosedStream {
    fn write(&mut self, _: Bytes) -> StreamResult<()> {
        Err(StreamError::Closed)
    }

    fn flush(&mut self) -> StreamResult<()> {
        Err(StreamError::Closed)
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Err(StreamError::Closed)
    }
}

/// Runs one component guest to completion on the current (blocking) thread.
pub fn run(
    runtime: &LoadedRuntime,
    pre: &CommandPre<ComponentState>,
    mut job: GuestJob,
) -> Result<ExecOutput, ProviderError> {
    let mut start = RunStart::new(&runtime.mounts, &mut job)?;
    let state = ComponentState {
        ctx: start.wasi.build(),
        table: ResourceTable::new(),
        limits: StoreLimitsBuilder::new().memory_size(job.memory_bytes).build(),
        ledger: job.ledger.clone(),
        stop: start.stop_check(&job),
    };
    let mut store = new_store(pre.engine(), state, job.fuel)?;
    let mut failed = false;
    let result = pre
        .instantiate(&mut store)
        .and_then(|command| command.wasi_cli_run().call_run(&mut store))
        .map(|status| failed = status.is_err());
    park(store);
    // `run` returning an error is a plain failure, exit status 1.
    let mut output = start.finish(result, &job)?;
    if failed && output.exit_code == 0 {
        output.exit_code = 1;
    }
    Ok(output)
}
