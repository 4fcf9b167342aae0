//! Encoding: a [`Framed`] into its header and fields, the data bytes of a chunk kept apart.

use bytes::{BufMut, Bytes, BytesMut};

use super::{
    Frame, Framed, HEADER_LEN, MAX_AUTH_DATASETS, MAX_CHAIN_UPSTREAM, MAX_PREFETCH_PATHS,
    ObjectInfo, PEER_AUTH_LEN, ReadRequest, VERSION,
};

/// An encoded frame as two buffers, so a data chunk leaves in one vectored write without being
/// copied next to its header.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Header and fixed fields.
    pub head: Bytes,
    /// Data bytes of a [`Frame::Data`]; empty otherwise.
    pub body: Bytes,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Both parts copied into one buffer (tests, small frames).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out
    }
}

/// Encode a frame. Panics only on caller bugs that no input can cause: strings longer than
/// `u16::MAX` bytes are truncated at a character boundary instead.
pub fn encode(framed: &Framed) -> Encoded {
    let mut fields = BytesMut::with_capacity(64);
    let mut body = Bytes::new();
    match &framed.frame {
        Frame::Read(r) => put_read(&mut fields, r),
        Frame::ReadInto(r) => {
            fields.put_u64(r.region_offset);
            put_read(&mut fields, &r.read);
        }
        Frame::Register(r) => fields.put_u64(r.size),
        Frame::Registered(r) => {
            fields.put_u64(r.size);
            fields.put_u64(r.max_region);
        }
        Frame::Prefetch(p) => {
            fields.put_u16(p.paths.len().min(MAX_PREFETCH_PATHS) as u16);
            for path in p.paths.iter().take(MAX_PREFETCH_PATHS) {
                put_str(&mut fields, path);
            }
        }
        Frame::Prefetched(p) => fields.put_u32(p.accepted),
        Frame::PeerBlock(b) => {
            fields.put_u64(b.size);
            fields.put_i64(b.last_modified_ms);
            fields.put_u32(b.block_size);
            fields.put_u64(b.index);
            fields.put_u8(b.mode.to_u8());
            put_str(&mut fields, &b.path);
            put_str(&mut fields, &b.etag);
            if b.is_chain() {
                fields.put_u32(b.chunk_size);
                fields.put_u64(b.offset);
                let n = b.upstream.len().min(MAX_CHAIN_UPSTREAM);
                fields.put_u16(n as u16);
                for addr in b.upstream.iter().take(n) {
                    put_str(&mut fields, addr);
                }
            }
        }
        Frame::Ping(p) => put_str(&mut fields, &p.from),
        Frame::Hello(h) => put_str(&mut fields, &h.client),
        Frame::Auth(a) => put_str(&mut fields, &a.token),
        Frame::PeerAuth(a) | Frame::PeerChallenge(a) => {
            put_str(&mut fields, &a.node_id);
            for bytes in [&a.nonce, &a.proof] {
                let n = bytes.len().min(PEER_AUTH_LEN);
                fields.put_u8(n as u8);
                fields.extend_from_slice(&bytes[..n]);
            }
        }
        Frame::AuthOk(a) => {
            let n = a.datasets.len().min(MAX_AUTH_DATASETS);
            fields.put_u16(n as u16);
            for d in a.datasets.iter().take(n) {
                put_str(&mut fields, d);
            }
        }
        Frame::ServerInfo(i) => {
            fields.put_u64(i.instance);
            put_str(&mut fields, &i.node_id);
            put_str(&mut fields, &i.version);
            put_str(&mut fields, &i.control);
        }
        Frame::BlockState(b) => {
            fields.put_u8(u8::from(b.was_present) | (u8::from(b.present) << 1));
            fields.put_u64(b.len);
            fields.put_u32(b.crc32c);
        }
        Frame::Pong(p) => {
            fields.put_u64(p.instance);
            fields.put_u32(p.weight);
            for n in [p.ram_used, p.ram_capacity, p.disk_used, p.disk_capacity] {
                fields.put_u64(n);
            }
            put_str(&mut fields, &p.node_id);
        }
        Frame::Placed(p) => {
            fields.put_u64(p.offset);
            fields.put_u64(p.region_offset);
            fields.put_u64(p.len);
            fields.put_u32(p.crc32c);
        }
        Frame::Stat(s) => put_str(&mut fields, &s.path),
        Frame::StatOk(info) => put_info(&mut fields, info),
        Frame::ReadStart(s) => {
            put_info(&mut fields, &s.info);
            fields.put_u64(s.offset);
            fields.put_u64(s.length);
        }
        Frame::Data(d) => {
            fields.put_u64(d.offset);
            fields.put_u32(d.crc32c);
            body = d.data.clone();
        }
        Frame::Error(e) => {
            fields.put_u16(e.code.as_u16());
            put_str(&mut fields, &e.message);
        }
    }
    let payload_len = fields.len() + body.len();
    let mut head = BytesMut::with_capacity(HEADER_LEN + fields.len());
    head.put_u8(VERSION);
    head.put_u8(framed.frame.kind());
    head.put_u16(0);
    head.put_u32(framed.request_id);
    head.put_u32(u32::try_from(payload_len).unwrap_or(u32::MAX));
    head.extend_from_slice(&fields);
    Encoded {
        head: head.freeze(),
        body,
    }
}

fn put_str(buf: &mut BytesMut, s: &str) {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.extend_from_slice(&s.as_bytes()[..end]);
}

fn put_read(buf: &mut BytesMut, r: &ReadRequest) {
    buf.put_u64(r.offset);
    buf.put_u64(r.length.unwrap_or(u64::MAX));
    put_str(buf, &r.path);
    put_str(buf, r.if_match.as_deref().unwrap_or(""));
    buf.put_u8(u8::from(r.if_match.is_some()));
}

fn put_info(buf: &mut BytesMut, info: &ObjectInfo) {
    buf.put_u64(info.size);
    put_str(buf, &info.etag);
    buf.put_i64(info.last_modified_ms);
    buf.put_u32(info.block_size);
}
