//! Cross-node decisions against scripted peers: which source next, what a failure means, when a
//! chain cuts a node out or asks again.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use shardcache_proto::{DataChunk, ErrorCode, ErrorFrame, Frame, PeerMode};

use super::testing::{Counters, FakeLink, FakeMembers, origin, service};
use super::*;
use crate::cache::{Block, FillSource, ObjectId};
use crate::cluster::PeerFailure;
use crate::error::{Error, Result};
use crate::service::RemoteSource;

const BS: u64 = 256 * 1024;
const CHUNK: usize = 64 * 1024;

fn body() -> Vec<u8> {
    (0..2 * BS as usize)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect()
}

fn unavailable(reason: &str) -> PeerFailure {
    crate::cluster::unavailable(reason)
}

struct Setup {
    stats: Arc<Counters>,
    origin: Arc<Origin>,
    body: Vec<u8>,
}

async fn setup() -> Setup {
    let stats = Counters::new();
    let body = body();
    let origin = origin(&body, BS, &stats).await;
    Setup {
        stats,
        origin,
        body,
    }
}

impl Setup {
    async fn ctx(&self, index: u64, for_peer: bool) -> BlockCtx {
        let version = self.origin.head("shard").await.unwrap();
        let mut ctx = BlockCtx::whole_block(self.origin.clone(), "shard", version, index).unwrap();
        ctx.for_peer = for_peer;
        ctx
    }

    fn block(&self, index: u64, source: FillSource) -> Block {
        let at = (index * BS) as usize;
        Block {
            source,
            ..Block::new(Bytes::copy_from_slice(&self.body[at..at + BS as usize]))
        }
    }

    fn remote(&self, members: Arc<FakeMembers>) -> Remote {
        Remote::new(members, Arc::new(Chains::new(4)), self.stats.peer.clone())
    }

    fn peers(&self, members: Arc<FakeMembers>, require_certificates: bool) -> Arc<PeerServer> {
        Arc::new(PeerServer::new(
            service(self.origin.clone(), &self.stats),
            members,
            Arc::new(Chains::new(4)),
            self.stats.peer.clone(),
            require_certificates,
        ))
    }

    /// Chunks of block `index` from byte `from` of the block, as a node ahead sends them.
    fn chunks(&self, index: u64, from: usize, to: usize) -> Vec<Frame> {
        let start = (index * BS) as usize;
        (from..to)
            .step_by(CHUNK)
            .map(|at| {
                let end = (at + CHUNK).min(to);
                Frame::Data(DataChunk::new(
                    (start + at) as u64,
                    Bytes::copy_from_slice(&self.body[start + at..start + end]),
                ))
            })
            .collect()
    }
}

fn key(ctx: &BlockCtx) -> crate::cache::BlockKey {
    ObjectId::new(
        ctx.origin.dataset(),
        &ctx.key,
        &ctx.version,
        ctx.origin.settings().block_size,
    )
    .block(ctx.index())
}

// ---- blocks from other members ----

#[tokio::test]
async fn the_owner_is_asked_first_and_its_block_is_used() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    let next = FakeLink::new("10.0.0.2:7070");
    owner.answer_block(Ok(s.block(0, FillSource::Peer)));
    let members = FakeMembers::new(vec![Some(owner.clone()), Some(next.clone()), None]);
    let ctx = s.ctx(0, false).await;
    let block = s
        .remote(members.clone())
        .fetch(&ctx, &key(&ctx))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(block.source, FillSource::Peer);
    assert_eq!(block.data, s.block(0, FillSource::Peer).data);
    assert_eq!(owner.modes(), [PeerMode::Fill]);
    assert!(next.modes().is_empty());
    assert_eq!(s.stats.peer.fill_ok.get(), 1);
}

#[tokio::test]
async fn an_unreachable_owner_is_marked_down_and_the_next_candidate_asked() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    let next = FakeLink::new("10.0.0.2:7070");
    owner.answer_block(Err(unavailable("connection refused")));
    next.answer_block(Ok(s.block(0, FillSource::Peer)));
    let members = FakeMembers::new(vec![Some(owner.clone()), Some(next.clone()), None]);
    let ctx = s.ctx(0, false).await;
    let block = s.remote(members.clone()).fetch(&ctx, &key(&ctx)).await;
    assert!(block.unwrap().is_some());
    assert_eq!(members.reported(), ["10.0.0.1:7070"]);
    assert_eq!(next.modes(), [PeerMode::Fill]);
    assert_eq!(s.stats.peer.fill_failed.get(), 1);
}

