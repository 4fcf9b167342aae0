//! Other object stores as separate processes: moto's S3 server (PyPI `moto[server]`) and
//! Azurite's blob service (npm `azurite`), which `scripts/test.sh` installs into `.venv` and
//! `.emulators`. Each runs on its own loopback port and is killed when dropped; it can be
//! frozen with SIGSTOP like a hung origin.
//!
//! Where an emulator is not installed, [`Moto::start`] and [`Azurite::start`] return `None`
//! and say so on stderr, unless `SHARDCACHE_TEST_STRICT=1` (as the test script sets):
//! then a missing emulator fails the test.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::path::Path;

/// The workspace root.
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// The program at `var` or `default` (relative to the workspace root), if it exists.
fn program(var: &str, default: &str, what: &str) -> Option<PathBuf> {
    let path = std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join(default));
    if path.exists() {
        return Some(path);
    }
    let msg = format!(
        "{what} is not installed at {} (./scripts/test.sh installs it; or set {var})",
        path.display()
    );
    if std::env::var("SHARDCACHE_TEST_STRICT").is_ok_and(|v| v == "1") {
        panic!("{msg}");
    }
    eprintln!("skipped: {msg}");
    None
}

/// A child process killed when dropped.
struct Process {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        // A stopped process must run again to die cleanly.
        let _ = signal(self.child.id(), rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("a child pid");
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

/// Wait until `addr` answers an HTTP request (any status).
async fn wait_http(addr: SocketAddr, path: &str, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before answering: {status}");
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            let (status, _) = crate::http_get(addr, path).await;
            if status > 0 {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{what} did not answer on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto's S3 server.
pub struct Moto {
    process: Process,
}

impl Moto {
    pub async fn start() -> Option<Moto> {
        let bin = program("SHARDCACHE_MOTO_SERVER", ".venv/bin/moto_server", "moto")?;
        let port = crate::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_http(addr, "/moto-api/", &mut child, "moto").await;
        Some(Moto {
            process: Process {
                child,
                addr,
                _dir: dir,
            },
        })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.process.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// Create `bucket` (moto takes unsigned bucket creation).
    pub async fn create_bucket(&self, bucket: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(self.process.addr)
            .await
            .expect("connect moto");
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.process.addr
        );
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 200"), "create bucket: {text}");
    }

    /// An object_store client of `bucket` (moto accepts any key).
    pub fn store(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_access_key_id("moto")
            .with_secret_access_key("moto")
            .with_allow_http(true)
            .build()
            .expect("moto client")
    }

    pub async fn put(&self, bucket: &str, key: &str, data: Vec<u8>) {
        self.store(bucket)
            .put(&Path::from(key), data.into())
            .await
            .expect("put to moto");
    }

    /// Freeze the process (SIGSTOP): connections are accepted by the kernel, nothing answers.
    pub fn freeze(&self) {
        signal(self.process.child.id(), rustix::process::Signal::STOP).expect("SIGSTOP");
    }

    pub fn thaw(&self) {
        signal(self.process.child.id(), rustix::process::Signal::CONT).expect("SIGCONT");
    }
}

/// The well-known account of the Azure storage emulator.
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service.
pub struct Azurite {
    process: Process,
}

impl Azurite {
    pub async fn start() -> Option<Azurite> {
        let bin = program(
            "SHARDCACHE_AZURITE",
            ".emulators/node_modules/.bin/azurite-blob",
            "Azurite",
        )?;
        let port = crate::free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(bin)
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &dir.path().display().to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
                "--silent",
                "--blobKeepAliveTimeout",
                "600",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start azurite");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        wait_http(addr, "/devstoreaccount1?comp=list", &mut child, "Azurite").await;
        Some(Azurite {
            process: Process {
                child,
                addr,
                _dir: dir,
            },
        })
    }

    /// The account's blob endpoint (`http://127.0.0.1:PORT/devstoreaccount1`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/{AZURITE_ACCOUNT}", self.process.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    /// Create `container` (a SharedKey-signed request).
    pub async fn create_container(&self, container: &str) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let date = httpdate_now();
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &base64_decode(AZURITE_KEY));
        let sig = base64_encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        let mut s = tokio::net::TcpStream::connect(self.process.addr)
            .await
            .expect("connect azurite");
        let req = format!(
            "PUT /{AZURITE_ACCOUNT}/{container}?restype=container HTTP/1.1\r\nHost: {}\r\nx-ms-date: {date}\r\nx-ms-version: {version}\r\nAuthorization: SharedKey {AZURITE_ACCOUNT}:{sig}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.process.addr
        );
        s.write_all(req.as_bytes()).await.expect("send");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 201"), "create container: {text}");
    }

    /// An object_store client of `container`.
    pub fn store(&self, container: &str) -> object_store::azure::MicrosoftAzure {
        object_store::azure::MicrosoftAzureBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(AZURITE_KEY)
            .with_container_name(container)
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .build()
            .expect("azurite client")
    }

    pub async fn put(&self, container: &str, key: &str, data: Vec<u8>) {
        self.store(container)
            .put(&Path::from(key), data.into())
            .await
            .expect("put to azurite");
    }
}

/// The current time as an HTTP date (`Tue, 01 Dec 2026 07:00:00 GMT`).
fn httpdate_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = B64.iter().position(|&x| x == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
            assert_eq!(base64_decode(&base64_encode(s)), s);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode(AZURITE_KEY).len(), 64);
        assert!(httpdate_now().ends_with(" GMT"));
    }
}
