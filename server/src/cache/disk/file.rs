//! On-disk block files and object-version records. Blocking I/O: call from the blocking pool.
//!
//! A block file is a 32-byte header and the block's bytes:
//!
//! ```text
//! 0        8          16        20        28     32
//! | magic  | data len | crc32c  | index   | 0    | data …
//! ```
//!
//! Its name is derived from the block key only (`blocks/<2 hex>/<object id hex>-<index hex>.blk`),
//! never from anything a client sent. It is written under a temporary name, flushed with
//! `fdatasync`, then renamed into place, so a name that exists always points at a complete file;
//! the CRC32C is still checked on every read, which catches what the disk itself got wrong.
//! After writing and after reading, the file's pages are dropped from the page cache
//! (`POSIX_FADV_DONTNEED`): the RAM tier is the cache of hot blocks, and the kernel must not keep
//! a second, unbudgeted copy of everything that passes through the disk tier.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::cache::{Block, BlockKey, FillSource, ObjectId};
use crate::origin::Version;

const MAGIC: &[u8; 8] = b"SCBLK001";
pub const HEADER_LEN: u64 = 32;
const TMP_MARK: &str = ".tmp.";

/// Why a block file could not be used.
#[derive(Debug)]
pub enum ReadError {
    /// The file is gone (evicted or deleted meanwhile).
    Missing,
    /// The file is damaged: wrong header, wrong length, or a checksum mismatch.
    Corrupt(String),
    Io(io::Error),
}

pub fn block_path(root: &Path, key: &BlockKey) -> PathBuf {
    let hex = key.object.to_hex();
    root.join("blocks")
        .join(&hex[..2])
        .join(format!("{hex}-{:016x}.blk", key.index))
}

/// The block key a file name stands for, if it is a block file's name.
pub fn parse_block_name(name: &str) -> Option<BlockKey> {
    let stem = name.strip_suffix(".blk")?;
    let (hex, index) = stem.split_once('-')?;
    if hex.len() != 32 || index.len() != 16 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(BlockKey {
        object: ObjectId(id),
        index: u64::from_str_radix(index, 16).ok()?,
    })
}

pub fn is_temp_name(name: &str) -> bool {
    name.contains(TMP_MARK)
}

fn drop_cached_pages(file: &File) {
    // Advice only: a failure changes nothing about correctness.
    let _ = rustix::fs::fadvise(file, 0, None, rustix::fs::Advice::DontNeed);
}

/// Write `block` crash-safely; returns the file's size on disk.
pub fn write_block(root: &Path, key: &BlockKey, block: &Block) -> io::Result<u64> {
    write_block_opts(root, key, block, true)
}

/// [`write_block`], with the `fdatasync` optional: only for building test and benchmark
/// directories quickly, never for the serving path.
pub fn write_block_opts(root: &Path, key: &BlockKey, block: &Block, sync: bool) -> io::Result<u64> {
    let path = block_path(root, key);
    let dir = path.parent().expect("block paths have a parent");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        "{}{TMP_MARK}{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("block"),
        std::process::id()
    ));
    let result = (|| {
        let mut file = File::create(&tmp)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&(block.data.len() as u64).to_be_bytes());
        header[16..20].copy_from_slice(&block.crc32c.to_be_bytes());
        header[20..28].copy_from_slice(&key.index.to_be_bytes());
        file.write_all(&header)?;
        file.write_all(&block.data)?;
        if sync {
            rustix::fs::fdatasync(&file)?;
        }
        drop_cached_pages(&file);
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(HEADER_LEN + block.data.len() as u64)
}

/// Read and verify a block file.
pub fn read_block(root: &Path, key: &BlockKey) -> Result<Block, ReadError> {
    let path = block_path(root, key);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(e)),
    };
    let size = file.metadata().map_err(ReadError::Io)?.len();
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Corrupt("truncated header".into()),
        _ => ReadError::Io(e),
    })?;
    if &header[..8] != MAGIC {
        return Err(ReadError::Corrupt("bad magic".into()));
    }
    let len = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    let index = u64::from_be_bytes(header[20..28].try_into().expect("8 bytes"));
    if index != key.index || size != HEADER_LEN + len {
        return Err(ReadError::Corrupt(format!(
            "header says {len} bytes, file has {}",
            size - HEADER_LEN
        )));
    }
    // Read into uninitialised capacity: no zeroing pass over a multi-MiB buffer.
    let mut data = Vec::with_capacity(len as usize);
    (&mut file)
        .take(len)
        .read_to_end(&mut data)
        .map_err(ReadError::Io)?;
    if data.len() as u64 != len {
        return Err(ReadError::Corrupt(
            "file shorter than its header says".into(),
        ));
    }
    drop_cached_pages(&file);
    let block = Block {
        data: Bytes::from(data),
        crc32c: crc,
        source: FillSource::Disk,
    };
    if crc32c::crc32c(&block.data) != crc {
        return Err(ReadError::Corrupt("checksum mismatch".into()));
    }
    Ok(block)
}

