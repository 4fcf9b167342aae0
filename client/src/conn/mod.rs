//! Connections to a server, over TCP or QUIC, behind one request/response interface.
//!
//! [`Conn::request`] sends one request frame and returns [`Responses`], which yields that
//! request's response frames. Over TCP many requests share one connection: a reader task routes
//! frames by request id. Over QUIC each request opens its own stream.

mod pool;
mod quic;
mod tcp;

use std::time::Duration;

use shardcache_proto::Frame;

pub use pool::BufPool;
pub use quic::{QuicConn, client_tls, quic_endpoint};
pub use tcp::{TcpConn, TcpResponses};

use crate::error::{ClientError, Result};

/// One connection.
pub enum Conn {
    Tcp(TcpConn),
    Quic(QuicConn),
    /// A Unix-socket connection with its registered scratch buffer (the local path).
    Local(LocalConn),
}

/// A local-path connection: requests over the socket, bytes through `scratch`, the shared
/// memory registered on it. (The memory itself, not a [`crate::PinnedBuffer`]: connections
/// sit below the buffers, which keep a connection of their own once registered.)
pub struct LocalConn {
    pub conn: TcpConn,
    pub scratch: tokio::sync::Mutex<shardcache_mem::PinnedMemfd>,
}

/// Send an access token and wait for the server's answer: the first request of a connection
/// (after the local socket's registration). Over QUIC it authenticates the whole connection.
pub async fn authenticate(
    responses: impl std::future::Future<Output = Result<Frame>>,
    endpoint: &str,
    idle_timeout: Duration,
) -> Result<()> {
    let answer = tokio::time::timeout(idle_timeout, responses)
        .await
        .map_err(|_| ClientError::timeout(endpoint, idle_timeout.as_secs()))??;
    match answer {
        Frame::AuthOk(_) => Ok(()),
        Frame::Error(e) => Err(ClientError::Server {
            code: e.code,
            message: e.message,
        }),
        other => Err(ClientError::protocol(
            endpoint,
            format!("unexpected answer to a token: {other:?}"),
        )),
    }
}

/// The frame that carries a token.
pub fn auth_frame(token: &str) -> Frame {
    Frame::Auth(shardcache_proto::Auth {
        token: token.to_string(),
    })
}

impl Conn {
    /// Authenticate this connection with `token`.
    pub async fn authenticate(&self, token: &str, idle_timeout: Duration) -> Result<()> {
        let endpoint = self.endpoint().to_string();
        let answer = async {
            let mut r = self.request(auth_frame(token), idle_timeout).await?;
            r.next().await
        };
        authenticate(answer, &endpoint, idle_timeout).await
    }

    pub async fn request(&self, frame: Frame, idle_timeout: Duration) -> Result<Responses> {
        let inner = match self {
            Conn::Tcp(c) => ResponsesInner::Tcp(c.request(frame).await?),
            Conn::Quic(c) => ResponsesInner::Quic(c.request(frame).await?),
            Conn::Local(c) => ResponsesInner::Tcp(c.conn.request(frame).await?),
        };
        Ok(Responses {
            inner,
            idle_timeout,
            endpoint: self.endpoint().to_string(),
        })
    }

    pub fn is_closed(&self) -> bool {
        match self {
            Conn::Tcp(c) => c.is_closed(),
            Conn::Quic(c) => c.is_closed(),
            Conn::Local(c) => c.conn.is_closed(),
        }
    }

    fn endpoint(&self) -> &str {
        match self {
            Conn::Tcp(c) => c.endpoint(),
            Conn::Quic(c) => c.endpoint(),
            Conn::Local(c) => c.conn.endpoint(),
        }
    }
}

enum ResponsesInner {
    Tcp(tcp::TcpResponses),
    Quic(quic::QuicResponses),
}

/// The response frames of one request. Dropping it abandons the request.
pub struct Responses {
    inner: ResponsesInner,
    idle_timeout: Duration,
    endpoint: String,
}

impl Responses {
    /// The next frame; an error if the connection ended or stayed silent too long.
    pub async fn next(&mut self) -> Result<Frame> {
        let next = async {
            match &mut self.inner {
                ResponsesInner::Tcp(r) => r.next().await,
                ResponsesInner::Quic(r) => r.next().await,
            }
        };
        match tokio::time::timeout(self.idle_timeout, next).await {
            Ok(frame) => frame,
            Err(_) => Err(ClientError::timeout(
                &self.endpoint,
                self.idle_timeout.as_secs(),
            )),
        }
    }
}
