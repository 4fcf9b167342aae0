use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

fn roundtrip(framed: Framed) {
    let enc = encode(&framed);
    let mut buf = BytesMut::from(&enc.to_vec()[..]);
    let got = decode(&mut buf, MAX_RESPONSE_PAYLOAD).expect("decodes");
    assert_eq!(got, framed);
    assert!(buf.is_empty());
}

fn arb_info() -> impl Strategy<Value = ObjectInfo> {
    (any::<u64>(), ".{0,40}", any::<i64>(), any::<u32>()).prop_map(
        |(size, etag, last_modified_ms, block_size)| ObjectInfo {
            size,
            etag,
            last_modified_ms,
            block_size,
        },
    )
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (
            ".{0,200}",
            any::<u64>(),
            proptest::option::of(0..u64::MAX),
            proptest::option::of(".{0,40}")
        )
            .prop_map(|(path, offset, length, if_match)| Frame::Read(ReadRequest {
                path,
                offset,
                length,
                if_match
            })),
        ".{0,200}".prop_map(|path| Frame::Stat(StatRequest { path })),
        arb_info().prop_map(Frame::StatOk),
        (arb_info(), any::<u64>(), any::<u64>()).prop_map(|(info, offset, length)| {
            Frame::ReadStart(ReadStart {
                info,
                offset,
                length,
            })
        }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..4096)
        )
            .prop_map(|(offset, data)| Frame::Data(DataChunk::new(offset, Bytes::from(data)))),
        any::<u64>().prop_map(|size| Frame::Register(Register { size })),
        proptest::collection::vec(".{0,40}", 0..10)
            .prop_map(|paths| Frame::Prefetch(Prefetch { paths })),
        any::<u32>().prop_map(|accepted| Frame::Prefetched(Prefetched { accepted })),
        (
            ".{0,100}",
            ".{0,40}",
            any::<u64>(),
            any::<i64>(),
            any::<u32>(),
            any::<u64>(),
            0u8..7,
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec("[a-z0-9.:]{1,30}", 0..5)
            )
        )
            .prop_map(
                |(path, etag, size, last_modified_ms, block_size, index, probe, chain)| {
                    let mode = PeerMode::from_u8(probe).expect("mode in range");
                    let (chunk_size, offset, upstream) =
                        if matches!(mode, PeerMode::Chain | PeerMode::Stream) {
                            chain
                        } else {
                            (0, 0, Vec::new())
                        };
                    Frame::PeerBlock(PeerBlock {
                        path,
                        etag,
                        size,
                        last_modified_ms,
                        block_size,
                        index,
                        mode,
                        chunk_size,
                        offset,
                        upstream,
                    })
                }
            ),
        ".{0,40}".prop_map(|from| Frame::Ping(Ping { from })),
        ".{0,40}".prop_map(|client| Frame::Hello(Hello { client })),
        "[!-~]{0,80}".prop_map(|token| Frame::Auth(Auth { token })),
        (".{0,20}", any::<bool>(), any::<bool>(), any::<[u8; 32]>()).prop_map(
            |(node_id, nonce, proof, bytes)| {
                let pick = |on: bool| if on { bytes.to_vec() } else { Vec::new() };
                Frame::PeerAuth(PeerAuth {
                    node_id,
                    nonce: pick(nonce),
                    proof: pick(proof),
                })
            }
        ),
        (".{0,20}", any::<[u8; 32]>()).prop_map(|(node_id, b)| Frame::PeerChallenge(PeerAuth {
            node_id,
            nonce: b.to_vec(),
            proof: b.to_vec(),
        })),
        proptest::collection::vec("[a-z*]{1,12}", 0..8)
            .prop_map(|datasets| Frame::AuthOk(AuthOk { datasets })),
        (".{0,40}", any::<u64>(), ".{0,20}", ".{0,60}").prop_map(
            |(node_id, instance, version, control)| Frame::ServerInfo(ServerInfo {
                node_id,
                instance,
                version,
                control
            })
        ),
        (any::<bool>(), any::<bool>(), any::<u64>(), any::<u32>()).prop_map(
            |(was_present, present, len, crc32c)| Frame::BlockState(BlockState {
                was_present,
                present,
                len,
                crc32c
            })
        ),
        (".{0,40}", any::<u64>(), any::<u32>()).prop_map(|(node_id, instance, weight)| {
            Frame::Pong(Pong {
                node_id,
                instance,
                weight,
                ram_used: instance / 3,
                disk_capacity: u64::from(weight),
                ..Pong::default()
            })
        }),
        (any::<u64>(), any::<u64>())
            .prop_map(|(size, max_region)| Frame::Registered(Registered { size, max_region })),
        (".{0,100}", any::<u64>(), any::<u64>()).prop_map(|(path, offset, region_offset)| {
            Frame::ReadInto(ReadInto {
                read: ReadRequest {
                    path,
                    offset,
                    length: Some(7),
                    if_match: None,
                },
                region_offset,
            })
        }),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u32>()).prop_map(
            |(offset, region_offset, len, crc32c)| Frame::Placed(Placed {
                offset,
                region_offset,
                len,
                crc32c
            })
        ),
        (any::<u16>(), ".{0,200}").prop_map(|(code, message)| Frame::Error(ErrorFrame {
            code: ErrorCode::from_u16(code),
            message
        })),
    ]
}

