//! Turning a dataset's resolved origin settings into an [`ObjectStore`].
//!
//! Only URLs from the server's own configuration reach this module: clients name datasets, never
//! URLs. The builders start empty (never `from_env`): [`super::settings`] has already merged the
//! environment, the profile and the file key by key, and every effective key is applied here
//! once, client options included, so nothing set in one place silently replaces another.
//! Object-store-level retries are off because [`super::Origin`] retries with its own bounded
//! policy; two layers of retries would multiply.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredentialProvider};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{
    Certificate, ClientConfigKey, ClientOptions, ObjectStore, RetryConfig, StaticCredentialProvider,
};

use super::aws;
use super::local::Confined;
use super::settings::{Credentials, Kind, OriginSettings, Setting};

#[derive(Debug, thiserror::Error)]
#[error("dataset {dataset:?}: origin {url:?}: {reason}")]
pub struct StoreError {
    dataset: String,
    url: String,
    reason: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// The same error, keeping what caused it.
    fn because(mut self, cause: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        self.source = Some(Box::new(cause));
        self
    }
}

/// Build the store of one dataset. `create_missing_dir` creates a `file://` directory that does
/// not exist yet (used for the zero-configuration default).
pub fn build_store(
    s: &OriginSettings,
    create_missing_dir: bool,
) -> Result<Arc<dyn ObjectStore>, StoreError> {
    install_crypto_provider();
    let err = |reason: String| StoreError {
        dataset: s.dataset.clone(),
        url: s.url.clone(),
        reason,
        source: None,
    };
    let url = url::Url::parse(&s.url).map_err(|e| err(format!("not a URL: {e}")).because(e))?;
    let prefix = url.path().trim_matches('/').to_string();
    let bucket = url.host_str().unwrap_or_default().to_string();
    let store: Arc<dyn ObjectStore> = match s.kind {
        Kind::File => {
            let dir = url
                .to_file_path()
                .map_err(|()| err("not an absolute local path".into()))?;
            if create_missing_dir && !dir.exists() {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| err(format!("cannot create {}: {e}", dir.display())).because(e))?;
            }
            if !dir.is_dir() {
                return Err(err(format!("{} is not a directory", dir.display())));
            }
            let inner = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| err(e.to_string()).because(e))?;
            if s.follow_symlinks {
                return Ok(Arc::new(inner));
            }
            return Confined::new(inner, &dir)
                .map(|c| Arc::new(c) as Arc<dyn ObjectStore>)
                .map_err(|e| err(format!("cannot resolve {}: {e}", dir.display())).because(e));
        }
        Kind::Memory => return Ok(Arc::new(InMemory::new())),
        Kind::S3 => {
            if bucket.is_empty() {
                return Err(err("no bucket: write s3://BUCKET/PREFIX/".into()));
            }
            let mut client = client_options(s).map_err(err)?;
            let mut store_keys = Vec::new();
            for setting in &s.store {
                match parse::<AmazonS3ConfigKey>(setting).map_err(err)? {
                    AmazonS3ConfigKey::Client(k) => client = client.with_config(k, &setting.value),
                    k => store_keys.push((k, setting.value.clone())),
                }
            }
            let provider = s3_provider(s, &client).map_err(err)?;
            let mut b = AmazonS3Builder::new()
                .with_bucket_name(&bucket)
                .with_retry(no_retry())
                .with_client_options(client);
            for (k, v) in store_keys {
                b = b.with_config(k, v);
            }
            match (provider, &s.credentials) {
                (Some(p), _) => b = b.with_credentials(p),
                (None, Credentials::Unsigned(_)) => b = b.with_skip_signature(true),
                (None, Credentials::Instance { endpoint }) => {
                    if let Some(e) = endpoint {
                        b = b.with_metadata_endpoint(&e.value);
                    }
                }
                (None, _) => {}
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()).because(e))?)
        }
        Kind::Gcs => {
            let mut client = client_options(s).map_err(err)?;
            let mut b = GoogleCloudStorageBuilder::new()
                .with_bucket_name(&bucket)
                .with_retry(no_retry());
            let mut store_keys = Vec::new();
            for setting in &s.store {
                match parse::<GoogleConfigKey>(setting).map_err(err)? {
                    GoogleConfigKey::Client(k) => client = client.with_config(k, &setting.value),
                    k => store_keys.push((k, setting.value.clone())),
                }
            }
            b = b.with_client_options(client);
            for (k, v) in store_keys {
                b = b.with_config(k, v);
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()).because(e))?)
        }
        Kind::Azure => {
            let mut client = client_options(s).map_err(err)?;
            let mut store_keys = Vec::new();
            for setting in &s.store {
                match parse::<AzureConfigKey>(setting).map_err(err)? {
                    AzureConfigKey::Client(k) => client = client.with_config(k, &setting.value),
                    k => store_keys.push((k, setting.value.clone())),
                }
            }
            // Azure URLs carry the container in the host; the path is the prefix.
            let mut b = MicrosoftAzureBuilder::new()
                .with_url(s.url.clone())
                .with_retry(no_retry())
                .with_client_options(client);
            for (k, v) in store_keys {
                b = b.with_config(k, v);
            }
            Arc::new(b.build().map_err(|e| err(e.to_string()).because(e))?)
        }
    };
    if prefix.is_empty() {
        return Ok(store);
    }
    let prefix =
        Path::parse(&prefix).map_err(|e| err(format!("invalid prefix: {e}")).because(e))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

