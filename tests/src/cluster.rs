//! A cluster of real `shardcache` processes on loopback ports.
//!
//! Every node is the real binary, started with its own ports and a shared peers file (the
//! membership every node re-reads), so tests can SIGKILL, stop and restart nodes and add new
//! ones. The origin is usually an [`crate::S3Origin`] in the test process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use shardcache_server::config::DatasetConfig;

/// The `shardcache` binary, built once per test process (a no-op when it is fresh).
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("SHARDCACHE_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args([
            "build",
            "--quiet",
            "-p",
            "shardcache-server",
            "--bin",
            "shardcache",
        ]);
        // Variables cargo set for this test (package name, manifest dir, ...) would count as
        // changed build inputs and rebuild the server every time.
        for (key, _) in std::env::vars() {
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
            ]
            .iter()
            .any(|p| key.starts_with(p))
                || key == "OUT_DIR"
                || key == "CARGO_TARGET_TMPDIR"
            {
                build.env_remove(key);
            }
        }
        let status = build.status().expect("run cargo build");
        assert!(status.success(), "cannot build the shardcache binary");
        // target/<profile>/deps/<test> → target/<profile>/shardcache
        let exe = std::env::current_exe().expect("test executable");
        let bin = exe
            .parent()
            .and_then(Path::parent)
            .expect("target dir")
            .join("shardcache");
        assert!(bin.exists(), "no binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A loopback port free at the time of the call, for a process the test starts later.
///
/// Taken below the kernel's ephemeral range, from a counter shared by the whole test
/// process: a port picked with `bind(:0)` and released is in the range the kernel hands to
/// every outgoing connection and every other `bind(:0)`, so under parallel tests it is often
/// taken again before the child process binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = fixed_port_range();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = low + ((start + n) % span) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Ports below the ephemeral range (`net.ipv4.ip_local_port_range`), at most 12,000 of them.
fn fixed_port_range() -> (u16, u16) {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let high = ephemeral_low.max(2048);
    let low = high.saturating_sub(12_000).max(1024);
    (low, high)
}

/// One node: its process and addresses.
pub struct Node {
    pub node_id: String,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub control: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
}

impl Node {
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    /// The node's log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default()
    }
}

/// Builds a [`TestCluster`].
pub struct TestClusterBuilder {
    nodes: usize,
    datasets: Vec<DatasetConfig>,
    args: Vec<(String, String)>,
    extra: Vec<SocketAddr>,
}