proptest! {
    #[test]
    fn every_frame_roundtrips(request_id in any::<u32>(), frame in arb_frame()) {
        roundtrip(Framed { request_id, frame });
    }

    #[test]
    fn frames_split_anywhere_reassemble(frames in proptest::collection::vec(arb_frame(), 1..8), cut in any::<prop::sample::Index>()) {
        let mut wire = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            wire.extend(encode(&Framed { request_id: i as u32, frame: frame.clone() }).to_vec());
        }
        let cut = cut.index(wire.len() + 1);
        let mut codec = FrameCodec::new(MAX_RESPONSE_PAYLOAD);
        let mut got = Vec::new();
        for part in [&wire[..cut], &wire[cut..]] {
            codec.buffer_mut().extend_from_slice(part);
            while let Some(f) = codec.next_frame().expect("valid stream") {
                got.push(f.frame);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(codec.buffered(), 0);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
        codec.buffer_mut().extend_from_slice(&bytes);
        // Either frames, an incomplete tail, or an error: never a panic or a hang.
        for _ in 0..bytes.len() + 1 {
            match codec.next_frame() {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn random_payloads_behind_valid_headers_never_panic(kind in prop::sample::select(vec![T_READ, T_STAT, T_STAT_OK, T_READ_START, T_DATA, T_ERROR, T_REGISTER, T_REGISTERED, T_READ_INTO, T_PLACED, T_PREFETCH, T_PREFETCHED, T_PEER_BLOCK, T_PING, T_PONG, T_BLOCK_STATE, T_HELLO, T_SERVER_INFO, T_AUTH, T_AUTH_OK, T_PEER_AUTH, T_PEER_CHALLENGE]), payload in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut buf = BytesMut::new();
        buf.put_u8(VERSION);
        buf.put_u8(kind);
        buf.put_u16(0);
        buf.put_u32(7);
        buf.put_u32(payload.len() as u32);
        buf.extend_from_slice(&payload);
        let _ = decode(&mut buf, MAX_REQUEST_PAYLOAD);
    }
}

#[test]
fn oversized_header_is_rejected_before_payload_arrives() {
    let mut buf = BytesMut::new();
    buf.put_u8(VERSION);
    buf.put_u8(T_READ);
    buf.put_u16(0);
    buf.put_u32(1);
    buf.put_u32(u32::MAX);
    assert_eq!(
        decode(&mut buf, MAX_REQUEST_PAYLOAD),
        Err(DecodeError::TooLarge {
            len: u32::MAX as usize,
            limit: MAX_REQUEST_PAYLOAD
        })
    );
}

#[test]
fn incomplete_consumes_nothing() {
    let enc = encode(&Framed {
        request_id: 3,
        frame: Frame::Stat(StatRequest {
            path: "ds/key".into(),
        }),
    })
    .to_vec();
    for cut in 0..enc.len() {
        let mut buf = BytesMut::from(&enc[..cut]);
        let err = decode(&mut buf, MAX_REQUEST_PAYLOAD).unwrap_err();
        assert!(err.is_incomplete(), "cut {cut}: {err}");
        assert_eq!(buf.len(), cut);
    }
}

#[test]
fn wrong_version_and_type_are_errors() {
    let mut enc = encode(&Framed {
        request_id: 3,
        frame: Frame::Stat(StatRequest {
            path: "ds/key".into(),
        }),
    })
    .to_vec();
    enc[0] = 9;
    assert_eq!(
        decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
        Err(DecodeError::Version { version: 9 })
    );
    enc[0] = VERSION;
    enc[1] = 0x55;
    assert_eq!(
        decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
        Err(DecodeError::UnknownType { kind: 0x55 })
    );
}

#[test]
fn chain_fields_travel_only_with_chain_modes_and_are_bounded() {
    let block = |mode, upstream: Vec<String>| PeerBlock {
        path: "ds/k".into(),
        etag: "e".into(),
        size: 10,
        last_modified_ms: 0,
        block_size: 4,
        index: 1,
        mode,
        chunk_size: 2,
        offset: 1,
        upstream,
    };
    let len = |b: PeerBlock| {
        encode(&Framed {
            request_id: 1,
            frame: Frame::PeerBlock(b),
        })
        .to_vec()
        .len()
    };
    // A fill carries no chain fields (the frame older members send and expect).
    let plain = len(block(PeerMode::Fill, Vec::new()));
    assert_eq!(len(block(PeerMode::Stream, Vec::new())), plain + 4 + 8 + 2);
    roundtrip(Framed {
        request_id: 1,
        frame: Frame::PeerBlock(block(PeerMode::Chain, vec!["10.0.0.1:7070".into(); 3])),
    });
    // Too many nodes ahead: refused, not allocated.
    let mut enc = encode(&Framed {
        request_id: 1,
        frame: Frame::PeerBlock(block(PeerMode::Chain, Vec::new())),
    })
    .to_vec();
    let n = enc.len();
    enc[n - 2..].copy_from_slice(&(MAX_CHAIN_UPSTREAM as u16 + 1).to_be_bytes());
    assert!(matches!(
        decode(&mut BytesMut::from(&enc[..]), MAX_REQUEST_PAYLOAD),
        Err(DecodeError::Malformed { .. })
    ));
}

#[test]
fn data_checksum_detects_a_flipped_bit() {
    let mut chunk = DataChunk::new(0, Bytes::from_static(b"training shard bytes"));
    assert!(chunk.verify());
    let mut raw = chunk.data.to_vec();
    raw[3] ^= 0x10;
    chunk.data = Bytes::from(raw);
    assert!(!chunk.verify());
}
