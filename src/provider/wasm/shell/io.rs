//! Where the shell's commands read and write: the exec's own output (capped
//! and streamed), pipes between commands that run at the same time,
//! redirected files (whose writes are charged to the sandbox's disk
//! ledger), command-substitution captures, and shared input sources that
//! `read` consumes a line at a time and guests read as a stream.
//!
//! Every wait (a full pipe, an empty one, a slow client) is cut into short
//! slices that check the exec's deadline and whether its client is gone.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use crate::provider::wasm::guest::StopCheck;
use crate::provider::wasm::quota::DiskLedger;
use crate::provider::{OutputChunk, StreamKind};

/// Bytes a pipe holds before its writer waits, as a kernel pipe does.
pub const PIPE_CAPACITY: usize = 64 << 10;

/// The longest a wait goes without checking the deadline and the client.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Locks a mutex whose data stays consistent after a panic.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One of the exec's output streams: the first `limit` bytes are kept, and
/// sent to the client as they come when the exec streams.
pub struct Sink {
    pub buf: Vec<u8>,
    pub truncated: bool,
    limit: usize,
    tee: Option<(UnboundedSender<OutputChunk>, StreamKind)>,
}

impl Sink {
    pub fn new(limit: usize, tee: Option<UnboundedSender<OutputChunk>>, stream: StreamKind) -> Sink {
        Sink {
            buf: vec![],
            truncated: false,
            limit,
            tee: tee.map(|tx| (tx, stream)),
        }
    }

    pub fn room(&self) -> usize {
        self.limit - self.buf.len()
    }

    pub fn push(&mut self, bytes: &[u8]) {
        let kept = self.keep(bytes);
        if let Some((tx, stream)) = &self.tee
            && !kept.is_empty()
        {
            tx.send(OutputChunk {
                stream: *stream,
                data: kept.to_vec(),
            })
            .ok();
        }
    }

    /// Takes bytes a guest already sent to the client itself.
    pub fn absorb_streamed(&mut self, bytes: &[u8]) {
        self.keep(bytes);
    }

    fn keep<'a>(&mut self, bytes: &'a [u8]) -> &'a [u8] {
        let room = self.room();
        let kept = if bytes.len() > room {
            self.truncated = true;
            &bytes[..room]
        } else {
            bytes
        };
        self.buf.extend_from_slice(kept);
        kept
    }
}

/// A bounded buffer between a writer and a reader that run at the same
/// time, on different threads.
struct PipeState {
    buf: VecDeque<u8>,
    writers: usize,
    reader: bool,
}

struct PipeShared {
    state: Mutex<PipeState>,
    changed: Condvar,
}

/// The writing end of a pipe. Clones are more writers; the reader sees the
/// end when the last one is dropped.
pub struct PipeWriter(Arc<PipeShared>);

/// The reading end of a pipe; dropping it makes writes fail with EPIPE.
pub struct PipeReader(Arc<PipeShared>);

pub fn pipe() -> (PipeWriter, PipeReader) {
    let shared = Arc::new(PipeShared {
        state: Mutex::new(PipeState {
            buf: VecDeque::new(),
            writers: 1,
            reader: true,
        }),
        changed: Condvar::new(),
    });
    (PipeWriter(shared.clone()), PipeReader(shared))
}

fn stopped() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the exec was stopped")
}

impl Clone for PipeWriter {
    fn clone(&self) -> Self {
        lock(&self.0.state).writers += 1;
        PipeWriter(self.0.clone())
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        lock(&self.0.state).writers -= 1;
        self.0.changed.notify_all();
    }
}

impl Drop for PipeReader {
    fn drop(&mut self) {
        let mut state = lock(&self.0.state);
        state.reader = false;
        state.buf.clear();
        drop(state);
        self.0.changed.notify_all();
    }
}

