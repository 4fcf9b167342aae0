//! [`ClientOptions`]: how a client connects and behaves. A module of its own, below both the
//! client and the connections (QUIC reads its trust settings).

use std::path::PathBuf;
use std::time::Duration;

/// How a [`Client`](crate::Client) connects and behaves.
#[derive(Clone)]
pub struct ClientOptions {
    /// Access token for servers run with `--access-tokens`, sent once per connection.
    pub token: Option<String>,
    /// Connections kept to the server; requests are spread over them. QUIC multiplexes streams,
    /// so one connection is usually enough there.
    pub connections: usize,
    /// CA certificate (PEM) that signed the server's QUIC certificate.
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate (a server run with `--insecure-dev-tls`). Never in
    /// production.
    pub insecure_skip_verify: bool,
    /// TLS server name, when it differs from the endpoint's host.
    pub server_name: Option<String>,
    /// Accept any name in a server certificate that chains to `tls_ca` (cluster members,
    /// whose identity is the CA's signature, not an address).
    pub tls_any_name: bool,
    /// Client certificate chain and key (PEM) for servers that ask for one (mutual TLS).
    pub tls_client_cert: Option<PathBuf>,
    pub tls_client_key: Option<PathBuf>,
    /// Longest silence from the server inside one request.
    pub idle_timeout: Duration,
    /// Blocks an [`ObjectReader`](crate::ObjectReader) fetches ahead of the reading position.
    pub readahead: usize,
    /// Retries of a request that failed with a retryable error.
    pub retries: u32,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            token: None,
            connections: 4,
            tls_ca: None,
            insecure_skip_verify: false,
            server_name: None,
            tls_any_name: false,
            tls_client_cert: None,
            tls_client_key: None,
            idle_timeout: Duration::from_secs(60),
            readahead: 4,
            retries: 2,
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("connections", &self.connections)
            .field("tls_ca", &self.tls_ca)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("server_name", &self.server_name)
            .field("tls_any_name", &self.tls_any_name)
            .field("tls_client_cert", &self.tls_client_cert)
            .field("tls_client_key", &self.tls_client_key)
            .field("idle_timeout", &self.idle_timeout)
            .field("readahead", &self.readahead)
            .field("retries", &self.retries)
            .finish()
    }
}
