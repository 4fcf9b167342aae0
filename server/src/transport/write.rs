//! The write side of a connection: response frames queued against a byte budget, written by
//! one task, a frame the client does not take in time ending the connection.

use std::sync::Arc;

use bytes::Buf;
use shardcache_proto::frame::Encoded;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// A frame on its way to the writer, with the share of the connection's buffer it holds.
pub(super) type Queued = (Encoded, Option<OwnedSemaphorePermit>);

/// The connection's side of its write queue: frames wait for their share of the buffer.
#[derive(Clone)]
pub(super) struct Sender {
    pub(super) tx: mpsc::Sender<Queued>,
    pub(super) buffer: Arc<Semaphore>,
    pub(super) cap: u64,
}

impl Sender {
    /// Queue a frame once the buffer has room for it (a frame larger than the whole buffer
    /// waits for all of it). `Err` once the writer is gone.
    pub(super) async fn send(&self, frame: Encoded) -> Result<(), ()> {
        let want = (frame.len() as u64).clamp(1, self.cap);
        let permit = self
            .buffer
            .clone()
            .acquire_many_owned(u32::try_from(want).unwrap_or(u32::MAX))
            .await
            .map_err(|_| ())?;
        self.tx.send((frame, Some(permit))).await.map_err(|_| ())
    }
}

/// Write queued frames, header and payload in one vectored write each, flushing when idle. A
/// frame not taken by the client within `timeout` ends the connection.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Queued>,
    timeout: std::time::Duration,
) -> Result<(), String> {
    while let Some((frame, _permit)) = rx.recv().await {
        let len = frame.len();
        let mut buf = frame.head.chain(frame.body);
        match tokio::time::timeout(timeout, wr.write_all_buf(&mut buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Ok(()),
            Err(_) => {
                return Err(format!(
                    "{len} bytes not taken within {}s (write_timeout)",
                    timeout.as_secs()
                ));
            }
        }
        if rx.is_empty() {
            match tokio::time::timeout(timeout, wr.flush()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => return Err("a flush timed out (write_timeout)".into()),
            }
        }
    }
    let _ = tokio::time::timeout(timeout, wr.shutdown()).await;
    Ok(())
}
