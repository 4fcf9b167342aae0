//! A dataset as the configuration names it: its name, its origin URL, how it is cached, and
//! the origin keys that win over the environment (see [`super::settings`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

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
/// [`super::settings`]); the caching keys win over the server-wide settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub name: String,
    /// `file:///…`, `s3://bucket/prefix/`, `gs://…`, `az://…` or `memory://`.
    pub origin: String,
    /// Never revalidate object versions.
    #[serde(default)]
    pub immutable: bool,
    #[serde(default, deserialize_with = "crate::units::de_opt_size")]
    pub block_size: Option<u64>,
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
    pub metadata_ttl: Option<Duration>,
    /// While the origin is unreachable, keep serving the last known version this long past
    /// its TTL.
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
    pub stale_if_error: Option<Duration>,
    /// Deadline for the first byte of an origin answer (headers), and for each silence
    /// inside a body.
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
    pub first_byte_timeout: Option<Duration>,
    /// Deadline of one whole origin request.
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
    pub request_timeout: Option<Duration>,
    /// Deadline of a TCP (and TLS) connection to the origin.
    #[serde(default, deserialize_with = "crate::units::de_opt_duration")]
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
    #[serde(default, deserialize_with = "crate::units::de_options")]
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
