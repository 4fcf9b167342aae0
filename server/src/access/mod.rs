//! Authentication: the `--access-tokens` file and what one connection may read, and the
//! members' proof of the cluster secret (`secret.rs`).
//!
//! The file holds one `TOKEN DATASET[,DATASET…]` or `TOKEN *` a line (`#` starts a comment).
//! Tokens are kept only as SHA-256 digests; a presented token is hashed and compared with every
//! digest in full, so neither the time taken nor the answer depends on how long a configured
//! token is or on where a comparison would first differ.
//!
//! A connection is open to all ([`Policy::Anonymous`]) when no tokens are configured (then the listeners
//! are loopback-only unless `--insecure-allow-anonymous`), or waiting for an `Auth` frame;
//! afterwards every request is checked against the datasets its token grants.

use std::sync::{Arc, OnceLock};

use crate::error::Error;

mod secret;
mod tokens;

pub use secret::{ClusterSecret, MIN_SECRET_LEN, PROOF_LEN, SecretError};
pub use tokens::{
    AccessTokens, Datasets, Grant, MIN_TOKEN_LEN, TokenFileError, at_line, same_bytes,
};

/// Who may use the data plane.
#[derive(Debug, Clone)]
pub enum Policy {
    /// No tokens configured: every connection reads every dataset.
    Anonymous,
    Tokens(Arc<AccessTokens>),
}

/// Where a connection is in the members' challenge–response.
#[derive(Debug, Default)]
enum PeerHandshake {
    #[default]
    None,
    Challenged {
        asker_nonce: Vec<u8>,
        answerer_nonce: Vec<u8>,
        asker: String,
    },
    /// Proved: the member's node id.
    Member(String),
    Failed,
}

/// What the server answers to one `PeerAuth` step.
#[derive(Debug)]
pub enum PeerStep {
    /// Send this challenge (node id, nonce, proof).
    Challenge { nonce: Vec<u8>, proof: Vec<u8> },
    /// The asker proved it holds the secret.
    Member(String),
}

/// What one connection (a TCP or local-socket connection, a whole QUIC connection) may do.
#[derive(Debug)]
pub struct Access {
    policy: Policy,
    grant: OnceLock<Arc<Grant>>,
    secret: Option<Arc<ClusterSecret>>,
    peer: std::sync::Mutex<PeerHandshake>,
    /// A wrong token or proof was sent: the whole connection (every QUIC stream) is closed.
    failed: std::sync::atomic::AtomicBool,
}

