//! Block identity.

use bytes::Bytes;

use crate::origin::Version;

/// Identity of one version of one object: the first 128 bits of
/// SHA-256(dataset, key, etag, size). Nothing a client sends is used as a name anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId(pub [u8; 16]);

impl ObjectId {
    pub fn new(dataset: &str, key: &str, version: &Version) -> ObjectId {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [dataset.as_bytes(), key.as_bytes(), version.etag.as_bytes()] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        ctx.update(&version.size.to_be_bytes());
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
        let a = ObjectId::new("ds", "k", &v("e1", 10));
        assert_eq!(a, ObjectId::new("ds", "k", &v("e1", 10)));
        assert_ne!(a, ObjectId::new("ds", "k", &v("e2", 10)));
        assert_ne!(a, ObjectId::new("ds", "k", &v("e1", 11)));
        assert_ne!(a, ObjectId::new("ds2", "k", &v("e1", 10)));
        // Length prefixes keep ("a", "bc") and ("ab", "c") apart.
        assert_ne!(
            ObjectId::new("a", "bc", &v("", 0)),
            ObjectId::new("ab", "c", &v("", 0))
        );
        assert_eq!(a.to_hex().len(), 32);
    }
}
