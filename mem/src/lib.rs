//! shardcache-mem: every `unsafe` line of shardcache, behind safe types. Every other crate of
//! the workspace forbids `unsafe_code`.
//!
//! What it does:
//! - [`memfd`]: create a memfd, size it, seal it, read its seals (safe system calls, kept here
//!   so the rules for the files both sides map live beside the mapping code);
//! - [`SharedMap`]: a shared read-write mapping of a memfd that is sealed against shrinking and
//!   at least as long as the mapping (checked before mapping, so a peer can never truncate the
//!   file under it and fault this process with SIGBUS). It is only ever accessed by bounds-checked
//!   copies ([`SharedMap::write_at`], [`SharedMap::read_at`]), never through a Rust reference, so
//!   memory that another process writes at will is never viewed as a `&[u8]`. The server maps
//!   its clients' buffers with it;
//! - [`PinnedMemfd`]: a memfd this process creates (sized, sealed `F_SEAL_SHRINK | F_SEAL_GROW |
//!   F_SEAL_SEAL`), mapped with [`SharedMap`]'s code and page-locked with `mlock` as [`Pinning`]
//!   says (with [`Pinning::Preferred`] it stays pageable where `RLIMIT_MEMLOCK` forbids locking).
//!   It hands out `&[u8]` / `&mut [u8]` views, and its fd to send to the server. The client's
//!   `PinnedBuffer` is one;
//! - [`cuda`] (feature `cuda`): registering a [`PinnedMemfd`] with the CUDA driver
//!   (`cuMemHostRegister`, unregistered before the memory is unmapped), and [`cuda::DeviceBuffer`],
//!   a device allocation with bounds-checked synchronous copies. libcuda is loaded at run time;
//! - [`malloc`]: fixing glibc's threshold for buffers mapped on their own, so freed blocks go
//!   back to the system and RSS follows the bytes in use;
//! - [`ctypes`] (feature `python`): the memory of a live Python `ctypes` array as a `&mut [u8]`,
//!   its address and size taken from ctypes itself, never from an integer a caller passes.
//!
//! What it does not do:
//! - it cannot stop another mapping of the same memfd (in another process, or one made in this
//!   process from [`PinnedMemfd::fd`]) from writing while a [`PinnedMemfd`] slice is borrowed:
//!   the local protocol is what keeps that from happening (the server writes into a client's
//!   buffer only during a read the client makes with the buffer borrowed mutably). What this
//!   crate guarantees is bounds, lifetimes (nothing is used after it is unmapped, unlocked or
//!   unregistered) and fault-free access to a file that cannot shrink;
//! - two requests of one client writing overlapping ranges of a [`SharedMap`] at once are
//!   not ordered: that client garbles its own buffer (which its CRC checks then report), and
//!   nothing else;
//! - it cannot stop Python code from resizing, freeing or writing a ctypes array's memory from
//!   another thread while the native side uses it with the GIL released, from borrowing one
//!   buffer twice (two arrays over it), nor check that an array made with `from_address` points
//!   at real memory: those are Python's and ctypes' own unchecked operations;
//! - it makes no policy: sizes, limits and error messages belong to the crates that use it.

// `unsafe` is denied crate-wide (Cargo.toml) and allowed only in these modules, each of which
// says in its `// SAFETY:` comments why its blocks hold.
#[allow(unsafe_code)] // glibc's mallopt
pub mod malloc;
#[allow(unsafe_code)] // mmap, munmap and raw copies
mod map;
pub mod memfd;
#[allow(unsafe_code)] // mlock, munlock and the slices of an owned mapping
mod pinned;

#[cfg(feature = "python")]
#[allow(unsafe_code)] // the slice over a ctypes array's memory
pub mod ctypes;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)] // CUDA driver calls
pub mod cuda;

pub use map::{MapError, OutOfBounds, SharedMap};
pub use pinned::{PinError, PinnedMemfd, Pinning};
pub use rustix::fs::SealFlags;
pub use rustix::io::Errno;