impl Access {
    pub fn new(policy: &Policy, secret: Option<&Arc<ClusterSecret>>) -> Arc<Access> {
        Arc::new(Access {
            policy: policy.clone(),
            grant: OnceLock::new(),
            secret: secret.cloned(),
            peer: std::sync::Mutex::new(PeerHandshake::None),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// One step of the members' handshake, answered as member `me`.
    pub fn peer_step(
        &self,
        me: &str,
        asker: &str,
        nonce: &[u8],
        proof: &[u8],
    ) -> Result<PeerStep, Error> {
        let Some(secret) = &self.secret else {
            return Err(Error::BadRequest {
                reason:
                    "this server has no --cluster-secret-file: members are not asked to prove one"
                        .into(),
            });
        };
        let refused = |reason: &str| Error::Unauthenticated {
            reason: reason.to_string(),
        };
        if asker == me {
            // This node's own name: a proof this node made, reflected back at it, or this
            // node reaching itself (the asker learns which from its nonce).
            secret.note_reflected(nonce);
            *self.peer.lock().expect("lock") = PeerHandshake::Failed;
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(refused("the asker claims this node's own node id"));
        }
        let mut state = self.peer.lock().expect("lock");
        let current = std::mem::replace(&mut *state, PeerHandshake::Failed);
        match current {
            PeerHandshake::None if proof.is_empty() && nonce.len() == PROOF_LEN => {
                let mine = ClusterSecret::nonce().to_vec();
                let proof = secret.answerer_proof(nonce, &mine, [asker, me]);
                *state = PeerHandshake::Challenged {
                    asker_nonce: nonce.to_vec(),
                    answerer_nonce: mine.clone(),
                    asker: asker.to_string(),
                };
                Ok(PeerStep::Challenge { nonce: mine, proof })
            }
            PeerHandshake::Challenged {
                asker_nonce,
                answerer_nonce,
                asker: named,
            } if nonce.is_empty() && named == asker => {
                let ids = [asker, me];
                if secret.verify(false, [&asker_nonce, &answerer_nonce], ids, proof) {
                    *state = PeerHandshake::Member(asker.to_string());
                    Ok(PeerStep::Member(asker.to_string()))
                } else {
                    self.failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Err(refused(
                        "the proof does not match the cluster secret (--cluster-secret-file differs between members?)",
                    ))
                }
            }
            PeerHandshake::Member(id) => {
                *state = PeerHandshake::Member(id);
                Err(Error::BadRequest {
                    reason: "this connection is already a member's".into(),
                })
            }
            _ => {
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Err(refused("the members' handshake was not followed"))
            }
        }
    }

    /// Whether a wrong token or proof was sent on this connection.
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this connection must still authenticate (tokens are required, and it has
    /// neither a grant nor a member's proof).
    pub fn unauthenticated(&self) -> bool {
        matches!(self.policy, Policy::Tokens(_))
            && self.grant.get().is_none()
            && self.member().is_none()
    }

    /// Whether a member proved the cluster secret on this connection (no copy of its id).
    pub fn is_member(&self) -> bool {
        matches!(&*self.peer.lock().expect("lock"), PeerHandshake::Member(_))
    }

    /// The member's node id, once it proved the cluster secret on this connection.
    pub fn member(&self) -> Option<String> {
        match &*self.peer.lock().expect("lock") {
            PeerHandshake::Member(id) => Some(id.clone()),
            _ => None,
        }
    }

    /// Check an `Auth` frame's token; a connection authenticates once. A server without
    /// tokens takes any token (clients can be given tokens before their servers are).
    pub fn authenticate(&self, token: &str) -> Result<Arc<Grant>, Error> {
        if self.grant.get().is_some() {
            return Err(Error::BadRequest {
                reason: "this connection is already authenticated".into(),
            });
        }
        let grant = match &self.policy {
            Policy::Anonymous => Arc::new(Grant {
                label: "anonymous".into(),
                datasets: Datasets::All,
            }),
            Policy::Tokens(tokens) => tokens.check(token).ok_or_else(|| {
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Error::Unauthenticated {
                    reason: "the token is not one of the server's --access-tokens".into(),
                }
            })?,
        };
        // Two streams of one QUIC connection may race: the first token wins, the other is told.
        self.grant
            .set(grant.clone())
            .map_err(|_| Error::BadRequest {
                reason: "this connection is already authenticated".into(),
            })?;
        Ok(grant)
    }

    /// Has this connection the right to send requests at all?
    pub fn require(&self) -> Result<(), Error> {
        match (&self.policy, self.grant.get()) {
            (Policy::Tokens(_), None) => Err(Error::Unauthenticated {
                reason: "this server requires an access token: send one first (cachectl --token-file, Client(token=…), ClientOptions::token)".into(),
            }),
            _ => Ok(()),
        }
    }

    /// May this connection read `dataset`?
    pub fn check(&self, dataset: &str) -> Result<(), Error> {
        self.require()?;
        match (&self.policy, self.grant.get()) {
            (Policy::Tokens(_), Some(grant)) if !grant.allows(dataset) => Err(Error::Forbidden {
                reason: format!("the connection's token does not grant dataset {dataset:?}"),
            }),
            _ => Ok(()),
        }
    }

    /// The grant, once authenticated (for logs).
    pub fn grant(&self) -> Option<&Arc<Grant>> {
        self.grant.get()
    }
}

#[cfg(test)]
mod tests;
