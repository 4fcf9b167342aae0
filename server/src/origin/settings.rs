//! The effective settings of one dataset's origin, and where each came from.
//!
//! A dataset's origin is configured the way deployments give it: keys of the dataset in the
//! TOML file, the cloud SDKs' environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`), the AWS
//! shared config and credentials files (profiles), and shardcache's defaults. They merge key by
//! key, never a whole section at once:
//!
//! 1. the file's explicit keys (including its raw `options` table),
//! 2. the environment,
//! 3. the selected AWS profile,
//! 4. defaults.
//!
//! Keys that name one thing in several ways (`AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_S3`,
//! `AWS_REGION` and `AWS_DEFAULT_REGION`) are one key here, so a file's `endpoint` is never
//! overridden by a more specific environment variable. Credentials are one unit: the first source
//! that gives any part of a credential gives all of it, so a file's key pair is never signed
//! with the environment's session token.
//!
//! Resolution is pure (the environment comes through [`EnvSource`]) and its result is what
//! `check-origin` prints, secrets redacted.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;

use super::aws::{self, ContainerAuth};
use crate::config::{DatasetConfig, EnvSource};

/// The kind of store behind a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    S3,
    Azure,
    Gcs,
    File,
    Memory,
}

impl Kind {
    pub fn of_scheme(scheme: &str) -> Option<Kind> {
        Some(match scheme {
            "s3" | "s3a" => Kind::S3,
            "az" | "azure" | "abfs" | "abfss" => Kind::Azure,
            "gs" => Kind::Gcs,
            "file" => Kind::File,
            "memory" => Kind::Memory,
            _ => return None,
        })
    }

    fn env_prefix(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("AWS_"),
            Kind::Azure => Some("AZURE_"),
            Kind::Gcs => Some("GOOGLE_"),
            Kind::File | Kind::Memory => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3://",
            Kind::Azure => "az://",
            Kind::Gcs => "gs://",
            Kind::File => "file://",
            Kind::Memory => "memory://",
        }
    }

    /// The store's canonical name for a configuration key, if it is one.
    fn canonical(self, key: &str) -> Option<String> {
        let key = key.to_ascii_lowercase();
        match self {
            Kind::S3 => key
                .parse::<AmazonS3ConfigKey>()
                .ok()
                .map(|k| k.as_ref().to_string()),
            Kind::Azure => key
                .parse::<AzureConfigKey>()
                .ok()
                .map(|k| k.as_ref().to_string()),
            Kind::Gcs => key
                .parse::<GoogleConfigKey>()
                .ok()
                .map(|k| k.as_ref().to_string()),
            Kind::File | Kind::Memory => None,
        }
    }

    fn endpoint_key(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("aws_endpoint"),
            Kind::Azure => Some("azure_storage_endpoint"),
            Kind::Gcs => Some("google_base_url"),
            Kind::File | Kind::Memory => None,
        }
    }

    fn skip_signature_key(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("aws_skip_signature"),
            Kind::Azure => Some("azure_skip_signature"),
            Kind::Gcs => Some("google_skip_signature"),
            Kind::File | Kind::Memory => None,
        }
    }
}

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
    fn new(key: impl Into<String>, value: impl Into<String>, source: Source) -> Setting {
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

/// How requests to an S3 origin are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A key pair (and session token).
    Static {
        key_id: Setting,
        secret: Setting,
        token: Option<Setting>,
    },
    /// Unsigned requests (a public bucket).
    Unsigned(Source),
    /// A web identity token exchanged at an STS endpoint.
    WebIdentity {
        role_arn: Setting,
        token_file: Setting,
        session_name: String,
        endpoint: Setting,
    },
    /// A container credentials endpoint.
    Container { uri: Setting, auth: ContainerAuth },
    /// The instance metadata service (object_store's provider).
    Instance { endpoint: Option<Setting> },
    /// Azure and GCS: object_store's own chain, described.
    Store(String),
    /// Not signed at all (local files and memory).
    NotNeeded,
}

