//! shardcache-mem through its public API, as the client and the server use it: one memfd mapped
//! twice, seals, the server's refusals, bounds, unmapping, and the mlock fallback.

use std::os::fd::OwnedFd;

use shardcache_mem::memfd::{self, BUFFER_SEALS};
use shardcache_mem::{Errno, MapError, PinError, PinnedMemfd, Pinning, SealFlags, SharedMap};

fn unsealed(len: u64) -> OwnedFd {
    let fd = memfd::create("shardcache-mem-test").unwrap();
    memfd::set_len(&fd, len).unwrap();
    fd
}

/// The lines of this process's memory map that name the memfd `name`.
fn mapped(name: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let needle = format!("/memfd:{name} ");
    maps.lines()
        .filter(|l| format!("{l} ").contains(&needle))
        .count()
}

#[test]
fn client_and_server_mappings_share_the_bytes() {
    // The client's buffer, and the server's mapping of the fd the client sends.
    let mut client = PinnedMemfd::new("shardcache-mem-shared", 3 * 4096, Pinning::Preferred)
        .expect("client buffer");
    assert_eq!(client.len(), 3 * 4096);
    assert!(
        client.as_slice().iter().all(|&b| b == 0),
        "a new memfd reads as zeros"
    );
    let server = SharedMap::map(client.fd(), client.len()).expect("server mapping");
    assert_eq!(server.len(), client.len());

    // Server writes (block copies into the region), client reads.
    server.write_at(0, b"first block").unwrap();
    server.write_at(4096 * 3 - 4, b"tail").unwrap();
    assert_eq!(&client.as_slice()[..11], b"first block");
    assert_eq!(&client.as_slice()[4096 * 3 - 4..], b"tail");

    // Client writes, server reads.
    client.as_mut_slice()[5000..5005].copy_from_slice(b"hello");
    let mut out = [0u8; 5];
    server.read_at(5000, &mut out).unwrap();
    assert_eq!(&out, b"hello");

    // The server's mapping outlives the client's buffer (a client that exits mid-read).
    drop(client);
    server.write_at(100, &[7; 100]).unwrap();
    let mut out = [0u8; 100];
    server.read_at(100, &mut out).unwrap();
    assert_eq!(out, [7; 100]);
}

#[test]
fn two_mappings_of_one_sealed_memfd() {
    let fd = memfd::create_sealed("shardcache-mem-two", 8192).unwrap();
    let a = SharedMap::map(&fd, 8192).unwrap();
    let b = SharedMap::map(&fd, 4096).unwrap(); // a prefix is fine
    a.write_at(4000, &[9; 96]).unwrap();
    let mut out = [0u8; 96];
    b.read_at(4000, &mut out).unwrap();
    assert_eq!(out, [9; 96]);
}

#[test]
fn buffers_are_sealed_for_good() {
    let fd = memfd::create_sealed("shardcache-mem-seals", 4096).unwrap();
    let seals = memfd::seals(&fd).unwrap();
    assert!(seals.contains(BUFFER_SEALS));
    assert!(seals.contains(SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL));
    assert_eq!(memfd::len(&fd).unwrap(), 4096);
    // Neither shrinking nor growing, nor removing the seals (F_SEAL_SEAL: no more seals either).
    assert_eq!(memfd::set_len(&fd, 0), Err(Errno::PERM));
    assert_eq!(memfd::set_len(&fd, 8192), Err(Errno::PERM));
    assert_eq!(memfd::add_seals(&fd, SealFlags::WRITE), Err(Errno::PERM));

    let buf = PinnedMemfd::new("shardcache-mem-seals", 4096, Pinning::Preferred).unwrap();
    assert!(memfd::seals(buf.fd()).unwrap().contains(BUFFER_SEALS));
    assert_eq!(memfd::len(buf.fd()).unwrap(), 4096);

    // A fresh memfd has no seals until given some.
    let fd = unsealed(4096);
    assert!(!memfd::seals(&fd).unwrap().contains(SealFlags::SHRINK));
    memfd::add_seals(&fd, SealFlags::SHRINK).unwrap();
    assert!(memfd::seals(&fd).unwrap().contains(SealFlags::SHRINK));
}

