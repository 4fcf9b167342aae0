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

mod credentials;
mod kind;
mod layers;
mod network;
mod resolved;
mod s3_credentials;

pub use credentials::Credentials;
pub use kind::Kind;
pub use resolved::{
    OriginDefaults, OriginSettings, Setting, SettingsError, Source, is_secret, redact,
};

use super::DatasetConfig;
use crate::env::EnvSource;

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
    let kind = kind::of_url(d, &err)?;
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

    kind::check_keys_apply(d, kind, &err)?;
    let Some(prefix) = kind.env_prefix() else {
        return Ok(out);
    };

    let profile = layers::merge(d, kind, prefix, env, &mut out, &err)?;
    let endpoint = network::endpoint(kind, &mut out, &err)?;
    network::durations(&out, &err)?;
    network::trust(d, kind, env, &mut out, &err)?;
    network::proxy(env, endpoint.as_ref(), &mut out, &err)?;
    out.credentials = credentials::for_kind(kind, d, env, profile.as_ref(), &out, &err)?;
    Ok(out)
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