pub fn remove_block(root: &Path, key: &BlockKey) -> io::Result<()> {
    match fs::remove_file(block_path(root, key)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Every block file under `root` with its size; temporary files left by a crash are deleted.
pub fn scan_blocks(root: &Path) -> io::Result<Vec<(BlockKey, u64)>> {
    let mut out = Vec::new();
    let blocks = root.join("blocks");
    let shards = match fs::read_dir(&blocks) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_temp_name(name) {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            let Some(key) = parse_block_name(name) else {
                continue;
            };
            let size = entry.metadata()?.len();
            if size < HEADER_LEN {
                let _ = fs::remove_file(entry.path());
                continue;
            }
            out.push((key, size));
        }
    }
    Ok(out)
}

fn version_path(root: &Path, dataset: &str, key: &str) -> PathBuf {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(dataset.len() as u64).to_be_bytes());
    ctx.update(dataset.as_bytes());
    ctx.update(key.as_bytes());
    let hex: String = ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    root.join("versions")
        .join(&hex[..2])
        .join(format!("{hex}.ver"))
}

/// Remember an object's version (for immutable datasets, served after a restart without a HEAD).
/// The record repeats dataset and key, so a hash collision is detected on load.
pub fn write_version(root: &Path, dataset: &str, key: &str, v: &Version) -> io::Result<()> {
    let path = version_path(root, dataset, key);
    let dir = path.parent().expect("version paths have a parent");
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("ver{TMP_MARK}{}", std::process::id()));
    let text = format!(
        "{}\n{}\n{}\n{}\n{}\n",
        dataset, key, v.size, v.last_modified_ms, v.etag
    );
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        rustix::fs::fdatasync(&file)?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

pub fn read_version(root: &Path, dataset: &str, key: &str) -> Option<Version> {
    let text = fs::read_to_string(version_path(root, dataset, key)).ok()?;
    let mut lines = text.split('\n');
    if lines.next()? != dataset || lines.next()? != key {
        return None;
    }
    let size = lines.next()?.parse().ok()?;
    let last_modified_ms = lines.next()?.parse().ok()?;
    let etag = lines.next()?.to_string();
    Some(Version {
        size,
        etag,
        last_modified_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockKey {
        BlockKey {
            object: ObjectId([0xab; 16]),
            index: i,
        }
    }

    #[test]
    fn blocks_roundtrip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let block = Block::new(Bytes::from(vec![5u8; 10_000]));
        let size = write_block(dir.path(), &key(3), &block).unwrap();
        assert_eq!(size, HEADER_LEN + 10_000);
        let got = read_block(dir.path(), &key(3)).unwrap();
        assert_eq!(got.data, block.data);
        assert_eq!(
            parse_block_name(
                block_path(dir.path(), &key(3))
                    .file_name()
                    .unwrap()
                    .to_str()
                    .unwrap()
            ),
            Some(key(3))
        );

        // A flipped byte.
        let path = block_path(dir.path(), &key(3));
        let mut raw = fs::read(&path).unwrap();
        raw[HEADER_LEN as usize + 77] ^= 0x40;
        fs::write(&path, &raw).unwrap();
        assert!(matches!(
            read_block(dir.path(), &key(3)),
            Err(ReadError::Corrupt(_))
        ));
        // A truncated file.
        fs::write(&path, &raw[..500]).unwrap();
        assert!(matches!(
            read_block(dir.path(), &key(3)),
            Err(ReadError::Corrupt(_))
        ));
        assert!(matches!(
            read_block(dir.path(), &key(4)),
            Err(ReadError::Missing)
        ));
    }

    #[test]
    fn scan_finds_blocks_and_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            write_block(
                dir.path(),
                &key(i),
                &Block::new(Bytes::from(vec![1u8; 100])),
            )
            .unwrap();
        }
        let stray = block_path(dir.path(), &key(9)).with_extension("blk.tmp.123");
        fs::write(&stray, b"half a block").unwrap();
        let mut found = scan_blocks(dir.path()).unwrap();
        found.sort();
        assert_eq!(found.len(), 5);
        assert!(found.iter().all(|(_, size)| *size == HEADER_LEN + 100));
        assert!(!stray.exists());
    }

    #[test]
    fn versions_roundtrip() {
        let dir = tempfile::tempdir().unwrap();
        let v = Version {
            size: 42,
            etag: "\"abc\"".into(),
            last_modified_ms: 7,
        };
        write_version(dir.path(), "ds", "a/b", &v).unwrap();
        assert_eq!(read_version(dir.path(), "ds", "a/b"), Some(v));
        assert_eq!(read_version(dir.path(), "ds", "a/c"), None);
    }
}
