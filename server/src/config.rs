//! Server configuration: parse, then normalise, then validate.
//!
//! Every setting can come from four places; the first that sets it wins:
//! a command-line flag, an environment variable (`SHARDCACHE_` + the flag in UPPER_SNAKE), the
//! TOML file named by `--config`, the default. Flags and variables are strings, so both go through
//! one table of known keys ([`SCALAR_KEYS`]) that says how each string becomes a TOML value; the
//! merged table is then deserialised into [`Config`] once. The environment is read through
//! [`EnvSource`], so tests pass a map instead of touching the process environment.
//!
//! Datasets merge by name across sources: a `--dataset imagenet=…` flag replaces the file's
//! `imagenet` entry and keeps the others.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Where the server's environment variables come from.
pub trait EnvSource {
    fn var(&self, name: &str) -> Option<String>;
    /// Every variable with a value (the origins read the cloud SDKs' `AWS_*`, `AZURE_*` and
    /// `GOOGLE_*` families whole).
    fn vars(&self) -> Vec<(String, String)>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    fn vars(&self) -> Vec<(String, String)> {
        std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

impl EnvSource for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned().filter(|v| !v.is_empty())
    }

    fn vars(&self) -> Vec<(String, String)> {
        self.iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// A configuration error that names the setting at fault.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }
}

/// How a flag or variable's string turns into a value.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
    /// Comma-separated strings.
    List,
}

/// Scalar settings that flags and variables may set, with their kinds.
const SCALAR_KEYS: &[(&str, Kind)] = &[
    ("listen", Kind::Str),
    ("quic_listen", Kind::Str),
    ("admin_listen", Kind::Str),
    ("control_listen", Kind::Str),
    ("control_token_file", Kind::Str),
    ("local_socket", Kind::Str),
    ("local_max_clients", Kind::Int),
    ("local_max_region", Kind::Str),
    ("ram_cache", Kind::Str),
    ("block_size", Kind::Str),
    ("disk_cache", Kind::Str),
    ("disk_cache_size", Kind::Str),
    ("disk_eviction", Kind::Str),
    ("disk_write_queue", Kind::Int),
    ("metadata_ttl", Kind::Str),
    ("node_id", Kind::Str),
    ("weight", Kind::Int),
    ("peers", Kind::List),
    ("peers_file", Kind::Str),
    ("peer_dns", Kind::Str),
    ("peer_refresh", Kind::Str),
    ("peer_probe_interval", Kind::Str),
    ("peer_timeout", Kind::Str),
    ("read_neighbours", Kind::Int),
    ("peer_keep_copies", Kind::Bool),
    ("chain_chunk", Kind::Str),
    ("tls_ca", Kind::Str),
    ("tls_cert", Kind::Str),
    ("tls_key", Kind::Str),
    ("insecure_dev_tls", Kind::Bool),
    ("log_format", Kind::Str),
    ("origin_timeout", Kind::Str),
    ("origin_first_byte_timeout", Kind::Str),
    ("stale_if_error", Kind::Str),
    ("origin_retries", Kind::Int),
    ("origin_concurrency", Kind::Int),
    ("readahead_blocks", Kind::Int),
    ("max_connections", Kind::Int),
    ("max_requests_per_connection", Kind::Int),
    ("metadata_cache_entries", Kind::Int),
];

/// Settings given on the command line, as raw strings (`None` when the flag is absent).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--config FILE`.
    pub config_file: Option<PathBuf>,
    /// Scalar flags by key name (`"ram_cache" → "8GiB"`).
    pub scalars: BTreeMap<String, String>,
    /// `--dataset NAME=URL`, in order.
    pub datasets: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A secret string that never shows in `Debug` output or logs.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

