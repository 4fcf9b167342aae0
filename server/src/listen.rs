//! The sockets a server serves on, bound before [`crate::Server::run`], and who may reach
//! them: no listener off loopback without authentication unless the operator says so.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::BuildError;
use crate::access::{self, Policy};
use crate::config::Config;

/// Sockets the server serves on, bound before [`Server::run`].
pub struct Listeners {
    pub tcp: TcpListener,
    pub quic: Option<std::net::UdpSocket>,
    pub admin: Option<TcpListener>,
    pub control: Option<TcpListener>,
    pub s3: Option<TcpListener>,
    pub local: Option<tokio::net::UnixListener>,
}

impl Listeners {
    /// Bind the addresses in `config`.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        let tcp = TcpListener::bind(config.listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", config.listen))
        })?;
        let quic = match config.quic_listen {
            Some(addr) => Some(std::net::UdpSocket::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on udp {addr}: {e}"))
            })?),
            None => None,
        };
        let admin = match config.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on admin {addr}: {e}"))
            })?),
            None => None,
        };
        let control = match config.control_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on control {addr}: {e}"))
            })?),
            None => None,
        };
        let s3 = match config.s3_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on s3 {addr}: {e}"))
            })?),
            None => None,
        };
        let local = match &config.local_socket {
            Some(path) => Some(bind_unix(path, config)?),
            None => None,
        };
        Ok(Listeners {
            tcp,
            quic,
            admin,
            control,
            s3,
            local,
        })
    }

    pub fn tcp_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.quic.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|s| s.local_addr().ok())
    }

    pub fn s3_addr(&self) -> Option<SocketAddr> {
        self.s3.as_ref().and_then(|s| s.local_addr().ok())
    }
}

/// Bind a Unix socket, replacing a stale socket file left by an earlier run (but never another
/// kind of file), with the configured mode and group.
fn bind_unix(path: &std::path::Path, config: &Config) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let fail = |what: String, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
    {
        std::fs::remove_file(path)?;
    }
    let gid = match &config.local_socket_group {
        Some(group) => Some(group_id(group).map_err(|reason| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("--local-socket-group {group}: {reason}"),
            )
        })?),
        None => None,
    };
    let listener =
        tokio::net::UnixListener::bind(path).map_err(|e| fail("cannot listen on".into(), e))?;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(config.local_socket_mode),
    )
    .map_err(|e| {
        fail(
            format!("cannot set mode {:o} on", config.local_socket_mode),
            e,
        )
    })?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| fail(format!("cannot give group {gid}"), e))?;
    }
    Ok(listener)
}

/// A group's id: a number, or a name in /etc/group.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("not a number, and /etc/group cannot be read: {e}"))?;
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            let gid = fields.nth(1)?.parse().ok()?;
            (name == group).then_some(gid)
        })
        .next()
        .ok_or_else(|| "no such group in /etc/group (give a name or a numeric gid)".to_string())
}

/// Refuse to listen off loopback without authentication, unless the operator says so.
pub(crate) fn check_exposure(config: &Config) -> Result<(), BuildError> {
    if config.insecure_allow_anonymous {
        return Ok(());
    }
    let exposed = |addr: &SocketAddr| !addr.ip().is_loopback();
    if config.access_tokens.is_none() {
        let data = std::iter::once(("--listen", config.listen))
            .chain(config.quic_listen.map(|a| ("--quic-listen", a)));
        for (flag, addr) in data {
            if exposed(&addr) {
                return Err(BuildError::Unprotected(format!(
                    "{flag} {addr} is not a loopback address, and the data plane has no access tokens: give --access-tokens FILE, or --insecure-allow-anonymous to let anyone who reaches {addr} read every dataset"
                )));
            }
        }
    }
    let clustered =
        !config.peers.is_empty() || config.peers_file.is_some() || config.peer_dns.is_some();
    if clustered && config.tls_ca.is_none() && config.cluster_secret_file.is_none() {
        return Err(BuildError::Unprotected(
            "peers are configured, and members have no way to prove who they are: give --cluster-secret-file FILE (the same secret on every node) or --tls-ca FILE with member certificates, or --insecure-allow-anonymous to trust any process that answers at a member's address".into(),
        ));
    }
    if let Some(addr) = config.control_listen
        && exposed(&addr)
        && config.control_token_file.is_none()
    {
        return Err(BuildError::Unprotected(format!(
            "--control-listen {addr} is not a loopback address, and the control plane has no token: give --control-token-file FILE, or --insecure-allow-anonymous to let anyone who reaches {addr} warm and evict"
        )));
    }
    Ok(())
}

/// Who may use the data plane, said once at start.
pub(crate) fn access_policy(config: &Config) -> Result<Policy, BuildError> {
    let Some(path) = &config.access_tokens else {
        if config.insecure_allow_anonymous {
            tracing::warn!(listen = %config.listen, "data plane without access tokens (--insecure-allow-anonymous): anyone who reaches it reads every dataset");
        } else {
            tracing::info!(
                "data plane without access tokens: serving loopback and the local socket only (--access-tokens FILE to serve others)"
            );
        }
        return Ok(Policy::Anonymous);
    };
    let known: Vec<String> = config.datasets.iter().map(|d| d.name.clone()).collect();
    let tokens = access::AccessTokens::load(path, &known)?;
    tracing::info!(tokens = tokens.len(), file = %path.display(), "data plane requires an access token");
    Ok(Policy::Tokens(Arc::new(tokens)))
}
