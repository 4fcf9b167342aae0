//! The cluster: who the members are, which are up, and which of them holds a block.
//!
//! Members are data-plane addresses from `--peers` (static), `--peers-file` (re-read) and
//! `--peer-dns` (a Kubernetes headless Service, re-resolved), every `peer_refresh`. Each address
//! gets a probe task that pings it every `peer_probe_interval`: an answer makes it up (and
//! tells its node id and weight), a failure or a silence of `peer_timeout` makes it down, after
//! which it is probed again with backoff. An address that answers with this process's own
//! instance number is this node. A failed block request marks its peer down at once.
//!
//! Placement ([`placement`]) ranks this node and the peers that are up by weighted rendezvous
//! hashing of the block key: the first is the block's owner, the next ones its neighbours.
//! Members that disagree for a moment (one saw a peer go down first) stay correct: a node that
//! is asked to fill a block it does not think it owns still serves it, and never forwards the
//! request again.

pub mod link;
pub mod peer;
pub mod placement;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shardcache_client::raw::BufPool;

use crate::access::ClusterSecret;
use crate::cache::BlockKey;
use crate::drain::Draining;
use crate::stats::Registry;
pub use link::{FrameStream, PeerFailure, PeerLink, declined, refusal, unavailable};
pub use peer::{Credential, Peer, PeerState, PeerTransport};
use placement::Weighted;

/// Longest wait between probes of a peer that is down.
const MAX_PROBE_BACKOFF: Duration = Duration::from_secs(5);

/// Largest weight a member may claim: a member answering with more is taken at this weight
/// (so no member can take over most of the blocks by claiming a huge one).
pub const MAX_WEIGHT: u32 = 1000;

/// Receive buffers kept for peer block transfers.
const PEER_BUFFERS: usize = 64;

/// How a node finds and treats its peers.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_id: String,
    pub weight: u32,
    /// This node's data-plane address, when it is a concrete one: listed peers with this address
    /// are this node without asking.
    pub own_addr: Option<SocketAddr>,
    /// `host:port` entries (names are resolved).
    pub peers: Vec<String>,
    /// A file of `host:port` lines, re-read every `refresh`.
    pub peers_file: Option<PathBuf>,
    /// `name:port` resolved to every address it has, every `refresh`.
    pub peer_dns: Option<String>,
    pub refresh: Duration,
    pub probe_interval: Duration,
    /// Deadline of a ping, a connection, and a probe for a block.
    pub peer_timeout: Duration,
    /// Deadline of a block asked of its owner (which may have to read the origin).
    pub fill_timeout: Duration,
    /// Neighbours an owner asks before reading the origin.
    pub read_neighbours: usize,
    /// Chunk size of chain distribution.
    pub chain_chunk: u32,
    pub transport: PeerTransport,
    /// The secret this node proves to peers over TCP (and asks them to prove).
    pub secret: Option<Arc<ClusterSecret>>,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerTransport::Tcp => "tcp",
            PeerTransport::Quic(_) => "quic+mtls",
        })
    }
}

/// The membership as metrics: peers by state (this node not counted).
#[derive(Clone)]
pub struct ClusterMetrics {
    pub peers: prometheus::IntGaugeVec,
}

impl ClusterMetrics {
    pub fn new(r: &Registry) -> ClusterMetrics {
        let peers = r.gauge_vec("shardcache_peers", "Cluster peers by state", &["state"]);
        peers.with_label_values(&["up"]);
        peers.with_label_values(&["down"]);
        ClusterMetrics { peers }
    }
}

/// A candidate holder of a block.
#[derive(Clone)]
pub enum Candidate {
    Me,
    Peer(Arc<Peer>),
}

