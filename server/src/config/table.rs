//! Every setting of `shardcache serve`, defined once.
//!
//! Each line of the [`settings!`] table gives a setting's name, kind, default and help. From it
//! come: the `--flag` (the name with `-`), the environment variable (`SHARDCACHE_` + the name in
//! upper case), the TOML key (the name), the `--help` line (with the variable and the default),
//! the field of [`Config`] and its default. Nothing else lists the settings.

use super::kinds;

/// What the table says about one setting.
#[derive(Debug, Clone, Copy)]
pub struct SettingInfo {
    /// TOML key and field name (`ram_cache`).
    pub key: &'static str,
    /// Default, as text in the setting's kind.
    pub default: &'static str,
    /// Placeholder of the value in `--help` (`SIZE`).
    pub value_name: &'static str,
    pub help: &'static str,
    /// The flag may be given without a value, meaning `true`.
    pub switch: bool,
}

impl SettingInfo {
    /// `--ram-cache`.
    pub fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }

    /// `SHARDCACHE_RAM_CACHE`.
    pub fn env(&self) -> String {
        format!("SHARDCACHE_{}", self.key.to_ascii_uppercase())
    }
}

macro_rules! settings {
    ($( $(#[doc = $help:literal])+ $name:ident : $kind:ident = $default:literal, $value_name:literal; )*) => {
        /// Every setting, in the order `--help` lists them.
        pub const SETTINGS: &[SettingInfo] = &[$(
            SettingInfo {
                key: stringify!($name),
                default: $default,
                value_name: $value_name,
                help: concat!($($help),+),
                switch: kinds::$kind::SWITCH,
            },
        )*];

        /// The whole server configuration, resolved: flag > environment > file > default.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $help])+ pub $name: kinds::$kind::T, )*
            /// Datasets from the file, `SHARDCACHE_DATASET` and `--dataset`, merged by name.
            pub datasets: Vec<super::DatasetConfig>,
        }

        impl Config {
            /// Each setting from the first source that has it.
            pub(super) fn resolve(values: &super::Sources<'_>) -> Result<Config, super::ConfigError> {
                Ok(Config {
                    $( $name: values.pick(stringify!($name), $default, kinds::$kind::text, kinds::$kind::toml)?, )*
                    datasets: Vec::new(),
                })
            }
        }
    };
}

settings! {
    /// TCP data plane address.
    listen: addr = "127.0.0.1:7070", "ADDR";
    /// QUIC data plane address (needs --tls-cert/--tls-key or --insecure-dev-tls).
    quic_listen: opt_addr = "off", "ADDR";
    /// gRPC control plane (warm, ls, stat, evict, members, health); off for none.
    control_listen: opt_addr = "127.0.0.1:7072", "ADDR";
    /// A file holding the bearer token every control call must carry.
    control_token_file: opt_path = "none", "FILE";
    /// A secret every member proves with a challenge–response on each connection to another (when no --tls-ca is given).
    cluster_secret_file: opt_path = "none", "FILE";
    /// Data-plane bearer tokens: one `TOKEN DATASET[,DATASET…]` or `TOKEN *` a line. Without it the data plane serves anyone, on loopback and the local socket only.
    access_tokens: opt_path = "none", "FILE";
    /// Serve the data plane without tokens, and the control plane without a token, on addresses other than loopback.
    insecure_allow_anonymous: switch = "false", "BOOL";
    /// Admin endpoint: /metrics, /healthz, /readyz, /members; off for none.
    admin_listen: opt_addr = "127.0.0.1:7073", "ADDR";
    /// S3-compatible read endpoint: each dataset is a bucket; off for none.
    s3_listen: opt_addr = "off", "ADDR";
    /// Access keys of the S3 endpoint: one `ACCESS_KEY:SECRET_KEY[:BUCKET,…]` a line (no bucket list: every dataset).
    s3_credentials: opt_path = "none", "FILE";
    /// Allow unsigned reads of every dataset on the S3 endpoint.
    s3_anonymous: switch = "false", "BOOL";
    /// Base domain of virtual-host-style S3 requests (`BUCKET.DOMAIN`); path-style works always.
    s3_domain: opt_text = "none", "DOMAIN";
    /// Unix socket for co-located clients: reads land in the client's shared memory.
    local_socket: opt_path = "off", "PATH";
    /// Local clients at once (each maps one region).
    local_max_clients: count = "256", "N";
    /// Largest shared-memory region a local client may register.
    local_max_region: size = "4GiB", "SIZE";
    /// All local clients' regions together (the server's writes into them are charged to its memory); 0 for the RAM tier's budget.
    local_regions_budget: size = "0", "SIZE";
    /// File mode of the local socket (connecting needs write permission).
    local_socket_mode: mode = "0660", "MODE";
    /// Group of the local socket (a name or a gid); the server's own when unset.
    local_socket_group: opt_text = "none", "GROUP";
    /// Uids allowed on the local socket (checked with SO_PEERCRED); any when empty.
    local_allowed_uids: uids = "", "UID,...";
    /// RAM tier budget.
    ram_cache: size = "1GiB", "SIZE";
    /// Disk (NVMe) tier directory, kept across restarts.
    disk_cache: opt_path = "off", "DIR";
    /// Disk tier budget (required with --disk-cache).
    disk_cache_size: opt_size = "none", "SIZE";
    /// Disk tier policy: epoch-aware (keeps a stable set when the dataset is larger than the cache) or lru.
    disk_eviction: policy = "epoch-aware", "POLICY";
    /// Background disk writes in flight; beyond it a block is not written.
    disk_write_queue: count = "16", "N";
    /// Default block size (64KiB to 64MiB).
    block_size: size = "4MiB", "SIZE";
    /// How long an object's version is trusted before it is checked again.
    metadata_ttl: duration = "30s", "DURATION";
    /// Object versions remembered at once.
    metadata_cache_entries: count64 = "262144", "N";
    /// This node's name in the cluster; placement hashes it, so keep it stable across restarts [default: the hostname].
    node_id: opt_text = "none", "ID";
    /// This node's share of the cluster's blocks, relative to the others'.
    weight: count32 = "1", "N";
    /// Cluster members' data-plane addresses, comma-separated (this node's own may be listed).
    peers: list = "", "ADDR,...";
    /// A file of member addresses, one host:port a line, re-read every --peer-refresh.
    peers_file: opt_path = "none", "FILE";
    /// Members from DNS (a Kubernetes headless Service), re-resolved every --peer-refresh.
    peer_dns: opt_text = "none", "NAME:PORT";
    /// How often member sources are re-read and re-resolved.
    peer_refresh: duration = "5s", "DURATION";
    /// How often each peer is pinged.
    peer_probe_interval: duration = "500ms", "DURATION";
    /// Deadline of a ping, connection or probe; a silent peer is marked down.
    peer_timeout: duration = "1s", "DURATION";
    /// Neighbours asked for a block before the origin.
    read_neighbours: count = "2", "N";
    /// Keep blocks read from peers in RAM, so hot blocks spread.
    peer_keep_copies: flag = "true", "BOOL";
    /// Chunk size of chain distribution (warms to several nodes), 64KiB to 4MiB.
    chain_chunk: size = "1MiB", "SIZE";
    /// PEM CA that signed the members' certificates: members then talk QUIC with mutual TLS.
    tls_ca: opt_path = "none", "FILE";
    /// PEM certificate chain for QUIC (and, with --tls-ca, this member's identity).
    tls_cert: opt_path = "none", "FILE";
    /// PEM private key of --tls-cert.
    tls_key: opt_path = "none", "FILE";
    /// A self-signed QUIC certificate, for local trials only.
    insecure_dev_tls: switch = "false", "BOOL";
    /// Log format: text or json (RUST_LOG filters).
    log_format: log_format = "text", "FORMAT";
    /// Deadline of one whole origin request attempt (a dataset's request_timeout wins).
    origin_timeout: duration = "30s", "DURATION";
    /// Deadline of the first byte of an origin answer, and of each silence inside a body (a dataset's first_byte_timeout wins).
    origin_first_byte_timeout: duration = "5s", "DURATION";
    /// While an origin is unreachable, serve the last known version of cached objects this long past their TTL; 0s: off (a dataset's stale_if_error wins).
    stale_if_error: duration = "0s", "DURATION";
    /// Retries after a failed or timed-out origin attempt (with backoff).
    origin_retries: count32 = "3", "N";
    /// Origin block fetches in flight, server-wide (bounds fill memory).
    origin_concurrency: count = "64", "N";
    /// Blocks of one read fetched ahead of the one being sent.
    readahead_blocks: count = "8", "N";
    /// Open data-plane connections; more are refused with a retryable error.
    max_connections: count = "4096", "N";
    /// Connections kept for cluster members beyond max_connections (a connection on one must prove it is a member within 10s).
    member_connections: count = "64", "N";
    /// Requests in flight on one connection; more get Busy.
    max_requests_per_connection: count = "256", "N";
    /// Longest a connection may take to take one frame's bytes; a client that stops reading is closed after it.
    write_timeout: duration = "30s", "DURATION";
    /// A connection with nothing in flight that sends nothing for this long is closed.
    idle_timeout: duration = "120s", "DURATION";
    /// Response bytes queued on one connection before its requests wait for the client.
    connection_buffer: size = "8MiB", "SIZE";
    /// Response bytes queued on all connections together (at least connection_buffer); a read that finds no room within write_timeout gets Busy.
    response_buffer: size = "256MiB", "SIZE";
}