impl PipeWriter {
    /// Writes everything, waiting while the pipe is full; EPIPE once the
    /// reader is gone, and an error when the exec must stop.
    pub fn write_all(&self, mut bytes: &[u8], stop: &StopCheck) -> io::Result<()> {
        let mut state = lock(&self.0.state);
        while !bytes.is_empty() {
            if !state.reader {
                // EPIPE, with its number: WASI passes it on as such.
                return Err(io::Error::from_raw_os_error(32));
            }
            let room = PIPE_CAPACITY.saturating_sub(state.buf.len());
            if room == 0 {
                if stop.must_stop().is_some() {
                    return Err(stopped());
                }
                state = self
                    .0
                    .changed
                    .wait_timeout(state, WAIT_SLICE)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                continue;
            }
            let n = room.min(bytes.len());
            state.buf.extend(&bytes[..n]);
            bytes = &bytes[n..];
            self.0.changed.notify_all();
        }
        Ok(())
    }
}

impl PipeReader {
    /// Reads what is there, waiting while the pipe is empty; 0 at its end.
    pub fn read(&self, out: &mut [u8], stop: &StopCheck) -> io::Result<usize> {
        let mut state = lock(&self.0.state);
        loop {
            if !state.buf.is_empty() {
                let n = out.len().min(state.buf.len());
                for (dst, src) in out.iter_mut().zip(state.buf.drain(..n)) {
                    *dst = src;
                }
                self.0.changed.notify_all();
                return Ok(n);
            }
            if state.writers == 0 || out.is_empty() {
                return Ok(0);
            }
            if stop.must_stop().is_some() {
                return Err(stopped());
            }
            state = self
                .0
                .changed
                .wait_timeout(state, WAIT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Where an input comes from.
pub enum Source {
    Empty,
    Bytes(Vec<u8>, usize),
    File(std::fs::File),
    Pipe(PipeReader),
}

/// An input shared by every command that reads it, in turn: what one
/// reads, the next does not see.
pub struct Input {
    /// Read ahead by `read`, not consumed yet.
    pending: VecDeque<u8>,
    source: Source,
}

pub type SharedInput = Arc<Mutex<Input>>;

pub fn input(source: Source) -> SharedInput {
    Arc::new(Mutex::new(Input {
        pending: VecDeque::new(),
        source,
    }))
}

/// The most one read asks of a source.
const READ_CHUNK: usize = 64 << 10;

impl Input {
    /// What the input is read from.
    pub fn source_kind(&self) -> super::exec::SourceKind {
        match self.source {
            Source::Pipe(_) => super::exec::SourceKind::Pipe,
            _ => super::exec::SourceKind::Other,
        }
    }

    /// Reads some bytes; 0 at the end.
    pub fn read(&mut self, out: &mut [u8], stop: &StopCheck) -> io::Result<usize> {
        if !self.pending.is_empty() {
            let n = out.len().min(self.pending.len());
            for (dst, src) in out.iter_mut().zip(self.pending.drain(..n)) {
                *dst = src;
            }
            return Ok(n);
        }
        match &mut self.source {
            Source::Empty => Ok(0),
            Source::Bytes(data, pos) => {
                let n = out.len().min(data.len() - *pos);
                out[..n].copy_from_slice(&data[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
            Source::File(file) => file.read(out),
            Source::Pipe(reader) => reader.read(out, stop),
        }
    }

    /// Reads one line for `read`: up to and without the newline, at most
    /// `limit` bytes. None at the end with nothing read.
    pub fn read_line(&mut self, limit: usize, stop: &StopCheck) -> io::Result<Option<Vec<u8>>> {
        let mut line = vec![];
        loop {
            if let Some(at) = self.pending.iter().position(|b| *b == b'\n') {
                line.extend(self.pending.drain(..at));
                self.pending.pop_front();
                return Ok(Some(line));
            }
            line.extend(self.pending.drain(..));
            if line.len() > limit {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "the line is too long"));
            }
            let mut chunk = vec![0; READ_CHUNK];
            let n = self.read_source(&mut chunk, stop)?;
            if n == 0 {
                return Ok(if line.is_empty() { None } else { Some(line) });
            }
            self.pending.extend(&chunk[..n]);
        }
    }

    fn read_source(&mut self, out: &mut [u8], stop: &StopCheck) -> io::Result<usize> {
        let pending = std::mem::take(&mut self.pending);
        let n = self.read(out, stop);
        self.pending = pending;
        n
    }
}

/// A shared input as a guest's stdin. It reads only when the guest reads,
/// and only what the guest asks for, so that a command that never reads
/// its stdin (`echo` in `while read l; do echo $l; done`) takes nothing
/// from the next one.
#[derive(Clone)]
pub struct GuestStdin {
    pub input: SharedInput,
    pub stop: StopCheck,
}

impl GuestStdin {
    fn read_now(&self, size: usize) -> io::Result<Vec<u8>> {
        let mut chunk = vec![0; size.min(READ_CHUNK)];
        let n = lock(&self.input).read(&mut chunk, &self.stop)?;
        chunk.truncate(n);
        Ok(chunk)
    }
}

#[async_trait::async_trait]
impl wasmtime_wasi::p2::Pollable for GuestStdin {
    async fn ready(&mut self) {}
}

impl wasmtime_wasi::p2::InputStream for GuestStdin {
    fn read(&mut self, size: usize) -> wasmtime_wasi::p2::StreamResult<bytes::Bytes> {
        use wasmtime_wasi::p2::StreamError;
        if size == 0 {
            return Ok(bytes::Bytes::new());
        }
        match self.read_now(size) {
            Ok(data) if data.is_empty() => Err(StreamError::Closed),
            Ok(data) => Ok(bytes::Bytes::from(data)),
            Err(e) => Err(StreamError::LastOperationFailed(wasmtime::Error::new(e))),
        }
    }
}

impl tokio::io::AsyncRead for GuestStdin {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        // The guest's thread runs nothing else: waiting here is waiting
        // for the guest.
        let data = self.read_now(buf.remaining())?;
        buf.put_slice(&data);
        std::task::Poll::Ready(Ok(()))
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestStdin {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdinStream for GuestStdin {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncRead + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::InputStream> {
        Box::new(self.clone())
    }
}

/// Turns the exec's live stdin into a pipe the shell's commands read in
/// turn: a blocking thread copies it until it ends, the pipe's reader is
/// gone, the exec must stop, or `done` is cancelled (the script ended).
/// The thread holds no output channel, so it never keeps the exec's
/// output open once the script is over.
pub fn pump(
    mut stream: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    stop: &StopCheck,
    done: tokio_util::sync::CancellationToken,
) -> SharedInput {
    let (writer, reader) = pipe();
    let stop = StopCheck {
        output: None,
        ..stop.clone()
    };
    let handle = tokio::runtime::Handle::current();
    handle.clone().spawn_blocking(move || {
        let mut buf = vec![0; READ_CHUNK];
        loop {
            let deadline = tokio::time::Instant::from_std(stop.deadline);
            let (cancel, done) = (stop.cancel.clone(), done.clone());
            let read = handle.block_on(async {
                tokio::select! {
                    r = tokio::io::AsyncReadExt::read(&mut stream, &mut buf) => r.ok(),
                    _ = tokio::time::sleep_until(deadline) => None,
                    _ = cancel.cancelled() => None,
                    _ = done.cancelled() => None,
                }
            });
            match read {
                Some(n) if n > 0 => {
                    if writer.write_all(&buf[..n], &stop).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
    });
    input(Source::Pipe(reader))
}

/// A file opened by a redirection for writing.
pub struct FileOut {
    pub file: std::fs::File,
}

impl FileOut {
    /// Writes at the end of what this redirection wrote so far: each byte
    /// grows the file, so each is charged.
    pub fn write(&mut self, ledger: &DiskLedger, bytes: &[u8]) -> io::Result<()> {
        ledger.charge(bytes.len() as u64, 0).map_err(|_| no_space())?;
        self.file.write_all(bytes)
    }
}

/// What a command substitution captured.
#[derive(Default)]
pub struct Capture {
    pub data: Vec<u8>,
    pub overflowed: bool,
}

/// Where a command's output goes. Clones share the target, so `2>&1`
/// keeps the order of writes.
#[derive(Clone)]
pub enum Out {
    Exec(StreamKind),
    Pipe(Arc<PipeWriter>),
    File(Arc<Mutex<FileOut>>),
    Capture(Arc<Mutex<Capture>>),
    /// `/dev/null`: everything is dropped.
    Null,
    /// `>&-`: writes fail.
    Closed,
}

/// A command's standard input and its output descriptors 1 to 9.
#[derive(Clone)]
pub struct CmdIo {
    pub stdin: SharedInput,
    pub outs: [Out; 9],
}

impl CmdIo {
    pub fn new(stdin: SharedInput, stdout: Out, stderr: Out) -> CmdIo {
        let mut outs: [Out; 9] = std::array::from_fn(|_| Out::Closed);
        outs[0] = stdout;
        outs[1] = stderr;
        CmdIo { stdin, outs }
    }

    pub fn stdout(&self) -> &Out {
        &self.outs[0]
    }

    pub fn stderr(&self) -> &Out {
        &self.outs[1]
    }

    /// The output descriptor `fd` (1 to 9).
    pub fn out(&self, fd: i32) -> Option<&Out> {
        usize::try_from(fd - 1).ok().and_then(|i| self.outs.get(i))
    }

    pub fn set_out(&mut self, fd: i32, out: Out) {
        if let Some(slot) = usize::try_from(fd - 1).ok().and_then(|i| self.outs.get_mut(i)) {
            *slot = out;
        }
    }
}

pub fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "No space left on device")
}

/// An I/O error as sh and coreutils word it.
pub fn errno_text(e: &io::Error) -> String {
    if e.to_string().contains("outside of the filesystem") {
        return "Permission denied".into();
    }
    match e.kind() {
        io::ErrorKind::NotFound => "No such file or directory".into(),
        io::ErrorKind::PermissionDenied => "Permission denied".into(),
        io::ErrorKind::AlreadyExists => "File exists".into(),
        io::ErrorKind::IsADirectory => "Is a directory".into(),
        io::ErrorKind::NotADirectory => "Not a directory".into(),
        io::ErrorKind::DirectoryNotEmpty => "Directory not empty".into(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => "No space left on device".into(),
        io::ErrorKind::InvalidInput => "Invalid argument".into(),
        io::ErrorKind::BrokenPipe => "Broken pipe".into(),
        _ => {
            let text = e.to_string();
            // std appends " (os error N)"; sh shows the bare reason.
            text.split(" (os error").next().unwrap_or(&text).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_stop() -> StopCheck {
        StopCheck {
            deadline: std::time::Instant::now() + Duration::from_secs(60),
            output: None,
            cancel: Default::default(),
        }
    }

    #[test]
    fn a_pipe_streams_between_threads_and_ends_when_its_writers_do() {
        let (writer, reader) = pipe();
        let producer = std::thread::spawn(move || {
            let stop = no_stop();
            for _ in 0..100 {
                writer.write_all(&[b'x'; 10_000], &stop).unwrap();
            }
        });
        let stop = no_stop();
        let (mut total, mut buf) = (0, [0u8; 4096]);
        loop {
            let n = reader.read(&mut buf, &stop).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        producer.join().unwrap();
        assert_eq!(total, 1_000_000);
    }

    #[test]
    fn a_writer_whose_reader_left_gets_epipe_and_a_stopped_exec_ends_the_wait() {
        let (writer, reader) = pipe();
        drop(reader);
        let err = writer.write_all(b"x", &no_stop()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        let (writer, _reader) = pipe();
        let past = StopCheck {
            deadline: std::time::Instant::now(),
            output: None,
            cancel: Default::default(),
        };
        let err = writer.write_all(&vec![0; PIPE_CAPACITY + 1], &past).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn read_takes_one_line_and_leaves_the_rest_to_the_next_reader() {
        let shared = input(Source::Bytes(b"one\ntwo\nthree".to_vec(), 0));
        let stop = no_stop();
        let mut i = lock(&shared);
        assert_eq!(i.read_line(100, &stop).unwrap(), Some(b"one".to_vec()));
        let mut rest = [0u8; 64];
        let n = i.read(&mut rest, &stop).unwrap();
        assert_eq!(&rest[..n], b"two\nthree");
        assert_eq!(i.read_line(100, &stop).unwrap(), None);
    }
}