/// One dataset: a name clients use and the origin it maps to.
///
/// Origin keys given here win over the cloud SDKs' environment variables key by key (see
/// [`crate::origin::settings`]); the caching keys win over the server-wide settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// `file:///…`, `s3://bucket/prefix/`, `gs://…`, `az://…` or `memory://`.
    pub origin: String,
    /// Never revalidate object versions.
    #[serde(default)]
    pub immutable: bool,
    #[serde(default, deserialize_with = "de_opt_size")]
    pub block_size: Option<u64>,
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub metadata_ttl: Option<Duration>,
    /// While the origin is unreachable, keep serving the last known version this long past
    /// its TTL.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// Deadline for the first byte of an origin answer (headers), and for each silence
    /// inside a body.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub first_byte_timeout: Option<Duration>,
    /// Deadline of one whole origin request.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub request_timeout: Option<Duration>,
    /// Deadline of a TCP (and TLS) connection to the origin.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// `file://`: follow symlinks that lead out of the dataset directory.
    #[serde(default)]
    pub follow_symlinks: Option<bool>,
    /// S3-compatible endpoint (`http://127.0.0.1:9000`), Azure endpoint, or GCS base URL.
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// An AWS profile of the shared config and credentials files.
    #[serde(default)]
    pub profile: Option<String>,
    /// Send unsigned requests (public buckets).
    #[serde(default)]
    pub skip_signature: Option<bool>,
    /// S3 virtual-hosted-style requests (`bucket.endpoint`) instead of path style.
    #[serde(default)]
    pub virtual_hosted_style: Option<bool>,
    /// Allow plain-http endpoints (implied by an `http://` endpoint).
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// Proxy for origin requests (else `HTTPS_PROXY` / `HTTP_PROXY`).
    #[serde(default)]
    pub proxy_url: Option<String>,
    /// Hosts that bypass the proxy (else `NO_PROXY`).
    #[serde(default)]
    pub proxy_excludes: Option<String>,
    /// PEM file of extra CA certificates for HTTPS to the origin (else `AWS_CA_BUNDLE`).
    #[serde(default)]
    pub ca_bundle: Option<PathBuf>,
    /// Any other object_store key of the origin's kind (`aws_request_payer = "true"`, ...).
    #[serde(default, deserialize_with = "de_options")]
    pub options: BTreeMap<String, String>,
}

impl DatasetConfig {
    /// A dataset with nothing but a name and an origin.
    pub fn new(name: impl Into<String>, origin: impl Into<String>) -> DatasetConfig {
        DatasetConfig {
            name: name.into(),
            origin: origin.into(),
            ..DatasetConfig::default()
        }
    }
}

