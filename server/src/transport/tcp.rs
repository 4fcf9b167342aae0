//! The TCP data plane: accept, apply the connection limit, serve. With a TLS identity, a
//! connection whose first byte starts a TLS handshake (0x16; a frame starts with the protocol
//! version, 1) is served over TLS on the same port: `tls://` clients, plain ones alike.

use shardcache_proto::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use super::{Draining, PerConnection, Serving, Slots, refuse, serve_connection};
use crate::peer::Caller;

/// How long a TLS client may take to start and finish its handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept connections until the task is dropped; connections run in `conns`.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    serving: Serving,
    slots: Slots,
    draining: Draining,
    conns: &mut JoinSet<()>,
) {
    loop {
        while conns.try_join_next().is_some() {}
        let (stream, addr) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stats = serving.metrics.clone();
        let Some((permit, members_only)) = slots.admit() else {
            stats.rejected_connections.inc();
            tracing::warn!(peer = %addr, "connection refused: max_connections reached");
            let msg = "server at max_connections; retry later".to_string();
            conns.spawn(refuse(stream, ErrorCode::Busy, msg));
            continue;
        };
        let serving = serving.clone();
        let draining = draining.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            stats.open_connections.inc();
            let shared = PerConnection {
                members_only,
                ..serving.connection()
            };
            match tls {
                Some(tls) if starts_tls(&stream).await => match handshake(&tls, stream).await {
                    Ok(stream) => {
                        // With a cluster CA, a client certificate is only accepted when it
                        // chains to it: the connection is a member's.
                        let member = stream.get_ref().1.peer_certificates().is_some();
                        let caller = Caller {
                            authenticated: member,
                            ..Caller::addr(addr)
                        };
                        let (rd, wr) = tokio::io::split(stream);
                        serve_connection(rd, wr, serving, caller, shared, draining, None).await;
                    }
                    Err(e) => tracing::debug!(peer = %addr, error = %e, "tls handshake failed"),
                },
                _ => {
                    let (rd, wr) = stream.into_split();
                    let caller = Caller::addr(addr);
                    serve_connection(rd, wr, serving, caller, shared, draining, None).await;
                }
            }
            stats.open_connections.dec();
            drop(permit);
        });
    }
}

/// Whether the client's first byte starts a TLS record (a handshake). A client that sends
/// nothing within the handshake timeout is served as a plain one.
async fn starts_tls(stream: &TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await,
        Ok(Ok(1)) if first[0] == 0x16
    )
}

async fn handshake(
    tls: &TlsAcceptor,
    stream: TcpStream,
) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "tls handshake timed out"))?
}
