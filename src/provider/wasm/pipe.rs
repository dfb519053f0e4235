//! Guest output: a capture keeps the first `limit` bytes of a stream, drops
//! the rest and remembers that it did, and never blocks the guest (it fails
//! its writes once full only when asked to, as a pipe whose reader left);
//! a file sink writes straight to a redirected file, charging the disk
//! ledger for each byte.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::io::Write;

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::quota::DiskLedger;
use crate::provider::{OutputChunk, StreamKind};

/// How much the guest may hand us per write; the cap itself is enforced by
/// dropping bytes, not by refusing writes, so output past it costs nothing.
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct CapturePipe {
    inner: Arc<Mutex<Captured>>,
    limit: usize,
    /// Fail writes once the capture is full, instead of dropping them.
    close_when_full: bool,
    /// Keep nothing and flag nothing: `/dev/null`.
    discard: bool,
    /// Where kept bytes are also sent as they arrive, for streaming.
    tee: Option<(UnboundedSender<OutputChunk>, StreamKind)>,
}

#[derive(Default)]
struct Captured {
    buf: Vec<u8>,
    truncated: bool,
}

impl CapturePipe {
    pub fn new(limit: usize) -> Self {
        CapturePipe {
            inner: Arc::default(),
            limit,
            close_when_full: false,
            discard: false,
            tee: None,
        }
    }

    /// A stream whose output goes nowhere, as to `/dev/null`.
    pub fn discard() -> Self {
        CapturePipe {
            discard: true,
            ..CapturePipe::new(0)
        }
    }

    /// Once full, the guest's writes fail (EPIPE), and its output stops.
    pub fn close_when_full(mut self, close: bool) -> Self {
        self.close_when_full = close;
        self
    }

    fn room(&self) -> usize {
        let c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        self.limit - c.buf.len()
    }

    /// EPIPE: the writer is told, so nothing is lost silently.
    fn broken_pipe() -> StreamError {
        StreamError::LastOperationFailed(wasmtime::Error::new(std::io::Error::from_raw_os_error(EPIPE)))
    }

    /// Also sends every kept byte to `tx` as it arrives.
    pub fn tee(mut self, tx: Option<UnboundedSender<OutputChunk>>, stream: StreamKind) -> Self {
        self.tee = tx.map(|tx| (tx, stream));
        self
    }

    fn push(&self, bytes: &[u8]) {
        if self.discard {
            return;
        }
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.limit - c.buf.len();
        let kept = if bytes.len() > room {
            c.truncated = true;
            &bytes[..room]
        } else {
            bytes
        };
        c.buf.extend_from_slice(kept);
        if let Some((tx, stream)) = &self.tee
            && !kept.is_empty()
        {
            // A closed receiver is noticed by the deadline check, which
            // stops the guest.
            tx.send(OutputChunk {
                stream: *stream,
                data: kept.to_vec(),
            })
            .ok();
        }
    }

    /// The captured bytes and whether any were dropped.
    pub fn take(&self) -> (Vec<u8>, bool) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        (std::mem::take(&mut c.buf), c.truncated)
    }
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.close_when_full && self.room() == 0 {
            return Err(Self::broken_pipe());
        }
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        if !self.close_when_full {
            return Ok(WRITE_PERMIT);
        }
        // Never more than fits, so that no byte is dropped.
        match self.room() {
            0 => Err(Self::broken_pipe()),
            room => Ok(room.min(WRITE_PERMIT)),
        }
    }
}

#[async_trait::async_trait]
impl Pollable for CapturePipe {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for CapturePipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CapturePipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturePipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// A guest's stdout or stderr redirected to a file: writes go to the file
/// as they come, each byte charged to the sandbox's disk ledger first; a
/// write that does not fit fails with ENOSPC.
#[derive(Clone)]
pub struct FileSink {
    file: Arc<Mutex<std::fs::File>>,
    ledger: Arc<DiskLedger>,
}

impl FileSink {
    pub fn new(file: std::fs::File, ledger: Arc<DiskLedger>) -> Self {
        FileSink {
            file: Arc::new(Mutex::new(file)),
            ledger,
        }
    }

    fn write_all(&self, bytes: &[u8]) -> std::io::Result<()> {
        self.ledger
            .charge(bytes.len() as u64, 0)
            .map_err(|_| std::io::Error::from_raw_os_error(ENOSPC))?;
        self.file.lock().unwrap_or_else(|e| e.into_inner()).write_all(bytes)
    }
}

/// `ENOSPC` and `EPIPE` on every host stacyvm runs on.
const ENOSPC: i32 = 28;
const EPIPE: i32 = 32;

impl OutputStream for FileSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_all(&bytes)
            .map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::new(e)))
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for FileSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for FileSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.write_all(buf).map(|()| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for FileSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for FileSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

/// A guest's output handed to a function as it comes: a pipe to another
/// command that runs at the same time. A write may wait (the pipe is full)
/// and fails when the reader is gone (EPIPE) or the exec must stop.
#[derive(Clone)]
pub struct WriterSink(pub Arc<dyn Fn(&[u8]) -> std::io::Result<()> + Send + Sync>);

impl OutputStream for WriterSink {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        (self.0)(&bytes).map_err(|e| StreamError::LastOperationFailed(wasmtime::Error::new(e)))
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait::async_trait]
impl Pollable for WriterSink {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for WriterSink {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Poll::Ready((self.0)(buf).map(|()| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for WriterSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for WriterSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_limit_is_dropped_and_flagged() {
        let mut p = CapturePipe::new(5);
        p.write(Bytes::from_static(b"abc")).unwrap();
        assert_eq!(p.take(), (b"abc".to_vec(), false));
        p.write(Bytes::from_static(b"defgh")).unwrap();
        p.write(Bytes::from_static(b"ij")).unwrap();
        let (buf, truncated) = p.take();
        assert_eq!(buf, b"defgh");
        assert!(truncated);
    }
}
