//! One peer: its liveness state, its connections, and block requests to it.
//!
//! A peer is known by the address its data plane listens on. Requests travel over two
//! protocol connections (the client crate's, opened lazily; TCP, or QUIC with mutual TLS when
//! the cluster has a CA): one for blocks and one for liveness probes, so a probe never queues behind megabytes of block data. Every request
//! has a deadline and ends early when the peer is marked down, so a dead or stalled peer costs
//! a reader at most the time it takes to notice.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shardcache_client::ClientOptions;
use shardcache_client::raw::{BufPool, Conn, QuicConn, Responses, TcpConn};
use shardcache_proto::{BlockState, Frame, PeerAuth, PeerBlock, Ping, Pong};
use tokio::sync::{Mutex, Semaphore, watch};

use super::link::{FrameStream, PeerFailure, PeerLink, declined, refusal, unavailable};
use crate::access::ClusterSecret;
use crate::cache::{Block, FillSource};

/// Block requests in flight to one peer at once (below the default per-connection limit, so
/// a busy cluster waits here instead of being answered `Busy`).
const MAX_INFLIGHT: usize = 128;

/// Blocks larger than this are checksummed off the async threads.
const INLINE_CRC_LIMIT: usize = 1 << 20;

/// What a node knows about a peer address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    /// Not probed yet.
    Unknown,
    Up {
        node_id: String,
        weight: u32,
        instance: u64,
    },
    Down {
        reason: String,
    },
    /// The address is this node's own.
    Myself,
}