impl Candidate {
    /// The peer as a link, `None` for this node.
    pub fn link(&self) -> Option<Arc<dyn PeerLink>> {
        match self {
            Candidate::Me => None,
            Candidate::Peer(p) => Some(p.clone() as Arc<dyn PeerLink>),
        }
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Candidate) -> bool {
        match (self, other) {
            (Candidate::Me, Candidate::Me) => true,
            (Candidate::Peer(a), Candidate::Peer(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

/// A member as listed by [`Cluster::members`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub addr: String,
    pub state: PeerState,
    /// The last answer to a probe: node id, weight and tier usage.
    pub last_pong: Option<shardcache_proto::Pong>,
}

/// Placement's view: this node and the peers that are up.
struct View {
    members: Vec<Weighted>,
    /// `None` for this node.
    nodes: Vec<Option<Arc<Peer>>>,
}

pub struct Cluster {
    settings: ClusterSettings,
    me: Weighted,
    instance: u64,
    metrics: ClusterMetrics,
    pool: Arc<BufPool>,
    peers: Mutex<BTreeMap<String, Arc<Peer>>>,
    view: RwLock<Arc<View>>,
    member_ips: RwLock<HashSet<IpAddr>>,
    /// Last good resolution of each entry, kept while a refresh fails.
    resolved: Mutex<BTreeMap<String, Vec<SocketAddr>>>,
    /// The member sources have been read once.
    refreshed: std::sync::atomic::AtomicBool,
}

impl Cluster {
    pub fn new(settings: ClusterSettings, metrics: ClusterMetrics) -> Arc<Cluster> {
        let me = Weighted {
            hash: placement::node_hash(&settings.node_id),
            weight: settings.weight,
        };
        let mut seed = [0u8; 8];
        let instance =
            match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed) {
                Ok(()) => u64::from_le_bytes(seed),
                Err(_) => std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64),
            };
        Arc::new(Cluster {
            view: RwLock::new(Arc::new(View {
                members: vec![me],
                nodes: vec![None],
            })),
            me,
            instance,
            metrics,
            pool: BufPool::new(PEER_BUFFERS),
            peers: Mutex::new(BTreeMap::new()),
            member_ips: RwLock::new(HashSet::new()),
            resolved: Mutex::new(BTreeMap::new()),
            refreshed: std::sync::atomic::AtomicBool::new(false),
            settings,
        })
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn node_id(&self) -> &str {
        &self.settings.node_id
    }

    pub fn weight(&self) -> u32 {
        self.settings.weight
    }

    /// Random per process start.
    pub fn instance(&self) -> u64 {
        self.instance
    }

    /// Whether any peer is configured at all.
    pub fn is_clustered(&self) -> bool {
        !self.settings.peers.is_empty()
            || self.settings.peers_file.is_some()
            || self.settings.peer_dns.is_some()
    }

    /// Up to `limit` holders of a block, owner first; this node among them when it ranks.
    pub fn candidates(&self, key: &BlockKey, limit: usize) -> Vec<Candidate> {
        let view = self.view.read().expect("lock").clone();
        if view.members.len() == 1 {
            return vec![Candidate::Me];
        }
        placement::rank(&view.members, placement::block_hash(key), limit)
            .into_iter()
            .map(|i| match &view.nodes[i] {
                None => Candidate::Me,
                Some(peer) => Candidate::Peer(peer.clone()),
            })
            .collect()
    }

    /// The targets of a block's chain in chain order (see [`plan`]): its
    /// `replicas` highest-ranked holders, or every member that is up when `None`.
    pub fn chain(&self, key: &BlockKey, replicas: Option<usize>) -> Vec<Candidate> {
        let view = self.view.read().expect("lock").clone();
        if view.members.len() == 1 {
            return vec![Candidate::Me];
        }
        plan::chain(&view.members, placement::block_hash(key), replicas)
            .into_iter()
            .map(|i| match &view.nodes[i] {
                None => Candidate::Me,
                Some(peer) => Candidate::Peer(peer.clone()),
            })
            .collect()
    }

    /// This node and every peer that is up (the targets of a warm to all nodes).
    pub fn everyone(&self) -> Vec<Candidate> {
        let view = self.view.read().expect("lock").clone();
        view.nodes
            .iter()
            .map(|n| match n {
                None => Candidate::Me,
                Some(peer) => Candidate::Peer(peer.clone()),
            })
            .collect()
    }

    /// Whether `ip` is the address of a configured member (peer-only requests are accepted
    /// only from members).
    pub fn is_member_ip(&self, ip: IpAddr) -> bool {
        self.member_ips
            .read()
            .expect("lock")
            .contains(&ip.to_canonical())
    }

    /// Every known peer address and its state.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.peers
            .lock()
            .expect("lock")
            .values()
            .map(|p| MemberStatus {
                addr: p.addr().to_string(),
                state: p.state(),
                last_pong: p.last_pong(),
            })
            .collect()
    }

    /// The peer at a data-plane address, if it is a member.
    pub fn peer(&self, addr: &str) -> Option<Arc<Peer>> {
        self.peers.lock().expect("lock").get(addr).cloned()
    }

    /// This node's data-plane address as the other members know it (its entry in the member
    /// list), or the address it listens on when that is specific.
    pub fn own_addr(&self) -> Option<String> {
        self.peers
            .lock()
            .expect("lock")
            .values()
            .find(|p| p.state() == PeerState::Myself)
            .map(|p| p.addr().to_string())
            .or_else(|| self.settings.own_addr.map(|a| a.to_string()))
    }

    /// Whether every known peer has been probed at least once (membership is known).
    pub fn membership_known(&self) -> bool {
        if !self.is_clustered() {
            return true;
        }
        self.refreshed.load(std::sync::atomic::Ordering::Acquire)
            && self
                .peers
                .lock()
                .expect("lock")
                .values()
                .all(|p| p.state() != PeerState::Unknown)
    }

    /// Mark a peer down after a failed request; its probe task brings it back.
    pub fn report_failure(&self, peer: &Peer, reason: &str) {
        if peer.set_state(PeerState::Down {
            reason: reason.to_string(),
        }) {
            tracing::warn!(peer = peer.addr(), reason, "peer marked down");
            self.recompute();
        }
    }

    /// [`Cluster::report_failure`] for a link known by its address.
    pub fn report_link_failure(&self, link: &dyn PeerLink, reason: &str) {
        if let Some(peer) = self.peer(link.addr()) {
            self.report_failure(&peer, reason);
        }
    }

    /// Rebuild placement's view and the peer gauges from the peers' states.
    fn recompute(&self) {
        let peers = self.peers.lock().expect("lock");
        let mut members = vec![self.me];
        let mut nodes = vec![None];
        let mut seen = BTreeSet::from([self.settings.node_id.clone()]);
        let (mut up, mut down) = (0, 0);
        for peer in peers.values() {
            match peer.state() {
                PeerState::Up {
                    node_id, weight, ..
                } => {
                    up += 1;
                    if !seen.insert(node_id.clone()) {
                        tracing::warn!(
                            peer = peer.addr(),
                            node_id,
                            "two members answer with the same node id; using one"
                        );
                        continue;
                    }
                    members.push(Weighted {
                        hash: placement::node_hash(&node_id),
                        weight,
                    });
                    nodes.push(Some(peer.clone()));
                }
                PeerState::Down { .. } => down += 1,
                PeerState::Unknown | PeerState::Myself => {}
            }
        }
        self.metrics.peers.with_label_values(&["up"]).set(up);
        self.metrics.peers.with_label_values(&["down"]).set(down);
        *self.view.write().expect("lock") = Arc::new(View { members, nodes });
    }

    /// Keep the membership current until the server drains.
    pub async fn run(self: Arc<Self>, mut draining: Draining) {
        if !self.is_clustered() {
            return;
        }
        loop {
            self.refresh().await;
            tokio::select! {
                () = tokio::time::sleep(self.settings.refresh) => {}
                _ = draining.wait_for(|d| *d) => break,
            }
        }
        for peer in self.peers.lock().expect("lock").values() {
            peer.remove();
        }
    }

    /// Resolve the member sources and start or stop probing addresses accordingly.
    async fn refresh(self: &Arc<Self>) {
        let mut keyed: Vec<(String, String)> = self
            .settings
            .peers
            .iter()
            .map(|e| (format!("peers:{e}"), e.clone()))
            .collect();
        if let Some(path) = &self.settings.peers_file {
            match tokio::fs::read_to_string(path).await {
                Ok(text) => keyed
                    .extend(parse_peer_lines(&text).map(|e| (format!("file:{e}"), e.to_string()))),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read the peers file; keeping the members it listed");
                    let resolved = self.resolved.lock().expect("lock");
                    keyed.extend(resolved.keys().filter_map(|k| {
                        k.strip_prefix("file:").map(|e| (k.clone(), e.to_string()))
                    }));
                }
            }
        }
        if let Some(dns) = &self.settings.peer_dns {
            keyed.push((format!("dns:{dns}"), dns.clone()));
        }
        let mut addrs: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut fresh = BTreeMap::new();
        for (key, entry) in keyed {
            match tokio::net::lookup_host(entry.as_str()).await {
                Ok(found) => {
                    let found: Vec<SocketAddr> = found.collect();
                    addrs.extend(found.iter().copied());
                    fresh.insert(key, found);
                }
                Err(e) => {
                    let old = self.resolved.lock().expect("lock").get(&key).cloned();
                    tracing::warn!(entry, error = %e, "cannot resolve a member address");
                    if let Some(old) = old {
                        addrs.extend(old.iter().copied());
                        fresh.insert(key, old);
                    }
                }
            }
        }
        *self.resolved.lock().expect("lock") = fresh;
        *self.member_ips.write().expect("lock") =
            addrs.iter().map(|a| a.ip().to_canonical()).collect();

        let wanted: BTreeSet<String> = addrs.iter().map(SocketAddr::to_string).collect();
        let mut started = Vec::new();
        {
            let mut peers = self.peers.lock().expect("lock");
            peers.retain(|addr, peer| {
                let keep = wanted.contains(addr);
                if !keep {
                    tracing::info!(peer = addr, "peer left the membership");
                    peer.remove();
                }
                keep
            });
            for addr in &wanted {
                if peers.contains_key(addr) {
                    continue;
                }
                let credential = self.settings.secret.clone().map(|secret| Credential {
                    node_id: self.settings.node_id.clone(),
                    secret,
                });
                let peer = Arc::new(Peer::new(
                    addr.clone(),
                    self.settings.transport.clone(),
                    credential,
                    self.pool.clone(),
                ));
                if self.settings.own_addr.map(|a| a.to_string()).as_deref() == Some(addr) {
                    peer.set_state(PeerState::Myself);
                } else {
                    started.push(peer.clone());
                }
                peers.insert(addr.clone(), peer);
            }
        }
        for peer in started {
            tokio::spawn(self.clone().probe(peer));
        }
        self.recompute();
        self.refreshed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ping one peer until it leaves the membership or turns out to be this node.
    async fn probe(self: Arc<Self>, peer: Arc<Peer>) {
        let interval = self.settings.probe_interval;
        let mut wait = interval;
        while !peer.is_removed() {
            let changed = match peer.ping(self.node_id(), self.settings.peer_timeout).await {
                Ok(pong) if pong.instance == self.instance => {
                    peer.set_state(PeerState::Myself);
                    self.recompute();
                    return;
                }
                Ok(pong) => {
                    wait = interval;
                    if pong.node_id == self.settings.node_id {
                        tracing::warn!(
                            peer = peer.addr(),
                            node_id = pong.node_id,
                            "a peer uses this node's node id; it is left out"
                        );
                    }
                    if pong.weight > MAX_WEIGHT && !matches!(peer.state(), PeerState::Up { .. }) {
                        tracing::warn!(
                            peer = peer.addr(),
                            node_id = pong.node_id,
                            weight = pong.weight,
                            max = MAX_WEIGHT,
                            "a peer claims a weight above the maximum; it counts as the maximum"
                        );
                    }
                    let changed = peer.set_state(PeerState::Up {
                        node_id: pong.node_id.clone(),
                        weight: pong.weight.min(MAX_WEIGHT),
                        instance: pong.instance,
                    });
                    if changed {
                        tracing::info!(
                            peer = peer.addr(),
                            node_id = pong.node_id,
                            weight = pong.weight,
                            "peer up"
                        );
                    }
                    changed
                }
                // Over TCP with a cluster secret the handshake, before any ping, tells.
                Err(_) if peer.is_myself() => {
                    tracing::debug!(peer = peer.addr(), "this address is this node's own");
                    peer.set_state(PeerState::Myself);
                    self.recompute();
                    return;
                }
                Err(reason) => {
                    let was = peer.state();
                    wait = if was.is_down() {
                        (wait * 2).min(MAX_PROBE_BACKOFF)
                    } else {
                        interval
                    };
                    let changed = peer.set_state(PeerState::Down {
                        reason: reason.clone(),
                    });
                    if changed {
                        tracing::warn!(peer = peer.addr(), reason, "peer down");
                    }
                    changed
                }
            };
            if changed {
                self.recompute();
            }
            tokio::time::sleep(wait).await;
        }
        peer.set_state(PeerState::Unknown);
        self.recompute();
    }
}

/// Member entries of a peers file: `host:port` per line or comma-separated; `#` starts a
/// comment.
pub fn parse_peer_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_file_lines() {
        let text = "# members\n10.0.0.1:7070\n\n 10.0.0.2:7070 , node-c:7070 # third\n#x:1\n";
        let got: Vec<&str> = parse_peer_lines(text).collect();
        assert_eq!(got, ["10.0.0.1:7070", "10.0.0.2:7070", "node-c:7070"]);
    }
}
