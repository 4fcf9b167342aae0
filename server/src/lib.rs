//! The shardcache server: a read-through cache between object storage and training data loaders.
//!
//! - [`config`]: settings from flags, environment and TOML;
//! - [`origin`]: object-store access with pinned versions, deadlines and bounded retries;
//! - [`cache`]: block identity, the RAM tier with single-flight fills, the version cache;
//! - [`cluster`]: membership, rendezvous placement, links to peers;
//! - [`service`]: the local read path from a `DATASET/KEY` range to checksummed chunks;
//! - [`peer`]: cross-node work: blocks from other members, answers to them, chain fills, warms;
//! - [`node`]: one running node as its front doors see it;
//! - [`transport`]: the data plane over TCP, QUIC and the local socket;
//! - [`control`]: the gRPC control plane (warm, list, stat, evict, members, health);
//! - [`stats`], [`metrics`] and [`admin`]: the metrics registry, every module's metrics,
//!   `/metrics`, `/healthz`, `/readyz`.
//!
//! [`Server::run`] takes already-bound listeners and a shutdown future, so tests bind
//! `127.0.0.1:0` and the binary binds the configured addresses.

pub mod access;
pub mod admin;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod control;
pub mod drain;
pub mod env;
pub mod error;
pub mod listen;
pub mod metrics;
pub mod node;
pub mod origin;
pub mod peer;
pub mod s3;
pub mod service;
pub mod stats;
pub mod transport;
pub mod units;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::cache::{DiskConfig, DiskTier, RamTier, VersionCache};
use crate::cluster::{Cluster, ClusterSettings, PeerTransport};
use crate::config::{Config, DEFAULT_DATASET, EnvSource, ProcessEnv};
use crate::metrics::Metrics;
use crate::node::Node;
use crate::origin::settings::SettingsError;
use crate::origin::{
    DatasetSettings, Origin, OriginDefaults, OriginSettings, RetryPolicy, StoreError, build_store,
};
use crate::peer::{Chains, PeerServer, Remote};
use crate::service::{CacheService, Tiers};
use crate::transport::tls::{Identity, TlsError, quic_config, server_tls};
use crate::transport::{ConnLimits, Serving};

use crate::access::Policy;
pub use crate::error::{Error, Result};
pub use crate::listen::Listeners;

