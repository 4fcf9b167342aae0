//! [`ObjectReader`]: a seekable reader over one object version, with readahead.
//!
//! Reads are split at block boundaries; up to `readahead` block-sized requests run ahead of the
//! reading position as spawned tasks, so a sequential reader finds the next bytes already here.
//! Every request carries the ETag pinned at open time: if the object changes underneath, the
//! reader fails with `PreconditionFailed` rather than mixing versions.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use shardcache_proto::ObjectInfo;
use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::error::{ClientError, Result};

/// Largest request an `ObjectReader` sends, whatever the server's block size.
const MAX_WINDOW: u64 = 16 << 20;

pub struct ObjectReader {
    client: Client,
    path: String,
    info: ObjectInfo,
    /// Position of the next byte `poll_read` returns.
    pos: u64,
    /// Bytes at `pos`, already received.
    current: Bytes,
    /// Fetches in flight, in offset order, contiguous from `pos + current.len()`.
    inflight: VecDeque<(u64, JoinHandle<Result<Bytes>>)>,
    /// Offset the next fetch starts at.
    next_fetch: u64,
    /// Target of a seek started but not completed.
    seek_to: Option<u64>,
}

impl Client {
    /// A reader over the whole object, pinned to its current version, that fetches the next
    /// blocks ahead of the reading position.
    pub async fn open(&self, path: &str) -> Result<ObjectReader> {
        let info = self.stat(path).await?;
        Ok(ObjectReader::new(self.clone(), path.to_string(), info))
    }
}

impl ObjectReader {
    fn new(client: Client, path: String, info: ObjectInfo) -> ObjectReader {
        ObjectReader {
            client,
            path,
            info,
            pos: 0,
            current: Bytes::new(),
            inflight: VecDeque::new(),
            next_fetch: 0,
            seek_to: None,
        }
    }

    /// The version this reader is pinned to.
    pub fn info(&self) -> &ObjectInfo {
        &self.info
    }

    pub fn position(&self) -> u64 {
        self.pos
    }

    fn window(&self) -> u64 {
        u64::from(self.info.block_size).clamp(64 * 1024, MAX_WINDOW)
    }

    /// Start fetches until `readahead` are in flight or the object's end is reached.
    fn fill_pipeline(&mut self) {
        let depth = self.client.options().readahead.max(1);
        while self.inflight.len() < depth && self.next_fetch < self.info.size {
            let window = self.window();
            let offset = self.next_fetch;
            // Align to block boundaries so each request maps onto whole cached blocks.
            let end = ((offset / window + 1) * window).min(self.info.size);
            let client = self.client.clone();
            let path = self.path.clone();
            let etag = self.info.etag.clone();
            let pin = (!etag.is_empty()).then_some(etag);
            let task = tokio::spawn(async move {
                client
                    .read_pinned(&path, offset, Some(end - offset), pin)
                    .await
                    .map(|(_, bytes)| bytes)
            });
            self.inflight.push_back((offset, task));
            self.next_fetch = end;
        }
    }

    fn reset_pipeline(&mut self, pos: u64) {
        for (_, task) in self.inflight.drain(..) {
            task.abort();
        }
        self.current = Bytes::new();
        self.pos = pos;
        self.next_fetch = pos;
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        for (_, task) in self.inflight.drain(..) {
            task.abort();
        }
    }
}

fn to_io(e: ClientError) -> io::Error {
    let kind = match &e {
        e if e.is_not_found() => io::ErrorKind::NotFound,
        ClientError::Timeout { .. } => io::ErrorKind::TimedOut,
        ClientError::ConnectionLost { .. } => io::ErrorKind::ConnectionAborted,
        ClientError::Checksum { .. } | ClientError::Protocol { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current[..n]);
                this.current.advance(n);
                this.pos += n as u64;
                this.fill_pipeline();
                return Poll::Ready(Ok(()));
            }
            if this.pos >= this.info.size || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            this.fill_pipeline();
            let Some((_, task)) = this.inflight.front_mut() else {
                return Poll::Ready(Ok(()));
            };
            let result = ready!(Pin::new(task).poll(cx));
            this.inflight.pop_front();
            match result {
                Ok(Ok(bytes)) => {
                    if bytes.is_empty() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} ended early at {}", this.path, this.pos),
                        )));
                    }
                    this.current = bytes;
                }
                Ok(Err(e)) => {
                    let pos = this.pos;
                    this.reset_pipeline(pos);
                    return Poll::Ready(Err(to_io(e)));
                }
                Err(join) => {
                    return Poll::Ready(Err(io::Error::other(format!("read task failed: {join}"))));
                }
            }
        }
    }
}

impl AsyncSeek for ObjectReader {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.info.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let Some(target) = target else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start",
            ));
        };
        self.seek_to = Some(target);
        Ok(())
    }

    fn poll_complete(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        if let Some(target) = self.seek_to.take() {
            let buffered_end = self.pos + self.current.len() as u64;
            if target >= self.pos && target <= buffered_end {
                // Inside what is already here: keep the pipeline.
                let skip = (target - self.pos) as usize;
                self.current.advance(skip);
                self.pos = target;
            } else if target != self.pos {
                self.reset_pipeline(target);
            }
        }
        Poll::Ready(Ok(self.pos))
    }
}
