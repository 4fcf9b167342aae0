//! Turning a dataset's origin URL into an [`ObjectStore`].
//!
//! Only URLs from the server's own configuration reach this module: clients name datasets, never
//! URLs. Object-store-level retries are switched off because [`super::Origin`] retries with its
//! own bounded policy; two layers of retries would multiply.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::config::DatasetConfig;

#[derive(Debug, thiserror::Error)]
#[error("dataset {dataset:?}: origin {url:?}: {reason}")]
pub struct StoreError {
    dataset: String,
    url: String,
    reason: String,
}

/// Build the store of one dataset. `create_missing_dir` creates a `file://` directory that does
/// not exist yet (used for the zero-configuration default).
pub fn build_store(
    d: &DatasetConfig,
    attempt_timeout: Duration,
    create_missing_dir: bool,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    install_crypto_provider();
    let err = |reason: String| StoreError {
        dataset: d.name.clone(),
        url: d.origin.clone(),
        reason,
    };
    let url = url::Url::parse(&d.origin).map_err(|e| err(format!("not a URL: {e}")))?;
    let no_retry = RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    };
    // The whole-request deadline is Origin's own per-attempt timeout (it covers the body too and
    // names the timeout in its error); only connecting gets a deadline here.
    let client = ClientOptions::new()
        .with_timeout_disabled()
        .with_connect_timeout(attempt_timeout.min(Duration::from_secs(5)))
        .with_allow_http(d.allow_http.unwrap_or(false));
    let prefix = url.path().trim_matches('/').to_string();
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => {
            let dir = url
                .to_file_path()
                .map_err(|()| err("not an absolute local path".into()))?;
            if create_missing_dir && !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
            }
            if !dir.is_dir() {
                return Err(err(format!("{} is not a directory", dir.display())));
            }
            return LocalFileSystem::new_with_prefix(&dir)
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>)
                .map_err(|e| err(e.to_string()));
        }
        "memory" => return Ok(Arc::new(InMemory::new())),
        "s3" | "s3a" => {
            let mut b = AmazonS3Builder::from_env()
                .with_url(format!("s3://{}", url.host_str().unwrap_or_default()))
                .with_retry(no_retry)
                .with_client_options(client);
            if let Some(endpoint) = &d.endpoint {
                b = b.with_endpoint(endpoint);
            }
            if let Some(region) = &d.region {
                b = b.with_region(region);
            }
            if let Some(key) = &d.access_key_id {
                b = b.with_access_key_id(key);
            }
            if let Some(secret) = &d.secret_access_key {
                b = b.with_secret_access_key(&secret.0);
            }
            if let Some(allow) = d.allow_http {
                b = b.with_allow_http(allow);
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()))?)
        }
        "gs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(format!("gs://{}", url.host_str().unwrap_or_default()))
                .with_retry(no_retry)
                .with_client_options(client)
                .build()
                .map_err(|e| err(e.to_string()))?,
        ),
        "az" | "azure" | "abfs" | "abfss" => {
            let mut b = MicrosoftAzureBuilder::from_env()
                .with_url(d.origin.clone())
                .with_retry(no_retry)
                .with_client_options(client);
            if let Some(endpoint) = &d.endpoint {
                b = b.with_endpoint(endpoint.clone());
            }
            if let Some(allow) = d.allow_http {
                b = b.with_allow_http(allow);
            }
            // Azure URLs carry the container in the host; the path is the prefix.
            Arc::new(b.build().map_err(|e| err(e.to_string()))?)
        }
        other => {
            return Err(err(format!(
                "unsupported scheme {other:?}; use file://, s3://, gs://, az:// or memory://"
            )));
        }
    };
    if prefix.is_empty() {
        return Ok(store);
    }
    let prefix = Path::parse(&prefix).map_err(|e| err(format!("invalid prefix: {e}")))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

/// Make ring the process-wide rustls provider, which the HTTP stores' client uses. Idempotent;
/// keeps a provider that the embedding program installed first.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_unknown_schemes_and_missing_dirs() {
        let t = Duration::from_secs(1);
        let e = build_store(&DatasetConfig::new("x", "ftp://host/x"), t, false).unwrap_err();
        assert!(e.to_string().contains("unsupported scheme"), "{e}");
        let e = build_store(
            &DatasetConfig::new("x", "file:///does/not/exist/x"),
            t,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let e = build_store(&DatasetConfig::new("x", "not a url"), t, false).unwrap_err();
        assert!(e.to_string().contains("not a URL"), "{e}");
    }

    #[test]
    fn builds_every_supported_scheme() {
        let t = Duration::from_secs(1);
        let dir = tempfile::tempdir().unwrap();
        let file = format!("file://{}", dir.path().display());
        build_store(&DatasetConfig::new("f", file), t, false).unwrap();
        build_store(&DatasetConfig::new("m", "memory://"), t, false).unwrap();
        let mut s3 = DatasetConfig::new("s", "s3://bucket/some/prefix/");
        s3.endpoint = Some("http://127.0.0.1:1".into());
        s3.region = Some("us-east-1".into());
        s3.allow_http = Some(true);
        build_store(&s3, t, false).unwrap();
    }
}
