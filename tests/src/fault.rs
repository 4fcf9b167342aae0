//! A misbehaving origin: an HTTP/1.1 proxy in front of a real S3 (or Azure) server that
//! answers some requests wrongly on purpose.
//!
//! Each request is read whole, then either answered by the proxy itself (an error status, a
//! reset, silence) or forwarded to the server over a fresh connection and its answer passed
//! back, possibly altered (ETag rewritten, body cut short or grown, a stall inside the body).
//! Every answer closes its connection, so a fault never leaks into the next request. Rules
//! match by method and are used up in order; with no rule left, requests pass through.
//! [`FaultProxy::page_size`] adds a small page size to listings, so pagination is exercised
//! with a few hundred objects.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What goes wrong with one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// An S3-style XML error with this status and code.
    Status(u16, &'static str),
    /// The connection is reset (RST) after the request is read.
    Reset,
    /// The connection is closed without an answer.
    Close,
    /// No answer at all, until the client gives up.
    Stall,
    /// The server's answer with the body stopped after `after` bytes, then silence.
    StallBody { after: usize },
    /// The server's answer with only the first `keep` bytes of the body, then the connection
    /// closes (the announced length is kept).
    ShortBody { keep: usize },
    /// The server's answer with `extra` bytes more than the range asked for (the announced
    /// length grows to match).
    LongBody { extra: usize },
    /// The server's answer without its ETag header.
    NoEtag,
    /// The server's answer with its ETag marked weak (`W/"…"`).
    WeakEtag,
    /// The server's answer with its ETag without quotes.
    UnquotedEtag,
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Match {
    Any,
    Get,
    Head,
    /// Bucket listings (`GET` with `list-type=` or `comp=list`).
    List,
}

#[derive(Debug)]
struct Rule {
    on: Match,
    /// Answers left; `None`: forever.
    left: Option<usize>,
    fault: Fault,
}

#[derive(Default)]
struct State {
    rules: Mutex<VecDeque<Rule>>,
    /// Requests seen, by kind.
    requests: AtomicUsize,
    faults: AtomicUsize,
    page_size: AtomicUsize,
}

/// A fault-injecting proxy on a loopback port; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy in front of the HTTP server at `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((socket, _)) = accepted else { continue };
                        let st = st.clone();
                        conns.spawn(async move {
                            let _ = serve(socket, upstream, st).await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        FaultProxy { addr, state, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `times` requests matching `on` get `fault`.
    pub fn inject(&self, on: Match, times: usize, fault: Fault) {
        self.state.rules.lock().expect("lock").push_back(Rule {
            on,
            left: Some(times),
            fault,
        });
    }

    /// Every request matching `on` gets `fault` until [`FaultProxy::heal`].
    pub fn always(&self, on: Match, fault: Fault) {
        self.state.rules.lock().expect("lock").push_back(Rule {
            on,
            left: None,
            fault,
        });
    }

    /// Drop every rule: requests pass through again.
    pub fn heal(&self) {
        self.state.rules.lock().expect("lock").clear();
    }

    /// Listings ask for pages of `n` entries (0: the server's own page size).
    pub fn page_size(&self, n: usize) {
        self.state.page_size.store(n, Ordering::Relaxed);
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::Relaxed)
    }

    /// Answers altered so far.
    pub fn faults(&self) -> usize {
        self.state.faults.load(Ordering::Relaxed)
    }
}

/// One request: its head (request line and headers) and body.
struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn kind(&self) -> Match {
        let list = self.target.contains("list-type=") || self.target.contains("comp=list");
        match self.method.as_str() {
            "HEAD" => Match::Head,
            "GET" if list => Match::List,
            "GET" => Match::Get,
            _ => Match::Any,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(socket: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split_whitespace();
    let method = first.next().unwrap_or_default().to_string();
    let target = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

fn take_fault(state: &State, kind: Match) -> Option<Fault> {
    let mut rules = state.rules.lock().expect("lock");
    let i = rules
        .iter()
        .position(|r| r.on == Match::Any || r.on == kind)?;
    let fault = rules[i].fault.clone();
    if let Some(left) = &mut rules[i].left {
        *left -= 1;
        if *left == 0 {
            rules.remove(i);
        }
    }
    Some(fault)
}

async fn serve(
    mut socket: TcpStream,
    upstream: SocketAddr,
    state: Arc<State>,
) -> std::io::Result<()> {
    let Some(mut req) = read_request(&mut socket).await? else {
        return Ok(());
    };
    state.requests.fetch_add(1, Ordering::Relaxed);
    let kind = req.kind();
    let page = state.page_size.load(Ordering::Relaxed);
    if page > 0 && kind == Match::List {
        let param = if req.target.contains("comp=list") {
            "maxresults"
        } else {
            "max-keys"
        };
        if !req.target.contains(&format!("{param}=")) {
            req.target = format!("{}&{param}={page}", req.target);
        }
    }
    let fault = take_fault(&state, kind);
    if fault.is_some() {
        state.faults.fetch_add(1, Ordering::Relaxed);
    }
    match &fault {
        Some(Fault::Status(status, code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected {code}</Message><RequestId>fault</RequestId></Error>"
            );
            let head = format!(
                "HTTP/1.1 {status} {}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                reason(*status),
                if req.method == "HEAD" { 0 } else { body.len() }
            );
            socket.write_all(head.as_bytes()).await?;
            if req.method != "HEAD" {
                socket.write_all(body.as_bytes()).await?;
            }
            return socket.shutdown().await;
        }
        Some(Fault::Reset) => {
            rustix::net::sockopt::set_socket_linger(&socket, Some(Duration::ZERO))?;
            drop(socket);
            return Ok(());
        }
        Some(Fault::Close) => return Ok(()),
        Some(Fault::Stall) => {
            // Hold the connection until the client goes away.
            let mut sink = [0u8; 1024];
            while socket.read(&mut sink).await? > 0 {}
            return Ok(());
        }
        _ => {}
    }

    // Forward over a fresh connection and read the whole answer.
    let mut up = TcpStream::connect(upstream).await?;
    let mut out = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        if k.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("connection: close\r\n\r\n");
    up.write_all(out.as_bytes()).await?;
    up.write_all(&req.body).await?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).await?;
    let Some(head_end) = find(&answer, b"\r\n\r\n").map(|i| i + 4) else {
        return socket.write_all(&answer).await;
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_string();
    let mut body = answer[head_end..].to_vec();
    let mut lines: Vec<String> = head
        .trim_end_matches("\r\n")
        .split("\r\n")
        .map(str::to_string)
        .collect();
    let header = |lines: &Vec<String>, name: &str| {
        lines.iter().position(|l| {
            l.split_once(':')
                .is_some_and(|(k, _)| k.eq_ignore_ascii_case(name))
        })
    };
    let chunked = header(&lines, "transfer-encoding").is_some();
    let mut stall_after = None;
    let mut keep = None;
    match &fault {
        Some(Fault::NoEtag) => {
            if let Some(i) = header(&lines, "etag") {
                lines.remove(i);
            }
        }
        Some(Fault::WeakEtag | Fault::UnquotedEtag) => {
            if let Some(i) = header(&lines, "etag") {
                let value = lines[i]
                    .split_once(':')
                    .map(|(_, v)| v.trim())
                    .unwrap_or("");
                let bare = value.trim_start_matches("W/").trim_matches('"').to_string();
                lines[i] = if fault == Some(Fault::WeakEtag) {
                    format!("etag: W/\"{bare}\"")
                } else {
                    format!("etag: {bare}")
                };
            }
        }
        Some(Fault::LongBody { extra }) if !chunked => {
            body.extend(std::iter::repeat_n(0x5a, *extra));
            if let Some(i) = header(&lines, "content-length") {
                lines[i] = format!("content-length: {}", body.len());
            }
        }
        Some(Fault::ShortBody { keep: k }) => keep = Some(*k),
        Some(Fault::StallBody { after }) => stall_after = Some(*after),
        _ => {}
    }
    if let Some(i) = header(&lines, "connection") {
        lines.remove(i);
    }
    lines.push("connection: close".into());
    let head = format!("{}\r\n\r\n", lines.join("\r\n"));
    socket.write_all(head.as_bytes()).await?;
    if let Some(after) = stall_after {
        socket.write_all(&body[..after.min(body.len())]).await?;
        socket.flush().await?;
        let mut sink = [0u8; 1024];
        while socket.read(&mut sink).await? > 0 {}
        return Ok(());
    }
    let keep = keep.unwrap_or(body.len()).min(body.len());
    socket.write_all(&body[..keep]).await?;
    socket.shutdown().await
}

fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Error",
    }
}
