//! Block identity.

use bytes::Bytes;

use crate::origin::{Origin, Version};

/// Identity of one version of one object cut into blocks of one size: the first 128 bits of
/// SHA-256(dataset, key, etag, size, block size). Nothing a client sends is used as a name
/// anywhere else; a dataset whose block size changes over a kept disk tier never finds the old
/// blocks under the new identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    /// The identity of `key` at `version` in `origin`'s dataset, at the dataset's block size.
    pub fn of(origin: &Origin, key: &str, version: &Version) -> ObjectId {
        ObjectId::new(origin.dataset(), key, version, origin.settings().block_size)
    }

    pub fn new(dataset: &str, key: &str, version: &Version, block_size: u64) -> ObjectId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [dataset.as_bytes(), key.as_bytes(), version.etag.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(&version.size.to_be_bytes());
        ctx.update(&block_size.to_be_bytes());
        let digest = ctx.finish();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest.as_ref()[..16]);
        ObjectId(id)
    }

    /// The key of block `index` of this object version.
    pub fn block(self, index: u64) -> BlockKey {
        BlockKey {
            object: self,
            index,
        }
    }

    /// Lowercase hex, for file names and logs.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// One block of one object version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    pub object: ObjectId,
    pub index: u64,
}

/// Where a block's bytes were read from when it was filled into RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillSource {
    Origin,
    Disk,
    /// The block's owner in the cluster: a copy, kept only in RAM.
    Peer,
    /// A neighbour that held it: this node fills the block as its holder.
    Neighbour,
    /// The node ahead of this one in a chain distribution.
    Chain,
}

/// A cached block: its bytes and their CRC32C.
#[derive(Debug, Clone)]
pub struct Block {
    pub data: Bytes,
    pub crc32c: u32,
    pub source: FillSource,
}

impl Block {
    /// A block fetched from the origin, checksummed now (call off the async threads for large
    /// blocks).
    pub fn new(data: Bytes) -> Block {
        let crc32c = crc32c::crc32c(&data);
        Block {
            data,
            crc32c,
            source: FillSource::Origin,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `[from, to)` of the block with its CRC32C, computed over the bytes in memory and checked
    /// against the block's own CRC (the one it has carried since its bytes entered the cluster)
    /// by combining the CRCs of the parts before, inside and after the range. Memory damaged
    /// since is caught here rather than sent under a freshly computed, valid-looking checksum.
    /// Costs one CRC pass over the whole block (call off the async threads for large blocks).
    pub fn verified_range(&self, from: usize, to: usize) -> Result<(Bytes, u32), Damaged> {
        let parts = self.verified_chunks(from, to, to.saturating_sub(from).max(1))?;
        Ok(parts
            .into_iter()
            .next()
            .map_or((Bytes::new(), 0), |(_, d, c)| (d, c)))
    }

    /// `[from, to)` cut into chunks of `chunk` bytes (`(offset in block, bytes, CRC32C)`), every
    /// CRC computed over memory and all of them checked together against the block's CRC, as in
    /// [`Block::verified_range`].
    pub fn verified_chunks(
        &self,
        from: usize,
        to: usize,
        chunk: usize,
    ) -> Result<Vec<(usize, Bytes, u32)>, Damaged> {
        let len = self.data.len();
        if from > to || to > len || chunk == 0 {
            return Err(Damaged {
                reason: format!("range {from}..{to} of a block of {len} bytes"),
            });
        }
        let mut combined = crc32c::crc32c(&self.data[..from]);
        let mut out = Vec::new();
        let mut at = from;
        while at < to {
            let end = (at + chunk).min(to);
            let data = self.data.slice(at..end);
            let crc = crc32c::crc32c(&data);
            combined = crc32c::crc32c_combine(combined, crc, data.len());
            out.push((at, data, crc));
            at = end;
        }
        let tail = &self.data[to..];
        combined = crc32c::crc32c_combine(combined, crc32c::crc32c(tail), tail.len());
        if combined != self.crc32c {
            return Err(Damaged {
                reason: format!(
                    "a block of {len} bytes no longer matches the CRC32C it was stored with ({:#010x}, now {combined:#010x})",
                    self.crc32c
                ),
            });
        }
        Ok(out)
    }

    /// A copy of this block with one bit of its bytes flipped and its CRC kept: memory damage,
    /// for tests of the checks above.
    #[doc(hidden)]
    pub fn damaged_copy(&self) -> Block {
        let mut bytes = self.data.to_vec();
        if let Some(b) = bytes.get_mut(self.data.len() / 2) {
            *b ^= 0x10;
        }
        Block {
            data: bytes.into(),
            ..self.clone()
        }
    }
}

/// A held block whose bytes no longer match its CRC.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct Damaged {
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(etag: &str, size: u64) -> Version {
        Version {
            size,
            etag: etag.into(),
            last_modified_ms: 0,
        }
    }

    #[test]
    fn ids_separate_datasets_keys_and_versions() {
        let a = ObjectId::new("ds", "k", &v("e1", 10), 4096);
        assert_eq!(a, ObjectId::new("ds", "k", &v("e1", 10), 4096));
        assert_ne!(a, ObjectId::new("ds", "k", &v("e2", 10), 4096));
        assert_ne!(a, ObjectId::new("ds", "k", &v("e1", 11), 4096));
        assert_ne!(a, ObjectId::new("ds2", "k", &v("e1", 10), 4096));
        // Another block size is another identity: blocks cut at other boundaries never match.
        assert_ne!(a, ObjectId::new("ds", "k", &v("e1", 10), 8192));
        // Length prefixes keep ("a", "bc") and ("ab", "c") apart.
        assert_ne!(
            ObjectId::new("a", "bc", &v("", 0), 4096),
            ObjectId::new("ab", "c", &v("", 0), 4096)
        );
        assert_eq!(a.to_hex().len(), 32);
    }

    #[test]
    fn ranges_are_checked_against_the_blocks_crc() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let block = Block::new(Bytes::from(data.clone()));
        let (part, crc) = block.verified_range(1000, 3000).unwrap();
        assert_eq!(&part[..], &data[1000..3000]);
        assert_eq!(crc, crc32c::crc32c(&data[1000..3000]));
        let chunks = block.verified_chunks(500, 10_000, 4096).unwrap();
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].0, 500);
        assert!(chunks.iter().all(|(_, d, c)| crc32c::crc32c(d) == *c));
        assert!(block.verified_range(0, 10_000).is_ok());
        assert!(block.verified_range(10_000, 10_000).is_ok());
        // A flipped bit anywhere in the block, inside the range or not, is caught.
        let damaged = block.damaged_copy();
        assert!(damaged.verified_range(0, 100).is_err());
        assert!(damaged.verified_range(6000, 9000).is_err());
        assert!(damaged.verified_chunks(0, 10_000, 1024).is_err());
        assert!(block.verified_range(5, 10_001).is_err());
    }
}
