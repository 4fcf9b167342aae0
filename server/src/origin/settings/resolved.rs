//! The resolved settings: each with the source it came from, shown with secrets redacted; the
//! whole of one origin's settings; the server-wide defaults; and the error naming a setting
//! that cannot work.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::{Credentials, Kind};

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A key of the dataset in the configuration file (`datasets.NAME.KEY`).
    File(String),
    /// An environment variable.
    Env(String),
    /// A key of an AWS profile in a shared file.
    Profile {
        profile: String,
        file: PathBuf,
    },
    /// Implied by another setting.
    Implied(String),
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(key) => write!(f, "config file: {key}"),
            Source::Env(var) => write!(f, "environment: {var}"),
            Source::Profile { profile, file } => {
                write!(f, "profile {profile} in {}", file.display())
            }
            Source::Implied(why) => write!(f, "implied by {why}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One effective setting.
#[derive(Clone, PartialEq, Eq)]
pub struct Setting {
    /// The store's key (`aws_endpoint`, `allow_http`, ...).
    pub key: String,
    pub value: String,
    pub source: Source,
}

impl Setting {
    pub(super) fn new(key: impl Into<String>, value: impl Into<String>, source: Source) -> Setting {
        Setting {
            key: key.into(),
            value: value.into(),
            source,
        }
    }

    /// The value as it may be shown: secrets redacted, key ids shortened.
    pub fn shown(&self) -> String {
        redact(&self.key, &self.value)
    }
}

impl fmt::Debug for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={} ({})", self.key, self.shown(), self.source)
    }
}

/// Whether a key's value is a secret.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    (k.contains("secret")
        || (k.contains("token") && !k.contains("file") && !k.contains("url"))
        || k.ends_with("account_key")
        || k.contains("sas")
        || k.contains("key_base64")
        || k.ends_with("encryption_key")
        || k.ends_with("service_account_key")
        || k.contains("password"))
        && !k.ends_with("access_key_id")
}

/// `value` as it may be shown for `key`.
pub fn redact(key: &str, value: &str) -> String {
    if is_secret(key) {
        return "<redacted>".into();
    }
    if key.to_ascii_lowercase().ends_with("access_key_id") && value.len() > 8 {
        let head: String = value.chars().take(4).collect();
        return format!("{head}…");
    }
    // Userinfo in a URL (a proxy with a password).
    if let Ok(mut url) = url::Url::parse(value)
        && url.password().is_some()
    {
        let _ = url.set_password(Some("redacted"));
        return url.to_string();
    }
    value.to_string()
}

/// Server-wide defaults a dataset may override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginDefaults {
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    /// Zero: off.
    pub stale_if_error: Duration,
}

impl Default for OriginDefaults {
    fn default() -> OriginDefaults {
        OriginDefaults {
            first_byte_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            stale_if_error: Duration::ZERO,
        }
    }
}

/// Everything that decides how one dataset's origin is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginSettings {
    pub dataset: String,
    pub url: String,
    pub kind: Kind,
    /// Store keys handed to object_store, in the order they are applied.
    pub store: Vec<Setting>,
    /// A PEM file of extra CA certificates for HTTPS to the origin.
    pub ca_bundle: Option<Setting>,
    /// Trust roots replaced by `SSL_CERT_FILE` / `SSL_CERT_DIR` (read by the TLS stack itself).
    pub platform_roots: Vec<Setting>,
    /// The proxy requests go through, if any.
    pub proxy: Option<Setting>,
    pub credentials: Credentials,
    pub first_byte_timeout: Duration,
    pub request_timeout: Duration,
    pub stale_if_error: Duration,
    /// `file://`: symlinks may lead out of the dataset directory.
    pub follow_symlinks: bool,
}

impl OriginSettings {
    /// The effective value of store key `key`.
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.store.iter().rev().find(|s| s.key == key)
    }

    /// Lines describing the effective settings, secrets redacted.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = vec![("origin".to_string(), self.url.clone())];
        for s in &self.store {
            out.push((s.key.clone(), format!("{} ({})", s.shown(), s.source)));
        }
        if let Some(ca) = &self.ca_bundle {
            out.push(("ca_bundle".into(), format!("{} ({})", ca.value, ca.source)));
        }
        for r in &self.platform_roots {
            out.push(("trust roots".into(), format!("{} ({})", r.value, r.source)));
        }
        if let Some(p) = &self.proxy {
            out.push(("proxy".into(), format!("{} ({})", p.shown(), p.source)));
        }
        out.push(("credentials".into(), self.credentials.to_string()));
        out.push((
            "timeouts".into(),
            format!(
                "first byte {:?}, whole request {:?}",
                self.first_byte_timeout, self.request_timeout
            ),
        ));
        if !self.stale_if_error.is_zero() {
            out.push((
                "stale_if_error".into(),
                format!("{:?}", self.stale_if_error),
            ));
        }
        if self.kind == Kind::File {
            out.push((
                "symlinks".into(),
                if self.follow_symlinks {
                    "followed anywhere (follow_symlinks = true)".into()
                } else {
                    "only inside the dataset directory".into()
                },
            ));
        }
        out
    }
}

/// A setting that cannot work, named.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dataset {dataset:?} ({url}): {reason}")]
pub struct SettingsError {
    pub dataset: String,
    pub url: String,
    pub reason: String,
}