/// The whole server configuration, with a default for every field.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// TCP data plane.
    pub listen: SocketAddr,
    /// QUIC data plane (needs TLS); `off` turns it off.
    #[serde(deserialize_with = "de_opt_listen")]
    pub quic_listen: Option<SocketAddr>,
    /// `/metrics`, `/healthz`, `/readyz`; `off` turns it off.
    #[serde(deserialize_with = "de_opt_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// gRPC control plane (warm, list, stat, evict, members, health); `off` turns it off.
    #[serde(deserialize_with = "de_opt_listen")]
    pub control_listen: Option<SocketAddr>,
    /// A file holding the bearer token every control call must carry.
    pub control_token_file: Option<PathBuf>,
    /// Unix socket of the local shared-memory path (off when unset).
    pub local_socket: Option<PathBuf>,
    /// Local clients (each maps one region) at once.
    pub local_max_clients: usize,
    /// Largest region a local client may register, in bytes.
    #[serde(deserialize_with = "de_size")]
    pub local_max_region: u64,
    pub datasets: Vec<DatasetConfig>,
    /// RAM tier budget in bytes.
    #[serde(deserialize_with = "de_size")]
    pub ram_cache: u64,
    /// Disk tier directory (off when unset).
    pub disk_cache: Option<PathBuf>,
    /// Disk tier budget in bytes (required with `disk_cache`).
    #[serde(deserialize_with = "de_opt_size")]
    pub disk_cache_size: Option<u64>,
    /// Disk tier policy: `epoch-aware` or `lru`.
    pub disk_eviction: crate::cache::policy::PolicyKind,
    /// Background disk writes in flight; blocks beyond it are not written (bounds memory).
    pub disk_write_queue: usize,
    /// Default block size in bytes.
    #[serde(deserialize_with = "de_size")]
    pub block_size: u64,
    /// Default revalidation interval of object versions.
    #[serde(deserialize_with = "de_duration")]
    pub metadata_ttl: Duration,
    /// Most object versions remembered at once.
    pub metadata_cache_entries: u64,
    /// This node's name in the cluster (placement hashes it): stable across restarts.
    pub node_id: Option<String>,
    /// This node's share of the blocks, relative to the other members' weights.
    pub weight: u32,
    /// Members' data-plane addresses (`host:port`); this node's own may be among them.
    pub peers: Vec<String>,
    /// A file of member addresses, re-read every `peer_refresh`.
    pub peers_file: Option<PathBuf>,
    /// `NAME:PORT` resolved to the members every `peer_refresh` (a headless Service).
    pub peer_dns: Option<String>,
    #[serde(deserialize_with = "de_duration")]
    pub peer_refresh: Duration,
    #[serde(deserialize_with = "de_duration")]
    pub peer_probe_interval: Duration,
    /// Deadline of a peer ping, connection, or block probe; a silent peer is marked down.
    #[serde(deserialize_with = "de_duration")]
    pub peer_timeout: Duration,
    /// Neighbours a block's filler asks before the origin.
    pub read_neighbours: usize,
    /// Keep blocks read from peers in this node's RAM tier, so hot blocks spread.
    pub peer_keep_copies: bool,
    /// Chunk size of chain distribution (`warm --replicas N`, `--all-nodes`): each node
    /// forwards a block to the next in chunks of this size as they arrive.
    #[serde(deserialize_with = "de_size")]
    pub chain_chunk: u64,
    /// CA that signed the members' certificates.
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Self-signed certificate, for local trials only.
    pub insecure_dev_tls: bool,
    pub log_format: LogFormat,
    /// Deadline of one whole origin request attempt (a dataset's `request_timeout` wins).
    #[serde(deserialize_with = "de_duration")]
    pub origin_timeout: Duration,
    /// Deadline of the first byte of an origin answer and of each silence inside its body (a
    /// dataset's `first_byte_timeout` wins).
    #[serde(deserialize_with = "de_duration")]
    pub origin_first_byte_timeout: Duration,
    /// While an origin is unreachable, serve the last known version of an object this long
    /// past its TTL; zero: off (a dataset's `stale_if_error` wins).
    #[serde(deserialize_with = "de_duration")]
    pub stale_if_error: Duration,
    /// Retries after a failed origin attempt (so `origin_retries + 1` attempts in all).
    pub origin_retries: u32,
    /// Origin block fetches in flight at once, server-wide: bounds fill memory.
    pub origin_concurrency: usize,
    /// Blocks of one read fetched ahead of the one being sent.
    pub readahead_blocks: usize,
    /// Open data-plane connections; more are refused.
    pub max_connections: usize,
    /// Requests in flight on one connection; more are answered `Busy`.
    pub max_requests_per_connection: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: "127.0.0.1:7070".parse().expect("valid default address"),
            quic_listen: None,
            admin_listen: Some("127.0.0.1:7073".parse().expect("valid default address")),
            control_listen: Some("127.0.0.1:7072".parse().expect("valid default address")),
            control_token_file: None,
            local_socket: None,
            local_max_clients: 256,
            local_max_region: 4 << 30,
            datasets: Vec::new(),
            ram_cache: 1 << 30,
            block_size: 4 << 20,
            disk_cache: None,
            disk_cache_size: None,
            disk_eviction: crate::cache::policy::PolicyKind::EpochAware,
            disk_write_queue: 16,
            metadata_ttl: Duration::from_secs(30),
            metadata_cache_entries: 256 * 1024,
            node_id: None,
            weight: 1,
            peers: Vec::new(),
            peers_file: None,
            peer_dns: None,
            peer_refresh: Duration::from_secs(5),
            peer_probe_interval: Duration::from_millis(500),
            peer_timeout: Duration::from_secs(1),
            read_neighbours: 2,
            peer_keep_copies: true,
            chain_chunk: 1 << 20,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            insecure_dev_tls: false,
            log_format: LogFormat::Text,
            origin_timeout: Duration::from_secs(30),
            origin_first_byte_timeout: Duration::from_secs(5),
            stale_if_error: Duration::ZERO,
            origin_retries: 3,
            origin_concurrency: 64,
            readahead_blocks: 8,
            max_connections: 4096,
            max_requests_per_connection: 256,
        }
    }
}

/// Smallest and largest block sizes a dataset may use.
pub const MIN_BLOCK_SIZE: u64 = 64 * 1024;
pub const MAX_BLOCK_SIZE: u64 = shardcache_proto::frame::MAX_DATA_CHUNK as u64;

/// The dataset served when none is configured anywhere.
pub const DEFAULT_DATASET: &str = "local";
pub const DEFAULT_DATASET_DIR: &str = "./data";

