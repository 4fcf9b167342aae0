//! The control-plane client (`--control`, gRPC): warm, list, stat, evict, members, health; and
//! manifests, which pin reads to what a warm recorded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use shardcache_proto::control::control_client::ControlClient as Grpc;
use shardcache_proto::control::{
    EvictRequest, EvictResponse, HealthRequest, HealthResponse, ListRequest, ListResponse,
    MembersRequest, MembersResponse, StatRequest, StatResponse, WarmProgress, WarmRequest,
};
use tonic::codegen::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::{Client, ClientError, ErrorCode};

/// Largest control-plane answer accepted (a listing or manifest of a million objects).
const MAX_MESSAGE: usize = 512 << 20;

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Why a control call failed: the server's status, with its message.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// `source`: the error `reason` was made from, when there was one.
    #[error("cannot reach the control plane at {endpoint}: {reason}")]
    Connect {
        endpoint: String,
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    },
    #[error("{}", .0.message())]
    Status(tonic::Status),
    #[error("{0}")]
    Invalid(String),
}

impl From<tonic::Status> for ControlError {
    fn from(s: tonic::Status) -> ControlError {
        ControlError::Status(s)
    }
}

impl ControlError {
    /// True when the server refused the token.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(self, ControlError::Status(s) if s.code() == tonic::Code::Unauthenticated)
    }
}

/// A connection to one node's control plane.
#[derive(Clone)]
pub struct ControlClient {
    grpc: Grpc<InterceptedService<Channel, Bearer>>,
}

impl ControlClient {
    /// Connect to `host:port` (or `http(s)://host:port`). With `tls_ca`, the connection is TLS
    /// and the server's certificate must chain to that CA.
    pub async fn connect(
        endpoint: &str,
        token: Option<String>,
        tls_ca: Option<&Path>,
    ) -> Result<ControlClient, ControlError> {
        let connect_err =
            |reason: String, source: Box<dyn std::error::Error + Send + Sync + 'static>| {
                ControlError::Connect {
                    endpoint: endpoint.to_string(),
                    reason,
                    source: Some(source),
                }
            };
        let scheme = if tls_ca.is_some() { "https" } else { "http" };
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("{scheme}://{endpoint}")
        };
        let mut ep =
            Endpoint::from_shared(url).map_err(|e| connect_err(e.to_string(), e.into()))?;
        if let Some(ca) = tls_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                connect_err(format!("cannot read CA {}: {e}", ca.display()), e.into())
            })?;
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| connect_err(e.to_string(), e.into()))?;
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| connect_err(format!("{e}: {}", source_chain(&e)), e.into()))?;
        let bearer = match token {
            Some(t) => Some(format!("Bearer {}", t.trim()).parse().map_err(|_| {
                ControlError::Invalid("the token has characters a header cannot carry".into())
            })?),
            None => None,
        };
        // Lists and manifests of large prefixes are large messages.
        let grpc =
            Grpc::with_interceptor(channel, Bearer(bearer)).max_decoding_message_size(MAX_MESSAGE);
        Ok(ControlClient { grpc })
    }

    /// Start a warm; progress messages until the last one (`done`).
    pub async fn warm(
        &self,
        req: WarmRequest,
    ) -> Result<tonic::Streaming<WarmProgress>, ControlError> {
        Ok(self.grpc.clone().warm(req).await?.into_inner())
    }

    pub async fn list(&self, path: &str) -> Result<ListResponse, ControlError> {
        let req = ListRequest { path: path.into() };
        Ok(self.grpc.clone().list(req).await?.into_inner())
    }

    pub async fn stat(&self, path: &str) -> Result<StatResponse, ControlError> {
        let req = StatRequest { path: path.into() };
        Ok(self.grpc.clone().stat(req).await?.into_inner())
    }

    pub async fn evict(&self, path: &str) -> Result<EvictResponse, ControlError> {
        let req = EvictRequest { path: path.into() };
        Ok(self.grpc.clone().evict(req).await?.into_inner())
    }

    pub async fn members(&self) -> Result<MembersResponse, ControlError> {
        Ok(self
            .grpc
            .clone()
            .members(MembersRequest {})
            .await?
            .into_inner())
    }

    pub async fn health(&self) -> Result<HealthResponse, ControlError> {
        Ok(self
            .grpc
            .clone()
            .health(HealthRequest {})
            .await?
            .into_inner())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push(s.to_string());
        cur = s.source();
    }
    out.join(": ")
}