#[test]
fn unsealed_small_empty_or_plain_files_are_refused() {
    assert!(matches!(
        SharedMap::map(unsealed(4096), 4096),
        Err(MapError::NotSealed)
    ));
    // Sealed against growing only: it could still shrink under the mapping.
    let fd = unsealed(4096);
    memfd::add_seals(&fd, SealFlags::GROW).unwrap();
    assert!(matches!(
        SharedMap::map(&fd, 4096),
        Err(MapError::NotSealed)
    ));
    let fd = memfd::create_sealed("shardcache-mem-small", 4096).unwrap();
    match SharedMap::map(&fd, 8192) {
        Err(MapError::TooSmall { file_len, len }) => assert_eq!((file_len, len), (4096, 8192)),
        other => panic!("expected TooSmall, got {other:?}"),
    }
    assert!(matches!(SharedMap::map(&fd, 0), Err(MapError::Empty)));
    let file = tempfile::tempfile().unwrap();
    file.set_len(4096).unwrap();
    assert!(
        matches!(SharedMap::map(&file, 4096), Err(MapError::NotSealable(_))),
        "a plain file cannot be sealed"
    );
    assert!(matches!(
        PinnedMemfd::new("shardcache-mem-empty", 0, Pinning::Preferred),
        Err(PinError::Empty)
    ));
}

#[test]
fn copies_are_bounds_checked() {
    let fd = memfd::create_sealed("shardcache-mem-bounds", 4096).unwrap();
    let map = SharedMap::map(&fd, 4096).unwrap();
    map.write_at(0, &[1; 4096]).unwrap();
    map.write_at(4000, &[2; 96]).unwrap();
    map.write_at(4096, &[]).unwrap();
    let e = map.write_at(4001, &[2; 96]).unwrap_err();
    assert_eq!((e.at, e.len, e.map_len), (4001, 96, 4096));
    assert!(
        map.write_at(u64::MAX - 2, &[2; 8]).is_err(),
        "no wrap-around"
    );
    assert!(map.read_at(4090, &mut [0; 7]).is_err());
    assert!(map.read_at(u64::MAX, &mut [0; 1]).is_err());
    assert!(map.fits(0, 4096) && map.fits(4096, 0));
    assert!(!map.fits(u64::MAX, 2) && !map.fits(1, 4096));
    let mut out = [0u8; 4];
    map.read_at(3998, &mut out).unwrap();
    assert_eq!(out, [1, 1, 2, 2]);
}

#[test]
fn dropping_unmaps() {
    let name = "shardcache-mem-unmap";
    let buf = PinnedMemfd::new(name, 1 << 20, Pinning::Preferred).unwrap();
    let server = SharedMap::map(buf.fd(), buf.len()).unwrap();
    assert_eq!(mapped(name), 2);
    drop(server);
    assert_eq!(mapped(name), 1);
    drop(buf);
    assert_eq!(mapped(name), 0);
}

#[test]
fn locks_where_allowed_and_unlocks() {
    let mut buf = PinnedMemfd::new("shardcache-mem-lock", 1 << 16, Pinning::Preferred).unwrap();
    let was_locked = buf.is_locked();
    buf.unlock();
    assert!(!buf.is_locked());
    buf.unlock(); // twice is nothing
    buf.as_mut_slice()[0] = 1;
    assert_eq!(buf.as_slice()[0], 1);
    if was_locked {
        // Then locking is allowed here, so a required lock succeeds too.
        let required = PinnedMemfd::new("shardcache-mem-lock", 1 << 16, Pinning::Required).unwrap();
        assert!(required.is_locked());
    }
}

