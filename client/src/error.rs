//! The client's error type.

use std::fmt;
use std::sync::Arc;

use shardcache_proto::{ErrorCode, PathError};

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    /// `path`: the object (`DATASET/KEY`) the failed call was about, when it was about one.
    #[error("cannot connect to {endpoint}{}: {reason}", WhileReading(.path))]
    Connect {
        endpoint: String,
        reason: String,
        path: Option<String>,
        #[source]
        source: Option<Cause>,
    },
    #[error("connection to {endpoint} lost{}: {reason}", WhileReading(.path))]
    ConnectionLost {
        endpoint: String,
        reason: String,
        path: Option<String>,
        #[source]
        source: Option<Cause>,
    },
    #[error("protocol error from {endpoint}{}: {reason}", WhileReading(.path))]
    Protocol {
        endpoint: String,
        reason: String,
        path: Option<String>,
        #[source]
        source: Option<Cause>,
    },
    #[error("checksum mismatch in {path} at offset {offset}: the data was corrupted in transit")]
    Checksum { path: String, offset: u64 },
    #[error("no response from {endpoint} within {secs}s{}", WhileReading(.path))]
    Timeout {
        endpoint: String,
        secs: u64,
        path: Option<String>,
    },
    #[error(transparent)]
    InvalidPath(#[from] PathError),
    #[error("tls: {reason}")]
    Tls {
        reason: String,
        #[source]
        source: Option<Cause>,
    },
    #[error("pinned buffer: {reason}")]
    Buffer {
        reason: String,
        #[source]
        source: Option<Cause>,
    },
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

    /// The error of a call about the object `path` (`DATASET/KEY`): a connection, protocol or
    /// timeout error that names no object yet names this one. Other errors are returned as
    /// they are (those that concern an object name it already).
    pub fn for_object(mut self, path: &str) -> ClientError {
        match &mut self {
            ClientError::Connect { path: p, .. }
            | ClientError::ConnectionLost { path: p, .. }
            | ClientError::Protocol { path: p, .. }
            | ClientError::Timeout { path: p, .. }
                if p.is_none() =>
            {
                *p = Some(path.to_string());
            }
            _ => {}
        }
        self
    }

    /// The object (`DATASET/KEY`) the error is about, when it names one.
    pub fn path(&self) -> Option<&str> {
        match self {
            ClientError::Connect { path, .. }
            | ClientError::ConnectionLost { path, .. }
            | ClientError::Protocol { path, .. }
            | ClientError::Timeout { path, .. } => path.as_deref(),
            ClientError::Checksum { path, .. } | ClientError::BufferTooSmall { path, .. } => {
                Some(path)
            }
            _ => None,
        }
    }

    pub(crate) fn connect(endpoint: &str, reason: impl Into<String>) -> ClientError {
        ClientError::Connect {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
            path: None,
            source: None,
        }
    }

    pub(crate) fn lost(endpoint: &str, reason: impl Into<String>) -> ClientError {
        ClientError::ConnectionLost {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
            path: None,
            source: None,
        }
    }

    pub(crate) fn protocol(endpoint: &str, reason: impl Into<String>) -> ClientError {
        ClientError::Protocol {
            endpoint: endpoint.to_string(),
            reason: reason.into(),
            path: None,
            source: None,
        }
    }

    pub(crate) fn timeout(endpoint: &str, secs: u64) -> ClientError {
        ClientError::Timeout {
            endpoint: endpoint.to_string(),
            secs,
            path: None,
        }
    }

    pub(crate) fn tls(reason: impl Into<String>) -> ClientError {
        ClientError::Tls {
            reason: reason.into(),
            source: None,
        }
    }

    pub(crate) fn buffer(reason: impl Into<String>) -> ClientError {
        ClientError::Buffer {
            reason: reason.into(),
            source: None,
        }
    }

    /// The same error with `cause` as its [`std::error::Error::source`] (for the variants that
    /// carry one; others are returned as they are).
    pub(crate) fn caused_by(
        mut self,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> ClientError {
        match &mut self {
            ClientError::Connect { source, .. }
            | ClientError::ConnectionLost { source, .. }
            | ClientError::Protocol { source, .. }
            | ClientError::Tls { source, .. }
            | ClientError::Buffer { source, .. } => *source = Some(Cause::new(cause)),
            _ => {}
        }
        self
    }
}

/// " while reading PATH", or nothing.
struct WhileReading<'a>(&'a Option<String>);

impl fmt::Display for WhileReading<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(path) => write!(f, " while reading {path}"),
            None => Ok(()),
        }
    }
}

/// The error a [`ClientError`] was made from (an I/O, TLS, QUIC or decoding error), shared so
/// the client error stays `Clone`.
///
/// [`std::error::Error::source`] of the client error is the cause itself, not this wrapper,
/// so `downcast_ref::<std::io::Error>()` on it works; the wrapper derefs to it too.
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(cause: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(Arc::new(cause))
    }
}

// Deliberately not `std::error::Error` itself: `thiserror`'s `#[source]` then reaches the
// wrapped error through `Deref`, and `source()` returns it rather than this wrapper.
impl std::ops::Deref for Cause {
    type Target = dyn std::error::Error + Send + Sync + 'static;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;
