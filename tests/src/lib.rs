//! Test harness for shardcache: a real S3-compatible origin and servers on loopback ports.
//!
//! - [`S3Origin`]: the `s3s-fs` S3 server in-process on `127.0.0.1:0`, over a temporary
//!   directory, with access keys; it counts the GET and HEAD requests it answers per object, so
//!   tests assert what the origin really saw.
//! - [`TestServer`]: a shardcache server started in-process on loopback TCP and QUIC ports,
//!   stopped when dropped.
//! - [`TestCluster`]: a cluster of real `shardcache` processes on loopback ports sharing a
//!   membership file, for SIGKILL, stall, restart and join scenarios.
//! - [`scripted_server`]: a fake protocol server that answers each request as a closure says
//!   (peers and servers that misbehave on purpose).
//! - [`fault::FaultProxy`]: an HTTP proxy in front of an origin that answers wrongly on
//!   purpose (error statuses, resets, stalls, short and long bodies, rewritten ETags);
//! - [`emulators`]: moto's S3 server and Azurite as separate processes;
//! - [`creds::CredentialServer`]: a web-identity STS and a container credentials endpoint;
//! - [`process::Shardcache`]: one `shardcache` process with its own environment and flags;
//! - [`proxy::HttpProxy`]: a forward proxy as `HTTP_PROXY`/`HTTPS_PROXY` name one;
//! - [`bytes_for`]: deterministic test data.

mod cluster;
pub mod creds;
pub mod emulators;
pub mod fault;
pub mod process;
pub mod proxy;
mod s3;
mod server;

pub use cluster::{
    Node, TestCluster, TestClusterBuilder, datasets_toml, free_port, metric_value, server_binary,
};
pub use s3::{HttpVersions, OriginCounts, S3Origin, S3OriginBuilder};
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

/// Upload `count` objects `PREFIX/obj-000`, `obj-001`, ... of `size(i)` bytes (data from
/// [`bytes_for`] with seeds from `seed`) to `bucket`; their bytes, in order.
pub async fn put_objects(
    origin: &S3Origin,
    bucket: &str,
    prefix: &str,
    count: usize,
    seed: u64,
    size: impl Fn(usize) -> usize,
) -> std::sync::Arc<Vec<Vec<u8>>> {
    let mut all = Vec::new();
    for i in 0..count {
        let data = bytes_for(seed + i as u64, size(i));
        origin
            .put(bucket, &format!("{prefix}/obj-{i:03}"), data.clone())
            .await;
        all.push(data);
    }
    std::sync::Arc::new(all)
}

/// CRC32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    shardcache_proto::DataChunk::new(0, bytes::Bytes::copy_from_slice(data)).crc32c
}

/// A fresh CA and a certificate it signed for `names`, as PEM files in `dir`:
/// `(ca.pem, cert.pem, key.pem)`.
pub fn test_ca(
    dir: &std::path::Path,
    names: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("ca key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .expect("cert params")
        .signed_by(&key, &issuer)
        .expect("cert");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).expect("write ca");
    std::fs::write(&paths.1, cert.pem()).expect("write cert");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write key");
    paths
}

/// A TLS acceptor for the PEM certificate chain and key, offering `alpn`.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    init();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .expect("read cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key).expect("read key");
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("tls config");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
}

/// A plain HTTP/1.1 GET on a loopback address: `(status, body)`. Enough for the admin endpoint.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect admin");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read response");
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The cluster secret of test clusters (in-process servers and `TestCluster` processes).
pub const TEST_SECRET: &str = "test-cluster-secret-5a1f93c0e7d2";

