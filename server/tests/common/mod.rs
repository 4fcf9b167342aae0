//! Helpers shared by the binary tests.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use shardcache_client::BlockingClient;

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connect, retrying until the server answers (20 s at most).
pub fn wait_ready(addr: &str) -> BlockingClient {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match BlockingClient::connect(addr) {
            Ok(c) => return c,
            Err(e) if Instant::now() > deadline => panic!("server never came up: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A blocking HTTP/1.1 GET; the whole response as text.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