impl TestClusterBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn dataset(mut self, d: DatasetConfig) -> Self {
        self.datasets.push(d);
        self
    }

    /// One more member address in the membership file, served by the test itself (a fake
    /// member that misbehaves on purpose).
    pub fn extra_member(mut self, addr: SocketAddr) -> Self {
        self.extra.push(addr);
        self
    }

    /// A `--flag value` for every node.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.push((flag.to_string(), value.to_string()));
        self
    }

    /// Start, then wait until every node sees every other one up.
    pub async fn start_converged(self) -> TestCluster {
        let cluster = self.start().await;
        cluster.wait_converged().await;
        cluster
    }

    pub async fn start(self) -> TestCluster {
        crate::init();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("cluster.toml");
        std::fs::write(&config, datasets_toml(&self.datasets)).expect("write config");
        let mut args = self.args;
        // Members prove the cluster secret, as deployments must, unless the test says otherwise.
        if !args
            .iter()
            .any(|(f, _)| f == "--cluster-secret-file" || f == "--insecure-allow-anonymous")
        {
            let secret = dir.path().join("cluster-secret");
            std::fs::write(&secret, crate::TEST_SECRET).expect("write secret");
            args.push(("--cluster-secret-file".into(), secret.display().to_string()));
        }
        let mut cluster = TestCluster {
            nodes: Vec::new(),
            peers_file: dir.path().join("peers"),
            config,
            args,
            extra: self.extra,
            bin: server_binary(),
            dir,
        };
        let addrs: Vec<[SocketAddr; 3]> = (0..self.nodes)
            .map(|_| {
                [
                    loopback(free_port()),
                    loopback(free_port()),
                    loopback(free_port()),
                ]
            })
            .collect();
        cluster.write_peers(addrs.iter().map(|a| a[0]));
        for (i, addr) in addrs.into_iter().enumerate() {
            let node = cluster.spawn(format!("node-{i}"), addr);
            cluster.nodes.push(node);
        }
        for i in 0..cluster.nodes.len() {
            cluster.wait_healthy(i).await;
        }
        cluster
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `[[datasets]]` tables of a config file, every set key written as the server reads it.
pub fn datasets_toml(datasets: &[DatasetConfig]) -> String {
    let mut out = String::new();
    let q = |s: &str| format!("{s:?}");
    let ms = |d: &std::time::Duration| format!("\"{}ms\"", d.as_millis());
    for d in datasets {
        let _ = writeln!(
            out,
            "[[datasets]]\nname = {}\norigin = {}",
            q(&d.name),
            q(&d.origin)
        );
        if d.immutable {
            let _ = writeln!(out, "immutable = true");
        }
        if let Some(bs) = d.block_size {
            let _ = writeln!(out, "block_size = {bs}");
        }
        for (k, v) in [
            ("metadata_ttl", &d.metadata_ttl),
            ("stale_if_error", &d.stale_if_error),
            ("first_byte_timeout", &d.first_byte_timeout),
            ("request_timeout", &d.request_timeout),
            ("connect_timeout", &d.connect_timeout),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "{k} = {}", ms(v));
            }
        }
        for (k, v) in [
            ("endpoint", &d.endpoint),
            ("region", &d.region),
            ("access_key_id", &d.access_key_id),
            ("profile", &d.profile),
            ("proxy_url", &d.proxy_url),
            ("proxy_excludes", &d.proxy_excludes),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "{k} = {}", q(v));
            }
        }
        for (k, v) in [
            ("secret_access_key", &d.secret_access_key),
            ("session_token", &d.session_token),
        ] {
            if let Some(secret) = v {
                let _ = writeln!(out, "{k} = {}", q(&secret.0));
            }
        }
        for (k, v) in [
            ("allow_http", d.allow_http),
            ("skip_signature", d.skip_signature),
            ("virtual_hosted_style", d.virtual_hosted_style),
            ("follow_symlinks", d.follow_symlinks),
        ] {
            if let Some(v) = v {
                let _ = writeln!(out, "{k} = {v}");
            }
        }
        if let Some(ca) = &d.ca_bundle {
            let _ = writeln!(out, "ca_bundle = {}", q(&ca.display().to_string()));
        }
        if !d.options.is_empty() {
            let _ = writeln!(out, "[datasets.options]");
            for (k, v) in &d.options {
                let _ = writeln!(out, "{k} = {}", q(v));
            }
        }
        out.push('\n');
    }
    out
}

