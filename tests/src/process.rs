//! One `shardcache` process, started the way a deployment starts it: the real binary, its own
//! environment (nothing inherited from the test runner but `PATH`; `HOME` is an empty
//! directory, so no `~/.aws` of the machine leaks in), flags, a config file, and loopback
//! ports. Its log is kept for assertions; it is killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Builds a [`ServeProcess`] (or a one-shot command such as `check-origin`).
pub struct Shardcache {
    args: Vec<String>,
    env: Vec<(String, String)>,
    config: Option<String>,
    dir: tempfile::TempDir,
}

/// What a command printed and how it ended.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Shardcache {
    pub fn new() -> Shardcache {
        crate::init();
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        Shardcache {
            args: Vec::new(),
            env: Vec::new(),
            config: None,
            dir,
        }
    }

    /// A directory that lives as long as the process (files the test hands it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process's `HOME` (empty unless the test puts files there).
    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_string(), v.into()));
        self
    }

    /// Write `toml` to a file and pass it with `--config`.
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = Some(toml.into());
        self
    }

    fn command(&self, sub: &str) -> Command {
        let mut cmd = Command::new(crate::server_binary());
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("RUST_LOG", "info")
            // No request may leave loopback: instance metadata would be asked when nothing
            // else gives credentials.
            .env("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .arg(sub);
        if let Some(text) = &self.config {
            let path = self.dir.path().join("shardcache.toml");
            std::fs::write(&path, text).expect("write config");
            cmd.arg("--config").arg(path);
        }
        cmd.args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Run a command to its end (`check-origin`, or a `serve` that must refuse to start),
    /// without blocking the test's runtime (its origins keep answering).
    pub async fn run(&self, sub: &str) -> Output {
        let out = tokio::process::Command::from(self.command(sub))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .expect("run shardcache");
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Start `serve` on free loopback ports and wait until its data plane accepts.
    pub async fn serve(self) -> ServeProcess {
        let data = loopback(crate::free_port());
        let admin = loopback(crate::free_port());
        let control = loopback(crate::free_port());
        let log_path = self.dir.path().join("shardcache.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let mut cmd = self.command("serve");
        cmd.args(["--listen", &data.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--control-listen", &control.to_string()])
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn shardcache");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "shardcache exited with {status} before serving:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            if tokio::net::TcpStream::connect(data).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "shardcache did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ServeProcess {
            child,
            data,
            admin,
            control,
            log_path,
            _setup: self,
        }
    }
}

impl Default for Shardcache {
    fn default() -> Self {
        Shardcache::new()
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A running `shardcache serve`.
pub struct ServeProcess {
    child: Child,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub control: SocketAddr,
    log_path: PathBuf,
    _setup: Shardcache,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServeProcess {
    pub async fn client(&self) -> shardcache_client::Client {
        let options = shardcache_client::ClientOptions {
            retries: 0,
            ..Default::default()
        };
        shardcache_client::Client::connect_with(&self.data.to_string(), options)
            .await
            .expect("connect")
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The value of one metric series (`name{labels}`) on `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = crate::http_get(self.admin, "/metrics").await;
        crate::metric_value(&body, series)
    }
}
