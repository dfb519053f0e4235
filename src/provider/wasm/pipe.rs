//! Guest output capture: keeps the first `limit` bytes of a stream, drops
//! the rest and remembers that it did, and never blocks or fails the guest.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc::UnboundedSender;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use crate::provider::{OutputChunk, StreamKind};

/// How much the guest may hand us per write; the cap itself is enforced by
/// dropping bytes, not by refusing writes, so output past it costs nothing.
const WRITE_PERMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct CapturePipe {
    inner: Arc<Mutex<Captured>>,
    limit: usize,
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
            tee: None,
        }
    }

    /// Also sends every kept byte to `tx` as it arrives.
    pub fn tee(mut self, tx: Option<UnboundedSender<OutputChunk>>, stream: StreamKind) -> Self {
        self.tee = tx.map(|tx| (tx, stream));
        self
    }

    fn push(&self, bytes: &[u8]) {
        let mut c = self.inner.lock().unwrap();
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
        let mut c = self.inner.lock().unwrap();
        (std::mem::take(&mut c.buf), c.truncated)
    }
}

impl OutputStream for CapturePipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
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
