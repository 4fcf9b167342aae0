//! An HTTP forward proxy on a loopback port, as `HTTP_PROXY` / `HTTPS_PROXY` name one: plain
//! requests in absolute form are forwarded, `CONNECT host:port` opens a tunnel. It counts both,
//! so tests see whether a client really went through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Counts {
    forwarded: AtomicUsize,
    tunnels: AtomicUsize,
}

/// A forward proxy; stops when dropped.
pub struct HttpProxy {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpProxy {
    pub async fn start() -> HttpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let _ = handle(socket, c).await;
                });
            }
        });
        HttpProxy { addr, counts, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Plain requests forwarded.
    pub fn forwarded(&self) -> usize {
        self.counts.forwarded.load(Ordering::Relaxed)
    }

    /// CONNECT tunnels opened.
    pub fn tunnels(&self) -> usize {
        self.counts.tunnels.load(Ordering::Relaxed)
    }
}

async fn handle(mut client: TcpStream, counts: Arc<Counts>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let rest = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or_default().to_string();
    let mut parts = first.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    // Only loopback targets: the proxy never reaches anything else.
    let loopback = |hostport: &str| {
        hostport.starts_with("127.")
            || hostport.starts_with("[::1]")
            || hostport.starts_with("localhost:")
    };
    if method == "CONNECT" {
        if !loopback(&target) {
            return client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
        }
        let mut upstream = TcpStream::connect(&target).await?;
        counts.tunnels.fetch_add(1, Ordering::Relaxed);
        client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
        upstream.write_all(&rest).await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    let Some(after_scheme) = target.strip_prefix("http://") else {
        return client.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    };
    let (hostport, path) = match after_scheme.find('/') {
        Some(i) => (&after_scheme[..i], &after_scheme[i..]),
        None => (after_scheme, "/"),
    };
    if !loopback(hostport) {
        return client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
    }
    let mut upstream = TcpStream::connect(hostport).await?;
    counts.forwarded.fetch_add(1, Ordering::Relaxed);
    let mut out = format!("{method} {path} HTTP/1.1\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        if name.eq_ignore_ascii_case("proxy-connection") || name.eq_ignore_ascii_case("connection")
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("connection: close\r\n\r\n");
    upstream.write_all(out.as_bytes()).await?;
    upstream.write_all(&rest).await?;
    // One request per connection: the answer, then close.
    let (mut ur, mut uw) = upstream.split();
    let (mut cr, mut cw) = client.split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut uw).await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::select! {
        () = down => {}
        () = async { up.await; std::future::pending::<()>().await } => {}
    }
    Ok(())
}