impl Config {
    /// Load from flags, environment and file, then normalise and validate.
    pub fn load(overrides: &Overrides, env: &dyn EnvSource) -> Result<Config, ConfigError> {
        let file = overrides
            .config_file
            .clone()
            .or_else(|| env.var("SHARDCACHE_CONFIG").map(PathBuf::from));
        let file_text = match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(format!("cannot read config file {}: {e}", path.display()))
            })?),
            None => None,
        };
        Config::from_sources(file_text.as_deref(), overrides, env)
    }

    /// Merge the given TOML text (if any), environment and flags.
    pub fn from_sources(
        file_text: Option<&str>,
        overrides: &Overrides,
        env: &dyn EnvSource,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = match file_text {
            Some(text) => toml::from_str(text)
                .map_err(|e| ConfigError::new(format!("invalid config file: {e}")))?,
            None => toml::Table::new(),
        };
        let file_datasets = match table.remove("datasets") {
            Some(value) => Vec::<DatasetConfig>::deserialize(value)
                .map_err(|e| ConfigError::new(format!("invalid [[datasets]]: {e}")))?,
            None => Vec::new(),
        };

        for (key, kind) in SCALAR_KEYS {
            let var = format!("SHARDCACHE_{}", key.to_ascii_uppercase());
            let (source, raw) = match overrides.scalars.get(*key) {
                Some(v) => (format!("--{}", key.replace('_', "-")), v.clone()),
                None => match env.var(&var) {
                    Some(v) => (var, v),
                    None => continue,
                },
            };
            table.insert(key.to_string(), typed(&source, &raw, *kind)?);
        }

        let mut config = Config::deserialize(toml::Value::Table(table))
            .map_err(|e| ConfigError::new(format!("invalid configuration: {e}")))?;

        // Datasets: file, then environment, then flags, later ones replacing by name.
        let mut datasets: Vec<DatasetConfig> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for d in file_datasets {
            if !seen.insert(d.name.clone()) {
                return Err(ConfigError::new(format!(
                    "dataset {:?} is defined twice in the config file",
                    d.name
                )));
            }
            datasets.push(d);
        }
        let env_specs: Vec<String> = env
            .var("SHARDCACHE_DATASET")
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for (source, spec) in env_specs
            .iter()
            .map(|s| ("SHARDCACHE_DATASET", s))
            .chain(overrides.datasets.iter().map(|s| ("--dataset", s)))
        {
            let Some((name, url)) = spec.split_once('=') else {
                return Err(ConfigError::new(format!(
                    "{source} {spec:?}: expected NAME=URL, e.g. imagenet=s3://bucket/imagenet/"
                )));
            };
            let d = DatasetConfig::new(name.trim(), url.trim());
            match datasets.iter_mut().find(|x| x.name == d.name) {
                Some(existing) => *existing = d,
                None => datasets.push(d),
            }
        }
        config.datasets = datasets;
        config.normalise();
        config.validate()?;
        Ok(config)
    }

    fn normalise(&mut self) {
        if self.datasets.is_empty() {
            self.datasets
                .push(DatasetConfig::new(DEFAULT_DATASET, default_dataset_url()));
        }
        if self.node_id.as_deref().is_none_or(str::is_empty) {
            self.node_id = Some(hostname());
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        check_block_size("block_size", self.block_size)?;
        let (lo, hi) = (
            u64::from(crate::service::MIN_CHAIN_CHUNK),
            u64::from(crate::service::MAX_CHAIN_CHUNK),
        );
        if !(lo..=hi).contains(&self.chain_chunk) {
            return Err(ConfigError::new(format!(
                "chain_chunk of {} bytes is outside {lo}..={hi} (64KiB to 4MiB)",
                self.chain_chunk
            )));
        }
        for d in &self.datasets {
            shardcache_proto::path::validate_dataset(&d.name)
                .map_err(|e| ConfigError::new(format!("dataset {:?}: {e}", d.name)))?;
            if let Some(bs) = d.block_size {
                check_block_size(&format!("datasets.{}.block_size", d.name), bs)?;
            }
            if d.origin.is_empty() {
                return Err(ConfigError::new(format!(
                    "dataset {:?}: empty origin URL",
                    d.name
                )));
            }
        }
        if self.disk_cache.is_some() && self.disk_cache_size.is_none() {
            return Err(ConfigError::new(
                "disk_cache needs disk_cache_size: the disk tier's byte budget, e.g. 500GiB",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::new(
                "tls_cert and tls_key must be given together",
            ));
        }
        if self.tls_ca.is_some() && (self.tls_cert.is_none() || self.quic_listen.is_none()) {
            return Err(ConfigError::new(
                "tls_ca (members authenticate with certificates) needs tls_cert, tls_key and quic_listen: members talk over QUIC with mutual TLS",
            ));
        }
        if self.quic_listen.is_some() && self.tls_cert.is_none() && !self.insecure_dev_tls {
            return Err(ConfigError::new(
                "quic_listen needs a certificate: set tls_cert and tls_key, or insecure_dev_tls for local trials",
            ));
        }
        if let Some(dns) = &self.peer_dns
            && dns
                .rsplit_once(':')
                .is_none_or(|(_, port)| port.parse::<u16>().is_err())
        {
            return Err(ConfigError::new(format!(
                "peer_dns {dns:?}: expected NAME:PORT, e.g. shardcache-headless.ml.svc:7070"
            )));
        }
        if self.peer_probe_interval.is_zero() || self.peer_timeout.is_zero() {
            return Err(ConfigError::new(
                "peer_probe_interval and peer_timeout must be longer than zero",
            ));
        }
        if self.origin_concurrency == 0 {
            return Err(ConfigError::new("origin_concurrency must be at least 1"));
        }
        if self.max_connections == 0 || self.max_requests_per_connection == 0 {
            return Err(ConfigError::new(
                "max_connections and max_requests_per_connection must be at least 1",
            ));
        }
        Ok(())
    }

    /// Block size of a dataset: its own, else the server default.
    pub fn dataset_block_size(&self, d: &DatasetConfig) -> u64 {
        d.block_size.unwrap_or(self.block_size)
    }

    /// Revalidation interval of a dataset: its own, else the server default.
    pub fn dataset_metadata_ttl(&self, d: &DatasetConfig) -> Duration {
        d.metadata_ttl.unwrap_or(self.metadata_ttl)
    }
}

fn default_dataset_url() -> String {
    let dir = std::env::current_dir()
        .map(|cwd| cwd.join("data"))
        .unwrap_or_else(|_| PathBuf::from(DEFAULT_DATASET_DIR));
    format!("file://{}", dir.display())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shardcache".to_string())
}

fn check_block_size(field: &str, size: u64) -> Result<(), ConfigError> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) {
        return Err(ConfigError::new(format!(
            "{field} of {size} bytes is outside {MIN_BLOCK_SIZE}..={MAX_BLOCK_SIZE} (64KiB to 64MiB)"
        )));
    }
    Ok(())
}