impl PeerState {
    pub fn is_down(&self) -> bool {
        matches!(self, PeerState::Down { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Up { .. } => "up",
            PeerState::Down { .. } => "down",
            PeerState::Myself => "self",
        }
    }
}

/// How members reach each other.
#[derive(Clone)]
pub enum PeerTransport {
    Tcp,
    /// QUIC, presenting this node's certificate and accepting peers signed by the cluster CA.
    Quic(Arc<ClientOptions>),
}

/// What `prove` answers for an address where this node reached itself.
const MYSELF: &str = "this address is this node's own";

/// The members' challenge–response on a new connection: this node's nonce, the peer's proof
/// checked (a process without the secret is not believed), then this node's proof.
async fn prove(
    conn: &Conn,
    credential: &Credential,
    expected: Option<String>,
) -> Result<(), String> {
    let me = credential.node_id.as_str();
    let mine = ClusterSecret::nonce();
    let hello = Frame::PeerAuth(PeerAuth {
        node_id: me.to_string(),
        nonce: mine.to_vec(),
        proof: Vec::new(),
    });
    let mut answer = conn
        .request(hello, IDLE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    let challenge = match answer.next().await.map_err(|e| e.to_string())? {
        Frame::PeerChallenge(c) => c,
        // Refused by this very node: the nonce came back to its own answering side.
        Frame::Error(_) if credential.secret.was_reflected(&mine) => {
            return Err(MYSELF.into());
        }
        Frame::Error(e) => {
            return Err(format!(
                "refused the members' handshake ({:?}): {}",
                e.code, e.message
            ));
        }
        other => return Err(format!("answered the members' handshake with {other:?}")),
    };
    // This node's own proof reflected back, or another node's name where a known one answered
    // before: not the member this address belongs to.
    if challenge.node_id == me {
        return Err("answered the members' handshake with this node's own node id".into());
    }
    if let Some(known) = expected
        && known != challenge.node_id
    {
        return Err(format!(
            "answered the members' handshake as {:?}, but this address is member {known:?}",
            challenge.node_id
        ));
    }
    let ids = [me, challenge.node_id.as_str()];
    let nonces: [&[u8]; 2] = [&mine, &challenge.nonce];
    if !credential
        .secret
        .verify(true, nonces, ids, &challenge.proof)
    {
        return Err(
            "answered without the cluster secret: not a member (is --cluster-secret-file the same on every node?)"
                .into(),
        );
    }
    let proof = credential.secret.asker_proof(&mine, &challenge.nonce, ids);
    let step = Frame::PeerAuth(PeerAuth {
        node_id: me.to_string(),
        nonce: Vec::new(),
        proof,
    });
    let mut answer = conn
        .request(step, IDLE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match answer.next().await.map_err(|e| e.to_string())? {
        Frame::AuthOk(_) => Ok(()),
        Frame::Error(e) => Err(format!("refused this node's proof: {}", e.message)),
        other => Err(format!("answered this node's proof with {other:?}")),
    }
}

/// Longest silence inside one peer response (requests have their own, shorter deadlines).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// What this node proves to peers over TCP: its node id and the cluster secret.
#[derive(Clone, Debug)]
pub struct Credential {
    pub node_id: String,
    pub secret: Arc<ClusterSecret>,
}

pub struct Peer {
    addr: String,
    transport: PeerTransport,
    credential: Option<Credential>,
    state: watch::Sender<PeerState>,
    /// The last answer to a probe (node id, weight, tier usage).
    last_pong: std::sync::Mutex<Option<Pong>>,
    data: Mutex<Option<Arc<Conn>>>,
    probe: Mutex<Option<Arc<Conn>>>,
    permits: Semaphore,
    pool: Arc<BufPool>,
    /// Set when the address left the membership; its probe task stops.
    removed: AtomicBool,
    /// Set when the members' handshake showed this address is this node's own.
    myself: AtomicBool,
}

impl Peer {
    pub fn new(
        addr: String,
        transport: PeerTransport,
        credential: Option<Credential>,
        pool: Arc<BufPool>,
    ) -> Peer {
        Peer {
            addr,
            transport,
            credential,
            state: watch::Sender::new(PeerState::Unknown),
            last_pong: std::sync::Mutex::new(None),
            data: Mutex::new(None),
            probe: Mutex::new(None),
            permits: Semaphore::new(MAX_INFLIGHT),
            pool,
            removed: AtomicBool::new(false),
            myself: AtomicBool::new(false),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn state(&self) -> PeerState {
        self.state.borrow().clone()
    }

    /// Set the state; true when it changed in a way placement cares about.
    pub fn set_state(&self, new: PeerState) -> bool {
        self.state.send_if_modified(|s| {
            let changed = match (&*s, &new) {
                (PeerState::Down { .. }, PeerState::Down { .. }) => false,
                (a, b) => a != b,
            };
            if changed {
                *s = new;
            }
            changed
        })
    }

    pub fn last_pong(&self) -> Option<Pong> {
        self.last_pong.lock().expect("lock").clone()
    }

    /// The node id of an up peer.
    pub fn node_id(&self) -> Option<String> {
        match &*self.state.borrow() {
            PeerState::Up { node_id, .. } => Some(node_id.clone()),
            _ => None,
        }
    }

    /// The peer's node id as last known (also while it is down), else its address.
    pub fn name(&self) -> String {
        self.node_id()
            .or_else(|| self.last_pong().map(|p| p.node_id))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| self.addr.clone())
    }

    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Whether the members' handshake showed this address is this node's own.
    pub fn is_myself(&self) -> bool {
        self.myself.load(Ordering::Acquire)
    }

    async fn conn(
        &self,
        slot: &Mutex<Option<Arc<Conn>>>,
        timeout: Duration,
    ) -> Result<Arc<Conn>, PeerFailure> {
        let mut slot = slot.lock().await;
        if let Some(conn) = slot.as_ref()
            && !conn.is_closed()
        {
            return Ok(conn.clone());
        }
        let connect = async {
            match &self.transport {
                PeerTransport::Tcp => TcpConn::connect(&self.addr, &self.addr, self.pool.clone())
                    .await
                    .map(Conn::Tcp),
                PeerTransport::Quic(options) => {
                    let host = self
                        .addr
                        .parse::<std::net::SocketAddr>()
                        .map_or_else(|_| "shardcache".to_string(), |a| a.ip().to_string());
                    QuicConn::connect(options, &self.addr, &host, &self.addr)
                        .await
                        .map(Conn::Quic)
                }
            }
        };
        let connect = async {
            let conn = connect.await.map_err(|e| e.to_string())?;
            // Over TCP, both sides prove the cluster secret before anything else is asked or
            // believed; QUIC members prove themselves with certificates.
            if let (PeerTransport::Tcp, Some(credential)) = (&self.transport, &self.credential) {
                prove(&conn, credential, self.node_id())
                    .await
                    .inspect_err(|e| {
                        if e == MYSELF {
                            self.myself.store(true, Ordering::Release);
                        }
                    })?;
            }
            Ok::<Conn, String>(conn)
        };
        let conn = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(conn)) => Arc::new(conn),
            Ok(Err(e)) => return Err(unavailable(e)),
            Err(_) => return Err(unavailable(format!("no connection within {timeout:?}"))),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Ask who answers at this address.
    pub async fn ping(&self, from: &str, timeout: Duration) -> Result<Pong, String> {
        let work = async {
            let conn = self
                .conn(&self.probe, timeout)
                .await
                .map_err(PeerFailure::reason)?;
            let mut responses = conn
                .request(
                    Frame::Ping(Ping {
                        from: from.to_string(),
                    }),
                    IDLE_TIMEOUT,
                )
                .await
                .map_err(|e| e.to_string())?;
            match responses.next().await.map_err(|e| e.to_string())? {
                Frame::Pong(pong) => {
                    *self.last_pong.lock().expect("lock") = Some(pong.clone());
                    Ok(pong)
                }
                Frame::Error(e) => Err(format!("answered {:?}: {}", e.code, e.message)),
                other => Err(format!("answered a ping with {other:?}")),
            }
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                // A stalled connection is not reused.
                *self.probe.lock().await = None;
                Err(format!("no answer within {timeout:?}"))
            }
        }
    }

    /// Ask for one block. Ends with `Declined` after `deadline` (dropping the block connection,
    /// which may be the stuck part) or as soon as the peer is marked down. The block's checksum is verified before it is returned.
    pub async fn block(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<Block, PeerFailure> {
        let block_start = req.index.saturating_mul(u64::from(req.block_size));
        let want = u64::from(req.block_size).min(req.size.saturating_sub(block_start));
        let chunk = match self.ask(req, deadline, connect_timeout).await? {
            Frame::Data(chunk) => chunk,
            other => {
                return Err(unavailable(format!(
                    "answered a block request with {other:?}"
                )));
            }
        };
        if chunk.offset != block_start || chunk.data.len() as u64 != want {
            return Err(unavailable(format!(
                "sent {} bytes at {} for a block of {want} at {block_start}",
                chunk.data.len(),
                chunk.offset
            )));
        }
        let ok = if chunk.data.len() <= INLINE_CRC_LIMIT {
            chunk.verify()
        } else {
            let chunk = chunk.clone();
            tokio::task::spawn_blocking(move || chunk.verify())
                .await
                .unwrap_or(false)
        };
        if !ok {
            return Err(PeerFailure::Corrupt {
                reason: "block failed its checksum".into(),
            });
        }
        Ok(Block {
            data: chunk.data,
            crc32c: chunk.crc32c,
            source: FillSource::Peer,
        })
    }

    /// Ask for a block's state (`Load`, `Check`, `Evict`), same deadlines as [`Peer::block`].
    pub async fn block_state(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<BlockState, PeerFailure> {
        match self.ask(req, deadline, connect_timeout).await? {
            Frame::BlockState(state) => Ok(state),
            other => Err(unavailable(format!(
                "answered a block-state request with {other:?}"
            ))),
        }
    }

    /// Open a `Stream` request: its answer frames, each arriving within `idle` of the last.
    /// The caller watches [`Peer::state_watch`] to stop when the peer is marked down.
    pub async fn stream(
        &self,
        req: PeerBlock,
        idle: Duration,
        connect_timeout: Duration,
    ) -> Result<Responses, PeerFailure> {
        let conn = self.conn(&self.data, connect_timeout).await?;
        conn.request(Frame::PeerBlock(req), idle)
            .await
            .map_err(|e| unavailable(e.to_string()))
    }

    /// The peer's state, to wait on.
    pub fn state_watch(&self) -> watch::Receiver<PeerState> {
        self.state.subscribe()
    }

    /// Send one block request and take its one answer frame; errors become [`PeerFailure`]s.
    async fn ask(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<Frame, PeerFailure> {
        let work = async {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| unavailable("closed"))?;
            let conn = self.conn(&self.data, connect_timeout).await?;
            let mut responses = conn
                .request(Frame::PeerBlock(req), IDLE_TIMEOUT)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            match responses.next().await {
                Ok(Frame::Error(e)) => Err(refusal(e)),
                Ok(frame) => Ok(frame),
                Err(e) => Err(unavailable(e.to_string())),
            }
        };
        let mut state = self.state.subscribe();
        let outcome = tokio::select! {
            result = work => Some(result),
            () = tokio::time::sleep(deadline) => None,
            _ = state.wait_for(PeerState::is_down) => Some(Err(declined("marked down"))),
        };
        match outcome {
            Some(result) => result,
            None => {
                // Slow is not dead: the probes decide that. The connection may be the stuck
                // part, though: the next request opens a fresh one.
                *self.data.lock().await = None;
                Err(declined(format!("no answer within {deadline:?}")))
            }
        }
    }
}

#[async_trait::async_trait]
impl PeerLink for Peer {
    fn addr(&self) -> &str {
        &self.addr
    }

    fn name(&self) -> String {
        Peer::name(self)
    }

    fn is_down(&self) -> bool {
        self.state.borrow().is_down()
    }

    fn marked_down(&self) -> futures::future::BoxFuture<'static, ()> {
        let mut state = self.state.subscribe();
        Box::pin(async move {
            let _ = state.wait_for(PeerState::is_down).await;
        })
    }

    async fn block(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<Block, PeerFailure> {
        Peer::block(self, req, deadline, connect_timeout).await
    }

    async fn block_state(
        &self,
        req: PeerBlock,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<BlockState, PeerFailure> {
        Peer::block_state(self, req, deadline, connect_timeout).await
    }

    async fn stream(
        &self,
        req: PeerBlock,
        idle: Duration,
        connect_timeout: Duration,
    ) -> Result<FrameStream, PeerFailure> {
        let responses = Peer::stream(self, req, idle, connect_timeout).await?;
        Ok(Box::pin(futures::stream::unfold(
            responses,
            |mut r| async move { Some((r.next().await, r)) },
        )))
    }
}
