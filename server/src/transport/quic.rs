//! The QUIC data plane: each request travels on its own bidirectional stream, so a slow response
//! never holds up another (no head-of-line blocking across requests). Each stream carries the same
//! frames as a TCP connection and is served by the same code.

use std::time::Duration;

use tokio::task::JoinSet;

use super::{Draining, Serving, Slots, serve_connection};
use crate::peer::Caller;

/// Flow-control windows sized for multi-MiB blocks on fast links; at most `max_streams`
/// requests (streams) open on one connection.
pub fn transport_config(max_streams: u32) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(max_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window((16u32 << 20).into())
        .receive_window((256u32 << 20).into())
        .send_window(256 << 20)
        .max_idle_timeout(Some(
            Duration::from_secs(30)
                .try_into()
                .expect("valid idle timeout"),
        ))
        .keep_alive_interval(Some(Duration::from_secs(10)));
    t
}

/// Accept QUIC connections until the task is dropped. A client whose address is not validated
/// yet is sent a Retry first (so a spoofed source costs the server one small packet); the
/// connection permit is taken once the handshake is done, so half-open handshakes hold none.
pub async fn accept_loop(
    endpoint: quinn::Endpoint,
    serving: Serving,
    slots: Slots,
    draining: Draining,
    conns: &mut JoinSet<()>,
) {
    while let Some(incoming) = endpoint.accept().await {
        while conns.try_join_next().is_some() {}
        if !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let stats = serving.metrics.clone();
        if slots.clients.available_permits() == 0 && slots.members.available_permits() == 0 {
            stats.rejected_connections.inc();
            tracing::warn!(peer = %incoming.remote_address(), "quic connection refused: max_connections reached");
            incoming.refuse();
            continue;
        }
        let serving = serving.clone();
        let mut draining = draining.clone();
        let slots = slots.clone();
        conns.spawn(async move {
            let peer = incoming.remote_address().to_string();
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming);
            let conn = match handshake.await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "quic handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "quic handshake timed out");
                    return;
                }
            };
            // Over QUIC a member is known from its certificate, before any request.
            let member = conn.peer_identity().is_some();
            let permit = match slots.admit() {
                Some((permit, members_only)) if member || !members_only => permit,
                _ => {
                    stats.rejected_connections.inc();
                    conn.close(0u32.into(), b"server at max_connections; retry later");
                    return;
                }
            };
            stats.open_connections.inc();
            // A client certificate is only accepted when it chains to the cluster CA.
            let remote = Caller {
                name: peer.clone(),
                ip: Some(conn.remote_address().ip()),
                authenticated: conn.peer_identity().is_some(),
            };
            // One authentication and one budget of requests for the whole connection,
            // whichever streams carry them.
            let shared = serving.connection();
            let mut streams = JoinSet::new();
            let idle_timeout = serving.limits.idle_timeout;
            loop {
                // A wrong token or proof on any stream ends the whole connection.
                if shared.access.failed() {
                    conn.close(0u32.into(), b"authentication failed");
                    break;
                }
                // With no stream open, the connection has idle_timeout to open one (QUIC
                // keep-alives alone do not keep it).
                let idle = streams.is_empty();
                let accepted = tokio::select! {
                    accepted = conn.accept_bi() => accepted,
                    Some(_) = streams.join_next(), if !idle => continue,
                    _ = draining.wait_for(|d| *d) => break,
                    _ = tokio::time::sleep(idle_timeout), if idle => {
                        stats.idle_closed.inc();
                        conn.close(0u32.into(), b"idle");
                        break;
                    }
                };
                match accepted {
                    Ok((send, recv)) => {
                        streams.spawn(serve_connection(
                            recv,
                            send,
                            serving.clone(),
                            remote.clone(),
                            shared.clone(),
                            draining.clone(),
                            None,
                        ));
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "quic connection ended");
                        break;
                    }
                }
                while streams.try_join_next().is_some() {}
            }
            // Streams already accepted finish their requests (bounded by the shutdown grace).
            while streams.join_next().await.is_some() {}
            stats.open_connections.dec();
            drop(permit);
        });
    }
}

/// How long a QUIC handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