impl fmt::Display for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Static { key_id, token, .. } => write!(
                f,
                "access key {} ({}){}",
                key_id.shown(),
                key_id.source,
                if token.is_some() {
                    " with a session token"
                } else {
                    ""
                }
            ),
            Credentials::Unsigned(source) => write!(f, "unsigned requests ({source})"),
            Credentials::WebIdentity {
                role_arn,
                token_file,
                endpoint,
                ..
            } => write!(
                f,
                "web identity: role {} ({}), token file {} ({}), STS {} ({})",
                role_arn.value,
                role_arn.source,
                token_file.value,
                token_file.source,
                endpoint.value,
                endpoint.source
            ),
            Credentials::Container { uri, auth } => write!(
                f,
                "container credentials from {} ({}){}",
                uri.value,
                uri.source,
                match auth {
                    ContainerAuth::None => String::new(),
                    ContainerAuth::Token(_) =>
                        " with AWS_CONTAINER_AUTHORIZATION_TOKEN".to_string(),
                    ContainerAuth::TokenFile(p) => format!(" with token file {}", p.display()),
                }
            ),
            Credentials::Instance { endpoint } => match endpoint {
                Some(e) => write!(f, "instance metadata at {} ({})", e.value, e.source),
                None => f.write_str("instance metadata (169.254.169.254)"),
            },
            Credentials::Store(what) => f.write_str(what),
            Credentials::NotNeeded => f.write_str("none needed"),
        }
    }
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

/// S3 keys that make up a credential or select a credential source: resolved here, as one
/// unit, never passed through piecemeal.
const S3_CREDENTIAL_KEYS: &[&str] = &[
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_role_arn",
    "aws_role_session_name",
    "aws_web_identity_token_file",
    "aws_endpoint_url_sts",
    "aws_container_credentials_relative_uri",
    "aws_container_credentials_full_uri",
    "aws_container_authorization_token_file",
    "aws_metadata_endpoint",
    "aws_skip_signature",
];

/// Keys that name one setting: the later-applied, more specific name wins within a source;
/// a higher source's member replaces every member from lower sources.
fn group_of(key: &str) -> &str {
    match key {
        "aws_endpoint" | "aws_endpoint_url_s3" => "endpoint",
        "aws_region" | "aws_default_region" => "region",
        other => other,
    }
}

/// Order within the environment: generic names first, so the specific one is applied last.
fn env_rank(var: &str) -> u8 {
    match var {
        "AWS_ENDPOINT" => 0,
        "AWS_ENDPOINT_URL" | "AWS_DEFAULT_REGION" => 1,
        _ => 2,
    }
}

