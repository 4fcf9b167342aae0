//! The kinds of store an origin URL names: the schemes of each, the store's own names for its
//! keys, and which of a dataset's keys apply to which kind.

use object_store::aws::AmazonS3ConfigKey;
use object_store::azure::AzureConfigKey;
use object_store::gcp::GoogleConfigKey;

use super::{DatasetConfig, SettingsError};

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

    pub(super) fn env_prefix(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("AWS_"),
            Kind::Azure => Some("AZURE_"),
            Kind::Gcs => Some("GOOGLE_"),
            Kind::File | Kind::Memory => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::S3 => "s3://",
            Kind::Azure => "az://",
            Kind::Gcs => "gs://",
            Kind::File => "file://",
            Kind::Memory => "memory://",
        }
    }

    /// The store's canonical name for a configuration key, if it is one.
    pub(super) fn canonical(self, key: &str) -> Option<String> {
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

    pub(super) fn endpoint_key(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("aws_endpoint"),
            Kind::Azure => Some("azure_storage_endpoint"),
            Kind::Gcs => Some("google_base_url"),
            Kind::File | Kind::Memory => None,
        }
    }

    pub(super) fn skip_signature_key(self) -> Option<&'static str> {
        match self {
            Kind::S3 => Some("aws_skip_signature"),
            Kind::Azure => Some("azure_skip_signature"),
            Kind::Gcs => Some("google_skip_signature"),
            Kind::File | Kind::Memory => None,
        }
    }
}

/// The kind of store `d.origin` names.
pub(super) fn of_url(
    d: &DatasetConfig,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<Kind, SettingsError> {
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
    Ok(kind)
}

/// Keys that only some kinds understand.
pub(super) fn check_keys_apply(
    d: &DatasetConfig,
    kind: Kind,
    err: &dyn Fn(String) -> SettingsError,
) -> Result<(), SettingsError> {
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
    Ok(())
}