fn typed(source: &str, raw: &str, kind: Kind) -> Result<toml::Value, ConfigError> {
    let raw = raw.trim();
    Ok(match kind {
        Kind::Str => toml::Value::String(raw.to_string()),
        Kind::Int => {
            toml::Value::Integer(raw.parse().map_err(|_| {
                ConfigError::new(format!("{source}: {raw:?} is not a whole number"))
            })?)
        }
        Kind::List => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_string()))
                .collect(),
        ),
        Kind::Bool => toml::Value::Boolean(match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::new(format!(
                    "{source}: {raw:?} is not true or false"
                )));
            }
        }),
    })
}

/// A size such as `512MiB`, `4GiB`, `1TB`, or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    s.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} ({e}); use e.g. 512MiB, 4GiB, 1TB"))
}

/// A duration such as `500ms`, `30s`, `5m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 500ms, 30s, 5m"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Int(u64),
    Str(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match SizeRepr::deserialize(d)? {
        SizeRepr::Int(n) => Ok(n),
        SizeRepr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    de_size(d).map(Some)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match SizeRepr::deserialize(d)? {
        SizeRepr::Int(secs) => Ok(Duration::from_secs(secs)),
        SizeRepr::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn de_opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

/// A listen address, or `off` (also `none` or empty) for a listener that is not started.
fn de_opt_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "" => Ok(None),
        other => other.parse().map(Some).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not an address such as 127.0.0.1:7072 ({e}), or off"
            ))
        }),
    }
}

