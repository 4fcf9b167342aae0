//! A multiplexed connection over a byte stream: TCP, or a Unix socket on the local path.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BufMut;
use shardcache_proto::frame::{HEADER_LEN, MAX_RESPONSE_PAYLOAD, decode_data_payload, encode};
use shardcache_proto::{Frame, FrameCodec, Framed};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::pool::BufPool;
use crate::error::{ClientError, Result};

/// Data frames at least this large are read straight into a pooled buffer.
const DIRECT_MIN: usize = 256 * 1024;

/// Response bytes queued for one request whose caller does not take them: past this, that
/// request is cut off (its caller gets a retryable error) rather than the connection's reader
/// waiting for it, which would hold up every other request on the connection.
pub(crate) const REQUEST_BUFFER: usize = if cfg!(test) { 4 << 20 } else { 256 << 20 };

/// Bytes a frame counts for in a request's queue.
fn weight(frame: &Frame) -> usize {
    match frame {
        Frame::Data(chunk) => chunk.data.len().max(64),
        _ => 64,
    }
}

/// Where one request's frames go: a queue the connection's reader never waits on, and the
/// bytes in it.
struct Route {
    tx: mpsc::UnboundedSender<Frame>,
    queue: Arc<Queue>,
}

#[derive(Default)]
struct Queue {
    bytes: std::sync::atomic::AtomicUsize,
    /// Cut off for not taking its frames.
    cut: AtomicBool,
}

struct Shared {
    endpoint: String,
    pending: Mutex<HashMap<u32, Route>>,
    closed: AtomicBool,
    /// Why the connection ended, once it has.
    reason: Mutex<Option<ClientError>>,
}

impl Shared {
    fn lost(&self) -> ClientError {
        self.reason
            .lock()
            .expect("lock")
            .clone()
            .unwrap_or_else(|| ClientError::lost(&self.endpoint, "connection closed"))
    }
}

pub struct TcpConn {
    shared: Arc<Shared>,
    writer: tokio::sync::Mutex<Box<dyn AsyncWrite + Send + Unpin>>,
    next_id: AtomicU32,
    reader: JoinHandle<()>,
}

impl Drop for TcpConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl TcpConn {
    pub async fn connect(address: &str, endpoint: &str, pool: Arc<BufPool>) -> Result<TcpConn> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::connect(endpoint, e.to_string()).caused_by(e))?;
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        Ok(TcpConn::from_halves(rd, wr, endpoint, pool))
    }

    /// A connection over TLS over TCP (`tls://`), trusting what the options trust.
    pub async fn connect_tls(
        address: &str,
        host: &str,
        endpoint: &str,
        options: &crate::options::ClientOptions,
        pool: Arc<BufPool>,
    ) -> Result<TcpConn> {
        let config = Arc::new(super::client_tls(options)?);
        let name = options.server_name.as_deref().unwrap_or(host).to_string();
        let name = rustls::pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            ClientError::tls(format!("{name:?} is not a TLS server name: {e}")).caused_by(e)
        })?;
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| ClientError::connect(endpoint, e.to_string()).caused_by(e))?;
        let _ = stream.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, stream)
            .await
            .map_err(|e| {
                ClientError::connect(endpoint, format!("tls handshake failed: {e}")).caused_by(e)
            })?;
        let (rd, wr) = tokio::io::split(stream);
        Ok(TcpConn::from_halves(rd, wr, endpoint, pool))
    }

    /// A multiplexed connection over any ordered byte stream (TCP, a Unix socket).
    pub fn from_halves<R, W>(rd: R, wr: W, endpoint: &str, pool: Arc<BufPool>) -> TcpConn
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared = Arc::new(Shared {
            endpoint: endpoint.to_string(),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            reason: Mutex::new(None),
        });
        let reader = tokio::spawn(read_loop(rd, shared.clone(), pool));
        TcpConn {
            shared,
            writer: tokio::sync::Mutex::new(Box::new(wr)),
            next_id: AtomicU32::new(1),
            reader,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    pub async fn request(&self, frame: Frame) -> Result<TcpResponses> {
        let mut id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if id == 0 {
            id = self.next_id.fetch_add(1, Ordering::Relaxed);
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue::default());
        {
            let mut pending = self.shared.pending.lock().expect("lock");
            if self.is_closed() {
                return Err(self.shared.lost());
            }
            pending.insert(
                id,
                Route {
                    tx,
                    queue: queue.clone(),
                },
            );
        }
        let responses = TcpResponses {
            id,
            rx,
            queue,
            shared: self.shared.clone(),
        };
        let bytes = encode(&Framed {
            request_id: id,
            frame,
        })
        .to_vec();
        let mut writer = self.writer.lock().await;
        if let Err(e) = writer.write_all(&bytes).await {
            drop(writer);
            self.shared.closed.store(true, Ordering::Release);
            return Err(ClientError::lost(&self.shared.endpoint, e.to_string()).caused_by(e));
        }
        Ok(responses)
    }
}