/// Real server processes sharing one membership file; killed when dropped.
pub struct TestCluster {
    pub nodes: Vec<Node>,
    peers_file: PathBuf,
    config: PathBuf,
    args: Vec<(String, String)>,
    extra: Vec<SocketAddr>,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl TestCluster {
    /// Three nodes over dataset `ds` = `bucket/train` of `origin` with blocks of `block_size`
    /// bytes: the common shape of the cluster tests.
    pub fn over(origin: &crate::S3Origin, block_size: usize) -> TestClusterBuilder {
        let mut d = origin.dataset("ds", "bucket", "train");
        d.block_size = Some(block_size as u64);
        TestCluster::builder().dataset(d)
    }

    /// Three nodes unless told otherwise; fast membership settings for tests.
    pub fn builder() -> TestClusterBuilder {
        TestClusterBuilder {
            nodes: 3,
            datasets: Vec::new(),
            args: Vec::new(),
            extra: Vec::new(),
        }
    }

    fn write_peers(&self, addrs: impl Iterator<Item = SocketAddr>) {
        let text: String = addrs
            .chain(self.extra.iter().copied())
            .map(|a| format!("{a}\n"))
            .collect();
        // Replace atomically: nodes re-read the file at any moment.
        let tmp = self.peers_file.with_extension("tmp");
        std::fs::write(&tmp, text).expect("write peers");
        std::fs::rename(&tmp, &self.peers_file).expect("replace peers");
    }

    fn spawn(&self, node_id: String, [data, admin, control]: [SocketAddr; 3]) -> Node {
        let dir = self.dir.path().join(&node_id);
        std::fs::create_dir_all(&dir).expect("node dir");
        let log = std::fs::File::create(dir.join("node.log")).expect("node log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .args(["--node-id", &node_id])
            .args(["--listen", &data.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--control-listen", &control.to_string()])
            .arg("--peers-file")
            .arg(&self.peers_file);
        // Fast membership for tests, unless the test sets its own.
        let defaults = [
            ("--peer-refresh", "200ms"),
            ("--peer-probe-interval", "100ms"),
            ("--peer-timeout", "500ms"),
            ("--origin-timeout", "5s"),
            ("--ram-cache", "256MiB"),
        ];
        for (flag, value) in defaults {
            if !self.args.iter().any(|(f, _)| f == flag) {
                cmd.arg(flag).arg(value);
            }
        }
        for (flag, value) in &self.args {
            cmd.arg(flag).arg(value);
        }
        let child = cmd
            .env("RUST_LOG", "info")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn shardcache");
        Node {
            node_id,
            data,
            admin,
            control,
            child: Some(child),
            dir,
        }
    }

    /// `host:port` of node `i`'s control plane.
    pub fn control_endpoint(&self, i: usize) -> String {
        self.nodes[i].control.to_string()
    }

    /// `host:port` of node `i`'s data plane.
    pub fn endpoint(&self, i: usize) -> String {
        self.nodes[i].data.to_string()
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().expect("SIGKILL");
            let _ = child.wait();
        }
    }

    /// Send a signal to node `i` (SIGSTOP / SIGCONT to stall and resume it).
    pub fn signal(&self, i: usize, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.nodes[i].pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal");
    }

    /// Start node `i` again (same node id and ports) after [`TestCluster::kill`].
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} is running");
        let (id, addrs) = {
            let n = &self.nodes[i];
            (n.node_id.clone(), [n.data, n.admin, n.control])
        };
        self.nodes[i] = self.spawn(id, addrs);
        self.wait_healthy(i).await;
    }

    /// Start one more node and add it to the membership file; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let data = loopback(free_port());
        let admin = loopback(free_port());
        let control = loopback(free_port());
        let addrs: Vec<SocketAddr> = self
            .nodes
            .iter()
            .map(|n| n.data)
            .chain(std::iter::once(data))
            .collect();
        self.write_peers(addrs.into_iter());
        let node = self.spawn(format!("node-{i}"), [data, admin, control]);
        self.nodes.push(node);
        self.wait_healthy(i).await;
        i
    }

    async fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(self.nodes[i].admin),
            )
            .await
            {
                let (status, _) = crate::http_get(self.nodes[i].admin, "/healthz").await;
                if status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {i} never became healthy; log:\n{}",
                self.nodes[i].log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: usize) -> String {
        crate::http_get(self.nodes[i].admin, "/metrics").await.1
    }

    /// One series of node `i` (e.g. `shardcache_peers{state="up"}`), 0 when absent.
    pub async fn metric(&self, i: usize, series: &str) -> f64 {
        metric_value(&self.metrics(i).await, series)
    }

    /// A series summed over the running nodes.
    pub async fn metric_sum(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for i in self.running() {
            sum += self.metric(i, series).await;
        }
        sum
    }

    /// Wait until every running node sees every other running node up and the stopped ones
    /// down (30 s at most).
    pub async fn wait_converged(&self) {
        let running = self.running();
        let want = (running.len() - 1 + self.extra.len()) as f64;
        let want_down = (self.nodes.len() - running.len()) as f64;
        let deadline = Instant::now() + Duration::from_secs(30);
        'outer: loop {
            for &i in &running {
                let text = self.metrics(i).await;
                let up = metric_value(&text, "shardcache_peers{state=\"up\"}");
                let down = metric_value(&text, "shardcache_peers{state=\"down\"}");
                if up != want || down != want_down {
                    assert!(
                        Instant::now() < deadline,
                        "node {i} sees {up} peers up and {down} down, expected {want} and {want_down}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue 'outer;
                }
            }
            return;
        }
    }
}

/// The value of one series in Prometheus text, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