/// A table of raw store options; values may be written as strings, numbers or booleans.
fn de_options<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let table = BTreeMap::<String, toml::Value>::deserialize(d)?;
    table
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "options.{k}: {other} is not a string, number or boolean"
                    )));
                }
            };
            Ok((k, text))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn flags(pairs: &[(&str, &str)]) -> Overrides {
        Overrides {
            scalars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Overrides::default()
        }
    }

    #[test]
    fn defaults_serve_local_data_dir() {
        let c = Config::from_sources(None, &Overrides::default(), &env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.ram_cache, 1 << 30);
        assert_eq!(c.block_size, 4 << 20);
        assert_eq!(c.metadata_ttl, Duration::from_secs(30));
        assert_eq!(c.datasets.len(), 1);
        assert_eq!(c.datasets[0].name, "local");
        assert!(c.datasets[0].origin.starts_with("file:///"));
        assert!(c.datasets[0].origin.ends_with("/data"));
        assert!(c.node_id.is_some());
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = r#"
            ram_cache = "2GiB"
            block_size = "8MiB"
            metadata_ttl = "5m"
            listen = "127.0.0.1:9000"
        "#;
        let e = env(&[
            ("SHARDCACHE_RAM_CACHE", "3GiB"),
            ("SHARDCACHE_BLOCK_SIZE", "1MiB"),
        ]);
        let f = flags(&[("ram_cache", "512MiB")]);
        let c = Config::from_sources(Some(file), &f, &e).unwrap();
        assert_eq!(c.ram_cache, 512 << 20);
        assert_eq!(c.block_size, 1 << 20);
        assert_eq!(c.metadata_ttl, Duration::from_secs(300));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    }

    #[test]
    fn listeners_can_be_turned_off() {
        let c = Config::from_sources(
            Some("admin_listen = \"off\""),
            &flags(&[("control_listen", "off")]),
            &env(&[]),
        )
        .unwrap();
        assert_eq!((c.admin_listen, c.control_listen), (None, None));
        let e = Config::from_sources(None, &flags(&[("control_listen", "nowhere")]), &env(&[]))
            .unwrap_err();
        assert!(e.to_string().contains("or off"), "{e}");
    }

    #[test]
    fn datasets_merge_by_name() {
        let file = r#"
            [[datasets]]
            name = "imagenet"
            origin = "s3://bucket/imagenet/"
            immutable = true
            block_size = "8MiB"
            metadata_ttl = "5m"
            secret_access_key = "hunter2"

            [[datasets]]
            name = "laion"
            origin = "s3://bucket/laion/"
        "#;
        let e = env(&[("SHARDCACHE_DATASET", "extra=memory://")]);
        let f = Overrides {
            datasets: vec!["laion=file:///mnt/laion".into()],
            ..Overrides::default()
        };
        let c = Config::from_sources(Some(file), &f, &e).unwrap();
        let names: Vec<_> = c.datasets.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["imagenet", "laion", "extra"]);
        assert!(c.datasets[0].immutable);
        assert_eq!(c.datasets[0].block_size, Some(8 << 20));
        assert_eq!(c.datasets[0].metadata_ttl, Some(Duration::from_secs(300)));
        assert_eq!(c.datasets[1].origin, "file:///mnt/laion");
        assert!(
            !format!("{c:?}").contains("hunter2"),
            "secrets leak into Debug"
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let bad = |file: Option<&str>, f: Overrides, e: &[(&str, &str)]| {
            Config::from_sources(file, &f, &env(e))
                .unwrap_err()
                .to_string()
        };
        let msg = bad(None, flags(&[("ram_cache", "lots")]), &[]);
        assert!(msg.contains("lots"), "{msg}");
        let msg = bad(
            None,
            Overrides::default(),
            &[("SHARDCACHE_ORIGIN_RETRIES", "x")],
        );
        assert!(msg.contains("SHARDCACHE_ORIGIN_RETRIES"), "{msg}");
        let msg = bad(None, flags(&[("block_size", "1KiB")]), &[]);
        assert!(msg.contains("block_size"), "{msg}");
        let msg = bad(Some("ram_cach = 1"), Overrides::default(), &[]);
        assert!(msg.contains("ram_cach"), "{msg}");
        let msg = bad(
            None,
            Overrides {
                datasets: vec!["nourl".into()],
                ..Overrides::default()
            },
            &[],
        );
        assert!(msg.contains("NAME=URL"), "{msg}");
        let msg = bad(None, flags(&[("quic_listen", "127.0.0.1:0")]), &[]);
        assert!(msg.contains("insecure_dev_tls"), "{msg}");
        let msg = bad(
            None,
            Overrides {
                datasets: vec!["../x=file:///tmp".into()],
                ..Overrides::default()
            },
            &[],
        );
        assert!(msg.contains("dataset"), "{msg}");
    }
}
