//! The write side of a connection: response frames queued against a byte budget, the
//! connection's own and the server's, written by one task, a frame the client does not take in
//! time ending the connection.
//!
//! A read reserves room for its next chunk before it takes the chunk from the read path
//! ([`Sender::reserve`]), so a client that stops reading stops its reads where they are: they
//! hold what is queued for it, at most `connection_buffer` bytes, and the server's connections
//! together at most `response_buffer`.

use std::sync::Arc;

use bytes::Buf;
use shardcache_proto::frame::Encoded;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Frames this small (answers, errors, notices) count against the connection's buffer only:
/// they always get through to a client that reads, whatever other connections hold.
const SMALL_FRAME: u64 = 4096;

/// Room in the write queue: a share of the connection's buffer, and of the server's for data.
pub(super) struct Room {
    _connection: OwnedSemaphorePermit,
    _server: Option<OwnedSemaphorePermit>,
    bytes: u64,
}

/// A frame on its way to the writer, with the room it holds until it is written.
pub(super) type Queued = (Encoded, Option<Room>);

/// Why no room was given.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum NoRoom {
    /// The writer is gone: nothing more reaches this client.
    Closed,
    /// The server's response buffers stayed full for the write timeout.
    Full,
}

/// The connection's side of its write queue: frames wait for their share of the buffers.
#[derive(Clone)]
pub(super) struct Sender {
    pub(super) tx: mpsc::Sender<Queued>,
    pub(super) buffer: Arc<Semaphore>,
    pub(super) cap: u64,
    /// Response bytes of all connections of the server.
    pub(super) server: Arc<Semaphore>,
    pub(super) server_cap: u64,
    /// Longest wait for room in the server's buffers.
    pub(super) wait: std::time::Duration,
}

impl Sender {
    /// Room for a frame of `bytes`, once the connection's buffer has it (a frame larger than the
    /// whole buffer waits for all of it) and, for data, the server's.
    pub(super) async fn reserve(&self, bytes: u64) -> Result<Room, NoRoom> {
        let own = bytes.clamp(1, self.cap);
        let connection = self
            .buffer
            .clone()
            .acquire_many_owned(u32::try_from(own).unwrap_or(u32::MAX))
            .await
            .map_err(|_| NoRoom::Closed)?;
        let server = if bytes > SMALL_FRAME {
            let want = u32::try_from(bytes.min(self.server_cap)).unwrap_or(u32::MAX);
            // Room at once (the usual case) needs no timer.
            match self.server.clone().try_acquire_many_owned(want) {
                Ok(permit) => Some(permit),
                Err(_) => tokio::select! {
                    permit = self.server.clone().acquire_many_owned(want) => {
                        Some(permit.map_err(|_| NoRoom::Closed)?)
                    }
                    _ = tokio::time::sleep(self.wait) => return Err(NoRoom::Full),
                    // The client went away while waiting.
                    _ = self.tx.closed() => return Err(NoRoom::Closed),
                },
            }
        } else {
            None
        };
        Ok(Room {
            _connection: connection,
            _server: server,
            bytes,
        })
    }

    /// Queue a frame in room reserved for it (more is reserved if the frame outgrew it).
    pub(super) async fn send_in(&self, frame: Encoded, room: Room) -> Result<(), NoRoom> {
        let room = if (frame.len() as u64) > room.bytes {
            drop(room);
            self.reserve(frame.len() as u64).await?
        } else {
            room
        };
        self.tx
            .send((frame, Some(room)))
            .await
            .map_err(|_| NoRoom::Closed)
    }

    /// Queue a frame once there is room for it. `Err` once the writer is gone or the server's
    /// buffers stayed full.
    pub(super) async fn send(&self, frame: Encoded) -> Result<(), NoRoom> {
        let room = self.reserve(frame.len() as u64).await?;
        self.send_in(frame, room).await
    }
}

/// Write queued frames, header and payload in one vectored write each, flushing when idle. A
/// frame not taken by the client within `timeout` ends the connection.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Queued>,
    timeout: std::time::Duration,
) -> Result<(), String> {
    while let Some((frame, _room)) = rx.recv().await {
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
