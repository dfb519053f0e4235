//! Where the shell's commands read and write: the exec's own output (capped
//! and streamed), pipe buffers between stages, and redirected files, whose
//! writes are charged to the sandbox's disk ledger.

use std::cell::RefCell;
use std::io::{self, Write};
use std::rc::Rc;

use tokio::sync::mpsc::UnboundedSender;

use crate::provider::wasm::quota::DiskLedger;
use crate::provider::{OutputChunk, StreamKind};

/// Most bytes one pipe between two stages holds. The stages run one after
/// the other, so a pipe is a buffer; this bounds the host memory it takes
/// (64 MiB: far more than a command line's pipeline needs, far less than a
/// server can spare). Bytes past it are dropped and the exec is marked
/// truncated.
pub const PIPE_LIMIT: usize = 64 << 20;

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

/// A buffer between two pipeline stages.
#[derive(Default)]
pub struct PipeBuf {
    pub data: Vec<u8>,
    pub truncated: bool,
}

/// A file opened by a redirection for writing.
pub struct FileOut {
    pub file: cap_std::fs::File,
}

impl FileOut {
    /// Writes at the end of what this redirection wrote so far: each byte
    /// grows the file, so each is charged.
    pub fn write(&mut self, ledger: &DiskLedger, bytes: &[u8]) -> io::Result<()> {
        ledger.charge(bytes.len() as u64, 0).map_err(|_| no_space())?;
        self.file.write_all(bytes)
    }
}

/// Where a command's stdout or stderr goes. Clones share the target, so
/// `2>&1` keeps the order of writes.
#[derive(Clone)]
pub enum Out {
    Exec(StreamKind),
    Pipe(Rc<RefCell<PipeBuf>>),
    File(Rc<RefCell<FileOut>>),
    /// `/dev/null`: everything is dropped.
    Null,
}

/// Where a command's stdin comes from.
#[derive(Clone)]
pub enum In {
    /// The exec's own stdin, consumed by the first command that reads it.
    Exec,
    Bytes(Rc<Vec<u8>>),
    /// A file opened by `<`, read as a stream, never loaded whole.
    File(Rc<std::fs::File>),
}

/// A command's three standard streams.
#[derive(Clone)]
pub struct CmdIo {
    pub stdin: In,
    pub stdout: Out,
    pub stderr: Out,
}

impl CmdIo {
    pub fn get(&self, fd: i32) -> Out {
        if fd == 2 {
            self.stderr.clone()
        } else {
            self.stdout.clone()
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
        _ => {
            let text = e.to_string();
            // std appends " (os error N)"; sh shows the bare reason.
            text.split(" (os error").next().unwrap_or(&text).to_string()
        }
    }
}