#[tokio::test]
async fn a_busy_owner_is_skipped_but_not_marked_down() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    owner.answer_block(Err(PeerFailure::Declined {
        reason: "busy".into(),
    }));
    // This node ranks second: after the owner declines, it fills the block itself (probing
    // the rest of the plan first), and the read path goes to the origin.
    let members = FakeMembers::new(vec![Some(owner.clone()), None]);
    let ctx = s.ctx(0, false).await;
    let got = s.remote(members.clone()).fetch(&ctx, &key(&ctx)).await;
    assert!(got.unwrap().is_none());
    assert!(members.reported().is_empty());
    assert!(!owner.is_down());
}

#[tokio::test]
async fn a_definitive_answer_from_the_owner_is_relayed_and_nobody_else_asked() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    let next = FakeLink::new("10.0.0.2:7070");
    owner.answer_block(Err(PeerFailure::Answer {
        code: ErrorCode::NotFound,
        message: "object ds/shard not found at the origin".into(),
    }));
    let members = FakeMembers::new(vec![Some(owner.clone()), Some(next.clone())]);
    let ctx = s.ctx(0, false).await;
    let err = s.remote(members).fetch(&ctx, &key(&ctx)).await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert!(err.to_string().contains("10.0.0.1:7070"), "{err}");
    assert!(next.modes().is_empty());
}

#[tokio::test]
async fn a_version_change_at_the_owner_becomes_this_nodes_version_change() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    owner.answer_block(Err(PeerFailure::Answer {
        code: ErrorCode::PreconditionFailed,
        message: "changed".into(),
    }));
    let members = FakeMembers::new(vec![Some(owner), None]);
    let ctx = s.ctx(0, false).await;
    let err = s.remote(members).fetch(&ctx, &key(&ctx)).await.unwrap_err();
    // The read path restarts at the new version on exactly this error.
    assert!(matches!(err, Error::VersionChanged { .. }), "{err:?}");
}

#[tokio::test]
async fn first_in_line_this_node_probes_its_neighbours_before_the_origin() {
    let s = setup().await;
    let a = FakeLink::new("10.0.0.1:7070");
    let b = FakeLink::new("10.0.0.2:7070");
    // `a` has no copy; `b` held the block before a membership change.
    b.answer_block(Ok(s.block(0, FillSource::Peer)));
    let members = FakeMembers::new(vec![None, Some(a.clone()), Some(b.clone())]);
    let ctx = s.ctx(0, false).await;
    let block = s
        .remote(members)
        .fetch(&ctx, &key(&ctx))
        .await
        .unwrap()
        .unwrap();
    // A neighbour's copy is this node's to hold from now on.
    assert_eq!(block.source, FillSource::Neighbour);
    assert_eq!(a.modes(), [PeerMode::Probe]);
    assert_eq!(b.modes(), [PeerMode::Probe]);
    assert_eq!(s.stats.peer.probe_hit.get(), 1);
    assert_eq!(s.stats.peer.probe_miss.get(), 1);
}

#[tokio::test]
async fn a_request_from_a_peer_is_never_forwarded_to_another_owner() {
    let s = setup().await;
    let owner = FakeLink::new("10.0.0.1:7070");
    let members = FakeMembers::new(vec![Some(owner.clone()), None]);
    let ctx = s.ctx(0, true).await;
    let got = s.remote(members).fetch(&ctx, &key(&ctx)).await.unwrap();
    assert!(got.is_none());
    // Only probed (does it hold a copy?), never asked to fill.
    assert_eq!(owner.modes(), [PeerMode::Probe]);
}

#[tokio::test]
async fn alone_nobody_is_asked() {
    let s = setup().await;
    let members = FakeMembers::new(vec![None]);
    let ctx = s.ctx(0, false).await;
    assert!(
        s.remote(members)
            .fetch(&ctx, &key(&ctx))
            .await
            .unwrap()
            .is_none()
    );
}

// ---- chains ----

async fn pull(
    s: &Setup,
    members: Arc<FakeMembers>,
    upstream: &[&str],
) -> (Result<FillSource>, Arc<Growing>) {
    let peers = s.peers(members, false);
    let ctx = s.ctx(1, true).await;
    let g = Growing::new(ctx.start, ctx.end - ctx.start);
    let upstream: Vec<String> = upstream.iter().map(|a| a.to_string()).collect();
    let got = peers.pull_chain(&ctx, &g, &upstream, CHUNK).await;
    (got, g)
}

fn assembled(s: &Setup, g: &Growing, source: FillSource) {
    let block = g.assemble(source).unwrap();
    assert_eq!(
        block.data,
        s.block(1, source).data,
        "the block arrived whole"
    );
    assert_eq!(block.crc32c, crc32c::crc32c(&block.data));
}

