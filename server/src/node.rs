//! One running node, as its front doors see it: the local read path, the membership, the
//! answers to other members, and what it tells clients about itself (`Hello`, `Ping`).
//!
//! The transports, the admin endpoint and the control plane each take an `Arc<Node>`; nothing
//! below this module knows it exists.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use shardcache_proto::{Pong, ServerInfo};

use crate::cluster::Cluster;
use crate::peer::PeerServer;
use crate::service::CacheService;

pub struct Node {
    pub service: Arc<CacheService>,
    pub cluster: Arc<Cluster>,
    pub peers: Arc<PeerServer>,
    /// The control plane's address once it listens, told to clients in `ServerInfo`.
    control_addr: OnceLock<SocketAddr>,
}

impl Node {
    pub fn new(
        service: Arc<CacheService>,
        cluster: Arc<Cluster>,
        peers: Arc<PeerServer>,
    ) -> Arc<Node> {
        Arc::new(Node {
            service,
            cluster,
            peers,
            control_addr: OnceLock::new(),
        })
    }

    /// Record where the control plane listens (once, before serving).
    pub fn set_control_addr(&self, addr: Option<SocketAddr>) {
        if let Some(addr) = addr {
            let _ = self.control_addr.set(addr);
        }
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr.get().copied()
    }

    /// The answer to `Hello`.
    pub fn server_info(&self) -> ServerInfo {
        ServerInfo {
            node_id: self.cluster.node_id().to_string(),
            instance: self.cluster.instance(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            control: self
                .control_addr()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        }
    }

    /// The answer to `Ping`: identity, weight and tier usage.
    pub fn pong(&self) -> Pong {
        let (disk_used, disk_capacity) = self
            .service
            .disk()
            .map_or((0, 0), |d| (d.used(), d.capacity()));
        Pong {
            node_id: self.cluster.node_id().to_string(),
            instance: self.cluster.instance(),
            weight: self.cluster.weight(),
            ram_used: self.service.ram().used(),
            ram_capacity: self.service.ram().capacity(),
            disk_used,
            disk_capacity,
        }
    }

    /// The answer to a `Ping` from a non-member: alive, and the instance (so a node still tells
    /// its own address apart), nothing about who it is or what it holds.
    pub fn liveness(&self) -> Pong {
        Pong {
            instance: self.cluster.instance(),
            ..Pong::default()
        }
    }
}
