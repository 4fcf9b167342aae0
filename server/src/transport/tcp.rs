//! The TCP data plane: accept, apply the connection limit, serve.

use std::sync::Arc;

use shardcache_proto::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::{Draining, Serving, refuse, serve_connection};
use crate::access::Access;
use crate::peer::Caller;

/// Accept connections until the task is dropped; connections run in `conns`.
pub async fn accept_loop(
    listener: TcpListener,
    serving: Serving,
    max_connections: Arc<Semaphore>,
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
        let Ok(permit) = max_connections.clone().try_acquire_owned() else {
            stats.rejected_connections.inc();
            tracing::warn!(peer = %addr, "connection refused: max_connections reached");
            let msg = "server at max_connections; retry later".to_string();
            conns.spawn(refuse(stream, ErrorCode::Busy, msg));
            continue;
        };
        let serving = serving.clone();
        let draining = draining.clone();
        conns.spawn(async move {
            stats.open_connections.inc();
            let (rd, wr) = stream.into_split();
            let access = Access::new(&serving.policy);
            serve_connection(rd, wr, serving, Caller::addr(addr), access, draining, None).await;
            stats.open_connections.dec();
            drop(permit);
        });
    }
}
