//! The server's one shutdown signal, as every subsystem watches it.

/// Tells connections, the membership and the admin endpoint that the server is shutting down:
/// they stop taking work, finish what is in flight, and end.
pub type Draining = tokio::sync::watch::Receiver<bool>;