/// How long open connections may finish their requests after shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why a server could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("control plane: {reason}")]
    Control {
        reason: String,
        #[source]
        source: Option<std::io::Error>,
    },
    #[error(transparent)]
    AccessTokens(#[from] access::TokenFileError),
    #[error(transparent)]
    ClusterSecret(#[from] access::SecretError),
    #[error(transparent)]
    S3Keys(#[from] s3::KeysError),
    /// A listener off loopback that would serve without authentication.
    #[error("{0}")]
    Unprotected(String),
}

/// The bearer token in a token file (surrounding whitespace ignored; must not be empty).
fn read_token(path: &std::path::Path) -> Result<String, BuildError> {
    let text = std::fs::read_to_string(path).map_err(|e| BuildError::Control {
        reason: format!("cannot read token file {}: {e}", path.display()),
        source: Some(e),
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(BuildError::Control {
            reason: format!("token file {} is empty", path.display()),
            source: None,
        });
    }
    Ok(token)
}

/// The disk tier, if configured. A directory that cannot be opened does not stop the server:
/// it serves from RAM and origin, says so in the log, and reports the tier degraded.
fn open_disk_tier(config: &Config, metrics: &Metrics) -> Option<Arc<DiskTier>> {
    let root = config.disk_cache.clone()?;
    let disk = DiskConfig {
        root,
        budget: config.disk_cache_size.unwrap_or(0),
        policy: config.disk_eviction,
        block_size: config.block_size,
        write_queue: config.disk_write_queue,
    };
    match DiskTier::open(&disk, metrics.tiers.clone()) {
        Ok(tier) => Some(Arc::new(tier)),
        Err(e) => {
            tracing::warn!(root = %disk.root.display(), error = %e, "disk tier unavailable: serving from RAM and origin");
            let tiers = &metrics.tiers;
            tiers.degraded.with_label_values(&["disk"]).set(1);
            tiers.disk_errors.inc();
            None
        }
    }
}

/// The server-wide origin defaults datasets may override.
pub fn origin_defaults(config: &Config) -> OriginDefaults {
    OriginDefaults {
        first_byte_timeout: config.origin_first_byte_timeout.min(config.origin_timeout),
        request_timeout: config.origin_timeout,
        stale_if_error: config.stale_if_error,
    }
}

/// The effective origin settings of every configured dataset; the first that cannot work is
/// an error naming it.
pub fn resolve_origins(
    config: &Config,
    env: &dyn EnvSource,
) -> Result<Vec<OriginSettings>, SettingsError> {
    let defaults = origin_defaults(config);
    config
        .datasets
        .iter()
        .map(|d| origin::settings::resolve(d, &defaults, env))
        .collect()
}

/// A configured server, ready to run.
pub struct Server {
    config: Config,
    node: Arc<Node>,
    metrics: Arc<Metrics>,
    quic: Option<quinn::ServerConfig>,
    /// TLS for TCP clients that start with a handshake (`tls://` endpoints).
    tcp_tls: Option<tokio_rustls::TlsAcceptor>,
    control_token: Option<String>,
    control_tls: Option<tonic::transport::ServerTlsConfig>,
    policy: Policy,
    secret: Option<Arc<access::ClusterSecret>>,
    /// The S3 endpoint's access keys (with --s3-listen).
    s3_keys: Option<Arc<s3::Keys>>,
}

impl Server {
    /// Build origins, tiers and TLS from the configuration, reading origin settings from the
    /// process environment.
    pub fn build(config: Config) -> Result<Server, BuildError> {
        Server::build_with_env(config, &ProcessEnv)
    }

    /// [`Server::build`] with the environment the origins' settings are read from.
    pub fn build_with_env(config: Config, env: &dyn EnvSource) -> Result<Server, BuildError> {
        let settings = resolve_origins(&config, env)?;
        let mut stores = Vec::new();
        for s in &settings {
            let create = s.dataset == DEFAULT_DATASET && config.datasets.len() == 1;
            stores.push((s.dataset.clone(), build_store(s, create)?));
        }
        Server::assemble(config, stores, settings)
    }

    /// Build with the given stores instead of the configured URLs (same names, in any order);
    /// tests use this to put a counting or failing store in front.
    pub fn with_stores(
        config: Config,
        stores: Vec<(String, Arc<dyn ObjectStore>)>,
    ) -> Result<Server, BuildError> {
        Server::assemble(config, stores, Vec::new())
    }

    fn assemble(
        config: Config,
        stores: Vec<(String, Arc<dyn ObjectStore>)>,
        settings: Vec<OriginSettings>,
    ) -> Result<Server, BuildError> {
        listen::check_exposure(&config)?;
        let policy = listen::access_policy(&config)?;
        let s3_keys = match config.s3_listen {
            Some(addr) => {
                let names: Vec<String> = config.datasets.iter().map(|d| d.name.clone()).collect();
                let keys = s3::Keys::load(
                    config.s3_credentials.as_deref(),
                    config.s3_anonymous,
                    &names,
                )?;
                if keys.is_empty() && !keys.anonymous() {
                    return Err(BuildError::Unprotected(format!(
                        "--s3-listen {addr} has no access keys: give --s3-credentials FILE (ACCESS_KEY:SECRET_KEY[:BUCKET,...] a line), or --s3-anonymous to let anyone who reaches {addr} read every dataset"
                    )));
                }
                Some(Arc::new(keys))
            }
            None => None,
        };
        let secret = match &config.cluster_secret_file {
            Some(path) => Some(Arc::new(access::ClusterSecret::load(path)?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        let permits = Arc::new(Semaphore::new(config.origin_concurrency));
        let defaults = origin_defaults(&config);
        let mut origins = Vec::new();
        for (name, store) in stores {
            let d = config.datasets.iter().find(|d| d.name == name);
            let described = settings.iter().find(|s| s.dataset == name).cloned();
            let (first_byte, request, stale) = match &described {
                Some(s) => (s.first_byte_timeout, s.request_timeout, s.stale_if_error),
                None => (
                    defaults.first_byte_timeout,
                    defaults.request_timeout,
                    defaults.stale_if_error,
                ),
            };
            let dataset = DatasetSettings {
                block_size: d.map_or(config.block_size, |d| config.dataset_block_size(d)),
                metadata_ttl: d.map_or(config.metadata_ttl, |d| config.dataset_metadata_ttl(d)),
                immutable: d.is_some_and(|d| d.immutable),
                stale_if_error: stale,
            };
            let retry = RetryPolicy {
                attempts: config.origin_retries.saturating_add(1),
                attempt_timeout: request,
                first_byte_timeout: first_byte,
                ..RetryPolicy::default()
            };
            let mut origin = Origin::new(
                name,
                store,
                dataset,
                retry,
                permits.clone(),
                metrics.origin.clone(),
            );
            if let Some(s) = described {
                origin = origin.with_description(Arc::new(s));
            }
            origins.push(Arc::new(origin));
        }
        let disk = open_disk_tier(&config, &metrics);
        let origin_budget = config.origin_timeout * config.origin_retries.saturating_add(1);
        let cluster = Cluster::new(
            ClusterSettings {
                node_id: config.node_id.clone().unwrap_or_default(),
                weight: config.weight,
                own_addr: (!config.listen.ip().is_unspecified() && config.listen.port() != 0)
                    .then_some(config.listen),
                peers: config.peers.clone(),
                peers_file: config.peers_file.clone(),
                peer_dns: config.peer_dns.clone(),
                refresh: config.peer_refresh,
                probe_interval: config.peer_probe_interval,
                peer_timeout: config.peer_timeout,
                // A backstop: an owner that dies or stalls is noticed by the probes sooner; this
                // bounds an owner that is alive but stuck (its neighbour probes, a wait for an
                // origin slot, every origin attempt and the backoff between them).
                fill_timeout: config.peer_timeout * 5 + origin_budget * 2,
                read_neighbours: config.read_neighbours,
                chain_chunk: config.chain_chunk as u32,
                secret: secret.clone(),
                transport: match &config.tls_ca {
                    None => PeerTransport::Tcp,
                    Some(ca) => PeerTransport::Quic(Arc::new(shardcache_client::ClientOptions {
                        connections: 1,
                        tls_ca: Some(ca.clone()),
                        tls_any_name: true,
                        tls_client_cert: config.tls_cert.clone(),
                        tls_client_key: config.tls_key.clone(),
                        ..Default::default()
                    })),
                },
            },
            metrics.cluster.clone(),
        );
        // Chain fills are bounded like origin fills: each buffers up to a block.
        let chains = Arc::new(Chains::new(config.origin_concurrency));
        // Alone, the cluster places every block here and `Remote` answers at once.
        let remote = Arc::new(Remote::new(
            cluster.clone(),
            chains.clone(),
            metrics.peer.clone(),
        ));
        let service = Arc::new(CacheService::new(
            origins,
            Tiers {
                // Blocks read ahead that the RAM tier did not keep wait for their readers in
                // a share of the RAM and response budgets.
                ram: RamTier::new(config.ram_cache, metrics.tiers.ram_evictions.clone())
                    .parking((config.ram_cache / 16).max(config.response_buffer / 8)),
                disk: disk.clone(),
                versions: VersionCache::new(config.metadata_cache_entries, disk),
            },
            metrics.read.clone(),
            config.readahead_blocks,
            config.peer_keep_copies,
            remote,
        ));
        let peers = Arc::new(PeerServer::new(
            service.clone(),
            cluster.clone(),
            chains,
            metrics.peer.clone(),
            config.tls_ca.is_some() || secret.is_some(),
        ));
        let node = Node::new(service, cluster, peers);
        // One TLS identity for QUIC and for TCP clients that start with a TLS handshake.
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(server_tls(
                Identity::from_files(cert, key)?,
                config.tls_ca.as_deref(),
            )?),
            _ if config.insecure_dev_tls || config.quic_listen.is_some() => {
                Some(server_tls(Identity::self_signed()?, None)?)
            }
            _ => None,
        };
        let quic = match (&config.quic_listen, &tls) {
            (Some(_), Some(tls)) => Some(quic_config(
                tls.clone(),
                u32::try_from(config.max_requests_per_connection).unwrap_or(u32::MAX),
            )?),
            _ => None,
        };
        let tcp_tls = tls.map(|t| tokio_rustls::TlsAcceptor::from(Arc::new(t)));
        if tcp_tls.is_none() && config.access_tokens.is_some() && !config.listen.ip().is_loopback()
        {
            tracing::warn!(listen = %config.listen, "access tokens travel in clear to plain TCP clients: give --tls-cert and --tls-key, and clients connect with tls://");
        }
        let control_token = match &config.control_token_file {
            Some(path) => Some(read_token(path)?),
            None => None,
        };
        if control_token.is_some()
            && config.tls_cert.is_none()
            && config.control_listen.is_some_and(|a| !a.ip().is_loopback())
        {
            tracing::warn!(
                "the control token travels in clear: give --tls-cert and --tls-key for a TLS control plane"
            );
        }
        let control_tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read(p).map_err(|e| BuildError::Control {
                        reason: format!("cannot read {}: {e}", p.display()),
                        source: Some(e),
                    })
                };
                let mut tls = tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
                );
                if let Some(ca) = &config.tls_ca {
                    tls = tls
                        .client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?))
                        .client_auth_optional(true);
                }
                Some(tls)
            }
            _ => None,
        };
        Ok(Server {
            config,
            node,
            metrics,
            quic,
            tcp_tls,
            control_token,
            control_tls,
            policy,
            secret,
            s3_keys,
        })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn service(&self) -> Arc<CacheService> {
        self.node.service.clone()
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Serve until `shutdown` completes, then give open connections a short grace period.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()> {
        self.node.set_control_addr(listeners.control_addr());
        let serving = Serving {
            node: self.node.clone(),
            limits: ConnLimits {
                max_requests: self.config.max_requests_per_connection,
                write_timeout: self.config.write_timeout,
                idle_timeout: self.config.idle_timeout,
                buffer: self.config.connection_buffer,
            },
            metrics: self.metrics.transport.clone(),
            policy: self.policy.clone(),
            secret: self.secret.clone(),
            responses: transport::ResponseBudget::new(self.config.response_buffer),
        };
        let max_conns =
            transport::Slots::new(self.config.max_connections, self.config.member_connections);
        let (drain_tx, draining) = tokio::sync::watch::channel(false);
        let mut tcp_conns = JoinSet::new();
        let mut quic_conns = JoinSet::new();
        let tcp = transport::tcp::accept_loop(
            listeners.tcp,
            self.tcp_tls.clone(),
            serving.clone(),
            max_conns.clone(),
            draining.clone(),
            &mut tcp_conns,
        );
        let endpoint = match (listeners.quic, self.quic) {
            (Some(socket), Some(server_config)) => Some(quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(server_config),
                socket,
                Arc::new(quinn::TokioRuntime),
            )?),
            _ => None,
        };
        let quic = async {
            match &endpoint {
                Some(ep) => {
                    transport::quic::accept_loop(
                        ep.clone(),
                        serving.clone(),
                        max_conns.clone(),
                        draining.clone(),
                        &mut quic_conns,
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        // The admin endpoint runs until the drain starts, beside the data plane.
        let admin = match listeners.admin {
            Some(listener) => Some(tokio::spawn(
                Arc::new(admin::Admin::new(self.node.clone(), self.metrics.clone()))
                    .serve(listener, draining.clone()),
            )),
            None => None,
        };
        // The S3 endpoint, beside the data plane, until the drain starts.
        let s3 = match (listeners.s3, &self.s3_keys) {
            (Some(listener), Some(keys)) => Some(tokio::spawn(s3::serve(
                listener,
                self.node.service.clone(),
                keys.clone(),
                self.metrics.s3.clone(),
                self.config.s3_domain.clone(),
                draining.clone(),
            ))),
            _ => None,
        };
        let membership = tokio::spawn(self.node.cluster.clone().run(draining.clone()));
        let control = match listeners.control {
            Some(listener) => {
                let mut stop = draining.clone();
                Some(tokio::spawn(control::serve(
                    listener,
                    self.node.clone(),
                    self.control_token.clone(),
                    self.control_tls.clone(),
                    async move {
                        let _ = stop.wait_for(|d| *d).await;
                    },
                )))
            }
            None => None,
        };
        let mut local_conns = JoinSet::new();
        let local = async {
            match listeners.local {
                Some(listener) => {
                    let budget = match self.config.local_regions_budget {
                        0 => self.config.ram_cache,
                        n => n,
                    };
                    let local_limits = transport::local::LocalLimits::new(
                        self.config.local_max_region,
                        budget,
                        self.config.local_allowed_uids.clone(),
                    );
                    transport::local::accept_loop(
                        listener,
                        serving.clone(),
                        local_limits,
                        Arc::new(Semaphore::new(self.config.local_max_clients)),
                        draining.clone(),
                        &mut local_conns,
                    )
                    .await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = tcp => {}
            () = quic => {}
            () = local => {}
            () = shutdown => tracing::info!("shutting down"),
        }
        // Connections stop reading new requests, finish the ones in flight, and close.
        let _ = drain_tx.send(true);
        let drain = async {
            while tcp_conns.join_next().await.is_some() {}
            while quic_conns.join_next().await.is_some() {}
            while local_conns.join_next().await.is_some() {}
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
            tracing::warn!("closing connections still open after the shutdown grace period");
        }
        if let Some(ep) = &endpoint {
            ep.close(0u32.into(), b"server shutting down");
        }
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        if let Some(s3) = s3 {
            let _ = s3.await;
        }
        let _ = membership.await;
        // A warm's progress stream lasts as long as the warm: the control plane gets the same
        // grace as connections, then stops.
        if let Some(mut control) = control {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut control).await {
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "control plane stopped with an error"),
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(
                        "stopping control-plane calls still open after the shutdown grace period"
                    );
                    control.abort();
                }
            }
        }
        Ok(())
    }
}
