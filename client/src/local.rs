//! The local path, client side: register shared memory (a [`crate::PinnedBuffer`]'s, or a
//! connection's scratch) with a co-located server over a Unix socket (its memfd travels as
//! SCM_RIGHTS), then ask for reads placed straight into it.

use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use shardcache_mem::PinnedMemfd;
use shardcache_proto::frame::{MAX_RESPONSE_PAYLOAD, encode};
use shardcache_proto::{Frame, FrameCodec, Framed, ReadInto, ReadRequest, ReadStart, Register};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::UnixStream;

use crate::conn::{BufPool, TcpConn};
use crate::error::{ClientError, Result};

/// A buffer's registration: the connection whose server mapped it.
pub(crate) struct Registration {
    pub socket: String,
    pub conn: TcpConn,
}

/// Connect to the local socket and register `buf`; the connection then carries requests whose
/// bytes land in `buf`.
pub(crate) async fn register(
    socket: &str,
    buf: &PinnedMemfd,
    pool: Arc<BufPool>,
    token: Option<&str>,
) -> Result<TcpConn> {
    let endpoint = format!("unix://{socket}");
    let connect_err = |reason: String| ClientError::connect(&endpoint, reason);
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| connect_err(e.to_string()).caused_by(e))?;
    let hello = encode(&Framed {
        request_id: 0,
        frame: Frame::Register(Register {
            size: buf.len() as u64,
        }),
    })
    .to_vec();
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            send_with_fd(&stream, &hello, buf.fd())
        })
        .await
        .map_err(|e| connect_err(format!("cannot send the buffer: {e}")).caused_by(e))?;
    if sent != hello.len() {
        return Err(connect_err(
            "short write while registering the buffer".into(),
        ));
    }
    let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
    let answer = loop {
        let frame = codec
            .next_frame()
            .map_err(|e| connect_err(e.to_string()).caused_by(e))?;
        if let Some(f) = frame {
            break f.frame;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read_buf(codec.buffer_mut()))
            .await
            .map_err(|_| connect_err("no answer to the registration".into()))?
            .map_err(|e| connect_err(e.to_string()).caused_by(e))?;
        if n == 0 {
            return Err(connect_err(
                "server closed the connection while registering".into(),
            ));
        }
    };
    match answer {
        Frame::Registered(_) => {}
        Frame::Error(e) => {
            return Err(ClientError::Server {
                code: e.code,
                message: e.message,
            });
        }
        other => return Err(connect_err(format!("unexpected answer {other:?}"))),
    }
    let (rd, wr) = stream.into_split();
    let conn = TcpConn::from_halves(rd, wr, &endpoint, pool);
    if let Some(token) = token {
        let answer = async {
            let mut r = conn.request(crate::conn::auth_frame(token)).await?;
            r.next().await
        };
        crate::conn::authenticate(answer, &endpoint, Duration::from_secs(10)).await?;
    }
    Ok(conn)
}

fn send_with_fd(stream: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    Ok(rustix::net::sendmsg(
        stream,
        &[std::io::IoSlice::new(bytes)],
        &mut control,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

/// Read a range into `buf` at `region_offset` through `conn` (which registered `buf`), checking
/// every placed chunk's CRC32C in the buffer. Returns the read's start and the bytes placed.
pub(crate) async fn read_into_region(
    conn: &TcpConn,
    read: ReadRequest,
    region_offset: u64,
    buf: &mut PinnedMemfd,
    idle: Duration,
) -> Result<(ReadStart, u64)> {
    let path = read.path.clone();
    let endpoint = conn.endpoint().to_string();
    let protocol = |reason: String| ClientError::protocol(&endpoint, reason);
    let mut responses = conn
        .request(Frame::ReadInto(ReadInto {
            read,
            region_offset,
        }))
        .await?;
    let mut next = async || -> Result<Frame> {
        tokio::time::timeout(idle, responses.next())
            .await
            .map_err(|_| ClientError::timeout(&endpoint, idle.as_secs()))?
    };
    let start = match next().await? {
        Frame::ReadStart(s) => s,
        Frame::Error(e) => {
            return Err(ClientError::Server {
                code: e.code,
                message: e.message,
            });
        }
        other => return Err(protocol(format!("unexpected frame {other:?}"))),
    };
    let mut placed = 0u64;
    while placed < start.length {
        match next().await? {
            Frame::Placed(p) => {
                // Chunks arrive in order: each continues the range and its place in the region.
                let expected_at = region_offset + placed;
                let end = p
                    .region_offset
                    .checked_add(p.len)
                    .filter(|&e| e <= buf.len() as u64);
                if p.offset != start.offset + placed
                    || p.region_offset != expected_at
                    || end.is_none()
                    || p.len == 0
                {
                    return Err(protocol(format!(
                        "placed chunk {p:?} does not continue the read"
                    )));
                }
                let bytes =
                    &buf.as_slice()[p.region_offset as usize..(p.region_offset + p.len) as usize];
                if crc32c::crc32c(bytes) != p.crc32c {
                    return Err(ClientError::Checksum {
                        path: path.clone(),
                        offset: p.offset,
                    });
                }
                placed += p.len;
            }
            Frame::Error(e) => {
                return Err(ClientError::Server {
                    code: e.code,
                    message: e.message,
                });
            }
            other => return Err(protocol(format!("unexpected frame {other:?}"))),
        }
    }
    Ok((start, placed))
}