fn parse<K: std::str::FromStr>(s: &Setting) -> Result<K, String> {
    s.key
        .parse::<K>()
        .map_err(|_| format!("{} ({}) is not a setting of this store", s.key, s.source))
}

fn no_retry() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

/// The HTTP client options: extra roots and the proxy; the keyed options are applied by the
/// caller.
fn client_options(s: &OriginSettings) -> Result<ClientOptions, String> {
    let mut client = ClientOptions::new();
    if let Some(ca) = &s.ca_bundle {
        for cert in ca_certificates(ca)? {
            client = client.with_root_certificate(cert);
        }
    }
    if let Some(proxy) = &s.proxy
        && s.get("proxy_url").is_none()
    {
        client = client.with_config(ClientConfigKey::ProxyUrl, &proxy.value);
    }
    Ok(client)
}

fn ca_certificates(ca: &Setting) -> Result<Vec<Certificate>, String> {
    let pem = std::fs::read(&ca.value)
        .map_err(|e| format!("CA bundle {} ({}): {e}", ca.value, ca.source))?;
    Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("CA bundle {} ({}): {e}", ca.value, ca.source))
}

/// The credential provider of an S3 origin, when shardcache supplies it.
fn s3_provider(
    s: &OriginSettings,
    client: &ClientOptions,
) -> Result<Option<AwsCredentialProvider>, String> {
    let _ = client;
    Ok(match &s.credentials {
        Credentials::Static {
            key_id,
            secret,
            token,
        } => Some(Arc::new(StaticCredentialProvider::new(
            object_store::aws::AwsCredential {
                key_id: key_id.value.clone(),
                secret_key: secret.value.clone(),
                token: token.as_ref().map(|t| t.value.clone()),
            },
        ))),
        Credentials::WebIdentity {
            role_arn,
            token_file,
            session_name,
            endpoint,
        } => Some(Arc::new(aws::WebIdentity::new(
            http_client(s, true)?,
            endpoint.value.clone(),
            role_arn.value.clone(),
            session_name.clone(),
            token_file.value.clone().into(),
        ))),
        Credentials::Container { uri, auth } => Some(Arc::new(aws::Container::new(
            http_client(s, false)?,
            uri.value.clone(),
            auth.clone(),
        ))),
        _ => None,
    })
}

/// A plain HTTP client for credential endpoints: the origin's extra roots, its deadlines, and
/// its proxy when `via_proxy` (STS is remote; container endpoints are local and never proxied).
fn http_client(s: &OriginSettings, via_proxy: bool) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(s.first_byte_timeout)
        .timeout(s.request_timeout);
    if let Some(ca) = &s.ca_bundle {
        let pem = std::fs::read(&ca.value)
            .map_err(|e| format!("CA bundle {} ({}): {e}", ca.value, ca.source))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA bundle {} ({}): {e}", ca.value, ca.source))?;
        b = b.tls_certs_merge(certs);
    }
    match (&s.proxy, via_proxy) {
        (Some(p), true) => {
            let mut proxy = reqwest::Proxy::all(&p.value)
                .map_err(|e| format!("proxy {} ({}): {e}", p.shown(), p.source))?;
            if let Some(excludes) = s.get("proxy_excludes") {
                proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&excludes.value));
            }
            b = b.proxy(proxy);
        }
        (_, false) => b = b.no_proxy(),
        (None, true) => {}
    }
    b.build()
        .map_err(|e| format!("cannot build the credentials client: {e}"))
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
    use crate::origin::DatasetConfig;
    use crate::origin::settings::{OriginDefaults, resolve};
    use std::collections::BTreeMap;

    fn build(d: DatasetConfig) -> Result<Arc<dyn ObjectStore>, String> {
        let env = BTreeMap::<String, String>::new();
        let s = resolve(&d, &OriginDefaults::default(), &env).map_err(|e| e.to_string())?;
        build_store(&s, false).map_err(|e| e.to_string())
    }

    #[test]
    fn rejects_missing_dirs() {
        let e = build(DatasetConfig::new("x", "file:///does/not/exist/x")).unwrap_err();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[test]
    fn builds_every_supported_scheme() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("file://{}", dir.path().display());
        build(DatasetConfig::new("f", file)).unwrap();
        build(DatasetConfig::new("m", "memory://")).unwrap();
        let mut s3 = DatasetConfig::new("s", "s3://bucket/some/prefix/");
        s3.endpoint = Some("http://127.0.0.1:1".into());
        s3.region = Some("us-east-1".into());
        s3.skip_signature = Some(true);
        build(s3).unwrap();
        let mut az = DatasetConfig::new("a", "az://container/prefix/");
        az.options
            .insert("account_name".into(), "devstoreaccount1".into());
        az.skip_signature = Some(true);
        build(az).unwrap();
        let mut gs = DatasetConfig::new("g", "gs://bucket/prefix/");
        gs.skip_signature = Some(true);
        build(gs).unwrap();
    }
}
