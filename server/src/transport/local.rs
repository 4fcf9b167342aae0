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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::shm::Region;
use super::{Draining, Serving, refuse, serve_connection};
use crate::peer::Caller;

/// How long a new connection may take to register its region.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Limits of the local path.
#[derive(Debug, Clone)]
pub struct LocalLimits {
    pub max_region: u64,
    /// Bytes of all regions together, as permits of [`REGION_UNIT`] bytes: the server's writes
    /// into client memory are charged to the server's memory.
    pub regions: Arc<Semaphore>,
    pub regions_budget: u64,
    /// Uids allowed to connect (SO_PEERCRED); any when empty.
    pub allowed_uids: Arc<Vec<u32>>,
}

/// The unit of the region budget.
pub const REGION_UNIT: u64 = 4096;

impl LocalLimits {
    pub fn new(max_region: u64, regions_budget: u64, allowed_uids: Vec<u32>) -> LocalLimits {
        let units = (regions_budget / REGION_UNIT).min(Semaphore::MAX_PERMITS as u64) as usize;
        LocalLimits {
            max_region,
            regions: Arc::new(Semaphore::new(units)),
            regions_budget,
            allowed_uids: Arc::new(allowed_uids),
        }
    }
}

/// Why a local client was turned away.
struct Refusal {
    code: ErrorCode,
    reason: String,
}

impl From<String> for Refusal {
    fn from(reason: String) -> Refusal {
        Refusal {
            code: ErrorCode::BadRequest,
            reason,
        }
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Refusal {
        reason.to_string().into()
    }
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
        let local = local.clone();
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
    // Who connected, from the kernel (SO_PEERCRED): logged, and checked when uids are listed.
    // (A client in another PID namespace is reported with no pid.)
    let (peer, uid) = match stream.peer_cred() {
        Ok(cred) => {
            let uid = cred.uid();
            let pid = cred.pid().map_or("?".to_string(), |p| p.to_string());
            let name = format!("local pid {pid} uid {uid} gid {}", cred.gid());
            (name, Some(uid))
        }
        Err(e) => (format!("local (no peer credentials: {e})"), None),
    };
    tracing::debug!(%peer, "local client connected");
    if !local.allowed_uids.is_empty() && !uid.is_some_and(|u| local.allowed_uids.contains(&u)) {
        let who = uid.map_or("an unknown uid".to_string(), |u| format!("uid {u}"));
        let reason = format!("{who} is not in the server's --local-allowed-uids");
        tracing::warn!(%peer, "local client refused: not an allowed uid");
        serving.metrics.rejected_connections.inc();
        refuse(stream, ErrorCode::Forbidden, reason).await;
        return;
    }
    let registered = tokio::time::timeout(HANDSHAKE_TIMEOUT, register(&stream, &local)).await;
    let (region, _budget) = match registered {
        Ok(Ok(region)) => region,
        Ok(Err(refusal)) => {
            tracing::info!(%peer, reason = refusal.reason, "local client refused");
            refuse(stream, refusal.code, refusal.reason).await;
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
    let region_bytes = serving.metrics.local_region_bytes.clone();
    region_bytes.add(region.len() as i64);
    // However the connection ends, the mapping goes and the budget comes back.
    let _counted = scopeguard(region_bytes, region.len() as i64);
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
    let shared = serving.connection();
    serve_connection(
        rd,
        wr,
        serving,
        Caller {
            name: peer,
            ip: None,
            authenticated: false,
        },
        shared,
        draining,
        Some(Arc::new(region)),
    )
    .await;
}

/// Takes the region's bytes off the gauge when dropped.
struct Counted(prometheus::IntGauge, i64);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.sub(self.1);
    }
}

fn scopeguard(gauge: prometheus::IntGauge, n: i64) -> Counted {
    Counted(gauge, n)
}

/// Read the `Register` frame and the memfd that comes with it, take the region's share of the
/// budget, and map it.
async fn register(
    stream: &UnixStream,
    local: &LocalLimits,
) -> Result<(Region, OwnedSemaphorePermit), Refusal> {
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
        Err(e) => return Err(format!("malformed register frame: {e}").into()),
    };
    let fd = fd.ok_or("register frame came without a memfd (SCM_RIGHTS)")?;
    if size == 0 || size > local.max_region {
        return Err(format!(
            "region of {size} bytes: must be 1 byte to {} bytes (local_max_region)",
            local.max_region
        )
        .into());
    }
    if size > local.regions_budget {
        return Err(format!(
            "region of {size} bytes is larger than all local regions may be together ({} bytes, local_regions_budget): register a smaller buffer",
            local.regions_budget
        )
        .into());
    }
    let units = u32::try_from(size.div_ceil(REGION_UNIT)).unwrap_or(u32::MAX);
    let budget = local
        .regions
        .clone()
        .try_acquire_many_owned(units)
        .map_err(|_| Refusal {
            code: ErrorCode::Busy,
            reason: format!(
                "local clients' regions are at the server's budget of {} bytes (local_regions_budget); retry later or register a smaller buffer",
                local.regions_budget
            ),
        })?;
    let region = Region::map(fd, size, local.max_region)?;
    Ok((region, budget))
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