/// Run in a child process of this test binary, which takes away both ways to lock memory
/// (RLIMIT_MEMLOCK of 0, and CAP_IPC_LOCK, which would bypass it) without touching the other
/// tests' process.
#[test]
fn locking_falls_back_where_memlock_forbids_it() {
    const CHILD: &str = "SHARDCACHE_MEM_TEST_NO_MEMLOCK";
    const NAME: &str = "locking_falls_back_where_memlock_forbids_it";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--test-threads=1", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "child failed:\n{stdout}\n{stderr}"
        );
        return;
    }
    use rustix::process::{Resource, Rlimit, setrlimit};
    use rustix::thread::{CapabilitySet, capabilities, set_capabilities};
    setrlimit(
        Resource::Memlock,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .unwrap();
    // Capabilities are per thread, and this thread does the locking.
    let mut caps = capabilities(None).unwrap();
    caps.effective.remove(CapabilitySet::IPC_LOCK);
    set_capabilities(None, caps).unwrap();

    let len = 1 << 16;
    match PinnedMemfd::new("shardcache-mem-nolock", len, Pinning::Required) {
        Err(PinError::Lock { len: l, errno }) => {
            assert_eq!(l, len);
            assert!(errno == Errno::PERM || errno == Errno::NOMEM, "{errno}");
        }
        other => panic!("a required lock must fail here, got {other:?}"),
    }
    let mut buf = PinnedMemfd::new("shardcache-mem-nolock", len, Pinning::Preferred)
        .expect("the pageable fallback");
    assert!(!buf.is_locked());
    buf.as_mut_slice()[len - 1] = 42;
    let server = SharedMap::map(buf.fd(), len).unwrap();
    let mut out = [0u8; 1];
    server.read_at(len as u64 - 1, &mut out).unwrap();
    assert_eq!(out, [42]);
}

#[cfg(feature = "python")]
mod python {
    use pyo3::exceptions::{PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::types::PyDict;
    use shardcache_mem::ctypes::CtypesBytes;

    #[test]
    fn ctypes_arrays_and_nothing_else() {
        Python::initialize();
        Python::attach(|py| {
            let env = PyDict::new(py);
            py.run(
                c"import ctypes
buf = bytearray(b'abcdefgh')
arr = (ctypes.c_char * 8).from_buffer(buf)
words = (ctypes.c_uint16 * 3)()
empty = (ctypes.c_char * 0)()
null = (ctypes.c_char * 4).from_address(0)
class Posing:
    __class__ = property(lambda self: ctypes.c_char * 4)
posing = Posing()
assert isinstance(posing, ctypes.Array)
number = ctypes.addressof(arr)
",
                Some(&env),
                None,
            )
            .unwrap();
            let get = |name: &str| env.get_item(name).unwrap().unwrap();

            let arr = get("arr");
            let mut bytes = CtypesBytes::borrow(&arr).unwrap();
            assert_eq!(bytes.len(), 8);
            assert_eq!(bytes.as_mut_slice(), b"abcdefgh");
            bytes.as_mut_slice()[..3].copy_from_slice(b"XYZ");
            drop(bytes);
            let buf: Vec<u8> = get("buf").extract().unwrap();
            assert_eq!(
                buf, b"XYZdefgh",
                "written through to the exported bytearray"
            );

            let words = get("words");
            let mut bytes = CtypesBytes::borrow(&words).unwrap();
            assert_eq!(bytes.len(), 6, "the size in bytes, from ctypes.sizeof");
            assert_eq!(bytes.as_mut_slice(), [0; 6]);

            let empty = get("empty");
            let mut bytes = CtypesBytes::borrow(&empty).unwrap();
            assert!(bytes.is_empty() && bytes.as_mut_slice().is_empty());

            let null = get("null");
            let e = CtypesBytes::borrow(&null).unwrap_err();
            assert!(e.is_instance_of::<PyValueError>(py), "{e}");

            for name in ["number", "buf", "posing"] {
                let e = CtypesBytes::borrow(&get(name)).unwrap_err();
                assert!(e.is_instance_of::<PyTypeError>(py), "{name}: {e}");
                assert!(e.to_string().contains("expected a ctypes array"), "{e}");
            }
        });
    }
}
