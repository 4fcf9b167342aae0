//! The local path (`--local-socket PATH`): a Unix socket for requests, shared memory for bytes.
//!
//! A co-located client (the trainer's data loader next to its sidecar) connects, and its first
//! message is a `Register { size }` frame carrying a sealed memfd (SCM_RIGHTS). The server maps
//! it ([`super::shm::Region`]) and answers `Registered`. From then on the connection speaks the
//! ordinary frame protocol, plus `ReadInto`: the server copies each block from its cache straight
//! into the region at the offset the client named and answers with a small `Placed` notice (with
//! the block's CRC32C). No data bytes cross the socket.
//!
//! Bounds: at most `local_max_clients` connections (each maps one region) and regions of at most
//! `local_max_region` bytes. The region is unmapped when the connection ends, however it ends.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::BytesMut;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use shardcache_proto::frame::{HEADER_LEN, MAX_REQUEST_PAYLOAD, decode, encode};
use shardcache_proto::{ErrorCode, Frame, Framed, Registered};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::shm::Region;
use super::{Draining, Serving, refuse, serve_connection};
use crate::access::Access;
use crate::peer::Caller;

/// How long a new connection may take to register its region.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Limits of the local path.
#[derive(Debug, Clone, Copy)]
pub struct LocalLimits {
    pub max_region: u64,
}

/// Accept local clients until the task is dropped.
pub async fn accept_loop(
    listener: UnixListener,
    serving: Serving,
    local: LocalLimits,
    max_clients: Arc<Semaphore>,
    draining: Draining,
    conns: &mut JoinSet<()>,
) {
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "local accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let stats = serving.metrics.clone();
        let Ok(permit) = max_clients.clone().try_acquire_owned() else {
            stats.rejected_connections.inc();
            let msg = "server at local_max_clients; retry later".to_string();
            conns.spawn(refuse(stream, ErrorCode::Busy, msg));
            continue;
        };
        let serving = serving.clone();
        let draining = draining.clone();
        conns.spawn(async move {
            stats.open_connections.inc();
            serve_local(stream, serving, local, draining).await;
            stats.open_connections.dec();
            drop(permit);
        });
    }
}

async fn serve_local(
    mut stream: UnixStream,
    serving: Serving,
    local: LocalLimits,
    draining: Draining,
) {
    let peer = "local".to_string();
    let registered = tokio::time::timeout(HANDSHAKE_TIMEOUT, register(&stream, local)).await;
    let region = match registered {
        Ok(Ok(region)) => region,
        Ok(Err(reason)) => {
            tracing::info!(%peer, reason, "local client refused");
            refuse(stream, ErrorCode::BadRequest, reason).await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "local client did not register a region in time");
            return;
        }
    };
    let ok = Frame::Registered(Registered {
        size: region.len(),
        max_region: local.max_region,
    });
    if stream
        .write_all(
            &encode(&Framed {
                request_id: 0,
                frame: ok,
            })
            .to_vec(),
        )
        .await
        .is_err()
    {
        return;
    }
    let (rd, wr) = stream.into_split();
    let access = Access::new(&serving.policy);
    serve_connection(
        rd,
        wr,
        serving,
        Caller {
            name: peer,
            ip: None,
            authenticated: false,
        },
        access,
        draining,
        Some(Arc::new(region)),
    )
    .await;
}

/// Read the `Register` frame and the memfd that comes with it, and map the region.
async fn register(stream: &UnixStream, local: LocalLimits) -> Result<Region, String> {
    let want = HEADER_LEN + 8;
    let mut got = BytesMut::with_capacity(want);
    let mut fd: Option<OwnedFd> = None;
    while got.len() < want {
        let mut buf = [0u8; 64];
        let (n, fds) = stream
            .async_io(Interest::READABLE, || {
                recv_with_fds(stream, &mut buf[..want - got.len()])
            })
            .await
            .map_err(|e| format!("handshake read failed: {e}"))?;
        if n == 0 {
            return Err("closed before registering a region".into());
        }
        got.extend_from_slice(&buf[..n]);
        for f in fds {
            if fd.is_some() {
                return Err("more than one file descriptor sent".into());
            }
            fd = Some(f);
        }
    }
    let size = match decode(&mut got, MAX_REQUEST_PAYLOAD) {
        Ok(Framed {
            frame: Frame::Register(r),
            ..
        }) => r.size,
        Ok(_) => return Err("the first frame on the local socket must be register".into()),
        Err(e) => return Err(format!("malformed register frame: {e}")),
    };
    let fd = fd.ok_or("register frame came without a memfd (SCM_RIGHTS)")?;
    Region::map(fd, size, local.max_region)
}

/// One `recvmsg`, returning the bytes read and any file descriptors that came with them.
fn recv_with_fds(stream: &UnixStream, buf: &mut [u8]) -> std::io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    Ok((msg.bytes, fds))
}