#[tokio::test]
async fn a_chain_takes_the_block_from_the_nearest_node_ahead() {
    let s = setup().await;
    let head = FakeLink::new("10.0.0.1:7070");
    let near = FakeLink::new("10.0.0.2:7070");
    near.answer_stream(Ok(s.chunks(1, 0, BS as usize)));
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![head.clone(), near.clone()];
    let (got, g) = pull(&s, members, &["10.0.0.1:7070", "10.0.0.2:7070"]).await;
    assert_eq!(got.unwrap(), FillSource::Chain);
    assembled(&s, &g, FillSource::Chain);
    assert_eq!(*near.asked.lock().unwrap(), [(PeerMode::Stream, 0)]);
    assert!(head.modes().is_empty());
    assert_eq!(s.stats.origin.get_requests.get(), 0);
    assert_eq!(s.stats.peer.chain_bytes_upstream.get(), BS);
}

#[tokio::test]
async fn a_node_that_fails_mid_block_is_cut_out_and_the_next_resumes_at_the_offset() {
    let s = setup().await;
    let head = FakeLink::new("10.0.0.1:7070");
    let near = FakeLink::new("10.0.0.2:7070");
    // The nearest node sends half the block, then its stream ends (it died).
    let half = BS as usize / 2;
    near.answer_stream(Ok(s.chunks(1, 0, half)));
    head.answer_stream(Ok(s.chunks(1, half, BS as usize)));
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![head.clone(), near.clone()];
    let (got, g) = pull(&s, members.clone(), &["10.0.0.1:7070", "10.0.0.2:7070"]).await;
    assert_eq!(got.unwrap(), FillSource::Chain);
    assembled(&s, &g, FillSource::Chain);
    assert_eq!(
        *head.asked.lock().unwrap(),
        [(PeerMode::Stream, half as u64)]
    );
    assert_eq!(members.reported(), ["10.0.0.2:7070"]);
    assert_eq!(s.stats.peer.chain_cutovers.get(), 1);
    assert_eq!(s.stats.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn a_damaged_chunk_is_asked_for_again_from_the_same_node() {
    let s = setup().await;
    let near = FakeLink::new("10.0.0.2:7070");
    let mut first = s.chunks(1, 0, BS as usize);
    // The second chunk arrives damaged: its checksum no longer matches.
    if let Frame::Data(c) = &mut first[1] {
        c.crc32c ^= 1;
    }
    near.answer_stream(Ok(first));
    near.answer_stream(Ok(s.chunks(1, CHUNK, BS as usize)));
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![near.clone()];
    let (got, g) = pull(&s, members.clone(), &["10.0.0.2:7070"]).await;
    assert_eq!(got.unwrap(), FillSource::Chain);
    assembled(&s, &g, FillSource::Chain);
    assert_eq!(
        *near.asked.lock().unwrap(),
        [(PeerMode::Stream, 0), (PeerMode::Stream, CHUNK as u64)]
    );
    assert!(members.reported().is_empty());
    assert_eq!(s.stats.peer.chain_resends.get(), 1);
    assert_eq!(s.stats.peer.checksum_failures.get(), 1);
}

#[tokio::test]
async fn a_node_that_keeps_sending_damaged_bytes_is_marked_down_and_the_origin_read() {
    let s = setup().await;
    let near = FakeLink::new("10.0.0.2:7070");
    for _ in 0..3 {
        let mut bad = s.chunks(1, 0, CHUNK);
        if let Frame::Data(c) = &mut bad[0] {
            c.crc32c ^= 1;
        }
        near.answer_stream(Ok(bad));
    }
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![near.clone()];
    let (got, g) = pull(&s, members.clone(), &["10.0.0.2:7070"]).await;
    assert_eq!(got.unwrap(), FillSource::Origin);
    assembled(&s, &g, FillSource::Origin);
    assert_eq!(near.modes().len(), 3);
    assert_eq!(members.reported(), ["10.0.0.2:7070"]);
    assert_eq!(s.stats.peer.chain_bytes_origin.get(), BS);
}

#[tokio::test]
async fn a_chain_skips_nodes_that_are_down_unknown_or_itself() {
    let s = setup().await;
    let down = FakeLink::new("10.0.0.3:7070");
    down.set_down();
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![down.clone()];
    // Upstream, nearest last: a node that is down, this node's own address, a stranger.
    let (got, g) = pull(
        &s,
        members,
        &["192.0.2.9:7070", "127.0.0.1:7000", "10.0.0.3:7070"],
    )
    .await;
    assert_eq!(got.unwrap(), FillSource::Origin);
    assembled(&s, &g, FillSource::Origin);
    assert!(down.modes().is_empty());
    // The down node and the stranger; this node is passed over without counting.
    assert_eq!(s.stats.peer.chain_cutovers.get(), 2);
}

#[tokio::test]
async fn a_definitive_answer_ahead_in_the_chain_ends_the_fill() {
    let s = setup().await;
    let near = FakeLink::new("10.0.0.2:7070");
    near.answer_stream(Ok(vec![Frame::Error(ErrorFrame {
        code: ErrorCode::NotFound,
        message: "object ds/shard not found at the origin".into(),
    })]));
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![near];
    let (got, _) = pull(&s, members, &["10.0.0.2:7070"]).await;
    let err = got.unwrap_err();
    assert_eq!(err.code(), ErrorCode::NotFound);
    assert_eq!(s.stats.origin.get_requests.get(), 0);
}

#[tokio::test]
async fn a_chunk_at_the_wrong_offset_cuts_the_node_out() {
    let s = setup().await;
    let near = FakeLink::new("10.0.0.2:7070");
    // Skips the first chunk.
    near.answer_stream(Ok(s.chunks(1, CHUNK, BS as usize)));
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().others = vec![near.clone()];
    let (got, g) = pull(&s, members.clone(), &["10.0.0.2:7070"]).await;
    assert_eq!(got.unwrap(), FillSource::Origin);
    assembled(&s, &g, FillSource::Origin);
    assert_eq!(members.reported(), ["10.0.0.2:7070"]);
}

// ---- who may ask ----

#[tokio::test]
async fn block_requests_are_taken_from_members_only() {
    let s = setup().await;
    let member: IpAddr = "10.0.0.1".parse().unwrap();
    let mut members = FakeMembers::new(vec![]);
    Arc::get_mut(&mut members).unwrap().member_ips = vec![member];
    let by_address = s.peers(members.clone(), false);
    let caller = |ip: &str, authenticated| Caller {
        name: format!("{ip}:5000"),
        ip: Some(ip.parse().unwrap()),
        authenticated,
    };
    assert!(by_address.allowed(&caller("10.0.0.1", false)).is_ok());
    let err = by_address.allowed(&caller("10.9.9.9", false)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Forbidden);
    assert!(err.to_string().contains("10.9.9.9:5000"), "{err}");
    let local = Caller {
        name: "local".into(),
        ip: None,
        authenticated: false,
    };
    assert!(by_address.allowed(&local).is_err());

    // With a cluster CA, an address is not enough: a member certificate is.
    let by_certificate = s.peers(members, true);
    assert!(by_certificate.allowed(&caller("10.0.0.1", false)).is_err());
    assert!(by_certificate.allowed(&caller("10.9.9.9", true)).is_ok());
    assert_eq!(s.stats.peer.refused.get(), 3);
}

#[tokio::test]
async fn a_peer_that_disagrees_on_the_block_size_is_refused() {
    let s = setup().await;
    let peers = s.peers(FakeMembers::new(vec![]), false);
    let version = s.origin.head("shard").await.unwrap();
    let mut req = request(&s.origin, "shard", &version, 0, PeerMode::Probe);
    req.block_size = 4096;
    let err = match peers.peer_block(req).await {
        Err(e) => e,
        Ok(_) => panic!("a block of another size was served"),
    };
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert!(err.to_string().contains("block size"), "{err}");
}

#[tokio::test]
async fn a_probe_answers_from_the_tiers_only_and_a_fill_reads_the_origin() {
    let s = setup().await;
    let peers = s.peers(FakeMembers::new(vec![]), false);
    let version = s.origin.head("shard").await.unwrap();
    let probe = request(&s.origin, "shard", &version, 0, PeerMode::Probe);
    assert!(matches!(
        peers.peer_block(probe.clone()).await,
        Err(Error::NotCached)
    ));
    assert_eq!(s.stats.origin.get_requests.get(), 0);
    let fill = request(&s.origin, "shard", &version, 0, PeerMode::Fill);
    let Ok(PeerAnswer::Data(chunk)) = peers.peer_block(fill).await else {
        panic!("a fill answers with the block");
    };
    assert!(chunk.verify());
    assert_eq!(chunk.data.len() as u64, BS);
    assert!(matches!(
        peers.peer_block(probe).await,
        Ok(PeerAnswer::Data(_))
    ));
    assert_eq!(s.stats.origin.get_requests.get(), 1);
}
