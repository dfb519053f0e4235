//! Where the shell's commands read and write: the exec's own output (capped
//! and streamed), pipe buffers between stages, and redirected files charged
//! against the sandbox's disk quota.

use std::cell::RefCell;
use std::io::{self, Write};
use std::path::PathBuf;
use std::rc::Rc;

use tokio::sync::mpsc::UnboundedSender;

use crate::provider::wasm::files;
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

/// A file opened by a redirection.
pub struct FileOut {
    pub file: cap_std::fs::File,
}

/// Where a command's stdout or stderr goes. Clones share the target, so
/// `2>&1` keeps the order of writes.
#[derive(Clone)]
pub enum Out {
    Exec(StreamKind),
    Pipe(Rc<RefCell<PipeBuf>>),
    File(Rc<RefCell<FileOut>>),
}

/// Where a command's stdin comes from.
#[derive(Clone)]
pub enum In {
    /// The exec's own stdin, consumed by the first command that reads it.
    Exec,
    Bytes(Rc<Vec<u8>>),
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

/// The sandbox's disk quota as seen by the shell: the room left is measured
/// once and then charged for every byte written, as guests are charged;
/// anything that may free or use space outside this count (a guest run, a
/// removal) forgets the measure.
pub struct Disk {
    dir: PathBuf,
    quota: u64,
    remaining: Option<u64>,
}

impl Disk {
    pub fn new(dir: PathBuf, quota: u64) -> Disk {
        Disk {
            dir,
            quota,
            remaining: None,
        }
    }

    pub fn remaining(&mut self) -> u64 {
        *self
            .remaining
            .get_or_insert_with(|| self.quota.saturating_sub(files::disk_usage(&self.dir)))
    }

    /// Charges `bytes`, or refuses them all with ENOSPC.
    pub fn charge(&mut self, bytes: u64) -> io::Result<()> {
        let remaining = self.remaining();
        if bytes > remaining {
            return Err(no_space());
        }
        self.remaining = Some(remaining - bytes);
        Ok(())
    }

    pub fn forget(&mut self) {
        self.remaining = None;
    }
}

pub fn no_space() -> io::Error {
    io::Error::new(io::ErrorKind::StorageFull, "No space left on device")
}

impl FileOut {
    pub fn write(&mut self, disk: &mut Disk, bytes: &[u8]) -> io::Result<()> {
        disk.charge(bytes.len() as u64)?;
        self.file.write_all(bytes)
    }
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
