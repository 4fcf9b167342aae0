//! Test harness for shardcache: a real S3-compatible origin and servers on loopback ports.
//!
//! - [`S3Origin`]: the `s3s-fs` S3 server in-process on `127.0.0.1:0`, over a temporary
//!   directory, with access keys; it counts the GET and HEAD requests it answers per object, so
//!   tests assert what the origin really saw.
//! - [`TestServer`]: a shardcache server started in-process on loopback TCP and QUIC ports,
//!   stopped when dropped.
//! - [`bytes_for`]: deterministic test data.

mod s3;
mod server;

pub use s3::{OriginCounts, S3Origin};
pub use server::{TestServer, TestServerBuilder};

/// `len` deterministic pseudo-random bytes derived from `seed`.
pub fn bytes_for(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Install the TLS provider and a test log subscriber (once per process).
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        shardcache_server::origin::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
    });
}
