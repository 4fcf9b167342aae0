//! The admin endpoint (`--admin-listen`): `/metrics`, `/healthz`, `/readyz`.
//!
//! - `/metrics`: every metric in Prometheus text format; tier gauges are read at scrape time.
//! - `/healthz`: 200 while the process serves at all (liveness).
//! - `/readyz`: 200 when every dataset's origin answers, 503 naming the ones that do not
//!   (readiness). A probe is a HEAD of a key that should not exist: "found" and "not found" both
//!   prove the origin answers. Results are kept for a few seconds so frequent probes do not turn
//!   into origin traffic. In a cluster, readiness also waits until every member address has
//!   been probed once (membership known), so a starting node does not take traffic while it
//!   would still place every block on itself.
//! - `/members`: one line per member address: address, state, node id and weight.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::drain::Draining;
use crate::metrics::Metrics;
use crate::node::Node;

/// How long a readiness verdict is reused.
const READY_CACHE: Duration = Duration::from_secs(5);
/// Deadline of one readiness probe of one origin.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Admin {
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    ready: Mutex<Option<(Instant, Result<(), String>)>>,
}

/// Admin connections open at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest wait for a request's headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest an admin connection stays open (scrapers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);

impl Admin {
    pub fn new(node: Arc<Node>, metrics: Arc<Metrics>) -> Admin {
        Admin {
            node,
            metrics,
            ready: Mutex::new(None),
        }
    }

    /// Serve until `draining` turns true: at most [`MAX_CONNECTIONS`] connections (more are
    /// closed at once), each with [`REQUEST_TIMEOUT`] to send its request headers and to be
    /// answered.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, mut draining: Draining) {
        let mut conns = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        while let Some((stream, slot)) = accept(&listener, &slots, &mut draining, &mut conns).await
        {
            let admin = self.clone();
            conns.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req).await) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_LIFETIME, served).await;
                drop(slot);
            });
        }
        conns.abort_all();
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match req.uri().path() {
            "/metrics" => {
                let mut resp = text(StatusCode::OK, self.metrics());
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                resp
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/members" => text(StatusCode::OK, self.members()),
            "/readyz" => match self.readiness().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics, /healthz, /readyz, /members\n".into(),
            ),
        }
    }

    /// The metrics text, with gauges refreshed.
    pub fn metrics(&self) -> String {
        let tiers = &self.metrics.tiers;
        let ram = self.node.service.ram();
        tiers
            .used_bytes
            .with_label_values(&["ram"])
            .set(ram.used() as i64);
        tiers
            .capacity_bytes
            .with_label_values(&["ram"])
            .set(ram.capacity() as i64);
        self.metrics.encode()
    }

    /// Member addresses and what is known of them, a line each.
    fn members(&self) -> String {
        use crate::cluster::PeerState;
        let cluster = &self.node.cluster;
        let mut out = format!("self {} weight={}\n", cluster.node_id(), cluster.weight());
        for m in cluster.members() {
            let detail = match &m.state {
                PeerState::Up {
                    node_id, weight, ..
                } => format!("{node_id} weight={weight}"),
                PeerState::Down { reason } => format!("({reason})"),
                PeerState::Unknown | PeerState::Myself => String::new(),
            };
            out.push_str(&format!("{} {} {detail}\n", m.addr, m.state.name()));
        }
        out
    }

    async fn readiness(&self) -> Result<(), String> {
        if !self.node.cluster.membership_known() {
            return Err("membership not known yet: peers not probed".into());
        }
        let mut cached = self.ready.lock().await;
        if let Some((at, verdict)) = cached.as_ref()
            && at.elapsed() < READY_CACHE
        {
            return verdict.clone();
        }
        let probes = self.node.service.origins().map(|origin| async move {
            (
                origin.dataset().to_string(),
                origin.probe(PROBE_TIMEOUT).await,
            )
        });
        let failed: Vec<String> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|(name, result)| result.err().map(|e| format!("dataset {name}: {e}")))
            .collect();
        let verdict = if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        };
        *cached = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

/// The next connection of an HTTP front door (this one, the S3 endpoint) with a slot of
/// `slots`, or `None` once `draining` turns true. Connections beyond the slots are closed at
/// once; finished connection tasks are reaped from `conns` on the way.
pub(crate) async fn accept<T: 'static>(
    listener: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    draining: &mut Draining,
    conns: &mut JoinSet<T>,
) -> Option<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        while conns.try_join_next().is_some() {}
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = draining.wait_for(|d| *d) => return None,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => return Some((stream, slot)),
            Err(_) => drop(stream),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp
}