/// Resolve the settings of dataset `d`.
pub fn resolve(
    d: &DatasetConfig,
    defaults: &OriginDefaults,
    env: &dyn EnvSource,
) -> Result<OriginSettings, SettingsError> {
    let err = |reason: String| SettingsError {
        dataset: d.name.clone(),
        url: d.origin.clone(),
        reason,
    };
    let url = url::Url::parse(&d.origin).map_err(|e| {
        let hint = if d.origin.starts_with('/') || d.origin.starts_with('.') {
            let abs = std::path::absolute(&d.origin)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| d.origin.clone());
            format!("; a local directory is written file://{abs}")
        } else {
            String::new()
        };
        err(format!(
            "not a URL ({e}): use file:///path/, s3://bucket/prefix/, gs://…, az://… or memory://{hint}"
        ))
    })?;
    let kind = Kind::of_scheme(url.scheme()).ok_or_else(|| {
        err(format!(
            "unsupported scheme {:?}; use file://, s3://, gs://, az:// or memory://",
            url.scheme()
        ))
    })?;
    let file_key = |k: &str| Source::File(format!("datasets.{}.{k}", d.name));
    let mut out = OriginSettings {
        dataset: d.name.clone(),
        url: d.origin.clone(),
        kind,
        store: Vec::new(),
        ca_bundle: None,
        platform_roots: Vec::new(),
        proxy: None,
        credentials: Credentials::NotNeeded,
        first_byte_timeout: d.first_byte_timeout.unwrap_or(defaults.first_byte_timeout),
        request_timeout: d.request_timeout.unwrap_or(defaults.request_timeout),
        stale_if_error: d.stale_if_error.unwrap_or(defaults.stale_if_error),
        follow_symlinks: d.follow_symlinks.unwrap_or(false),
    };
    if out.first_byte_timeout.is_zero() || out.request_timeout.is_zero() {
        return Err(err(
            "first_byte_timeout and request_timeout must be longer than zero".into(),
        ));
    }
    if out.first_byte_timeout > out.request_timeout {
        return Err(err(format!(
            "first_byte_timeout ({:?}) is longer than request_timeout ({:?})",
            out.first_byte_timeout, out.request_timeout
        )));
    }

    // Keys that only some kinds understand.
    let s3_only = [
        ("region", d.region.is_some()),
        ("access_key_id", d.access_key_id.is_some()),
        ("secret_access_key", d.secret_access_key.is_some()),
        ("session_token", d.session_token.is_some()),
        ("profile", d.profile.is_some()),
        ("virtual_hosted_style", d.virtual_hosted_style.is_some()),
    ];
    let remote = [
        ("endpoint", d.endpoint.is_some()),
        ("allow_http", d.allow_http.is_some()),
        ("proxy_url", d.proxy_url.is_some()),
        ("proxy_excludes", d.proxy_excludes.is_some()),
        ("ca_bundle", d.ca_bundle.is_some()),
        ("connect_timeout", d.connect_timeout.is_some()),
        ("skip_signature", d.skip_signature.is_some()),
        ("options", !d.options.is_empty()),
    ];
    for (key, set) in s3_only {
        if set && kind != Kind::S3 {
            return Err(err(format!(
                "datasets.{}.{key} applies to s3:// origins only, not {}",
                d.name,
                kind.name()
            )));
        }
    }
    for (key, set) in remote {
        if set && matches!(kind, Kind::File | Kind::Memory) {
            return Err(err(format!(
                "datasets.{}.{key} does not apply to {} origins",
                d.name,
                kind.name()
            )));
        }
    }
    if d.follow_symlinks.is_some() && kind != Kind::File {
        return Err(err(format!(
            "datasets.{}.follow_symlinks applies to file:// origins only",
            d.name
        )));
    }
    let Some(prefix) = kind.env_prefix() else {
        return Ok(out);
    };

    // Defaults.
    let connect = d
        .connect_timeout
        .unwrap_or(Duration::from_secs(5).min(out.first_byte_timeout));
    let mut layered: Vec<Setting> = vec![
        Setting::new(
            "connect_timeout",
            humantime::format_duration(connect).to_string(),
            if d.connect_timeout.is_some() {
                file_key("connect_timeout")
            } else {
                Source::Default
            },
        ),
        // A backstop behind the origin's own deadlines, which name what timed out.
        Setting::new(
            "timeout",
            humantime::format_duration(out.request_timeout + Duration::from_secs(2)).to_string(),
            Source::Implied("request_timeout".into()),
        ),
    ];

    // The AWS profile: its region and endpoint, below the environment.
    let mut profile = None;
    if kind == Kind::S3 {
        let (name, source) = match (&d.profile, env.var("AWS_PROFILE")) {
            (Some(p), _) => (p.clone(), Some(file_key("profile"))),
            (None, Some(p)) => (p, Some(Source::Env("AWS_PROFILE".into()))),
            (None, None) => match env.var("AWS_DEFAULT_PROFILE") {
                Some(p) => (p, Some(Source::Env("AWS_DEFAULT_PROFILE".into()))),
                None => ("default".to_string(), None),
            },
        };
        let loaded = aws::load_profile(env, &name).map_err(|e| err(format!("profile: {e}")))?;
        if loaded.is_none()
            && let Some(source) = &source
        {
            let (config, creds) = aws::profile_files(env);
            let shown =
                |p: Option<PathBuf>| p.map_or("(no HOME)".into(), |p| p.display().to_string());
            return Err(err(format!(
                "profile {name:?} ({source}) is in neither {} nor {}",
                shown(config),
                shown(creds)
            )));
        }
        if let Some(p) = &loaded {
            for (pkey, skey) in [("region", "aws_region"), ("endpoint_url", "aws_endpoint")] {
                if let Some(v) = p.get(pkey) {
                    layered.push(Setting::new(
                        skey,
                        v,
                        Source::Profile {
                            profile: p.name.clone(),
                            file: p.file_of(pkey),
                        },
                    ));
                }
            }
        }
        profile = loaded.map(|p| (p, source.is_some()));
    }

    // The environment.
    let mut env_settings: Vec<(u8, Setting)> = Vec::new();
    for (var, value) in env.vars() {
        if !var.starts_with(prefix) || value.is_empty() {
            continue;
        }
        if let Some(key) = kind.canonical(&var) {
            if kind == Kind::S3 && S3_CREDENTIAL_KEYS.contains(&key.as_str()) {
                continue;
            }
            env_settings.push((env_rank(&var), Setting::new(key, value, Source::Env(var))));
        }
    }
    if kind == Kind::Gcs
        && let Some(v) = env.var("SERVICE_ACCOUNT")
    {
        env_settings.push((
            2,
            Setting::new(
                "google_service_account",
                v,
                Source::Env("SERVICE_ACCOUNT".into()),
            ),
        ));
    }
    env_settings.sort_by(|a, b| {
        (group_of(&a.1.key), a.0, &a.1.key).cmp(&(group_of(&b.1.key), b.0, &b.1.key))
    });
    layered.extend(env_settings.into_iter().map(|(_, s)| s));

    // The file's keys, highest.
    let endpoint_key = kind.endpoint_key().expect("remote kinds have endpoints");
    let mut file: Vec<Setting> = Vec::new();
    let mut named = |key: &str, toml: &str, value: Option<String>| {
        if let Some(v) = value {
            file.push(Setting::new(key, v, file_key(toml)));
        }
    };
    named(endpoint_key, "endpoint", d.endpoint.clone());
    named("aws_region", "region", d.region.clone());
    named(
        "allow_http",
        "allow_http",
        d.allow_http.map(|b| b.to_string()),
    );
    named("proxy_url", "proxy_url", d.proxy_url.clone());
    named("proxy_excludes", "proxy_excludes", d.proxy_excludes.clone());
    if kind != Kind::S3 {
        let key = kind.skip_signature_key().expect("remote kinds sign");
        named(
            key,
            "skip_signature",
            d.skip_signature.map(|b| b.to_string()),
        );
    }
    named(
        "aws_virtual_hosted_style_request",
        "virtual_hosted_style",
        d.virtual_hosted_style.map(|b| b.to_string()),
    );
    for (k, v) in &d.options {
        let Some(key) = kind.canonical(k) else {
            return Err(err(format!(
                "datasets.{}.options.{k} is not a setting of {} origins",
                d.name,
                kind.name()
            )));
        };
        if kind == Kind::S3 && S3_CREDENTIAL_KEYS.contains(&key.as_str()) {
            return Err(err(format!(
                "datasets.{}.options.{k}: credentials are set with access_key_id, secret_access_key, session_token, profile or skip_signature, or the AWS_* variables",
                d.name
            )));
        }
        file.push(Setting::new(
            key,
            v.clone(),
            Source::File(format!("datasets.{}.options.{k}", d.name)),
        ));
    }
    layered.extend(file);

    // Key by key: the setting applied last wins its group (the file over the environment
    // over the profile over defaults; within the environment, the more specific name).
    let mut kept: Vec<Setting> = Vec::new();
    let mut seen_groups: Vec<String> = Vec::new();
    for s in layered.into_iter().rev() {
        let group = group_of(&s.key).to_string();
        if seen_groups.contains(&group) {
            continue;
        }
        seen_groups.push(group);
        kept.push(s);
    }
    kept.reverse();
    out.store = kept;

    // Plain-HTTP endpoints: allowed when asked for, or when the endpoint itself says http://.
    let endpoint = match kind {
        Kind::S3 => out
            .get("aws_endpoint_url_s3")
            .or_else(|| out.get("aws_endpoint"))
            .cloned(),
        _ => out.get(endpoint_key).cloned(),
    };
    let allow_http = out.get("allow_http").cloned();
    if let Some(ep) = &endpoint {
        let parsed = url::Url::parse(&ep.value).map_err(|e| {
            err(format!(
                "endpoint {:?} ({}) is not a URL: {e}",
                ep.value, ep.source
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(err(format!(
                "endpoint {:?} ({}) must start with http:// or https://",
                ep.value, ep.source
            )));
        }
        if parsed.scheme() == "http" {
            match &allow_http {
                None => out.store.push(Setting::new(
                    "allow_http",
                    "true",
                    Source::Implied(format!("the http:// endpoint ({})", ep.source)),
                )),
                Some(a) if !parse_bool(&a.value).unwrap_or(false) => {
                    return Err(err(format!(
                        "endpoint {} ({}) is plain HTTP but allow_http is {:?} ({}): set allow_http = true, or use https://",
                        ep.value, ep.source, a.value, a.source
                    )));
                }
                Some(_) => {}
            }
        }
    }
    if let Some(a) = &allow_http
        && parse_bool(&a.value).is_none()
    {
        return Err(err(format!(
            "allow_http {:?} ({}) is not true or false",
            a.value, a.source
        )));
    }
    for key in [
        "connect_timeout",
        "timeout",
        "pool_idle_timeout",
        "read_timeout",
    ] {
        if let Some(s) = out.get(key)
            && humantime::parse_duration(&s.value).is_err()
        {
            return Err(err(format!(
                "{key} {:?} ({}) is not a duration such as 5s",
                s.value, s.source
            )));
        }
    }

    // Trust: an extra CA bundle, and the platform roots the TLS stack reads.
    out.ca_bundle = match (
        &d.ca_bundle,
        env.var("AWS_CA_BUNDLE").filter(|_| kind == Kind::S3),
    ) {
        (Some(p), _) => Some(Setting::new(
            "ca_bundle",
            p.display().to_string(),
            file_key("ca_bundle"),
        )),
        (None, Some(p)) => Some(Setting::new(
            "ca_bundle",
            p,
            Source::Env("AWS_CA_BUNDLE".into()),
        )),
        (None, None) => None,
    };
    if let Some(ca) = &out.ca_bundle {
        let pem = std::fs::read(&ca.value)
            .map_err(|e| err(format!("CA bundle {} ({}): {e}", ca.value, ca.source)))?;
        match object_store::Certificate::from_pem_bundle(&pem) {
            Ok(certs) if !certs.is_empty() => {}
            _ => {
                return Err(err(format!(
                    "CA bundle {} ({}) holds no PEM certificate",
                    ca.value, ca.source
                )));
            }
        }
    }
    for var in ["SSL_CERT_FILE", "SSL_CERT_DIR"] {
        if let Some(v) = env.var(var) {
            let path = std::path::Path::new(&v);
            let ok = if var == "SSL_CERT_FILE" {
                std::fs::read(path).is_ok_and(|pem| {
                    object_store::Certificate::from_pem_bundle(&pem).is_ok_and(|c| !c.is_empty())
                })
            } else {
                path.is_dir()
            };
            if !ok {
                return Err(err(format!(
                    "{var}={v} is not a readable PEM {}: HTTPS origins would trust nothing",
                    if var == "SSL_CERT_FILE" {
                        "file of certificates"
                    } else {
                        "directory"
                    }
                )));
            }
            out.platform_roots
                .push(Setting::new(var.to_lowercase(), v, Source::Env(var.into())));
        }
    }

    // The proxy: an explicit proxy_url, else the usual variables (read by the HTTP client).
    out.proxy = match out.get("proxy_url").cloned() {
        Some(p) => Some(p),
        None => {
            let https = endpoint
                .as_ref()
                .is_none_or(|e| !e.value.starts_with("http://"));
            let vars: &[&str] = if https {
                &["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]
            } else {
                &["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]
            };
            first_var(env, vars).map(|(var, v)| Setting::new("proxy_url", v, Source::Env(var)))
        }
    };
    if out.proxy.is_some()
        && out.get("proxy_excludes").is_none()
        && let Some((var, v)) = first_var(env, &["NO_PROXY", "no_proxy"])
    {
        out.store
            .push(Setting::new("proxy_excludes", v, Source::Env(var)));
    }
    if let Some(p) = &out.proxy
        && url::Url::parse(&p.value).is_err()
    {
        return Err(err(format!(
            "proxy {:?} ({}) is not a URL such as http://proxy:3128",
            p.shown(),
            p.source
        )));
    }

    out.credentials = match kind {
        Kind::S3 => s3_credentials(d, env, profile.as_ref(), &out, &err)?,
        Kind::Azure => Credentials::Store(describe_store_credentials(
            &out.store,
            &[
                (
                    "azure_storage_use_emulator",
                    "the Azurite emulator's account",
                ),
                ("azure_storage_account_key", "account key"),
                ("azure_storage_sas_key", "SAS token"),
                ("azure_storage_token", "bearer token"),
                (
                    "azure_storage_client_secret",
                    "service principal (client secret)",
                ),
                (
                    "azure_federated_token_file",
                    "workload identity (federated token file)",
                ),
                ("azure_use_azure_cli", "Azure CLI"),
                ("azure_skip_signature", "unsigned requests"),
            ],
            "managed identity (instance metadata)",
        )),
        Kind::Gcs => Credentials::Store(describe_store_credentials(
            &out.store,
            &[
                ("google_service_account", "service account file"),
                ("google_service_account_key", "service account key"),
                (
                    "google_application_credentials",
                    "application credentials file",
                ),
                ("google_bearer_token", "bearer token"),
                ("google_skip_signature", "unsigned requests"),
            ],
            "application default credentials or instance metadata",
        )),
        Kind::File | Kind::Memory => Credentials::NotNeeded,
    };
    Ok(out)
}

fn describe_store_credentials(store: &[Setting], known: &[(&str, &str)], fallback: &str) -> String {
    for (key, what) in known {
        if let Some(s) = store.iter().rev().find(|s| s.key == *key)
            && !matches!(s.value.as_str(), "false" | "0")
        {
            return format!("{what} ({})", s.source);
        }
    }
    fallback.to_string()
}

fn first_var(env: &dyn EnvSource, vars: &[&str]) -> Option<(String, String)> {
    vars.iter()
        .find_map(|v| env.var(v).map(|value| (v.to_string(), value)))
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// The S3 credential chain: the file's keys, the file's profile, unsigned, the environment's
/// keys, the profile's keys or web identity, web identity from the environment, container
/// credentials, instance metadata.
fn s3_credentials(
    d: &DatasetConfig,
    env: &dyn EnvSource,
    profile: Option<&(aws::Profile, bool)>,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Credentials, SettingsError> {
    let file_key = |k: &str| Source::File(format!("datasets.{}.{k}", d.name));
    let pair = |id: Option<Setting>,
                secret: Option<Setting>,
                token: Option<Setting>,
                what: &str| match (id, secret) {
        (Some(key_id), Some(secret)) => Ok(Credentials::Static {
            key_id,
            secret,
            token,
        }),
        (Some(id), None) => Err(err(format!(
            "{what}: access key id ({}) without a secret access key",
            id.source
        ))),
        (None, Some(s)) => Err(err(format!(
            "{what}: secret access key ({}) without an access key id",
            s.source
        ))),
        (None, None) => Err(err(format!("{what}: a session token without a key pair"))),
    };

    // 1. The file's own keys.
    let file_id = d
        .access_key_id
        .clone()
        .map(|v| Setting::new("aws_access_key_id", v, file_key("access_key_id")));
    let file_secret = d
        .secret_access_key
        .clone()
        .map(|v| Setting::new("aws_secret_access_key", v.0, file_key("secret_access_key")));
    let file_token = d
        .session_token
        .clone()
        .map(|v| Setting::new("aws_session_token", v.0, file_key("session_token")));
    if file_id.is_some() || file_secret.is_some() || file_token.is_some() {
        return pair(
            file_id,
            file_secret,
            file_token,
            "the config file's credentials",
        );
    }

    // 2. A profile the file names.
    if let Some((p, true)) = profile
        && d.profile.is_some()
    {
        return profile_credentials(p, out, err)?.ok_or_else(|| {
            err(format!(
                "profile {:?} (datasets.{}.profile) has no credentials (aws_access_key_id and aws_secret_access_key, or role_arn and web_identity_token_file)",
                p.name, d.name
            ))
        });
    }

    // 3. Unsigned requests.
    let skip = d
        .skip_signature
        .map(|b| (b, file_key("skip_signature")))
        .or_else(|| {
            env.var("AWS_SKIP_SIGNATURE")
                .and_then(|v| parse_bool(&v))
                .map(|b| (b, Source::Env("AWS_SKIP_SIGNATURE".into())))
        });
    if let Some((true, source)) = skip {
        return Ok(Credentials::Unsigned(source));
    }

    // 4. The environment's keys.
    let env_setting = |var: &str, key: &str| {
        env.var(var)
            .map(|v| Setting::new(key, v, Source::Env(var.into())))
    };
    let env_id = env_setting("AWS_ACCESS_KEY_ID", "aws_access_key_id");
    let env_secret = env_setting("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key");
    let env_token = env_setting("AWS_SESSION_TOKEN", "aws_session_token");
    if env_id.is_some() || env_secret.is_some() {
        return pair(
            env_id,
            env_secret,
            env_token,
            "the environment's credentials",
        );
    }

    // 5. The selected profile (AWS_PROFILE, or `default` when the files have one).
    if let Some((p, explicit)) = profile {
        match profile_credentials(p, out, err)? {
            Some(c) => return Ok(c),
            None if *explicit => {
                return Err(err(format!(
                    "profile {:?} (AWS_PROFILE) has no credentials (aws_access_key_id and aws_secret_access_key, or role_arn and web_identity_token_file)",
                    p.name
                )));
            }
            None => {}
        }
    }

    // 6. Web identity from the environment (Kubernetes IRSA).
    let role = env_setting("AWS_ROLE_ARN", "aws_role_arn");
    let token_file = env_setting("AWS_WEB_IDENTITY_TOKEN_FILE", "aws_web_identity_token_file");
    match (role, token_file) {
        (Some(role_arn), Some(token_file)) => {
            return web_identity(
                role_arn,
                token_file,
                env.var("AWS_ROLE_SESSION_NAME"),
                env,
                out,
                err,
            );
        }
        (Some(r), None) => {
            return Err(err(format!(
                "AWS_ROLE_ARN ({}) is set without AWS_WEB_IDENTITY_TOKEN_FILE",
                r.value
            )));
        }
        (None, Some(t)) => {
            return Err(err(format!(
                "AWS_WEB_IDENTITY_TOKEN_FILE ({}) is set without AWS_ROLE_ARN",
                t.value
            )));
        }
        (None, None) => {}
    }

    // 7. Container credentials.
    let full = env_setting(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "container_credentials_uri",
    );
    let relative = env
        .var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        .map(|rel| {
            Setting::new(
                "container_credentials_uri",
                format!("http://169.254.170.2{rel}"),
                Source::Env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into()),
            )
        });
    if let Some(uri) = relative.or(full) {
        let parsed = url::Url::parse(&uri.value)
            .map_err(|e| err(format!("{} {:?} is not a URL: {e}", uri.source, uri.value)))?;
        if !aws::container_uri_allowed(&parsed) {
            return Err(err(format!(
                "{} {} must be https:// or a loopback or link-local http:// address",
                uri.source, uri.value
            )));
        }
        let auth = match (
            env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
            env.var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
        ) {
            (Some(file), _) => ContainerAuth::TokenFile(PathBuf::from(file)),
            (None, Some(token)) => ContainerAuth::Token(token),
            (None, None) => ContainerAuth::None,
        };
        return Ok(Credentials::Container { uri, auth });
    }

    // 8. Instance metadata, unless switched off.
    if env
        .var("AWS_EC2_METADATA_DISABLED")
        .and_then(|v| parse_bool(&v))
        .unwrap_or(false)
    {
        return Err(err(
            "no credentials: set access_key_id and secret_access_key in the config file, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE, AWS_CONTAINER_CREDENTIALS_FULL_URI, or skip_signature = true for a public bucket (instance metadata is off: AWS_EC2_METADATA_DISABLED)".into(),
        ));
    }
    Ok(Credentials::Instance {
        endpoint: env_setting("AWS_METADATA_ENDPOINT", "aws_metadata_endpoint"),
    })
}

/// A profile's own credentials: a key pair, or a role with a web identity token file.
fn profile_credentials(
    p: &aws::Profile,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Option<Credentials>, SettingsError> {
    let source = |key: &str| Source::Profile {
        profile: p.name.clone(),
        file: p.file_of(key),
    };
    let get = |key: &str, as_key: &str| p.get(key).map(|v| Setting::new(as_key, v, source(key)));
    let id = get("aws_access_key_id", "aws_access_key_id");
    let secret = get("aws_secret_access_key", "aws_secret_access_key");
    if id.is_some() || secret.is_some() {
        return match (id, secret) {
            (Some(key_id), Some(secret)) => Ok(Some(Credentials::Static {
                key_id,
                secret,
                token: get("aws_session_token", "aws_session_token"),
            })),
            _ => Err(err(format!(
                "profile {:?} has only one of aws_access_key_id and aws_secret_access_key",
                p.name
            ))),
        };
    }
    if let (Some(role), Some(token)) = (
        get("role_arn", "aws_role_arn"),
        get("web_identity_token_file", "aws_web_identity_token_file"),
    ) {
        let env = std::collections::BTreeMap::<String, String>::new();
        return web_identity(
            role,
            token,
            p.get("role_session_name").map(str::to_string),
            &env,
            out,
            err,
        )
        .map(Some);
    }
    for unsupported in [
        "credential_process",
        "sso_session",
        "sso_start_url",
        "source_profile",
    ] {
        if p.get(unsupported).is_some() {
            return Err(err(format!(
                "profile {:?} uses {unsupported}, which shardcache does not run; export the credentials (aws configure export-credentials --profile {} --format env) or use keys, web identity or container credentials",
                p.name, p.name
            )));
        }
    }
    Ok(None)
}

fn web_identity(
    role_arn: Setting,
    token_file: Setting,
    session_name: Option<String>,
    env: &dyn EnvSource,
    out: &OriginSettings,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Credentials, SettingsError> {
    if !std::path::Path::new(&token_file.value).is_file() {
        return Err(err(format!(
            "web identity token file {} ({}) does not exist",
            token_file.value, token_file.source
        )));
    }
    // AWS_ENDPOINT_URL_STS, else the generic AWS_ENDPOINT_URL (an in-cluster S3 server
    // answers STS on its own endpoint), else the regional AWS endpoint.
    let region = out
        .get("aws_region")
        .or_else(|| out.get("aws_default_region"))
        .map_or("us-east-1".to_string(), |s| s.value.clone());
    let endpoint = env
        .var("AWS_ENDPOINT_URL_STS")
        .map(|v| {
            Setting::new(
                "sts_endpoint",
                v,
                Source::Env("AWS_ENDPOINT_URL_STS".into()),
            )
        })
        .or_else(|| {
            env.var("AWS_ENDPOINT_URL")
                .map(|v| Setting::new("sts_endpoint", v, Source::Env("AWS_ENDPOINT_URL".into())))
        })
        .unwrap_or_else(|| {
            Setting::new(
                "sts_endpoint",
                format!("https://sts.{region}.amazonaws.com"),
                Source::Default,
            )
        });
    if url::Url::parse(&endpoint.value).is_err() {
        return Err(err(format!(
            "STS endpoint {:?} ({}) is not a URL",
            endpoint.value, endpoint.source
        )));
    }
    Ok(Credentials::WebIdentity {
        role_arn,
        token_file,
        session_name: session_name.unwrap_or_else(|| "shardcache".into()),
        endpoint,
    })
}

#[cfg(test)]
mod tests;
