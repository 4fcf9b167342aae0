//! shardcache servers in-process on loopback ports.

use std::net::SocketAddr;
use std::sync::Arc;

use shardcache_server::config::{Config, DatasetConfig};
use shardcache_server::metrics::Metrics;
use shardcache_server::{Listeners, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Builds a [`TestServer`]: `TestServer::builder().dataset(d).start().await`.
pub struct TestServerBuilder {
    config: Config,
}

impl TestServerBuilder {
    pub fn dataset(mut self, d: DatasetConfig) -> Self {
        self.config.datasets.push(d);
        self
    }

    /// Change any other setting.
    pub fn config(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(&mut self.config);
        self
    }

    pub async fn start(self) -> TestServer {
        crate::init();
        // Origins see no environment of the test process: only what the test configures.
        let env = std::collections::BTreeMap::<String, String>::new();
        let server = Server::build_with_env(self.config.clone(), &env).expect("build server");
        let listeners = Listeners::bind(&self.config).await.expect("bind");
        let tcp = listeners.tcp_addr().expect("tcp addr");
        let quic = listeners.quic_addr();
        let admin = listeners.admin_addr();
        let control = listeners.control_addr();
        let s3 = listeners.s3_addr();
        let disk_root = self.config.disk_cache.clone();
        let local_socket = self.config.local_socket.clone();
        let stats = server.metrics();
        let service = server.service();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .run(listeners, async {
                    let _ = rx.await;
                })
                .await
                .expect("server run");
        });
        TestServer {
            tcp,
            quic,
            admin,
            control,
            s3,
            disk_root,
            local_socket,
            stats,
            service,
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

/// A file holding [`crate::TEST_SECRET`], shared by the in-process servers of this test process
/// (written once, atomically, so concurrent test processes never read half of it).
pub fn test_secret() -> std::path::PathBuf {
    static PATH: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir();
        let path = dir.join("shardcache-test-cluster-secret");
        let tmp = dir.join(format!(
            "shardcache-test-cluster-secret.{}",
            std::process::id()
        ));
        std::fs::write(&tmp, crate::TEST_SECRET).expect("write the test secret");
        std::fs::rename(&tmp, &path).expect("place the test secret");
        path
    })
    .clone()
}

/// A running server; stopped on drop.
pub struct TestServer {
    pub tcp: SocketAddr,
    pub quic: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub control: Option<SocketAddr>,
    /// The S3-compatible endpoint, where `s3_listen` is set.
    pub s3: Option<SocketAddr>,
    pub disk_root: Option<std::path::PathBuf>,
    pub local_socket: Option<std::path::PathBuf>,
    pub stats: Arc<Metrics>,
    /// The read path, for tests that reach into the tiers (e.g. to damage a held block).
    pub service: Arc<shardcache_server::service::CacheService>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server on `127.0.0.1:0` (TCP and QUIC with a self-signed certificate), small test
    /// limits, no datasets yet.
    pub fn builder() -> TestServerBuilder {
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            quic_listen: Some("127.0.0.1:0".parse().expect("addr")),
            admin_listen: Some("127.0.0.1:0".parse().expect("addr")),
            control_listen: Some("127.0.0.1:0".parse().expect("addr")),
            insecure_dev_tls: true,
            ram_cache: 512 << 20,
            origin_timeout: std::time::Duration::from_secs(5),
            origin_retries: 2,
            node_id: Some("test".into()),
            // Members of in-process clusters prove one secret, as deployments must.
            cluster_secret_file: Some(test_secret()),
            ..Config::default()
        };
        TestServerBuilder { config }
    }

    /// `host:port` of the TCP data plane.
    pub fn tcp_endpoint(&self) -> String {
        self.tcp.to_string()
    }

    /// `quic://host:port` of the QUIC data plane.
    pub fn quic_endpoint(&self) -> String {
        format!("quic://{}", self.quic.expect("quic enabled"))
    }

    /// GET a path of the admin endpoint: `(status, body)`.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        crate::http_get(self.admin.expect("admin enabled"), path).await
    }

    /// Stop accepting and wait for the server to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl TestServer {
    /// Wait until the disk tier holds `blocks` blocks (background writes finished), or panic.
    pub async fn wait_disk_blocks(&self, blocks: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let files = self.disk_files();
            if files >= blocks {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "disk tier holds {files} of {blocks} blocks"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Block files in the disk tier's directory.
    pub fn disk_files(&self) -> u64 {
        let Some(root) = &self.disk_root else {
            return 0;
        };
        crate::block_files(root).len() as u64
    }
}