/// A fake protocol server on a loopback port: every request frame is answered with the frames
/// `answer` returns (none: no answer), under the request's id. For peers and servers that
/// misbehave on purpose. Stops when the returned task is aborted (or the runtime ends). It does
/// not hold the cluster secret: members do not believe it.
pub async fn scripted_server<F>(answer: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(shardcache_proto::Frame) -> Vec<shardcache_proto::Frame> + Send + Sync + 'static,
{
    scripted(None, answer).await
}

/// A [`scripted_server`] that holds [`TEST_SECRET`] and answers the members' handshake as
/// member `node_id`: a member that misbehaves after proving who it is.
pub async fn scripted_member<F>(
    node_id: &str,
    answer: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(shardcache_proto::Frame) -> Vec<shardcache_proto::Frame> + Send + Sync + 'static,
{
    let secret = shardcache_server::access::ClusterSecret::new(TEST_SECRET.as_bytes());
    scripted(
        Some((node_id.to_string(), std::sync::Arc::new(secret))),
        answer,
    )
    .await
}

async fn scripted<F>(
    member: Option<(
        String,
        std::sync::Arc<shardcache_server::access::ClusterSecret>,
    )>,
    answer: F,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
where
    F: Fn(shardcache_proto::Frame) -> Vec<shardcache_proto::Frame> + Send + Sync + 'static,
{
    use shardcache_proto::frame::{MAX_REQUEST_PAYLOAD, encode};
    use shardcache_proto::{FrameCodec, Framed};
    use shardcache_server::access::{Access, PeerStep, Policy};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let answer = std::sync::Arc::new(answer);
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let answer = answer.clone();
            let member = member.clone();
            tokio::spawn(async move {
                let mut codec = FrameCodec::new(MAX_REQUEST_PAYLOAD);
                let access = Access::new(&Policy::Anonymous, member.as_ref().map(|m| &m.1));
                let handshake = |frame: shardcache_proto::Frame| match (&member, frame) {
                    (Some((me, _)), shardcache_proto::Frame::PeerAuth(a)) => {
                        match access.peer_step(me, &a.node_id, &a.nonce, &a.proof) {
                            Ok(PeerStep::Challenge { nonce, proof }) => {
                                vec![shardcache_proto::Frame::PeerChallenge(
                                    shardcache_proto::PeerAuth {
                                        node_id: me.clone(),
                                        nonce,
                                        proof,
                                    },
                                )]
                            }
                            Ok(PeerStep::Member(_)) => {
                                vec![shardcache_proto::Frame::AuthOk(Default::default())]
                            }
                            Err(_) => Vec::new(),
                        }
                    }
                    (_, other) => answer(other),
                };
                loop {
                    while let Ok(Some(req)) = codec.next_frame() {
                        for frame in handshake(req.frame) {
                            let out = encode(&Framed {
                                request_id: req.request_id,
                                frame,
                            });
                            if s.write_all(&out.to_vec()).await.is_err() {
                                return;
                            }
                        }
                    }
                    match s.read_buf(codec.buffer_mut()).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    (addr, task)
}

/// An S3 dataset whose endpoint is `addr`, where no real S3 server runs: an origin that stalls
/// (see [`black_hole`]) or refuses connections (a closed port).
pub fn s3_dataset_at(
    name: &str,
    addr: std::net::SocketAddr,
) -> shardcache_server::config::DatasetConfig {
    let mut d = shardcache_server::config::DatasetConfig::new(name, "s3://bucket");
    d.endpoint = Some(format!("http://{addr}"));
    d.allow_http = Some(true);
    d.region = Some("us-east-1".into());
    d.access_key_id = Some("k".into());
    d.secret_access_key = Some(shardcache_server::config::Secret("s".into()));
    d
}

/// A loopback listener that accepts connections and never answers: a stalled origin. Stops
/// when the returned task is aborted (or the runtime ends).
pub async fn black_hole() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = hole.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

/// A loopback port with nothing listening: an origin that refuses connections.
pub async fn closed_port() -> std::net::SocketAddr {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
}

/// Every block file (`*.blk`) under a disk tier's directory.
pub fn block_files(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(root.join("blocks")) else {
        return out;
    };
    for shard in shards.flatten() {
        let Ok(files) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.path().extension().is_some_and(|e| e == "blk") {
                out.push(f.path());
            }
        }
    }
    out.sort();
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
