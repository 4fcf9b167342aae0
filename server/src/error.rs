//! The server library's error type and its one mapping to wire error codes.

use std::sync::Arc;
use std::time::Duration;

use shardcache_proto::{ErrorCode, PathError};

/// Errors of the read path. Cheap to clone: a failed fill is handed to every reader that waited
/// on it.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown dataset {dataset:?}; this server serves: {}", known.join(", "))]
    UnknownDataset {
        dataset: String,
        /// The datasets this server is configured with.
        known: Vec<String>,
    },
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("object {dataset}/{key} not found at the origin")]
    NotFound { dataset: String, key: String },
    #[error("range starting at {offset} is past the end of {dataset}/{key} ({size} bytes)")]
    RangeNotSatisfiable {
        dataset: String,
        key: String,
        offset: u64,
        size: u64,
    },
    #[error(
        "{dataset}/{key} is not at the requested version: the read pinned ETag {}, the origin has {}",
        shown_etag(expected),
        shown_etag(found)
    )]
    VersionChanged {
        dataset: String,
        key: String,
        expected: String,
        found: String,
    },
    #[error("origin of dataset {dataset} failed for {key} after {attempts} attempt(s): {reason}")]
    Origin {
        dataset: String,
        key: String,
        attempts: u32,
        /// One line: the HTTP status and the service's error code, or the transport failure.
        reason: String,
        /// The origin could not be reached (network, overload, server error), as opposed to
        /// an answer such as "access denied".
        unreachable: bool,
        #[source]
        source: Option<Arc<object_store::Error>>,
    },
    #[error(
        "origin of dataset {dataset} timed out for {key}: no {what} within {timeout:?}, {attempts} attempt(s)"
    )]
    OriginTimeout {
        dataset: String,
        key: String,
        attempts: u32,
        /// What did not arrive in time: "first byte", "next body bytes", "whole answer".
        what: &'static str,
        timeout: Duration,
    },
    #[error("server busy: {what}; retry later")]
    Busy { what: &'static str },
    #[error("bad request: {reason}")]
    BadRequest { reason: String },
    #[error("internal error: {reason}")]
    Internal { reason: String },
    /// A definitive answer relayed from the peer that owns the block (e.g. the origin failed
    /// there); the code is the peer's.
    #[error("{message} (from peer {peer})")]
    Relayed {
        code: ErrorCode,
        message: String,
        peer: String,
    },
    /// A probe found no copy here.
    #[error("block not cached on this node")]
    NotCached,
    #[error("forbidden: {reason}")]
    Forbidden { reason: String },
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
}

impl Error {
    /// The code a client sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::UnknownDataset { .. } => ErrorCode::UnknownDataset,
            Error::InvalidPath(PathError::Empty | PathError::MissingKey { .. }) => {
                ErrorCode::BadRequest
            }
            Error::InvalidPath(_) => ErrorCode::InvalidKey,
            Error::NotFound { .. } => ErrorCode::NotFound,
            Error::RangeNotSatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
            Error::VersionChanged { .. } => ErrorCode::PreconditionFailed,
            Error::Origin { .. } | Error::OriginTimeout { .. } => ErrorCode::OriginUnavailable,
            Error::Busy { .. } => ErrorCode::Busy,
            Error::BadRequest { .. } => ErrorCode::BadRequest,
            Error::Internal { .. } => ErrorCode::Internal,
            Error::Relayed { code, .. } => *code,
            Error::NotCached => ErrorCode::NotCached,
            Error::Forbidden { .. } => ErrorCode::Forbidden,
            Error::Unauthenticated { .. } => ErrorCode::Unauthenticated,
        }
    }
}

/// An ETag as written in messages: as the origin sends it (S3 quotes them), or "(none)".
fn shown_etag(etag: &str) -> &str {
    if etag.is_empty() { "(none)" } else { etag }
}

impl Error {
    /// Whether the origin could not be reached (the errors `stale_if_error` covers).
    pub fn origin_unreachable(&self) -> bool {
        match self {
            Error::Origin { unreachable, .. } => *unreachable,
            Error::OriginTimeout { .. } => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
