//! The client's error type.

use shardcache_proto::{ErrorCode, PathError};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("cannot connect to {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("connection to {endpoint} lost: {reason}")]
    ConnectionLost { endpoint: String, reason: String },
    #[error("protocol error from {endpoint}: {reason}")]
    Protocol { endpoint: String, reason: String },
    #[error("checksum mismatch in {path} at offset {offset}: the data was corrupted in transit")]
    Checksum { path: String, offset: u64 },
    #[error("no response from {endpoint} within {secs}s")]
    Timeout { endpoint: String, secs: u64 },
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("tls: {reason}")]
    Tls { reason: String },
    #[error("pinned buffer: {reason}")]
    Buffer { reason: String },
    #[error(
        "{path} has {need} bytes to read but the buffer holds {have}: pass a buffer of at least {need} bytes, or a length"
    )]
    BufferTooSmall { path: String, need: u64, have: u64 },
    #[error("{what} is not available over {endpoint}")]
    Unsupported {
        what: &'static str,
        endpoint: String,
    },
}

impl ClientError {
    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => code.is_retryable(),
            ClientError::ConnectionLost { .. }
            | ClientError::Checksum { .. }
            | ClientError::Timeout { .. } => true,
            _ => false,
        }
    }

    /// True when the object or dataset does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.code(),
            Some(ErrorCode::NotFound | ErrorCode::UnknownDataset)
        )
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