async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, shared: Arc<Shared>, pool: Arc<BufPool>) {
    let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
    let closed = || ClientError::lost(&shared.endpoint, "server closed the connection");
    let lost = |e: std::io::Error| ClientError::lost(&shared.endpoint, e.to_string()).caused_by(e);
    let protocol = |e: shardcache_proto::DecodeError| {
        ClientError::protocol(&shared.endpoint, e.to_string()).caused_by(e)
    };
    let reason = 'conn: loop {
        loop {
            // A large data chunk not yet here: read its bytes straight into a pooled buffer.
            match codec.peek_header() {
                Ok(Some(h))
                    if h.is_data()
                        && h.payload_len >= DIRECT_MIN
                        && codec.buffered() < HEADER_LEN + h.payload_len =>
                {
                    let mut buf = pool.take(h.payload_len);
                    buf.extend_from_slice(&codec.take_frame_start(h.payload_len));
                    while buf.len() < h.payload_len {
                        let want = h.payload_len - buf.len();
                        match rd.read_buf(&mut (&mut buf).limit(want)).await {
                            Ok(0) => break 'conn closed(),
                            Ok(_) => {}
                            Err(e) => break 'conn lost(e),
                        }
                    }
                    match decode_data_payload(pool.freeze(buf)) {
                        Ok(chunk) => deliver(&shared, h.request_id, Frame::Data(chunk)),
                        Err(e) => break 'conn protocol(e),
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => break 'conn protocol(e),
            }
            let framed = match codec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => break 'conn protocol(e),
            };
            if framed.request_id == 0 {
                // A connection-level answer (e.g. the server is at its connection limit).
                if let Frame::Error(e) = framed.frame {
                    break 'conn ClientError::Server {
                        code: e.code,
                        message: e.message,
                    };
                }
                continue;
            }
            deliver(&shared, framed.request_id, framed.frame);
        }
        match rd.read_buf(codec.buffer_mut()).await {
            Ok(0) => break closed(),
            Ok(_) => {}
            Err(e) => break lost(e),
        }
    };
    *shared.reason.lock().expect("lock") = Some(reason);
    let mut pending = shared.pending.lock().expect("lock");
    shared.closed.store(true, Ordering::Release);
    pending.clear();
}

/// Route a frame to its request without waiting for its caller; frames of abandoned requests
/// are dropped, and a request whose caller left [`REQUEST_BUFFER`] bytes untaken is cut off.
fn deliver(shared: &Shared, request_id: u32, frame: Frame) {
    let mut pending = shared.pending.lock().expect("lock");
    let Some(route) = pending.get(&request_id) else {
        return;
    };
    let weight = weight(&frame);
    let queued = route.queue.bytes.load(Ordering::Acquire);
    if queued + weight > REQUEST_BUFFER {
        route.queue.cut.store(true, Ordering::Release);
        pending.remove(&request_id);
        return;
    }
    route.queue.bytes.fetch_add(weight, Ordering::AcqRel);
    if route.tx.send(frame).is_err() {
        pending.remove(&request_id);
    }
}

pub struct TcpResponses {
    id: u32,
    rx: mpsc::UnboundedReceiver<Frame>,
    queue: Arc<Queue>,
    shared: Arc<Shared>,
}

impl TcpResponses {
    pub async fn next(&mut self) -> Result<Frame> {
        match self.rx.recv().await {
            Some(frame) => {
                self.queue.bytes.fetch_sub(weight(&frame), Ordering::AcqRel);
                Ok(frame)
            }
            None if self.queue.cut.load(Ordering::Acquire) => Err(ClientError::lost(
                &self.shared.endpoint,
                format!(
                    "this request was cut off: its caller left {} MiB of its data untaken (the other requests on the connection go on)",
                    REQUEST_BUFFER >> 20
                ),
            )),
            None => Err(self.shared.lost()),
        }
    }
}

impl Drop for TcpResponses {
    fn drop(&mut self) {
        self.shared.pending.lock().expect("lock").remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use shardcache_proto::frame::MAX_REQUEST_PAYLOAD;
    use shardcache_proto::{DataChunk, StatRequest};
    use std::time::Duration;

    /// One request whose caller never takes its data does not hold up another on the same
    /// connection: the reader never waits for a caller, and the stalled request is cut off
    /// once it has [`REQUEST_BUFFER`] bytes queued.
    #[tokio::test]
    async fn a_caller_that_stops_taking_holds_up_no_other_request() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (crd, cwr) = tokio::io::split(client);
        let conn = TcpConn::from_halves(crd, cwr, "test", BufPool::new(4));
        // The server: answers request 1 with 12 MiB of data in 12 frames, then request 2 with
        // one chunk.
        let (mut srd, mut swr) = tokio::io::split(server);
        let serving = tokio::spawn(async move {
            let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
            let mut ids = Vec::new();
            while ids.len() < 2 {
                while let Some(framed) = codec.next_frame().unwrap() {
                    ids.push(framed.request_id);
                }
                if ids.len() < 2 {
                    srd.read_buf(codec.buffer_mut()).await.unwrap();
                }
            }
            let send = |id: u32, offset: u64, len: usize| {
                encode(&Framed {
                    request_id: id,
                    frame: Frame::Data(DataChunk::new(offset, Bytes::from(vec![7u8; len]))),
                })
                .to_vec()
            };
            for i in 0..12u64 {
                swr.write_all(&send(ids[0], i << 20, 1 << 20))
                    .await
                    .unwrap();
            }
            swr.write_all(&send(ids[1], 0, 10)).await.unwrap();
            swr
        });
        let stat = |path: &str| {
            Frame::Stat(StatRequest {
                path: path.to_string(),
            })
        };
        let mut stalled = conn.request(stat("ds/a")).await.unwrap();
        let mut other = conn.request(stat("ds/b")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), other.next())
            .await
            .expect("the other request was held up")
            .unwrap();
        assert!(matches!(got, Frame::Data(c) if c.data.len() == 10));
        let _swr = serving.await.unwrap();
        // The stalled request gets what fit in its queue, then a retryable error.
        let mut taken = 0;
        let err = loop {
            match stalled.next().await {
                Ok(Frame::Data(c)) => taken += c.data.len(),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(e) => break e,
            }
        };
        assert!(taken <= REQUEST_BUFFER, "{taken} bytes queued");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("cut off"), "{err}");
        assert!(!conn.is_closed(), "the connection goes on");
    }
}