/// One object as a warm recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    pub key: String,
    pub size: u64,
    pub etag: String,
    pub crc32c: u32,
}

/// What a warm loaded: every object's size, ETag and CRC32C. Reads pinned to a manifest get
/// exactly these bytes or an error, never other data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub dataset: String,
    pub objects: Vec<ManifestObject>,
    #[serde(skip)]
    index: BTreeMap<String, usize>,
}

impl Manifest {
    pub fn new(dataset: &str, objects: Vec<ManifestObject>) -> Manifest {
        let mut m = Manifest {
            dataset: dataset.to_string(),
            objects,
            index: BTreeMap::new(),
        };
        m.objects.sort_by(|a, b| a.key.cmp(&b.key));
        m.reindex();
        m
    }

    /// The manifest a finished warm reported (its last progress message).
    pub fn from_warm(
        dataset: &str,
        entries: &[shardcache_proto::control::ManifestEntry],
    ) -> Manifest {
        let objects = entries
            .iter()
            .map(|m| ManifestObject {
                key: m.key.clone(),
                size: m.size,
                etag: m.etag.clone(),
                crc32c: m.crc32c,
            })
            .collect();
        Manifest::new(dataset, objects)
    }

    fn reindex(&mut self) {
        self.index = self
            .objects
            .iter()
            .enumerate()
            .map(|(i, o)| (o.key.clone(), i))
            .collect();
    }

    /// Read a manifest file (JSON).
    pub fn load(path: &Path) -> Result<Manifest, ControlError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ControlError::Invalid(format!("cannot read manifest {}: {e}", path.display()))
        })?;
        let mut m: Manifest = serde_json::from_str(&text).map_err(|e| {
            ControlError::Invalid(format!("manifest {} is not valid: {e}", path.display()))
        })?;
        m.reindex();
        Ok(m)
    }

    /// Write the manifest file (JSON), replacing it atomically.
    pub fn save(&self, path: &Path) -> Result<(), ControlError> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| ControlError::Invalid(e.to_string()))?;
        let tmp = PathBuf::from(format!("{}.tmp", path.display()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                ControlError::Invalid(format!("cannot write manifest {}: {e}", path.display()))
            })
    }

    /// The entry of `DATASET/KEY`.
    pub fn get(&self, path: &str) -> Option<&ManifestObject> {
        let (dataset, key) = path.split_once('/')?;
        if dataset != self.dataset {
            return None;
        }
        self.index.get(key).map(|i| &self.objects[*i])
    }
}

impl Client {
    /// Read a whole object pinned to its manifest entry: the ETag must still be the one the warm
    /// saw, and size and CRC32C must match, or the read fails saying so.
    pub async fn read_manifest(&self, path: &str, manifest: &Manifest) -> crate::Result<Bytes> {
        let Some(entry) = manifest.get(path) else {
            return Err(ClientError::Server {
                code: ErrorCode::NotFound,
                message: format!(
                    "{path} is not in the manifest of dataset {}",
                    manifest.dataset
                ),
            });
        };
        let (_, bytes) = match self
            .read_pinned(path, 0, None, Some(entry.etag.clone()))
            .await
        {
            Ok(r) => r,
            Err(ClientError::Server {
                code: ErrorCode::PreconditionFailed,
                message,
            }) => {
                return Err(ClientError::Server {
                    code: ErrorCode::PreconditionFailed,
                    message: format!(
                        "{path} changed since the manifest was written (ETag {:?}): {message}",
                        entry.etag
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != entry.size || crc32c::crc32c(&bytes) != entry.crc32c {
            return Err(ClientError::Server {
                code: ErrorCode::PreconditionFailed,
                message: format!(
                    "{path} does not match its manifest entry ({} bytes, CRC32C {:08x}; read {} bytes)",
                    entry.size,
                    entry.crc32c,
                    bytes.len()
                ),
            });
        }
        Ok(bytes)
    }
}
